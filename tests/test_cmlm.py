"""C-MLM: the WordNet task and its splits, conditional masking (only the target, at least one,
every slot exactly once across the mod-k copies), the top-K KD loss against hand-computed values,
label-smoothed CE against PyTorch, the seq2seq student against transformers' BART (logits and
greedy `generate`), and both stages end to end with resume and `jaxdistill evaluate`."""
from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import FULL_WORDNET, WORDNET, read_metrics, run_cli, write_tiny_teacher
from jaxdistill import losses
from jaxdistill.config import TaskConfig
from jaxdistill.data import seq2seq as s2s

TOKENIZER = "package:minilm"


def _pairs(n=12):
    words = ["bank", "river", "light", "stone", "green", "quick", "table", "music"]
    return [s2s.Pair(f"{words[i % 8]} ; the {words[(i + 3) % 8]} was near the {words[i % 8]}",
                     " ".join(words[(i + j) % 8] for j in range(1 + i % 7)), f"k{i}")
            for i in range(n)]


def test_wordnet_pairs_and_fixed_seed_splits_keep_senses_apart():
    pairs = s2s.read_wordnet(WORDNET)
    full = WORDNET == FULL_WORDNET
    assert len(pairs) > 30000 if full else len(pairs) == 641
    assert all(" ; " in p.source and p.target for p in pairs)
    # Examples go to the source, never into the definition ('def: "example"' glosses too).
    assert not any(re.search(r'[;:]\s*"', p.target) for p in pairs)
    sub = next(p for p in pairs if p.key == "n00196485")  # 'def: "example"'
    assert sub.source == ("substitution ; he sent Smith in for Jones but the substitution came "
                          "too late to help")
    assert sub.target == "the act of putting one thing or person in the place of another"
    task = s2s.load_task(TaskConfig(name="wordnet_definitions", source=str(WORDNET)))
    again = s2s.load_task(TaskConfig(name="wordnet_definitions", source=str(WORDNET)))
    held = 1000 if full else 64  # 10% of the pairs, at most 1,000
    assert (len(task.dev), len(task.test)) == (held, held)
    assert len(task.train) == len(pairs) - 2 * held
    assert task.dev == again.dev and task.train[:50] == again.train[:50]
    keys = [{p.key for p in split} for split in (task.train, task.dev, task.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    other = s2s.load_task(TaskConfig(name="wordnet_definitions", split_seed=1,
                                     source=str(WORDNET)))
    assert other.dev != task.dev


def test_target_masking_touches_only_the_target_and_at_least_one_slot():
    arrays = s2s.encode_conditional(_pairs(), TOKENIZER, 16, 10)
    rng = np.random.default_rng(0)
    for trial in range(20):
        rows = np.arange(len(arrays["input_ids"]))
        batch = s2s.mask_targets(arrays, rows, 0.15, s2s.max_masked(10, 0.15), rng, 103)
        for r in rows:
            start, count = arrays["target_start"][r], arrays["target_count"][r]
            w = batch["masked_weights"][r] > 0
            pos = batch["masked_positions"][r][w]
            assert w.sum() == max(1, round(0.15 * count)) and len(set(pos)) == len(pos)
            assert ((pos >= start) & (pos < start + count)).all()
            changed = np.flatnonzero(batch["input_ids"][r] != arrays["input_ids"][r])
            assert sorted(changed) == sorted(pos)  # nothing else changed, every one is [MASK]
            assert (batch["input_ids"][r][pos] == 103).all()
            assert (batch["masked_ids"][r][w] == arrays["input_ids"][r][pos]).all()
    # Token types: 0 for [CLS] X [SEP], 1 for Y [SEP], 0 on padding.
    r = 3
    start, count = arrays["target_start"][r], arrays["target_count"][r]
    assert (arrays["token_type_ids"][r][:start] == 0).all()
    assert (arrays["token_type_ids"][r][start:start + count] == 1).all()
    assert arrays["input_ids"][r][start + count - 1] == 102  # the final [SEP] is a target slot


def test_modk_copies_mask_every_target_slot_exactly_once():
    arrays = s2s.encode_conditional(_pairs(), TOKENIZER, 16, 10)
    copies = s2s.modk_copies(arrays, 3, 103)
    for i, count in enumerate(arrays["target_count"]):
        mine = copies["row"] == i
        assert mine.sum() == min(3, count)
        slots = copies["target_slot"][mine]
        masked = sorted(slots[slots >= 0].tolist())
        assert masked == list(range(count))  # each slot once, across the copies
        for c, s in enumerate(slots):
            assert all(j % 3 == c for j in s[s >= 0])
            ids = copies["input_ids"][mine][c]
            positions = arrays["target_start"][i] + s[s >= 0]
            assert (ids[positions] == 103).all()
            assert (np.delete(ids, positions) == np.delete(arrays["input_ids"][i], positions)).all()


def test_topk_distillation_matches_hand_computed_values():
    # One token, vocabulary 4, teacher top-2 over ids (2, 0) with logits (3, 1), T = 2.
    student = np.array([[[0.5, -1.0, 2.0, 0.0]]], np.float32)
    log_p = student[0, 0] - np.log(np.exp(student[0, 0]).sum())
    q = np.exp(np.array([3.0, 1.0]) / 2) / np.exp(np.array([3.0, 1.0]) / 2).sum()
    want = -(q[0] * log_p[2] + q[1] * log_p[0])
    got = losses.topk_distillation(jnp.asarray(student), jnp.asarray([[[2, 0]]]),
                                   jnp.asarray([[[3.0, 1.0]]]), 2.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # Padding tokens (weight 0) do not count; the mean is over real tokens.
    two = np.concatenate([student, student[:, :, ::-1]], axis=1)
    w = jnp.asarray([[1.0, 0.0]])
    got = losses.topk_distillation(jnp.asarray(two), jnp.asarray([[[2, 0], [1, 1]]]),
                                   jnp.asarray([[[3.0, 1.0], [0.0, 0.0]]]), 2.0, w)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_label_smoothed_cross_entropy_ignores_padding_as_torch():
    import torch

    r = np.random.default_rng(0)
    logits = r.normal(size=(2, 5, 7)).astype(np.float32)
    labels = r.integers(0, 7, (2, 5))
    weights = np.ones((2, 5), np.float32)
    weights[1, 3:] = 0
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=-100)(
        torch.tensor(logits.reshape(-1, 7)),
        torch.tensor(np.where(weights > 0, labels, -100).reshape(-1)))
    got = losses.smoothed_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1,
                                        jnp.asarray(weights))
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)


def _random_student(vocab=40, seed=0, normalize_before=False):
    from jaxdistill.models.seq2seq import Seq2Seq, Seq2SeqConfig

    cfg = Seq2SeqConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=48, max_position_embeddings=16, dropout=0.0,
                        normalize_before=normalize_before)
    model = Seq2Seq(cfg)
    params = model.init(jax.random.key(seed))
    # Perturb every tensor (biases and LayerNorms included) so that the mapping is exercised.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
    return model, jax.device_get(params)


# Post-LN exports as BART, pre-LN (normalize_before) as mBART.
@pytest.mark.parametrize("pre_ln, hf_class", [(False, "BartForConditionalGeneration"),
                                              (True, "MBartForConditionalGeneration")])
def test_exported_student_matches_transformers_logits_and_greedy_generate(tmp_path, pre_ln,
                                                                          hf_class):
    import torch
    import transformers

    from jaxdistill.convert import read_model_dir, write_model_dir
    from jaxdistill.inference import decode

    model, params = _random_student(normalize_before=pre_ln)
    write_model_dir(model, params, tmp_path)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path)).eval()
    assert type(hf).__name__ == hf_class
    r = np.random.default_rng(0)
    ids = r.integers(5, 40, (3, 9))
    mask = np.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 0, 0
    dec = np.concatenate([np.full((3, 1), 2), r.integers(5, 40, (3, 6))], 1)
    ours = np.asarray(model.apply(params, {"input_ids": ids, "attention_mask": mask,
                                           "decoder_input_ids": dec}).logits)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)

    max_len = 12
    memory = model.encode(params, jnp.asarray(ids), jnp.asarray(mask))

    def logits_fn(state, tokens, t):
        logits = model.decode(params, state["memory"], state["mask"], tokens[:, :-1])
        return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)

    greedy = jax.jit(lambda s: decode.greedy_search(logits_fn, s, max_len=max_len, start_id=2,
                                                    eos_id=3, pad_id=0))
    tokens = np.asarray(greedy({"memory": memory, "mask": jnp.asarray(mask)}))
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          num_beams=1, do_sample=False, max_new_tokens=max_len,
                          min_length=0).numpy()
    hf_tokens = np.full((3, max_len), 0)
    hf_tokens[:, :out.shape[1] - 1] = out[:, 1:]
    assert out[0, 0] == 2
    np.testing.assert_array_equal(tokens, hf_tokens)
    # jaxdistill.hf reads the export: the same logits and the same greedy tokens.
    import jaxdistill.hf

    loaded = jaxdistill.hf.load(tmp_path)
    np.testing.assert_allclose(np.asarray(loaded(ids, mask, decoder_input_ids=dec).logits), ours,
                               atol=1e-5)
    np.testing.assert_array_equal(loaded.generate(ids, mask, max_len=max_len), tokens)
    # With repeated bigrams blocked, our greedy still writes transformers' tokens.
    blocked = loaded.generate(ids, mask, max_len=max_len, no_repeat_ngram_size=2)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          num_beams=1, do_sample=False, max_new_tokens=max_len, min_length=0,
                          no_repeat_ngram_size=2).numpy()
    hf_blocked = np.full((3, max_len), 0)
    hf_blocked[:, :out.shape[1] - 1] = out[:, 1:]
    np.testing.assert_array_equal(blocked, hf_blocked)
    assert not np.array_equal(blocked, tokens)  # the random student repeats itself unblocked
    # And back: the export reads into the same params.
    again, back = read_model_dir(tmp_path)
    assert again.config == model.config
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _copy_arrays(n, rng, vocab=12, length=4):
    """A copy task in the student's layout: [CLS]=1 x [SEP]=2 -> x [SEP], tokens 3..vocab-1."""
    x = rng.integers(3, vocab, (n, length))
    ones = np.ones((n, 1), np.int64)
    return {"input_ids": np.concatenate([ones, x, 2 * ones], 1).astype(np.int32),
            "attention_mask": np.ones((n, length + 2), np.int32),
            "decoder_input_ids": np.concatenate([ones, x], 1).astype(np.int32),
            "labels": np.concatenate([x, 2 * ones], 1).astype(np.int32),
            "label_weights": np.ones((n, length + 1), np.float32)}


def test_shuffled_source_diagnostic_tells_a_reader_from_a_model_that_ignores_its_source():
    import optax

    from jaxdistill import sharding
    from jaxdistill.config import MeshConfig
    from jaxdistill.models.seq2seq import Seq2Seq, Seq2SeqConfig
    from jaxdistill.train.kinds import seq2seq as train_s2s

    cfg = Seq2SeqConfig(vocab_size=12, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=8, dropout=0.0,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = Seq2Seq(cfg)
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, batch):
        def loss(p):
            logits = model.apply(p, batch).logits
            return losses.hard_cross_entropy(logits, batch["labels"], batch["label_weights"])
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for _ in range(300):  # learns to copy its source
        params, opt_state = step(params, opt_state, _copy_arrays(32, rng))
    dev = _copy_arrays(40, np.random.default_rng(1))
    mesh = sharding.make_mesh(MeshConfig())
    params_sh = sharding.shardings_for(model.logical_axes(), params, mesh)
    scores, batch_sh = train_s2s.pair_scores(model, params_sh, mesh)
    with mesh:
        reader = train_s2s.source_reliance(scores, batch_sh, params, dev, 16)
    assert reader["cross_entropy"] < 0.5 * np.log(9)  # it copies (a guess: log 9 per token)
    assert reader["source_gap"] > 1.0
    assert reader["token_accuracy"] > 0.9  # it copies, token for token
    logits = np.asarray(model.apply(params, dev).logits)
    right = (logits.argmax(-1) == dev["labels"]) * dev["label_weights"]
    assert reader["token_accuracy"] == pytest.approx(right.sum() / dev["label_weights"].sum())
    assert reader["cross_entropy_shuffled_sources"] == pytest.approx(
        reader["cross_entropy"] + reader["source_gap"])
    # No row keeps its own source under the shuffle.
    shuffled = train_s2s.shuffled_sources(dev)
    assert not np.any(np.all(shuffled["input_ids"] == dev["input_ids"], axis=1))
    assert np.array_equal(shuffled["labels"], dev["labels"])

    # The encoder cut off (cross-attention's output zeroed): the sources cannot matter.
    cut = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "cross_attn" in jax.tree_util.keystr(path)
        and "out" in jax.tree_util.keystr(path) else x, params)
    with mesh:
        blind = train_s2s.source_reliance(scores, batch_sh, cut, dev, 16)
    assert blind["source_gap"] == pytest.approx(0.0, abs=1e-6)
    # Without its source it can only guess each token (8 choices at best: about 1/8 right).
    assert blind["token_accuracy"] < 0.5


def _padded(rng, n, width, low, high, vocab):
    """[n, width] ids of random lengths in [low, high], padded with 0, and their mask."""
    lengths = rng.integers(low, high + 1, n)
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    return (rng.integers(5, vocab, (n, width)) * mask).astype(np.int32), mask


def test_cut_batches_give_the_full_width_losses_and_teacher_logits(tmp_path):
    """length_pool's batches are cut to their longest pair: the student's CE + top-K KD loss
    and the conditional-MLM teacher's logits at its masked slots equal those at full width, and
    the top-K writer (which batches copies by length and cuts them) stores the teacher's
    full-width top-K."""
    from jaxdistill import loading
    from jaxdistill.data import tasks
    from jaxdistill.methods.base import STUDENT
    from jaxdistill.methods.cmlm import Cmlm, CmlmOptions
    from jaxdistill.models.base import Wants
    from jaxdistill.teacher_data.cmlm_topk import CmlmTopKConfig, TopKTargets

    rng = np.random.default_rng(0)
    model, params = _random_student(vocab=40)
    ids, mask = _padded(rng, 6, 16, 3, 7, 40)
    labels, weights = _padded(rng, 6, 12, 2, 5, 40)
    batch = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": labels,
             "labels": labels, "label_weights": weights.astype(np.float32),
             "topk_ids": rng.integers(0, 40, (6, 12, 4)).astype(np.int32),
             "topk_logits": rng.normal(size=(6, 12, 4)).astype(np.float32)}
    cut = tasks.cut_to_longest(batch, s2s.PAIR_WIDTHS, 4)
    assert cut["input_ids"].shape == (6, 8) and cut["labels"].shape == (6, 8)
    method = Cmlm(CmlmOptions(stage="student", alpha=0.5, top_k=4), {STUDENT: model})
    loss = jax.jit(lambda b: method.loss(params, {STUDENT: model.apply(params, b)}, b))
    (full_loss, full_metrics), (cut_loss, cut_metrics) = loss(batch), loss(cut)
    np.testing.assert_allclose(float(cut_loss), float(full_loss), rtol=1e-6)
    np.testing.assert_allclose(float(cut_metrics["loss/kd"]), float(full_metrics["loss/kd"]),
                               rtol=1e-6)

    # The teacher: a tiny BERT MLM over [CLS] X [SEP] Y [SEP], logits at its masked slots.
    tiny = write_tiny_teacher(tmp_path / "tiny", arch="BertForMaskedLM", layers=2, hidden=32)
    teacher, t_params, tok = loading.load_pretrained(str(tiny))
    pairs = _pairs(12)
    arrays = s2s.encode_conditional(pairs, tok, 16, 12)
    copies = s2s.modk_copies(arrays, 3, s2s.specials(tok).mask)
    keys = ("input_ids", "attention_mask", "token_type_ids", "masked_positions")
    full_copies = {k: copies[k] for k in keys}
    wants = Wants(logits_at_masked=True)
    masked_logits = jax.jit(lambda b: teacher.apply(t_params, b, wants=wants).logits)
    at_masked = lambda b: np.asarray(masked_logits(b))  # noqa: E731
    short = tasks.cut_to_longest(full_copies, s2s.CONDITIONAL_WIDTHS, 8)
    assert short["input_ids"].shape[1] < 28
    np.testing.assert_allclose(at_masked(short), at_masked(full_copies), atol=2e-5)

    # The writer's stored targets: the full-width logits' top-K over the student's pieces.
    out = tmp_path / "topk.jsonl"
    vocab_dir = s2s.write_vocabulary(tok, pairs, s2s.vocabulary_dir(out))
    cfg = CmlmTopKConfig(out=str(out), copies=3, top_k=4, batch_size=8, seq_len=16,
                         target_len=12)
    writer = TopKTargets(cfg, s2s.Seq2SeqTask("t", pairs, [], []), str(tiny), tok, vocab_dir)
    rows = writer.process(0, pairs)
    logits = at_masked(full_copies)[..., writer.columns]
    checked = 0
    for c, (row, slots) in enumerate(zip(copies["row"], copies["target_slot"])):
        for p, slot in enumerate(slots):
            if slot < 0:
                continue
            best = np.argsort(-logits[c, p])[:4]
            np.testing.assert_array_equal(rows[row]["topk_ids"][slot], best)
            np.testing.assert_allclose(rows[row]["topk_logits"][slot], logits[c, p, best],
                                       atol=2e-4)
            checked += 1
    assert checked == int(arrays["target_count"].sum())  # every target slot of every pair


def test_student_word_table_from_the_teachers_rows(tmp_path):
    from jaxdistill.errors import UserError
    from jaxdistill.loading import load_pretrained
    from jaxdistill.train.kinds.seq2seq import teacher_word_rows

    teacher = write_tiny_teacher(tmp_path / "teacher", arch="BertForMaskedLM", layers=1,
                                 hidden=32)
    vocab = s2s.write_vocabulary(teacher, _pairs(), tmp_path / "vocab")
    model, params, tok = load_pretrained(str(teacher))
    table = np.asarray(model.word_embeddings(params), np.float64)
    ids = {p: i for i, p in enumerate((tok / "vocab.txt").read_text().splitlines())}
    rows = table[[ids[p] for p in (vocab / "vocab.txt").read_text().splitlines()]]
    centred = rows - rows.mean(0)
    same = teacher_word_rows(str(teacher), vocab, 32, 0.02)
    np.testing.assert_allclose(same, centred * 0.02 / centred.std(), rtol=1e-5, atol=1e-7)
    # Narrower: the leading principal components, i.e. the best rank-16 fit of the rows' Gram
    # matrix (sign-free), at the student's init std.
    narrow = teacher_word_rows(str(teacher), vocab, 16, 0.02)
    assert narrow.shape == (len(rows), 16) and narrow.std() == pytest.approx(0.02, rel=1e-5)
    u, sv, _ = np.linalg.svd(centred, full_matrices=False)
    best = (u[:, :16] * sv[:16]) @ (u[:, :16] * sv[:16]).T
    scale = (0.02 / (u[:, :16] * sv[:16]).std()) ** 2
    np.testing.assert_allclose(narrow @ narrow.T, best * scale, rtol=1e-4, atol=1e-9)
    with pytest.raises(UserError, match="wider than the teacher.s"):
        teacher_word_rows(str(teacher), vocab, 64, 0.02)


def test_seq2seq_student_rejects_what_it_cannot_give():
    from jaxdistill.errors import UserError
    from jaxdistill.models import Wants

    model, params = _random_student()
    with pytest.raises(UserError, match="only its logits"):
        model.apply(params, {"input_ids": np.ones((1, 3), np.int32),
                             "attention_mask": np.ones((1, 3), np.int32),
                             "decoder_input_ids": np.ones((1, 2), np.int32)},
                    wants=Wants(hidden_states=True))


TINY_STUDENT = ["student.d_model=32", "student.encoder_layers=1", "student.decoder_layers=2",
                "student.encoder_attention_heads=2", "student.decoder_attention_heads=2",
                "student.encoder_ffn_dim=64", "student.decoder_ffn_dim=64"]
SMALL = [f"task.source={WORDNET}", "task.max_train_examples=48", "task.max_dev_examples=16",
         "tensorboard=false",
         "log_every=1", "batch_size=8", "eval_batch_size=8", "seq_len=16", "target_len=12",
         "optimizer.schedule=constant", "optimizer.warmup_steps=0"]


def test_both_stages_end_to_end_with_resume_and_evaluate(tmp_path):
    tiny = write_tiny_teacher(tmp_path / "tiny", arch="BertForMaskedLM", layers=2, hidden=32)
    teacher = tmp_path / "teacher"
    run_cli("finetune", "--config", "configs/task/cmlm_teacher.yaml", f"run_dir={teacher}",
            f"student.init={tiny}", "steps=4", "eval_every=2", "save_every=100", *SMALL)
    rows = read_metrics(teacher)
    assert rows[-1]["dev_masked_tokens"] > 16 and 0 <= rows[-1]["dev_masked_accuracy"] <= 1

    topk = tmp_path / "data" / "topk.jsonl"
    out = run_cli("augment", "--config", "configs/task/cmlm_topk.yaml", f"out={topk}",
                  f"teacher={teacher}/best", f"task.source={WORDNET}", "task.max_train_examples=48",
                  "task.max_dev_examples=16", "seq_len=16", "target_len=12", "copies=3",
                  "top_k=4", "batch_size=16", "chunk_size=20")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 48 and summary["chunks"] == 3
    first = [json.loads(line) for line in topk.read_text().splitlines()][0]
    assert len(first["topk_ids"]) == len(first["target_ids"]) and len(first["topk_ids"][0]) == 4
    assert first["target_ids"][-1] == 3  # the student's [SEP]: the teacher predicts the end too
    assert all(a >= b for a, b in zip(first["topk_logits"][0], first["topk_logits"][0][1:]))

    common = ["finetune", "--config", "configs/task/cmlm_student.yaml",
              f"teacher.path={teacher}/best", f"task.augmented={topk}", "method.options.top_k=4",
              "eval_every=3", "save_every=3", "select=best", *SMALL, *TINY_STUDENT]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = run_cli(*common, f"run_dir={straight}", "steps=6")
    assert "best checkpoint by dev cross entropy" in first.stdout
    run_cli(*common, f"run_dir={resumed}", "steps=3", "export=false")
    run_cli(*common, f"run_dir={resumed}", "steps=6")
    rows, again = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in again] == list(range(1, 7))
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]  # bit for bit
    assert all(r["loss/kd"] > 0 and r["loss/ce"] > 0 for r in rows)
    assert "dev_bleu" in rows[2] and "dev_bleu" in rows[5]
    # Dev cross entropy (with true and shuffled sources) selects the best checkpoint.
    evals = [r for r in rows if "dev_cross_entropy" in r]
    assert all(r["dev_cross_entropy_shuffled_sources"] - r["dev_cross_entropy"] ==
               pytest.approx(r["dev_source_gap"], abs=1e-5) for r in evals)
    best = min(evals, key=lambda r: r["dev_cross_entropy"])
    assert rows[-1]["best_step"] == best["step"]
    assert rows[-1]["best_dev_cross_entropy"] == pytest.approx(best["dev_cross_entropy"])
    # The sharded step and the sharded greedy decoder on a 2x2x2 mesh equal one device (which
    # step best/ keeps changes neither).
    eight = tmp_path / "eight"
    on_eight = run_cli(*common, f"run_dir={eight}", "steps=6", "export=false", "mesh.data=2",
                       "mesh.fsdp=2", "mesh.tensor=2", "select=last", devices=8)
    assert "best/ holds the last step" in on_eight.stdout
    for r, e in zip(rows, read_metrics(eight)):
        assert e["loss"] == pytest.approx(r["loss"], rel=1e-4), r["step"]
        assert e.get("dev_bleu") == pytest.approx(r.get("dev_bleu"), abs=1e-6)

    import transformers
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(straight / "hf"))
    assert type(hf).__name__ == "BartForConditionalGeneration"
    out = run_cli("evaluate", "--model", str(straight / "hf"), "--config",
                  "configs/task/cmlm_student.yaml", "--split", "test", f"task.source={WORDNET}",
                  "task.max_dev_examples=16",
                  "seq_len=16", "target_len=12", "eval_batch_size=8", "decode.beam_size=3",
                  "decode.samples=2", "decode.length_penalty_form=wu", "--predictions",
                  str(tmp_path / "test_outputs.jsonl"), bars=True)
    printed = out.stdout.strip().splitlines()
    result = json.loads(printed[-1])
    assert printed[0].startswith("jaxdistill evaluate: beam 3 decoding of 16 test pairs")
    assert printed[-2].startswith(f"done: BLEU {result['test_bleu']:.2f}, "
                                  f"{result['distinct_outputs']} distinct outputs of 16")
    assert "decode: 100%" in out.stderr
    assert result["split"] == "test" and result["pairs"] == 16 and 0 <= result["test_bleu"] <= 100
    assert len(result["samples"]) == 2 and result["sentences_per_sec"] > 0
    assert result["length_penalty_form"] == "wu" and 1 <= result["distinct_outputs"] <= 16
    assert result["test_cross_entropy"] > 0 and "test_cross_entropy_shuffled_sources" in result
    outputs = [json.loads(line) for line in (tmp_path / "test_outputs.jsonl").read_text().splitlines()]
    assert len(outputs) == 16 and outputs[:2] == result["samples"]
    assert len({o["output"] for o in outputs}) == result["distinct_outputs"]

    # A student trained without the teacher reads no teacher data; with alpha > 0 it needs it.
    bad = run_cli(*common[:-len(TINY_STUDENT)], f"run_dir={tmp_path / 'bad'}", "task.augmented=",
                  "steps=2", check=False)
    assert bad.returncode == 2 and "task.augmented" in " ".join(bad.stderr.split())
    long = run_cli(*common, f"run_dir={tmp_path / 'long'}", "target_len=40", "steps=2",
                   "method.options.alpha=0", "task.augmented=", check=False)
    assert long.returncode == 2 and "target_len=40" in " ".join(long.stderr.split())
    assert "Traceback" not in long.stderr
