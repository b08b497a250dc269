"""The interface every distillation method implements; the train loop knows nothing else.

A method says which intermediates each forward pass must capture, which heads the models need,
owns any trainable parameters of its own (e.g. TinyBERT's projections from student width to
teacher width), and turns (student outputs, teacher outputs, batch) into a scalar loss plus a
dict of named terms. `loss` runs inside jit: it must be a pure function.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax

from jaxdistill.models.bert import BertConfig, Capture, EncoderOutputs

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Method(abc.ABC):
    """Strategy for one distillation recipe. Construct with `Method(options, student, teacher)`."""

    name: ClassVar[str]
    Options: ClassVar[type]  # frozen dataclass of the method's config keys (method.options.*)

    def __init__(self, options: Any, student: BertConfig, teacher: BertConfig):
        self.options = options
        self.student = student
        self.teacher = teacher

    # --- what the models must provide -------------------------------------------------------
    student_head: ClassVar[str] = "none"
    teacher_head: ClassVar[str] = "none"
    # 'random' or 'teacher_layers': the student's default initialisation for this method.
    default_student_init: ClassVar[str] = "random"
    # False for methods that train without a teacher (plain MLM): the step skips its forward.
    needs_teacher: ClassVar[bool] = True

    @abc.abstractmethod
    def student_capture(self) -> Capture: ...

    @abc.abstractmethod
    def teacher_capture(self) -> Capture: ...

    def uses_masked_positions(self) -> bool:
        """True when MLM logits are only needed at the batch's `masked_positions`."""
        return False

    # --- the method's own trainable parameters ----------------------------------------------
    def init_params(self, rng: jax.Array) -> dict:
        """Extra trainable parameters (trained with the student, never exported with it)."""
        del rng
        return {}

    def param_axes(self) -> dict:
        """Logical axis names (PartitionSpec pytree) for `init_params`' output."""
        return {}

    def forward_flops_per_token(self) -> float:
        """Model FLOPs per token of the method's own layers (forward), for MFU accounting."""
        return 0.0

    # --- the loss ---------------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, params: dict, student: EncoderOutputs, teacher: EncoderOutputs | None,
             batch: Batch) -> tuple[jax.Array, Metrics]:
        """(scalar loss, {'loss/<term>': value, ...}); pure, runs inside jit."""


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


def options_keys(cls: type[Method]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Options)]
