"""Typed configuration: YAML recipes plus dotted `key=value` overrides, strictly validated.

A recipe may start from another with `base: other.yaml` (path relative to the recipe) and then
hold only its differences. Unknown or misspelled keys are errors that name the closest valid key.
Config objects are frozen: nothing patches them after `load`.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml

from jaxdistill.errors import UserError, closest as _closest

# The shipped recipes live inside the package (a wheel carries them); a clone's top-level
# `configs` is a link to this folder.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def check_keys(data: dict, valid: typing.Sequence[str], where: str) -> None:
    """An unknown key is an error that names the closest valid one."""
    for key in data:
        if key not in valid:
            raise UserError(f"{where}: unknown key '{key}'.{_closest(key, valid)} "
                            f"Valid keys here: {', '.join(valid)}.")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh ('data', 'fsdp', 'tensor'); -1 takes the devices the other axes leave.

    dcn_* split an axis across slices/hosts (DCN) in multi-slice jobs; the ICI size of an axis is
    its value divided by its DCN value.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """A frozen teacher: a Hugging Face directory, a jaxdistill checkpoint, or `package:minilm`.

    Its architecture and head come from the checkpoint; dtype and scan_layers are how it runs.
    """

    _RANGES: ClassVar[dict[str, str]] = {"dtype": "float32|bfloat16|float16"}

    path: str = "package:minilm"
    dtype: str = "bfloat16"
    scan_layers: bool = False


SET_ELSEWHERE = ("kind", "head", "num_labels")  # fields of a model config no recipe sets


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """The student: its model kind, architecture, initialisation and frozen parts.

    Every other key of this section is a field of the kind's architecture config (for kind
    'bert': hidden_size, num_layers, num_heads, intermediate_size, flavor, hidden_act, dropouts,
    dtype, param_dtype, scan_layers, remat, ...), checked against that kind and its ranges when
    the recipe loads (`loading.check_student`).
    The head and label count are not keys: the method and the task decide them.
    init: 'default' (the method's choice), 'random', 'teacher_layers' (DistilBERT: copy evenly
    spaced teacher layers), 'teacher_embeddings' (random, but the word table is the teacher's,
    projected onto its leading principal components when the student's is narrower), or a
    model reference (Hugging Face dir, jaxdistill run dir,
    package:minilm). From a reference the architecture is the reference's: only runtime keys
    (dtype, dropout, scan_layers, remat) may be given beside it.
    freeze: parameter path prefixes (e.g. 'encoder', 'embeddings') that are not trained.
    """

    _REST: ClassVar[str] = "architecture"

    kind: str = "bert"
    init: str = "default"
    freeze: list = dataclasses.field(default_factory=list)
    architecture: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    _RANGES: ClassVar[dict[str, str]] = {
        "b1": "[0, 1)", "b2": "[0, 1)", "eps": "(0, inf)", "weight_decay": "[0, inf)",
        "grad_clip": "[0, inf)", "warmup_ratio": "[0, 1]", "warmup_steps": "[-1, inf)",
        "end_lr_ratio": "[0, 1]", "grad_accum": "[1, inf)",
        "schedule": "linear|cosine|constant|inverse_sqrt",
        "name": "adamw|lamb"}

    name: str = "adamw"  # or 'lamb' (MobileBERT's): Adam moments, then a per-layer trust ratio
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # global norm; 0 disables
    # After warmup: 'linear', 'cosine', 'constant', or 'inverse_sqrt' (peak * sqrt(warmup /
    # step), the Transformer's Noam schedule with its peak named)
    schedule: str = "linear"
    warmup_ratio: float = 0.1
    warmup_steps: int = -1  # >= 0 overrides warmup_ratio
    end_lr_ratio: float = 0.0
    grad_accum: int = 1


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What a run writes at its end: run_dir/hf (a Hugging Face directory), and with format onnx
    also run_dir/onnx (ONNX Runtime files checked against the JAX model; quantize int8 adds the
    dynamic int8 model). `export: false` is short for `export.enabled: false`."""

    _RANGES: ClassVar[dict[str, str]] = {"format": "hf|onnx", "quantize": "none|int8"}

    enabled: bool = True
    format: str = "hf"
    quantize: str = "none"

    def __post_init__(self):
        if self.quantize != "none" and self.format != "onnx":
            raise ValueError(f"quantize={self.quantize} quantizes an ONNX export: set "
                             f"export.format: onnx.")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Which distillation method and its options (validated by the method itself)."""

    name: str = "tinybert"
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Keys every training recipe has (`jaxdistill pretrain` and `finetune` alike).

    teachers: extra named teachers, {role: {path, dtype, scan_layers}}, for methods that learn
    from several (the role 'teacher' is `teacher`).
    """

    _RANGES: ClassVar[dict[str, str]] = {
        "seed": "[0, inf)", "steps": "[0, inf)", "batch_size": "[1, inf)", "seq_len": "[1, inf)",
        "learning_rate": "(0, inf)", "save_every": "[1, inf)", "keep_checkpoints": "[0, inf)",
        "keep_every": "[0, inf)", "log_every": "[1, inf)"}

    run_dir: str = "runs/demo"
    # Where Orbax writes checkpoints; default run_dir/checkpoints. May be a gs:// bucket path
    # (Orbax/tensorstore); the run dir itself (metrics, config, export) must be a local/mounted path.
    checkpoint_dir: str = ""
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    learning_rate: float = 1e-4
    save_every: int = 500
    keep_checkpoints: int = 3
    keep_every: int = 0  # also keep every Nth step forever; 0 = off
    log_every: int = 10
    export: ExportConfig = ExportConfig()
    tensorboard: bool = True
    async_checkpoint: bool = True
    mesh: MeshConfig = MeshConfig()
    teacher: TeacherConfig = TeacherConfig()
    teachers: dict = dataclasses.field(default_factory=dict)
    student: StudentConfig = StudentConfig()
    method: MethodConfig = MethodConfig()
    optimizer: OptimizerConfig = OptimizerConfig()


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """A labeled task (jaxdistill/data/tasks.py). `name` picks a preset of columns and metrics.

    source: 'package:rotten_tomatoes', 'package:imdb', 'package:bbc_news', 'tfds:glue/sst2'
    (TFDS on disk), a GLUE task directory (train.tsv + dev.tsv), a Hugging Face dataset (a
    save_to_disk directory, or Parquet/Arrow files: splits train_split_name and
    dev_split_name), or one CSV/TSV/JSONL file (split by dev_split).
    Empty column/metric keys take the preset's values.
    """

    _RANGES: ClassVar[dict[str, str]] = {"num_labels": "[0, inf)", "dev_split": "(0, 1)",
                                          "split_seed": "[0, inf)", "max_train_examples": "[0, inf)",
                                          "max_dev_examples": "[0, inf)"}

    name: str = "rotten_tomatoes"
    source: str = ""  # default: the preset's source
    train_file: str = ""  # explicit files override source
    dev_file: str = ""
    text_a_column: str = ""
    text_b_column: str = ""
    label_column: str = ""
    num_labels: int = 0  # 0 = from the preset / the data; 1 = regression
    metric: str = ""  # the dev metric that selects the best checkpoint
    dev_split: float = 0.1  # share of the labeled data held out when the source has no dev set
    split_seed: int = 0
    max_train_examples: int = 0  # 0 = all
    max_dev_examples: int = 0
    augmented: str = ""  # JSONL written by `jaxdistill augment`: replaces the train set
    tfds_data_dir: str = ""
    train_split_name: str = "train"  # of a Hugging Face dataset
    dev_split_name: str = "validation"  # absent: dev_split of train is held out


@dataclasses.dataclass(frozen=True)
class TaskRunConfig(RunConfig):
    """Keys every `jaxdistill finetune` recipe has, whatever its kind of data (train/kinds/: one
    task, several tasks, a sequence-to-sequence task); each kind adds its own.

    The student usually starts from `student.init` (a general-distillation run dir, an Orbax step
    dir, a Hugging Face directory or package:minilm), whose architecture it keeps; with
    `student.init: random` the student.* keys give the architecture.
    """

    _RANGES: ClassVar[dict[str, str]] = {**RunConfig._RANGES, "epochs": "(0, inf)",
                                          "eval_batch_size": "[1, inf)", "eval_every": "[1, inf)",
                                          "select": "best|last"}

    run_dir: str = "runs/task_teacher"
    steps: int = 0  # 0 = epochs * steps per epoch
    epochs: float = 3.0
    eval_batch_size: int = 128
    seq_len: int = 64
    learning_rate: float = 5e-5
    keep_checkpoints: int = 2
    eval_every: int = 100  # also at the end of every run
    # run_dir/best holds the checkpoint with the best dev metric ('best') or the final one
    # ('last': TinyBERT's intermediate stage, whose classifier is not trained yet).
    select: str = "best"
    teacher: TeacherConfig = TeacherConfig(path="", dtype="float32")
    student: StudentConfig = StudentConfig(init="package:minilm")
    method: MethodConfig = MethodConfig(name="finetune")


# --------------------------------------------------------------------------------------------
# Loading and validation


def coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except UserError:
                continue
        raise UserError(f"{where}: {value!r} is not a valid {tp}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}.")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            args = typing.get_args(tp)
            if len(args) == 2 and dataclasses.is_dataclass(args[1]):
                return {str(k): _section(args[1], k, v, f"{where}.{k}") for k, v in value.items()}
            return dict(value)
        raise UserError(f"{where}: expected a mapping, got {value!r}.")
    if tp is list or origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value) if origin is tuple else list(value)
        raise UserError(f"{where}: expected a list, got {value!r}.")
    return value


def _section(cls: type, key: Any, value: Any, where: str) -> Any:
    """One entry of a {name: section} mapping (`tasks.NAME`); its `name` defaults to the key."""
    if isinstance(value, cls):
        return value
    value = dict(value or {}) if isinstance(value, dict) or value is None else value
    if isinstance(value, dict) and "name" in {f.name for f in dataclasses.fields(cls)}:
        value.setdefault("name", str(key))
    return from_dict(cls, value, where)


def entries_of(cls: type, items: Any, where: str, shape: str) -> tuple:
    """A YAML list of mappings (or `cls` objects) as a tuple of `cls`; ValueError otherwise, as
    an option's `__post_init__` raises (layer matches, MobileBERT's phases). `shape` names the
    keys an entry has, for the message."""
    if isinstance(items, (str, dict)) or items is None:
        raise ValueError(f"{where}: expected a list of {shape} entries")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(item if isinstance(item, cls) else from_dict(cls, item, f"{where}[{i}]"))
        except UserError as e:
            raise ValueError(str(e)) from None
    return tuple(out)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        # `teacher: PATH`, `method: NAME` and `export: false` are shorthands for their first
        # field.
        first = dataclasses.fields(cls)[0].name
        if isinstance(data, (str, bool)):
            data = {first: data}
        else:
            raise UserError(f"{where}: expected a mapping of keys, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    rest = getattr(cls, "_REST", None)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if rest and key not in names:
            # An open section: the rest is validated by whoever knows its schema (a model kind).
            kwargs.setdefault(rest, {})[key] = value
            continue
        if key == rest and isinstance(value, dict):
            kwargs.setdefault(rest, {}).update(value)
            continue
        check_keys({key: value}, names, where)
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    try:
        out = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None
    check_ranges(out, where)
    return out


_INTERVAL = re.compile(r"^([\[(])\s*(-?inf|-?[\d.]+)\s*,\s*(-?inf|-?[\d.]+)\s*([\])])$")


def in_range(value: Any, accepted: str) -> bool:
    """Whether `value` is in `accepted`: an interval such as '[0, 1)' or '(0, inf)', or
    alternatives such as 'float32|bfloat16'."""
    m = _INTERVAL.match(accepted)
    if m is None:
        return str(value) in accepted.split("|")
    lo_bracket, lo, hi, hi_bracket = m.groups()
    lo, hi = float(lo), float(hi)
    above = value >= lo if lo_bracket == "[" else value > lo
    below = value <= hi if hi_bracket == "]" else value < hi
    return bool(above and below)


def check_ranges(cfg: Any, where: str = "config") -> None:
    """Every key of `cfg` that its class's `_RANGES` names is in its accepted range."""
    prefix = "" if where == "config" else where.removeprefix("config.") + "."
    for key, accepted in getattr(type(cfg), "_RANGES", {}).items():
        check_value(prefix + key, getattr(cfg, key), accepted)


def check_value(key: str, value: Any, accepted: str) -> None:
    """A UserError naming `key` unless `value` is in `accepted` (None: an optional key unset)."""
    if value is not None and not in_range(value, accepted):
        what = (f"one of {', '.join(accepted.split('|'))}" if "|" in accepted
                or _INTERVAL.match(accepted) is None else f"in {accepted}")
        raise UserError(f"{key}={value!r} is out of range: it must be {what}.")


def to_dict(cfg: Any) -> dict:
    """Plain data; open sections written flat, as recipes write them."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == getattr(cfg, "_REST", None):
            out.update(value)
        else:
            out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_dict(v) if dataclasses.is_dataclass(v) else _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dict(v) if dataclasses.is_dataclass(v) else _plain(v) for v in value]
    return value


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        if k == "method" and isinstance(old, dict) and isinstance(v, dict) \
                and v.get("name", old.get("name")) != old.get("name"):
            out[k] = v  # another method: the base's options mean nothing to it
        elif isinstance(v, dict) and isinstance(old, dict):
            out[k] = _deep_merge(old, v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    """A recipe as a dict, with its `base:` chain merged in (base first).

    A relative `configs/...` path that does not exist here names a shipped recipe, so
    `--config configs/task/kd.yaml` works from any directory of an installed package.
    """
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and path.parts[:1] == ("configs",):
        shipped = CONFIG_DIR.joinpath(*path.parts[1:])
        path = shipped if shipped.is_file() else path
    if not path.is_file():
        hint = f" Recipes shipped: {', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.yaml')))}." \
            if CONFIG_DIR.is_dir() else ""
        raise UserError(f"Config file {path} does not exist.{hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"Config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of keys, not {type(data).__name__}.")
    base = data.pop("base", None)
    if base:
        data = _deep_merge(read_yaml(path.parent / base), data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"Override '{item}' is not of the form key=value (for example steps=100).")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


@dataclasses.dataclass(frozen=True)
class _Entries:
    """While walking an override: a {name: section} mapping, whose keys are free."""

    cls: type


def apply_overrides(data: dict, overrides: typing.Sequence[str], cls: type) -> dict:
    data = dict(data)
    for item in overrides:
        keys, value = parse_override(item)
        node, node_cls = data, cls
        for i, key in enumerate(keys):
            # Validate the path against the schema as we walk, so a typo is named at once.
            entries = isinstance(node_cls, _Entries)
            fields = ({f.name: f for f in dataclasses.fields(node_cls)}
                      if node_cls and not entries else None)
            if fields is not None and getattr(node_cls, "_REST", None) and key not in fields:
                fields = None  # an open section: the model kind validates the rest
            if fields is not None and key not in fields:
                raise UserError(
                    f"Override '{item}': unknown key '{'.'.join(keys[:i + 1])}'."
                    f"{_closest(key, fields)} Valid keys here: {', '.join(fields)}.")
            if i == len(keys) - 1:
                if keys == ["method", "name"] and node.get("name") != value:
                    node.pop("options", None)  # as in a recipe's merge: they were the other's
                node[key] = value
                break
            child = node.get(key)
            if isinstance(child, (str, bool)) and fields is not None:
                child = {dataclasses.fields(typing.get_type_hints(node_cls)[key])[0].name: child}
            child = dict(child or {})
            node[key] = child
            hint = typing.get_type_hints(node_cls)[key] if fields is not None else None
            if entries:
                hint = node_cls.cls  # the entry `KEY` of a {name: section} mapping
            elif typing.get_origin(hint) is dict and len(typing.get_args(hint)) == 2 \
                    and dataclasses.is_dataclass(typing.get_args(hint)[1]):
                node_cls = _Entries(typing.get_args(hint)[1])
                node = child
                continue
            node_cls = hint if dataclasses.is_dataclass(hint) else None
            node = child
    return data


def dump(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def keys(cls: type, prefix: str = "", defaults: Any = None,
         architecture: typing.Callable[[str], list[tuple[str, Any]]] | None = None
         ) -> list[tuple[str, str]]:
    """(dotted key, default) for every leaf of a config class, for --help. Nested sections show
    the defaults of the enclosing recipe (a finetune student starts from package:minilm); an
    open section lists `architecture(kind)`'s (name, default) pairs, the model kind's keys."""
    defaults = cls() if defaults is None else defaults
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        value = getattr(defaults, f.name)
        if f.name == getattr(cls, "_REST", None):
            for name, default in (architecture(defaults.kind) if architecture else []):
                out.append((prefix + name, f"{value.get(name, default)!r}  (kind {defaults.kind})"))
        elif dataclasses.is_dataclass(tp):
            out += keys(tp, f"{prefix}{f.name}.", value, architecture)
        else:
            out.append((prefix + f.name, repr(value)))
    return out
