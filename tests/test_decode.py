"""Greedy and beam search (jaxdistill/inference/decode.py) on a tiny random model, against a
plain-python step loop and an exhaustive search over every possible output."""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.inference.decode import beam_search, greedy_search, length_normaliser

PAD, START, EOS = 0, 1, 2
V, D, ROWS = 5, 3, 4
# Everything but pad can be generated, the start token included; eos ends a hypothesis.
CONTINUE = [t for t in range(V) if t not in (PAD, EOS)]

# Seed and scales picked so the optima vary in length and tokens, and a 2-wide beam misses some.
_rng = np.random.default_rng(1)
W = _rng.normal(size=(V, V)).astype(np.float32) * 0.7  # previous token
P = _rng.normal(size=(8, V)).astype(np.float32)  # position
M = _rng.normal(size=(D, V)).astype(np.float32)  # per-row state
C = _rng.normal(size=(V, V)).astype(np.float32) * 0.7  # counts of all earlier tokens


def logits_fn(state, tokens, t):
    """Depends on the whole prefix (through the counts), so wrong beam bookkeeping shows."""
    cols = jnp.arange(tokens.shape[1])
    seen = ((cols >= 1) & (cols <= t))[None, :, None]
    counts = (jax.nn.one_hot(tokens, V) * seen).sum(axis=1)
    prev = jnp.take_along_axis(tokens, jnp.full((tokens.shape[0], 1), t), axis=1)[:, 0]
    return jnp.asarray(W)[prev] + jnp.asarray(P)[t] + state["h"] @ jnp.asarray(M) + counts @ C


def make_state(seed: int = 1) -> dict:
    return {"h": jnp.asarray(np.random.default_rng(seed).normal(size=(ROWS, D)), jnp.float32)}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def logprob_table(state: dict, max_len: int) -> dict:
    """(row, prefix) -> log-probabilities of the next token, for every prefix without eos."""
    table = {}
    h = np.asarray(state["h"])
    for t in range(max_len):
        prefixes = list(itertools.product(CONTINUE, repeat=t))
        keys = [(r, p) for r in range(ROWS) for p in prefixes]
        buf = np.full((len(keys), max_len + 1), PAD, np.int32)
        buf[:, 0] = START
        for i, (_, p) in enumerate(keys):
            buf[i, 1:t + 1] = p
        rows = {"h": jnp.asarray(h[[r for r, _ in keys]])}
        lp = log_softmax(np.asarray(logits_fn(rows, jnp.asarray(buf), jnp.int32(t))))
        table.update(zip(keys, lp))
    return table


def penalised(table: dict, row: int, seq: tuple, length_penalty: float, form: str = "hf"
              ) -> float:
    raw = sum(table[(row, seq[:i])][tok] for i, tok in enumerate(seq))
    n = len(seq)
    return raw / (n ** length_penalty if form == "hf" else ((5 + n) / 6) ** length_penalty)


def exhaustive(table: dict, row: int, max_len: int, length_penalty: float, form: str = "hf"):
    seqs = [p + (EOS,) for n in range(max_len) for p in itertools.product(CONTINUE, repeat=n)]
    seqs += list(itertools.product(CONTINUE, repeat=max_len))
    best = max(seqs, key=lambda s: penalised(table, row, s, length_penalty, form))
    return best + (PAD,) * (max_len - len(best)), penalised(table, row, best, length_penalty, form)


def test_length_normalisers_against_hand_values():
    # Hugging Face: n ** alpha; Wu et al. (OpenNMT 'wu'): ((5 + n) / 6) ** alpha.
    np.testing.assert_allclose(length_normaliser(4, 0.6), 4 ** 0.6, rtol=1e-6)  # 2.2974
    np.testing.assert_allclose(length_normaliser(4, 0.6), 2.29739671, rtol=1e-6)
    np.testing.assert_allclose(length_normaliser(7, 0.6, "wu"), 2.0 ** 0.6, rtol=1e-6)  # 1.5157
    np.testing.assert_allclose(length_normaliser(7, 0.6, "wu"), 1.51571657, rtol=1e-6)
    np.testing.assert_allclose(length_normaliser(1, 1.0, "wu"), 1.0, rtol=1e-6)
    np.testing.assert_allclose(length_normaliser(10, 0.0, "wu"), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="expected one of hf, wu"):
        length_normaliser(3, 1.0, "gnmt")


def test_wide_beam_with_wu_length_penalty_is_exhaustive():
    max_len = 3
    state = make_state()
    table = logprob_table(state, max_len)
    for length_penalty in (0.6, 2.0):
        tokens, scores = beam_search(logits_fn, state, beam_size=(V - 1) ** (max_len - 1),
                                     length_penalty=length_penalty, length_penalty_form="wu",
                                     **decode_kw(max_len))
        for r in range(ROWS):
            want_tok, want_score = exhaustive(table, r, max_len, length_penalty, "wu")
            assert tuple(np.asarray(tokens[r])) == want_tok, (r, length_penalty)
            np.testing.assert_allclose(scores[r], want_score, rtol=1e-5, atol=1e-5)


def unpad(tokens) -> tuple:
    """The generated hypothesis: up to and including eos, or all of it."""
    tokens = tuple(int(x) for x in tokens)
    return tokens[:tokens.index(EOS) + 1] if EOS in tokens else tokens


def decode_kw(max_len: int) -> dict:
    return dict(max_len=max_len, start_id=START, eos_id=EOS, pad_id=PAD)


@pytest.mark.parametrize("max_len", [3, 4])
def test_wide_beam_is_exhaustive(max_len):
    state = make_state()
    table = logprob_table(state, max_len)
    beam = (V - 1) ** (max_len - 1)  # every prefix fits
    lengths = set()
    for length_penalty in (0.0, 0.6, 1.0, 2.0):
        tokens, scores = beam_search(logits_fn, state, beam_size=beam,
                                     length_penalty=length_penalty, **decode_kw(max_len))
        assert tokens.shape == (ROWS, max_len) and tokens.dtype == jnp.int32
        assert scores.shape == (ROWS,) and scores.dtype == jnp.float32
        for r in range(ROWS):
            want_tok, want_score = exhaustive(table, r, max_len, length_penalty)
            assert tuple(np.asarray(tokens[r])) == want_tok, (r, length_penalty)
            np.testing.assert_allclose(scores[r], want_score, rtol=1e-5, atol=1e-5)
            lengths.add(len(unpad(want_tok)))
    assert len(lengths) > 1  # the cases are not all the same shape of answer


def test_small_beam_is_consistent():
    max_len = 4
    state = make_state(2)
    table = logprob_table(state, max_len)
    misses = 0
    for length_penalty in (0.0, 1.0):
        tokens, scores = beam_search(logits_fn, state, beam_size=2,
                                     length_penalty=length_penalty, **decode_kw(max_len))
        for r in range(ROWS):
            seq = unpad(tokens[r])
            assert PAD not in seq
            assert tuple(np.asarray(tokens[r][len(seq):])) == (PAD,) * (max_len - len(seq))
            np.testing.assert_allclose(scores[r], penalised(table, r, seq, length_penalty),
                                       rtol=1e-5, atol=1e-5)
            best = exhaustive(table, r, max_len, length_penalty)[1]
            assert scores[r] <= best + 1e-5
            misses += float(scores[r]) < best - 1e-4
    assert misses  # the narrow beam really is narrower than the search space


def greedy_reference(state: dict, max_len: int) -> np.ndarray:
    out = np.full((ROWS, max_len), PAD, np.int32)
    for r in range(ROWS):
        buf = np.full((1, max_len + 1), PAD, np.int32)
        buf[0, 0] = START
        row = {"h": state["h"][r:r + 1]}
        for t in range(max_len):
            tok = int(np.argmax(np.asarray(logits_fn(row, jnp.asarray(buf), jnp.int32(t)))[0]))
            buf[0, t + 1] = out[r, t] = tok
            if tok == EOS:
                break
    return out


@pytest.mark.parametrize("max_len", [1, 5])
def test_greedy_matches_step_loop(max_len):
    state = make_state(3)
    got = greedy_search(logits_fn, state, **decode_kw(max_len))
    assert got.shape == (ROWS, max_len) and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, greedy_reference(state, max_len))


def test_jit_compiles_once():
    traces = []

    def counted(state, tokens, t):
        traces.append(None)  # runs at trace time only
        return logits_fn(state, tokens, t)

    greedy = jax.jit(functools.partial(greedy_search, counted, **decode_kw(4)))
    beam = jax.jit(functools.partial(beam_search, counted, beam_size=3, length_penalty=0.6,
                                     **decode_kw(4)))
    a, b = make_state(4), make_state(5)
    for fn in (greedy, beam):
        first = fn(a)
        n_traces = len(traces)
        second = fn(b)
        assert len(traces) == n_traces  # same shapes: the second call reuses the compilation
        # Different states give different answers: the state is an input, not a baked constant.
        assert not all(np.array_equal(x, y) for x, y in
                       zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)))
    np.testing.assert_array_equal(greedy(b), greedy_reference(b, 4))
    tokens, scores = beam(b)
    want = beam_search(logits_fn, b, beam_size=3, length_penalty=0.6, **decode_kw(4))
    np.testing.assert_array_equal(tokens, want[0])
    np.testing.assert_allclose(scores, want[1], rtol=1e-6)


def cached_logits_fn(state, tokens, t, cache):
    """The same model with the counts of earlier tokens carried in a per-row cache instead of
    recounted from the buffer: beam search must move each row's cache with its beam."""
    prev = jnp.take_along_axis(tokens, jnp.full((tokens.shape[0], 1), t), axis=1)[:, 0]
    counts = cache["counts"] + jnp.where(t >= 1, jax.nn.one_hot(prev, V), 0.0)
    logits = jnp.asarray(W)[prev] + jnp.asarray(P)[t] + state["h"] @ jnp.asarray(M) + counts @ C
    return logits, {"counts": counts}


@pytest.mark.parametrize("beam", [1, 2, 3])
def test_a_cache_carried_per_row_gives_the_same_outputs(beam):
    state, max_len = make_state(), 5
    ids = dict(max_len=max_len, start_id=START, eos_id=EOS, pad_id=PAD)
    cache = {"counts": jnp.zeros((ROWS, V), jnp.float32)}
    if beam == 1:
        want = greedy_search(logits_fn, state, **ids)
        got = greedy_search(cached_logits_fn, state, cache=cache, **ids)
    else:
        want, want_score = beam_search(logits_fn, state, beam_size=beam, length_penalty=0.6, **ids)
        got, got_score = beam_search(cached_logits_fn, state, beam_size=beam, length_penalty=0.6,
                                     cache=cache, **ids)
        np.testing.assert_allclose(np.asarray(got_score), np.asarray(want_score), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def repeats_an_ngram(seq: tuple, size: int) -> bool:
    """Whether START + seq holds some n-gram twice (the start token counts, as in HF)."""
    full = (START,) + tuple(seq)
    grams = [full[i:i + size] for i in range(len(full) - size + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("size", [1, 2])
def test_wide_beam_with_ngram_block_is_exhaustive_over_unrepeated_outputs(size):
    max_len = 4
    state = make_state()
    table = logprob_table(state, max_len)
    seqs = [p + (EOS,) for n in range(max_len) for p in itertools.product(CONTINUE, repeat=n)]
    seqs += list(itertools.product(CONTINUE, repeat=max_len))
    allowed = [s for s in seqs if not repeats_an_ngram(s, size)]
    changed = 0
    for length_penalty in (0.0, 0.6):
        tokens, scores = beam_search(logits_fn, state, beam_size=(V - 1) ** (max_len - 1),
                                     length_penalty=length_penalty, no_repeat_ngram_size=size,
                                     **decode_kw(max_len))
        for r in range(ROWS):
            # Scores are the model's own log-probabilities: the block does not renormalise.
            best = max(allowed, key=lambda s: penalised(table, r, s, length_penalty))
            assert unpad(tokens[r]) == best, (size, r, length_penalty)
            np.testing.assert_allclose(scores[r], penalised(table, r, best, length_penalty),
                                       rtol=1e-5, atol=1e-5)
            changed += best != unpad(exhaustive(table, r, max_len, length_penalty)[0])
    assert changed  # the block changed some answers


def test_greedy_with_ngram_block_matches_step_loop():
    state, max_len, size = make_state(3), 8, 2
    got = np.asarray(greedy_search(logits_fn, state, no_repeat_ngram_size=size,
                                   **decode_kw(max_len)))
    plain = np.asarray(greedy_search(logits_fn, state, **decode_kw(max_len)))
    for r in range(ROWS):
        buf = [START]
        row = {"h": state["h"][r:r + 1]}
        for t in range(max_len):
            padded = np.full((1, max_len + 1), PAD, np.int32)
            padded[0, :len(buf)] = buf
            logits = np.array(logits_fn(row, jnp.asarray(padded), jnp.int32(t)))[0]
            for tok in range(V):  # hand ban: tok would end an n-gram seen before
                if repeats_an_ngram(tuple(buf[1:]) + (tok,), size):
                    logits[tok] = -np.inf
            buf.append(int(np.argmax(logits)))
            if buf[-1] == EOS:
                break
        want = np.full(max_len, PAD)
        want[:len(buf) - 1] = buf[1:]
        np.testing.assert_array_equal(got[r], want)
        assert not repeats_an_ngram(unpad(got[r]), size)
    assert any(repeats_an_ngram(unpad(row), size) for row in plain)  # there was something to ban
