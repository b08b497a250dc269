"""The PyTorch baseline: TinyBERT general distillation written directly with transformers.

What it computes is TinyBERT's general_distill.py:
  student_atts, student_reps = student(...)   # reps already through fit_dense
  teacher_reps, teacher_atts = teacher(...)   # detached
  att_loss = sum_i MSE(where(s_att_i <= -100, 0, s_att_i), where(t_att_{i*k+k-1} <= -100, 0, ...))
  rep_loss = sum_j MSE(fit_dense(s_rep_j), t_rep_{j*k})   j = 0 (embeddings) .. M
  loss = att_loss + rep_loss;  backward;  AdamW step
TinyBERT's modified BERT returned the masked pre-softmax scores (QK^T/sqrt(d) + mask). Stock
transformers 5 returns only probabilities, so we register an attention function that is
transformers' own eager attention except that it returns the masked scores instead of the
probabilities; `output_attentions=True` then hands back exactly what TinyBERT's model returned,
computed once (no second QK^T), and the rest of BertModel is untouched.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.common import summarize, time_steps

ATTN_IMPL = "tinybert_scores"


def _scores_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      **kwargs):
    """transformers' eager_attention_forward, returning the masked scores as 'weights'."""
    import torch

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.nn.functional.softmax(scores, dim=-1)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, scores


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPL, _scores_attention)
    AttentionMaskInterface.register(ATTN_IMPL, eager_mask)  # additive float mask, as eager


def load_bert(path: Path, dtype) -> Any:
    """transformers BertModel (no pooler: TinyBERT's loss never reads it) with our attention."""
    import torch
    from transformers import BertModel

    model, info = BertModel.from_pretrained(str(path), add_pooling_layer=False,
                                            attn_implementation=ATTN_IMPL, dtype=torch.float32,
                                            output_loading_info=True)
    if info.get("missing_keys"):
        raise RuntimeError(f"{path}: weights missing when loading into transformers: "
                           f"{info['missing_keys']}")
    return model.to(dtype)


def tinybert_loss(s_out, t_out, fit_dense, layers_per_block: int):
    """TinyBERT general_distill.py's att_loss + rep_loss (all MSEs are means, fp32)."""
    import torch

    mse = torch.nn.functional.mse_loss
    att_loss = 0.0
    for i, s_att in enumerate(s_out.attentions):
        t_att = t_out.attentions[i * layers_per_block + layers_per_block - 1]
        s_att, t_att = s_att.float(), t_att.float()
        s_att = torch.where(s_att <= -1e2, torch.zeros_like(s_att), s_att)
        t_att = torch.where(t_att <= -1e2, torch.zeros_like(t_att), t_att)
        att_loss = att_loss + mse(s_att, t_att)
    rep_loss = 0.0
    for j, s_rep in enumerate(s_out.hidden_states):
        t_rep = t_out.hidden_states[j * layers_per_block]
        rep_loss = rep_loss + mse(fit_dense(s_rep.float()), t_rep.float())
    return att_loss + rep_loss


class TorchTinyBert:
    """Teacher, student, fit_dense and AdamW, set up from the JAX side's initial weights."""

    def __init__(self, teacher_dir: Path, student_dir: Path, fit_dense: dict, bc, lr: float,
                 device: str = "cpu"):
        import torch

        self.device = device
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        self.student_autocast = bc.dtype != "float32"
        self.student_dtype = dtypes[bc.dtype]
        self.teacher = load_bert(teacher_dir, dtypes[bc.teacher_dtype]).to(device).eval()
        self.teacher.requires_grad_(False)
        self.student = load_bert(student_dir, torch.float32).to(device).train()
        for name, p in self.student.config.to_dict().items():
            if name.endswith("dropout_prob") and p:
                raise RuntimeError(f"student {name}={p}: the benchmark runs without dropout")
        kernel = torch.from_numpy(np.array(fit_dense["kernel"], np.float32))
        self.fit_dense = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
        with torch.no_grad():
            self.fit_dense.weight.copy_(kernel.T)
            self.fit_dense.bias.copy_(torch.from_numpy(np.array(fit_dense["bias"], np.float32)))
        self.fit_dense.to(device)
        self.k = self.teacher.config.num_hidden_layers // self.student.config.num_hidden_layers
        params = list(self.student.parameters()) + list(self.fit_dense.parameters())
        self.params = params
        # As jaxdistill's optimizer: AdamW, no decay on 1-D leaves, global-norm clip 1.0.
        self.opt = torch.optim.AdamW(
            [{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.01},
             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
            lr=lr, betas=(0.9, 0.999), eps=1e-6)

    def loss(self, input_ids, attention_mask, token_type_ids):
        import torch

        with torch.no_grad():
            t_out = self.teacher(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids, output_hidden_states=True,
                                 output_attentions=True)
        with torch.autocast(self.device, dtype=self.student_dtype, enabled=self.student_autocast):
            s_out = self.student(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids, output_hidden_states=True,
                                 output_attentions=True)
        return tinybert_loss(s_out, t_out, self.fit_dense, self.k)

    def step_fn(self, loss_fn: Callable) -> Callable:
        import torch

        def step(batch: dict):
            self.opt.zero_grad(set_to_none=True)
            loss = loss_fn(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            return loss.detach()

        return step


def torch_batch(batch: dict[str, np.ndarray], device: str = "cpu") -> dict:
    import torch

    return {k: torch.from_numpy(batch[k].astype(np.int64)).to(device)
            for k in ("input_ids", "attention_mask", "token_type_ids")}


def run(jr, bc, modes: list[str], threads: int, flops_per_step: float,
        peak_flops: float | None, breakdown: bool = False, device: str = "cpu") -> dict:
    """Time each torch mode ('eager', 'compile'); each starts from the same initial weights.

    device 'cuda' when the JAX side ran on a GPU, so both race on the same chip.
    """
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # the expected "pooler UNEXPECTED" load report
    transformers.utils.logging.disable_progress_bar()
    _register_attention()
    batch = torch_batch(jr.batch, device)
    tokens = bc.batch * bc.seq
    out: dict[str, Any] = {"torch_version": torch.__version__,
                           "transformers_version": transformers.__version__,
                           "torch_threads": torch.get_num_threads(), "torch_device": device}
    for mode in modes:
        model = TorchTinyBert(jr.teacher_dir, jr.student_dir, jr.fit_dense, bc, bc.learning_rate,
                              device)
        try:
            out[mode] = _run_mode(model, mode, batch, bc, tokens, flops_per_step, peak_flops)
        except Exception as e:  # report a broken torch.compile instead of failing the benchmark
            if mode != "compile":
                raise
            out[mode] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
        if breakdown and mode == "eager" and device == "cpu":
            out["breakdown_eager"] = _breakdown(
                TorchTinyBert(jr.teacher_dir, jr.student_dir, jr.fit_dense, bc, bc.learning_rate),
                batch, bc.repeats)
    return out


def _run_mode(model: TorchTinyBert, mode: str, batch: dict, bc, tokens: int,
              flops_per_step: float, peak_flops: float | None) -> dict:
    import torch

    loss_fn = model.loss if mode == "eager" else torch.compile(model.loss)
    step = model.step_fn(loss_fn)
    t0 = time.perf_counter()
    first = float(step(batch))  # compiles in 'compile' mode
    first_s = time.perf_counter() - t0
    for _ in range(max(bc.warmup - 1, 0)):
        step(batch)

    def run_steps(n: int) -> None:
        for _ in range(n):
            last = step(batch)
        last.cpu()  # waits for the device, as the JAX side's block_until_ready

    times = time_steps(run_steps, bc.steps, bc.repeats)
    return {**summarize(times, tokens, flops_per_step, peak_flops), "loss": first,
            "first_step_s": first_s, "loss_after_steps": float(step(batch))}


def _breakdown(model: TorchTinyBert, batch: dict, repeats: int) -> dict:
    """Eager seconds of teacher forward, student forward+loss+backward, clip+AdamW."""
    import statistics

    import torch

    def teacher():
        with torch.no_grad():
            return model.teacher(**batch, output_hidden_states=True, output_attentions=True)

    t_out = teacher()

    def student():
        model.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=model.student_dtype, enabled=model.student_autocast):
            s_out = model.student(**batch, output_hidden_states=True, output_attentions=True)
        tinybert_loss(s_out, t_out, model.fit_dense, model.k).backward()

    def update():
        torch.nn.utils.clip_grad_norm_(model.params, 1.0)
        model.opt.step()

    student()
    parts = {"teacher_forward_s": teacher, "student_forward_backward_loss_s": student,
             "optimizer_update_s": update}
    out = {}
    for name, fn in parts.items():
        times = []
        for _ in range(max(repeats, 3)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out
