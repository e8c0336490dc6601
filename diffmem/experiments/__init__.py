"""The experiment registry: one module (or package) per figure or table of arXiv 2511.03202, each exposing
`run(config, workdir) -> dict` (the results). Experiments compose library calls; the library never imports them and
no experiment imports another."""
from __future__ import annotations

import importlib

import ml_collections

from diffmem import io

EXPERIMENTS = {
    "loss_gap": "Figure 1 / Theorem 4.3: Loss-Gap_t of the true vs the empirical score",
    "approximation": "Theorem 5.1: network width needed for the empirical vs the true score",
    "gmm_memorization": "Figures 2, 3a, 3b: memorization of score networks on Gaussian mixtures",
    "train_dit": "memorization of a DiT against the training-set size",
    "prune_dit": "Table 1, Algorithms 1-2: head-importance pruning of a memorizing DiT",
    "audit": "memorization, duplicates, quality and calibration of your own samples against a training set",
}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validates `config.experiment`, writes <workdir>/config.json and runs the experiment."""
    name = config.get("experiment")
    if name not in EXPERIMENTS:
        raise ValueError(f"config.experiment must be one of {tuple(EXPERIMENTS)}, got {name!r}")
    module = importlib.import_module(f"diffmem.experiments.{name}")
    io.makedirs(workdir)
    io.write_text(io.path(workdir) / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))
    return module.run(config, workdir)
