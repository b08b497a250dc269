"""Load a BERT WordPiece tokenizer with the Hugging Face `tokenizers` library (Rust, fast).

Accepted: a Hugging Face model directory (tokenizer.json preferred, else vocab.txt), a
tokenizer.json file, a vocab.txt file, or `package:minilm`. Special tokens are added by our own
example builders, so the tokenizer's post-processor, truncation and padding are switched off.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from jaxdistill.assets import resolve_model_path
from jaxdistill.errors import UserError

SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"}


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What prepared data records about its tokenizer."""

    path: str  # the file actually read (tokenizer.json or vocab.txt)
    sha256: str
    vocab_size: int
    special_ids: dict  # {'cls': 101, 'sep': 102, 'pad': 0, 'mask': 103, 'unk': 100}
    word_level: bool = False  # a word vocabulary (data/words.py): no [CLS]/[SEP], one id a word


def resolve_tokenizer_file(ref: str | Path) -> Path:
    """The tokenizer.json or vocab.txt that `ref` names."""
    path = resolve_model_path(str(ref))
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"Tokenizer directory {path} has neither tokenizer.json nor vocab.txt.")
    if not path.is_file():
        raise UserError(f"Tokenizer {path} does not exist; give a model directory, a "
                        f"tokenizer.json, a vocab.txt, or package:minilm.")
    if path.suffix not in (".json", ".txt"):
        raise UserError(f"Tokenizer file {path} is neither a tokenizer.json nor a vocab.txt.")
    return path


def _lowercase_for_vocab(vocab: Path) -> bool:
    # vocab.txt does not say whether the model is cased; tokenizer_config.json beside it does.
    cfg = vocab.parent / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("do_lower_case", True))
        except (OSError, json.JSONDecodeError):
            pass
    return True


def _from_vocab(vocab: Path, lowercase: bool) -> Tokenizer:
    from tokenizers import models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # As tokenizer.json and BertTokenizerFast do: "[MASK]" in text is the mask token, not the
    # pieces "[", "mask", "]" (Tang et al.'s masked variants rely on it).
    vocab_pieces = tok.get_vocab()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL_TOKENS.values() if t in vocab_pieces])
    return tok


def load_tokenizer(ref: str | Path) -> tuple[Tokenizer, TokenizerInfo]:
    """A ready `tokenizers.Tokenizer` (no special tokens, no truncation/padding) and its info."""
    path = resolve_tokenizer_file(ref)
    digest = hashlib.sha256(path.read_bytes())
    try:
        if path.suffix == ".json":
            tok = Tokenizer.from_file(str(path))
        else:
            lowercase = _lowercase_for_vocab(path)
            digest.update(b"lowercase" if lowercase else b"cased")
            tok = _from_vocab(path, lowercase)
    except Exception as e:  # a corrupt or foreign file: name it
        raise UserError(f"Could not read tokenizer {path}: {e}") from None
    tok.no_truncation()  # all-MiniLM's tokenizer.json truncates and pads to 128 by default
    tok.no_padding()
    from jaxdistill.data.words import is_word_level

    word_level = is_word_level(tok)
    special = {}
    for key, token in SPECIAL_TOKENS.items():
        if word_level and key in ("cls", "sep"):
            continue
        idx = tok.token_to_id(token)
        if idx is None:
            raise UserError(f"Tokenizer {path} has no {token} token; pretraining data needs a "
                            f"BERT WordPiece vocabulary with {', '.join(SPECIAL_TOKENS.values())}.")
        special[key] = int(idx)
    info = TokenizerInfo(path=str(path), sha256=digest.hexdigest(),
                         vocab_size=int(tok.get_vocab_size(with_added_tokens=True)),
                         special_ids=special, word_level=word_level)
    return tok, info


def encode_segments(tok: Tokenizer, segments: list[str]) -> list[list[int]]:
    """Token ids of each segment, without special tokens (batched: multithreaded in Rust)."""
    if not segments:
        return []
    return [enc.ids for enc in tok.encode_batch_fast(segments, add_special_tokens=False)]
