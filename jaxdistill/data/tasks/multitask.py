"""Several tasks in one run: one shared output layer cut into spans, single-task batches drawn
as MT-DNN draws them.

`task_arrays` gives every task the same batch keys (so one compiled step serves them all): its
encoded rows, labels as float32, and per row its span of the shared output layer, whether it is
a regression, and its soft targets placed in the span (zeros and `has_soft_targets` 0 for a task
without an ensemble). `MultiTaskBatches` pools every task's batches of an epoch and shuffles
them (MT-DNN's batcher), so a task comes up with probability proportional to its number of
batches; which task and which of its batches step s gets is a pure function of (seed, s), so
resume needs no data state.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxdistill.data.tasks.batches import TaskBatches
from jaxdistill.errors import UserError


@dataclasses.dataclass(frozen=True)
class Span:
    """Task `task_id`'s classes in the shared output layer: label_start..label_start+num_labels-1."""

    task_id: str
    name: str  # its preset
    label_start: int
    num_labels: int  # 1 = regression
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    select_metric: str

    @property
    def label_stop(self) -> int:
        return self.label_start + self.num_labels


def spans_of(tasks: list[tuple[str, object]]) -> list[Span]:
    """Consecutive spans for (task id, TaskData) in order."""
    out, start = [], 0
    for task_id, task in tasks:
        out.append(Span(task_id, task.name, start, task.num_labels, task.label_names,
                        task.metrics, task.select_metric))
        start += task.num_labels
    return out


def task_arrays(arrays: dict[str, np.ndarray], span: Span, width: int) -> dict[str, np.ndarray]:
    """One task's encoded arrays with the multi-task keys (module docstring); `width` is the
    shared output layer's size."""
    n = len(arrays["labels"])
    out = {k: v for k, v in arrays.items() if k not in ("soft_targets", "labeled",
                                                           "teacher_logits")}
    out["labels"] = arrays["labels"].astype(np.float32)
    out["label_start"] = np.full(n, span.label_start, np.int32)
    out["label_stop"] = np.full(n, span.label_stop, np.int32)
    out["regression"] = np.full(n, float(span.num_labels == 1), np.float32)
    targets = np.zeros((n, width), np.float32)
    soft = arrays.get("soft_targets")
    if soft is not None:
        if soft.shape[1] != span.num_labels:
            raise UserError(f"tasks.{span.task_id}: its soft targets have {soft.shape[1]} "
                            f"entries per row, the task {span.num_labels} labels.")
        targets[:, span.label_start:span.label_stop] = soft
    out["soft_targets"] = targets
    out["has_soft_targets"] = np.full(n, float(soft is not None), np.float32)
    return out


class MultiTaskBatches:
    """Global batches of several tasks; batch `step` is a pure function of (tasks, seed, step).

    Epoch e holds every task's batches of its own epoch e once, in an order seeded by (seed, e):
    MT-DNN's pooled shuffle. Each task's batches are its `TaskBatches` in turn.
    """

    def __init__(self, per_task: list[TaskBatches], seed: int):
        if not per_task:
            raise ValueError("no tasks")
        keys = [tuple(sorted(b.arrays)) for b in per_task]
        if len(set(keys)) != 1:
            raise ValueError(f"tasks have different batch keys: {keys}")
        self.tasks, self.seed = per_task, seed
        self.counts = np.asarray([b.steps_per_epoch for b in per_task])
        self.steps_per_epoch = int(self.counts.sum())
        self.arrays = per_task[0].arrays  # keys and ranks (the loop's batch spec)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(task of each position, how many of that task's batches came before it)."""
        if self._cached is None or self._cached[0] != epoch:
            order = np.random.default_rng([self.seed, 7919, epoch]).permutation(
                np.repeat(np.arange(len(self.tasks)), self.counts))
            before = np.zeros(len(order), np.int64)
            for k in range(len(self.tasks)):
                where = np.flatnonzero(order == k)
                before[where] = np.arange(len(where))
            self._cached = (epoch, order, before)
        return self._cached[1], self._cached[2]

    def task_of(self, step: int) -> tuple[int, int]:
        """(task index, that task's batch number) of global batch `step` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, pos = divmod(step, self.steps_per_epoch)
        order, before = self._epoch(epoch)
        k = int(order[pos])
        return k, epoch * int(self.counts[k]) + int(before[pos])

    def batch(self, step: int) -> dict[str, np.ndarray]:
        k, task_step = self.task_of(step)
        return self.tasks[k].batch(task_step)
