"""Models for the roles of a run, from anywhere a config may name one.

A reference is a Hugging Face directory, a jaxdistill-native export directory, a jaxdistill
run/checkpoint directory, or `package:minilm`; `load_pretrained` gives (model, host params,
tokenizer directory) for any of them. `student_model` builds a student from the `student.*` keys,
`load_teacher` a frozen teacher with the head its method needs. This module sits above
models/, convert/ and checkpoint.py and ties them together; none of them imports it.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import jax

from jaxdistill import assets, checkpoint, config as config_lib, models
from jaxdistill.config import StudentConfig, TeacherConfig
from jaxdistill.convert import (EXPORTED_INFO, EXPORTED_PARAMS, TOKENIZER_FILES, read_model_dir,
                               read_params_file)
from jaxdistill.errors import UserError
from jaxdistill.models import Model
from jaxdistill.models.base import cast_floats


def tokenizer_of(ref: str) -> Path | None:
    """The tokenizer directory of a model reference, without reading its weights."""
    path = assets.resolve_model_path(ref)
    if (path / "config.json").is_file():
        return path if any((path / f).is_file() for f in TOKENIZER_FILES) else None
    return checkpoint.tokenizer_dir_of(checkpoint.find_step_dir(path))


def load_pretrained(ref: str, head: str = "auto", rng: jax.Array | None = None
                    ) -> tuple[Model, dict, Path | None]:
    """(model, host params, tokenizer directory) for `ref`.

    head: 'auto' keeps the checkpoint's head; otherwise the named head, which is freshly
    initialised from `rng` when the checkpoint lacks it (e.g. a new classifier).
    """
    path = assets.resolve_model_path(ref)
    if not path.exists():
        raise UserError(f"Model path {path} does not exist: expected a Hugging Face directory "
                        f"(config.json + model.safetensors), a jaxdistill run/checkpoint "
                        f"directory, or package:minilm.")
    if (path / "config.json").is_file():
        model, params = read_model_dir(path, head=head, rng=rng)
    else:
        step_dir = checkpoint.find_step_dir(path)
        meta = checkpoint.read_meta(step_dir)
        if "model" not in meta:
            raise UserError(f"{step_dir} was not written by jaxdistill (its metadata has no "
                            f"'model').")
        model = models.from_meta(meta["model"], where=str(step_dir))
        params = checkpoint.read_student_params(step_dir)
    if head != "auto" and head != model.config.head:
        model, params = with_head(model, params, head, rng)
    return model, params, tokenizer_of(str(path))


def load_exported(ref: str) -> tuple[dict, dict]:
    """(the method params that are part of the product, {"method", "options"} that made them)
    of an export directory or a checkpoint; ({}, {}) when there are none."""
    path = assets.resolve_model_path(ref)
    if (path / "config.json").is_file():
        file = path / EXPORTED_PARAMS
        if not file.is_file():
            return {}, {}
        info = path / EXPORTED_INFO
        return read_params_file(file), (json.loads(info.read_text()) if info.is_file() else {})
    step_dir = checkpoint.find_step_dir(path)
    return (checkpoint.read_exported_params(step_dir),
            checkpoint.read_meta(step_dir).get("exported_by") or {})


def with_head(model: Model, params: dict, head: str, rng: jax.Array | None,
              num_labels: int | None = None) -> tuple[Model, dict]:
    """The same body with `head`: kept parts by path and shape, the rest freshly drawn.

    A classifier of another label count is drawn anew; a head that is not wanted is dropped.
    """
    new = model.with_head(head, num_labels)
    return new, new.adopt(model.canonical(params), rng)


def check_student(student: StudentConfig) -> None:
    """The `student.*` keys of a recipe: each a key of the student's kind (or a generic one),
    each in the range the kind's config declares; UserError naming the key otherwise."""
    for key in config_lib.SET_ELSEWHERE:
        if key in student.architecture:
            raise UserError(f"student.{key} is not a key: the student's kind is student.kind, "
                            f"its head comes from the method and its labels from the task.")
    cls = models.model_class(student.kind)
    hints = typing.get_type_hints(cls.Config)
    fields = [f.name for f in dataclasses.fields(cls.Config)
              if f.name not in config_lib.SET_ELSEWHERE]
    generic = [f.name for f in dataclasses.fields(student) if f.name != "architecture"]
    config_lib.check_keys(student.architecture, generic + fields,
                          f"student (kind {student.kind})")
    ranges = getattr(cls.Config, "_RANGES", {})
    for key, value in student.architecture.items():
        value = config_lib.coerce(value, hints[key], f"student.{key}")
        if key in ranges:
            config_lib.check_value(f"student.{key}", value, ranges[key])


def student_model(student: StudentConfig, teacher: Model | None, head: str,
                  num_labels: int | None = None,
                  texts: Sequence[tuple[str, str | None]] | None = None,
                  vocab_dir: Path | None = None) -> tuple[Model, bool]:
    """A fresh student from the `student.*` keys, and whether it built its own vocabulary.

    What the keys leave out of the vocabulary-side fields (vocabulary, positions, token types,
    LayerNorm eps, padding id) comes from the teacher, unless the kind builds a vocabulary of its
    own from the training `texts` (into `vocab_dir`, `Model.vocabulary_from`).
    """
    cls = models.model_class(student.kind)
    fields = dict(student.architecture)  # validated against the kind by `check_student`
    built = None
    if texts is not None and vocab_dir is not None:
        built = cls.vocabulary_from(fields, texts, vocab_dir)
    if built is not None:
        fields = built
    elif teacher is not None:
        for key in cls.INHERITED_FIELDS:
            if key not in fields and hasattr(teacher.config, key):
                fields[key] = getattr(teacher.config, key)
    fields = cls.student_defaults(fields)
    fields.update(kind=cls.kind, head=head)
    if num_labels:
        fields["num_labels"] = num_labels
    cfg = config_lib.from_dict(cls.Config, fields, where="student")
    return cls(cfg), built is not None


def runtime_of(student: StudentConfig, model: Model) -> Model:
    """A loaded student with the runtime keys of `student.*` applied; architecture keys that
    disagree with the loaded model are errors (the checkpoint decides the architecture)."""
    if student.kind != model.kind:
        raise UserError(f"student.kind={student.kind!r} but student.init={student.init} is a "
                        f"'{model.kind}' model; set student.kind={model.kind}.")
    fields = dict(student.architecture)
    runtime = {k: v for k, v in fields.items() if k in model.RUNTIME_FIELDS}
    fixed = {k: v for k, v in fields.items() if k not in runtime}
    differ = [k for k, v in fixed.items() if getattr(model.config, k) != v]
    if differ:
        raise UserError(
            f"student.init={student.init}: its {', '.join(differ)} "
            f"({', '.join(f'{k}={getattr(model.config, k)!r}' for k in differ)}) differ from the "
            f"student.* keys; the checkpoint decides the architecture, so remove those keys or "
            f"make them equal.")
    typed = config_lib.from_dict(type(model.config), {**dataclasses.asdict(model.config),
                                                      **runtime}, where="student")
    return type(model)(typed)


def load_teacher(role: str, teacher: TeacherConfig, head: str, num_labels: int | None = None,
                 hint: str = "") -> tuple[Model, dict, Path | None]:
    """A frozen teacher with `head` ('none' drops whatever head it has): host params as stored
    (full precision); `teacher_runtime` makes the copy the run uses."""
    if not teacher.path:
        raise UserError(f"The method needs a teacher for the role '{role}': set "
                        f"{_key(role)}.path to a checkpoint or Hugging Face directory.{hint}")
    model, params, tok = load_pretrained(teacher.path)
    if head == "none" and model.config.head != "none":
        model, params = with_head(model, params, "none", jax.random.key(0))  # only a pooler is drawn
    elif head != "none" and (model.config.head != head or (
            num_labels and model.config.num_labels != num_labels)):
        labels = f" with {num_labels} labels" if num_labels else ""
        has = f" with {model.config.num_labels} labels" if model.config.head == "classifier" else ""
        raise UserError(f"{_key(role)}.path={teacher.path}: the method needs a teacher with a "
                        f"'{head}' head{labels}, but this checkpoint has head "
                        f"'{model.config.head}'{has}.{hint}")
    return model, params, tok


def teacher_runtime(model: Model, params: dict, teacher: TeacherConfig) -> tuple[Model, dict]:
    """The teacher as it runs: `teacher.dtype` for compute and params, its layer layout."""
    run = model.runtime(dtype=teacher.dtype, param_dtype=teacher.dtype,
                        scan_layers=teacher.scan_layers, remat="none")
    return run, cast_floats(run.from_canonical(model.canonical(params)), teacher.dtype)


def teacher_configs(run: Any, roles: tuple[str, ...]) -> dict[str, TeacherConfig]:
    """TeacherConfig per role: 'teacher' is `teacher`, every other role an entry of `teachers`."""
    unknown = sorted(set(run.teachers) - set(roles))
    if unknown:
        raise UserError(f"teachers: {', '.join(unknown)} is not a teacher role of method "
                        f"'{run.method.name}' (its roles: {', '.join(roles) or 'none'}).")
    out = {}
    for role in roles:
        if role == "teacher":
            out[role] = run.teacher
        elif role in run.teachers:
            out[role] = config_lib.from_dict(TeacherConfig, run.teachers[role],
                                             where=f"teachers.{role}")
        else:
            raise UserError(f"method '{run.method.name}' learns from a teacher in the role "
                            f"'{role}': add teachers.{role}.path.")
    return out


def _key(role: str) -> str:
    return "teacher" if role == "teacher" else f"teachers.{role}"
