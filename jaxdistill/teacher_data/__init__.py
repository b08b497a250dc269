"""Datasets a teacher writes: a model runs over a dataset and writes a new one.

TinyBERT's augmentation (an MLM teacher proposes replacement words) is the first; ensemble soft
targets, top-K teacher logits and teacher-labelled variants belong here too. Each is a
`TeacherDataset` (base.py): a fixed list of input items and a batched, jitted `process` of a
chunk of them that depends only on the config and the chunk's position, so `write` can resume
after a crash chunk by chunk and the output is the same for a seed however often it stops.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from jaxdistill import config
from jaxdistill.errors import lookup
from jaxdistill.teacher_data import (  # noqa: F401  (registers each writer)
    cmlm_topk, ensemble, tang_augment, tinybert_augment)
from jaxdistill.teacher_data.base import WRITERS, WriterSpec

DEFAULT_WRITER = "tinybert"


def writer(name: str) -> WriterSpec:
    return lookup(WRITERS, name, "method", "augmentation method")


def load(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> tuple[WriterSpec, Any]:
    """`jaxdistill augment`'s writer and recipe, typed by the recipe's `method` key (an
    override wins); without a recipe, the writer's default one under configs/."""
    method = None
    for item in overrides:
        keys, value = config.parse_override(item)
        if keys == ["method"]:
            method = str(value)
    if path:
        data = config.read_yaml(path)
        spec = writer(method or str(data.get("method", DEFAULT_WRITER)))
    else:
        spec = writer(method or DEFAULT_WRITER)
        data = config.read_yaml(config.CONFIG_DIR / spec.recipe)
    return spec, config.from_dict(spec.Config, config.apply_overrides(data, overrides,
                                                                      spec.Config))
