"""The learned student-width -> teacher-width linear map that feature-matching methods share.

TinyBERT's `fit_dense` and PKD's projection (when widths differ) are the same layer: kernel
N(0, initializer_range), zero bias, applied in float32 like the losses it feeds.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from typing import Any

AXES = {"kernel": P("proj_in", "proj_out"), "bias": P("proj_out")}


def init(rng: jax.Array, student: Any, teacher: Any) -> dict:
    """{kernel [H_s, H_t], bias [H_t]} in the student's parameter dtype (configs of both)."""
    h_s, h_t = student.hidden_size, teacher.hidden_size
    dtype = jnp.dtype(student.param_dtype)
    kernel = student.initializer_range * jax.random.normal(rng, (h_s, h_t), dtype)
    return {"kernel": kernel, "bias": jnp.zeros((h_t,), dtype)}


def apply(params: dict, hidden: jax.Array) -> jax.Array:
    return (hidden.astype(jnp.float32) @ params["kernel"].astype(jnp.float32)
            + params["bias"].astype(jnp.float32))
