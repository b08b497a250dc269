"""Build fixed-length pretraining examples from tokenized documents (pure functions).

An example is (token ids with [CLS]/[SEP], length of segment A incl. its [CLS] and [SEP],
is_random_next). Token types are 0 for the first `len_a` tokens and 1 after.

- 'documents' (DistilBERT / RoBERTa DOC-SENTENCES): consecutive sentences of one document are
  packed greedily into `[CLS] tokens [SEP]` of at most seq_len tokens; a sentence longer than
  seq_len - 2 is cut into pieces. Packs never cross documents.
- 'pairs' (BERT create_pretraining_data / TinyBERT general distillation): `[CLS] A [SEP] B [SEP]`
  with B the actual continuation or, half of the time, a span of another document; with
  probability `short_seq_prob` a shorter target length, as in BERT.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

FORMATS = ("documents", "pairs")


class Example(NamedTuple):
    ids: list[int]
    len_a: int
    is_random_next: int


def pack_document(sentences: list[list[int]], seq_len: int, cls_id: int, sep_id: int) -> list[Example]:
    """Greedy packing of one document's sentences into examples of at most `seq_len` tokens."""
    max_tokens = seq_len - 2
    out: list[Example] = []
    cur: list[int] = []

    def emit(tokens: list[int]) -> None:
        ids = [cls_id, *tokens, sep_id]
        out.append(Example(ids, len(ids), 0))

    for sent in sentences:
        if len(cur) + len(sent) <= max_tokens:
            cur.extend(sent)
            continue
        if cur:
            emit(cur)
            cur = []
        while len(sent) > max_tokens:  # a sentence longer than an example: cut it
            emit(sent[:max_tokens])
            sent = sent[max_tokens:]
        cur = list(sent)
    if cur:
        emit(cur)
    return out


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> None:
    """BERT's truncate_seq_pair: trim the longer segment, from the front or back at random."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def pair_examples(documents: list[list[list[int]]], doc_index: int, seq_len: int, cls_id: int,
                  sep_id: int, rng: np.random.Generator, short_seq_prob: float = 0.1) -> list[Example]:
    """BERT's create_instances_from_document for `documents[doc_index]` (random next from others)."""
    document = documents[doc_index]
    max_tokens = seq_len - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    out: list[Example] = []
    chunk: list[list[int]] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            a = [t for seg in chunk[:a_end] for t in seg]
            b: list[int] = []
            random_next = len(chunk) == 1 or rng.random() < 0.5
            if random_next:
                target_b = target - len(a)
                other = doc_index
                for _ in range(10):  # as BERT: try to pick a different document
                    other = int(rng.integers(0, len(documents)))
                    if other != doc_index:
                        break
                rand_doc = documents[other]
                for seg in rand_doc[int(rng.integers(0, len(rand_doc))):]:
                    b.extend(seg)
                    if len(b) >= target_b:
                        break
                i -= len(chunk) - a_end  # the unused sentences start the next example
            else:
                b = [t for seg in chunk[a_end:] for t in seg]
            _truncate_pair(a, b, max_tokens, rng)
            if a and b:
                ids = [cls_id, *a, sep_id, *b, sep_id]
                out.append(Example(ids, len(a) + 2, int(random_next)))
            chunk, length = [], 0
        i += 1
    return out


def build_examples(documents: list[list[list[int]]], fmt: str, seq_len: int, cls_id: int,
                   sep_id: int, rng: np.random.Generator, short_seq_prob: float = 0.1) -> list[Example]:
    """All examples of a group of tokenized documents (a shard), in document order."""
    documents = [[s for s in doc if s] for doc in documents]
    documents = [doc for doc in documents if doc]
    out: list[Example] = []
    for k, doc in enumerate(documents):
        if fmt == "documents":
            out.extend(pack_document(doc, seq_len, cls_id, sep_id))
        else:
            out.extend(pair_examples(documents, k, seq_len, cls_id, sep_id, rng, short_seq_prob))
    return out
