"""Every experiment run as 2 JAX processes (launch/local_multiprocess.py: 2 processes x 1 CPU device, gloo) gives
the results of 1 process over 2 devices, and only process 0 writes files.

Each experiment runs its smoke preset (shrunk further by command-line overrides where that keeps the plumbing:
every stage still runs, on fewer / smaller cells) through `python -m diffmem.main` twice:
  * one process with 2 fake CPU devices (JAX_NUM_CPU_DEVICES=2), and
  * two processes of 1 device each, joined by jax.distributed (the launcher's DIFFMEM_* variables),
so both runs see the same global device count and build the same mesh. results.json must agree to float tolerance
(timings excepted, see TIMING_KEY) and both workdirs must hold the same set of files (the second process writes
nothing of its own; no temporary `*.tmp<pid>` survives). Inside an orbax checkpoint (<...>/checkpoints/<step>/)
only the step directory is compared: orbax names its data files by random hashes, and in a multi-process save
every process writes its own metadata (array_metadatas/process_<i>, ocdbt.process_<i>/) by design.

Tolerance: rtol 1e-5 and atol 1e-5. Most values agree bit for bit; sampling splits its batches differently (over 2
local devices vs over 2 processes, diffmem.sampling.split_over_processes), which changes float32 rounding in the
last bits, and a claim that is the difference of two log-likelihoods of size ~30 (gmm_memorization) keeps an
absolute difference of a few 1e-6.
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL, ATOL = 1e-5, 1e-5

# Keys left out of the comparison: wall / CPU seconds (train_seconds, wall_seconds, *_wall_s, *_cpu_s, timing.wall_s,
# ...) differ from run to run. Nothing else is left out: results.json holds no paths, hostnames or process counts.
TIMING_KEY = re.compile(r"seconds|(^|_)(wall|cpu)(_s)?$|(^|_)(wall|cpu)_s(_|$)")

# Smoke presets, shrunk further where the shrinking keeps every stage of the experiment running.
OVERRIDES = {
    "loss_gap": ["--config.dims=(4,)", "--config.num_queries=64", "--config.time_loop=False"],
    "approximation": ["--config.data.dims=(2,)", "--config.train.steps=50", "--config.train.log_every=50",
                      "--config.train.ckpt_every=50"],
    "gmm_memorization": ["--config.train.steps=50", "--config.train.log_every=50", "--config.train.ckpt_every=50"],
    "train_dit": ["--config.ns=(16,)"],
    "prune_dit": [],
    "audit": [],
}


def _audit_inputs(tmp_path):
    """samples.npz (4 copies of training images plus noise, 8 fresh), train.npz (one duplicated pair), ref.npz."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    train[20] = train[3]
    x = train.astype(np.float32) / 127.5 - 1
    copies = np.clip(x[[3, 5, 9, 12]] + 0.02 * rng.standard_normal((4, 8, 8, 3)), -1, 1)
    samples = np.concatenate([copies, rng.uniform(-1, 1, (8, 8, 8, 3))]).astype(np.float32)
    held = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=train)
    np.savez(tmp_path / "samples.npz", samples=samples)
    np.savez(tmp_path / "ref.npz", images=np.concatenate([held, train[[1, 2]]]))
    return [f"--config.samples={tmp_path / 'samples.npz'}", f"--config.train=npz:{tmp_path / 'train.npz'}",
            f"--config.reference=npz:{tmp_path / 'ref.npz'}"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFMEM_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _files(workdir):
    """Relative paths of the files under workdir; inside an orbax checkpoint only <...>/checkpoints/<step>/."""
    out = set()
    for d, _, names in os.walk(workdir):
        for n in names:
            parts = os.path.relpath(os.path.join(d, n), workdir).split(os.sep)
            if "checkpoints" in parts[:-2]:
                i = parts.index("checkpoints")
                parts = parts[:i + 2] + [""]
            out.add("/".join(parts))
    return out


def _compare(a, b, where="results"):
    """Asserts a == b (floats to RTOL / ATOL), skipping timing keys; returns the skipped keys."""
    skipped = set()
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            if TIMING_KEY.search(k):
                skipped.add(k)
                continue
            skipped |= _compare(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            skipped |= _compare(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} vs {b!r}"
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f"{where}: {a!r} (1 process) vs {b!r} (2 processes)"
    else:
        assert a == b, f"{where}: {a!r} (1 process) vs {b!r} (2 processes)"
    return skipped


# The DiT experiments are in test_multiprocess_dit_experiments.py (the same check), so that the two halves run on
# different pytest-xdist workers.
LAB = ("loss_gap", "approximation", "gmm_memorization")


@pytest.mark.parametrize("name", LAB)
def test_two_processes_equal_one_process(name, tmp_path):
    check_two_processes_equal_one_process(name, tmp_path)


def check_two_processes_equal_one_process(name, tmp_path):
    """Runs experiment `name`'s smoke preset as 1 process x 2 devices and as 2 processes x 1 device; compares."""
    args = [f"--config={ROOT}/configs/{name}.py:smoke", *OVERRIDES[name]]
    if name == "audit":
        args += _audit_inputs(tmp_path)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")

    p = subprocess.run([sys.executable, "-m", "diffmem.main", *args, f"--workdir={one}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=400,
                       env=_env(JAX_NUM_CPU_DEVICES="2"))
    assert p.returncode == 0, p.stderr[-4000:]
    assert "2 device(s)" in p.stderr and "process 0 of 1" in p.stderr, p.stderr[-2000:]

    cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", "2", "--devices_per_process",
           "1", "--timeout", "400", "--", "-m", "diffmem.main", *args, f"--workdir={two}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=450, env=_env())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "process 1 of 2" in p.stderr, p.stderr[-2000:]

    with open(os.path.join(one, "results.json")) as f:
        r1 = json.load(f)
    with open(os.path.join(two, "results.json")) as f:
        r2 = json.load(f)
    _compare(r1, r2)
    files_one, files_two = _files(one), _files(two)
    assert not [f for f in files_two if ".tmp" in f], sorted(files_two)   # io's *.tmp<pid>, orbax's *-tmp*
    assert files_two == files_one, (sorted(files_one - files_two), sorted(files_two - files_one))
