"""Scaling report: one global batch under several meshes of fake CPU devices.

Each mesh runs in its own process, because the device count (XLA_FLAGS
--xla_force_host_platform_device_count) is fixed when JAX starts. The 1-device baseline runs
with one host device; the others with 8. Reported per mesh: step time, tokens/s relative to one
device, and the collectives the compiled step contains (static count in the HLO text).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# (device count, (data, fsdp, tensor))
DEFAULT_MESHES: tuple[tuple[int, tuple[int, int, int]], ...] = (
    (1, (1, 1, 1)), (8, (8, 1, 1)), (8, (4, 2, 1)), (8, (2, 2, 2)))


def parse_meshes(text: str) -> tuple[tuple[int, tuple[int, int, int]], ...]:
    """'1,1,1;8,1,1;4,2,1' -> ((1, (1,1,1)), (8, (8,1,1)), (8, (4,2,1))): devices = product."""
    out = []
    for part in text.split(";"):
        shape = tuple(int(x) for x in part.split(","))
        if len(shape) != 3 or min(shape) < 1:
            raise SystemExit(f"--scaling-meshes: '{part}' is not data,fsdp,tensor (positive).")
        out.append((shape[0] * shape[1] * shape[2], shape))
    return tuple(out)


def child_env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"  # fake devices are host devices
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_mesh(model_args: list[str], devices: int, mesh: tuple[int, int, int],
             timeout: int) -> dict:
    """One child benchmark (JAX only) on `devices` fake CPU devices; its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "benchmarks.distill_step", *model_args,
               "--devices", str(devices), "--mesh", ",".join(map(str, mesh)), "--json", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, env=child_env(devices), capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"mesh {mesh} on {devices} devices failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def run(model_args: list[str], meshes=DEFAULT_MESHES, timeout: int = 1800) -> dict:
    """Every mesh in turn; rows with throughput relative to the first (1-device) mesh."""
    rows = []
    for devices, mesh in meshes:
        print(f"[scaling] mesh data,fsdp,tensor = {mesh} on {devices} device(s) ...", flush=True)
        rep = run_mesh(model_args, devices, mesh, timeout)
        rows.append({"devices": devices, "mesh": list(mesh), "step_time_s": rep["step_time_s"],
                     "step_time_min_s": rep["step_time_min_s"],
                     "tokens_per_sec": rep["tokens_per_sec"], "collectives": rep["jax"]["collectives"],
                     "loss_jax": rep["loss_jax"], "compile_s": rep["jax"]["compile_s"],
                     "peak_memory_bytes_per_device": rep["peak_memory_bytes"]})
    base = rows[0]["tokens_per_sec"]
    for row in rows:
        row["throughput_vs_first"] = row["tokens_per_sec"] / base
    return {"rows": rows, "baseline": f"mesh {rows[0]['mesh']} on {rows[0]['devices']} device(s)",
            "config_args": model_args}


def table(result: dict) -> str:
    kinds = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
    short = ("AR", "AG", "RS", "CP", "A2A")
    head = (f"{'devices':>7} {'mesh (d,f,t)':>13} {'step s':>8} {'tokens/s':>9} {'vs 1':>6} "
            f"{'collectives':>11} " + " ".join(f"{s:>4}" for s in short)
            + f" {'loss step1':>11} {'mem/dev':>9}")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        c = r["collectives"]
        mem = r["peak_memory_bytes_per_device"]
        lines.append(
            f"{r['devices']:>7} {str(tuple(r['mesh'])):>13} {r['step_time_s']:>8.3f} "
            f"{r['tokens_per_sec']:>9.0f} {r['throughput_vs_first']:>6.2f} {c['total']:>11} "
            + " ".join(f"{c[k]:>4}" for k in kinds)
            + f" {r['loss_jax']:>11.6f} {(mem or 0) / 2**20:>7.0f}Mi")
    lines.append("collectives: static count of all-reduce (AR), all-gather (AG), reduce-scatter "
                 "(RS), collective-permute (CP), all-to-all (A2A) instructions in the compiled "
                 "step's HLO; mem/dev: XLA memory analysis of the per-device program.")
    return "\n".join(lines)
