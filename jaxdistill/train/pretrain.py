"""General distillation: the `jaxdistill pretrain` loop.

setup (mesh, teacher, student, method, data) -> restore-or-init -> jitted steps -> checkpoints
-> export. Side effects (I/O, signals, logging) live here, never inside the step.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxdistill import checkpoint, config as config_lib, sharding
from jaxdistill.config import PretrainConfig
from jaxdistill.errors import UserError
from jaxdistill.methods import build_method
from jaxdistill.models import bert
from jaxdistill.models.loading import load_pretrained
from jaxdistill.train import flops, optim, state as state_lib
from jaxdistill.train.feed import Prefetcher
from jaxdistill.train.metrics_log import MetricsLog
from jaxdistill.train.step import StepContext, compile_step, is_frozen


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


@dataclasses.dataclass
class Setup:
    """What the loop needs, built once from the config."""

    cfg: PretrainConfig
    mesh: jax.sharding.Mesh
    student_cfg: bert.BertConfig
    teacher_cfg: bert.BertConfig
    teacher_params: Any
    tokenizer_dir: Path | None
    method: Any
    ctx: StepContext
    state_sh: Any
    teacher_sh: Any
    batch_sh: dict
    init_student: Any  # host params, or None for random init


def student_config(cfg: PretrainConfig, teacher: bert.BertConfig, head: str) -> bert.BertConfig:
    s = cfg.student
    return bert.BertConfig(
        vocab_size=teacher.vocab_size, hidden_size=s.hidden_size, num_layers=s.num_layers,
        num_heads=s.num_heads, intermediate_size=s.intermediate_size,
        max_position_embeddings=teacher.max_position_embeddings,
        type_vocab_size=0 if s.flavor == "distilbert" else teacher.type_vocab_size or 2,
        hidden_act=s.hidden_act, layer_norm_eps=teacher.layer_norm_eps,
        hidden_dropout=s.hidden_dropout, attention_dropout=s.attention_dropout,
        pad_token_id=teacher.pad_token_id, flavor=s.flavor, head=head, num_labels=s.num_labels,
        dtype=s.dtype, param_dtype=s.param_dtype, scan_layers=s.scan_layers, remat=s.remat)


def teacher_for(cfg: PretrainConfig, tcfg: bert.BertConfig, params: dict, head: str
                 ) -> tuple[bert.BertConfig, dict]:
    """The teacher as the method needs it: the right head, execution dtype, layer layout."""
    if head != "none" and tcfg.head != head:
        raise UserError(
            f"teacher.path={cfg.teacher.path}: method '{cfg.method.name}' needs a teacher with a "
            f"'{head}' head, but this checkpoint has head '{tcfg.head}'. For an MLM head on the "
            f"packaged MiniLM teacher run `jaxdistill pretrain --config configs/teacher_mlm.yaml` "
            f"and point teacher.path at its run_dir.")
    if head == "none" and tcfg.head != "none":
        tcfg = tcfg.replace(head="none")
        params = {k: v for k, v in params.items() if k in ("embeddings", "encoder")}
    if cfg.teacher.scan_layers and not tcfg.scan_layers:
        params = bert.stack_layers(params, tcfg.num_layers)
    tcfg = tcfg.replace(dtype=cfg.teacher.dtype, param_dtype=cfg.teacher.dtype,
                        scan_layers=cfg.teacher.scan_layers, remat="none")
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(cfg.teacher.dtype)), params)
    return tcfg, params


def _initial_student(cfg: PretrainConfig, method, teacher_cfg, teacher_params, student_cfg):
    """Host params to start the student from, or None for a random init (done on device)."""
    init = cfg.student.init if cfg.student.init != "default" else method.default_student_init
    if init == "random":
        return None
    if init == "teacher_layers":
        from jaxdistill.methods.distilbert import student_from_teacher_layers

        params = student_from_teacher_layers(
            jax.tree.map(lambda x: np.asarray(x, np.float32), teacher_params),
            teacher_cfg.replace(scan_layers=False), student_cfg.replace(scan_layers=False))
    else:
        src_cfg, params, _ = load_pretrained(init, head=student_cfg.head,
                                             rng=jax.random.key(cfg.seed + 1))
        mismatch = [f for f in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                                "vocab_size", "flavor")
                    if getattr(src_cfg, f) != getattr(student_cfg, f)]
        if mismatch:
            raise UserError(f"student.init={init}: its {', '.join(mismatch)} differ from the "
                            f"student.* config; make them equal.")
        if src_cfg.scan_layers:
            params = bert.unstack_layers(params, src_cfg.num_layers)
    if student_cfg.scan_layers:
        params = bert.stack_layers(params, student_cfg.num_layers)
    return jax.tree.map(np.asarray, params)


def _method_for(cfg: PretrainConfig, teacher_cfg: bert.BertConfig):
    """(method, student architecture): the student's head is whatever the method needs."""
    student_cfg = student_config(cfg, teacher_cfg, "none")
    method = build_method(cfg.method.name, cfg.method.options, student_cfg, teacher_cfg)
    if method.student_head != student_cfg.head:
        student_cfg = student_cfg.replace(head=method.student_head)
        method = build_method(cfg.method.name, cfg.method.options, student_cfg, teacher_cfg)
    return method, student_cfg


def build(cfg: PretrainConfig) -> Setup:
    mesh = sharding.make_mesh(cfg.mesh)
    raw_cfg, raw_params, tok = load_pretrained(cfg.teacher.path)  # fp32, as stored
    if raw_cfg.scan_layers:
        raw_params = bert.unstack_layers(raw_params, raw_cfg.num_layers)
        raw_cfg = raw_cfg.replace(scan_layers=False)
    method, student_cfg = _method_for(cfg, raw_cfg)
    init_student = _initial_student(cfg, method, raw_cfg, raw_params, student_cfg)
    if method.needs_teacher:
        teacher_cfg, teacher_params = teacher_for(cfg, raw_cfg, raw_params, method.teacher_head)
    else:
        teacher_cfg, teacher_params = raw_cfg.replace(head="none"), {}
    del raw_params

    return assemble(cfg, mesh, method, student_cfg, teacher_cfg, teacher_params, tok,
                    init_student, total_steps=cfg.steps, batch_ndims=dict.fromkeys(BATCH_KEYS, 2))


def assemble(cfg: Any, mesh: jax.sharding.Mesh, method: Any, student_cfg: bert.BertConfig,
             teacher_cfg: bert.BertConfig, teacher_params: Any, tok: Path | None,
             init_student: Any, *, total_steps: int, batch_ndims: dict[str, int]) -> Setup:
    """Optimizer, step context and shardings for models already chosen (pretrain and finetune).

    `cfg` is any recipe with student.freeze, optimizer, learning_rate and seed.
    """
    params_shapes = {"student": jax.eval_shape(lambda: bert.init_params(student_cfg, jax.random.key(0))),
                     "method": jax.eval_shape(lambda: method.init_params(jax.random.key(0)))}
    frozen = tuple(cfg.student.freeze)
    _check_freeze(frozen, params_shapes["student"])
    tx = optim.optimizer(cfg.optimizer, cfg.learning_rate, total_steps,
                         frozen=(lambda path: path[0] == "student" and is_frozen(path[1:], frozen))
                         if frozen else None, params=params_shapes)
    ctx = StepContext(student=bert.BertModel(student_cfg), teacher=bert.BertModel(teacher_cfg),
                      method=method, tx=tx,
                      lr_schedule=optim.schedule(cfg.optimizer, cfg.learning_rate, total_steps),
                      grad_accum=cfg.optimizer.grad_accum, frozen=frozen)

    logical = {"student": bert.logical_axes(student_cfg), "method": method.param_axes()}
    params_sh = state_lib.param_shardings(logical, params_shapes, mesh)
    state_sh = state_lib.state_shardings(tx, params_shapes, params_sh, mesh)
    teacher_sh = sharding.shardings_for(bert.logical_axes(teacher_cfg), teacher_params, mesh) \
        if teacher_params else {}
    teacher_params = jax.device_put(teacher_params, teacher_sh)
    batch_sh = {k: sharding.batch_sharding(mesh, n) for k, n in batch_ndims.items()}
    return Setup(cfg, mesh, student_cfg, teacher_cfg, teacher_params, tok, method, ctx, state_sh,
                 teacher_sh, batch_sh, init_student)


BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "masked_positions", "masked_ids",
              "masked_weights")


def _check_freeze(prefixes: tuple[str, ...], student_shapes: dict) -> None:
    from flax.traverse_util import flatten_dict

    paths = list(flatten_dict(student_shapes))
    for p in prefixes:
        if not any(is_frozen(path, (p,)) for path in paths):
            tops = sorted({"/".join(path[:2]) for path in paths})
            raise UserError(f"student.freeze: '{p}' matches no student parameter; prefixes that "
                            f"exist: {', '.join(tops)}.")


def init_state(setup: Setup) -> state_lib.TrainState:
    cfg, ctx = setup.cfg, setup.ctx
    key_student, key_method = jax.random.split(jax.random.key(cfg.seed))

    def make(student_params):
        if student_params is None:
            student_params = bert.init_params(setup.student_cfg, key_student)
        params = {"student": student_params, "method": setup.method.init_params(key_method)}
        return state_lib.create(params, ctx.tx, cfg.seed)

    host = setup.init_student
    if host is not None:
        host = jax.device_put(host, setup.state_sh.params["student"])
    with setup.mesh:
        return jax.jit(make, out_shardings=setup.state_sh)(host)


def check_batch(cfg: PretrainConfig, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.batch_size % shards:
        raise UserError(f"batch_size={cfg.batch_size} must be divisible by mesh data*fsdp={shards}.")
    if cfg.batch_size % (cfg.optimizer.grad_accum * jax.process_count()):
        raise UserError(f"batch_size={cfg.batch_size} must be divisible by optimizer.grad_accum="
                        f"{cfg.optimizer.grad_accum} times the {jax.process_count()} processes.")


def prepared_data_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.prepared_dir) if cfg.data.prepared_dir else Path(cfg.run_dir) / "data"


def prepare_data(cfg: PretrainConfig, tokenizer_dir: Path | None) -> Path:
    """Tokenize the corpus once (process 0), others wait; re-runs skip finished shards."""
    from jaxdistill.data.prepare import prepare

    out = prepared_data_dir(cfg)
    if tokenizer_dir is None:
        raise UserError(f"teacher.path={cfg.teacher.path} has no tokenizer files (vocab.txt or "
                        f"tokenizer.json); add them to the teacher directory.")
    if jax.process_index() == 0:
        prepare(cfg.data.corpus, out, tokenizer_dir, cfg.seq_len, format=cfg.data.format,
                max_documents=cfg.data.max_documents, seed=cfg.seed,
                text_column=cfg.data.text_column)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("prepare_data")
    return out


def make_loader(cfg: PretrainConfig, data_dir: Path):
    from jaxdistill.data.loader import make_loader as grain_loader

    return grain_loader(data_dir, global_batch_size=cfg.batch_size, seed=cfg.seed,
                        mlm_probability=cfg.data.mlm_probability,
                        mlm_smoothing=cfg.data.mlm_smoothing,
                        num_workers=cfg.data.num_workers)


def _restore_or_init(setup: Setup, mngr, loader) -> tuple[state_lib.TrainState, int]:
    """Resume from the latest complete checkpoint (onto this mesh), else a fresh state."""
    state = init_state(setup)
    start = mngr.latest_step()
    if start is None:
        return state, 0
    state, data_state = checkpoint.restore_state(mngr, start, state)
    if data_state is not None:
        loader.set_state(data_state)
    else:  # written by another process count: global batches are a function of the step
        loader.skip_to(start)
    return state, int(start)


def run(cfg: PretrainConfig) -> dict:
    """Train (or resume) to `cfg.steps`; returns a summary. Exact resume on the same mesh."""
    run_dir = Path(cfg.run_dir)
    setup = build(cfg)
    check_batch(cfg, setup.mesh)
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.dump(cfg, run_dir / "config.yaml")
        checkpoint.copy_tokenizer(setup.tokenizer_dir, run_dir)
    data_dir = prepare_data(cfg, setup.tokenizer_dir)
    loader = make_loader(cfg, data_dir)

    mngr = checkpoint.manager(cfg.checkpoint_dir or run_dir / "checkpoints",
                              keep=cfg.keep_checkpoints, keep_every=cfg.keep_every,
                              async_save=cfg.async_checkpoint)
    state, start = _restore_or_init(setup, mngr, loader)
    meta = checkpoint.model_meta(setup.student_cfg, run_config=config_lib.to_dict(cfg))

    step_fn = compile_step(setup.ctx, setup.state_sh, setup.teacher_sh, setup.batch_sh,
                           sharding.replicated(setup.mesh), sharding.RULES)
    seq = cfg.seq_len
    masked = loader.max_predictions if setup.method.uses_masked_positions() else None
    step_flops = flops.step_flops(
        setup.student_cfg, setup.teacher_cfg if setup.method.needs_teacher else None,
        cfg.batch_size, seq, masked,
        method_flops_per_token=setup.method.forward_flops_per_token(),
        student_backward=not cfg.student.freeze)
    peak, _ = flops.device_peak_flops()
    # A CPU's measured peak is the whole machine's, however many fake devices split it.
    peak_total = peak if jax.devices()[0].platform == "cpu" else peak * jax.device_count()

    log = MetricsLog(run_dir, cfg.steps, start, tensorboard=cfg.tensorboard)
    feed = Prefetcher(loader, setup.batch_sh, cfg.batch_size, depth=cfg.data.prefetch)
    clock = Clock(start, cfg.batch_size * seq, step_flops, peak_total)
    preempted = False

    def log_step(step: int, metrics: Any) -> None:
        # Waiting for this step's metrics costs one dispatch gap per log interval (the next
        # batch is already prefetched) and makes tokens/s a measured, not a queued, rate.
        values = jax.device_get(metrics)
        check_finite(step, values["loss"])
        log.log(step, {**values, **clock.rates(step)})

    def check_finite(step: int, loss: Any) -> None:
        if not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"Loss became {float(loss)} at step {step}; stopping. The last good checkpoint "
                f"(step {mngr.latest_step()}) is kept in {mngr.directory}; lower "
                f"learning_rate or check the data.")

    try:
        with Preemption() as preempt, setup.mesh:
            for step in range(start + 1, cfg.steps + 1):
                batch, data_state = next(feed)
                state, metrics = step_fn(state, setup.teacher_params, batch)
                log.advance()
                if step == start + 1:  # the first step includes compilation: not timed
                    jax.block_until_ready(metrics)
                    clock.restart(step)
                logged = step % cfg.log_every == 0 or step == cfg.steps
                if logged:
                    log_step(step, metrics)
                preempted = preemption_agreed(preempt, mngr, step, cfg.log_every)
                if preempted or step % cfg.save_every == 0 or step == cfg.steps:
                    if not logged:  # never save a diverged state as the last good one
                        check_finite(step, metrics["loss"])
                    checkpoint.save(mngr, step, state, data_state, meta, force=preempted)
                if preempted:
                    log.write(f"SIGTERM: saved step {step}; exiting.")
                    break
    finally:
        close_all(feed, mngr, log)

    summary = {"step": int(jax.device_get(state.step)), "run_dir": str(run_dir),
               "preempted": preempted}
    if cfg.export and not preempted and cfg.steps > 0:
        summary["hf_dir"] = str(export_student(setup, state, run_dir / "hf"))
    return summary


def preemption_agreed(preempt: Preemption, mngr, step: int, log_every: int) -> bool:
    """Hosts agree on SIGTERM at log boundaries (a collective), or at once alone; on TPU pods
    JAX's preemption service also names a step that every host stops at."""
    check = jax.process_count() == 1 or step % log_every == 0
    return (preempt.any_host() if check else False) or (
        jax.process_count() > 1 and mngr.reached_preemption(step))


def close_all(feed: Prefetcher, mngr, log: MetricsLog) -> None:
    """Stop prefetching, let async checkpoint writes finish, flush the logs."""
    feed.close()
    mngr.wait_until_finished()
    mngr.close()
    log.close()


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


def export_student(setup: Setup, state: state_lib.TrainState, out_dir: Path) -> Path:
    """The student (params only, never method params) as a Hugging Face directory."""
    from jaxdistill.convert import write_hf_dir

    params = multihost_utils.process_allgather(state.params["student"], tiled=True) \
        if jax.process_count() > 1 else jax.device_get(state.params["student"])
    if jax.process_index() == 0:
        tok = Path(setup.cfg.run_dir) / "tokenizer"
        write_hf_dir(setup.student_cfg, params, out_dir, tokenizer_dir=tok if tok.is_dir() else None)
    return out_dir

