"""One module per paper section; each exposes `run(config, workdir) -> dict` (the results)."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from typing import Optional

import ml_collections
import numpy as np

EXPERIMENTS = ("loss_gap", "approximation", "gmm_memorization", "train_dit", "prune_dit")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validates `config.experiment`, writes <workdir>/config.json and runs the experiment."""
    name = config.get("experiment")
    if name not in EXPERIMENTS:
        raise ValueError(f"config.experiment must be one of {EXPERIMENTS}, got {name!r}")
    module = importlib.import_module(f"diffmem.experiments.{name}")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    return module.run(config, workdir)


def write_json(path: str, obj) -> None:
    """Writes JSON atomically (a killed run never leaves a half-written file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=True)
    os.replace(tmp, path)


def config_section(config, name: str, accepted, optional=None) -> dict:
    """config.<name> as a plain dict; unknown keys raise a ValueError naming them and the accepted keys.

    With `optional` given, keys of `accepted` that are absent and not in `optional` raise too.
    """
    if name not in config:
        raise ValueError(f"config.{name} is missing; expected a section with keys {list(accepted)}")
    sec = config[name]
    d = sec.to_dict() if hasattr(sec, "to_dict") else dict(sec)
    unknown = sorted(set(d) - set(accepted))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config.{name}; accepted: {list(accepted)}")
    if optional is not None:
        missing = sorted(set(accepted) - set(d) - set(optional))
        if missing:
            raise ValueError(f"config.{name} is missing key(s) {missing}")
    return d


def read_json(path: str) -> Optional[dict]:
    """The JSON object at `path`, or None when the file does not exist."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_npz(path: str, **arrays) -> None:
    """np.savez atomically (a killed run never leaves a half-written file)."""
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def sha1_arrays(*arrays) -> str:
    """SHA-1 of the arrays' dtypes, shapes and bytes (stamps of the data a cached result was made from)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_int(name: str, v, minimum: int = 1) -> int:
    """v as an int; ValueError naming `name` unless it is an int (not a bool) >= minimum."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
