"""Multi-task training (`jaxdistill finetune` with `tasks:`, method mtdnn) and its evaluation.

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

from jaxdistill import checkpoint, config as config_lib, loading, sharding, significance
from jaxdistill.config import FinetuneConfig, TaskConfig
from jaxdistill.data import tasks
from jaxdistill.data.tasks.multitask import MultiTaskBatches, Span, spans_of, task_arrays
from jaxdistill.errors import UserError
from jaxdistill.methods import method_class
from jaxdistill.train import finetune, loop

AVERAGE = "average"  # the dev metric that selects the best checkpoint


def load_tasks(cfg: FinetuneConfig) -> list[tuple[str, tasks.TaskData]]:
    """(task id, TaskData) of every task of a multi-task recipe, in recipe order."""
    cls = method_class(cfg.method.name)
    if not cls.multi_task:
        raise UserError(f"tasks: names {len(cfg.tasks)} tasks ({', '.join(cfg.tasks)}), but "
                        f"method '{cfg.method.name}' trains on one (`task`). Use method mtdnn "
                        f"(configs/task/mtdnn/student.yaml), or drop `tasks`.")
    if not cfg.tasks:
        raise UserError(f"method '{cfg.method.name}' trains one student on several tasks: list "
                        f"them under `tasks` ({{id: {{name, source, ...}}}}, as in "
                        f"configs/task/mtdnn/student.yaml).")
    if cfg.task != TaskConfig():
        set_keys = [k for k, v in config_lib.to_dict(cfg.task).items()
                    if v != getattr(TaskConfig(), k)]
        raise UserError(f"task.{', task.'.join(set_keys)} would be ignored: this run trains on "
                        f"`tasks` ({', '.join(cfg.tasks)}); set those keys per task, e.g. "
                        f"tasks.{next(iter(cfg.tasks))}.{set_keys[0]}.")
    out = []
    for task_id, task_cfg in cfg.tasks.items():
        task = tasks.load_task(task_cfg)
        if any(ex.label is None for ex in task.train):
            raise UserError(f"tasks.{task_id}.augmented={task_cfg.augmented} has rows without a "
                            f"gold label; method '{cfg.method.name}' trains every row on its "
                            f"label. Give the file `jaxdistill augment` (method ensemble) wrote.")
        out.append((task_id, task))
    return out


def span_meta(spans: list[Span], cfg: FinetuneConfig) -> list[dict]:
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
        self.predict, self.batch_sh = finetune.make_predict(
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
        logits, spent = finetune.set_logits(predict, batch_sh, params, dev, batch_size)
        logits = logits[:, span.label_start:span.label_stop]
        scores = finetune.score_logits(logits, dev["labels"], span.num_labels, span.metrics)
        values.update({f"{span.task_id}_{k}": v for k, v in scores.items()})
        selected.append(scores[span.select_metric])
        rows, seconds = rows + len(logits), seconds + spent
        if per_example is not None:
            per_example += finetune.prediction_rows(logits, dev["labels"], span.num_labels,
                                                    span.task_id)
    values[AVERAGE] = float(np.mean(selected))
    return values, rows / max(seconds, 1e-9)


def run(cfg: FinetuneConfig) -> dict:
    """Train one student on every task of `cfg.tasks`; returns a summary with the best dev
    average and each task's dev metrics at that step."""
    loaded = load_tasks(cfg)
    spans = spans_of(loaded)
    width = spans[-1].label_stop
    texts = [(ex.text_a, ex.text_b) for _, task in loaded for ex in task.train]
    roles = finetune.build_roles(cfg, width, texts)
    tok = roles.tokenizer_dir
    if tok is None:
        raise UserError(f"student.init={cfg.student.init} has no tokenizer files (vocab.txt or "
                        f"tokenizer.json) to encode the tasks with.")
    per_task, devs, taught = [], [], []
    for k, (span, (_, task)) in enumerate(zip(spans, loaded)):
        regression = span.num_labels == 1
        train = tasks.encode(task.train, tok, cfg.seq_len, regression)
        taught.append("soft_targets" in train)
        per_task.append(tasks.TaskBatches(task_arrays(train, span, width), cfg.batch_size,
                                          cfg.seed + k))
        devs.append(tasks.encode(task.dev, tok, cfg.seq_len, regression))
    batches = MultiTaskBatches(per_task, cfg.seed)
    steps = finetune.total_steps(cfg, batches)
    source = finetune.TaskSource(batches)
    setup = loop.assemble(cfg, sharding.make_mesh(cfg.mesh), roles, total_steps=steps,
                          batch_spec=source.spec)
    loop.check_batch(cfg.batch_size, cfg.optimizer.grad_accum, setup.mesh)
    loop.check_batch(cfg.eval_batch_size, 1, setup.mesh, key="eval_batch_size")
    loop.start_run_dir(setup)
    listing = ", ".join(f"{s.task_id} ({len(t.train)} train / {len(t.dev)} dev, {b.steps_per_epoch}"
                        f" batches, classes {s.label_start}..{s.label_stop - 1}"
                        f"{', soft targets' if soft else ''})"
                        for s, (_, t), b, soft in zip(spans, loaded, per_task, taught))
    header = (f"{len(spans)} tasks: {listing}; {batches.steps_per_epoch} steps per epoch, "
              f"{steps} steps; method {cfg.method.name}; dev metric: the average of "
              f"{', '.join(f'{s.task_id} {s.select_metric}' for s in spans)}")
    summary = loop.run(loop.Job(setup, source, total_steps=steps, seq_len=cfg.seq_len,
                                evaluator=MultiTaskEvaluator(setup, spans, devs,
                                                             cfg.eval_batch_size),
                                eval_every=cfg.eval_every, select=cfg.select, header=header,
                                command="jaxdistill finetune (multi-task)",
                                tasks=span_meta(spans, cfg)))
    best = Path(cfg.run_dir) / loop.BEST_DIR
    if best.is_dir():
        info = checkpoint.read_meta(checkpoint.find_step_dir(best)).get("best", {})
        summary["best_dev"] = info.get("dev", {})
    return {**summary, "tasks": [s.task_id for s in spans]}


# --------------------------------------------------------------------------------------------
# `jaxdistill evaluate` of a multi-task model


def evaluate_model(model_ref: str, cfg: FinetuneConfig, predictions: str | None = None) -> dict:
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
        out = {t["task_id"]: finetune.evaluate_model(str(path / t["dir"]), task_cfgs[t["task_id"]],
                                                     cfg.seq_len, cfg.eval_batch_size)
               for t in listing}
        selected = [r[f"dev_{r['metric']}"] for r in out.values()]
        return {"model": str(model_ref), "tasks": out, f"dev_{AVERAGE}": float(np.mean(selected))}
    step_dir = checkpoint.find_step_dir(model_ref)
    meta = checkpoint.read_meta(step_dir)
    if not meta.get("tasks"):
        raise UserError(f"{model_ref} is a single-task model; evaluate it with `task.*` keys "
                        f"(no `tasks`).")
    ids = [t["task_id"] for t in meta["tasks"]]
    task_cfgs = _task_configs(cfg, meta["tasks"], model_ref)
    model, params, tok = loading.load_pretrained(model_ref)
    predict, batch_sh, params, mesh = finetune.placed_predict(model, params)
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


def _task_configs(cfg: FinetuneConfig, spans: list[dict], model_ref: str
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
