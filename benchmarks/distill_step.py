"""Time jaxdistill's distillation step, optionally against PyTorch, and report MFU and memory.

  python -m benchmarks.distill_step                      # MiniLM 6x384 -> 3x312 student, CPU
  python -m benchmarks.distill_step --vs torch --json out.json
  python -m benchmarks.distill_step --teacher random --teacher-layers 12 --teacher-hidden 768 \
      --student-layers 6 --student-hidden 768 --dtype bfloat16 --batch 256   # BERT-base -> TinyBERT6
  python -m benchmarks.distill_step --scaling            # 1 vs 8 fake CPU devices, several meshes

The JAX side is the project's own code path: `train.kinds.mlm_corpus.build(cfg)`,
`init_state`, and the jitted `compile_step` with its shardings and donation; only the data
pipeline is replaced by one synthetic batch in the batch contract. With `--vs torch` the same
shapes, initial weights (exported with jaxdistill.convert.write_hf_dir and loaded by
transformers), batch and loss are run with transformers' BertModel, eager and under
torch.compile, in the same process after the JAX measurement, with torch using as many threads
as JAX has cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common import BenchConfig, cpu_threads, fmt_bytes

TEACHER_SIZE_FLAGS = ("teacher_layers", "teacher_hidden", "teacher_heads", "teacher_ffn", "vocab")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distill_step",
                                description=__doc__.split("\n")[0])
    d = BenchConfig()
    p.add_argument("--teacher", default=d.teacher,
                   help="package:minilm (default), a Hugging Face directory, or 'random' "
                        "(a random BERT sized by --teacher-*)")
    p.add_argument("--teacher-layers", type=int, help=f"random teacher (default {d.teacher_layers})")
    p.add_argument("--teacher-hidden", type=int, help=f"random teacher (default {d.teacher_hidden})")
    p.add_argument("--teacher-heads", type=int, help=f"random teacher (default {d.teacher_heads})")
    p.add_argument("--teacher-ffn", type=int, help=f"random teacher (default {d.teacher_ffn})")
    p.add_argument("--vocab", type=int, help=f"random teacher (default {d.vocab})")
    p.add_argument("--student-layers", type=int, default=d.student_layers)
    p.add_argument("--student-hidden", type=int, default=d.student_hidden)
    p.add_argument("--student-heads", type=int, default=d.student_heads)
    p.add_argument("--student-ffn", type=int, default=d.student_ffn)
    p.add_argument("--method", choices=("tinybert", "distilbert", "minilm"), default=d.method)
    p.add_argument("--batch", type=int, default=d.batch, help="global batch (sequences)")
    p.add_argument("--seq", type=int, default=d.seq)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.dtype,
                   help="compute dtype of student and teacher (params of the student stay fp32)")
    p.add_argument("--teacher-dtype", choices=("float32", "bfloat16"),
                   help="teacher dtype if different from --dtype")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (-1 = the rest)")
    p.add_argument("--devices", type=int, default=0,
                   help="force this many host (CPU) devices (sets XLA_FLAGS before JAX starts)")
    p.add_argument("--steps", type=int, default=d.steps, help="steps per timed repeat")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps (first compiles)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed repeats (median, min)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc malloc alone (jaxdistill pretrain tunes it; see hostmem.py)")
    p.add_argument("--vs", choices=("torch",), help="also run the PyTorch baseline")
    p.add_argument("--torch-modes", default="eager,compile",
                   help="comma list of eager, compile (default both)")
    p.add_argument("--loss-rtol", type=float,
                   help="allowed relative loss difference jax vs torch (default 1e-3 in fp32, "
                        "3e-2 with a bf16 side)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time teacher forward, student fwd+bwd and optimizer separately")
    p.add_argument("--scaling", action="store_true",
                   help="run the mesh scaling report on fake CPU devices instead")
    p.add_argument("--scaling-meshes", default="1,1,1;8,1,1;4,2,1;2,2,2",
                   help="';'-separated data,fsdp,tensor meshes (devices = product)")
    p.add_argument("--json", help="write the report as JSON to this file")
    p.add_argument("--profile", help="trace 3 extra steps with jax.profiler into this directory "
                                     "and write the compiled step's HLO there (step.hlo.txt)")
    args = p.parse_args(argv)
    if args.teacher != "random":
        given = [f for f in TEACHER_SIZE_FLAGS if getattr(args, f) is not None]
        if given:
            p.error(f"--{given[0].replace('_', '-')} sizes a random teacher: add --teacher random")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("--steps, --repeats and --warmup must be >= 1 (the first call compiles)")
    return args


def bench_config(args: argparse.Namespace) -> BenchConfig:
    d = BenchConfig()
    sizes = {f: getattr(args, f) if getattr(args, f) is not None else getattr(d, f)
             for f in TEACHER_SIZE_FLAGS}
    mesh = tuple(int(x) for x in args.mesh.split(","))
    if len(mesh) != 3:
        raise SystemExit(f"--mesh {args.mesh}: expected data,fsdp,tensor")
    return BenchConfig(
        teacher=args.teacher, **sizes, student_layers=args.student_layers,
        student_hidden=args.student_hidden, student_heads=args.student_heads,
        student_ffn=args.student_ffn, method=args.method, batch=args.batch, seq=args.seq,
        dtype=args.dtype, teacher_dtype=args.teacher_dtype or args.dtype, mesh=mesh,
        devices=args.devices, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
        seed=args.seed, malloc_tuning=not args.no_malloc_tuning)


def model_args(args: argparse.Namespace) -> list[str]:
    """The shape/timing options of `args` as a command line (for the scaling children)."""
    out = ["--teacher", args.teacher]
    for f in TEACHER_SIZE_FLAGS:
        if getattr(args, f) is not None:
            out += [f"--{f.replace('_', '-')}", str(getattr(args, f))]
    for f in ("student_layers", "student_hidden", "student_heads", "student_ffn", "method",
              "batch", "seq", "dtype", "steps", "warmup", "repeats", "seed"):
        out += [f"--{f.replace('_', '-')}", str(getattr(args, f))]
    if args.teacher_dtype:
        out += ["--teacher-dtype", args.teacher_dtype]
    if args.no_malloc_tuning:
        out.append("--no-malloc-tuning")
    return out


def force_host_devices(n: int) -> None:
    """Must run before JAX is imported: XLA reads the flag once."""
    if "jax" in sys.modules:
        raise RuntimeError("--devices must be set before JAX is imported")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


# ------------------------------------------------------------------------------ reporting


def loss_check(loss_jax: float, torch_res: dict, rtol: float) -> dict:
    out = {"rtol": rtol, "modes": {}}
    for mode in ("eager", "compile"):
        res = torch_res.get(mode)
        if res and "loss" in res:
            rel = abs(res["loss"] - loss_jax) / max(abs(loss_jax), 1e-12)
            out["modes"][mode] = {"loss_torch": res["loss"], "rel_diff": rel, "ok": rel <= rtol}
    out["ok"] = all(m["ok"] for m in out["modes"].values())
    return out


def ratio(jax_rep: dict, torch_res: dict | None, mode: str) -> float | None:
    res = (torch_res or {}).get(mode)
    if not res or "tokens_per_sec" not in res:
        return None
    return jax_rep["tokens_per_sec"] / res["tokens_per_sec"]


def print_memory(mem: dict, peak: int | None, source: str, rss: int) -> None:
    print("\nMemory (the teacher is frozen: no optimizer state, no gradients)")
    print(f"  train state (donated):  student params {fmt_bytes(mem['student_params_bytes'])}, "
          f"method params {fmt_bytes(mem['method_params_bytes'])}, "
          f"optimizer state {fmt_bytes(mem['opt_state_bytes'])} "
          f"(= {mem['opt_state_bytes'] / max(mem['student_params_bytes'] + mem['method_params_bytes'], 1):.2f}"
          f" x trainable params: Adam mu + nu)")
    print(f"  teacher params (separate argument, donated={mem['teacher_args_donated']}): "
          f"{fmt_bytes(mem['teacher_params_bytes'])}; optimizer state for it: 0 B")
    print(f"  gradients traced from the step: {fmt_bytes(mem['gradient_bytes'])} "
          f"(tree == trainable params: {mem['gradient_tree_equals_trainable_params']})")
    c = mem.get("compiled")
    if c:
        print(f"  compiled step (per device): arguments {fmt_bytes(c['argument_size_in_bytes'])}, "
              f"outputs {fmt_bytes(c['output_size_in_bytes'])}, aliased (donated) "
              f"{fmt_bytes(c['alias_size_in_bytes'])}, temporaries {fmt_bytes(c['temp_size_in_bytes'])}"
              f" -> total {fmt_bytes(c['total_bytes'])}")
    print(f"  peak memory: {fmt_bytes(peak)} ({source}); process peak RSS {fmt_bytes(rss)}")


def print_table(jax_rep: dict, torch_res: dict | None) -> None:
    head = (f"{'':16}{'step s (med)':>13}{'min':>8}{'tokens/s':>10}{'TFLOP/s':>9}"
            f"{'MFU':>8}{'loss step1':>13}{'x torch':>9}")
    print("\n" + head + "\n" + "-" * len(head))
    rows = [("jaxdistill", jax_rep, jax_rep["loss_jax"])]
    for mode, label in (("eager", "torch eager"), ("compile", "torch.compile")):
        res = (torch_res or {}).get(mode)
        if res is None:
            continue
        if "error" in res:
            print(f"{label:16}failed: {res['error'][:200]}")
            continue
        rows.append((label, res, res["loss"]))
    for label, r, loss in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        x = "" if label == "jaxdistill" else f"{jax_rep['tokens_per_sec'] / r['tokens_per_sec']:.2f}"
        print(f"{label:16}{r['step_time_s']:>13.4f}{r['step_time_min_s']:>8.4f}"
              f"{r['tokens_per_sec']:>10.0f}{r['tflops']:>9.3f}{mfu:>8}{loss:>13.6f}{x:>9}")
    if torch_res:
        print("x torch = jaxdistill tokens/s / torch tokens/s")


def report_json(bc: BenchConfig, jax_rep: dict, torch_res: dict | None, check: dict | None,
                args: argparse.Namespace) -> dict:
    loss_torch = None
    for mode in ("eager", "compile"):
        if torch_res and "loss" in torch_res.get(mode, {}):
            loss_torch = torch_res[mode]["loss"]
            break
    keys = ("tokens_per_sec", "step_time_s", "step_time_min_s", "model_flops_per_step", "tflops",
            "mfu", "peak_memory_bytes", "loss_jax", "device", "threads")
    return {
        **{k: jax_rep[k] for k in keys},
        "ratio_vs_torch_eager": ratio(jax_rep, torch_res, "eager"),
        "ratio_vs_torch_compile": ratio(jax_rep, torch_res, "compile"),
        "loss_torch": loss_torch, "loss_check": check,
        "config": {**dataclasses.asdict(bc), "vs": args.vs, "torch_modes": args.torch_modes,
                   "student_dropout": 0.0},
        "jax": jax_rep, "torch": torch_res,
    }


def _clean(obj):
    """JSON-safe: NaN/inf become null; tuples lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scaling:
        return run_scaling(args)
    if args.devices:
        force_host_devices(args.devices)
    bc = bench_config(args)
    from benchmarks import jax_side  # imports JAX: only after XLA_FLAGS is final

    modes = [m for m in args.torch_modes.split(",") if m] if args.vs == "torch" else []
    bad = set(modes) - {"eager", "compile"}
    if bad:
        raise SystemExit(f"--torch-modes: unknown {', '.join(sorted(bad))} (eager, compile)")
    if modes and bc.method != "tinybert":
        raise SystemExit("--vs torch implements TinyBERT general distillation only "
                         "(--method tinybert).")
    print(f"config: {bc}", flush=True)
    with tempfile.TemporaryDirectory(prefix="jaxdistill-bench-") as tmp:
        jr = jax_side.run(bc, Path(tmp), breakdown=args.breakdown, export=bool(modes),
                          profile_dir=Path(args.profile) if args.profile else None)
        rep = jr.report
        print(f"device: {rep['device']} x{rep['device_count']}, mesh {rep['mesh_shape']}, "
              f"threads {rep['threads']}; compile {rep['compile_s']:.1f} s")
        print(f"model FLOPs/step (jaxdistill/train/flops.py):\n  {rep['flops_formula']}")
        if rep["xla_cost_analysis_flops"]:
            print(f"  (XLA cost analysis of the compiled step: {rep['xla_cost_analysis_flops']:.4g}"
                  f" FLOPs per device program, recomputation and elementwise ops included)")
        print(f"peak FLOP/s: {rep['peak_flops'] or float('nan'):.4g} ({rep['peak_flops_source']})")
        print_memory(rep["memory"], rep["peak_memory_bytes"], rep["peak_memory_source"],
                     rep["process_peak_rss_bytes"])
        print(f"collectives in the compiled step: {rep['collectives']}")
        torch_res = check = None
        if modes:
            from benchmarks import torch_side

            print(f"\ntorch: {', '.join(modes)} with {rep['threads']} threads ...", flush=True)
            import jax

            device = "cuda" if jax.default_backend() == "gpu" else "cpu"
            torch_res = torch_side.run(jr, bc, modes, rep["threads"], rep["model_flops_per_step"],
                                       rep["peak_flops"], breakdown=args.breakdown, device=device)
            bf16 = "bfloat16" in (bc.dtype, bc.teacher_dtype)
            rtol = args.loss_rtol if args.loss_rtol is not None else (3e-2 if bf16 else 1e-3)
            check = loss_check(rep["loss_jax"], torch_res, rtol)
    print_table(rep, torch_res)
    if check:
        for mode, m in check["modes"].items():
            print(f"loss check vs torch {mode}: jax {rep['loss_jax']:.6f} torch {m['loss_torch']:.6f}"
                  f" rel diff {m['rel_diff']:.2e} (tolerance {check['rtol']:g}, student dropout 0"
                  f" on both sides): {'OK' if m['ok'] else 'MISMATCH'}")
    if args.breakdown:
        print(f"breakdown jax (s): {rep.get('breakdown')}")
        if torch_res and "breakdown_eager" in torch_res:
            print(f"breakdown torch eager (s): {torch_res['breakdown_eager']}")
    out = _clean(report_json(bc, rep, torch_res, check, args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if check is None or check["ok"] else 1


def run_scaling(args: argparse.Namespace) -> int:
    from benchmarks import scaling

    meshes = scaling.parse_meshes(args.scaling_meshes)
    result = scaling.run(model_args(args), meshes)
    result["threads"] = cpu_threads()
    print(scaling.table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(_clean(result), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
