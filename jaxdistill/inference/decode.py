"""Autoregressive decoding (greedy and beam search) for sequence-to-sequence models, under jit.

The model is a pure function `logits_fn(state, tokens, t) -> [N, V]` float logits:

- `state`: a pytree of arrays whose leading axis is the batch N (encoder output, its mask, ...).
- `tokens`: int32 [N, max_len + 1]; column 0 is the decoder start token, columns 1..t the tokens
  generated so far, later columns pad_id.
- `t`: a traced int32 scalar; the logits are for column t + 1, the token after position t.

A model with a key/value cache passes `cache=` (a pytree of per-row arrays, leading axis N):
`logits_fn(state, tokens, t, cache) -> (logits, cache)` then gets the cache the previous step
returned, and beam search reorders its rows with the beams it keeps.

Shapes are static (the buffer always has max_len + 1 columns and the loop is a `lax.scan`), so
one compilation serves every batch of the same shape. The functions are jittable as they are;
bind the model and the ints with `functools.partial` and jit over `state`:

    decode = jax.jit(functools.partial(beam_search, logits_fn, beam_size=4, max_len=32,
                                       start_id=0, eos_id=1, pad_id=0))
    tokens, scores = decode(state)
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

LogitsFn = Callable[..., Any]


def _call(logits_fn: LogitsFn, state: Any, buf: jax.Array, t: jax.Array, cache: Any):
    """(logits, cache) of one step, for models with or without a cache."""
    if cache is None:
        return logits_fn(state, buf, t), None
    return logits_fn(state, buf, t, cache)


def _batch_size(state: Any) -> int:
    return jax.tree_util.tree_leaves(state)[0].shape[0]


def _start_buffer(n: int, max_len: int, start_id: int, pad_id: int) -> jax.Array:
    buf = jnp.full((n, max_len + 1), pad_id, jnp.int32)
    return buf.at[:, 0].set(start_id)


def ban_repeated_ngrams(scores: jax.Array, buf: jax.Array, t: jax.Array, size: int) -> jax.Array:
    """`scores` [N, V] for column t + 1 with -inf for every token that would repeat an n-gram
    of `size` tokens already in columns 0..t of `buf` [N, L + 1] (the start token counts, as
    in Hugging Face's `no_repeat_ngram_size` and OpenNMT's `block_ngram_repeat`). size 0: as is.
    """
    if size <= 0:
        return scores
    n_rows, width = buf.shape
    starts = width - size + 1  # n-grams that fit in the buffer, by first column s
    if starts <= 0:
        return scores
    s = jnp.arange(starts)
    # An n-gram already written (so t >= size - 1 and the clip below never bites) whose first
    # size - 1 tokens are the ones the next token follows (columns t - size + 2 .. t).
    same = jnp.broadcast_to((s + size - 1 <= t)[None, :], (n_rows, starts))
    for k in range(size - 1):
        follows = lax.dynamic_index_in_dim(buf, jnp.clip(t - size + 2 + k, 0, width - 1), axis=1)
        same = same & (buf[:, k:k + starts] == follows)
    completing = buf[:, size - 1:size - 1 + starts]  # the n-gram's last token, [N, starts]
    hits = jnp.zeros(scores.shape, jnp.int32).at[
        jnp.arange(n_rows)[:, None], completing].add(same.astype(jnp.int32))
    return jnp.where(hits > 0, -jnp.inf, scores)


def greedy_search(logits_fn: LogitsFn, state: Any, *, max_len: int, start_id: int, eos_id: int,
                  pad_id: int, cache: Any = None, no_repeat_ngram_size: int = 0) -> jax.Array:
    """Argmax decoding: int32 [N, max_len] generated tokens (start token excluded).

    After a row emits eos its later positions are pad_id, as in Hugging Face's greedy
    `generate` output after its start token, padded to max_len. Unlike beam_search, the pad
    logit is not masked here, so that the output matches Hugging Face's greedy token for token.
    no_repeat_ngram_size: as `ban_repeated_ngrams` (0: no block).
    """
    n = _batch_size(state)

    def step(carry, t):
        buf, done, cache = carry
        logits, cache = _call(logits_fn, state, buf, t, cache)
        logits = ban_repeated_ngrams(logits, buf, t, no_repeat_ngram_size)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        buf = buf.at[:, t + 1].set(nxt)
        return (buf, done | (nxt == eos_id), cache), None

    init = (_start_buffer(n, max_len, start_id, pad_id), jnp.zeros((n,), bool), cache)
    (buf, _, _), _ = lax.scan(step, init, jnp.arange(max_len, dtype=jnp.int32))
    return buf[:, 1:]


LENGTH_PENALTIES = ("hf", "wu")


def length_normaliser(length: Any, alpha: float, form: str = "hf") -> jax.Array:
    """What a hypothesis's summed log-probability is divided by: n ** alpha (Hugging Face's
    `length_penalty`) or ((5 + n) / 6) ** alpha (Wu et al. 2016, OpenNMT's `-length_penalty wu`,
    which Distill-BERT-Textgen decodes with)."""
    n = jnp.asarray(length, jnp.float32)
    if form == "hf":
        return n ** alpha
    if form == "wu":
        return ((5.0 + n) / 6.0) ** alpha
    raise ValueError(f"length penalty form {form!r}: expected one of {', '.join(LENGTH_PENALTIES)}")


def _reorder_beams(tree: Any, origin: jax.Array) -> Any:
    """Rows of a [N * B, ...] pytree taken from the beams `origin` [N, B] came from."""
    n, b = origin.shape

    def take(x):
        x = x.reshape(n, b, *x.shape[1:])
        idx = origin.reshape(n, b, *([1] * (x.ndim - 2)))
        return jnp.take_along_axis(x, idx, axis=1).reshape(n * b, *x.shape[2:])
    return jax.tree_util.tree_map(take, tree)


def beam_search(logits_fn: LogitsFn, state: Any, *, beam_size: int, max_len: int, start_id: int,
                eos_id: int, pad_id: int, length_penalty: float = 1.0, cache: Any = None,
                length_penalty_form: str = "hf", no_repeat_ngram_size: int = 0
                ) -> tuple[jax.Array, jax.Array]:
    """Beam search: the best hypothesis per row, (tokens int32 [N, max_len], scores float32 [N]).

    Contract:
    - log-probabilities are `log_softmax(logits)` over the full vocabulary; pad_id is then set
      to -inf, so it is never generated (the probability mass is not renormalised). The start
      token is not masked. With no_repeat_ngram_size, so is each token that would repeat an
      n-gram of the hypothesis (`ban_repeated_ngrams`), again without renormalising.
    - A hypothesis's raw score is the sum of its tokens' log-probabilities, eos included. It is
      finished when it emits eos (its length n counts the eos) or reaches max_len tokens
      without eos (n = max_len); its final score is raw / length_normaliser(n) (Hugging
      Face's n ** length_penalty by default, n = generated length; or Wu et al.'s form).
    - Each step expands every alive beam by all V tokens and keeps the top 2 * beam_size of the
      beam_size * V candidates by raw score. Those ending in eos compete, by final score, with
      the finished set for its beam_size places; the best beam_size others stay alive. At the
      first step only beam 0 is live (the others start at -inf, so no duplicates). After the
      last step the alive beams are finished with n = max_len.
    - Returned: the best finished hypothesis, tokens padded with pad_id after its eos.

    `state` is repeated beam_size times per row (rows n * beam_size .. n * beam_size +
    beam_size - 1 belong to row n), so logits_fn sees N * beam_size rows.
    """
    n, b = _batch_size(state), beam_size
    tiled = jax.tree_util.tree_map(lambda x: jnp.repeat(x, b, axis=0), state)
    cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, b, axis=0), cache)

    neg_inf = jnp.float32(-jnp.inf)

    def penalise(raw, length):
        return raw / length_normaliser(length, length_penalty, length_penalty_form)

    def step(carry, t):
        # [N, B, L + 1], [N, B], [N, B, L], [N, B], per-row pytree
        alive_buf, alive_raw, fin_tok, fin_score, cache = carry
        rows = alive_buf.reshape(n * b, max_len + 1)
        logits, cache = _call(logits_fn, tiled, rows, t, cache)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        logp = logp.at[:, pad_id].set(neg_inf)
        logp = ban_repeated_ngrams(logp, rows, t, no_repeat_ngram_size)
        v = logp.shape[-1]
        cand = (alive_raw[:, :, None] + logp.reshape(n, b, v)).reshape(n, b * v)
        # 2B candidates: at most B of them end in eos, so B non-eos ones always remain.
        raw, idx = lax.top_k(cand, 2 * b)
        beam, tok = idx // v, (idx % v).astype(jnp.int32)
        buf = jnp.take_along_axis(alive_buf, beam[:, :, None], axis=1).at[:, :, t + 1].set(tok)
        is_eos = tok == eos_id

        # Finished: merge the eos candidates (scored with n = t + 1) into the best B so far.
        eos_score = jnp.where(is_eos, penalise(raw, t + 1), neg_inf)
        all_score = jnp.concatenate([fin_score, eos_score], axis=1)
        all_tok = jnp.concatenate([fin_tok, buf[:, :, 1:]], axis=1)
        fin_score, keep = lax.top_k(all_score, b)
        fin_tok = jnp.take_along_axis(all_tok, keep[:, :, None], axis=1)

        # Alive: the best B candidates that did not end in eos.
        alive_raw, keep = lax.top_k(jnp.where(is_eos, neg_inf, raw), b)
        alive_buf = jnp.take_along_axis(buf, keep[:, :, None], axis=1)
        if cache is not None:
            cache = _reorder_beams(cache, jnp.take_along_axis(beam, keep, axis=1))
        return (alive_buf, alive_raw, fin_tok, fin_score, cache), None

    alive_buf = _start_buffer(n * b, max_len, start_id, pad_id).reshape(n, b, max_len + 1)
    alive_raw = jnp.full((n, b), neg_inf).at[:, 0].set(0.0)
    fin_tok = jnp.full((n, b, max_len), pad_id, jnp.int32)
    fin_score = jnp.full((n, b), neg_inf)
    init = (alive_buf, alive_raw, fin_tok, fin_score, cache)
    (alive_buf, alive_raw, fin_tok, fin_score, _), _ = lax.scan(
        step, init, jnp.arange(max_len, dtype=jnp.int32))

    # Alive beams ran out of room: finished with n = max_len.
    score = jnp.concatenate([fin_score, penalise(alive_raw, max_len)], axis=1)
    tokens = jnp.concatenate([fin_tok, alive_buf[:, :, 1:]], axis=1)
    best = jnp.argmax(score, axis=1)
    best_tok = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
    return best_tok, jnp.take_along_axis(score, best[:, None], axis=1)[:, 0]
