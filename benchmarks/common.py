"""Pieces both sides of the benchmark share: options, the synthetic batch, timing statistics.

No JAX or torch imports here: the runner sets XLA_FLAGS before either framework starts.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import statistics
from typing import Callable

import numpy as np

# WordPiece ids of the BERT uncased vocabulary (the packaged MiniLM teacher uses it).
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
FIRST_REAL_TOKEN = 999  # ids 1..998 are [unusedN] slots: real text never contains them
MLM_PROBABILITY = 0.15


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Every option of one measurement (also written into the JSON report)."""

    teacher: str = "package:minilm"  # 'random', package:minilm, or a Hugging Face directory
    teacher_layers: int = 12  # used only by the random teacher
    teacher_hidden: int = 768
    teacher_heads: int = 12
    teacher_ffn: int = 3072
    vocab: int = 30522  # random teacher only
    student_layers: int = 3
    student_hidden: int = 312
    student_heads: int = 12
    student_ffn: int = 1200
    method: str = "tinybert"
    batch: int = 32
    seq: int = 128
    dtype: str = "float32"  # student compute dtype (params stay float32)
    teacher_dtype: str = "float32"  # teacher compute and storage dtype
    mesh: tuple[int, int, int] = (-1, 1, 1)
    devices: int = 0  # >0: force this many host (CPU) devices via XLA_FLAGS
    steps: int = 3  # steps per timed repeat
    warmup: int = 2  # untimed steps after compilation
    repeats: int = 3
    seed: int = 0
    learning_rate: float = 1e-4
    malloc_tuning: bool = True  # what `jaxdistill pretrain` does (jaxdistill/hostmem.py)


def synthetic_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One pretraining batch in jaxdistill's batch contract (jaxdistill/data/__init__.py).

    Rows hold [CLS] text [SEP] with random real-token ids, lengths between seq/2 and seq (the
    rest is padding); every other row is a sentence pair (token types 0/1). MLM corruption is
    the project's own 80/10/10 masking, so masked_* have their real width and meaning.
    """
    from jaxdistill.data import masking

    if vocab <= FIRST_REAL_TOKEN + 1:
        raise ValueError(f"vocab={vocab}: the synthetic batch needs the BERT vocabulary layout "
                         f"(real tokens from id {FIRST_REAL_TOKEN}); use vocab >= 1000.")
    rng = np.random.default_rng(seed)
    spec = masking.make_spec(vocab, {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK},
                             seq, MLM_PROBABILITY)
    p = spec.max_predictions
    out = {"input_ids": np.zeros((batch, seq), np.int32),
           "attention_mask": np.zeros((batch, seq), np.int32),
           "token_type_ids": np.zeros((batch, seq), np.int32),
           "masked_positions": np.zeros((batch, p), np.int32),
           "masked_ids": np.zeros((batch, p), np.int32),
           "masked_weights": np.zeros((batch, p), np.float32)}
    for row in range(batch):
        n = int(rng.integers(max(seq // 2, 4), seq + 1))
        ids = rng.integers(FIRST_REAL_TOKEN, vocab, size=n).astype(np.int32)
        ids[0], ids[-1] = CLS, SEP
        types = np.zeros(n, np.int32)
        if row % 2:  # sentence pair: [CLS] A [SEP] B [SEP]
            cut = n // 2
            ids[cut] = SEP
            types[cut + 1:] = 1
        corrupted, pos, labels, weights = masking.mask_tokens(ids, rng, spec)
        out["input_ids"][row, :n] = corrupted
        out["attention_mask"][row, :n] = 1
        out["token_type_ids"][row, :n] = types
        out["masked_positions"][row], out["masked_ids"][row] = pos, labels
        out["masked_weights"][row] = weights
    return out


def time_steps(run_steps: Callable[[int], None], steps: int, repeats: int) -> list[float]:
    """Seconds per step of each repeat; `run_steps(n)` runs n steps and waits for the last."""
    times = []
    for _ in range(repeats):
        start = _now()
        run_steps(steps)
        times.append((_now() - start) / steps)
    return times


def _now() -> float:
    import time

    return time.perf_counter()


def summarize(times: list[float], tokens_per_step: int, flops_per_step: float,
              peak_flops: float | None) -> dict:
    """Median/min step time and the rates derived from the median."""
    median = statistics.median(times)
    out = {"step_time_s": median, "step_time_min_s": min(times), "step_times_s": times,
           "tokens_per_sec": tokens_per_step / median,
           "tflops": flops_per_step / median / 1e12}
    out["mfu"] = (flops_per_step / median / peak_flops) if peak_flops else None
    return out


def cpu_threads() -> int:
    """Cores this process may run on (what XLA:CPU sizes its thread pool by)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
