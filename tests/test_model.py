"""The Flax encoder's execution options never change the function it computes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.models import bert
from jaxdistill.models import EVERYTHING, Wants
from jaxdistill.models.bert import BertConfig, BertModel

CFG = BertConfig(vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=48,
                 max_position_embeddings=16, head="mlm", hidden_dropout=0.0, attention_dropout=0.0)


def _batch():
    ids = jax.random.randint(jax.random.key(1), (2, 10), 5, 50)
    mask = jnp.ones_like(ids).at[1, 7:].set(0)
    return ids, mask


def _loss(cfg, params, capture=Wants(hidden_states=True, attention_scores=True)):
    out = BertModel(cfg).apply({"params": params}, *_batch(), capture=capture)
    return (out.logits.astype(jnp.float32) ** 2).mean() + (jnp.stack(out.hidden_states) ** 2).mean() + \
        (jnp.stack(out.attention_scores).astype(jnp.float32) ** 2).mean()


@pytest.fixture(scope="module")
def params():
    return bert.init_params(CFG, jax.random.key(0))


def test_output_shapes_and_capture_on_request(params):
    ids, mask = _batch()
    full = BertModel(CFG).apply({"params": params}, ids, mask, capture=EVERYTHING)
    assert jnp.stack(full.hidden_states).shape == (4, 2, 10, 32)
    probs = jnp.stack(full.attention_probs)
    assert jnp.stack(full.attention_scores).shape == probs.shape == (3, 2, 4, 10, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert float(probs[:, 1, :, :, 7:].max()) == 0.0  # padded keys get no weight
    bare = BertModel(CFG).apply({"params": params}, ids, mask)
    assert bare.hidden_states is None and bare.attention_scores is None
    # Scores of chosen layers only; the others take the fused path and give the same outputs.
    some = BertModel(CFG).apply({"params": params}, ids, mask, capture=Wants(
        hidden_states=True, attention_scores=True, attention_layers=(2, 0)))
    assert some.attention_scores[1] is None and some.attention_probs is None
    for i in (0, 2):
        np.testing.assert_allclose(some.attention_scores[i], full.attention_scores[i], atol=1e-6)
    for a, b in zip(some.hidden_states, full.hidden_states):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert (Wants(attention_scores=True, attention_layers=(1,))
            | Wants(attention_probs=True, attention_layers=(0,))).attention_layers == (0, 1)
    assert (Wants(attention_scores=True, attention_layers=(1,))
            | Wants(attention_probs=True)).attention_layers is None
    assert (Wants(attention_scores=True, attention_layers=(1,))
            | Wants(hidden_states=True)).attention_layers == (1,)
    # The fused attention path (nothing captured) computes the same function.
    np.testing.assert_allclose(bare.logits, full.logits, atol=1e-5)
    pos = jnp.array([[1, 3], [0, 2]])
    gathered = BertModel(CFG).apply({"params": params}, ids, mask, masked_positions=pos).logits
    np.testing.assert_allclose(gathered, jnp.take_along_axis(full.logits, pos[..., None], 1),
                               atol=1e-5)


@pytest.mark.parametrize("option", [{"scan_layers": True}, {"remat": "full"},
                                    {"scan_layers": True, "remat": "dots"}])
def test_scan_and_remat_same_loss_and_grads(params, option):
    cfg = CFG.replace(**option)
    p = bert.stack_layers(params, CFG.num_layers) if cfg.scan_layers else params
    l0, g0 = jax.value_and_grad(lambda q: _loss(CFG, q))(params)
    l1, g1 = jax.value_and_grad(lambda q: _loss(cfg, q))(p)
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    if cfg.scan_layers:
        g1 = bert.unstack_layers(g1, CFG.num_layers)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)


SOME = Wants(hidden_states=True, attention_scores=True, attention_qkv=True, attention_layers=(1,))


def _some_loss(cfg, params):
    """A loss of everything SOME keeps: the hidden states and layer 1's scores and q/k/v."""
    out = BertModel(cfg).apply({"params": params}, *_batch(), capture=SOME)
    kept = [out.attention_scores[1], out.attention_queries[1], out.attention_keys[1],
            out.attention_values[1]]
    assert [x is None for x in out.attention_values] == [True, False, True]
    return (jnp.stack(out.hidden_states) ** 2).mean() + sum((x ** 2).mean() for x in kept)


@pytest.mark.parametrize("option", [{"scan_layers": True}, {"scan_layers": True, "remat": "dots"}])
def test_scanned_layers_keeping_some_attention_same_loss_and_grads(params, option):
    """Scanned, only the asked layers keep attention features (runs of the others scanned
    without them): the same values and gradients as the unrolled layers."""
    cfg = CFG.replace(**option)
    l0, g0 = jax.value_and_grad(lambda q: _some_loss(CFG, q))(params)
    l1, g1 = jax.jit(jax.value_and_grad(lambda q: _some_loss(cfg, q)))(
        bert.stack_layers(params, CFG.num_layers))
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    g1 = bert.unstack_layers(g1, CFG.num_layers)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32(params):
    cfg = CFG.replace(dtype="bfloat16")
    fresh = bert.init_params(cfg, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(fresh))
    out32 = BertModel(CFG).apply({"params": params}, *_batch())
    out16 = BertModel(cfg).apply({"params": params}, *_batch())
    assert out16.logits.dtype == jnp.bfloat16
    np.testing.assert_allclose(out16.logits.astype(jnp.float32), out32.logits, atol=0.1)


def test_logical_axes_cover_every_parameter(params):
    axes = bert.logical_axes(CFG)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_a = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: x is None or
                                                 isinstance(x, jax.sharding.PartitionSpec))
    assert [p for p, _ in flat_p] == [p for p, _ in flat_a]
    for (_, x), (_, spec) in zip(flat_p, flat_a):
        assert len(spec) == x.ndim
