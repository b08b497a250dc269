"""The interface every architecture implements, and the registry of model kinds.

A `Model` wraps one architecture's config: it initialises parameters, names their logical axes,
and runs `apply(params, batch, wants=..., train=...)`, a pure function returning one `Outputs`
pytree. The batch is the dict of arrays the model reads (`input_spec`); `wants` names the
intermediates a method asked for, so nothing is materialised that no loss reads. Methods and the
training loop see only this interface, never an architecture's modules.

Kinds are registered by name (`@register`); recipes name them (`student.kind: bert`) and
checkpoint metadata records them, so `from_meta` rebuilds a model from a checkpoint alone.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxdistill.errors import UserError, lookup

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Wants:
    """Which intermediates a forward pass materialises (each one costs memory and time).

    hidden_states: every layer's output (index 0 = the embedding output).
    attention_scores / attention_probs: per layer, before / after the softmax.
    attention_qkv: per layer, the queries, keys and values the attention reads (MiniLM's
        relations), [B, T, heads, head_dim] each.
    attention_layers: the 0-based layers whose attention features (scores, probs, q/k/v) are
        kept (None: every layer); the other layers form and keep none of them.
    logits_at_masked: vocabulary logits only at `batch["masked_positions"]` (MLM losses).
    A model that has no such feature (attention in a recurrent model) raises when asked.
    """

    hidden_states: bool = False
    attention_scores: bool = False
    attention_probs: bool = False
    attention_layers: tuple[int, ...] | None = None
    logits_at_masked: bool = False
    attention_qkv: bool = False

    def __post_init__(self):
        if self.attention_layers is not None:
            object.__setattr__(self, "attention_layers", tuple(sorted(set(self.attention_layers))))

    @property
    def attention(self) -> bool:
        return self.attention_scores or self.attention_probs or self.attention_qkv

    @property
    def attention_fields(self) -> tuple[str, ...]:
        """The per-layer attention features asked for, as `Outputs` field names."""
        return tuple(name for name, on in (
            ("attention_scores", self.attention_scores), ("attention_probs", self.attention_probs),
            ("attention_queries", self.attention_qkv), ("attention_keys", self.attention_qkv),
            ("attention_values", self.attention_qkv)) if on)

    def keeps_attention_of(self, i: int) -> bool:
        return self.attention and (self.attention_layers is None or i in self.attention_layers)

    def for_layer(self, i: int) -> "Wants":
        """What layer i keeps (attention_layers resolved)."""
        keep = self.keeps_attention_of(i)
        return Wants(self.hidden_states, self.attention_scores and keep,
                     self.attention_probs and keep, attention_qkv=self.attention_qkv and keep)

    def __or__(self, other: "Wants") -> "Wants":
        wanting = [w.attention_layers for w in (self, other) if w.attention]
        layers = (None if not wanting or None in wanting
                  else tuple(sorted(set().union(*wanting))))
        return Wants(self.hidden_states or other.hidden_states,
                     self.attention_scores or other.attention_scores,
                     self.attention_probs or other.attention_probs, layers,
                     self.logits_at_masked or other.logits_at_masked,
                     self.attention_qkv or other.attention_qkv)


NOTHING = Wants()
EVERYTHING = Wants(True, True, True, attention_qkv=True)
EMBEDDINGS, HEADS = -1, -2  # Model.layer_ids of the parameters outside the encoder layers

PerLayer = tuple[jax.Array | None, ...] | jax.Array


@flax.struct.dataclass
class Outputs:
    """One forward pass, as named features (TextBrewer's adaptor keys). Unasked fields are None.

    Per-layer fields are indexed by layer (`hidden_states[j]`): tuples of arrays, or one array
    stacked on axis 0 (a scanned encoder). hidden_states has num_layers + 1 entries, index 0 the
    embedding output; attention_scores/probs have num_layers entries of [B, heads, T, T],
    attention_queries/keys/values of [B, T, heads, head_dim]; a layer whose attention was not
    asked for (`Wants.attention_layers`) has None there.
    logits: [B, num_labels] (classifier), [B, T, V] or [B, P, V] (MLM, `logits_at_masked`).
    extras: anything else a model returns (e.g. per-layer exit logits), by name.
    """

    last_hidden_state: jax.Array | None = None
    hidden_states: PerLayer | None = None
    attention_scores: PerLayer | None = None
    attention_probs: PerLayer | None = None
    pooled: jax.Array | None = None
    logits: jax.Array | None = None
    extras: dict = flax.struct.field(default_factory=dict)
    attention_queries: PerLayer | None = None
    attention_keys: PerLayer | None = None
    attention_values: PerLayer | None = None


class Model(abc.ABC):
    """One architecture behind a small interface. Construct with `Kind(config)`.

    Config: a frozen dataclass with at least `kind`, `head` and `num_labels`. `HEADS` lists the
    heads it can carry ('none', 'mlm', 'classifier'). `RUNTIME_FIELDS` are the config fields that
    never change the function computed or the parameter shapes (dtypes, dropout, layout), which
    a caller may change on a loaded checkpoint. `INHERITED_FIELDS` are taken from the teacher
    when a recipe leaves them out (a student reads the teacher's token ids).
    """

    kind: ClassVar[str]
    Config: ClassVar[type]
    HEADS: ClassVar[tuple[str, ...]] = ("classifier",)
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ()
    INHERITED_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any):
        if getattr(config, "kind", None) != self.kind:
            raise ValueError(f"{type(self).__name__} needs a config of kind {self.kind!r}, got "
                             f"{getattr(config, 'kind', None)!r}")
        self.config = config

    # --- what it reads and what it computes ----------------------------------------------------
    @abc.abstractmethod
    def input_spec(self) -> dict[str, int]:
        """Batch keys the model reads -> their number of dimensions (batch axis first)."""

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> dict:
        """Random parameters (plain arrays, no axis metadata); jit-able."""

    @abc.abstractmethod
    def logical_axes(self) -> Any:
        """Pytree of PartitionSpecs of logical axis names, matching `init`'s output."""

    @abc.abstractmethod
    def apply(self, params: dict, batch: Batch, *, wants: Wants = NOTHING, train: bool = False,
              rngs: dict | None = None) -> Outputs:
        """The forward pass; pure. `train` turns dropout on (needs rngs['dropout'])."""

    @abc.abstractmethod
    def forward_flops_per_token(self, seq_len: int, predictions_per_seq: int | None = None) -> float:
        """Model FLOPs of one forward pass per input token, for MFU and evaluation reports.

        predictions_per_seq: with `logits_at_masked`, how many positions get vocabulary logits.
        """

    def max_seq_len(self) -> int | None:
        """The longest input it reads (learned positions), None when unbounded."""
        return None

    @classmethod
    def student_defaults(cls, fields: dict) -> dict:
        """A student's config fields after the teacher's were inherited (a hook per kind)."""
        return fields

    @classmethod
    def vocabulary_from(cls, fields: dict, texts: Sequence[tuple[str, str | None]],
                        out_dir: Path) -> dict | None:
        """A kind with a vocabulary of its own (words, not the teacher's pieces) builds it from
        the training (text_a, text_b) pairs, saves its tokenizer to `out_dir` and returns the
        config fields with its size. None (the default): the kind reads the teacher's ids."""
        return None

    def initial_params(self, rng: jax.Array, tokenizer_dir: Path) -> dict | None:
        """First host params that depend on the vocabulary (pretrained word vectors), for a
        student built with `vocabulary_from`; None: `init` draws them."""
        return None

    def word_embeddings(self, params: dict) -> Any:
        """[vocab, width] input word-embedding table, for methods that look words up in it."""
        raise UserError(f"A '{self.kind}' model has no word-embedding table.")

    def with_word_embeddings(self, params: dict, table: Any) -> dict:
        """`params` with its word-embedding table replaced by `table` (same shape)."""
        raise UserError(f"A '{self.kind}' model has no word-embedding table to set.")

    def num_params(self) -> int:
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))

    # --- variants of the same architecture -----------------------------------------------------
    def replace(self, **changes: Any) -> "Model":
        """The same kind with some config fields changed (validated by the config)."""
        bad = sorted(set(changes) - {f.name for f in dataclasses.fields(self.config)})
        if bad:
            raise ValueError(f"{self.kind} models have no config field {', '.join(bad)}")
        return type(self)(dataclasses.replace(self.config, **changes))

    def with_head(self, head: str, num_labels: int | None = None) -> "Model":
        if head not in self.HEADS:
            raise UserError(f"A '{self.kind}' model cannot carry a '{head}' head (it has: "
                            f"{', '.join(self.HEADS)}); pick a method that needs one of those.")
        return self.replace(head=head, num_labels=num_labels or self.config.num_labels)

    def label_slice(self, params: dict, start: int, stop: int) -> tuple["Model", dict]:
        """This classifier with classes start..stop-1 only, and its params: one task's head of a
        multi-task classifier whose tasks share one output layer. Every kind names its output
        axis 'labels' in `logical_axes`, so the cut needs no knowledge of the kind."""
        def cut(spec: Any, x: Any) -> Any:
            names = tuple(spec) if spec is not None else ()
            if "labels" not in names:
                return x
            return np.take(np.asarray(x), np.arange(start, stop), axis=names.index("labels"))

        is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec) or s is None  # noqa: E731
        sliced = jax.tree.map(cut, self.logical_axes(), params, is_leaf=is_spec)
        return self.with_head("classifier", stop - start), sliced

    def layer_ids(self) -> dict:
        """Per parameter (nested like `init`'s output): the 0-based encoder layer it belongs to,
        EMBEDDINGS (-1) under the top-level `embeddings`, HEADS (-2) for the rest (pooler,
        heads); for layers stacked on a leading 'layers' axis (scan), an int array over that
        axis. Read from the names every kind uses: `layer_{i}` path components, `embeddings`
        and the 'layers' logical axis."""
        shapes = flatten_dict(jax.eval_shape(self.init, jax.random.key(0)))
        specs = flatten_dict(self.logical_axes())
        out = {}
        for path, leaf in shapes.items():
            spec = tuple(specs.get(path) or ())
            if spec and spec[0] == "layers":
                out[path] = np.arange(leaf.shape[0])
                continue
            numbered = [int(p[len("layer_"):]) for p in path
                        if p.startswith("layer_") and p[len("layer_"):].isdigit()]
            out[path] = (numbered[0] if numbered else
                         EMBEDDINGS if path[0] == "embeddings" else HEADS)
        return unflatten_dict(out)

    def runtime(self, **options: Any) -> "Model":
        """Execution options this kind has (dtype, dropout, scan...); the rest are ignored."""
        return self.replace(**{k: v for k, v in options.items() if k in self.RUNTIME_FIELDS})

    # --- parameters ------------------------------------------------------------------------------
    def fresh_host_params(self, rng: jax.Array) -> dict:
        """Random parameters as host NumPy, for filling what a loaded checkpoint lacks.

        Kinds whose full init is slow to compile override this with a cheaper draw of the parts
        a checkpoint may lack (heads).
        """
        return jax.device_get(jax.jit(self.init)(rng))

    def canonical(self, params: dict) -> dict:
        """Params in the layout checkpoints of any option share (e.g. unscanned layers)."""
        return params

    def from_canonical(self, params: dict) -> dict:
        """Inverse of `canonical`, for this model's options."""
        return params

    def adopt(self, params: dict, rng: jax.Array | None) -> dict:
        """`params` of a same-kind checkpoint shaped for this model: what matches by path and
        shape is kept, the rest (a new head, a classifier of another size) is freshly drawn."""
        template = jax.eval_shape(self.canonical, jax.eval_shape(self.init, jax.random.key(0)))
        fresh = self.fresh_host_params(rng) if rng is not None else None
        return self.from_canonical(fill_params(template, params, fresh))

    def copy_layers_from(self, teacher: "Model", teacher_params: dict,
                         layers: tuple[int, ...], fallback: dict | None) -> dict:
        """Student params copied from a teacher's layers (DistilBERT's initialisation)."""
        raise UserError(f"A '{self.kind}' student cannot be initialised from a '{teacher.kind}' "
                        f"teacher's layers; use student.init: random or a checkpoint.")

    # --- what a checkpoint stores to rebuild it ----------------------------------------------
    def meta(self) -> dict:
        return dataclasses.asdict(self.config)


def ranges(*, sizes: str = "", counts: str = "", rates: str = "", positive: str = "",
           dtypes: str = "") -> dict[str, str]:
    """A model config's `_RANGES` (the accepted values of the keys a recipe may set) from
    space-separated field names: sizes >= 1, counts >= 0, dropout rates in [0, 1), positive
    reals, compute/parameter dtypes."""
    accepted = {"[1, inf)": sizes, "[0, inf)": counts, "[0, 1)": rates, "(0, inf)": positive,
                "float32|bfloat16|float16": dtypes}
    return {name: rule for rule, names in accepted.items() for name in names.split()}


class LayerByLayer(abc.ABC):
    """An optional capability of a kind: running its encoder one layer at a time, for inference
    that stops early (FastBERT's adaptive inference, inference/early_exit.py). A kind that can
    inherits it; callers test `isinstance(model, LayerByLayer)`, never `hasattr`."""

    @abc.abstractmethod
    def embed(self, params: dict, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """(the first layer's input [B, T, H], key mask [B, 1, 1, T]): the start of `apply`."""

    @abc.abstractmethod
    def layer_params(self, params: dict, i: int) -> dict:
        """Layer i's parameters, in the form `layer` reads (the same for every i)."""

    @abc.abstractmethod
    def layer(self, layer_params: dict, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        """One encoder layer without dropout: the same function for every layer's params."""

    @abc.abstractmethod
    def classify(self, params: dict, last: jax.Array) -> jax.Array:
        """The classifier head's logits from the last layer's output, as `apply` computes them."""


REGISTRY: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Class decorator: make `cls` the model of its `kind`."""
    REGISTRY[cls.kind] = cls
    return cls


def model_class(kind: str, where: str = "student.kind") -> type[Model]:
    return lookup(REGISTRY, kind, where, "model kind")


def from_meta(meta: Mapping[str, Any], where: str = "checkpoint") -> Model:
    """Rebuild a model from `Model.meta()` (checkpoints before kinds existed were BERT)."""
    fields = dict(meta)
    cls = model_class(fields.get("kind", "bert"), f"{where}: model kind")
    fields["kind"] = cls.kind
    names = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise UserError(f"{where}: its '{cls.kind}' model metadata has unknown fields "
                        f"{', '.join(unknown)}; it was written by another version of jaxdistill.")
    try:
        return cls(cls.Config(**fields))
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: invalid '{cls.kind}' model metadata: {e}") from None


def fill_params(template: Any, source: Any, fallback: Any, path: tuple[str, ...] = (),
                dtype: Any = None) -> Any:
    """Walk `template`'s tree: take `source`'s array where its path exists with the same shape,
    else `fallback`'s; an error names the path neither has. Host NumPy out."""
    if isinstance(template, Mapping):
        return {k: fill_params(v, _get(source, k), _get(fallback, k), path + (k,), dtype)
                for k, v in template.items()}
    for value in (source, fallback):
        if value is not None and tuple(value.shape) == tuple(template.shape):
            return np.asarray(value, dtype or template.dtype)
    where = "/".join(path)
    if source is not None:
        raise UserError(f"parameter {where} has shape {tuple(source.shape)}, the model needs "
                        f"{tuple(template.shape)}, and nothing can be initialised in its place.")
    raise UserError(f"parameter {where} is missing and nothing can be initialised in its place; "
                    f"give a checkpoint that has it.")


def _get(tree: Any, key: str) -> Any:
    return tree.get(key) if isinstance(tree, Mapping) else None


def host_draw(shapes: Any, std: float, dtype: Any, rng: jax.Array) -> dict:
    """Host NumPy params of the pytree of `shapes`, drawn from a seed taken from `rng`, in the
    scheme of our modules and transformers' `_init_weights`: kernels and embeddings ~
    normal(std), norm scales 1, the rest (biases) 0. Cheaper than compiling a model's `init`
    for the few tensors a loaded checkpoint lacks (heads, pooler)."""
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)  # typed key (jax.random.key) -> its uint32 words
    gen = np.random.default_rng(np.asarray(rng).astype(np.uint32).ravel().tolist())
    flat = {}
    for path, leaf in sorted(flatten_dict(shapes).items()):
        if path[-1] in ("kernel", "embedding"):
            value = gen.normal(0.0, std, leaf.shape)
        else:
            value = np.ones(leaf.shape) if path[-1] == "scale" else np.zeros(leaf.shape)
        flat[path] = value.astype(jnp.dtype(dtype))
    return unflatten_dict(flat)


def cast_floats(params: Any, dtype: Any) -> Any:
    """Floating-point leaves cast to `dtype` (host NumPy), integer leaves untouched."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda x: np.asarray(x).astype(dtype)
                        if jnp.issubdtype(np.asarray(x).dtype, jnp.floating) else np.asarray(x),
                        params)


def projected_rows(rows: np.ndarray, width: int, std: float) -> np.ndarray:
    """Word vectors for a student `width` wide from a teacher's rows [n, teacher width]: centred,
    projected onto their `width` leading principal components when the teacher is wider, and
    scaled to the student's init std (DistilBERT's initialisation carried across widths)."""
    rows = np.asarray(rows, np.float64)
    if width > rows.shape[1]:
        raise UserError(f"the student's word vectors ({width} wide) are wider than the teacher's "
                        f"({rows.shape[1]}): a teacher's embeddings can start a student only as "
                        f"wide or narrower.")
    centred = rows - rows.mean(0)
    if width < rows.shape[1]:
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        centred = centred @ components[:width].T
    return (centred * (std / max(float(centred.std()), 1e-12))).astype(np.float32)
