"""Multi-host start-up: `jax.distributed.initialize()` when the environment shows a multi-host job.

Explicit variables win (what `launch/local.sh` sets):
  JAXDISTILL_COORDINATOR   host:port of process 0
  JAXDISTILL_NUM_PROCESSES number of processes
  JAXDISTILL_PROCESS_ID    this process's index
Otherwise JAX's own cluster detection runs for TPU pods (TPU_WORKER_HOSTNAMES with more than
one worker), SLURM (SLURM_NTASKS > 1) and Kubernetes JobSets / GKE (JOBSET_NAME, or
MEGASCALE_COORDINATOR_ADDRESS for multi-slice). A single process starts nothing.
"""
from __future__ import annotations

import os

import jax

from jaxdistill.errors import UserError

_initialized = False


def _cluster_detected(env: dict) -> bool:
    workers = [w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w]
    return (len(workers) > 1 or int(env.get("SLURM_NTASKS", "1") or 1) > 1
            or "JOBSET_NAME" in env or "MEGASCALE_COORDINATOR_ADDRESS" in env)


def explicit_args(env: dict) -> dict | None:
    """initialize() keyword arguments from JAXDISTILL_* variables, or None when unset."""
    names = ("JAXDISTILL_COORDINATOR", "JAXDISTILL_NUM_PROCESSES", "JAXDISTILL_PROCESS_ID")
    present = [n for n in names if env.get(n)]
    if not present:
        return None
    if len(present) != len(names):
        missing = sorted(set(names) - set(present))
        raise UserError(f"Multi-process launch: {', '.join(present)} set but {', '.join(missing)} "
                        f"missing; set all three (launch/local.sh does).")
    try:
        num, pid = int(env["JAXDISTILL_NUM_PROCESSES"]), int(env["JAXDISTILL_PROCESS_ID"])
    except ValueError:
        raise UserError("JAXDISTILL_NUM_PROCESSES and JAXDISTILL_PROCESS_ID must be integers.") from None
    if not 0 <= pid < num:
        raise UserError(f"JAXDISTILL_PROCESS_ID={pid} must be in [0, {num}).")
    return {"coordinator_address": env["JAXDISTILL_COORDINATOR"], "num_processes": num,
            "process_id": pid}


def maybe_initialize(env: dict | None = None) -> bool:
    """Initialise the JAX multi-controller runtime if this is a multi-process job."""
    global _initialized
    if _initialized:
        return True
    env = dict(os.environ if env is None else env)
    kwargs = explicit_args(env)
    if kwargs is not None:
        if kwargs["num_processes"] == 1:
            return False
        jax.distributed.initialize(**kwargs)
    elif _cluster_detected(env):
        jax.distributed.initialize()
    else:
        return False
    _initialized = True
    return True
