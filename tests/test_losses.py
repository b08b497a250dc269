"""Each loss term against PyTorch, computed the way the original TinyBERT / DistilBERT code does."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxdistill import losses

RNG = np.random.default_rng(0)


def _randn(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def _padding_mask(batch, length):
    """[B, T] int mask with a different amount of right padding per row (row 0 unpadded)."""
    lengths = np.linspace(length, 2, batch).astype(int)
    return (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)


def _close(ours, ref, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(ours), float(ref), rtol=rtol, atol=atol)


# --- TinyBERT ---------------------------------------------------------------------------------


def _tinybert_soft_ce(predicts, targets):
    """task_distill.py's soft_cross_entropy, as written there (a mean over all B*C elements)."""
    student_likelihood = F.log_softmax(predicts, dim=-1)
    targets_prob = F.softmax(targets, dim=-1)
    return (-targets_prob * student_likelihood).mean()


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_cross_entropy_matches_tinybert_up_to_the_class_count(temperature):
    s, t = _randn(6, 5, scale=3), _randn(6, 5, scale=3)
    ref = _tinybert_soft_ce(torch.tensor(s) / temperature, torch.tensor(t) / temperature)
    ours = losses.soft_cross_entropy(jnp.asarray(s), jnp.asarray(t), temperature)
    # The reference also averages over the C classes; ours is the per-example cross entropy.
    _close(ours, ref * s.shape[-1])


def test_soft_cross_entropy_weights_select_rows():
    s, t = _randn(6, 5), _randn(6, 5)
    w = np.array([1, 0, 1, 1, 0, 1], np.float32)
    keep = w > 0
    ref = _tinybert_soft_ce(torch.tensor(s[keep]), torch.tensor(t[keep])) * 5
    _close(losses.soft_cross_entropy(s, t, 1.0, w), ref)


def _tinybert_attention_reference(raw_s, raw_t, mask):
    """TinyBERT: scores + (1 - mask) * -10000, then where(att <= -1e2, 0, att), then MSELoss."""
    additive = (1.0 - torch.tensor(mask, dtype=torch.float32))[:, None, None, :] * -10000.0
    s = torch.tensor(raw_s) + additive
    t = torch.tensor(raw_t) + additive
    s = torch.where(s <= -1e2, torch.zeros_like(s), s)
    t = torch.where(t <= -1e2, torch.zeros_like(t), t)
    return torch.nn.MSELoss()(s, t)


def test_attention_score_mse_matches_tinybert_with_padding():
    b, h, t = 4, 3, 7
    mask = _padding_mask(b, t)
    raw_s, raw_t = _randn(b, h, t, t, scale=4), _randn(b, h, t, t, scale=4)
    ref = _tinybert_attention_reference(raw_s, raw_t, mask)
    _close(losses.attention_score_mse(raw_s, raw_t, mask), ref)
    # Padded keys matter: the same scores without the mask give a different (larger) value.
    assert float(losses.attention_score_mse(raw_s, raw_t, np.ones_like(mask))) > float(ref)


def test_mse_matches_torch_mse_loss():
    a, b = _randn(3, 5, 8), _randn(3, 5, 8)
    _close(losses.mse(a, b), torch.nn.MSELoss()(torch.tensor(a), torch.tensor(b)))


def test_mse_with_mask_matches_masked_select():
    a, b = _randn(3, 5, 8), _randn(3, 5, 8)
    mask = _padding_mask(3, 5)
    sel = torch.tensor(mask, dtype=torch.bool)[..., None].expand(3, 5, 8)
    ref = torch.nn.MSELoss()(torch.tensor(a).masked_select(sel), torch.tensor(b).masked_select(sel))
    _close(losses.mse(a, b, mask[..., None]), ref)


def test_losses_compute_in_float32_from_bfloat16():
    a, b = _randn(4, 16), _randn(4, 16)
    ours = losses.mse(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
    assert ours.dtype == jnp.float32
    a16 = np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
    b16 = np.asarray(jnp.asarray(b, jnp.bfloat16).astype(jnp.float32))
    _close(ours, np.mean((a16 - b16) ** 2))


# --- DistilBERT -------------------------------------------------------------------------------


def _distiller_select(x, mask):
    """distiller.py: masked_select rows of [..., V] by a [...] bool mask, then view(-1, V)."""
    x = torch.tensor(x)
    sel = torch.tensor(mask, dtype=torch.bool).unsqueeze(-1).expand_as(x)
    return x.masked_select(sel).view(-1, x.size(-1))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_div_matches_distiller_batchmean(temperature):
    s, t = _randn(3, 6, 11, scale=2), _randn(3, 6, 11, scale=2)
    mask = _padding_mask(3, 6)
    s_sel, t_sel = _distiller_select(s, mask), _distiller_select(t, mask)
    ref = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s_sel / temperature, dim=-1), F.softmax(t_sel / temperature, dim=-1),
    ) * temperature ** 2
    _close(losses.kl_div_with_temperature(s, t, temperature, mask), ref)
    # Without weights every row counts.
    ref_all = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(torch.tensor(s).view(-1, 11) / temperature, dim=-1),
        F.softmax(torch.tensor(t).view(-1, 11) / temperature, dim=-1)) * temperature ** 2
    _close(losses.kl_div_with_temperature(s, t, temperature), ref_all)


def test_hard_cross_entropy_matches_ignore_index():
    logits = _randn(3, 6, 11, scale=2)
    labels = RNG.integers(0, 11, (3, 6))
    mask = _padding_mask(3, 6)
    torch_labels = torch.tensor(np.where(mask > 0, labels, -100))
    ref = torch.nn.CrossEntropyLoss(ignore_index=-100)(
        torch.tensor(logits).view(-1, 11), torch_labels.view(-1))
    _close(losses.hard_cross_entropy(logits, labels, mask), ref)


def test_cosine_embedding_loss_matches_distiller():
    s, t = _randn(3, 6, 8), _randn(3, 6, 8)
    mask = _padding_mask(3, 6)
    s_sel, t_sel = _distiller_select(s, mask), _distiller_select(t, mask)
    target = s_sel.new(s_sel.size(0)).fill_(1)
    ref = torch.nn.CosineEmbeddingLoss(reduction="mean")(s_sel, t_sel, target)
    _close(losses.cosine_embedding_loss(s, t, mask), ref)


def test_cosine_embedding_loss_is_finite_at_zero_vectors():
    s = np.zeros((2, 3, 4), np.float32)
    value = losses.cosine_embedding_loss(s, _randn(2, 3, 4))
    assert np.isfinite(float(value))
    ref = torch.nn.CosineEmbeddingLoss()(torch.zeros(6, 4), torch.tensor(_randn(6, 4)), torch.ones(6))
    _close(value, ref)


def test_logit_mse_batchmean_matches_distiller():
    s, t = _randn(3, 6, 11), _randn(3, 6, 11)
    mask = _padding_mask(3, 6)
    s_sel, t_sel = _distiller_select(s, mask), _distiller_select(t, mask)
    ref = torch.nn.MSELoss(reduction="sum")(s_sel, t_sel) / s_sel.size(0)
    _close(losses.logit_mse_batchmean(s, t, mask), ref, rtol=1e-5)


# --- MobileBERT attention transfer ------------------------------------------------------------


def test_attention_kl_matches_torch_kl_div_over_real_queries():
    b, h, t = 3, 2, 5
    mask = _padding_mask(b, t)
    key_bias = np.where(mask > 0, 0.0, -np.inf)[:, None, None, :]
    s_probs = torch.softmax(torch.tensor(_randn(b, h, t, t) + key_bias), -1)
    t_probs = torch.softmax(torch.tensor(_randn(b, h, t, t) + key_bias), -1)
    # Per query row KL(t || s) summed over keys, averaged over batch, heads and real queries.
    kl = F.kl_div(torch.log(s_probs.clamp_min(1e-30)), t_probs, reduction="none").sum(-1)
    q = torch.tensor(mask, dtype=torch.bool)[:, None, :].expand(b, h, t)
    ref = kl.masked_select(q).mean()
    _close(losses.attention_kl(s_probs.numpy(), t_probs.numpy(), mask), ref)
    assert float(losses.attention_kl(t_probs.numpy(), t_probs.numpy(), mask)) == pytest.approx(0, abs=1e-6)


def test_empty_selection_gives_zero_not_nan():
    s, t = _randn(2, 3, 5), _randn(2, 3, 5)
    none = np.zeros((2, 3), np.float32)
    assert float(losses.kl_div_with_temperature(s, t, 2.0, none)) == 0.0
    assert float(losses.hard_cross_entropy(s, np.zeros((2, 3), np.int32), none)) == 0.0


def test_mobilebert_feature_map_statistics_and_distillation_terms_match_references():
    r = np.random.default_rng(0)
    b, t, h, v = 2, 5, 8, 11
    s, te = r.normal(size=(b, t, h)).astype(np.float32), r.normal(size=(b, t, h)).astype(np.float32)
    mask = np.ones((b, t), np.float32)
    mask[0, t - 2:] = 0
    keep = torch.tensor(mask, dtype=torch.bool)
    ln = lambda x: F.layer_norm(torch.tensor(x), (h,), eps=1e-12)  # noqa: E731
    ref = ((ln(s) - ln(te)) ** 2).mean(-1).masked_select(keep).mean()
    np.testing.assert_allclose(losses.feature_map_mse(s, te, mask), ref.numpy(), rtol=1e-5)

    mean_term, var_term = losses.mean_variance_terms(s, te, mask)
    sm, tm, sv, tv = s.mean(-1), te.mean(-1), s.var(-1), te.var(-1)
    np.testing.assert_allclose(mean_term, ((tm - sm) ** 2)[mask > 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(var_term, np.abs(tv - sv)[mask > 0].mean(), rtol=1e-5)

    logits_s, logits_t = r.normal(size=(b, 3, v)), r.normal(size=(b, 3, v)) * 2
    labels = r.integers(0, v, size=(b, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    target = 0.5 * F.one_hot(torch.tensor(labels), v) + 0.5 * torch.softmax(
        torch.tensor(logits_t) / 2.0, -1)
    per = F.cross_entropy(torch.tensor(logits_s).reshape(-1, v), target.reshape(-1, v),
                          reduction="none").reshape(b, 3).numpy()
    np.testing.assert_allclose(
        losses.distillation_mlm(logits_s, logits_t, labels, weights, 0.5, 2.0),
        (per * weights).sum() / weights.sum(), rtol=1e-5)
