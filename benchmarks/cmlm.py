"""C-MLM on WordNet definition modelling end to end, timed, and its results rows.

  python -m benchmarks.cmlm                      # runs/cmlm_*, writes benchmarks/results/cmlm.json
  python -m benchmarks.cmlm --root /tmp/c --scale 0.1

Stages, each one `jaxdistill` command on the shipped recipes (configs/teacher_mlm.yaml,
configs/task/cmlm_*.yaml), run dirs under --root: the packaged MiniLM's MLM head -> the
conditional-MLM teacher started from it -> its top-K targets -> the student with KD -> the same
student without the teacher -> `jaxdistill evaluate` of both students on dev and test (beam 5,
length penalty 0.6, and greedy; every output kept for sacreBLEU's paired bootstrap of KD against
no KD) and of the teacher (masked-token accuracy). The pipeline runner runs them as one
pipeline, --root/cmlm_pipeline/pipeline.yaml (benchmarks/stages.py): a finished stage is skipped
when this runs again, a stopped one resumes, a changed one starts over with what reads it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import stages as stage_lib
from jaxdistill import config as config_lib, significance
from jaxdistill.data.seq2seq import read_topk
from jaxdistill.methods.cmlm import CmlmOptions
from benchmarks.task_pipeline import REPO, TASK


# Teachers are scored at the method's default masking, the reference's 15%.
TEACHER_EVAL_MASKING = CmlmOptions.mask_probability


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cmlm.json"))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every step budget")
    ap.add_argument("--results", default=str(REPO / "docs" / "results.md"),
                    help="the Markdown file whose C-MLM section is rewritten")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the section from --out without running anything")
    ap.add_argument("--compare-topk", nargs=2, metavar=("BASELINE", "OTHER"),
                    help="two teachers' top-K files of the same pairs: print the paired test of "
                         "how often each ranks the target token first and holds it")
    args = ap.parse_args()
    if args.compare_topk:
        print(json.dumps(compare_teachers(*map(Path, args.compare_topk)), indent=2))
        return
    if args.render_only:
        write_section(Path(args.results), render(json.loads(Path(args.out).read_text())))
        return
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    plan, evaluations, keys = chain(root, args.scale)
    outputs = root / "cmlm_outputs"
    done = stage_lib.run({**plan, **evaluations}, root / "cmlm_pipeline")
    stages = {name: done[name] for name in plan}
    evals = {keys[name]: done[name]["summary"] for name in evaluations}
    # KD against no KD on the same pairs: sacreBLEU's paired bootstrap.
    tests = {f"{split}/beam{beam}": significance.compare_files(
        outputs / f"student_nokd_{split}_beam{beam}.jsonl",
        outputs / f"student_kd_{split}_beam{beam}.jsonl")
        for split in ("dev", "test") for beam in (5, 1)}
    # Teacher-forced token accuracy, KD against no KD: a paired bootstrap over pairs.
    token_tests = {split: significance.compare_token_accuracy(
        outputs / f"student_nokd_{split}_beam5.jsonl", outputs / f"student_kd_{split}_beam5.jsonl")
        for split in ("dev", "test")}
    demo = sum(stages[s]["minutes"] for s in ("teacher_mlm", "teacher", "topk", "student_kd"))
    options = config_lib.read_yaml(TASK / "cmlm_student.yaml")["method"]["options"]
    out = {"machine": f"{platform.machine()} with {os.cpu_count()} CPU cores",
           "scale": args.scale, "stages": stages, "evaluations": evals,
           "kd": {k: options[k] for k in ("alpha", "temperature", "top_k")},
           "paired_tests": tests, "token_accuracy_tests": token_tests,
           "teacher_targets": target_agreement(root / "cmlm" / "topk.jsonl"),
           "demo_minutes": demo,
           "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    write_section(Path(args.results), render(out))
    print(json.dumps({"out": args.out, "demo_minutes": round(demo, 1)}))


def target_counts(topk: Path) -> dict[str, np.ndarray]:
    """Per pair of a top-K file: its target tokens, how many of them the teacher ranks first
    ("top1") and how many its top K hold ("in_topk")."""
    targets = read_topk(topk)
    gold, ids = targets["target_ids"], targets["topk_ids"]
    real = gold >= 0  # read_topk pads past each target with -1
    return {"tokens": real.sum(1), "top1": ((ids[..., 0] == gold) & real).sum(1),
            "in_topk": ((ids == gold[..., None]).any(-1) & real).sum(1)}


def target_agreement(topk: Path) -> dict:
    """How often the teacher's soft targets (the top-K file) rank the training target's own
    token first, and hold it at all: what the KD term can teach beyond the labels."""
    counts = target_counts(topk)
    tokens = int(counts["tokens"].sum())
    return {"tokens": tokens, "top1": int(counts["top1"].sum()) / max(tokens, 1),
            "in_topk": int(counts["in_topk"].sum()) / max(tokens, 1)}


def compare_teachers(baseline: Path, other: Path, samples: int = 2_000) -> dict:
    """OTHER's top-K file against BASELINE's, on the same pairs: a paired bootstrap over pairs
    of the share of target tokens ranked first and of those held in the top K."""
    missing = [str(path) for path in (baseline, other) if not path.is_file()]
    if missing:
        print(f"--compare-topk: no such file: {', '.join(missing)} (give two `jaxdistill augment` "
              f"method cmlm_topk outputs, e.g. runs/cmlm/topk.jsonl).", file=sys.stderr)
        raise SystemExit(2)
    a, b = target_counts(baseline), target_counts(other)
    if not np.array_equal(a["tokens"], b["tokens"]):
        print(f"{baseline} and {other} do not hold the same pairs' targets: compare the top-K "
              f"files of one task split and size.", file=sys.stderr)
        raise SystemExit(2)
    return {key: significance.paired_token_accuracy(a[key], b[key], a["tokens"], samples=samples)
            for key in ("top1", "in_topk")}


def chain(root: Path, scale_factor: float = 1.0) -> tuple[dict, dict, dict]:
    """(training stages, evaluation stages, stage -> its key in the evaluations): every command
    of the benchmark, stage name -> `jaxdistill` argv."""
    teacher, topk = root / "cmlm_teacher", root / "cmlm" / "topk.jsonl"
    scale = [] if scale_factor == 1.0 else ["steps=%d" % max(2, int(500 * scale_factor))]
    student_scale = [] if scale_factor == 1.0 else [f"epochs={4 * scale_factor}"]
    mlm_head = root / "teacher_mlm"
    plan = {
        "teacher_mlm": ["pretrain", "--config", str(REPO / "configs" / "teacher_mlm.yaml"),
                        f"run_dir={mlm_head}"],
        "teacher": ["finetune", "--config", str(TASK / "cmlm_teacher.yaml"),
                    f"run_dir={teacher}", f"student.init={mlm_head}", *scale],
        "topk": ["augment", "--config", str(TASK / "cmlm_topk.yaml"), f"out={topk}",
                 f"teacher={teacher}/best"],
        "student_kd": ["finetune", "--config", str(TASK / "cmlm_student.yaml"),
                       f"run_dir={root}/cmlm_student", f"teacher.path={teacher}/best",
                       f"task.augmented={topk}", *student_scale],
        "student_nokd": ["finetune", "--config", str(TASK / "cmlm_nokd.yaml"),
                         f"run_dir={root}/cmlm_nokd", f"teacher.path={teacher}/best",
                         *student_scale],
    }
    recipe = str(TASK / "cmlm_student.yaml")
    outputs = root / "cmlm_outputs"
    evaluations, keys = {}, {}  # stage -> argv; stage -> its key in `evals`
    for name in ("student_kd", "student_nokd"):
        model = f"{root}/cmlm_{'student' if name == 'student_kd' else 'nokd'}/best"
        for split in ("dev", "test"):
            for beam in (5, 1):
                stage = f"evaluate_{name}_{split}_beam{beam}"
                keys[stage] = f"{name}/{split}/beam{beam}"
                evaluations[stage] = [
                    "evaluate", "--model", model, "--config", recipe, "--split", split,
                    f"decode.beam_size={beam}", "--predictions",
                    str(outputs / f"{name}_{split}_beam{beam}.jsonl")]
    # The teacher trains with 40% of the target masked; it is scored at the reference's 15%
    # (TEACHER_EVAL_MASKING), closer to the one slot in 7 its top-K targets mask, and comparable
    # with teachers trained at 15%.
    for split in ("dev", "test"):
        keys[f"evaluate_teacher_{split}"] = f"teacher/{split}"
        evaluations[f"evaluate_teacher_{split}"] = [
            "evaluate", "--model", f"{teacher}/best", "--config", str(TASK / "cmlm_teacher.yaml"),
            "--split", split, f"method.options.mask_probability={TEACHER_EVAL_MASKING}"]
    return plan, evaluations, keys


BEGIN, END = "<!-- cmlm: begin (python -m benchmarks.cmlm) -->", "<!-- cmlm: end -->"


def write_section(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace (or append) a benchmark's marked section of docs/results.md (C-MLM's by
    default). It sits below the task pipeline's hand-written marker, so regenerating that table
    keeps it."""
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _share(evaluation: dict, split: str) -> str:
    value = evaluation.get(f"{split}_token_accuracy")
    return "-" if value is None else f"{value:.4f}"


def _p(test: dict, resamples: int) -> str:
    """A bootstrap p-value of 0 only says fewer than one resample in `resamples` crossed 0."""
    return f"< {1 / resamples:.0e}" if test["p_value"] == 0 else f"{test['p_value']:.3g}"


def render(out: dict) -> str:
    ev, st = out["evaluations"], out["stages"]
    kd = out.get("kd", {"alpha": 0.5, "temperature": 10, "top_k": 8})  # before it was recorded
    rows = [("student without the teacher (alpha 0)", "student_nokd"),
            (f"student with the C-MLM teacher's top-{kd['top_k']} soft targets (alpha "
             f"{kd['alpha']:g}, T {kd['temperature']:g})", "student_kd")]
    scale = "" if out["scale"] == 1 else f" --scale {out['scale']}"
    lines = [
        "## C-MLM: a conditional-MLM BERT teacher distilled into a Seq2Seq student", "",
        f"Produced by `python -m benchmarks.cmlm{scale}` ({out['machine']}, "
        f"{out.get('date', 'date not recorded')}). Task: WordNet "
        "definition modelling (word ; example sentence -> gloss, Debian `wordnet-base`), "
        f"{st['topk']['summary']['pairs']:,} training pairs, 300 dev and 300 test pairs of the "
        "fixed-seed splits. Teacher: the "
        "packaged MiniLM-L6 with the MLM head of configs/teacher_mlm.yaml, fine-tuned as a "
        "conditional MLM (configs/task/cmlm_teacher.yaml). Students: the BART-shaped "
        "encoder-decoder of configs/task/cmlm_student.yaml, same data and budget. BLEU is "
        "sacreBLEU (13a) against lowercased references (the vocabulary is uncased); decoding "
        "speed is sentences/s of `jaxdistill evaluate` on the test split (batch 100, key/value "
        "cache). Cross entropy is nats per target token, teacher-forced, with each pair's own "
        "source and with the sources shuffled across the pairs (a student that ignores its "
        "source scores the same on both); token accuracy is the share of target tokens the "
        "student ranks first, teacher-forced; distinct outputs are of the 300 test pairs.", "",
        "| model | dev BLEU (beam 5) | test BLEU (beam 5) | dev BLEU (greedy) | test BLEU "
        "(greedy) | test CE, true / shuffled sources | token accuracy (dev / test) "
        "| distinct test outputs (beam 5 / greedy) | parameters | sentences/s (beam 5 / greedy) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for label, key in rows:
        b5d, b5t = ev[f"{key}/dev/beam5"], ev[f"{key}/test/beam5"]
        g_d, g_t = ev[f"{key}/dev/beam1"], ev[f"{key}/test/beam1"]
        lines.append(f"| {label} | {b5d['dev_bleu']:.2f} | {b5t['test_bleu']:.2f} | "
                     f"{g_d['dev_bleu']:.2f} | {g_t['test_bleu']:.2f} | "
                     f"{b5t['test_cross_entropy']:.3f} / "
                     f"{b5t['test_cross_entropy_shuffled_sources']:.3f} | "
                     f"{_share(b5d, 'dev')} / {_share(b5t, 'test')} | "
                     f"{b5t['distinct_outputs']} / {g_t['distinct_outputs']} | "
                     f"{b5t['parameters'] / 1e6:.1f} M | {b5t['sentences_per_sec']:.1f} / "
                     f"{g_t['sentences_per_sec']:.1f} |")
    lines += ["", "KD against no KD on the same pairs (sacreBLEU's paired bootstrap, 1,000 "
              "resamples; significant when p < 0.05):", "",
              "| split, decoding | no KD | KD | difference | p | significant |",
              "|---|---|---|---|---|---|"]
    for name, test in out["paired_tests"].items():
        lines.append(f"| {name.replace('/', ', ')} | {test['a']:.2f} | {test['b']:.2f} | "
                     f"{test['difference']:+.2f} | {test['p_value']:.3g} | "
                     f"{'yes' if test['significant'] else 'no'} |")
    if "token_accuracy_tests" in out:
        lines += ["", "Token accuracy, KD against no KD on the same pairs (paired bootstrap over "
                  f"the pairs, {significance.BOOTSTRAP_SAMPLES:,} resamples):", "",
                  "| split | no KD | KD | difference (95% interval) | p | significant |",
                  "|---|---|---|---|---|---|"]
        for split, test in out["token_accuracy_tests"].items():
            low, high = test["ci95"]
            lines.append(f"| {split} | {test['a']:.4f} | {test['b']:.4f} | "
                         f"{test['difference']:+.4f} ({low:+.4f} to {high:+.4f}) | "
                         f"{_p(test, significance.BOOTSTRAP_SAMPLES)} | {'yes' if test['significant'] else 'no'} |")
    t_dev, t_test = ev["teacher/dev"], ev["teacher/test"]
    lines += ["", f"Teacher: masked-token accuracy {t_dev['masked_accuracy']:.4f} (dev) / "
              f"{t_test['masked_accuracy']:.4f} (test), masked-token perplexity "
              f"{t_dev['masked_ppl']:.1f} / {t_test['masked_ppl']:.1f}, at "
              f"{TEACHER_EVAL_MASKING:.0%} of the target masked, "
              f"{t_test['parameters'] / 1e6:.1f} M parameters."]
    if "teacher_targets" in out:
        agree = out["teacher_targets"]
        lines += [f"Its soft targets (the top-{kd['top_k']} file, every training target token "
                  f"masked once) rank the target's own token first for {agree['top1']:.1%} of "
                  f"the {agree['tokens']:,} training target tokens and hold it among the "
                  f"{kd['top_k']} for {agree['in_topk']:.1%}."]
    lines += ["",
              "| stage | wall time | command |", "|---|---|---|"]
    for name in ("teacher_mlm", "teacher", "topk", "student_kd", "student_nokd"):
        # Recipe paths as a user types them, wherever the checkout that ran them was.
        command = re.sub(r"\S*/(configs/)", r"\1", st[name]["command"])
        lines.append(f"| {name} | {st[name]['minutes']:.1f} min | `{command}` |")
    lines += ["", f"The demo (MLM head, teacher, top-K targets, KD student): "
              f"{out['demo_minutes']:.1f} min.",
              "", "First test pairs, beam 5:", "",
              "| source | reference | without the teacher | with the teacher |", "|---|---|---|---|"]
    pairs = zip(ev["student_nokd/test/beam5"]["samples"], ev["student_kd/test/beam5"]["samples"])
    lines += [f"| {a['source']} | {a['reference']} | {a['output']} | {b['output']} |"
              for a, b in pairs]
    dev, test = out["paired_tests"]["dev/beam5"], out["paired_tests"]["test/beam5"]
    met = dev["difference"] > 0 and test["difference"] > 0 and test["significant"]
    lines += ["", f"**Against the target** (the KD student ahead of the no-KD student on dev and "
              f"test, significant on test): {'met' if met else 'not met'}, "
              f"{dev['difference']:+.2f} BLEU on dev (p = {dev['p_value']:.3g}) and "
              f"{test['difference']:+.2f} on test (p = {test['p_value']:.3g}), beam 5, "
              f"one training run of each student (the bootstrap resamples the pairs, not the "
              f"training: another seed can move a student by more than this margin)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
