"""A Transformer encoder-decoder in the shape of Hugging Face's BartForConditionalGeneration.

C-MLM's student (methods/cmlm.py): post-LN blocks, learned positions (BART's table has two
rows before position 0, so index = position + 2), a LayerNorm after the embeddings, one word table
shared by the encoder, the decoder and the output layer, plus a per-token output bias
(`final_logits_bias`). Every size is configurable; `convert/bart.py` maps it to and from
transformers, so an exported student runs there and in `generate`.

Decoding (inference/decode.py) calls `encode` once and `decode` per step on a fixed-length buffer
of tokens, so one jitted step serves every position.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.errors import UserError
from jaxdistill.models import base
from jaxdistill.models.base import NOTHING, Outputs, Wants
from jaxdistill.models.bert import ACTIVATIONS, attend

POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding's offset


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
    """Field names follow transformers' BartConfig (config.json keys)."""

    kind: str = "seq2seq"
    head: str = "lm"
    num_labels: int = 0
    vocab_size: int = 0  # 0: the student's vocabulary decides (built from the training text)
    d_model: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    encoder_attention_heads: int = 4
    decoder_attention_heads: int = 4
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    max_position_embeddings: int = 64
    activation_function: str = "gelu"
    scale_embedding: bool = False  # multiply word embeddings by sqrt(d_model)
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5  # torch.nn.LayerNorm's, which BART uses
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    decoder_start_token_id: int = 2
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.head != "lm":
            raise ValueError(f"head={self.head!r}: a seq2seq model has only the 'lm' head")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r}: expected one of "
                             f"{sorted(ACTIVATIONS)}")
        for heads, key in ((self.encoder_attention_heads, "encoder_attention_heads"),
                           (self.decoder_attention_heads, "decoder_attention_heads")):
            if heads < 1 or self.d_model % heads:
                raise ValueError(f"{key}={heads} must divide d_model={self.d_model}")
        if self.vocab_size < 0 or self.max_position_embeddings < 1:
            raise ValueError("vocab_size must be >= 0 and max_position_embeddings >= 1")


def _dense(features: int, axes: tuple[str, str], cfg: Seq2SeqConfig, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.normal(cfg.init_std), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           (axes[1],)),
                    name=name)


def _norm(cfg: Seq2SeqConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype),
                        param_dtype=jnp.dtype(cfg.param_dtype),
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ("norm",)),
                        name=name)


class Attention(nn.Module):
    """Multi-head attention of queries x over keys/values kv (self-attention when kv is x)."""

    cfg: Seq2SeqConfig
    num_heads: int

    @nn.compact
    def __call__(self, x, kv, mask, deterministic: bool):
        cfg = self.cfg
        d = cfg.d_model // self.num_heads
        split = lambda y: y.reshape(*y.shape[:2], self.num_heads, d)  # noqa: E731
        q = split(_dense(cfg.d_model, ("embed", "heads"), cfg, "query")(x))
        k = split(_dense(cfg.d_model, ("embed", "heads"), cfg, "key")(kv))
        v = split(_dense(cfg.d_model, ("embed", "heads"), cfg, "value")(kv))
        context, _, _ = attend(q, k, v, mask, NOTHING, cfg.attention_dropout, deterministic)
        return _dense(cfg.d_model, ("heads", "embed"), cfg, "out")(
            context.reshape(*x.shape[:2], -1))


class Block(nn.Module):
    """One post-LN block: self-attention, cross-attention (decoder only), feed-forward."""

    cfg: Seq2SeqConfig
    num_heads: int
    ffn_dim: int
    cross: bool

    @nn.compact
    def __call__(self, x, self_mask, memory, memory_mask, deterministic: bool):
        cfg = self.cfg
        drop = lambda y, rate: nn.Dropout(rate)(y, deterministic=deterministic)  # noqa: E731
        h = Attention(cfg, self.num_heads, name="self_attn")(x, x, self_mask, deterministic)
        x = _norm(cfg, "self_attn_norm")(x + drop(h, cfg.dropout))
        if self.cross:
            h = Attention(cfg, self.num_heads, name="cross_attn")(x, memory, memory_mask,
                                                                 deterministic)
            x = _norm(cfg, "cross_attn_norm")(x + drop(h, cfg.dropout))
        h = ACTIVATIONS[cfg.activation_function](
            _dense(self.ffn_dim, ("embed", "mlp"), cfg, "fc1")(x))
        h = _dense(cfg.d_model, ("mlp", "embed"), cfg, "fc2")(drop(h, cfg.activation_dropout))
        x = _norm(cfg, "final_norm")(x + drop(h, cfg.dropout))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Stack(nn.Module):
    """Embeddings (shared word table + own positions + LayerNorm) and the blocks of one side."""

    cfg: Seq2SeqConfig
    num_layers: int
    num_heads: int
    ffn_dim: int
    cross: bool

    @nn.compact
    def __call__(self, word_table, ids, self_mask, memory, memory_mask, deterministic: bool):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        x = jnp.take(word_table, ids, axis=0).astype(dtype) * scale
        position = self.param("position", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.init_std), (None, "embed")),
            (cfg.max_position_embeddings + POSITION_OFFSET, cfg.d_model),
            jnp.dtype(cfg.param_dtype))
        x = x + position[POSITION_OFFSET:POSITION_OFFSET + ids.shape[1]].astype(dtype)[None]
        x = nn.Dropout(cfg.dropout)(_norm(cfg, "norm_embedding")(x), deterministic=deterministic)
        for i in range(self.num_layers):
            x = Block(cfg, self.num_heads, self.ffn_dim, self.cross, name=f"layer_{i}")(
                x, self_mask, memory, memory_mask, deterministic)
        return x


class Seq2SeqModule(nn.Module):
    cfg: Seq2SeqConfig

    def setup(self):
        cfg = self.cfg
        self.shared = self.param("shared", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model), jnp.dtype(cfg.param_dtype))
        self.final_logits_bias = self.param("final_logits_bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (None, "vocab")), (1, cfg.vocab_size),
            jnp.dtype(cfg.param_dtype))
        self.encoder = Stack(cfg, cfg.encoder_layers, cfg.encoder_attention_heads,
                             cfg.encoder_ffn_dim, cross=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, cfg.decoder_attention_heads,
                             cfg.decoder_ffn_dim, cross=True)

    def encode(self, input_ids, attention_mask, deterministic: bool = True):
        key_mask = attention_mask[:, None, None, :].astype(bool)
        return self.encoder(self.shared, input_ids, key_mask, None, None, deterministic)

    def decode(self, memory, attention_mask, decoder_input_ids, deterministic: bool = True):
        t = decoder_input_ids.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        memory_mask = attention_mask[:, None, None, :].astype(bool)
        h = self.decoder(self.shared, decoder_input_ids, causal, memory, memory_mask,
                         deterministic)
        logits = jnp.einsum("btd,vd->btv", h, self.shared.astype(h.dtype))
        return logits.astype(jnp.float32) + self.final_logits_bias.astype(jnp.float32)

    def __call__(self, input_ids, attention_mask, decoder_input_ids, deterministic: bool = True):
        memory = self.encode(input_ids, attention_mask, deterministic)
        return self.decode(memory, attention_mask, decoder_input_ids, deterministic)


def _sample_inputs(cfg: Seq2SeqConfig):
    ids = jnp.zeros((1, 4), jnp.int32)
    return ids, jnp.ones((1, 4), jnp.int32), ids


@base.register
class Seq2Seq(base.Model):
    """The BART-shaped encoder-decoder behind the Model interface (C-MLM's student)."""

    kind = "seq2seq"
    Config = Seq2SeqConfig
    HEADS = ("lm",)
    RUNTIME_FIELDS = ("dtype", "param_dtype", "dropout", "attention_dropout",
                      "activation_dropout")

    def __init__(self, config: Seq2SeqConfig):
        super().__init__(config)
        if config.vocab_size < 1:
            raise UserError("A seq2seq model needs vocab_size >= 1 (a student takes it from the "
                            "vocabulary built from its training text).")
        self.module = Seq2SeqModule(config)

    def input_spec(self) -> dict[str, int]:
        return {"input_ids": 2, "attention_mask": 2, "decoder_input_ids": 2}

    def init(self, rng: jax.Array) -> dict:
        return nn.unbox(self.module.init(rng, *_sample_inputs(self.config))["params"])

    def logical_axes(self) -> Any:
        boxed = jax.eval_shape(lambda: self.module.init(jax.random.key(0),
                                                        *_sample_inputs(self.config)))
        return nn.get_partition_spec(boxed["params"])

    def max_seq_len(self) -> int | None:
        return self.config.max_position_embeddings

    def apply(self, params: dict, batch: base.Batch, *, wants: Wants = NOTHING,
              train: bool = False, rngs: dict | None = None) -> Outputs:
        if wants != NOTHING:
            raise UserError("A seq2seq model returns only its logits: no hidden states, "
                            "attention or masked-position logits for a method to read.")
        logits = self.module.apply({"params": params}, batch["input_ids"],
                                   batch["attention_mask"], batch["decoder_input_ids"],
                                   deterministic=not train, rngs=rngs)
        return Outputs(logits=logits)

    def encode(self, params: dict, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """[B, S, d_model] encoder states (no dropout)."""
        return self.module.apply({"params": params}, input_ids, attention_mask,
                                 method=Seq2SeqModule.encode)

    def decode(self, params: dict, memory: jax.Array, attention_mask: jax.Array,
               decoder_input_ids: jax.Array) -> jax.Array:
        """[B, T, vocab] float32 next-token logits of every decoder position (causal)."""
        return self.module.apply({"params": params}, memory, attention_mask, decoder_input_ids,
                                 method=Seq2SeqModule.decode)

    def word_embeddings(self, params: dict) -> Any:
        return params["shared"]

    def forward_flops_per_token(self, seq_len: int,
                                predictions_per_seq: int | None = None) -> float:
        """Per token of a pair whose source and target are both `seq_len` long: the encoder's
        matmuls for one source token plus the decoder's (cross-attention and the output layer
        included) for one target token, attention's 4*L*T*d per side; halved because a pair
        has two tokens per position."""
        del predictions_per_seq
        c, d, t = self.config, self.config.d_model, seq_len
        encoder = c.encoder_layers * (2 * (4 * d * d + 2 * d * c.encoder_ffn_dim) + 4 * t * d)
        decoder = c.decoder_layers * (2 * (8 * d * d + 2 * d * c.decoder_ffn_dim) + 8 * t * d)
        return (encoder + decoder + 2 * d * c.vocab_size) / 2
