"""Mesh construction and the one table that maps logical axis names to mesh axes.

Parameters carry logical names (see models/bert.py); `RULES` decides where each goes. Batches
shard over ('data', 'fsdp'). A dimension that a mesh axis does not divide evenly is replicated
along that axis instead of failing, so odd vocabulary sizes work on any mesh.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxdistill.config import MeshConfig
from jaxdistill.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# logical axis name -> mesh axis (or axes); None replicates.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("labels", None),
    ("norm", None),
    ("layers", None),
    ("proj_in", None),
    ("proj_out", "fsdp"),
)


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise UserError(f"mesh: at most one of mesh.data/fsdp/tensor may be -1, got {sizes}.")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh: sizes must be positive or -1, got {sizes}.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise UserError(
                f"mesh: {num_devices} devices cannot be split with the fixed axes {sizes} "
                f"(product {known} does not divide {num_devices}).")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise UserError(
            f"mesh: data*fsdp*tensor = {sizes[0]}*{sizes[1]}*{sizes[2]} = {int(np.prod(sizes))} "
            f"but there are {num_devices} devices; set one axis to -1 to take the rest.")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data','fsdp','tensor') mesh; hybrid ICI x DCN when dcn_* > 1 (multi-slice)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(cfg, len(devices))
    dcn = (cfg.dcn_data, cfg.dcn_fsdp, cfg.dcn_tensor)
    if any(d > 1 for d in dcn):
        if any(s % d for s, d in zip(shape, dcn)):
            raise UserError(f"mesh: each axis {shape} must be divisible by its dcn_* value {dcn}.")
        from jax.experimental import mesh_utils

        ici = tuple(s // d for s, d in zip(shape, dcn))
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices,
                                                    allow_split_physical_axes=True)
    else:
        try:
            from jax.experimental import mesh_utils

            grid = mesh_utils.create_device_mesh(shape, devices=devices,
                                                 allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_axes_for(name: str | None) -> Any:
    if name is None:
        return None
    for logical, mesh_axes in RULES:
        if logical == name:
            return mesh_axes
    raise ValueError(f"logical axis '{name}' has no rule in sharding.RULES")


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def spec_for(logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for an array with these logical axis names, replicating what won't divide."""
    if logical is None:
        return P()
    out, used = [], set()
    for name, dim in zip(logical, shape):
        axes = _mesh_axes_for(name)
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        # A mesh axis may appear once per spec, and only where it divides the dimension.
        flat = tuple(a for a in flat if a not in used and mesh.shape[a] > 1)
        if flat and dim % _axis_size(mesh, flat) == 0:
            out.append(flat[0] if len(flat) == 1 else flat)
            used.update(flat)
        else:
            out.append(None)
    return P(*out)


def shardings_for(logical_tree: Any, shape_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays given a matching pytree of logical PartitionSpecs."""
    is_spec = lambda x: isinstance(x, P) or x is None
    return jax.tree.map(
        lambda spec, arr: NamedSharding(mesh, spec_for(tuple(spec) if spec is not None else None,
                                                       arr.shape, mesh)),
        logical_tree, shape_tree, is_leaf=is_spec)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())



def stacked_layers(logical_tree: Any, shape_tree: Any) -> Any:
    """Per array: True when its leading axis is the 'layers' axis of a scanned layer stack."""
    is_spec = lambda x: isinstance(x, P) or x is None  # noqa: E731
    return jax.tree.map(lambda spec, _: bool(spec) and tuple(spec)[0] == "layers",
                        logical_tree, shape_tree, is_leaf=is_spec)
