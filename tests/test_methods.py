"""TinyBERT and DistilBERT methods: layer maps, option validation, losses against PyTorch
references written the way general_distill.py / distiller.py compute them, gradients, and
DistilBERT's initialisation from teacher layers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers import heads, loss_of, make_method
from jaxdistill.errors import UserError
from jaxdistill.methods.base import REGISTRY
from jaxdistill.methods.distilbert import DistilBert, DistilBertOptions
from jaxdistill.methods.layer_match import LayerMatch, evenly_spaced_layers
from jaxdistill.methods.tinybert import TinyBert, TinyBertOptions, uniform_layer_map
from jaxdistill.models import bert
from jaxdistill.models import Outputs, Wants
from jaxdistill.models.bert import BertConfig, BertModel

TINY = dict(vocab_size=40, num_heads=2, max_position_embeddings=16, hidden_dropout=0.0,
            attention_dropout=0.0)
TEACHER = BertConfig(hidden_size=16, num_layers=6, intermediate_size=32, **TINY)
STUDENT = BertConfig(hidden_size=8, num_layers=3, intermediate_size=16, **TINY)
B, T = 3, 8


def _roles(student, teacher):
    return {"student": bert.Bert(student), "teacher": bert.Bert(teacher)}


def teacher_layer_indices(n, m):
    return list(evenly_spaced_layers(n, m))


def student_from_teacher_layers(t_params, teacher_cfg, student_cfg, fallback=None):
    """DistilBERT's initialisation as the pretrain loop calls it (`student.init: teacher_layers`)."""
    layers = evenly_spaced_layers(teacher_cfg.num_layers, student_cfg.num_layers)
    return bert.Bert(student_cfg).copy_layers_from(bert.Bert(teacher_cfg), t_params, layers,
                                                   fallback)


def _pairs(matches, feature):
    return [(m.student, m.teacher) for m in matches if m.feature == feature]


def _batch(seed=0, num_masked=3):
    rng = np.random.default_rng(seed)
    lengths = np.array([T, 6, 4])
    attention_mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    positions = np.zeros((B, num_masked), np.int32)
    weights = np.zeros((B, num_masked), np.float32)
    for row, n in enumerate([3, 2, 1]):  # a different number of real predictions per row
        positions[row, :n] = np.sort(rng.choice(lengths[row], n, replace=False))
        weights[row, :n] = 1.0
    input_ids = rng.integers(1, TINY["vocab_size"], (B, T)).astype(np.int32) * attention_mask
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": np.zeros((B, T), np.int32),
        "masked_positions": positions,
        "masked_ids": rng.integers(1, TINY["vocab_size"], (B, num_masked)).astype(np.int32),
        "masked_weights": weights,
    }


def _init(cfg, seed):
    """Random parameters of `cfg`'s shapes, drawn in NumPy: a jitted Flax init would compile
    one XLA program per config, which costs seconds each on a small CPU."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: bert.init_params(cfg, jax.random.key(0)))

    def draw(path, leaf):
        noise = 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
        return jnp.asarray(noise + (jax.tree_util.keystr(path).endswith("['scale']")))

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _forward(cfg, params, batch, capture, masked=False):
    return BertModel(cfg).apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
        capture=capture, masked_positions=batch["masked_positions"] if masked else None)


# --- TinyBERT layer maps and options -----------------------------------------------------------


def test_uniform_map_6_to_3():
    m = uniform_layer_map(6, 3)
    assert _pairs(m, "attention") == [(0, 1), (1, 3), (2, 5)]
    assert _pairs(m, "embeddings") + _pairs(m, "hidden") == [(0, 0), (1, 2), (2, 4), (3, 6)]


def test_uniform_map_12_to_4():
    m = uniform_layer_map(12, 4)
    assert _pairs(m, "attention") == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert _pairs(m, "embeddings") + _pairs(m, "hidden") == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]


def test_non_divisible_depths_need_explicit_matches():
    student = STUDENT.replace(num_layers=4)
    with pytest.raises(ValueError, match="depth 6 .* depth 4.*matches"):
        TinyBert(TinyBertOptions(), _roles(student, TEACHER))
    with pytest.raises(UserError, match="method.options.*6.*4"):
        make_method("tinybert", {}, student, TEACHER)
    # The prediction stage matches no layers, so any depths work there.
    make_method("tinybert", {"stage": "task_prediction"}, student, TEACHER)


def test_explicit_matches_from_config_data():
    options = yaml.safe_load("""
    matches:
      - {feature: embeddings, weight: 0.5}
      - {feature: hidden, student: 2, teacher: 5}
      - {feature: attention, student: 0, teacher: 2, loss: mse, weight: 2}
    attention_weight: 0.1
    """)
    method = make_method("tinybert", options, STUDENT, TEACHER)
    assert method.matches == (LayerMatch("embeddings", 0, 0, "mse", 0.5),
                              LayerMatch("hidden", 2, 5), LayerMatch("attention", 0, 2, "mse", 2.0))
    assert method.options.attention_weight == 0.1
    assert method.wants()["student"] == Wants(hidden_states=True, attention_scores=True,
                                               attention_layers=(0,))
    assert method.wants()["teacher"].attention_layers == (2,)
    hidden_only = make_method("tinybert", {"matches": [{"feature": "hidden", "student": 1,
                                                         "teacher": 2}]}, STUDENT, TEACHER)
    assert hidden_only.wants()["teacher"] == Wants(hidden_states=True)


@pytest.mark.parametrize("match, message", [
    ({"feature": "hidden", "student": 4, "teacher": 2}, "student hidden state 4 .* 0..3"),
    ({"feature": "attention", "student": 0, "teacher": 6}, "teacher layer 6 .* 0..5"),
    ({"feature": "hidden", "student": 1}, "needs both"),
    ({"feature": "hiden", "student": 1, "teacher": 1}, "expected one of"),
    ({"feature": "hidden", "studnet": 1, "teacher": 1}, "Did you mean 'student'"),
    ({"feature": "hidden", "student": 1, "teacher": 1, "loss": "cosine"}, "loss='cosine'"),
    ({"feature": "embeddings", "student": 1}, "hidden state 0"),
])
def test_bad_matches_are_user_errors(match, message):
    with pytest.raises(UserError, match=message):
        make_method("tinybert", {"matches": [match]}, STUDENT, TEACHER)


def test_one_student_layer_may_learn_from_several_teacher_layers():
    matches = [{"feature": "hidden", "student": 1, "teacher": t} for t in (2, 3)]
    method = make_method("tinybert", {"matches": matches}, STUDENT, TEACHER)
    assert method.metric_names == ["L1_T2", "L1_T3"]
    with pytest.raises(UserError, match="listed twice"):
        make_method("tinybert", {"matches": matches + matches[:1]}, STUDENT, TEACHER)


def test_attention_matches_need_equal_head_counts():
    with pytest.raises(UserError, match="4 heads and the teacher 2"):
        make_method("tinybert", {}, STUDENT.replace(num_heads=4), TEACHER)


def test_unknown_method_and_option_names():
    with pytest.raises(UserError, match="Did you mean 'tinybert'"):
        make_method("tinybret", {}, STUDENT, TEACHER)
    with pytest.raises(UserError, match="Did you mean 'temperature'"):
        make_method("distilbert", {"temprature": 2}, STUDENT, TEACHER)
    with pytest.raises(UserError, match="stage="):
        make_method("tinybert", {"stage": "pretrain"}, STUDENT, TEACHER)
    assert {"tinybert", "distilbert"} <= set(REGISTRY)


# --- TinyBERT loss ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tinybert_run():
    """One jitted loss-and-gradient evaluation on tiny random models, shared by the tests."""
    # 4 -> 2 layers (k = 2) keeps the compiled programs small; the maps have their own tests.
    student, teacher = STUDENT.replace(num_layers=2), TEACHER.replace(num_layers=4)
    method = make_method("tinybert", {}, student, teacher)
    s_params, t_params = _init(student, 1), _init(teacher, 2)
    m_params = method.init_params(jax.random.key(3))
    batch = _batch()
    t_out = _forward(teacher, t_params, batch, method.wants()["teacher"])

    def loss_fn(s_params, m_params):
        s_out = BertModel(student).apply({"params": s_params}, batch["input_ids"],
                                         batch["attention_mask"], capture=method.wants()["student"])
        loss, metrics = loss_of(method, m_params, s_out, t_out, batch)
        return loss, (metrics, s_out)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
    (loss, (metrics, s_out)), grads = grad_fn(s_params, m_params)
    return dict(method=method, m_params=m_params, batch=batch, t_out=t_out, s_out=s_out,
                loss=loss, metrics=metrics, grads=grads)


def _general_distill_reference(s_out, t_out, fit_dense, attention_mask):
    """general_distill.py's att_loss + rep_loss, on our model's captured outputs."""
    linear = torch.nn.Linear(*fit_dense["kernel"].shape)
    linear.weight.data = torch.tensor(np.asarray(fit_dense["kernel"]).T)
    linear.bias.data = torch.tensor(np.asarray(fit_dense["bias"]))
    additive = (1.0 - torch.tensor(attention_mask, dtype=torch.float32))[:, None, None, :] * -10000.0
    student_atts = [torch.tensor(np.asarray(a)) + additive for a in s_out.attention_scores]
    # The teacher formed only the matched layers' scores (None elsewhere): picking any other
    # layer below fails.
    teacher_atts = [None if a is None else torch.tensor(np.asarray(a)) + additive
                    for a in t_out.attention_scores]
    student_reps = [linear(torch.tensor(np.asarray(h))) for h in s_out.hidden_states]
    teacher_reps = [torch.tensor(np.asarray(h)) for h in t_out.hidden_states]
    k = len(teacher_atts) // len(student_atts)
    loss_mse = torch.nn.MSELoss()
    att_loss = 0.0
    for s_att, t_att in zip(student_atts, [teacher_atts[i * k + k - 1] for i in range(len(student_atts))]):
        s_att = torch.where(s_att <= -1e2, torch.zeros_like(s_att), s_att)
        t_att = torch.where(t_att <= -1e2, torch.zeros_like(t_att), t_att)
        att_loss += loss_mse(s_att, t_att)
    rep_loss = sum(loss_mse(s, t) for s, t in
                   zip(student_reps, [teacher_reps[i * k] for i in range(len(student_atts) + 1)]))
    return att_loss.item(), rep_loss.item()


def test_tinybert_general_loss_matches_reference(tinybert_run):
    r = tinybert_run
    loss, metrics = r["loss"], r["metrics"]
    att_ref, rep_ref = _general_distill_reference(r["s_out"], r["t_out"],
                                                  r["m_params"]["fit_dense"],
                                                  r["batch"]["attention_mask"])
    np.testing.assert_allclose(float(metrics["loss/attn_mse"]), att_ref, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss/hidden_mse"] + metrics["loss/embedding_mse"]),
                               rep_ref, rtol=1e-5)
    np.testing.assert_allclose(float(loss), att_ref + rep_ref, rtol=1e-5)
    expected = {"loss/embedding_mse", "loss/hidden_mse", "loss/attn_mse",
                "loss/hidden_mse/L1", "loss/hidden_mse/L2", "loss/attn_mse/L1", "loss/attn_mse/L2"}
    assert set(metrics) == expected


def test_tinybert_gradient_reaches_student_and_projection(tinybert_run):
    assert np.isfinite(float(tinybert_run["loss"]))
    g_student, g_method = tinybert_run["grads"]
    for part in ("embeddings", "encoder"):
        for path, g in jax.tree_util.tree_leaves_with_path(g_student[part]):
            assert float(jnp.abs(g).sum()) > 0, f"no gradient at {part}{jax.tree_util.keystr(path)}"
    assert float(jnp.abs(g_method["fit_dense"]["kernel"]).sum()) > 0


def test_tinybert_projection_params_and_axes():
    method = TinyBert(TinyBertOptions(), _roles(STUDENT, TEACHER))
    params = method.init_params(jax.random.key(0))
    assert params["fit_dense"]["kernel"].shape == (8, 16)
    assert params["fit_dense"]["bias"].shape == (16,)
    axes = method.param_axes()
    assert tuple(axes["fit_dense"]["kernel"]) == ("proj_in", "proj_out")
    assert tuple(axes["fit_dense"]["bias"]) == ("proj_out",)
    assert jax.tree.structure(params) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    # Equal widths keep the projection, as TinyBERT's code always has fit_dense.
    same = TinyBert(TinyBertOptions(), _roles(STUDENT.replace(hidden_size=16), TEACHER))
    assert same.init_params(jax.random.key(0))["fit_dense"]["kernel"].shape == (16, 16)
    # Attention-only matches train no projection.
    attn = TinyBert(TinyBertOptions(matches=({"feature": "attention", "student": 0, "teacher": 0},)),
                    _roles(STUDENT, TEACHER))
    assert attn.init_params(jax.random.key(0)) == {} and attn.param_axes() == {}


def test_tinybert_prediction_stage():
    method = make_method("tinybert", {"stage": "task_prediction", "temperature": 2.0},
                          STUDENT, TEACHER)
    assert (heads(method)["student"], heads(method)["teacher"]) == ("classifier", "classifier")
    assert method.wants()["student"] == Wants() and method.init_params(jax.random.key(0)) == {}
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    out = lambda logits: Outputs(last_hidden_state=jnp.zeros((4, 2, 8)), logits=logits)
    loss, metrics = loss_of(method, {}, out(s), out(t), {})
    ref = (-F.softmax(torch.tensor(t) / 2, -1) * F.log_softmax(torch.tensor(s) / 2, -1)).mean()
    np.testing.assert_allclose(float(loss), float(ref) * 3, rtol=1e-5)  # reference / num_labels
    assert set(metrics) == {"loss/soft_ce"}
    assert heads(make_method("tinybert", {"stage": "task_intermediate"}, STUDENT,
                             TEACHER))["student"] == "classifier"
    assert heads(make_method("tinybert", {}, STUDENT, TEACHER))["student"] == "none"


# --- DistilBERT -------------------------------------------------------------------------------

D_TEACHER = BertConfig(hidden_size=16, num_layers=4, intermediate_size=32, head="mlm", **TINY)
D_STUDENT = D_TEACHER.replace(num_layers=2, flavor="distilbert", type_vocab_size=0)


def _distiller_reference(s_logits, t_logits, s_hidden, t_hidden, attention_mask, lm_labels, opts):
    """distiller.py's step() loss, with or without restrict_ce_to_mask, on [B, T, V] logits."""
    s_logits, t_logits = torch.tensor(np.asarray(s_logits)), torch.tensor(np.asarray(t_logits))
    temperature = opts.temperature
    if opts.restrict_ce_to_mask:
        mask = (lm_labels > -1).unsqueeze(-1).expand_as(s_logits)
    else:
        mask = torch.tensor(attention_mask, dtype=torch.bool).unsqueeze(-1).expand_as(s_logits)
    s_slct = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
    t_slct = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
    loss_ce = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s_slct / temperature, dim=-1), F.softmax(t_slct / temperature, dim=-1),
    ) * temperature ** 2
    loss_mlm = torch.nn.CrossEntropyLoss(ignore_index=-100)(
        s_logits.view(-1, s_logits.size(-1)), lm_labels.view(-1))
    loss_mse = torch.nn.MSELoss(reduction="sum")(s_slct, t_slct) / s_slct.size(0)
    s_hidden, t_hidden = torch.tensor(np.asarray(s_hidden)), torch.tensor(np.asarray(t_hidden))
    hmask = torch.tensor(attention_mask, dtype=torch.bool).unsqueeze(-1).expand_as(s_hidden)
    dim = s_hidden.size(-1)
    s_h = torch.masked_select(s_hidden, hmask).view(-1, dim)
    t_h = torch.masked_select(t_hidden, hmask).view(-1, dim)
    loss_cos = torch.nn.CosineEmbeddingLoss(reduction="mean")(s_h, t_h, s_h.new(s_h.size(0)).fill_(1))
    total = (opts.alpha_ce * loss_ce + opts.alpha_mlm * loss_mlm + opts.alpha_cos * loss_cos
             + opts.alpha_mse * loss_mse)
    terms = {"loss/ce": loss_ce, "loss/mlm": loss_mlm, "loss/cos": loss_cos, "loss/mse": loss_mse}
    return float(total), {k: float(v) for k, v in terms.items()}


def _lm_labels(batch):
    """distiller.py's lm_labels: the original token at each masked position, -100 elsewhere."""
    lm_labels = torch.full((B, T), -100, dtype=torch.long)
    for row, col in zip(*np.nonzero(batch["masked_weights"])):
        lm_labels[row, batch["masked_positions"][row, col]] = int(batch["masked_ids"][row, col])
    return lm_labels


@pytest.fixture(scope="module")
def distil_run():
    """Student copied from a tiny random teacher; full-length MLM logits of both models."""
    t_params = _init(D_TEACHER, 4)
    s_params = student_from_teacher_layers(t_params, D_TEACHER, D_STUDENT)
    batch = _batch(seed=1)
    s_full = _forward(D_STUDENT, s_params, batch, Wants())
    t_full = _forward(D_TEACHER, t_params, batch, Wants())
    return dict(t_params=t_params, s_params=s_params, batch=batch, s_full=s_full, t_full=t_full)


def _at_masked_positions(out, batch):
    """What the model returns with `masked_positions`: logits gathered to [B, P, V]."""
    logits = np.take_along_axis(np.asarray(out.logits), batch["masked_positions"][..., None], 1)
    return out.replace(logits=jnp.asarray(logits))


@pytest.mark.parametrize("options", [{}, {"alpha_mse": 0.5, "temperature": 3.0}])
def test_distilbert_loss_matches_distiller(distil_run, options):
    batch, s_full, t_full = distil_run["batch"], distil_run["s_full"], distil_run["t_full"]
    method = make_method("distilbert", options, D_STUDENT, D_TEACHER)
    assert method.wants()["student"].logits_at_masked and heads(method)["student"] == heads(method)["teacher"] == "mlm"
    loss, metrics = loss_of(method, {}, _at_masked_positions(s_full, batch),
                                _at_masked_positions(t_full, batch), batch)

    lm_labels = _lm_labels(batch)
    ref_total, ref_terms = _distiller_reference(
        s_full.logits, t_full.logits, s_full.last_hidden_state, t_full.last_hidden_state,
        batch["attention_mask"], lm_labels, method.options)
    np.testing.assert_allclose(float(loss), ref_total, rtol=1e-5)
    expected = {"loss/ce", "loss/mlm", "loss/cos"} | ({"loss/mse"} if "alpha_mse" in options else set())
    assert set(metrics) == expected
    for key in expected:
        np.testing.assert_allclose(float(metrics[key]), ref_terms[key], rtol=1e-5, atol=2e-6)


def test_distilbert_kl_on_every_token_matches_distiller(distil_run):
    batch, s_full, t_full = distil_run["batch"], distil_run["s_full"], distil_run["t_full"]
    options = {"restrict_ce_to_mask": False, "alpha_mse": 0.5}
    method = make_method("distilbert", options, D_STUDENT, D_TEACHER)
    assert not method.wants()["student"].logits_at_masked
    loss, metrics = loss_of(method, {}, s_full, t_full, batch)
    lm_labels = _lm_labels(batch)
    ref_total, ref_terms = _distiller_reference(
        s_full.logits, t_full.logits, s_full.last_hidden_state, t_full.last_hidden_state,
        batch["attention_mask"], lm_labels, method.options)
    np.testing.assert_allclose(float(loss), ref_total, rtol=1e-5)
    for key in ("loss/ce", "loss/mlm", "loss/mse"):
        np.testing.assert_allclose(float(metrics[key]), ref_terms[key], rtol=1e-5, atol=2e-6)
    # Every real token, not only the masked ones: the KL differs from the restricted one.
    restricted, _ = loss_of(make_method("distilbert", {}, D_STUDENT, D_TEACHER), {},
                            _at_masked_positions(s_full, batch), _at_masked_positions(t_full, batch),
                            batch)
    assert abs(float(metrics["loss/ce"]) - ref_terms["loss/ce"]) < 1e-5
    assert float(loss) != pytest.approx(float(restricted), rel=1e-3)


def test_student_from_teacher_layers_outputs_equal_a_manual_copy(distil_run):
    t = distil_run["t_params"]
    manual = {
        "embeddings": {k: t["embeddings"][k] for k in ("word", "position", "norm")},
        "encoder": {"layer_0": t["encoder"]["layer_0"],
                    "layer_1": t["encoder"]["layer_3"]},  # 4 -> 2 takes layers 0 and 3
        "mlm_head": t["mlm_head"],
    }
    ours = distil_run["s_full"]
    ref = _forward(D_STUDENT, manual, distil_run["batch"], Wants())  # same compiled program
    np.testing.assert_array_equal(ours.logits, ref.logits)
    np.testing.assert_array_equal(ours.last_hidden_state, ref.last_hidden_state)


def test_distilbert_gradient_through_masked_positions(distil_run):
    batch = distil_run["batch"]
    method = DistilBert(DistilBertOptions(), _roles(D_STUDENT, D_TEACHER))
    t_out = _at_masked_positions(distil_run["t_full"], batch)

    def loss_fn(params):
        s_out = BertModel(D_STUDENT).apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"],
            masked_positions=batch["masked_positions"])
        return loss_of(method, {}, s_out, t_out, batch)[0], s_out.logits

    (loss, s_logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        distil_run["s_params"])
    assert s_logits.shape == (B, 3, TINY["vocab_size"])
    np.testing.assert_allclose(s_logits, _at_masked_positions(distil_run["s_full"], batch).logits,
                               rtol=1e-5, atol=1e-5)
    assert np.isfinite(float(loss))
    zero = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
            if not float(jnp.abs(g).sum()) > 0]
    assert not zero, f"no gradient at {zero}"


def test_distilbert_options_validation():
    with pytest.raises(UserError, match="alpha_ce=-1"):
        make_method("distilbert", {"alpha_ce": -1}, D_STUDENT, D_TEACHER)
    with pytest.raises(UserError, match="hidden_size 8 differs"):
        make_method("distilbert", {}, D_STUDENT.replace(hidden_size=8, intermediate_size=16),
                     D_TEACHER)
    narrow = make_method("distilbert", {"alpha_cos": 0}, D_STUDENT.replace(hidden_size=8),
                          D_TEACHER)
    assert narrow.options.alpha_cos == 0.0


# --- DistilBERT initialisation ----------------------------------------------------------------


def test_teacher_layer_indices():
    assert teacher_layer_indices(12, 6) == [0, 2, 4, 7, 9, 11]  # extract_distilbert.py
    assert teacher_layer_indices(12, 4) == [0, 4, 7, 11]
    assert teacher_layer_indices(6, 3) == [0, 3, 5]
    assert teacher_layer_indices(6, 6) == list(range(6))
    assert teacher_layer_indices(6, 1) == [0]
    with pytest.raises(ValueError, match="7-layer student"):
        teacher_layer_indices(6, 7)


def test_student_from_teacher_layers_12_to_6_copies_layers_0_2_4_7_9_11():
    teacher_cfg = D_TEACHER.replace(num_layers=12)
    student_cfg = D_STUDENT.replace(num_layers=6)
    t = _init(teacher_cfg, 5)
    student = student_from_teacher_layers(t, teacher_cfg, student_cfg)
    manual = {
        "embeddings": {k: t["embeddings"][k] for k in ("word", "position", "norm")},
        "encoder": {f"layer_{i}": t["encoder"][f"layer_{j}"]
                    for i, j in enumerate([0, 2, 4, 7, 9, 11])},
        "mlm_head": t["mlm_head"],
    }
    assert jax.tree.structure(student) == jax.tree.structure(manual)
    jax.tree.map(np.testing.assert_array_equal, student, manual)


def test_student_from_teacher_layers_bert_flavor_and_scan():
    teacher_cfg = D_TEACHER.replace(head="none", scan_layers=True)  # keeps token types and pooler
    t = _init(teacher_cfg, 6)
    student_cfg = teacher_cfg.replace(num_layers=2, scan_layers=False)
    student = student_from_teacher_layers(t, teacher_cfg, student_cfg)
    flat = bert.unstack_layers(t, 4)
    np.testing.assert_array_equal(student["embeddings"]["token_type"]["embedding"],
                                  flat["embeddings"]["token_type"]["embedding"])
    np.testing.assert_array_equal(student["pooler"]["kernel"], flat["pooler"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, student["encoder"]["layer_1"], flat["encoder"]["layer_3"])
    stacked = student_from_teacher_layers(t, teacher_cfg, student_cfg.replace(scan_layers=True))
    jax.tree.map(np.testing.assert_array_equal, bert.unstack_layers(stacked, 2), student)


def test_student_from_teacher_layers_errors_and_fallback():
    teacher_cfg = D_TEACHER.replace(head="none", num_layers=2)
    student_cfg = D_STUDENT.replace(num_layers=1)
    t = _init(teacher_cfg, 7)
    with pytest.raises(UserError, match="mlm_head"):
        student_from_teacher_layers(t, teacher_cfg, student_cfg)
    random_student = _init(student_cfg, 8)
    filled = student_from_teacher_layers(t, teacher_cfg, student_cfg, fallback=random_student)
    jax.tree.map(np.testing.assert_array_equal, filled["mlm_head"], random_student["mlm_head"])
    jax.tree.map(np.testing.assert_array_equal, filled["encoder"]["layer_0"], t["encoder"]["layer_0"])
    with pytest.raises(UserError, match="hidden_size"):
        student_from_teacher_layers(t, teacher_cfg, student_cfg.replace(hidden_size=8))
