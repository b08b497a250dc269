"""The pretraining input pipeline: prepared ArrayRecord shards -> masked host batches (grain).

Global batches do not depend on how many processes read them. The records are shuffled with
`seed` (a fresh order every epoch, grain's MapDataset shuffle-then-repeat), each position of that
endless sequence is masked with a generator grain seeds from (seed, position), and global batch k
is positions [k*B, (k+1)*B). Process p of P reads only rows [p*B/P, (p+1)*B/P) of every global
batch, which is exactly where `jax.make_array_from_process_local_data` puts them. So one process
with 4 devices and 2 processes with 2 devices each see the same batches row for row (dropout
included), and a run can move to another process count at any step.

The iterator is checkpointable: `get_state()` is a small JSON-serialisable dict (store it with
the model checkpoint); `set_state(state)` on a new iterator built with the same arguments makes
the following batches bit-identical to an uninterrupted run; `skip_to(step)` positions any
iterator at global batch `step` (what a restore onto another process count uses). The state
does not embed file paths, so the prepared directory may move between save and restore.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jaxdistill.data import records
from jaxdistill.data.masking import MaskingSpec, make_spec, mask_tokens
from jaxdistill.errors import UserError


class PreparedSource:
    """Random access to the records of a prepared directory (a grain RandomAccessDataSource).

    Its repr names the data by content (tokenizer, settings, counts), not by path: grain checks
    it when restoring an iterator state.
    """

    def __init__(self, prepared_dir: str | Path, manifest: dict):
        import grain

        self._source = grain.sources.ArrayRecordDataSource(records.shard_paths(prepared_dir, manifest))
        s = manifest["settings"]
        self._repr = (f"PreparedSource(format={s['format']}, seq_len={s['seq_len']}, "
                      f"tokenizer={s['tokenizer_sha256'][:16]}, corpus={s['corpus']}, "
                      f"max_documents={s['max_documents']}, seed={s['seed']}, "
                      f"num_examples={manifest['num_examples']})")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        return self._source[index]

    def __repr__(self) -> str:
        return self._repr


def _masked_example(data: bytes, rng: np.random.Generator, spec: MaskingSpec, seq_len: int,
                    dtype: str, pad_id: int) -> dict[str, np.ndarray]:
    """One record -> one padded, masked row of the batch contract (see jaxdistill.data)."""
    ids, len_a, _ = records.decode_record(data, dtype)
    n = len(ids)
    corrupted, positions, labels, weights = mask_tokens(ids, rng, spec)
    input_ids = np.full(seq_len, pad_id, np.int32)
    input_ids[:n] = corrupted
    attention_mask = np.zeros(seq_len, np.int32)
    attention_mask[:n] = 1
    token_type_ids = np.zeros(seq_len, np.int32)
    token_type_ids[len_a:n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "token_type_ids": token_type_ids, "masked_positions": positions,
            "masked_ids": labels, "masked_weights": weights}


def _mask_transform(spec: MaskingSpec, seq_len: int, dtype: str, pad_id: int):
    import grain

    class MaskExample(grain.transforms.RandomMap):
        """Decode, pad and MLM-mask one record with the generator grain gives it."""

        def random_map(self, element: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
            return _masked_example(element, rng, spec, seq_len, dtype, pad_id)

    return MaskExample()


class _ProcessRows:
    """Local element j of process p -> global position (j // b) * B + p * b + j % b."""

    def __init__(self, global_batch: int, local_batch: int, process_index: int):
        self.global_batch, self.local_batch, self.offset = global_batch, local_batch, \
            process_index * local_batch

    def __call__(self, j: int) -> int:
        return (j // self.local_batch) * self.global_batch + self.offset + j % self.local_batch


class PretrainLoader:
    """Endless iterator of host batches (dicts of NumPy arrays, process-local rows)."""

    def __init__(self, dataset, manifest: dict, local_batch_size: int, spec: MaskingSpec,
                 workers: int, fingerprint: str):
        self._dataset = dataset
        self._fingerprint = fingerprint
        self._workers = workers
        self._iterator = self._start(dataset)
        self.manifest = manifest
        self.local_batch_size = local_batch_size
        self.seq_len = int(manifest["settings"]["seq_len"])
        self.max_predictions = spec.max_predictions
        self.num_examples = int(manifest["num_examples"])

    def _start(self, dataset):
        import grain

        it_ds = dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
        if self._workers > 0:
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
        return iter(it_ds)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position of the iterator (after the batches already returned)."""
        return {**self._iterator.get_state(), "fingerprint": self._fingerprint}

    def set_state(self, state: dict | bytes | str) -> None:
        """Continue from a state of `get_state()` taken on an iterator with the same arguments."""
        if isinstance(state, bytes):
            state = state.decode()
        if isinstance(state, str):
            state = json.loads(state)
        if not isinstance(state, dict) or state.get("fingerprint") != self._fingerprint:
            raise UserError(
                "The saved data-iterator state does not fit this data loader (the prepared data, "
                "seed, process count or data.num_workers changed since the checkpoint).")
        try:
            self._iterator.set_state({k: v for k, v in state.items() if k != "fingerprint"})
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                "The saved data-iterator state does not fit this data loader (the prepared data, "
                "seed, process count or data.num_workers changed since the checkpoint): "
                f"{str(e).splitlines()[0]}") from None

    def skip_to(self, batch_index: int) -> None:
        """Position the iterator so the next batch is global batch `batch_index`."""
        self._iterator = self._start(self._dataset[batch_index:])


def _allow_unparsed_absl_flags() -> None:
    # grain 0.2.18 reads an absl flag when starting worker processes, which raises in programs
    # that never parse absl flags (google/grain#1355, fixed after 0.2.18): use the defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(prepared_dir: str | Path, global_batch_size: int, seed: int,
                mlm_probability: float = 0.15, mlm_smoothing: float = 0.0,
                process_index: int | None = None, process_count: int | None = None,
                num_workers: int = 0, prefetch: int = 2) -> PretrainLoader:
    """Checkpointable endless loader of this process's rows of each global batch.

    Each process gets global_batch_size / process_count rows per batch, from its own disjoint
    part of the records. process_index/count default to jax.process_index()/process_count().
    num_workers > 0 masks in that many grain worker processes, each `prefetch` batches ahead.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size < 1 or global_batch_size % process_count:
        raise UserError(f"batch_size ({global_batch_size}) must be a positive multiple of the "
                        f"number of JAX processes ({process_count}).")
    if not 0 <= seed < 2**31:
        raise UserError(f"seed must be in [0, 2**31) for the data loader, got {seed}.")
    if num_workers < 0 or prefetch < 0:
        raise UserError(f"data.num_workers and data.prefetch must be >= 0, got "
                        f"{num_workers} and {prefetch}.")
    manifest = records.load_manifest(prepared_dir)
    settings = manifest["settings"]
    seq_len = int(settings["seq_len"])
    counts = records.token_counts(prepared_dir) if mlm_smoothing > 0 else None
    spec = make_spec(settings["vocab_size"], manifest["special_ids"], seq_len, mlm_probability,
                     mlm_smoothing, counts)
    local_batch = global_batch_size // process_count
    num_records = int(manifest["num_examples"])
    if num_records // process_count < local_batch:
        raise UserError(
            f"{prepared_dir} holds {num_records} examples: fewer than one batch of "
            f"{local_batch} rows for each of {process_count} processes. Prepare more data "
            f"(data.max_documents) or lower batch_size.")

    import grain

    if num_workers > 0:
        _allow_unparsed_absl_flags()
    transform = _mask_transform(spec, seq_len, manifest["dtype"], manifest["special_ids"]["pad"])
    source = grain.MapDataset.source(PreparedSource(prepared_dir, manifest))
    # Shuffle before repeat: every epoch gets its own order. Masking seeds from the position in
    # this global sequence, so it does not depend on which process reads the row.
    positions = source.shuffle(seed=seed).repeat(None).random_map(transform, seed=seed)
    rows = _ProcessRows(global_batch_size, local_batch, process_index)
    local = grain.MapDataset.range(2**62).map(rows).map(lambda g: positions[g])
    dataset = local.batch(local_batch, drop_remainder=True)
    # What the saved position means: restoring it under other settings would silently change data.
    fingerprint = hashlib.sha256(repr((
        repr(PreparedSource(prepared_dir, manifest)), seed, global_batch_size, process_index,
        process_count, mlm_probability, mlm_smoothing, num_workers)).encode()).hexdigest()[:16]
    return PretrainLoader(dataset, manifest, local_batch, spec, num_workers, fingerprint)
