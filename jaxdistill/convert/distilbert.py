"""DistilBERT (DistilBertModel, DistilBertForMaskedLM, DistilBertForSequenceClassification) <-> ours.

DistilBERT has no token types and no pooler; its LayerNorm epsilon is fixed at 1e-12 in
transformers (not a config field), so only models with that epsilon export as DistilBERT.
"""
from __future__ import annotations

from typing import Any

from jaxdistill.convert import _table
from jaxdistill.convert._table import Entry, embedding, layer_norm, linear
from jaxdistill.errors import UserError
from jaxdistill.models.bert import BertConfig

MODEL_TYPE = "distilbert"
KIND = "bert"  # the model kind whose config this family reads and writes
BASE_PREFIX = "distilbert."
LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT
ARCHITECTURES = {
    "DistilBertModel": "none",
    "DistilBertForMaskedLM": "mlm",
    "DistilBertForSequenceClassification": "classifier",
}
EXPORT_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
TIED = [("vocab_projector.weight", WORD_EMBEDDINGS)]


def exports(cfg: Any) -> bool:
    """Whether this family writes `cfg` (a 'distilbert'-flavoured BERT config)."""
    return cfg.kind == KIND and cfg.flavor == "distilbert"


def table(cfg: BertConfig) -> list[Entry]:
    """Every tensor of a DistilBERT model with `cfg.head`, in HF naming (base prefix stripped)."""
    rows = [*embedding("embeddings.word_embeddings", ("embeddings", "word")),
            *embedding("embeddings.position_embeddings", ("embeddings", "position")),
            *layer_norm("embeddings.LayerNorm", ("embeddings", "norm"))]
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.layer.{i}", ("encoder", f"layer_{i}")
        rows += [*linear(f"{hf}.attention.q_lin", ours + ("attention", "query")),
                 *linear(f"{hf}.attention.k_lin", ours + ("attention", "key")),
                 *linear(f"{hf}.attention.v_lin", ours + ("attention", "value")),
                 *linear(f"{hf}.attention.out_lin", ours + ("attention", "out")),
                 *layer_norm(f"{hf}.sa_layer_norm", ours + ("attention_norm",)),
                 *linear(f"{hf}.ffn.lin1", ours + ("intermediate",)),
                 *linear(f"{hf}.ffn.lin2", ours + ("output",)),
                 *layer_norm(f"{hf}.output_layer_norm", ours + ("ffn_norm",))]
    if cfg.head == "mlm":
        rows += [*linear("vocab_transform", ("mlm_head", "transform"), base=False, head=True),
                 *layer_norm("vocab_layer_norm", ("mlm_head", "transform_norm"), base=False, head=True),
                 Entry("vocab_projector.bias", ("mlm_head", "bias"), base=False, head=True)]
    elif cfg.head == "classifier":
        rows += [*linear("pre_classifier", ("classifier", "pre_classifier"), base=False, head=True),
                 *linear("classifier", ("classifier", "classifier"), base=False, head=True)]
    return rows


def config_from_hf(hf: dict[str, Any], head: str) -> BertConfig:
    """HF DistilBertConfig dict (defaults as in transformers) -> our config with `head`."""
    try:
        return BertConfig(
            vocab_size=int(hf.get("vocab_size", 30522)),
            hidden_size=int(hf.get("dim", 768)),
            num_layers=int(hf.get("n_layers", 6)),
            num_heads=int(hf.get("n_heads", 12)),
            intermediate_size=int(hf.get("hidden_dim", 3072)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=0,
            hidden_act=_table.activation(hf.get("activation", "gelu"), "activation"),
            layer_norm_eps=LAYER_NORM_EPS,
            hidden_dropout=float(hf.get("dropout", 0.1)),
            attention_dropout=float(hf.get("attention_dropout", 0.1)),
            classifier_dropout=float(hf.get("seq_classif_dropout", 0.2)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=int(hf.get("pad_token_id") or 0),
            flavor="distilbert",
            head=head,
            num_labels=_table.num_labels(hf),
        )
    except ValueError as e:
        raise UserError(f"jaxdistill cannot build this model: {e}.") from e


def config_to_hf(cfg: BertConfig, id2label: dict[int, str] | None = None) -> dict[str, Any]:
    """Our config -> a complete config.json that transformers 5 loads as `EXPORT_ARCHITECTURE`."""
    if cfg.flavor != "distilbert":
        raise ValueError(f"config_to_hf for DistilBERT got flavor={cfg.flavor!r}")
    if cfg.layer_norm_eps != LAYER_NORM_EPS:
        raise UserError(f"layer_norm_eps={cfg.layer_norm_eps} cannot be exported as DistilBERT, "
                        f"whose epsilon is fixed at {LAYER_NORM_EPS}.")
    out: dict[str, Any] = {
        "architectures": [EXPORT_ARCHITECTURE[cfg.head]],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "dim": cfg.hidden_size,
        "n_layers": cfg.num_layers,
        "n_heads": cfg.num_heads,
        "hidden_dim": cfg.intermediate_size,
        "activation": cfg.hidden_act,
        "dropout": cfg.hidden_dropout,
        "attention_dropout": cfg.attention_dropout,
        # Our classifier falls back to hidden_dropout when classifier_dropout is unset.
        "seq_classif_dropout": (cfg.classifier_dropout if cfg.classifier_dropout is not None
                                else cfg.hidden_dropout),
        "qa_dropout": cfg.hidden_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "sinusoidal_pos_embds": False,
        "initializer_range": cfg.initializer_range,
        "pad_token_id": cfg.pad_token_id,
    }
    return _table.export_config(out, cfg, id2label)


params_from_hf, params_to_hf = _table.params_io(table, BASE_PREFIX, TIED)
