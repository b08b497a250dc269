"""Which student layer learns from which teacher layer: one vocabulary for every method.

A `LayerMatch` names a feature and a layer on each side (TextBrewer's IntermediateMatch, typed).
TinyBERT's embedding/hidden/attention matches, PKD's [CLS] matches and DistilBERT's copied
layers are all lists of them, so a recipe states any of them the same way:
  {feature: hidden, student: 2, teacher: 4, weight: 1.0}
Indices: 'embeddings' is hidden state 0 of both models; 'hidden' and 'cls' use hidden-state
indices (0 = embedding output, j = output of layer j); 'attention' and 'weights' use 0-based
layer indices (a layer's attention scores; a layer's parameters to copy).
"""
from __future__ import annotations

import collections
import dataclasses
import math

from jaxdistill.config import entries_of

FEATURES = ("embeddings", "hidden", "attention", "cls", "weights")
LOSSES = ("mse",)


@dataclasses.dataclass(frozen=True)
class LayerMatch:
    """One matched pair of features; see the module docstring for the index conventions."""

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
        zero_based = self.feature in ("attention", "weights")
        return f"L{self.student + 1}" if zero_based else f"L{self.student}"


def parse_matches(items, where: str = "matches") -> tuple[LayerMatch, ...]:
    """A YAML list of {feature, student, teacher, ...} (or LayerMatch objects) as typed matches."""
    return entries_of(LayerMatch, items, where, "{feature, student, teacher}")


def check_no_duplicates(matches: tuple[LayerMatch, ...], where: str = "matches") -> None:
    seen = collections.Counter((m.feature, m.student, m.teacher) for m in matches)
    dup = [k for k, c in seen.items() if c > 1]
    if dup:
        raise ValueError(f"{where}: {dup[0][0]} student {dup[0][1]} -> teacher {dup[0][2]} is "
                         "listed twice")


def metric_names(matches: tuple[LayerMatch, ...]) -> list[str]:
    """'L{n}' per match; 'L{n}_T{t}' where one student layer feeds several matches of a kind."""
    count = collections.Counter((m.feature, m.student) for m in matches)
    return [m.name if count[(m.feature, m.student)] == 1 else f"{m.name}_T{m.teacher}"
            for m in matches]


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """0-based teacher layers for an M-layer student: round(i * (N-1) / (M-1)), halves up.

    From the first to the last layer; 12 -> 6 is extract_distilbert.py's [0, 2, 4, 7, 9, 11]. A
    1-layer student takes layer 0.
    """
    n, m = teacher_layers, student_layers
    if not 1 <= m <= n:
        raise ValueError(f"a {m}-layer student cannot be initialised from the layers of a "
                         f"{n}-layer teacher (need 1 <= student layers <= teacher layers)")
    if m == 1:
        return (0,)
    return tuple(math.floor(i * (n - 1) / (m - 1) + 0.5) for i in range(m))


def weight_matches(teacher_layers: int, student_layers: int) -> tuple[LayerMatch, ...]:
    """`evenly_spaced_layers` as 'weights' matches (what a teacher_layers init copies)."""
    return tuple(LayerMatch("weights", i, j)
                 for i, j in enumerate(evenly_spaced_layers(teacher_layers, student_layers)))
