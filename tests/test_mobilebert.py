"""MobileBERT (kind 'mobilebert') and its IB-BERT teacher, with transformers as the oracle.

Tiny random models (vocab 99, hidden 32, embedding 16, intra 16, 2 layers, 4 heads) are built with
transformers in one module fixture; their weights are re-drawn (`_std`: unit-gain kernels,
larger for q/k so that attention is peaked, norm weights around 0.8, nonzero biases) so that a
swapped or untransposed tensor shows in every output while activations stay O(10), where fp32
agrees to 1e-4.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from helpers import assert_matches_torch, torch_outputs as _torch_outputs  # noqa: E402
from jaxdistill import config as config_lib, hf, loading  # noqa: E402
from jaxdistill.convert import (read_hf_dir, read_model_dir, write_hf_dir,  # noqa: E402
                                write_model_dir)
from jaxdistill.errors import UserError  # noqa: E402
from jaxdistill.models import Wants, from_meta  # noqa: E402
from jaxdistill.models.bert import Bert, BertConfig  # noqa: E402
from jaxdistill.models.mobilebert import (MobileBert, MobileBertConfig,  # noqa: E402
                                          has_hf_class, ib_bert_config)

TOL = 1e-4
VOCAB = 99
TINY = dict(vocab_size=VOCAB, hidden_size=32, embedding_size=16, intra_bottleneck_size=16,
            num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            max_position_embeddings=64, num_labels=3)
# case -> (transformers class, config changes)
CASES = {
    "base": ("MobileBertModel", {}),
    "mlm": ("MobileBertForMaskedLM", {}),
    "pretraining": ("MobileBertForPreTraining", {}),
    "classifier_tanh": ("MobileBertForSequenceClassification", {"classifier_activation": True}),
    "classifier_first_token": ("MobileBertForSequenceClassification",
                               {"classifier_activation": False}),
    "layer_norm_no_trigram_one_ffn": ("MobileBertForMaskedLM", {
        "normalization_type": "layer_norm", "trigram_input": False, "num_feedforward_networks": 1,
        "hidden_act": "gelu"}),
    "no_bottleneck": ("MobileBertModel", {"use_bottleneck": False, "embedding_size": 32,
                                          "trigram_input": False, "num_feedforward_networks": 2}),
    "bottleneck_attention": ("MobileBertForSequenceClassification",
                             {"use_bottleneck_attention": True}),
}
AUTO = {"mlm": transformers.AutoModelForMaskedLM,
        "classifier": transformers.AutoModelForSequenceClassification}


def _std(name: str, shape: tuple[int, ...], fan_in: int) -> float:
    """Standard deviation of a re-drawn matrix: 1 for embedding tables, gain / sqrt(fan_in) for
    kernels (gain 2 for q and k)."""
    if "embedding" in name and "transformation" not in name:
        return 1.0
    gain = 2.0 if any(k in name for k in (".query.", ".key.", "/query/", "/key/")) else 1.0
    return gain / math.sqrt(fan_in)


def _randomise_torch(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_((0.8 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                # torch Linear weights are (out, in); cls.predictions.dense.weight is used (in, out).
                fan_in = p.shape[0] if "predictions.dense" in name else p.shape[1]
                p.normal_(0.0, _std(name, tuple(p.shape), fan_in))
            else:
                p.normal_(0.0, 0.1)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """case -> directory of a tiny random transformers MobileBERT."""
    out = {}
    for i, (case, (arch, changes)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        model = getattr(transformers, arch)(transformers.MobileBertConfig(**{**TINY, **changes}))
        _randomise_torch(model)
        path = tmp_path_factory.mktemp(case)
        model.save_pretrained(str(path))
        out[case] = path
    return out


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, size=(3, 7))
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = (np.arange(7)[None, :] >= 4).astype(np.int64).repeat(3, axis=0)
    return ids, mask, types


def _assert_close(ours, theirs, mask, what: str) -> None:
    assert len(ours.hidden_states) == 3 and len(ours.attentions) == 2, what  # 2 layers
    assert_matches_torch(ours, theirs, mask, what, TOL)


def _load_torch(cls, path):
    return cls.from_pretrained(str(path), attn_implementation="eager").eval()


def _assert_same_params(a: dict, b: dict) -> None:
    fa, fb = flatten_dict(a), flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])), k


# ------------------------------------------------------------------------------ HF -> ours


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_transformers(hf_dirs, case):
    arch = CASES[case][0]
    ids, mask, types = _batch()
    theirs = _torch_outputs(_load_torch(getattr(transformers, arch), hf_dirs[case]),
                            ids, mask, types)
    model = hf.load(hf_dirs[case])
    assert model.config.kind == "mobilebert"
    ours = model(ids, mask, types)
    _assert_close(ours, theirs, mask, case)
    # Sanity of the oracle: the random weights make attention far from uniform.
    assert float(np.asarray(ours.attentions[0]).max()) > 0.5
    if case == "pretraining":  # the NSP head and the pooler it reads are dropped
        assert model.architecture == "MobileBertForMaskedLM" and "pooler" not in model.params


def test_import_export_import_is_lossless(hf_dirs, tmp_path):
    for case in ("mlm", "classifier_tanh", "base"):
        cfg, params = read_hf_dir(hf_dirs[case])
        write_hf_dir(cfg, params, tmp_path / case)
        cfg2, params2 = read_hf_dir(tmp_path / case)
        assert cfg2 == cfg
        _assert_same_params(params, params2)
        original = load_file(str(hf_dirs[case] / "model.safetensors"))
        written = load_file(str(tmp_path / case / "model.safetensors"))
        assert written.keys() == original.keys(), case
        for name in written:
            assert np.array_equal(written[name], original[name]), name


def test_pytorch_model_bin(hf_dirs, tmp_path):
    src = hf_dirs["mlm"]
    model = transformers.MobileBertForMaskedLM.from_pretrained(str(src))
    state = model.state_dict()
    assert "cls.predictions.decoder.weight" in state  # the tied decoder is in the pickle
    torch.save(state, tmp_path / "pytorch_model.bin")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    _, expected = read_hf_dir(src)
    _, params = read_hf_dir(tmp_path)
    _assert_same_params(expected, params)


def test_scanned_layout_gives_same_outputs(hf_dirs, tmp_path):
    path = hf_dirs["mlm"]
    ids, mask, types = _batch()
    flat_model, scanned = hf.load(path), hf.load(path, scan_layers=True)
    stacked = scanned.params["encoder"]["layers"]["layer"]
    assert stacked["attention"]["value"]["kernel"].shape == (2, 32, 16)
    a, b = flat_model(ids, mask, types), scanned(ids, mask, types)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)
    hf.save(scanned, tmp_path)  # writes the per-layer HF layout from stacked params
    written, original = (load_file(str(tmp_path / "model.safetensors")),
                         load_file(str(path / "model.safetensors")))
    assert written.keys() == original.keys()
    assert all(np.array_equal(written[k], original[k]) for k in written)


def test_bf16_compute_is_close(hf_dirs):
    ids, mask, types = _batch()
    full = hf.load(hf_dirs["classifier_first_token"])(ids, mask, types)
    half = hf.load(hf_dirs["classifier_first_token"], dtype="bfloat16")(ids, mask, types)
    assert half.hidden_states[-1].dtype == jnp.bfloat16
    for a, b in ((half.logits, full.logits), (half.hidden_states[-1], full.hidden_states[-1])):
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.isfinite(a).all()
        assert np.abs(a - b).max() < 0.05 * np.abs(b).max()


def test_logits_at_masked_positions(hf_dirs):
    model, params = read_model_dir(hf_dirs["mlm"])
    ids, mask, types = _batch()
    positions = np.array([[1, 3], [0, 4], [2, 2]])
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
             "masked_positions": positions}
    apply = jax.jit(model.apply, static_argnames="wants")
    full = apply(params, batch).logits
    at = apply(params, batch, wants=Wants(logits_at_masked=True)).logits
    assert at.shape == (3, 2, VOCAB)
    np.testing.assert_allclose(np.asarray(at), np.take_along_axis(
        np.asarray(full), positions[..., None], axis=1), atol=1e-5, rtol=0)


def test_new_head_on_an_mlm_checkpoint(hf_dirs):
    path = hf_dirs["mlm"]  # transformers' default classifier_activation: a tanh pooler
    with pytest.raises(UserError, match=r"no pooler \(tensor 'pooler.dense.weight'"):
        read_hf_dir(path, head="classifier")
    model = hf.load(path, head="classifier", rng=jax.random.key(0), num_labels=5)
    assert model.architecture == "MobileBertForSequenceClassification"
    assert model.params["classifier"]["classifier"]["kernel"].shape == (32, 5)
    assert model.params["pooler"]["kernel"].shape == (32, 32)
    ids, mask, types = _batch()
    assert model(ids, mask, types).logits.shape == (3, 5)
    _, mlm = read_hf_dir(path)
    _assert_same_params(model.params["encoder"], mlm["encoder"])


# ------------------------------------------------------------------------------ ours -> HF


def _random_ours(cfg: MobileBertConfig, seed: int) -> dict:
    """Params of our model's shapes, drawn like `_randomise_torch` (kernels are (in, out))."""
    shapes = flatten_dict(jax.eval_shape(MobileBert(cfg).init, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    out = {}
    for path, x in shapes.items():
        if path[-1] in ("kernel", "embedding"):
            std = _std("/".join(path), x.shape, x.shape[0])
            out[path] = rng.normal(0.0, std, x.shape).astype(np.float32)
        else:
            base = 0.8 if path[-1] == "scale" else 0.0
            out[path] = (base + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    return unflatten_dict(out)


@pytest.mark.parametrize("head,changes", [("mlm", {}), ("classifier", {"classifier_activation": True})])
def test_export_loads_in_transformers(tmp_path, head, changes):
    cfg = MobileBertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_layers=2,
                           num_heads=4, intra_bottleneck_size=16, intermediate_size=24,
                           max_position_embeddings=64, head=head, num_labels=3, **changes)
    params = _random_ours(cfg, seed=3)
    out_dir = write_model_dir(MobileBert(cfg), params, tmp_path / head)
    written = json.loads((out_dir / "config.json").read_text())
    arch = {"mlm": "MobileBertForMaskedLM", "classifier": "MobileBertForSequenceClassification"}[head]
    assert written["architectures"] == [arch] and written["model_type"] == "mobilebert"
    torch_model, info = AUTO[head].from_pretrained(str(out_dir), attn_implementation="eager",
                                                   output_loading_info=True)
    assert type(torch_model).__name__ == arch
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    ids, mask, types = _batch()
    ours = hf.load(out_dir)(ids, mask, types)
    _assert_close(ours, _torch_outputs(torch_model.eval(), ids, mask, types), mask, f"export {head}")
    mine = jax.jit(MobileBert(cfg).apply)(params, {"input_ids": ids, "attention_mask": mask,
                                                   "token_type_ids": types})
    np.testing.assert_allclose(np.asarray(mine.logits), np.asarray(ours.logits), atol=1e-5)


# ------------------------------------------------------------------------------------ IB-BERT


def test_ib_bert_forward_and_native_directory(tmp_path, caplog):
    cfg = ib_bert_config(vocab_size=VOCAB, hidden_size=32, intra_bottleneck_size=64,
                         embedding_size=16, intermediate_size=96, num_layers=2,
                         max_position_embeddings=64, head="classifier", num_labels=3)
    paper = ib_bert_config()
    assert (paper.hidden_size, paper.true_hidden_size, paper.head_dim,
            paper.intermediate_size) == (512, 1024, 256, 4096)
    assert not has_hf_class(cfg) and not has_hf_class(paper) and has_hf_class(MobileBertConfig())
    model = MobileBert(cfg)
    params = _random_ours(cfg, seed=5)
    attention = params["encoder"]["layer_0"]["attention"]
    for name in ("query", "key", "value"):  # all read the 32-wide block input, 64-wide out
        assert attention[name]["kernel"].shape == (32, 64), name
    assert "bottleneck_qk" not in params["encoder"]["layer_0"]
    ids, mask, types = _batch()
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    out = jax.jit(model.apply, static_argnames="wants")(
        params, batch, wants=Wants(hidden_states=True, attention_scores=True, attention_probs=True))
    assert out.logits.shape == (3, 3) and out.pooled.shape == (3, 32)
    assert [h.shape for h in out.hidden_states] == [(3, 7, 32)] * 3
    assert [p.shape for p in out.attention_probs] == [(3, 4, 7, 7)] * 2
    assert np.isfinite(np.asarray(out.logits)).all()

    with pytest.raises(UserError, match="no Hugging Face class"):
        write_hf_dir(cfg, params, tmp_path / "hf")
    with caplog.at_level(logging.WARNING, logger="jaxdistill.convert"):
        out_dir = write_model_dir(model, params, tmp_path / "native", id2label={0: "a", 1: "b", 2: "c"})
    assert "no Hugging Face class" in caplog.text and "native" in caplog.text
    written = json.loads((out_dir / "config.json").read_text())
    assert written["format"] == "jaxdistill-native" and written["kind"] == "mobilebert"
    back, back_params = read_model_dir(out_dir)
    assert back.config == cfg
    _assert_same_params(params, back_params)
    loaded = hf.load(out_dir)  # the Python API reads native directories too
    assert loaded.id2label == {0: "a", 1: "b", 2: "c"}
    np.testing.assert_allclose(np.asarray(loaded(ids, mask, types).logits),
                               np.asarray(out.logits), atol=1e-5, rtol=0)
    hf.save(loaded, tmp_path / "again")
    _assert_same_params(params, read_model_dir(tmp_path / "again")[1])


# ------------------------------------------------------------------------- configs and recipes


def test_config_validation():
    with pytest.raises(ValueError, match="intra_bottleneck_size=18.*num_heads=4"):
        MobileBertConfig(intra_bottleneck_size=18)
    with pytest.raises(ValueError, match="hidden_size > embedding_size"):
        MobileBertConfig(hidden_size=128, head="mlm")
    with pytest.raises(ValueError, match="normalization_type"):
        MobileBertConfig(normalization_type="rms_norm")
    with pytest.raises(ValueError, match="num_feedforward_networks=0"):
        MobileBertConfig(num_feedforward_networks=0)
    assert MobileBertConfig(hidden_size=128).head == "none"  # no MLM head: no constraint
    paper = MobileBertConfig()
    assert (paper.true_hidden_size, paper.head_dim, paper.query_key_input_size,
            paper.value_input_size) == (128, 32, 128, 512)
    # FLOPs per token at 128 tokens: 2 x matmul weights (trigram transformation 384 x 512; per
    # layer q, k 128 x 128, v 512 x 128, out 128 x 128, 4 FFNs 2 x 128 x 512, bottlenecks in,
    # q/k, out 3 x 512 x 128) + attention 4 x 24 x 128 x 128.
    layer = 2 * 128 * 128 + 512 * 128 + 128 * 128 + 4 * 2 * 128 * 512 + 3 * 512 * 128
    assert MobileBert(paper).forward_flops_per_token(128) == 2 * (384 * 512 + 24 * layer) + \
        4 * 24 * 128 * 128
    # Round trip through checkpoint metadata.
    assert from_meta(MobileBert(paper).meta()).config == paper
    # google/mobilebert-uncased's encoder: transformers' MobileBertModel without a pooler has
    # 24,581,888 parameters.
    assert MobileBert(paper).num_params() == 24_581_888


def test_student_from_recipe_keys_inherits_from_a_bert_teacher():
    teacher = Bert(BertConfig(vocab_size=VOCAB, hidden_size=48, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position_embeddings=96))
    student = config_lib.from_dict(config_lib.StudentConfig, {
        "kind": "mobilebert", "init": "random", "hidden_size": 32, "embedding_size": 16,
        "intra_bottleneck_size": 16, "num_layers": 2, "intermediate_size": 24,
        "scan_layers": True}, where="student")
    model, built = loading.student_model(student, teacher, head="mlm")
    assert not built and isinstance(model, MobileBert)
    c = model.config
    assert (c.vocab_size, c.max_position_embeddings, c.hidden_size, c.head) == (VOCAB, 96, 32, "mlm")
    assert dataclasses.replace(c, scan_layers=False) == MobileBertConfig(
        vocab_size=VOCAB, max_position_embeddings=96, hidden_size=32, embedding_size=16,
        intra_bottleneck_size=16, num_layers=2, intermediate_size=24, head="mlm")
    with pytest.raises(UserError, match="unknown key 'intra_size'"):  # checked as recipes load
        loading.check_student(config_lib.from_dict(config_lib.StudentConfig, {
            "kind": "mobilebert", "intra_size": 8}))
