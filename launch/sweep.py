"""Expand a config's sweep into runs, N at a time, one device each; then assemble.

  python launch/sweep.py --config=configs/gmm_memorization.py:paper --workdir=/data/gmm --parallel=8 \
      --gpus=0,1,2,3,4,5,6,7
  python launch/sweep.py --config=configs/approximation.py:cpu --workdir=/tmp/approx --parallel=2 --dry_run

The config file's `get_sweep(arg)` returns a list of override dicts ({"shard.index": 3, "shard.count": 8} or
{"widths": (64,)}); each becomes one `python -m diffmem.main --config=FILE:ARG --workdir=WORKDIR
--config.KEY=VALUE ...` subprocess. All runs share the workdir: the experiments store finished cells there
(keyed by a hash of the settings that change their numbers), so runs never redo each other's work. Runs
are started `--parallel` at a time; with --gpus each run gets CUDA_VISIBLE_DEVICES set to one free entry
(a device is reused when its run ends). Logs go to WORKDIR/sweep_logs/run_<i>.log. When every run
succeeded, one final run without overrides assembles results.json and the plots from the finished cells
(skip it with --no_assemble). Exit status: 0 if everything succeeded, 1 otherwise.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time


def load_sweep(config_arg: str) -> tuple[str, str | None, list[dict]]:
    """'path.py[:arg]' -> (path, arg, overrides from the module's get_sweep(arg))."""
    path, _, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep(arg); nothing to expand")
    sweep = mod.get_sweep(arg or None)
    if not isinstance(sweep, (list, tuple)) or not all(isinstance(o, dict) for o in sweep):
        raise ValueError(f"{path}: get_sweep must return a list of dicts of config overrides, got {type(sweep)}")
    return path, arg or None, list(sweep)


def format_value(v) -> str:
    """A config override value as config_flags parses it (tuples as '(a, b)'; lists become tuples)."""
    if isinstance(v, (list, tuple)):
        inner = ", ".join(format_value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def build_commands(path: str, arg: str | None, workdir: str, sweep: list[dict]) -> list[list[str]]:
    """One diffmem.main command per override dict."""
    cfg = f"--config={path}" + (f":{arg}" if arg else "")
    base = [sys.executable, "-m", "diffmem.main", cfg, f"--workdir={workdir}"]
    return [base + [f"--config.{k}={format_value(v)}" for k, v in sorted(o.items())] for o in sweep]


def run_all(commands: list[list[str]], parallel: int, gpus: list[str] | None, log_dir: str,
            poll_s: float = 1.0) -> list[int]:
    """Runs the commands, at most `parallel` at a time (one GPU each when gpus is given). Returns exit codes."""
    os.makedirs(log_dir, exist_ok=True)
    pending = list(enumerate(commands))
    running: dict[int, tuple[subprocess.Popen, str | None, object]] = {}
    free = list(gpus) if gpus else []
    codes = [None] * len(commands)
    while pending or running:
        while pending and len(running) < parallel and (not gpus or free):
            i, cmd = pending.pop(0)
            env = dict(os.environ)
            dev = free.pop(0) if gpus else None
            if dev is not None:
                env["CUDA_VISIBLE_DEVICES"] = dev
            log = open(os.path.join(log_dir, f"run_{i}.log"), "w")
            print(f"[sweep] start run {i}" + (f" on device {dev}" if dev is not None else "") + ": "
                  + " ".join(cmd[3:]), flush=True)
            running[i] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), dev, log)
        time.sleep(poll_s)
        for i in list(running):
            proc, dev, log = running[i]
            if proc.poll() is not None:
                codes[i] = proc.returncode
                log.close()
                if dev is not None:
                    free.append(dev)
                del running[i]
                print(f"[sweep] run {i} finished with exit code {proc.returncode}", flush=True)
    return codes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/<experiment>.py[:arg]")
    p.add_argument("--workdir", required=True)
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--gpus", default="", help="comma-separated device ids for CUDA_VISIBLE_DEVICES (one per run)")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    p.add_argument("--no_assemble", action="store_true", help="skip the final assembling run")
    a = p.parse_args(argv)
    if a.parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {a.parallel}")
    gpus = [g.strip() for g in a.gpus.split(",") if g.strip()] or None
    path, arg, sweep = load_sweep(a.config)
    commands = build_commands(path, arg, a.workdir, sweep)
    final = build_commands(path, arg, a.workdir, [{}])[0]
    if a.dry_run:
        for c in commands + ([] if a.no_assemble else [final]):
            print(" ".join(c))
        return 0
    codes = run_all(commands, a.parallel, gpus, os.path.join(a.workdir, "sweep_logs"))
    failed = [i for i, c in enumerate(codes) if c != 0]
    if failed:
        print(f"[sweep] runs {failed} failed; see {a.workdir}/sweep_logs/run_<i>.log", file=sys.stderr)
        return 1
    if not a.no_assemble:
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[0]
        print("[sweep] assembling: " + " ".join(final[3:]), flush=True)
        return 0 if subprocess.call(final, env=env) == 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
