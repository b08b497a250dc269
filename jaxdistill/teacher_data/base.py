"""The interface of a teacher-written dataset, and its resumable, deterministic writer.

`write` splits the items into fixed chunks, writes each chunk's rows as one JSONL part
(`OUT.parts/000012.jsonl`, renamed into place when complete), skips parts a previous run already
finished, and joins the parts into OUT at the end. A manifest records what produced the parts, so
a rerun with another config starts over instead of mixing outputs.
"""
from __future__ import annotations

import abc
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

from tqdm.auto import tqdm


class WriterSpec(NamedTuple):
    """A teacher-data writer of `jaxdistill augment`: its `method` name, its config class (the
    recipe's keys), `run(cfg) -> summary`, and its default recipe under configs/."""

    method: str
    Config: type
    run: Callable[[Any], dict]
    recipe: str


WRITERS: dict[str, WriterSpec] = {}


def register(spec: WriterSpec) -> WriterSpec:
    WRITERS[spec.method] = spec
    return spec


class TeacherDataset(abc.ABC):
    """A teacher's pass over `items()`, in chunks."""

    @abc.abstractmethod
    def items(self) -> Sequence[Any]:
        """The input items, in a fixed order."""

    @abc.abstractmethod
    def process(self, start: int, chunk: Sequence[Any]) -> list[dict]:
        """Output rows for items[start:start + len(chunk)]; a pure function of the config,
        `start` and the chunk (seed randomness by item index, not by call order)."""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """What determines the output (config values): parts of another fingerprint are redone."""


def write(dataset: TeacherDataset, out: str | Path, chunk_size: int, what: str = "augment"
          ) -> dict:
    """Write every chunk not written yet, then OUT; returns {'rows', 'chunks', 'resumed'}.
    Prints a start line, a progress bar over the items (TQDM_DISABLE=1 hides it) and an end
    line, as the training commands do; `what` names the run in them."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    manifest = {"fingerprint": dataset.fingerprint(), "chunk_size": chunk_size}
    manifest_file = parts / "manifest.json"
    if parts.is_dir() and (not manifest_file.is_file()
                           or json.loads(manifest_file.read_text()) != manifest):
        shutil.rmtree(parts)  # written by another config: start over
    parts.mkdir(parents=True, exist_ok=True)
    manifest_file.write_text(json.dumps(manifest, sort_keys=True, default=str))
    items = dataset.items()
    starts = range(0, len(items), chunk_size)
    done = sum((parts / f"{c:06d}.jsonl").is_file() for c in range(len(starts)))
    print(f"jaxdistill {what}: {len(items)} items in {len(starts)} chunks of {chunk_size} -> "
          f"{out}" + (f" (resuming: {done} chunks already written)" if done else ""), flush=True)
    began, resumed = time.perf_counter(), 0
    with tqdm(total=len(items), unit="item", desc=what, dynamic_ncols=True) as bar:
        for c, start in enumerate(starts):
            part, chunk = parts / f"{c:06d}.jsonl", items[start:start + chunk_size]
            if part.is_file():
                resumed += 1
            else:
                rows = dataset.process(start, chunk)
                _write_lines(part, (json.dumps(r) for r in rows))
            bar.update(len(chunk))
    rows = 0

    def lines():
        nonlocal rows
        for c in range(len(starts)):
            for line in (parts / f"{c:06d}.jsonl").read_text().splitlines():
                rows += 1
                yield line

    out.parent.mkdir(parents=True, exist_ok=True)
    _write_lines(out, lines())
    shutil.rmtree(parts)
    print(f"done: {rows} rows in {(time.perf_counter() - began) / 60:.1f} min -> {out}",
          flush=True)
    return {"rows": rows, "chunks": len(starts), "resumed": resumed}


def _write_lines(path: Path, lines) -> None:
    """Through a temporary name, so a half-written file never has the final name."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for line in lines:
            f.write(line + "\n")
    tmp.replace(path)
