"""MobileBERT (MobileBertModel, MobileBertForMaskedLM, MobileBertForPreTraining,
MobileBertForSequenceClassification) <-> ours (models/mobilebert.py).

Only configs transformers' classes can compute export here (`models.mobilebert.has_hf_class`):
IB-BERT, whose q/k read the block input, has no HF class and exports as the jaxdistill-native
directory (`convert.write_model_dir`). MobileBertForPreTraining's NSP head (and the pooler it
reads) is dropped. NoNorm weights are stored under HF's `LayerNorm` names.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxdistill.convert import _table
from jaxdistill.convert._table import Entry, embedding, layer_norm, linear
from jaxdistill.errors import UserError
from jaxdistill.models.mobilebert import MobileBertConfig, has_hf_class

MODEL_TYPE = "mobilebert"
KIND = "mobilebert"
BASE_PREFIX = "mobilebert."
ARCHITECTURES = {
    "MobileBertModel": "none",
    "MobileBertForMaskedLM": "mlm",
    "MobileBertForPreTraining": "mlm",
    "MobileBertForSequenceClassification": "classifier",
}
EXPORT_ARCHITECTURE = {"none": "MobileBertModel", "mlm": "MobileBertForMaskedLM",
                       "classifier": "MobileBertForSequenceClassification"}
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
TIED = [("cls.predictions.decoder.weight", WORD_EMBEDDINGS)]
# Our config field -> its transformers MobileBertConfig key (config.json).
FIELDS = {
    "vocab_size": "vocab_size", "embedding_size": "embedding_size", "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
    "intra_bottleneck_size": "intra_bottleneck_size", "intermediate_size": "intermediate_size",
    "num_feedforward_networks": "num_feedforward_networks", "hidden_act": "hidden_act",
    "normalization_type": "normalization_type", "trigram_input": "trigram_input",
    "use_bottleneck": "use_bottleneck", "use_bottleneck_attention": "use_bottleneck_attention",
    "key_query_shared_bottleneck": "key_query_shared_bottleneck",
    "classifier_activation": "classifier_activation",
    "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps", "hidden_dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob", "classifier_dropout": "classifier_dropout",
    "initializer_range": "initializer_range", "pad_token_id": "pad_token_id",
}
# transformers' defaults where they differ from ours (a config.json may leave keys out).
HF_DEFAULTS = {"classifier_activation": True}


def exports(cfg: Any) -> bool:
    """Whether this family writes `cfg`: a MobileBERT config transformers' classes compute."""
    return cfg.kind == KIND and has_hf_class(cfg)


def table(cfg: MobileBertConfig) -> list[Entry]:
    """Every tensor of a MobileBERT model with `cfg.head`, in HF naming (base prefix stripped)."""
    rows = [*embedding("embeddings.word_embeddings", ("embeddings", "word")),
            *embedding("embeddings.position_embeddings", ("embeddings", "position")),
            *embedding("embeddings.token_type_embeddings", ("embeddings", "token_type")),
            *layer_norm("embeddings.LayerNorm", ("embeddings", "norm"))]
    if cfg.embedding_transformed:
        rows += linear("embeddings.embedding_transformation", ("embeddings", "transformation"))
    for i in range(cfg.num_layers):
        hf, ours = f"encoder.layer.{i}", ("encoder", f"layer_{i}")
        rows += [*linear(f"{hf}.attention.self.query", ours + ("attention", "query")),
                 *linear(f"{hf}.attention.self.key", ours + ("attention", "key")),
                 *linear(f"{hf}.attention.self.value", ours + ("attention", "value")),
                 *linear(f"{hf}.attention.output.dense", ours + ("attention", "out")),
                 *layer_norm(f"{hf}.attention.output.LayerNorm", ours + ("attention_norm",))]
        if cfg.use_bottleneck:
            bottlenecks = [("input", "bottleneck_in")]
            if cfg.key_query_shared_bottleneck:
                bottlenecks.append(("attention", "bottleneck_qk"))
            for theirs, name in bottlenecks:
                rows += [*linear(f"{hf}.bottleneck.{theirs}.dense", ours + (name, "dense")),
                         *layer_norm(f"{hf}.bottleneck.{theirs}.LayerNorm", ours + (name, "norm"))]
        last = cfg.num_feedforward_networks - 1
        for j in range(cfg.num_feedforward_networks):
            ffn = hf if j == last else f"{hf}.ffn.{j}"  # the last FFN is HF's intermediate/output
            rows += [*linear(f"{ffn}.intermediate.dense", ours + (f"ffn_{j}", "intermediate")),
                     *linear(f"{ffn}.output.dense", ours + (f"ffn_{j}", "output")),
                     *layer_norm(f"{ffn}.output.LayerNorm", ours + (f"ffn_{j}", "norm"))]
        if cfg.use_bottleneck:
            rows += [*linear(f"{hf}.output.bottleneck.dense", ours + ("bottleneck_out",)),
                     *layer_norm(f"{hf}.output.bottleneck.LayerNorm", ours + ("bottleneck_out_norm",))]
    if cfg.pooling == "tanh":
        rows += linear("pooler.dense", ("pooler",), head=True)
    if cfg.head == "mlm":
        rows += [*linear("cls.predictions.transform.dense", ("mlm_head", "transform"), base=False, head=True),
                 *layer_norm("cls.predictions.transform.LayerNorm", ("mlm_head", "transform_norm"),
                             base=False, head=True),
                 # [hidden - embedding_size, vocab]: the rows of the decoder past the word table,
                 # used as h[..., E:] @ weight, so stored as our kernel without a transpose.
                 Entry("cls.predictions.dense.weight", ("mlm_head", "extra", "kernel"), base=False,
                       head=True),
                 Entry("cls.predictions.bias", ("mlm_head", "bias"), base=False, head=True,
                       aliases=("cls.predictions.decoder.bias",))]
    elif cfg.head == "classifier":
        rows += linear("classifier", ("classifier", "classifier"), base=False, head=True)
    return rows


def _field(hf: dict[str, Any], ours: str, default: Any) -> Any:
    value = hf.get(FIELDS[ours], HF_DEFAULTS.get(ours, default))
    if ours == "hidden_act":
        return _table.activation(value, FIELDS[ours])
    if ours == "pad_token_id":
        return int(value or 0)
    if value is None:
        return default
    if default is None:  # classifier_dropout
        return float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{FIELDS[ours]}={value!r} must be true or false.")
        return value
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise UserError(f"{FIELDS[ours]}={value!r} is not a valid {type(default).__name__}.") from None


def config_from_hf(hf: dict[str, Any], head: str) -> MobileBertConfig:
    """HF MobileBertConfig dict (defaults as in transformers) -> our config with `head`."""
    defaults = {f.name: f.default for f in dataclasses.fields(MobileBertConfig)}
    fields = {ours: _field(hf, ours, defaults[ours]) for ours in FIELDS}
    try:
        return MobileBertConfig(**fields, head=head, num_labels=_table.num_labels(hf))
    except ValueError as e:
        raise UserError(f"jaxdistill cannot build this model: {e}.") from e


def config_to_hf(cfg: MobileBertConfig, id2label: dict[int, str] | None = None) -> dict[str, Any]:
    """Our config -> a complete config.json that transformers 5 loads as `EXPORT_ARCHITECTURE`."""
    if not exports(cfg):
        raise UserError("This MobileBERT configuration (q/k read the block input while the "
                        "attention is intra_bottleneck_size wide: IB-BERT) has no Hugging Face "
                        "class; write it as the jaxdistill-native directory.")
    out: dict[str, Any] = {
        "architectures": [EXPORT_ARCHITECTURE[cfg.head]],
        "model_type": MODEL_TYPE,
        **{theirs: getattr(cfg, ours) for ours, theirs in FIELDS.items()},
        "true_hidden_size": cfg.true_hidden_size,
    }
    return _table.export_config(out, cfg, id2label)


params_from_hf, params_to_hf = _table.params_io(table, BASE_PREFIX, TIED)
