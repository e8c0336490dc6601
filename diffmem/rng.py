"""Named random streams: every key of a run is derived from one root key by names and indices (typed keys, fold_in).

    key = stream(seed, "finetune", repeat)    # fold_in(fold_in(key(seed), STREAMS["finetune"]), repeat)

`STREAMS` is the one table of names. Two names may share an index only when they are never derived from the same
parent key (they belong to different experiments or levels); the comments group them by the key they hang from.
Because a stream is a pure function of (root, path), a resumed run, another batch size or another device count
draws the same numbers, and no two uses of randomness in one run share a key.
"""
from __future__ import annotations

from typing import Union

import jax
import numpy as np

STREAMS: dict[str, int] = {
    # under a training run's key (diffmem.training.train, image_diffusion.train_model, gmm_lab.run_group)
    "init": 0, "train": 1,
    # under the root key of an image experiment (train_dit, prune_dit)
    "base": 1,            # the base model's training run (then "init" / "train")
    "samples": 2,         # sample i of repeat r: fold_in(stream(root, "samples", r), i)
    "loss_floor": 3,      # train_dit: Monte-Carlo loss of the empirical score
    "scores": 3,          # prune_dit: Algorithm 2 batches of repeat r
    "random_mask": 4,     # prune_dit: the random-pruning baseline's mask of repeat r
    "finetune": 5,        # prune_dit: fine-tuning stream of repeat r
    "prune_loss": 6,      # prune_dit: loss right after pruning, before fine-tuning
    "where": 7,           # prune_dit: trajectories and swap test
    # under the root key of a mixture-lab experiment (loss_gap, approximation, gmm_memorization)
    "mixture": 0,         # the Gaussian mixture's means
    "points": 1,          # training point i
    "lab": 2,             # a group's run key (then "init" / "train" per member seed, "lab_samples")
    "lab_samples": 2,     # under a group's run key: sample i (common to every member)
    "references": 3,      # gmm_memorization: the closed-form reference samplers' sample i
    # loss_gap: under the key of dimension d (stream(root, d))
    "gap_sets": 1,        # training set r at index gap_sets + r (then "data": its points, "queries")
    "queries": 1,         # under a training set's key: the Monte-Carlo draws (then the n index i, the t index j)
    "data": 0,            # under a training set's key (loss_gap): its points; under approximation's root: the
                          # mixture and training points (then "mixture", "points"); under "eval": the draws' x0
    # approximation, under the root key
    "fit": 1,             # the regression fits (then "init" / "train" per member seed)
    "eval": 2,            # the evaluation draws (then "data", "noise")
    "noise": 1,           # under "eval": the evaluation draws' noise
    "attention": 100,     # the attention-form check of dimension d at index attention + d (then "mixture"; the
                          # points of size n at index n, their query indices at 7 n + 1 and noise at 7 n + 2)
}

Path = Union[str, int, np.integer]


def index(name: str) -> int:
    """STREAMS[name]; a ValueError naming the accepted names otherwise."""
    if name not in STREAMS:
        raise ValueError(f"unknown random stream {name!r}; accepted: {sorted(STREAMS)}")
    return STREAMS[name]


def root(seed_or_key) -> jax.Array:
    """jax.random.key(seed) for an int seed; a typed key is returned as is."""
    if isinstance(seed_or_key, (int, np.integer)) and not isinstance(seed_or_key, bool):
        return jax.random.key(int(seed_or_key))
    if isinstance(seed_or_key, jax.Array) and jax.dtypes.issubdtype(seed_or_key.dtype, jax.dtypes.prng_key):
        return seed_or_key
    raise ValueError(f"a random stream needs an int seed or a typed key from jax.random.key, got {seed_or_key!r}")


def stream(seed_or_key, *path: Path) -> jax.Array:
    """The key at `path` below the root: names (str) go through STREAMS, ints are indices (seeds, repeats)."""
    k = root(seed_or_key)
    for p in path:
        if isinstance(p, str):
            k = jax.random.fold_in(k, index(p))
        elif isinstance(p, (int, np.integer)) and not isinstance(p, bool):
            k = jax.random.fold_in(k, int(p))
        else:
            raise ValueError(f"a random stream path holds names (str) and indices (int), got {p!r}")
    return k
