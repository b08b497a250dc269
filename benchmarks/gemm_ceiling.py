"""How fast could the TinyBERT step be? Time its matrix products alone, XLA and torch.

  python -m benchmarks.gemm_ceiling                       # demo shapes: MiniLM 6x384 -> 3x312
  python -m benchmarks.gemm_ceiling --torch-step-s 2.0    # also: what 1.5x that step needs

Every matrix product of one TinyBERT general-distillation step (teacher forward; student
forward, input-gradient and weight-gradient products; the shared fit_dense projection; both
attention products per layer) is timed on its own, jitted in XLA and with torch.mm/bmm, on the
same threads. Their summed time is a floor for the whole step on this machine: the step also
runs softmax, LayerNorm, GELU, the embedding gradient, the losses and AdamW, which this leaves
out. Comparing that floor with a target step time says whether the target is reachable at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

from benchmarks.common import cpu_threads, time_steps


@dataclasses.dataclass(frozen=True)
class Gemm:
    """`count` products of [m, k] @ [k, n], each `batch` times (batched attention products)."""

    what: str
    m: int
    k: int
    n: int
    count: int
    batch: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.batch * self.count


def step_gemms(a: argparse.Namespace) -> list[Gemm]:
    """The products of one step, grouped by shape (dropouts off, no remat)."""
    tok = a.batch * a.seq
    th, tf, sh, sf = a.teacher_hidden, a.teacher_ffn, a.student_hidden, a.student_ffn
    td, sd = th // a.heads, sh // a.heads
    bh = a.batch * a.heads
    out = [
        Gemm("teacher q/k/v/out", tok, th, th, 4 * a.teacher_layers),
        Gemm("teacher ffn in", tok, th, tf, a.teacher_layers),
        Gemm("teacher ffn out", tok, tf, th, a.teacher_layers),
        Gemm("teacher QK^T", a.seq, td, a.seq, a.teacher_layers, bh),
        Gemm("teacher PV", a.seq, a.seq, td, a.teacher_layers, bh),
    ]
    hidden = a.student_layers + 1  # fit_dense runs on every student hidden state
    dense = [("q/k/v/out", sh, sh, 4 * a.student_layers), ("ffn in", sh, sf, a.student_layers),
             ("ffn out", sf, sh, a.student_layers), ("fit_dense", sh, th, hidden)]
    for name, k, n, count in dense:
        out += [Gemm(f"student {name} fwd", tok, k, n, count),
                Gemm(f"student {name} dX", tok, n, k, count),  # dY @ W^T
                Gemm(f"student {name} dW", k, tok, n, count)]  # X^T @ dY
    s = a.student_layers
    out += [Gemm("student QK^T fwd", a.seq, sd, a.seq, s, bh),
            Gemm("student PV fwd", a.seq, a.seq, sd, s, bh),
            Gemm("student dQ, dK, dV", a.seq, a.seq, sd, 3 * s, bh),  # dS K, dS^T Q, P^T dO
            Gemm("student dP", a.seq, sd, a.seq, s, bh)]  # dO V^T
    return out


def _median(fn, repeats: int) -> float:
    """Median seconds of one call, after one untimed call (compilation, first touch)."""
    fn()
    return statistics.median(time_steps(lambda n: fn(), 1, repeats))


def time_xla(g: Gemm, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (g.batch, g.m, g.k), jnp.float32)
    y = jax.random.normal(jax.random.key(1), (g.batch, g.k, g.n), jnp.float32)
    f = jax.jit(jnp.matmul)
    return _median(lambda: f(x, y).block_until_ready(), repeats)


def time_torch(g: Gemm, repeats: int) -> float:
    import torch

    x = torch.randn(g.batch, g.m, g.k)
    y = torch.randn(g.batch, g.k, g.n)
    if g.batch == 1:
        x2, y2 = x[0], y[0]
        return _median(lambda: torch.mm(x2, y2), repeats)
    return _median(lambda: torch.bmm(x, y), repeats)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gemm_ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-layers", type=int, default=6)
    p.add_argument("--teacher-hidden", type=int, default=384)
    p.add_argument("--teacher-ffn", type=int, default=1536)
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--student-hidden", type=int, default=312)
    p.add_argument("--student-ffn", type=int, default=1200)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--torch-step-s", type=float,
                   help="a measured torch eager step time: print what 1.5x its speed needs")
    p.add_argument("--json", help="write the table as JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)

    import jax
    import torch

    threads = cpu_threads()
    torch.set_num_threads(threads)
    rows = []
    print(f"{'product':30s} {'shape (batch x m,k,n)':>24s} {'count':>5s} "
          f"{'XLA ms':>8s} {'GF/s':>6s} {'torch ms':>9s} {'GF/s':>6s}")
    for g in step_gemms(a):
        tx, tt = time_xla(g, a.repeats), time_torch(g, a.repeats)
        one = g.flops / g.count
        rows.append({**dataclasses.asdict(g), "flops": g.flops, "xla_s": tx * g.count,
                     "torch_s": tt * g.count})
        shape = f"{g.batch}x{g.m},{g.k},{g.n}" if g.batch > 1 else f"{g.m},{g.k},{g.n}"
        print(f"{g.what:30s} {shape:>24s} {g.count:5d} {tx * g.count * 1e3:8.1f} "
              f"{one / tx / 1e9:6.0f} {tt * g.count * 1e3:9.1f} {one / tt / 1e9:6.0f}")
    flops, xla_s, torch_s = (sum(r[k] for r in rows) for k in ("flops", "xla_s", "torch_s"))
    print(f"\nall products: {flops:.3e} FLOPs; XLA {xla_s:.3f} s ({flops / xla_s / 1e9:.0f} GF/s), "
          f"torch {torch_s:.3f} s ({flops / torch_s / 1e9:.0f} GF/s); jax {jax.__version__}, "
          f"torch {torch.__version__}, {threads} threads")
    report = {"gemms": rows, "total_flops": flops, "xla_s": xla_s, "torch_s": torch_s,
              "threads": threads}
    if a.torch_step_s:
        need, best = a.torch_step_s / 1.5, min(xla_s, torch_s)
        report.update(torch_step_s=a.torch_step_s, step_s_for_1_5x=need)
        verdict = (f"reachable only if everything else took < {need - best:.3f} s" if need > best
                   else "NOT reachable: the products alone exceed it")
        print(f"1.5x a {a.torch_step_s:.3f} s torch step = {need:.3f} s per step; the products "
              f"alone take {best:.3f} s at the faster library's isolated speed ({verdict})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
