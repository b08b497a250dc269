"""MobileBERT (Sun et al. 2020) and its IB-BERT teacher as one Flax Linen model kind.

The function computed is transformers' `MobileBertModel` / `MobileBertForMaskedLM` /
`MobileBertForSequenceClassification` (tested against them in fp32 to 1e-4):

  embeddings  128-d word table; trigram input cat[x_{t+1}, x_t, x_{t-1}] (zeros past either
              end); `transformation` Linear to hidden_size iff trigram_input or
              embedding_size != hidden_size; + position and token-type embeddings; norm.
  layer       on the block input x (hidden_size wide; the "inter-block" width):
              bottleneck_in = norm(Linear(x -> intra)) is the attention's residual; q and k
              read the shared bottleneck_qk = norm(Linear(x -> intra)) (MobileBERT), or the
              input bottleneck (use_bottleneck_attention), or x itself (IB-BERT); v reads x
              unless use_bottleneck_attention. Attention width = true_hidden_size.
              attn = norm(Linear(ctx) + bottleneck_in); num_feedforward_networks FFNs
              h = norm(Linear(act(Linear(h))) + h), the last one being HF's intermediate/output;
              then the output bottleneck norm(Linear(h -> hidden) + x). Without use_bottleneck
              the layer is a post-LN BERT layer.
  heads       MLM: transform dense + act + LayerNorm (always a real one), logits =
              h @ cat[word_table^T; extra] + bias, `extra` [hidden - embedding, vocab] untied
              (HF's cls.predictions.dense); classifier: first token (tanh(pooler(.)) with
              classifier_activation), dropout, Linear(hidden -> labels).

"no_norm" is NoNorm (x * scale + bias); "layer_norm" a LayerNorm. As in transformers, the
embedding norm and each layer's FFN-output norm use torch's default epsilon 1e-5 (HF builds them
without `layer_norm_eps`); every other norm uses `layer_norm_eps`.

IB-BERT (the paper's teacher, `ib_bert_config`) is the same kind with q, k and v all read from
the hidden_size-wide block input while the attention is intra_bottleneck_size wide: the
module sizes every projection from the tensor it reads, which transformers' class cannot do
(its q/k take true_hidden_size inputs), so such a config has no HF class (`has_hf_class`) and
exports as the jaxdistill-native directory.

Parameter layout, captures (`Wants`), scanning, remat and dtypes are BERT's (models/bert.py):
layers under `encoder/layer_{i}`, stacked under `encoder/layers/layer` with `scan_layers`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxdistill.models import base, bert
from jaxdistill.models.base import Wants
from jaxdistill.models.bert import ACTIVATIONS, _dense, _embed, _layer_norm

NORMALIZATIONS = ("no_norm", "layer_norm")
# torch.nn.LayerNorm's default, which transformers' MobileBERT uses for the embedding norm and
# the FFN-output norm of each layer (built without `layer_norm_eps`).
TORCH_LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class MobileBertConfig:
    """Architecture of a MobileBERT-family encoder; field names follow transformers'
    MobileBertConfig (num_layers/num_heads: its num_hidden_layers/num_attention_heads).

    hidden_size is the block input/output width (what hidden states have, 512 in the paper);
    intra_bottleneck_size the width inside a block when use_bottleneck (128 for MobileBERT,
    1024 for IB-BERT). Defaults are the paper's MobileBERT, with classifier_activation off as in
    its released config (transformers defaults it on).
    """

    kind: str = "mobilebert"
    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 512
    num_layers: int = 24
    num_heads: int = 4
    intra_bottleneck_size: int = 128
    intermediate_size: int = 512
    num_feedforward_networks: int = 4
    hidden_act: str = "relu"
    normalization_type: str = "no_norm"
    trigram_input: bool = True
    use_bottleneck: bool = True
    use_bottleneck_attention: bool = False
    key_query_shared_bottleneck: bool = True
    classifier_activation: bool = False
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    pad_token_id: int = 0
    head: str = "none"
    num_labels: int = 2
    # Execution options, not architecture: they never change the function the model computes.
    dtype: str = "float32"  # compute dtype; parameters stay in param_dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"

    # Accepted values of the keys a recipe may set (student.*), checked when it loads.
    _RANGES: ClassVar[dict[str, str]] = {
        **bert.RANGES,
        **base.ranges(sizes="embedding_size intra_bottleneck_size num_feedforward_networks")}

    def __post_init__(self):
        if self.kind != "mobilebert":
            raise ValueError(f"kind={self.kind!r}: a MobileBertConfig is of kind 'mobilebert'")
        bert.check_choices(self)
        if self.normalization_type not in NORMALIZATIONS:
            raise ValueError(f"normalization_type={self.normalization_type!r}: expected one of "
                             f"{NORMALIZATIONS}")
        sizes = {"vocab_size": self.vocab_size, "embedding_size": self.embedding_size,
                 "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                 "intra_bottleneck_size": self.intra_bottleneck_size,
                 "intermediate_size": self.intermediate_size,
                 "num_feedforward_networks": self.num_feedforward_networks,
                 "max_position_embeddings": self.max_position_embeddings,
                 "type_vocab_size": self.type_vocab_size, "num_labels": self.num_labels}
        for key, value in sizes.items():
            if value < 1:
                raise ValueError(f"{key}={value}: must be at least 1")
        if self.num_layers < 0:
            raise ValueError(f"num_layers={self.num_layers}: must be at least 0")
        if self.true_hidden_size % self.num_heads:
            width = "intra_bottleneck_size" if self.use_bottleneck else "hidden_size"
            raise ValueError(f"{width}={self.true_hidden_size} (the attention width) is not "
                             f"divisible by num_heads={self.num_heads}")
        if self.head == "mlm" and self.hidden_size <= self.embedding_size:
            raise ValueError(f"an MLM head needs hidden_size > embedding_size (its decoder is "
                             f"cat[word table ({self.embedding_size} wide); a dense of "
                             f"hidden_size - embedding_size rows]), got hidden_size="
                             f"{self.hidden_size}, embedding_size={self.embedding_size}")

    # --- derived shapes ------------------------------------------------------------------------
    @property
    def true_hidden_size(self) -> int:
        """Width inside a block (and of the attention): intra_bottleneck_size with the
        bottleneck, else hidden_size (transformers' `true_hidden_size`)."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.true_hidden_size // self.num_heads

    @property
    def embedding_transformed(self) -> bool:
        """Whether the word vectors go through `embeddings/transformation` (to hidden_size)."""
        return self.trigram_input or self.embedding_size != self.hidden_size

    @property
    def query_key_input_size(self) -> int:
        """Width of the tensor q and k read: the bottleneck (shared q/k or input), else the
        block input (IB-BERT, or no bottleneck)."""
        shared = self.use_bottleneck_attention or self.key_query_shared_bottleneck
        return self.intra_bottleneck_size if self.use_bottleneck and shared else self.hidden_size

    @property
    def value_input_size(self) -> int:
        """Width of the tensor v reads: the input bottleneck with use_bottleneck_attention,
        else the block input."""
        bottlenecked = self.use_bottleneck and self.use_bottleneck_attention
        return self.intra_bottleneck_size if bottlenecked else self.hidden_size

    @property
    def pooling(self) -> str | None:
        """`Outputs.pooled`: 'tanh' (tanh(pooler(first token)), classifier_activation), 'first'
        (the first token), None under an MLM head (MobileBertForMaskedLM has no pooler)."""
        if self.head == "mlm":
            return None
        return "tanh" if self.classifier_activation else "first"

    def replace(self, **changes: Any) -> "MobileBertConfig":
        return dataclasses.replace(self, **changes)


# The paper's IB-BERT-large teacher (google-research mobilebert
# config/uncased_L-24_H-1024_B-512_A-4.json): 512-wide blocks, 1024-wide attention of 4 heads of
# 256 and a 4096 FFN, q/k/v from the block input, GELU, LayerNorm, BERT's dropouts, tanh pooler.
IB_BERT = dict(embedding_size=128, hidden_size=512, num_layers=24, num_heads=4,
               intra_bottleneck_size=1024, intermediate_size=4096, num_feedforward_networks=1,
               hidden_act="gelu", normalization_type="layer_norm", trigram_input=True,
               use_bottleneck=True, use_bottleneck_attention=False,
               key_query_shared_bottleneck=False, classifier_activation=True,
               hidden_dropout=0.1, attention_dropout=0.1)


def ib_bert_config(**overrides: Any) -> MobileBertConfig:
    """The IB-BERT-large teacher's config (`IB_BERT`), with any field overridden."""
    return MobileBertConfig(**{**IB_BERT, **overrides})


def has_hf_class(cfg: MobileBertConfig) -> bool:
    """Whether transformers' MobileBERT classes compute this config: their q/k read
    true_hidden_size-wide inputs, so q/k reading the block input (IB-BERT) needs
    hidden_size == intra_bottleneck_size."""
    return cfg.query_key_input_size == cfg.true_hidden_size


# ------------------------------------------------------------------------------------- modules


class NoNorm(nn.Module):
    """MobileBERT's NoNorm: x * scale + bias, elementwise (no statistics)."""

    cfg: MobileBertConfig

    @nn.compact
    def __call__(self, x):
        dtype, param_dtype = jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
        axes = ("norm",)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), axes),
                           (x.shape[-1],), param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), axes),
                          (x.shape[-1],), param_dtype)
        return x.astype(dtype) * scale.astype(dtype) + bias.astype(dtype)


def _norm(cfg: MobileBertConfig, name: str, eps: float | None = None) -> nn.Module:
    """The config's normalisation (eps: a LayerNorm epsilon other than layer_norm_eps)."""
    if cfg.normalization_type == "no_norm":
        return NoNorm(cfg, name=name)
    return _layer_norm(cfg, name, eps)


class Embeddings(nn.Module):
    cfg: MobileBertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.cfg
        word = _embed(cfg.vocab_size, ("vocab", "embed"), cfg, "word", features=cfg.embedding_size)
        # Gather rows of the parameter-dtype table, then cast (models/bert.py says why).
        x = jnp.take(word.embedding, input_ids, axis=0).astype(jnp.dtype(cfg.dtype))
        if cfg.trigram_input:
            shift = lambda y, before, after: jnp.pad(y, ((0, 0), (before, after), (0, 0)))
            x = jnp.concatenate([shift(x[:, 1:], 0, 1), x, shift(x[:, :-1], 1, 0)], axis=-1)
        if cfg.embedding_transformed:
            x = _dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "transformation")(x)
        x = bert.add_positions_and_types(x, token_type_ids, cfg)
        x = _norm(cfg, "norm", TORCH_LAYER_NORM_EPS)(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class Bottleneck(nn.Module):
    """norm(Linear(x -> intra_bottleneck_size))."""

    cfg: MobileBertConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        x = _dense(cfg.intra_bottleneck_size, ("embed", "embed_out"), cfg, "dense")(x)
        return _norm(cfg, "norm")(x)


class SelfAttention(nn.Module):
    """q/k/v projections (input widths from the tensors read), attention, output projection."""

    cfg: MobileBertConfig
    capture: Wants

    @nn.compact
    def __call__(self, query_in, key_in, value_in, key_mask, deterministic: bool):
        cfg = self.cfg
        width = cfg.true_hidden_size
        b, t, _ = query_in.shape
        project = lambda name, y: _dense(width, ("embed", "heads"), cfg, name)(y).reshape(
            b, t, cfg.num_heads, cfg.head_dim)
        q, k, v = project("query", query_in), project("key", key_in), project("value", value_in)
        context, captured = bert.attend(q, k, v, key_mask, self.capture,
                                        cfg.attention_dropout, deterministic)
        out = _dense(width, ("heads", "embed"), cfg, "out")(context.reshape(b, t, -1))
        return out, captured


class FeedForward(nn.Module):
    """h = norm(Linear(act(Linear(h))) + h). The last FFN of a layer is HF's intermediate/output:
    its norm has torch's default epsilon and, without the bottleneck, dropout before it."""

    cfg: MobileBertConfig
    deterministic: bool
    last: bool

    @nn.compact
    def __call__(self, h):
        cfg = self.cfg
        y = _dense(cfg.intermediate_size, ("embed", "mlp"), cfg, "intermediate")(h)
        y = _dense(cfg.true_hidden_size, ("mlp", "embed"), cfg, "output")(ACTIVATIONS[cfg.hidden_act](y))
        if self.last and not cfg.use_bottleneck:
            y = nn.Dropout(cfg.hidden_dropout)(y, deterministic=self.deterministic)
        return _norm(cfg, "norm", TORCH_LAYER_NORM_EPS if self.last else None)(y + h)


class MobileBertLayer(nn.Module):
    """One block: hidden_size in and out (module docstring); (x, captured attention features)."""

    cfg: MobileBertConfig
    capture: Wants
    deterministic: bool

    @nn.compact
    def __call__(self, x, key_mask):
        cfg, det = self.cfg, self.deterministic
        query_in = value_in = layer_input = x
        if cfg.use_bottleneck:
            layer_input = Bottleneck(cfg, name="bottleneck_in")(x)
            if cfg.key_query_shared_bottleneck:
                # Built even when use_bottleneck_attention leaves it unread, as transformers
                # does (its weights are in the checkpoint); XLA drops the dead computation.
                query_in = Bottleneck(cfg, name="bottleneck_qk")(x)
            if cfg.use_bottleneck_attention:
                query_in = value_in = layer_input
        attn, captured = SelfAttention(cfg, self.capture, name="attention")(
            query_in, query_in, value_in, key_mask, det)
        if not cfg.use_bottleneck:
            attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=det)
        h = _norm(cfg, "attention_norm")(attn + layer_input)
        n = cfg.num_feedforward_networks
        for j in range(n):
            h = FeedForward(cfg, det, last=j == n - 1, name=f"ffn_{j}")(h)
        if cfg.use_bottleneck:
            out = _dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "bottleneck_out")(h)
            out = nn.Dropout(cfg.hidden_dropout)(out, deterministic=det)
            h = _norm(cfg, "bottleneck_out_norm")(out + x)
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        return h, captured


class _ScanBody(bert._ScanBody):
    layer_cls = MobileBertLayer


class Encoder(bert.Encoder):
    layer_cls = MobileBertLayer
    scan_body = _ScanBody


class MobileBertModel(bert.BertModel):
    """Encoder plus the head named by `cfg.head` ('none', 'mlm', 'classifier'); `pooled` is
    the first token, through tanh(pooler(.)) with classifier_activation."""

    embeddings_cls = Embeddings
    encoder_cls = Encoder


def matmul_params(cfg: MobileBertConfig, mlm_positions: int | None = None, seq: int = 1) -> float:
    """Matmul weights a token passes through (the MLM decoder scaled by its share when only
    `mlm_positions` of the `seq` positions get vocabulary logits)."""
    h, a, i = cfg.hidden_size, cfg.true_hidden_size, cfg.intermediate_size
    n = 0.0
    if cfg.embedding_transformed:
        n += (3 if cfg.trigram_input else 1) * cfg.embedding_size * h
    layer = (2 * cfg.query_key_input_size + cfg.value_input_size + a) * a
    layer += cfg.num_feedforward_networks * 2 * a * i
    if cfg.use_bottleneck:
        layer += 2 * h * a  # input and output bottlenecks
        if cfg.key_query_shared_bottleneck and not cfg.use_bottleneck_attention:
            layer += h * a
    n += cfg.num_layers * layer
    if cfg.head == "mlm":
        share = 1.0 if mlm_positions is None else mlm_positions / seq
        n += (h * h + h * cfg.vocab_size) * share
    return float(n)


def forward_flops_per_token(cfg: MobileBertConfig, seq: int,
                            mlm_positions: int | None = None) -> float:
    """2 FLOPs per matmul weight, plus attention's 4 * L * T * width (QK^T and PV at the
    attention width true_hidden_size); embedding lookups are free."""
    return (2 * matmul_params(cfg, mlm_positions, seq)
            + 4 * cfg.num_layers * seq * cfg.true_hidden_size)


@base.register
class MobileBert(bert.EncoderModel):
    """MobileBERT and IB-BERT behind the Model interface (`bert.EncoderModel`). Its
    `word_embeddings` table is [vocab, embedding_size]: 128 wide in the paper, not hidden_size."""

    kind = "mobilebert"
    Config = MobileBertConfig
    Module = MobileBertModel

    @classmethod
    def student_defaults(cls, fields: dict) -> dict:
        # MobileBERT always has token types: a DistilBERT teacher's 0 becomes BERT's 2.
        return {**fields, "type_vocab_size": fields.get("type_vocab_size") or 2}

    def forward_flops_per_token(self, seq_len: int, predictions_per_seq: int | None = None) -> float:
        return forward_flops_per_token(self.config, seq_len, predictions_per_seq)
