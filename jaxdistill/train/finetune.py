"""The task stage, `jaxdistill finetune` (plain fine-tuning or task distillation), and evaluation.

The one loop (train/loop.py) with task batches and a dev-set evaluator: the student starts from a
checkpoint or HF directory with a task classifier (or from random with `student.init: random`),
teachers are fine-tuned classifiers, the best dev checkpoint goes to run_dir/best and is
exported. Batches are a pure function of the step (data/tasks TaskBatches), so resume needs no
data state: the same command on the same run_dir continues exactly.
"""
from __future__ import annotations

import math
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdistill import config as config_lib, loading, sharding, significance
from jaxdistill.config import FinetuneConfig
from jaxdistill.data import tasks
from jaxdistill.errors import UserError
from jaxdistill.methods import method_class, parse_options
from jaxdistill.methods.base import STUDENT
from jaxdistill.models import Model
from jaxdistill.train import loop, task_metrics
from jaxdistill.train.feed import to_global

BEST_DIR = loop.BEST_DIR
TEACHER_HINT = (" A task teacher is a fine-tuned classifier: `jaxdistill finetune --config "
                "configs/task/teacher.yaml` writes one to runs/task_teacher/best.")


# --------------------------------------------------------------------------------------------
# Data


class TaskSource:
    """The loop's data source: this process's rows of global batch `step` (no iterator state)."""

    prefetch = 2

    def __init__(self, batches: tasks.TaskBatches):
        self.batches = batches
        self.spec = {k: v.ndim for k, v in batches.arrays.items()}

    def iterator(self, start: int, saved_state: Any) -> "_StepBatches":
        del saved_state  # the step alone positions the data
        return _StepBatches(self.batches, start)


class _StepBatches:
    def __init__(self, batches: tasks.TaskBatches, start: int):
        self.batches, self.step = batches, start

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batches.batch(self.step)
        self.step += 1
        return process_rows(batch)

    def get_state(self) -> None:
        return None


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n, p, i = len(next(iter(batch.values()))), jax.process_count(), jax.process_index()
    return {k: v[i * n // p:(i + 1) * n // p] for k, v in batch.items()}


def total_steps(cfg: FinetuneConfig, batches: tasks.TaskBatches) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * batches.steps_per_epoch))


# --------------------------------------------------------------------------------------------
# Evaluation


def make_predict(model: Model, params_sh: Any, mesh: jax.sharding.Mesh):
    """Jitted logits of `model` on one global eval batch (replicated out, for the host)."""
    batch_sh = {k: sharding.batch_sharding(mesh, n) for k, n in model.input_spec().items()}

    def predict(params, batch):
        with nn.logical_axis_rules(sharding.RULES):
            out = model.apply(params, batch, train=False)
        return out.logits.astype(np.float32)

    return jax.jit(predict, in_shardings=(params_sh, batch_sh),
                   out_shardings=sharding.replicated(mesh)), batch_sh


def placed_predict(model: Model, params: Any):
    """(predict, batch shardings, params on the devices, mesh) for evaluating a loaded model on
    every local device."""
    mesh = sharding.make_mesh(config_lib.MeshConfig())
    params_sh = sharding.shardings_for(model.logical_axes(), params, mesh)
    predict, batch_sh = make_predict(model, params_sh, mesh)
    return predict, batch_sh, jax.device_put(params, params_sh), mesh


def evaluate_arrays(predict, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
                    batch_size: int, num_labels: int, metric_names: tuple[str, ...]
                    ) -> tuple[dict[str, float], float]:
    """(metrics over the whole set, examples/s of the forward passes)."""
    logits, seconds = set_logits(predict, batch_sh, params, arrays, batch_size)
    return score_logits(logits, arrays["labels"], num_labels, metric_names), \
        len(logits) / max(seconds, 1e-9)


def set_logits(predict, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
               batch_size: int) -> tuple[np.ndarray, float]:
    """(logits of every row of `arrays`, seconds spent in the forward passes)."""
    logits, seconds = [], 0.0
    for batch in tasks.eval_batches(arrays, batch_size):
        weights = batch.pop("weights")
        inputs = to_global(process_rows({k: batch[k] for k in batch_sh}), batch_sh, batch_size)
        t0 = time.perf_counter()
        out = np.asarray(jax.device_get(predict(params, inputs)))
        seconds += time.perf_counter() - t0
        logits.append(out[weights > 0])
    return np.concatenate(logits), seconds


def score_logits(logits: np.ndarray, labels: np.ndarray, num_labels: int,
                 metric_names: tuple[str, ...]) -> dict[str, float]:
    preds = task_metrics.predictions_from_logits(logits, num_labels)
    return task_metrics.compute(metric_names, preds, labels[:len(preds)])


class DevEvaluator:
    """The loop's evaluator: task metrics of the student on the encoded dev set."""

    higher_is_better = True

    def __init__(self, setup: loop.Setup, task: tasks.TaskData, dev: dict[str, np.ndarray],
                 batch_size: int):
        self.task, self.dev, self.batch_size = task, dev, batch_size
        self.metric = task.select_metric
        self.predict, self.batch_sh = make_predict(setup.student,
                                                   setup.state_sh.params["student"], setup.mesh)

    def __call__(self, student_params: Any) -> tuple[dict[str, float], float]:
        return evaluate_arrays(self.predict, self.batch_sh, student_params, self.dev,
                               self.batch_size, self.task.num_labels, self.task.metrics)


# --------------------------------------------------------------------------------------------
# The run


def build_roles(cfg: FinetuneConfig, num_labels: int,
                texts: list[tuple[str, str | None]] | None = None) -> loop.Roles:
    if cfg.student.init in ("", "default"):
        raise UserError(f"student.init={cfg.student.init!r}: the task stage starts from a trained "
                        f"encoder; name a general-distillation run dir (e.g. runs/demo), an Orbax "
                        f"step dir, a Hugging Face directory or package:minilm (or 'random' with "
                        f"the architecture in student.*).")
    cls = method_class(cfg.method.name)
    heads = cls.roles(parse_options(cls, cfg.method.options))
    if any(head != "classifier" for head in heads.values()):
        raise UserError(f"method '{cfg.method.name}' (options {cfg.method.options}) is not a task "
                        f"method; use finetune, kd, pkd, or tinybert with stage task_intermediate "
                        f"or task_prediction (mtdnn for several tasks).")
    # A random student without a teacher role reads the tokenizer of teacher.path, as pretraining
    # with a teacher-free method does.
    return loop.build_roles(cfg, num_labels=num_labels, teacher_hint=TEACHER_HINT, texts=texts,
                            student_from=cfg.teacher.path or None)


def check_train_arrays(cfg: FinetuneConfig, method: Any, train: dict[str, np.ndarray],
                       num_labels: int) -> None:
    """The training data has what the method reads, and no unlabelled rows it would misread."""
    for key, how in method.batch_keys().items():
        if key not in train:
            raise UserError(f"method '{cfg.method.name}' reads '{key}' from the training data, "
                            f"which task {cfg.task.name} (augmented={cfg.task.augmented or 'none'})"
                            f" does not have: {how}.")
    if "teacher_logits" in train and train["teacher_logits"].shape[1] != num_labels:
        raise UserError(f"task.augmented={cfg.task.augmented}: its teacher_logits have "
                        f"{train['teacher_logits'].shape[1]} entries per row, the task "
                        f"{num_labels} labels.")
    if "labeled" in train and not type(method).trains_on_unlabeled_rows:
        raise UserError(f"task.augmented={cfg.task.augmented} has rows without a gold label "
                        f"(teacher-labelled variants); method '{cfg.method.name}' trains on "
                        f"labels and would read placeholders. Use method bilstm, or augment with "
                        f"`jaxdistill augment` (TinyBERT), which keeps labels.")


def run(cfg: FinetuneConfig) -> dict:
    """Fine-tune or distil to the end; returns a summary with the best dev metric."""
    config_lib.check_ranges(cfg)  # also for a config built in code
    if method_class(cfg.method.name).seq2seq:
        from jaxdistill.train import seq2seq

        return seq2seq.run(cfg)
    if method_class(cfg.method.name).multi_task or cfg.tasks:
        from jaxdistill.train import multitask

        return multitask.run(cfg)
    task = tasks.load_task(cfg.task)
    roles = build_roles(cfg, task.num_labels, [(ex.text_a, ex.text_b) for ex in task.train])
    tok = roles.tokenizer_dir
    if tok is None:
        raise UserError(f"student.init={cfg.student.init} has no tokenizer files (vocab.txt or "
                        f"tokenizer.json) to encode the task with; a random student takes them "
                        f"from teacher.path (e.g. teacher.path=package:minilm).")
    regression = task.num_labels == 1
    train = tasks.encode(task.train, tok, cfg.seq_len, regression)
    dev = tasks.encode(task.dev, tok, cfg.seq_len, regression)
    check_train_arrays(cfg, roles.method, train, task.num_labels)
    batches = tasks.TaskBatches(train, cfg.batch_size, cfg.seed)
    steps = total_steps(cfg, batches)
    source = TaskSource(batches)
    setup = loop.assemble(cfg, sharding.make_mesh(cfg.mesh), roles, total_steps=steps,
                          batch_spec=source.spec)
    loop.check_batch(cfg.batch_size, cfg.optimizer.grad_accum, setup.mesh)
    loop.check_batch(cfg.eval_batch_size, 1, setup.mesh, key="eval_batch_size")
    loop.start_run_dir(setup)
    header = (f"task {task.name}: {len(task.train)} train / {len(task.dev)} dev examples, "
              f"{batches.steps_per_epoch} steps per epoch, {steps} steps; method "
              f"{cfg.method.name}; dev metric {task.select_metric}")
    summary = loop.run(loop.Job(setup, source, total_steps=steps, seq_len=cfg.seq_len,
                                evaluator=DevEvaluator(setup, task, dev, cfg.eval_batch_size),
                                eval_every=cfg.eval_every, select=cfg.select, header=header,
                                command="jaxdistill finetune",
                                label_names=task.label_names))
    return {**summary, "task": task.name}


# --------------------------------------------------------------------------------------------
# `jaxdistill evaluate`


TIMED_PASSES = 5


def load_classifier(model_ref: str, task: tasks.TaskData, seq_len: int, split: str = "dev"):
    """(model, encoded split, predict, batch shardings, params on the devices, mesh) of a
    checkpoint or model directory that must be a classifier for `task`."""
    model, params, tok = loading.load_pretrained(model_ref)
    cfg = model.config
    if cfg.head != "classifier" or cfg.num_labels != task.num_labels:
        raise UserError(f"{model_ref}: expected a classifier with {task.num_labels} labels for "
                        f"task '{task.name}', found head '{cfg.head}' with {cfg.num_labels} "
                        f"labels.")
    if tok is None:
        raise UserError(f"{model_ref} has no tokenizer files (vocab.txt or tokenizer.json).")
    examples = task.dev if split == "dev" else task.train
    arrays = tasks.encode(examples, tok, seq_len, task.num_labels == 1)
    return (model, arrays, *placed_predict(model, params))


def pass_rate(predict, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
              batch_size: int) -> float:
    """Examples/s of one timed pass of the forward over `arrays`."""
    logits, seconds = set_logits(predict, batch_sh, params, arrays, batch_size)
    return len(logits) / max(seconds, 1e-9)


def evaluate_model(model_ref: str, task_cfg: config_lib.TaskConfig, seq_len: int,
                   batch_size: int, split: str = "dev", predictions: str | None = None) -> dict:
    """A checkpoint or model directory's classifier on a task's dev set: metrics, size, FLOPs,
    examples/s; with `predictions`, each example's label and prediction written there (JSON
    Lines, for `jaxdistill.significance`)."""
    task = tasks.load_task(task_cfg)
    model, arrays, predict, batch_sh, params, mesh = load_classifier(model_ref, task, seq_len,
                                                                     split)
    cfg = model.config
    with mesh:
        evaluate_arrays(predict, batch_sh, params, {k: v[:batch_size] for k, v in arrays.items()},
                        batch_size, task.num_labels, task.metrics)  # compile outside the timing
        logits, seconds = set_logits(predict, batch_sh, params, arrays, batch_size)
        values = score_logits(logits, arrays["labels"], task.num_labels, task.metrics)
        rate = len(logits) / max(seconds, 1e-9)
        # One pass over a small dev set lasts seconds, and on a shared CPU single passes of the
        # same model differ by 20%: the speed is the median of TIMED_PASSES passes.
        rates = [rate] + [pass_rate(predict, batch_sh, params, arrays, batch_size)
                          for _ in range(TIMED_PASSES - 1)]
        rate = float(np.median(rates))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"model": str(model_ref), "task": task.name, "split": split,
            "examples": len(arrays["labels"]),
            **{f"{split}_{k}": v for k, v in values.items()}, "metric": task.select_metric,
            "parameters": n_params, "layers": getattr(cfg, "num_layers", None),
            "hidden_size": getattr(cfg, "hidden_size", None),
            "flops_per_example": model.forward_flops_per_token(seq_len) * seq_len,
            "examples_per_sec": rate, "timed_passes": TIMED_PASSES, "seq_len": seq_len,
            "batch_size": batch_size, "device": jax.devices()[0].device_kind,
            **({"predictions": significance.write_predictions(predictions, prediction_rows(
                logits, arrays["labels"], task.num_labels))} if predictions else {})}


def prediction_rows(logits: np.ndarray, labels: np.ndarray, num_labels: int,
                    task: str | None = None) -> list[dict]:
    """Per example: its gold label and the model's prediction (and task, for several)."""
    preds = task_metrics.predictions_from_logits(logits, num_labels)
    extra = {"task": task} if task else {}
    return [{**extra, "label": y.item(), "prediction": p.item()}
            for y, p in zip(np.asarray(labels)[:len(preds)], np.asarray(preds))]
