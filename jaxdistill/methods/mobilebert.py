"""MobileBERT (Sun et al., 2020): layer-wise knowledge transfer, then pretraining distillation.

The student keeps the teacher's depth and block width; student layer l learns from teacher layer
l through
  feature-map transfer  MSE between the two layer outputs, each through a LayerNorm without
                        parameters (contrib `layer_norm(trainable=False)`), factor 100;
  attention transfer    KL(teacher || student) of every head's attention distribution, factor 1;
  mean / variance       optional: MSE of the per-token means (beta, 5000 in the paper) and L1 of
                        the per-token variances (gamma, 5),
each summed over the gated layers times its factor / num_layers, as `run_pretraining.py` does.
Pretraining distillation is MLM cross entropy against `ground_truth_ratio` * one-hot +
(1 - ratio) * softmax(teacher logits / T) at the masked positions (the paper's 0.5 / 0.5; no NSP).

`phases` is the schedule, a list run in order, each a pure function of the step (so resuming
inside any phase is exact):
  progressive   one sub-phase of `steps_per_layer` per layer: only layer l's transfer loss is on;
                layer l's learning rate is `phase_lr_multiplier` (3x), the layers below it
                `lower_lr_ratio` (0.1) of that, the layers above it and every non-encoder
                parameter are frozen (`distill_util.layer_wise_learning_rate`), and each
                sub-phase warms up again (`get_background_lr`, `phase_warmup`);
  joint         every layer's transfer loss at once, the encoder trains, the rest frozen;
  distillation  pretraining distillation of the whole student.
A phase's `steps` is its length; the last phase may leave it out and run to the end of the run
(a run longer than its schedule keeps the last phase's rule).
`train_embeddings` lets the embeddings train with layer 0 during the transfer phases: for a
teacher whose embeddings the student cannot copy (a BERT teacher rather than IB-BERT, whose
embedding the paper copies into the student and freezes). The heads (the MLM head's transform
and bias) get no gradient from a transfer loss and stay frozen until pretraining distillation:
with an update scale of 0 a tensor gets no update at all (no weight decay, its optimizer moments
kept), as in the reference, where it is not in the transfer phase's variable list.

Deviations (docs/decisions.md): the mean/variance terms compare layer l with teacher layer l
(the reference compares the student layer with the stack of every teacher layer, a bug); the
feature-map and attention means run over real tokens and real queries only (the reference
includes padding); Adam moments of a layer are not reset at each phase boundary (the
reference's zero learning rate at a phase's first step zeroes them).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import losses
from jaxdistill.config import entries_of
from jaxdistill.methods.base import STUDENT, TEACHER, Batch, Method, Metrics, register
from jaxdistill.models.base import EMBEDDINGS, Model, Outputs, Wants

PHASE_KINDS = ("progressive", "joint", "distillation")
_OPEN_END = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True)
class Phase:
    """One entry of `phases`: progressive takes `steps_per_layer`, the others `steps` (which the
    last phase may leave out). `lr_multiplier` scales the learning rate for the whole phase."""

    kind: str
    steps: int | None = None
    steps_per_layer: int | None = None
    lr_multiplier: float = 1.0

    def __post_init__(self):
        if self.kind not in PHASE_KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {', '.join(PHASE_KINDS)}")
        if self.kind == "progressive":
            if self.steps is not None:
                raise ValueError("a progressive phase is as long as steps_per_layer times the "
                                 "student's layers: give steps_per_layer, not steps")
            if self.steps_per_layer is None or self.steps_per_layer < 1:
                raise ValueError("a progressive phase needs steps_per_layer >= 1")
        else:
            if self.steps_per_layer is not None:
                raise ValueError(f"steps_per_layer belongs to progressive phases; a "
                                 f"'{self.kind}' phase takes steps")
            if self.steps is not None and self.steps < 1:
                raise ValueError(f"steps={self.steps}: must be >= 1")
        if self.lr_multiplier < 0:
            raise ValueError(f"lr_multiplier={self.lr_multiplier}: must be >= 0")


DEFAULT_PHASES = (Phase("progressive", steps_per_layer=10000), Phase("distillation"))


@dataclasses.dataclass(frozen=True)
class MobileBertOptions:
    """method.options for mobilebert (see the module docstring)."""

    phases: tuple[Phase, ...] = DEFAULT_PHASES
    hidden_factor: float = 100.0
    attention_factor: float = 1.0
    mean_factor: float = 0.0
    variance_factor: float = 0.0
    ground_truth_ratio: float = 0.5
    temperature: float = 1.0
    phase_lr_multiplier: float = 3.0
    lower_lr_ratio: float = 0.1
    phase_warmup: bool = True
    train_embeddings: bool = False

    def __post_init__(self):
        for key in ("hidden_factor", "attention_factor", "mean_factor", "variance_factor",
                    "phase_lr_multiplier", "lower_lr_ratio"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 0")
        if not 0 <= self.ground_truth_ratio <= 1:
            raise ValueError(f"ground_truth_ratio={self.ground_truth_ratio}: must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0")
        parsed = entries_of(Phase, self.phases, "phases", "{kind, steps | steps_per_layer}")
        if not parsed:
            raise ValueError("phases: the list is empty; give at least one phase")
        open_ended = [i for i, p in enumerate(parsed[:-1])
                      if p.kind != "progressive" and p.steps is None]
        if open_ended:
            raise ValueError(f"phases[{open_ended[0]}] has no steps: only the last phase may run "
                             f"to the end of the run")
        object.__setattr__(self, "phases", tuple(parsed))

    @property
    def transfers(self) -> bool:
        return any(p.kind != "distillation" for p in self.phases)

    @property
    def distills(self) -> bool:
        return any(p.kind == "distillation" for p in self.phases)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of steps with one rule: `layer` is the progressive phase's layer (else None)."""

    start: int
    stop: int  # exclusive; _OPEN_END for an open-ended last phase
    kind: str
    layer: int | None
    lr_multiplier: float


def segments(phases: tuple[Phase, ...], num_layers: int) -> list[Segment]:
    """The schedule unrolled: one segment per progressive layer and per other phase."""
    out, start = [], 0
    for phase in phases:
        if phase.kind == "progressive":
            for layer in range(num_layers):
                stop = start + phase.steps_per_layer
                out.append(Segment(start, stop, phase.kind, layer, phase.lr_multiplier))
                start = stop
        else:
            stop = _OPEN_END if phase.steps is None else start + phase.steps
            out.append(Segment(start, stop, phase.kind, None, phase.lr_multiplier))
            start = stop
    return out


def background_lr(t: jax.Array, length: jax.Array) -> jax.Array:
    """`distill_util.get_background_lr` inside one progressive sub-phase of `length` steps, t steps
    in: a linear warmup over its first 10% (0 at t = 0) meeting a slow square-root decay from 1
    to 0.9; 1 for a sub-phase of one step."""
    t, n = jnp.asarray(t, jnp.float32), jnp.asarray(length, jnp.float32)
    left = 1.0 - jnp.minimum(t, n) / jnp.maximum(n, 1.0)
    return jnp.where(n > 1, jnp.minimum(0.1 * jnp.sqrt(left) + 0.9, 10.0 * (1.0 - left)), 1.0)


def _stacked(per_layer: Any) -> jax.Array:
    return per_layer if isinstance(per_layer, jax.Array) else jnp.stack(per_layer)


@register
class MobileBert(Method):
    """Layer-wise transfer (progressive or joint) and pretraining distillation, by phases."""

    name: ClassVar[str] = "mobilebert"
    Options: ClassVar[type] = MobileBertOptions
    DATA_KIND: ClassVar[str] = "mlm_corpus"
    reads_step: ClassVar[bool] = True

    @classmethod
    def roles(cls, options: MobileBertOptions) -> dict[str, str]:
        # The student always carries its MLM head: its product is a masked LM (HF's
        # MobileBertForMaskedLM); the teacher needs one only to distil predictions.
        return {STUDENT: "mlm", TEACHER: "mlm" if options.distills else "none"}

    def __init__(self, options: MobileBertOptions, models: dict[str, Model]):
        super().__init__(options, models)
        s, t = self.student.config, self.teacher.config
        for key, why in (("num_layers", "student layer l learns from teacher layer l"),
                         ("hidden_size", "feature maps are compared without a projection"),
                         ("num_heads", "attention distributions are compared head by head")):
            if options.transfers and getattr(s, key, None) != getattr(t, key, None):
                raise ValueError(
                    f"the student's {key} {getattr(s, key, None)} differs from the teacher's "
                    f"{getattr(t, key, None)}, but {why}: MobileBERT keeps the teacher's depth, "
                    f"block width and head count and narrows the inside of each block")
        self.num_layers = s.num_layers
        self.segments = segments(options.phases, s.num_layers)
        self._tables()
        self._layer_ids = self.student.layer_ids()

    # --- the schedule as tables indexed by segment ---------------------------------------------
    def _tables(self) -> None:
        opts, n = self.options, self.num_layers
        gates, layer_lr, other_lr, head_lr = [], [], [], []
        distill, starts, lengths, warm = [], [], [], []
        for seg in self.segments:
            ids = np.arange(n)
            if seg.kind == "progressive":
                gate = (ids == seg.layer).astype(np.float32)
                lr = np.where(ids == seg.layer, 1.0, np.where(ids < seg.layer, opts.lower_lr_ratio,
                                                              0.0)) * opts.phase_lr_multiplier
                other = lr[0] if opts.train_embeddings else 0.0
                head = 0.0
            elif seg.kind == "joint":
                gate, lr = np.ones(n, np.float32), np.ones(n)
                other = 1.0 if opts.train_embeddings else 0.0
                head = 0.0
            else:
                gate, lr, other, head = np.zeros(n, np.float32), np.ones(n), 1.0, 1.0
            gates.append(gate)
            layer_lr.append(lr * seg.lr_multiplier)
            other_lr.append(other * seg.lr_multiplier)
            head_lr.append(head * seg.lr_multiplier)
            distill.append(float(seg.kind == "distillation"))
            starts.append(seg.start)
            lengths.append(seg.stop - seg.start)
            warm.append(seg.kind == "progressive" and opts.phase_warmup)
        self._gates = np.stack(gates)
        self._layer_lr = np.stack(layer_lr).astype(np.float32)
        self._other_lr = np.asarray(other_lr, np.float32)
        self._head_lr = np.asarray(head_lr, np.float32)
        self._distill = np.asarray(distill, np.float32)
        self._starts = np.asarray(starts, np.int32)
        self._lengths = np.asarray(lengths, np.int32)
        self._warm = np.asarray(warm)

    def _index(self, step: jax.Array) -> jax.Array:
        return jnp.maximum(jnp.searchsorted(jnp.asarray(self._starts[1:]), step, side="right"), 0)

    def _background(self, step: jax.Array, index: jax.Array) -> jax.Array:
        """The warmup factor of the current progressive sub-phase (1 elsewhere)."""
        factor = background_lr(step - jnp.asarray(self._starts)[index],
                               jnp.asarray(self._lengths)[index])
        return jnp.where(jnp.asarray(self._warm)[index], factor, 1.0)

    def update_scale(self, step: jax.Array, params: dict) -> dict:
        index = self._index(step)
        background = self._background(step, index)
        layer_lr = jnp.asarray(self._layer_lr)[index] * background
        other_lr = jnp.asarray(self._other_lr)[index] * background
        head_lr = jnp.asarray(self._head_lr)[index] * background

        def scale(layer_id: Any, leaf: jax.Array) -> jax.Array:
            if isinstance(layer_id, np.ndarray):  # layers stacked on a leading axis (scan)
                return layer_lr[layer_id].reshape((-1,) + (1,) * (leaf.ndim - 1))
            if layer_id >= 0:
                return layer_lr[layer_id]
            return other_lr if layer_id == EMBEDDINGS else head_lr

        return {"student": jax.tree.map(scale, self._layer_ids, params["student"]),
                "method": jax.tree.map(lambda x: jnp.ones((), x.dtype), params["method"])}

    # --- what each forward pass keeps ---------------------------------------------------------
    def wants(self) -> dict[str, Wants]:
        opts = self.options
        transfer = Wants(hidden_states=True, attention_probs=opts.attention_factor > 0,
                         logits_at_masked=True) if opts.transfers else Wants(logits_at_masked=True)
        teacher = dataclasses.replace(transfer, logits_at_masked=opts.distills)
        return {STUDENT: transfer, TEACHER: teacher}

    # --- the loss -------------------------------------------------------------------------------
    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None, step: jax.Array | None = None
             ) -> tuple[jax.Array, Metrics]:
        del params, rng
        opts = self.options
        student, teacher = outputs[STUDENT], outputs[TEACHER]
        step = jnp.zeros((), jnp.int32) if step is None else step
        index = self._index(step)
        metrics: Metrics = {}
        total = jnp.zeros((), jnp.float32)
        if opts.transfers:
            gate = jnp.asarray(self._gates)[index]  # [L]
            mask = batch["attention_mask"]
            s_h = _stacked(student.hidden_states)[1:]
            t_h = _stacked(teacher.hidden_states)[1:]
            terms = {"feature_map": (opts.hidden_factor,
                                     jax.vmap(losses.feature_map_mse, (0, 0, None))(s_h, t_h, mask))}
            if opts.attention_factor > 0:
                terms["attention"] = (opts.attention_factor, jax.vmap(
                    losses.attention_kl, (0, 0, None))(_stacked(student.attention_probs),
                                                       _stacked(teacher.attention_probs), mask))
            if opts.mean_factor > 0 or opts.variance_factor > 0:
                means, variances = jax.vmap(losses.mean_variance_terms, (0, 0, None))(s_h, t_h, mask)
                terms["mean"] = (opts.mean_factor, means)
                terms["variance"] = (opts.variance_factor, variances)
            for key, (factor, per_layer) in terms.items():
                term = factor * jnp.sum(gate * per_layer) / self.num_layers
                metrics[f"loss/{key}"] = term
                total = total + term
        if opts.distills:
            term = losses.distillation_mlm(student.logits, teacher.logits, batch["masked_ids"],
                                    batch["masked_weights"], opts.ground_truth_ratio,
                                    opts.temperature)
            on = jnp.asarray(self._distill)[index]
            metrics["loss/distill_mlm"] = on * term
            total = total + on * term
        metrics["phase"] = index.astype(jnp.float32)
        return total, metrics
