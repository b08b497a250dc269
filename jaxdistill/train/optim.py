"""Learning-rate schedules and the optimizer, built from config with optax."""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from flax import traverse_util

from jaxdistill.config import OptimizerConfig
from jaxdistill.errors import UserError

SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("adamw", "lamb")


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps >= 0 else int(round(cfg.warmup_ratio * total_steps))


def schedule(cfg: OptimizerConfig, peak_lr: float, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr`, then linear/cosine decay to end_lr_ratio*peak (or flat)."""
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"optimizer.schedule={cfg.schedule!r}: expected one of {', '.join(SCHEDULES)}.")
    warm = min(warmup_steps(cfg, total_steps), total_steps)
    decay = max(total_steps - warm, 1)
    end = peak_lr * cfg.end_lr_ratio
    if cfg.schedule == "linear":
        after = optax.linear_schedule(peak_lr, end, decay)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak_lr, decay, alpha=cfg.end_lr_ratio)
    else:
        after = optax.constant_schedule(peak_lr)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warm), after], [warm])


def _decay_mask(params):
    # BERT convention: no weight decay on biases and LayerNorm parameters (1-D leaves).
    return jax.tree.map(lambda x: x.ndim > 1, params)


def optimizer(cfg: OptimizerConfig, peak_lr: float, total_steps: int,
              frozen: Callable[[tuple[str, ...]], bool] | None = None, params: Any = None
              ) -> optax.GradientTransformation:
    """AdamW with warmup/decay and clipping; params for which `frozen(path)` holds never move.

    `params` (arrays or shapes) is needed with `frozen`: the labels are computed from it once.
    """
    if cfg.name not in OPTIMIZERS:
        raise UserError(f"optimizer.name={cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}.")
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    lr = schedule(cfg, peak_lr, total_steps)
    if cfg.name == "adamw":
        parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, mask=_decay_mask))
    else:
        # MobileBERT's lamb_optimizer.py: biases and norms get neither weight decay nor the
        # trust ratio (optax.lamb would apply the ratio to every tensor).
        parts += [optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                  optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
                  optax.masked(optax.scale_by_trust_ratio(), _decay_mask),
                  optax.scale_by_learning_rate(lr)]
    tx = optax.chain(*parts)
    if frozen is None:
        return tx
    labels = traverse_util.path_aware_map(
        lambda path, _: "frozen" if frozen(path) else "train", params)
    # Frozen params keep no optimizer moments (set_to_zero has no state).
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
