"""The one training loop: `jaxdistill pretrain` and `jaxdistill finetune` are configurations of it.

build (mesh, models by role, method, optimizer, shardings) -> restore-or-init -> jitted steps
(train/step.py) with metrics, NaN stop, periodic evaluation and best-checkpoint selection,
checkpoints, SIGTERM -> export. What differs between runs plugs in: a `DataSource` (MLM corpus
batches, task batches, ...) and an optional `Evaluator` (dev-set metrics). The loop names no
architecture and no method; side effects (I/O, signals, logging) live here, never in the step.

Restore order, written once: resume from the run's checkpoints if it has a step; else the
student's initial params (a checkpoint, the teacher's layers) or a random init.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils

from jaxdistill import checkpoint, config as config_lib, loading, sharding
from jaxdistill.config import RunConfig
from jaxdistill.convert import replace_file, write_model_dir
from jaxdistill.errors import UserError
from jaxdistill.methods import build_method, method_class, parse_options
from jaxdistill.methods.base import STUDENT, Method
from jaxdistill.models import Model
from jaxdistill.models.base import projected_rows
from jaxdistill.train import flops, optim, run_lock, state as state_lib, summaries
from jaxdistill.train.feed import Prefetcher
from jaxdistill.train.metrics_log import MetricsLog
from jaxdistill.train.step import StepContext, compile_step, is_frozen

BEST_DIR = "best"
VOCAB_DIR = "vocabulary"  # a student's own word vocabulary, built from the training text


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# What plugs in


class DataSource(Protocol):
    """Global training batches. `spec` maps batch keys to their number of dimensions;
    `prefetch` is how many batches a background thread prepares ahead."""

    spec: dict[str, int]
    prefetch: int

    def iterator(self, start: int, saved_state: bytes | None) -> Any:
        """An iterator of this process's rows of batches start+1, start+2, ... with
        `get_state()` (None when the step alone positions the data)."""


class Evaluator(Protocol):
    """Dev-set metrics of the student; `metric` is the one the best checkpoint is chosen by,
    the highest unless `higher_is_better` is False (a loss)."""

    metric: str
    higher_is_better: bool

    def __call__(self, student_params: Any) -> tuple[dict[str, float], float]:
        """(metric values, examples/s)."""


# --------------------------------------------------------------------------------------------
# Models by role


@dataclasses.dataclass
class Roles:
    """The models of a run: the student (with its initial host params or None for a random
    init), the frozen teachers as they run, the method, and the tokenizer directory."""

    models: dict[str, Model]
    method: Method
    teacher_params: dict[str, Any]  # host, already in each teacher's run dtype and layout
    init_student: Any
    tokenizer_dir: Path | None


def build_roles(cfg: RunConfig, *, num_labels: int | None = None, teacher_hint: str = "",
                student_from: str | None = None,
                texts: Sequence[tuple[str, str | None]] | None = None) -> Roles:
    """Load or build every model the method asks for, then the method itself.

    num_labels: the task's label count (classifier heads), None for pretraining.
    student_from: where a random-init student takes its vocabulary and tokenizer when the
      method has no teacher (pretraining MLM: teacher.path).
    texts: the training (text_a, text_b) pairs, from which a random-init student of a kind with
      its own vocabulary (`Model.vocabulary_from`) builds it, into run_dir/vocabulary.
    """
    cls = method_class(cfg.method.name)
    options = parse_options(cls, cfg.method.options)
    heads = cls.roles(options)
    labels = lambda head: num_labels if head == "classifier" else None  # noqa: E731
    teacher_cfgs = loading.teacher_configs(cfg, cls.teacher_roles(options))
    raw = {role: loading.load_teacher(role, tc, heads[role], labels(heads[role]), teacher_hint)
           for role, tc in teacher_cfgs.items()}
    teacher_tok = next((tok for _, _, tok in raw.values() if tok is not None), None)
    student_tok = None
    reference = raw[next(iter(raw))][0] if raw else None

    init = cfg.student.init if cfg.student.init != "default" else cls.default_student_init
    head = heads[STUDENT]
    init_params = None
    if init in ("random", "teacher_layers", "teacher_embeddings"):
        if reference is None and student_from:
            reference, _, student_tok = loading.load_pretrained(student_from)
        vocab_dir = Path(cfg.run_dir) / VOCAB_DIR
        student, own_vocab = loading.student_model(cfg.student, reference, head, labels(head),
                                                   texts=texts, vocab_dir=vocab_dir)
        if own_vocab:
            if raw:
                raise UserError(f"A '{student.kind}' student reads its own word vocabulary, so "
                                f"it cannot share a batch with the teacher's token ids; method "
                                f"'{cls.name}' runs a teacher during training. Write the "
                                f"teacher's logits into the data first (`jaxdistill augment`) "
                                f"and train with a method that reads them and has no teacher "
                                f"role (configs/task/bilstm_augment.yaml, bilstm.yaml).")
            student_tok = vocab_dir
            init_params = student.initial_params(jax.random.key(cfg.seed + 1), vocab_dir)
    else:
        key = jax.random.key(cfg.seed + 1)
        if num_labels is None:
            loaded, init_params, tok = loading.load_pretrained(init, head=head, rng=key)
        else:
            loaded, init_params, tok = loading.load_pretrained(init)
            loaded, init_params = loading.with_head(loaded, init_params, head, key, num_labels)
        student = loading.runtime_of(cfg.student, loaded)
        init_params = student.from_canonical(loaded.canonical(init_params))
        student_tok = tok

    models, teacher_params = {STUDENT: student}, {}
    for role, (model, params, _) in raw.items():
        _check_same_inputs(student, model, role)
        models[role], teacher_params[role] = loading.teacher_runtime(model, params,
                                                                     teacher_cfgs[role])
    method = build_method(cls, options, models)
    if init == "teacher_layers":
        if "teacher" not in raw:
            raise UserError(f"student.init=teacher_layers copies a teacher's layers, but method "
                            f"'{cls.name}' has no teacher.")
        matches = method.student_init_matches()
        init_params = student.copy_layers_from(raw["teacher"][0], raw["teacher"][1],
                                               tuple(m.teacher for m in matches), None)
    if init == "teacher_embeddings":
        init_params = _with_teacher_embeddings(cfg, student, raw.get("teacher"))
    if init_params is not None:
        init_params = jax.tree.map(np.asarray, init_params)
    # Pretraining tokenizes its corpus for the teacher; the task stage encodes for the student it
    # exports (both read the same ids, `_check_same_inputs`).
    first, second = (teacher_tok, student_tok) if num_labels is None else (student_tok, teacher_tok)
    return Roles(models, method, teacher_params, init_params, first or second)


def _check_same_inputs(student: Model, teacher: Model, role: str) -> None:
    s, t = (getattr(m.config, "vocab_size", None) for m in (student, teacher))
    shared = "input_ids" in student.input_spec() and "input_ids" in teacher.input_spec()
    if shared and s is not None and t is not None and s != t:
        raise UserError(f"The {role} has a vocabulary of {t} tokens, the student {s}; both read "
                        f"the same token ids, so they must be equal.")


# --------------------------------------------------------------------------------------------
# Setup: optimizer, step context, shardings


@dataclasses.dataclass
class Setup:
    """What the loop needs, built once from the config."""

    cfg: RunConfig
    mesh: jax.sharding.Mesh
    roles: Roles
    ctx: StepContext
    state_sh: Any
    teacher_sh: Any
    batch_sh: dict
    teacher_params: Any  # on device

    @property
    def student(self) -> Model:
        return self.roles.models[STUDENT]

    @property
    def method(self) -> Method:
        return self.roles.method


def assemble(cfg: RunConfig, mesh: jax.sharding.Mesh, roles: Roles, *, total_steps: int,
             batch_spec: dict[str, int]) -> Setup:
    student, method = roles.models[STUDENT], roles.method
    check_run(cfg, roles.models, total_steps)
    params_shapes = {"student": jax.eval_shape(student.init, jax.random.key(0)),
                     "method": jax.eval_shape(method.init_params, jax.random.key(0))}
    frozen = tuple(cfg.student.freeze)
    _check_freeze(frozen, params_shapes["student"])
    logical = {"student": student.logical_axes(), "method": method.param_axes()}
    tx = optim.optimizer(cfg.optimizer, cfg.learning_rate, total_steps,
                         frozen=(lambda path: path[0] == "student" and is_frozen(path[1:], frozen))
                         if frozen else None, params=params_shapes,
                         stacked=sharding.stacked_layers(logical, params_shapes))
    ctx = StepContext(models=roles.models, method=method, tx=tx,
                      lr_schedule=optim.schedule(cfg.optimizer, cfg.learning_rate, total_steps),
                      grad_accum=cfg.optimizer.grad_accum, frozen=frozen)
    params_sh = state_lib.param_shardings(logical, params_shapes, mesh)
    state_sh = state_lib.state_shardings(tx, params_shapes, params_sh, mesh)
    teacher_sh = {role: sharding.shardings_for(roles.models[role].logical_axes(), p, mesh)
                  for role, p in roles.teacher_params.items()}
    teacher_params = jax.device_put(roles.teacher_params, teacher_sh)
    batch_sh = {k: sharding.batch_sharding(mesh, n) for k, n in batch_spec.items()}
    return Setup(cfg, mesh, roles, ctx, state_sh, teacher_sh, batch_sh, teacher_params)


def check_run(cfg: RunConfig, models: dict[str, Model], total_steps: int) -> None:
    """Keys that are valid alone but not together with the models and the run's length."""
    for role, model in models.items():
        longest = model.max_seq_len()
        if longest is not None and cfg.seq_len > longest:
            raise UserError(f"seq_len={cfg.seq_len} is longer than the {role} reads: its "
                            f"'{model.kind}' model has {longest} positions; set seq_len <= "
                            f"{longest}.")
    warm = cfg.optimizer.warmup_steps
    if warm > total_steps:
        raise UserError(f"optimizer.warmup_steps={warm} is longer than the run's {total_steps} "
                        f"steps; the learning rate would never reach learning_rate. Set it "
                        f"<= {total_steps} (or use optimizer.warmup_ratio).")


def _check_freeze(prefixes: tuple[str, ...], student_shapes: dict) -> None:
    paths = list(flatten_dict(student_shapes))
    for p in prefixes:
        if not any(is_frozen(path, (p,)) for path in paths):
            tops = sorted({"/".join(path[:2]) for path in paths})
            raise UserError(f"student.freeze: '{p}' matches no student parameter; prefixes that "
                            f"exist: {', '.join(tops)}.")


def _with_teacher_embeddings(cfg: RunConfig, student: Model, teacher: tuple | None) -> dict:
    """A random student (the loop's own draw) whose word table is the teacher's, projected onto
    its leading principal components when the student's is narrower (`student.init:
    teacher_embeddings`)."""
    if teacher is None:
        raise UserError(f"student.init=teacher_embeddings takes the teacher's word embeddings, "
                        f"but method '{cfg.method.name}' has no teacher.")
    model, params, _ = teacher
    rows = np.asarray(jax.device_get(model.word_embeddings(params)), np.float32)
    fresh = jax.device_get(jax.jit(student.init)(jax.random.split(jax.random.key(cfg.seed))[0]))
    own = student.word_embeddings(fresh)
    if own.shape[0] != rows.shape[0]:
        raise UserError(f"student.init=teacher_embeddings: the student's vocabulary has "
                        f"{own.shape[0]} rows, the teacher's {rows.shape[0]}; they must share one.")
    table = projected_rows(rows, own.shape[1], float(np.std(own)))
    return student.with_word_embeddings(fresh, table.astype(own.dtype))


def check_batch(batch_size: int, grad_accum: int, mesh, key: str = "batch_size") -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % shards:
        raise UserError(f"{key}={batch_size} must be divisible by mesh data*fsdp={shards}.")
    if batch_size % (grad_accum * jax.process_count()):
        raise UserError(f"{key}={batch_size} must be divisible by optimizer.grad_accum="
                        f"{grad_accum} times the {jax.process_count()} processes.")


def init_state(setup: Setup) -> state_lib.TrainState:
    cfg, ctx = setup.cfg, setup.ctx
    key_student, key_method = jax.random.split(jax.random.key(cfg.seed))

    def make(student_params):
        if student_params is None:
            student_params = setup.student.init(key_student)
        params = {"student": student_params, "method": setup.method.init_params(key_method)}
        return state_lib.create(params, ctx.tx, cfg.seed)

    host = setup.roles.init_student
    if host is not None:
        host = jax.device_put(host, setup.state_sh.params["student"])
    with setup.mesh:
        return jax.jit(make, out_shardings=setup.state_sh)(host)


def step_flops(setup: Setup, seq_len: int, predictions_per_seq: int | None) -> float:
    models = setup.roles.models
    wants_masked = setup.method.wants()[STUDENT].logits_at_masked
    teachers = [flops.teacher_as_run(m, setup.method.teacher_layers_read(role))
                for role, m in models.items() if role != STUDENT]
    return flops.step_flops(
        models[STUDENT], teachers,
        setup.cfg.batch_size, seq_len, predictions_per_seq if wants_masked else None,
        method_flops_per_token=setup.method.forward_flops_per_token(seq_len),
        student_backward=not setup.cfg.student.freeze)


# --------------------------------------------------------------------------------------------
# The loop


class Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. called from a test worker)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def any_host(self) -> bool:
        """Every process must stop at the same step: agree on the flag across hosts."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
        return bool(np.asarray(flags).any())


def preemption_agreed(preempt: Preemption, mngr, step: int, log_every: int) -> bool:
    """Hosts agree on SIGTERM at log boundaries (a collective), or at once alone; on TPU pods
    JAX's preemption service also names a step that every host stops at."""
    check = jax.process_count() == 1 or step % log_every == 0
    return (preempt.any_host() if check else False) or (
        jax.process_count() > 1 and mngr.reached_preemption(step))


class Clock:
    """Throughput between logged steps, measured when each step's metrics are fetched."""

    def __init__(self, step: int, tokens_per_step: int, flops_per_step: float, peak: float):
        self.tokens_per_step, self.flops_per_step, self.peak = tokens_per_step, flops_per_step, peak
        self.first_step, self.origin = step, time.perf_counter()
        self.restart(step)

    def restart(self, step: int) -> None:
        self.step, self.time = step, time.perf_counter()

    def rates(self, step: int) -> dict:
        now = time.perf_counter()
        steps, elapsed = step - self.step, now - self.time
        if steps <= 0:  # only the compiling first step since the restart: time it whole
            steps, elapsed = step - self.first_step, now - self.origin
        self.restart(step)
        sps = steps / elapsed
        out = {"steps_per_sec": sps, "tokens_per_sec": sps * self.tokens_per_step}
        if self.peak and math.isfinite(self.peak):
            out["mfu"] = sps * self.flops_per_step / self.peak
        return out


@dataclasses.dataclass
class Job:
    """One run of the loop: the setup plus what plugs in."""

    setup: Setup
    source: DataSource
    total_steps: int
    seq_len: int  # tokens per example, for tokens/s and MFU
    evaluator: Evaluator | None = None
    eval_every: int = 0
    select: str = "best"  # with an evaluator: keep the best dev checkpoint, or the last one
    predictions_per_seq: int | None = None
    header: str = ""
    command: str = "jaxdistill"  # what the start summary calls the run
    label_names: tuple[str, ...] | None = None  # class i's name, carried into every export
    # A multi-task classifier's spans of its shared output layer ({task_id, name, label_start,
    # num_labels, label_names} each): in the checkpoint metadata, and the export writes one
    # model directory per task.
    tasks: list[dict] | None = None


def run(job: Job) -> dict:
    """Train (or resume) to `job.total_steps`; returns a summary. Exact resume on the same mesh.
    The run directory's lock (taken by `start_run_dir`) is released however the run ends."""
    try:
        return _run(job)
    finally:
        run_lock.release(job.setup.cfg.run_dir)


def _run(job: Job) -> dict:
    setup, cfg = job.setup, job.setup.cfg
    run_dir = Path(cfg.run_dir)
    mngr = checkpoint.manager(cfg.checkpoint_dir or run_dir / "checkpoints",
                              keep=cfg.keep_checkpoints, keep_every=cfg.keep_every,
                              async_save=cfg.async_checkpoint)
    state, start, data_state = _restore(setup, mngr)
    peak, _ = flops.device_peak_flops()
    # A CPU's measured peak is the whole machine's, however many fake devices split it.
    peak_total = peak if jax.devices()[0].platform == "cpu" else peak * jax.device_count()
    clock = Clock(start, cfg.batch_size * job.seq_len,
                  step_flops(setup, job.seq_len, job.predictions_per_seq), peak_total)
    best = _Best(run_dir, start, job, setup) if job.evaluator is not None else None
    began = time.perf_counter()
    log = MetricsLog(run_dir, job.total_steps, start, tensorboard=cfg.tensorboard)
    for line in summaries.start_lines(setup, job.command, job.total_steps, job.seq_len, start):
        log.write(line)
    if job.header:
        log.write(job.header)
    feed = Prefetcher(job.source.iterator(start, data_state), setup.batch_sh, cfg.batch_size,
                      depth=job.source.prefetch)
    try:
        state, preempted, losses, token_rates = _steps(job, state, start, feed, mngr, log,
                                                       clock, best)
    finally:
        feed.close()
        mngr.wait_until_finished()
        mngr.close()
        log.close()
    summary = {"step": int(jax.device_get(state.step)), "run_dir": str(run_dir),
               "preempted": preempted}
    if best is not None:
        summary.update(best.summary())
    if cfg.export.enabled and not preempted and job.total_steps > 0:
        if best is None:
            summary["hf_dir"] = str(export_state(setup, state, run_dir / "hf",
                                                 id2label_of(job.label_names)))
        elif best.step >= 0 and jax.process_index() == 0:
            summary["hf_dir"] = str(export_checkpoint(run_dir / BEST_DIR, run_dir / "hf"))
        if cfg.export.format == "onnx" and "hf_dir" in summary:
            summary["onnx"] = export_onnx(run_dir, best is not None, cfg.export.quantize)
    if jax.process_index() == 0:
        saved = mngr.latest_step()
        last = str(Path(str(mngr.directory)) / str(saved)) if saved is not None else None
        print("\n".join(summaries.end_lines(summary, setup.student.config.head,
                                             setup.student.kind, losses, token_rates,
                                             time.perf_counter() - began, last)), flush=True)
    return summary


def _restore(setup: Setup, mngr) -> tuple[state_lib.TrainState, int, Any]:
    """(state, its step, the data iterator's saved state): the run's newest checkpoint, else
    the initial state at step 0."""
    state = init_state(setup)
    latest = mngr.latest_step()
    # Orbax itself may skip a step whose folders were lost: resume from the newest on disk or
    # stop naming it, never from an older one silently.
    checkpoint.newest_step_dir(Path(str(mngr.directory)))
    if latest is None:
        return state, 0, None
    checkpoint.check_same_model(Path(str(mngr.directory)) / str(latest), setup.student)
    state, data_state = checkpoint.restore_state(mngr, latest, state)
    return state, int(latest), data_state


def _steps(job: Job, state: Any, start: int, feed: Prefetcher, mngr, log: MetricsLog,
           clock: "Clock", best: "_Best | None") -> tuple[Any, bool, list, list]:
    """The steps from `start` to the end (or a SIGTERM): metrics, evaluations, checkpoints.
    Returns (state, preempted, logged losses, logged tokens/s)."""
    setup, cfg, steps = job.setup, job.setup.cfg, job.total_steps
    meta = checkpoint.model_meta(setup.student, run_config=config_lib.to_dict(cfg),
                                 exported_params=list(setup.method.exported_params),
                                 exported_by=exported_by(setup.method),
                                 **label_meta(job.label_names, job.tasks))
    step_fn = compile_step(setup.ctx, setup.state_sh, setup.teacher_sh, setup.batch_sh,
                           sharding.replicated(setup.mesh), sharding.RULES)
    losses, token_rates, preempted, data_state = [], [], False, None

    def check_finite(step: int, loss: Any) -> None:
        if not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"Loss became {float(loss)} at step {step}; stopping. The last good checkpoint "
                f"(step {mngr.latest_step()}) is kept in {mngr.directory}; lower "
                f"learning_rate or check the data.")

    with Preemption() as preempt, setup.mesh:
        for step in range(start + 1, steps + 1):
            batch, data_state = next(feed)
            state, metrics = step_fn(state, setup.teacher_params, batch)
            log.advance()
            if step == start + 1:  # the first step includes compilation: not timed
                jax.block_until_ready(metrics)
                clock.restart(step)
            row = {}
            logged = step % cfg.log_every == 0 or step == steps
            if logged:
                # Waiting for this step's metrics costs one dispatch gap per log interval (the
                # next batch is already prefetched) and makes tokens/s measured.
                row = jax.device_get(metrics)
                check_finite(step, row["loss"])
                row = {**row, **clock.rates(step)}
                losses.append(float(row["loss"]))
                token_rates.append(float(row["tokens_per_sec"]))
            if best is not None and (step % job.eval_every == 0 or step == steps):
                row = {**row, **best.evaluate(state, step)}
                clock.restart(step)  # evaluation time is not training throughput
            if row:
                log.log(step, row)
            preempted = preemption_agreed(preempt, mngr, step, cfg.log_every)
            if preempted or step % cfg.save_every == 0 or step == steps:
                if not logged:  # never save a diverged state as the last good one
                    check_finite(step, metrics["loss"])
                checkpoint.save(mngr, step, state, data_state, meta, force=preempted)
            if preempted:
                log.write(f"SIGTERM: saved step {step}; exiting.")
                break
    return state, preempted, losses, token_rates


class _Best:
    """Dev evaluation and the best checkpoint: the student's params (not the optimizer) in
    run_dir/best, beside the train state, whenever the dev metric improves (or at every
    evaluation with select 'last')."""

    def __init__(self, run_dir: Path, start: int, job: Job, setup: Setup):
        self.dir, self.job, self.setup = run_dir / BEST_DIR, job, setup
        self.metric = job.evaluator.metric
        self.sign = 1.0 if job.evaluator.higher_is_better else -1.0
        self.value, self.step = self._saved(start)

    def _saved(self, start: int) -> tuple[float, int]:
        """The best value saved at or before `start` (resume), else (the worst value, -1)."""
        worst = -self.sign * math.inf
        try:
            meta = checkpoint.read_meta(checkpoint.find_step_dir(self.dir))
        except UserError:
            return worst, -1
        info = meta.get("best", {})
        if info.get("step", math.inf) > start:
            # Written after the checkpoint we resume from: the rerun reproduces it exactly.
            if jax.process_index() == 0:
                shutil.rmtree(self.dir)
            return worst, -1
        return float(info["value"]), int(info["step"])

    def evaluate(self, state: Any, step: int) -> dict:
        values, rate = self.job.evaluator(state.params["student"])
        if self.sign * (values[self.metric] - self.value) > 0 or self.job.select == "last":
            self.value, self.step = values[self.metric], step
            tok = self.setup.roles.tokenizer_dir if jax.process_index() == 0 else None
            checkpoint.save_model(self.dir, self.setup.student, state.params["student"],
                                  tokenizer_dir=tok, step=step, keep=1,
                                  exported=exported_of(self.setup.method, state.params),
                                  exported_by=exported_by(self.setup.method),
                                  best={"metric": self.metric, "value": self.value, "step": step,
                                        "dev": values},
                                  **label_meta(self.job.label_names, self.job.tasks))
        return {**{f"dev_{k}": v for k, v in values.items()},
                f"best_dev_{self.metric}": self.value, "best_step": self.step,
                "eval_examples_per_sec": rate}

    def summary(self) -> dict:
        return {"metric": self.metric, f"best_dev_{self.metric}": self.value,
                "best_step": self.step, "best_checkpoint": str(self.dir)}


def exported_of(method: Method, params: dict) -> dict:
    """The method params that are part of the product (`Method.exported_params`)."""
    return {name: params["method"][name] for name in method.exported_params}


def exported_by(method: Method) -> dict | None:
    """What made the exported params (method name and options), for whoever runs them."""
    if not method.exported_params:
        return None
    return {"method": method.name, "options": config_lib.to_dict(method.options)}


def label_meta(label_names: tuple[str, ...] | None, tasks: list[dict] | None = None) -> dict:
    """Checkpoint metadata for a classifier's label names and a multi-task classifier's spans
    ({} without either)."""
    return {**({"label_names": list(label_names)} if label_names else {}),
            **({"tasks": tasks} if tasks else {})}


def id2label_of(label_names: Sequence[str] | None) -> dict[int, str] | None:
    return {i: str(name) for i, name in enumerate(label_names)} if label_names else None


def export_state(setup: Setup, state: state_lib.TrainState, out_dir: Path,
                 id2label: dict[int, str] | None = None) -> Path:
    """The student, and the method params that are part of the product, as a model directory
    (id2label: the classifier's label names, written into its config)."""
    tree = {"student": state.params["student"], "exported": exported_of(setup.method, state.params)}
    tree = multihost_utils.process_allgather(tree, tiled=True) \
        if jax.process_count() > 1 else jax.device_get(tree)
    if jax.process_index() == 0:
        tok = Path(setup.cfg.run_dir) / "tokenizer"
        write_model_dir(setup.student, tree["student"], out_dir,
                        tokenizer_dir=tok if tok.is_dir() else None, exported=tree["exported"],
                        exported_by=exported_by(setup.method), id2label=id2label)
    return out_dir


def export_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """A checkpoint (run dir, step dir, best/) as a Hugging Face or native model directory."""
    model, params, tok = loading.load_pretrained(str(path))
    step_dir = checkpoint.find_step_dir(path)
    exported = checkpoint.read_exported_params(step_dir)
    meta = checkpoint.read_meta(step_dir)
    if meta.get("tasks"):
        return export_tasks(model, params, meta["tasks"], Path(out_dir), tok)
    return write_model_dir(model, params, out_dir, tokenizer_dir=tok, exported=exported,
                           exported_by=meta.get("exported_by"),
                           id2label=id2label_of(meta.get("label_names")))


def export_onnx(run_dir: Path, from_best: bool, quantize: str) -> dict:
    """run_dir/onnx from the run's last (or best) checkpoint, checked in ONNX Runtime."""
    from jaxdistill.inference import onnx_export

    source = run_dir / BEST_DIR if from_best else run_dir
    report = onnx_export.export(str(source), run_dir / "onnx",
                                "" if quantize == "none" else quantize,
                                write_hf=lambda d: export_checkpoint(source, d))
    return {k: report[k] for k in ("onnx_dir", "files", "max_abs_logit_diff") if k in report}


def export_tasks(model: Model, params: dict, tasks: list[dict], out_dir: Path,
                 tokenizer_dir: Path | None) -> Path:
    """A multi-task classifier as one model directory per task (out_dir/<task id>/: the shared
    encoder with that task's head) and out_dir/tasks.json naming them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = []
    for t in tasks:
        start = int(t["label_start"])
        head, head_params = model.label_slice(params, start, start + int(t["num_labels"]))
        write_model_dir(head, head_params, out_dir / t["task_id"], tokenizer_dir=tokenizer_dir,
                        id2label=id2label_of(t.get("label_names")))
        listing.append({**t, "dir": t["task_id"]})
    replace_file(out_dir / "tasks.json", lambda f: f.write_text(json.dumps(listing, indent=1)))
    return out_dir


def start_run_dir(setup: Setup) -> None:
    """Take the run directory's lock (one run per run_dir), then process 0 writes the resolved
    config and the tokenizer beside the checkpoints."""
    run_lock.acquire(setup.cfg.run_dir)
    if jax.process_index() == 0:
        run_dir = Path(setup.cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.dump(setup.cfg, run_dir / "config.yaml")
        checkpoint.copy_tokenizer(setup.roles.tokenizer_dir, run_dir)
