"""MT-DNN knowledge distillation (Liu et al. 2019): one student, several tasks, per-task teacher
ensembles.

The student is a classifier whose output layer holds every task's head side by side: task k owns
the classes label_start..label_stop-1 (heads on one shared pooled vector are exactly one wide
linear layer cut into spans). Batches are single-task (data/tasks/multitask.py) and carry their
task's span, its kind and, for a task taught by an ensemble, the ensemble's soft targets Q (the
averaged class probabilities, written once by `jaxdistill augment` with method ensemble).

Per row: classification takes the log-softmax over its task's span only;
  hard = -log P[label]      soft = -sum_j Q_j log P_j
regression (a one-class span) takes the output as the prediction;
  hard = (y_hat - y)^2      soft = (y_hat - q)^2, q the ensemble's mean prediction
loss = mean over rows of (1 - w) * hard + w * soft, w = soft_weight on rows with soft targets
(0 elsewhere: a task without a teacher trains on its labels alone). soft_weight 0.5 is the
paper's average of the two cross entropies; the reference code sums them and defaults to MSE
against probabilities instead (docs/decisions.md). The temperature is 1, as in the paper.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill.methods.base import STUDENT, Batch, Method, Metrics, register
from jaxdistill.models.base import Outputs

MULTITASK_KEYS = {
    "label_start": "the first class of the row's task in the shared output layer",
    "label_stop": "one past its last class",
    "regression": "1.0 for a regression task's rows",
    "soft_targets": "the ensemble's soft targets, zero outside the task's span",
    "has_soft_targets": "1.0 where the task has an ensemble's soft targets",
}


@dataclasses.dataclass(frozen=True)
class MtdnnOptions:
    """method.options for mtdnn.

    soft_weight: weight of the soft term on tasks with soft targets; the label term gets
      1 - soft_weight. 0.5: the paper's average; 0: plain multi-task training.
    """

    soft_weight: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.soft_weight <= 1.0:
            raise ValueError(f"soft_weight={self.soft_weight}: must be in [0, 1] (the label "
                             f"term gets 1 - soft_weight)")


def mtdnn_loss(logits: jax.Array, batch: Batch, soft_weight: float
               ) -> tuple[jax.Array, Metrics]:
    """MT-DNN's per-task loss on [B, L] logits of the shared output layer (module docstring)."""
    logits = logits.astype(jnp.float32)
    width = logits.shape[-1]
    start = batch["label_start"].astype(jnp.int32)[:, None]
    stop = batch["label_stop"].astype(jnp.int32)[:, None]
    classes = jnp.arange(width)[None, :]
    in_span = (classes >= start) & (classes < stop)
    regression = batch["regression"].astype(jnp.float32)
    labels = batch["labels"].astype(jnp.float32)
    targets = batch["soft_targets"].astype(jnp.float32)

    logp = jax.nn.log_softmax(jnp.where(in_span, logits, -jnp.inf), axis=-1)
    logp = jnp.where(in_span, logp, 0.0)  # no 0 * -inf outside the span
    label_col = jnp.where(regression[:, None] > 0, start,
                          start + labels.astype(jnp.int32)[:, None])
    hard_ce = -jnp.take_along_axis(logp, label_col, axis=-1)[:, 0]
    soft_ce = -jnp.sum(targets * logp, axis=-1)
    first = jnp.take_along_axis(logits, start, axis=-1)[:, 0]
    target_first = jnp.take_along_axis(targets, start, axis=-1)[:, 0]
    hard = jnp.where(regression > 0, (first - labels) ** 2, hard_ce)
    soft = jnp.where(regression > 0, (first - target_first) ** 2, soft_ce)

    has_soft = batch["has_soft_targets"].astype(jnp.float32)
    w = soft_weight * has_soft
    loss = jnp.mean((1.0 - w) * hard + w * soft)
    metrics = {"loss/hard": jnp.mean(hard),
               "loss/soft": jnp.sum(soft * has_soft) / jnp.maximum(jnp.sum(has_soft), 1.0)}
    return loss, metrics


@register
class Mtdnn(Method):
    """Multi-task training with ensemble soft targets where a task has them."""

    name: ClassVar[str] = "mtdnn"
    Options: ClassVar[type] = MtdnnOptions
    ROLES: ClassVar[dict[str, str]] = {STUDENT: "classifier"}
    DATA_KIND: ClassVar[str] = "tasks"

    def batch_keys(self) -> dict[str, str]:
        return dict(MULTITASK_KEYS)

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        del params, rng
        return mtdnn_loss(outputs[STUDENT].logits, batch, self.options.soft_weight)
