"""The interface every distillation method implements; the train loop knows nothing else.

A method receives its models by role (`models["student"]`, and zero or more teachers such as
`models["teacher"]`), says which head each role must carry (`roles`) and which intermediates
each forward pass must materialise (`wants`), owns any trainable parameters of its own (e.g.
TinyBERT's projection from student width to teacher width) and says which of those belong to the
exported model (`exported_params`), and turns the outputs of every role plus the batch into a
scalar loss and a dict of named terms. `loss` runs inside jit: it must be a pure function.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax

from jaxdistill.methods.layer_match import LayerMatch, weight_matches
from jaxdistill.models.base import NOTHING, Model, Outputs, Wants

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
STUDENT = "student"
TEACHER = "teacher"


class Method(abc.ABC):
    """Strategy for one distillation recipe. Construct with `Method(options, models)`."""

    name: ClassVar[str]
    Options: ClassVar[type]  # frozen dataclass of the method's config keys (method.options.*)
    # 'random' or 'teacher_layers': the student's initialisation when student.init is 'default'.
    default_student_init: ClassVar[str] = "random"

    def __init__(self, options: Any, models: dict[str, Model]):
        self.options = options
        self.models = models

    # Role -> the head its model must carry ('none', 'mlm', 'classifier'); always has 'student'.
    # Every other role is a frozen teacher ('teacher', or named ones). `roles` may depend on the
    # options instead (TinyBERT's stages).
    ROLES: ClassVar[dict[str, str]] = {}
    # Subtrees of the method's own params that are part of the product (e.g. exit classifiers):
    # saved with the best checkpoint and written beside the exported model.
    exported_params: ClassVar[tuple[str, ...]] = ()
    # Whether the loss weights the label term by `batch["labeled"]`: training data may then hold
    # rows without a gold label (teacher-labelled augmentation). Other methods refuse such data.
    trains_on_unlabeled_rows: ClassVar[bool] = False
    # The kind of training data it trains on (train/kinds/): 'mlm_corpus' (general distillation,
    # `jaxdistill pretrain`), 'task' (one classification task), 'tasks' (one student on several
    # tasks: batches carry their task's span of the shared output layer), 'seq2seq' (source ->
    # target text). `data_kind` may read the options instead (TinyBERT's stages).
    DATA_KIND: ClassVar[str] = "task"
    # Whether `loss` takes `step=` (the optimizer updates done before this one, a traced int32
    # scalar): losses that follow a schedule of phases (MobileBERT's progressive transfer).
    reads_step: ClassVar[bool] = False

    # --- the models it needs --------------------------------------------------------------------
    @classmethod
    def roles(cls, options: Any) -> dict[str, str]:
        del options
        return dict(cls.ROLES)

    @classmethod
    def data_kind(cls, options: Any) -> str:
        del options
        return cls.DATA_KIND

    @classmethod
    def teacher_roles(cls, options: Any) -> tuple[str, ...]:
        return tuple(r for r in cls.roles(options) if r != STUDENT)

    @property
    def student(self) -> Model:
        return self.models[STUDENT]

    @property
    def teacher(self) -> Model | None:
        return self.models.get(TEACHER)

    def wants(self) -> dict[str, Wants]:
        """What each role's forward pass materialises beyond its logits (default: nothing)."""
        return {role: NOTHING for role in self.models}

    def student_init_matches(self) -> tuple[LayerMatch, ...]:
        """'weights' matches a 'teacher_layers' student copies: evenly spaced teacher layers
        from the first to the last (DistilBERT's 12 -> 6: 0, 2, 4, 7, 9, 11)."""
        return weight_matches(self.teacher.config.num_layers, self.student.config.num_layers)

    def batch_keys(self) -> dict[str, str]:
        """Batch keys beyond the models' inputs and the labels that `loss` reads -> how to get
        them (teacher-written data, e.g. stored teacher logits)."""
        return {}

    # --- the method's own trainable parameters ------------------------------------------------
    def init_params(self, rng: jax.Array) -> dict:
        """Extra trainable parameters, trained with the student."""
        del rng
        return {}

    def param_axes(self) -> dict:
        """Logical axis names (PartitionSpec pytree) for `init_params`' output."""
        return {}

    def forward_flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs per token of the method's own layers (forward), for MFU accounting."""
        del seq_len
        return 0.0

    def teacher_layers_read(self, role: str) -> int | None:
        """How many of teacher `role`'s bottom layers the loss reads, when it reads nothing above
        them (no logits, no later layer): XLA then drops the rest of an unrolled teacher, and
        the FLOP count (MFU) leaves it out. None: the whole teacher."""
        del role
        return None

    def update_scale(self, step: jax.Array, params: dict) -> Any:
        """Per-parameter multipliers of this step's update, a pytree shaped like `params`
        ({'student', 'method'}) whose leaves broadcast against theirs, or None (all 1). A 0 also
        keeps the parameter's gradient out of the optimizer: the parameter is frozen this step.
        Pure; traced inside the step (MobileBERT's layer-wise learning rates)."""
        del step, params
        return None

    # --- the loss -------------------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, params: dict, outputs: dict[str, Outputs], batch: Batch,
             rng: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
        """(scalar loss, {'loss/<term>': value, ...}) from every role's outputs; pure.

        rng: a key for the method's own stochastic layers (dropout), None when evaluating.
        """


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls
