"""MobileBERT's embedded demo end to end, timed, against the students it must beat, with paired
tests, and its section of docs/results.md.

  python -m benchmarks.mobilebert                 # run dirs under runs/, benchmarks/results/mobilebert.json
  python -m benchmarks.mobilebert --render-only   # rewrite the section from the JSON

Stages, each one `jaxdistill` command on the shipped recipes, run dirs under --root:
- the demo: the packaged MiniLM's MLM head (configs/teacher_mlm.yaml) -> progressive transfer
  and pretraining distillation into the MobileBERT-style student (configs/mobilebert_demo.yaml)
  -> fine-tuning on Rotten Tomatoes (configs/task/mobilebert_student.yaml);
- the comparisons: the TinyBERT student of similar size that also starts from random weights
  and reads the same tokens (configs/demo.yaml's 3 x 312) through the same task stage
  (configs/task/student.yaml), and the same MobileBERT architecture fine-tuned from random
  weights without any transfer. (The fine-tuned teacher is the task pipeline's, whose table
  gives its accuracy; this script does not retrain it.)
Then `jaxdistill evaluate --predictions` of each on the dev set and McNemar's test with a paired
bootstrap interval (`jaxdistill.significance`) of MobileBERT against each comparison, and how
far each layer moved in each phase (benchmarks/layer_movement.py). The pipeline runner runs the
stages as one pipeline, --root/mobilebert_pipeline/pipeline.yaml (benchmarks/stages.py): a
finished stage is skipped when this runs again, a stopped one resumes, a changed one starts over
with what reads it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks import cmlm, layer_movement, stages as stage_lib, task_pipeline
from benchmarks.task_pipeline import REPO, TASK
from jaxdistill import config, significance

BEGIN = "<!-- mobilebert: begin (python -m benchmarks.mobilebert) -->"
END = "<!-- mobilebert: end -->"
# The demo student's architecture from random weights; its vocabulary is the teacher's.
MOBILEBERT_ARCH = ["teacher.path=package:minilm", "student.kind=mobilebert", "student.init=random",
                   "student.hidden_size=384",
                   "student.num_layers=6", "student.num_heads=12", "student.embedding_size=128",
                   "student.intra_bottleneck_size=192", "student.intermediate_size=768",
                   "student.num_feedforward_networks=4", "student.trigram_input=true",
                   "student.normalization_type=no_norm", "student.hidden_act=relu"]
# MobileBERT's task recipe fine-tunes at 5e-4, the TinyBERT student's at 2e-4: the extra row
# gives the TinyBERT student MobileBERT's rate too (read from its recipe, so the two cannot drift
# apart), so the comparison is at each one's better rate.
ROWS = [("TinyBERT student (3 x 312, random init, TinyBERT general distillation), fine-tuned",
         "task_tinybert312"),
        ("the same TinyBERT student fine-tuned at MobileBERT's learning rate (5e-4)",
         "task_tinybert312_lr5e4"),
        ("MobileBERT architecture fine-tuned from random weights (no transfer)",
         "task_mobilebert_scratch"),
        ("MobileBERT-style student (transfer + distillation), fine-tuned", "task_mobilebert")]
COMPARISONS = [("MobileBERT vs the TinyBERT student", "task_tinybert312", "task_mobilebert"),
               ("MobileBERT vs no transfer", "task_mobilebert_scratch", "task_mobilebert")]


def mobilebert_task_rate() -> str:
    """configs/task/mobilebert_student.yaml's learning rate, written as in a command (5.0e-4)."""
    rate = config.read_yaml(TASK / "mobilebert_student.yaml")["learning_rate"]
    mantissa, exponent = f"{rate:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def plan(root: Path) -> dict[str, list[str]]:
    cfg = str(REPO / "configs")
    return {
        "teacher_mlm": ["pretrain", "--config", f"{cfg}/teacher_mlm.yaml",
                        f"run_dir={root / 'teacher_mlm'}"],
        "mobilebert_demo": ["pretrain", "--config", f"{cfg}/mobilebert_demo.yaml",
                            f"run_dir={root / 'mobilebert_demo'}",
                            f"teacher.path={root / 'teacher_mlm'}"],
        "task_mobilebert": ["finetune", "--config", str(TASK / "mobilebert_student.yaml"),
                            f"run_dir={root / 'task_mobilebert'}",
                            f"student.init={root / 'mobilebert_demo'}"],
        "tinybert312": ["pretrain", "--config", f"{cfg}/demo.yaml",
                        f"run_dir={root / 'tinybert312'}"],
        "task_tinybert312": ["finetune", "--config", str(TASK / "student.yaml"),
                             f"run_dir={root / 'task_tinybert312'}",
                             f"student.init={root / 'tinybert312'}"],
        "task_tinybert312_lr5e4": ["finetune", "--config", str(TASK / "student.yaml"),
                                   f"run_dir={root / 'task_tinybert312_lr5e4'}",
                                   f"student.init={root / 'tinybert312'}",
                                   f"learning_rate={mobilebert_task_rate()}"],
        "task_mobilebert_scratch": ["finetune", "--config",
                                    str(TASK / "mobilebert_student.yaml"),
                                    f"run_dir={root / 'task_mobilebert_scratch'}",
                                    *MOBILEBERT_ARCH],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mobilebert.json"))
    ap.add_argument("--results", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    if args.render_only:
        write_section(Path(args.results), render(json.loads(Path(args.out).read_text())))
        return
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    preds = root / "mobilebert_predictions"
    chain = plan(root)
    evaluations = {f"evaluate_{run}": ["evaluate", "--model", str(root / run / "best"), "--config",
                                       str(TASK / "teacher.yaml"), "--predictions",
                                       str(preds / f"{run}.jsonl")] for _, run in ROWS}
    done = stage_lib.run({**chain, **evaluations}, root / "mobilebert_pipeline")
    stages = {name: done[name] for name in chain}
    evals = {run: done[f"evaluate_{run}"]["summary"] for _, run in ROWS}
    tests = {name: significance.compare_files(preds / f"{a}.jsonl", preds / f"{b}.jsonl")
             for name, a, b in COMPARISONS}
    out = {"machine": f"{platform.machine()} with {os.cpu_count()} CPU cores",
           "date": time.strftime("%Y-%m-%d"), "stages": stages, "evaluations": evals,
           "paired_tests": tests,
           "layer_movement": layer_movement.movement(root / "mobilebert_demo"),
           "demo_minutes": sum(stages[s]["minutes"] for s in
                               ("teacher_mlm", "mobilebert_demo", "task_mobilebert"))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    write_section(Path(args.results), render(out))
    print(json.dumps({"out": args.out, "demo_minutes": round(out["demo_minutes"], 1)}))


def write_section(path: Path, section: str) -> None:
    cmlm.write_section(path, section, BEGIN, END)


def render(out: dict) -> str:
    ev, st = out["evaluations"], out["stages"]
    lines = ["## MobileBERT: progressive knowledge transfer, then pretraining distillation", "",
             f"Produced by `python -m benchmarks.mobilebert` ({out['machine']}, {out['date']}). "
             "General stage (configs/mobilebert_demo.yaml): the MLM-headed MiniLM of "
             "configs/teacher_mlm.yaml teaches a MobileBERT-style student with its depth, block "
             "width and heads (6 layers, 384 wide, 12 heads inside a 192-wide bottleneck, 4 "
             "FFNs, NoNorm, 128-d trigram embeddings started from the teacher's word table "
             "projected onto its 128 leading principal components): 25 steps of progressive "
             "transfer per layer (LAMB, learning rate 1e-2, 3x / 0.3x / 0 layer multipliers, "
             "trust ratio per layer), then 90 steps of pretraining distillation, batch 32 x 64 "
             "tokens of the packaged IMDB text (0.49 M tokens, the TinyBERT student's 120 x 32 x "
             "128). Task stage (configs/task/mobilebert_student.yaml): 360 steps on the labels "
             "at learning rate 5e-4; the TinyBERT student's recipe (configs/task/student.yaml) is "
             "the same at 2e-4, and a row below gives it 5e-4 too. Dev set: 852 Rotten Tomatoes "
             "sentences (one standard error of an accuracy near 0.75 is about 1.5 points); the "
             "fine-tuned teacher's accuracy is in the task pipeline's table above.", "",
             *task_pipeline.accuracy_table(ROWS, ev, None)]
    lines += task_pipeline.paired_table(
        [(name, out["paired_tests"][name]) for name, _, _ in COMPARISONS], "comparison",
        "the baseline", "MobileBERT")
    lines += ["", "How far each layer moved in each phase, ||W_end - W_start|| / ||W_start|| over "
              "the layer's tensors (`python -m benchmarks.layer_movement RUN`):", "",
              layer_movement.markdown(out["layer_movement"]), "",
              "| stage | wall time | command |", "|---|---|---|"]
    for name, stage in st.items():
        command = stage["command"].replace(str(REPO) + "/", "")
        lines.append(f"| {name} | {stage['minutes']:.1f} min | `{command}` |")
    lines += ["", f"The demo (MLM head, transfer + distillation, task stage): "
              f"{out['demo_minutes']:.1f} min."]
    tiny, scratch = (out["paired_tests"][n] for n, _, _ in COMPARISONS)
    lines += ["", f"**Against the targets** (at or above the TinyBERT student, above the same "
              f"architecture without transfer): {significance.verdict(tiny)} against the "
              f"TinyBERT student; {significance.verdict(scratch)} against no transfer."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
