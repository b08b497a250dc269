"""Mesh sizing and the logical-axis rules table."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from jaxdistill import sharding
from jaxdistill.config import MeshConfig
from jaxdistill.errors import UserError


@pytest.mark.parametrize("cfg, n, shape", [
    (MeshConfig(), 8, (8, 1, 1)),
    (MeshConfig(data=2, fsdp=-1, tensor=2), 8, (2, 2, 2)),
    (MeshConfig(data=1, fsdp=4, tensor=2), 8, (1, 4, 2)),
])
def test_mesh_shapes(cfg, n, shape):
    assert sharding.resolve_mesh_shape(cfg, n) == shape


@pytest.mark.parametrize("cfg, needle", [
    (MeshConfig(data=-1, fsdp=-1), "at most one"),
    (MeshConfig(data=3, fsdp=1, tensor=1), "set one axis to -1"),
    (MeshConfig(data=-1, fsdp=3), "cannot be split"),
])
def test_mesh_errors(cfg, needle):
    with pytest.raises(UserError, match=needle):
        sharding.resolve_mesh_shape(cfg, 8)


def _fake_mesh(shape):
    # spec_for only reads axis sizes, so a mesh of one real device repeated is not needed:
    # a lightweight stand-in with .shape does.
    class M:
        pass
    m = M()
    m.shape = dict(zip(sharding.MESH_AXES, shape))
    return m


def test_rules_map_logical_names_and_replicate_uneven_dims():
    mesh = _fake_mesh((2, 2, 2))
    assert sharding.spec_for(("embed", "mlp"), (312, 1200), mesh) == P("fsdp", "tensor")
    assert sharding.spec_for(("vocab", "embed"), (30522, 312), mesh) == P("tensor", "fsdp")
    assert sharding.spec_for(("batch", "length"), (32, 128), mesh) == P(("data", "fsdp"), None)
    # 30,521 rows do not split in two: that dimension is replicated instead of failing.
    assert sharding.spec_for(("vocab", "embed"), (30521, 312), mesh) == P(None, "fsdp")
    assert sharding.spec_for(("norm",), (312,), mesh) == P(None)
    single = _fake_mesh((1, 1, 1))
    assert sharding.spec_for(("embed", "mlp"), (312, 1200), single) == P(None, None)


def test_make_mesh_on_available_devices():
    mesh = sharding.make_mesh(MeshConfig())
    assert isinstance(mesh, Mesh) and mesh.axis_names == sharding.MESH_AXES
    assert int(np.prod(list(mesh.shape.values()))) == jax.device_count()
