"""MiniLMv2 against TinyBERT's general distillation on the embedded task, with paired tests and
both general steps timed side by side, and its section of docs/results.md.

  python -m benchmarks.minilm                  # the pipeline, the step times, the section
  python -m benchmarks.minilm --render-only    # rewrite the section from the JSON

The runs are one pipeline, configs/pipelines/minilm.yaml (`jaxdistill pipeline`: the teacher
fine-tune; each student through MiniLMv2's and TinyBERT's general stage on the same tokens and
steps; the same vanilla-KD task stage; `evaluate --predictions` of each), so finished stages are
skipped when this runs again. Then McNemar's test with a paired bootstrap interval
(`jaxdistill.significance`) of MiniLMv2 against TinyBERT per student, and the general step of
each method timed in one process at the demo's shapes (benchmarks/jax_side.py, the loop's own
jitted step on one synthetic batch: the 3 x 312 student, the bf16 MiniLM-L6 teacher, batch 32 x
128), alternating A B A B so that drift on a shared machine hits both.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import cmlm, stages as stage_lib
from benchmarks.task_pipeline import REPO, paired_table
from jaxdistill import significance

BEGIN = "<!-- minilm: begin (python -m benchmarks.minilm) -->"
END = "<!-- minilm: end -->"
PIPELINE = REPO / "configs" / "pipelines" / "minilm.yaml"
# (label, MiniLMv2's general stage, TinyBERT's) per student. The pipeline names each general
# stage's evaluation `evaluate_<stage>` and its predictions `predictions/<stage>.jsonl`.
PAIRS = [("3 x 384 from teacher layers 1, 4, 6", "minilm", "tinybert"),
         ("3 x 312 from random weights", "minilm_312", "tinybert_312")]


def step_times(rounds: int) -> dict:
    """Seconds per general step of TinyBERT and MiniLMv2 at the demo's shapes, in this process,
    alternating the two methods `rounds` times; each round's own median step time."""
    from benchmarks import jax_side
    from benchmarks.common import BenchConfig

    base = BenchConfig(teacher_dtype="bfloat16", steps=5, warmup=2, repeats=3)
    out: dict = {"tinybert": [], "minilm": [], "config": dataclasses.asdict(base)}
    with tempfile.TemporaryDirectory(prefix="jaxdistill-minilm-") as tmp:
        for i in range(rounds):
            for method in ("tinybert", "minilm"):
                bc = dataclasses.replace(base, method=method)
                report = jax_side.run(bc, Path(tmp) / f"{method}{i}", export=False).report
                out[method].append(report["step_time_s"])
                print(f"{method} round {i}: {report['step_time_s']:.4f} s/step", flush=True)
    for method in ("tinybert", "minilm"):
        out[f"{method}_median_s"] = statistics.median(out[method])
    out["ratio"] = out["minilm_median_s"] / out["tinybert_median_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="the pipeline's root (default: its recipe's)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "minilm.json"))
    ap.add_argument("--results", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds of the step timing")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--step-times-only", action="store_true",
                    help="print the step timing as JSON and stop (what main runs in a child)")
    args = ap.parse_args()
    if args.step_times_only:
        print("RESULT" + json.dumps(step_times(args.rounds)))
        return
    if args.render_only:
        cmlm.write_section(Path(args.results), render(json.loads(Path(args.out).read_text())),
                           BEGIN, END)
        return
    command = [sys.executable, "-m", "jaxdistill.cli", "pipeline", str(PIPELINE)]
    if args.root:
        command.append(f"root={args.root}")
    subprocess.run(command, cwd=REPO, check=True)
    root = Path(args.root) if args.root else REPO / "runs" / "pipelines" / "minilm"
    results = json.loads((root / "results.json").read_text())
    preds = root / "predictions"
    tests = {label: significance.compare_files(preds / f"{tb}.jsonl", preds / f"{ml}.jsonl")
             for label, ml, tb in PAIRS}
    # The step timing in a process of its own: nothing else compiled or allocated in it.
    child = subprocess.run([sys.executable, "-m", "benchmarks.minilm", "--step-times-only",
                            "--rounds", str(args.rounds)], cwd=REPO, check=True,
                           capture_output=True, text=True)
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT"))
    out = {"machine": f"{platform.machine()} with {os.cpu_count()} CPU cores",
           "date": time.strftime("%Y-%m-%d"), "pipeline": results,
           "commands": {name: stage["command"]
                        for name, stage in stage_lib.finished(root).items()},
           "paired_tests": tests, "step_times": json.loads(line[len("RESULT"):])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    cmlm.write_section(Path(args.results), render(out), BEGIN, END)
    print(json.dumps({"out": args.out, "ratio": round(out["step_times"]["ratio"], 3)}))


def render(out: dict) -> str:
    models = {m["stage"]: m for m in out["pipeline"]["models"]}
    seconds = out["pipeline"]["stage_seconds"]
    teacher = models["evaluate_teacher"]
    lines = ["## MiniLMv2 against TinyBERT's general distillation", "",
             f"Produced by `python -m benchmarks.minilm` ({out['machine']}, {out['date']}), which "
             "runs `jaxdistill pipeline configs/pipelines/minilm.yaml`. General stage: the "
             "packaged MiniLM-L6 (6 x 384, 12 heads, bf16) teaches each student for 120 steps of "
             "32 x 128 tokens of the packaged IMDB text (the demo's tokens and steps), either by "
             "MiniLMv2 (configs/minilm_demo*.yaml: the q-q, k-k and v-v relations of the "
             "teacher's last layer into the student's last layer, 12 relation heads) or by "
             "TinyBERT's general distillation (configs/demo*.yaml: embeddings, every hidden state "
             "through a projection, every attention map of the uniform layer map). Task stage, the "
             "same for all: vanilla KD from the fine-tuned teacher (configs/task/kd.yaml, 360 "
             "steps). Dev set: 852 Rotten Tomatoes sentences; the teacher "
             f"(configs/task/teacher.yaml) reaches {teacher['value']:.4f}.", "",
             "| student | general stage | dev accuracy | share of teacher | parameters | "
             "general stage time |", "|---|---|---|---|---|---|"]
    for label, ml, tb in PAIRS:
        for method, stage in (("MiniLMv2", ml), ("TinyBERT", tb)):
            m = models[f"evaluate_{stage}"]
            lines.append(f"| {label} | {method} | {m['value']:.4f} | {m['share_of_teacher']:.1%} "
                         f"| {m['parameters'] / 1e6:.1f} M | {seconds[stage] / 60:.1f} min |")
    lines += paired_table([(label, out["paired_tests"][label]) for label, _, _ in PAIRS],
                          "MiniLMv2 minus TinyBERT", "TinyBERT", "MiniLMv2")
    st = out["step_times"]
    cfg = st["config"]
    lines += ["", f"General step time at the demo's shapes (benchmarks/jax_side.py in one process, "
              f"{len(st['minilm'])} alternating rounds, median of each round's median over "
              f"{cfg['repeats']} x {cfg['steps']} steps; student 3 x 312, batch {cfg['batch']} x "
              f"{cfg['seq']}, teacher bf16): TinyBERT {1000 * st['tinybert_median_s']:.0f} ms, "
              f"MiniLMv2 {1000 * st['minilm_median_s']:.0f} ms: **{st['ratio']:.2f}x** "
              f"(rounds: TinyBERT {', '.join(f'{1000 * x:.0f}' for x in st['tinybert'])} ms; "
              f"MiniLMv2 {', '.join(f'{1000 * x:.0f}' for x in st['minilm'])} ms).", "",
              "| stage | wall time | command |", "|---|---|---|"]
    for name, command in out["commands"].items():
        lines.append(f"| {name} | {seconds.get(name, 0) / 60:.1f} min | `{command}` |")
    lines += ["", f"Total: {out['pipeline']['total_seconds'] / 60:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
