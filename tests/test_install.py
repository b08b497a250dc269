"""A built wheel, installed away from the clone, carries its recipes and runs the default job."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO, cli_env


def test_wheel_runs_the_default_job_from_another_directory(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    wheel = next(wheels.glob("jaxdistill-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    assert (site / "jaxdistill" / "configs" / "task" / "glue" / "sst2_kd.yaml").is_file()
    env = {**cli_env(), "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)

    where = run("-c", "import jaxdistill; print(jaxdistill.__file__)").stdout.strip()
    assert where.startswith(str(site)), where  # the wheel's copy runs, not the clone's
    # A shipped recipe named as in the docs resolves from any directory.
    kd = run("-c", "from jaxdistill.train import kinds; "
                   "print(kinds.load('finetune', 'configs/task/kd.yaml')[1].method.name)")
    assert kd.stdout.strip() == "kd", kd.stderr[-2000:]
    # configs/demo.yaml as shipped, only shorter: 1 step of a narrower student on 16 reviews.
    proc = run("-m", "jaxdistill.cli", "pretrain", "steps=1", "save_every=1", "seq_len=32",
               "batch_size=8", "student.hidden_size=48", "student.num_layers=1",
               "student.intermediate_size=96", "data.max_documents=16", "tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 1
    assert (work / "runs" / "demo" / "hf" / "config.json").is_file()
