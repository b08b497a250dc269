"""Batches of encoded task arrays: seeded training batches by step, padded evaluation batches."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxdistill.errors import UserError


def _num_rows(arrays: dict[str, np.ndarray]) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must be non-empty and of one length, got {sizes}")
    return next(iter(sizes.values()))


class TaskBatches:
    """Global training batches: batch `step` is a pure function of (arrays, seed, step).

    Epoch e visits every row once in the order of a permutation seeded by (seed, e); the last
    partial batch of an epoch is dropped. Resuming at any step gives exactly the same batches.

    With `lengths` (a row's tokens) and `pool` > 0, rows of similar length share a batch, as in
    OpenNMT's and fairseq's batching: the epoch's permutation is cut into pools of `pool`
    batches, each pool is sorted by length and cut into batches, and the batches' order is
    shuffled (seeded by (seed, e) too), so a batch can be cut to its longest row.
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
                 lengths: np.ndarray | None = None, pool: int = 0):
        self.arrays = arrays
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.num_rows = _num_rows(arrays)
        if global_batch_size <= 0:
            raise UserError(f"batch_size={global_batch_size} must be positive.")
        self.steps_per_epoch = self.num_rows // global_batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f"The train set has {self.num_rows} examples, fewer than one global "
                            f"batch of {global_batch_size}; lower batch_size or add data.")
        if pool > 0 and (lengths is None or len(lengths) != self.num_rows):
            raise ValueError("pool > 0 needs one length per row")
        self.lengths, self.pool = lengths, pool
        self._cached: tuple[int, np.ndarray] | None = None

    def _batches(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch, global batch] row indices of the epoch's batches."""
        # Cached: consecutive steps share an epoch, and it is a pure function of (seed, epoch).
        if self._cached is None or self._cached[0] != epoch:
            b, n = self.global_batch_size, self.steps_per_epoch
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)[:n * b]
            if self.pool > 0:
                pools = [perm[s:s + self.pool * b] for s in range(0, n * b, self.pool * b)]
                perm = np.concatenate([p[np.argsort(self.lengths[p], kind="stable")]
                                       for p in pools])
                order = np.random.default_rng([self.seed, epoch, 1]).permutation(n)
                self._cached = (epoch, perm.reshape(n, b)[order])
            else:
                self._cached = (epoch, perm.reshape(n, b))
        return self._cached[1]

    def indices(self, step: int) -> np.ndarray:
        """Row indices of global batch `step` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, k = divmod(step, self.steps_per_epoch)
        return self._batches(epoch)[k]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The full global batch number `step`."""
        idx = self.indices(step)
        return {k: v[idx] for k, v in self.arrays.items()}


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole set in order, in batches of exactly batch_size rows.

    The last batch is padded with zero rows; `weights` (float32 [B]) is 1 for real rows and 0 for
    padding, so metrics and losses can ignore the padding.
    """
    if batch_size <= 0:
        raise UserError(f"eval batch size {batch_size} must be positive.")
    n = _num_rows(arrays)
    for start in range(0, n, batch_size):
        real = min(batch_size, n - start)
        out = {}
        for k, v in arrays.items():
            chunk = v[start:start + real]
            if real < batch_size:
                pad = np.zeros((batch_size - real, *v.shape[1:]), v.dtype)
                chunk = np.concatenate([chunk, pad])
            out[k] = chunk
        weights = np.zeros(batch_size, np.float32)
        weights[:real] = 1.0
        out["weights"] = weights
        yield out


def cut_width(mask: np.ndarray, multiple: int) -> int:
    """The slots a batch keeps when cut to its longest row: the last slot `mask` [B, L] holds
    anywhere, rounded up to a multiple of `multiple` (a few compiled shapes), at most L."""
    used = np.flatnonzero(np.asarray(mask).any(axis=0))
    longest = int(used[-1]) + 1 if len(used) else 1
    return min(mask.shape[1], -(-longest // multiple) * multiple)


def cut_to_longest(batch: dict[str, np.ndarray], groups: dict[str, tuple[str, ...]],
                   multiple: int) -> dict[str, np.ndarray]:
    """`batch` with each group's keys cut on axis 1 to `cut_width` of the group's mask key.
    Only trailing padding is dropped: masked models give the same outputs on the real slots."""
    out = dict(batch)
    for mask_key, keys in groups.items():
        width = cut_width(batch[mask_key], multiple)
        for k in keys:
            if k in out:
                out[k] = out[k][:, :width]
    return out
