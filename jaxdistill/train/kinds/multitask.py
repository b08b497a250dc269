"""Several tasks at once (`jaxdistill finetune` with `tasks:`, method mtdnn) and its evaluation.

The one loop with MultiTaskBatches (data/tasks/multitask.py) as the data and an evaluator that
scores every task's dev set on its span of the shared output layer; the best checkpoint is
chosen by the average of the tasks' dev metrics (`dev_average`). The student is any classifier
kind: its output layer is every task's head side by side, and the export cuts it into one model
directory per task (`loop.export_tasks`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxdistill import checkpoint, config as config_lib, loading, significance
from jaxdistill.config import TaskConfig, TaskRunConfig
from jaxdistill.data import tasks
from jaxdistill.data.tasks.metrics import score_logits
from jaxdistill.data.tasks.multitask import MultiTaskBatches, Span, spans_of, task_arrays
from jaxdistill.errors import UserError
from jaxdistill.train import loop
from jaxdistill.train.kinds import task as one_task
from jaxdistill.train.kinds.base import (DataKind, EvaluateRequest, register, task_source,
                                         total_steps, train)

AVERAGE = "average"  # the dev metric that selects the best checkpoint


@dataclasses.dataclass(frozen=True)
class MultiTaskConfig(TaskRunConfig):
    """`jaxdistill finetune` of one student on several tasks at once (method mtdnn).

    tasks: {task id: task keys}. A task's `name` defaults to its id; its `augmented` file may
    carry ensemble soft targets (`jaxdistill augment` method ensemble).
    """

    tasks: dict[str, TaskConfig] = dataclasses.field(default_factory=dict)


def load_tasks(cfg: MultiTaskConfig) -> list[tuple[str, tasks.TaskData]]:
    """(task id, TaskData) of every task of a multi-task recipe, in recipe order."""
    if not cfg.tasks:
        raise UserError(f"method '{cfg.method.name}' trains one student on several tasks: list "
                        f"them under `tasks` ({{id: {{name, source, ...}}}}, as in "
                        f"configs/task/mtdnn/student.yaml).")
    out = []
    for task_id, task_cfg in cfg.tasks.items():
        task = tasks.load_task(task_cfg)
        if any(ex.label is None for ex in task.train):
            raise UserError(f"tasks.{task_id}.augmented={task_cfg.augmented} has rows without a "
                            f"gold label; method '{cfg.method.name}' trains every row on its "
                            f"label. Give the file `jaxdistill augment` (method ensemble) wrote.")
        out.append((task_id, task))
    return out


def span_meta(spans: list[Span], cfg: MultiTaskConfig) -> list[dict]:
    """Each task's span and the task keys it was read with (so `evaluate` needs no recipe)."""
    return [{"task_id": s.task_id, "name": s.name, "label_start": s.label_start,
             "num_labels": s.num_labels,
             "label_names": list(s.label_names) if s.label_names else None,
             "task": config_lib.to_dict(cfg.tasks[s.task_id])} for s in spans]


class MultiTaskEvaluator:
    """Every task's dev metrics on its span, and their average (the selecting metric)."""

    metric = AVERAGE
    higher_is_better = True

    def __init__(self, setup: loop.Setup, spans: list[Span], devs: list[dict[str, np.ndarray]],
                 batch_size: int):
        self.spans, self.devs, self.batch_size = spans, devs, batch_size
        self.predict, self.batch_sh = one_task.make_predict(
            setup.student, setup.state_sh.params["student"], setup.mesh)

    def __call__(self, student_params: Any) -> tuple[dict[str, float], float]:
        return score_tasks(self.predict, self.batch_sh, student_params, self.spans, self.devs,
                           self.batch_size)


def score_tasks(predict, batch_sh: dict, params: Any, spans: list[Span],
                devs: list[dict[str, np.ndarray]], batch_size: int,
                per_example: list | None = None) -> tuple[dict[str, float], float]:
    """({<task id>_<metric>: value, ..., 'average': mean of the tasks' select metrics},
    examples/s of the forward passes); each example's label and prediction are appended to
    `per_example` when one is given."""
    values, selected, rows, seconds = {}, [], 0, 0.0
    for span, dev in zip(spans, devs):
        logits, spent = one_task.set_logits(predict, batch_sh, params, dev, batch_size)
        logits = logits[:, span.label_start:span.label_stop]
        scores = score_logits(logits, dev["labels"], span.num_labels, span.metrics)
        values.update({f"{span.task_id}_{k}": v for k, v in scores.items()})
        selected.append(scores[span.select_metric])
        rows, seconds = rows + len(logits), seconds + spent
        if per_example is not None:
            per_example += one_task.prediction_rows(logits, dev["labels"], span.num_labels,
                                                    span.task_id)
    values[AVERAGE] = float(np.mean(selected))
    return values, rows / max(seconds, 1e-9)


def run(cfg: MultiTaskConfig) -> dict:
    """Train one student on every task of `cfg.tasks`; returns a summary with the best dev
    average and each task's dev metrics at that step."""
    config_lib.check_ranges(cfg)
    loaded = load_tasks(cfg)
    spans = spans_of(loaded)
    width = spans[-1].label_stop
    texts = [(ex.text_a, ex.text_b) for _, task in loaded for ex in task.train]
    roles = one_task.build_roles(cfg, width, texts)
    tok = roles.tokenizer_dir
    per_task, devs, taught = [], [], []
    for k, (span, (_, task)) in enumerate(zip(spans, loaded)):
        regression = span.num_labels == 1
        train_arrays = tasks.encode(task.train, tok, cfg.seq_len, regression)
        taught.append("soft_targets" in train_arrays)
        per_task.append(tasks.TaskBatches(task_arrays(train_arrays, span, width), cfg.batch_size,
                                          cfg.seed + k))
        devs.append(tasks.encode(task.dev, tok, cfg.seq_len, regression))
    batches = MultiTaskBatches(per_task, cfg.seed)
    steps = total_steps(cfg, batches)
    listing = ", ".join(f"{s.task_id} ({len(t.train)} train / {len(t.dev)} dev, {b.steps_per_epoch}"
                        f" batches, classes {s.label_start}..{s.label_stop - 1}"
                        f"{', soft targets' if soft else ''})"
                        for s, (_, t), b, soft in zip(spans, loaded, per_task, taught))
    header = (f"{len(spans)} tasks: {listing}; {batches.steps_per_epoch} steps per epoch, "
              f"{steps} steps; method {cfg.method.name}; dev metric: the average of "
              f"{', '.join(f'{s.task_id} {s.select_metric}' for s in spans)}")
    summary = train(cfg, roles, task_source(batches), total_steps=steps, seq_len=cfg.seq_len,
                    header=header, command="jaxdistill finetune (multi-task)",
                    tasks=span_meta(spans, cfg),
                    evaluator=lambda setup: MultiTaskEvaluator(setup, spans, devs,
                                                               cfg.eval_batch_size))
    best = Path(cfg.run_dir) / loop.BEST_DIR
    if best.is_dir():
        info = checkpoint.read_meta(checkpoint.find_step_dir(best)).get("best", {})
        summary["best_dev"] = info.get("dev", {})
    return {**summary, "tasks": [s.task_id for s in spans]}


# --------------------------------------------------------------------------------------------
# `jaxdistill evaluate` of a multi-task model


def evaluate_model(model_ref: str, cfg: MultiTaskConfig, predictions: str | None = None) -> dict:
    """Every task's dev metrics of a multi-task checkpoint (its spans from the metadata, its
    tasks from the recipe or else the run's own config) or of its export (a directory with
    tasks.json: one model directory per task, tasks from the recipe); with `predictions`, every
    task's per-example labels and predictions written there (a checkpoint only)."""
    if predictions and (Path(model_ref).expanduser() / "tasks.json").is_file():
        raise UserError("--predictions reads a multi-task checkpoint (its best/ or a step dir), "
                        "not its per-task export.")
    path = Path(model_ref).expanduser()
    if (path / "tasks.json").is_file():
        listing = json.loads((path / "tasks.json").read_text())
        task_cfgs = _task_configs(cfg, listing, model_ref)
        out = {t["task_id"]: one_task.evaluate_model(str(path / t["dir"]), task_cfgs[t["task_id"]],
                                                     cfg.seq_len, cfg.eval_batch_size)
               for t in listing}
        selected = [r[f"dev_{r['metric']}"] for r in out.values()]
        return {"model": str(model_ref), "tasks": out, f"dev_{AVERAGE}": float(np.mean(selected))}
    step_dir = checkpoint.find_step_dir(model_ref)
    meta = checkpoint.read_meta(step_dir)
    if not meta.get("tasks"):
        raise UserError(f"{model_ref} is a single-task model; evaluate it with a one-task "
                        f"recipe (`task.*` keys, e.g. --config configs/task/teacher.yaml).")
    ids = [t["task_id"] for t in meta["tasks"]]
    task_cfgs = _task_configs(cfg, meta["tasks"], model_ref)
    model, params, tok = loading.load_pretrained(model_ref)
    predict, batch_sh, params, mesh = one_task.placed_predict(model, params)
    spans, devs = [], []
    for t in meta["tasks"]:
        task = tasks.load_task(task_cfgs[t["task_id"]])
        if task.num_labels != t["num_labels"]:
            raise UserError(f"tasks.{t['task_id']}: the task has {task.num_labels} labels, the "
                            f"model's head for it {t['num_labels']}.")
        spans.append(Span(t["task_id"], task.name, t["label_start"], t["num_labels"],
                          task.label_names, task.metrics, task.select_metric))
        devs.append(tasks.encode(task.dev, tok, cfg.seq_len, task.num_labels == 1))
    with mesh:
        score_tasks(predict, batch_sh, params, spans[:1],
                    [{k: v[:cfg.eval_batch_size] for k, v in devs[0].items()}],
                    cfg.eval_batch_size)  # compile outside the timing
        rows: list = []
        values, rate = score_tasks(predict, batch_sh, params, spans, devs, cfg.eval_batch_size,
                                   rows)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"model": str(model_ref), "tasks": ids, **{f"dev_{k}": v for k, v in values.items()},
            "metric": AVERAGE, "parameters": n_params, "examples_per_sec": rate,
            "seq_len": cfg.seq_len, "batch_size": cfg.eval_batch_size,
            "device": jax.devices()[0].device_kind,
            **({"predictions": significance.write_predictions(predictions, rows)}
               if predictions else {})}


def _task_configs(cfg: MultiTaskConfig, spans: list[dict], model_ref: str
                  ) -> dict[str, TaskConfig]:
    """Each head's task keys: the recipe's `tasks.<id>` when it has them, else those the model
    was trained with (its metadata)."""
    out = {}
    for span in spans:
        task_id = span["task_id"]
        if task_id in cfg.tasks:
            out[task_id] = cfg.tasks[task_id]
        elif span.get("task"):
            out[task_id] = config_lib.from_dict(TaskConfig, span["task"], f"{model_ref}: task")
        else:
            raise UserError(f"{model_ref} has a head for task '{task_id}' and the recipe's "
                            f"`tasks` has no {task_id}; give the multi-task recipe with --config "
                            f"(e.g. configs/task/mtdnn/student.yaml).")
    # Only the dev set is read: a teacher-written train file need not be at hand.
    return {k: dataclasses.replace(v, augmented="") for k, v in out.items()}


def is_multitask(model_ref: str) -> bool:
    """A multi-task checkpoint (spans in its metadata) or its export (tasks.json)."""
    path = Path(model_ref).expanduser()
    if (path / "tasks.json").is_file():
        return True
    try:
        return bool(checkpoint.read_meta(checkpoint.find_step_dir(path)).get("tasks"))
    except (UserError, OSError, ValueError):
        return False  # not a checkpoint: the evaluating kind names what is wrong


def evaluate(cfg: MultiTaskConfig, request: EvaluateRequest) -> dict:
    """`jaxdistill evaluate` of a multi-task model: every task's dev metrics."""
    if request.split != "dev" or request.speeds is not None:
        raise UserError("a multi-task model is evaluated on every task's dev set; --split and "
                        "--speeds apply to one task.")
    return evaluate_model(request.model, cfg, request.predictions)


register(DataKind("tasks", MultiTaskConfig, run, "several tasks at once (`tasks`)",
                  default_recipe="task/mtdnn/student.yaml", evaluate=evaluate,
                  owns_model=is_multitask))
