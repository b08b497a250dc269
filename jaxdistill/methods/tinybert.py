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

import collections
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.config import from_dict
from jaxdistill.errors import UserError
from jaxdistill.methods import projection
from jaxdistill.methods.base import Batch, Method, Metrics, register
from jaxdistill.models.bert import NOTHING, BertConfig, Capture, EncoderOutputs

FEATURES = ("embeddings", "hidden", "attention")
LOSSES = ("mse",)
STAGES = ("general", "task_intermediate", "task_prediction")


@dataclasses.dataclass(frozen=True)
class LayerMatch:
    """One matched pair of features (TextBrewer's IntermediateMatch, typed).

    feature: 'embeddings' (hidden state 0 of both models; indices may be left out),
      'hidden' (index j: 0 = embedding output, j = output of layer j), or
      'attention' (0-based layer index; the layer's pre-softmax scores).
    """

    feature: str
    student: int | None = None
    teacher: int | None = None
    loss: str = "mse"
    weight: float = 1.0

    def __post_init__(self):
        if self.feature not in FEATURES:
            raise ValueError(f"feature={self.feature!r}: expected one of {', '.join(FEATURES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: expected one of {', '.join(LOSSES)}")
        if self.weight < 0:
            raise ValueError(f"weight={self.weight}: must be >= 0")
        if self.feature == "embeddings":
            if (self.student or 0) != 0 or (self.teacher or 0) != 0:
                raise ValueError("an 'embeddings' match is hidden state 0 of both models: "
                                 "leave out student/teacher or set them to 0 (use feature "
                                 "'hidden' to match other layers)")
            object.__setattr__(self, "student", 0)  # normalise the omitted indices
            object.__setattr__(self, "teacher", 0)
        elif self.student is None or self.teacher is None:
            raise ValueError(f"a '{self.feature}' match needs both 'student' and 'teacher' "
                             "layer indices")

    @property
    def name(self) -> str:
        """Metric suffix: 1-based layer number of the student (attention of layer i is L{i+1})."""
        return f"L{self.student + 1}" if self.feature == "attention" else f"L{self.student}"


def _parse_match(item, i: int) -> LayerMatch:
    if isinstance(item, LayerMatch):
        return item
    try:
        return from_dict(LayerMatch, item, where=f"matches[{i}]")
    except UserError as e:
        raise ValueError(str(e)) from None


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
            if isinstance(self.matches, (str, dict)):
                raise ValueError("matches: expected a list of {feature, student, teacher} entries")
            parsed = tuple(_parse_match(m, i) for i, m in enumerate(self.matches))
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


def _check_matches(matches: tuple[LayerMatch, ...], student: BertConfig, teacher: BertConfig):
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
    seen = collections.Counter((m.feature, m.student, m.teacher) for m in matches)
    dup = [k for k, c in seen.items() if c > 1]
    if dup:
        raise ValueError(f"matches: {dup[0][0]} student {dup[0][1]} -> teacher {dup[0][2]} is "
                         "listed twice")
    if any(m.feature == "attention" for m in matches) and student.num_heads != teacher.num_heads:
        raise ValueError(
            f"attention matches compare scores head by head, but the student has "
            f"{student.num_heads} heads and the teacher {teacher.num_heads}; make them equal or "
            f"leave attention out of matches")


def _metric_names(matches: tuple[LayerMatch, ...]) -> list[str]:
    """'L{n}' per match; 'L{n}_T{t}' where one student layer feeds several matches of a kind."""
    count = collections.Counter((m.feature, m.student) for m in matches)
    return [m.name if count[(m.feature, m.student)] == 1 else f"{m.name}_T{m.teacher}"
            for m in matches]


@register
class TinyBert(Method):
    """TinyBERT general and task distillation. Heads depend on the stage (set per instance)."""

    name: ClassVar[str] = "tinybert"
    Options: ClassVar[type] = TinyBertOptions

    def __init__(self, options: TinyBertOptions, student: BertConfig, teacher: BertConfig):
        super().__init__(options, student, teacher)
        self.predicting = options.stage == "task_prediction"
        # Task stages read a fine-tuned classifier teacher; the intermediate stage keeps the
        # student's classifier in its parameters so the prediction stage can start from them.
        head = "none" if options.stage == "general" else "classifier"
        self.student_head = self.teacher_head = head
        if self.predicting:
            self.matches: tuple[LayerMatch, ...] = ()  # the prediction stage reads logits only
        else:
            self.matches = options.matches or uniform_layer_map(teacher.num_layers,
                                                                student.num_layers)
            _check_matches(self.matches, student, teacher)
        self.metric_names = _metric_names(self.matches)

    # --- captures ---------------------------------------------------------------------------
    def _capture(self, side: str) -> Capture:
        if not self.matches:
            return NOTHING
        features = {m.feature for m in self.matches}
        # Only the matched layers form their scores; on GPU the others (half of a 12 -> 6
        # teacher) keep the fused attention kernel.
        layers = tuple(getattr(m, side) for m in self.matches if m.feature == "attention")
        return Capture(hidden_states=bool(features & {"embeddings", "hidden"}),
                       attention_scores="attention" in features,
                       attention_layers=layers if layers else None)

    def student_capture(self) -> Capture:
        return self._capture("student")

    def teacher_capture(self) -> Capture:
        return self._capture("teacher")

    # --- the projection ---------------------------------------------------------------------
    def _needs_projection(self) -> bool:
        return any(m.feature != "attention" for m in self.matches)

    def init_params(self, rng: jax.Array) -> dict:
        """{'fit_dense': {kernel [H_s, H_t], bias [H_t]}} (TinyBERT's init: N(0, 0.02), zeros)."""
        if not self._needs_projection():
            return {}
        return {"fit_dense": projection.init(rng, self.student, self.teacher)}

    def forward_flops_per_token(self) -> float:
        # fit_dense runs once per matched hidden state (embeddings included).
        uses = sum(m.feature != "attention" for m in self.matches)
        return 2.0 * uses * self.student.hidden_size * self.teacher.hidden_size

    def param_axes(self) -> dict:
        if not self._needs_projection():
            return {}
        return {"fit_dense": projection.AXES}

    # --- the loss ---------------------------------------------------------------------------
    def loss(self, params: dict, student: EncoderOutputs, teacher: EncoderOutputs,
             batch: Batch) -> tuple[jax.Array, Metrics]:
        if self.predicting and self.student.num_labels == 1:
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

