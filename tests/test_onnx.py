"""`jaxdistill export --format onnx [--quantize int8]`: ONNX Runtime against the JAX model on real
sentences other than those the export checks itself on, at other batch sizes and lengths."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from helpers import run_cli
from jaxdistill import assets, checkpoint
from jaxdistill.data.corpus import iter_documents
from jaxdistill.inference import onnx_export
from jaxdistill.loading import load_pretrained


def _imdb_texts(n: int) -> list[str]:
    # IMDB reviews: long, with padding rows, unlike the export's own Rotten Tomatoes check.
    return [" ".join(d) for d in iter_documents("package:imdb", max_documents=n)]


def _summary(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_classifier_runs_in_onnx_runtime_like_jax_and_int8_mostly_agrees(tmp_path,
                                                                         tiny_classifier):
    from transformers import AutoTokenizer

    out = tmp_path / "onnx"
    report = _summary(run_cli("export", "--checkpoint", str(tiny_classifier / "best"), "--out",
                              str(out), "--format", "onnx", "--quantize", "int8"))
    assert report["files"] == ["model.onnx", "model_int8.onnx"]
    assert report["max_abs_logit_diff"] <= 1e-4 and report["checked_sentences"] == 32
    assert {"config.json", "vocab.txt", "model.onnx", "model_int8.onnx"} <= \
        {p.name for p in out.iterdir()}

    model, params, _ = load_pretrained(str(tiny_classifier / "best"))
    tok = AutoTokenizer.from_pretrained(str(out))
    fp32, int8 = (onnx_export.session(out / f) for f in ("model.onnx", "model_int8.onnx"))
    texts = _imdb_texts(40)
    agree = []
    for rows, length in ((slice(0, 1), 9), (slice(1, 40), 32)):  # dynamic batch and sequence
        batch = dict(tok(texts[rows], padding="max_length", truncation=True, max_length=length,
                         return_tensors="np"))
        feed = {k: v.astype(np.int64) for k, v in batch.items()}
        expected = onnx_export._jax_logits(model, params, batch)
        got = fp32.run(["logits"], feed)[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        agree += list(int8.run(["logits"], feed)[0].argmax(-1) == got.argmax(-1))
    # Dynamic int8 quantization moves logits a little: predictions agree on most inputs.
    assert np.mean(agree) >= 0.8, np.mean(agree)


def _tiny_seq2seq(run_dir):
    from jaxdistill.models.seq2seq import Seq2Seq, Seq2SeqConfig

    tokenizer = assets.resolve_model_path("package:minilm")
    cfg = Seq2SeqConfig(vocab_size=30522, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=48, max_position_embeddings=64, dropout=0.0)
    model = Seq2Seq(cfg)
    params = model.init(jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    # Spread the weights so that greedy decoding writes varied tokens, not one repeated.
    params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
    checkpoint.save_model(run_dir, model, jax.device_get(params), tokenizer_dir=tokenizer)
    return model, jax.device_get(params)


def test_seq2seq_student_decodes_the_same_tokens_in_onnx_runtime(tmp_path):
    from transformers import AutoTokenizer

    model, params = _tiny_seq2seq(tmp_path / "student")
    out = tmp_path / "onnx"
    report = _summary(run_cli("export", "--checkpoint", str(tmp_path / "student"), "--out",
                              str(out), "--format", "onnx", "--quantize", "int8"))
    assert report["files"] == ["encoder_model.onnx", "decoder_model.onnx",
                               "encoder_model_int8.onnx", "decoder_model_int8.onnx"]
    assert report["greedy_identical"] == 1.0 and report["max_abs_logit_diff"] <= 1e-4
    assert 0 <= report["int8_greedy_identical"] <= 1

    tok = AutoTokenizer.from_pretrained(str(out))
    batch = {k: v for k, v in tok(_imdb_texts(6), padding=True, truncation=True, max_length=40,
                                  return_tensors="np").items()
             if k in ("input_ids", "attention_mask")}
    cfg = model.config
    ort_tokens = onnx_export.greedy_onnx(
        onnx_export.session(out / "encoder_model.onnx"),
        onnx_export.session(out / "decoder_model.onnx"), batch, max_len=16,
        start_id=cfg.decoder_start_token_id, eos_id=cfg.eos_token_id, pad_id=cfg.pad_token_id)
    jax_tokens = onnx_export._jax_greedy(model, params, {k: v.astype(np.int32)
                                                         for k, v in batch.items()}, 16)
    np.testing.assert_array_equal(ort_tokens, jax_tokens)
    assert len({tuple(r) for r in jax_tokens.tolist()}) > 1  # not one output for every row


@pytest.mark.parametrize("extra, needle", [
    (["--quantize", "int8"], "add --format onnx"),
    (["--format", "tflite"], "expected one of hf, onnx"),
    (["--format", "onnx", "--quantize", "int4"], "expected int8"),
])
def test_bad_export_requests_exit_2_before_any_work(tmp_path, extra, needle):
    proc = run_cli("export", "--checkpoint", str(tmp_path / "nothing"), "--out",
                   str(tmp_path / "out"), *extra, check=False)
    assert proc.returncode == 2 and needle in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_model_without_a_hugging_face_class_has_no_onnx_export(tmp_path):
    from jaxdistill.models.bilstm import Bilstm, BilstmConfig

    model = Bilstm(BilstmConfig(vocab_size=40, embedding_dim=12, hidden_size=10,
                                classifier_size=14, num_labels=2, embeddings="random"))
    checkpoint.save_model(tmp_path / "bilstm", model,
                          jax.tree.map(np.asarray, model.init(jax.random.key(0))), None)
    proc = run_cli("export", "--checkpoint", str(tmp_path / "bilstm"), "--out",
                   str(tmp_path / "out"), "--format", "onnx", check=False)
    assert proc.returncode == 2 and "Hugging Face" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_recipe_exports_onnx_at_the_end_of_its_run(tmp_path, tiny):
    from helpers import tiny_task_args

    run_dir = tmp_path / "run"
    out = _summary(run_cli(*tiny_task_args(run_dir, tiny, "steps=2", "eval_every=2",
                                           "export.format=onnx", "export.quantize=int8")))
    assert out["onnx"]["onnx_dir"] == str(run_dir / "onnx")
    assert out["onnx"]["files"] == ["model.onnx", "model_int8.onnx"]
    assert out["onnx"]["max_abs_logit_diff"] <= 1e-4 and (run_dir / "hf" / "config.json").is_file()


@pytest.mark.parametrize("family", ["distilbert", "mobilebert"])
def test_distilbert_and_mobilebert_classifiers_export_to_onnx(tmp_path, family):
    """Every classifier family with a Hugging Face class: a tiny random one read in with
    `jaxdistill import`, exported, and checked by the export itself (within 1e-4 of JAX)."""
    import shutil

    import torch
    import transformers

    src = assets.teacher_dir()
    vocab = len((src / "vocab.txt").read_text().splitlines())
    if family == "distilbert":
        cfg = transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4,
                                            hidden_dim=64, max_position_embeddings=128,
                                            num_labels=2)
        cls = transformers.DistilBertForSequenceClassification
    else:
        cfg = transformers.MobileBertConfig(vocab_size=vocab, hidden_size=64, embedding_size=16,
                                            num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=32, intra_bottleneck_size=16,
                                            true_hidden_size=16, num_feedforward_networks=2,
                                            max_position_embeddings=128, num_labels=2)
        cls = transformers.MobileBertForSequenceClassification
    torch.manual_seed(0)
    cls(cfg).save_pretrained(str(tmp_path / "hf"))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp_path / "hf" / name)
    run_cli("import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"))
    report = _summary(run_cli("export", "--checkpoint", str(tmp_path / "ckpt"), "--out",
                              str(tmp_path / "onnx"), "--format", "onnx"))
    assert report["architecture"] == family or report["kind"] == family, report
    assert report["max_abs_logit_diff"] <= 1e-4 and report["files"] == ["model.onnx"]
    if family == "distilbert":  # DistilBERT reads no token types
        assert report["inputs"] == ["input_ids", "attention_mask"]
