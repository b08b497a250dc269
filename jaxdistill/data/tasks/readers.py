"""Reading labeled files into examples: column layouts, label parsing, splits and subsets.

Source-independent pieces that `sources.py` builds on for every kind of task source.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxdistill.config import TaskConfig
from jaxdistill.data.corpus import open_text, set_csv_limit, file_suffix
from jaxdistill.data.tasks.examples import Example
from jaxdistill.data.tasks.presets import TaskPreset
from jaxdistill.data.text import clean_text
from jaxdistill.errors import UserError

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What a reader needs: columns (names or, without a header, indices) and label parsing."""

    text_a: str | int
    text_b: str | int | None
    label: str | int
    regression: bool
    num_labels: int
    label_names: tuple[str, ...] | None
    clean_html: bool


# ------------------------------------------------------------------------------------------
# Labels and text


def _parse_label(value: Any, layout: _Layout, where: str) -> int | float:
    """A raw label (string, int, float) as a class id in [0, num_labels) or a float score."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if layout.regression:
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: label {value!r} is not a number, but this task is a "
                            f"regression (num_labels=1) and needs float scores.") from None
        if not math.isfinite(score):
            raise UserError(f"{where}: label {value!r} is not a finite number.")
        return score
    label: int | None = None
    if isinstance(value, str):
        text = value.strip()
        if layout.label_names and text in layout.label_names:
            label = layout.label_names.index(text)
        elif re.fullmatch(r"[+-]?\d+", text):
            label = int(text)
    elif isinstance(value, (int, float)) and float(value).is_integer():
        label = int(value)
    if label is None or not 0 <= label < layout.num_labels:
        known = ", ".join(layout.label_names or ()) or "(no names)"
        raise UserError(
            f"{where}: unknown label {value!r}. This task has {layout.num_labels} classes: "
            f"ints 0..{layout.num_labels - 1} or the names {known}. Fix the data, set "
            f"task.label_column to the label column, or task.num_labels to the class count.")
    return label


def _text(value: Any, clean: bool) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = "" if value is None else str(value)
    if clean:
        value = clean_text(value)
    return " ".join(value.split())


def _make_example(a: Any, b: Any, label: Any, layout: _Layout, where: str) -> Example:
    return Example(_text(a, layout.clean_html),
                   None if layout.text_b is None else _text(b, layout.clean_html),
                   _parse_label(label, layout, where))


# ------------------------------------------------------------------------------------------
# File readers


def _missing_column(path: Path, column: str | int, present: Sequence[str], key: str) -> UserError:
    return UserError(f"Task file {path} has no column '{column}'; its columns are "
                     f"{', '.join(map(str, present)) or '(none: empty file?)'}. Set task.{key} "
                     f"to the column that holds it.")


def _check_columns(path: Path, layout: _Layout, present: Sequence[str]) -> None:
    for key, col in (("text_a_column", layout.text_a), ("text_b_column", layout.text_b),
                     ("label_column", layout.label)):
        if col is not None and col not in present:
            raise _missing_column(path, col, present, key)


def read_table(path: Path, layout: _Layout) -> list[Example]:
    """A CSV/TSV with a header row; TSVs are read with quoting off (GLUE has stray quotes)."""
    set_csv_limit()
    tsv = file_suffix(path) == ".tsv"
    kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    out, skipped = [], 0
    with open_text(path) as f:
        reader = csv.DictReader(f, **kwargs)
        reader.fieldnames = _fieldnames(reader)
        _check_columns(path, layout, reader.fieldnames)
        for row in reader:
            a, b, y = row[layout.text_a], row.get(layout.text_b), row[layout.label]
            if a is None or y is None or (layout.text_b is not None and b is None):
                skipped += 1  # a short, malformed row (QQP's train.tsv has some): as GLUE does
                continue
            out.append(_make_example(a, b, y, layout, f"Task file {path}, line {reader.line_num}"))
    if skipped:
        log.warning("%s: skipped %d rows with missing fields", path, skipped)
    return out


def _fieldnames(reader: csv.DictReader) -> list[str]:
    # Some GLUE files (MRPC) start with a UTF-8 byte-order mark glued to the first name.
    return [name.lstrip("\ufeff") for name in reader.fieldnames or []]


def read_headless_tsv(path: Path, layout: _Layout) -> list[Example]:
    """A GLUE TSV without a header (CoLA): columns by 0-based index."""
    set_csv_limit()
    needed = max(c for c in (layout.text_a, layout.text_b, layout.label) if c is not None)
    out, skipped = [], 0
    with open_text(path) as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if row and lineno == 1:
                row[0] = row[0].lstrip("\ufeff")
            if not row or row == [""]:
                continue
            if len(row) <= needed:
                skipped += 1
                continue
            b = row[layout.text_b] if layout.text_b is not None else None
            out.append(_make_example(row[layout.text_a], b, row[layout.label], layout,
                                     f"Task file {path}, line {lineno}"))
    if skipped:
        log.warning("%s: skipped %d rows with fewer than %d fields", path, skipped, needed + 1)
    return out


def read_jsonl(path: Path, layout: _Layout) -> list[Example]:
    """One JSON object per line with the layout's fields."""
    out = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"Task file {path}, line {lineno}"
            try:
                obj = json.loads(line.lstrip("\ufeff"))
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e}).") from None
            if not isinstance(obj, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
            _check_columns(path, layout, list(obj))
            b = obj.get(layout.text_b) if layout.text_b is not None else None
            out.append(_make_example(obj[layout.text_a], b, obj[layout.label], layout, where))
    return out


def read_file(path: Path, layout: _Layout, preset: TaskPreset) -> list[Example]:
    """Examples of one file; its extension picks the reader."""
    if not path.is_file():
        raise UserError(f"Task file {path} does not exist; give an existing "
                        f"{', '.join(FILE_SUFFIXES)} file (optionally .gz).")
    suffix = file_suffix(path)
    if suffix not in FILE_SUFFIXES:
        raise UserError(f"Task file {path} has an unsupported extension; supported: "
                        f"{', '.join(FILE_SUFFIXES)} (optionally .gz).")
    if suffix == ".jsonl":
        return read_jsonl(path, layout)
    if suffix == ".tsv" and isinstance(layout.text_a, int):
        return read_headless_tsv(path, layout)
    return read_table(path, layout)


# ------------------------------------------------------------------------------------------
# Layouts: the preset's, with the config's overrides


def _base_layout(cfg: TaskConfig, preset: TaskPreset, text_a: str | int, text_b: str | int | None,
                 label: str | int) -> _Layout:
    num_labels = cfg.num_labels or preset.num_labels
    names = preset.label_names if preset.label_names and len(preset.label_names) == num_labels \
        else None
    return _Layout(text_a, text_b, label, num_labels == 1, num_labels, names, preset.clean_html)


def file_layout(cfg: TaskConfig, preset: TaskPreset, path: Path) -> _Layout:
    """Columns for `path`: a GLUE preset's TSV layout, else the config's (or preset's) names."""
    if file_suffix(path) == ".tsv" and preset.glue and preset.tsv_index is not None:
        # A header-less GLUE TSV: only column indices make sense.
        idx = list(preset.tsv_index)
        for i, (key, value) in enumerate((("text_a_column", cfg.text_a_column),
                                          ("text_b_column", cfg.text_b_column),
                                          ("label_column", cfg.label_column))):
            if value and not value.isdigit():
                raise UserError(f"Task file {path} is a {preset.name} GLUE TSV without a header: "
                                f"task.{key}='{value}' must be a 0-based column index.")
            if value:
                idx[i] = int(value)
        return _base_layout(cfg, preset, idx[0], idx[1], idx[2])
    text_b = cfg.text_b_column or preset.text_b
    return _base_layout(cfg, preset, cfg.text_a_column or preset.text_a, text_b,
                        cfg.label_column or preset.label)


# ------------------------------------------------------------------------------------------
# Splits and subsets


def holdout_split(examples: list[Example], dev_split: float, seed: int,
                  stratify: bool) -> tuple[list[Example], list[Example]]:
    """(train, dev): `dev_split` of the rows held out by a seeded shuffle, per label if stratify.

    The same inputs always give the same split; both parts keep the file order.
    """
    if not 0.0 < dev_split < 1.0:
        raise UserError(f"task.dev_split={dev_split} must be in (0, 1): the source has no dev "
                        f"set, so that share of its rows is held out for evaluation.")
    n = len(examples)
    order = np.random.default_rng(seed).permutation(n)
    if stratify:
        labels = np.asarray([ex.label for ex in examples])[order]
        groups = [order[labels == y] for y in np.unique(labels)]
    else:
        groups = [order]
    is_dev = np.zeros(n, bool)
    for group in groups:
        k = round(len(group) * dev_split)
        k = min(max(k, 1), len(group) - 1) if len(group) > 1 else 0
        is_dev[group[:k]] = True
    if n and (is_dev.all() or not is_dev.any()):
        raise UserError(f"Only {n} labeled examples: too few to hold out task.dev_split="
                        f"{dev_split} of them for a dev set. Give a dev file or more data.")
    train = [ex for ex, d in zip(examples, is_dev) if not d]
    dev = [ex for ex, d in zip(examples, is_dev) if d]
    return train, dev


def subsample(examples: list[Example], limit: int, seed: int) -> list[Example]:
    """At most `limit` examples (0 = all), a seeded random subset in file order.

    Random rather than the first rows: task files are often sorted by label.
    """
    if limit < 0:
        raise UserError(f"task.max_*_examples must be >= 0 (0 = all), got {limit}.")
    if not limit or len(examples) <= limit:
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), limit, replace=False))
    return [examples[i] for i in keep]
