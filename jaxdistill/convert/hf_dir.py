"""Hugging Face model directories (config.json + weights + tokenizer files) <-> (config, params).

A family module per HF model type (bert.py, distilbert.py, mobilebert.py) exposes MODEL_TYPE,
KIND (the model kind whose config it reads and writes), ARCHITECTURES (HF class -> our head),
EXPORT_ARCHITECTURE (head -> HF class), `exports(cfg)` (whether it writes that config), `table`,
`config_from_hf`, `config_to_hf`, `params_from_hf` and `params_to_hf`; the kind's `Model`
gives shapes, fresh heads, the layer layout and the options a load may override.

The weights are read with `safetensors.numpy` (torch is only needed for `pytorch_model.bin`), and
written as one `model.safetensors` with metadata {"format": "pt"} so that transformers' PyTorch
`from_pretrained` loads it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdistill import models
from jaxdistill.assets import resolve_model_path
from jaxdistill.convert import bart as bart_family
from jaxdistill.convert import bert as bert_family
from jaxdistill.convert import distilbert as distilbert_family
from jaxdistill.convert import mbart as mbart_family
from jaxdistill.convert import mobilebert as mobilebert_family
from jaxdistill.errors import UserError

log = logging.getLogger(__name__)

FAMILIES: dict[str, ModuleType] = {"bert": bert_family, "distilbert": distilbert_family,
                                   "mobilebert": mobilebert_family, "bart": bart_family,
                                   "mbart": mbart_family}
# Architecture name -> (family module, head our model gives it).
SUPPORTED: dict[str, tuple[ModuleType, str]] = {
    arch: (fam, head) for fam in FAMILIES.values() for arch, head in fam.ARCHITECTURES.items()}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of an HF directory (or `package:NAME`), as a dict."""
    path = resolve_model_path(str(path))
    if not path.is_dir():
        raise UserError(f"Hugging Face model directory '{path}' does not exist (or is not a "
                        f"directory); give a directory holding config.json and model weights.")
    file = path / "config.json"
    if not file.is_file():
        raise UserError(f"'{path}' has no config.json, so it is not a Hugging Face model "
                        f"directory; give the directory that save_pretrained wrote.")
    try:
        hf = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}).") from e
    if not isinstance(hf, dict):
        raise UserError(f"{file} must hold a JSON object, found {type(hf).__name__}.")
    return hf


def detect_architecture(hf: dict[str, Any],
                        where: str = "config.json") -> tuple[str, ModuleType, str]:
    """(architecture name, family module, head) of an HF config; raises on anything unsupported."""
    archs = hf.get("architectures") or []
    supported = ", ".join(SUPPORTED)
    if archs:
        name = archs[0]
        if name not in SUPPORTED:
            raise UserError(f"{where} names architecture '{name}' (model_type "
                            f"{hf.get('model_type')!r}), which jaxdistill cannot convert; "
                            f"supported architectures: {supported}.")
        family, head = SUPPORTED[name]
        return name, family, head
    # Plain base-model configs (e.g. sentence-transformers dirs) may omit `architectures`.
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(f"{where} has model_type {model_type!r} and no supported architecture; "
                        f"jaxdistill converts model types {', '.join(FAMILIES)} "
                        f"(architectures: {supported}).")
    family = FAMILIES[model_type]
    name = family.EXPORT_ARCHITECTURE["none"]
    return name, family, "none"


def family_for(cfg: Any) -> ModuleType | None:
    """The family that exports `cfg` as a Hugging Face class, None when none can."""
    return next((f for f in FAMILIES.values() if f.exports(cfg)), None)


# ----------------------------------------------------------------------------------------- read


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            keys = list(f.keys())
            try:
                return {k: f.get_tensor(k) for k in keys}
            except TypeError:
                pass  # bfloat16 has no numpy dtype: read through JAX below instead
        with safe_open(str(file), framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}  # ml_dtypes.bfloat16
    except Exception as e:  # safetensors raises its own error types, OSError, ValueError...
        raise UserError(f"Cannot read the weights file {file}: it is corrupted or not a "
                        f"safetensors file ({type(e).__name__}: {e}). Re-download or re-export "
                        f"the model.") from e


def _read_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise UserError(f"{file} is a PyTorch pickle and reading it needs torch, which is not "
                        f"installed; install torch or convert the checkpoint to "
                        f"model.safetensors.") from e
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"Cannot read the weights file {file}: it is corrupted or not a PyTorch "
                        f"state dict ({type(e).__name__}: {e}).") from e
    out = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach()
            out[name] = (value.float() if value.is_floating_point() else value).numpy()
    return out


def _shards(path: Path, index_name: str) -> list[Path]:
    index = path / index_name
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{index} is not a valid sharded-checkpoint index ({e}).") from e
    shards = [path / name for name in dict.fromkeys(weight_map.values())]
    for shard in shards:
        if not shard.is_file():
            raise UserError(f"{index} lists the shard '{shard.name}', which is missing from {path}.")
    return shards


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of an HF directory, preferring safetensors (single or sharded) over .bin."""
    path = Path(path)
    if (path / SAFETENSORS).is_file():
        return _read_safetensors(path / SAFETENSORS)
    if (path / SAFETENSORS_INDEX).is_file():
        shards = _shards(path, SAFETENSORS_INDEX)
        return {k: v for f in shards for k, v in _read_safetensors(f).items()}
    if (path / TORCH_BIN).is_file():
        return _read_torch_bin(path / TORCH_BIN)
    if (path / TORCH_BIN_INDEX).is_file():
        shards = _shards(path, TORCH_BIN_INDEX)
        return {k: v for f in shards for k, v in _read_torch_bin(f).items()}
    raise UserError(f"'{path}' has config.json but no weights: expected {SAFETENSORS}, "
                    f"{SAFETENSORS_INDEX}, {TORCH_BIN} or {TORCH_BIN_INDEX}.")


def read_hf_dir(
    path: str | os.PathLike,
    head: str = "auto",
    *,
    rng: jax.Array | None = None,
    num_labels: int | None = None,
    **overrides: Any,
) -> tuple[Any, dict]:
    """Reads an HF BERT/DistilBERT/MobileBERT directory into (our config, params).

    head: 'auto' keeps the checkpoint's head; 'none', 'mlm', 'classifier' ask for one. A head the
      checkpoint lacks is initialised from `rng` when given, else it is an error.
    num_labels: label count for a classifier head (default: the checkpoint's).
    overrides: execution options (the kind's RUNTIME_FIELDS: dtype, param_dtype, scan_layers,
      remat, dropouts).
    """
    path = resolve_model_path(str(path))
    hf = read_hf_config(path)
    _, family, file_head = detect_architecture(hf, str(path / "config.json"))
    kind = models.REGISTRY[family.KIND]
    if head == "auto":
        head = file_head
    elif head not in kind.HEADS:
        raise UserError(f"head={head!r}: expected 'auto' or one of {', '.join(kind.HEADS)}.")
    bad = sorted(set(overrides) - set(kind.RUNTIME_FIELDS))
    if bad:
        raise UserError(f"Cannot override {', '.join(bad)} when loading a checkpoint; allowed: "
                        f"{', '.join(kind.RUNTIME_FIELDS)}.")
    try:
        cfg = family.config_from_hf(hf, head)
    except UserError as e:
        raise UserError(f"{path / 'config.json'}: {e}") from e
    if num_labels is not None:
        if int(num_labels) < 1:
            raise UserError(f"num_labels={num_labels}: a classifier needs at least one label.")
        cfg = dataclasses.replace(cfg, num_labels=int(num_labels))
    try:
        cfg = dataclasses.replace(cfg, **overrides)
    except ValueError as e:
        raise UserError(f"Invalid load option: {e}.") from e
    init = None if rng is None else (lambda: kind(cfg).fresh_host_params(rng))
    tensors = read_tensors(path)
    try:
        params = family.params_from_hf(tensors, cfg, init)
    except UserError as e:
        raise UserError(f"{path}: {e}") from e
    return cfg, params


# ---------------------------------------------------------------------------------------- write


def replace_file(target: Path, write) -> None:
    """Writes through a temporary file then renames, so an interrupted save keeps the old file."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def copy_tokenizer(tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Copies the tokenizer files present in `tokenizer_dir`; returns their names."""
    src, dst = Path(tokenizer_dir), Path(out_dir)
    if not src.is_dir():
        raise UserError(f"Tokenizer directory '{src}' does not exist.")
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if src.resolve() != dst.resolve():  # saving over the source directory: already there
        for name in copied:
            shutil.copyfile(src / name, dst / name)
    if not copied:
        log.warning("No tokenizer files (%s) in %s; the export has no tokenizer.",
                    ", ".join(TOKENIZER_FILES), src)
    return copied


def write_hf_dir(
    cfg: Any,
    params: dict,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    id2label: dict[int, str] | None = None,
) -> Path:
    """Writes config.json, model.safetensors (float32) and tokenizer files; returns out_dir."""
    from safetensors.numpy import save_file

    family = family_for(cfg)
    if family is None:
        raise UserError(f"A '{cfg.kind}' model of this configuration has no Hugging Face class; "
                        f"write it with convert.write_model_dir (the jaxdistill-native "
                        f"directory).")
    hf_config = family.config_to_hf(cfg, id2label)
    tensors = family.params_to_hf(nn.unbox(params), cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    replace_file(out / SAFETENSORS, lambda f: save_file(tensors, str(f), metadata={"format": "pt"}))
    replace_file(out / "config.json",
                  lambda f: f.write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n"))
    if hasattr(family, "write_extras"):  # e.g. BART's generation_config.json
        family.write_extras(cfg, out)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
    return out
