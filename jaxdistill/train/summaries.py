"""What the terminal tells a user at the start and at the end of a run (process 0 prints it;
the JSON line that scripts read stays the last line of stdout)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxdistill.convert import HF_KINDS

HF_CLASSES = {"classifier": "AutoModelForSequenceClassification", "mlm": "AutoModelForMaskedLM",
              "none": "AutoModel", "lm": "AutoModelForSeq2SeqLM"}


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def start_lines(setup: Any, command: str, total_steps: int, seq_len: int, start: int) -> list[str]:
    cfg, models = setup.cfg, setup.roles.models
    mesh = " ".join(f"{k}={v}" for k, v in setup.mesh.shape.items())
    device = jax.devices()[0]
    lines = [f"{command}: method {cfg.method.name}, "
             + (f"resuming from step {start}" if start else "fresh start")
             + f", run_dir {cfg.run_dir}",
             f"  student  {models['student'].kind}, {_millions(models['student'].num_params())} "
             f"parameters"]
    for role, params in setup.roles.teacher_params.items():
        n = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
        lines.append(f"  {role:<8} {models[role].kind}, {_millions(n)} parameters, frozen")
    lines += [f"  devices  {jax.device_count()} x {device.platform} ({device.device_kind}), "
              f"{jax.process_count()} process(es), mesh {mesh}",
              f"  batch    {cfg.batch_size} global x {seq_len} tokens, "
              f"{total_steps} steps"]
    return lines


def end_lines(summary: dict, head: str, kind: str, losses: list[float],
              token_rates: list[float], seconds: float, last_checkpoint: str | None) -> list[str]:
    done = "stopped (SIGTERM)" if summary.get("preempted") else "done"
    loss = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no step logged"
    rate = (f", {np.mean(token_rates[1:] or token_rates):,.0f} tokens/s"
            if token_rates else "")
    lines = [f"{done}: step {summary['step']} after {seconds / 60:.1f} min; {loss}{rate}"]
    if last_checkpoint:
        lines.append(f"  checkpoint  {last_checkpoint}")
    if summary.get("best_checkpoint"):
        metric = summary.get("metric", "")
        lines.append(f"  best        {summary['best_checkpoint']} (dev {metric} "
                     f"{summary.get(f'best_dev_{metric}', float('nan')):.4f} at step "
                     f"{summary.get('best_step')})")
    hf = summary.get("hf_dir")
    if hf:
        # A multi-task export holds one directory per task (tasks.json names them).
        where = str(Path(hf) / "<task>") if (Path(hf) / "tasks.json").is_file() else str(Path(hf))
        if kind in HF_KINDS:
            load = (f"transformers.{HF_CLASSES.get(head, 'AutoModel')}.from_pretrained("
                    f"{where!r})")
        else:
            load = f"jaxdistill.loading.load_pretrained({where!r})"
        lines += [f"  export      {hf}", f"  load it     {load}"]
    return lines
