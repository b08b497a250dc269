"""The pretraining input pipeline: prepared ArrayRecord shards -> masked host batches (grain).

Each process reads only its share of the records: grain's IndexSampler splits the record index
space into `process_count` contiguous shards (remainder dropped), shuffles within the shard with
`seed`, a fresh order every epoch, and runs forever. Masking is a grain RandomMap, seeded per
record by grain from (seed, global sample index), so each row's masking is the same whatever the
worker count. Batches depend only on (data, seed, process_index, process_count, batch size,
masking settings, num_workers): never on restarts. (With num_workers > 0 grain forms each batch
inside one worker from every num_workers-th sample, so batch composition, but not the set of rows
an epoch sees, changes with num_workers; a saved state needs the same num_workers to restore.)

The iterator is checkpointable: `get_state()` is a small JSON-serialisable dict (store it with
the model checkpoint); `set_state(state)` on a new iterator built with the same arguments makes
the following batches bit-identical to an uninterrupted run. The state does not embed file
paths, so the prepared directory may move between save and restore.
"""
from __future__ import annotations

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


class PretrainLoader:
    """Endless iterator of host batches (dicts of NumPy arrays, process-local rows)."""

    def __init__(self, data_loader, manifest: dict, local_batch_size: int, spec: MaskingSpec):
        self._data_loader = data_loader
        self._iterator = iter(data_loader)
        self.manifest = manifest
        self.local_batch_size = local_batch_size
        self.seq_len = int(manifest["settings"]["seq_len"])
        self.max_predictions = spec.max_predictions
        self.num_examples = int(manifest["num_examples"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position of the iterator (after the batches already returned)."""
        return json.loads(self._iterator.get_state().decode())

    def set_state(self, state: dict | bytes | str) -> None:
        """Continue from a state of `get_state()` taken on an iterator with the same arguments."""
        if isinstance(state, dict):
            state = json.dumps(state)
        if isinstance(state, str):
            state = state.encode()
        try:
            self._iterator.set_state(state)
        except (ValueError, KeyError, json.JSONDecodeError) as e:
            raise UserError(
                "The saved data-iterator state does not fit this data loader (the prepared data, "
                "seed, process count or data.num_workers changed since the checkpoint): "
                f"{str(e).splitlines()[0]}") from None


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
    shard = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count,
                                        drop_remainder=True)
    sampler = grain.samplers.IndexSampler(num_records=num_records, shard_options=shard,
                                          shuffle=True, num_epochs=None, seed=seed)
    transform = _mask_transform(spec, seq_len, manifest["dtype"], manifest["special_ids"]["pad"])
    loader = grain.DataLoader(
        data_source=PreparedSource(prepared_dir, manifest), sampler=sampler,
        operations=[transform, grain.transforms.Batch(batch_size=local_batch, drop_remainder=True)],
        worker_count=num_workers, worker_buffer_size=max(1, prefetch), shard_options=shard,
        # Reading is cheap (one small record per row): two threads keep one batch ahead.
        read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(16, local_batch)))
    return PretrainLoader(loader, manifest, local_batch, spec)
