"""The program's runtime: JAX's distributed set-up, which process writes, barriers, and a readable log.

Multi-process (several hosts, or several processes on one host) runs on JAX's own distributed runtime: set
DIFFMEM_DISTRIBUTED=1 (plus, outside SLURM / Cloud TPU / k8s, DIFFMEM_COORDINATOR_ADDRESS, DIFFMEM_NUM_PROCESSES,
DIFFMEM_PROCESS_ID) and `initialize_distributed()` runs before any other JAX call (diffmem.main does). Every
process runs the same program; only process 0 writes files (`is_writer`, used by diffmem.io), and the others wait
at `barrier` where a file must exist before they go on. On CPU the cross-process collectives are gloo.
"""
from __future__ import annotations

import logging as pylogging
import os

import jax
from absl import logging


def distributed_requested() -> bool:
    return os.environ.get("DIFFMEM_DISTRIBUTED", "0") not in ("", "0")


def initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize` when DIFFMEM_DISTRIBUTED is set (not "" / "0"); a no-op otherwise.

    Optional env: DIFFMEM_COORDINATOR_ADDRESS (host:port), DIFFMEM_NUM_PROCESSES, DIFFMEM_PROCESS_ID; left
    unset, JAX auto-detects SLURM, Cloud TPU VMs, Open MPI and k8s. Must run before any other JAX call.
    Idempotent. Returns whether the distributed runtime is initialised.
    """
    if not distributed_requested():
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if addr := os.environ.get("DIFFMEM_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = addr
    for env, arg in (("DIFFMEM_NUM_PROCESSES", "num_processes"), ("DIFFMEM_PROCESS_ID", "process_id")):
        if v := os.environ.get(env):
            if not v.isdigit():
                raise ValueError(f"{env} must be a non-negative integer, got {v!r}")
            kwargs[arg] = int(v)
    jax.distributed.initialize(**kwargs)
    return True


def check_distributed() -> None:
    """RuntimeError when DIFFMEM_DISTRIBUTED is set but the runtime was never initialised."""
    if distributed_requested() and not jax.distributed.is_initialized():
        raise RuntimeError("DIFFMEM_DISTRIBUTED is set but jax.distributed is not initialized: call "
                           "diffmem.runtime.initialize_distributed() before any other JAX call")


def is_writer() -> bool:
    """True on the process that writes files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes wait here (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def quiet_orbax() -> None:
    """Drops orbax's INFO records (several per checkpoint save) from the absl log; its warnings stay."""
    handler = logging.get_absl_handler()
    if not any(getattr(f, "_diffmem_orbax", False) for f in handler.filters):
        def keep(record):
            return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname
        keep._diffmem_orbax = True
        handler.addFilter(keep)
    for name in ("orbax", "absl.orbax"):
        pylogging.getLogger(name).setLevel(pylogging.WARNING)


def describe() -> str:
    """One line: backend, devices, process index and count."""
    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    return (f"backend {jax.default_backend()}, {len(devs)} device(s) ({', '.join(kinds)}), "
            f"{jax.local_device_count()} local; process {jax.process_index()} of {jax.process_count()}")
