"""GLUE-style task metrics in plain NumPy: accuracy, f1, mcc, pearson, spearman.

They agree with scikit-learn / SciPy (accuracy_score, f1_score with class 1 positive,
matthews_corrcoef, pearsonr, spearmanr with average ranks for ties); where those give NaN or
warn (a constant vector, no positives at all), these give 0.0 so a dev metric is always a number.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of exact matches."""
    if labels.size == 0:
        return 0.0
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 with class 1 as the positive class (any other class counts as negative)."""
    pred, true = predictions == 1, labels == 1
    tp = float(np.sum(pred & true))
    wrong = float(np.sum(pred != true))  # false positives + false negatives
    if tp == 0.0:
        return 0.0
    return 2.0 * tp / (2.0 * tp + wrong)


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (the multiclass form, as sklearn's matthews_corrcoef)."""
    classes, inv = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true, pred = inv[:labels.size], inv[labels.size:]
    k = len(classes)
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (true, pred), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, n = np.trace(confusion), confusion.sum()
    cov_ytyp = correct * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    denom = cov_ytyt * cov_ypyp
    if denom == 0.0:
        return 0.0
    return float(cov_ytyp / np.sqrt(denom))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either vector is constant."""
    x = np.asarray(predictions, np.float64)
    y = np.asarray(labels, np.float64)
    if x.size < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    if denom == 0.0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip((x @ y) / denom, -1.0, 1.0))


def rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy's rankdata 'average')."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the average ranks."""
    return pearson(rank_average(predictions), rank_average(labels))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{name: value} for each metric in `names`.

    predictions: class ids for classification, scores for regression; same length as labels.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(METRICS)}")
    predictions = np.asarray(predictions).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels")
    return {n: METRICS[n](predictions, labels) for n in names}


def predictions_from_logits(logits: np.ndarray, num_labels: int) -> np.ndarray:
    """Class ids (argmax) from [N, num_labels] logits, or the scores logits[:, 0] for regression."""
    logits = np.asarray(logits)
    if num_labels == 1:
        return logits.reshape(logits.shape[0], -1)[:, 0].astype(np.float64)
    return np.argmax(logits, axis=-1).astype(np.int64)


def score_logits(logits: np.ndarray, labels: np.ndarray, num_labels: int,
                 metric_names: Sequence[str]) -> dict[str, float]:
    """The named metrics of a classifier's (or regressor's) logits against the labels."""
    preds = predictions_from_logits(logits, num_labels)
    return compute(metric_names, preds, labels[:len(preds)])
