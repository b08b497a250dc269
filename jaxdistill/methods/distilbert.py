"""DistilBERT (Sanh et al., 2019): the triple loss, and the student's initialisation.

loss = alpha_ce  * KL(softmax(t/T) || softmax(s/T)) * T^2   (batchmean over the masked positions)
     + alpha_mlm * CE(student MLM logits, original tokens)  (mean over the masked positions)
     + alpha_cos * (1 - cos(last hidden states))            (mean over non-padded tokens)
     + alpha_mse * sum_V (s - t)^2                          (mean over the masked positions; off)

The defaults are the published training command of DistilBERT (huggingface distillation
README: --alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0, temperature 2.0, alpha_mse 0).
Like distiller.py's `--restrict_ce_to_mask`, the KL runs over the MLM-masked positions only:
both models then produce vocabulary logits at the [B, P] masked positions instead of all
[B, T], which is most of the memory of a step. (The published run distilled on every
non-padded token; set `restrict_ce_to_mask` there to get what this computes.)

`student_from_teacher_layers` implements extract_distilbert.py: embeddings, every other teacher
layer and the MLM head are copied; token-type embeddings and the pooler are dropped.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import Batch, Method, Metrics, register
from jaxdistill.models import bert
from jaxdistill.models.bert import NOTHING, BertConfig, Capture, EncoderOutputs


@dataclasses.dataclass(frozen=True)
class DistilBertOptions:
    """method.options for distilbert (defaults: DistilBERT's published training run)."""

    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    alpha_mse: float = 0.0

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
    student_head: ClassVar[str] = "mlm"
    teacher_head: ClassVar[str] = "mlm"
    default_student_init: ClassVar[str] = "teacher_layers"

    def __init__(self, options: DistilBertOptions, student: BertConfig, teacher: BertConfig):
        super().__init__(options, student, teacher)
        if student.vocab_size != teacher.vocab_size:
            raise ValueError(f"the student's vocab_size {student.vocab_size} differs from the "
                             f"teacher's {teacher.vocab_size}: soft targets need one vocabulary")
        if options.alpha_cos > 0 and student.hidden_size != teacher.hidden_size:
            raise ValueError(
                f"alpha_cos > 0 compares last hidden states, but the student's hidden_size "
                f"{student.hidden_size} differs from the teacher's {teacher.hidden_size}; "
                f"use the teacher's width (DistilBERT halves depth only) or set alpha_cos=0")

    def student_capture(self) -> Capture:
        return NOTHING  # the last hidden state and the logits are always returned

    def teacher_capture(self) -> Capture:
        return NOTHING

    def uses_masked_positions(self) -> bool:
        return True

    def loss(self, params: dict, student: EncoderOutputs, teacher: EncoderOutputs,
             batch: Batch) -> tuple[jax.Array, Metrics]:
        del params  # DistilBERT trains no parameters besides the student's
        opts = self.options
        weights = batch["masked_weights"]
        terms = {
            "ce": (opts.alpha_ce, lambda: losses.kl_div_with_temperature(
                student.logits, teacher.logits, opts.temperature, weights)),
            "mlm": (opts.alpha_mlm, lambda: losses.hard_cross_entropy(
                student.logits, batch["masked_ids"], weights)),
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


# --------------------------------------------------------------------------------------------
# Initialisation from the teacher


def teacher_layer_indices(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layers an M-layer student copies: round(i * (N-1) / (M-1)), halves up.

    Evenly spaced from the first to the last layer; for 12 -> 6 this is extract_distilbert.py's
    [0, 2, 4, 7, 9, 11]. A 1-layer student takes layer 0.
    """
    n, m = teacher_layers, student_layers
    if not 1 <= m <= n:
        raise ValueError(f"a {m}-layer student cannot be initialised from the layers of a "
                         f"{n}-layer teacher (need 1 <= student layers <= teacher layers)")
    if m == 1:
        return [0]
    return [math.floor(i * (n - 1) / (m - 1) + 0.5) for i in range(m)]


_SAME = ("hidden_size", "num_heads", "intermediate_size", "vocab_size", "max_position_embeddings")


def student_from_teacher_layers(teacher_params: dict, teacher_cfg: BertConfig,
                                student_cfg: BertConfig, fallback: dict | None = None) -> dict:
    """Student parameters copied from the teacher as DistilBERT's extract_distilbert.py does.

    Copies the word and position embeddings with their LayerNorm, the layers chosen by
    `teacher_layer_indices`, and the MLM head (transform, LayerNorm, bias). Token-type
    embeddings are copied only if the student has them (a 'distilbert' student drops them, as
    the reference does, so its embeddings differ from the teacher's by token_type[0]); so is
    the pooler. Parameters the teacher lacks (e.g. a classifier, or the MLM head of a teacher
    loaded without one) come from `fallback`, student parameters in the student's own layout
    (e.g. its random init), and are an error without it. Values are cast to the student's
    param_dtype: pass full-precision teacher parameters, not the bf16 copy.
    Works with scanned (stacked) layers on either side.
    """
    for key in _SAME:
        if getattr(student_cfg, key) != getattr(teacher_cfg, key):
            raise ValueError(
                f"student.{key}={getattr(student_cfg, key)} differs from the teacher's "
                f"{getattr(teacher_cfg, key)}: copying teacher layers needs the same width")
    chosen = teacher_layer_indices(teacher_cfg.num_layers, student_cfg.num_layers)
    teacher = teacher_params
    if teacher_cfg.scan_layers:
        teacher = bert.unstack_layers(teacher, teacher_cfg.num_layers)
    flat_cfg = student_cfg.replace(scan_layers=False)
    template = jax.eval_shape(lambda: bert.init_params(flat_cfg, jax.random.key(0)))
    source = _teacher_view(teacher, chosen)
    if fallback is not None and student_cfg.scan_layers:
        fallback = bert.unstack_layers(fallback, student_cfg.num_layers)
    dtype = jnp.dtype(student_cfg.param_dtype)
    student = _fill(template, source, fallback, dtype, path=())
    if student_cfg.scan_layers:
        student = bert.stack_layers(student, student_cfg.num_layers)
    return student


def _teacher_view(teacher: dict, chosen: list[int]) -> dict:
    """The teacher's tree re-keyed so that each student path finds its source at the same path."""
    encoder = {f"layer_{i}": teacher["encoder"][f"layer_{j}"] for i, j in enumerate(chosen)}
    return {**{k: v for k, v in teacher.items() if k != "encoder"}, "encoder": encoder}


def _fill(template, source, fallback, dtype, path: tuple[str, ...]):
    """Walk the student's tree: take the teacher's array where it exists, else the fallback."""
    if isinstance(template, Mapping):
        return {k: _fill(v, _get(source, k), _get(fallback, k), dtype, path + (k,))
                for k, v in template.items()}
    value, origin = (source, "teacher") if source is not None else (fallback, "fallback")
    if value is None:
        raise ValueError(f"the teacher has no parameter {'/'.join(path)} to copy into the "
                         f"student; pass `fallback` student parameters for what the teacher lacks")
    if tuple(value.shape) != tuple(template.shape):
        raise ValueError(f"{origin} parameter {'/'.join(path)} has shape {tuple(value.shape)}, "
                         f"the student needs {tuple(template.shape)}")
    return jnp.asarray(value, dtype)


def _get(tree, key):
    return tree.get(key) if isinstance(tree, Mapping) else None
