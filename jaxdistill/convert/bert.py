"""BERT (BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification) <-> ours.

Also covers MiniLM / TinyBERT / sentence-transformers BERT directories: same tensors, often saved
without the `bert.` prefix.
"""
from __future__ import annotations

from typing import Any

from jaxdistill.convert import _table
from jaxdistill.convert._table import Entry, embedding, layer_norm, linear
from jaxdistill.errors import UserError
from jaxdistill.models.bert import BertConfig

MODEL_TYPE = "bert"
KIND = "bert"  # the model kind whose config this family reads and writes
BASE_PREFIX = "bert."
# Architecture name -> the head our model gives it. BertForPreTraining's NSP head is dropped.
ARCHITECTURES = {
    "BertModel": "none",
    "BertForMaskedLM": "mlm",
    "BertForPreTraining": "mlm",
    "BertForSequenceClassification": "classifier",
}
EXPORT_ARCHITECTURE = {"none": "BertModel", "mlm": "BertForMaskedLM",
                       "classifier": "BertForSequenceClassification"}
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
TIED = [("cls.predictions.decoder.weight", WORD_EMBEDDINGS)]


def exports(cfg: Any) -> bool:
    """Whether this family writes `cfg` (a 'bert'-flavoured BERT config)."""
    return cfg.kind == KIND and cfg.flavor == "bert"


def table(cfg: BertConfig) -> list[Entry]:
    """Every tensor of a BERT model with `cfg.head`, in HF naming (base prefix stripped)."""
    rows = [*embedding("embeddings.word_embeddings", ("embeddings", "word")),
            *embedding("embeddings.position_embeddings", ("embeddings", "position")),
            *layer_norm("embeddings.LayerNorm", ("embeddings", "norm"))]
    if cfg.type_vocab_size:
        rows += embedding("embeddings.token_type_embeddings", ("embeddings", "token_type"))
    for i in range(cfg.num_layers):
        hf, ours = f"encoder.layer.{i}", ("encoder", f"layer_{i}")
        rows += [*linear(f"{hf}.attention.self.query", ours + ("attention", "query")),
                 *linear(f"{hf}.attention.self.key", ours + ("attention", "key")),
                 *linear(f"{hf}.attention.self.value", ours + ("attention", "value")),
                 *linear(f"{hf}.attention.output.dense", ours + ("attention", "out")),
                 *layer_norm(f"{hf}.attention.output.LayerNorm", ours + ("attention_norm",)),
                 *linear(f"{hf}.intermediate.dense", ours + ("intermediate",)),
                 *linear(f"{hf}.output.dense", ours + ("output",)),
                 *layer_norm(f"{hf}.output.LayerNorm", ours + ("ffn_norm",))]
    if cfg.head != "mlm":  # BertForMaskedLM has no pooler
        rows += linear("pooler.dense", ("pooler",), head=True)
    if cfg.head == "mlm":
        rows += [*linear("cls.predictions.transform.dense", ("mlm_head", "transform"), base=False, head=True),
                 *layer_norm("cls.predictions.transform.LayerNorm", ("mlm_head", "transform_norm"),
                             base=False, head=True),
                 # transformers 4 also saved the bias as the (tied) decoder's bias.
                 Entry("cls.predictions.bias", ("mlm_head", "bias"), base=False, head=True,
                       aliases=("cls.predictions.decoder.bias",))]
    elif cfg.head == "classifier":
        rows += linear("classifier", ("classifier", "classifier"), base=False, head=True)
    return rows


def config_from_hf(hf: dict[str, Any], head: str) -> BertConfig:
    """HF BertConfig dict (defaults as in transformers) -> our config with `head`."""
    pos = hf.get("position_embedding_type") or "absolute"
    if pos != "absolute":
        raise UserError(f"position_embedding_type={pos!r} is not supported; only 'absolute' "
                        f"position embeddings are.")
    try:
        return BertConfig(
            vocab_size=int(hf.get("vocab_size", 30522)),
            hidden_size=int(hf.get("hidden_size", 768)),
            num_layers=int(hf.get("num_hidden_layers", 12)),
            num_heads=int(hf.get("num_attention_heads", 12)),
            intermediate_size=int(hf.get("intermediate_size", 3072)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            hidden_act=_table.activation(hf.get("hidden_act", "gelu"), "hidden_act"),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            classifier_dropout=hf.get("classifier_dropout"),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=int(hf.get("pad_token_id") or 0),
            flavor="bert",
            head=head,
            num_labels=_table.num_labels(hf),
        )
    except ValueError as e:
        raise UserError(f"jaxdistill cannot build this model: {e}.") from e


def config_to_hf(cfg: BertConfig, id2label: dict[int, str] | None = None) -> dict[str, Any]:
    """Our config -> a complete config.json that transformers 5 loads as `EXPORT_ARCHITECTURE`."""
    if cfg.flavor != "bert":
        raise ValueError(f"config_to_hf for BERT got flavor={cfg.flavor!r}")
    out: dict[str, Any] = {
        "architectures": [EXPORT_ARCHITECTURE[cfg.head]],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "classifier_dropout": cfg.classifier_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
    }
    return _table.export_config(out, cfg, id2label)


params_from_hf, params_to_hf = _table.params_io(table, BASE_PREFIX, TIED)
