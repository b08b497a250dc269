"""One run per run directory: a lock file that a second run started on it stops at (exit 2).

`run_dir/.jaxdistill.lock` holds the owner's host and pid. Process 0 takes it for the whole job
(every process learns the outcome, so a second multi-host job stops on all its hosts); it is
released when the run ends, however it ends, and at interpreter exit. A lock left by a crash
(SIGKILL, power loss) is taken over when its pid no longer runs on this host; a lock from
another host cannot be checked from here and has to be removed by hand, as the message says.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdistill.errors import UserError

LOCK_FILE = ".jaxdistill.lock"


def acquire(run_dir: str | Path) -> None:
    """Take run_dir's lock or raise UserError naming its owner (all processes agree)."""
    run_dir = Path(run_dir)
    ok, message = True, ""
    if jax.process_index() == 0:
        ok, message = _try_acquire(run_dir)
    if jax.process_count() > 1:
        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if not ok:
        raise UserError(message or f"run_dir={run_dir} is in use by another run (see process 0).")


def release(run_dir: str | Path) -> None:
    """Drop the lock if this process holds it."""
    path = Path(run_dir) / LOCK_FILE
    owner = _read(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _try_acquire(run_dir: Path) -> tuple[bool, str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        owner = _read(path) or {}
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and pid == os.getpid():
            return True, ""  # this process already holds it
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            print(f"run_dir {run_dir}: taking over the lock of process {pid}, which no longer "
                  f"runs (it crashed or was killed).", flush=True)
            tmp = path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(_me()))
            tmp.replace(path)
        else:
            return False, (f"run_dir={run_dir} is in use by another run (process {pid} on host "
                           f"{host}, lock {path}). Wait for it to finish, or pick another "
                           f"run_dir; if no run uses it any more, delete {path}.")
    else:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_me()))
    atexit.register(release, run_dir)
    return True, ""
