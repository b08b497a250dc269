"""Classifiers' dev-set examples/s measured side by side in one process.

  python -m benchmarks.eval_speed runs/pipeline/task_teacher/best runs/pipeline/task_kd/best

Every model is loaded and compiled first; then the timed passes go round the models in turn
(teacher, student, teacher, student, ...), so a slow minute of a shared CPU hits every model
alike, and the speed of each is the median of its passes. Prints one JSON object: per model
the passes and their median, and each model's median as a multiple of the first model's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys


def measure(models: list[str], recipe: str, passes: int, batch_size: int) -> dict:
    from jaxdistill.data import tasks
    from jaxdistill.train import kinds
    from jaxdistill.train.kinds import task as finetune

    _, cfg = kinds.load("evaluate", recipe)
    task = tasks.load_task(cfg.task)
    placed = []
    for ref in models:
        _, arrays, predict, batch_sh, params, mesh = finetune.load_classifier(ref, task,
                                                                              cfg.seq_len)
        with mesh:  # compile outside the timing
            finetune.set_logits(predict, batch_sh, params, arrays, batch_size)
        placed.append((mesh, (predict, batch_sh, params, arrays, batch_size)))
    rates: list[list[float]] = [[] for _ in models]
    for _ in range(passes):
        for i, (mesh, args) in enumerate(placed):
            with mesh:
                rates[i].append(finetune.pass_rate(*args))
    medians = [statistics.median(r) for r in rates]
    return {"task": task.name, "seq_len": cfg.seq_len, "batch_size": batch_size,
            "passes": passes, "models": [
                {"model": ref, "examples_per_sec": med, "passes_examples_per_sec": r,
                 "vs_first": med / medians[0]}
                for ref, med, r in zip(models, medians, rates)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="classifier checkpoints or HF dirs; the first is "
                                             "the reference (the teacher)")
    p.add_argument("--config", default="configs/task/teacher.yaml",
                   help="recipe giving task.* and seq_len")
    p.add_argument("--passes", type=int, default=7, help="timed passes per model")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.models, args.config, args.passes, args.batch_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
