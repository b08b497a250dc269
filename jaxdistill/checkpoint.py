"""Orbax checkpoints: a few verbs (make the manager, restore-or-init, maybe-save, wait).

A checkpoint step directory holds three items:
  state  the student's train state (params incl. method params, optimizer state, step, rng);
         never the frozen teacher.
  data   each process's data-iterator state (one JSON file per process, grain's format).
  meta   JSON: the resolved run config and the student architecture, so that export and the
         task stage need nothing but the checkpoint.
Orbax writes a step under a temporary name and renames it when complete, so a half-written
checkpoint is never listed; `latest_step` only sees finished ones.

Restore order, written once here: resume from `run_dir/checkpoints` if it has a step; otherwise
the caller initialises (warm start from a path, or random).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxdistill.convert.hf_dir import copy_tokenizer as copy_files
from jaxdistill.errors import UserError

ITEMS = ("state", "data", "meta")


def manager(directory: str | Path, *, keep: int = 3, keep_every: int = 0,
            async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None,
        keep_period=keep_every or None,
        enable_async_checkpointing=async_save,
        create=True,
    )
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "data": grain_ckpt.CheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(_abs(directory), item_names=ITEMS, options=options,
                                 item_handlers=handlers)


def _abs(path: str | Path) -> str:
    s = str(path)
    return s if "://" in s else str(Path(s).expanduser().resolve())


class DataState:
    """A snapshot of a data iterator's state, in the shape grain's checkpoint handler expects.

    The train loop prefetches, so the live iterator runs ahead of the step being saved; we save
    the state captured right after the last batch the step consumed instead.
    """

    def __init__(self, state: bytes | dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        if self.state is None:
            raise ValueError("no data-iterator state to save")
        if isinstance(self.state, dict):
            return json.dumps(self.state).encode()
        return self.state

    def set_state(self, state: bytes) -> None:
        self.state = state

    def start_prefetch(self) -> None:  # called by grain's handler after restore
        pass


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: bytes | dict | None,
         meta: dict, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_state is not None:
        args["data"] = grain_ckpt.CheckpointSave(DataState(data_state))
    return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore_state(mngr: ocp.CheckpointManager, step: int, target: Any) -> tuple[Any, bytes | None]:
    """Train state restored onto `target`'s shardings (any mesh), plus this process's data state.

    The data state is None when the checkpoint has none for this process, e.g. it was written by
    another number of processes; the caller then positions the data by step.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    args = {"state": ocp.args.StandardRestore(abstract)}
    step_dir = epath.Path(mngr.directory) / str(step)  # epath: local disk or gs:// alike
    mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    has_data = (step_dir / "data" / mine).exists()
    if has_data:
        args["data"] = grain_ckpt.CheckpointRestore(DataState())
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], (restored["data"].state if has_data else None)


# --------------------------------------------------------------------------------------------
# Model-level verbs: a student (or imported) model as a checkpoint, for export and warm starts.


def find_step_dir(path: str | Path) -> Path:
    """A run dir, a checkpoints dir or one step dir -> the step dir holding 'state' and 'meta'.

    The newest step is the one: when it is damaged the error names it, rather than an older
    step being used without a word (docs/decisions.md).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"Checkpoint path {path} does not exist.")
    if (path / "state").exists() or (path / "meta").exists():  # one step dir
        check_complete(path)
        return path
    for candidate in (path / "checkpoints", path):
        step_dir = newest_step_dir(candidate)
        if step_dir is not None:
            return step_dir
    raise UserError(
        f"{path} holds no complete checkpoint: expected a run dir (with checkpoints/<step>/), "
        f"a checkpoints dir (with <step>/) or one step dir (with state/ and meta/).")


def newest_step_dir(steps_dir: Path) -> Path | None:
    """The newest `<step>/` folder under steps_dir (None: there is none), checked complete: a
    damaged one is an error naming it, never skipped for an older one."""
    if "://" in str(steps_dir) or not steps_dir.is_dir():
        return None
    steps = sorted((int(p.name) for p in steps_dir.iterdir() if p.name.isdigit() and p.is_dir()),
                   reverse=True)
    if not steps:
        return None
    check_complete(steps_dir / str(steps[0]), older=[steps_dir / str(s) for s in steps[1:]])
    return steps_dir / str(steps[0])


def damage_of(step_dir: Path) -> str | None:
    """Why `step_dir` is not a complete checkpoint (None: it is)."""
    if "://" in str(step_dir):
        return None  # a bucket: Orbax's commit markers are the check there
    if not (step_dir / "state").is_dir():
        return "its state/ folder is missing"
    if not (step_dir / "meta").is_dir():
        return "its meta/ folder is missing"
    if not (step_dir / "state" / "_METADATA").is_file():
        return "its state/ folder has no _METADATA (the save never finished)"
    return None


def check_complete(step_dir: Path, older: list[Path] | None = None) -> None:
    """UserError naming a damaged step dir, which stays on disk, and what to do."""
    reason = damage_of(step_dir)
    if reason is None:
        return
    previous = next((p for p in older or [] if damage_of(p) is None), None)
    then = (f"move it out of {step_dir.parent} (or delete it) to use step {previous.name}, the "
            f"newest complete one" if previous is not None else
            "no older complete step exists, so start a new run_dir")
    raise UserError(f"Checkpoint step {step_dir.name} ({step_dir}) is damaged: {reason}. It is "
                    f"left as it is; {then}.")


def read_meta(step_dir: Path) -> dict:
    meta_dir = step_dir / "meta"
    files = list(meta_dir.glob("*"))
    for f in files:
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError:
                continue
    raise UserError(f"{meta_dir} has no readable metadata JSON.")


def check_same_model(step_dir: Path, model: Any) -> None:
    """A run resumes only onto the model it saved: a run_dir reused for another architecture (or
    head) stops here, naming what differs, instead of failing inside Orbax's restore."""
    saved = read_meta(step_dir).get("model", {})
    now = json.loads(json.dumps(model.meta()))  # tuples as the saved JSON has them
    runtime = set(model.RUNTIME_FIELDS)
    differ = sorted(k for k in set(saved) & set(now) if k not in runtime and saved[k] != now[k])
    if differ:
        shown = "; ".join(f"{k} {saved[k]!r} there, {now[k]!r} now" for k in differ[:6])
        raise UserError(f"{step_dir.parent} holds checkpoints of another model ({shown}): this "
                        f"config cannot resume them. Give a new run_dir, or delete "
                        f"{step_dir.parent} to start over.")


def model_meta(model: Any, **extra: Any) -> dict:
    """What a checkpoint stores to rebuild its model: `model.meta()` (kind and config), and
    under 'exported_params' the method params that are part of the exported model."""
    return {"model": model.meta(), **extra}


def copy_tokenizer(src: str | Path | None, run_dir: str | Path) -> Path | None:
    """Copy the tokenizer files next to the checkpoints (`run_dir/tokenizer`), so runs are portable."""
    if src is None:
        return None
    dst = Path(run_dir) / "tokenizer"
    dst.mkdir(parents=True, exist_ok=True)
    copy_files(src, dst)
    return dst


def run_dir_of(step_dir: Path) -> Path:
    """run_dir/checkpoints/<step> -> run_dir."""
    return step_dir.parent.parent


def tokenizer_dir_of(step_dir: Path) -> Path | None:
    tok = run_dir_of(step_dir) / "tokenizer"
    return tok if tok.is_dir() else None


def read_student_params(step_dir: Path) -> dict:
    """Only params/student, as host NumPy: works on any machine, whatever mesh wrote it."""
    return read_params(step_dir, ("student",))["student"]


def read_exported_params(step_dir: Path) -> dict:
    """The method params that belong to the exported model (meta 'exported_params'), or {}."""
    names = tuple(read_meta(step_dir).get("exported_params", ()))
    if not names:
        return {}
    return read_params(step_dir, ("method",), only=names)["method"]


def read_params(step_dir: Path, parts: tuple[str, ...], only: tuple[str, ...] = ()) -> dict:
    """params/<part> for each part (restricted to the subtrees `only` when given), host NumPy,
    by Orbax partial restore: the optimizer state and the other parts are never read."""
    state_dir = Path(_abs(step_dir)) / "state"  # Orbax reads no tree metadata via relative paths
    try:
        # The handler reads the item directory itself; a Checkpointer would look for a
        # checkpoint-level _CHECKPOINT_METADATA there (the manager writes it one level up) and
        # warn on every read of a run's best/ checkpoint.
        ckptr = ocp.PyTreeCheckpointHandler()
        tree = ckptr.metadata(state_dir).tree
        is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
        wanted = {}
        for part in parts:
            sub = tree["params"][part]
            if only:
                missing = [k for k in only if k not in sub]
                if missing:
                    raise KeyError(f"params/{part} has no {', '.join(missing)}")
                sub = {k: sub[k] for k in only}
            wanted[part] = jax.tree.map(lambda m: np.zeros((), m.dtype), sub, is_leaf=is_leaf)
        item = {"params": wanted}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        out = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # orbax raises many types for unreadable data
        raise UserError(f"Could not read checkpoint {state_dir}: {e}") from None
    return out["params"]


def save_model(run_dir: str | Path, model: Any, params: dict, tokenizer_dir: str | Path | None,
               step: int = 0, keep: int = 0, exported: dict | None = None,
               **extra_meta: Any) -> Path:
    """Write a model's params as `run_dir/checkpoints/<step>/` plus `run_dir/tokenizer`.

    keep > 0 drops all but the newest `keep` steps (the task stage's single best checkpoint).
    exported: method params that belong to the exported model, saved as params/method.
    """
    run_dir = Path(run_dir).expanduser()
    mngr = manager(run_dir / "checkpoints", keep=keep, async_save=False)
    state = {"params": {"student": params, **({"method": exported} if exported else {})},
             "step": np.int64(step)}
    meta = model_meta(model, exported_params=sorted(exported or {}), **extra_meta)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()
    mngr.close()
    copy_tokenizer(tokenizer_dir, run_dir)
    return run_dir / "checkpoints" / str(step)
