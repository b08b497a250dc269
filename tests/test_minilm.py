"""MiniLM and MiniLMv2: the relation loss against a PyTorch transcription of the papers'
equations, v1's attention term against the models' own attention maps, which layers form
relations, option errors, the shipped recipes' sizes, mesh equivalence, and `pretrain` end to end
with SIGKILL, exact resume and export."""
from __future__ import annotations

import functools
import math
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from helpers import (TINY, final_params, interrupt_at_first_checkpoint, loss_columns, make_method,
                     read_metrics, run_cli)
from jaxdistill.errors import UserError
from jaxdistill.models import Wants
from jaxdistill.models.bert import BertConfig, BertModel, init_params
from jaxdistill import losses

# A wide initialisation: peaked relations, so the losses compared are far from 0.
SMALL = dict(vocab_size=40, max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0,
             initializer_range=0.3)
# Different widths and head counts: 3 x 24 with 2 heads learns from 4 x 32 with 4 heads.
STUDENT = BertConfig(hidden_size=24, num_layers=3, num_heads=2, intermediate_size=32, **SMALL)
TEACHER = BertConfig(hidden_size=32, num_layers=4, num_heads=4, intermediate_size=48, **SMALL)
LENGTHS = (8, 6, 3)
B, T = len(LENGTHS), 8


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = (np.arange(T)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int32)
    ids = rng.integers(1, SMALL["vocab_size"], (B, T)).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(cfg, params, batch, wants):
    return BertModel(cfg).apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                batch["token_type_ids"], capture=wants)


def _torch_relation_loss(s_a, s_b, t_a, t_b, heads, lengths):
    """The papers' relation loss, transcribed: per sequence x (its |x| real tokens, padding cut
    off), per relation head, R = softmax(A B^T / sqrt(d_r)) of the concatenated heads split in
    `heads`; KL(R_T || R_S) summed over heads and tokens / (heads * |x|); mean over sequences."""
    total = 0.0
    for b, n in enumerate(lengths):
        rel = {}
        for side, (a, bb) in (("s", (s_a, s_b)), ("t", (t_a, t_b))):
            a = torch.tensor(np.asarray(a, np.float32)[b, :n]).reshape(n, -1)
            bb = torch.tensor(np.asarray(bb, np.float32)[b, :n]).reshape(n, -1)
            d_r = a.shape[-1] // heads
            a = a.view(n, heads, d_r).transpose(0, 1)
            bb = bb.view(n, heads, d_r).transpose(0, 1)
            rel[side] = a @ bb.transpose(-1, -2) / math.sqrt(d_r)  # [heads, n, n]
        kl = torch.nn.KLDivLoss(reduction="sum")(torch.log_softmax(rel["s"], -1),
                                                  torch.softmax(rel["t"], -1))
        total += kl.item() / (heads * n)
    return total / len(lengths)


@pytest.fixture(scope="module")
def outputs():
    """q/k/v (and attention maps) of every layer of a random student and teacher."""
    batch = _batch()
    everything = Wants(attention_qkv=True, attention_probs=True)
    s = _forward(STUDENT, init_params(STUDENT, jax.random.key(1)), batch, everything)
    t = _forward(TEACHER, init_params(TEACHER, jax.random.key(2)), batch, everything)
    return batch, s, t


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
@pytest.mark.parametrize("pair", ["qq", "kk", "vv", "qk"])
def test_relation_loss_matches_the_papers_equations(outputs, heads, pair):
    batch, s, t = outputs
    field = {"q": "attention_queries", "k": "attention_keys", "v": "attention_values"}
    s_a, s_b = (getattr(s, field[c])[-1] for c in pair)
    t_a, t_b = (getattr(t, field[c])[-1] for c in pair)
    ours = losses.relation_kl((s_a, s_b), (t_a, t_b), heads, batch["attention_mask"])
    ref = _torch_relation_loss(s_a, s_b, t_a, t_b, heads, LENGTHS)
    assert ref > 0.05  # random models disagree: the comparison is not of two zeros
    np.testing.assert_allclose(float(ours), ref, rtol=2e-5)


def test_padding_changes_nothing(outputs):
    """Garbage at padded positions (tokens, q/k/v) leaves the loss unchanged."""
    batch, s, t = outputs
    pad = ~batch["attention_mask"].astype(bool)[:, :, None, None]
    noisy = lambda x: jnp.where(pad, 100.0 * jnp.sign(x) + 7.0, x)  # noqa: E731
    args = lambda f: ((f(s.attention_values[-1]),) * 2, (f(t.attention_values[-1]),) * 2)  # noqa
    clean = losses.relation_kl(*args(lambda x: x), 4, batch["attention_mask"])
    dirty = losses.relation_kl(*args(noisy), 4, batch["attention_mask"])
    np.testing.assert_allclose(float(dirty), float(clean), rtol=1e-6)
    grads = jax.grad(lambda v: losses.relation_kl((v, v), (t.attention_values[-1],) * 2, 4,
                                                  batch["attention_mask"]))(s.attention_values[-1])
    assert np.isfinite(np.asarray(grads)).all()
    assert float(jnp.abs(jnp.where(pad, grads, 0.0)).max()) == 0.0


def test_v1_attention_term_is_the_kl_of_the_models_attention_maps(outputs):
    """MiniLM v1's attention transfer: (q, k) per attention head is the attention distribution
    each model computes; the transcription takes the models' own maps."""
    batch, s, t = outputs
    student = STUDENT.replace(num_heads=4)  # v1 needs equal head counts
    s = _forward(student, init_params(student, jax.random.key(1)), batch,
                 Wants(attention_qkv=True, attention_probs=True))
    method = make_method("minilm", {"version": 1}, student, TEACHER)
    loss, metrics = method.loss({}, {"student": s, "teacher": t}, batch)
    total = 0.0
    for b, n in enumerate(LENGTHS):
        p_s = torch.tensor(np.asarray(s.attention_probs[-1])[b, :, :n, :n])
        p_t = torch.tensor(np.asarray(t.attention_probs[-1])[b, :, :n, :n])
        total += torch.nn.KLDivLoss(reduction="sum")(p_s.log(), p_t).item() / (4 * n)
    np.testing.assert_allclose(float(metrics["loss/qk_kl"]), total / B, rtol=1e-4)
    vv = _torch_relation_loss(s.attention_values[-1], s.attention_values[-1],
                              t.attention_values[-1], t.attention_values[-1], 4, LENGTHS)
    np.testing.assert_allclose(float(metrics["loss/vv_kl"]), vv, rtol=2e-5)
    np.testing.assert_allclose(float(loss), total / B + vv, rtol=1e-4)


def test_v2_loss_weights_the_three_relations(outputs):
    batch, s, t = outputs
    method = make_method("minilm", {"relation_heads": 8, "teacher_layer": 3,
                                    "relations": {"qq": 0.5, "kk": 1.0, "vv": 2.0}},
                         STUDENT, TEACHER)
    loss, metrics = method.loss({}, {"student": s, "teacher": t}, batch)
    assert set(metrics) == {"loss/qq_kl", "loss/kk_kl", "loss/vv_kl"}
    expected = 0.0
    for pair, weight in (("qq", 0.5), ("kk", 1.0), ("vv", 2.0)):
        field = {"q": "attention_queries", "k": "attention_keys", "v": "attention_values"}[pair[0]]
        # student's last layer (3 of 3), teacher layer 3 of 4 (index 2)
        ref = _torch_relation_loss(getattr(s, field)[2], getattr(s, field)[2],
                                   getattr(t, field)[2], getattr(t, field)[2], 8, LENGTHS)
        np.testing.assert_allclose(float(metrics[f"loss/{pair}_kl"]), ref, rtol=2e-5)
        expected += weight * ref
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)


def _relation_dots(hlo: str, heads: int) -> int:
    """dot_generals in StableHLO text whose result is a [B, heads, T, T] relation."""
    shape = f"tensor<{B}x{heads}x{T}x{T}xf32>"
    return sum(1 for line in hlo.splitlines()
               if "dot_general" in line and line.rstrip().endswith(shape))


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_only_the_chosen_layers_form_relations(scan):
    """The jitted step's forward passes keep q/k/v of the chosen layers only (None elsewhere),
    and its program forms the three relations once per side, whatever the depth."""
    student, teacher = STUDENT.replace(scan_layers=scan), TEACHER.replace(scan_layers=scan)
    method = make_method("minilm", {"relation_heads": 8, "teacher_layer": 2}, student, TEACHER)
    wants = method.wants()
    batch = _batch()
    s_params, t_params = init_params(student, jax.random.key(1)), init_params(teacher,
                                                                              jax.random.key(2))

    def step(s_params, t_params):
        t_out = BertModel(teacher).apply({"params": t_params}, batch["input_ids"],
                                         batch["attention_mask"], capture=wants["teacher"])
        s_out = BertModel(student).apply({"params": s_params}, batch["input_ids"],
                                         batch["attention_mask"], capture=wants["student"])
        loss, _ = method.loss({}, {"student": s_out, "teacher": t_out}, batch)
        return loss, (s_out.attention_queries, t_out.attention_values)

    loss, (s_q, t_v) = jax.jit(step)(s_params, t_params)
    assert [x is None for x in s_q] == [True, True, False]
    assert [x is None for x in t_v] == [True, False, True, True]
    assert np.isfinite(float(loss))
    # qq, kk, vv for each side; no other layer forms one. (The attention itself has 2 and 4
    # heads: other shapes.)
    assert _relation_dots(jax.jit(step).lower(s_params, t_params).as_text(), 8) == 6


@pytest.mark.parametrize("options, change, needle", [
    ({"version": 1}, {}, "2 heads and the teacher 4"),
    ({"relation_heads": 5}, {}, "does not divide the student's attention width 24"),
    ({"teacher_layer": 5}, {}, "teacher_layer=5 is beyond the 4-layer teacher"),
    ({"student_layer": 0}, {}, "student_layer=0: must be >= 1"),
    ({"relations": {"qx": 1.0}}, {}, "'qx' is not a pair of q, k, v"),
    ({"relations": {"qq": 0.0}}, {}, "at least one pair"),
    ({"version": 3}, {}, "expected 1 (MiniLM) or 2"),
    ({"version": 1, "relation_heads": 4}, {"num_heads": 4}, "relates per attention head"),
    ({"relation_head": 4}, {}, "Did you mean 'relation_heads'"),
])
def test_bad_options_are_user_errors(options, change, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        make_method("minilm", options, STUDENT.replace(**change), TEACHER)


# --- end to end ------------------------------------------------------------------------------

# The embedded recipe at tiny sizes (its 12 relation heads do not divide 24: 8 do).
RECIPE = "configs/minilm_demo.yaml"
MINILM = ["method.options.relation_heads=8"]


def _args(run_dir, teacher, prepared, *extra):
    return ["pretrain", "--config", RECIPE, f"run_dir={run_dir}", f"teacher.path={teacher}",
            f"data.prepared_dir={prepared}", *TINY, *MINILM, *extra]


# 1 device == 8 fake devices on a (2, 2, 2) mesh: tests/test_pretrain.py::test_meshes_match_one_device
# runs MiniLMv2 beside TinyBERT in the same two processes.


def test_pretrain_sigkill_resumes_exactly_and_exports(tmp_path, tiny_teacher, prepared):
    straight = tmp_path / "straight"
    run_cli(*_args(straight, tiny_teacher, prepared, "steps=60", "save_every=10"))
    rows = read_metrics(straight)
    early = np.mean([r["loss"] for r in rows[:5]])
    late = np.mean([r["loss"] for r in rows[-5:]])
    assert late < 0.8 * early, (early, late)

    run_dir = tmp_path / "killed"
    args = _args(run_dir, tiny_teacher, prepared, "steps=60", "save_every=10")
    killed = interrupt_at_first_checkpoint(["-m", "jaxdistill.cli", *args], run_dir,
                                           signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    stopped_at = max(int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit())
    assert stopped_at < 60, "the run finished before it was killed; the test proves nothing"
    run_cli(*args)
    assert loss_columns(read_metrics(run_dir)) == loss_columns(rows)
    a, b = final_params(run_dir), final_params(straight)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    import transformers

    model = transformers.AutoModel.from_pretrained(run_dir / "hf")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 24
    # The task stage reads a MiniLM student as any general-distillation student (student.init:
    # RUN_DIR): configs/pipelines/minilm.yaml's kd_* stages, run by benchmarks/minilm.py.


BERT_BASE = BertConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
BERT_LARGE = BertConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096)


@pytest.mark.parametrize("recipe, teacher", [
    ("minilm_demo.yaml", BertConfig(hidden_size=384, num_layers=6, intermediate_size=1536)),
    ("minilmv2_6x384_general.yaml", BERT_BASE), ("minilmv2_6x768_general.yaml", BERT_BASE),
    ("minilmv2_large_6x384_general.yaml", BERT_LARGE)])
def test_shipped_recipes_fit_their_teachers(recipe, teacher):
    """The papers' sizes: relation heads divide both widths, the teacher layer exists."""
    from jaxdistill import config
    from jaxdistill.train import kinds

    cfg = kinds.load("pretrain", config.CONFIG_DIR / recipe, [])[1]
    arch = cfg.student.architecture
    student = BertConfig(**{k: arch[k] for k in ("hidden_size", "num_layers", "num_heads",
                                                 "intermediate_size")})
    method = make_method("minilm", cfg.method.options, student, teacher)
    assert method.student_layer == student.num_layers
    assert method.teacher_layer == (21 if teacher is BERT_LARGE else teacher.num_layers)


def test_flops_count_the_teacher_layers_a_step_runs():
    """Layer 2 of a 4-layer unrolled teacher: its layers 3-4 never run (nothing reads them), so
    MFU's FLOP count leaves them out; a scanned teacher runs them all."""
    from jaxdistill.models.bert import Bert
    from jaxdistill.train import flops

    method = make_method("minilm", {"teacher_layer": 2}, STUDENT, TEACHER)
    assert method.teacher_layers_read("teacher") == 2
    run = flops.teacher_as_run(Bert(TEACHER), method.teacher_layers_read("teacher"))
    assert run.config.num_layers == 2
    full, half = (m.forward_flops_per_token(8) for m in (Bert(TEACHER), run))
    assert half == pytest.approx(full / 2)
    scanned = Bert(TEACHER.replace(scan_layers=True))
    assert flops.teacher_as_run(scanned, 2) is scanned
    assert make_method("tinybert", {}, STUDENT.replace(num_layers=2, num_heads=4), TEACHER
                       ).teacher_layers_read("teacher") is None
