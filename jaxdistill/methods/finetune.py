"""Plain supervised fine-tuning on a task's labels, no teacher.

The loss of transformers' BertForSequenceClassification: cross entropy against the class ids,
or, when the model has a single output (`num_labels == 1`, a regression task such as STS-B),
MSE between that output and the float label. Used to fine-tune task teachers and as the
"no distillation" baseline of the task stage.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from jaxdistill import losses
from jaxdistill.methods.base import STUDENT, Batch, Method, Metrics, register
from jaxdistill.models.base import Model, Outputs


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    """method.options for finetune.

    label_smoothing: torch's `CrossEntropyLoss(label_smoothing=...)`; 0 (transformers' default)
      is plain cross entropy. Classification only.
    """

    label_smoothing: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must be in [0, 1)")


def supervised_loss(logits: jax.Array, labels: jax.Array, regression: bool,
                    label_smoothing: float = 0.0) -> tuple[str, jax.Array]:
    """('ce' | 'mse', value): BertForSequenceClassification's loss on [B, C] logits.

    Regression compares the single output with the float labels (`MSELoss()(logits.squeeze(),
    labels.squeeze())`); classification takes cross entropy against the integer labels.
    """
    if regression:
        return "mse", losses.mse(logits[..., 0], labels)
    if label_smoothing > 0:
        return "ce", losses.smoothed_cross_entropy(logits, labels, label_smoothing)
    return "ce", losses.hard_cross_entropy(logits, labels)


@register
class Finetune(Method):
    """Cross entropy (or MSE for regression) of the student's classifier on the labels."""

    name: ClassVar[str] = "finetune"
    Options: ClassVar[type] = FinetuneOptions

    ROLES: ClassVar[dict[str, str]] = {STUDENT: "classifier"}

    def __init__(self, options: FinetuneOptions, models: dict[str, Model]):
        super().__init__(options, models)
        self.regression = self.student.config.num_labels == 1
        if self.regression and options.label_smoothing > 0:
            raise ValueError(f"label_smoothing={options.label_smoothing} needs classes, but the "
                             f"student has num_labels=1 (a regression task, trained with MSE)")

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        del params
        key, term = supervised_loss(outputs[STUDENT].logits, batch["labels"], self.regression,
                                    self.options.label_smoothing)
        return term, {f"loss/{key}": term}
