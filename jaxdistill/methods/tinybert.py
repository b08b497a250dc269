"""TinyBERT (Jiao et al., 2020): transformer-layer distillation, then prediction distillation.

Stages (option `stage`):
  general, task_intermediate: embedding MSE + hidden-state MSE (student states projected to the
      teacher's width) + attention-score MSE, on the layer matches; no MLM or prediction loss.
      This is TinyBERT's general_distill.py and task_distill.py without `--pred_distill`.
  task_prediction: soft cross entropy at `temperature` between the classifier logits
      (task_distill.py with `--pred_distill`, classification tasks). For a regression student
      (num_labels == 1, STS-B) task_distill.py instead takes `MSELoss()` between the student's
      output and the gold score, `label_ids`, not the teacher's output; so does this.

Layer matches are data (`matches`). Without them the uniform map of TinyBERT's code is used,
with k = N_teacher / M_student (which must be an integer):
  attention of student layer i (0-based)   <- teacher layer i*k + k - 1  (last of each block)
  hidden state j (0 = embeddings, 0..M)    <- teacher hidden state j*k
so 6 -> 3 matches attention (0,1), (1,3), (2,5) and hidden states (0,0), (1,2), (2,4), (3,6).
In 1-based layer numbers both are the paper's g(m) = m * N / M: student layer m learns from
teacher layer g(m), its attention and its output alike.

Projection ('fit_dense'): TinyBERT's TinyBertForPreTraining has ONE Linear(student width ->
teacher width) applied to every student hidden state, the embedding output included, so all
hidden matches share it here too. It exists even when the widths are equal, because the
reference always has it (and training it from random is what the recipe's numbers include).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods import projection
from jaxdistill.methods.base import STUDENT, TEACHER, Batch, Method, Metrics, register
from jaxdistill.methods.layer_match import (LayerMatch, check_no_duplicates, metric_names,
                                            parse_matches)
from jaxdistill.models.base import NOTHING, Model, Outputs, Wants

FEATURES = ("embeddings", "hidden", "attention")  # the LayerMatch features TinyBERT reads
STAGES = ("general", "task_intermediate", "task_prediction")


@dataclasses.dataclass(frozen=True)
class TinyBertOptions:
    """method.options for tinybert.

    matches: list of {feature, student, teacher, loss, weight}; None = TinyBERT's uniform map.
    temperature: softening of both logits in the task_prediction stage.
    *_weight: factor on the summed terms of each feature type.
    """

    stage: str = "general"
    matches: tuple[LayerMatch, ...] | None = None
    temperature: float = 1.0
    embedding_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: expected one of {', '.join(STAGES)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0")
        for key in ("embedding_weight", "hidden_weight", "attention_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 0")
        if self.matches is not None:
            parsed = parse_matches(self.matches)
            bad = [m.feature for m in parsed if m.feature not in FEATURES]
            if bad:
                raise ValueError(f"matches: feature '{bad[0]}' is not one TinyBERT matches; use "
                                 f"{', '.join(FEATURES)}")
            if not parsed:
                raise ValueError("matches: the list is empty; leave it out for the uniform map")
            object.__setattr__(self, "matches", parsed)  # dicts from YAML -> typed matches


def uniform_layer_map(teacher_layers: int, student_layers: int) -> tuple[LayerMatch, ...]:
    """TinyBERT's default matches for an N-layer teacher and an M-layer student (N % M == 0)."""
    n, m = teacher_layers, student_layers
    if m < 1 or n < 1 or n % m:
        raise ValueError(
            f"the teacher's depth {n} is not a multiple of the student's depth {m}, so TinyBERT's "
            f"uniform layer map (teacher layer = student layer * N/M) does not exist; give an "
            f"explicit method.options.matches list, e.g. [{{feature: attention, student: 0, "
            f"teacher: 1}}, {{feature: hidden, student: 1, teacher: 2}}, ...]")
    k = n // m
    out = [LayerMatch("embeddings", 0, 0)]
    out += [LayerMatch("hidden", j, j * k) for j in range(1, m + 1)]
    out += [LayerMatch("attention", i, i * k + k - 1) for i in range(m)]
    return tuple(out)


def _check_matches(matches: tuple[LayerMatch, ...], student: Any, teacher: Any):
    """Indices in range, no duplicates, and shapes that can be compared."""
    limits = {"embeddings": (0, 0), "hidden": (student.num_layers, teacher.num_layers),
              "attention": (student.num_layers - 1, teacher.num_layers - 1)}
    for i, m in enumerate(matches):
        s_max, t_max = limits[m.feature]
        what = "hidden state" if m.feature == "hidden" else "layer"
        if not 0 <= m.student <= s_max:
            raise ValueError(f"matches[{i}]: student {what} {m.student} is out of range 0..{s_max} "
                             f"for the {student.num_layers}-layer student")
        if not 0 <= m.teacher <= t_max:
            raise ValueError(f"matches[{i}]: teacher {what} {m.teacher} is out of range 0..{t_max} "
                             f"for the {teacher.num_layers}-layer teacher")
    check_no_duplicates(matches)
    if any(m.feature == "attention" for m in matches) and student.num_heads != teacher.num_heads:
        raise ValueError(
            f"attention matches compare scores head by head, but the student has "
            f"{student.num_heads} heads and the teacher {teacher.num_heads}; make them equal or "
            f"leave attention out of matches")


@register
class TinyBert(Method):
    """TinyBERT general and task distillation. Heads depend on the stage."""

    name: ClassVar[str] = "tinybert"
    Options: ClassVar[type] = TinyBertOptions

    @classmethod
    def roles(cls, options: TinyBertOptions) -> dict[str, str]:
        # Task stages read a fine-tuned classifier teacher; the intermediate stage keeps the
        # student's classifier in its parameters so the prediction stage can start from them.
        head = "none" if options.stage == "general" else "classifier"
        return {STUDENT: head, TEACHER: head}

    @classmethod
    def data_kind(cls, options: TinyBertOptions) -> str:
        return "mlm_corpus" if options.stage == "general" else "task"

    def __init__(self, options: TinyBertOptions, models: dict[str, Model]):
        super().__init__(options, models)
        self.predicting = options.stage == "task_prediction"
        student, teacher = self.student.config, self.teacher.config
        if self.predicting:
            self.matches: tuple[LayerMatch, ...] = ()  # the prediction stage reads logits only
        else:
            self.matches = options.matches or uniform_layer_map(teacher.num_layers,
                                                                student.num_layers)
            _check_matches(self.matches, student, teacher)
        self.metric_names = metric_names(self.matches)

    # --- what each forward pass keeps ---------------------------------------------------------
    def _wants(self, side: str) -> Wants:
        if not self.matches:
            return NOTHING
        features = {m.feature for m in self.matches}
        # Only the matched layers form their scores; on GPU the others (half of a 12 -> 6
        # teacher) keep the fused attention kernel.
        layers = tuple(getattr(m, side) for m in self.matches if m.feature == "attention")
        return Wants(hidden_states=bool(features & {"embeddings", "hidden"}),
                     attention_scores="attention" in features,
                     attention_layers=layers if layers else None)

    def wants(self) -> dict[str, Wants]:
        return {STUDENT: self._wants("student"), TEACHER: self._wants("teacher")}

    # --- the projection ---------------------------------------------------------------------
    def _needs_projection(self) -> bool:
        return any(m.feature != "attention" for m in self.matches)

    def init_params(self, rng: jax.Array) -> dict:
        """{'fit_dense': {kernel [H_s, H_t], bias [H_t]}} (TinyBERT's init: N(0, 0.02), zeros)."""
        if not self._needs_projection():
            return {}
        return {"fit_dense": projection.init(rng, self.student.config, self.teacher.config)}

    def forward_flops_per_token(self, seq_len: int) -> float:
        # fit_dense runs once per matched hidden state (embeddings included).
        uses = sum(m.feature != "attention" for m in self.matches)
        return 2.0 * uses * self.student.config.hidden_size * self.teacher.config.hidden_size

    def param_axes(self) -> dict:
        if not self._needs_projection():
            return {}
        return {"fit_dense": projection.AXES}

    # --- the loss ---------------------------------------------------------------------------
    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        student, teacher = outputs[STUDENT], outputs[TEACHER]
        if self.predicting and self.student.config.num_labels == 1:
            term = losses.mse(student.logits[..., 0], batch["labels"])
            return term, {"loss/mse": term}
        if self.predicting:
            term = losses.soft_cross_entropy(student.logits, teacher.logits,
                                             self.options.temperature)
            return term, {"loss/soft_ce": term}
        return self._intermediate_loss(params, student, teacher, batch)

    def _intermediate_loss(self, params, student, teacher, batch):
        metrics: Metrics = {}
        totals = {f: jnp.zeros((), jnp.float32) for f in FEATURES}
        for match, suffix in zip(self.matches, self.metric_names):
            if match.feature == "attention":
                term = losses.attention_score_mse(student.attention_scores[match.student],
                                                  teacher.attention_scores[match.teacher],
                                                  batch["attention_mask"])
            else:
                projected = projection.apply(params["fit_dense"],
                                             student.hidden_states[match.student])
                term = losses.mse(projected, teacher.hidden_states[match.teacher])
            totals[match.feature] += match.weight * term
            if match.feature != "embeddings":
                metrics[f"loss/{_KEYS[match.feature]}/{suffix}"] = term
        opts = self.options
        features = {m.feature for m in self.matches}
        for feature in FEATURES:
            if feature in features:
                metrics[f"loss/{_KEYS[feature]}"] = totals[feature]
        total = (opts.embedding_weight * totals["embeddings"] + opts.hidden_weight
                 * totals["hidden"] + opts.attention_weight * totals["attention"])
        return total, metrics


_KEYS = {"embeddings": "embedding_mse", "hidden": "hidden_mse", "attention": "attn_mse"}
