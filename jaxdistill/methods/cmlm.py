"""C-MLM (Chen et al. 2020, "Distilling Knowledge Learned in BERT for Text Generation").

Two stages, one method (`stage`):
- `teacher`: BERT fine-tuned as a conditional MLM on [CLS] X [SEP] Y [SEP] (token types 0 / 1),
  with only target tokens masked (data/seq2seq.py `mask_targets`) and predicted: the MLM loss.
- `student`: a Seq2Seq model (models/seq2seq.py) trained on
  (1 - alpha) * CE with label smoothing + alpha * KD, KD the cross entropy from the teacher's
  top-K logits at every target position (renormalised at temperature T, written by
  `jaxdistill augment` method cmlm_topk) to the student's full softmax (losses.topk_distillation).
  alpha 0 is the teacher-free baseline and reads no teacher data.
Both run as `jaxdistill finetune` on a sequence-to-sequence task (train/kinds/seq2seq.py).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import STUDENT, Batch, Method, Metrics, register
from jaxdistill.methods.mlm import Mlm
from jaxdistill.models.base import NOTHING, Outputs, Wants

STAGES = ("teacher", "student")


@dataclasses.dataclass(frozen=True)
class CmlmOptions:
    stage: str = "teacher"
    mask_probability: float = 0.15  # teacher stage: share of target tokens masked (>= 1 each)
    alpha: float = 0.5  # student stage: weight of the KD term (0 = no teacher)
    temperature: float = 10.0
    top_k: int = 8  # teacher entries read per position (<= what the data file holds)
    label_smoothing: float = 0.1
    # student stage: the student's word table starts from the teacher's rows of the same pieces
    # (projected onto their top principal components when the student is narrower): a departure
    # from the paper, DistilBERT's initialisation applied to the Seq2Seq student
    embeddings_from_teacher: bool = False

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: expected one of {', '.join(STAGES)}")
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability={self.mask_probability} must be in (0, 1)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        if self.temperature <= 0 or self.top_k < 1:
            raise ValueError("temperature must be > 0 and top_k >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")


@register
class Cmlm(Method):
    name: ClassVar[str] = "cmlm"
    Options: ClassVar[type] = CmlmOptions
    DATA_KIND: ClassVar[str] = "seq2seq"

    @classmethod
    def roles(cls, options: CmlmOptions) -> dict[str, str]:
        return {STUDENT: "mlm" if options.stage == "teacher" else "lm"}

    @property
    def distils(self) -> bool:
        return self.options.stage == "student" and self.options.alpha > 0

    def wants(self) -> dict[str, Wants]:
        teacher_stage = self.options.stage == "teacher"
        return {STUDENT: Wants(logits_at_masked=True) if teacher_stage else NOTHING}

    def batch_keys(self) -> dict[str, str]:
        if not self.distils:
            return {}
        how = ("the teacher's top-K logits at every target position: `jaxdistill augment "
               "--config configs/task/cmlm_topk.yaml` writes them; name the file in "
               "task.augmented (or set method.options.alpha=0 to train without the teacher)")
        return {"topk_ids": how, "topk_logits": how}

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        if self.options.stage == "teacher":
            return Mlm.loss(self, params, outputs, batch, rng)
        o = self.options
        logits, labels, weights = outputs[STUDENT].logits, batch["labels"], batch["label_weights"]
        ce = losses.smoothed_cross_entropy(logits, labels, o.label_smoothing, weights)
        hits = (jnp.argmax(logits, -1) == labels) * weights
        metrics = {"loss/ce": ce, "token_accuracy": hits.sum() / jnp.maximum(weights.sum(), 1.0)}
        if not self.distils:
            return ce, metrics
        kd = losses.topk_distillation(logits, batch["topk_ids"][..., :o.top_k],
                                      batch["topk_logits"][..., :o.top_k], o.temperature, weights)
        return (1.0 - o.alpha) * ce + o.alpha * kd, {**metrics, "loss/kd": kd}
