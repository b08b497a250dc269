"""ONNX Runtime deployment: `jaxdistill export --format onnx [--quantize int8]`.

The ONNX graph comes from the ecosystem's exporter: `torch.onnx.export` of the Hugging Face
(PyTorch) model that `export` writes, with dynamic batch and sequence axes, the layout Optimum
writes (config.json, the tokenizer files and model.onnx; a sequence-to-sequence student as
encoder_model.onnx and decoder_model.onnx, the decoder taking the whole prefix, no cache). Every
file is run in ONNX Runtime on real sentences and compared with the JAX model before the command
succeeds: logits within 1e-4 in fp32, the same greedy tokens for a Seq2Seq student. `--quantize
int8` adds ONNX Runtime's dynamic int8 quantization (model_int8.onnx, ...) and reports how often
its predictions agree with fp32's on the same sentences.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxdistill.convert import TOKENIZER_FILES
from jaxdistill.errors import UserError

FORMATS = ("hf", "onnx")
QUANTIZE = ("", "int8")
TOLERANCE = 1e-4  # fp32 ONNX Runtime against JAX, largest absolute logit difference
OPSET = 17
SAMPLES = 32  # real sentences (packaged Rotten Tomatoes reviews) each export is checked on
CLASSIFIER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def check_request(fmt: str, quantize: str) -> None:
    """Exit 2 before any work for a format or quantization that does not exist or fit."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}.")
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize}: expected int8 (ONNX Runtime's dynamic "
                        f"quantization).")
    if quantize and fmt != "onnx":
        raise UserError(f"--quantize {quantize} quantizes an ONNX export: add --format onnx.")
    if fmt == "onnx":
        missing = [m for m in ("torch", "onnx", "onnxruntime")
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"--format onnx needs {', '.join(missing)}: pip install "
                            f"'jaxdistill[onnx]' (or pip install {' '.join(missing)}).")


def sample_texts(n: int = SAMPLES) -> list[str]:
    """Real sentences of varied length: the first n packaged Rotten Tomatoes reviews."""
    from jaxdistill.data.corpus import iter_documents

    return [" ".join(doc) for doc in iter_documents("package:rotten_tomatoes", max_documents=n)]


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def quantize_int8(src: Path, dst: Path) -> Path:
    """ONNX Runtime's dynamic quantization (int8 weights, activations quantized per call), after
    its recommended pre-processing (graph optimisation and shape inference; the symbolic shape
    pass does not complete on these graphs' dynamic axes and is skipped)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="jaxdistill-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    return dst


def _torch_export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                  dynamic: dict[str, dict[int, str]]) -> Path:
    import torch

    # The tracer warns about every Python branch on a shape; the check after export is what
    # tells whether the graph is right.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter with dynamic_axes: the one Optimum uses for these models.
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    return path


def _copy_side_files(hf_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", *TOKENIZER_FILES):
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, out / name)


def _encode(hf_dir: Path, texts: list[str], max_length: int = 64) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    config = json.loads((hf_dir / "config.json").read_text())
    max_length = min(max_length, config.get("max_position_embeddings") or max_length)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    return dict(tok(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="np"))


# --------------------------------------------------------------------------------------------
# Classifiers


def export_classifier(hf_dir: Path, out: Path, reference: Callable[[dict], np.ndarray],
                      quantize: str, texts: list[str]) -> dict:
    """model.onnx (and model_int8.onnx) of a sequence classifier, checked against `reference`
    (the JAX model's logits for a batch of NumPy inputs)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(hf_dir), attn_implementation="eager").eval()
    batch = _encode(hf_dir, texts)
    accepted = inspect.signature(model.forward).parameters
    names = [k for k in CLASSIFIER_INPUTS if k in batch and k in accepted]

    class Logits(torch.nn.Module):
        """The classifier with its inputs by position, logits out (the exporter's calling form)."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).logits

    _copy_side_files(hf_dir, out)
    dynamic = {k: {0: "batch", 1: "sequence"} for k in names} | {"logits": {0: "batch"}}
    _torch_export(Logits().eval(), tuple(torch.from_numpy(batch[k]) for k in names),
                  out / "model.onnx", names, ["logits"], dynamic)
    feed = {k: batch[k].astype(np.int64) for k in names}
    expected = np.asarray(reference(batch), np.float32)
    got = session(out / "model.onnx").run(["logits"], feed)[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= TOLERANCE:
        raise RuntimeError(f"ONNX Runtime's logits differ from the JAX model's by {diff:.2e} "
                           f"(> {TOLERANCE:g}) on {len(texts)} sentences: the export is wrong; "
                           f"{out / 'model.onnx'} is left for inspection.")
    report = {"files": ["model.onnx"], "inputs": names, "checked_sentences": len(texts),
              "max_abs_logit_diff": diff, "tolerance": TOLERANCE}
    if quantize:
        q = quantize_int8(out / "model.onnx", out / "model_int8.onnx")
        q_logits = session(q).run(["logits"], feed)[0]
        report["files"].append(q.name)
        report["int8_agreement"] = float(np.mean(q_logits.argmax(-1) == got.argmax(-1)))
        report["int8_max_abs_logit_diff"] = float(np.max(np.abs(q_logits - got)))
    return report


# --------------------------------------------------------------------------------------------
# Sequence-to-sequence students


def _seq2seq_modules(model) -> tuple[Any, Any]:
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = model.get_encoder()

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class Decoder(torch.nn.Module):
        """The whole prefix in, every position's logits out (greedy reads the last)."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask):
            hidden = self.model.get_decoder()(
                input_ids=decoder_input_ids, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, use_cache=False).last_hidden_state
            return self.model.lm_head(hidden) + self.model.final_logits_bias

    return Encoder().eval(), Decoder().eval()


def greedy_onnx(encoder, decoder, batch: dict[str, np.ndarray], max_len: int, start_id: int,
                eos_id: int, pad_id: int) -> np.ndarray:
    """Argmax decoding in ONNX Runtime with the JAX decoder's conventions (generate.py): int
    [N, max_len] tokens after the start token, pad after eos."""
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    memory = encoder.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    n = len(ids)
    buf = np.full((n, max_len + 1), pad_id, np.int64)
    buf[:, 0] = start_id
    done = np.zeros(n, bool)
    for t in range(max_len):
        logits = decoder.run(None, {"decoder_input_ids": buf[:, :t + 1],
                                    "encoder_hidden_states": memory,
                                    "encoder_attention_mask": mask})[0]
        nxt = np.where(done, pad_id, logits[:, -1].argmax(-1))
        buf[:, t + 1] = nxt
        done |= nxt == eos_id
    return buf[:, 1:]


def export_seq2seq(hf_dir: Path, out: Path, jax_model, params: dict, quantize: str,
                   texts: list[str], max_len: int = 24) -> dict:
    """encoder_model.onnx and decoder_model.onnx of a Seq2Seq student: teacher-forced logits
    within the tolerance of JAX's, and greedy decoding in ONNX Runtime giving JAX's tokens."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    batch = {k: v for k, v in _encode(hf_dir, texts).items() if k in ("input_ids",
                                                                      "attention_mask")}
    encoder, decoder = _seq2seq_modules(model)
    _copy_side_files(hf_dir, out)
    ids, mask = (torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask"))
    axes = {0: "batch", 1: "sequence"}
    _torch_export(encoder, (ids, mask), out / "encoder_model.onnx",
                  ["input_ids", "attention_mask"], ["last_hidden_state"],
                  {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    prefix = batch["input_ids"][:, :5]  # any tokens: the check below runs real decoding
    with torch.no_grad():
        memory = encoder(ids, mask)
    _torch_export(decoder, (torch.from_numpy(prefix), memory, mask), out / "decoder_model.onnx",
                  ["decoder_input_ids", "encoder_hidden_states", "encoder_attention_mask"],
                  ["logits"], {"decoder_input_ids": {0: "batch", 1: "target"},
                               "encoder_hidden_states": axes, "encoder_attention_mask": axes,
                               "logits": {0: "batch", 1: "target"}})
    cfg = jax_model.config
    ids_np, mask_np = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    jax_tokens = _jax_greedy(jax_model, params, {"input_ids": ids_np, "attention_mask": mask_np},
                             max_len)
    ids_kw = dict(start_id=cfg.decoder_start_token_id, eos_id=cfg.eos_token_id,
                  pad_id=cfg.pad_token_id, max_len=max_len)
    sessions = (session(out / "encoder_model.onnx"), session(out / "decoder_model.onnx"))
    ort_tokens = greedy_onnx(*sessions, batch, **ids_kw)
    forced = np.concatenate([np.full((len(ids_np), 1), cfg.decoder_start_token_id),
                             jax_tokens[:, :-1]], axis=1).astype(np.int32)
    memory_jax = jax_model.encode(params, ids_np, mask_np)
    expected = np.asarray(jax_model.decode(params, memory_jax, mask_np, forced), np.float32)
    memory_ort = sessions[0].run(None, {"input_ids": ids_np.astype(np.int64),
                                        "attention_mask": mask_np.astype(np.int64)})[0]
    got = sessions[1].run(None, {"decoder_input_ids": forced.astype(np.int64),
                                 "encoder_hidden_states": memory_ort,
                                 "encoder_attention_mask": mask_np.astype(np.int64)})[0]
    diff = float(np.max(np.abs(got - expected)))
    same = float(np.mean(np.all(ort_tokens == jax_tokens, axis=1)))
    if not diff <= TOLERANCE or same < 1.0:
        raise RuntimeError(f"ONNX Runtime differs from the JAX model on {len(texts)} sentences: "
                           f"largest logit difference {diff:.2e} (tolerance {TOLERANCE:g}), "
                           f"{same:.0%} of greedy outputs identical; the files in {out} are left "
                           f"for inspection.")
    report = {"files": ["encoder_model.onnx", "decoder_model.onnx"],
              "checked_sentences": len(texts), "max_abs_logit_diff": diff,
              "tolerance": TOLERANCE, "greedy_identical": same, "greedy_max_len": max_len}
    if quantize:
        q = [quantize_int8(out / f, out / f.replace(".onnx", "_int8.onnx"))
             for f in report["files"]]
        q_tokens = greedy_onnx(session(q[0]), session(q[1]), batch, **ids_kw)
        report["files"] += [p.name for p in q]
        report["int8_greedy_identical"] = float(np.mean(np.all(q_tokens == ort_tokens, axis=1)))
    return report


# --------------------------------------------------------------------------------------------
# The command


def export(checkpoint_ref: str, out_dir: str | Path, quantize: str = "",
           write_hf: Callable[[Path], Path] | None = None) -> dict:
    """`jaxdistill export --format onnx`: the checkpoint's Hugging Face export (`write_hf`), then
    its ONNX files beside its config and tokenizer in out_dir; for a multi-task student one
    directory per task (out_dir/<task>/) and tasks.json."""
    check_request("onnx", quantize)
    import transformers

    from jaxdistill import loading

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="jaxdistill-onnx-") as tmp:
        hf_dir = write_hf(Path(tmp) / "hf")
        listing = hf_dir / "tasks.json"
        targets = ([(hf_dir / t["dir"], out / t["dir"], t["task_id"])
                    for t in json.loads(listing.read_text())] if listing.is_file()
                   else [(hf_dir, out, None)])
        if not all((src / "config.json").is_file() and
                   json.loads((src / "config.json").read_text()).get("model_type")
                   for src, _, _ in targets):
            raise UserError(f"{checkpoint_ref}: ONNX export goes through the model's Hugging Face "
                            f"(PyTorch) class, and this kind of model has none (it exports as a "
                            f"jaxdistill-native directory); export it without --format onnx.")
        texts = sample_texts()
        reports = {}
        for src, dst, task in targets:
            model, params, _ = loading.load_pretrained(str(src if task else checkpoint_ref))
            if model.kind != "seq2seq" and model.config.head != "classifier":
                raise UserError(f"{checkpoint_ref}: ONNX export covers classifiers and "
                                f"sequence-to-sequence students; this model's head is "
                                f"'{model.config.head}'. Export it without --format onnx.")
            if model.kind == "seq2seq":
                reports[task or "model"] = export_seq2seq(src, dst, model, params, quantize,
                                                          texts)
            else:
                reports[task or "model"] = export_classifier(
                    src, dst, lambda b, m=model, p=params: _jax_logits(m, p, b), quantize, texts)
        if listing.is_file():
            shutil.copyfile(listing, out / "tasks.json")
    return {"onnx_dir": str(out), **(reports["model"] if "model" in reports
                                     else {"tasks": reports})}


def _jax_logits(model, params: dict, batch: dict[str, np.ndarray]) -> np.ndarray:
    # A DistilBERT tokenizer gives no token_type_ids; the JAX model reads zeros there.
    feed = {k: batch[k].astype(np.int32) if k in batch else np.zeros_like(batch["input_ids"],
                                                                          np.int32)
            for k in model.input_spec()}
    return np.asarray(model.apply(params, feed).logits)


def _jax_greedy(model, params: dict, batch: dict[str, np.ndarray], max_len: int) -> np.ndarray:
    """`jaxdistill evaluate`'s greedy decoding (generate.make_generate) of one batch."""
    import jax

    from jaxdistill import config as config_lib, sharding
    from jaxdistill.inference import generate as gen

    mesh = sharding.make_mesh(config_lib.MeshConfig())
    params_sh = sharding.shardings_for(model.logical_axes(), params, mesh)
    generate, batch_sh = gen.make_generate(model, params_sh, mesh, max_len)
    with mesh:
        tokens = generate(jax.device_put(params, params_sh),
                          {k: jax.device_put(v, batch_sh[k]) for k, v in batch.items()})
    return np.asarray(jax.device_get(tokens))
