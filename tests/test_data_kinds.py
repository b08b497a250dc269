"""Kinds of training data are a registry: a kind and a method on it, defined in this file alone,
run through `jaxdistill finetune` (checkpoints, SIGKILL, exact resume, export) and `jaxdistill
evaluate` with no edit to cli.py, train/, config.py or methods/.

The kind, 'marker': rows of random token ids, labelled 1 when a marker token occurs in them;
its keys are its own (`examples`, `length`, `marker`: no `task`). The method, 'marker_ce': the
student's classifier on those labels. Run as a script, this file registers both and then runs
the jaxdistill CLI, which is how the subprocesses below see them.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np
import optax

from jaxdistill import loading
from jaxdistill.config import TaskRunConfig
from jaxdistill.data.tasks import TaskBatches
from jaxdistill.methods.base import STUDENT, Method, register as register_method
from jaxdistill.train import loop
from jaxdistill.train.kinds import DataKind, register
from jaxdistill.train.kinds.base import task_source, total_steps, train
from jaxdistill.train.kinds.task import make_predict, placed_predict, set_logits

HERE = Path(__file__).resolve()


@dataclasses.dataclass(frozen=True)
class MarkerConfig(TaskRunConfig):
    _RANGES: ClassVar[dict[str, str]] = {**TaskRunConfig._RANGES, "examples": "[8, inf)",
                                          "length": "[4, inf)", "marker": "[5, inf)"}

    examples: int = 256
    length: int = 12
    marker: int = 7


def marker_arrays(cfg: MarkerConfig, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """[CLS] x ... [SEP] rows of random ids (>= 5, past BERT's specials); label: marker in x."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, (cfg.examples, cfg.length)).astype(np.int32)
    ids[::2, rng.integers(1, cfg.length - 1)] = cfg.marker  # half the rows hold it for sure
    ids[:, 0], ids[:, -1] = 2, 3
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
            "labels": (ids == cfg.marker).any(axis=1).astype(np.int32)}


def accuracy(predict, batch_sh, params, dev: dict[str, np.ndarray], batch_size: int) -> float:
    logits, _ = set_logits(predict, batch_sh, params, dev, batch_size)
    return float(np.mean(np.argmax(logits, -1) == dev["labels"]))


class MarkerEvaluator:
    metric, higher_is_better = "accuracy", True

    def __init__(self, setup: loop.Setup, dev: dict[str, np.ndarray], batch_size: int):
        self.dev, self.batch_size = dev, batch_size
        self.predict, self.batch_sh = make_predict(setup.student,
                                                   setup.state_sh.params["student"], setup.mesh)

    def __call__(self, params: Any) -> tuple[dict[str, float], float]:
        return {"accuracy": accuracy(self.predict, self.batch_sh, params, self.dev,
                                     self.batch_size)}, 1.0


def run(cfg: MarkerConfig) -> dict:
    roles = loop.build_roles(cfg, num_labels=2)
    vocab = roles.models[STUDENT].config.vocab_size
    batches = TaskBatches(marker_arrays(cfg, vocab, cfg.seed), cfg.batch_size, cfg.seed)
    dev = marker_arrays(cfg, vocab, cfg.seed + 1000)
    steps = total_steps(cfg, batches)
    return train(cfg, roles, task_source(batches), total_steps=steps, seq_len=cfg.length,
                 header=f"marker {cfg.marker} in {cfg.examples} rows of {cfg.length} ids",
                 evaluator=lambda setup: MarkerEvaluator(setup, dev, cfg.eval_batch_size))


def evaluate(cfg: MarkerConfig, request) -> dict:
    model, params, _ = loading.load_pretrained(request.model)
    predict, batch_sh, params, mesh = placed_predict(model, params)
    dev = marker_arrays(cfg, model.config.vocab_size, cfg.seed + 1000)
    with mesh:
        return {"model": request.model, "dev_accuracy": accuracy(predict, batch_sh, params, dev,
                                                                 cfg.eval_batch_size)}


register(DataKind("marker", MarkerConfig, run, "rows of ids with or without a marker",
                  evaluate=evaluate))


@dataclasses.dataclass(frozen=True)
class MarkerOptions:
    label_smoothing: float = 0.0


@register_method
class MarkerCe(Method):
    name = "marker_ce"
    Options = MarkerOptions
    DATA_KIND = "marker"
    ROLES = {STUDENT: "classifier"}

    def loss(self, params, outputs, batch, rng=None):
        ce = optax.softmax_cross_entropy(
            outputs[STUDENT].logits.astype(np.float32),
            optax.smooth_labels(jax.nn.one_hot(batch["labels"], 2),
                                self.options.label_smoothing)).mean()
        return ce, {"loss/ce": ce}


# --- the test: only the CLI, in subprocesses that import this file ----------------------------


def _recipe(tmp_path: Path, tiny: Path) -> Path:
    recipe = tmp_path / "marker.yaml"
    recipe.write_text(f"steps: 12\nbatch_size: 16\neval_batch_size: 32\nlearning_rate: 2.0e-3\n"
                      f"save_every: 4\neval_every: 6\nlog_every: 1\ntensorboard: false\n"
                      f"student: {{init: {tiny}}}\nmethod: {{name: marker_ce}}\n"
                      f"examples: 96\nlength: 10\n")
    return recipe


def _cli(*args: str) -> dict:
    from helpers import REPO, cli_env

    proc = subprocess.run([sys.executable, str(HERE), *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Reading a run's best/ checkpoint (the export at the end, evaluate) warns about nothing.
    assert "Metadata file does not exist" not in proc.stderr, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_kind_and_method_from_one_file_train_resume_and_evaluate(tmp_path, tiny):
    from helpers import interrupt_at_first_checkpoint, loss_columns, read_metrics

    recipe = _recipe(tmp_path, tiny)
    straight = tmp_path / "straight"
    summary = _cli("finetune", "--config", str(recipe), f"run_dir={straight}")
    assert summary["step"] == 12 and summary["best_step"] > 0
    run_dir = tmp_path / "run"
    interrupt_at_first_checkpoint([str(HERE), "finetune", "--config", str(recipe),
                                   f"run_dir={run_dir}"], run_dir, signal.SIGKILL)
    stopped = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert stopped < 12, "the run finished before it was killed; the test proves nothing"
    time.sleep(0.1)
    _cli("finetune", "--config", str(recipe), f"run_dir={run_dir}")  # the same command resumes

    def dev(rows):
        return {r["step"]: r["dev_accuracy"] for r in rows if "dev_accuracy" in r}

    assert loss_columns(read_metrics(run_dir)) == loss_columns(read_metrics(straight))
    assert dev(read_metrics(run_dir)) == dev(read_metrics(straight))
    ev = _cli("evaluate", "--model", str(straight / "best"), "--config", str(recipe))
    assert ev["dev_accuracy"] == summary["best_dev_accuracy"]
    # The kind's keys are strict: a classification key is an error naming the kind.
    from helpers import REPO, cli_env

    proc = subprocess.run([sys.executable, str(HERE), "finetune", "--config", str(recipe),
                           "task.name=imdb", f"run_dir={tmp_path / 'bad'}"], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "kind 'marker'" in proc.stderr, proc.stderr[-2000:]


if __name__ == "__main__":
    from jaxdistill.cli import main

    sys.exit(main(sys.argv[1:]))
