"""The BiLSTM student of Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks"; castorini/d-bert `bi_rnn.py`, `siamese_rnn.py`).

Words (a vocabulary built from the task's training text, data/words.py) -> embeddings
(initialised from GloVe 50-d: the paper's 300-d word2vec ships in no package) -> one
bidirectional LSTM layer (Flax's `nn.RNN` scan over time, hidden 150 per direction) -> the
sentence vector, the final forward and backward states concatenated (or the max over time of
the outputs) -> Linear 200 + ReLU + dropout -> Linear to the labels. Sentence pairs use the
siamese form: one shared encoder reads both sentences, and the classifier reads
[h1, h2, |h1 - h2|, h1 * h2].

Parameters: `embed/table` [V, E]; `lstm/{forward,backward}/{ii,if,ig,io}/kernel`
[E, H] and `{hi,hf,hg,ho}/{kernel [H, H], bias [H]}` (Flax's LSTM cell: gates i, f, g, o as
torch.nn.LSTM orders them, one bias per gate); `classifier/{hidden,out}/{kernel,bias}`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxdistill.errors import UserError
from jaxdistill.models import base
from jaxdistill.models.base import NOTHING, Outputs, Wants

POOLINGS = ("final", "max")
EMBEDDINGS = ("glove", "random")


@dataclasses.dataclass(frozen=True)
class BilstmConfig:
    """A BiLSTM classifier over words.

    vocab_size: 0 until the vocabulary is built from the training text (student.init: random).
    embeddings: the initial table, 'glove' (words GloVe lacks are drawn like 'random') or
      'random' (uniform in ±0.25, Kim 2014's scheme that d-bert follows); embedding_dim must be
      50 with 'glove'. Only the first initialisation reads it.
    min_count / max_words: which training words enter the vocabulary (when it is built).
    pooling: 'final' (last forward and backward states, the paper) or 'max' (over time).
    siamese: pairs read apart by the shared encoder (set for pair tasks).
    """

    kind: str = "bilstm"
    head: str = "classifier"
    num_labels: int = 2
    vocab_size: int = 0
    embedding_dim: int = 50
    hidden_size: int = 150
    classifier_size: int = 200
    pooling: str = "final"
    siamese: bool = False
    dropout: float = 0.1
    embeddings: str = "glove"
    min_count: int = 1
    max_words: int = 0
    pad_id: int = 0
    dtype: str = "float32"

    # Accepted values of the keys a recipe may set (student.*), checked when it loads.
    _RANGES: ClassVar[dict[str, str]] = base.ranges(
        sizes="embedding_dim hidden_size classifier_size min_count",
        counts="vocab_size max_words pad_id", rates="dropout", dtypes="dtype")

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings={self.embeddings!r}: expected one of "
                             f"{', '.join(EMBEDDINGS)}")
        if self.embeddings == "glove" and self.embedding_dim != 50:
            raise ValueError(f"embedding_dim={self.embedding_dim}: the packaged GloVe vectors "
                             f"are 50-d; set embedding_dim: 50 or embeddings: random")
        for name in ("embedding_dim", "hidden_size", "classifier_size", "num_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")


class _Encoder(nn.Module):
    """Word ids [B, T] -> (sentence vectors [B, 2H], per-word outputs [B, T, 2H])."""

    cfg: BilstmConfig

    @nn.compact
    def __call__(self, table: jax.Array, ids: jax.Array, mask: jax.Array):
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        x = jnp.take(table, ids, axis=0).astype(dtype)
        lengths = jnp.maximum(mask.sum(-1), 1).astype(jnp.int32)
        # Cells built here belong to this module: their params sit at encoder/{forward,backward}.
        rnn = lambda name: nn.RNN(nn.OptimizedLSTMCell(c.hidden_size, dtype=dtype,  # noqa: E731
                                                       name=name))
        (fwd, bwd), outputs = nn.Bidirectional(rnn("forward"), rnn("backward"),
                                               return_carry=True)(
            x, seq_lengths=lengths)
        if c.pooling == "max":
            valid = (jnp.arange(ids.shape[1])[None, :] < lengths[:, None])[..., None]
            return jnp.max(jnp.where(valid, outputs, -jnp.inf), axis=1), outputs
        return jnp.concatenate([fwd[1], bwd[1]], axis=-1), outputs  # carry = (c, h)


class _Bilstm(nn.Module):
    cfg: BilstmConfig

    @nn.compact
    def __call__(self, ids, mask, ids_b=None, mask_b=None, deterministic: bool = True):
        c = self.cfg
        table = self.param("table", _uniform(0.25), (max(c.vocab_size, 1), c.embedding_dim))
        encoder = _Encoder(c, name="encoder")
        h, outputs = encoder(table, ids, mask)
        if c.siamese:
            h2, _ = encoder(table, ids_b, mask_b)
            features = jnp.concatenate([h, h2, jnp.abs(h - h2), h * h2], axis=-1)
        else:
            features = h
        hidden = nn.relu(nn.Dense(c.classifier_size, dtype=jnp.dtype(c.dtype),
                                  name="hidden")(features))
        hidden = nn.Dropout(c.dropout)(hidden, deterministic=deterministic)
        logits = nn.Dense(c.num_labels, dtype=jnp.dtype(c.dtype), name="out")(hidden)
        return features, outputs, logits


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


# The module's param tree <-> the documented layout (embed / lstm / classifier).
def _to_layout(p: dict) -> dict:
    return {"embed": {"table": p["table"]}, "lstm": p["encoder"],
            "classifier": {"hidden": p["hidden"], "out": p["out"]}}


def _from_layout(p: dict) -> dict:
    return {"table": p["embed"]["table"], "encoder": p["lstm"],
            "hidden": p["classifier"]["hidden"], "out": p["classifier"]["out"]}


@base.register
class Bilstm(base.Model):
    kind: ClassVar[str] = "bilstm"
    Config: ClassVar[type] = BilstmConfig
    HEADS: ClassVar[tuple[str, ...]] = ("classifier",)
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("dtype", "dropout", "embeddings", "min_count",
                                                 "max_words")

    def __init__(self, config: BilstmConfig):
        super().__init__(config)
        self.module = _Bilstm(config)

    def input_spec(self) -> dict[str, int]:
        spec = {"input_ids": 2, "attention_mask": 2}
        if self.config.siamese:
            spec.update(input_ids_b=2, attention_mask_b=2)
        return spec

    def _dummy(self) -> tuple:
        ids = jnp.zeros((1, 2), jnp.int32)
        return (ids, jnp.ones_like(ids)) * (2 if self.config.siamese else 1)

    def init(self, rng: jax.Array) -> dict:
        if self.config.vocab_size < 1:
            raise UserError("A bilstm student needs its vocabulary first (vocab_size is 0): "
                            "start it with student.init: random in the task stage, which builds "
                            "the vocabulary from the training text.")
        return _to_layout(self.module.init(rng, *self._dummy())["params"])

    def logical_axes(self) -> Any:
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        axes = jax.tree.map(lambda x: P(*([None] * x.ndim)), shapes)
        axes["embed"]["table"] = P("vocab", None)
        axes["classifier"]["out"] = {"kernel": P(None, "labels"), "bias": P("labels")}
        return axes

    def apply(self, params: dict, batch: base.Batch, *, wants: Wants = NOTHING,
              train: bool = False, rngs: dict | None = None) -> Outputs:
        if wants.attention or wants.logits_at_masked:
            raise ValueError("a BiLSTM has no attention maps and no MLM head")
        pair = (batch["input_ids_b"], batch["attention_mask_b"]) if self.config.siamese else ()
        features, outputs, logits = self.module.apply(
            {"params": _from_layout(params)}, batch["input_ids"], batch["attention_mask"], *pair,
            deterministic=not train, rngs=rngs if train else None)
        hidden = (outputs,) if wants.hidden_states else None
        return Outputs(last_hidden_state=outputs, hidden_states=hidden, pooled=features,
                       logits=logits.astype(jnp.float32))

    def forward_flops_per_token(self, seq_len: int, predictions_per_seq: int | None = None
                                ) -> float:
        c = self.config
        gates = 4 * c.hidden_size
        lstm = 2 * 2 * (c.embedding_dim * gates + c.hidden_size * gates)  # two directions
        width = 2 * c.hidden_size * (4 if c.siamese else 1)
        head = 2 * (width * c.classifier_size + c.classifier_size * c.num_labels)
        sentences = 2 if c.siamese else 1
        return float(sentences * lstm + head / seq_len)

    def word_embeddings(self, params: dict) -> Any:
        return params["embed"]["table"]

    # --- a vocabulary of its own -------------------------------------------------------------
    @classmethod
    def vocabulary_from(cls, fields: dict, texts: Sequence[tuple[str, str | None]],
                        out_dir: Path) -> dict:
        """Build the word vocabulary from the training text into `out_dir`; the fields with
        vocab_size (and siamese for pairs) set."""
        from jaxdistill.data import words

        pairs = any(b is not None for _, b in texts)
        if fields.get("siamese", pairs) != pairs:
            raise UserError(f"student.siamese={fields['siamese']}, but the task has "
                            f"{'sentence pairs' if pairs else 'single sentences'}; the siamese "
                            f"encoder is for pairs (leave siamese out: the task decides it).")
        flat = [t for a, b in texts for t in (a, b) if t is not None]
        tok = words.build_vocabulary(flat, fields.get("min_count", 1), fields.get("max_words", 0))
        words.save_vocabulary(tok, out_dir)
        return {**fields, "vocab_size": tok.get_vocab_size(with_added_tokens=True),
                "siamese": pairs, "pad_id": tok.token_to_id(words.PAD)}

    def initial_params(self, rng: jax.Array, tokenizer_dir: Path) -> dict:
        """Random params with the embedding table taken from GloVe where it has the word."""
        params = self.fresh_host_params(rng)
        if self.config.embeddings != "glove":
            return params
        from jaxdistill.data import words
        from jaxdistill.data.tokenizer import load_tokenizer

        tok, _ = load_tokenizer(tokenizer_dir)
        vectors, found = words.glove_vectors(words.vocabulary_words(tok))
        table = np.array(params["embed"]["table"])
        table[found] = vectors[found]
        params["embed"]["table"] = table
        return params
