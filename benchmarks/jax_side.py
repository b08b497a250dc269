"""The jaxdistill side of the benchmark: the real `kinds.mlm_corpus.build` setup and
`compile_step`.

Import only after XLA_FLAGS is final (this module imports JAX).
"""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from benchmarks.common import BenchConfig, cpu_threads, peak_rss_bytes, summarize, time_steps
from jaxdistill import config as config_lib, sharding
from jaxdistill.train.kinds.mlm_corpus import PretrainConfig
from jaxdistill.data import masking
from jaxdistill.models import bert
from jaxdistill.train import flops, loop, step as step_lib
from jaxdistill.train.kinds import mlm_corpus as pretrain

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# An HLO instruction: `%name = type[...] all-reduce(...)` or its async `-start` half (the
# `-done` half is the same collective, so it is not counted again).
_COLLECTIVE_RE = re.compile(r"=\s*[^=]*?\b(" + "|".join(COLLECTIVES) + r")(-start)?\(")


@dataclasses.dataclass
class JaxRun:
    """What the torch side needs from the JAX side (same weights, same batch, same loss)."""

    report: dict
    teacher_dir: Path
    student_dir: Path
    fit_dense: dict | None  # host numpy {'kernel' [H_s, H_t], 'bias' [H_t]}
    batch: dict[str, np.ndarray]
    setup: Any


# ------------------------------------------------------------------------------------ setup


def write_random_teacher(bc: BenchConfig, out_dir: Path) -> Path:
    """A random BERT of the requested size as a Hugging Face directory (what build() reads)."""
    from jaxdistill.convert import write_hf_dir

    cfg = bert.BertConfig(vocab_size=bc.vocab, hidden_size=bc.teacher_hidden,
                          num_layers=bc.teacher_layers, num_heads=bc.teacher_heads,
                          intermediate_size=bc.teacher_ffn,
                          max_position_embeddings=max(512, bc.seq),
                          head="mlm" if bc.method == "distilbert" else "none")
    params = jax.jit(lambda key: bert.init_params(cfg, key))(jax.random.key(bc.seed + 7))
    return write_hf_dir(cfg, jax.device_get(params), out_dir)


def pretrain_config(bc: BenchConfig, teacher_path: str, run_dir: Path) -> PretrainConfig:
    """The PretrainConfig of this measurement: demo-style recipe with the benchmark's shapes.

    Student dropouts are 0 (so both frameworks compute the same loss); the learning rate is
    constant (no warmup: step 1 already moves the weights, as every step of a long run does).
    """
    distil = bc.method == "distilbert"
    data = {
        "run_dir": str(run_dir), "seed": bc.seed, "steps": 1000, "batch_size": bc.batch,
        "seq_len": bc.seq, "learning_rate": bc.learning_rate,
        "mesh": dict(zip(("data", "fsdp", "tensor"), bc.mesh)),
        "teacher": {"path": teacher_path, "dtype": bc.teacher_dtype},
        "student": {"flavor": "distilbert" if distil else "bert",
                    "hidden_size": bc.student_hidden, "num_layers": bc.student_layers,
                    "num_heads": bc.student_heads, "intermediate_size": bc.student_ffn,
                    "hidden_dropout": 0.0, "attention_dropout": 0.0, "dtype": bc.dtype,
                    "init": "default" if distil else "random"},
        "method": {"name": bc.method},
        "optimizer": {"schedule": "constant", "warmup_steps": 0},
    }
    return config_lib.from_dict(PretrainConfig, data)


def _check_batch(bc: BenchConfig, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if bc.batch % shards:
        raise SystemExit(f"--batch {bc.batch} must be divisible by mesh data*fsdp = {shards}.")


# ---------------------------------------------------------------------------- accounting


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf (global size for sharded arrays)."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective instructions in compiled HLO text, by kind, plus 'total' (static count)."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for match in _COLLECTIVE_RE.finditer(hlo_text):
        counts[match.group(1)] += 1
    counts["total"] = sum(counts.values())
    return counts


def model_flops(setup, bc: BenchConfig) -> tuple[float, str]:
    """Model FLOPs per step from jaxdistill/train/flops.py (as the pretrain loop counts them),
    with the formula spelled out."""
    masked = masking.max_predictions(bc.seq, 0.15) \
        if setup.method.wants()["student"].logits_at_masked else None
    teacher_model = setup.roles.models.get("teacher")
    extra = setup.method.forward_flops_per_token(bc.seq)
    total = loop.step_flops(setup, bc.seq, masked)
    s, t = setup.student.config, setup.roles.models.get("teacher", setup.student).config
    n_s, n_t = bert.matmul_params(s, masked, bc.seq), bert.matmul_params(t, masked, bc.seq)
    tokens = bc.batch * bc.seq
    teacher_part = teacher_model.forward_flops_per_token(bc.seq, masked) * tokens \
        if teacher_model else 0.0
    student_part = (setup.student.forward_flops_per_token(bc.seq, masked) + extra) * tokens
    formula = (
        "teacher fwd (2*N_t + 4*L_t*T*H_t)*tok + 3 * student fwd (2*N_s + 4*L_s*T*H_s + "
        "method)*tok\n"
        f"  N_t={n_t:.4g} matmul weights, L_t={t.num_layers}, H_t={t.hidden_size}; "
        f"N_s={n_s:.4g}, L_s={s.num_layers}, H_s={s.hidden_size}, method (fit_dense)="
        f"{extra:.4g}/token; T={bc.seq}, tok={tokens}\n"
        f"  = {teacher_part:.4g} + 3*{student_part:.4g} = {total:.4g} FLOPs/step")
    return total, formula


def peak_flops() -> tuple[float | None, str]:
    """Peak FLOP/s of the whole machine the step runs on, and where the figure comes from.

    CPU: one measured fp32 matmul peak for the host (fake devices share the same cores);
    accelerators: the spec-sheet peak per chip times the device count.
    """
    peak, source = flops.device_peak_flops()
    if not np.isfinite(peak):
        return None, source
    if jax.devices()[0].platform == "cpu":
        return peak, source
    return peak * jax.device_count(), f"{source} x {jax.device_count()} devices"


def memory_report(state, setup, batch, lowered, compiled) -> dict:
    """Bytes of what the step holds: the state (student only), the teacher, and XLA's plan.

    The gradient pytree is traced from the step's own `_grads`: it has exactly the structure
    of the trainable params (student + method), so the teacher gets no gradient buffers.
    """
    params = state.params
    with setup.mesh, nn.logical_axis_rules(sharding.RULES):
        grads = jax.eval_shape(
            lambda s, t, b: step_lib._grads(s, setup.ctx, t, b, jax.random.key(0))[0],
            state, setup.teacher_params, batch)
    out = {
        "student_params_bytes": tree_bytes(params["student"]),
        "method_params_bytes": tree_bytes(params["method"]),
        "opt_state_bytes": tree_bytes(state.opt_state),
        "teacher_params_bytes": tree_bytes(setup.teacher_params),
        "gradient_bytes": tree_bytes(grads),
        "gradient_tree_equals_trainable_params":
            jax.tree.structure(grads) == jax.tree.structure(params),
        "state_leaves": len(jax.tree.leaves(state)),
    }
    info = lowered.args_info  # ((state, teacher_params, batch), kwargs)
    args = info[0] if len(info) == 2 and isinstance(info[1], dict) else info
    out["state_args_donated"] = all(a.donated for a in jax.tree.leaves(args[0]))
    out["teacher_args_donated"] = any(a.donated for a in jax.tree.leaves(args[1]))
    out["compiled"] = compiled_memory(compiled)
    return out


def compiled_memory(compiled) -> dict | None:
    """XLA's memory analysis of the step (per device program), or None where unavailable."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if ma is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    out = {f: int(getattr(ma, f, 0) or 0) for f in fields}
    # Donated state buffers are both argument and output (alias): count them once.
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                          - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def device_peak_memory() -> tuple[int | None, str]:
    """Largest per-device peak allocation reported by the runtime (accelerators only)."""
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return (max(peaks), "device.memory_stats() peak_bytes_in_use") if peaks else (None, "")


# ---------------------------------------------------------------------------------- run


def run(bc: BenchConfig, work_dir: Path, breakdown: bool = False, export: bool = True,
        profile_dir: Path | None = None) -> JaxRun:
    """Build, compile, warm up and time the jaxdistill step; returns the report and the
    artifacts the torch side needs. profile_dir: also trace 3 steps there (jax.profiler) and
    write the optimized HLO of the step as step.hlo.txt."""
    if bc.malloc_tuning:
        from jaxdistill.hostmem import tune_malloc

        tune_malloc()
    teacher_path = bc.teacher
    if bc.teacher == "random":
        teacher_path = str(write_random_teacher(bc, work_dir / "teacher"))
    cfg = pretrain_config(bc, teacher_path, work_dir / "run")
    t0 = time.perf_counter()
    setup = pretrain.build(cfg)
    _check_batch(bc, setup.mesh)
    state = loop.init_state(setup)
    build_s = time.perf_counter() - t0

    student_host = jax.device_get(state.params["student"])
    method_host = jax.device_get(state.params["method"])
    batch_np = _batch_for(bc, setup)
    batch = {k: jax.device_put(v, setup.batch_sh[k]) for k, v in batch_np.items()}
    teacher = setup.teacher_params

    step_fn = step_lib.compile_step(setup.ctx, setup.state_sh, setup.teacher_sh, setup.batch_sh,
                                    sharding.replicated(setup.mesh), sharding.RULES)
    with setup.mesh:
        t0 = time.perf_counter()
        lowered = step_fn.lower(state, teacher, batch)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        memory = memory_report(state, setup, batch, lowered, compiled)
        state, metrics = compiled(state, teacher, batch)  # step 1: the loss at the initial weights
        first = {k: float(v) for k, v in jax.device_get(metrics).items()}
        holder = {"state": state}

        def run_steps(n: int) -> None:
            s, m = holder["state"], None
            for _ in range(n):
                s, m = compiled(s, teacher, batch)
            jax.block_until_ready((s, m))
            holder["state"] = s

        if bc.warmup > 1:
            run_steps(bc.warmup - 1)
        times = time_steps(run_steps, bc.steps, bc.repeats)
        if profile_dir is not None:  # after the timing, so tracing never skews the figures
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            Path(profile_dir, "step.hlo.txt").write_text(compiled.as_text() or "")
            jax.profiler.start_trace(str(profile_dir))
            run_steps(3)
            jax.profiler.stop_trace()
        holder["state"], metrics = compiled(holder["state"], teacher, batch)
        final_loss = float(jax.device_get(metrics["loss"]))

    step_flops, formula = model_flops(setup, bc)
    peak, peak_source = peak_flops()
    tokens = bc.batch * bc.seq
    hlo = compiled.as_text() or ""
    peak_mem, peak_mem_source = device_peak_memory()
    if peak_mem is None and memory["compiled"]:
        peak_mem, peak_mem_source = (memory["compiled"]["total_bytes"],
                                     "XLA memory_analysis: argument + output - alias + temp")
    report = {
        **summarize(times, tokens, step_flops, peak),
        "model_flops_per_step": step_flops, "flops_formula": formula,
        "xla_cost_analysis_flops": _xla_flops(compiled),
        "peak_flops": peak, "peak_flops_source": peak_source,
        "peak_memory_bytes": peak_mem, "peak_memory_source": peak_mem_source,
        "process_peak_rss_bytes": peak_rss_bytes(),
        "memory": memory, "collectives": count_collectives(hlo),
        "loss_jax": first["loss"], "loss_terms_jax": first, "loss_after_steps_jax": final_loss,
        "compile_s": compile_s, "build_s": build_s,
        "device": _device_name(), "device_count": jax.device_count(),
        "mesh_shape": dict(setup.mesh.shape), "threads": cpu_threads(),
        "jax_version": jax.__version__, "student_cfg": dataclasses.asdict(setup.student.config),
        "teacher_cfg": dataclasses.asdict(setup.roles.models["teacher"].config),
    }
    if breakdown:
        report["breakdown"] = _breakdown(setup, holder["state"], teacher, batch, bc)
    student_dir = work_dir / "student"
    if export:
        from jaxdistill.convert import write_hf_dir

        write_hf_dir(setup.student.config, student_host, student_dir)
    return JaxRun(report=report, teacher_dir=_teacher_dir(teacher_path), student_dir=student_dir,
                  fit_dense=method_host.get("fit_dense"), batch=batch_np, setup=setup)


def _batch_for(bc: BenchConfig, setup) -> dict[str, np.ndarray]:
    from benchmarks.common import synthetic_batch

    teacher_cfg = setup.roles.models["teacher"].config
    batch = synthetic_batch(bc.batch, bc.seq, teacher_cfg.vocab_size, bc.seed)
    if setup.student.config.type_vocab_size == 0 or teacher_cfg.type_vocab_size == 0:
        batch["token_type_ids"][:] = 0  # DistilBERT-style models have no token types
    return batch


def _teacher_dir(path: str) -> Path:
    from jaxdistill import assets

    return assets.resolve_model_path(path)


def _xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _device_name() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({_cpu_model()}, {cpu_threads()} cores)"
    return d.device_kind


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------------------- breakdown


def _breakdown(setup, state, teacher, batch, bc: BenchConfig) -> dict:
    """Seconds of the step's three parts, each jitted alone: where the time goes.

    The parts do not fuse with each other, so their sum is at least the fused step's time.
    """
    ctx = setup.ctx
    key = jax.random.key(0)
    with setup.mesh, nn.logical_axis_rules(sharding.RULES):
        fwd_t = jax.jit(lambda tp, b: step_lib.teacher_forward(ctx, tp, b))
        grad_s = jax.jit(lambda p, to, b: jax.value_and_grad(step_lib.loss_fn, has_aux=True)(
            p, ctx, to, b, key))

        def update(g, opt_state, p):
            updates, opt_state = ctx.tx.update(g, opt_state, p)
            return optax.apply_updates(p, updates), opt_state

        upd = jax.jit(update)
        t_out = jax.block_until_ready(fwd_t(teacher, batch))
        (_, _), grads = jax.block_until_ready(grad_s(state.params, t_out, batch))
        jax.block_until_ready(upd(grads, state.opt_state, state.params))
        parts = {
            "teacher_forward_s": lambda: fwd_t(teacher, batch),
            "student_forward_backward_loss_s": lambda: grad_s(state.params, t_out, batch),
            "optimizer_update_s": lambda: upd(grads, state.opt_state, state.params),
        }
        return {name: _median_time(fn, bc.repeats) for name, fn in parts.items()}


def _median_time(fn, repeats: int) -> float:
    import statistics

    times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
