"""BART (BartForConditionalGeneration) <-> ours (models/seq2seq.py, kind seq2seq).

The encoder's and decoder's `embed_tokens` and `lm_head` are transformers' ties of
`model.shared`: export writes `shared` only, import accepts any of them (and checks that a file
holding several holds the same table). LayerNorm eps is BART's fixed torch default (1e-5).
`generation_config.json` records the start/end tokens and greedy decoding, so that `generate`
needs no extra arguments.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxdistill.convert import _table
from jaxdistill.convert._table import Entry, layer_norm, linear
from jaxdistill.errors import UserError
from jaxdistill.models.seq2seq import Seq2SeqConfig

MODEL_TYPE = "bart"
KIND = "seq2seq"
BASE_PREFIX = "model."
ARCHITECTURES = {"BartForConditionalGeneration": "lm"}
EXPORT_ARCHITECTURE = {"lm": "BartForConditionalGeneration"}
SHARED = "shared.weight"
TIED = [("lm_head.weight", SHARED), ("encoder.embed_tokens.weight", SHARED),
        ("decoder.embed_tokens.weight", SHARED)]
# Our config field == transformers' BartConfig key.
FIELDS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
          "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
          "max_position_embeddings", "activation_function", "scale_embedding", "dropout",
          "attention_dropout", "activation_dropout", "init_std", "pad_token_id", "bos_token_id",
          "eos_token_id", "decoder_start_token_id")
# transformers' BartConfig defaults, for a config.json that leaves keys out.
HF_DEFAULTS = {"vocab_size": 50265, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
               "encoder_attention_heads": 16, "decoder_attention_heads": 16,
               "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096, "max_position_embeddings": 1024,
               "activation_function": "gelu", "scale_embedding": False, "dropout": 0.1,
               "attention_dropout": 0.0, "activation_dropout": 0.0, "init_std": 0.02,
               "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
               "decoder_start_token_id": 2}
GENERATION_CONFIG = "generation_config.json"


def exports(cfg: Any) -> bool:
    return cfg.kind == KIND and not cfg.normalize_before


def _attention(hf: str, ours: tuple[str, ...]) -> list[Entry]:
    return [*linear(f"{hf}.q_proj", ours + ("query",)), *linear(f"{hf}.k_proj", ours + ("key",)),
            *linear(f"{hf}.v_proj", ours + ("value",)), *linear(f"{hf}.out_proj", ours + ("out",))]


def table(cfg: Seq2SeqConfig) -> list[Entry]:
    rows = [Entry(SHARED, ("shared",), aliases=("encoder.embed_tokens.weight",
                                                "decoder.embed_tokens.weight")),
            Entry("final_logits_bias", ("final_logits_bias",), base=False, head=True)]
    for side, layers in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        rows += [Entry(f"{side}.embed_positions.weight", (side, "position")),
                 *layer_norm(f"{side}.layernorm_embedding", (side, "norm_embedding"))]
        if cfg.normalize_before:  # mBART: one more LayerNorm at the end of each stack
            rows += layer_norm(f"{side}.layer_norm", (side, "norm_final"))
        for i in range(layers):
            hf, ours = f"{side}.layers.{i}", (side, f"layer_{i}")
            rows += [*_attention(f"{hf}.self_attn", ours + ("self_attn",)),
                     *layer_norm(f"{hf}.self_attn_layer_norm", ours + ("self_attn_norm",))]
            if side == "decoder":
                rows += [*_attention(f"{hf}.encoder_attn", ours + ("cross_attn",)),
                         *layer_norm(f"{hf}.encoder_attn_layer_norm", ours + ("cross_attn_norm",))]
            rows += [*linear(f"{hf}.fc1", ours + ("fc1",)), *linear(f"{hf}.fc2", ours + ("fc2",)),
                     *layer_norm(f"{hf}.final_layer_norm", ours + ("final_norm",))]
    return rows


def config_from_hf(hf: dict[str, Any], head: str) -> Seq2SeqConfig:
    if head != "lm":
        raise UserError(f"head={head!r}: a BART model loads with its 'lm' head only.")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise UserError("This BART config uses pre-LN blocks (normalize_before / "
                        "add_final_layer_norm): jaxdistill reads pre-LN models as mBART "
                        "(MBartForConditionalGeneration, model_type mbart).")
    values = {k: hf.get(k, HF_DEFAULTS[k]) for k in FIELDS}
    values["activation_function"] = _table.activation(values["activation_function"],
                                                      "activation_function")
    if values["decoder_start_token_id"] is None:
        values["decoder_start_token_id"] = values["eos_token_id"]
    try:
        return Seq2SeqConfig(**{k: type(getattr(Seq2SeqConfig, k))(v) for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise UserError(f"jaxdistill cannot build this BART model: {e}.") from e


def config_to_hf(cfg: Seq2SeqConfig, id2label: dict[int, str] | None = None) -> dict[str, Any]:
    """A complete config.json that transformers loads as BartForConditionalGeneration."""
    del id2label
    if cfg.layer_norm_eps != 1e-5:
        raise UserError(f"layer_norm_eps={cfg.layer_norm_eps}: BART's LayerNorms use 1e-5, so "
                        f"this model has no Hugging Face class.")
    return {"architectures": [EXPORT_ARCHITECTURE["lm"]], "model_type": MODEL_TYPE,
            **{k: getattr(cfg, k) for k in FIELDS},
            "is_encoder_decoder": True, "forced_eos_token_id": None, "forced_bos_token_id": None,
            "normalize_before": False, "tie_word_embeddings": True, "dtype": "float32",
            "use_cache": True}


def write_extras(cfg: Seq2SeqConfig, out: Path) -> None:
    """What an export holds beside config.json: greedy decoding to the longest target."""
    write_generation_config(cfg, out, max_length=cfg.max_position_embeddings)


def write_generation_config(cfg: Seq2SeqConfig, out: Path, *, max_length: int,
                            num_beams: int = 1, length_penalty: float = 1.0) -> None:
    """generation_config.json: what our decoder does, for `generate` without arguments
    (max_length counts generated tokens, as our decoder does)."""
    gen = {"decoder_start_token_id": cfg.decoder_start_token_id, "bos_token_id": cfg.bos_token_id,
           "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
           "max_length": max_length + 1,  # transformers counts the start token
           "num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": False,
           "do_sample": False, "forced_bos_token_id": None, "forced_eos_token_id": None,
           "no_repeat_ngram_size": 0}
    (Path(out) / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")


def params_from_hf(tensors: dict[str, np.ndarray], cfg: Seq2SeqConfig, init=None) -> dict:
    tensors = dict(tensors)
    names = _table.normalise_names(tensors, BASE_PREFIX)
    if SHARED not in names:  # transformers may keep only one of the tied names
        for alias, _ in TIED:
            if alias in names:
                tensors[BASE_PREFIX + SHARED] = names[alias]
                break
    bias = tensors.get("final_logits_bias")
    if bias is not None and np.ndim(bias) == 1:
        tensors["final_logits_bias"] = np.asarray(bias)[None]
    return _table.read_params(tensors, cfg, table(cfg), BASE_PREFIX, TIED, init)


def params_to_hf(params: dict, cfg: Seq2SeqConfig) -> dict[str, np.ndarray]:
    return _table.write_params(params, cfg, table(cfg), BASE_PREFIX)


