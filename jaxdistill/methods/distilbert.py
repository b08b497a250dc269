"""DistilBERT (Sanh et al., 2019): the triple loss, and the student's initialisation.

loss = alpha_ce  * KL(softmax(t/T) || softmax(s/T)) * T^2   (batchmean over the masked positions)
     + alpha_mlm * CE(student MLM logits, original tokens)  (mean over the masked positions)
     + alpha_cos * (1 - cos(last hidden states))            (mean over non-padded tokens)
     + alpha_mse * sum_V (s - t)^2                          (mean over the masked positions; off)

The defaults are the published training command of DistilBERT (huggingface distillation
README: --alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0, temperature 2.0, alpha_mse 0).
`restrict_ce_to_mask` (distiller.py's flag, on by default here) runs the KL (and the MSE) over
the MLM-masked positions only: both models then produce vocabulary logits at the [B, P] masked
positions instead of all [B, T], which is most of the memory of a step. The published run
distilled on every non-padded token: `restrict_ce_to_mask: false` (configs/distilbert_general.yaml)
does that, with [B, T, V] logits; the MLM term still reads the masked positions.

The student's default initialisation, `student.init: teacher_layers`, is extract_distilbert.py:
embeddings, evenly spaced teacher layers (`Method.student_init_matches`) and the MLM head are
copied by the student model (`Model.copy_layers_from`); token types and the pooler are dropped.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import STUDENT, TEACHER, Batch, Method, Metrics, register
from jaxdistill.models.base import Model, Outputs, Wants


@dataclasses.dataclass(frozen=True)
class DistilBertOptions:
    """method.options for distilbert (defaults: DistilBERT's published training run)."""

    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    alpha_mse: float = 0.0
    restrict_ce_to_mask: bool = True  # False: KL on every non-padded token (the published run)

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0")
        for key in ("alpha_ce", "alpha_mlm", "alpha_cos", "alpha_mse"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 0")
        if not any((self.alpha_ce, self.alpha_mlm, self.alpha_cos, self.alpha_mse)):
            raise ValueError("alpha_ce, alpha_mlm, alpha_cos and alpha_mse are all 0: "
                             "nothing would be trained")


@register
class DistilBert(Method):
    """Soft-target KL + MLM + cosine on the last hidden state; student starts from the teacher."""

    name: ClassVar[str] = "distilbert"
    Options: ClassVar[type] = DistilBertOptions
    DATA_KIND: ClassVar[str] = "mlm_corpus"
    default_student_init: ClassVar[str] = "teacher_layers"

    ROLES: ClassVar[dict[str, str]] = {STUDENT: "mlm", TEACHER: "mlm"}

    def __init__(self, options: DistilBertOptions, models: dict[str, Model]):
        super().__init__(options, models)
        student, teacher = self.student.config, self.teacher.config
        if student.vocab_size != teacher.vocab_size:
            raise ValueError(f"the student's vocab_size {student.vocab_size} differs from the "
                             f"teacher's {teacher.vocab_size}: soft targets need one vocabulary")
        if options.alpha_cos > 0 and student.hidden_size != teacher.hidden_size:
            raise ValueError(
                f"alpha_cos > 0 compares last hidden states, but the student's hidden_size "
                f"{student.hidden_size} differs from the teacher's {teacher.hidden_size}; "
                f"use the teacher's width (DistilBERT halves depth only) or set alpha_cos=0")

    def wants(self) -> dict[str, Wants]:
        # Vocabulary logits only at the masked positions unless the KL reads every token; the
        # last hidden state always comes.
        wants = Wants(logits_at_masked=self.options.restrict_ce_to_mask)
        return {STUDENT: wants, TEACHER: wants}

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        del params  # DistilBERT trains no parameters besides the student's
        student, teacher = outputs[STUDENT], outputs[TEACHER]
        opts = self.options
        if opts.restrict_ce_to_mask:
            weights, masked_logits = batch["masked_weights"], student.logits
        else:  # [B, T, V] logits: every real token distils, the MLM reads the masked slots
            weights = batch["attention_mask"].astype(jnp.float32)
            masked_logits = jnp.take_along_axis(
                student.logits, batch["masked_positions"][..., None].astype(jnp.int32), axis=1)
        terms = {
            "ce": (opts.alpha_ce, lambda: losses.kl_div_with_temperature(
                student.logits, teacher.logits, opts.temperature, weights)),
            "mlm": (opts.alpha_mlm, lambda: losses.hard_cross_entropy(
                masked_logits, batch["masked_ids"], batch["masked_weights"])),
            "cos": (opts.alpha_cos, lambda: losses.cosine_embedding_loss(
                student.last_hidden_state, teacher.last_hidden_state, batch["attention_mask"])),
            "mse": (opts.alpha_mse, lambda: losses.logit_mse_batchmean(
                student.logits, teacher.logits, weights)),
        }
        total = jnp.zeros((), jnp.float32)
        metrics: Metrics = {}
        for key, (alpha, term_fn) in terms.items():
            if alpha > 0:  # a switched-off term is neither computed nor logged
                term = term_fn()
                metrics[f"loss/{key}"] = term
                total = total + alpha * term
        return total, metrics
