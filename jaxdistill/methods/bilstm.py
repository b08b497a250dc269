"""Tang et al. 2019's distillation into a small student: MSE to the teacher's logits.

loss = distill_weight * MSE(student logits, teacher logits) + ce_weight * CE(student, labels)

as d-bert's `distill_birnn.py` (`distill_lambda * MSELoss()` + `ce_lambda * CrossEntropyLoss()`,
both 1 there; the paper writes alpha * CE + (1 - alpha) * MSE). MSE is the mean over the B x C
logit entries, as `nn.MSELoss()`. The teacher's logits are read from the batch
(`teacher_logits`), written once by `jaxdistill augment` with `method: tang`, which labels the
original rows and every augmented variant: the teacher never runs during training. Augmented
rows have no gold label (`labeled` = 0): the label term averages over the labelled rows only,
where the reference writes a dummy label 0 for synthetic pair rows and trains on it.
Regression tasks take MSE against the float label in the label term.

The method is named for the paper's student, but any classifier student that reads the same
data distils with it (the student here is typically `student.kind: bilstm`).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import STUDENT, Batch, Method, Metrics, register
from jaxdistill.models.base import Model, Outputs

TEACHER_DATA_HINT = ("write a teacher-labelled training set with `jaxdistill augment --config "
                     "configs/task/bilstm_augment.yaml` (n_iter: 0 labels the originals only) "
                     "and point task.augmented at it")


@dataclasses.dataclass(frozen=True)
class BilstmOptions:
    """method.options for bilstm.

    distill_weight: weight of the logit MSE against the stored teacher logits.
    ce_weight: weight of the label term (cross entropy; MSE for regression) on labelled rows.
    """

    distill_weight: float = 1.0
    ce_weight: float = 1.0

    def __post_init__(self):
        for name in ("distill_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.distill_weight == 0 and self.ce_weight == 0:
            raise ValueError("distill_weight and ce_weight are both 0: nothing to train on")


def logit_mse_loss(student_logits: jax.Array, teacher_logits: jax.Array | None,
                   labels: jax.Array, labeled: jax.Array | None, distill_weight: float,
                   ce_weight: float, regression: bool) -> tuple[jax.Array, Metrics]:
    """The weighted sum and its named terms; a term of weight 0 is not computed."""
    total = jnp.zeros((), jnp.float32)
    metrics: Metrics = {}
    if distill_weight > 0:
        term = losses.mse(student_logits, teacher_logits)
        metrics["loss/logit_mse"] = term
        total = total + distill_weight * term
    if ce_weight > 0:
        if regression:
            key, term = "mse", losses.mse(student_logits[..., 0], labels, labeled)
        else:
            key, term = "ce", losses.hard_cross_entropy(student_logits, labels, labeled)
        metrics[f"loss/{key}"] = term
        total = total + ce_weight * term
    return total, metrics


@register
class BilstmDistill(Method):
    """Logit regression on stored teacher logits, plus the labels where rows have them."""

    name: ClassVar[str] = "bilstm"
    Options: ClassVar[type] = BilstmOptions
    ROLES: ClassVar[dict[str, str]] = {STUDENT: "classifier"}
    trains_on_unlabeled_rows: ClassVar[bool] = True

    def __init__(self, options: BilstmOptions, models: dict[str, Model]):
        super().__init__(options, models)
        self.regression = self.student.config.num_labels == 1

    def batch_keys(self) -> dict[str, str]:
        return {"teacher_logits": TEACHER_DATA_HINT} if self.options.distill_weight > 0 else {}

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        del params, rng
        return logit_mse_loss(outputs[STUDENT].logits, batch.get("teacher_logits"),
                              batch["labels"], batch.get("labeled"),
                              self.options.distill_weight, self.options.ce_weight,
                              self.regression)
