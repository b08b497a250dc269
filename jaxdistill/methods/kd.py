"""Vanilla knowledge distillation (Hinton et al., 2015) from a fine-tuned classifier teacher.

loss = (1 - alpha) * CE(student logits, labels) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))

computed as PKD's `distillation_loss` (src/KD_loss.py in PKD-for-BERT-Model-Compression, the
"KD" baseline of Sun et al. 2019 on BERT/GLUE): the KL uses KLDivLoss's default reduction
'mean', an average over all B*C entries, i.e. the per-example KL divided by the number of
labels (see `losses.kd_kl_elementwise_mean`). We keep that scale so that `pkd` with beta=0 is
exactly this method and so that the defaults below mean what they meant there.

Regression (num_labels == 1, e.g. STS-B): PKD's code has no regression path; softmax over one
output is constant, so both terms become MSE: (1 - alpha) * MSE(s, y) + alpha * MSE(s, t).

Defaults T=20, alpha=0.7: PKD's predefined `kd` run (src/argument_parser.py) and the values
picked most often by its grid search (T in {5, 10, 20}, alpha in {0.2, 0.5, 0.7}) for the
6-layer KD students (result/glue/result_summary/kd_6layer_mean.csv: T=20 on 6 of 8 tasks,
alpha=0.7 on 4 of 8).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import STUDENT, TEACHER, Batch, Method, Metrics, register
from jaxdistill.methods.finetune import supervised_loss
from jaxdistill.models.base import Model, Outputs


@dataclasses.dataclass(frozen=True)
class KdOptions:
    """method.options for kd (defaults: PKD's vanilla-KD baseline, see the module docstring).

    temperature: softening of both logits in the KD term (unused for regression).
    alpha: weight of the KD term; the label term gets 1 - alpha.
    """

    temperature: float = 20.0
    alpha: float = 0.7

    def __post_init__(self):
        check_kd_options(self.temperature, self.alpha)


def check_kd_options(temperature: float, alpha: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must be in [0, 1] (the label term gets 1 - alpha)")


def check_same_labels(student: Model, teacher: Model) -> None:
    s, t = student.config.num_labels, teacher.config.num_labels
    if s != t:
        raise ValueError(f"the student has num_labels={s} but the teacher {t}: soft targets "
                         f"need the same label set")


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
            temperature: float, alpha: float, regression: bool) -> tuple[jax.Array, Metrics]:
    """PKD's `distillation_loss` (alpha * KD + (1 - alpha) * CE) and its named terms.

    A term whose weight is 0 is neither computed nor logged.
    """
    total = jnp.zeros((), jnp.float32)
    metrics: Metrics = {}
    if alpha < 1:
        key, term = supervised_loss(student_logits, labels, regression)
        metrics[f"loss/{key}"] = term
        total = total + (1.0 - alpha) * term
    if alpha > 0:
        if regression:
            term = losses.mse(student_logits, teacher_logits)
        else:
            term = losses.kd_kl_elementwise_mean(student_logits, teacher_logits, temperature)
        metrics["loss/kd"] = term
        total = total + alpha * term
    return total, metrics


@register
class Kd(Method):
    """Soft targets of a fine-tuned teacher's classifier plus the labels."""

    name: ClassVar[str] = "kd"
    Options: ClassVar[type] = KdOptions

    ROLES: ClassVar[dict[str, str]] = {STUDENT: "classifier", TEACHER: "classifier"}

    def __init__(self, options: KdOptions, models: dict[str, Model]):
        super().__init__(options, models)
        check_same_labels(self.student, self.teacher)
        self.regression = self.student.config.num_labels == 1

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        del params  # KD trains no parameters besides the student's
        return kd_loss(outputs[STUDENT].logits, outputs[TEACHER].logits, batch["labels"],
                       self.options.temperature, self.options.alpha, self.regression)
