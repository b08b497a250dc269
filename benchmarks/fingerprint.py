"""Numbers a refactor must not change, bit for bit on the same machine.

  python -m benchmarks.fingerprint --out /tmp/before.json          # before the change
  python -m benchmarks.fingerprint --out /tmp/after.json --compare /tmp/before.json
(run the first from a checkout of the commit before the change: `git worktree add`)

Four short runs of the shipped recipes, each a `jaxdistill` process: the embedded demo's first 20
losses (general distillation), a short `finetune` of the task teacher (its dev accuracy and
losses), a short MT-DNN multi-task run (per-task dev metrics) and a short C-MLM student run (its
losses; needs the C-MLM teacher and top-K file of the README's C-MLM commands, else skipped and
said so). Every loss is read from the run's metrics.jsonl as written (float32 printed by JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.stages import command as _run


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in _metrics(run_dir) if "loss" in m]


def _dev(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k.startswith("dev_")} for m in _metrics(run_dir)
            if any(k.startswith("dev_") for k in m)]


def _demo(root: Path) -> list:
    _run(["pretrain", f"run_dir={root}", "steps=20", "log_every=1", "save_every=20",
          "data.max_documents=300"])
    return _losses(root)


def _finetune(root: Path) -> dict:
    _run(["finetune", "--config", "configs/task/teacher.yaml", f"run_dir={root}", "steps=20",
          "log_every=1", "eval_every=20", "save_every=20", "task.max_dev_examples=256"])
    return {"losses": _losses(root), "dev": _dev(root)}


TASKS = ("rotten_tomatoes", "imdb", "bbc_news")


def _mtdnn(root: Path) -> dict:
    _run(["finetune", "--config", "configs/task/mtdnn/student.yaml", f"run_dir={root}",
          "steps=12", "log_every=1", "eval_every=12", "save_every=12",
          *(f"tasks.{t}.max_train_examples=128" for t in TASKS),
          *(f"tasks.{t}.max_dev_examples=128" for t in TASKS)])
    return {"losses": _losses(root), "dev": _dev(root)}


def _cmlm(root: Path, teacher: Path, topk: Path) -> list:
    _run(["finetune", "--config", "configs/task/cmlm_student.yaml", f"run_dir={root}",
          "steps=12", "log_every=1", "eval_every=12", "save_every=12",
          "optimizer.warmup_steps=4", f"teacher.path={teacher}", f"task.augmented={topk}",
          "task.max_dev_examples=64"])
    return _losses(root)


def fingerprint(root: Path, out: Path, cmlm_teacher: Path, cmlm_topk: Path) -> dict:
    """Each part's numbers, written to `out` as soon as they exist; parts already in `out` are
    kept (rerun a part by deleting its key)."""
    numbers = json.loads(out.read_text()) if out.is_file() else {}
    parts = {"demo_losses": _demo, "finetune": _finetune, "mtdnn": _mtdnn}
    if cmlm_teacher.is_dir() and cmlm_topk.is_file():
        parts["cmlm_losses"] = lambda r: _cmlm(r, cmlm_teacher, cmlm_topk)
    else:
        print(f"C-MLM skipped: no {cmlm_teacher} or {cmlm_topk}", file=sys.stderr)
    for name, part in parts.items():
        if name not in numbers:
            numbers[name] = part(root / name)
            out.write_text(json.dumps(numbers, indent=1))
    return numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fingerprint", description=__doc__)
    p.add_argument("--out", required=True, help="JSON file the numbers are written to")
    p.add_argument("--compare", help="an earlier --out file: exit 1 unless equal, bit for bit")
    p.add_argument("--cmlm-teacher", default="runs/cmlm_teacher/best")
    p.add_argument("--cmlm-topk", default="runs/cmlm/topk.jsonl")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        numbers = fingerprint(Path(tmp), Path(args.out), Path(args.cmlm_teacher).resolve(),
                              Path(args.cmlm_topk).resolve())
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = [k for k in sorted(set(before) | set(numbers)) if before.get(k) != numbers.get(k)]
        print("identical" if not differ else f"differ: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
