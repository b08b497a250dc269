"""The task stage: `jaxdistill finetune` (plain fine-tuning or task distillation) and evaluation.

setup (task data, student from a checkpoint or HF dir with a new classifier, optional fine-tuned
teacher, method) -> restore-or-init -> jitted steps (the pretrain step, unchanged) with dev
evaluation every `eval_every` steps -> best-dev checkpoint in run_dir/best -> export of the best.

Batches are a pure function of the step (data/tasks.py TaskBatches), so resume needs no data
state: the same command on the same run_dir continues exactly.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdistill import checkpoint, config as config_lib, sharding
from jaxdistill.config import FinetuneConfig
from jaxdistill.data import tasks
from jaxdistill.errors import UserError
from jaxdistill.methods import build_method
from jaxdistill.methods.base import REGISTRY
from jaxdistill.models import bert
from jaxdistill.models.loading import load_pretrained, with_head
from jaxdistill.train import flops, pretrain, task_metrics
from jaxdistill.train.feed import Prefetcher, to_global
from jaxdistill.train.metrics_log import MetricsLog
from jaxdistill.train.step import compile_step

TASK_KEYS = {"input_ids": 2, "attention_mask": 2, "token_type_ids": 2, "labels": 1}
BEST_DIR = "best"


# --------------------------------------------------------------------------------------------
# Models


def _unstacked(cfg: bert.BertConfig, params: dict) -> tuple[bert.BertConfig, dict]:
    if cfg.scan_layers:
        return cfg.replace(scan_layers=False), bert.unstack_layers(params, cfg.num_layers)
    return cfg, params


def _with_classifier(cfg: bert.BertConfig, params: dict, num_labels: int, rng: jax.Array
                     ) -> tuple[bert.BertConfig, dict]:
    """Keep a classifier of the right size (e.g. TinyBERT's intermediate stage), else a new one."""
    head = params.get("classifier")
    if head is not None and cfg.num_labels != num_labels:
        params = {k: v for k, v in params.items() if k not in ("classifier", "pre_classifier")}
    return with_head(cfg, params, "classifier", rng, num_labels=num_labels)


def load_student(cfg: FinetuneConfig, num_labels: int) -> tuple[bert.BertConfig, dict, Path | None]:
    """The student's architecture and params from `student.init`, with a task classifier."""
    if cfg.student.init in ("", "default", "random"):
        raise UserError(f"student.init={cfg.student.init!r}: the task stage starts from a trained "
                        f"encoder; name a general-distillation run dir (e.g. runs/demo), an Orbax "
                        f"step dir, a Hugging Face directory or package:minilm.")
    src_cfg, params, tok = load_pretrained(cfg.student.init)
    src_cfg, params = _unstacked(src_cfg, params)
    src_cfg, params = _with_classifier(src_cfg, params, num_labels, jax.random.key(cfg.seed + 1))
    s = cfg.student
    student_cfg = src_cfg.replace(
        hidden_dropout=s.hidden_dropout, attention_dropout=s.attention_dropout, dtype=s.dtype,
        param_dtype=s.param_dtype, scan_layers=s.scan_layers, remat=s.remat)
    if s.scan_layers:
        params = bert.stack_layers(params, student_cfg.num_layers)
    return student_cfg, jax.tree.map(np.asarray, params), tok


def load_teacher(cfg: FinetuneConfig, num_labels: int, head: str
                 ) -> tuple[bert.BertConfig, dict]:
    """The fine-tuned task teacher (frozen), checked against the task's labels."""
    if not cfg.teacher.path:
        raise UserError(f"method '{cfg.method.name}' distils from a fine-tuned teacher: set "
                        f"teacher.path to a `jaxdistill finetune` run (e.g. "
                        f"runs/task_teacher/best) or a Hugging Face sequence-classification dir.")
    tcfg, params, _ = load_pretrained(cfg.teacher.path)
    tcfg, params = _unstacked(tcfg, params)
    if head == "classifier" and (tcfg.head != "classifier" or tcfg.num_labels != num_labels):
        raise UserError(
            f"teacher.path={cfg.teacher.path}: a task teacher must be a classifier with "
            f"{num_labels} labels for task '{cfg.task.name}', but it has head '{tcfg.head}'"
            + (f" with {tcfg.num_labels} labels" if tcfg.head == "classifier" else "")
            + ". Fine-tune one first: `jaxdistill finetune --config configs/task/teacher.yaml`.")
    return pretrain.teacher_for(cfg, tcfg, params, head)


def build(cfg: FinetuneConfig, task: tasks.TaskData, total_steps: int,
          student: tuple[bert.BertConfig, dict, Path | None] | None = None) -> pretrain.Setup:
    """student: what `load_student` returned, if the caller already loaded it."""
    mesh = sharding.make_mesh(cfg.mesh)
    student_cfg, init_student, tok = student or load_student(cfg, task.num_labels)
    cls = REGISTRY.get(cfg.method.name)
    if cls is not None and cls.needs_teacher:
        # Heads are per instance (TinyBERT's stages), so load a classifier teacher and check it.
        teacher_cfg, teacher_params = load_teacher(cfg, task.num_labels, "classifier")
        if teacher_cfg.vocab_size != student_cfg.vocab_size:
            raise UserError(f"teacher.path={cfg.teacher.path} has a vocabulary of "
                            f"{teacher_cfg.vocab_size} tokens, the student {student_cfg.vocab_size}; "
                            f"both must read the same token ids.")
    else:
        teacher_cfg, teacher_params = student_cfg.replace(head="none"), {}
    method = build_method(cfg.method.name, cfg.method.options, student_cfg, teacher_cfg)
    if method.student_head != "classifier" or (method.needs_teacher
                                               and method.teacher_head != "classifier"):
        raise UserError(f"method '{cfg.method.name}' (options {cfg.method.options}) is not a task "
                        f"method; use finetune, kd, pkd, or tinybert with stage task_intermediate "
                        f"or task_prediction.")
    return pretrain.assemble(cfg, mesh, method, student_cfg, teacher_cfg, teacher_params, tok,
                             init_student, total_steps=total_steps, batch_ndims=TASK_KEYS)


# --------------------------------------------------------------------------------------------
# Data


class _StepBatches:
    """This process's rows of global batch `step`, for the prefetcher (no iterator state)."""

    def __init__(self, batches: tasks.TaskBatches, start: int):
        self.batches, self.step = batches, start

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batches.batch(self.step)
        self.step += 1
        return process_rows(batch)

    def get_state(self) -> None:
        return None  # the step alone positions the data


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n, p, i = len(next(iter(batch.values()))), jax.process_count(), jax.process_index()
    return {k: v[i * n // p:(i + 1) * n // p] for k, v in batch.items()}


def total_steps(cfg: FinetuneConfig, batches: tasks.TaskBatches) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * batches.steps_per_epoch))


# --------------------------------------------------------------------------------------------
# Evaluation


def make_predict(model: bert.BertModel, params_sh: Any, mesh: jax.sharding.Mesh):
    """Jitted logits of the student on one global eval batch (replicated out, for the host)."""
    batch_sh = {k: sharding.batch_sharding(mesh, 2) for k in ("input_ids", "attention_mask",
                                                               "token_type_ids")}

    def predict(params, batch):
        with nn.logical_axis_rules(sharding.RULES):
            out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"], deterministic=True)
        return out.logits.astype(np.float32)

    return jax.jit(predict, in_shardings=(params_sh, batch_sh),
                   out_shardings=sharding.replicated(mesh)), batch_sh


def evaluate_arrays(predict, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
                    batch_size: int, num_labels: int, metric_names: tuple[str, ...]
                    ) -> tuple[dict[str, float], float]:
    """(metrics over the whole set, examples/s of the forward passes)."""
    logits, seconds = [], 0.0
    for batch in tasks.eval_batches(arrays, batch_size):
        weights = batch.pop("weights")
        inputs = to_global(process_rows({k: batch[k] for k in batch_sh}), batch_sh, batch_size)
        t0 = time.perf_counter()
        out = np.asarray(jax.device_get(predict(params, inputs)))
        seconds += time.perf_counter() - t0
        logits.append(out[weights > 0])
    logits = np.concatenate(logits)
    preds = task_metrics.predictions_from_logits(logits, num_labels)
    values = task_metrics.compute(metric_names, preds, arrays["labels"][:len(preds)])
    return values, len(preds) / max(seconds, 1e-9)


def _check_eval_batch(cfg: FinetuneConfig, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.eval_batch_size % shards or cfg.eval_batch_size % jax.process_count():
        raise UserError(f"eval_batch_size={cfg.eval_batch_size} must be divisible by mesh "
                        f"data*fsdp={shards} and by the {jax.process_count()} processes.")


# --------------------------------------------------------------------------------------------
# The loop


def _best_so_far(run_dir: Path, start: int) -> tuple[float, int]:
    """The best dev value saved at or before `start` (resume), else (-inf, -1)."""
    best = run_dir / BEST_DIR
    try:
        meta = checkpoint.read_meta(checkpoint.find_step_dir(best))
    except UserError:
        return -math.inf, -1
    info = meta.get("best", {})
    if info.get("step", math.inf) > start:
        # Written after the checkpoint we resume from: the rerun reproduces it exactly.
        if jax.process_index() == 0:
            shutil.rmtree(best)
        return -math.inf, -1
    return float(info["value"]), int(info["step"])


def _save_best(setup: pretrain.Setup, state, step: int, metric: str, value: float,
               dev: dict) -> None:
    """The student's params (not the optimizer) as run_dir/best: the task stage's output."""
    run_dir = Path(setup.cfg.run_dir)
    checkpoint.save_model(run_dir / BEST_DIR, setup.student_cfg, state.params["student"],
                          tokenizer_dir=setup.tokenizer_dir if jax.process_index() == 0 else None,
                          step=step, keep=1,
                          best={"metric": metric, "value": value, "step": step, "dev": dev})


def run(cfg: FinetuneConfig) -> dict:
    """Fine-tune or distil to the end; returns a summary with the best dev metric."""
    run_dir = Path(cfg.run_dir)
    if cfg.select not in ("best", "last"):
        raise UserError(f"select={cfg.select!r}: expected 'best' (the best dev {cfg.task.metric or 'metric'}"
                        f" checkpoint) or 'last' (the final one).")
    if cfg.eval_every < 1 or cfg.log_every < 1 or cfg.save_every < 1:
        raise UserError("eval_every, log_every and save_every must be >= 1.")
    task = tasks.load_task(cfg.task)
    student = load_student(cfg, task.num_labels)
    tok = student[2]
    if tok is None:
        raise UserError(f"student.init={cfg.student.init} has no tokenizer files (vocab.txt or "
                        f"tokenizer.json) to encode the task with.")
    regression = task.num_labels == 1
    train = tasks.encode(task.train, tok, cfg.seq_len, regression)
    dev = tasks.encode(task.dev, tok, cfg.seq_len, regression)
    batches = tasks.TaskBatches(train, cfg.batch_size, cfg.seed)
    steps = total_steps(cfg, batches)
    setup = build(cfg, task, steps, student)
    pretrain.check_batch(cfg, setup.mesh)
    _check_eval_batch(cfg, setup.mesh)
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.dump(cfg, run_dir / "config.yaml")
        checkpoint.copy_tokenizer(setup.tokenizer_dir, run_dir)

    mngr = checkpoint.manager(cfg.checkpoint_dir or run_dir / "checkpoints",
                              keep=cfg.keep_checkpoints, keep_every=cfg.keep_every,
                              async_save=cfg.async_checkpoint)
    state = pretrain.init_state(setup)
    start = mngr.latest_step() or 0
    if start:
        state, _ = checkpoint.restore_state(mngr, start, state)
    meta = checkpoint.model_meta(setup.student_cfg, run_config=config_lib.to_dict(cfg))
    step_fn = compile_step(setup.ctx, setup.state_sh, setup.teacher_sh, setup.batch_sh,
                           sharding.replicated(setup.mesh), sharding.RULES)
    predict, eval_sh = make_predict(setup.ctx.student, setup.state_sh.params["student"],
                                    setup.mesh)
    metric = task.select_metric
    best, best_step = _best_so_far(run_dir, start)

    step_flops = flops.step_flops(
        setup.student_cfg, setup.teacher_cfg if setup.method.needs_teacher else None,
        cfg.batch_size, cfg.seq_len, None,
        method_flops_per_token=setup.method.forward_flops_per_token(),
        student_backward=not cfg.student.freeze)
    peak, _ = flops.device_peak_flops()
    peak_total = peak if jax.devices()[0].platform == "cpu" else peak * jax.device_count()
    log = MetricsLog(run_dir, steps, start, tensorboard=cfg.tensorboard)
    log.write(f"task {task.name}: {len(task.train)} train / {len(task.dev)} dev examples, "
              f"{batches.steps_per_epoch} steps per epoch, {steps} steps; method "
              f"{cfg.method.name}; dev metric {metric}")
    feed = Prefetcher(_StepBatches(batches, start), setup.batch_sh, cfg.batch_size, depth=2)
    clock = pretrain.Clock(start, cfg.batch_size * cfg.seq_len, step_flops, peak_total)
    preempted, last_dev = False, {}

    def evaluate(step: int) -> dict:
        nonlocal best, best_step
        values, rate = evaluate_arrays(predict, eval_sh, state.params["student"], dev,
                                       cfg.eval_batch_size, task.num_labels, task.metrics)
        row = {f"dev_{k}": v for k, v in values.items()}
        if values[metric] > best or cfg.select == "last":
            best, best_step = values[metric], step
            _save_best(setup, state, step, metric, best, values)
        return {**row, f"best_dev_{metric}": best, "best_step": best_step,
                "eval_examples_per_sec": rate}

    try:
        with pretrain.Preemption() as preempt, setup.mesh:
            for step in range(start + 1, steps + 1):
                batch, _ = next(feed)
                state, metrics = step_fn(state, setup.teacher_params, batch)
                log.advance()
                if step == start + 1:
                    jax.block_until_ready(metrics)
                    clock.restart(step)
                row = {}
                if step % cfg.log_every == 0 or step == steps:
                    row = jax.device_get(metrics)
                    if not math.isfinite(float(row["loss"])):
                        raise pretrain.TrainingDiverged(
                            f"Loss became {float(row['loss'])} at step {step}; stopping. The "
                            f"last good checkpoint (step {mngr.latest_step()}) is kept in "
                            f"{mngr.directory}; lower learning_rate or check the data.")
                    row = {**row, **clock.rates(step)}
                if step % cfg.eval_every == 0 or step == steps:
                    last_dev = evaluate(step)
                    row = {**row, **last_dev}
                    clock.restart(step)  # evaluation time is not training throughput
                if row:
                    log.log(step, row)
                preempted = pretrain.preemption_agreed(preempt, mngr, step, cfg.log_every)
                if preempted or step % cfg.save_every == 0 or step == steps:
                    checkpoint.save(mngr, step, state, None, meta, force=preempted)
                if preempted:
                    log.write(f"SIGTERM: saved step {step}; exiting.")
                    break
    finally:
        pretrain.close_all(feed, mngr, log)

    summary = {"step": int(jax.device_get(state.step)), "run_dir": str(run_dir),
               "preempted": preempted, "task": task.name, "metric": metric,
               f"best_dev_{metric}": best, "best_step": best_step,
               "best_checkpoint": str(run_dir / BEST_DIR)}
    if cfg.export and not preempted and best_step >= 0 and jax.process_index() == 0:
        summary["hf_dir"] = str(export_best(run_dir))
    return summary


def export_best(run_dir: Path) -> Path:
    from jaxdistill.convert import write_hf_dir

    cfg, params, tok, _ = checkpoint.load_model(run_dir / BEST_DIR)
    return write_hf_dir(cfg, params, run_dir / "hf", tokenizer_dir=tok)


# --------------------------------------------------------------------------------------------
# `jaxdistill evaluate`


def evaluate_model(model: str, task_cfg: config_lib.TaskConfig, seq_len: int, batch_size: int,
                   split: str = "dev") -> dict:
    """A checkpoint or HF classifier on a task's dev set: metrics, size, FLOPs, examples/s."""
    mcfg, params, tok = load_pretrained(model)
    mcfg, params = _unstacked(mcfg, params)
    task = tasks.load_task(task_cfg)
    if mcfg.head != "classifier" or mcfg.num_labels != task.num_labels:
        raise UserError(f"{model}: expected a classifier with {task.num_labels} labels for task "
                        f"'{task.name}', found head '{mcfg.head}' with {mcfg.num_labels} labels.")
    if tok is None:
        raise UserError(f"{model} has no tokenizer files (vocab.txt or tokenizer.json).")
    examples = task.dev if split == "dev" else task.train
    arrays = tasks.encode(examples, tok, seq_len, task.num_labels == 1)
    mesh = sharding.make_mesh(config_lib.MeshConfig())
    mcfg = mcfg.replace(hidden_dropout=0.0, attention_dropout=0.0)
    params_sh = sharding.shardings_for(bert.logical_axes(mcfg), params, mesh)
    params = jax.device_put(params, params_sh)
    predict, batch_sh = make_predict(bert.BertModel(mcfg), params_sh, mesh)
    with mesh:
        evaluate_arrays(predict, batch_sh, params, {k: v[:batch_size] for k, v in arrays.items()},
                        batch_size, task.num_labels, task.metrics)  # compile outside the timing
        values, rate = evaluate_arrays(predict, batch_sh, params, arrays, batch_size,
                                       task.num_labels, task.metrics)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"model": str(model), "task": task.name, "split": split, "examples": len(examples),
            **{f"{split}_{k}": v for k, v in values.items()}, "metric": task.select_metric,
            "parameters": n_params,
            "flops_per_example": flops.forward_flops_per_token(mcfg, seq_len) * seq_len,
            "examples_per_sec": rate, "seq_len": seq_len, "batch_size": batch_size,
            "device": jax.devices()[0].device_kind}
