"""Algorithm 1 of arXiv 2511.03202 (one-shot pruning): rank every head over all layers, remove the floor(eta H)
lowest, and the baselines with the same number of heads (random, output-projection magnitude)."""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from diffmem.models.dit import DiT
from diffmem.pruning.importance import _check_pos_int, _is_real, head_importance
from diffmem.pruning.surgery import head_proj_norms, head_valid_mask

Array = jax.Array


def global_rank(importance, valid=None) -> np.ndarray:
    """Rank of every head over all layers, 0 = lowest importance (pruned first); -1 on invalid entries.

    valid (depth, max_heads) bool, default: the non-NaN entries. Ties are broken by a stable sort in row-major
    (layer, head) order: among equal scores the head of the lower layer, then the lower head index, ranks lower.
    """
    imp, valid = _scores_and_valid(importance, valid)
    flat, vflat = imp.reshape(-1), valid.reshape(-1)
    pos = np.flatnonzero(vflat)                                                      # valid flat positions
    order = pos[np.argsort(flat[pos], kind="stable")]
    rank = np.full(flat.shape, -1, np.int64)
    rank[order] = np.arange(order.size)
    return rank.reshape(imp.shape)


def num_pruned(eta: float, num_heads: int) -> int:
    """floor(eta * H) for 0 <= eta < 1 (1e-9 slack so that e.g. 0.29 * 100 gives 29, not 28)."""
    _check_eta(eta)
    return int(math.floor(eta * num_heads + 1e-9))


def prune_mask(importance, eta: float, *, keep_one_per_layer: bool = False, valid=None) -> np.ndarray:
    """Algorithm 1: (depth, max_heads) float32 0/1 mask removing the floor(eta H) lowest-ranked valid heads.

    Ranking by `global_rank` (stable ties). H = number of valid heads (default: non-NaN importance entries);
    invalid entries are set to 1 (they are never used). keep_one_per_layer: a head whose removal would leave its
    layer with no head is skipped and the next lowest is taken instead. eta must be in [0, 1); eta = 0 keeps all.
    """
    imp, valid = _scores_and_valid(importance, valid)
    k = num_pruned(eta, int(valid.sum()))
    rank = global_rank(imp, valid)
    order = np.argsort(np.where(valid, rank, np.iinfo(np.int64).max).reshape(-1), kind="stable")[:int(valid.sum())]
    mask = np.ones(imp.shape, np.float32)
    left = valid.sum(axis=1)                                                         # heads left per layer
    removed = 0
    for f in order:
        if removed == k:
            break
        l, h = divmod(int(f), imp.shape[1])
        if keep_one_per_layer and left[l] == 1:
            continue
        mask[l, h], left[l], removed = 0.0, left[l] - 1, removed + 1
    if removed < k:
        raise ValueError(f"eta={eta} asks to remove {k} of {int(valid.sum())} heads, but keep_one_per_layer "
                         f"allows at most {removed} (one head must stay in each of {int((valid.sum(1) > 0).sum())} "
                         f"layers)")
    return mask


def random_mask(key: Array, depth: int, heads: int, eta: float, *, keep_one_per_layer: bool = False,
                valid=None) -> np.ndarray:
    """Random-pruning baseline: the same number floor(eta H) of heads as `prune_mask`, chosen uniformly at random
    (i.i.d. U(0, 1) scores from `key` ranked by `prune_mask`). Seeded: the same key gives the same mask."""
    _check_pos_int("depth", depth)
    _check_pos_int("heads", heads)
    scores = np.asarray(jax.random.uniform(key, (depth, heads)))
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != (depth, heads):
            raise ValueError(f"valid must have shape (depth, heads) = {(depth, heads)}, got {valid.shape}")
    return prune_mask(scores, eta, keep_one_per_layer=keep_one_per_layer, valid=valid)


def magnitude_scores(model: DiT, params) -> Array:
    """Magnitude baseline: Frobenius norm of each head's rows of the attention output projection
    (`surgery.head_proj_norms`; NaN on padding heads)."""
    return head_proj_norms(model, params)


def one_shot_mask(model: DiT, params, images, key: Array, eta: float, *, keep_one_per_layer: bool = False,
                  **importance_kw) -> dict[str, Any]:
    """Algorithm 1 up to fine-tuning: importance scores (Algorithm 2, `head_importance(**importance_kw)`), then
    the global prune mask. Returns dict(mask, raw, importance)."""
    out = head_importance(model, params, images, key, **importance_kw)
    mask = prune_mask(out["importance"], eta, keep_one_per_layer=keep_one_per_layer,
                      valid=head_valid_mask(model))
    return {"mask": mask, **out}


def _check_eta(eta) -> None:
    if not (_is_real(eta) and 0.0 <= eta < 1.0):
        raise ValueError(f"eta (fraction of heads to prune) must be in [0, 1), got {eta!r}")


def _scores_and_valid(scores, valid) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(jax.device_get(scores), np.float64)
    if s.ndim != 2:
        raise ValueError(f"importance must have shape (depth, max_heads), got {s.shape}")
    if valid is None:
        valid = ~np.isnan(s)
    else:
        valid = np.asarray(valid, bool)
        if valid.shape != s.shape:
            raise ValueError(f"valid must have the shape of importance {s.shape}, got {valid.shape}")
    if np.any(np.isnan(s[valid])):
        raise ValueError("importance has NaN on valid heads (NaN is allowed only where valid is False)")
    return s, valid
