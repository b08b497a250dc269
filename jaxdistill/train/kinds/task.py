"""One classification task, `jaxdistill finetune` (plain fine-tuning or task distillation), and
its `evaluate`.

The one loop (train/loop.py) with task batches and a dev-set evaluator: the student starts from a
checkpoint or HF directory with a task classifier (or from random with `student.init: random`),
teachers are fine-tuned classifiers, the best dev checkpoint goes to run_dir/best and is
exported. Batches are a pure function of the step (data/tasks TaskBatches), so resume needs no
data state: the same command on the same run_dir continues exactly.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdistill import config as config_lib, loading, sharding, significance
from jaxdistill.config import TaskConfig, TaskRunConfig
from jaxdistill.data import tasks
from jaxdistill.data.placement import device_batches
from jaxdistill.data.tasks.metrics import predictions_from_logits, score_logits
from jaxdistill.errors import UserError
from jaxdistill.methods import method_class, parse_options
from jaxdistill.models import Model
from jaxdistill.train import loop
from jaxdistill.train.kinds.base import (DataKind, EvaluateRequest, register, task_source,
                                         total_steps, train)

TEACHER_HINT = (" A task teacher is a fine-tuned classifier: `jaxdistill finetune --config "
                "configs/task/teacher.yaml` writes one to runs/task_teacher/best.")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(TaskRunConfig):
    """`jaxdistill finetune` on one classification task: plain fine-tuning or task
    distillation."""

    task: TaskConfig = TaskConfig()


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


def set_logits(predict, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
               batch_size: int) -> tuple[np.ndarray, float]:
    """(logits of every row of `arrays`, seconds spent in the forward passes)."""
    logits, seconds = [], 0.0
    for inputs, weights in device_batches(arrays, batch_sh, batch_sh, batch_size):
        t0 = time.perf_counter()
        out = np.asarray(jax.device_get(predict(params, inputs)))
        seconds += time.perf_counter() - t0
        logits.append(out[weights > 0])
    return np.concatenate(logits), seconds


def evaluate_arrays(predict, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
                    batch_size: int, num_labels: int, metric_names: tuple[str, ...]
                    ) -> tuple[dict[str, float], float]:
    """(metrics over the whole set, examples/s of the forward passes)."""
    logits, seconds = set_logits(predict, batch_sh, params, arrays, batch_size)
    return score_logits(logits, arrays["labels"], num_labels, metric_names), \
        len(logits) / max(seconds, 1e-9)


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


def build_roles(cfg: TaskRunConfig, num_labels: int,
                texts: list[tuple[str, str | None]] | None = None) -> loop.Roles:
    """The models of a classification run (one task or several), the tokenizer checked."""
    if cfg.student.init in ("", "default"):
        raise UserError(f"student.init={cfg.student.init!r}: the task stage starts from a trained "
                        f"encoder; name a general-distillation run dir (e.g. runs/demo), an Orbax "
                        f"step dir, a Hugging Face directory or package:minilm (or 'random' with "
                        f"the architecture in student.*).")
    cls = method_class(cfg.method.name)
    heads = cls.roles(parse_options(cls, cfg.method.options))
    if any(head != "classifier" for head in heads.values()):
        raise UserError(f"method '{cfg.method.name}' (options {cfg.method.options}) does not "
                        f"train classifiers on a task; its student's head is "
                        f"'{heads['student']}'.")
    # A random student without a teacher role reads the tokenizer of teacher.path, as pretraining
    # with a teacher-free method does.
    roles = loop.build_roles(cfg, num_labels=num_labels, teacher_hint=TEACHER_HINT, texts=texts,
                             student_from=cfg.teacher.path or None)
    if roles.tokenizer_dir is None:
        raise UserError(f"student.init={cfg.student.init} has no tokenizer files (vocab.txt or "
                        f"tokenizer.json) to encode the task with; a random student takes them "
                        f"from teacher.path (e.g. teacher.path=package:minilm).")
    return roles


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
    task = tasks.load_task(cfg.task)
    roles = build_roles(cfg, task.num_labels, [(ex.text_a, ex.text_b) for ex in task.train])
    tok, regression = roles.tokenizer_dir, task.num_labels == 1
    train_arrays = tasks.encode(task.train, tok, cfg.seq_len, regression)
    dev = tasks.encode(task.dev, tok, cfg.seq_len, regression)
    check_train_arrays(cfg, roles.method, train_arrays, task.num_labels)
    batches = tasks.TaskBatches(train_arrays, cfg.batch_size, cfg.seed)
    steps = total_steps(cfg, batches)
    header = (f"task {task.name}: {len(task.train)} train / {len(task.dev)} dev examples, "
              f"{batches.steps_per_epoch} steps per epoch, {steps} steps; method "
              f"{cfg.method.name}; dev metric {task.select_metric}")
    summary = train(cfg, roles, task_source(batches), total_steps=steps, seq_len=cfg.seq_len,
                    header=header, label_names=task.label_names,
                    evaluator=lambda setup: DevEvaluator(setup, task, dev, cfg.eval_batch_size))
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


def evaluate_model(model_ref: str, task_cfg: TaskConfig, seq_len: int,
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
    preds = predictions_from_logits(logits, num_labels)
    extra = {"task": task} if task else {}
    return [{**extra, "label": y.item(), "prediction": p.item()}
            for y, p in zip(np.asarray(labels)[:len(preds)], np.asarray(preds))]


def speed_sweep(cfg: FinetuneConfig, request: EvaluateRequest) -> dict:
    """FastBERT's adaptive inference at each exit threshold (`evaluate --speeds`)."""
    from jaxdistill.inference import early_exit

    speeds = early_exit.parse_speeds(request.speeds)
    report_dir = request.report_dir or Path(request.model).expanduser().parent / "speed_sweep"
    report = early_exit.speed_sweep(request.model, cfg.task, cfg.seq_len, cfg.eval_batch_size,
                                    speeds, report_dir, latency_examples=request.latency_examples)
    return {k: report[k] for k in ("model", "task", "report", "plot")} | {"rows": report["rows"]}


def evaluate(cfg: FinetuneConfig, request: EvaluateRequest) -> dict:
    """`jaxdistill evaluate` of a classifier: metrics, size and speed, or the FastBERT sweep."""
    if request.speeds is not None:
        return speed_sweep(cfg, request)
    if request.split == "test":
        raise UserError("--split test: only sequence-to-sequence tasks have a test split here; "
                        "use dev or train.")
    return evaluate_model(request.model, cfg.task, cfg.seq_len, cfg.eval_batch_size,
                          split=request.split, predictions=request.predictions)


register(DataKind("task", FinetuneConfig, run, "one classification task (`task`)",
                  default_recipe="task/teacher.yaml", evaluate=evaluate))
