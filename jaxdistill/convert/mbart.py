"""mBART (MBartForConditionalGeneration) <-> ours (models/seq2seq.py with `normalize_before`).

mBART is BART with pre-LN blocks and a LayerNorm at the end of the encoder and of the decoder
(`encoder.layer_norm`, `decoder.layer_norm`); every other tensor has BART's name, so the mapping
table is BART's (`bart.table` adds the two final LayerNorms for a pre-LN config) and so are the
ties, the defaults and the generation config.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxdistill.convert import bart
from jaxdistill.convert.bart import (BASE_PREFIX, SHARED, TIED, params_from_hf,  # noqa: F401
                                     params_to_hf, table, write_extras)
from jaxdistill.errors import UserError
from jaxdistill.models.seq2seq import Seq2SeqConfig

MODEL_TYPE = "mbart"
KIND = "seq2seq"
ARCHITECTURES = {"MBartForConditionalGeneration": "lm"}
EXPORT_ARCHITECTURE = {"lm": "MBartForConditionalGeneration"}


def exports(cfg: Any) -> bool:
    return cfg.kind == KIND and cfg.normalize_before


def config_from_hf(hf: dict[str, Any], head: str) -> Seq2SeqConfig:
    cfg = bart.config_from_hf({**hf, "normalize_before": False, "add_final_layer_norm": False},
                              head)
    return dataclasses.replace(cfg, normalize_before=True)


def config_to_hf(cfg: Seq2SeqConfig, id2label: dict[int, str] | None = None) -> dict[str, Any]:
    """A complete config.json that transformers loads as MBartForConditionalGeneration."""
    if not cfg.normalize_before:
        raise UserError("a post-LN seq2seq model exports as BART, not mBART.")
    hf = bart.config_to_hf(dataclasses.replace(cfg, normalize_before=False), id2label)
    hf.pop("normalize_before")
    return {**hf, "architectures": [EXPORT_ARCHITECTURE["lm"]], "model_type": MODEL_TYPE}
