"""FastBERT (Liu et al., 2020): self-distilled exit classifiers after every layer.

Stage 1 is plain fine-tuning (method `finetune`): the backbone and its final classifier.
Stage 2 is this method: backbone and final classifier frozen (`student.freeze`), a branch
classifier after each layer but the last (models/exit_branches.py, the reference's shape)
trains on

    loss = sum over branches i of KL(softmax(final) || softmax(branch_i))   (batch mean each)

as `run_fastbert.py`'s self-distillation: KLDivLoss(log_softmax(branch), softmax(final)),
summed over the layers, not averaged. No label is read, so unlabeled text trains it as well.

Departures from the reference, on purpose:
- The final classifier is BERT's own (pooler + linear), not a branch-shaped one, so that the
  exported model stays a Hugging Face BertForSequenceClassification; branches 1..L-1 have the
  reference's shape.
- The soft labels come without dropout: the reference leaves the backbone in train mode, so its
  targets are noisy. Here the frozen backbone must run without dropout (student.hidden_dropout =
  student.attention_dropout = 0); the branches keep their own attention dropout.
The branches are this method's parameters and part of the product (`exported_params`): they
are saved with the best checkpoint and written beside the export. Adaptive inference (exit at
the first layer whose branch's normalised entropy is below `speed`) is inference/early_exit.py.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods.base import STUDENT, Batch, Method, Metrics, register
from jaxdistill.models import exit_branches
from jaxdistill.models.base import Model, Outputs, Wants


@dataclasses.dataclass(frozen=True)
class FastBertOptions:
    """method.options for fastbert: the branch classifiers' shape (the reference's defaults)."""

    width: int = 128
    heads: int = 2
    dropout: float = 0.1


@register
class FastBert(Method):
    """Branch classifiers after layers 1..L-1 learn the frozen final classifier's distribution."""

    name: ClassVar[str] = "fastbert"
    Options: ClassVar[type] = FastBertOptions
    ROLES: ClassVar[dict[str, str]] = {STUDENT: "classifier"}
    exported_params: ClassVar[tuple[str, ...]] = ("branches",)

    def __init__(self, options: FastBertOptions, models: dict[str, Model]):
        super().__init__(options, models)
        cfg = self.student.config
        if cfg.num_labels < 2:
            raise ValueError("FastBERT's branches learn a class distribution; a regression "
                             "student (num_labels=1) has none")
        if cfg.num_layers < 2:
            raise ValueError("a 1-layer student has no layer to exit early from")
        if getattr(cfg, "hidden_dropout", 0) or getattr(cfg, "attention_dropout", 0):
            raise ValueError(
                "the soft labels come from the frozen final classifier without dropout: set "
                "student.hidden_dropout=0 and student.attention_dropout=0 (the backbone is "
                "frozen, so this changes nothing else; branches keep options.dropout)")
        self.shape = branch_shape(cfg, options)
        self.num_branches = cfg.num_layers - 1

    def wants(self) -> dict[str, Wants]:
        return {STUDENT: Wants(hidden_states=True)}

    def init_params(self, rng: jax.Array) -> dict:
        return {"branches": exit_branches.init(self.shape, self.num_branches, rng)}

    def param_axes(self) -> dict:
        shapes = jax.eval_shape(self.init_params, jax.random.key(0))
        return {"branches": exit_branches.axes(shapes["branches"])}

    def forward_flops_per_token(self, seq_len: int) -> float:
        return self.num_branches * exit_branches.flops_per_example(self.shape, seq_len) / seq_len

    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        out = outputs[STUDENT]
        # Hidden state i + 1 is the output of layer i; the last layer's is the final classifier's.
        hidden = jnp.stack([out.hidden_states[i + 1] for i in range(self.num_branches)])
        logits = exit_branches.apply_all(self.shape, params["branches"],
                                         jax.lax.stop_gradient(hidden), batch["attention_mask"],
                                         deterministic=rng is None, rng=rng)
        final = jax.lax.stop_gradient(out.logits)
        per_layer = [losses.kl_div_with_temperature(logits[i], final, 1.0)
                     for i in range(self.num_branches)]
        total = sum(per_layer)
        return total, {"loss/kl": total,
                       **{f"loss/kl/L{i + 1}": term for i, term in enumerate(per_layer)}}


def branch_shape(cfg, options: FastBertOptions) -> exit_branches.BranchShape:
    """The branches of a student config (hidden size, labels) with the method's options."""
    try:
        return exit_branches.shape_of(cfg, options.width, options.heads, options.dropout)
    except ValueError as e:  # build_method names the options section
        raise ValueError(str(e)) from None
