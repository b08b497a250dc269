"""MiniLM (Wang et al., 2020) and MiniLMv2 (Wang et al., 2021): self-attention distillation of one
teacher layer into the student's last layer, task-agnostic (general distillation).

Both transfer relations between the vectors one attention layer reads: for a pair (a, b) of its
queries, keys and values, R = softmax(a b^T / sqrt(d_r)) per relation head, and the loss is
KL(R_teacher || R_student) (`losses.relation_kl`), weighted per pair and summed.
  version 2 (default): pairs qq, kk, vv; the heads of q (k, v) are concatenated and split into
      `relation_heads` heads, independent of either model's attention heads, so student and
      teacher may differ in width and head count. Teacher layer: the last for a base-size
      teacher, an upper-middle one for a large teacher (the paper's choice for 24 layers: 21).
  version 1: pairs qk (the attention distributions) and vv, per attention head, so both models
      need the same head count; the teacher's last layer.
No projection and no parameters of its own: only the student trains. Layers are 1-based, as in
the papers (layer l's output is hidden state l); only the two chosen layers keep q/k/v
(`Wants.attention_layers`), and a teacher layer below the last lets XLA drop the layers above it
from an unrolled teacher.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import STUDENT, TEACHER, Batch, Method, Metrics, register
from jaxdistill.models.base import Outputs, Wants

VECTORS = {"q": "attention_queries", "k": "attention_keys", "v": "attention_values"}
PAIRS = tuple(a + b for a in "qkv" for b in "qkv")
DEFAULT_RELATIONS = {1: {"qk": 1.0, "vv": 1.0}, 2: {"qq": 1.0, "kk": 1.0, "vv": 1.0}}


@dataclasses.dataclass(frozen=True)
class MiniLmOptions:
    """method.options for minilm.

    version: 2 (MiniLMv2, multi-head relations) or 1 (MiniLM: attention + value relation).
    teacher_layer / student_layer: 1-based layer whose attention is read; None = the last.
    relation_heads: MiniLMv2's A_r; None = the teacher's attention heads. Version 1 uses the
        attention heads and takes no other value.
    relations: {pair: weight}, pairs of q, k, v ('qq', 'kk', 'vv', 'qk', ...); None = the
        version's own (v2: qq, kk, vv; v1: qk, vv; weight 1 each, summed as in the papers).
    """

    version: int = 2
    teacher_layer: int | None = None
    student_layer: int | None = None
    relation_heads: int | None = None
    relations: dict[str, float] | None = None

    def __post_init__(self):
        if self.version not in DEFAULT_RELATIONS:
            raise ValueError(f"version={self.version}: expected 1 (MiniLM) or 2 (MiniLMv2)")
        for key in ("teacher_layer", "student_layer", "relation_heads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key}={value}: must be >= 1 (layers are numbered from 1)"
                                 if key != "relation_heads" else f"{key}={value}: must be >= 1")
        if self.version == 1 and self.relation_heads is not None:
            raise ValueError("relation_heads: MiniLM v1 relates per attention head; set "
                             "version: 2 to choose the number of relation heads")
        relations = DEFAULT_RELATIONS[self.version] if self.relations is None else self.relations
        bad = [p for p in relations if p not in PAIRS]
        if bad:
            raise ValueError(f"relations: '{bad[0]}' is not a pair of q, k, v; use two of q, k, "
                             f"v such as {', '.join(DEFAULT_RELATIONS[2])} or qk")
        if any(not isinstance(w, (int, float)) or w < 0 for w in relations.values()):
            raise ValueError(f"relations: weights must be numbers >= 0, got {relations}")
        if not any(relations.values()):
            raise ValueError("relations: at least one pair needs a weight above 0")
        # Hashable, in the recipe's order.
        object.__setattr__(self, "relations", tuple((p, float(w)) for p, w in relations.items()))


def attention_width(cfg: Any) -> int:
    """Width of the concatenated q/k/v heads (MobileBERT's attention is narrower than its
    hidden size)."""
    return cfg.num_heads * cfg.head_dim


@register
class MiniLm(Method):
    """MiniLM / MiniLMv2 self-attention (relation) distillation."""

    name: ClassVar[str] = "minilm"
    Options: ClassVar[type] = MiniLmOptions
    DATA_KIND: ClassVar[str] = "mlm_corpus"
    ROLES: ClassVar[dict[str, str]] = {STUDENT: "none", TEACHER: "none"}

    def __init__(self, options: MiniLmOptions, models: dict):
        super().__init__(options, models)
        student, teacher = self.student.config, self.teacher.config
        for side, cfg in (("student", student), ("teacher", teacher)):
            if not all(hasattr(cfg, k) for k in ("num_layers", "num_heads", "head_dim")):
                raise ValueError(f"the {side} ('{cfg.kind}') has no self-attention to read; "
                                 f"MiniLM needs a Transformer encoder on both sides")
        self.teacher_layer = options.teacher_layer or teacher.num_layers
        self.student_layer = options.student_layer or student.num_layers
        for side, layer, cfg in (("teacher", self.teacher_layer, teacher),
                                 ("student", self.student_layer, student)):
            if layer > cfg.num_layers:
                raise ValueError(f"{side}_layer={layer} is beyond the {cfg.num_layers}-layer "
                                 f"{side} (layers are numbered 1..{cfg.num_layers})")
        if options.version == 1:
            if student.num_heads != teacher.num_heads:
                raise ValueError(
                    f"MiniLM v1 relates attention head by head, but the student has "
                    f"{student.num_heads} heads and the teacher {teacher.num_heads}; make them "
                    f"equal or use version: 2 (relation heads need no equal head counts)")
            self.relation_heads = teacher.num_heads
        else:
            self.relation_heads = options.relation_heads or teacher.num_heads
            for side, cfg in (("student", student), ("teacher", teacher)):
                width = attention_width(cfg)
                if width % self.relation_heads:
                    raise ValueError(
                        f"relation_heads={self.relation_heads} does not divide the {side}'s "
                        f"attention width {width}; pick a common divisor of "
                        f"{attention_width(student)} and {attention_width(teacher)}")
        self.relations = tuple((p, w) for p, w in options.relations if w > 0)

    def wants(self) -> dict[str, Wants]:
        return {STUDENT: Wants(attention_qkv=True, attention_layers=(self.student_layer - 1,)),
                TEACHER: Wants(attention_qkv=True, attention_layers=(self.teacher_layer - 1,))}

    def teacher_layers_read(self, role: str) -> int | None:
        return self.teacher_layer if role == TEACHER else None

    def forward_flops_per_token(self, seq_len: int) -> float:
        # Each relation is a [T, T] product over the attention width per sequence: 2 * T * width
        # per token and side. The train FLOP count triples the method's term (forward and
        # backward), right for the student's side; the teacher's, forward only, enters as 1/3.
        s, t = attention_width(self.student.config), attention_width(self.teacher.config)
        return len(self.relations) * 2.0 * seq_len * (s + t / 3.0)

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        del params, rng
        vectors = {side: {v: getattr(outputs[side], field)[layer - 1]
                          for v, field in VECTORS.items()}
                   for side, layer in ((STUDENT, self.student_layer),
                                       (TEACHER, self.teacher_layer))}
        total = jnp.zeros((), jnp.float32)
        metrics: Metrics = {}
        for pair, weight in self.relations:
            term = losses.relation_kl(
                (vectors[STUDENT][pair[0]], vectors[STUDENT][pair[1]]),
                (vectors[TEACHER][pair[0]], vectors[TEACHER][pair[1]]),
                self.relation_heads, batch["attention_mask"])
            metrics[f"loss/{pair}_kl"] = term
            total = total + weight * term
        return total, metrics
