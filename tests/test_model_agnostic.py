"""The core is model-agnostic: the loop, checkpoints and the method interface name no BERT, and a
student kind defined here, in this file alone, is distilled through the real task loop.

The student is mean-pooled token embeddings plus a linear classifier, registered as kind
'meanpool'. It learns from a tiny fine-tuned BERT classifier with the existing `kd` method via
`jaxdistill finetune`: checkpoints, SIGKILL, exact resume, `evaluate` and export (a
jaxdistill-native directory, as the kind has no Hugging Face class). Run as a script, this file
registers the kind and then runs the jaxdistill CLI, which is how the subprocesses below see it.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from jaxdistill.methods.base import Method, register as register_method
from jaxdistill.models import NOTHING, Model, Outputs, Wants, register

HERE = Path(__file__).resolve()
PACKAGE = HERE.parent.parent / "jaxdistill"


@dataclasses.dataclass(frozen=True)
class MeanPoolConfig:
    kind: str = "meanpool"
    vocab_size: int = 100
    hidden_size: int = 16
    head: str = "classifier"
    num_labels: int = 2
    initializer_range: float = 0.02


@register
class MeanPool(Model):
    """Masked mean of the token embeddings, then Linear(hidden -> labels)."""

    kind = "meanpool"
    Config = MeanPoolConfig
    HEADS = ("classifier",)
    INHERITED_FIELDS = ("vocab_size",)

    def input_spec(self) -> dict[str, int]:
        return {"input_ids": 2, "attention_mask": 2}

    def init(self, rng: jax.Array) -> dict:
        c = self.config
        k_embed, k_out = jax.random.split(rng)
        return {"embed": c.initializer_range * jax.random.normal(k_embed, (c.vocab_size,
                                                                           c.hidden_size)),
                "out": {"kernel": c.initializer_range * jax.random.normal(
                    k_out, (c.hidden_size, c.num_labels)), "bias": jnp.zeros(c.num_labels)}}

    def logical_axes(self):
        return {"embed": P("vocab", "embed"),
                "out": {"kernel": P("embed", "labels"), "bias": P("labels")}}

    def apply(self, params, batch, *, wants: Wants = NOTHING, train: bool = False, rngs=None):
        if wants.hidden_states or wants.attention:
            raise ValueError("a mean-pooling model has no layers to capture")
        x = jnp.take(params["embed"], batch["input_ids"], axis=0)
        mask = batch["attention_mask"][..., None].astype(x.dtype)
        pooled = (x * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
        logits = pooled @ params["out"]["kernel"] + params["out"]["bias"]
        return Outputs(last_hidden_state=x, pooled=pooled, logits=logits)

    def forward_flops_per_token(self, seq_len: int, predictions_per_seq=None) -> float:
        c = self.config
        return 2.0 * c.hidden_size * c.num_labels / seq_len


@dataclasses.dataclass(frozen=True)
class EnsembleOptions:
    temperature: float = 1.0


@register_method
class EnsembleCalibratedKd(Method):
    """Soft CE against the mean of two teachers' distributions, through a trained per-class bias
    on the student's logits that is part of the product (`exported_params`)."""

    name = "ensemble_calibrated_kd"
    Options = EnsembleOptions
    ROLES = {"student": "classifier", "teacher": "classifier", "second": "classifier"}
    exported_params = ("calibration",)

    def init_params(self, rng):
        labels = self.student.config.num_labels
        return {"calibration": {"bias": jnp.zeros(labels)}, "scratch": {"w": jnp.zeros(labels)}}

    def param_axes(self):
        return {"calibration": {"bias": P("labels")}, "scratch": {"w": P("labels")}}

    def loss(self, params, outputs, batch, rng=None):
        t = self.options.temperature
        target = (jax.nn.softmax(outputs["teacher"].logits / t)
                  + jax.nn.softmax(outputs["second"].logits / t)) / 2
        logits = outputs["student"].logits + params["calibration"]["bias"] + params["scratch"]["w"]
        ce = -(target * jax.nn.log_softmax(logits / t)).sum(-1).mean()
        return ce, {"loss/ensemble_ce": ce}


# --- the import graph ------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module a file imports (`from a.b import c` counts as a.b and a.b.c)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_loop_checkpoints_and_method_base_import_no_bert():
    files = [*sorted((PACKAGE / "train").rglob("*.py")), PACKAGE / "checkpoint.py",
             PACKAGE / "methods" / "base.py"]
    assert len(files) > 5
    for f in files:
        bert = {m for m in _imports(f) if m == "jaxdistill.models.bert"}
        assert not bert, f"{f.relative_to(PACKAGE.parent)} imports {bert}"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the repository's contracts (.importlinter) on the package under
    `root` (its parent on PYTHONPATH)."""
    import os

    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                           " lint_imports_command()", "--config",
                           str(PACKAGE.parent / ".importlinter"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_rules_hold():
    """Every room imports only the rooms below it (docs/architecture.md), no package holds a
    cycle, lazy imports included: the contracts of .importlinter."""
    proc = _lint(PACKAGE.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("file, line, broken", [
    # an upward import, lazy: a model reaching for the loop
    ("models/bert.py", "    from jaxdistill.train import loop  # noqa", "Rooms import only"),
    # a cycle inside a room: two data modules importing each other
    ("data/words.py", "from jaxdistill.data import masking  # noqa", "No import cycle"),
])
def test_import_rules_catch_an_upward_import_and_a_cycle(tmp_path, file, line, broken):
    import shutil

    shutil.copytree(PACKAGE, tmp_path / "jaxdistill",
                    ignore=shutil.ignore_patterns("__pycache__", "configs", "*.json", "*.txt"))
    target = tmp_path / "jaxdistill" / file
    text = target.read_text()
    if line.startswith("    "):  # inside the first function: a lazy import
        head, body = text.split("\ndef ", 1)
        name, rest = body.split("\n", 1)
        text = f"{head}\ndef {name}\n{line}\n{rest}"
    else:
        text += f"\n{line}\n"
        if file == "data/words.py":  # and the other direction
            other = tmp_path / "jaxdistill" / "data" / "masking.py"
            other.write_text(other.read_text() + "\nfrom jaxdistill.data import words  # noqa\n")
    target.write_text(text)
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f"{broken}" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout[-3000:]


# --- a non-BERT student through the real task loop -------------------------------------------


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    from helpers import REPO, cli_env

    proc = subprocess.run([sys.executable, str(HERE), *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _args(run_dir: Path, teacher: Path, *extra: str) -> list[str]:
    from helpers import TINY_TASK

    return ["finetune", f"run_dir={run_dir}", "method.name=kd", f"teacher.path={teacher}/best",
            "student.kind=meanpool", "student.init=random", "student.hidden_size=16",
            "learning_rate=5e-2", "steps=12", "save_every=4", "eval_every=6", *TINY_TASK, *extra]


def test_meanpool_student_kd_resume_evaluate_export(tmp_path, tiny_classifier):
    from helpers import interrupt_at_first_checkpoint, read_metrics

    straight = tmp_path / "straight"
    summary = json.loads(_cli(*_args(straight, tiny_classifier)).stdout.strip().splitlines()[-1])
    assert summary["best_step"] > 0 and summary["hf_dir"] == str(straight / "hf")

    run_dir = tmp_path / "run"
    interrupt_at_first_checkpoint([str(HERE), *_args(run_dir, tiny_classifier)], run_dir,
                                  signal.SIGKILL)
    ckpts = run_dir / "checkpoints"
    stopped = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert stopped < 12, "the run finished before it was killed; the test proves nothing"
    _cli(*_args(run_dir, tiny_classifier))  # the same command resumes

    def losses_and_dev(rows):
        return {r["step"]: {k: v for k, v in r.items()
                            if k == "loss" or k.startswith(("loss/", "dev_"))} for r in rows}

    assert losses_and_dev(read_metrics(run_dir)) == losses_and_dev(read_metrics(straight))
    meta = json.loads(next((run_dir / "checkpoints").glob("*/meta/*")).read_text())
    assert meta["model"]["kind"] == "meanpool"

    export = json.loads((straight / "hf" / "config.json").read_text())
    assert export["format"] == "jaxdistill-native" and export["kind"] == "meanpool"
    best = json.loads(next((straight / "best" / "checkpoints").glob("*/meta/*")).read_text())
    from helpers import TINY_TASK

    for model in (straight / "best", straight / "hf"):
        ev = json.loads(_cli("evaluate", "--model", str(model), *TINY_TASK).stdout.strip()
                        .splitlines()[-1])
        assert ev["dev_accuracy"] == best["best"]["value"], model
        assert ev["parameters"] == 16 * 2 + 2 + meta["model"]["vocab_size"] * 16


def test_two_named_teachers_and_exported_method_params(tmp_path, tiny_classifier):
    """A method with two teacher roles ('teacher' and teachers.second) and a parameter that is
    part of the product: it lands in the best checkpoint and beside the export."""
    import numpy as np

    from helpers import REPO, cli_env, read_metrics
    from jaxdistill import checkpoint
    from jaxdistill.convert import EXPORTED_PARAMS, read_params_file

    run_dir = tmp_path / "ens"
    args = [*_args(run_dir, tiny_classifier, "steps=4", "eval_every=2"),
            "method.name=ensemble_calibrated_kd", f"teachers.second.path={tiny_classifier}/best"]
    _cli(*args)
    rows = read_metrics(run_dir)
    assert all(np.isfinite(r["loss/ensemble_ce"]) for r in rows if "loss" in r)
    step_dir = checkpoint.find_step_dir(run_dir / "best")
    saved = checkpoint.read_exported_params(step_dir)
    assert set(saved) == {"calibration"}  # 'scratch' trains but is not part of the product
    assert np.abs(saved["calibration"]["bias"]).max() > 0  # trained
    beside = read_params_file(run_dir / "hf" / EXPORTED_PARAMS)
    np.testing.assert_array_equal(beside["calibration"]["bias"], saved["calibration"]["bias"])

    without = [a for a in args if not a.startswith("teachers.")]
    proc = subprocess.run([sys.executable, str(HERE), *without, f"run_dir={tmp_path / 'x'}"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "teachers.second.path" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, str(HERE), *args, f"teachers.third.path={tiny_classifier}",
                           f"run_dir={tmp_path / 'y'}"], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "third" in proc.stderr, proc.stderr[-2000:]


if __name__ == "__main__":
    from jaxdistill.cli import main

    sys.exit(main(sys.argv[1:]))
