"""Hugging Face interop, with transformers (PyTorch, eager attention) as the oracle.

Tiny random models (hidden 32, 2 layers, 4 heads, vocab 99) are built locally with transformers;
their weights are re-drawn with large variance so that attention is peaked and LayerNorm
parameters are not 1/0 (a swapped or untransposed tensor then shows in every output).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from helpers import assert_matches_torch as _assert_close  # noqa: E402
from helpers import torch_outputs as _torch_outputs  # noqa: E402
from jaxdistill import assets, hf  # noqa: E402
from jaxdistill.convert import read_hf_dir, write_hf_dir  # noqa: E402
from jaxdistill.errors import UserError  # noqa: E402

TOL = 1e-4
VOCAB = 99
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)
DISTIL = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
              max_position_embeddings=64)
ARCHS = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForPreTraining",
         "DistilBertModel", "DistilBertForMaskedLM", "DistilBertForSequenceClassification"]
AUTO = {"none": transformers.AutoModel, "mlm": transformers.AutoModelForMaskedLM,
        "classifier": transformers.AutoModelForSequenceClassification}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _hf_config(arch: str):
    if arch.startswith("DistilBert"):
        return transformers.DistilBertConfig(**DISTIL, num_labels=3)
    return transformers.BertConfig(**BERT, num_labels=3)


def _randomise(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)


def _write_tokenizer(path) -> None:
    words = [f"w{i}" for i in range(VOCAB - len(SPECIAL))]
    (path / "vocab.txt").write_text("\n".join(SPECIAL + words) + "\n")
    tok = transformers.BertTokenizerFast(vocab=str(path / "vocab.txt"))
    tok.save_pretrained(str(path))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """arch -> directory of a tiny random transformers model (plus tokenizer)."""
    out = {}
    for i, arch in enumerate(ARCHS):
        torch.manual_seed(i)
        model = getattr(transformers, arch)(_hf_config(arch))
        _randomise(model)
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(str(path))
        _write_tokenizer(path)
        out[arch] = path
    return out


def _batch(distil: bool):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, size=(3, 9))
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # padding
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = None if distil else (np.arange(9)[None, :] >= 4).astype(np.int64).repeat(3, axis=0)
    return ids, mask, types


def _load_torch(arch_or_auto, path):
    model = arch_or_auto.from_pretrained(str(path), attn_implementation="eager")
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_import_matches_transformers(hf_dirs, arch):
    ids, mask, types = _batch(arch.startswith("Distil"))
    theirs = _torch_outputs(_load_torch(getattr(transformers, arch), hf_dirs[arch]), ids, mask, types)
    model = hf.load(hf_dirs[arch])
    ours = model(ids, mask, types)
    _assert_close(ours, theirs, mask, arch)
    # Sanity of the oracle: the random weights make attention far from uniform.
    assert float(np.asarray(ours.attentions[0]).max()) > 0.5


@pytest.mark.parametrize("arch", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification",
                                  "DistilBertForMaskedLM", "DistilBertForSequenceClassification"])
def test_export_loads_in_transformers(hf_dirs, arch, tmp_path):
    ids, mask, types = _batch(arch.startswith("Distil"))
    model = hf.load(hf_dirs[arch])
    out_dir = hf.save(model, tmp_path / "export")
    written = json.loads((out_dir / "config.json").read_text())
    assert written["architectures"] == [arch]
    auto = AUTO[model.config.head]
    torch_model, info = auto.from_pretrained(str(out_dir), attn_implementation="eager",
                                             output_loading_info=True)
    assert type(torch_model).__name__ == arch
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    _assert_close(model(ids, mask, types), _torch_outputs(torch_model.eval(), ids, mask, types),
                  mask, f"export {arch}")
    tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    assert tok("w1 w2")["input_ids"] == [2, 6, 7, 3]


def test_export_keeps_label_names(hf_dirs, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hf_dirs["BertForSequenceClassification"], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["id2label"] = {"0": "neg", "1": "neutral", "2": "pos"}
    cfg["label2id"] = {"neg": 0, "neutral": 1, "pos": 2}
    (src / "config.json").write_text(json.dumps(cfg))
    out = hf.save(hf.load(src), tmp_path / "out")
    loaded = transformers.AutoConfig.from_pretrained(str(out))
    assert loaded.id2label == {0: "neg", 1: "neutral", 2: "pos"}


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "BertForSequenceClassification",
                                  "DistilBertForMaskedLM", "DistilBertForSequenceClassification"])
def test_import_export_import_is_lossless(hf_dirs, arch, tmp_path):
    cfg, params = read_hf_dir(hf_dirs[arch])
    write_hf_dir(cfg, params, tmp_path)
    cfg2, params2 = read_hf_dir(tmp_path)
    assert cfg2 == cfg
    flat, flat2 = flatten_dict(params), flatten_dict(params2)
    assert flat.keys() == flat2.keys()
    for k in flat:
        assert np.array_equal(flat[k], flat2[k]), k
    # The written tensors are the original ones, bit for bit (minus untied/buffer extras).
    original, written = load_file(str(hf_dirs[arch] / "model.safetensors")), load_file(
        str(tmp_path / "model.safetensors"))
    assert set(written) <= set(original)
    for name in written:
        assert np.array_equal(written[name], original[name]), name


def test_scanned_layout_gives_same_outputs(hf_dirs, tmp_path):
    path = hf_dirs["BertForMaskedLM"]
    ids, mask, types = _batch(False)
    flat_model, scanned = hf.load(path), hf.load(path, scan_layers=True)
    assert "layers" in scanned.params["encoder"]
    assert scanned.params["encoder"]["layers"]["layer"]["attention"]["query"]["kernel"].shape == (2, 32, 32)
    a, b = flat_model(ids, mask, types), scanned(ids, mask, types)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)
    hf.save(scanned, tmp_path)  # writes the per-layer HF layout from stacked params
    written, original = load_file(str(tmp_path / "model.safetensors")), load_file(
        str(path / "model.safetensors"))
    assert written.keys() == original.keys()
    assert all(np.array_equal(written[k], original[k]) for k in written)


def test_pytorch_model_bin(hf_dirs, tmp_path):
    # transformers 5 always writes safetensors, so write the pickle the way older versions did.
    src = hf_dirs["BertForMaskedLM"]
    model = transformers.BertForMaskedLM.from_pretrained(str(src))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # includes the tied decoder
    shutil.copy(src / "config.json", tmp_path / "config.json")
    _, expected = read_hf_dir(src)
    _, params = read_hf_dir(tmp_path)
    for (k, a), b in zip(flatten_dict(expected).items(), flatten_dict(params).values()):
        assert np.array_equal(a, b), k


def test_old_names_no_prefix_sharded_and_bf16(hf_dirs, tmp_path):
    src = hf_dirs["BertForMaskedLM"]
    _, expected = read_hf_dir(src)
    tensors = load_file(str(src / "model.safetensors"))
    # An old-style checkpoint: no `bert.` prefix, LayerNorm gamma/beta, decoder weight and
    # bias saved explicitly, a position_ids buffer.
    old = {}
    for name, value in tensors.items():
        name = name.removeprefix("bert.")
        if "LayerNorm" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        old[name] = value
    old["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    old["cls.predictions.decoder.bias"] = old.pop("cls.predictions.bias")
    old["embeddings.position_ids"] = np.arange(64)[None]
    (tmp_path / "old").mkdir()
    shutil.copy(src / "config.json", tmp_path / "old")
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    _, params = read_hf_dir(tmp_path / "old")
    for (k, a), b in zip(flatten_dict(expected).items(), flatten_dict(params).values()):
        assert np.array_equal(a, b), k
    # Sharded safetensors, as save_pretrained writes big models.
    model = transformers.BertForMaskedLM.from_pretrained(str(src))
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, params = read_hf_dir(tmp_path / "sharded")
    for (k, a), b in zip(flatten_dict(expected).items(), flatten_dict(params).values()):
        assert np.array_equal(a, b), k
    # bfloat16 weights (numpy has no bfloat16): read and widened to float32.
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    cfg, params = read_hf_dir(tmp_path / "bf16")
    q = params["encoder"]["layer_0"]["attention"]["query"]["kernel"]
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, expected["encoder"]["layer_0"]["attention"]["query"]["kernel"],
                               rtol=1e-2, atol=1e-2)


def test_missing_head_needs_rng(hf_dirs):
    path = hf_dirs["BertModel"]
    with pytest.raises(UserError, match=r"no 'classifier' head \(tensor 'classifier.weight'"):
        read_hf_dir(path, head="classifier")
    cfg, params = read_hf_dir(path, head="classifier", rng=jax.random.key(0), num_labels=5)
    assert cfg.num_labels == 5 and params["classifier"]["classifier"]["kernel"].shape == (32, 5)
    model = hf.load(path, head="classifier", rng=jax.random.key(0))
    ids, mask, types = _batch(False)
    assert model(ids, mask, types).logits.shape == (3, 3)
    assert model.architecture == "BertForSequenceClassification"
    _, encoder_only = read_hf_dir(path)
    assert np.array_equal(params["pooler"]["kernel"], encoder_only["pooler"]["kernel"])
    # Dropping a head is always allowed.
    base = hf.load(hf_dirs["BertForSequenceClassification"], head="none")
    assert base.config.head == "none" and base(ids, mask, types).logits is None


# ------------------------------------------------------------------------ the packaged teacher

SENTENCES = ["A man is playing a guitar.", "Someone is playing an acoustic guitar.",
             "The stock market fell sharply today.", "I need to bake bread for dinner tonight."]


@pytest.fixture(scope="module")
def teacher():
    path = assets.teacher_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    return path, enc, hf.load(path)


def test_teacher_matches_transformers(teacher):
    path, enc, model = teacher
    assert model.config.num_layers == 6 and model.config.hidden_size == 384
    torch_model = _load_torch(transformers.AutoModel, path)
    with torch.no_grad():
        theirs = torch_model(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state
    ours = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                 output_hidden_states=False, output_attentions=False)
    assert ours.hidden_states is None and ours.attentions is None
    mask = enc["attention_mask"].astype(bool)
    diff = np.abs(np.asarray(ours.last_hidden_state) - theirs.numpy())[mask]
    assert diff.max() < TOL, diff.max()


def test_teacher_export_loads_in_transformers(teacher, tmp_path):
    path, enc, model = teacher
    hf.save(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertModel"]
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok(SENTENCES, padding=True, return_tensors="np")["input_ids"].tolist() == \
        enc["input_ids"].tolist()
    original, written = _load_torch(transformers.AutoModel, path), _load_torch(
        transformers.AutoModel, tmp_path)
    for a, b in zip(original.state_dict().values(), written.state_dict().values()):
        assert torch.equal(a, b)


def test_teacher_embeddings_rank_paraphrase_first(teacher):
    _, enc, model = teacher
    out = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                output_hidden_states=False, output_attentions=False)
    mask = enc["attention_mask"][..., None].astype(np.float32)
    emb = (np.asarray(out.last_hidden_state) * mask).sum(1) / mask.sum(1)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    cos = emb[1:] @ emb[0]
    assert cos[0] > cos[1] + 0.2 and cos[0] > cos[2] + 0.2, cos


# ----------------------------------------------------------------------------------- errors


def test_error_missing_directory_and_config(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        hf.load(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        hf.load(tmp_path)


def test_error_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError, match="GPT2LMHeadModel.*BertForMaskedLM"):
        hf.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="'gpt2'.*bert, distilbert"):
        hf.load(tmp_path)


def test_error_corrupted_safetensors(hf_dirs, tmp_path):
    shutil.copy(hf_dirs["BertModel"] / "config.json", tmp_path)
    good = (hf_dirs["BertModel"] / "model.safetensors").read_bytes()
    weights = tmp_path / "model.safetensors"
    for broken in (b"\x12\x34 not a safetensors file" * 8, good[: len(good) // 2]):
        weights.write_bytes(broken)
        with pytest.raises(UserError, match="model.safetensors.*corrupted"):
            hf.load(tmp_path)
    weights.unlink()
    with pytest.raises(UserError, match="no weights"):
        hf.load(tmp_path)


def test_error_shape_mismatch_and_missing_tensor(hf_dirs, tmp_path):
    src = hf_dirs["BertForSequenceClassification"]
    shutil.copy(src / "model.safetensors", tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"encoder.layer.0.intermediate.dense.weight' has shape "
                                        r"\(37, 32\).*implies \(40, 32\)"):
        hf.load(tmp_path)
    cfg["intermediate_size"] = 37
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["bert.encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="no tensor 'encoder.layer.1.output.dense.weight'"):
        hf.load(tmp_path)


def test_error_untied_decoder(hf_dirs, tmp_path):
    src = hf_dirs["BertForMaskedLM"]
    shutil.copy(src / "config.json", tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"] + 1
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="untied"):
        hf.load(tmp_path)
