"""Pretraining data pipeline: corpus readers, prepare-data, MLM masking, grain loader."""
from __future__ import annotations

import csv
import gzip
import json
import os

import numpy as np
import pytest

from jaxdistill import assets
from jaxdistill.data import corpus, records
from jaxdistill.data.instances import pack_document
from jaxdistill.data.loader import make_loader
from jaxdistill.data.masking import make_spec, mask_tokens, max_predictions
from jaxdistill.data.prepare import prepare
from jaxdistill.data.text import split_sentences, text_to_document
from jaxdistill.data.tokenizer import load_tokenizer
from jaxdistill.errors import UserError

TOKENIZER = "package:minilm"
CLS, SEP, PAD, MASK = 101, 102, 0, 103
WORDS = ("the film was good bad long short funny sad actor story plot music scene end "
         "great poor slow quick dark light old new").split()


def synthetic_docs(n_docs: int, seed: int = 0) -> list[list[str]]:
    """Documents whose sentences are all distinct (each carries its document and sentence number)."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        sents = []
        for s in range(int(rng.integers(1, 9))):
            words = rng.choice(WORDS, size=int(rng.integers(3, 14)))
            sents.append(f"doc {d} line {s} " + " ".join(words) + ".")
        docs.append(sents)
    return docs


def write_txt(path, docs) -> None:
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)[0]


@pytest.fixture(scope="module")
def txt_corpus(tmp_path_factory):
    docs = synthetic_docs(120)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    write_txt(path, docs)
    return path, docs


@pytest.fixture(scope="module")
def prepared_docs(tmp_path_factory, txt_corpus):
    out = tmp_path_factory.mktemp("prep_docs")
    prepare(str(txt_corpus[0]), out, TOKENIZER, 32, "documents", num_workers=0, progress=False,
            docs_per_shard=50)
    return out


@pytest.fixture(scope="module")
def prepared_pairs(tmp_path_factory, txt_corpus):
    out = tmp_path_factory.mktemp("prep_pairs")
    prepare(str(txt_corpus[0]), out, TOKENIZER, 48, "pairs", seed=3, num_workers=0,
            progress=False, docs_per_shard=50)
    return out


def read_records(prepared_dir):
    import grain

    manifest = records.load_manifest(prepared_dir)
    source = grain.sources.ArrayRecordDataSource(records.shard_paths(prepared_dir, manifest))
    return [records.decode_record(source[i], manifest["dtype"]) for i in range(len(source))]


# ------------------------------------------------------------------------------------------
# Text and corpus readers


def test_text_cleaning_and_sentences():
    doc = text_to_document("I saw it in 1967. Mr. Smith said U.S. customs held it!<br /><br />"
                           "The plot &amp; <i>music</i>. so so")
    assert doc == ["I saw it in 1967.", "Mr. Smith said U.S. customs held it!",
                   "The plot & music. so so"]
    assert split_sentences("  \n\n ") == []


def test_txt_dir_glob_and_gz(tmp_path):
    docs = synthetic_docs(5)
    write_txt(tmp_path / "a.txt", docs[:3])
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("\n\n\n".join("\n".join(d) for d in docs[3:]))
    (tmp_path / "notes.md").write_text("ignored in a directory")
    assert list(corpus.iter_documents(str(tmp_path))) == docs
    assert list(corpus.iter_documents(str(tmp_path / "*.txt"))) == docs[:3]
    assert list(corpus.iter_documents(str(tmp_path), max_documents=4)) == docs[:4]


def test_csv_tsv_jsonl(tmp_path):
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerow([1, "First one. Second one."])
        w.writerow([2, ""])
        w.writerow([3, "Third<br />Fourth"])
    assert list(corpus.iter_documents(str(tmp_path / "c.csv"), text_column="body")) == [
        ["First one.", "Second one."], ["Third", "Fourth"]]
    with pytest.raises(UserError, match="no column 'text'.*id, body"):
        list(corpus.iter_documents(str(tmp_path / "c.csv")))
    (tmp_path / "t.tsv").write_text("text\tlabel\nHello there. Bye.\t1\n")
    assert list(corpus.iter_documents(str(tmp_path / "t.tsv"))) == [["Hello there.", "Bye."]]
    lines = [{"text": "A b. C d."}, {"text": ["seg one", "  seg two "]}, {"other": 1}]
    (tmp_path / "j.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    it = corpus.iter_documents(str(tmp_path / "j.jsonl"))
    assert next(it) == ["A b.", "C d."] and next(it) == ["seg one", "seg two"]
    with pytest.raises(UserError, match="line 3: no field 'text'"):
        next(it)


def test_bad_references(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        corpus.iter_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="package:imdb"):
        corpus.iter_documents("package:wikipedia")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(UserError, match="unsupported extension"):
        corpus.iter_documents(str(tmp_path / "x.xlsx"))
    (tmp_path / "x.parquet").write_text("not parquet")  # a supported name, unreadable content
    with pytest.raises(UserError, match=r"x\.parquet.*cannot be read"):
        list(corpus.iter_documents(str(tmp_path / "x.parquet")))
    with pytest.raises(UserError, match="max_documents"):
        corpus.iter_documents("package:imdb", max_documents=-1)


def test_package_imdb_and_rotten_tomatoes():
    docs = list(corpus.iter_documents("package:imdb", max_documents=50))
    assert len(docs) == 50 and all(docs)
    assert not any("<br" in s for d in docs for s in d)
    assert sum(len(d) > 1 for d in docs) > 40  # reviews are split into sentences
    rt = list(corpus.iter_documents("package:rotten_tomatoes", max_documents=5))
    assert len(rt) == 5 and rt[0][0].startswith("the rock is destined")


def test_tfds_local_array_record_builder(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class JaxdistillTinyCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"Document {i} starts. It ends here.", "label": i % 2}

    data_dir = tmp_path / "tfds"
    JaxdistillTinyCorpus(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    docs = list(corpus.iter_documents(f"tfds:jaxdistill_tiny_corpus@{data_dir}"))
    assert len(docs) == 6
    assert sorted(d[0] for d in docs) == [f"Document {i} starts." for i in range(6)]
    assert all(d[1] == "It ends here." for d in docs)
    assert len(list(corpus.iter_documents(f"tfds:jaxdistill_tiny_corpus:test@{data_dir}"))) == 2
    with pytest.raises(UserError, match="no feature 'body'"):
        list(corpus.iter_documents(f"tfds:jaxdistill_tiny_corpus@{data_dir}", text_column="body"))
    with pytest.raises(UserError, match="could not open"):
        list(corpus.iter_documents(f"tfds:jaxdistill_tiny_corpus:validation@{data_dir}"))
    assert corpus.parse_tfds_spec("tfds:wiki/en:1.0.0") == ("wiki/en:1.0.0", "train", None)
    assert corpus.parse_tfds_spec("tfds:wiki/en:test@/d") == ("wiki/en", "test", "/d")


# ------------------------------------------------------------------------------------------
# prepare-data


def test_pack_document_splits_long_sentences():
    out = pack_document([[1] * 3, [2] * 4, [3] * 13, [4]], seq_len=8, cls_id=CLS, sep_id=SEP)
    bodies = [ex.ids[1:-1] for ex in out]
    assert bodies == [[1, 1, 1], [2, 2, 2, 2], [3] * 6, [3] * 6, [3, 4]]
    assert all(ex.ids[0] == CLS and ex.ids[-1] == SEP and ex.len_a == len(ex.ids) for ex in out)


def test_prepare_documents(prepared_docs, txt_corpus, tok):
    manifest = records.load_manifest(prepared_docs)
    s = manifest["settings"]
    assert (s["seq_len"], s["format"], s["vocab_size"]) == (32, "documents", 30522)
    assert manifest["special_ids"] == {"cls": CLS, "sep": SEP, "pad": PAD, "mask": MASK, "unk": 100}
    assert [sh["documents"] for sh in manifest["shards"]] == [50, 50, 20]
    recs = read_records(prepared_docs)
    assert len(recs) == manifest["num_examples"] == sum(sh["examples"] for sh in manifest["shards"])
    for ids, len_a, rnd in recs:
        assert 3 <= len(ids) <= 32 and ids[0] == CLS and ids[-1] == SEP
        assert (ids[1:-1] != SEP).all() and (ids != PAD).all() and len_a == len(ids) and rnd == 0
    # Packing keeps every token, in order: the bodies concatenate to the corpus' token stream.
    stream = [t for d in txt_corpus[1] for s in d for t in tok.encode(s, add_special_tokens=False).ids]
    assert np.concatenate([ids[1:-1] for ids, _, _ in recs]).tolist() == stream
    counts = records.token_counts(prepared_docs)
    assert counts.sum() == manifest["num_tokens"] == sum(len(r[0]) for r in recs)
    assert counts[CLS] == counts[SEP] == len(recs)


def test_prepare_pairs(prepared_pairs, txt_corpus, tok):
    recs = read_records(prepared_pairs)
    stream = " ".join(str(t) for d in txt_corpus[1] for s in d
                      for t in tok.encode(s, add_special_tokens=False).ids)
    randoms = 0
    for ids, len_a, rnd in recs:
        assert len(ids) <= 48 and ids[0] == CLS and ids[-1] == SEP
        assert np.flatnonzero(ids == SEP).tolist() == [len_a - 1, len(ids) - 1]
        assert len_a >= 3 and len(ids) - len_a >= 2  # both segments non-empty
        a, b = ids[1:len_a - 1].tolist(), ids[len_a:-1].tolist()
        a_str, b_str = " ".join(map(str, a)), " ".join(map(str, b))
        assert a_str in stream and b_str in stream  # truncation trims only the segments' ends
        if not rnd:  # the actual continuation: B follows A, at most a truncated tail between
            a_end = stream.index(a_str) + len(a_str)
            gap = stream[a_end:stream.index(b_str, a_end)].split()
            assert len(gap) <= 48
        randoms += rnd
    assert 0.35 < randoms / len(recs) < 0.75  # 50% random next (+ single-sentence chunks)


def test_prepare_deterministic_parallel_and_resume(tmp_path, txt_corpus):
    src = str(txt_corpus[0])
    kw = dict(seq_len=48, format="pairs", seed=7, progress=False, docs_per_shard=40)
    m1 = prepare(src, tmp_path / "a", TOKENIZER, num_workers=0, **kw)
    m2 = prepare(src, tmp_path / "b", TOKENIZER, num_workers=2, **kw)
    files = [s["file"] for s in m1["shards"]]
    assert len(files) == 3 and [s["file"] for s in m2["shards"]] == files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    # Same settings again: nothing rewritten.
    mtimes = {f: os.stat(tmp_path / "a" / f).st_mtime_ns for f in files}
    assert prepare(src, tmp_path / "a", TOKENIZER, num_workers=0, **kw) == m1
    assert {f: os.stat(tmp_path / "a" / f).st_mtime_ns for f in files} == mtimes
    # An interrupted run (last shard missing, manifest unfinished) resumes with that shard only.
    last = tmp_path / "a" / files[-1]
    original = last.read_bytes()
    last.unlink()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["complete"] = False
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="unfinished"):
        make_loader(tmp_path / "a", 4, 0, process_index=0, process_count=1)
    m3 = prepare(src, tmp_path / "a", TOKENIZER, num_workers=0, **kw)
    assert last.read_bytes() == original and m3["num_examples"] == m1["num_examples"]
    assert os.stat(tmp_path / "a" / files[0]).st_mtime_ns == mtimes[files[0]]
    # Another seed: different pairs; other settings into the same directory: a clear error.
    m4 = prepare(src, tmp_path / "c", TOKENIZER, num_workers=0, **{**kw, "seed": 8})
    assert (tmp_path / "c" / files[0]).read_bytes() != original or m4 != m1
    with pytest.raises(UserError, match=r"seq_len: prepared 48, asked 64.*delete"):
        prepare(src, tmp_path / "a", TOKENIZER, **{**kw, "seq_len": 64})


def test_prepare_vocab_txt_matches_tokenizer_json(tmp_path, txt_corpus):
    vocab = assets.teacher_dir() / "vocab.txt"
    kw = dict(seq_len=32, num_workers=0, progress=False, max_documents=30)
    prepare(str(txt_corpus[0]), tmp_path / "json", TOKENIZER, **kw)
    m = prepare(str(txt_corpus[0]), tmp_path / "vocab", vocab, **kw)
    assert m["num_documents"] == 30
    assert [r[0].tolist() for r in read_records(tmp_path / "json")] == \
        [r[0].tolist() for r in read_records(tmp_path / "vocab")]


def test_prepare_bad_input(tmp_path, txt_corpus):
    with pytest.raises(UserError, match="format"):
        prepare(str(txt_corpus[0]), tmp_path, TOKENIZER, 32, "sentences")
    with pytest.raises(UserError, match="seq_len"):
        prepare(str(txt_corpus[0]), tmp_path, TOKENIZER, 4)
    with pytest.raises(UserError, match="does not exist"):
        prepare(str(tmp_path / "nope.txt"), tmp_path / "o", TOKENIZER, 32)
    with pytest.raises(UserError, match="Tokenizer"):
        prepare(str(txt_corpus[0]), tmp_path / "o", tmp_path / "no_tokenizer", 32)


def test_prepare_imdb_small(tmp_path):
    m = prepare("package:imdb", tmp_path, TOKENIZER, 128, max_documents=40, num_workers=0,
                progress=False)
    assert m["num_documents"] == 40 and m["num_examples"] > 40 and m["complete"]


# ------------------------------------------------------------------------------------------
# Masking

SPECIALS = {"cls": CLS, "sep": SEP, "pad": PAD, "mask": MASK, "unk": 100}


def test_mask_statistics():
    spec = make_spec(30522, SPECIALS, 128, 0.15)
    assert spec.max_predictions == max_predictions(128, 0.15) == 20
    rng = np.random.default_rng(0)
    ids = np.concatenate([[CLS], rng.integers(1000, 30000, 60), [SEP], rng.integers(1000, 30000, 40), [SEP]])
    n_cand = 100
    kinds = np.zeros(3)
    chosen_hist = np.zeros(len(ids))
    for _ in range(3000):
        out, pos, lab, w = mask_tokens(ids, rng, spec)
        k = int(w.sum())
        assert k == round(n_cand * 0.15) == 15
        assert (w[:k] == 1).all() and (w[k:] == 0).all() and (pos[k:] == 0).all() and (lab[k:] == 0).all()
        p = pos[:k]
        assert (np.diff(p) > 0).all() and (lab[:k] == ids[p]).all()
        assert not np.isin(ids[p], [CLS, SEP, PAD, MASK]).any()
        untouched = np.setdiff1d(np.arange(len(ids)), p)
        assert (out[untouched] == ids[untouched]).all()
        assert not np.isin(out[p][out[p] != MASK], [CLS, SEP, PAD]).any()
        kinds += [(out[p] == MASK).sum(), ((out[p] != MASK) & (out[p] != ids[p])).sum(), (out[p] == ids[p]).sum()]
        chosen_hist[p] += 1
    frac = kinds / kinds.sum()
    assert abs(frac[0] - 0.8) < 0.02 and abs(frac[1] - 0.1) < 0.015 and abs(frac[2] - 0.1) < 0.015
    cand_hist = chosen_hist[np.flatnonzero(~np.isin(ids, [CLS, SEP]))] / 3000
    assert abs(cand_hist.mean() - 0.15) < 1e-9 and cand_hist.min() > 0.11 and cand_hist.max() < 0.19


def test_mask_short_and_empty():
    spec = make_spec(30522, SPECIALS, 16, 0.15)
    rng = np.random.default_rng(1)
    out, pos, lab, w = mask_tokens(np.array([CLS, 2000, SEP]), rng, spec)
    assert w.sum() == 1 and pos[0] == 1 and lab[0] == 2000  # at least one prediction
    out, pos, lab, w = mask_tokens(np.array([CLS, SEP]), rng, spec)
    assert w.sum() == 0 and (out == [CLS, SEP]).all()


def test_mask_smoothing_prefers_rare_tokens():
    counts = np.ones(30522, np.int64)
    counts[2000], counts[3000] = 1_000_000, 100
    spec = make_spec(30522, SPECIALS, 64, 0.15, smoothing=0.7, counts=counts)
    ids = np.array([CLS] + [2000] * 30 + [3000] * 30 + [SEP])
    rng = np.random.default_rng(0)
    picked = np.concatenate([lab[w > 0] for _, _, lab, w in (mask_tokens(ids, rng, spec) for _ in range(200))])
    assert (picked == 3000).mean() > 0.9  # weight ratio (1e4)^0.7: the rare token dominates
    uniform = make_spec(30522, SPECIALS, 64, 0.15)
    picked = np.concatenate([lab[w > 0] for _, _, lab, w in (mask_tokens(ids, rng, uniform) for _ in range(200))])
    assert 0.4 < (picked == 3000).mean() < 0.6


# ------------------------------------------------------------------------------------------
# Loader

CONTRACT = {"input_ids": np.int32, "attention_mask": np.int32, "token_type_ids": np.int32,
            "masked_positions": np.int32, "masked_ids": np.int32, "masked_weights": np.float32}


def unmasked(batch) -> np.ndarray:
    """The original rows: masked_ids written back at masked_positions."""
    ids = batch["input_ids"].copy()
    for r in range(len(ids)):
        k = batch["masked_weights"][r] > 0
        ids[r, batch["masked_positions"][r][k]] = batch["masked_ids"][r][k]
    return ids


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_loader_batch_contract(prepared_pairs):
    it = make_loader(prepared_pairs, 8, seed=0, process_index=0, process_count=1)
    P = max_predictions(48, 0.15)
    for batch in take(it, 3):
        assert set(batch) == set(CONTRACT)
        for k, dt in CONTRACT.items():
            assert batch[k].dtype == dt
            assert batch[k].shape == ((8, 48) if k in ("input_ids", "attention_mask", "token_type_ids") else (8, P))
        am, tt, ids = batch["attention_mask"], batch["token_type_ids"], unmasked(batch)
        lengths = am.sum(1)
        for r in range(8):
            n = lengths[r]
            assert (am[r, :n] == 1).all() and (am[r, n:] == 0).all() and (ids[r, n:] == PAD).all()
            assert ids[r, 0] == CLS and ids[r, n - 1] == SEP
            first_sep = int(np.flatnonzero(ids[r] == SEP)[0])
            assert (tt[r, :first_sep + 1] == 0).all() and (tt[r, first_sep + 1:n] == 1).all()
            assert (tt[r, n:] == 0).all()
            k = batch["masked_weights"][r] > 0
            assert (batch["masked_positions"][r][k] < n).all()
            assert (batch["input_ids"][r][batch["masked_positions"][r][k]] == MASK).mean() > 0.3 or k.sum() < 4


def test_loader_process_shards_disjoint_and_cover(prepared_docs):
    n = records.load_manifest(prepared_docs)["num_examples"]
    per_process = n // 2
    steps = per_process // 4  # one epoch of each process' shard
    rows = []
    for p in range(2):
        it = make_loader(prepared_docs, 8, seed=5, process_index=p, process_count=2)
        batches = take(it, steps)
        assert all(b["input_ids"].shape == (4, 32) for b in batches)
        rows.append({tuple(r) for b in batches for r in unmasked(b)})
        assert len(rows[p]) == steps * 4  # no record twice within an epoch
    assert not rows[0] & rows[1]
    all_rows = {tuple(np.pad(ids, (0, 32 - len(ids)))) for ids, _, _ in read_records(prepared_docs)}
    assert rows[0] | rows[1] <= all_rows
    assert len(rows[0] | rows[1]) >= n - 2 - 8  # the global batches cover the data (remainders aside)


def test_loader_checkpoint_resume_exact(prepared_docs):
    n = records.load_manifest(prepared_docs)["num_examples"]
    steps_per_epoch = n // 4
    k, m = steps_per_epoch - 2, 5  # resume just before an epoch boundary and run across it
    it = make_loader(prepared_docs, 4, seed=1, process_index=0, process_count=1, mlm_smoothing=0.7)
    take(it, k)
    state = json.loads(json.dumps(it.get_state()))  # as stored with a checkpoint
    expected = take(it, m)
    fresh = make_loader(prepared_docs, 4, seed=1, process_index=0, process_count=1, mlm_smoothing=0.7)
    fresh.set_state(state)
    assert_same(take(fresh, m), expected)
    with pytest.raises(UserError, match="does not fit"):
        make_loader(prepared_docs, 4, seed=2, process_index=0, process_count=1).set_state(state)


def test_loader_deterministic_and_endless(prepared_docs):
    a = take(make_loader(prepared_docs, 6, seed=3, process_index=1, process_count=2), 4)
    b = take(make_loader(prepared_docs, 6, seed=3, process_index=1, process_count=2), 4)
    assert_same(a, b)
    c = take(make_loader(prepared_docs, 6, seed=4, process_index=1, process_count=2), 1)
    assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])
    n = records.load_manifest(prepared_docs)["num_examples"]
    it = make_loader(prepared_docs, 16, seed=3, process_index=0, process_count=1)
    epochs = take(it, 3 * (n // 16) + 1)  # more than three epochs
    assert len(epochs) == 3 * (n // 16) + 1


def test_loader_bad_input(prepared_docs, tmp_path):
    with pytest.raises(UserError, match="multiple of the number of JAX processes"):
        make_loader(prepared_docs, 9, seed=0, process_index=0, process_count=2)
    with pytest.raises(UserError, match="manifest.json is missing"):
        make_loader(tmp_path, 8, seed=0, process_index=0, process_count=1)
    with pytest.raises(UserError, match="fewer than one batch"):
        make_loader(prepared_docs, 4096, seed=0, process_index=0, process_count=1)
    with pytest.raises(UserError, match="mlm_probability"):
        make_loader(prepared_docs, 8, seed=0, mlm_probability=1.5, process_index=0, process_count=1)


def test_vocab_txt_tokenizer_reads_special_tokens_whole():
    from jaxdistill.data.tokenizer import load_tokenizer

    vocab = assets.teacher_dir() / "vocab.txt"
    text = "a [MASK] film [SEP] [CLS] ok"
    for ref in (vocab, assets.teacher_dir() / "tokenizer.json"):
        tok, info = load_tokenizer(ref)
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids.count(info.special_ids["mask"]) == 1, ref
        assert len(ids) == 6, (ref, tok.encode(text, add_special_tokens=False).tokens)
    # The same ids from vocab.txt alone as from tokenizer.json, specials included.
    assert (load_tokenizer(vocab)[0].encode(text, add_special_tokens=False).ids ==
            load_tokenizer(assets.teacher_dir() / "tokenizer.json")[0].encode(
                text, add_special_tokens=False).ids)
