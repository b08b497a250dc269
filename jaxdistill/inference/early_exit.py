"""Adaptive inference with exit branches (FastBERT), batched so that exited rows stop costing.

A row exits at the first layer whose branch's normalised entropy is below `speed`; the rows that
go on are compacted after every layer that lets some exit, into the smallest bucket (a power of
two, at least `min_bucket`, at most the batch) that holds them, padded with copies of a live
row. So a batch of 128 whose rows mostly exit early runs its later layers on 16 or 8 rows, and
only a handful of shapes ever compile: one layer function serves every layer (the layer's params
are an argument), per bucket. `speed <= 0` runs the full model's own forward pass, no branch:
exactly its predictions, and the baseline of every measured speed-up.

`speed_sweep` is `jaxdistill evaluate --speeds ...`: per speed, the task metric, the average
exit layer, FLOPs per example and their ratio to the full model, and measured examples/s at
batch 1 and at a large batch, as a JSON report and a PNG plot.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdistill.errors import UserError
from jaxdistill.models import exit_branches
from jaxdistill.models.base import LayerByLayer, Model


class EarlyExit:
    """A layered classifier (`embed`, `layer`, `classify`) plus stacked exit branches."""

    def __init__(self, model: Model, params: dict, branches: dict,
                 shape: exit_branches.BranchShape, min_bucket: int = 8):
        if not isinstance(model, LayerByLayer):
            raise UserError(f"A '{model.kind}' model does not run layer by layer "
                            f"(models.LayerByLayer), so it cannot exit early.")
        self.model, self.shape, self.min_bucket = model, shape, min_bucket
        self.num_layers = model.config.num_layers
        if jax.tree.leaves(branches)[0].shape[0] != self.num_layers - 1:
            raise UserError(f"{jax.tree.leaves(branches)[0].shape[0]} exit branches for a "
                            f"{self.num_layers}-layer model; FastBERT has one after every layer "
                            f"but the last.")
        params = jax.device_put(params)
        self.params = params
        self.layers = [model.layer_params(params, i) for i in range(self.num_layers)]
        self.branches = [jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), branches)
                         for i in range(self.num_layers - 1)]
        self._embed = jax.jit(model.embed)
        self._layer = jax.jit(model.layer)
        self._branch = jax.jit(self._branch_step)
        self._final = jax.jit(lambda params, x: model.classify(params, x))
        self._full = jax.jit(lambda params, batch: model.apply(params, batch).logits)
        self._take = jax.jit(lambda x, km, mask, idx: (x[idx], km[idx], mask[idx]))

    def _branch_step(self, branch, x, mask):
        logits = exit_branches.apply_one(self.shape, branch, x, mask)
        return logits, exit_branches.uncertainty(logits)

    def bucket(self, n: int, batch: int) -> int:
        return min(batch, max(self.min_bucket, 1 << max(n - 1, 0).bit_length()))

    def predict(self, batch: dict[str, np.ndarray], speed: float) -> tuple[np.ndarray, np.ndarray]:
        """(logits [B, labels], 1-based exit layer [B]) of one batch at `speed`."""
        size = len(batch["input_ids"])
        inputs = {k: jnp.asarray(v) for k, v in batch.items()}
        if speed <= 0:  # nothing can exit: the full model itself, one program, no branch
            return (np.asarray(self._full(self.params, inputs), np.float32),
                    np.full(size, self.num_layers, np.int64))
        mask = inputs["attention_mask"]
        x, key_mask = self._embed(self.params, inputs)
        rows, live = np.arange(size), size  # rows[j]: the input row in slot j (j < live)
        logits_out = np.zeros((size, self.shape.num_labels), np.float32)
        exit_layer = np.full(size, self.num_layers, np.int64)
        for i in range(self.num_layers - 1):
            x = self._layer(self.layers[i], x, key_mask)
            logits, unc = self._branch(self.branches[i], x, mask)
            unc = np.asarray(unc)[:live]
            done = unc < speed
            if not done.any():
                continue
            slots = np.flatnonzero(done)
            logits_out[rows[slots]] = np.asarray(logits)[slots]
            exit_layer[rows[slots]] = i + 1
            keep = np.flatnonzero(~done)
            if not len(keep):
                return logits_out, exit_layer
            width = self.bucket(len(keep), size)
            idx = np.concatenate([keep, np.full(width - len(keep), keep[0])]).astype(np.int32)
            x, key_mask, mask = self._take(x, key_mask, mask, jnp.asarray(idx))
            rows, live = rows[keep], len(keep)
        x = self._layer(self.layers[-1], x, key_mask)
        logits_out[rows] = np.asarray(self._final(self.params, x))[:live]
        return logits_out, exit_layer

    # --- accounting ---------------------------------------------------------------------------
    def flops_per_example(self, exit_layer: np.ndarray, seq_len: int, speed: float) -> float:
        """Mean model FLOPs per example: the layers each row ran and the branches it ran (none
        at speed 0); a layer costs 1/L of the full model (`Model.forward_flops_per_token`)."""
        full = self.full_flops(seq_len)
        per_layer = full / self.num_layers
        branch = exit_branches.flops_per_example(self.shape, seq_len) if speed > 0 else 0.0
        # A row that exits at layer k ran k layers and k branches; one that reaches the end ran
        # every layer and the L-1 branches.
        branches_run = np.minimum(exit_layer, self.num_layers - 1)
        return float(np.mean(exit_layer * per_layer + branches_run * branch))

    def full_flops(self, seq_len: int) -> float:
        return self.model.forward_flops_per_token(seq_len) * seq_len


# ---------------------------------------------------------------------------------------------
# `jaxdistill evaluate --speeds ...`


def parse_speeds(text: str) -> list[float]:
    try:
        speeds = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--speeds {text!r}: expected comma-separated numbers in [0, 1], e.g. "
                        f"0,0.1,0.5") from None
    if not speeds or any(not 0.0 <= s <= 1.0 for s in speeds):
        raise UserError(f"--speeds {text!r}: every speed must be in [0, 1] (0 = the full model).")
    return speeds


def load(model_ref: str) -> tuple[EarlyExit, Model, Path | None]:
    """The early-exit runner of a FastBERT export directory or checkpoint."""
    from jaxdistill.loading import load_exported, load_pretrained

    model, params, tok = load_pretrained(model_ref)
    exported, info = load_exported(model_ref)
    return build(model, params, exported, info, model_ref), model, tok


def build(model: Model, params: dict, exported: dict, info: dict, where: str) -> EarlyExit:
    """The runner from a model, its params and its exported FastBERT branches."""
    if "branches" not in exported or info.get("method") != "fastbert":
        raise UserError(f"{where} has no FastBERT exit branches (exported_params with "
                        f"'branches'); train them with `jaxdistill finetune --config "
                        f"configs/task/fastbert.yaml`.")
    try:
        shape = exit_branches.shape_of(model.config, **info.get("options", {}))
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: its exported_params.json options do not describe FastBERT "
                        f"branches ({e}).") from None
    return EarlyExit(model, params, exported["branches"], shape)


def speed_sweep(model_ref: str, task_cfg: Any, seq_len: int, batch_size: int,
                speeds: Sequence[float], report_dir: str | Path,
                latency_examples: int = 256) -> dict:
    """Metrics, exits, FLOPs and measured examples/s per speed; writes report.json and
    speed_sweep.png in report_dir."""
    from jaxdistill.data import tasks
    from jaxdistill.data.tasks import metrics as task_metrics

    runner, model, tok = load(model_ref)
    task = tasks.load_task(task_cfg)
    if tok is None:
        raise UserError(f"{model_ref} has no tokenizer files (vocab.txt or tokenizer.json).")
    if task.num_labels != model.config.num_labels:
        raise UserError(f"{model_ref} has {model.config.num_labels} labels, task '{task.name}' "
                        f"{task.num_labels}.")
    arrays = tasks.encode(task.dev, tok, seq_len, regression=False)
    inputs = {k: v for k, v in arrays.items() if k != "labels"}
    first = {k: v[:min(latency_examples, len(v))] for k, v in inputs.items()}
    full = runner.full_flops(seq_len)
    rows = []
    print(f"jaxdistill evaluate: FastBERT speed sweep of {model_ref}: {len(speeds)} speeds, each "
          f"over {len(task.dev)} dev examples at batch {batch_size} and {len(first['input_ids'])} "
          f"at batch 1", flush=True)
    began = time.perf_counter()
    for speed in tqdm(speeds, unit="speed", desc="speed sweep", dynamic_ncols=True):
        def run(data, size):
            # Real rows only (the last batch is shorter, not padded): a padding row would never
            # be sure of anything and would hold its batch to the last layer.
            out_logits, out_exit = [], []
            n = len(data["input_ids"])
            for start in range(0, n, size):
                logits, exits = runner.predict({k: v[start:start + size] for k, v in data.items()},
                                               speed)
                out_logits.append(logits)
                out_exit.append(exits)
            return np.concatenate(out_logits), np.concatenate(out_exit)

        run(inputs, batch_size)  # compiles every bucket this speed reaches, outside the timing
        t0 = time.perf_counter()
        logits, exits = run(inputs, batch_size)
        large_rate = len(logits) / (time.perf_counter() - t0)
        run({k: v[:2] for k, v in first.items()}, 1)
        t0 = time.perf_counter()
        single, _ = run(first, 1)
        small_rate = len(single) / (time.perf_counter() - t0)
        preds = task_metrics.predictions_from_logits(logits, task.num_labels)
        values = task_metrics.compute(task.metrics, preds, arrays["labels"])
        flops = runner.flops_per_example(exits, seq_len, speed)
        rows.append({"speed": speed, **values, "average_exit_layer": float(exits.mean()),
                     "flops_per_example": flops, "flops_ratio": flops / full,
                     "flops_speedup": full / flops,
                     "examples_per_sec_batch_1": small_rate,
                     f"examples_per_sec_batch_{batch_size}": large_rate})
    base = next((r for r in rows if r["speed"] == 0), rows[0])
    for r in rows:
        r["speedup_batch_1"] = r["examples_per_sec_batch_1"] / base["examples_per_sec_batch_1"]
        key = f"examples_per_sec_batch_{batch_size}"
        r[f"speedup_batch_{batch_size}"] = r[key] / base[key]
    report = {"model": str(model_ref), "task": task.name, "metric": task.select_metric,
              "examples": len(task.dev), "latency_examples": len(first["input_ids"]),
              "seq_len": seq_len, "batch_size": batch_size, "layers": runner.num_layers,
              "full_flops_per_example": full, "device": jax.devices()[0].device_kind,
              "baseline": "speed 0 (no branch runs: the plain classifier)" if base["speed"] == 0
              else f"speed {base['speed']}", "rows": rows}
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "speed_sweep.png")
    print(f"done: {len(rows)} speeds in {(time.perf_counter() - began) / 60:.1f} min -> "
          f"{out / 'report.json'}", flush=True)
    report["report"] = str(out / "report.json")
    report["plot"] = str(out / "speed_sweep.png")
    return report


def plot(report: dict, file: Path) -> None:
    """Accuracy against measured speed-up (batch 1 and large batch) and against FLOPs speed-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, metric, b = report["rows"], report["metric"], report["batch_size"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    acc = [r[metric] for r in rows]
    for key, label in ((f"speedup_batch_{b}", f"measured, batch {b}"),
                       ("speedup_batch_1", "measured, batch 1")):
        axes[0].plot([r[key] for r in rows], acc, "o-", label=label)
    axes[1].plot([r["flops_speedup"] for r in rows], acc, "o-", color="C2")
    for r, a in zip(rows, acc):
        axes[1].annotate(f"{r['speed']:g}", (r["flops_speedup"], a), fontsize=8,
                         textcoords="offset points", xytext=(3, 3))
    axes[0].set(xlabel="speed-up over the full model (examples/s)", ylabel=f"dev {metric}",
                title="measured")
    axes[1].set(xlabel="speed-up in FLOPs per example", title="FLOPs (labels: speed)")
    axes[0].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.axvline(1.0, color="grey", lw=0.8)
    fig.suptitle(f"FastBERT on {report['task']} ({report['layers']} layers, {report['device']})")
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


