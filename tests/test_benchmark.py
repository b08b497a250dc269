"""Smoke test of the step benchmark (benchmarks/distill_step.py) on tiny shapes; no timing asserts."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers import REPO, cli_env

TINY = ["--teacher", "random", "--teacher-layers", "2", "--teacher-hidden", "32",
        "--teacher-heads", "4", "--teacher-ffn", "64", "--student-layers", "1",
        "--student-hidden", "32", "--student-heads", "4", "--student-ffn", "64",
        "--batch", "4", "--seq", "16", "--steps", "1", "--warmup", "1", "--repeats", "1"]
NUMBERS = ("tokens_per_sec", "step_time_s", "model_flops_per_step", "tflops", "mfu",
           "peak_memory_bytes", "ratio_vs_torch_eager", "loss_jax", "loss_torch", "threads")


def test_benchmark_vs_torch_smoke(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.distill_step", *TINY, "--vs", "torch",
         "--torch-modes", "eager", "--json", str(out)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    for key in NUMBERS:
        assert isinstance(rep[key], (int, float)) and math.isfinite(rep[key]), (key, rep[key])
    assert rep["ratio_vs_torch_compile"] is None  # compile was not asked for
    assert isinstance(rep["device"], str) and rep["config"]["batch"] == 4
    assert rep["loss_torch"] == pytest.approx(rep["loss_jax"], rel=1e-3)
    mem = rep["jax"]["memory"]
    # The frozen teacher: a separate, non-donated argument; gradients only for the student.
    assert mem["teacher_args_donated"] is False and mem["state_args_donated"] is True
    assert mem["gradient_tree_equals_trainable_params"] is True
    assert mem["gradient_bytes"] == mem["student_params_bytes"] + mem["method_params_bytes"]
    assert "MISMATCH" not in proc.stdout


def test_count_collectives():
    from benchmarks.jax_side import count_collectives

    hlo = """
  %all-reduce.1 = f32[4]{0} all-reduce(f32[4]{0} %p), channel_id=1, to_apply=%add
  %ag-start = (f32[2]{0}, f32[8]{0}) all-gather-start(f32[2]{0} %q), dimensions={0}
  %ag-done = f32[8]{0} all-gather-done((f32[2]{0}, f32[8]{0}) %ag-start)
  %rs = f32[1]{0} reduce-scatter(f32[4]{0} %r), dimensions={0}, to_apply=%add
  %cp = f32[4]{0} collective-permute(f32[4]{0} %s), source_target_pairs={{0,1}}
  %add.3 = f32[4]{0} add(f32[4]{0} %all-reduce.1, f32[4]{0} %cp)
"""
    counts = count_collectives(hlo)
    assert counts == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 1,
                      "collective-permute": 1, "all-to-all": 0, "total": 4}


def test_gemm_ceiling_lists_every_model_flop(tmp_path):
    """The products the ceiling times are exactly the step's model FLOPs (flops.py)."""
    pytest.importorskip("torch")
    from benchmarks import gemm_ceiling
    from jaxdistill.models.bert import Bert, BertConfig
    from jaxdistill.train import flops

    a = gemm_ceiling.parse_args(["--batch", "2", "--seq", "8"])
    total = sum(g.flops for g in gemm_ceiling.step_gemms(a))
    teacher = BertConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
    student = BertConfig(hidden_size=312, num_layers=3, num_heads=12, intermediate_size=1200)
    fit_dense = 2 * (student.num_layers + 1) * 312 * 384  # per token, every hidden state
    assert total == pytest.approx(flops.step_flops(Bert(student), [Bert(teacher)], 2, 8,
                                                   method_flops_per_token=fit_dense), rel=1e-12)
    out = tmp_path / "gemm.json"
    assert gemm_ceiling.main(["--batch", "2", "--seq", "8", "--repeats", "1",
                              "--torch-step-s", "1.0", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["total_flops"] == pytest.approx(total) and rep["step_s_for_1_5x"] == pytest.approx(1 / 1.5)
    assert all(r["xla_s"] > 0 and r["torch_s"] > 0 for r in rep["gemms"])
