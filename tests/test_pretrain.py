"""End to end `jaxdistill pretrain`: losses fall, exact resume (SIGKILL, SIGTERM), mesh equivalence,
the DistilBERT recipe, and clean failures."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import (REPO, TINY, cli_env, final_params, loss_columns, mesh_losses, read_metrics,
                     run_cli, write_tiny_teacher)

def _args(run_dir: Path, teacher: Path, prepared: Path, *extra: str) -> list[str]:
    return ["pretrain", f"run_dir={run_dir}", f"teacher.path={teacher}",
            f"data.prepared_dir={prepared}", *TINY, *extra]


def test_tinybert_losses_fall_and_export(tmp_path, tiny_teacher, prepared):
    run_dir = tmp_path / "run"
    run_cli(*_args(run_dir, tiny_teacher, prepared, "steps=30", "save_every=100"))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 31))
    first, last = rows[0], rows[-1]
    terms = [k for k in first if k.startswith("loss/") and k.count("/") == 1] + ["loss"]
    assert {"loss/attn_mse", "loss/hidden_mse", "loss/embedding_mse"} <= set(terms)
    early = {k: np.mean([r[k] for r in rows[:3]]) for k in terms}
    late = {k: np.mean([r[k] for r in rows[-3:]]) for k in terms}
    for k in terms:
        assert late[k] < early[k], (k, early[k], late[k])
    for key in ("tokens_per_sec", "lr", "grad_norm", "mfu"):
        assert key in last and np.isfinite(last[key])
    assert (run_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["30"]

    import transformers

    model = transformers.AutoModel.from_pretrained(run_dir / "hf")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 24
    tok = transformers.AutoTokenizer.from_pretrained(run_dir / "hf")
    assert tok("a fine film")["input_ids"][0] == tok.cls_token_id


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpts = run_dir / "checkpoints"
        done = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.is_dir() else []
        if done:
            return min(done)
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_teacher, prepared) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run_cli(*_args(run_dir, tiny_teacher, prepared, "steps=120", "save_every=10", "export=false"))
    return run_dir


# SIGKILL (no chance to save) of a `pretrain` run and its exact resume: tests/test_minilm.py's
# end-to-end test, the same loop and checkpoints under another method.
@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["sigterm"])
def test_resume_is_exact(tmp_path, tiny_teacher, prepared, straight_run, sig):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_teacher, prepared, "steps=120", "save_every=10", "export=false")
    proc = subprocess.Popen([sys.executable, "-m", "jaxdistill.cli", *args], cwd=REPO,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run_dir, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["preempted"] is True
    else:
        assert proc.returncode == -signal.SIGKILL
    stopped_at = max(int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit())
    assert stopped_at < 120, "the run finished before it was interrupted; the test proves nothing"

    run_cli(*args)  # the same command again resumes
    assert loss_columns(read_metrics(run_dir)) == loss_columns(read_metrics(straight_run))
    a, b = final_params(run_dir), final_params(straight_run)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_meshes_match_one_device(tmp_path, tiny_teacher, prepared):
    """TinyBERT's and MiniLMv2's general distillation: every loss term of 3 steps on 1 device
    equals 8 fake devices on a (2, 2, 2) mesh (data, fsdp and tensor at once; pure data
    parallelism over devices and processes: tests/test_multihost.py)."""
    args = [f"teacher.path={tiny_teacher}", f"data.prepared_dir={prepared}", *TINY, "steps=3",
            "teacher.dtype=float32", "export=false", "save_every=100"]
    recipes = {"tinybert": ("", args),
               "minilm": ("configs/minilm_demo.yaml", [*args, "method.options.relation_heads=8"])}
    one = mesh_losses(tmp_path, 1, [(n, c, a, [1, 1, 1]) for n, (c, a) in recipes.items()])
    many = mesh_losses(tmp_path, 8, [(n, c, a, [2, 2, 2]) for n, (c, a) in recipes.items()])
    assert {"loss/attn_mse", "loss/qq_kl", "loss/kk_kl", "loss/vv_kl"} <= \
        set(one["tinybert"][0]) | set(one["minilm"][0])
    for name, rows in many.items():
        assert len(rows) == len(one[name]) == 3
        for r1, r8 in zip(one[name], rows):
            for k, v in r1.items():
                assert r8[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (name, k)


def test_distilbert_recipe_with_mlm_teacher(tmp_path, prepared):
    teacher = write_tiny_teacher(tmp_path / "mlm_teacher", arch="BertForMaskedLM", layers=4)
    run_dir = tmp_path / "run"
    run_cli("pretrain", "--config", "configs/distilbert_demo.yaml", f"run_dir={run_dir}",
            f"teacher.path={teacher}", f"data.prepared_dir={prepared}", *TINY, "steps=6",
            "student.num_layers=2", "student.hidden_size=32", "student.intermediate_size=64",
            "save_every=100")
    rows = read_metrics(run_dir)
    assert {"loss/ce", "loss/mlm", "loss/cos"} <= set(rows[-1])
    assert all(np.isfinite(r["loss"]) for r in rows)

    import transformers

    model = transformers.AutoModelForMaskedLM.from_pretrained(run_dir / "hf")
    assert type(model).__name__ == "DistilBertForMaskedLM"


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, prepared):
    teacher = write_tiny_teacher(tmp_path / "nan_teacher", nan=True)
    run_dir = tmp_path / "run"
    proc = run_cli(*_args(run_dir, teacher, prepared, "steps=4", "save_every=1"), check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Loss became nan" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "hf").exists()


@pytest.mark.parametrize("override, needle", [
    ("stpes=3", "Did you mean 'steps'"),
    ("student.hidden_sise=3", "Did you mean 'hidden_size'"),
    ("teacher.path=/nonexistent/teacher", "/nonexistent/teacher"),
    ("method.name=tinybret", "tinybert"),
])
def test_bad_input_exits_2_without_traceback(tmp_path, override, needle):
    proc = run_cli("pretrain", f"run_dir={tmp_path / 'run'}", override, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_corrupted_teacher_weights_exit_2(tmp_path):
    teacher = write_tiny_teacher(tmp_path / "bad")
    (teacher / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    proc = run_cli("pretrain", f"run_dir={tmp_path / 'run'}", f"teacher.path={teacher}",
                   check=False, timeout=120)
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_demo_recipe_with_real_teacher_losses_fall(tmp_path):
    """The embedded default (packaged MiniLM teacher, IMDB text), shortened to 30 steps of 64."""
    run_dir = tmp_path / "demo"
    run_cli("pretrain", f"run_dir={run_dir}", "steps=30", "seq_len=64", "log_every=5",
            "save_every=100",
            "data.max_documents=300", "tensorboard=false", timeout=900)
    rows = read_metrics(run_dir)
    first, last = rows[0], rows[-1]
    terms = ["loss"] + [k for k in first if k.startswith("loss/") and k.count("/") == 1]
    assert len(terms) == 4
    for k in terms:
        assert last[k] < first[k], (k, first[k], last[k])
    import transformers

    model = transformers.AutoModel.from_pretrained(run_dir / "hf")
    assert (model.config.num_hidden_layers, model.config.hidden_size,
            model.config.num_attention_heads) == (3, 312, 12)


def test_half_written_checkpoint_is_ignored(tmp_path, tiny_teacher, prepared):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_teacher, prepared, "steps=4", "save_every=2", "export=false")
    run_cli(*args)
    # What an interrupted Orbax save leaves behind: a temporary step directory, never renamed.
    partial = run_dir / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
    from jaxdistill import checkpoint

    assert checkpoint.find_step_dir(run_dir).name == "4"
    run_cli(*_args(run_dir, tiny_teacher, prepared, "steps=6", "save_every=2", "export=false"))
    assert [r["step"] for r in read_metrics(run_dir)][-2:] == [5, 6]


def test_gradient_accumulation_matches_full_batch(tmp_path, tiny_teacher, prepared):
    """k microbatches averaged = one full batch (dropout off, so both see the same function)."""
    runs = {}
    for k in (1, 2):
        run_dir = tmp_path / f"accum{k}"
        run_cli(*_args(run_dir, tiny_teacher, prepared, "steps=3", "save_every=100",
                       "export=false", "teacher.dtype=float32", "student.hidden_dropout=0",
                       "student.attention_dropout=0", f"optimizer.grad_accum={k}"))
        runs[k] = run_dir
    a, b = loss_columns(read_metrics(runs[1])), loss_columns(read_metrics(runs[2]))
    for step in a:
        for key, v in a[step].items():
            assert b[step][key] == pytest.approx(v, rel=1e-5), (step, key)
    pa, pb = final_params(runs[1]), final_params(runs[2])
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], rtol=1e-4, atol=1e-6, err_msg=key)
