#!/usr/bin/env python
"""Runs one program as N JAX processes on this machine (CPU), joined by JAX's distributed runtime.

    python launch/local_multiprocess.py -n 2 --devices_per_process 2 -- -m diffmem.main --config=... --workdir=...
    python launch/local_multiprocess.py -n 2 -- path/to/script.py args...

Each process i gets DIFFMEM_DISTRIBUTED=1, DIFFMEM_COORDINATOR_ADDRESS=localhost:PORT, DIFFMEM_NUM_PROCESSES=N,
DIFFMEM_PROCESS_ID=i, JAX_PLATFORMS=cpu, `devices_per_process` fake CPU devices, and gloo cross-process CPU
collectives (JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo; the default since jax 0.4.3x, set for clarity). It calls
`diffmem.runtime.initialize_distributed()` (i.e. `jax.distributed.initialize(coordinator_address=...,
num_processes=N, process_id=i)`) and then runs the module / script as __main__, so the program needs no
launcher-specific code: `train` builds its mesh over the N * devices_per_process global devices.
If one process fails, the others are stopped (they would wait forever at the next collective).
"""
from __future__ import annotations

import argparse
import os
import re
import runpy
import socket
import subprocess
import sys
import time
import traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _split_target(argv: list[str]) -> tuple[str, str, list[str]]:
    """('module', name, args) for ['-m', name, ...]; ('path', script, args) for [script, ...]."""
    if not argv:
        raise SystemExit("local_multiprocess: give the program after '--': '-m module args...' or 'script.py args...'")
    if argv[0] == "-m":
        if len(argv) < 2:
            raise SystemExit("local_multiprocess: '-m' needs a module name")
        return "module", argv[1], argv[2:]
    return "path", argv[0], argv[1:]


def _worker(target: list[str]) -> None:
    """Inside one process: join the distributed runtime, then run the target as __main__."""
    from diffmem.runtime import initialize_distributed  # imports jax but does not start a backend

    initialize_distributed()
    kind, name, args = _split_target(target)
    sys.argv = [name] + args
    try:
        if kind == "module":
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(name)))
            runpy.run_path(name, run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            if not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
            _exit_now(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException:  # noqa: BLE001 - report, then leave without the distributed shutdown barrier
        traceback.print_exc()
        _exit_now(1)


def _exit_now(code: int) -> None:
    """A failed process exits at once: the normal exit would wait at jax.distributed's shutdown barrier for
    the other processes, which never come (the launcher then stops them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch(num_processes: int, target: list[str], *, port: int = 0, devices_per_process: int = 1,
           timeout: float | None = None) -> int:
    """Starts the N processes and waits; returns 0, the first non-zero exit code, or 124 on timeout."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if devices_per_process < 1:
        raise ValueError(f"devices_per_process must be >= 1, got {devices_per_process}")
    _split_target(target)  # validate before starting anything
    port = port or _free_port()
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    base_env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                    DIFFMEM_DISTRIBUTED="1", DIFFMEM_COORDINATOR_ADDRESS=f"localhost:{port}",
                    DIFFMEM_NUM_PROCESSES=str(num_processes), JAX_NUM_CPU_DEVICES=str(devices_per_process),
                    XLA_FLAGS=xla_flags.strip())
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--", *target],
                              env=dict(base_env, DIFFMEM_PROCESS_ID=str(i)))
             for i in range(num_processes)]
    deadline = None if timeout is None else time.monotonic() + timeout
    code = 0
    try:
        while None in [p.poll() for p in procs]:  # a list, not any(): poll every process
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed or (deadline is not None and time.monotonic() > deadline):
                code = failed[0] if failed else 124
                break
            time.sleep(0.1)
        else:
            code = next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()  # jax.distributed catches SIGTERM (preemption notice): SIGKILL after a grace
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, target = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--num_processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices per process")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all processes are stopped")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(own)
    if args.worker:
        _worker(target)
        return 0
    return launch(args.num_processes, target, port=args.port, devices_per_process=args.devices_per_process,
                  timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
