"""Masked-LM corruption of one example in pure NumPy (BERT's create_pretraining_data scheme).

num_to_predict = min(P, max(1, round(n_candidates * mlm_probability))) positions are chosen among
the non-special tokens (never [CLS], [SEP], [PAD] or [MASK]; [UNK] may be, as in BERT); of those 80% become [MASK], 10% a
random non-special token, 10% stay as they are. With `smoothing` > 0 positions are chosen with
probability proportional to count(token)^-smoothing (DistilBERT's mlm_smoothing, 0.7 there), so
rare tokens are masked more often; counts come from the prepared data (token_counts.npy).

P = max_predictions(seq_len, p) = ceil(seq_len * p): BERT's 20 at seq_len 128. The number
actually chosen, round(n * p) with n <= seq_len - 2, never exceeds it, so nothing is truncated.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxdistill.errors import UserError

MASK_PROB = 0.8  # of the chosen positions, replaced by [MASK]
RANDOM_PROB = 0.1  # replaced by a random token; the remaining 0.1 keep the original


def max_predictions(seq_len: int, mlm_probability: float) -> int:
    """P: the fixed width of masked_positions / masked_ids / masked_weights."""
    # The epsilon keeps float error from adding a slot (100 * 0.2 = 20.000000000000004).
    return max(1, math.ceil(seq_len * mlm_probability - 1e-9))


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingSpec:
    """What masking needs to know about the vocabulary and the recipe."""

    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]  # never masked, never drawn as random replacements (sorted)
    mlm_probability: float
    max_predictions: int
    log_weights: np.ndarray | None = None  # float64[vocab]: -smoothing*log(count); None = uniform
    is_special: np.ndarray = dataclasses.field(init=False, repr=False)  # bool[vocab] lookup

    def __post_init__(self):
        if not 0.0 < self.mlm_probability < 1.0:
            raise UserError(f"data.mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        is_special = np.zeros(self.vocab_size, bool)
        is_special[list(self.special_ids)] = True
        object.__setattr__(self, "is_special", is_special)  # frozen: set once, here


def make_spec(vocab_size: int, special_ids: dict, seq_len: int, mlm_probability: float,
              smoothing: float = 0.0, counts: np.ndarray | None = None) -> MaskingSpec:
    """A MaskingSpec; `smoothing` > 0 needs the token `counts` of the prepared data.

    Special ids are all of `special_ids` but 'unk': as in BERT, [UNK] may be masked.
    """
    if smoothing < 0:
        raise UserError(f"data.mlm_smoothing must be >= 0 (0 = uniform, DistilBERT: 0.7), got {smoothing}.")
    log_weights = None
    if smoothing > 0:
        if counts is None or len(counts) != vocab_size:
            raise ValueError("mlm smoothing needs token counts of length vocab_size")
        # DistilBERT: weight max(count, 1)^-smoothing (unseen tokens do not divide by zero).
        log_weights = -smoothing * np.log(np.maximum(np.asarray(counts, np.float64), 1.0))
    specials = tuple(sorted({int(v) for k, v in special_ids.items() if k != "unk"}))
    return MaskingSpec(vocab_size=vocab_size, mask_id=int(special_ids["mask"]),
                       special_ids=specials, mlm_probability=mlm_probability,
                       max_predictions=max_predictions(seq_len, mlm_probability),
                       log_weights=log_weights)


def _random_tokens(rng: np.random.Generator, n: int, spec: MaskingSpec) -> np.ndarray:
    """Uniform draws over the vocabulary without the special ids (shifted past each of them)."""
    r = rng.integers(0, spec.vocab_size - len(spec.special_ids), size=n)
    for s in spec.special_ids:  # ascending: each skip may push r past the next special id
        r = r + (r >= s)
    return r


def choose_positions(rng: np.random.Generator, candidates: np.ndarray, num: int,
                     log_weights: np.ndarray | None) -> np.ndarray:
    """`num` distinct candidates, uniformly or with probability proportional to exp(log_weight).

    The weighted case uses Gumbel top-k, which draws exactly as successive sampling without
    replacement (numpy's choice(p=..., replace=False)) but in one vectorised step.
    """
    if log_weights is None:
        return rng.permutation(candidates)[:num]
    keys = log_weights + rng.gumbel(size=len(candidates))
    if num >= len(candidates):
        return candidates
    return candidates[np.argpartition(-keys, num - 1)[:num]]


def mask_tokens(ids: np.ndarray, rng: np.random.Generator,
                spec: MaskingSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt one unpadded example.

    Returns (input_ids [n] int32 after corruption, masked_positions [P] int32 ascending,
    masked_ids [P] int32 original tokens, masked_weights [P] float32), padded with 0.
    """
    ids = np.asarray(ids, dtype=np.int32)
    P = spec.max_predictions
    candidates = np.flatnonzero(~spec.is_special[ids])
    num = min(P, max(1, int(round(len(candidates) * spec.mlm_probability))), len(candidates))
    positions = np.zeros(P, np.int32)
    labels = np.zeros(P, np.int32)
    weights = np.zeros(P, np.float32)
    out = ids.copy()
    if num == 0:
        return out, positions, labels, weights
    lw = None if spec.log_weights is None else spec.log_weights[ids[candidates]]
    chosen = np.sort(choose_positions(rng, candidates, num, lw))
    u = rng.random(num)
    replace = np.where(u < MASK_PROB, spec.mask_id, out[chosen])
    is_random = (u >= MASK_PROB) & (u < MASK_PROB + RANDOM_PROB)
    if is_random.any():
        replace = np.where(is_random, _random_tokens(rng, num, spec), replace)
    labels[:num] = ids[chosen]
    out[chosen] = replace
    positions[:num] = chosen
    weights[:num] = 1.0
    return out, positions, labels, weights
