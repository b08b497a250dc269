"""On-disk layout of prepared data: the record encoding and `manifest.json`.

A prepared directory holds
  manifest.json                    settings, special token ids, shard list, totals (see prepare)
  shard-00000.array_record ...     one record per example, unpadded (padding happens at load)
  shard-00000.counts.npy ...       per-shard token counts (int64[vocab_size]), kept for resume
  token_counts.npy                 their sum: token frequencies for DistilBERT's mask smoothing
A record is the raw bytes of a 1-D array of `manifest['dtype']` (uint16 when the vocabulary and
seq_len fit, else int32): [len_a, is_random_next, token_0, ..., token_{n-1}], where tokens
include [CLS]/[SEP], n <= seq_len, and token_type_ids are 0 below len_a and 1 from it on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxdistill.errors import UserError

MANIFEST = "manifest.json"
TOKEN_COUNTS = "token_counts.npy"
RECORD_VERSION = 1
HEADER = 2  # len_a, is_random_next


def record_dtype(vocab_size: int, seq_len: int) -> str:
    return "uint16" if max(vocab_size, seq_len + 1) <= np.iinfo(np.uint16).max else "int32"


def example_array(ids: list[int], len_a: int, is_random_next: int, dtype: str) -> np.ndarray:
    """The array whose bytes are the record."""
    return np.asarray([len_a, is_random_next, *ids], dtype=dtype)


def decode_record(data: bytes, dtype: str) -> tuple[np.ndarray, int, int]:
    """(token ids as int32, len_a, is_random_next) of one record."""
    arr = np.frombuffer(data, dtype=dtype)
    return arr[HEADER:].astype(np.int32), int(arr[0]), int(arr[1])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.array_record"


def counts_name(index: int) -> str:
    return f"shard-{index:05d}.counts.npy"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write then rename, so a crash never leaves a half-written manifest."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load_manifest(prepared_dir: str | Path, require_complete: bool = True) -> dict:
    """The manifest of a prepared directory (UserError if absent, unreadable or unfinished)."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{prepared_dir} holds no prepared data ({MANIFEST} is missing); run "
                        f"`jaxdistill prepare-data` (or data.prepare) into it first.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); delete {prepared_dir} and prepare "
                        f"the data again.") from None
    if require_complete and not manifest.get("complete"):
        raise UserError(f"The prepared data in {prepared_dir} is unfinished (an interrupted "
                        f"prepare-data); run prepare-data again with the same settings to finish it.")
    return manifest


def token_counts(prepared_dir: str | Path) -> np.ndarray:
    """int64[vocab_size]: how often each token id occurs in the prepared examples."""
    manifest = load_manifest(prepared_dir)
    return np.load(Path(prepared_dir) / manifest["token_counts"])


def shard_paths(prepared_dir: str | Path, manifest: dict) -> list[str]:
    """Paths of the non-empty shards, in order (their concatenation is the record index space)."""
    return [str(Path(prepared_dir) / s["file"]) for s in manifest["shards"] if s["examples"] > 0]
