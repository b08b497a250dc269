"""Text cleaning and a light rule-based sentence splitter (no model, no download).

Documents are lists of segments (sentences or paragraphs), as BERT's and TinyBERT's corpora are:
the 'pairs' format draws its A/B segments at these boundaries and 'documents' packs whole ones.
"""
from __future__ import annotations

import html
import re

_BREAK = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*p\s*>|<\s*hr\s*/?\s*>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]{0,10}\s*/?>")  # <i>, </em>; not '<=8' or '< 5'
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
# A sentence ends at . ! ? (plus closing quotes/brackets), then space, then an upper-case letter,
# digit or opening quote. Lower-case text (e.g. Rotten Tomatoes' " . ") stays one segment: the
# formats only need segment boundaries, not linguistically perfect sentences.
_END = re.compile(r"([.!?]+[\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = frozenset(
    "mr mrs ms dr prof st sr jr vs etc inc ltd co no vol mt ft lt col gen sgt rev fig approx".split())


def clean_text(text: str) -> str:
    """HTML line breaks (IMDB's `<br />`) to newlines, other simple tags dropped, entities decoded."""
    text = _BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return text


def _is_abbreviation(before: str) -> bool:
    """'Mr.', 'Dr.' and initials such as 'J.' or 'U.S.' do not end a sentence."""
    words = before.split()
    if not words:
        return False
    word = words[-1].lstrip("\"'([")
    letters = word.replace(".", "")
    return word.lower() in _ABBREV or (0 < len(letters) <= 2 and letters.isalpha()
                                       and letters.isupper() and letters != "I")


def split_sentences(text: str) -> list[str]:
    """Split cleaned text into non-empty segments: paragraphs (lines), then sentences."""
    out: list[str] = []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        if not line:
            continue
        start = 0
        for m in _END.finditer(line):
            end = m.end(1)
            if m.group(1) == "." and _is_abbreviation(line[start:m.start(1)]):
                continue
            piece = line[start:end].strip()
            if piece:
                out.append(piece)
            start = m.end()
        tail = line[start:].strip()
        if tail:
            out.append(tail)
    return out


def text_to_document(text: str) -> list[str]:
    """One raw text (a review, an article) as a document: a list of sentence segments."""
    return split_sentences(clean_text(text))
