"""A run directory's hard edges: a damaged newest checkpoint stops resume and export by name,
and one run at a time holds a run directory (a lock that a crash does not leave stuck)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

from helpers import REPO, cli_env, run_cli, tiny_task_args


def _args(run_dir, tiny, *extra):
    return tiny_task_args(run_dir, tiny, "save_every=4", "eval_every=4", "export=false", *extra)


def test_damaged_newest_checkpoint_stops_resume_and_export_by_name(tmp_path, tiny):
    run_dir = tmp_path / "run"
    run_cli(*_args(run_dir, tiny, "steps=8"))
    damaged = run_dir / "checkpoints" / "8"
    shutil.rmtree(damaged / "state")

    export = run_cli("export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "x"),
                     check=False)
    resume = run_cli(*_args(run_dir, tiny, "steps=12"), check=False)
    for proc in (export, resume):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "step 8" in proc.stderr and "state/ folder is missing" in proc.stderr
        assert "use step 4" in proc.stderr
    assert damaged.is_dir() and not (tmp_path / "x").exists()  # nothing removed, nothing written

    shutil.move(damaged, tmp_path / "aside")  # what the message says to do
    out = json.loads(run_cli("export", "--checkpoint", str(run_dir), "--out",
                             str(tmp_path / "x")).stdout.strip().splitlines()[-1])
    assert out["hf_dir"] == str(tmp_path / "x")


def test_one_run_per_run_dir_and_a_crashed_owner_does_not_block(tmp_path, tiny):
    run_dir = tmp_path / "run"
    lock = run_dir / ".jaxdistill.lock"
    first = subprocess.Popen([sys.executable, "-m", "jaxdistill.cli",
                              *_args(run_dir, tiny, "steps=400", "save_every=100")],
                             cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not lock.is_file():
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.05)
    second = run_cli(*_args(run_dir, tiny, "steps=400", "save_every=100"), check=False)
    said = " ".join(second.stderr.split())  # the message is wrapped to the terminal's width
    assert second.returncode == 2 and "in use by another run" in said, second.stderr
    assert f"process {first.pid}" in said and "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)  # preempted: saves, exits 0 and releases the lock
    first.communicate(timeout=600)
    assert first.returncode == 0 and not lock.exists()

    # A lock left by a process that died (SIGKILL, power loss) is taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    lock.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "since": 0}))
    proc = run_cli(*_args(run_dir, tiny, "steps=8"))
    assert f"taking over the lock of process {dead}" in proc.stdout + proc.stderr
    assert not lock.exists()

    # Another model (here another head: BBC News has 5 labels) cannot resume these checkpoints.
    other = run_cli(*_args(run_dir, tiny, "steps=8", "task.name=bbc_news"), check=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    message = " ".join(other.stderr.split())
    assert "holds checkpoints of another model (num_labels 2 there, 5 now)" in message
