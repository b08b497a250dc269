"""Host arrays onto the devices: a process's rows of a global batch, the global jax.Array it
makes with the other processes' rows, and fixed-size evaluation batches of a whole set."""
from __future__ import annotations

import typing
from typing import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxdistill.data.tasks.batches import eval_batches


def to_global(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding],
              global_batch: int) -> dict[str, jax.Array]:
    """Each process's rows assembled into the global batch, sharded as `shardings` say."""
    return {k: jax.make_array_from_process_local_data(
        shardings[k], v, (global_batch, *v.shape[1:])) for k, v in batch.items()}


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's share of a global batch's rows."""
    n, p, i = len(next(iter(batch.values()))), jax.process_count(), jax.process_index()
    return {k: v[i * n // p:(i + 1) * n // p] for k, v in batch.items()}


def device_batches(arrays: dict[str, np.ndarray], keys: typing.Iterable[str], batch_sh: dict,
                   batch_size: int, weights_into: str | None = None
                   ) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
    """Fixed-size global eval batches of `arrays[keys]` on the devices, with each row's weight
    (0 for the padding rows of the last batch); `weights_into` multiplies them into that
    per-position weight key instead (masked positions, target tokens)."""
    for batch in eval_batches({k: arrays[k] for k in keys}, batch_size):
        weights = batch.pop("weights")
        if weights_into is not None:
            batch[weights_into] = batch[weights_into] * weights[:, None]
        yield to_global(process_rows(batch), batch_sh, batch_size), weights
