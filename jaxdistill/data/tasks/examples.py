"""The example records every other tasks module passes around, and their JSONL form.

Kept apart so that encoding and batching can use `Example` without the readers and presets.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Example:
    """One example: a sentence (or pair) and an int class or a float score.

    label is None for a row that has no gold label (a Tang et al. augmented variant); such rows
    carry `teacher_logits`, the teacher's output that labels them instead. `soft_targets` are
    an ensemble's averaged class probabilities (regression: its mean prediction), MT-DNN's.
    """

    text_a: str
    text_b: str | None
    label: int | float | None
    teacher_logits: tuple[float, ...] | None = None
    soft_targets: tuple[float, ...] | None = None


def example_row(ex: Example) -> dict:
    """The JSONL object of one example ("teacher_logits", "soft_targets" only when it has them)."""
    row = {"text_a": ex.text_a, "text_b": ex.text_b, "label": ex.label}
    for key in ("teacher_logits", "soft_targets"):
        if getattr(ex, key) is not None:
            row[key] = [float(v) for v in getattr(ex, key)]
    return row


def write_examples_jsonl(path: str | Path, examples: list[Example]) -> None:
    """One {"text_a", "text_b", "label"[, "teacher_logits"][, "soft_targets"]} object per line
    (the augmented-data format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for ex in examples:
            f.write(json.dumps(example_row(ex)) + "\n")
    tmp.replace(path)  # never a half-written file under the final name


def read_examples_jsonl(path: str | Path) -> list[Example]:
    with Path(path).open() as f:
        return [Example(d["text_a"], d.get("text_b"), d["label"], _floats(d, "teacher_logits"),
                        _floats(d, "soft_targets"))
                for d in map(json.loads, f) if d]


def _floats(row: dict, key: str) -> tuple[float, ...] | None:
    return None if row.get(key) is None else tuple(row[key])


@dataclasses.dataclass
class TaskData:
    """A loaded task: examples plus what training and evaluation need to know about it."""

    name: str
    train: list[Example]
    dev: list[Example]
    num_labels: int  # 1 = regression
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    select_metric: str
