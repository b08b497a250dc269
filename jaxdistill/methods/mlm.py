"""Plain masked-language-model training, no teacher.

Used to give a teacher that lacks one an MLM head (DistilBERT's soft targets need it): load the
encoder as the student, freeze it (`student.freeze: [embeddings, encoder]`) and train the head;
also the "no distillation" baseline.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import Batch, Method, Metrics, register
from jaxdistill.models.bert import NOTHING, Capture, EncoderOutputs


@dataclasses.dataclass(frozen=True)
class MlmOptions:
    pass


@register
class Mlm(Method):
    name = "mlm"
    Options = MlmOptions
    student_head: ClassVar[str] = "mlm"
    teacher_head: ClassVar[str] = "none"
    needs_teacher: ClassVar[bool] = False

    def student_capture(self) -> Capture:
        return NOTHING

    def teacher_capture(self) -> Capture:
        return NOTHING

    def uses_masked_positions(self) -> bool:
        return True

    def loss(self, params: dict, student: EncoderOutputs, teacher: EncoderOutputs | None,
             batch: Batch) -> tuple[jax.Array, Metrics]:
        del params, teacher
        weights = batch["masked_weights"]
        ce = losses.hard_cross_entropy(student.logits, batch["masked_ids"], weights)
        hits = (jnp.argmax(student.logits, -1) == batch["masked_ids"]) * weights
        accuracy = hits.sum() / jnp.maximum(weights.sum(), 1.0)
        return ce, {"loss/mlm": ce, "mlm_accuracy": accuracy}
