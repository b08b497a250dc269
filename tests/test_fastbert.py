"""FastBERT: the exit branch against a PyTorch transcription of the reference's ClassifierModule,
the self-distillation loss against torch's KLDivLoss, adaptive inference (speed 0 is the full
model; the batched, compacting early exit equals a per-example loop), and both stages end to end
with resume, the speed sweep and the export."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_TASK, loss_of, make_method, read_metrics, run_cli, tiny_task_args
from jaxdistill.inference.early_exit import EarlyExit
from jaxdistill.models import Outputs, exit_branches
from jaxdistill.models.bert import Bert, BertConfig
from jaxdistill.models.mobilebert import MobileBert, MobileBertConfig

SHAPE = exit_branches.BranchShape(hidden_size=16, num_labels=3, width=8, heads=2, dropout=0.0)
CFG = BertConfig(vocab_size=60, hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32,
                 max_position_embeddings=16, head="classifier", num_labels=3, hidden_dropout=0.0,
                 attention_dropout=0.0)
RNG = np.random.default_rng(0)


def _batch(b=6, t=10, seed=0):
    ids = np.random.default_rng(seed).integers(5, CFG.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    for row in range(b):
        mask[row, t - row:] = 0  # a different length per row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


class TorchBranch(torch.nn.Module):
    """The reference's ClassifierModule (run_fastbert.py), transcribed."""

    def __init__(self, hidden, width, heads, labels):
        super().__init__()
        self.heads, self.width = heads, width
        self.reduce = torch.nn.Linear(hidden, width)
        self.q, self.k, self.v = (torch.nn.Linear(width, width) for _ in range(3))
        self.out = torch.nn.Linear(width, width)
        self.pool = torch.nn.Linear(width, width)
        self.cls = torch.nn.Linear(width, labels)

    def forward(self, hidden, mask):
        x = torch.tanh(self.reduce(hidden))
        b, t, _ = x.shape
        d = self.width // self.heads
        split = lambda y: y.view(b, t, self.heads, d).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / d ** 0.5 + (1.0 - mask[:, None, None, :]) * -10000.0
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, self.width)
        return self.cls(torch.tanh(self.pool(self.out(ctx)[:, 0])))


def _load_linear(linear, p):
    linear.weight.data = torch.tensor(np.asarray(p["kernel"]).T.copy())
    linear.bias.data = torch.tensor(np.asarray(p["bias"]))


def test_branch_matches_the_reference_classifier_module():
    params = jax.tree.map(lambda x: x[0], exit_branches.init(SHAPE, 1, jax.random.key(1)))
    hidden = RNG.standard_normal((3, 7, 16)).astype(np.float32)
    mask = np.ones((3, 7), np.float32)
    mask[1, 4:] = 0
    ours = exit_branches.apply_one(SHAPE, params, jnp.asarray(hidden), jnp.asarray(mask))
    ref = TorchBranch(16, 8, 2, 3)
    for ours_name, theirs in (("reduce", ref.reduce), ("query", ref.q), ("key", ref.k),
                              ("value", ref.v), ("out", ref.out), ("pool", ref.pool),
                              ("classifier", ref.cls)):
        _load_linear(theirs, params[ours_name])
    with torch.no_grad():
        theirs = ref(torch.tensor(hidden), torch.tensor(mask)).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-6)
    assert exit_branches.axes(exit_branches.init(SHAPE, 2, jax.random.key(0)))["reduce"][
        "kernel"] == jax.sharding.PartitionSpec("layers", None, None)


def test_self_distillation_loss_is_summed_kl_to_the_final_classifier():
    method = make_method("fastbert", {"width": 8, "heads": 2, "dropout": 0.0}, CFG, CFG)
    params = method.init_params(jax.random.key(2))
    hidden = tuple(jnp.asarray(RNG.standard_normal((5, 6, 16)), jnp.float32) for _ in range(5))
    final = jnp.asarray(RNG.standard_normal((5, 3)), jnp.float32)
    mask = jnp.ones((5, 6), jnp.int32)
    loss, metrics = loss_of(method, params, Outputs(hidden_states=hidden, logits=final), None,
                            {"attention_mask": mask})
    ref = 0.0
    for i in range(3):  # branches after layers 1..3 of 4: hidden states 1..3
        branch = exit_branches.apply_one(method.shape, jax.tree.map(lambda x: x[i],
                                                                     params["branches"]),
                                         hidden[i + 1], mask)
        ref += F.kl_div(F.log_softmax(torch.tensor(np.asarray(branch)), -1),
                        F.softmax(torch.tensor(np.asarray(final)), -1), reduction="batchmean")
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    assert set(metrics) == {"loss/kl", "loss/kl/L1", "loss/kl/L2", "loss/kl/L3"}
    grads = jax.grad(lambda p: loss_of(method, p, Outputs(hidden_states=hidden, logits=final),
                                       None, {"attention_mask": mask})[0])(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_options_and_dropout_are_checked():
    from jaxdistill.errors import UserError

    with pytest.raises(UserError, match="hidden_dropout=0"):
        make_method("fastbert", {}, CFG.replace(hidden_dropout=0.1), CFG)
    with pytest.raises(UserError, match="multiple of its 3 heads"):
        make_method("fastbert", {"width": 8, "heads": 3}, CFG, CFG)
    with pytest.raises(UserError, match="regression"):
        make_method("fastbert", {}, CFG.replace(num_labels=1), CFG)


# FastBERT's backbone may be any kind that runs layer by layer (models.LayerByLayer): BERT, and a
# MobileBERT of the same block width (bottlenecks, 2 stacked FFNs, no-norm), its pooler the
# first token.
MOBILE = MobileBertConfig(vocab_size=60, embedding_size=8, hidden_size=16, num_layers=4,
                          num_heads=2, intra_bottleneck_size=8, intermediate_size=16,
                          num_feedforward_networks=2, max_position_embeddings=16,
                          head="classifier", num_labels=3, hidden_dropout=0.0,
                          attention_dropout=0.0)


@pytest.fixture(scope="module", params=["bert", "mobilebert"])
def runner(request):
    model = Bert(CFG) if request.param == "bert" else MobileBert(MOBILE)
    params = model.init(jax.random.key(3))
    branches = exit_branches.init(SHAPE, CFG.num_layers - 1, jax.random.key(4))
    # Larger branch weights, so that some rows are sure early and others are not.
    branches = jax.tree.map(lambda x: x * 25.0 if x.ndim == 3 else x, branches)
    return EarlyExit(model, params, branches, SHAPE, min_bucket=2), model, params, branches


def test_speed_zero_is_exactly_the_full_model(runner):
    run, model, params, _ = runner
    batch = _batch()
    logits, exits = run.predict(batch, 0.0)
    full = jax.jit(lambda p, b: model.apply(p, b).logits)(
        params, {k: jnp.asarray(v) for k, v in batch.items()})  # the classifier, as evaluated
    np.testing.assert_array_equal(logits, np.asarray(full))
    assert (exits == CFG.num_layers).all()
    assert run.flops_per_example(exits, 10, 0.0) == pytest.approx(run.full_flops(10))


def _one_by_one(model, params, branches, batch, speed):
    """The rule as a loop over examples and layers, batch 1, no compaction."""
    logits, exits = [], []
    for row in range(len(batch["input_ids"])):
        one = {k: jnp.asarray(v[row:row + 1]) for k, v in batch.items()}
        x, key_mask = model.embed(params, one)
        for i in range(CFG.num_layers):
            x = model.layer(model.layer_params(params, i), x, key_mask)
            if i == CFG.num_layers - 1:
                logits.append(np.asarray(model.classify(params, x))[0])
                exits.append(CFG.num_layers)
                break
            branch = exit_branches.apply_one(SHAPE, jax.tree.map(lambda p: p[i], branches), x,
                                             one["attention_mask"])
            if float(exit_branches.uncertainty(branch)[0]) < speed:
                logits.append(np.asarray(branch)[0])
                exits.append(i + 1)
                break
    return np.stack(logits), np.asarray(exits)


@pytest.mark.parametrize("speed", [0.05, 0.3, 0.6, 0.8, 1.0])
def test_batched_early_exit_equals_a_per_example_loop(runner, speed):
    run, model, params, branches = runner
    batch = _batch(b=7)
    logits, exits = run.predict(batch, speed)
    ref_logits, ref_exits = _one_by_one(model, params, branches, batch, speed)
    np.testing.assert_array_equal(exits, ref_exits)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert np.array_equal(np.argmax(logits, -1), np.argmax(ref_logits, -1))
    if speed == 0.6 and model.kind == "bert":  # some rows leave early, the rest go on,
        # compacted (the compaction is the runner's, whatever the kind; on the MobileBERT
        # backbone every row has the same exit at each speed here, 1 at speed 1.0)
        assert len(set(exits.tolist())) >= 2, exits


def test_two_stages_resume_sweep_and_export(tmp_path, tiny_classifier):
    """Stage 1 is the tiny fine-tuned classifier; stage 2 trains its one branch, resumes
    exactly, leaves the frozen model untouched, and the export runs adaptive inference."""
    from safetensors.numpy import load_file

    import jaxdistill.hf

    def stage2(run_dir):
        return tiny_task_args(run_dir, tiny_classifier / "best", "steps=8", "save_every=4",
                              "eval_every=4", "learning_rate=1e-2",
                              config="configs/task/fastbert.yaml")

    straight = tmp_path / "straight"
    run_cli(*stage2(straight))
    resumed = tmp_path / "resumed"
    run_cli(*stage2(resumed))
    shutil.rmtree(resumed / "checkpoints" / "8")  # as if the run had died after step 4
    shutil.rmtree(resumed / "hf")
    run_cli(*stage2(resumed))
    losses = lambda rows: {r["step"]: {k: v for k, v in r.items() if k.startswith("loss")}  # noqa
                           for r in rows}
    assert losses(read_metrics(resumed)) == losses(read_metrics(straight))
    rows = read_metrics(straight)
    assert rows[-1]["loss/kl"] < rows[0]["loss/kl"]

    # The backbone and the final classifier are frozen: the export's weights are stage 1's.
    before, after = (load_file(str(d / "hf" / "model.safetensors"))
                     for d in (tiny_classifier, straight))
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    info = json.loads((straight / "hf" / "exported_params.json").read_text())
    assert info["method"] == "fastbert" and info["options"]["width"] == 128

    report_dir = tmp_path / "sweep"
    swept = run_cli("evaluate", "--model", str(straight / "hf"), "--speeds", "0,0.5,1",
                    "--report-dir", str(report_dir), "--latency-examples", "8", *TINY_TASK,
                    bars=True)
    # A start line and an end line in words, a bar between them (stderr), the JSON summary last.
    printed = swept.stdout.strip().splitlines()
    assert printed[0].startswith("jaxdistill evaluate: FastBERT speed sweep of ") and \
        "3 speeds" in printed[0]
    assert printed[-2].startswith("done: 3 speeds in ") and "report.json" in printed[-2]
    assert "speed sweep: 100%" in swept.stderr
    report = json.loads((report_dir / "report.json").read_text())
    assert (report_dir / "speed_sweep.png").stat().st_size > 1000
    by_speed = {r["speed"]: r for r in report["rows"]}
    teacher_best = json.loads(next((tiny_classifier / "best" / "checkpoints").glob("*/meta/*"))
                              .read_text())["best"]["value"]
    assert by_speed[0.0]["accuracy"] == pytest.approx(teacher_best, abs=1e-9)
    assert by_speed[0.0]["flops_ratio"] == pytest.approx(1.0)
    assert by_speed[1.0]["average_exit_layer"] == 1.0  # every row leaves after layer 1 of 2
    branch = exit_branches.flops_per_example(exit_branches.BranchShape(32, 2), 32)
    assert by_speed[1.0]["flops_per_example"] == pytest.approx(
        report["full_flops_per_example"] / 2 + branch)  # (a 128-wide branch on a 32-wide model)
    for r in report["rows"]:
        assert r["examples_per_sec_batch_1"] > 0 and r["examples_per_sec_batch_64"] > 0

    model = jaxdistill.hf.load(straight / "hf")
    ids = np.asarray([[101, 2023, 3185, 2001, 2307, 102]])
    full = model(ids).logits
    np.testing.assert_array_equal(np.asarray(model(ids, speed=0.0).logits), np.asarray(full))
    assert model(ids, speed=1.0).exit_layers.tolist() == [1]
    copy = jaxdistill.hf.save(model, tmp_path / "copy")
    assert (Path(copy) / "exported_params.safetensors").is_file()


def test_frozen_parameters_get_no_optimizer_moments_and_never_move():
    """Stage 2 freezes the whole student: only the branches keep Adam moments and change."""
    import optax

    from jaxdistill.config import OptimizerConfig
    from jaxdistill.train import optim

    params = {"student": {"encoder": {"w": jnp.ones((4, 4))}, "classifier": {"w": jnp.ones((4, 2))}},
              "method": {"branches": {"w": jnp.ones((3, 4))}}}
    tx = optim.optimizer(OptimizerConfig(warmup_steps=0), 1e-2, 10,
                         frozen=lambda path: path[0] == "student", params=params)
    state = tx.init(params)
    moments = sum(x.size for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0)
    assert moments == 2 * 3 * 4  # mu and nu of the branches only
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    jax.tree.map(np.testing.assert_array_equal, new["student"], params["student"])
    assert not np.array_equal(new["method"]["branches"]["w"], params["method"]["branches"]["w"])
