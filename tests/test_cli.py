"""The `jaxdistill` entry point: help, import/export round trip, errors as exit 2."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import run_cli, write_tiny_teacher


def test_help_lists_commands_and_keys():
    top = run_cli("--help")
    for command in ("pretrain", "prepare-data", "export", "import"):
        assert command in top.stdout
    pre = run_cli("pretrain", "--help")
    for key in ("run_dir", "mesh.fsdp", "teacher.path", "student.num_layers", "method.name",
                "data.mlm_probability", "optimizer.grad_accum"):
        assert key in pre.stdout


def test_import_export_roundtrip_through_cli(tmp_path):
    import transformers
    import torch

    hf_dir = write_tiny_teacher(tmp_path / "hf_in", arch="BertForMaskedLM", layers=2)
    run_cli("import", "--hf", str(hf_dir), "--out", str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "checkpoints" / "0").is_dir()
    run_cli("export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf_out"))
    a = transformers.AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    b = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf_out").eval()
    ids = torch.tensor([[2, 100, 200, 300, 3]])
    with torch.no_grad():
        np.testing.assert_array_equal(a(ids).logits.numpy(), b(ids).logits.numpy())
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf_out")
    assert tok.vocab_size == a.config.vocab_size


@pytest.mark.parametrize("args, needle", [
    (["export", "--checkpoint", "/nonexistent/run", "--out", "x"], "/nonexistent/run"),
    (["import", "--hf", "/nonexistent/hf", "--out", "x"], "/nonexistent/hf"),
    (["pretrain", "--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
])
def test_missing_paths_exit_2(tmp_path, args, needle):
    proc = run_cli(*args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--debug", "pretrain", "stepz=1", check=False, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("override, needle", [("steps=-5", "steps=-5"),
                                             ("save_every=0", "save_every=0")])
def test_out_of_range_keys_exit_2_before_anything_is_written(tmp_path, override, needle):
    run_dir = tmp_path / "run"
    proc = run_cli("pretrain", f"run_dir={run_dir}", override, check=False, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not run_dir.exists()


def test_keys_that_clash_with_the_models_or_the_run_exit_2(tmp_path, tiny):
    from helpers import tiny_task_args
    from jaxdistill.errors import UserError
    from jaxdistill.models.bert import Bert, BertConfig
    from jaxdistill.train.loop import check_run

    run_dir = tmp_path / "run"
    proc = run_cli(*tiny_task_args(run_dir, tiny, "steps=4", "seq_len=1000"), check=False,
                   timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "seq_len=1000 is longer than the student" in proc.stderr
    assert "Traceback" not in proc.stderr and not (run_dir / "checkpoints").exists()
    from jaxdistill.train import kinds

    _, cfg = kinds.load("finetune", None, ["optimizer.warmup_steps=50"])
    with pytest.raises(UserError, match="optimizer.warmup_steps=50 is longer than the run's 4"):
        check_run(cfg, {"student": Bert(BertConfig(vocab_size=10))}, total_steps=4)
