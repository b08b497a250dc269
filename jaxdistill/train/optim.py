"""Learning-rate schedules and the optimizer, built from config with optax."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from optax.transforms._masking import MaskedNode

from jaxdistill.config import OptimizerConfig
from jaxdistill.errors import UserError

SCHEDULES = ("linear", "cosine", "constant", "inverse_sqrt")
OPTIMIZERS = ("adamw", "lamb")


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps >= 0 else int(round(cfg.warmup_ratio * total_steps))


def schedule(cfg: OptimizerConfig, peak_lr: float, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr`, then linear/cosine decay to end_lr_ratio*peak, flat,
    or inverse_sqrt: peak * sqrt(warmup / step) (Vaswani et al.'s schedule, as OpenNMT's noam)."""
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"optimizer.schedule={cfg.schedule!r}: expected one of {', '.join(SCHEDULES)}.")
    warm = min(warmup_steps(cfg, total_steps), total_steps)
    decay = max(total_steps - warm, 1)
    end = peak_lr * cfg.end_lr_ratio
    if cfg.schedule == "linear":
        after = optax.linear_schedule(peak_lr, end, decay)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak_lr, decay, alpha=cfg.end_lr_ratio)
    elif cfg.schedule == "inverse_sqrt":
        base = max(warm, 1)
        after = lambda t: peak_lr * jnp.sqrt(base / (jnp.asarray(t, jnp.float32) + base))  # noqa: E731
    else:
        after = optax.constant_schedule(peak_lr)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warm), after], [warm])


def _decay_mask(params, stacked: Any = None):
    # BERT convention: no weight decay on biases and LayerNorm parameters (1-D leaves; 2-D when
    # layers are stacked on a leading axis).
    if stacked is None:
        return jax.tree.map(lambda x: x.ndim > 1, params)
    # Inside optax.multi_transform (student.freeze) the other label's leaves are MaskedNodes.
    masked = lambda x: isinstance(x, MaskedNode)  # noqa: E731
    return jax.tree.map(lambda x, s: x if masked(x) else x.ndim > 1 + int(s), params, stacked,
                        is_leaf=masked)


def scale_by_layer_trust_ratio(stacked: Any = None) -> optax.GradientTransformation:
    """LAMB's trust ratio ||w|| / ||u|| (1 where either norm is 0), per variable; for layers
    stacked on a leading axis (scan, `stacked` True) per layer, so that a scanned model takes the
    step its unscanned twin takes (MobileBERT's lamb_optimizer.py computes it per variable)."""

    def ratio(u, w, per_layer):
        axes = tuple(range(1, u.ndim)) if per_layer else None
        w_norm = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axes, keepdims=per_layer))
        u_norm = jnp.sqrt(jnp.sum(jnp.square(u.astype(jnp.float32)), axes, keepdims=per_layer))
        trust = jnp.where((w_norm == 0) | (u_norm == 0), 1.0, w_norm / jnp.maximum(u_norm, 1e-30))
        return (u * trust).astype(u.dtype)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("the trust ratio needs the params")
        if stacked is None:
            return jax.tree.map(lambda u, w: ratio(u, w, False), updates, params), state
        # Inside optax.masked the unselected leaves are MaskedNodes: pass them through.
        masked = lambda x: isinstance(x, MaskedNode)  # noqa: E731
        return jax.tree.map(lambda u, w, f: u if masked(u) else ratio(u, w, f), updates, params,
                            stacked, is_leaf=masked), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def keep_frozen_state(tx: optax.GradientTransformation, new_state: Any, old_state: Any,
                      scale: Any) -> Any:
    """`new_state` with the old optimizer moments of every parameter (or stacked layer) whose
    update scale is 0 this step: a frozen tensor's moments do not decay while it waits."""
    scales = optax.tree_map_params(tx, lambda _, s: s, new_state, scale,
                                   transform_non_params=lambda _: jnp.ones(()))
    return jax.tree.map(lambda new, old, s: jnp.where(s > 0, new, old).astype(new.dtype),
                        new_state, old_state, scales)


def optimizer(cfg: OptimizerConfig, peak_lr: float, total_steps: int,
              frozen: Callable[[tuple[str, ...]], bool] | None = None, params: Any = None,
              stacked: Any = None) -> optax.GradientTransformation:
    """AdamW or LAMB with warmup/decay and clipping; params for which `frozen(path)` holds never
    move.

    `params` (arrays or shapes) is needed with `frozen`: the labels are computed from it once.
    `stacked` (bools like params) marks tensors whose leading axis stacks layers (scan): LAMB's
    trust ratio and the decay mask then work per layer.
    """
    if cfg.name not in OPTIMIZERS:
        raise UserError(f"optimizer.name={cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}.")
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    lr = schedule(cfg, peak_lr, total_steps)
    decay_mask = lambda tree: _decay_mask(tree, stacked)  # noqa: E731
    if cfg.name == "adamw":
        parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, mask=decay_mask))
    else:
        # MobileBERT's lamb_optimizer.py: biases and norms get neither weight decay nor the
        # trust ratio (optax.lamb would apply the ratio to every tensor).
        parts += [optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                  optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                  optax.masked(scale_by_layer_trust_ratio(stacked), decay_mask),
                  optax.scale_by_learning_rate(lr)]
    tx = optax.chain(*parts)
    if frozen is None:
        return tx
    labels = traverse_util.path_aware_map(
        lambda path, _: "frozen" if frozen(path) else "train", params)
    # Frozen params keep no optimizer moments (set_to_zero has no state).
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
