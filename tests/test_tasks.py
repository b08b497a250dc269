"""Labeled tasks (data/tasks/) and their metrics (data/tasks/metrics.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxdistill import assets
from jaxdistill.config import TaskConfig
from jaxdistill.data import tasks
from jaxdistill.data.tasks import Example, TaskBatches, cut_to_longest, eval_batches, load_task
from jaxdistill.data.tasks.encoding import _pair_lengths
from jaxdistill.errors import UserError
from jaxdistill.data.tasks import metrics as task_metrics

# ------------------------------------------------------------------------------------------
# Metrics


def _reference(name, pred, true):
    from scipy import stats
    from sklearn import metrics

    if name == "accuracy":
        return metrics.accuracy_score(true, pred)
    if name == "f1":
        return metrics.f1_score(true, pred, pos_label=1, average="binary")
    if name == "mcc":
        return metrics.matthews_corrcoef(true, pred)
    if name == "pearson":
        return stats.pearsonr(pred, true)[0]
    return stats.spearmanr(pred, true)[0]


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    true = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.7, true, rng.integers(0, 2, n))
    got = task_metrics.compute(["accuracy", "f1", "mcc"], pred, true)
    for name, value in got.items():
        assert value == pytest.approx(_reference(name, pred, true), abs=1e-12), name
    multi_true, multi_pred = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert task_metrics.compute(["mcc"], multi_pred, multi_true)["mcc"] == pytest.approx(
        _reference("mcc", multi_pred, multi_true), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 200))
    true = rng.integers(0, 6, n).astype(np.float64) / 5  # STS-B-like scores: many ties
    pred = np.round(true + rng.normal(0, 0.4, n), 1)  # rounded: ties in predictions too
    got = task_metrics.compute(["pearson", "spearman"], pred, true)
    for name, value in got.items():
        assert value == pytest.approx(_reference(name, pred, true), abs=1e-10), name


def test_metrics_degenerate_and_errors():
    const, x = np.zeros(6), np.arange(6.0)
    got = task_metrics.compute(["pearson", "spearman", "mcc", "f1", "accuracy"], const, x)
    assert got == {"pearson": 0.0, "spearman": 0.0, "mcc": 0.0, "f1": 0.0,
                   "accuracy": pytest.approx(1 / 6)}
    zeros = np.zeros(4, int)
    assert task_metrics.compute(["f1", "mcc"], zeros, zeros) == {"f1": 0.0, "mcc": 0.0}
    assert task_metrics.compute(["accuracy"], np.array([]), np.array([])) == {"accuracy": 0.0}
    with pytest.raises(ValueError, match="valid: accuracy, f1, mcc, pearson, spearman"):
        task_metrics.compute(["acc"], zeros, zeros)
    logits = np.array([[0.1, 2.0], [3.0, -1.0]])
    assert task_metrics.predictions_from_logits(logits, 2).tolist() == [1, 0]
    assert task_metrics.predictions_from_logits(logits[:, :1], 1).tolist() == [0.1, 3.0]
    np.testing.assert_array_equal(task_metrics.rank_average(np.array([3, 1, 3, 2])),
                                  [3.5, 1, 3.5, 2])


# ------------------------------------------------------------------------------------------
# GLUE layouts


def write_tsv(path, rows, header=None, bom=False):
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n")
    return path


def glue_dir(tmp_path, name, header, rows_train, rows_dev, dev_file="dev.tsv", bom=False):
    d = tmp_path / name
    d.mkdir()
    write_tsv(d / "train.tsv", rows_train, header, bom)
    write_tsv(d / dev_file, rows_dev, header)
    return d


def test_glue_cola_without_header(tmp_path):
    rows = [("gj04", 1, "", 'Our friends won\'t buy this "analysis.'), ("gj04", 0, "*", "bad it.")]
    d = glue_dir(tmp_path, "CoLA", None, rows * 2, rows)
    data = load_task(TaskConfig(name="cola", source=str(d)))
    assert data.train[0] == Example('Our friends won\'t buy this "analysis.', None, 1)
    assert [e.label for e in data.dev] == [1, 0] and len(data.train) == 4
    assert (data.metrics, data.select_metric, data.num_labels) == (("mcc",), "mcc", 2)


def test_glue_sst2_mrpc_mnli_stsb(tmp_path):
    sst = glue_dir(tmp_path, "SST-2", ["sentence", "label"],
                   [("a \"quoted film ", 1), ("dull", 0)], [("fine", 1)])
    data = load_task(TaskConfig(name="sst2", source=str(sst)))
    assert data.train == [Example('a "quoted film', None, 1), Example("dull", None, 0)]
    assert data.metrics == ("accuracy",)

    mrpc = glue_dir(tmp_path, "MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                    [(1, 11, 12, "He said .", "He told .")], [(0, 1, 2, "A b", "C d")], bom=True)
    data = load_task(TaskConfig(name="mrpc", source=str(mrpc)))
    assert data.train == [Example("He said .", "He told .", 1)]
    assert data.dev == [Example("A b", "C d", 0)]
    assert (data.metrics, data.select_metric) == (("accuracy", "f1"), "f1")

    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
              "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
              "sentence2", "label1", "gold_label"]
    row = lambda a, b, y: (0, 1, 2, "fiction", "(", "(", "(", "(", a, b, y, y)
    mnli = glue_dir(tmp_path, "MNLI", header,
                    [row("p1", "h1", "neutral"), row("p2", "h2", "contradiction")],
                    [row("p3", '"h3', "entailment")], dev_file="dev_matched.tsv")
    data = load_task(TaskConfig(name="mnli", source=str(mnli)))
    assert [e.label for e in data.train] == [2, 0]
    assert data.dev == [Example("p3", '"h3', 1)]
    assert data.label_names == ("contradiction", "entailment", "neutral")

    stsb = glue_dir(tmp_path, "STS-B", ["index", "genre", "filename", "year", "old_index",
                                        "source1", "source2", "sentence1", "sentence2", "score"],
                    [(0, "g", "f", "y", 0, "s", "s", "A man", "A guy", "4.250")],
                    [(0, "g", "f", "y", 0, "s", "s", "x", "y", "0.000")])
    data = load_task(TaskConfig(name="stsb", source=str(stsb)))
    assert data.train == [Example("A man", "A guy", 4.25)] and data.num_labels == 1
    assert (data.metrics, data.select_metric) == (("pearson", "spearman"), "pearson")
    assert isinstance(data.dev[0].label, float)

    qnli = glue_dir(tmp_path, "QNLI", ["index", "question", "sentence", "label"],
                    [(0, "q?", "s.", "not_entailment")], [(0, "q2?", "s2.", "entailment")])
    data = load_task(TaskConfig(name="qnli", train_file=str(qnli / "train.tsv"),
                                dev_file=str(qnli / "dev.tsv")))
    assert data.train == [Example("q?", "s.", 1)] and data.dev == [Example("q2?", "s2.", 0)]


# ------------------------------------------------------------------------------------------
# Package, single files, augmented data


def test_package_rotten_tomatoes_split():
    data = load_task(TaskConfig(name="rotten_tomatoes"))
    again = load_task(TaskConfig(name="rotten_tomatoes"))
    assert data.train == again.train and data.dev == again.dev  # deterministic
    assert len(data.train) + len(data.dev) == 8530
    assert abs(len(data.dev) - 853) <= 2
    dev_texts = {e.text_a for e in data.dev}
    assert not dev_texts & {e.text_a for e in data.train}  # disjoint (the texts are unique)
    assert {e.label for e in data.dev} == {0, 1}
    assert sum(e.label for e in data.dev) == len(data.dev) // 2  # stratified: 4265 each
    other = load_task(TaskConfig(name="rotten_tomatoes", split_seed=1))
    assert {e.text_a for e in other.dev} != dev_texts
    assert (data.metrics, data.select_metric) == (("accuracy", "f1"), "accuracy")
    small = load_task(TaskConfig(name="rotten_tomatoes", max_train_examples=100,
                                 max_dev_examples=30))
    assert len(small.train) == 100 and len(small.dev) == 30
    assert {e.label for e in small.train} == {0, 1}  # a random subset, not the first rows


def test_package_imdb_cleans_html():
    data = load_task(TaskConfig(name="imdb", max_train_examples=300, max_dev_examples=10))
    assert len(data.train) == 300 and not any("<br" in e.text_a for e in data.train)


def test_single_csv_and_jsonl_split(tmp_path):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("text,label\n" + "".join(f'"good, film {i}",{i % 2}\n' for i in range(40)))
    data = load_task(TaskConfig(name="rotten_tomatoes", source=str(csv_path), dev_split=0.25))
    assert (len(data.train), len(data.dev)) == (30, 10)
    assert data.train[0].text_a.startswith("good, film")
    assert sorted(e.text_a for e in data.train + data.dev) == sorted(
        f"good, film {i}" for i in range(40))

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"q": f"a{i}", "r": f"b{i}", "y": ["no", "yes"][i % 2]})
                             + "\n" for i in range(20)))
    cfg = TaskConfig(name="rte", source=str(jsonl), text_a_column="q", text_b_column="r",
                     label_column="y", num_labels=2)
    with pytest.raises(UserError, match="unknown label 'no'.*entailment, not_entailment"):
        load_task(cfg)
    jsonl.write_text("".join(json.dumps({"q": f"a{i}", "r": f"b{i}", "y": i % 2}) + "\n"
                             for i in range(20)))
    data = load_task(cfg)
    assert (len(data.train), len(data.dev)) == (18, 2)
    assert data.dev[0].text_b == "b" + data.dev[0].text_a[1:]


def test_augmented_replaces_train(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    aug = tmp_path / "aug.jsonl"
    tasks.write_examples_jsonl(aug, [Example(f"aug {i}", None, i % 2) for i in range(50)])
    base = load_task(TaskConfig(name="rotten_tomatoes", source=str(csv_path)))
    data = load_task(TaskConfig(name="rotten_tomatoes", source=str(csv_path), augmented=str(aug)))
    assert data.dev == base.dev and len(data.train) == 50
    assert all(e.text_a.startswith("aug") for e in data.train)


# ------------------------------------------------------------------------------------------
# TFDS


def test_tfds_local_glue_like_builder(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class JaxdistillTinyNli(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "premise": tfds.features.Text(), "hypothesis": tfds.features.Text(),
                # TFDS glue/mnli's class order, which differs from GLUE's TSVs
                "label": tfds.features.ClassLabel(names=["entailment", "neutral",
                                                         "contradiction"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6),
                    "validation_matched": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3}

    data_dir = tmp_path / "tfds"
    JaxdistillTinyNli(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    data = load_task(TaskConfig(name="mnli", source="tfds:jaxdistill_tiny_nli",
                                tfds_data_dir=str(data_dir)))
    assert len(data.train) == 6 and len(data.dev) == 3
    by_text = {e.text_a: e for e in data.train}
    # TFDS 0 = entailment -> GLUE 1; 1 = neutral -> 2; 2 = contradiction -> 0
    assert [by_text[f"p{i}"].label for i in range(3)] == [1, 2, 0]
    assert by_text["p4"].text_b == "h4"
    # No dev split of the preset's name (SST-2 wants 'validation'): held out from train.
    with pytest.raises(UserError, match="no feature 'sentence'"):
        load_task(TaskConfig(name="sst2", source=f"tfds:jaxdistill_tiny_nli@{data_dir}"))
    data = load_task(TaskConfig(name="sst2", source=f"tfds:jaxdistill_tiny_nli@{data_dir}",
                                text_a_column="premise", num_labels=3, dev_split=0.5))
    assert len(data.train) + len(data.dev) == 6 and data.dev
    with pytest.raises(UserError, match="could not open"):
        load_task(TaskConfig(name="mnli", source=f"tfds:no_such_set@{data_dir}"))
    with pytest.raises(UserError, match="names a split"):
        load_task(TaskConfig(name="mnli", source="tfds:glue/mnli:train"))


# ------------------------------------------------------------------------------------------
# Errors


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="Did you mean 'mrpc'.*Known tasks: rotten_tomatoes"):
        load_task(TaskConfig(name="mprc"))
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("review,label\nok,1\nbad,0\n")
    with pytest.raises(UserError, match="no column 'text'; its columns are review, label.*"
                                        "text_a_column"):
        load_task(TaskConfig(name="rotten_tomatoes", source=str(csv_path)))
    csv_path.write_text("text,label\nok,positive\nbad,meh\n")
    with pytest.raises(UserError, match=r"line 3: unknown label 'meh'.*negative, positive"):
        load_task(TaskConfig(name="rotten_tomatoes", source=str(csv_path)))
    with pytest.raises(UserError, match="does not exist"):
        load_task(TaskConfig(name="sst2", source=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="has no dev_matched.tsv"):
        load_task(TaskConfig(name="mnli", source=str(glue_dir(
            tmp_path, "M", ["sentence1", "sentence2", "gold_label"], [("a", "b", "neutral")],
            [("a", "b", "neutral")]))))
    with pytest.raises(UserError, match="task.metric='mcc'.*accuracy, f1"):
        load_task(TaskConfig(name="mrpc", metric="mcc"))
    with pytest.raises(UserError, match="not a number"):
        stsb = write_tsv(tmp_path / "s.tsv", [("a", "b", "high")], ["sentence1", "sentence2",
                                                                     "score"])
        load_task(TaskConfig(name="stsb", train_file=str(stsb), dev_file=str(stsb)))
    csv_path.write_text("text,label\n" + "ok,1\nbad,0\n" * 5)
    with pytest.raises(UserError, match="task.augmented=.*/x does not exist"):
        load_task(TaskConfig(name="rotten_tomatoes", source=str(csv_path),
                             augmented=str(tmp_path / "x")))


# ------------------------------------------------------------------------------------------
# Encoding and batches


PAIRS = [
    ("The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
     "A fox, quick and brown, leapt over a sleeping dog."),
    ("Short one.", "This second sentence is considerably longer than the first one is, really."),
    ("Tokenization of unaffordable hyperparameters isn't trivial!", "Nope."),
    ("Équipe naïve café — résumé", "same length here ok"),
    ("one two three four five six", "seven eight nine ten eleven twelve"),
]
SINGLES = [  # long texts are cut to words before tokenizing: check the cut is exact
    "It's a long, long review!  Of a film\tthat runs on and on " * 20,
    "\u200b " * 70 + "words after seventy zero-token ones tokenize fine",
    "don't-stop-me-now " * 40,
]


@pytest.mark.parametrize("seq_len", [8, 11, 16, 64])
def test_encode_matches_bert_tokenizer_fast(seq_len):
    transformers = pytest.importorskip("transformers")
    ref_tok = transformers.BertTokenizerFast.from_pretrained(str(assets.teacher_dir()))
    examples = [Example(a, b, i % 2) for i, (a, b) in enumerate(PAIRS)]
    examples += [Example(a, None, 1) for a, _ in PAIRS] + [Example(a, None, 0) for a in SINGLES]
    got = tasks.encode(examples, assets.teacher_dir(), seq_len, regression=False)
    for i, ex in enumerate(examples):
        ref = ref_tok(ex.text_a, ex.text_b, truncation="longest_first", max_length=seq_len,
                      padding="max_length")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert got[key][i].tolist() == ref[key], (key, i, seq_len)
    assert got["input_ids"].dtype == np.int32 and got["input_ids"].shape == (13, seq_len)
    assert got["labels"].dtype == np.int32
    assert got["labels"].tolist() == [0, 1, 0, 1, 0] + [1] * 5 + [0] * 3
    reg = tasks.encode([Example("a", "b", 0.5)], "package:minilm", 8, regression=True)
    assert reg["labels"].dtype == np.float32 and reg["labels"].tolist() == [0.5]


def test_pair_lengths_grid_matches_tokenizers():
    transformers = pytest.importorskip("transformers")
    ref_tok = transformers.BertTokenizerFast.from_pretrained(str(assets.teacher_dir()))
    cat, dog = ref_tok.convert_tokens_to_ids(["cat", "dog"])
    for la in range(1, 8):
        for lb in range(1, 8):
            for seq_len in range(4, 12):
                ids = ref_tok(" ".join(["cat"] * la), " ".join(["dog"] * lb),
                              truncation="longest_first", max_length=seq_len)["input_ids"]
                assert _pair_lengths(la, lb, seq_len - 3) == (ids.count(cat),
                                                              ids.count(dog))


def _arrays(n):
    return {"input_ids": np.arange(n * 3, dtype=np.int32).reshape(n, 3),
            "labels": np.arange(n, dtype=np.int32)}


def test_task_batches_deterministic_and_epochs():
    arrays = _arrays(23)
    batches = TaskBatches(arrays, global_batch_size=5, seed=7)
    assert batches.steps_per_epoch == 4
    epoch0 = np.concatenate([batches.batch(s)["labels"] for s in range(4)])
    assert len(set(epoch0.tolist())) == 20  # each row at most once, 3 dropped
    fresh = TaskBatches(arrays, global_batch_size=5, seed=7)
    for step in (6, 0, 3, 9):  # any order: a pure function of the step (exact resume)
        np.testing.assert_array_equal(fresh.batch(step)["input_ids"],
                                      batches.batch(step)["input_ids"])
    b = batches.batch(2)
    np.testing.assert_array_equal(b["input_ids"][:, 0], b["labels"] * 3)  # rows stay aligned
    epoch1 = np.concatenate([batches.batch(s)["labels"] for s in range(4, 8)])
    assert not np.array_equal(epoch0, epoch1)
    other_seed = np.concatenate([TaskBatches(arrays, 5, 8).batch(s)["labels"] for s in range(4)])
    assert not np.array_equal(epoch0, other_seed)
    full = TaskBatches(_arrays(20), 5, 0)
    for epoch in range(3):  # every row exactly once per epoch when nothing is dropped
        rows = np.concatenate([full.batch(epoch * 4 + s)["labels"] for s in range(4)])
        assert sorted(rows.tolist()) == list(range(20))
    with pytest.raises(UserError, match="fewer than one global batch"):
        TaskBatches(_arrays(3), 4, 0)


def test_length_grouped_batches_keep_every_row_once_and_similar_lengths_together():
    n, b = 240, 8
    lengths = np.random.default_rng(0).integers(1, 41, n)
    arrays = {**_arrays(n), "length": lengths}
    grouped = TaskBatches(arrays, b, seed=5, lengths=lengths, pool=6)
    plain = TaskBatches(arrays, b, seed=5)
    steps = grouped.steps_per_epoch
    for epoch in range(2):  # every row once per epoch
        rows = np.concatenate([grouped.batch(epoch * steps + s)["labels"] for s in range(steps)])
        assert sorted(rows.tolist()) == list(range(n))
    spread = lambda tb: np.mean([np.ptp(tb.batch(s)["length"]) for s in range(steps)])  # noqa
    assert spread(grouped) < 0.3 * spread(plain)
    # Each pool of 6 batches holds the rows of 6 consecutive plain batches, sorted by length.
    pool0 = np.sort(np.concatenate([plain.indices(s) for s in range(6)]))
    in_pool0 = [s for s in range(steps) if np.isin(grouped.indices(s), pool0).all()]
    assert len(in_pool0) == 6
    assert in_pool0 != list(range(6))  # the batches' order is shuffled
    fresh = TaskBatches(arrays, b, seed=5, lengths=lengths, pool=6)
    for step in (37, 0, 61):  # a pure function of the step (exact resume)
        np.testing.assert_array_equal(fresh.indices(step), grouped.indices(step))
    # pool 0 ignores lengths: the plain batches
    np.testing.assert_array_equal(TaskBatches(arrays, b, 5, lengths=lengths).indices(3),
                                  plain.indices(3))
    with pytest.raises(ValueError, match="one length per row"):
        TaskBatches(arrays, b, 5, lengths=lengths[:-1], pool=2)


def test_cut_to_longest_drops_trailing_padding_in_multiples():
    mask = np.zeros((3, 24), np.int32)
    mask[0, :5], mask[1, :9], mask[2, :2] = 1, 1, 1
    weights = np.zeros((3, 16), np.float32)
    weights[:, :3] = 1.0
    batch = {"ids": np.arange(72).reshape(3, 24), "mask": mask, "weights": weights,
             "targets": np.ones((3, 16, 4)), "other": np.ones((3, 7))}
    cut = cut_to_longest(batch, {"mask": ("ids", "mask"), "weights": ("weights", "targets")}, 8)
    assert cut["ids"].shape == (3, 16) and cut["mask"].shape == (3, 16)  # 9 -> 16
    np.testing.assert_array_equal(cut["ids"], batch["ids"][:, :16])
    assert cut["weights"].shape == (3, 8) and cut["targets"].shape == (3, 8, 4)  # 3 -> 8
    assert cut["other"].shape == (3, 7)  # in no group: as it was
    mask[1, :] = 1  # the longest row fills every slot: never wider than the arrays
    assert cut_to_longest(batch, {"mask": ("ids", "mask")}, 16)["ids"].shape == (3, 24)


def test_eval_batches_padding():
    arrays = _arrays(7)
    out = list(eval_batches(arrays, 3))
    assert len(out) == 3 and all(b["input_ids"].shape == (3, 3) for b in out)
    assert out[-1]["weights"].tolist() == [1.0, 0.0, 0.0]
    assert out[-1]["weights"].dtype == np.float32
    assert out[-1]["labels"].tolist() == [6, 0, 0] and out[-1]["input_ids"][1:].sum() == 0
    real = np.concatenate([b["labels"][b["weights"] > 0] for b in out])
    assert real.tolist() == list(range(7))
    assert [b["weights"].sum() for b in eval_batches(_arrays(6), 3)] == [3.0, 3.0]
