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
from jaxdistill.methods.base import STUDENT, Batch, Method, Metrics, register
from jaxdistill.models.base import Outputs, Wants


@dataclasses.dataclass(frozen=True)
class MlmOptions:
    pass


@register
class Mlm(Method):
    name: ClassVar[str] = "mlm"
    Options: ClassVar[type] = MlmOptions
    DATA_KIND: ClassVar[str] = "mlm_corpus"

    ROLES: ClassVar[dict[str, str]] = {STUDENT: "mlm"}

    def wants(self) -> dict[str, Wants]:
        return {STUDENT: Wants(logits_at_masked=True)}

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        del params
        student = outputs[STUDENT]
        weights = batch["masked_weights"]
        ce = losses.hard_cross_entropy(student.logits, batch["masked_ids"], weights)
        hits = (jnp.argmax(student.logits, -1) == batch["masked_ids"]) * weights
        accuracy = hits.sum() / jnp.maximum(weights.sum(), 1.0)
        return ce, {"loss/mlm": ce, "mlm_accuracy": accuracy}
