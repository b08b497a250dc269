"""Patient Knowledge Distillation (Sun et al., 2019): KD plus the teacher's intermediate [CLS].

loss = (1 - alpha) * CE + alpha * KD(T) + beta * PT

CE and KD are `kd`'s terms (PKD's `distillation_loss`, KL averaged over B*C entries). PT is
PKD's `patience_loss` with `--normalize_patience True`: the [CLS] (position 0) output of each
matched layer, L2-normalised over the hidden units, then `F.mse_loss`, which averages over
batch, matched layers and hidden units alike: the paper's sum over examples and layers of
squared distances divided by B * (M-1) * H, the scale its beta values assume. In
NLI_KD_training.py the student's side is `stack(full_output[:-1])`, the [CLS] outputs of its
layers 1..M-1 (not the embeddings), and the teacher's side the [CLS] outputs of the selected
teacher layers. Neither model's last layer is matched: KD on the logits covers it.

Layer maps (option `strategy`; numbers are 1-based layer outputs, student layer j learns from
the j-th listed teacher layer, for an N-layer teacher and an M-layer student):
  skip: teacher layers k, 2k, ..., (M-1)k with k = N / M (PKD-Skip; 12 -> 6: 2, 4, 6, 8, 10,
        the code's `--fc_layer_idx 1,3,5,7,9`)
  last: teacher layers N-M+1, ..., N-1 (PKD-Last; 12 -> 6: 7, 8, 9, 10, 11; 12 -> 3: 10, 11,
        the code's `9,10`)
`teacher_layers` lists them explicitly instead (M-1 numbers in 1..N-1).

Widths: PKD assumes the student is as wide as the teacher. When they differ, a learned
Linear(student width -> teacher width) ('proj', N(0, initializer_range), zero bias, like
TinyBERT's fit_dense), shared by all matched layers, maps the student's [CLS] states before
normalisation; it exists only when the widths differ, is trained with the student and is not
exported.

Defaults T=10, alpha=0.5, beta=100: the values picked most often by PKD's grid search
(T in {5, 10, 20}, alpha in {0.2, 0.5, 0.7}, beta in {10, 100, 500, 1000}) for its 6-layer
PKD-Skip students (result/glue/result_summary/pkd_6layer_mean.csv: beta=100 on 5 of 7 GLUE
tasks, T=10 on 4, alpha=0.5 on 4); strategy 'skip' because PKD-Skip beat PKD-Last on every
task there (vs pkd_6layer_last_mean.csv). normalize=True is the paper's loss; the code's flag
defaults to False and its grid tried both (the best MNLI, QNLI and QQP runs were unnormalised).

Regression (num_labels == 1): the CE and KD terms become MSE as in `kd`.

pooling 'mean' (not in the paper): each matched layer's states are averaged over the real
tokens (attention_mask) instead of taken at [CLS]. A mean-pooled sentence encoder such as the
packaged all-MiniLM-L6-v2 was never trained to put anything in its intermediate [CLS] states:
there they are all but the same vector for every input, so the [CLS] patience loss teaches the
student a constant (docs/results.md); the token mean carries what the layer computed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.methods import projection
from jaxdistill.methods.base import STUDENT, TEACHER, Batch, Method, Metrics, register
from jaxdistill.methods.kd import check_kd_options, check_same_labels, kd_loss
from jaxdistill.methods.layer_match import LayerMatch
from jaxdistill.models.base import NOTHING, Model, Outputs, Wants

STRATEGIES = ("skip", "last")
POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class PkdOptions:
    """method.options for pkd (defaults: PKD's grid search, see the module docstring).

    strategy: 'skip' or 'last', which teacher layers the student's layers 1..M-1 learn from.
    teacher_layers: explicit 1-based teacher layers for student layers 1..M-1 (overrides
      strategy).
    beta: weight of the patience loss; 0 turns it off (then this is `kd`).
    normalize: L2-normalise the [CLS] states before the MSE (the paper's loss).
    pooling: 'cls' (the paper: each matched layer's [CLS] state) or 'mean' (the mean of its
      states over the real tokens, for mean-pooled teachers; see the module docstring).
    """

    temperature: float = 10.0
    alpha: float = 0.5
    beta: float = 100.0
    strategy: str = "skip"
    teacher_layers: tuple[int, ...] | None = None
    normalize: bool = True
    pooling: str = "cls"

    def __post_init__(self):
        check_kd_options(self.temperature, self.alpha)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta}: must be >= 0")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: expected one of "
                             f"{', '.join(STRATEGIES)}")
        if self.teacher_layers is not None:
            layers = self.teacher_layers
            if isinstance(layers, (str, dict)) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in layers):
                raise ValueError(f"teacher_layers={layers!r}: expected a list of 1-based teacher "
                                 f"layer numbers, e.g. [2, 4, 6, 8, 10]")
            object.__setattr__(self, "teacher_layers", tuple(layers))


def pkd_layer_map(strategy: str, teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """The 1-based teacher layers that student layers 1..M-1 learn from (PKD-Skip / PKD-Last)."""
    n, m = teacher_layers, student_layers
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if not 1 <= m <= n:
        raise ValueError(f"PKD maps a student onto a deeper (or as deep) teacher; the student "
                         f"has {m} layers and the teacher {n}")
    if strategy == "last":
        return tuple(range(n - m + 1, n))
    if n % m:
        raise ValueError(
            f"strategy 'skip' takes every k-th teacher layer with k = N/M, but the teacher's "
            f"depth {n} is not a multiple of the student's depth {m}; use strategy 'last' or "
            f"list the {m - 1} teacher layers in method.options.teacher_layers")
    k = n // m
    return tuple(k * j for j in range(1, m))


def _check_teacher_layers(layers: tuple[int, ...], student: Any, teacher: Any):
    m, n = student.num_layers, teacher.num_layers
    if len(layers) != m - 1:
        raise ValueError(f"teacher_layers has {len(layers)} entries, but the {m}-layer student "
                         f"has {m - 1} intermediate layers (1..{m - 1}) to match; list one "
                         f"teacher layer for each")
    bad = [t for t in layers if not 1 <= t <= n - 1]
    if bad:
        raise ValueError(f"teacher_layers: {bad[0]} is out of range 1..{n - 1} for the "
                         f"{n}-layer teacher (1-based; its last layer is left to the KD term)")


def pool(hidden: jax.Array, mask: jax.Array | None, pooling: str) -> jax.Array:
    """[B, T, H] -> [B, H]: the [CLS] state, or the mean over the tokens where mask is 1."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = (jnp.ones(hidden.shape[:2]) if mask is None else mask).astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


@register
class Pkd(Method):
    """KD plus normalised [CLS] states of matched intermediate layers."""

    name: ClassVar[str] = "pkd"
    Options: ClassVar[type] = PkdOptions

    ROLES: ClassVar[dict[str, str]] = {STUDENT: "classifier", TEACHER: "classifier"}

    def __init__(self, options: PkdOptions, models: dict[str, Model]):
        super().__init__(options, models)
        check_same_labels(self.student, self.teacher)
        student, teacher = self.student.config, self.teacher.config
        self.regression = student.num_labels == 1
        layers: tuple[int, ...] = ()
        if options.beta > 0:
            if student.num_layers < 2:
                raise ValueError("a 1-layer student has no intermediate layer for the patience "
                                 "loss; set beta=0 (or use method kd)")
            layers = (options.teacher_layers if options.teacher_layers is not None
                      else pkd_layer_map(options.strategy, teacher.num_layers, student.num_layers))
            _check_teacher_layers(layers, student, teacher)
        # Student layer j (1-based) is hidden state j: index 0 is the embedding output.
        self.matches = tuple(LayerMatch("cls", j, t) for j, t in enumerate(layers, 1))

    # --- what each forward pass keeps ---------------------------------------------------------
    def wants(self) -> dict[str, Wants]:
        side = Wants(hidden_states=True) if self.matches else NOTHING
        return {STUDENT: side, TEACHER: side}

    # --- the projection ---------------------------------------------------------------------
    def _needs_projection(self) -> bool:
        return bool(self.matches) and (self.student.config.hidden_size
                                       != self.teacher.config.hidden_size)

    def init_params(self, rng: jax.Array) -> dict:
        """{'proj': {kernel [H_s, H_t], bias [H_t]}} when the widths differ, else {}."""
        if not self._needs_projection():
            return {}
        return {"proj": projection.init(rng, self.student.config, self.teacher.config)}

    def param_axes(self) -> dict:
        if not self._needs_projection():
            return {}
        return {"proj": projection.AXES}

    def forward_flops_per_token(self, seq_len: int) -> float:
        # The projection runs on M-1 [CLS] vectors per sequence, not per token: about
        # 2 * (M-1) * H_s * H_t / seq_len per token, well under 0.1% of a student layer.
        return 0.0

    # --- the loss ---------------------------------------------------------------------------
    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        opts = self.options
        student, teacher = outputs[STUDENT], outputs[TEACHER]
        total, metrics = kd_loss(student.logits, teacher.logits, batch["labels"],
                                 opts.temperature, opts.alpha, self.regression)
        if self.matches:
            # [layers, B, H]: the [CLS] (or mean) state of each matched layer (static indices).
            mask = batch.get("attention_mask")
            s_cls = jnp.stack([pool(student.hidden_states[m.student], mask, opts.pooling)
                               for m in self.matches])
            t_cls = jnp.stack([pool(teacher.hidden_states[m.teacher], mask, opts.pooling)
                               for m in self.matches])
            if self._needs_projection():
                s_cls = projection.apply(params["proj"], s_cls)
            term = losses.patience_loss(s_cls, t_cls, opts.normalize)
            metrics["loss/pt"] = term
            total = total + opts.beta * term
        return total, metrics
