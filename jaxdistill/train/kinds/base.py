"""The interface of a kind of training data, its registry, and the parts every kind shares.

A method declares the kind it trains on (`Method.data_kind`); `jaxdistill pretrain`, `finetune`
and `evaluate` look the kind up here and hand it the run. A kind owns its recipe's keys (its
`Config`: only those that apply), its data source, its evaluator, its `evaluate` path and its run
header. Adding one is a new file that `register`s a `DataKind`; nothing else changes.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxdistill import config as config_lib, sharding
from jaxdistill.config import CONFIG_DIR, TaskRunConfig
from jaxdistill.data import tasks
from jaxdistill.errors import UserError, lookup
from jaxdistill.loading import check_student
from jaxdistill.methods import method_class, parse_options
from jaxdistill.train import loop
from jaxdistill.data.placement import process_rows


@dataclasses.dataclass(frozen=True)
class EvaluateRequest:
    """What `jaxdistill evaluate` was asked beyond the recipe."""

    model: str
    split: str = "dev"
    predictions: str | None = None  # write each example's prediction there (JSON Lines)
    speeds: str | None = None  # FastBERT's exit thresholds, comma-separated
    report_dir: str | None = None
    latency_examples: int = 256


def _no_evaluate(cfg: Any, request: EvaluateRequest) -> dict:
    raise UserError(f"`jaxdistill evaluate` scores models of the task stage; {request.model} "
                    f"was given with a general-distillation recipe (method "
                    f"'{cfg.method.name}'): give its task recipe with --config.")


@dataclasses.dataclass(frozen=True)
class DataKind:
    """One kind of training data.

    name: what methods declare (`Method.data_kind`). Config: its recipe's keys, only those
    that apply. run(cfg) -> summary: train or resume to the end. what: how messages name it.
    command: the `jaxdistill` command that trains on it. default_recipe: under configs/, for
    `evaluate` without --config. evaluate(cfg, request) -> summary: `jaxdistill evaluate`.
    owns_model(model_ref): whether a model, by its files alone, is evaluated by this kind (a
    multi-task checkpoint); `evaluate` without --config then picks this kind.
    """

    name: str
    Config: type
    run: Callable[[Any], dict]
    what: str
    command: str = "finetune"
    default_recipe: str = "task/teacher.yaml"
    evaluate: Callable[[Any, EvaluateRequest], dict] = _no_evaluate
    owns_model: Callable[[str], bool] = lambda model_ref: False


REGISTRY: dict[str, DataKind] = {}


def register(kind: DataKind) -> DataKind:
    REGISTRY[kind.name] = kind
    return kind


def kind_named(name: str) -> DataKind:
    return lookup(REGISTRY, name, "a method's data_kind", "kind of training data")


def kind_of_method(name: str, options: dict | None) -> DataKind:
    """The kind of data method `name` with `options` trains on (its declaration)."""
    cls = method_class(name)
    return kind_named(cls.data_kind(parse_options(cls, options)))


# --------------------------------------------------------------------------------------------
# Recipes: the method names the kind, the kind names the keys


# A recipe without `method`: the schemas' defaults (TinyBERT general distillation; fine-tuning).
DEFAULT_METHOD = {"pretrain": config_lib.RunConfig().method.name,
                  "finetune": TaskRunConfig().method.name,
                  "evaluate": TaskRunConfig().method.name}
UNKNOWN_KEY = re.compile(r"unknown key '([\w.]+)'")


def _method_of(data: dict, overrides: typing.Sequence[str], command: str) -> tuple[str, dict]:
    """(method name, options) of a recipe with its overrides applied, before any validation."""
    method = data.get("method") or {}
    method = {"name": method} if isinstance(method, str) else dict(method)
    method["options"] = dict(method.get("options") or {})
    for item in overrides:
        keys, value = config_lib.parse_override(item)
        if keys == ["method"]:
            method = ({"name": value, "options": {}} if not isinstance(value, dict) else
                      {"options": {}, **value})
        elif keys[:1] == ["method"] and keys[1:2] == ["name"]:
            if value != method.get("name"):
                method["options"] = {}  # another method: the recipe's options mean nothing to it
            method["name"] = value
        elif keys[:2] == ["method", "options"] and len(keys) > 2:
            method["options"][".".join(keys[2:])] = value
    return str(method.get("name") or DEFAULT_METHOD[command]), method["options"]


def load(command: str, path: str | Path | None, overrides: typing.Sequence[str] = ()
         ) -> tuple[DataKind, Any]:
    """(kind, typed config) of a recipe for `command`: read it (or the command's default
    recipe), find its method's kind of data, then validate every key against that kind's
    schema."""
    if path is None:
        default = kind_named("mlm_corpus" if command == "pretrain" else "task").default_recipe
    data = config_lib.read_yaml(path if path else CONFIG_DIR / default)
    name, options = _method_of(data, overrides, command)
    kind = kind_of_method(name, {k: v for k, v in options.items() if "." not in k})
    if kind.command != command and command != "evaluate":
        raise UserError(f"method '{name}' trains on {kind.what}: run it with `jaxdistill "
                        f"{kind.command}`, not `jaxdistill {command}`.")
    try:
        cfg = config_lib.from_dict(kind.Config,
                                   config_lib.apply_overrides(data, overrides, kind.Config))
    except UserError as e:
        raise UserError(str(e) + _other_kinds(e, kind, name)) from None
    check_student(cfg.student)
    return kind, cfg


def load_for_evaluate(model_ref: str, path: str | Path | None,
                      overrides: typing.Sequence[str] = ()) -> tuple[DataKind, Any]:
    """(kind, config) for `jaxdistill evaluate`: the recipe's kind; without a recipe, the kind
    that owns the model by its files (a multi-task checkpoint), with the default task recipe's
    keys that apply to it, else the default task recipe."""
    if path is None:
        owner = next((k for k in REGISTRY.values() if k.owns_model(model_ref)), None)
        if owner is not None:
            data = config_lib.read_yaml(CONFIG_DIR / kind_named("task").default_recipe)
            fields = {f.name for f in dataclasses.fields(owner.Config)}
            data = {k: v for k, v in data.items() if k in fields}
            return owner, config_lib.from_dict(owner.Config, config_lib.apply_overrides(
                data, overrides, owner.Config))
    return load("evaluate", path, overrides)


def _other_kinds(error: UserError, kind: DataKind, method: str) -> str:
    """For an unknown key: the kind this recipe trains on, and which kinds have that key."""
    match = UNKNOWN_KEY.search(str(error))
    if not match:
        return ""
    top = match.group(1).split(".")[0]
    if top in {f.name for f in dataclasses.fields(kind.Config)}:
        return ""  # a sub-key of a section this kind has: the message names the valid ones
    others = [k.name for k in REGISTRY.values() if k is not kind
              and top in {f.name for f in dataclasses.fields(k.Config)}]
    where = f" '{top}' is a key of {', '.join(others)} runs." if others else ""
    return (f" (method '{method}' trains on {kind.what}, kind '{kind.name}': `jaxdistill "
            f"{kind.command} --help` lists its keys.{where})")


# --------------------------------------------------------------------------------------------
# Parts every kind shares: the run tail, batches as a function of the step, eval batching


def train(cfg: TaskRunConfig | Any, roles: loop.Roles, source: Any, *, total_steps: int,
          seq_len: int, header: str, evaluator: Any = None, command: str = "jaxdistill finetune",
          **job: Any) -> dict:
    """Assemble the run, check its batch sizes, take the run dir, run the loop."""
    setup = loop.assemble(cfg, sharding.make_mesh(cfg.mesh), roles, total_steps=total_steps,
                          batch_spec=source.spec)
    loop.check_batch(cfg.batch_size, cfg.optimizer.grad_accum, setup.mesh)
    if evaluator is not None:
        loop.check_batch(cfg.eval_batch_size, 1, setup.mesh, key="eval_batch_size")
    loop.start_run_dir(setup)
    return loop.run(loop.Job(setup, source, total_steps=total_steps, seq_len=seq_len,
                             evaluator=evaluator(setup) if evaluator is not None else None,
                             eval_every=cfg.eval_every, select=cfg.select, header=header,
                             command=command, **job))


def total_steps(cfg: TaskRunConfig, batches: Any) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * batches.steps_per_epoch))


class StepSource:
    """The loop's data source for batches that are a pure function of the step (task data): no
    iterator state, so resume needs only the step. `make(step)` gives global batch `step`."""

    prefetch = 2

    def __init__(self, make: typing.Callable[[int], dict[str, np.ndarray]],
                 spec: dict[str, int]):
        self.make, self.spec = make, spec

    def iterator(self, start: int, saved_state: Any) -> "_Steps":
        del saved_state  # the step alone positions the data
        return _Steps(self.make, start)


class _Steps:
    def __init__(self, make, start: int):
        self.make, self.step = make, start

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.make(self.step)
        self.step += 1
        return process_rows(batch)

    def get_state(self) -> None:
        return None


def task_source(batches: tasks.TaskBatches) -> StepSource:
    return StepSource(batches.batch, {k: v.ndim for k, v in batches.arrays.items()})
