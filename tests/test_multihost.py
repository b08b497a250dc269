"""Several cooperating JAX processes on 127.0.0.1 (launch/local.sh), preemption across hosts,
and restoring a checkpoint onto another mesh / device count."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, TINY, cli_env, final_params, loss_columns, read_metrics, run_cli

LOCAL = str(REPO / "launch" / "local.sh")


def _pretrain_args(run_dir: Path, teacher: Path, data: Path, *extra: str) -> list[str]:
    return ["pretrain", f"run_dir={run_dir}", f"teacher.path={teacher}",
            f"data.prepared_dir={data}", *TINY, "teacher.dtype=float32", "export=false", *extra]


def _local(n: int, devices_each: int, args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen(["bash", LOCAL, str(n), sys.executable, "-m", "jaxdistill.cli", *args],
                            cwd=REPO, env=cli_env(devices_each), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _close(a: dict[int, dict], b: dict[int, dict], rel: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for step in a:
        for k, v in a[step].items():
            assert b[step][k] == pytest.approx(v, rel=rel, abs=1e-7), (step, k)


def test_two_processes_match_one(tmp_path, tiny_teacher, prepared):
    one = tmp_path / "one"
    run_cli(*_pretrain_args(one, tiny_teacher, prepared, "steps=4", "save_every=2"), devices=4)
    two = tmp_path / "two"
    proc = _local(2, 2, _pretrain_args(two, tiny_teacher, prepared, "steps=4", "save_every=2"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    _close(loss_columns(read_metrics(one)), loss_columns(read_metrics(two)))
    # Every process wrote its data-iterator state into the checkpoint.
    data = sorted(p.name for p in (two / "checkpoints" / "4" / "data").glob("process_*"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]


def test_sigterm_on_one_host_stops_both_at_the_same_step(tmp_path, tiny_teacher, prepared):
    straight = tmp_path / "straight"
    run_cli(*_pretrain_args(straight, tiny_teacher, prepared, "steps=60", "save_every=20"),
            devices=4)
    run_dir = tmp_path / "run"
    args = _pretrain_args(run_dir, tiny_teacher, prepared, "steps=60", "save_every=20")
    proc = _local(2, 2, args)
    deadline = time.time() + 300
    while not (run_dir / "metrics.jsonl").is_file() or len(read_metrics(run_dir)) < 3:
        assert proc.poll() is None and time.time() < deadline, "run ended or stalled early"
        time.sleep(0.05)
    # SIGTERM to the worker process (process 1) only: find it among local.sh's children.
    workers = subprocess.run(["pgrep", "-f", f"run_dir={run_dir}"], capture_output=True,
                             text=True).stdout.split()
    pids = [int(p) for p in workers if int(p) != proc.pid]
    envs = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in pids}
    target = next(pid for pid, env in envs.items() if b"JAXDISTILL_PROCESS_ID=1" in env)
    subprocess.run(["kill", "-TERM", str(target)], check=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "SIGTERM: saved step" in out
    saved = max(int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit())
    assert saved < 60
    summaries = [json.loads(l.split("] ", 1)[1]) for l in out.splitlines() if '"preempted"' in l]
    assert len(summaries) == 2 and {s["step"] for s in summaries} == {saved}
    assert all(s["preempted"] for s in summaries)

    proc = _local(2, 2, args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    _close(loss_columns(read_metrics(straight)), loss_columns(read_metrics(run_dir)))


def test_restore_onto_another_mesh_and_device_count(tmp_path, tiny_teacher, prepared):
    straight = tmp_path / "straight"
    run_cli(*_pretrain_args(straight, tiny_teacher, prepared, "steps=6", "save_every=3"),
            devices=8)
    moved = tmp_path / "moved"
    # Three steps on 8 devices as (8,1,1), then the rest on 4 devices as (2,1,2).
    run_cli(*_pretrain_args(moved, tiny_teacher, prepared, "steps=6", "save_every=3"),
            devices=8)
    for p in (moved / "checkpoints").iterdir():  # keep only step 3, as if stopped there
        if p.name != "3":
            import shutil

            shutil.rmtree(p)
    rows = [r for r in read_metrics(moved) if r["step"] <= 3]
    (moved / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_cli(*_pretrain_args(moved, tiny_teacher, prepared, "steps=6", "save_every=3",
                            "mesh.data=2", "mesh.tensor=2"), devices=4)
    _close(loss_columns(read_metrics(straight)), loss_columns(read_metrics(moved)))
    a, b = final_params(straight), final_params(moved)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
