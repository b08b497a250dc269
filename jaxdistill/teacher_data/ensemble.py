"""MT-DNN's ensemble soft targets: `jaxdistill augment` with method ensemble.

Every teacher (a fine-tuned classifier of the task, e.g. the same recipe at seeds 1..N) reads the
training set once, batched and jitted (`TeacherLogits`); a row's soft target is the mean of the
teachers' class probabilities at temperature 1 (MT-DNN's `prepare_distillation_data.py`), or for
a regression task the mean of their predictions. The rows keep their gold label, so the student
trains on both (methods/mtdnn.py). The same pass over the dev set gives each teacher's and the
ensemble's dev metrics, which go into the summary (the teacher rows of the results table).
Output: the chunked, resumable JSONL of teacher_data/base.py, read back as `task.augmented`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from jaxdistill.config import TaskConfig, check_ranges
from jaxdistill.data import tasks
from jaxdistill.data.tasks import Example
from jaxdistill.data.tasks.encoding import label_arrays
from jaxdistill.data.tasks.examples import example_row
from jaxdistill.errors import UserError
from jaxdistill.teacher_data.base import TeacherDataset, WriterSpec, register, write
from jaxdistill.teacher_data.classifier import TeacherLogits

@dataclasses.dataclass(frozen=True)
class EnsembleTargetsConfig:
    """`jaxdistill augment` with method: ensemble: MT-DNN's soft targets, the average of
    several fine-tuned teachers' class probabilities (regression: of their predictions) on
    every training example, written with the examples; also the dev metrics of each teacher
    and of the ensemble.
    """

    _RANGES: ClassVar[dict[str, str]] = {"batch_size": "[1, inf)", "seq_len": "[1, inf)",
                                          "chunk_size": "[1, inf)"}

    method: str = "ensemble"
    out: str = "runs/mtdnn/targets/rotten_tomatoes.jsonl"
    # Fine-tuned classifiers of the task (run dirs' best/, HF directories), e.g. seeds 1..3.
    teachers: list = dataclasses.field(default_factory=list)
    task: TaskConfig = TaskConfig()
    batch_size: int = 128  # teacher forward batch
    seq_len: int = 48  # teacher input length
    chunk_size: int = 2000  # examples per resumable part of the output


def member_outputs(logits: np.ndarray, regression: bool) -> np.ndarray:
    """One teacher's [N, C] logits as what the ensemble averages: probabilities (softmax at
    T = 1) or, for regression, the prediction itself."""
    logits = np.asarray(logits, np.float64)
    if regression:
        return logits
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def average_targets(logits_by_teacher: Sequence[np.ndarray], regression: bool) -> np.ndarray:
    """The ensemble's soft targets: the mean over teachers of `member_outputs`."""
    return np.mean([member_outputs(z, regression) for z in logits_by_teacher], axis=0)


class EnsembleTargets(TeacherDataset):
    def __init__(self, cfg: EnsembleTargetsConfig, task: tasks.TaskData,
                 teachers: list[TeacherLogits]):
        self.cfg, self.task, self.teachers = cfg, task, teachers

    def items(self) -> Sequence[Example]:
        return self.task.train

    def fingerprint(self) -> dict:
        return {**dataclasses.asdict(self.cfg), "examples": len(self.task.train)}

    def process(self, start: int, chunk: Sequence[Example]) -> list[dict]:
        del start
        rows = [(ex.text_a, ex.text_b) for ex in chunk]
        targets = average_targets([t(rows) for t in self.teachers], self.task.num_labels == 1)
        return [example_row(dataclasses.replace(ex, soft_targets=tuple(map(float, q))))
                for ex, q in zip(chunk, targets)]


def dev_scores(task: tasks.TaskData, teachers: list[TeacherLogits]) -> dict:
    """Each teacher's and the ensemble's dev metrics."""
    from jaxdistill.data.tasks.metrics import score_logits

    rows = [(ex.text_a, ex.text_b) for ex in task.dev]
    regression = task.num_labels == 1
    labels = label_arrays(task.dev, regression)["labels"]
    logits = [t(rows) for t in teachers]
    scores = {"members": [score_logits(z, labels, task.num_labels, task.metrics)
                          for z in logits]}
    # The ensemble's prediction: argmax of the mean probabilities (mean score for regression).
    scores["ensemble"] = score_logits(average_targets(logits, regression), labels,
                                      task.num_labels, task.metrics)
    return scores


def run(cfg: EnsembleTargetsConfig) -> dict:
    """Write cfg.out; returns counts, timings and the dev metrics of teachers and ensemble."""
    check_ranges(cfg)
    t0 = time.perf_counter()
    if not cfg.teachers:
        raise UserError("teachers: lists no teacher; give the fine-tuned classifiers of the task "
                        "(e.g. runs/mtdnn/teacher_rotten_tomatoes_s1/best, ..._s2/best, ...).")
    task = tasks.load_task(cfg.task)
    if any(ex.label is None for ex in task.train):
        raise UserError("task.augmented names rows without gold labels; the ensemble's soft "
                        "targets go with the original training set (leave task.augmented empty).")
    teachers = [TeacherLogits(str(ref), task.num_labels, cfg.batch_size, cfg.seq_len)
                for ref in cfg.teachers]
    dev = dev_scores(task, teachers)
    stats = write(EnsembleTargets(cfg, task, teachers), cfg.out, cfg.chunk_size,
                  what="augment (method ensemble)")
    return {"out": cfg.out, "task": task.name, "teachers": [str(t) for t in cfg.teachers],
            "rows": stats["rows"], "chunks": stats["chunks"], "resumed_chunks": stats["resumed"],
            "metric": task.select_metric, "dev": dev, "seconds": round(time.perf_counter() - t0, 1)}


register(WriterSpec("ensemble", EnsembleTargetsConfig, run,
                     "task/mtdnn/targets_rotten_tomatoes.yaml"))
