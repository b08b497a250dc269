"""BERT -> BiLSTM (Tang et al. 2019): the student against a torch.nn.LSTM oracle, the logit-MSE
loss, the augmentation's operations, and `augment` (method tang) + `finetune` end to end."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import REPO, TINY_TASK, interrupt_at_first_checkpoint, read_metrics, run_cli
from jaxdistill.data import tasks
from jaxdistill.data.tasks import Example
from jaxdistill.data.tasks.encoding import label_arrays
from jaxdistill.errors import UserError
from jaxdistill.models.bilstm import Bilstm, BilstmConfig
from jaxdistill.teacher_data import tang_augment as tang

# --- the student against PyTorch ---------------------------------------------------------------


def _torch_student(params: dict, cfg: BilstmConfig):
    """A torch.nn.LSTM module holding the exported weights (Flax kernels are [in, out])."""
    import torch

    class TorchBilstm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            h = cfg.hidden_size
            self.embed = torch.nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
            self.lstm = torch.nn.LSTM(cfg.embedding_dim, h, batch_first=True,
                                      bidirectional=True)
            width = 2 * h * (4 if cfg.siamese else 1)
            self.hidden = torch.nn.Linear(width, cfg.classifier_size)
            self.out = torch.nn.Linear(cfg.classifier_size, cfg.num_labels)

        def encode(self, ids, lengths):
            x = self.embed(ids)
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                             enforce_sorted=False)
            out, (h_n, _) = self.lstm(packed)
            if cfg.pooling == "final":
                return torch.cat([h_n[0], h_n[1]], dim=-1)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                            padding_value=-float("inf"))
            return out.max(dim=1).values

        def forward(self, ids, lengths, ids_b=None, lengths_b=None):
            h = self.encode(ids, lengths)
            if cfg.siamese:
                h2 = self.encode(ids_b, lengths_b)
                h = torch.cat([h, h2, (h - h2).abs(), h * h2], dim=-1)
            return self.out(torch.relu(self.hidden(h)))

    def t(x):
        return torch.tensor(np.asarray(x, np.float32))

    m = TorchBilstm()
    with torch.no_grad():
        m.embed.weight.copy_(t(params["embed"]["table"]))
        for direction, suffix in (("forward", ""), ("backward", "_reverse")):
            cell = params["lstm"][direction]
            gates = "ifgo"  # torch.nn.LSTM's order
            getattr(m.lstm, f"weight_ih_l0{suffix}").copy_(
                t(np.concatenate([cell[f"i{g}"]["kernel"] for g in gates], 1).T))
            getattr(m.lstm, f"weight_hh_l0{suffix}").copy_(
                t(np.concatenate([cell[f"h{g}"]["kernel"] for g in gates], 1).T))
            getattr(m.lstm, f"bias_hh_l0{suffix}").copy_(
                t(np.concatenate([cell[f"h{g}"]["bias"] for g in gates])))
            getattr(m.lstm, f"bias_ih_l0{suffix}").zero_()
        for name in ("hidden", "out"):
            layer = getattr(m, name)
            layer.weight.copy_(t(params["classifier"][name]["kernel"]).T)
            layer.bias.copy_(t(params["classifier"][name]["bias"]))
    return m.eval()


def _word_batch(rng: np.random.Generator, vocab: int, rows: int, length: int, suffix: str = ""):
    lengths = rng.integers(1, length + 1, rows)
    lengths[0] = length  # one full row, one of length 1
    lengths[1] = 1
    ids = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, vocab, n)
        mask[i, :n] = 1
    return {f"input_ids{suffix}": ids, f"attention_mask{suffix}": mask}, lengths


@pytest.mark.parametrize("siamese,pooling", [(False, "final"), (True, "final"), (False, "max")])
def test_exported_student_matches_torch_lstm(tmp_path, siamese, pooling):
    import torch

    from jaxdistill.convert import read_params_file, write_model_dir

    cfg = BilstmConfig(vocab_size=40, embedding_dim=12, hidden_size=10, classifier_size=14,
                       num_labels=3, siamese=siamese, pooling=pooling, embeddings="random")
    model = Bilstm(cfg)
    params = jax.tree.map(np.asarray, model.init(jax.random.key(3)))
    out_dir = write_model_dir(model, params, tmp_path / "export", tokenizer_dir=None)
    exported = read_params_file(out_dir / "model.safetensors")
    assert json.loads((out_dir / "config.json").read_text())["kind"] == "bilstm"

    rng = np.random.default_rng(0)
    batch, lengths = _word_batch(rng, cfg.vocab_size, 6, 9)
    args = [torch.tensor(batch["input_ids"]).long(), torch.tensor(lengths)]
    if siamese:
        pair, lengths_b = _word_batch(rng, cfg.vocab_size, 6, 9, "_b")
        batch.update(pair)
        args += [torch.tensor(pair["input_ids_b"]).long(), torch.tensor(lengths_b)]
    ours = np.asarray(model.apply(params, batch).logits)
    with torch.no_grad():
        theirs = _torch_student(exported, cfg)(*args).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # Padding past a row's length changes nothing (the scan stops at each row's last word).
    noisy = dict(batch, input_ids=np.where(batch["attention_mask"] == 1, batch["input_ids"], 7))
    np.testing.assert_allclose(np.asarray(model.apply(params, noisy).logits), ours, atol=1e-6)


def test_vocabulary_glove_init_and_word_encoding(tmp_path):
    fields = Bilstm.vocabulary_from({}, [("The film, the FILM!", None), ("a zqxv film", None)],
                                    tmp_path)
    assert fields["vocab_size"] == 3 + 6 and fields["siamese"] is False  # the film , ! a zqxv
    model = Bilstm(BilstmConfig(**fields))
    params = model.initial_params(jax.random.key(0), tmp_path)
    from jaxdistill.data import words
    from jaxdistill.data.tokenizer import load_tokenizer

    tok, info = load_tokenizer(tmp_path)
    assert info.word_level and info.special_ids == {"pad": 0, "mask": 2, "unk": 1}
    vocab = words.vocabulary_words(tok)
    vectors, found = words.glove_vectors(vocab)
    assert vocab[3:5] == ["film", "the"] and not found[vocab.index("zqxv")]
    np.testing.assert_array_equal(params["embed"]["table"][found], vectors[found])
    assert np.abs(params["embed"]["table"][vocab.index("zqxv")]).max() <= 0.25

    arrays = tasks.encode([Example("the [MASK] film zzz", None, 1)], tmp_path, 6, False)
    assert arrays["input_ids"].tolist() == [[vocab.index("the"), 2, 3, 1, 0, 0]]
    assert arrays["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0]]
    with pytest.raises(UserError, match="siamese"):
        Bilstm.vocabulary_from({"siamese": False}, [("a", "b")], tmp_path)


# --- the loss ------------------------------------------------------------------------------------


def test_logit_mse_loss_against_torch_and_ignores_unlabelled_rows():
    import torch

    from jaxdistill.methods.bilstm import logit_mse_loss

    s = np.array([[1.0, -2.0], [0.5, 0.3], [2.0, 1.0]], np.float32)
    t = np.array([[0.0, 1.0], [1.5, -0.7], [3.0, 3.0]], np.float32)
    labels = np.array([1, 0, 0], np.int32)
    labeled = np.array([1.0, 0.0, 1.0], np.float32)
    total, terms = logit_mse_loss(s, t, labels, labeled, 0.7, 2.0, regression=False)
    mse = torch.nn.MSELoss()(torch.tensor(s), torch.tensor(t)).item()
    ce = torch.nn.CrossEntropyLoss()(torch.tensor(s[[0, 2]]), torch.tensor([1, 0])).item()
    np.testing.assert_allclose(float(terms["loss/logit_mse"]), mse, rtol=1e-6)
    np.testing.assert_allclose(float(terms["loss/ce"]), ce, rtol=1e-6)
    np.testing.assert_allclose(float(total), 0.7 * mse + 2.0 * ce, rtol=1e-6)
    # Whatever placeholder an unlabelled row holds, it never reaches the loss.
    other, _ = logit_mse_loss(s, t, np.array([1, 1, 0]), labeled, 0.7, 2.0, regression=False)
    assert float(other) == float(total)
    _, only_mse = logit_mse_loss(s, t, labels, labeled, 1.0, 0.0, regression=False)
    assert set(only_mse) == {"loss/logit_mse"}


# --- augmentation ------------------------------------------------------------------------------

WORDS = ("the", "dark", "film", "moves", "slowly", "and", "the", "bright", "film", "wins")
TAGS = ("DT", "JJ", "NN", "VBZ", "RB", "CC", "DT", "JJ", "NN", "VBZ")


def _pool():
    return tang.PosPool([(WORDS, TAGS), (("a", "quiet", "story", "ends"), ("DT", "JJ", "NN",
                                                                         "VBZ"))])


def test_masking_and_pos_replacement_rates():
    pool, rng = _pool(), np.random.default_rng(0)
    masked = replaced = total = 0
    for _ in range(3000):
        out = tang.mutate(WORDS, TAGS, pool, rng, 0.2, 0.3, 0.0, 5)
        assert len(out) == len(WORDS)
        for w, g, o in zip(WORDS, TAGS, out):
            total += 1
            if o == "[MASK]":
                masked += 1
            else:
                assert o in pool.by_tag[g], (w, g, o)  # a word of the same tag
                replaced += o != w
    assert abs(masked / total - 0.2) < 0.01
    # A same-tag draw can return the word itself: P(changed | drawn) = 1 - P(draw == word).
    same = np.mean([np.mean(pool.by_tag[g] == w) for w, g in zip(WORDS, TAGS)])
    assert abs(replaced / total - 0.3 * (1 - same)) < 0.015
    # Within a tag, draws follow the words' frequency: 'film' is 2 of the 3 NN occurrences.
    draws = [pool.draw("NN", rng) for _ in range(6000)]
    assert abs(draws.count("film") / 6000 - 2 / 3) < 0.02
    assert tang.mutate(WORDS, TAGS, pool, rng, 1.0, 0.0, 0.0, 5) == ["[MASK]"] * len(WORDS)
    assert tang.mutate(WORDS, TAGS, pool, rng, 0.0, 0.0, 0.0, 5) == list(WORDS)


def test_ngram_sampling_bounds():
    pool, rng = _pool(), np.random.default_rng(1)
    lengths = []
    for _ in range(2000):
        out = tang.mutate(WORDS, TAGS, pool, rng, 0.0, 0.0, 1.0, 3)
        lengths.append(len(out))
        starts = [i for i in range(len(WORDS)) if list(WORDS[i:i + len(out)]) == out]
        assert starts, out  # a contiguous window of the sentence
    assert set(lengths) == {1, 2, 3}
    short = tang.mutate(WORDS[:2], TAGS[:2], pool, rng, 0.0, 0.0, 1.0, 5)
    assert len(short) in (1, 2)  # n >= the length keeps the whole sentence
    cut = [len(tang.mutate(WORDS, TAGS, pool, rng, 0.0, 0.0, 0.25, 5)) < len(WORDS)
           for _ in range(4000)]
    assert abs(np.mean(cut) - 0.25) < 0.02  # every n in 1..5 shortens 10 words
    cut = [len(tang.mutate(WORDS[:4], TAGS[:4], pool, rng, 0.0, 0.0, 0.25, 5)) < 4
           for _ in range(4000)]
    assert abs(np.mean(cut) - 0.25 * 3 / 5) < 0.02  # of 4 words only n in 1..3 do


def test_variants_are_distinct_deterministic_and_pairs_mutate_one_or_both():
    from jaxdistill.teacher_data.tang_augment import TangAugmentConfig

    cfg = TangAugmentConfig(n_iter=30, n_iter_pairs=300, p_mask=0.3, p_pos=0.3, p_ng=0.2)
    ex = Example(" ".join(WORDS), None, 1)
    run = lambda seed: tang.variants(ex, (WORDS, TAGS), None, _pool(),  # noqa: E731
                                     np.random.default_rng([seed, 4]), cfg)
    first = run(0)
    assert first == run(0) and first != run(1)
    assert len(set(first)) == len(first) <= 30 and (ex.text_a, None) not in first
    pair = Example("a quiet story ends", " ".join(WORDS), 0)
    rows = tang.variants(pair, (("a", "quiet", "story", "ends"), ("DT", "JJ", "NN", "VBZ")),
                         (WORDS, TAGS), _pool(), np.random.default_rng(2), cfg)
    a_only = sum(a != pair.text_a and b == pair.text_b for a, b in rows)
    b_only = sum(a == pair.text_a and b != pair.text_b for a, b in rows)
    both = sum(a != pair.text_a and b != pair.text_b for a, b in rows)
    assert a_only and b_only and both and a_only + b_only + both == len(rows)


# --- end to end ----------------------------------------------------------------------------------


def _summary(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _student_args(run_dir: Path, aug: Path, *extra: str) -> list[str]:
    return ["finetune", "--config", "configs/task/bilstm.yaml", f"run_dir={run_dir}",
            f"task.augmented={aug}", *TINY_TASK, "steps=12", "save_every=4", "eval_every=6",
            "learning_rate=5e-3", "student.hidden_size=16", "student.classifier_size=16",
            *extra]


def test_tang_augment_and_bilstm_distillation_resume_evaluate(tmp_path, tiny_classifier):
    aug = tmp_path / "aug.jsonl"
    args = ["augment", "method=tang", f"out={aug}", f"teacher={tiny_classifier}/best",
            "task.max_train_examples=24", "n_iter=3", "seq_len=32", "batch_size=32",
            "chunk_size=10"]
    out = _summary(run_cli(*args))
    rows = [json.loads(line) for line in aug.read_text().splitlines()]
    assert out["rows"] == len(rows) and out["chunks"] == 3 and 24 < len(rows) <= 24 * 4
    originals = [r for r in rows if r["label"] is not None]
    assert len(originals) == 24 and all(len(r["teacher_logits"]) == 2 for r in rows)
    assert sum(r["label"] is None for r in rows) == out["variants"]
    # The teacher's logits are its own classifier's: one row checked against `evaluate`'s model.
    from jaxdistill.loading import load_pretrained

    model, params, tok = load_pretrained(f"{tiny_classifier}/best")
    enc = tasks.encode([Example(rows[1]["text_a"], None, 0)], tok, 32, False)
    logits = model.apply(params, {k: enc[k] for k in model.input_spec()}).logits
    np.testing.assert_allclose(np.asarray(logits)[0], rows[1]["teacher_logits"], atol=1e-4)
    assert not aug.with_name(aug.name + ".parts").exists()  # the parts are joined and removed

    # Methods that train on labels refuse rows that have none.
    from jaxdistill.methods import build_method, method_class, parse_options
    from jaxdistill.train import kinds
    from jaxdistill.train.kinds.task import check_train_arrays

    _, cfg = kinds.load("finetune", None, [f"task.augmented={aug}"])
    rows_in = tasks.load_task(cfg.task).train
    arrays = label_arrays(rows_in, regression=False)
    student = {"student": Bilstm(BilstmConfig(vocab_size=10, embeddings="random"))}
    plain = build_method(method_class("finetune"), parse_options(method_class("finetune"), {}),
                         student)
    with pytest.raises(UserError, match="without a gold label"):
        check_train_arrays(cfg, plain, arrays, 2)

    straight = tmp_path / "straight"
    proc = run_cli(*_student_args(straight, aug))
    summary = _summary(proc)
    # The terminal's start and end summaries, before the JSON line.
    assert "jaxdistill finetune: method bilstm, fresh start" in proc.stdout
    assert "  student  bilstm, " in proc.stdout and "1 process(es)" in proc.stdout
    assert f"load it     jaxdistill.loading.load_pretrained('{straight / 'hf'}')" in proc.stdout
    assert "done: step 12 after" in proc.stdout and " tokens/s" in proc.stdout
    metrics = read_metrics(straight)
    assert {"loss/logit_mse", "loss/ce"} <= set(metrics[0]) and summary["best_step"] > 0

    run_dir = tmp_path / "run"
    stopped = interrupt_at_first_checkpoint(["-m", "jaxdistill.cli", *_student_args(run_dir, aug)],
                                            run_dir, signal.SIGTERM)
    assert stopped.returncode == 0 and _summary(stopped)["preempted"], stopped.stderr[-3000:]
    resumed = run_cli(*_student_args(run_dir, aug))
    assert re.search(r"method bilstm, resuming from step \d+,", resumed.stdout), resumed.stdout

    def columns(rs):
        return {r["step"]: {k: v for k, v in r.items()
                            if k == "loss" or k.startswith(("loss/", "dev_"))} for r in rs}

    assert columns(read_metrics(run_dir)) == columns(metrics)

    export = straight / "hf"
    config = json.loads((export / "config.json").read_text())
    assert config["kind"] == "bilstm" and (export / "tokenizer.json").is_file()
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    best = json.loads(next((straight / "best" / "checkpoints").glob("*/meta/*")).read_text())
    # A relative path too: Orbax reads no tree metadata through one unless we resolve it.
    for model_ref in (os.path.relpath(straight / "best", REPO), export):
        ev = _summary(run_cli("evaluate", "--model", str(model_ref), *TINY_TASK))
        assert ev["dev_accuracy"] == best["best"]["value"], model_ref
    # The transformers tokenizer reads the exported vocabulary as we do.
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(export))
    ours = tasks.encode([Example("The film [MASK] works .", None, 0)], export, 8, False)
    assert hf_tok("The film [MASK] works .")["input_ids"] == ours["input_ids"][0, :5].tolist()


def test_siamese_student_on_a_pair_task(tmp_path):
    """Pairs (made of real sentences): the vocabulary builder sets siamese, the encoder reads
    both sentences apart, and the student trains and evaluates on them (pair variants are
    `test_variants_are_distinct_deterministic_and_pairs_mutate_one_or_both`)."""
    import csv

    reviews = [ex.text_a for ex in tasks.load_task(
        __import__("jaxdistill.config", fromlist=["TaskConfig"]).TaskConfig(
            max_train_examples=80)).train]
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "label"])
        for i in range(0, 80, 2):
            w.writerow([reviews[i], reviews[i + 1], i // 2 % 2])
    task = [f"task.source={pairs}", "task.text_a_column=sentence1",
            "task.text_b_column=sentence2", "task.label_column=label", "task.dev_split=0.2"]
    run_dir = tmp_path / "siamese"
    run_cli("finetune", "--config", "configs/task/bilstm_student.yaml", f"run_dir={run_dir}",
            *task, "seq_len=16", "batch_size=8", "steps=4", "eval_every=4",
            "tensorboard=false", "student.hidden_size=8", "student.classifier_size=8")
    config = json.loads((run_dir / "hf" / "config.json").read_text())["config"]
    assert config["siamese"] is True
    ev = _summary(run_cli("evaluate", "--model", str(run_dir / "hf"), *task, "seq_len=16"))
    assert ev["examples"] == 8 and 0.0 <= ev["dev_accuracy"] <= 1.0
