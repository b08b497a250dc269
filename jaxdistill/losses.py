"""Shared loss terms of the distillation methods, as small pure `jax.numpy` functions.

Every function casts its inputs to float32 first: teachers run in bfloat16 and students may
too, but softmax, logs and long sums of squares lose too much in 16 bits. Each docstring names
the original code it reproduces; tests/test_losses.py checks each against a PyTorch reference
written the way that code computes it.

Masks and weights are 1 (or True) for what counts and 0 for what does not. Where the reference
would divide by zero (nothing selected) we return 0 instead of NaN, so that a batch without a
single valid row cannot poison the parameters inside a jitted step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# torch.nn.CosineEmbeddingLoss adds this to each squared norm (ATen's EPSILON).
_COSINE_EPS = 1e-12
# Floor for probabilities inside a log: a softmax that underflowed to 0 must not give inf.
_PROB_FLOOR = 1e-30
# torch.nn.functional.normalize's default eps: the smallest norm a vector is divided by.
_NORMALIZE_EPS = 1e-12
# tf.contrib.layers.layer_norm's variance epsilon (MobileBERT's feature-map transfer).
_LAYER_NORM_EPS = 1e-12


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Mean of `values` over the rows whose weight is non-zero (all rows if `weights` is None)."""
    if weights is None:
        return jnp.mean(values)
    w = jnp.broadcast_to(_f32(weights), values.shape)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1e-12)


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                       temperature: float = 1.0, weights: jax.Array | None = None) -> jax.Array:
    """TinyBERT's prediction-layer loss: -sum_c softmax(t/T) * log_softmax(s/T), mean over rows.

    Logits are [..., C]; `weights` [...] selects rows. No T^2 factor, as in TinyBERT's
    task_distill.py. Its `soft_cross_entropy` takes `.mean()` over all B*C elements, which is
    this value divided by C (a constant factor that Adam all but ignores); we keep the proper
    per-example cross entropy so the loss does not shrink with the number of labels.
    """
    s = _f32(student_logits) / temperature
    t = _f32(teacher_logits) / temperature
    per_row = -jnp.sum(jax.nn.softmax(t, axis=-1) * jax.nn.log_softmax(s, axis=-1), axis=-1)
    return _weighted_mean(per_row, weights)


def kl_div_with_temperature(student_logits: jax.Array, teacher_logits: jax.Array,
                            temperature: float, weights: jax.Array | None = None) -> jax.Array:
    """DistilBERT's distillation loss: KL(p_t || p_s) at temperature T, times T^2, batchmean.

    distiller.py selects the rows it distils on (the MLM-masked tokens with
    `restrict_ce_to_mask`) and applies `KLDivLoss(reduction='batchmean')`, i.e. the summed KL
    divided by the number of selected rows; `weights` [...] is that selection over [..., V] logits.
    The T^2 factor keeps the gradient scale independent of T (Hinton et al.).
    """
    s = _f32(student_logits) / temperature
    t = _f32(teacher_logits) / temperature
    log_p_t = jax.nn.log_softmax(t, axis=-1)
    per_row = jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(s, axis=-1)), axis=-1)
    return _weighted_mean(per_row, weights) * temperature ** 2


def hard_cross_entropy(logits: jax.Array, labels: jax.Array,
                       weights: jax.Array | None = None) -> jax.Array:
    """Cross entropy against integer labels, mean over weighted rows.

    Equals `torch.nn.CrossEntropyLoss(ignore_index=-100)` when `weights` is 1 exactly where the
    label is not ignored (for MLM: the real masked positions).
    """
    log_probs = jax.nn.log_softmax(_f32(logits), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return _weighted_mean(nll, weights)


def mse(a: jax.Array, b: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """`torch.nn.MSELoss()` (mean over elements); with `mask`, over the selected elements only.

    `mask` broadcasts against `a` (e.g. [B, T, 1] or [B, T] with a trailing axis added by the
    caller), and the mean is over every selected element, as `MSELoss` on `masked_select` gives.
    """
    sq = jnp.square(_f32(a) - _f32(b))
    return _weighted_mean(sq, mask)


def logit_mse_batchmean(student_logits: jax.Array, teacher_logits: jax.Array,
                        weights: jax.Array | None = None) -> jax.Array:
    """DistilBERT's optional `alpha_mse` term: `MSELoss(reduction='sum')` / number of rows.

    Logits [..., V]; the squared error is summed over the vocabulary and averaged over the
    selected rows ("reproducing batchmean reduction" in distiller.py).
    """
    per_row = jnp.sum(jnp.square(_f32(student_logits) - _f32(teacher_logits)), axis=-1)
    return _weighted_mean(per_row, weights)


def attention_score_mse(student_scores: jax.Array, teacher_scores: jax.Array,
                        key_mask: jax.Array) -> jax.Array:
    """TinyBERT's attention loss: MSE of pre-softmax scores over all B*H*T*T elements.

    Scores are [B, H, T, T] (query, key), `key_mask` is the [B, T] attention mask.

    TinyBERT's models return `QK^T/sqrt(d) + mask`, where the additive mask is -10000 at padded
    keys, and the loss first sets every score <= -100 to 0 (`torch.where(att <= -1e2, 0, att)`)
    for student and teacher alike. So padded key columns contribute a 0 difference but still
    count in the mean's denominator. Our `EncoderOutputs.attention_scores` are raw scaled QK^T
    without the mask, so zeroing the padded key columns of both here gives the same value,
    as long as real scores lie above -100 (the reference would also zero those; no trained BERT
    comes near that) and raw scores at padded keys stay below 9900 (ditto).
    """
    keep = jnp.asarray(key_mask)[:, None, None, :] > 0
    diff = jnp.where(keep, _f32(student_scores) - _f32(teacher_scores), 0.0)
    return jnp.mean(jnp.square(diff))


def attention_kl(student_probs: jax.Array, teacher_probs: jax.Array,
                 mask: jax.Array | None = None) -> jax.Array:
    """MobileBERT's attention transfer: KL(teacher || student) per query row, mean over rows.

    Probabilities are [B, H, T, T] (softmax over keys already applied, padded keys ~0); `mask`
    [B, T] selects the real query positions. The mean runs over batch, heads and real queries,
    as the paper's 1/(T*A) sum over tokens and heads.
    """
    t = _f32(teacher_probs)
    log_s = jnp.log(jnp.maximum(_f32(student_probs), _PROB_FLOOR))
    log_t = jnp.log(jnp.maximum(t, _PROB_FLOOR))
    per_row = jnp.sum(t * (log_t - log_s), axis=-1)  # [B, H, T]
    weights = None if mask is None else jnp.asarray(mask)[:, None, :]
    return _weighted_mean(per_row, weights)


def cosine_embedding_loss(student: jax.Array, teacher: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
    """DistilBERT's hidden-state loss: mean of 1 - cos(s, t) over the non-padded token vectors.

    `torch.nn.CosineEmbeddingLoss` with target 1 on the rows `masked_select`ed by the attention
    mask; the cosine uses torch's formula, dot / sqrt((|s|^2 + eps) * (|t|^2 + eps)), which is
    also what keeps the gradient finite at a zero vector. Vectors are [..., H], `mask` [...].
    """
    s, t = _f32(student), _f32(teacher)
    dot = jnp.sum(s * t, axis=-1)
    norms = (jnp.sum(s * s, axis=-1) + _COSINE_EPS) * (jnp.sum(t * t, axis=-1) + _COSINE_EPS)
    return _weighted_mean(1.0 - dot / jnp.sqrt(norms), mask)


def kd_kl_elementwise_mean(student_logits: jax.Array, teacher_logits: jax.Array,
                           temperature: float) -> jax.Array:
    """PKD's distillation term: `KLDivLoss()(log_softmax(s/T), softmax(t/T)) * T^2`.

    KLDivLoss's default reduction 'mean' (src/KD_loss.py `distillation_loss` in
    PKD-for-BERT-Model-Compression) averages over all B*C entries, so this is the per-example
    KL of `kl_div_with_temperature` divided by the number of classes C. We keep the reference's
    scale because it is summed with other terms whose published weights assume it.
    Logits are [B, C].
    """
    s = _f32(student_logits)
    return kl_div_with_temperature(s, teacher_logits, temperature) / s.shape[-1]


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float,
                           weights: jax.Array | None = None) -> jax.Array:
    """`torch.nn.CrossEntropyLoss(label_smoothing=eps)`: targets (1 - eps) one-hot + eps / C.

    Logits [..., C], integer labels [...]; mean over the weighted rows (`weights` [...]: 1 on
    real tokens, 0 on padding, as `ignore_index`). smoothing=0 is `hard_cross_entropy`.
    """
    log_probs = jax.nn.log_softmax(_f32(logits), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    uniform = -jnp.mean(log_probs, axis=-1)
    return _weighted_mean((1.0 - smoothing) * nll + smoothing * uniform, weights)


def topk_distillation(student_logits: jax.Array, topk_ids: jax.Array, topk_logits: jax.Array,
                      temperature: float, weights: jax.Array | None = None) -> jax.Array:
    """C-MLM's KD term (Distill-BERT-Textgen's OpenNMT loss): -sum_k q_k log p(topk_ids_k), q
    the teacher's top-K logits renormalised with softmax(z / T), p the student's softmax at
    T = 1 over the whole vocabulary; no T^2; mean over the weighted tokens.

    student_logits [..., V]; topk_ids / topk_logits [..., K]; weights [...].
    """
    log_probs = jax.nn.log_softmax(_f32(student_logits), axis=-1)
    picked = jnp.take_along_axis(log_probs, topk_ids.astype(jnp.int32), axis=-1)
    q = jax.nn.softmax(_f32(topk_logits) / temperature, axis=-1)
    return _weighted_mean(-jnp.sum(q * picked, axis=-1), weights)


def patience_loss(student: jax.Array, teacher: jax.Array, normalize: bool = True) -> jax.Array:
    """PKD's patience loss (src/KD_loss.py `patience_loss`): MSE of L2-normalised vectors.

    Inputs are the matched layers' [CLS] states, [..., H] with matching leading shapes (PKD
    stacks them to [B, layers, H]). With `normalize` each vector is divided by
    max(||v||_2, 1e-12) as `F.normalize(p=2, dim=-1)` does; then `F.mse_loss` takes the mean
    over every element (batch, layers and hidden units alike): the paper's sum over layers of
    squared distances, divided by B * layers * H. The reference returns it in fp16 (`.half()`);
    we keep float32.
    """
    s, t = _f32(student), _f32(teacher)
    if normalize:
        s, t = _l2_normalize(s), _l2_normalize(t)
    return jnp.mean(jnp.square(s - t))


def _l2_normalize(x: jax.Array) -> jax.Array:
    """x / max(||x||, eps), written as sqrt(max(|x|^2, eps^2)) so a zero vector's gradient is 0."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq, _NORMALIZE_EPS ** 2))


def _layer_norm(x: jax.Array) -> jax.Array:
    """Per-vector normalisation over the last axis, without parameters."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + _LAYER_NORM_EPS)


def feature_map_mse(student: jax.Array, teacher: jax.Array, mask: jax.Array) -> jax.Array:
    """MobileBERT's feature-map transfer (`run_pretraining.py`): MSE of two [B, T, H] layer
    outputs, each through a LayerNorm without parameters (`layer_norm(trainable=False)`); the
    mean runs over the real tokens' elements (`mask` [B, T]; the reference includes padding)."""
    diff = _layer_norm(_f32(student)) - _layer_norm(_f32(teacher))
    return _weighted_mean(jnp.square(diff), jnp.asarray(mask)[..., None])


def mean_variance_terms(student: jax.Array, teacher: jax.Array, mask: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
    """MobileBERT's optional statistics transfer: (MSE of the per-token means, L1 of the
    per-token variances) of two [B, T, H] layer outputs over the real tokens (`mask` [B, T])."""
    s, t = _f32(student), _f32(teacher)
    s_mean, t_mean = jnp.mean(s, -1), jnp.mean(t, -1)
    s_var = jnp.mean(jnp.square(s - s_mean[..., None]), -1)
    t_var = jnp.mean(jnp.square(t - t_mean[..., None]), -1)
    return (_weighted_mean(jnp.square(t_mean - s_mean), mask),
            _weighted_mean(jnp.abs(t_var - s_var), mask))


def distillation_mlm(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                     weights: jax.Array, ground_truth_ratio: float, temperature: float
                     ) -> jax.Array:
    """MobileBERT's pretraining distillation: cross entropy against ratio * one-hot + (1 - ratio)
    * softmax(teacher / T), averaged over the weighted masked positions ([B, P, V] logits,
    [B, P] labels and weights)."""
    teacher = jax.nn.softmax(_f32(teacher_logits) / temperature, axis=-1)
    one_hot = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=jnp.float32)
    target = ground_truth_ratio * one_hot + (1.0 - ground_truth_ratio) * teacher
    per_position = -jnp.sum(target * jax.nn.log_softmax(_f32(student_logits), -1), -1)
    return _weighted_mean(per_position, weights)


def relation_kl(student: tuple[jax.Array, jax.Array], teacher: tuple[jax.Array, jax.Array],
                num_heads: int, mask: jax.Array) -> jax.Array:
    """MiniLM's self-attention relation loss: KL(R_teacher || R_student), R = softmax(a b^T /
    sqrt(d_r)) per relation head, for one pair (a, b) of queries, keys or values.

    `student`/`teacher` are the pair's two [B, T, heads, head_dim] (or [B, T, width]) arrays,
    read as [B, T, width] (heads concatenated) and split into `num_heads` relation heads of
    d_r = width / num_heads, so the two models may differ in width and head count (MiniLMv2);
    (q, k) with num_heads = the attention heads is the attention distribution (MiniLM v1).
    `mask` [B, T]: padded keys take no probability and padded queries no loss. Per sequence the
    mean over relation heads and real queries (the paper's 1 / (A_r |x|)), then the mean over
    sequences with a real token (as bloomberg/minilmv2.bb's `_get_kl_loss`).
    """
    keep = jnp.asarray(mask) > 0

    def log_relation(a, b):
        bsz, t = a.shape[:2]
        a = _f32(a).reshape(bsz, t, num_heads, -1)
        b = _f32(b).reshape(bsz, t, num_heads, -1)
        scores = jnp.einsum("bqad,bkad->baqk", a, b) / jnp.sqrt(jnp.float32(a.shape[-1]))
        # A finite fill: log_softmax stays finite at padded keys, so neither the value nor the
        # gradient meets 0 * inf there.
        scores = jnp.where(keep[:, None, None, :], scores, -1e9)
        return jax.nn.log_softmax(scores, axis=-1)

    log_s, log_t = log_relation(*student), log_relation(*teacher)
    kl = jnp.exp(log_t) * (log_t - log_s)
    per_query = jnp.sum(jnp.where(keep[:, None, None, :], kl, 0.0), axis=-1)  # [B, A, T]
    weights = _f32(keep)[:, None, :]
    lengths = jnp.sum(_f32(keep), axis=-1)  # [B]
    per_seq = jnp.sum(per_query * weights, axis=(1, 2)) / jnp.maximum(num_heads * lengths, 1.0)
    return _weighted_mean(per_seq, lengths > 0)
