"""Model FLOP accounting for a distillation step (MFU counts model FLOPs, not recomputation).

Per token, a dense layer costs 2 FLOPs per weight forward and 4 more backward. Attention adds
2 * 2 * T * H per layer and token forward (QK^T and PV). So for T tokens of length `seq`:
  teacher forward:            2 * N_t * T + 4 * L_t * seq * H_t * T
  student forward + backward: 3 * (2 * N_s * T + 4 * L_s * seq * H_s * T)
where N counts the matmul weights (embeddings lookups are free; the MLM decoder is a matmul).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxdistill.models.bert import BertConfig

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


def matmul_params(cfg: BertConfig, mlm_positions: int | None = None, seq: int = 1) -> float:
    """Matmul weights a token passes through (per token; the MLM decoder scaled by its share)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    n = cfg.num_layers * (4 * h * h + 2 * h * i)
    if cfg.head == "mlm":
        share = 1.0 if mlm_positions is None else mlm_positions / seq
        n += (h * h + h * cfg.vocab_size) * share
    return float(n)


def forward_flops_per_token(cfg: BertConfig, seq: int, mlm_positions: int | None = None) -> float:
    return 2 * matmul_params(cfg, mlm_positions, seq) + 4 * cfg.num_layers * seq * cfg.hidden_size


def step_flops(student: BertConfig, teacher: BertConfig | None, batch: int, seq: int,
               mlm_positions: int | None = None, method_flops_per_token: float = 0.0,
               student_backward: bool = True) -> float:
    """Model FLOPs of one distillation step on `batch` sequences of length `seq`.

    teacher None: no teacher forward (plain MLM). student_backward False: a frozen encoder,
    counted as forward only (its small trainable head's backward is neglected).
    """
    tokens = batch * seq
    teacher_fwd = forward_flops_per_token(teacher, seq, mlm_positions) * tokens if teacher else 0.0
    student_fwd = (forward_flops_per_token(student, seq, mlm_positions)
                   + method_flops_per_token) * tokens
    return teacher_fwd + (3 if student_backward else 1) * student_fwd


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


def measured_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matmul on the default device: the CPU's practical peak."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
