"""Paired significance tests for the comparisons a results table draws.

Two models scored on the same examples: for accuracy, McNemar's exact test on the examples where
they disagree and a paired bootstrap of the accuracy difference (95% percentile interval); for
BLEU, sacreBLEU's paired bootstrap (`sacrebleu.significance.PairedTest`). Per-example
predictions come from `jaxdistill evaluate --predictions FILE` (JSON Lines, one row an example,
in the split's order); `compare_files` checks that two files score the same examples.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxdistill.errors import UserError

ALPHA = 0.05  # a difference is called significant when p < ALPHA
BOOTSTRAP_SAMPLES = 10_000
BLEU_SAMPLES = 1_000  # sacreBLEU's default for its paired bootstrap


def paired_accuracy(correct_a: Sequence[bool], correct_b: Sequence[bool],
                    samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """B against A on the same examples: accuracies, difference (B - A) with its paired-bootstrap
    95% interval, and McNemar's exact two-sided p-value."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise UserError(f"paired accuracy needs two equally long, non-empty lists of per-example "
                        f"outcomes (got {a.shape} and {b.shape}).")
    n = len(a)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = 1.0 if only_a + only_b == 0 else float(
        binomtest(only_b, only_a + only_b, 0.5, alternative="two-sided").pvalue)
    rows = np.random.default_rng(seed).integers(0, n, (samples, n))
    diffs = (b.astype(np.float64)[rows] - a.astype(np.float64)[rows]).mean(1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"test": "McNemar exact; paired bootstrap 95% interval", "examples": n,
            "a": float(a.mean()), "b": float(b.mean()), "difference": float(b.mean() - a.mean()),
            "ci95": [float(low), float(high)], "p_value": p, "only_a_right": only_a,
            "only_b_right": only_b, "significant": p < ALPHA}


def paired_bleu(hypotheses_a: Sequence[str], hypotheses_b: Sequence[str],
                references: Sequence[str], samples: int = BLEU_SAMPLES) -> dict:
    """B against A: corpus BLEU of each (sacreBLEU, lowercased references as `generate.bleu`)
    and sacreBLEU's paired bootstrap p-value (its fixed default seed) and 95% half-widths."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    if not len(hypotheses_a) == len(hypotheses_b) == len(references) > 0:
        raise UserError(f"paired BLEU needs as many outputs of each model as references (got "
                        f"{len(hypotheses_a)}, {len(hypotheses_b)}, {len(references)}).")
    test = PairedTest([("a", list(hypotheses_a)), ("b", list(hypotheses_b))],
                      metrics={"BLEU": BLEU()}, references=[[r.lower() for r in references]],
                      test_type="bs", n_samples=samples)
    _, scores = test()
    base, other = scores["BLEU"]
    # Identical outputs: sacreBLEU's statistic is 0 in every resample and its p-value the
    # smallest possible, 1 / (samples + 1); nothing differs, so p is 1.
    p = 1.0 if list(hypotheses_a) == list(hypotheses_b) else float(other.p_value)
    return {"test": f"sacreBLEU paired bootstrap ({samples} resamples)",
            "examples": len(references), "a": float(base.score), "b": float(other.score),
            "difference": float(other.score - base.score),
            "ci95_half_width": [float(base.ci), float(other.ci)], "p_value": p,
            "significant": p < ALPHA}


def paired_token_accuracy(right_a: Sequence[int], right_b: Sequence[int], tokens: Sequence[int],
                          samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """B against A: the share of target tokens each ranks first (teacher-forced), counted per
    example, and a paired bootstrap over examples of the difference: its 95% percentile
    interval and the two-sided p-value 2 * min(share of resamples <= 0, share >= 0)."""
    a, b, n = (np.asarray(x, np.float64) for x in (right_a, right_b, tokens))
    if not a.shape == b.shape == n.shape or a.ndim != 1 or n.sum() <= 0:
        raise UserError(f"paired token accuracy needs per-example counts of equal length with "
                        f"some tokens (got {a.shape}, {b.shape}, {n.shape}).")
    rows = np.random.default_rng(seed).integers(0, len(n), (samples, len(n)))
    diffs = (b[rows].sum(1) - a[rows].sum(1)) / n[rows].sum(1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    total = n.sum()
    return {"test": "paired bootstrap over examples (95% interval)", "examples": len(n),
            "tokens": int(total), "a": float(a.sum() / total), "b": float(b.sum() / total),
            "difference": float((b.sum() - a.sum()) / total), "ci95": [float(low), float(high)],
            "p_value": p, "significant": p < ALPHA}


def read_predictions(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such predictions file (write one with `jaxdistill evaluate "
                        f"--predictions FILE`).")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_files(path_a: str | Path, path_b: str | Path) -> dict:
    """The paired test of two `evaluate --predictions` files of the same examples: accuracy for
    classifiers (rows with `label`/`prediction`), BLEU for generators (`reference`/`output`)."""
    a, b = read_predictions(path_a), read_predictions(path_b)
    if len(a) != len(b) or not a:
        raise UserError(f"{path_a} has {len(a)} examples and {path_b} {len(b)}: a paired test "
                        f"needs the same examples in both.")
    key = "reference" if "reference" in a[0] else "label"
    if [r.get(key) for r in a] != [r.get(key) for r in b] or \
            [r.get("task") for r in a] != [r.get("task") for r in b]:
        raise UserError(f"{path_a} and {path_b} do not hold the same examples in the same order "
                        f"(their {key}s differ): evaluate both on the same task and split.")
    if key == "reference":
        return paired_bleu([r["output"] for r in a], [r["output"] for r in b],
                           [r["reference"] for r in a])
    return paired_accuracy([r["prediction"] == r["label"] for r in a],
                           [r["prediction"] == r["label"] for r in b])


def compare_token_accuracy(path_a: str | Path, path_b: str | Path) -> dict:
    """`paired_token_accuracy` of two Seq2Seq `evaluate --predictions` files of the same pairs."""
    a, b = read_predictions(path_a), read_predictions(path_b)
    if [r.get("reference") for r in a] != [r.get("reference") for r in b] or not a:
        raise UserError(f"{path_a} and {path_b} do not hold the same pairs in the same order.")
    if any("target_tokens_right" not in r for r in a + b):
        raise UserError(f"{path_a} or {path_b} has no per-pair token counts: write them again "
                        f"with this version's `jaxdistill evaluate --predictions`.")
    return paired_token_accuracy([r["target_tokens_right"] for r in a],
                                 [r["target_tokens_right"] for r in b],
                                 [r["target_tokens"] for r in a])


def verdict(test: dict, unit: str = "points") -> str:
    """One phrase for a table: the difference, its interval or p, and whether it is significant."""
    scale = 100.0 if "ci95" in test else 1.0
    diff = f"{scale * test['difference']:+.2f} {unit}"
    if "ci95" in test:
        low, high = (scale * x for x in test["ci95"])
        diff += f" (95% CI {low:+.2f} to {high:+.2f})"
    word = "significant" if test["significant"] else "not significant"
    return f"{diff}, p = {test['p_value']:.3g}: {word} at {ALPHA:.0%}"


def write_predictions(path: str | Path, rows: Sequence[dict]) -> str:
    """One JSON line per example (what `compare_files` reads); returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return str(path)
