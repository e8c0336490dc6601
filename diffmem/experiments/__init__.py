"""One module per paper section; each exposes `run(config, workdir) -> dict` (the results)."""
from __future__ import annotations

import importlib
import json
import os

import ml_collections

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
