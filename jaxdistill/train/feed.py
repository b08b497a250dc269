"""Host batches -> global jax.Arrays, prefetched on a background thread.

Each process reads only its rows; `jax.make_array_from_process_local_data` assembles the global
batch sharded over ('data', 'fsdp'). The iterator state is captured right after each batch is
drawn, so a checkpoint saves the state of the batches the step actually consumed, not of the
ones sitting in the prefetch queue.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

import jax
from jax.sharding import NamedSharding

from jaxdistill.data.placement import to_global


class Prefetcher:
    """Yields (global batch, iterator state after it); `depth` batches are prepared ahead."""

    _DONE = object()

    def __init__(self, iterator: Any, shardings: dict[str, NamedSharding], global_batch: int,
                 depth: int = 2):
        self._it = iterator
        self._shardings = shardings
        self._global_batch = global_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name="prefetch")
        self._thread.start()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                host = next(self._it)
                state = self._it.get_state()
                item = (to_global(host, self._shardings, self._global_batch), state)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced to the consumer on the next get
            self._queue.put(e)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> tuple[dict[str, jax.Array], Any]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
