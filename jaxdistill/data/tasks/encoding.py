"""Examples -> model input arrays.

A word-piece tokenizer gives BERT inputs ([CLS] a [SEP] b [SEP], Hugging Face longest-first
cuts); a word vocabulary (data/words.py) gives each sentence its own row of word ids
(`input_ids`, and `input_ids_b` for the second sentence of a pair: a siamese encoder reads them
apart). Labels come with both: `labels`, and for teacher-labelled data `teacher_logits` and
`labeled` (0 for a row with no gold label, whose `labels` entry is a placeholder).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxdistill.data.tasks.examples import Example
from jaxdistill.errors import UserError


def _pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Kept lengths of a pair under 'longest_first', as Hugging Face tokenizers computes them.

    The longer segment is cut first; when both must be cut they share the budget, the longer
    one taking the odd token (BERT's pop-one-at-a-time loop differs only in that tie).
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    n1, n2 = sorted((len_a, len_b))
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    if len_a > len_b:
        n1, n2 = n2, n1
    return min(len_a, n1), min(len_b, n2)


_WORD = re.compile(r"[^ \t\n\r]+")  # split at ASCII whitespace: every BERT tokenizer does too


def _head_words(text: str, words: int) -> str:
    """`text` up to the end of its `words`-th word (all of it when shorter)."""
    for i, match in enumerate(_WORD.finditer(text), 1):
        if i == words:
            return text[:match.end()]
    return text


def encode(examples: Sequence[Example], tokenizer_dir: str | Path, seq_len: int,
           regression: bool) -> dict[str, np.ndarray]:
    """BERT inputs `[CLS] a [SEP] (b [SEP])` padded with 0 to seq_len, and the labels.

    Returns input_ids, attention_mask, token_type_ids (int32 [N, seq_len]) and labels (int32 [N],
    float32 for regression); with a word vocabulary, `encode_words`'s arrays.
    """
    from jaxdistill.data.tokenizer import encode_segments, load_tokenizer

    tok, info = load_tokenizer(tokenizer_dir)
    if info.word_level:
        return encode_words(examples, tok, info.special_ids["pad"], seq_len, regression)
    has_pair = any(ex.text_b is not None for ex in examples)
    if seq_len < 3 + has_pair:
        raise UserError(f"seq_len={seq_len} is too short for [CLS] text [SEP]"
                        f"{' text [SEP]' if has_pair else ''}.")
    cls, sep = info.special_ids["cls"], info.special_ids["sep"]
    # Long single texts (IMDB) are cut to their first seq_len words before tokenizing: several
    # times faster, and exact, as their tokens are a prefix of the whole text's.
    heads = [ex.text_a if ex.text_b is not None else _head_words(ex.text_a, seq_len)
             for ex in examples]
    ids_a = encode_segments(tok, heads)
    # Words can tokenize to nothing (zero-width characters): then a cut text may fall short.
    redo = [i for i, (ex, head, ids) in enumerate(zip(examples, heads, ids_a))
            if len(head) < len(ex.text_a) and len(ids) < seq_len - 2]
    for i, ids in zip(redo, encode_segments(tok, [examples[i].text_a for i in redo])):
        ids_a[i] = ids
    pair_rows = [i for i, ex in enumerate(examples) if ex.text_b is not None]
    ids_b = dict(zip(pair_rows, encode_segments(tok, [examples[i].text_b for i in pair_rows])))
    n = len(examples)
    input_ids = np.zeros((n, seq_len), np.int32)
    types = np.zeros((n, seq_len), np.int32)
    mask = np.zeros((n, seq_len), np.int32)
    for i, a in enumerate(ids_a):
        b = ids_b.get(i)
        if b is None:
            row = [cls, *a[:seq_len - 2], sep]
            len_a = len(row)
        else:
            ka, kb = _pair_lengths(len(a), len(b), seq_len - 3)
            row = [cls, *a[:ka], sep, *b[:kb], sep]
            len_a = ka + 2
        input_ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        types[i, len_a:len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types,
            **label_arrays(examples, regression)}


def encode_words(examples: Sequence[Example], tok, pad_id: int, seq_len: int,
                 regression: bool) -> dict[str, np.ndarray]:
    """Word ids of text_a (and text_b) cut to seq_len words, padded with `pad_id`.

    Returns input_ids, attention_mask (int32 [N, seq_len]), for pairs input_ids_b and
    attention_mask_b, and `label_arrays`. An empty sentence keeps one padding word (mask 1), so
    every row has a last word for a recurrent encoder to end on.
    """
    from jaxdistill.data.tokenizer import encode_segments

    if seq_len < 1:
        raise UserError(f"seq_len={seq_len}: must be >= 1 word.")
    has_pair = any(ex.text_b is not None for ex in examples)
    if has_pair and any(ex.text_b is None for ex in examples):
        raise UserError("The task mixes single sentences and pairs; a word-level student reads "
                        "one or the other.")
    out = {}
    for suffix, texts in (("", [ex.text_a for ex in examples]),
                          ("_b", [ex.text_b for ex in examples] if has_pair else None)):
        if texts is None:
            continue
        ids = np.full((len(texts), seq_len), pad_id, np.int32)
        mask = np.zeros((len(texts), seq_len), np.int32)
        for i, row in enumerate(encode_segments(tok, [_head_words(t, seq_len) for t in texts])):
            row = row[:seq_len]
            ids[i, :len(row)] = row
            mask[i, :max(len(row), 1)] = 1
        out["input_ids" + suffix], out["attention_mask" + suffix] = ids, mask
    return {**out, **label_arrays(examples, regression)}


def label_arrays(examples: Sequence[Example], regression: bool) -> dict[str, np.ndarray]:
    """labels (int32 [N], float32 for regression); teacher_logits and soft_targets (float32
    [N, C]) when every row has them; labeled (float32 [N], 1 = gold label) when some row has none."""
    n = len(examples)
    unlabeled = [ex.label is None for ex in examples]
    labels = np.asarray([0 if ex.label is None else ex.label for ex in examples],
                        np.float32 if regression else np.int32).reshape(n)
    out = {"labels": labels}
    if any(unlabeled):
        out["labeled"] = 1.0 - np.asarray(unlabeled, np.float32)
    for key in ("teacher_logits", "soft_targets"):
        values = [getattr(ex, key) for ex in examples]
        if n and all(t is not None for t in values):
            widths = {len(t) for t in values}
            if len(widths) != 1:
                raise UserError(f"{key} have different lengths {sorted(widths)} across rows; a "
                                f"teacher-labelled file has one width.")
            out[key] = np.asarray(values, np.float32)
    return out
