"""Model directories in and out: Hugging Face per family, jaxdistill-native for the rest.

`HF_KINDS` names the model kinds with a Hugging Face counterpart (a mapping table per family in
this package: bert.py, distilbert.py, mobilebert.py); every other kind, and a config of such a
kind that no HF class computes (IB-BERT, the MobileBERT teacher), exports to the documented
native directory of native.py. `read_model_dir` / `write_model_dir` pick the right one.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from jaxdistill import models
from jaxdistill.convert.hf_dir import (
    FAMILIES,
    SUPPORTED,
    TOKENIZER_FILES,
    copy_tokenizer,
    detect_architecture,
    family_for,
    read_hf_config,
    read_hf_dir,
    read_tensors,
    replace_file,
    write_hf_dir,
)
from jaxdistill.convert.native import (EXPORTED_INFO, EXPORTED_PARAMS, is_native_dir,
                                      read_native_dir, read_params_file, write_native_dir,
                                      write_params_file)

log = logging.getLogger(__name__)

# Kinds whose config is what hf_dir's families read and write.
HF_KINDS = ("bert", "mobilebert", "seq2seq")


def read_model_dir(path: str | os.PathLike, head: str = "auto", rng=None
                   ) -> tuple[models.Model, dict]:
    """(model, host params) of a Hugging Face or jaxdistill-native directory."""
    if is_native_dir(path):
        return read_native_dir(path)
    cfg, params = read_hf_dir(path, head=head, rng=rng)
    return models.model_class(cfg.kind)(cfg), params


def write_model_dir(model: models.Model, params: dict, out_dir: str | os.PathLike,
                    tokenizer_dir: str | os.PathLike | None = None, *,
                    id2label: dict[int, str] | None = None, exported: dict | None = None,
                    exported_by: dict | None = None) -> Path:
    """The model as a Hugging Face directory when its kind has one, else jaxdistill-native.

    exported: a method's own params that are part of the product (e.g. exit classifiers),
    written beside the model as EXPORTED_PARAMS (`write_params_file`), with EXPORTED_INFO
    (`exported_by`: the method and options that made them).
    """
    if model.kind in HF_KINDS and family_for(model.config) is not None:
        out = write_hf_dir(model.config, params, out_dir,
                           tokenizer_dir=tokenizer_dir, id2label=id2label)
    else:
        if model.kind in HF_KINDS:
            log.warning("This '%s' configuration has no Hugging Face class (e.g. IB-BERT: "
                        "q/k/v read the block input); writing the jaxdistill-native "
                        "directory %s.", model.kind, out_dir)
        out = write_native_dir(model, params, out_dir, id2label=id2label)
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, out)
    if exported:
        write_params_file(exported, out / EXPORTED_PARAMS)
        info = json.dumps(exported_by or {}, indent=2, sort_keys=True) + "\n"
        replace_file(out / EXPORTED_INFO, lambda f: f.write_text(info))
    return out


__all__ = ["EXPORTED_INFO", "EXPORTED_PARAMS", "FAMILIES", "HF_KINDS", "SUPPORTED",
           "TOKENIZER_FILES", "copy_tokenizer", "detect_architecture", "family_for",
           "is_native_dir", "read_hf_config", "read_hf_dir", "read_model_dir",
           "read_params_file", "read_tensors", "write_hf_dir", "write_model_dir",
           "write_params_file"]
