"""The student's train state and its shardings (the frozen teacher is not part of it)."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxdistill import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: dict  # {'student': encoder+head params, 'method': the method's own params}
    opt_state: Any
    rng: jax.Array  # raw uint32 key data; per-step keys are fold_in(rng, step)


def param_shardings(logical: Any, shapes: Any, mesh: Mesh) -> Any:
    return sharding.shardings_for(logical, shapes, mesh)


def opt_state_shardings(tx: optax.GradientTransformation, params_shapes: Any,
                        params_shardings: Any, mesh: Mesh) -> Any:
    """Optimizer moments sharded like their parameters; counters and the rest replicated.

    A state leaf belongs to a parameter when the dict keys on its path end with that
    parameter's path and the shapes agree; this also covers wrappers such as
    `optax.multi_transform`, whose masked states `optax.tree_map_params` cannot map.
    """
    by_path = {tuple(_keys(p)): s for p, s in jax.tree_util.tree_leaves_with_path(params_shardings)}
    shapes = {tuple(_keys(p)): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params_shapes)}
    replicated = sharding.replicated(mesh)

    def pick(path, leaf):
        keys = tuple(_keys(path))
        for i in range(len(keys)):
            if keys[i:] in by_path and shapes[keys[i:]] == leaf.shape:
                return by_path[keys[i:]]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, params_shapes))


def _keys(path) -> list[str]:
    return [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]


def state_shardings(tx: optax.GradientTransformation, params_shapes: Any, params_sh: Any,
                    mesh: Mesh) -> TrainState:
    replicated = sharding.replicated(mesh)
    return TrainState(step=replicated, params=params_sh,
                      opt_state=opt_state_shardings(tx, params_shapes, params_sh, mesh),
                      rng=replicated)


def create(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state around `params`; jit it with `state_shardings` as out_shardings."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)))
