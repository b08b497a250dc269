"""A Transformer encoder-decoder in the shape of Hugging Face's BartForConditionalGeneration.

C-MLM's student (methods/cmlm.py): post-LN blocks (or pre-LN, mBART's layout, with
`normalize_before`), learned positions (BART's table has two
rows before position 0, so index = position + 2), a LayerNorm after the embeddings, one word table
shared by the encoder, the decoder and the output layer, plus a per-token output bias
(`final_logits_bias`). Every size is configurable; `convert/bart.py` maps it to and from
transformers, so an exported student runs there and in `generate`.

Decoding (inference/generate.py) calls `encode` and `cross_kv` once per batch, then
`decode_step` per position with a key/value cache of fixed length, so one jitted step serves
every position.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

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
    # Pre-LN blocks (LayerNorm before each sublayer, residual around it, one more LayerNorm at
    # the end of each stack): mBART's layout, exported as MBartForConditionalGeneration; trains
    # from scratch without the long warmup post-LN needs (Xiong et al. 2020)
    normalize_before: bool = False
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

    # Accepted values of the keys a recipe may set (student.*), checked when it loads.
    _RANGES: ClassVar[dict[str, str]] = base.ranges(
        sizes="d_model encoder_layers decoder_layers encoder_attention_heads "
              "decoder_attention_heads encoder_ffn_dim decoder_ffn_dim max_position_embeddings",
        counts="vocab_size init_std pad_token_id", positive="layer_norm_eps",
        rates="dropout attention_dropout activation_dropout", dtypes="dtype param_dtype")

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
    """Multi-head attention of queries x over keys/values kv (self-attention when kv is x).

    mode 'full': every position at once. 'project': only kv's keys and values (a decoder's
    cross-attention, computed once per decoded batch). 'cached': x is one position; `cache`
    holds the keys/values of every slot ([B, L, heads, d]): with `index` (self-attention) x's
    own are written at slot `index` and the updated cache is returned too; without (cross-
    attention) the cache is read as it is.
    """

    cfg: Seq2SeqConfig
    num_heads: int

    @nn.compact
    def __call__(self, x, kv, mask, deterministic: bool, *, mode: str = "full", cache=None,
                 index=None):
        cfg = self.cfg
        d = cfg.d_model // self.num_heads
        split = lambda y: y.reshape(*y.shape[:2], self.num_heads, d)  # noqa: E731
        project = lambda y: (split(_dense(cfg.d_model, ("embed", "heads"), cfg, "key")(y)),  # noqa: E731
                             split(_dense(cfg.d_model, ("embed", "heads"), cfg, "value")(y)))
        if mode == "project":
            return project(kv)
        q = split(_dense(cfg.d_model, ("embed", "heads"), cfg, "query")(x))
        if mode == "full":
            k, v = project(kv)
        elif index is None:
            k, v = cache
        else:
            k_new, v_new = project(x)
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k_new.astype(cache[0].dtype),
                                                    index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v_new.astype(cache[1].dtype),
                                                    index, axis=1)
        context, _ = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask, NOTHING,
                            cfg.attention_dropout, deterministic)
        out = _dense(cfg.d_model, ("heads", "embed"), cfg, "out")(
            context.reshape(*x.shape[:2], -1))
        return (out, (k, v)) if mode == "cached" and index is not None else out


class Block(nn.Module):
    """One block, post-LN (BART) or pre-LN (mBART): self-attention, cross-attention (decoder
    only), feed-forward.

    mode 'full' runs every position; 'cross_kv' returns the cross-attention's keys/values of
    `memory`; 'step' runs one position against `cache` = {self: (k, v), cross: (k, v)} and
    returns (x, its updated self-attention keys/values).
    """

    cfg: Seq2SeqConfig
    num_heads: int
    ffn_dim: int
    cross: bool

    @nn.compact
    def __call__(self, x, self_mask, memory, memory_mask, deterministic: bool, *,
                 mode: str = "full", cache=None, index=None):
        cfg = self.cfg
        if mode == "cross_kv":
            return Attention(cfg, self.num_heads, name="cross_attn")(None, memory, None, True,
                                                                     mode="project")
        drop = lambda y, rate: nn.Dropout(rate)(y, deterministic=deterministic)  # noqa: E731
        step = mode == "step"
        pre = cfg.normalize_before

        def sublayer(x, norm_name, fn):
            # post-LN: norm(x + f(x)); pre-LN: x + f(norm(x))
            if pre:
                return x + drop(fn(_norm(cfg, norm_name)(x)), cfg.dropout)
            return _norm(cfg, norm_name)(x + drop(fn(x), cfg.dropout))

        self_attn = Attention(cfg, self.num_heads, name="self_attn")
        self_kv = None

        def attend_self(y):
            nonlocal self_kv
            if step:
                h, self_kv = self_attn(y, y, self_mask, True, mode="cached", cache=cache["self"],
                                       index=index)
                return h
            return self_attn(y, y, self_mask, deterministic)

        x = sublayer(x, "self_attn_norm", attend_self)
        if self.cross:
            cross = Attention(cfg, self.num_heads, name="cross_attn")
            x = sublayer(x, "cross_attn_norm", lambda y: (
                cross(y, None, memory_mask, True, mode="cached", cache=cache["cross"]) if step
                else cross(y, memory, memory_mask, deterministic)))

        def feed_forward(y):
            h = ACTIVATIONS[cfg.activation_function](
                _dense(self.ffn_dim, ("embed", "mlp"), cfg, "fc1")(y))
            return _dense(cfg.d_model, ("mlp", "embed"), cfg, "fc2")(
                drop(h, cfg.activation_dropout))

        x = sublayer(x, "final_norm", feed_forward)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return (x, self_kv) if step else x


class Stack(nn.Module):
    """Embeddings (shared word table + own positions + LayerNorm) and the blocks of one side.

    Modes as Block's: 'full'; 'cross_kv' (a list of each layer's cross keys/values); 'step':
    `ids` is [B, 1] at position `index`, `caches` a list of each layer's {self, cross}, and the
    result (x, the list of updated self keys/values).
    """

    cfg: Seq2SeqConfig
    num_layers: int
    num_heads: int
    ffn_dim: int
    cross: bool

    @nn.compact
    def __call__(self, word_table, ids, self_mask, memory, memory_mask, deterministic: bool, *,
                 mode: str = "full", caches=None, index=None):
        cfg = self.cfg
        blocks = [Block(cfg, self.num_heads, self.ffn_dim, self.cross, name=f"layer_{i}")
                  for i in range(self.num_layers)]
        if mode == "cross_kv":
            return [block(None, None, memory, None, True, mode="cross_kv") for block in blocks]
        dtype = jnp.dtype(cfg.dtype)
        scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        x = jnp.take(word_table, ids, axis=0).astype(dtype) * scale
        position = self.param("position", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.init_std), (None, "embed")),
            (cfg.max_position_embeddings + POSITION_OFFSET, cfg.d_model),
            jnp.dtype(cfg.param_dtype))
        start = POSITION_OFFSET if index is None else POSITION_OFFSET + index
        x = x + jax.lax.dynamic_slice_in_dim(position, start, ids.shape[1]).astype(dtype)[None]
        x = nn.Dropout(cfg.dropout)(_norm(cfg, "norm_embedding")(x), deterministic=deterministic)
        # Pre-LN stacks end with a LayerNorm of their own (mBART's encoder/decoder.layer_norm).
        last = _norm(cfg, "norm_final") if cfg.normalize_before else (lambda y: y)
        if mode == "step":
            updated = []
            for block, cache in zip(blocks, caches):
                x, kv = block(x, self_mask, None, memory_mask, True, mode="step", cache=cache,
                              index=index)
                updated.append(kv)
            return last(x), updated
        for block in blocks:
            x = block(x, self_mask, memory, memory_mask, deterministic)
        return last(x)


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

    def _logits(self, h):
        logits = jnp.einsum("...d,vd->...v", h, self.shared.astype(h.dtype))
        return logits.astype(jnp.float32) + self.final_logits_bias[0].astype(jnp.float32)

    def decode(self, memory, attention_mask, decoder_input_ids, deterministic: bool = True):
        t = decoder_input_ids.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        memory_mask = attention_mask[:, None, None, :].astype(bool)
        return self._logits(self.decoder(self.shared, decoder_input_ids, causal, memory,
                                         memory_mask, deterministic))

    def cross_kv(self, memory):
        return self.decoder(None, None, None, memory, None, True, mode="cross_kv")

    def decode_step(self, cross, attention_mask, cache, token, index):
        memory_mask = attention_mask[:, None, None, :].astype(bool)
        slots = cache[0][0].shape[1]
        self_mask = (jnp.arange(slots) <= index)[None, None, None, :]
        caches = [{"self": kv, "cross": ckv} for kv, ckv in zip(cache, cross)]
        h, updated = self.decoder(self.shared, token[:, None], self_mask, None, memory_mask,
                                  True, mode="step", caches=caches, index=index)
        return self._logits(h[:, 0]), updated

    def __call__(self, input_ids, attention_mask, decoder_input_ids, deterministic: bool = True):
        memory = self.encode(input_ids, attention_mask, deterministic)
        return self.decode(memory, attention_mask, decoder_input_ids, deterministic)


def _sample_inputs(cfg: Seq2SeqConfig):
    del cfg
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

    def cross_kv(self, params: dict, memory: jax.Array) -> list:
        """Each decoder layer's cross-attention (keys, values) of `memory`: once per batch."""
        return self.module.apply({"params": params}, memory, method=Seq2SeqModule.cross_kv)

    def empty_cache(self, batch: int, slots: int) -> list:
        """Each decoder layer's self-attention (keys, values), [batch, slots, heads, d] zeros."""
        c = self.config
        shape = (batch, slots, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads)
        return [(jnp.zeros(shape, jnp.dtype(c.dtype)), jnp.zeros(shape, jnp.dtype(c.dtype)))
                for _ in range(c.decoder_layers)]

    def decode_step(self, params: dict, cross: list, attention_mask: jax.Array, cache: list,
                    token: jax.Array, index: jax.Array) -> tuple[jax.Array, list]:
        """One decoder position with a key/value cache: ([B, vocab] float32 logits of the token
        after `token` [B] at slot `index`, the updated cache). Slots past `index` are masked,
        so the cache may hold anything there."""
        return self.module.apply({"params": params}, cross, attention_mask, cache, token, index,
                                 method=Seq2SeqModule.decode_step)

    def word_embeddings(self, params: dict) -> Any:
        return params["shared"]

    def with_word_embeddings(self, params: dict, table: Any) -> dict:
        return {**params, "shared": table}

    def forward_flops_per_token(self, seq_len: int,
                                predictions_per_seq: int | None = None) -> float:
        """Per token of a pair of `seq_len` tokens, half source and half target (the loop
        counts both sides): the mean of one source token's encoder matmuls and one target
        token's decoder matmuls (cross-attention and the output layer included), with
        attention's 4*L*T*d per attention block."""
        del predictions_per_seq
        c, d, t = self.config, self.config.d_model, seq_len / 2
        encoder = c.encoder_layers * (2 * (4 * d * d + 2 * d * c.encoder_ffn_dim) + 4 * t * d)
        decoder = c.decoder_layers * (2 * (8 * d * d + 2 * d * c.decoder_ffn_dim) + 8 * t * d)
        return (encoder + decoder + 2 * d * c.vocab_size) / 2
