"""FastBERT's exit classifiers ("student" branches): one small classifier after a layer.

The reference's shape (autoliuweijie/FastBERT, `ClassifierModule`): Linear(hidden -> width) +
tanh, a `heads`-head self-attention of that width (separate q/k/v, additive -10000 key mask,
dropout on the probabilities, an output Linear; no residual, no LayerNorm), token 0,
Linear(width -> width) + tanh, Linear(width -> labels). The branches of all layers share one
shape, so their parameters are stacked on a leading 'layers' axis and run with `vmap`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class BranchShape:
    hidden_size: int
    num_labels: int
    width: int = 128
    heads: int = 2
    dropout: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.width < 1 or self.heads < 1 or self.width % self.heads:
            raise ValueError(f"branch width {self.width} must be a positive multiple of its "
                             f"{self.heads} heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"branch dropout={self.dropout}: must be in [0, 1)")


def shape_of(cfg: Any, width: int = 128, heads: int = 2, dropout: float = 0.1) -> BranchShape:
    """The branches of an encoder config (its hidden size, labels and init scale) with the
    options FastBERT trained them with (the reference's defaults)."""
    return BranchShape(cfg.hidden_size, cfg.num_labels, width, heads, dropout,
                       cfg.initializer_range)


class ExitBranch(nn.Module):
    shape: BranchShape

    @nn.compact
    def __call__(self, hidden: jax.Array, attention_mask: jax.Array, deterministic: bool
                 ) -> jax.Array:
        s = self.shape
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, kernel_init=nn.initializers.normal(s.initializer_range), name=name)
        x = jnp.tanh(dense(s.width, "reduce")(hidden.astype(jnp.float32)))
        b, t, _ = x.shape
        d = s.width // s.heads
        split = lambda y: y.reshape(b, t, s.heads, d).swapaxes(1, 2)  # noqa: E731
        q, k, v = (split(dense(s.width, name)(x)) for name in ("query", "key", "value"))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(float(d))
        scores = scores + (1.0 - attention_mask[:, None, None, :].astype(scores.dtype)) * -10000.0
        probs = nn.Dropout(s.dropout)(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
        context = jnp.einsum("bhqk,bhkd->bhqd", probs, v).swapaxes(1, 2).reshape(b, t, s.width)
        first = dense(s.width, "out")(context)[:, 0]
        return dense(s.num_labels, "classifier")(jnp.tanh(dense(s.width, "pool")(first)))


def init(shape: BranchShape, layers: int, rng: jax.Array) -> dict:
    """Stacked params of `layers` branches: every leaf has a leading [layers] axis."""
    module = ExitBranch(shape)
    hidden = jnp.zeros((1, 2, shape.hidden_size), jnp.float32)
    mask = jnp.ones((1, 2), jnp.int32)
    one = lambda key: module.init(key, hidden, mask, True)["params"]  # noqa: E731
    return jax.vmap(one)(jax.random.split(rng, layers))


def axes(params: dict) -> dict:
    """Logical axes of `init`'s output: the layer axis, then replicated (branches are small)."""
    return jax.tree.map(lambda x: P("layers", *([None] * (x.ndim - 1))), params)


def apply_one(shape: BranchShape, params: dict, hidden: jax.Array, attention_mask: jax.Array,
              deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
    """Logits [B, labels] of one branch (params without the layer axis)."""
    rngs = None if deterministic else {"dropout": rng}
    return ExitBranch(shape).apply({"params": params}, hidden, attention_mask, deterministic,
                                   rngs=rngs)


def apply_all(shape: BranchShape, params: dict, hidden: jax.Array, attention_mask: jax.Array,
              deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
    """Logits [layers, B, labels] of every branch on its layer's hidden states [layers, B, T, H]."""
    layers = hidden.shape[0]
    rngs = jax.random.split(rng, layers) if rng is not None else jnp.zeros((layers, 2), jnp.uint32)

    def one(p, h, key):
        return apply_one(shape, p, h, attention_mask, deterministic,
                         None if rng is None else key)

    return jax.vmap(one)(params, hidden, rngs)


def flops_per_example(shape: BranchShape, seq_len: int) -> float:
    """Model FLOPs of one branch on one sequence of `seq_len` tokens: the per-token Linears
    (reduce, q, k, v, out) and attention (QK^T, PV), then pool and classifier on token 0."""
    h, w, t, c = shape.hidden_size, shape.width, seq_len, shape.num_labels
    per_token = 2 * (h * w + 4 * w * w) + 4 * t * w
    return float(t * per_token + 2 * (w * w + w * c))


def uncertainty(logits: jax.Array) -> jax.Array:
    """FastBERT's normalised entropy of softmax(logits): entropy / log(num_labels), in [0, 1]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return entropy / jnp.log(float(logits.shape[-1]))
