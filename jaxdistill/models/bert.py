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
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

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


# Accepted values of the keys a recipe may set (student.*), checked when it loads; MobileBERT's
# config shares them.
RANGES = base.ranges(
    sizes="vocab_size hidden_size num_layers num_heads intermediate_size max_position_embeddings",
    counts="type_vocab_size initializer_range pad_token_id", positive="layer_norm_eps",
    rates="hidden_dropout attention_dropout classifier_dropout", dtypes="dtype param_dtype")


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

    _RANGES: ClassVar[dict[str, str]] = RANGES

    def __post_init__(self):
        if self.kind != "bert":
            raise ValueError(f"kind={self.kind!r}: a BertConfig is of kind 'bert'")
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor={self.flavor!r}: expected one of {FLAVORS}")
        check_choices(self)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.flavor == "distilbert" and self.type_vocab_size:
            raise ValueError("DistilBERT has no token types: type_vocab_size must be 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pooling(self) -> str | None:
        """'tanh' (BERT's pooler on the first token), or None: DistilBERT has no pooler and
        BertForMaskedLM none either."""
        return "tanh" if self.flavor == "bert" and self.head != "mlm" else None

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, with_embeddings: bool = True) -> int:
        """Encoder parameters (no head), used for FLOP accounting and reports."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_layers
        per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h
        emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
        return layers * per_layer + (emb if with_embeddings else 0)


def check_choices(cfg: Any) -> None:
    """ValueErrors for the named choices every BERT-shaped config has: head, hidden_act, remat."""
    for key, choices in (("head", HEADS), ("hidden_act", sorted(ACTIVATIONS)),
                         ("remat", sorted(REMAT_POLICIES))):
        if getattr(cfg, key) not in choices:
            raise ValueError(f"{key}={getattr(cfg, key)!r}: expected one of {choices}")


def _dense(features: int, axes: tuple[str, str], cfg: BertConfig, name: str,
           use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def _layer_norm(cfg: BertConfig, name: str, eps: float | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps if eps is None else eps,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def _embed(num: int, axes: tuple[str | None, str], cfg: BertConfig, name: str,
           features: int | None = None) -> nn.Embed:
    """An embedding table of `features` columns (default: the hidden size)."""
    return nn.Embed(
        num,
        cfg.hidden_size if features is None else features,
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
        x = add_positions_and_types(x, token_type_ids, cfg)
        x = _layer_norm(cfg, "norm")(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


def add_positions_and_types(x: jax.Array, token_type_ids: jax.Array, cfg: Any) -> jax.Array:
    """x [B, T, hidden] plus learned position embeddings (and token-type embeddings when the
    config has types), as tables `position` / `token_type` of the calling embeddings module
    (call it inside that module's compact method)."""
    dtype = jnp.dtype(cfg.dtype)
    # Positions are 0..T-1 for every row: a slice, whose gradient is a sum over the batch.
    position = _embed(cfg.max_position_embeddings, (None, "embed"), cfg, "position")
    x = x + position.embedding[:x.shape[1]].astype(dtype)[None]
    if cfg.type_vocab_size:
        # A one-hot matmul: a scatter-add of B*T rows into 2 table rows serialises on
        # atomics (104 ms of that 200 ms step).
        token_type = _embed(cfg.type_vocab_size, (None, "embed"), cfg, "token_type")
        one_hot = jax.nn.one_hot(token_type_ids, cfg.type_vocab_size, dtype=dtype)
        x = x + jnp.einsum("btk,kh->bth", one_hot, token_type.embedding.astype(dtype))
    return x


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
        context, captured = attend(q, k, v, key_mask, self.capture, cfg.attention_dropout,
                                   deterministic)
        out = _dense(cfg.hidden_size, ("heads", "embed"), cfg, "out")(context.reshape(b, t, -1))
        return out, captured


# q/k/v as captured: sharded like the attention scores (batch over data/fsdp, heads over tensor).
QKV_AXES = ("batch", "length", "heads", None)


def attend(q, k, v, key_mask, capture: Wants, dropout: float, deterministic: bool):
    """Scaled dot-product attention of [B, T, heads, D] q/k/v under a [B, 1, 1, T] key mask:
    (context [B, T, heads, D], captured), `captured` holding what `capture` asks for by its
    `Outputs` name (attention_scores / _probs / _queries / _keys / _values).

    Called inside a module's compact method (its attention dropout becomes that module's).
    scores are scaled and unmasked; probs use a float32 softmax over finfo.min-masked scores.
    """
    scores = probs = None
    need_dropout = dropout > 0 and not deterministic
    if capture.attention_scores or capture.attention_probs or need_dropout:
        # Heads-major layout once, so both attention matmuls are plain batched GEMMs
        # (measured on CPU: one attention block 58 ms -> 38 ms at the demo shapes).
        qh, kh, vh = (jnp.swapaxes(y, 1, 2) for y in (q, k, v))  # [B, heads, T, D]
        scores = jnp.einsum("bhqd,bhkd->bhqk", qh, kh) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        masked = jnp.where(key_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(masked, axis=-1)
        dropped = nn.Dropout(dropout)(probs, deterministic=deterministic)
        context = jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", dropped.astype(v.dtype), vh), 1, 2)
    else:
        # No intermediates wanted: let XLA (or cuDNN on GPU) pick a fused attention.
        context = jax.nn.dot_product_attention(q, k, v, mask=key_mask)
    captured = {}
    if capture.attention_scores:
        captured["attention_scores"] = scores
    if capture.attention_probs:
        captured["attention_probs"] = probs
    if capture.attention_qkv:
        for name, y in (("attention_queries", q), ("attention_keys", k), ("attention_values", v)):
            captured[name] = nn.with_logical_constraint(y, QKV_AXES)
    return context, captured


class TransformerLayer(nn.Module):
    """Post-LN transformer block shared by BERT and DistilBERT."""

    cfg: BertConfig
    capture: Wants
    deterministic: bool

    @nn.compact
    def __call__(self, x, key_mask):
        cfg = self.cfg
        attn, captured = SelfAttention(cfg, self.capture, name="attention")(
            x, key_mask, self.deterministic)
        attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=self.deterministic)
        x = _layer_norm(cfg, "attention_norm")(x + attn)
        h = _dense(cfg.intermediate_size, ("embed", "mlp"), cfg, "intermediate")(x)
        h = _dense(cfg.hidden_size, ("mlp", "embed"), cfg, "output")(ACTIVATIONS[cfg.hidden_act](h))
        h = nn.Dropout(cfg.hidden_dropout)(h, deterministic=self.deterministic)
        x = _layer_norm(cfg, "ffn_norm")(x + h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, captured


class _ScanBody(nn.Module):
    """Adapts a layer (`layer_cls`) to nn.scan's (carry, xs) -> (carry, ys) signature."""

    cfg: BertConfig
    capture: Wants
    deterministic: bool
    layer_cls = TransformerLayer  # class attribute, not a field: a subclass names its layer

    @nn.compact
    def __call__(self, x, key_mask):
        layer_cls = _maybe_remat(self.cfg, self.layer_cls)
        y, captured = layer_cls(self.cfg, self.capture, self.deterministic, name="layer")(
            x, key_mask)
        return y, (y if self.capture.hidden_states else None, captured)


def _maybe_remat(cfg: BertConfig, layer_cls=TransformerLayer):
    if cfg.remat == "none":
        return layer_cls
    return nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


class Encoder(nn.Module):
    """`cfg.num_layers` layers (`layer_cls`, called `(cfg, capture, deterministic)(x, key_mask)
    -> (x, captured)`), unrolled or scanned; another architecture subclasses it with its own
    `layer_cls` and `scan_body` and gets the same parameter layout and captures."""

    cfg: BertConfig
    capture: Wants
    deterministic: bool
    layer_cls = TransformerLayer
    scan_body = _ScanBody

    @nn.compact
    def __call__(self, x, key_mask):
        """Returns (last, per-layer hidden states, {Outputs field: per-layer attention
        feature}): tuples, or arrays stacked on axis 0 when scanned."""
        cfg, cap = self.cfg, self.capture
        if cfg.scan_layers:
            if (cap.attention and cap.attention_layers is not None
                    and not self.is_initializing()):
                return self._scan_keeping_some(x, key_mask)
            scanned = nn.scan(
                self.scan_body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, cap, self.deterministic, name="layers")
            x, (hs, captured) = scanned(x, key_mask)
            return x, hs, captured
        layer_cls = _maybe_remat(cfg, self.layer_cls)
        hs, per_layer = [], []
        for i in range(cfg.num_layers):
            x, captured = layer_cls(cfg, cap.for_layer(i), self.deterministic,
                                    name=f"layer_{i}")(x, key_mask)
            hs.append(x), per_layer.append(captured)
        return (x, tuple(hs) if cap.hidden_states else None,
                {name: tuple(c.get(name) for c in per_layer) for name in cap.attention_fields})

    def _scan_keeping_some(self, x, key_mask):
        """The scanned layers when only `attention_layers` keep their attention features: runs
        of the other layers are scanned without them, the kept layers run one at a time, so
        nothing is formed or stacked for the rest (scanning every layer with the features
        would stack them for all L). Same parameters (`layers/layer`, stacked), same function."""
        cfg, cap, det = self.cfg, self.capture, self.deterministic
        stacked = self.variables["params"]["layers"]["layer"]
        layer = _maybe_remat(cfg, self.layer_cls)
        rng = None if det else self.make_rng("dropout")

        def run(i, p, x, wants):
            rngs = None if rng is None else {"dropout": jax.random.fold_in(rng, i)}
            return layer(cfg, wants, det).apply({"params": p}, x, key_mask, rngs=rngs)

        plain = Wants(hidden_states=cap.hidden_states)
        hs, kept, start = [], {}, 0
        for stop in [*(i for i in cap.attention_layers if i < cfg.num_layers), cfg.num_layers]:
            if stop > start:  # layers start..stop-1, scanned without attention features
                def body(x, i_p):
                    i, p = i_p
                    y, _ = run(i, p, x, plain)
                    return y, (y if cap.hidden_states else None)
                x, ys = jax.lax.scan(body, x, (jnp.arange(start, stop), jax.tree.map(
                    lambda a: a[start:stop], stacked)))
                hs.append(ys)
            if stop < cfg.num_layers:
                x, kept[stop] = run(stop, jax.tree.map(lambda a: a[stop], stacked), x,
                                    cap.for_layer(stop))
                hs.append(x[None] if cap.hidden_states else None)
            start = stop + 1
        layer_hs = jnp.concatenate(hs) if cap.hidden_states else None
        return x, layer_hs, {name: tuple(kept[i][name] if i in kept else None
                                          for i in range(cfg.num_layers))
                             for name in cap.attention_fields}


class MlmHead(nn.Module):
    """Transform + LayerNorm, then a decoder tied to the word embeddings plus a bias.

    A word table narrower than the hidden size (MobileBERT's 128-d embeddings) decodes the first
    `table width` features; the rest go through an untied `extra` kernel [hidden - width, vocab],
    i.e. logits = h @ cat[table^T; extra] + bias.
    """

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
        width = table.shape[-1]
        logits = jnp.einsum("...h,vh->...v", x[..., :width], table.astype(x.dtype))
        if width < cfg.hidden_size:
            logits = logits + _dense(cfg.vocab_size, ("embed", "vocab"), cfg, "extra",
                                     use_bias=False)(x[..., width:])
        return logits + bias.astype(logits.dtype)


class Classifier(nn.Module):
    """BERT: tanh pooler on [CLS] then a linear layer; DistilBERT: ReLU pre-classifier on [CLS]."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, pooled, cls, deterministic: bool):
        cfg = self.cfg
        drop = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout
        if getattr(cfg, "flavor", None) == "distilbert":  # other kinds: the pooled vector
            x = jax.nn.relu(_dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "pre_classifier")(cls))
        else:
            x = pooled
        x = nn.Dropout(drop)(x, deterministic=deterministic)
        return _dense(cfg.num_labels, ("embed", "labels"), cfg, "classifier")(x)


class BertModel(nn.Module):
    """Encoder plus the head named by `cfg.head` ('none', 'mlm', 'classifier').

    Another BERT-shaped architecture subclasses it with its own `embeddings_cls` (called
    `(cfg)(input_ids, token_type_ids, deterministic)`, holding the table `word/embedding`) and
    `encoder_cls` (an `Encoder`); its config's `pooling` says what `pooled` is: 'tanh'
    (tanh(pooler(first token))), 'first' (the first token) or None.
    """

    cfg: BertConfig
    embeddings_cls = Embeddings
    encoder_cls = Encoder

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
        embeddings = self.embeddings_cls(cfg, name="embeddings")
        x = embeddings(input_ids, token_type_ids, deterministic)
        key_mask = attention_mask[:, None, None, :] > 0  # [B, 1, 1, T], broadcast over heads/queries
        last, layer_hs, captured = self.encoder_cls(cfg, capture, deterministic,
                                                    name="encoder")(x, key_mask)
        hidden_states = None
        if capture.hidden_states:
            hidden_states = ((x,) + layer_hs if isinstance(layer_hs, tuple)
                             else jnp.concatenate([x[None], layer_hs]))

        pooled = logits = None
        if cfg.pooling is not None:
            pooled = last[:, 0]
            if cfg.pooling == "tanh":
                pooled = jnp.tanh(_dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "pooler")(pooled))
        if cfg.head == "mlm":
            feats = last
            if masked_positions is not None:
                feats = jnp.take_along_axis(last, masked_positions[..., None], axis=1)
            word = embeddings.variables["params"]["word"]["embedding"]
            logits = MlmHead(cfg, name="mlm_head")(feats, word)
        elif cfg.head == "classifier":
            logits = Classifier(cfg, name="classifier")(pooled, last[:, 0], deterministic)
        return Outputs(last_hidden_state=last, hidden_states=hidden_states, pooled=pooled,
                       logits=logits, **captured)


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
    return module_params(BertModel(cfg), rng, seq_len)


def logical_axes(cfg: BertConfig, seq_len: int = 8) -> Any:
    """Pytree of logical axis names (PartitionSpec of names) matching `init_params(cfg)`."""
    return module_axes(BertModel(cfg), seq_len)


def _init_ids(module: nn.Module, seq_len: int) -> jax.Array:
    return jnp.zeros((1, min(seq_len, module.cfg.max_position_embeddings)), jnp.int32)


def module_params(module: nn.Module, rng: jax.Array, seq_len: int = 8) -> dict:
    """Unboxed random parameters of a `BertModel`-shaped module (called on token ids)."""
    return nn.unbox(module.init(rng, _init_ids(module, seq_len))["params"])


def module_axes(module: nn.Module, seq_len: int = 8) -> Any:
    """Logical axis names (PartitionSpecs) of `module_params(module)`, without allocating it."""
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), _init_ids(module, seq_len)))
    return nn.get_partition_spec(boxed["params"])


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


class EncoderModel(base.Model, base.LayerByLayer):
    """What the BERT-shaped kinds (bert, mobilebert) share behind the Model interface: a
    `BertModel`-shaped Flax module (`Module(config)`), token ids + mask + token types in, the
    `encoder/layer_{i}` layout (stacked with scan_layers), the word table at
    `embeddings/word/embedding`, and cheap host draws of everything but the layers."""

    Module: ClassVar[type[nn.Module]]
    HEADS = HEADS
    RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "hidden_dropout",
                      "attention_dropout", "classifier_dropout")
    INHERITED_FIELDS = ("vocab_size", "max_position_embeddings", "type_vocab_size",
                        "layer_norm_eps", "pad_token_id")

    def __init__(self, config: Any):
        super().__init__(config)
        self.module = self.Module(config)

    def input_spec(self) -> dict[str, int]:
        return {"input_ids": 2, "attention_mask": 2, "token_type_ids": 2}

    def init(self, rng: jax.Array) -> dict:
        return module_params(self.module, rng)

    def logical_axes(self) -> Any:
        return module_axes(self.module)

    def max_seq_len(self) -> int | None:
        return self.config.max_position_embeddings

    def apply(self, params: dict, batch: base.Batch, *, wants: Wants = NOTHING,
              train: bool = False, rngs: dict | None = None) -> Outputs:
        return self.module.apply(
            {"params": params}, batch["input_ids"], batch.get("attention_mask"),
            batch.get("token_type_ids"), capture=wants, deterministic=not train,
            masked_positions=batch["masked_positions"] if wants.logits_at_masked else None,
            rngs=rngs)

    def word_embeddings(self, params: dict) -> Any:
        return params["embeddings"]["word"]["embedding"]

    def with_word_embeddings(self, params: dict, table: Any) -> dict:
        embeddings = {**params["embeddings"], "word": {"embedding": table}}
        return {**params, "embeddings": embeddings}

    def fresh_host_params(self, rng: jax.Array) -> dict:
        # Embeddings, pooler and head only: the layers of a loaded checkpoint are never missing.
        cfg = self.config.replace(num_layers=0, scan_layers=False, remat="none")
        shapes = jax.eval_shape(lambda: module_params(self.Module(cfg), jax.random.key(0)))
        return base.host_draw(shapes, cfg.initializer_range, cfg.param_dtype, rng)

    def canonical(self, params: dict) -> dict:
        return unstack_layers(params, self.config.num_layers) if self.config.scan_layers else params

    def from_canonical(self, params: dict) -> dict:
        return stack_layers(params, self.config.num_layers) if self.config.scan_layers else params

    # --- running layer by layer (base.LayerByLayer): the pieces of `apply`, no dropout ------
    def embed(self, params: dict, batch: base.Batch) -> tuple[jax.Array, jax.Array]:
        ids = batch["input_ids"]
        types = batch.get("token_type_ids")
        types = jnp.zeros_like(ids) if types is None else types
        mask = batch.get("attention_mask")
        mask = jnp.ones_like(ids) if mask is None else mask
        x = self.Module.embeddings_cls(self.config).apply({"params": params["embeddings"]}, ids,
                                                          types, True)
        return x, mask[:, None, None, :] > 0

    def layer_params(self, params: dict, i: int) -> dict:
        return self.canonical(params)["encoder"][f"layer_{i}"]

    def layer(self, layer_params: dict, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        return self.Module.encoder_cls.layer_cls(self.config, NOTHING, True).apply(
            {"params": layer_params}, x, key_mask)[0]

    def classify(self, params: dict, last: jax.Array) -> jax.Array:
        """The pooler (when the config's `pooling` has one) and the classifier, as `apply`."""
        cfg = self.config
        pooled = None
        if cfg.pooling is not None:
            pooled = last[:, 0]
            if cfg.pooling == "tanh":
                pooled = jnp.tanh(_dense(cfg.hidden_size, ("embed", "embed_out"), cfg,
                                         "pooler").apply({"params": params["pooler"]}, pooled))
        return Classifier(cfg).apply({"params": params["classifier"]}, pooled, last[:, 0], True)


@base.register
class Bert(EncoderModel):
    """BERT, TinyBERT, MiniLM and DistilBERT (`flavor`) behind the Model interface."""

    kind = "bert"
    Config = BertConfig
    Module = BertModel

    @classmethod
    def student_defaults(cls, fields: dict) -> dict:
        # DistilBERT has no token types; a BERT student of a DistilBERT teacher gets BERT's two.
        distil = fields.get("flavor") == "distilbert"
        return {**fields, "type_vocab_size": 0 if distil else fields.get("type_vocab_size") or 2}

    def forward_flops_per_token(self, seq_len: int, predictions_per_seq: int | None = None) -> float:
        return forward_flops_per_token(self.config, seq_len, predictions_per_seq)

    # --- layer by layer (early exit) -----------------------------------------------------------
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
