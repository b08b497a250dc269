"""prepare-data: corpus -> tokenized fixed-length examples in ArrayRecord shards + manifest.json.

Documents are read in order and cut into shards of `docs_per_shard` documents; each shard is
tokenized, turned into examples (see instances.py) with its own RNG seeded by (seed, shard index),
and written as `shard-NNNNN.array_record` by a worker. So the output depends only on the settings,
never on `num_workers` or on interruptions.

Re-running into the same directory:
- same settings: finished shards (listed in the manifest and present) are skipped; a complete
  directory returns at once. That is how an interrupted prepare resumes.
- different settings (corpus, tokenizer, seq_len, format, max_documents, seed, ...): UserError
  naming what differs. We never delete data the user may still need; pick another directory or
  delete this one.
"""
from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxdistill.data import records
from jaxdistill.data.corpus import Document, iter_documents, normalize_spec
from jaxdistill.data.instances import FORMATS, build_examples
from jaxdistill.data.tokenizer import TokenizerInfo, encode_segments, load_tokenizer
from jaxdistill.errors import UserError

# One record per group: cheapest random access for the loader's global shuffle. Token ids barely
# compress, so compression would cost read time for little space.
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"
PACKAGE_SIZES = {"package:imdb": 25_000, "package:rotten_tomatoes": 8_530}


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a worker needs besides the documents (picklable for spawned workers)."""

    tokenizer_file: str
    out_dir: str
    fmt: str
    seq_len: int
    seed: int
    short_seq_prob: float
    dtype: str
    vocab_size: int
    cls_id: int
    sep_id: int


_worker_state: dict = {}


def _init_worker(job: _Job, threads: int = 0) -> None:
    if threads:  # share the cores between workers' tokenizer thread pools (read at first use)
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
    tok, _ = load_tokenizer(job.tokenizer_file)
    _worker_state.update(job=job, tok=tok)


def _make_shard(index: int, documents: list[Document]) -> dict:
    """Tokenize one shard's documents, build and write its examples; return its manifest entry."""
    job: _Job = _worker_state["job"]
    tok = _worker_state["tok"]
    flat = [seg for doc in documents for seg in doc]
    ids = encode_segments(tok, flat)
    tokenized, pos = [], 0
    for doc in documents:
        tokenized.append(ids[pos:pos + len(doc)])
        pos += len(doc)
    rng = np.random.default_rng([job.seed, index])
    examples = build_examples(tokenized, job.fmt, job.seq_len, job.cls_id, job.sep_id, rng,
                              job.short_seq_prob)

    from array_record.python.array_record_module import ArrayRecordWriter

    out = Path(job.out_dir)
    final = out / records.shard_name(index)
    tmp = final.with_name(final.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), ARRAY_RECORD_OPTIONS)
    arrays = [records.example_array(ex.ids, ex.len_a, ex.is_random_next, job.dtype)
              for ex in examples]
    for arr in arrays:
        writer.write(arr.tobytes())
    writer.close()
    num_tokens = sum(len(ex.ids) for ex in examples)
    tokens = np.concatenate([arr[records.HEADER:] for arr in arrays]) if arrays else np.zeros(0, int)
    counts = np.bincount(tokens, minlength=job.vocab_size).astype(np.int64)
    np.save(out / records.counts_name(index), counts)
    os.replace(tmp, final)  # last: a shard file that exists is complete
    return {"index": index, "file": final.name, "counts": records.counts_name(index),
            "documents": len(documents), "examples": len(examples), "tokens": num_tokens}


def _shards(docs: Iterator[Document], per_shard: int) -> Iterator[tuple[int, list[Document]]]:
    batch: list[Document] = []
    index = 0
    for doc in docs:
        batch.append(doc)
        if len(batch) == per_shard:
            yield index, batch
            index, batch = index + 1, []
    if batch:
        yield index, batch


def _pending_shards(shards: Iterator[tuple[int, list[Document]]], done: dict,
                    bar) -> Iterator[tuple[int, list[Document]]]:
    """The shards still to make; finished ones are only counted on the progress bar."""
    for k, batch in shards:
        if k in done:
            bar.update(len(batch))
        else:
            yield k, batch


def _settings(corpus: str, text_column: str, info: TokenizerInfo, seq_len: int, fmt: str,
              max_documents: int, seed: int, docs_per_shard: int, short_seq_prob: float) -> dict:
    # Everything that changes the bytes written. num_workers and progress do not.
    return {"record_version": records.RECORD_VERSION, "corpus": normalize_spec(corpus),
            # Packaged corpora ignore text_column: do not let it invalidate their data.
            "text_column": "text" if corpus.startswith("package:") else text_column,
            "tokenizer_sha256": info.sha256,
            "vocab_size": info.vocab_size, "seq_len": seq_len, "format": fmt,
            "max_documents": max_documents, "seed": seed, "docs_per_shard": docs_per_shard,
            "short_seq_prob": short_seq_prob if fmt == "pairs" else 0.0}


def _validate(fmt: str, seq_len: int, max_documents: int, seed: int, docs_per_shard: int,
              short_seq_prob: float) -> None:
    if fmt not in FORMATS:
        raise UserError(f"data.format must be one of {', '.join(FORMATS)}, got '{fmt}'.")
    if not 8 <= seq_len <= 65_534:
        raise UserError(f"seq_len must be between 8 and 65534, got {seq_len}.")
    if max_documents < 0:
        raise UserError(f"data.max_documents must be >= 0 (0 = all), got {max_documents}.")
    if not 0 <= seed < 2**32:
        raise UserError(f"seed must be an integer in [0, 2**32), got {seed}.")
    if docs_per_shard < 1:
        raise UserError(f"docs_per_shard must be >= 1, got {docs_per_shard}.")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise UserError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}.")


def _check_existing(out: Path, settings: dict) -> dict | None:
    """The manifest already in `out` if its settings match; UserError if they differ."""
    path = out / records.MANIFEST
    if not path.is_file():
        return None
    old = records.load_manifest(out, require_complete=False)
    old_settings = old.get("settings", {})
    diff = [k for k in sorted(set(settings) | set(old_settings)) if settings.get(k) != old_settings.get(k)]
    if diff:
        lines = "; ".join(f"{k}: prepared {old_settings.get(k)!r}, asked {settings.get(k)!r}" for k in diff)
        raise UserError(
            f"{out} already holds data prepared with other settings ({lines}). Use another "
            f"prepared_dir (data.prepared_dir=...) or delete {out} to prepare it again.")
    return old


def _default_workers() -> int:
    # The tokenizers batch API already spreads one process over all cores; extra processes pay
    # off only when there are cores to spare for the Python side (splitting, packing, writing).
    return min((os.cpu_count() or 1) // 2, 8)


def prepare(corpus: str, out_dir: str | Path, tokenizer_path: str | Path, seq_len: int,
            format: str = "documents", max_documents: int = 0, seed: int = 0,
            num_workers: int | None = None, *, text_column: str = "text",
            docs_per_shard: int = 2048, short_seq_prob: float = 0.1,
            progress: bool = True) -> dict:
    """Tokenize `corpus` into fixed-length examples under `out_dir`; return the manifest.

    corpus: see jaxdistill.data.corpus. tokenizer_path: model dir, tokenizer.json, vocab.txt or
    package:minilm. format: 'documents' (packed) or 'pairs' (BERT sentence pairs, 50% random
    next). num_workers: processes tokenizing shards in parallel (None = one per two CPUs, at
    most 8; 0 or 1 = in this process, where the tokenizers batch API still uses all cores).
    """
    fmt, corpus = format, str(corpus)
    _validate(fmt, seq_len, max_documents, seed, docs_per_shard, short_seq_prob)
    tok, info = load_tokenizer(tokenizer_path)
    settings = _settings(corpus, text_column, info, seq_len, fmt, max_documents, seed,
                         docs_per_shard, short_seq_prob)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    existing = _check_existing(out, settings)
    if existing is not None and existing.get("complete"):
        return existing

    docs = iter_documents(corpus, text_column, max_documents)  # raises now on a bad reference
    dtype = records.record_dtype(info.vocab_size, seq_len)
    manifest = {
        "settings": settings, "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tokenizer": info.path, "special_ids": info.special_ids, "dtype": dtype,
        "record_layout": "[len_a, is_random_next, *token_ids] (unpadded; see records.py)",
        "shards": [],
    }
    done = {s["index"]: s for s in (existing or {}).get("shards", [])
            if (out / s["file"]).is_file() and (out / s["counts"]).is_file()}
    manifest["shards"] = sorted(done.values(), key=lambda s: s["index"])
    records.write_json_atomic(out / records.MANIFEST, manifest)

    job = _Job(tokenizer_file=info.path, out_dir=str(out), fmt=fmt, seq_len=seq_len, seed=seed,
               short_seq_prob=short_seq_prob, dtype=dtype, vocab_size=info.vocab_size,
               cls_id=info.special_ids["cls"], sep_id=info.special_ids["sep"])
    workers = _default_workers() if num_workers is None else max(0, num_workers)
    total = max_documents or PACKAGE_SIZES.get(corpus) or None
    if max_documents and corpus in PACKAGE_SIZES:
        total = min(max_documents, PACKAGE_SIZES[corpus])

    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="doc", desc=f"prepare-data {fmt} seq_len={seq_len}",
               disable=not progress, dynamic_ncols=True)

    def record_shard(entry: dict) -> None:
        done[entry["index"]] = entry
        manifest["shards"] = sorted(done.values(), key=lambda s: s["index"])
        records.write_json_atomic(out / records.MANIFEST, manifest)
        bar.update(entry["documents"])

    try:
        todo = _pending_shards(_shards(docs, docs_per_shard), done, bar)
        if workers <= 1:
            _worker_state.update(job=job, tok=tok)
            for k, batch in todo:
                record_shard(_make_shard(k, batch))
        else:
            _run_pool(job, todo, workers, record_shard)
    finally:
        bar.close()

    shards = manifest["shards"]
    if [s["index"] for s in shards] != list(range(len(shards))):
        raise UserError(f"{out}: shards {sorted(done)} do not follow one another; the corpus "
                        f"changed between runs? Delete {out} and prepare again.")
    if not any(s["examples"] for s in shards):
        raise UserError(f"Corpus '{corpus}' gave no examples (no non-empty documents).")
    counts = sum(np.load(out / s["counts"]) for s in shards)
    np.save(out / records.TOKEN_COUNTS, counts)
    manifest.update(complete=True, token_counts=records.TOKEN_COUNTS,
                    num_documents=sum(s["documents"] for s in shards),
                    num_examples=sum(s["examples"] for s in shards),
                    num_tokens=sum(s["tokens"] for s in shards))
    records.write_json_atomic(out / records.MANIFEST, manifest)
    return manifest


def _run_pool(job: _Job, todo: Iterator[tuple[int, list[Document]]], workers: int,
              on_done) -> None:
    # Spawned (not forked) workers: the caller may be a multithreaded JAX process. At most two
    # shards per worker are in flight, so a large corpus is never read into memory at once.
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job, threads)) as pool:
        pending: collections.deque = collections.deque()
        for k, batch in todo:
            pending.append(pool.apply_async(_make_shard, (k, batch)))
            while len(pending) >= 2 * workers:
                on_done(pending.popleft().get())
        while pending:
            on_done(pending.popleft().get())
