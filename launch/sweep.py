"""Expand a config's sweep into runs, N at a time, one GPU each; then assemble.

  python launch/sweep.py --config=configs/gmm_memorization.py:paper --workdir=/data/gmm --gpus=0-7
  python launch/sweep.py --config=configs/gmm_memorization.py:paper --workdir=/data/gmm --gpus=all
  python launch/sweep.py --config=configs/approximation.py:cpu --workdir=/tmp/approx --parallel=2 \
      --config.fit.steps=500 --dry_run
  python launch/sweep.py --config=configs/approximation.py:cpu --workdir=/tmp/approx --count   # number of runs

The config file's `get_sweep(arg)` returns a list of override dicts ({"shard.index": 3, "shard.count": 8} or
{"data.dims": (64,)}); run i becomes `python -m diffmem.main --config=FILE:ARG --workdir=WORKDIR
[--config.KEY=VALUE given to sweep.py] --config.KEY=VALUE (run i's overrides)`. `--config.*` overrides given
to sweep.py go to every run and to the assembling run; one that names a key the sweep sets per run is refused.
All runs share the workdir: the experiments store finished cells there (keyed by a hash of the settings that
change their numbers), so runs never redo each other's work.

GPUs: --gpus=0-7 (a range), --gpus=0,2,5 (a list; ranges may be mixed in: 0-3,6), or --gpus=all (the
entries of CUDA_VISIBLE_DEVICES when it is set, else every GPU `nvidia-smi -L` lists). Each run gets its own
CUDA_VISIBLE_DEVICES=<one entry>; a GPU is reused when its run ends. --parallel defaults to the number of GPUs
(at most that many runs share them, one each). Without --gpus, --parallel > 1 on a machine with GPUs is
refused: every JAX process would see every GPU and preallocate 75% of the first one's memory, so the runs
would crash with out-of-memory errors or all pile onto GPU 0. Give --gpus, or set JAX_PLATFORMS=cpu for
CPU-only runs.

Logs go to WORKDIR/sweep_logs/run_<i>.log. When every run succeeded, one final run without per-run overrides
assembles results.json and the plots from the finished cells (skip it with --no_assemble). --run_index=i
runs run i alone in the foreground (no assembling); --assemble_only runs only the assembling run
(launch/slurm_sweep.sh uses both). Exit status: 0 if everything succeeded, 1 otherwise, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

GPU_SYNTAX = "a range '0-7', a comma-separated list '0,2,5' (ranges allowed: '0-3,6') or 'all'"


class UsageError(ValueError):
    """A bad command line: printed as one line, exit status 2."""


def load_sweep(config_arg: str) -> tuple[str, str | None, list[dict]]:
    """'path.py[:arg]' -> (path, arg, overrides from the module's get_sweep(arg))."""
    path, _, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config file {path!r} does not exist")
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))  # config files import `configs.common`
    if root not in sys.path:
        sys.path.insert(0, root)
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


def split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(sweep.py's own arguments, ['--config.KEY=VALUE', ...]); '--config.KEY VALUE' is joined into one."""
    own, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            if "=" in a:
                overrides.append(a)
            elif i + 1 < len(argv):
                overrides.append(f"{a}={argv[i + 1]}")
                i += 1
            else:
                raise UsageError(f"{a} needs a value: {a}=VALUE")
            if not re.fullmatch(r"--config\.[A-Za-z_][\w.]*=.*", overrides[-1], re.S):
                raise UsageError(f"bad override {overrides[-1]!r}: expected --config.KEY=VALUE")
        else:
            own.append(a)
        i += 1
    return own, overrides


def override_key(override: str) -> str:
    """'--config.a.b=1' -> 'a.b'."""
    return override.split("=", 1)[0][len("--config."):]


def build_commands(path: str, arg: str | None, workdir: str, sweep: list[dict],
                   extra: list[str] = ()) -> list[list[str]]:
    """One diffmem.main command per override dict; `extra` ('--config.KEY=VALUE' strings given to sweep.py) go
    to every command, before the run's own overrides. A key in both is refused."""
    for o in sweep:
        clash = sorted({override_key(e) for e in extra} & set(o))
        if clash:
            raise UsageError(f"--config.{clash[0]} is set by the config's get_sweep for each run; "
                             f"it cannot also be given to sweep.py")
    cfg = f"--config={path}" + (f":{arg}" if arg else "")
    base = [sys.executable, "-m", "diffmem.main", cfg, f"--workdir={workdir}", *extra]
    return [base + [f"--config.{k}={format_value(v)}" for k, v in sorted(o.items())] for o in sweep]


def visible_gpus(env: dict | None = None, nvidia_smi=None) -> list[str]:
    """The GPUs a process started here would see: CUDA_VISIBLE_DEVICES's entries when it is set (possibly none),
    else the 'GPU <i>:' lines of `nvidia-smi -L` ([] when nvidia-smi is missing or fails).

    nvidia_smi: a callable returning the text of `nvidia-smi -L` (for tests); None runs the tool."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",")
                if g.strip() and not g.strip().startswith("-")]  # '' and '-1' mean: no GPU
    if nvidia_smi is None:
        def nvidia_smi():
            if shutil.which("nvidia-smi") is None:
                return ""
            try:
                r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                return ""
            return r.stdout if r.returncode == 0 else ""
    return re.findall(r"^GPU (\d+):", nvidia_smi(), re.M)  # MIG lines are indented and not counted


def parse_gpus(spec: str, detect=visible_gpus) -> list[str] | None:
    """--gpus value -> device entries for CUDA_VISIBLE_DEVICES, one per run; None for '' (no --gpus).

    '0-7' -> 0..7; '0,2,5'; '0-3,6'; 'all' -> detect() (error if it finds none). GPU-/MIG- UUIDs pass as they
    are. Anything else (e.g. '0,...,7') is a UsageError naming the accepted forms."""
    spec = spec.strip()
    if not spec:
        return None
    if spec == "all":
        gpus = list(detect())
        if not gpus:
            raise UsageError("--gpus=all: no GPU visible (CUDA_VISIBLE_DEVICES is empty, or unset and "
                             "`nvidia-smi -L` lists none or is not installed)")
        return gpus
    out = []
    for part in spec.split(","):
        part = part.strip()
        if m := re.fullmatch(r"(\d+)-(\d+)", part):
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise UsageError(f"--gpus={spec!r}: range {part!r} is empty; accepted: {GPU_SYNTAX}")
            out += [str(i) for i in range(lo, hi + 1)]
        elif re.fullmatch(r"\d+|(GPU|MIG)-[\w/-]+", part):
            out.append(str(int(part)) if part.isdigit() else part)
        else:
            raise UsageError(f"--gpus={spec!r} is not accepted: give {GPU_SYNTAX}")
    dup = sorted({g for g in out if out.count(g) > 1})
    if dup:
        raise UsageError(f"--gpus={spec!r} names device {dup[0]} twice")
    return out


def resolve_parallel(parallel: int | None, gpus: list[str] | None, env: dict | None = None,
                     detect=visible_gpus) -> int:
    """Runs at a time. Default: one per GPU with --gpus, else 1. Without --gpus, more than one run at a time
    is refused when GPUs are visible (and JAX_PLATFORMS does not pin the runs to the CPU)."""
    env = os.environ if env is None else env
    if parallel is None:
        return len(gpus) if gpus else 1
    if parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {parallel}")
    if parallel > 1 and not gpus and env.get("JAX_PLATFORMS", "").strip().lower() != "cpu":
        found = detect(env)
        if found:
            raise UsageError(
                f"--parallel={parallel} without --gpus on a machine with {len(found)} GPU(s): every run would "
                f"see every GPU and preallocate most of its memory; give --gpus (e.g. --gpus=all, one GPU per "
                f"run) or set JAX_PLATFORMS=cpu")
    if gpus and parallel > len(gpus):
        print(f"[sweep] --parallel={parallel} > {len(gpus)} GPUs: at most {len(gpus)} runs at a time "
              f"(one GPU each)", file=sys.stderr)
    return parallel


def run_env(dev: str | None, base: dict | None = None) -> dict:
    """The environment of one run: CUDA_VISIBLE_DEVICES=dev when a GPU is assigned."""
    env = dict(os.environ if base is None else base)
    if dev is not None:
        env["CUDA_VISIBLE_DEVICES"] = dev
    return env


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
            dev = free.pop(0) if gpus else None
            log = open(os.path.join(log_dir, f"run_{i}.log"), "w")
            print(f"[sweep] start run {i}" + (f" on GPU {dev}" if dev is not None else "") + ": "
                  + shlex.join(cmd[3:]), flush=True)
            running[i] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env(dev)), dev, log)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s --config=FILE[:ARG] --workdir=DIR [options] [--config.KEY=VALUE ...]")
    p.add_argument("--config", required=True, help="configs/<experiment>.py[:arg]")
    p.add_argument("--workdir", required=True, help="shared by all runs (and by all nodes of a SLURM array)")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs at a time (default: one per GPU of --gpus, else 1); > 1 without --gpus is refused "
                        "where GPUs are visible, unless JAX_PLATFORMS=cpu")
    p.add_argument("--gpus", default="", help=f"GPUs, one per run: {GPU_SYNTAX}")
    p.add_argument("--dry_run", action="store_true", help="print the commands (and the GPU plan), run nothing")
    p.add_argument("--no_assemble", action="store_true", help="skip the final assembling run")
    p.add_argument("--count", action="store_true", help="print the number of runs and exit")
    p.add_argument("--run_index", type=int, default=None, help="run only run i (0-based), in the foreground")
    p.add_argument("--assemble_only", action="store_true", help="run only the assembling run")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    try:
        own, extra = split_config_overrides(argv)
        a = p.parse_args(own)
        try:
            path, arg, sweep = load_sweep(a.config)
        except ValueError as e:
            raise UsageError(str(e)) from None
        commands = build_commands(path, arg, a.workdir, sweep, extra)
        final = build_commands(path, arg, a.workdir, [{}], extra)[0]
        if a.count:
            print(len(commands))
            return 0
        if a.run_index is not None and not 0 <= a.run_index < len(commands):
            raise UsageError(f"--run_index={a.run_index}: the sweep has {len(commands)} runs (0..{len(commands) - 1})")
        if a.run_index is not None or a.assemble_only:  # one process in the foreground (a SLURM array task)
            cmd = final if a.assemble_only else commands[a.run_index]
            if a.dry_run:
                print(shlex.join(cmd))
                return 0
            print("[sweep] " + shlex.join(cmd[3:]), flush=True)
            return subprocess.call(cmd)
        gpus = parse_gpus(a.gpus)
        parallel = resolve_parallel(a.parallel, gpus)
    except UsageError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    if a.dry_run:
        print(f"# {len(commands)} runs, {min(parallel, len(gpus) if gpus else parallel)} at a time"
              + (f", each with CUDA_VISIBLE_DEVICES=<one of {','.join(gpus)}>" if gpus else ""))
        for c in commands:
            print(shlex.join(c))
        if not a.no_assemble:
            print("# then, when every run succeeded, the assembling run"
                  + (f" (CUDA_VISIBLE_DEVICES={gpus[0]})" if gpus else "") + ":")
            print(shlex.join(final))
        return 0
    codes = run_all(commands, parallel, gpus, os.path.join(a.workdir, "sweep_logs"))
    failed = [i for i, c in enumerate(codes) if c != 0]
    if failed:
        print(f"[sweep] runs {failed} failed; see {a.workdir}/sweep_logs/run_<i>.log", file=sys.stderr)
        return 1
    if not a.no_assemble:
        print("[sweep] assembling: " + shlex.join(final[3:]), flush=True)
        return 0 if subprocess.call(final, env=run_env(gpus[0] if gpus else None)) == 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
