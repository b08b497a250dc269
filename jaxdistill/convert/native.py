"""The export format of model kinds that Hugging Face has no class for.

A directory with
  config.json        {"format": "jaxdistill-native", "version": 1, "kind": KIND,
                      "config": the kind's config fields (what `Model.meta()` returns),
                      "id2label": {"0": NAME, ...} for a classifier of named labels}
  model.safetensors  every parameter, float32, named by its path joined with '/'
                     (e.g. "encoder/layer_0/attention/query/kernel"); Linear kernels are
                     stored (in, out), as the JAX model holds them
  tokenizer files    when the model reads word pieces (vocab.txt, tokenizer.json, ...)
`read_native_dir` rebuilds the model from config.json alone, so `jaxdistill evaluate`,
`jaxdistill.loading.load_pretrained` and `student.init` accept these directories.

Any export directory (Hugging Face or native) may also hold `exported_params.safetensors`: the
params a method trained beside the student that are part of the product (a method's
`exported_params`), named '<subtree>/<path>' with '/' joins, float32, and
`exported_params.json`, {"method": NAME, "options": {...}}, the method and options that made
them (e.g. FastBERT's branch width and heads).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxdistill import models
from jaxdistill.errors import UserError

FORMAT = "jaxdistill-native"
VERSION = 1
WEIGHTS = "model.safetensors"
EXPORTED_PARAMS = "exported_params.safetensors"
EXPORTED_INFO = "exported_params.json"  # {"method": NAME, "options": {...}}: what made them


def write_params_file(params: dict, file: str | os.PathLike) -> Path:
    """A pytree of arrays as one safetensors file, keys joined with '/', floats as float32."""
    from safetensors.numpy import save_file

    from jaxdistill.convert.hf_dir import replace_file

    flat = {"/".join(k): np.ascontiguousarray(
        np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
        else np.asarray(v)) for k, v in flatten_dict(params).items()}
    replace_file(Path(file), lambda f: save_file(flat, str(f)))
    return Path(file)


def read_params_file(file: str | os.PathLike) -> dict:
    """Inverse of `write_params_file` (host NumPy)."""
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"Cannot read {file} ({type(e).__name__}: {e}).") from e
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def is_native_dir(path: str | os.PathLike) -> bool:
    file = Path(path) / "config.json"
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_native_dir(model: models.Model, params: dict, out_dir: str | os.PathLike,
                     id2label: dict[int, str] | None = None) -> Path:
    """config.json + model.safetensors (float32); returns out_dir."""
    from jaxdistill.convert.hf_dir import replace_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "version": VERSION, "kind": model.kind, "config": model.meta()}
    if id2label:
        config["id2label"] = {str(i): name for i, name in id2label.items()}
    write_params_file(model.canonical(params), out / WEIGHTS)
    replace_file(out / "config.json",
                 lambda f: f.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return out


def read_native_dir(path: str | os.PathLike) -> tuple[models.Model, dict]:
    """(model, host params) of a directory `write_native_dir` wrote."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("version") != VERSION:
        raise UserError(f"{path}/config.json is jaxdistill-native version "
                        f"{config.get('version')!r}; this jaxdistill reads version {VERSION}.")
    model = models.from_meta({**config.get("config", {}), "kind": config.get("kind")},
                             where=str(path / "config.json"))
    if not (path / WEIGHTS).is_file():
        raise UserError(f"{path} has config.json but no {WEIGHTS}.")
    params = read_params_file(path / WEIGHTS)
    dtype = getattr(model.config, "param_dtype", "float32")
    params = models.base.cast_floats(params, dtype)
    return model, model.adopt(params, rng=None)
