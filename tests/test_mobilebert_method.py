"""MobileBERT's method: transfer losses against PyTorch/NumPy, the phase schedule (which layer's
loss is on, learning-rate multipliers, frozen sets) at its boundaries, a real step that leaves the
frozen parts untouched, and one end-to-end run of progressive transfer + pretraining
distillation with resume across a phase boundary."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_method, read_metrics, run_cli, write_tiny_teacher
from jaxdistill import losses
from jaxdistill.errors import UserError
from jaxdistill.methods import mobilebert as mb
from jaxdistill.models import Outputs
from jaxdistill.models.bert import BertConfig

TINY_BERT = dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                 max_position_embeddings=16)
PHASES = [{"kind": "progressive", "steps_per_layer": 10}, {"kind": "joint", "steps": 5},
          {"kind": "distillation"}]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _mask(b, t):
    mask = np.ones((b, t), np.float32)
    mask[0, t - 2:] = 0
    return mask


def _method(options=None, scan=False, **student):
    cfg = BertConfig(**{**TINY_BERT, **student}, head="mlm", scan_layers=scan)
    teacher = BertConfig(**TINY_BERT, head="mlm")
    return make_method("mobilebert", {"phases": PHASES, **(options or {})}, cfg, teacher)


def _background(t, n):
    # tf.train.polynomial_decay(lr0, t, n, end, power) = (lr0 - end) * (1 - t / n) ** power + end
    decay = lambda lr0, end, power: (lr0 - end) * (1 - t / n) ** power + end  # noqa: E731
    return min(decay(1.0, 0.9, 0.5), decay(0.0, 10.0, 1.0))


def test_phase_warmup_matches_tf_polynomial_decay():
    for step in (0, 1, 3, 9, 10):
        np.testing.assert_allclose(mb.background_lr(jnp.asarray(step), 10), _background(step, 10),
                                   rtol=1e-6)


def test_schedule_scales_and_gates_at_phase_boundaries():
    method = _method()
    assert [(s.start, s.stop, s.kind, s.layer) for s in method.segments] == [
        (0, 10, "progressive", 0), (10, 20, "progressive", 1), (20, 30, "progressive", 2),
        (30, 35, "joint", None), (35, mb._OPEN_END, "distillation", None)]
    params = {"student": jax.eval_shape(method.student.init, jax.random.key(0)), "method": {}}

    def scales(step):
        out = method.update_scale(jnp.asarray(step), params)["student"]
        layer = lambda i: float(out["encoder"][f"layer_{i}"]["output"]["kernel"])  # noqa: E731
        return ([layer(i) for i in range(3)], float(out["embeddings"]["word"]["embedding"]),
                float(out["mlm_head"]["bias"]))

    assert scales(10) == ([0.0, 0.0, 0.0], 0.0, 0.0)  # each sub-phase warms up from 0
    bg = _background(5, 10)
    layers, emb, head = scales(15)
    np.testing.assert_allclose(layers, [0.3 * bg, 3 * bg, 0.0], rtol=1e-6)
    assert (emb, head) == (0.0, 0.0)  # non-encoder parameters stay frozen
    assert scales(32) == ([1.0, 1.0, 1.0], 0.0, 0.0)
    assert scales(35) == ([1.0, 1.0, 1.0], 1.0, 1.0)
    assert scales(10 ** 6) == ([1.0, 1.0, 1.0], 1.0, 1.0)

    with_emb = _method({"train_embeddings": True})
    out = with_emb.update_scale(jnp.asarray(5), params)["student"]
    np.testing.assert_allclose(float(out["embeddings"]["word"]["embedding"]), 3 * _background(5, 10),
                               rtol=1e-6)

    scanned = _method(scan=True)
    shapes = {"student": jax.eval_shape(scanned.student.init, jax.random.key(0)), "method": {}}
    kernel = shapes["student"]["encoder"]["layers"]["layer"]["output"]["kernel"]
    stacked = scanned.update_scale(jnp.asarray(15), shapes)["student"]["encoder"]["layers"][
        "layer"]["output"]["kernel"]
    assert stacked.shape == (3, 1, 1) and kernel.shape[0] == 3
    np.testing.assert_allclose(stacked.ravel(), [0.3 * bg, 3 * bg, 0.0], rtol=1e-6)


def _outputs(r, b, t, layers, heads, h, v, masked):
    hidden = tuple(jnp.asarray(r.normal(size=(b, t, h)), jnp.float32) for _ in range(layers + 1))
    probs = tuple(jax.nn.softmax(jnp.asarray(r.normal(size=(b, heads, t, t)), jnp.float32))
                  for _ in range(layers))
    return Outputs(hidden[-1], hidden, None, probs, None,
                   jnp.asarray(r.normal(size=(b, masked, v)), jnp.float32))


def test_loss_follows_the_phase():
    method = _method({"mean_factor": 5000.0, "variance_factor": 5.0})
    r = _rng(1)
    b, t = 2, 6
    student, teacher = (_outputs(r, b, t, 3, 2, 16, 50, 2) for _ in range(2))
    mask = _mask(b, t)
    batch = {"attention_mask": jnp.asarray(mask), "masked_ids": jnp.asarray([[1, 2], [3, 4]]),
             "masked_weights": jnp.asarray([[1.0, 1.0], [1.0, 0.0]])}

    def layer_terms(i):
        s, te = student.hidden_states[i + 1], teacher.hidden_states[i + 1]
        means, variances = losses.mean_variance_terms(s, te, mask)
        att = losses.attention_kl(student.attention_probs[i], teacher.attention_probs[i], mask)
        return 100.0 * losses.feature_map_mse(s, te, mask) + att + 5000.0 * means + 5.0 * variances

    def loss(step):
        return float(method.loss({}, {"student": student, "teacher": teacher}, batch,
                                 step=jnp.asarray(step))[0])

    np.testing.assert_allclose(loss(12), layer_terms(1) / 3, rtol=1e-5)
    np.testing.assert_allclose(loss(31), sum(layer_terms(i) for i in range(3)) / 3, rtol=1e-5)
    mlm = losses.distillation_mlm(student.logits, teacher.logits, batch["masked_ids"],
                              batch["masked_weights"], 0.5, 1.0)
    np.testing.assert_allclose(loss(40), mlm, rtol=1e-5)


def test_a_real_step_moves_only_what_the_phase_trains():
    from jaxdistill.config import OptimizerConfig
    from jaxdistill.train import optim, state as state_lib
    from jaxdistill.train.step import StepContext, train_step

    method = _method()
    models = method.models
    params = {"student": models["student"].init(jax.random.key(0)), "method": {}}
    tx = optim.optimizer(OptimizerConfig(name="lamb", schedule="constant", warmup_steps=0), 1e-3, 100)
    state = state_lib.create(params, tx, 0).replace(step=jnp.asarray(15, jnp.int32))
    teacher = {"teacher": models["teacher"].init(jax.random.key(1))}
    r = _rng(2)
    batch = {"input_ids": jnp.asarray(r.integers(5, 50, (4, 8)), jnp.int32),
             "attention_mask": jnp.ones((4, 8), jnp.int32),
             "token_type_ids": jnp.zeros((4, 8), jnp.int32),
             "masked_positions": jnp.asarray([[1, 2]] * 4, jnp.int32),
             "masked_ids": jnp.asarray([[7, 8]] * 4, jnp.int32),
             "masked_weights": jnp.ones((4, 2), jnp.float32)}
    ctx = StepContext(models=models, method=method, tx=tx, lr_schedule=lambda s: 1e-3)
    new, _ = jax.jit(lambda s: train_step(s, teacher, batch, ctx))(state)

    def moved(path):
        old, now = params["student"], new.params["student"]
        for key in path:
            old, now = old[key], now[key]
        return not np.array_equal(np.asarray(old), np.asarray(now))

    assert moved(("encoder", "layer_1", "output", "kernel"))  # the phase's layer
    assert moved(("encoder", "layer_0", "output", "kernel"))  # below it, at 0.1 of the rate
    assert not moved(("encoder", "layer_2", "output", "kernel"))  # above it: frozen
    assert not moved(("embeddings", "word", "embedding"))
    assert not moved(("mlm_head", "bias"))


@pytest.mark.parametrize("change, needle", [
    ({"num_layers": 2}, "num_layers 2 differs from the teacher's 3"),
    ({"hidden_size": 12, "num_heads": 2}, "hidden_size 12 differs"),
    ({"num_heads": 4}, "num_heads 4 differs"),
])
def test_shapes_that_cannot_be_transferred_are_user_errors(change, needle):
    with pytest.raises(UserError, match=needle):
        _method(**change)


@pytest.mark.parametrize("phases, needle", [
    ([{"kind": "progressive", "steps": 3}], "give steps_per_layer"),
    ([{"kind": "joint"}, {"kind": "distillation"}], "only the last phase"),
    ([{"kind": "warmup", "steps": 3}], "expected one of progressive, joint, distillation"),
])
def test_bad_phases_are_user_errors(phases, needle):
    with pytest.raises(UserError, match=needle):
        _method({"phases": phases})


MOBILE_STUDENT = ["student.kind=mobilebert", "student.hidden_size=32", "student.num_layers=2",
                  "student.num_heads=4", "student.embedding_size=16",
                  "student.intra_bottleneck_size=16", "student.intermediate_size=32",
                  "student.num_feedforward_networks=2"]


def test_progressive_then_distillation_resumes_across_a_phase_boundary(tmp_path, prepared):
    teacher = write_tiny_teacher(tmp_path / "teacher", arch="BertForMaskedLM", layers=2,
                                 hidden=32, heads=4)
    recipe = tmp_path / "mobilebert.yaml"
    recipe.write_text(json.dumps({
        "base": str(__import__("helpers").REPO / "configs" / "mobilebert_demo.yaml"),
        "method": {"name": "mobilebert", "options": {
            "phases": [{"kind": "progressive", "steps_per_layer": 2}, {"kind": "distillation"}]}},
    }))
    common = ["pretrain", "--config", str(recipe), f"teacher.path={teacher}",
              f"data.prepared_dir={prepared}", "seq_len=32", "batch_size=8", "tensorboard=false",
              "log_every=1", "save_every=100", "data.max_documents=200", *MOBILE_STUDENT]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli(*common, f"run_dir={straight}", "steps=8")
    run_cli(*common, f"run_dir={resumed}", "steps=3", "export=false")  # stops inside layer 2
    run_cli(*common, f"run_dir={resumed}", "steps=8", "export=false")
    rows, again = read_metrics(straight), read_metrics(resumed)
    assert [r["phase"] for r in rows] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert all(r["loss/feature_map"] > 0 and r["loss/distill_mlm"] == 0 for r in rows[:4])
    assert all(r["loss/feature_map"] == 0 and r["loss/distill_mlm"] > 0 for r in rows[4:])
    assert [r["step"] for r in again] == list(range(1, 9))
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]  # bit for bit

    import transformers
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(straight / "hf"))
    assert type(hf).__name__ == "MobileBertForMaskedLM"


def test_lamb_skips_biases_and_norms_in_decay_and_trust_ratio():
    import optax

    from jaxdistill.config import OptimizerConfig
    from jaxdistill.train import optim

    r = _rng(3)
    params = {"kernel": jnp.asarray(r.normal(size=(4, 3)), jnp.float32),
              "bias": jnp.asarray(r.normal(size=(3,)), jnp.float32)}
    grads = jax.tree.map(lambda x: jnp.asarray(r.normal(size=x.shape), jnp.float32), params)
    cfg = OptimizerConfig(name="lamb", schedule="constant", warmup_steps=0, grad_clip=0,
                          weight_decay=0.01)
    ours, _ = optim.optimizer(cfg, 1e-2, 10).update(grads, optim.optimizer(cfg, 1e-2, 10).init(
        params), params)
    lamb = optax.lamb(1e-2, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=0.01)
    reference, _ = lamb.update(grads, lamb.init(params), params)
    np.testing.assert_allclose(ours["kernel"], reference["kernel"], rtol=1e-5)
    adam = optax.adam(1e-2, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)  # no decay, no trust ratio
    plain, _ = adam.update(grads, adam.init(params), params)
    np.testing.assert_allclose(ours["bias"], plain["bias"], rtol=1e-5)


def _batch(seed=2):
    r = _rng(seed)
    return {"input_ids": jnp.asarray(r.integers(5, 50, (4, 8)), jnp.int32),
            "attention_mask": jnp.ones((4, 8), jnp.int32),
            "token_type_ids": jnp.zeros((4, 8), jnp.int32),
            "masked_positions": jnp.asarray([[1, 2]] * 4, jnp.int32),
            "masked_ids": jnp.asarray([[7, 8]] * 4, jnp.int32),
            "masked_weights": jnp.ones((4, 2), jnp.float32)}


def _lamb_run(scan: bool, start: int, steps: int, options=None, primed: bool = False):
    """`steps` LAMB steps of the tiny student from `start`, with per-step losses and the final
    params in the unscanned layout; `primed`: Adam moments start at 1e-3 instead of 0."""
    import optax

    from jaxdistill import sharding
    from jaxdistill.config import OptimizerConfig
    from jaxdistill.train import optim, state as state_lib
    from jaxdistill.train.step import StepContext, train_step

    # No dropout: a scanned stack draws its dropout masks differently.
    no_dropout = {"hidden_dropout": 0.0, "attention_dropout": 0.0}
    method = _method(options, scan=scan, **no_dropout)
    models = method.models
    flat = _method(options, **no_dropout).models["student"].init(jax.random.key(0))
    params = {"student": models["student"].from_canonical(flat), "method": {}}
    logical = {"student": models["student"].logical_axes(), "method": {}}
    cfg = OptimizerConfig(name="lamb", schedule="constant", warmup_steps=0, weight_decay=0.01)
    tx = optim.optimizer(cfg, 1e-2, 100, stacked=sharding.stacked_layers(logical, params))
    state = state_lib.create(params, tx, 0).replace(step=jnp.asarray(start, jnp.int32))
    if primed:
        state = state.replace(opt_state=optax.tree_map_params(
            tx, lambda x: jnp.full_like(x, 1e-3), state.opt_state))
    teacher = {"teacher": models["teacher"].init(jax.random.key(1))}
    ctx = StepContext(models=models, method=method, tx=tx, lr_schedule=lambda s: 1e-2)
    step = jax.jit(lambda s, b: train_step(s, teacher, b, ctx))
    loss = []
    for i in range(steps):
        state, metrics = step(state, _batch(10 + i))
        loss.append(float(metrics["loss"]))
    return loss, models["student"].canonical(state.params["student"]), state


# From layer 0's progressive phase into layer 1's; from the joint phase into distillation.
@pytest.mark.parametrize("start", [8, 33])
def test_lamb_scanned_and_unscanned_take_the_same_steps(start):
    plain_loss, plain, _ = _lamb_run(False, start, 4, {"train_embeddings": True})
    scan_loss, scanned, _ = _lamb_run(True, start, 4, {"train_embeddings": True})
    np.testing.assert_allclose(scan_loss, plain_loss, rtol=2e-5)
    for path, a in __import__("flax").traverse_util.flatten_dict(plain).items():
        b = __import__("flax").traverse_util.flatten_dict(scanned)[path]
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-6,
                                   err_msg="/".join(path))


def test_frozen_tensors_stay_bit_for_bit_with_weight_decay_on():
    from flax import traverse_util

    # Steps 11-14: layer 1's phase; layer 2 is frozen and so is the MLM head (no gradient from
    # the transfer loss), though weight decay is on and the embeddings train.
    _, before, _ = _lamb_run(True, 11, 0, {"train_embeddings": True})
    _, after, state = _lamb_run(True, 11, 4, {"train_embeddings": True}, primed=True)
    flat0, flat = traverse_util.flatten_dict(before), traverse_util.flatten_dict(after)
    for path, old in flat0.items():
        now = flat[path]
        frozen = path[1:2] == ("layer_2",) or path[0] == "mlm_head"
        assert np.array_equal(np.asarray(old), np.asarray(now)) == frozen, "/".join(path)
    # The frozen layer's and the head's Adam moments are as they were (no decay while frozen).
    for moments in _adam_moments(state.opt_state):
        kernel = np.asarray(moments["student"]["encoder"]["layers"]["layer"]["output"]["kernel"])
        assert np.all(kernel[2] == np.float32(1e-3)) and not np.all(kernel[1] == np.float32(1e-3))
        head = np.asarray(moments["student"]["mlm_head"]["transform"]["kernel"])
        assert np.all(head == np.float32(1e-3))


def _adam_moments(opt_state):
    import optax

    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
    return found[0].mu, found[0].nu
