"""One distillation step, top to bottom: frozen teacher forwards (one per teacher role), student
forward, method loss over every role's outputs, gradients for the student (and the method's own
parameters) only, optimizer update. Pure; jitted once by the loop with explicit shardings and
the train state donated. It names no architecture and no method.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxdistill.methods.base import STUDENT, Batch, Method, Metrics
from jaxdistill.models.base import Model, Outputs
from jaxdistill.train import optim
from jaxdistill.train.state import TrainState


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
    """Everything static a step needs (models by role, method, optimizer); hashable by identity."""

    models: dict[str, Model]  # 'student' and every teacher role
    method: Method
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    grad_accum: int = 1
    frozen: tuple[str, ...] = ()  # student param path prefixes that get no gradient

    @property
    def student(self) -> Model:
        return self.models[STUDENT]


def teacher_forward(ctx: StepContext, teacher_params: dict[str, Any], batch: Batch
                    ) -> dict[str, Outputs]:
    """Every teacher role's outputs, frozen (no dropout, no gradient)."""
    wants = ctx.method.wants()
    return {role: jax.lax.stop_gradient(ctx.models[role].apply(
        params, batch, wants=wants[role], train=False)) for role, params in teacher_params.items()}


def loss_fn(params: dict, ctx: StepContext, teacher_out: dict[str, Outputs], batch: Batch,
            rng: jax.Array, step: jax.Array) -> tuple[jax.Array, Metrics]:
    student_params = freeze(params["student"], ctx.frozen)
    student_out = ctx.student.apply(student_params, batch, wants=ctx.method.wants()[STUDENT],
                                    train=True, rngs={"dropout": rng})
    # The method's own dropout gets a key of its own: the student's stays what it always was.
    scheduled = {"step": step} if ctx.method.reads_step else {}
    return ctx.method.loss(params["method"], {STUDENT: student_out, **teacher_out}, batch,
                           rng=jax.random.fold_in(rng, 1), **scheduled)


def freeze(params: dict, prefixes: tuple[str, ...]) -> dict:
    """stop_gradient on frozen subtrees, so XLA drops their backward pass entirely."""
    if not prefixes:
        return params
    return traverse_util.path_aware_map(
        lambda path, x: jax.lax.stop_gradient(x) if is_frozen(path, prefixes) else x, params)


def is_frozen(path: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    joined = "/".join(path)
    return any(joined == p or joined.startswith(p + "/") for p in prefixes)


def _grads(state: TrainState, ctx: StepContext, teacher_params: Any, batch: Batch,
           rng: jax.Array) -> tuple[Any, Metrics]:
    def one(micro: Batch, key: jax.Array):
        teacher_out = teacher_forward(ctx, teacher_params, micro)
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, ctx, teacher_out, micro, key, state.step)
        return grads, {"loss": loss, **terms}

    if ctx.grad_accum == 1:
        return one(batch, rng)
    # Microbatch i takes rows i, i+k, ...: each device keeps its own rows (no resharding).
    k = ctx.grad_accum
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1),
                         batch)

    def body(acc, xs):
        grads, metrics = one(*xs)
        return jax.tree.map(jnp.add, acc, (grads, metrics)), None

    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro), rng))
    total, _ = jax.lax.scan(body, zero, (micro, jax.random.split(rng, k)))
    return jax.tree.map(lambda x: x / k, total)


def train_step(state: TrainState, teacher_params: Any, batch: Batch, ctx: StepContext
               ) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grads, metrics = _grads(state, ctx, teacher_params, batch, rng)
    scale = ctx.method.update_scale(state.step, state.params)
    if scale is not None:
        # A parameter scaled to 0 this step is frozen: no gradient reaches the clip norm or the
        # optimizer's moments, and its update is 0 (MobileBERT's layer-wise gate).
        grads = jax.tree.map(lambda g, s: jnp.where(s > 0, g, jnp.zeros_like(g)), grads, scale)
    updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
    if scale is not None:
        # ... and no update at all: no weight decay, moments kept as they were.
        updates = jax.tree.map(lambda u, s: (u * s).astype(u.dtype), updates, scale)
        opt_state = optim.keep_frozen_state(ctx.tx, opt_state, state.opt_state, scale)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads), "lr": ctx.lr_schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def compile_step(ctx: StepContext, state_sh: Any, teacher_sh: Any, batch_sh: Any,
                 metrics_sh: Any, rules: Any):
    """`train_step` jitted with explicit shardings, donating the state."""
    def step(state, teacher_params, batch):
        with nn.logical_axis_rules(rules):
            return train_step(state, teacher_params, batch, ctx)

    return jax.jit(step, in_shardings=(state_sh, teacher_sh, batch_sh),
                   out_shardings=(state_sh, metrics_sh), donate_argnums=(0,))
