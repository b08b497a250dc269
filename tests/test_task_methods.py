"""Task-stage methods (finetune, kd, pkd) and TinyBERT's regression prediction stage.

Losses are checked against PyTorch references written the way the original code computes them:
transformers' BertForSequenceClassification (finetune), PKD's src/KD_loss.py and
NLI_KD_training.py (kd, pkd) and TinyBERT's task_distill.py (prediction stage on STS-B).
Also PKD's layer maps, the projection, gradients and option errors.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import heads, loss_of, make_method
from jaxdistill import losses
from jaxdistill.errors import UserError
from jaxdistill.methods.base import REGISTRY
from jaxdistill.methods.pkd import pkd_layer_map
from jaxdistill.models import bert
from jaxdistill.models import Outputs, Wants
from jaxdistill.models.bert import BertConfig, BertModel

TINY = dict(vocab_size=40, num_heads=2, max_position_embeddings=16, hidden_dropout=0.0,
            attention_dropout=0.0, head="classifier", num_labels=3)
TEACHER = BertConfig(hidden_size=16, num_layers=6, intermediate_size=32, **TINY)
STUDENT = BertConfig(hidden_size=8, num_layers=3, intermediate_size=16, **TINY)
B, T, C = 5, 6, 3
RNG = np.random.default_rng(0)
# PKD's reference uses KLDivLoss's 'mean' reduction on purpose; torch warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")


def _randn(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def _labels(regression=False):
    return _randn(B) if regression else RNG.integers(0, C, B).astype(np.int32)


def _out(logits, hidden=None):
    """Outputs as the model returns them for a classifier head."""
    last = jnp.zeros((B, T, 4)) if hidden is None else hidden[-1]
    return Outputs(last_hidden_state=last, hidden_states=hidden, logits=jnp.asarray(logits))


def _teacher_layers(method):
    return tuple(m.teacher for m in method.matches)


def _close(ours, ref, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(ours), float(ref), rtol=rtol, atol=atol)


# --- PyTorch references ------------------------------------------------------------------------


def _pkd_distillation_loss(y, labels, teacher_scores, T, alpha):
    """PKD's src/KD_loss.py `distillation_loss`: (total, kd term, ce term)."""
    d_loss = torch.nn.KLDivLoss()(F.log_softmax(y / T, dim=1),
                                  F.softmax(teacher_scores / T, dim=1)) * T * T
    nll_loss = F.cross_entropy(y, labels)
    return alpha * d_loss + (1.0 - alpha) * nll_loss, d_loss, nll_loss


def _pkd_patience_loss(teacher_patience, student_patience, normalized_patience):
    """PKD's src/KD_loss.py `patience_loss`, without its final `.half()`."""
    if normalized_patience:
        teacher_patience = F.normalize(teacher_patience, p=2, dim=2)
        student_patience = F.normalize(student_patience, p=2, dim=2)
    return F.mse_loss(teacher_patience.float(), student_patience.float())


def _pkd_reference(s_hidden, t_hidden, s_logits, t_logits, labels, teacher_layers, opts,
                   proj=None):
    """NLI_KD_training.py's loss for kd_model 'kd.cls' on our captured hidden states.

    The encoder returns the [CLS] output of every layer (no embeddings); the student's patience
    is all but the last of them, the teacher's the layers at `fc_layer_idx` (0-based).
    """
    full_output = [torch.tensor(np.asarray(h))[:, 0] for h in s_hidden[1:]]
    student_patience = torch.stack(full_output[:-1]).transpose(0, 1)  # [B, M-1, H_s]
    if proj is not None:  # our extension for unequal widths
        linear = torch.nn.Linear(*proj["kernel"].shape)
        linear.weight.data = torch.tensor(np.asarray(proj["kernel"]).T)
        linear.bias.data = torch.tensor(np.asarray(proj["bias"]))
        student_patience = linear(student_patience)
    feature_maps = [torch.tensor(np.asarray(h))[:, 0] for h in t_hidden[1:]]
    fc_layer_idx = [t - 1 for t in teacher_layers]
    teacher_patience = torch.stack([feature_maps[i] for i in fc_layer_idx]).transpose(0, 1)
    loss_dl, kd_loss, ce_loss = _pkd_distillation_loss(
        torch.tensor(s_logits), torch.tensor(labels).long(), torch.tensor(t_logits),
        opts.temperature, opts.alpha)
    pt_loss = _pkd_patience_loss(teacher_patience, student_patience, opts.normalize)
    total = loss_dl + opts.beta * pt_loss
    return total.item(), {"loss/ce": ce_loss.item(), "loss/kd": kd_loss.item(),
                          "loss/pt": pt_loss.item()}


# --- shared loss terms -------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_kd_kl_matches_pkd_kldivloss_mean(temperature):
    s, t = _randn(B, C, scale=3), _randn(B, C, scale=3)
    ref = torch.nn.KLDivLoss()(F.log_softmax(torch.tensor(s) / temperature, 1),
                               F.softmax(torch.tensor(t) / temperature, 1)) * temperature ** 2
    _close(losses.kd_kl_elementwise_mean(s, t, temperature), ref)
    # It is the batchmean KL divided by the class count.
    _close(losses.kl_div_with_temperature(s, t, temperature), float(ref) * C)


@pytest.mark.parametrize("normalize", [True, False])
def test_patience_loss_matches_pkd(normalize):
    s, t = _randn(4, B, 16, scale=2), _randn(4, B, 16, scale=2)  # [layers, B, H]
    # PKD stacks [B, layers, H]; the element mean does not care about the order.
    ref = _pkd_patience_loss(torch.tensor(t).transpose(0, 1), torch.tensor(s).transpose(0, 1),
                             normalize)
    _close(losses.patience_loss(s, t, normalize), ref)


def test_patience_loss_gradient_is_finite_at_zero_vectors():
    s = np.zeros((2, B, 8), np.float32)
    grad = jax.grad(lambda x: losses.patience_loss(x, _randn(2, B, 8)))(s)
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_smoothed_cross_entropy_matches_torch(smoothing):
    logits, labels = _randn(B, C, scale=2), _labels()
    ref = F.cross_entropy(torch.tensor(logits), torch.tensor(labels).long(),
                          label_smoothing=smoothing)
    _close(losses.smoothed_cross_entropy(logits, labels, smoothing), ref)


# --- finetune ----------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}])
def test_finetune_cross_entropy(options):
    method = make_method("finetune", options, STUDENT, STUDENT)
    assert heads(method) == {"student": "classifier"}
    assert method.wants()["student"] == Wants() and method.init_params(jax.random.key(0)) == {}
    logits, labels = _randn(B, C, scale=2), _labels()
    loss, metrics = loss_of(method, {}, _out(logits), None, {"labels": labels})
    ref = torch.nn.CrossEntropyLoss(label_smoothing=options.get("label_smoothing", 0.0))(
        torch.tensor(logits).view(-1, C), torch.tensor(labels).long().view(-1))
    _close(loss, ref)
    assert set(metrics) == {"loss/ce"}


def test_finetune_regression_is_bert_for_sequence_classification_mse():
    student = STUDENT.replace(num_labels=1)
    method = make_method("finetune", {}, student, student)
    logits, labels = _randn(B, 1), _labels(regression=True)
    loss, metrics = loss_of(method, {}, _out(logits), None, {"labels": labels})
    ref = torch.nn.MSELoss()(torch.tensor(logits).squeeze(), torch.tensor(labels).squeeze())
    _close(loss, ref)
    assert set(metrics) == {"loss/mse"}


# --- kd ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"temperature": 5.0, "alpha": 0.2}])
def test_kd_matches_pkd_distillation_loss(options):
    method = make_method("kd", options, STUDENT, TEACHER)
    assert (heads(method)["student"], heads(method)["teacher"]) == ("classifier", "classifier")
    assert method.wants()["teacher"] == Wants()
    s, t, labels = _randn(B, C, scale=3), _randn(B, C, scale=3), _labels()
    loss, metrics = loss_of(method, {}, _out(s), _out(t), {"labels": labels})
    opts = method.options
    ref, kd_ref, ce_ref = _pkd_distillation_loss(torch.tensor(s), torch.tensor(labels).long(),
                                                 torch.tensor(t), opts.temperature, opts.alpha)
    _close(loss, ref)
    _close(metrics["loss/kd"], kd_ref)
    _close(metrics["loss/ce"], ce_ref)
    assert set(metrics) == {"loss/ce", "loss/kd"}


def test_kd_switched_off_terms_are_not_logged():
    s, t, labels = _randn(B, C), _randn(B, C), _labels()
    only_ce = make_method("kd", {"alpha": 0.0}, STUDENT, TEACHER)
    loss, metrics = loss_of(only_ce, {}, _out(s), _out(t), {"labels": labels})
    assert set(metrics) == {"loss/ce"}
    _close(loss, F.cross_entropy(torch.tensor(s), torch.tensor(labels).long()))
    only_kd = make_method("kd", {"alpha": 1.0}, STUDENT, TEACHER)
    assert set(loss_of(only_kd, {}, _out(s), _out(t), {"labels": labels})[1]) == {"loss/kd"}


def test_kd_regression_uses_mse_for_both_terms():
    student, teacher = STUDENT.replace(num_labels=1), TEACHER.replace(num_labels=1)
    method = make_method("kd", {"alpha": 0.3}, student, teacher)
    s, t, labels = _randn(B, 1), _randn(B, 1), _labels(regression=True)
    loss, metrics = loss_of(method, {}, _out(s), _out(t), {"labels": labels})
    mse = torch.nn.MSELoss()
    ref = (0.7 * mse(torch.tensor(s).squeeze(), torch.tensor(labels))
           + 0.3 * mse(torch.tensor(s), torch.tensor(t)))
    _close(loss, ref)
    assert set(metrics) == {"loss/mse", "loss/kd"}


# --- PKD layer maps ----------------------------------------------------------------------------


def test_pkd_layer_maps():
    # The paper's PKD-Skip / PKD-Last for 12 -> 6.
    assert pkd_layer_map("skip", 12, 6) == (2, 4, 6, 8, 10)
    assert pkd_layer_map("last", 12, 6) == (7, 8, 9, 10, 11)
    assert pkd_layer_map("skip", 6, 3) == (2, 4)
    assert pkd_layer_map("last", 6, 3) == (4, 5)
    # PKD's scripts/run_student_patience.py: 12 -> 3 used fc_layer_idx '9,10' (last); 24 -> 6
    # took layers [3, 7, 11, 15, 19] (0-based) and 24 -> 3 layers 7 and 15 of them (skip).
    assert pkd_layer_map("last", 12, 3) == (10, 11)
    assert pkd_layer_map("skip", 24, 6) == (4, 8, 12, 16, 20)
    assert pkd_layer_map("skip", 24, 3) == (8, 16)
    assert pkd_layer_map("skip", 6, 6) == pkd_layer_map("last", 6, 6) == (1, 2, 3, 4, 5)
    assert pkd_layer_map("skip", 6, 1) == ()


# --- pkd loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("options, widths, teacher_layers", [
    ({}, (8, 16), (2, 4)),
    ({"strategy": "last", "normalize": False, "alpha": 0.7, "beta": 10.0}, (16, 16), (4, 5)),
    ({"teacher_layers": [5, 1], "temperature": 5.0}, (8, 16), (5, 1)),
])
def test_pkd_loss_matches_nli_kd_training(options, widths, teacher_layers):
    student = STUDENT.replace(hidden_size=widths[0])
    teacher = TEACHER.replace(hidden_size=widths[1])
    method = make_method("pkd", options, student, teacher)
    assert _teacher_layers(method) == teacher_layers
    assert method.wants()["student"] == method.wants()["teacher"] == Wants(hidden_states=True)
    m_params = method.init_params(jax.random.key(1))
    assert ("proj" in m_params) == (widths[0] != widths[1])
    s_hidden = _randn(student.num_layers + 1, B, T, widths[0], scale=2)
    t_hidden = _randn(teacher.num_layers + 1, B, T, widths[1], scale=2)
    s_logits, t_logits, labels = _randn(B, C, scale=3), _randn(B, C, scale=3), _labels()
    loss, metrics = loss_of(method, m_params, _out(s_logits, s_hidden), _out(t_logits, t_hidden),
                                {"labels": labels})
    ref, ref_terms = _pkd_reference(s_hidden, t_hidden, s_logits, t_logits, labels,
                                    teacher_layers, method.options, m_params.get("proj"))
    _close(loss, ref)
    assert set(metrics) == set(ref_terms)
    for key, value in ref_terms.items():
        _close(metrics[key], value)


def test_pkd_mean_pooling_matches_masked_token_means():
    """pooling 'mean': each matched layer's states averaged over the real tokens (by hand, in
    torch), everything else as the paper's loss."""
    student, teacher = STUDENT.replace(hidden_size=16), TEACHER.replace(hidden_size=16)
    method = make_method("pkd", {"pooling": "mean"}, student, teacher)
    s_hidden = _randn(student.num_layers + 1, B, T, 16, scale=2)
    t_hidden = _randn(teacher.num_layers + 1, B, T, 16, scale=2)
    mask = np.ones((B, T), np.int32)
    mask[0, 3:] = 0
    mask[1, 1:] = 0
    s_logits, t_logits, labels = _randn(B, C, scale=3), _randn(B, C, scale=3), _labels()
    loss, metrics = loss_of(method, {}, _out(s_logits, s_hidden), _out(t_logits, t_hidden),
                            {"labels": labels, "attention_mask": mask})
    w = torch.tensor(mask, dtype=torch.float32)[..., None]

    def mean(h):  # [B, T, H] -> [B, H] over real tokens
        return (torch.tensor(np.asarray(h)) * w).sum(1) / w.sum(1)

    layers = _teacher_layers(method)
    s_pat = torch.stack([mean(s_hidden[j]) for j in range(1, student.num_layers)], 1)
    t_pat = torch.stack([mean(t_hidden[t]) for t in layers], 1)
    _close(metrics["loss/pt"], _pkd_patience_loss(t_pat, s_pat, True))
    ref, _, _ = _pkd_distillation_loss(torch.tensor(s_logits), torch.tensor(labels).long(),
                                       torch.tensor(t_logits), 10.0, 0.5)
    _close(loss, float(ref) + 100.0 * float(metrics["loss/pt"]))
    with pytest.raises(UserError, match="pooling='max'"):
        make_method("pkd", {"pooling": "max"}, student, teacher)


def test_pkd_with_beta_zero_is_kd():
    method = make_method("pkd", {"beta": 0.0}, STUDENT, TEACHER)
    assert method.wants()["student"] == Wants() and _teacher_layers(method) == ()
    assert method.init_params(jax.random.key(0)) == {} and method.param_axes() == {}
    kd = make_method("kd", {"temperature": 10.0, "alpha": 0.5}, STUDENT, TEACHER)
    s, t, labels = _randn(B, C), _randn(B, C), _labels()
    ours = loss_of(method, {}, _out(s), _out(t), {"labels": labels})
    theirs = loss_of(kd, {}, _out(s), _out(t), {"labels": labels})
    _close(ours[0], theirs[0])
    assert set(ours[1]) == set(theirs[1]) == {"loss/ce", "loss/kd"}
    # A 1-layer student is fine without the patience loss.
    make_method("pkd", {"beta": 0.0}, STUDENT.replace(num_layers=1), TEACHER)


def test_pkd_regression():
    student, teacher = STUDENT.replace(num_labels=1), TEACHER.replace(num_labels=1)
    method = make_method("pkd", {}, student, teacher)
    s_hidden, t_hidden = _randn(4, B, T, 8), _randn(7, B, T, 16)
    s, t, labels = _randn(B, 1), _randn(B, 1), _labels(regression=True)
    _, metrics = loss_of(method, method.init_params(jax.random.key(0)), _out(s, s_hidden),
                             _out(t, t_hidden), {"labels": labels})
    assert set(metrics) == {"loss/mse", "loss/kd", "loss/pt"}
    _close(metrics["loss/kd"], torch.nn.MSELoss()(torch.tensor(s), torch.tensor(t)))


def test_pkd_projection_only_when_widths_differ():
    method = make_method("pkd", {}, STUDENT, TEACHER)
    params = method.init_params(jax.random.key(0))
    assert params["proj"]["kernel"].shape == (8, 16) and params["proj"]["bias"].shape == (16,)
    axes = method.param_axes()
    assert tuple(axes["proj"]["kernel"]) == ("proj_in", "proj_out")
    assert jax.tree.structure(params) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    same = make_method("pkd", {}, STUDENT.replace(hidden_size=16), TEACHER)
    assert same.init_params(jax.random.key(0)) == {} and same.param_axes() == {}


def test_pkd_gradient_reaches_student_and_projection():
    """Real student forward, random teacher outputs: every student parameter and the
    projection get a finite, non-zero gradient."""
    student = STUDENT.replace(num_layers=2)
    teacher = TEACHER.replace(num_layers=4)
    method = make_method("pkd", {}, student, teacher)
    assert _teacher_layers(method) == (2,)
    shapes = jax.eval_shape(lambda: bert.init_params(student, jax.random.key(0)))
    rng = np.random.default_rng(1)
    s_params = jax.tree.map(
        lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape).astype(np.float32)), shapes)
    m_params = method.init_params(jax.random.key(2))
    ids = rng.integers(1, TINY["vocab_size"], (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    t_out = _out(_randn(B, C, scale=2), _randn(teacher.num_layers + 1, B, T, 16))
    batch = {"labels": _labels()}

    def loss_fn(s_params, m_params):
        s_out = BertModel(student).apply({"params": s_params}, ids, mask,
                                         capture=method.wants()["student"])
        return loss_of(method, m_params, s_out, t_out, batch)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
        s_params, m_params)
    assert np.isfinite(float(loss)) and float(metrics["loss/pt"]) > 0
    flat = jax.tree_util.tree_leaves_with_path(grads)
    bad = [jax.tree_util.keystr(p) for p, g in flat
           if not (np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0)]
    assert not bad, f"zero or non-finite gradient at {bad}"
    assert "proj" in grads[1]


# --- option errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, options, student, message", [
    ("pkd", {"strategy": "skp"}, STUDENT, "strategy='skp'"),
    ("pkd", {}, STUDENT.replace(num_layers=4), "depth 6 is not a multiple .* depth 4"),
    ("pkd", {"teacher_layers": [2]}, STUDENT, "has 1 entries.* 2 intermediate"),
    ("pkd", {"teacher_layers": [2, 6]}, STUDENT, "6 is out of range 1..5"),
    ("pkd", {"teacher_layers": [0, 2]}, STUDENT, "0 is out of range"),
    ("pkd", {"teacher_layers": "2,4"}, STUDENT, "teacher_layers"),
    ("pkd", {"teacher_layers": [2.5, 4]}, STUDENT, "1-based teacher layer numbers"),
    ("pkd", {"alpha": 1.5}, STUDENT, "alpha=1.5"),
    ("pkd", {"beta": -1}, STUDENT, "beta=-1"),
    ("pkd", {}, STUDENT.replace(num_layers=1), "1-layer student"),
    ("pkd", {"strategy": "last"}, STUDENT.replace(num_layers=7), "student has 7 layers"),
    ("kd", {"temperature": 0}, STUDENT, "temperature=0"),
    ("kd", {}, STUDENT.replace(num_labels=2), "num_labels=2 but the teacher 3"),
    ("finetune", {"label_smoothing": 1.0}, STUDENT, "label_smoothing=1.0"),
    ("finetune", {"label_smoothing": 0.1}, STUDENT.replace(num_labels=1), "regression"),
])
def test_bad_options_are_user_errors(name, options, student, message):
    with pytest.raises(UserError, match=message):
        make_method(name, options, student, TEACHER)


def test_registered():
    assert {"finetune", "kd", "pkd"} <= set(REGISTRY)
    assert _teacher_layers(make_method("pkd", {"teacher_layers": [1, 3]}, STUDENT, TEACHER)) \
        == (1, 3)


# --- TinyBERT prediction stage on a regression task --------------------------------------------


def test_tinybert_prediction_regression_is_task_distill_mse():
    student, teacher = STUDENT.replace(num_labels=1), TEACHER.replace(num_labels=1)
    method = make_method("tinybert", {"stage": "task_prediction"}, student, teacher)
    s, t, labels = _randn(B, 1), _randn(B, 1), _labels(regression=True)
    loss, metrics = loss_of(method, {}, _out(s), _out(t), {"labels": labels})
    # task_distill.py, output_mode 'regression': MSELoss()(student_logits.view(-1),
    # label_ids.view(-1)); the teacher's logits are not used.
    ref = torch.nn.MSELoss()(torch.tensor(s).view(-1), torch.tensor(labels).view(-1))
    _close(loss, ref)
    assert set(metrics) == {"loss/mse"}
    # Classification keeps the soft cross entropy.
    cls = make_method("tinybert", {"stage": "task_prediction"}, STUDENT, TEACHER)
    assert set(loss_of(cls, {}, _out(_randn(B, C)), _out(_randn(B, C)), {"labels": _labels()})[1]) \
        == {"loss/soft_ce"}
