"""Python API over Hugging Face directories: `load(DIR)` gives a callable JAX model, `save` writes one.

Any kind with an HF family (BERT, DistilBERT, MobileBERT) loads from its HF directory; a
jaxdistill-native directory (e.g. an IB-BERT teacher, which has no HF class) loads too, and
`save` writes whichever of the two the model's config has.

    model = jaxdistill.hf.load("path/to/hf_dir")          # or "package:minilm"
    out = model(input_ids, attention_mask, token_type_ids)
    out.logits, out.hidden_states, out.attentions, out.last_hidden_state
    jaxdistill.hf.save(model, "out_dir")

Outputs mean what transformers' outputs mean: `hidden_states` is a tuple starting with the
embedding output, `attentions` a tuple of softmax probabilities [B, heads, T, T] per layer.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.assets import resolve_model_path
from jaxdistill.convert.hf_dir import detect_architecture, read_hf_config, read_hf_dir
from jaxdistill import models
from jaxdistill.convert.native import EXPORTED_PARAMS, is_native_dir, read_native_dir
from jaxdistill.errors import UserError
from jaxdistill.models.base import Model, Wants, cast_floats


@flax.struct.dataclass
class ModelOutputs:
    """transformers-style outputs; fields not asked for (or without a head: logits) are None."""

    last_hidden_state: jax.Array
    logits: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None
    pooler_output: jax.Array | None = None
    exit_layers: Any = None  # with `speed`: the 1-based layer each row exited at


def _forward(model: Model, params: dict, batch: dict, wants: Wants) -> ModelOutputs:
    out = model.apply(params, batch, wants=wants, train=False)
    # Our model stacks per-layer arrays on axis 0; transformers returns tuples.
    hidden = tuple(out.hidden_states) if out.hidden_states is not None else None
    attn = tuple(out.attention_probs) if out.attention_probs is not None else None
    return ModelOutputs(out.last_hidden_state, out.logits, hidden, attn, out.pooled)


@functools.lru_cache(maxsize=32)
def _jitted_forward(config: Any):
    """One jitted forward per config, so models of the same architecture share compilations."""
    return jax.jit(functools.partial(_forward, _model(config)), static_argnames=("wants",))


def _model(config: Any) -> Model:
    return models.model_class(config.kind)(config)


class HFModel:
    """A model (BERT family, MobileBERT) with its params; calling it runs one jitted forward.

    architecture: the HF class it was loaded from (and is saved as). source_dir: where its
    tokenizer files are copied from on `save`.
    """

    def __init__(self, config: Any, params: dict, *, architecture: str | None = None,
                 source_dir: str | os.PathLike | None = None,
                 id2label: dict[int, str] | None = None):
        self.config = config
        self.params = params
        self.architecture = architecture
        self.source_dir = Path(source_dir) if source_dir is not None else None
        self.id2label = id2label
        self.model = _model(config)
        self._jitted = _jitted_forward(config)
        self._generators: dict = {}  # (max_len, beam_size, length_penalty, ...) -> decoder
        self.early_exit = None  # FastBERT's exit branches, when the directory has them
        self.exported, self.exported_by = {}, {}  # what `save` writes beside the model

    def __call__(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None, *,
                 output_hidden_states: bool = True, output_attentions: bool = True,
                 speed: float | None = None, decoder_input_ids: Any = None) -> ModelOutputs:
        """Forward pass on [B, T] token ids (numpy, lists, jax or CPU torch tensors).

        speed: FastBERT adaptive inference (a directory with exit branches): each row exits at
        the first layer whose branch's normalised entropy is below `speed`; 0 is the full model.
        Only logits and exit_layers are returned then.
        decoder_input_ids: a seq2seq model's decoder inputs (required for one): logits only.
        """
        if self.model.kind == "seq2seq":
            if decoder_input_ids is None:
                raise ValueError("a seq2seq model needs decoder_input_ids (or use generate)")
            ids = _ids(input_ids)
            batch = {"input_ids": ids, "decoder_input_ids": _ids(decoder_input_ids),
                     "attention_mask": jnp.ones_like(ids) if attention_mask is None
                     else _ids(attention_mask)}
            return self._jitted(self.params, batch, wants=Wants())
        if speed is not None:
            if self.early_exit is None:
                raise ValueError("this model has no FastBERT exit branches; `speed` needs a "
                                 "directory exported by `jaxdistill finetune` with method fastbert")
            ids = np.asarray(_ids(input_ids))
            batch = {"input_ids": ids,
                     "attention_mask": np.ones_like(ids) if attention_mask is None
                     else np.asarray(_ids(attention_mask)),
                     "token_type_ids": np.zeros_like(ids) if token_type_ids is None
                     else np.asarray(_ids(token_type_ids))}
            logits, exits = self.early_exit.predict(batch, float(speed))
            return ModelOutputs(last_hidden_state=None, logits=jnp.asarray(logits),
                                exit_layers=exits)
        wants = Wants(hidden_states=output_hidden_states, attention_probs=output_attentions)
        batch = {"input_ids": _ids(input_ids), "attention_mask": _ids(attention_mask),
                 "token_type_ids": _ids(token_type_ids)}
        return self._jitted(self.params, batch, wants=wants)

    def generate(self, input_ids: Any, attention_mask: Any = None, *, max_len: int | None = None,
                 beam_size: int = 1, length_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0) -> np.ndarray:
        """A seq2seq model's outputs: int32 [B, max_len] token ids after the start token, pad
        after the end token (greedy for beam_size 1; `transformers`' generate gives the same
        greedy tokens, with or without the same no_repeat_ngram_size)."""
        if self.model.kind != "seq2seq":
            raise ValueError(f"generate needs a seq2seq model, this one is '{self.model.kind}'")
        from jaxdistill import sharding
        from jaxdistill.config import MeshConfig
        from jaxdistill.inference.generate import make_generate

        ids = np.asarray(_ids(input_ids))
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(_ids(attention_mask))
        setting = (max_len or self.config.max_position_embeddings, beam_size, length_penalty,
                   "hf", no_repeat_ngram_size)
        mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
        if setting not in self._generators:  # one compilation per setting, not per call
            params_sh = sharding.shardings_for(self.model.logical_axes(), self.params, mesh)
            self._generators[setting] = make_generate(self.model, params_sh, mesh, *setting)[0]
        with mesh:
            return np.asarray(self._generators[setting](
                self.params, {"input_ids": ids, "attention_mask": mask}))

    def __repr__(self) -> str:
        c = self.config
        if self.model.kind == "seq2seq":
            return (f"HFModel({self.architecture}, encoder_layers={c.encoder_layers}, "
                    f"decoder_layers={c.decoder_layers}, d_model={c.d_model})")
        return (f"HFModel({self.architecture or getattr(c, 'flavor', c.kind)}, "
                f"layers={c.num_layers}, "
                f"hidden={c.hidden_size}, heads={c.num_heads}, head={c.head!r})")


def _ids(x: Any) -> jax.Array | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return jnp.asarray(np.asarray(x), dtype=jnp.int32)


def load(path: str | os.PathLike, head: str = "auto", *, rng: jax.Array | None = None,
         num_labels: int | None = None, **overrides: Any) -> HFModel:
    """Loads an HF BERT/DistilBERT/MobileBERT directory (or `package:minilm`), or a
    jaxdistill-native one; see `read_hf_dir` for options."""
    path = resolve_model_path(str(path))
    if is_native_dir(path):
        cfg, params, hf = _read_native(path, head, rng, num_labels, overrides)
        arch = None
    else:
        cfg, params = read_hf_dir(path, head, rng=rng, num_labels=num_labels, **overrides)
        hf = read_hf_config(path)
        arch, family, file_head = detect_architecture(hf)
        if cfg.head != file_head or arch not in family.EXPORT_ARCHITECTURE.values():
            # A different head was asked for, or BertForPreTraining (saved as BertForMaskedLM:
            # we keep no NSP head): save as the class that holds what we have.
            arch = family.EXPORT_ARCHITECTURE[cfg.head]
    id2label = hf.get("id2label") if cfg.head == "classifier" else None
    params = jax.tree.map(jnp.asarray, params)
    model = HFModel(cfg, params, architecture=arch, source_dir=path,
                    id2label={int(k): v for k, v in id2label.items()} if id2label else None)
    if (path / EXPORTED_PARAMS).is_file() and cfg.head == "classifier":
        from jaxdistill.inference import early_exit
        from jaxdistill.loading import load_exported

        model.exported, model.exported_by = load_exported(str(path))
        model.early_exit = early_exit.build(model.model, params, model.exported,
                                            model.exported_by, str(path))
    return model


def _read_native(path: Path, head: str, rng: jax.Array | None, num_labels: int | None,
                 overrides: dict) -> tuple[Any, dict, dict]:
    """(config, params, config.json) of a native directory, with `load`'s options applied."""
    import json

    from jaxdistill.loading import with_head

    model, params = read_native_dir(path)
    bad = sorted(set(overrides) - set(model.RUNTIME_FIELDS))
    if bad:
        raise UserError(f"Cannot override {', '.join(bad)} when loading a checkpoint; allowed: "
                        f"{', '.join(model.RUNTIME_FIELDS)}.")
    if head != "auto" or num_labels is not None:
        model, params = with_head(model, params, model.config.head if head == "auto" else head,
                                  rng, num_labels)
    try:
        run = model.replace(**overrides)
    except ValueError as e:
        raise UserError(f"Invalid load option: {e}.") from e
    params = cast_floats(run.from_canonical(model.canonical(params)), run.config.param_dtype)
    return run.config, params, json.loads((path / "config.json").read_text())


def save(model: HFModel, path: str | os.PathLike) -> Path:
    """Writes `model` as an HF directory (config.json, model.safetensors, tokenizer files), or
    as the jaxdistill-native directory when its config has no HF class."""
    from jaxdistill.convert import write_model_dir

    return write_model_dir(model.model, model.params, path, tokenizer_dir=model.source_dir,
                           id2label=model.id2label, exported=model.exported or None,
                           exported_by=model.exported_by or None)
