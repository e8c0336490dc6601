"""The check that an experiment run as 2 JAX processes gives the results of 1 process, and that only process 0
writes files (the standard in the README's "Running on several hosts"), shared by the experiments' test files.

Each experiment's test file runs its smoke preset once in the pytest process (4 fake CPU devices, tests/conftest.py)
for its own end-to-end assertions, and keeps a `snapshot` of that run (results.json, config.json and the set of
files, taken right after it, before other tests touch the directory). `check` then runs the same preset with the
same overrides through `python -m diffmem.main` as 2 processes of 2 devices each (launch/local_multiprocess.py,
jax.distributed, gloo), so both runs see 4 global devices and build the same mesh, and compares:

  * config.json exactly (the overrides reached the command line unchanged);
  * results.json to rtol 1e-5 / atol 1e-5, timing keys (TIMING_KEY) left out. Most values agree bit for bit;
    sampling splits its batches differently (over 4 local devices vs over 2 processes,
    diffmem.sampling.split_over_processes), which changes float32 rounding in the last bits, and a claim that is
    the difference of two log-likelihoods of size ~30 (gmm_memorization) keeps an absolute difference of a few 1e-6;
  * the set of files: the second process writes nothing of its own and no temporary `*.tmp<pid>` survives.
    Inside an orbax checkpoint (<...>/checkpoints/<step>/) only the step directory is compared: orbax names its
    data files by random hashes, and in a multi-process save every process writes its own metadata by design.

One 1-process run per experiment serves both its end-to-end test and this check (they used to be separate runs).
"""
import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL, ATOL = 1e-5, 1e-5

# The test file that runs each experiment's 2-process check (tests/test_multiprocess_experiments.py checks that
# every config in configs/ is here and that the file has the test).
CHECKED_IN = {"loss_gap": "test_loss_gap.py", "approximation": "test_approximation.py",
              "gmm_memorization": "test_gmm_lab.py", "train_dit": "test_train_dit.py",
              "prune_dit": "test_prune_dit.py", "audit": "test_audit.py"}

# Keys left out of the results comparison: wall / CPU seconds (train_seconds, wall_seconds, *_wall_s, *_cpu_s,
# timing.wall_s, ...) differ from run to run. Nothing else: results.json holds no paths, hostnames or process counts.
TIMING_KEY = re.compile(r"seconds|(^|_)(wall|cpu)(_s)?$|(^|_)(wall|cpu)_s(_|$)")
# TensorBoard event files are named events.out.tfevents.<unix time>.<host>.<writer>.<pid>.<index>.
_EVENT_FILE = re.compile(r"^(events\.out\.tfevents)\.\d+\.(.+)\.\d+\.(\d+)$")


def smoke_config(module, overrides: dict):
    """configs/<name>.py's smoke preset with `overrides` ({"a.b": value}) applied, as the command line would."""
    config = module.get_config("smoke")
    config.update_from_flattened_dict(dict(overrides))
    return config


def run_smoke(module, overrides: dict, workdir) -> tuple:
    """Runs the smoke preset with `overrides` in this process: (config, results, `snapshot` of the workdir taken
    right after the run)."""
    from diffmem import experiments
    config = smoke_config(module, overrides)
    results = experiments.run(config, str(workdir))
    return config, results, snapshot(str(workdir))


def _cli_value(v) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + "".join(f"{x!r}," for x in v) + ")"
    return v if isinstance(v, str) else repr(v)


def files(workdir: str) -> set:
    """Relative paths of the files under workdir; inside an orbax checkpoint only <...>/checkpoints/<step>/;
    TensorBoard event files without their time and process id."""
    out = set()
    for d, _, names in os.walk(workdir):
        for n in names:
            parts = os.path.relpath(os.path.join(d, n), workdir).split(os.sep)
            parts[-1] = _EVENT_FILE.sub(r"\1.<time>.\2.<pid>.\3", parts[-1])
            if "checkpoints" in parts[:-2]:
                i = parts.index("checkpoints")
                parts = parts[:i + 2] + [""]
            out.add("/".join(parts))
    return out


def snapshot(workdir: str) -> dict:
    """What `check` compares, read from a finished run's workdir."""
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    return {"results": results, "config": config, "files": files(workdir)}


def compare(a, b, where="results"):
    """Asserts a == b (floats to RTOL / ATOL), skipping timing keys."""
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            if not TIMING_KEY.search(k):
                compare(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} vs {b!r}"
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f"{where}: {a!r} (1 process) vs {b!r} (2 processes)"
    else:
        assert a == b, f"{where}: {a!r} (1 process) vs {b!r} (2 processes)"


def env(**extra) -> dict:
    """This process's environment without the launcher's DIFFMEM_* variables, the repository on PYTHONPATH."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("DIFFMEM_")}
    out.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + out.get("PYTHONPATH", ""), **extra)
    return out


def check(name: str, overrides: dict, one: dict, workdir: str, timeout: int = 600) -> None:
    """Runs configs/<name>.py:smoke with `overrides` as 2 processes x 2 devices in `workdir` and compares it with
    `one`, the `snapshot` of the same preset and overrides run in the pytest process (4 devices)."""
    args = [f"--config={ROOT}/configs/{name}.py:smoke",
            *(f"--config.{k}={_cli_value(v)}" for k, v in overrides.items())]
    cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", "2", "--devices_per_process",
           "2", "--timeout", str(timeout), "--", "-m", "diffmem.main", *args, f"--workdir={workdir}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60, env=env())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "process 1 of 2" in p.stderr and "4 device(s)" in p.stderr, p.stderr[-2000:]
    two = snapshot(workdir)
    assert two["config"] == one["config"], "the 2-process run's config.json differs from the 1-process run's"
    compare(one["results"], two["results"])
    assert not [f for f in two["files"] if ".tmp" in f], sorted(two["files"])   # io's *.tmp<pid>, orbax's *-tmp*
    assert two["files"] == one["files"], (sorted(one["files"] - two["files"]), sorted(two["files"] - one["files"]))
