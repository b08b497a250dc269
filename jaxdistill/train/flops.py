"""Model FLOP accounting for a distillation step (MFU counts model FLOPs, not recomputation).

Each model kind counts its forward FLOPs per token (for BERT, 2 per matmul weight plus
4 * L * seq * H for attention; models/bert.py). The backward pass costs twice the forward, so
for T tokens: teacher forwards + 3 * (student forward + the method's own layers).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxdistill.models.base import Model

# Dense bf16 peak FLOP/s per chip, from vendor specs (no sparsity).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def step_flops(student: Model, teachers: Sequence[Model], batch: int, seq: int,
               predictions_per_seq: int | None = None, method_flops_per_token: float = 0.0,
               student_backward: bool = True) -> float:
    """Model FLOPs of one distillation step on `batch` sequences of length `seq`.

    Each model counts its own forward FLOPs per token (`Model.forward_flops_per_token`); the
    student's forward is tripled for its backward pass. student_backward False: a frozen
    encoder, counted as forward only (its small trainable head's backward is neglected).
    """
    tokens = batch * seq
    teacher_fwd = sum(t.forward_flops_per_token(seq, predictions_per_seq) for t in teachers)
    student_fwd = student.forward_flops_per_token(seq, predictions_per_seq) + method_flops_per_token
    return tokens * (teacher_fwd + (3 if student_backward else 1) * student_fwd)


def teacher_as_run(teacher: Model, layers_read: int | None) -> Model:
    """The part of a frozen teacher a step runs: its bottom `layers_read` layers when the loss
    reads nothing above them and its layers are unrolled (XLA drops the unread rest; a scanned
    teacher runs every layer); otherwise all of it."""
    cfg = teacher.config
    if layers_read is None or getattr(cfg, "scan_layers", True) or \
            layers_read >= getattr(cfg, "num_layers", 0):
        return teacher
    return teacher.replace(num_layers=layers_read)


def device_peak_flops(device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak, f"spec sheet ({kind})"
    if device.platform == "cpu":
        return measured_matmul_flops(), "measured fp32 matmul on this CPU"
    return float("nan"), f"unknown device kind {kind!r}"


def measured_matmul_flops(n: int = 1024, repeats: int = 30) -> float:
    """FLOP/s of a large fp32 matmul on the default device: the CPU's practical peak.

    The best of many repeats (about a second in all): another process busy for a moment during
    the measurement once halved it, which doubled every MFU of that run.
    """
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
