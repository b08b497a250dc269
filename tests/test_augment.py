"""TinyBERT data augmentation (jaxdistill/teacher_data/tinybert_augment.py) on a tiny model whose
answers we set, and the resumable writer of teacher-written datasets."""
from __future__ import annotations

import dataclasses
import types

import jax
import numpy as np
import pytest

from jaxdistill import assets
from jaxdistill.config import TaskConfig
from jaxdistill.teacher_data.tinybert_augment import AugmentConfig
from jaxdistill.convert.hf_dir import write_hf_dir
from jaxdistill.data import tasks
from jaxdistill.data.tasks import Example
from jaxdistill.data.tokenizer import load_tokenizer
from jaxdistill.errors import UserError
from jaxdistill.models.bert import Bert, BertConfig, init_params
from jaxdistill.teacher_data import tinybert_augment as augment
from jaxdistill.teacher_data.tinybert_augment import SentenceCandidates

# The MLM head's bias makes these the top-5 predictions everywhere, in this order. '##ing' and
# '[unused5]' must be filtered out.
MLM_TOP = ["zebra", "##ing", "yacht", "[unused5]", "violin"]
MULTI = "unbelievably"  # several WordPieces: gets embedding neighbours
TWIN = "marvel"  # its embedding row is set parallel to MULTI's mean piece embedding


@pytest.fixture(scope="module")
def tok():
    tok, info = load_tokenizer("package:minilm")
    return tok, info.special_ids


@pytest.fixture(scope="module")
def tiny(tok):
    """(BertConfig, params) of a 1-layer random MLM model with known top predictions and twin."""
    tokenizer, _ = tok
    cfg = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=1,
                     num_heads=4, intermediate_size=64, max_position_embeddings=64, head="mlm")
    params = jax.tree.map(np.array, init_params(cfg, jax.random.key(0)))
    bias = params["mlm_head"]["bias"]
    for rank, token in enumerate(MLM_TOP):
        bias[tokenizer.token_to_id(token)] = 100.0 - rank
    table = params["embeddings"]["word"]["embedding"]
    pieces = tokenizer.encode(MULTI, add_special_tokens=False).ids
    assert len(pieces) > 1
    table[tokenizer.token_to_id(TWIN)] = 3.0 * table[pieces].mean(axis=0)
    return cfg, params


def _find(tok, tiny, sentences, m=5, seq_len=32, batch_size=4, neighbours="embeddings"):
    tokenizer, special = tok
    cfg, params = tiny
    return augment.find_candidates(sentences, Bert(cfg), params, tokenizer, special, m=m,
                                   batch_size=batch_size, seq_len=seq_len, progress=False,
                                   neighbours=neighbours)


def _cands(words: list[str], n_options: int = 15) -> SentenceCandidates:
    """Every alphabetic word gets n_options made-up candidates that differ from it."""
    return SentenceCandidates(tuple(words), tuple(
        tuple(f"{w}{k}" for k in range(n_options)) if w.isalpha() else () for w in words))


def test_split_words_and_replaceable(tok):
    words = augment.split_words(tok[0], "It's an UNBELIEVABLY good film, isn't it?")
    assert words == ["it", "'", "s", "an", "unbelievably", "good", "film", ",", "isn", "'", "t",
                     "it", "?"]
    assert [w for w in words if augment.is_replaceable(w)] == ["unbelievably", "good", "film"]
    assert not augment.is_replaceable("film2") and augment.is_replaceable("what")
    assert len(augment.STOP_WORDS) == 173 and {"the", "'s", "wouldn't"} <= augment.STOP_WORDS


def test_nearest_words_matches_brute_force():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(200, 16)).astype(np.float32)
    valid = rng.random(200) < 0.7
    queries = rng.normal(size=(6, 16)).astype(np.float32)
    queries[0] = table[5]  # the row itself must be excluded
    exclude = np.array([5, -1, 7, -1, -1, 199], np.int32)
    valid[5] = True
    got = augment.nearest_words(table, valid, queries, exclude, m=7)

    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    cos[:, ~valid] = -np.inf
    cos[np.arange(6)[exclude >= 0], exclude[exclude >= 0]] = -np.inf
    np.testing.assert_array_equal(got, np.argsort(-cos, axis=1, kind="stable")[:, :7])
    assert 5 not in got[0]


def test_mlm_row_is_masked_sentence_then_original(tok):
    tokenizer, special = tok
    pieces = np.asarray(tokenizer.encode("a good film", add_special_tokens=False).ids, np.int32)
    rows = [augment._mlm_row(pieces, special, 64)]
    request = augment._MlmRequest(sentence=0, word=1, position=2)
    (chunk, ids, mask, types_, positions), = augment._mlm_batches([request], rows, 2, 64, special)
    c, s, mk = special["cls"], special["sep"], special["mask"]
    a, g, f = pieces
    assert ids.shape == (2, augment.LENGTH_BUCKET) and chunk == [request]  # 9 tokens, 1 bucket
    assert ids[0, :9].tolist() == [c, a, mk, f, s, a, g, f, s] and ids[0, 9:].sum() == 0
    assert types_[0, :9].tolist() == [0] * 5 + [1] * 4 and mask[0].sum() == 9
    assert positions[0] == 2 and (ids[1] == ids[0]).all()  # pad row repeats the first


def test_single_piece_words_get_mlm_candidates_multi_piece_get_neighbours(tok, tiny):
    tokenizer, _ = tok
    cfg, params = tiny
    sentence = f"The {MULTI} good film!"
    got = _find(tok, tiny, [sentence, sentence])[sentence]
    assert got.words == ("the", MULTI, "good", "film", "!")
    assert got.options[0] == () and got.options[4] == ()  # stop word, punctuation
    assert got.options[2] == got.options[3] == ("zebra", "yacht", "violin")

    # Neighbours: the mean piece embedding vs every whole-word entry, brute force in NumPy.
    table = params["embeddings"]["word"]["embedding"]
    vocab = augment._vocab_list(tokenizer, cfg.vocab_size)
    valid = augment.candidate_mask(vocab)
    query = table[tokenizer.encode(MULTI, add_special_tokens=False).ids].mean(axis=0)
    cos = (table @ query) / (np.linalg.norm(table, axis=1) * np.linalg.norm(query))
    cos[~valid] = -np.inf
    expected = tuple(vocab[i] for i in np.argsort(-cos, kind="stable")[:5])
    assert got.options[1] == expected and expected[0] == TWIN
    assert all(augment.is_replaceable(w) for w in got.options[1])


def test_multi_piece_words_get_glove_neighbours_by_default(tok, tiny):
    from jaxdistill.data.words import glove_table

    sentence = f"An {MULTI.title()} good film and a qwzxvbn one"
    got = _find(tok, tiny, [sentence], neighbours="glove")[sentence]
    words, table = glove_table()
    table = np.asarray(table)
    query = table[words.index(MULTI)]
    cos = (table @ query) / (np.linalg.norm(table, axis=1) * np.linalg.norm(query) + 1e-12)
    cos[[not augment.is_replaceable(w) for w in words]] = -np.inf
    cos[words.index(MULTI)] = -np.inf  # never the word itself
    expected = tuple(words[i] for i in np.argsort(-cos, kind="stable")[:5])
    assert got.options[1] == expected and got.words[1] == MULTI  # the uncased vocab lowers it
    assert got.options[got.words.index("qwzxvbn")] == ()  # GloVe lacks it: no candidates


def test_candidates_are_replaceable_words_only():
    vocab = ["[PAD]", "[unused3]", "##ing", "the", ",", "42", "film", "zebra", "don't"]
    assert augment.candidate_mask(vocab).tolist() == [False] * 6 + [True, True, False]


def test_no_candidates_past_the_window(tok, tiny):
    sentence = "good " * 10  # [MASK] at positions 1..10
    got = _find(tok, tiny, [sentence], seq_len=8)[sentence]
    assert [bool(o) for o in got.options] == [True] * 7 + [False] * 3


def test_n_variants_per_example_labels_kept_original_first():
    # Enough words and candidates that 10 tries are 10 distinct variants (fixed by the seed).
    words_a = ["great", "acting", ",", "weak", "plot", "and", "a", "lovely", "score"]
    words_b = ["simply", "superb", "stuff", "from", "start", "to", "finish"]
    cands = {"A": _cands(words_a), "B": _cands(words_b)}
    single = [Example("A", None, 1), Example("B", None, 0)]
    out = augment.augment_examples(single, cands, n=10, p_t=0.5, seed=0)
    assert len(out) == 2 * (1 + 10)
    assert out[0] == single[0] and out[11] == single[1]
    assert {e.label for e in out[:11]} == {1} and {e.label for e in out[11:]} == {0}
    assert all(len(e.text_a.split()) == len(words_a) for e in out[1:11])

    pair = [Example("A", "B", 2)]
    out = augment.augment_examples(pair, cands, n=10, p_t=0.5, seed=0)
    assert len(out) == 1 + 10 + 10 and out[0] == pair[0]
    assert all(e.text_b == "B" and e.text_a != "A" for e in out[1:11])  # text_a varies first
    assert all(e.text_a == "A" and e.text_b != "B" for e in out[11:])  # then text_b
    assert {e.label for e in out} == {2}


def test_p_t_zero_keeps_only_originals_and_one_replaces_every_word():
    words = ["Great", "acting", ",", "weak", "plot"]
    cands = {"Great acting, weak plot": _cands(words)}
    examples = [Example("Great acting, weak plot", None, 1)]
    assert augment.augment_examples(examples, cands, n=20, p_t=0.0, seed=3) == examples

    out = augment.augment_examples(examples, cands, n=20, p_t=1.0, seed=3)
    assert len(out) == 21
    for ex in out[1:]:
        new = ex.text_a.split()
        assert new[2] == "," and all(n != w and n.startswith(w) for n, w in
                                     zip(new, words) if w.isalpha())


def test_duplicates_are_dropped():
    cands = {"x": SentenceCandidates(("good", "film"), (("fine",), ()))}
    out = augment.augment_examples([Example("x", None, 0)], cands, n=20, p_t=0.5, seed=0)
    assert [e.text_a for e in out] == ["x", "fine film"]


def _run_cfg(tmp_path, model_dir, **kw) -> AugmentConfig:
    return AugmentConfig(out=str(tmp_path / "aug.jsonl"), mlm_model=str(model_dir),
                         task=TaskConfig(name="rotten_tomatoes"), n=4, m=5, p_t=0.5,
                         batch_size=8, seq_len=32, **kw)


@pytest.fixture()
def fake_task(monkeypatch):
    train = [Example("A gripping, unbelievably tense thriller.", None, 1),
             Example("Dull and far too long.", None, 0),
             Example("The cast shines", "but the script sags", 1)]
    data = types.SimpleNamespace(train=train, dev=[], num_labels=2)
    seen = []
    monkeypatch.setattr(tasks, "load_task", lambda cfg: seen.append(cfg) or data, raising=False)
    return train, seen


def test_run_is_deterministic(tmp_path, tok, tiny, fake_task):
    train, seen = fake_task
    model_dir = write_hf_dir(*tiny, tmp_path / "mlm", assets.teacher_dir())
    cfg = _run_cfg(tmp_path, model_dir, seed=1)
    summary = augment.run(cfg, progress=False)
    first = (tmp_path / "aug.jsonl").read_bytes()
    assert summary["input_examples"] == 3 and summary["out"] == cfg.out
    out = tasks.read_examples_jsonl(cfg.out)
    assert summary["output_examples"] == len(out) > 3 and out[0] == train[0]
    assert seen[0].augmented == ""

    augment.run(cfg, progress=False)
    assert (tmp_path / "aug.jsonl").read_bytes() == first
    augment.run(dataclasses.replace(cfg, seed=2), progress=False)
    assert (tmp_path / "aug.jsonl").read_bytes() != first


def test_run_resumes_after_a_crash_chunk_by_chunk(tmp_path, tok, tiny, fake_task, monkeypatch,
                                                  capsys):
    model_dir = write_hf_dir(*tiny, tmp_path / "mlm", assets.teacher_dir())
    clean = _run_cfg(tmp_path, model_dir, seed=1)
    augment.run(clean, progress=False)
    expected = (tmp_path / "aug.jsonl").read_bytes()
    crashing = dataclasses.replace(clean, out=str(tmp_path / "again.jsonl"), chunk_size=1)
    real = augment.TinyBertAugmentation.process

    def crash_at_third(self, start, chunk):
        if start == 2:
            raise KeyboardInterrupt("killed")
        return real(self, start, chunk)

    monkeypatch.setattr(augment.TinyBertAugmentation, "process", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        augment.run(crashing, progress=False)
    assert not (tmp_path / "again.jsonl").exists()  # never a partial file under the final name
    assert sorted(p.name for p in (tmp_path / "again.jsonl.parts").glob("*.jsonl")) == \
        ["000000.jsonl", "000001.jsonl"]
    monkeypatch.setattr(augment.TinyBertAugmentation, "process", real)
    capsys.readouterr()
    summary = augment.run(crashing, progress=False)
    assert summary["resumed_chunks"] == 2
    # The start and end lines in words, as pretrain/finetune print them (the bar goes to stderr).
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("jaxdistill augment (method tinybert): ")
    assert "(resuming: 2 chunks already written)" in printed[0]
    assert printed[-1].startswith("done: ") and "again.jsonl" in printed[-1]
    assert (tmp_path / "again.jsonl").read_bytes() == expected  # chunking changes nothing
    assert not (tmp_path / "again.jsonl.parts").exists()


def test_model_without_mlm_head_is_a_user_error(tmp_path, fake_task):
    with pytest.raises(UserError, match=r"teacher_mlm\.yaml"):
        augment.run(_run_cfg(tmp_path, "package:minilm"), progress=False)


@pytest.mark.parametrize("key,value", [("n", 0), ("m", 0), ("p_t", 1.5), ("p_t", -0.1)])
def test_invalid_settings_name_the_key(tmp_path, key, value):
    cfg = dataclasses.replace(_run_cfg(tmp_path, "unused"), **{key: value})
    with pytest.raises(UserError, match=rf"^{key}="):
        augment.run(cfg, progress=False)
