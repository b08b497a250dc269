"""Shared mechanics of the per-family mapping tables (HF tensor name <-> our param path).

A family module (bert.py, distilbert.py, mobilebert.py) only lists `Entry` rows and a few config
hooks; reading, writing, shape checks, prefixes, old LayerNorm names and tied decoders are
handled here once. Tables describe a model's canonical (per-layer) params; the model of the
config's kind (`models.REGISTRY`) gives their shapes, fresh heads and the scanned layout.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxdistill import models
from jaxdistill.errors import UserError
from jaxdistill.models.bert import ACTIVATIONS

log = logging.getLogger(__name__)

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: HF name (without the base-model prefix when `base`), our path, transpose flag.

    base: the tensor lives in the base model (`bert.`/`distilbert.` prefix inside a model with a
      head); head tensors (`cls.*`, `classifier.*`, `vocab_*`) never carry the prefix.
    head: part of a task head, so it may be freshly initialised when the checkpoint lacks it.
    aliases: other names accepted on read (older checkpoints).
    """

    hf: str
    path: Path
    transpose: bool = False
    base: bool = True
    head: bool = False
    aliases: tuple[str, ...] = ()


def linear(hf: str, path: Path, **kw: Any) -> list[Entry]:
    """torch Linear (weight (out, in)) <-> flax Dense (kernel (in, out))."""
    return [Entry(f"{hf}.weight", path + ("kernel",), transpose=True, **kw),
            Entry(f"{hf}.bias", path + ("bias",), **kw)]


def layer_norm(hf: str, path: Path, **kw: Any) -> list[Entry]:
    return [Entry(f"{hf}.weight", path + ("scale",), **kw), Entry(f"{hf}.bias", path + ("bias",), **kw)]


def embedding(hf: str, path: Path, **kw: Any) -> list[Entry]:
    return [Entry(f"{hf}.weight", path + ("embedding",), **kw)]


def num_labels(hf: dict[str, Any]) -> int:
    """Label count of an HF config: id2label wins over num_labels (transformers does the same)."""
    if isinstance(hf.get("id2label"), dict) and hf["id2label"]:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))


def activation(name: Any, key: str) -> str:
    """Validates an HF activation name against the ones our model implements."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise UserError(f"{key}={name!r} is an activation jaxdistill does not implement; "
                        f"supported: {', '.join(sorted(ACTIVATIONS))}.")
    return name


def label_fields(count: int, id2label: dict[int, str] | None) -> dict[str, Any]:
    """id2label/label2id/num_labels; keeps given label names when their count matches."""
    if not id2label or len(id2label) != count:
        id2label = {i: f"LABEL_{i}" for i in range(count)}
    id2label = {int(k): str(v) for k, v in id2label.items()}
    return {"num_labels": count,
            "id2label": {str(k): v for k, v in sorted(id2label.items())},
            "label2id": {v: k for k, v in sorted(id2label.items())}}


def export_config(fields: dict[str, Any], cfg: Any,
                  id2label: dict[int, str] | None) -> dict[str, Any]:
    """A family's config.json fields completed with what every family writes: tied output
    embeddings, float32 weights and the labels (for every head, as transformers does, so that
    num_labels survives a round trip)."""
    return {**fields, "tie_word_embeddings": True, "dtype": "float32",
            **label_fields(cfg.num_labels, id2label)}


def params_io(table: Callable[[Any], list[Entry]], base_prefix: str,
              tied: list[tuple[str, str]]) -> tuple[Callable[..., dict], Callable[..., dict]]:
    """A family's (params_from_hf, params_to_hf) over its `table(cfg)`, base-model prefix and
    (decoder, embedding) ties, which are checked only when the model keeps its MLM head."""

    def params_from_hf(tensors: dict[str, np.ndarray], cfg: Any,
                       init: Callable[[], dict] | None = None) -> dict:
        """HF tensors (with or without the base prefix) -> nested params (stacked when
        cfg.scan_layers); `init` gives fresh params for head tensors the checkpoint lacks."""
        pairs = tied if cfg.head == "mlm" else ()  # a dropped MLM head is not checked
        return read_params(tensors, cfg, table(cfg), base_prefix, pairs, init)

    def params_to_hf(params: dict, cfg: Any) -> dict[str, np.ndarray]:
        """Nested params (either layout) -> HF tensors as the family's export class names them."""
        return write_params(params, cfg, table(cfg), base_prefix)

    return params_from_hf, params_to_hf


def normalise_names(tensors: dict[str, np.ndarray], base_prefix: str) -> dict[str, np.ndarray]:
    """Strips the base-model prefix and renames old LayerNorm `gamma`/`beta` to `weight`/`bias`."""
    out = {}
    for name, value in tensors.items():
        if name.startswith(base_prefix):
            name = name[len(base_prefix):]
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        out[name] = value
    return out


def model_of(cfg: Any) -> models.Model:
    """The model of a config (any registered kind)."""
    return models.REGISTRY[cfg.kind](cfg)


def expected_shapes(cfg: Any) -> dict[Path, tuple[int, ...]]:
    """Shapes of every parameter of the per-layer (canonical) model, without allocating it."""
    model = model_of(cfg)
    shapes = jax.eval_shape(lambda: model.canonical(model.init(jax.random.key(0))))
    return {k: tuple(v.shape) for k, v in flatten_dict(shapes).items()}


def _check_table(table: list[Entry], shapes: dict[Path, tuple[int, ...]]) -> None:
    # A table/model drift is our bug, not the user's: fail loudly with an assertion-style error.
    paths = {e.path for e in table}
    if paths != set(shapes):
        raise RuntimeError(f"conversion table does not match the model: missing "
                           f"{set(shapes) - paths}, extra {paths - set(shapes)}")


def _missing(e: Entry, cfg: Any, base_prefix: str, can_init: bool) -> None:
    """Raises for a tensor the checkpoint lacks, unless it is a head part we may initialise."""
    if not e.head:
        raise UserError(f"The checkpoint has no tensor '{e.hf}' (looked for it with and without "
                        f"the '{base_prefix}' prefix), which a {getattr(cfg, 'flavor', cfg.kind)} "
                        f"model with head '{cfg.head}' needs.")
    part = "pooler" if e.path[0] == "pooler" else f"'{cfg.head}' head"
    if not can_init:
        raise UserError(f"The checkpoint has no {part} (tensor '{e.hf}' is missing). Load it with "
                        f"a head it has (head='auto'), or pass an rng to initialise the missing "
                        f"part randomly.")


def _checked(name: str, value: np.ndarray, e: Entry, want: tuple[int, ...]) -> np.ndarray:
    """The tensor in our layout (kernels transposed), after checking its shape."""
    value = np.asarray(value)
    ours = value.T if e.transpose else value
    if ours.shape != want:
        expected = want[::-1] if e.transpose else want  # report both in HF's (out, in) layout
        raise UserError(f"Tensor '{name}' has shape {tuple(value.shape)}, but config.json implies "
                        f"{tuple(expected)}; the weights do not belong to this config.")
    return ours


def read_params(
    tensors: dict[str, np.ndarray],
    cfg: Any,
    table: list[Entry],
    base_prefix: str,
    tied: Iterable[tuple[str, str]] = (),
    init: Callable[[], dict] | None = None,
) -> dict:
    """HF tensors -> nested params in `cfg.param_dtype` (stacked when `cfg.scan_layers`).

    tied: (decoder name, embedding name) pairs our model ties; a decoder present in the file must
      equal the embedding. init: gives fresh params for head tensors the checkpoint lacks.
    """
    names = normalise_names(tensors, base_prefix)
    shapes = expected_shapes(cfg)
    _check_table(table, shapes)
    dtype = jax.numpy.dtype(cfg.param_dtype)
    fresh, initialised = None, []
    flat: dict[Path, np.ndarray] = {}
    for e in table:
        found = next((n for n in (e.hf, *e.aliases) if n in names), None)
        if found is None:
            _missing(e, cfg, base_prefix, init is not None)
            fresh = fresh if fresh is not None else flatten_dict(init())
            flat[e.path] = np.asarray(fresh[e.path]).astype(dtype)
            initialised.append(e.hf)
        else:
            flat[e.path] = _checked(found, names[found], e, shapes[e.path]).astype(dtype)
    if initialised:
        log.warning("The checkpoint lacks %d head tensors (%s); initialised them randomly.",
                    len(initialised), ", ".join(initialised))
    for decoder, target in tied:
        if decoder in names and not np.array_equal(names[decoder], names[target]):
            raise UserError(f"Tensor '{decoder}' differs from '{target}': untied output embeddings "
                            f"are not supported (jaxdistill ties the MLM decoder to the word "
                            f"embeddings).")
    return model_of(cfg).from_canonical(unflatten_dict(flat))


def write_params(params: dict, cfg: Any, table: list[Entry],
                 base_prefix: str) -> dict[str, np.ndarray]:
    """Nested params (per-layer or scanned layout) -> HF tensors in float32, contiguous."""
    model = model_of(cfg)
    if "layers" in params.get("encoder", {}) and not getattr(cfg, "scan_layers", True):
        model = model.runtime(scan_layers=True)  # stacked params under a per-layer config
    flat = flatten_dict(model.canonical(params))
    _check_table(table, {k: () for k in flat})
    prefix = base_prefix if cfg.head != "none" else ""  # a bare base model is saved unprefixed
    out = {}
    for e in table:
        value = np.asarray(flat[e.path], dtype=np.float32)
        if e.transpose:
            value = value.T
        out[(prefix if e.base else "") + e.hf] = np.ascontiguousarray(value)
    return out
