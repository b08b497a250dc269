"""Task presets: where each known task's data lives, its columns, labels and metrics."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from jaxdistill.errors import UserError


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
    # News articles (title, then the text) by topic; the labels are the package's folder names.
    "bbc_news": TaskPreset(
        "bbc_news", "package:bbc_news", "text", None, "label", 5,
        ("business", "entertainment", "politics", "sports", "tech"), ("accuracy",), "accuracy",
        glue=False),
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
