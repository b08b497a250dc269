"""Paired significance tests: McNemar's exact test against hand-computed binomial sums, the
paired bootstrap interval, sacreBLEU's paired bootstrap on clear and null differences, and the
checks that two prediction files hold the same examples."""
from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from helpers import run_cli
from jaxdistill import significance
from jaxdistill.errors import UserError


def _outcomes(both, only_a, only_b, neither):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_mcnemar_exact_p_against_hand_values():
    a, b = _outcomes(50, 2, 8, 40)
    test = significance.paired_accuracy(a, b)
    # Two-sided exact binomial on the 10 discordant pairs, 2 of one kind: 2 * P(X <= 2).
    hand = 2 * sum(comb(10, k) for k in range(3)) / 2 ** 10  # 0.109375
    assert test["p_value"] == pytest.approx(hand, rel=1e-9)
    assert (test["only_a_right"], test["only_b_right"], test["examples"]) == (2, 8, 100)
    assert test["difference"] == pytest.approx(0.06) and not test["significant"]
    a, b = _outcomes(50, 1, 15, 34)
    hand = 2 * sum(comb(16, k) for k in range(2)) / 2 ** 16
    strong = significance.paired_accuracy(a, b)
    assert strong["p_value"] == pytest.approx(hand, rel=1e-9) and strong["significant"]
    assert significance.paired_accuracy([True, False], [True, False])["p_value"] == 1.0


def test_paired_bootstrap_interval_brackets_the_difference_and_is_seeded():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.7
    b = np.where(rng.random(400) < 0.9, a, ~a)
    test = significance.paired_accuracy(a, b, samples=2000, seed=3)
    low, high = test["ci95"]
    assert low < test["difference"] < high
    assert high - low < 0.1  # paired: only the discordant rows vary
    assert significance.paired_accuracy(a, b, samples=2000, seed=3)["ci95"] == [low, high]
    with pytest.raises(UserError, match="equally long"):
        significance.paired_accuracy(a, b[:-1])


def test_paired_bleu_tells_a_clear_gain_from_none():
    refs = [f"the {w} sat on the mat near the {v}" for w in ("cat", "dog", "bird", "fox")
            for v in ("door", "tree", "wall", "lake", "road")] * 3
    good = [r.replace("near", "by") for r in refs]
    poor = [" ".join(r.split()[:3]) for r in refs]
    clear = significance.paired_bleu(poor, good, refs, samples=200)
    assert clear["b"] > clear["a"] and clear["p_value"] < 0.05 and clear["significant"]
    same = significance.paired_bleu(good, good, refs, samples=200)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and not same["significant"]
    # Two systems as good as each other, each wrong on different rows.
    left = [r.replace("near", "by") if i % 2 else r.replace("mat", "rug") for i, r in enumerate(refs)]
    right = [r.replace("mat", "rug") if i % 2 else r.replace("near", "by") for i, r in enumerate(refs)]
    null = significance.paired_bleu(left, right, refs, samples=200)
    assert abs(null["difference"]) < 2 and not null["significant"]


def test_compare_files_pairs_examples_and_names_mismatches(tmp_path):
    a = [{"label": i % 2, "prediction": i % 2} for i in range(30)]
    b = [{"label": i % 2, "prediction": 0} for i in range(30)]
    fa = significance.write_predictions(tmp_path / "a.jsonl", a)
    fb = significance.write_predictions(tmp_path / "b.jsonl", b)
    test = significance.compare_files(fa, fb)
    assert test["a"] == 1.0 and test["b"] == 0.5 and test["only_a_right"] == 15
    other = significance.write_predictions(tmp_path / "c.jsonl",
                                           [{"label": 1, "prediction": 1}] * 30)
    with pytest.raises(UserError, match="same examples in the same order"):
        significance.compare_files(fa, other)
    with pytest.raises(UserError, match="30 examples and .* 29"):
        significance.compare_files(fa, significance.write_predictions(tmp_path / "d.jsonl",
                                                                      a[:29]))
    out = run_cli("compare", fa, fb).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["p_value"] == test["p_value"] and "significant at 5%" in result["verdict"]
    bad = run_cli("compare", fa, str(tmp_path / "missing.jsonl"), check=False)
    assert bad.returncode == 2 and "no such predictions file" in " ".join(bad.stderr.split())
    assert "Traceback" not in bad.stderr


def test_paired_token_accuracy_counts_tokens_and_tells_a_clear_gain_from_none(tmp_path):
    tokens = [4, 6, 2, 8] * 25
    a = [1, 3, 1, 4] * 25  # 9 of 20 per block of four pairs
    b = [2, 4, 1, 6] * 25  # 13 of 20
    test = significance.paired_token_accuracy(a, b, tokens, samples=2000)
    assert (test["a"], test["b"]) == (pytest.approx(0.45), pytest.approx(0.65))
    assert test["difference"] == pytest.approx(0.2) and test["tokens"] == 500
    low, high = test["ci95"]
    assert 0 < low < 0.2 < high and test["p_value"] == 0.0 and test["significant"]
    # Each better on different pairs by the same count: no difference.
    left, right = [2, 1] * 50, [1, 2] * 50
    null = significance.paired_token_accuracy(left, right, [3] * 100, samples=2000)
    assert null["difference"] == 0 and null["p_value"] > 0.5 and not null["significant"]
    rows = [{"reference": f"r{i}", "output": "x", "target_tokens": n, "target_tokens_right": k}
            for i, (n, k) in enumerate(zip(tokens, a))]
    fa = significance.write_predictions(tmp_path / "a.jsonl", rows)
    fb = significance.write_predictions(tmp_path / "b.jsonl", [
        {**r, "target_tokens_right": k} for r, k in zip(rows, b)])
    assert significance.compare_token_accuracy(fa, fb)["difference"] == pytest.approx(0.2)
    old = significance.write_predictions(tmp_path / "c.jsonl", [
        {"reference": r["reference"], "output": "x"} for r in rows])
    with pytest.raises(UserError, match="no per-pair token counts"):
        significance.compare_token_accuracy(fa, old)
