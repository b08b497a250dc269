"""Where metrics go on process 0: metrics.jsonl, TensorBoard and a progress bar."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax


class MetricsLog:
    """Append-only metrics sink. On processes other than 0 every call is a no-op."""

    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int,
                 tensorboard: bool = True, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = self._tb = self._file = None
        if not self.enabled:
            return
        run_dir = Path(run_dir)
        self._path = run_dir / "metrics.jsonl"
        self._truncate_after(start_step)
        self._file = self._path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, start_step: int) -> None:
        """Drop lines logged after the checkpoint we resume from: they will be logged again."""
        if not self._path.exists():
            return
        keep = [line for line in self._path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= start_step]
        self._path.write_text("".join(line + "\n" for line in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None and "loss" in row:  # an evaluation-only row has no loss
            self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                                  tok_s=f"{row.get('tokens_per_sec', 0):.0f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def write(self, text: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(text)

    def close(self) -> None:
        for closer in (self._bar, self._tb, self._file):
            if closer is not None:
                closer.close()


def _plain(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v
