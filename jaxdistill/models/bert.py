"""BERT-family encoder (BERT, TinyBERT, DistilBERT, MiniLM shapes) as a pure Flax Linen module.

`model.apply(params, input_ids, ...)` is a pure function of (params, batch) that returns one
`Outputs` pytree. What a distillation method reads (every hidden state, pre-softmax
attention scores, attention probabilities) is only computed and kept when asked for through
`Wants`, so a teacher forward that feeds a logits-only loss pays nothing for the rest.

Parameters of the layers live under `encoder/layer_{i}`; with `scan_layers` they are stacked
under `encoder/layers` with a leading 'layers' axis (see `stack_layers`/`unstack_layers`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax.traverse_util import flatten_dict, unflatten_dict

from jaxdistill.errors import UserError
from jaxdistill.models import base
from jaxdistill.models.base import NOTHING, Outputs, Wants

HEADS = ("none", "mlm", "classifier")
FLAVORS = ("bert", "distilbert")


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU in torch's form, 0.5 * x * (1 + erf(x / sqrt(2))).

    `jax.nn.gelu(approximate=False)` goes through erfc, which XLA expands with an exp and
    branches; erf is one rational polynomial: 2.3x faster forward on the 2-core CPU, agreeing to
    1e-6 (benchmarks/RESULTS.md).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT-family encoder; `flavor` picks BERT or DistilBERT conventions."""

    kind: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0 for DistilBERT (no token types)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    pad_token_id: int = 0
    flavor: str = "bert"
    head: str = "none"
    num_labels: int = 2
    # Execution options, not architecture: they never change the function the model computes.
    dtype: str = "float32"  # compute dtype; parameters stay in param_dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"

    def __post_init__(self):
        if self.kind != "bert":
            raise ValueError(f"kind={self.kind!r}: a BertConfig is of kind 'bert'")
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor={self.flavor!r}: expected one of {FLAVORS}")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: expected one of {HEADS}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r}: expected one of {sorted(ACTIVATIONS)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: expected one of {sorted(REMAT_POLICIES)}")
        if self.flavor == "distilbert" and self.type_vocab_size:
            raise ValueError("DistilBERT has no token types: type_vocab_size must be 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, with_embeddings: bool = True) -> int:
        """Encoder parameters (no head), used for FLOP accounting and reports."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_layers
        per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h
        emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
        return layers * per_layer + (emb if with_embeddings else 0)


def _dense(features: int, axes: tuple[str, str], cfg: BertConfig, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def _embed(num: int, axes: tuple[str | None, str], cfg: BertConfig, name: str) -> nn.Embed:
    return nn.Embed(
        num,
        cfg.hidden_size,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), axes),
        name=name,
    )


class Embeddings(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        word = _embed(cfg.vocab_size, ("vocab", "embed"), cfg, "word")
        # Gather rows of the parameter-dtype table, then cast: the backward pass becomes an fp32
        # scatter-add (exact sums, native atomics) rather than a bf16 one, which took 46 ms of a
        # 200 ms BERT-base -> TinyBERT6 step on an H100 (benchmarks/RESULTS.md).
        x = jnp.take(word.embedding, input_ids, axis=0).astype(dtype)
        # Positions are 0..T-1 for every row: a slice, whose gradient is a sum over the batch.
        position = _embed(cfg.max_position_embeddings, (None, "embed"), cfg, "position")
        x = x + position.embedding[:input_ids.shape[-1]].astype(dtype)[None]
        if cfg.type_vocab_size:
            # A one-hot matmul: a scatter-add of B*T rows into 2 table rows serialises on
            # atomics (104 ms of that 200 ms step).
            token_type = _embed(cfg.type_vocab_size, (None, "embed"), cfg, "token_type")
            one_hot = jax.nn.one_hot(token_type_ids, cfg.type_vocab_size, dtype=dtype)
            x = x + jnp.einsum("btk,kh->bth", one_hot, token_type.embedding.astype(dtype))
        x = _layer_norm(cfg, "norm")(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class SelfAttention(nn.Module):
    cfg: BertConfig
    capture: Wants

    @nn.compact
    def __call__(self, x, key_mask, deterministic: bool):
        cfg = self.cfg
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, cfg.num_heads, cfg.head_dim)
        q = split(_dense(cfg.hidden_size, ("embed", "heads"), cfg, "query")(x))
        k = split(_dense(cfg.hidden_size, ("embed", "heads"), cfg, "key")(x))
        v = split(_dense(cfg.hidden_size, ("embed", "heads"), cfg, "value")(x))
        scores = probs = None
        need_dropout = cfg.attention_dropout > 0 and not deterministic
        if self.capture.attention_scores or self.capture.attention_probs or need_dropout:
            # Heads-major layout once, so both attention matmuls are plain batched GEMMs
            # (measured on CPU: one attention block 58 ms -> 38 ms at the demo shapes).
            qh, kh, vh = (jnp.swapaxes(y, 1, 2) for y in (q, k, v))  # [B, heads, T, D]
            scores = jnp.einsum("bhqd,bhkd->bhqk", qh, kh) / jnp.sqrt(cfg.head_dim).astype(q.dtype)
            masked = jnp.where(key_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(masked, axis=-1)
            dropped = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
            context = jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", dropped.astype(v.dtype), vh), 1, 2)
        else:
            # No intermediates wanted: let XLA (or cuDNN on GPU) pick a fused attention.
            context = jax.nn.dot_product_attention(q, k, v, mask=key_mask)
        out = _dense(cfg.hidden_size, ("heads", "embed"), cfg, "out")(context.reshape(b, t, -1))
        return out, (scores if self.capture.attention_scores else None), (
            probs if self.capture.attention_probs else None)


class TransformerLayer(nn.Module):
    """Post-LN transformer block shared by BERT and DistilBERT."""

    cfg: BertConfig
    capture: Wants
    deterministic: bool

    @nn.compact
    def __call__(self, x, key_mask):
        cfg = self.cfg
        attn, scores, probs = SelfAttention(cfg, self.capture, name="attention")(
            x, key_mask, self.deterministic)
        attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=self.deterministic)
        x = _layer_norm(cfg, "attention_norm")(x + attn)
        h = _dense(cfg.intermediate_size, ("embed", "mlp"), cfg, "intermediate")(x)
        h = _dense(cfg.hidden_size, ("mlp", "embed"), cfg, "output")(ACTIVATIONS[cfg.hidden_act](h))
        h = nn.Dropout(cfg.hidden_dropout)(h, deterministic=self.deterministic)
        x = _layer_norm(cfg, "ffn_norm")(x + h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, scores, probs


class _ScanBody(nn.Module):
    """Adapts TransformerLayer to nn.scan's (carry, xs) -> (carry, ys) signature."""

    cfg: BertConfig
    capture: Wants
    deterministic: bool

    @nn.compact
    def __call__(self, x, key_mask):
        layer_cls = _maybe_remat(self.cfg)
        y, scores, probs = layer_cls(self.cfg, self.capture, self.deterministic, name="layer")(
            x, key_mask)
        return y, (y if self.capture.hidden_states else None, scores, probs)


def _maybe_remat(cfg: BertConfig):
    if cfg.remat == "none":
        return TransformerLayer
    return nn.remat(TransformerLayer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


class Encoder(nn.Module):
    cfg: BertConfig
    capture: Wants
    deterministic: bool

    @nn.compact
    def __call__(self, x, key_mask):
        """Returns (last, per-layer hidden states, scores, probs): tuples, or stacked when scanned."""
        cfg, cap = self.cfg, self.capture
        if cfg.scan_layers:
            scanned = nn.scan(
                _ScanBody,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, cap, self.deterministic, name="layers")
            x, (hs, scores, probs) = scanned(x, key_mask)
            return x, hs, scores, probs
        layer_cls = _maybe_remat(cfg)
        hs, scores, probs = [], [], []
        for i in range(cfg.num_layers):
            x, s, p = layer_cls(cfg, cap.for_layer(i), self.deterministic, name=f"layer_{i}")(
                x, key_mask)
            hs.append(x), scores.append(s), probs.append(p)
        return (x, tuple(hs) if cap.hidden_states else None,
                tuple(scores) if cap.attention_scores else None,
                tuple(probs) if cap.attention_probs else None)


class MlmHead(nn.Module):
    """Transform + LayerNorm, then a decoder tied to the word embeddings plus a bias."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, x, word_table):
        cfg = self.cfg
        x = _dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "transform")(x)
        x = _layer_norm(cfg, "transform_norm")(ACTIVATIONS[cfg.hidden_act](x))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                          (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
        # During init the table arrives boxed with its logical axes; the decoder only needs values.
        table = nn.unbox(word_table) if isinstance(word_table, nn.Partitioned) else word_table
        logits = jnp.einsum("...h,vh->...v", x, table.astype(x.dtype))
        return logits + bias.astype(logits.dtype)


class Classifier(nn.Module):
    """BERT: tanh pooler on [CLS] then a linear layer; DistilBERT: ReLU pre-classifier on [CLS]."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, pooled, cls, deterministic: bool):
        cfg = self.cfg
        drop = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout
        if cfg.flavor == "distilbert":
            x = jax.nn.relu(_dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "pre_classifier")(cls))
        else:
            x = pooled
        x = nn.Dropout(drop)(x, deterministic=deterministic)
        return _dense(cfg.num_labels, ("embed", "labels"), cfg, "classifier")(x)


class BertModel(nn.Module):
    """Encoder plus the head named by `cfg.head` ('none', 'mlm', 'classifier')."""

    cfg: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        capture: Wants = NOTHING,
        deterministic: bool = True,
        masked_positions: jax.Array | None = None,
    ) -> Outputs:
        cfg = self.cfg
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        input_ids = nn.with_logical_constraint(input_ids, ("batch", "length"))
        embeddings = Embeddings(cfg, name="embeddings")
        x = embeddings(input_ids, token_type_ids, deterministic)
        key_mask = attention_mask[:, None, None, :] > 0  # [B, 1, 1, T], broadcast over heads/queries
        last, layer_hs, scores, probs = Encoder(cfg, capture, deterministic, name="encoder")(
            x, key_mask)
        hidden_states = None
        if capture.hidden_states:
            hidden_states = ((x,) + layer_hs if isinstance(layer_hs, tuple)
                             else jnp.concatenate([x[None], layer_hs]))

        pooled = logits = None
        if cfg.flavor == "bert" and cfg.head != "mlm":  # BertForMaskedLM has no pooler
            pooled = jnp.tanh(_dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "pooler")(last[:, 0]))
        if cfg.head == "mlm":
            feats = last
            if masked_positions is not None:
                feats = jnp.take_along_axis(last, masked_positions[..., None], axis=1)
            word = embeddings.variables["params"]["word"]["embedding"]
            logits = MlmHead(cfg, name="mlm_head")(feats, word)
        elif cfg.head == "classifier":
            logits = Classifier(cfg, name="classifier")(pooled, last[:, 0], deterministic)
        return Outputs(last, hidden_states, scores, probs, pooled, logits)


def stack_layers(params: dict, num_layers: int) -> dict:
    """Per-layer `encoder/layer_{i}` params -> scanned `encoder/layers/layer` with a leading axis."""
    enc = dict(params["encoder"])
    layers = [enc.pop(f"layer_{i}") for i in range(num_layers)]
    enc["layers"] = {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
    return {**params, "encoder": enc}


def unstack_layers(params: dict, num_layers: int) -> dict:
    """Inverse of `stack_layers`."""
    enc = dict(params["encoder"])
    stacked = enc.pop("layers")["layer"]
    for i in range(num_layers):
        enc[f"layer_{i}"] = jax.tree.map(lambda x: x[i], stacked)
    return {**params, "encoder": enc}


def init_params(cfg: BertConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Unboxed random parameters (no logical-axis metadata) for `cfg`."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return nn.unbox(BertModel(cfg).init(rng, ids)["params"])


def logical_axes(cfg: BertConfig, seq_len: int = 8) -> Any:
    """Pytree of logical axis names (PartitionSpec of names) matching `init_params(cfg)`."""
    ids = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    boxed = jax.eval_shape(lambda: BertModel(cfg).init(jax.random.key(0), jnp.zeros(ids.shape, ids.dtype)))
    return nn.get_partition_spec(boxed["params"])



def host_init(cfg: BertConfig, rng: jax.Array) -> dict:
    """Random params drawn with NumPy from a seed taken from `rng`, in the model's init scheme.

    Weights ~ normal(initializer_range), biases 0, LayerNorm scales 1: what both our modules
    and transformers' `_init_weights` do. Used for the parts a loaded checkpoint lacks (heads,
    pooler), where compiling the model's `init` would cost seconds for a few small tensors.
    """
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)  # typed key (jax.random.key) -> its uint32 words
    gen = np.random.default_rng(np.asarray(rng).astype(np.uint32).ravel().tolist())
    dtype = jnp.dtype(cfg.param_dtype)
    flat_cfg = cfg.replace(scan_layers=False, remat="none")
    shapes = flatten_dict(jax.eval_shape(lambda: init_params(flat_cfg, jax.random.key(0))))
    flat = {}
    for path, leaf in sorted(shapes.items()):
        if path[-1] in ("kernel", "embedding"):
            value = gen.normal(0.0, cfg.initializer_range, leaf.shape)
        else:
            value = np.ones(leaf.shape) if path[-1] == "scale" else np.zeros(leaf.shape)
        flat[path] = value.astype(dtype)
    return unflatten_dict(flat)


def matmul_params(cfg: BertConfig, mlm_positions: int | None = None, seq: int = 1) -> float:
    """Matmul weights a token passes through (per token; the MLM decoder scaled by its share
    when only `mlm_positions` of the `seq` positions get vocabulary logits)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    n = cfg.num_layers * (4 * h * h + 2 * h * i)
    if cfg.head == "mlm":
        share = 1.0 if mlm_positions is None else mlm_positions / seq
        n += (h * h + h * cfg.vocab_size) * share
    return float(n)


def forward_flops_per_token(cfg: BertConfig, seq: int, mlm_positions: int | None = None) -> float:
    """2 FLOPs per matmul weight, plus attention's 4 * L * T * H (QK^T and PV); embedding
    lookups are free."""
    return 2 * matmul_params(cfg, mlm_positions, seq) + 4 * cfg.num_layers * seq * cfg.hidden_size


# Same width, heads and vocabulary: what copying teacher layers into a student needs.
_COPY_SAME = ("hidden_size", "num_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings")


@base.register
class Bert(base.Model):
    """BERT, TinyBERT, MiniLM and DistilBERT (`flavor`) behind the Model interface."""

    kind = "bert"
    Config = BertConfig
    HEADS = HEADS
    RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "hidden_dropout",
                      "attention_dropout", "classifier_dropout")
    INHERITED_FIELDS = ("vocab_size", "max_position_embeddings", "type_vocab_size",
                        "layer_norm_eps", "pad_token_id")

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.module = BertModel(config)

    @classmethod
    def student_defaults(cls, fields: dict) -> dict:
        # DistilBERT has no token types; a BERT student of a DistilBERT teacher gets BERT's two.
        distil = fields.get("flavor") == "distilbert"
        return {**fields, "type_vocab_size": 0 if distil else fields.get("type_vocab_size") or 2}

    def input_spec(self) -> dict[str, int]:
        return {"input_ids": 2, "attention_mask": 2, "token_type_ids": 2}

    def init(self, rng: jax.Array) -> dict:
        return init_params(self.config, rng)

    def logical_axes(self) -> Any:
        return logical_axes(self.config)

    def max_seq_len(self) -> int | None:
        return self.config.max_position_embeddings

    def apply(self, params: dict, batch: base.Batch, *, wants: Wants = NOTHING,
              train: bool = False, rngs: dict | None = None) -> Outputs:
        return self.module.apply(
            {"params": params}, batch["input_ids"], batch.get("attention_mask"),
            batch.get("token_type_ids"), capture=wants, deterministic=not train,
            masked_positions=batch["masked_positions"] if wants.logits_at_masked else None,
            rngs=rngs)

    def forward_flops_per_token(self, seq_len: int, predictions_per_seq: int | None = None) -> float:
        return forward_flops_per_token(self.config, seq_len, predictions_per_seq)

    # --- layer by layer (early exit) -----------------------------------------------------------
    def embed(self, params: dict, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
        """(embedding output [B, T, H], key mask [B, 1, 1, T]): the start of `apply`."""
        ids = batch["input_ids"]
        types = batch.get("token_type_ids")
        types = jnp.zeros_like(ids) if types is None else types
        mask = batch.get("attention_mask")
        mask = jnp.ones_like(ids) if mask is None else mask
        x = Embeddings(self.config).apply({"params": params["embeddings"]}, ids, types, True)
        return x, mask[:, None, None, :] > 0

    def layer_params(self, params: dict, i: int) -> dict:
        return self.canonical(params)["encoder"][f"layer_{i}"]

    def layer(self, layer_params: dict, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        """One encoder layer, no dropout: the same function for every layer's params."""
        return TransformerLayer(self.config, NOTHING, True).apply(
            {"params": layer_params}, x, key_mask)[0]

    def classify(self, params: dict, last: jax.Array) -> jax.Array:
        """The classifier head on the last hidden state (pooler first for BERT)."""
        cfg = self.config
        pooled = None
        if cfg.flavor == "bert":
            pooled = jnp.tanh(_dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "pooler").apply(
                {"params": params["pooler"]}, last[:, 0]))
        return Classifier(cfg).apply({"params": params["classifier"]}, pooled, last[:, 0], True)

    def word_embeddings(self, params: dict) -> Any:
        return params["embeddings"]["word"]["embedding"]

    def fresh_host_params(self, rng: jax.Array) -> dict:
        # Embeddings, pooler and head only: the layers of a loaded checkpoint are never missing.
        return host_init(self.config.replace(num_layers=0), rng)

    def canonical(self, params: dict) -> dict:
        return unstack_layers(params, self.config.num_layers) if self.config.scan_layers else params

    def from_canonical(self, params: dict) -> dict:
        return stack_layers(params, self.config.num_layers) if self.config.scan_layers else params

    def copy_layers_from(self, teacher: base.Model, teacher_params: dict,
                         layers: tuple[int, ...], fallback: dict | None) -> dict:
        """extract_distilbert.py: embeddings, the teacher layers `layers` (student layer i <-
        teacher layer layers[i]) and the MLM head are copied; the pooler and token types only if
        the student has them (a 'distilbert' student drops them, as the reference does). What
        the teacher lacks comes from `fallback` (student params), an error without it. Values
        take the student's param_dtype: pass full-precision teacher params."""
        student_cfg = self.config
        if not isinstance(teacher, Bert):
            return super().copy_layers_from(teacher, teacher_params, layers, fallback)
        for key in _COPY_SAME:
            if getattr(student_cfg, key) != getattr(teacher.config, key):
                raise UserError(
                    f"student.{key}={getattr(student_cfg, key)} differs from the teacher's "
                    f"{getattr(teacher.config, key)}: copying teacher layers needs the same width")
        if len(layers) != student_cfg.num_layers:
            raise ValueError(f"{len(layers)} teacher layers for a {student_cfg.num_layers}-layer "
                             f"student")
        source = teacher.canonical(teacher_params)
        source = {**{k: v for k, v in source.items() if k != "encoder"},
                  "encoder": {f"layer_{i}": source["encoder"][f"layer_{j}"]
                              for i, j in enumerate(layers)}}
        template = jax.eval_shape(lambda: init_params(student_cfg.replace(scan_layers=False),
                                                      jax.random.key(0)))
        if fallback is not None:
            fallback = self.canonical(fallback)
        params = base.fill_params(template, source, fallback,
                                  dtype=jnp.dtype(student_cfg.param_dtype))
        return self.from_canonical(params)
