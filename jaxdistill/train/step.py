"""One distillation step, top to bottom: frozen teacher forward, student forward, method loss,
gradients for the student only, optimizer update. Pure; jitted once by the loop with explicit
shardings and the train state donated.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxdistill.methods.base import Batch, Method, Metrics
from jaxdistill.models.bert import BertModel, EncoderOutputs
from jaxdistill.train.state import TrainState


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
    """Everything static a step needs (models, method, optimizer); hashable by identity."""

    student: BertModel
    teacher: BertModel
    method: Method
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    grad_accum: int = 1
    frozen: tuple[str, ...] = ()  # student param path prefixes that get no gradient


def _model_inputs(batch: Batch) -> tuple:
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def teacher_forward(ctx: StepContext, teacher_params: Any, batch: Batch) -> EncoderOutputs | None:
    if not ctx.method.needs_teacher:
        return None
    out = ctx.teacher.apply(
        {"params": teacher_params}, *_model_inputs(batch),
        capture=ctx.method.teacher_capture(), deterministic=True,
        masked_positions=batch["masked_positions"] if ctx.method.uses_masked_positions() else None)
    return jax.lax.stop_gradient(out)


def loss_fn(params: dict, ctx: StepContext, teacher_out: EncoderOutputs | None, batch: Batch,
            rng: jax.Array) -> tuple[jax.Array, Metrics]:
    student_params = freeze(params["student"], ctx.frozen)
    student_out = ctx.student.apply(
        {"params": student_params}, *_model_inputs(batch),
        capture=ctx.method.student_capture(), deterministic=False,
        masked_positions=batch["masked_positions"] if ctx.method.uses_masked_positions() else None,
        rngs={"dropout": rng})
    return ctx.method.loss(params["method"], student_out, teacher_out, batch)


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
            state.params, ctx, teacher_out, micro, key)
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
    updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
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
