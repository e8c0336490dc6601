"""Metrics for generated samples: memorization (PAPER.md section 4), FD, KID, precision/recall.

Nearest neighbours
  `top2_neighbors` is an exact, chunked, jit-compiled Euclidean top-2 search (memory O(m x chunk)).
  Squared distances are scored as ||q-mu||^2 - 2 (q-mu).(x-mu) + ||x-mu||^2 (mu: the training mean, which
  shrinks the norms and so the cancellation error), clamped at 0, in float32 with HIGHEST matmul precision.
  A few extra candidates are kept and re-ranked with distances recomputed exactly as ||q - x|| from the
  selected points, so the returned distances are accurate even for near-copies (distance ~ 0) and
  near-ties in the float32 expansion are resolved. Ties in the exact distance go to the lower index.
  `top2_neighbors_sharded` splits the training set over a 1-D device mesh (shard_map); every device
  returns its local candidates, which are all-gathered and merged: the result equals the single-device one.

Memorization (PAPER.md section 4): x is memorized when ||x - NN1|| < ratio ||x - NN2||, ratio = 1/3.
  Strict inequality: when the training set holds exact duplicates of a point, a copy of it has
  NN1 = NN2 = 0 and is NOT memorized; `dedupe=True` removes exact duplicates from the training set first.

Distribution metrics on features (m, f):
  `frechet_distance` (Heusel et al. 2017), `kid` (Binkowski et al. 2018, cubic polynomial kernel,
  unbiased MMD^2 over random subsets), `precision_recall` (Kynkaanniemi et al. 2019, k-NN manifolds).

Feature extractors: a `FeatureExtractor` maps images (b, H, W, C) in [-1, 1] to features (b, f).
  Offline default 'classifier': a small CNN trained here on the dataset's labelled images and cached in
  `<workdir>/feature_net/`; 'pixels': flattened pixels; 'inception': InceptionV3 pool features from a weights
  file the user provides (diffmem.inception; not bundled); or any user callable.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from typing import Any, Callable

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Array = jax.Array

DEFAULT_CHUNK = 2048


# ---------------------------------------------------------------- input checks

def _as_points(name: str, a) -> Array | np.ndarray:
    """(m, ...) array -> (m, prod(...)) float32 array; ValueError on bad shape, dtype or non-finite values.

    Host (numpy) inputs are checked and returned as numpy (no device work); jax arrays stay on device.
    """
    if isinstance(a, (list, tuple)):
        a = np.asarray(a)
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ValueError(f"{name} must be an array of shape (m, d) or (m, H, W, C), got {type(a).__name__}")
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (m, d) or (m, H, W, C) (ndim >= 2), got shape {a.shape}")
    if a.shape[0] == 0 or math.prod(a.shape[1:]) == 0:
        raise ValueError(f"{name} must be non-empty, got shape {a.shape}")
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)
            or a.dtype == bool):
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    xp = jnp if isinstance(a, jax.Array) else np
    a = xp.asarray(a, xp.float32).reshape(a.shape[0], -1)
    if not bool(xp.isfinite(a).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def _as_features(name: str, a, min_rows: int = 2) -> np.ndarray:
    """Features (m, f) -> float64 numpy; ValueError on bad shape or non-finite values."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a feature matrix of shape (m, f), got shape {a.shape}")
    if a.shape[0] < min_rows or a.shape[1] == 0:
        raise ValueError(f"{name} needs at least {min_rows} rows and 1 feature, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def _check_pair(qname: str, q: Array, xname: str, x: Array, q_shape, x_shape) -> None:
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"{qname} and {xname} must have the same point shape, got {tuple(q_shape[1:])} "
                         f"and {tuple(x_shape[1:])}")


def _check_chunk(name: str, chunk) -> None:
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"{name} must be a positive int, got {chunk!r}")


# ---------------------------------------------------------------- chunked exact k-NN core

def _topk_core(q: Array, x: Array, bias: Array | None, mu: Array, offset: Array, *, k: int, chunk: int,
               n_valid: int) -> tuple[Array, Array]:
    """The k smallest scores s_ij = ||q_i - x_j||^2 + bias_j over a (local block of the) reference set.

    q (m, d) queries; x (nl, d) reference points with global indices offset + [0, nl); bias (nl,) or None (0);
    mu (d,) centring shift; only global indices < n_valid count (padding rows score +inf).
    Scans x in chunks of `chunk` rows with a running top-k merge; the last chunk is shifted back to
    end at nl and the rows already seen are masked, so nothing is copied and nothing is counted twice.
    Returns exact scores (m, k) (recomputed from differences; +inf for invalid) and global indices
    (m, k) int32, sorted by (score, index).
    """
    m, _ = q.shape
    nl = x.shape[0]
    if bias is None:
        bias = jnp.zeros((nl,), x.dtype)
    hi = jax.lax.Precision.HIGHEST
    qc = q - mu  # (m, d)
    qn = jnp.sum(qc * qc, axis=-1)  # (m,)
    n_chunks = -(-nl // chunk)

    def body(carry, i):
        best_s, best_i = carry  # (m, k), (m, k)
        start = jnp.minimum(i * chunk, nl - chunk)
        xs = jax.lax.dynamic_slice_in_dim(x, start, chunk, 0) - mu  # (chunk, d)
        bs = jax.lax.dynamic_slice_in_dim(bias, start, chunk, 0)  # (chunk,)
        xn = jnp.sum(xs * xs, axis=-1)  # (chunk,)
        d2 = (qn[:, None] + xn[None, :]) - 2.0 * jnp.dot(qc, xs.T, precision=hi)  # (m, chunk)
        s = jnp.maximum(d2, 0.0) + bs[None, :]
        local = start + jnp.arange(chunk)  # (chunk,)
        valid = (local >= i * chunk) & (offset + local < n_valid)
        s = jnp.where(valid[None, :], s, jnp.inf)
        neg, j = jax.lax.top_k(-s, k)  # (m, k)
        cand_s = jnp.concatenate([best_s, -neg], axis=1)  # running first: ties keep the lower index
        cand_i = jnp.concatenate([best_i, (offset + start + j).astype(jnp.int32)], axis=1)
        neg, jj = jax.lax.top_k(-cand_s, k)
        return (-neg, jnp.take_along_axis(cand_i, jj, axis=1)), None

    init = (jnp.full((m, k), jnp.inf, q.dtype), jnp.zeros((m, k), jnp.int32))
    (best_s, best_i), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))

    # Exact re-ranking from the selected points: ||q - x||^2 from differences, no cancellation.
    li = jnp.clip(best_i - offset, 0, nl - 1)  # (m, k) local indices
    exact = jnp.stack([jnp.sum(jnp.square(q - x[li[:, j]]), axis=-1) + bias[li[:, j]]
                       for j in range(k)], axis=1)  # (m, k)
    exact = jnp.where(jnp.isinf(best_s), jnp.inf, exact)
    exact, best_i = jax.lax.sort((exact, best_i), dimension=1, num_keys=2)
    return exact, best_i


@functools.partial(jax.jit, static_argnames=("k_out", "k", "chunk"))
def _knn_jit(q: Array, x: Array, *, k_out: int, k: int, chunk: int) -> tuple[Array, Array]:
    """Single-device k-NN: distances (m, k_out) and indices (m, k_out) from k >= k_out candidates."""
    mu = jnp.mean(x, axis=0)  # (d,) centring shift
    s, i = _topk_core(q, x, None, mu, jnp.int32(0), k=k, chunk=chunk, n_valid=x.shape[0])
    return jnp.sqrt(s[:, :k_out]), i[:, :k_out]


def _map_queries(fn: Callable[[Array], tuple[Array, ...]], q: Array, query_chunk: int | None):
    """Applies fn to query blocks of `query_chunk` rows (last block zero-padded: one compilation)."""
    m = q.shape[0]
    if query_chunk is None or query_chunk >= m:
        return fn(q)
    _check_chunk("query_chunk", query_chunk)
    n_blocks = -(-m // query_chunk)
    xp = jnp if isinstance(q, jax.Array) else np
    qp = xp.pad(q, ((0, n_blocks * query_chunk - m), (0, 0)))
    outs = [fn(qp[b * query_chunk:(b + 1) * query_chunk]) for b in range(n_blocks)]
    return tuple(jnp.concatenate(parts, axis=0)[:m] for parts in zip(*outs))


def knn(queries, train, k: int, *, chunk: int = DEFAULT_CHUNK, extra_candidates: int = 2,
        query_chunk: int | None = None) -> tuple[Array, Array]:
    """Exact k nearest training points (Euclidean) of every query.

    queries (m, d) or (m, H, W, C); train (n, ...) with the same point shape; k <= n.
    Returns dist (m, k) float32 (recomputed exactly from the points) and idx (m, k) int32, nearest first;
    equal distances go to the lower index. Memory O(m x chunk) (O(query_chunk x chunk) if given).
    `extra_candidates` extra neighbours are kept through the float32 scan and re-ranked exactly.
    """
    q_shape, x_shape = np.shape(queries), np.shape(train)
    q, x = _as_points("queries", queries), _as_points("train", train)
    _check_pair("queries", q, "train", x, q_shape, x_shape)
    _check_chunk("chunk", chunk)
    n = x.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1 or k > n:
        raise ValueError(f"k must be an int in [1, n_train={n}], got {k!r}")
    if not isinstance(extra_candidates, (int, np.integer)) or extra_candidates < 0:
        raise ValueError(f"extra_candidates must be an int >= 0, got {extra_candidates!r}")
    kk = min(k + extra_candidates, n)
    ch = max(min(chunk, n), kk)
    x = jnp.asarray(x)
    return _map_queries(lambda qb: _knn_jit(qb, x, k_out=k, k=kk, chunk=ch), q, query_chunk)


def top2_neighbors(queries, train, *, chunk: int = DEFAULT_CHUNK, extra_candidates: int = 2,
                   query_chunk: int | None = None) -> tuple[Array, Array]:
    """Exact nearest and second-nearest training points: dist (m, 2), idx (m, 2). See `knn`.

    Raises ValueError when n_train < 2, the point shapes differ, or the data hold NaN/inf.
    """
    if np.ndim(train) >= 1 and np.shape(train)[0] < 2:
        raise ValueError(f"train needs at least 2 points for a top-2 search, got shape {np.shape(train)}")
    return knn(queries, train, 2, chunk=chunk, extra_candidates=extra_candidates,
               query_chunk=query_chunk)


@functools.lru_cache(maxsize=32)
def _sharded_fn(mesh: Mesh, k_out: int, kk: int, chunk: int, n_valid: int, n_local: int):
    axis = mesh.axis_names[0]

    def local(q, x, mu):
        offset = (jax.lax.axis_index(axis) * n_local).astype(jnp.int32)
        s, i = _topk_core(q, x, None, mu, offset, k=kk, chunk=chunk, n_valid=n_valid)  # (m, kk)
        s = jax.lax.all_gather(s, axis, axis=1, tiled=True)  # (m, devices * kk)
        i = jax.lax.all_gather(i, axis, axis=1, tiled=True)
        s, i = jax.lax.sort((s, i), dimension=1, num_keys=2)
        return jnp.sqrt(s[:, :k_out]), i[:, :k_out]

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis, None), P()), out_specs=(P(), P()),
                           check_vma=False)
    # zero padding rows do not change the sum: mean over the n_valid real rows
    return jax.jit(lambda q, xp: mapped(q, xp, jnp.sum(xp, axis=0) / n_valid))


def top2_neighbors_sharded(queries, train, *, mesh: Mesh | None = None, chunk: int = DEFAULT_CHUNK,
                           extra_candidates: int = 2,
                           query_chunk: int | None = None) -> tuple[Array, Array]:
    """`top2_neighbors` with the training set split over a 1-D mesh (default: all devices, axis 'data').

    n is padded to a multiple of the device count with rows that score +inf (never dropped, never
    selected); each device finds its local candidates, which are all-gathered and merged.
    Returns the same (dist (m, 2), idx (m, 2)) as the single-device search.
    """
    q_shape, x_shape = np.shape(queries), np.shape(train)
    q, x = _as_points("queries", queries), _as_points("train", train)
    _check_pair("queries", q, "train", x, q_shape, x_shape)
    _check_chunk("chunk", chunk)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"train needs at least 2 points for a top-2 search, got shape {x_shape}")
    if not isinstance(extra_candidates, (int, np.integer)) or extra_candidates < 0:
        raise ValueError(f"extra_candidates must be an int >= 0, got {extra_candidates!r}")
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()), ("data",))
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be 1-D (one axis over which train is split), got axes {mesh.axis_names}")
    axis = mesh.axis_names[0]
    n_dev = mesh.devices.size
    n_local = -(-n // n_dev)
    kk = min(2 + extra_candidates, n_local)
    ch = max(min(chunk, n_local), kk)
    pad = n_local * n_dev - n  # zero rows, masked by index: they score +inf
    xp = (jnp if isinstance(x, jax.Array) else np).pad(x, ((0, pad), (0, 0)))
    xp = jax.device_put(xp, NamedSharding(mesh, P(axis, None)))
    fn = _sharded_fn(mesh, 2, kk, ch, n, n_local)
    return _map_queries(lambda qb: fn(qb, xp), q, query_chunk)


# ---------------------------------------------------------------- memorization (PAPER.md section 4)

def memorization(samples, train, ratio: float = 1.0 / 3.0, *, dedupe: bool = False,
                 chunk: int = DEFAULT_CHUNK, query_chunk: int | None = None,
                 sharded: bool = False) -> dict[str, Any]:
    """Memorization criterion of PAPER.md section 4: x memorized iff ||x - NN1|| < ratio ||x - NN2||.

    samples (m, ...) generated points, train (n, ...) training points (pixel space for images).
    Ties/duplicates: the inequality is strict, so if the training set holds exact duplicates of a point,
    a copy of that point has NN1 = NN2 (distance 0) and is NOT memorized. With dedupe=True exact duplicate
    rows of `train` are removed first (first occurrence kept; nn_idx still index the original `train`).
    sharded=True splits the training set over all devices (`top2_neighbors_sharded`).

    Returns a dict of numpy arrays / Python numbers:
      memorized (m,) bool; nn_idx (m, 2) int; nn_dist (m, 2) float32;
      dist_ratio (m,) = d1 / d2 (1.0 where d1 = d2 = 0); memorization_ratio (fraction memorized);
      ratio (the threshold); n_train, n_unique (training points searched).
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a number in (0, 1] (paper: 1/3), got {ratio!r}")
    q_shape, x_shape = np.shape(samples), np.shape(train)
    x = _as_points("train", train)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"train needs at least 2 points for the memorization criterion, got shape {x_shape}")
    keep = None
    if dedupe:
        _, first = np.unique(np.asarray(x), axis=0, return_index=True)
        keep = np.sort(first)
        if keep.size < 2:
            raise ValueError("train holds fewer than 2 distinct points after dedupe=True")
        x = x[keep]
    search = top2_neighbors_sharded if sharded else top2_neighbors
    if len(q_shape) >= 2 and len(x_shape) >= 2 and tuple(q_shape[1:]) != tuple(x_shape[1:]):
        raise ValueError(f"samples and train must have the same point shape, got {tuple(q_shape[1:])} "
                         f"and {tuple(x_shape[1:])}")
    samples = _as_points("samples", samples)
    dist, idx = search(samples, x, chunk=chunk, query_chunk=query_chunk)
    dist, idx = np.asarray(dist), np.asarray(idx)
    if keep is not None:
        idx = keep[idx]
    d1, d2 = dist[:, 0], dist[:, 1]
    memorized = d1 < ratio * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        dist_ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 1.0)
    return dict(memorized=memorized, nn_idx=idx, nn_dist=dist, dist_ratio=dist_ratio,
                memorization_ratio=float(memorized.mean()), ratio=float(ratio), n_train=int(n),
                n_unique=int(x.shape[0]))


# ---------------------------------------------------------------- distribution metrics on features

def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh; eigenvalues below 0 (round-off of a PSD matrix) count as 0."""
    w, v = np.linalg.eigh(0.5 * (s + s.T))
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(f1, f2) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017).

    FD = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}), float64, unbiased covariances.
    tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = tr((S1 S2)^{1/2}), computed from symmetric eigendecompositions.
    f1 (m1, f), f2 (m2, f), m >= 2.
    """
    a, b = _as_features("f1", f1), _as_features("f2", f2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"f1 and f2 must have the same feature dimension, got {a.shape[1]} and {b.shape[1]}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1 = np.atleast_2d(np.cov(a, rowvar=False))
    s2 = np.atleast_2d(np.cov(b, rowvar=False))
    r1 = _sqrtm_psd(s1)
    mid = r1 @ s2 @ r1
    w = np.linalg.eigvalsh(0.5 * (mid + mid.T))
    tr_covmean = float(np.sum(np.sqrt(np.maximum(w, 0.0))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / f + 1)^3 (Binkowski et al. 2018), x, y (s, f)."""
    s, f = x.shape
    kxx = (x @ x.T / f + 1.0) ** 3
    kyy = (y @ y.T / f + 1.0) ** 3
    kxy = (x @ y.T / f + 1.0) ** 3
    off = s * (s - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                 - 2.0 * kxy.mean())


def kid(f1, f2, subsets: int = 100, subset_size: int | None = None, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) on arbitrary features: (mean, std) over subsets.

    Each subset draws `subset_size` rows of f1 and of f2 without replacement and computes the unbiased
    MMD^2 with the cubic polynomial kernel (x.y/f + 1)^3; std is over subsets (ddof=0, as the reference
    code). subset_size=None uses min(1000, m1, m2); an explicit size above min(m1, m2) is an error.
    """
    a, b = _as_features("f1", f1), _as_features("f2", f2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"f1 and f2 must have the same feature dimension, got {a.shape[1]} and {b.shape[1]}")
    if not isinstance(subsets, (int, np.integer)) or subsets < 1:
        raise ValueError(f"subsets must be an int >= 1, got {subsets!r}")
    m = min(a.shape[0], b.shape[0])
    if subset_size is None:
        subset_size = min(1000, m)
    if not isinstance(subset_size, (int, np.integer)) or not 2 <= subset_size <= m:
        raise ValueError(f"subset_size must be an int in [2, min(m1, m2)={m}], got {subset_size!r}")
    rng = np.random.default_rng(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(a.shape[0], subset_size, replace=False)]
        y = b[rng.choice(b.shape[0], subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())


def _manifold_radii(feats: Array, k: int, chunk: int) -> Array:
    """Distance of every point to its k-th nearest OTHER point of the same set (self is the 0th)."""
    n = feats.shape[0]
    kk = min(k + 3, n)
    mu = jnp.mean(feats, axis=0)
    s, _ = _topk_core(feats, feats, None, mu, jnp.int32(0), k=kk, chunk=max(min(chunk, n), kk), n_valid=n)
    return jnp.sqrt(s[:, k])  # (n,)


def _in_manifold(queries: Array, ref: Array, radii: Array, chunk: int) -> Array:
    """Bool (m,): query inside some ball B(ref_i, radii_i), i.e. min_i ||q - ref_i||^2 - radii_i^2 <= 0.

    The minimiser is found by the chunked top-k scan with bias -radii^2 and its score recomputed exactly.
    """
    n = ref.shape[0]
    kk = min(3, n)
    mu = jnp.mean(ref, axis=0)
    s, _ = _topk_core(queries, ref, -jnp.square(radii), mu, jnp.int32(0), k=kk,
                      chunk=max(min(chunk, n), kk), n_valid=n)
    return s[:, 0] <= 0.0


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _precision_recall_jit(real: Array, fake: Array, *, k: int, chunk: int) -> tuple[Array, Array]:
    """Counts (fake inside the real manifold, real inside the fake manifold); see `precision_recall`."""
    r_rad, f_rad = _manifold_radii(real, k, chunk), _manifold_radii(fake, k, chunk)
    return (jnp.sum(_in_manifold(fake, real, r_rad, chunk), dtype=jnp.int32),
            jnp.sum(_in_manifold(real, fake, f_rad, chunk), dtype=jnp.int32))


def precision_recall(real, fake, k: int = 3, *, chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    The manifold of a set is the union of balls around its points with radius = distance to the point's
    k-th nearest neighbour in the set. precision = fraction of fake inside the real manifold;
    recall = fraction of real inside the fake manifold. Boundary points (distance == radius) count as
    inside. real (m1, f), fake (m2, f), both with more than k rows. Float32, chunked (memory O(m x chunk)).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    r, f = _as_points("real", real), _as_points("fake", fake)
    if np.ndim(real) != 2 or np.ndim(fake) != 2:
        raise ValueError(f"real and fake must be feature matrices (m, f), got shapes {np.shape(real)} "
                         f"and {np.shape(fake)}")
    _check_pair("real", r, "fake", f, np.shape(real), np.shape(fake))
    _check_chunk("chunk", chunk)
    for name, a in (("real", r), ("fake", f)):
        if a.shape[0] <= k:
            raise ValueError(f"{name} needs more than k={k} rows for k-NN radii, got {a.shape[0]}")
    n_fake_in, n_real_in = _precision_recall_jit(r, f, k=int(k), chunk=int(chunk))
    return dict(precision=int(n_fake_in) / f.shape[0], recall=int(n_real_in) / r.shape[0])


# ---------------------------------------------------------------- feature extractors

@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A named feature map: fn(images (b, H, W, C) in [-1, 1]) -> features (b, f).

    `info` carries provenance (e.g. the classifier's test accuracy and cache path).
    Calling it maps a whole image array in batches of `batch_size` and returns float32 numpy (b, f).
    """
    name: str
    fn: Callable[[Any], Any]
    info: dict = dataclasses.field(default_factory=dict)

    def __call__(self, images, batch_size: int = 256) -> np.ndarray:
        _check_chunk("batch_size", batch_size)
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"images must have shape (b, H, W, C), got {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or inf values")
        b = images.shape[0]
        out = []
        for s in range(0, b, batch_size):
            blk = images[s:s + batch_size]
            pad = batch_size - blk.shape[0] if b > batch_size else 0  # fixed shape: one compilation
            if pad:
                blk = np.concatenate([blk, np.zeros((pad,) + blk.shape[1:], blk.dtype)])
            feats = np.asarray(self.fn(blk), np.float32)
            if feats.ndim != 2 or feats.shape[0] != blk.shape[0]:
                raise ValueError(f"feature extractor {self.name!r} must return (b, f) for b={blk.shape[0]} "
                                 f"images, got shape {feats.shape}")
            out.append(feats[:feats.shape[0] - pad])
        return np.concatenate(out, axis=0)


def as_feature_extractor(obj) -> FeatureExtractor:
    """Accepts a FeatureExtractor, an object with `name` and `fn`, or a plain callable images -> (b, f)."""
    if isinstance(obj, FeatureExtractor):
        return obj
    if hasattr(obj, "fn") and hasattr(obj, "name") and callable(obj.fn):
        return FeatureExtractor(str(obj.name), obj.fn, dict(getattr(obj, "info", {}) or {}))
    if callable(obj):
        return FeatureExtractor(getattr(obj, "__name__", type(obj).__name__), obj)
    raise ValueError(f"extractor must be a FeatureExtractor or a callable images -> (b, f), got {obj!r}")


def _pixels(images):
    return jnp.reshape(images, (images.shape[0], -1))


class FeatureCNN(nn.Module):
    """Small CNN classifier; its penultimate ReLU layer (`features` wide) is the feature map.

    (b, H, W, C) -> (logits (b, num_classes), features (b, features)). 3x3 convs, 2x2 average pooling
    between stages (while the image is at least 2x2), global average pool, dense, dense.
    """
    num_classes: int
    widths: tuple[int, ...] = (32, 64, 64)
    features: int = 64

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        for i, w in enumerate(self.widths):
            x = nn.relu(nn.Conv(w, (3, 3), name=f"conv{i}")(x))
            if i < len(self.widths) - 1 and min(x.shape[1], x.shape[2]) >= 2:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))  # (b, widths[-1])
        h = nn.relu(nn.Dense(self.features, name="penultimate")(x))  # (b, features)
        return nn.Dense(self.num_classes, name="head")(h), h


def train_feature_classifier(images, labels, *, widths: tuple[int, ...] = (32, 64, 64), features: int = 64,
                             steps: int = 400, batch_size: int = 128, learning_rate: float = 3e-3,
                             test_fraction: float = 0.2, seed: int = 0) -> tuple[dict, dict]:
    """Trains `FeatureCNN` with Adam on labelled images (b, H, W, C) in [-1, 1], labels (b,) ints.

    A random `test_fraction` of the images is held out for the reported test accuracy.
    Returns (variables, meta) with meta['test_accuracy'] and the class values.
    """
    x = np.asarray(images, np.float32)
    y = np.asarray(labels)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (b, H, W, C), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or inf values")
    if x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3:
        raise ValueError(f"images must be scaled to [-1, 1], got range [{x.min():.3g}, {x.max():.3g}]")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got {y.shape} {y.dtype}")
    classes, y = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError("labels must hold at least 2 classes to train the feature classifier")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("features", features)):
        _check_chunk(name, v)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = max(1, int(round(test_fraction * x.shape[0])))
    if x.shape[0] - n_test < 2:
        raise ValueError(f"too few labelled images ({x.shape[0]}) to train the feature classifier")
    te, tr = perm[:n_test], perm[n_test:]
    x_tr, y_tr = jnp.asarray(x[tr]), jnp.asarray(y[tr], jnp.int32)
    model = FeatureCNN(num_classes=int(classes.size), widths=tuple(widths), features=features)
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, 0), x_tr[:1])["params"]
    tx = optax.adam(learning_rate)

    def loss_fn(p, xb, yb):
        logits, _ = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(p, opt, i):
        idx = jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, 1), i), (batch_size,),
                                 0, x_tr.shape[0])
        loss, g = jax.value_and_grad(loss_fn)(p, x_tr[idx], y_tr[idx])
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), opt, loss

    # A Python loop over a jitted step: on CPU, XLA convolutions inside lax.scan run ~10x slower.
    opt = tx.init(params)
    for i in range(steps):
        params, opt, loss = train_step(params, opt, jnp.int32(i))
    logits, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(x[te]))
    acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y[te])))
    meta = dict(test_accuracy=acc, final_train_loss=float(loss), n_train=int(tr.size),
                n_test=int(n_test), classes=[int(c) for c in classes])
    return {"params": params}, meta


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in (np.ascontiguousarray(images, np.float32), np.ascontiguousarray(labels, np.int64)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _classifier_extractor(images, labels, workdir: str | None, *, widths, features, steps, batch_size,
                          learning_rate, test_fraction, seed) -> FeatureExtractor:
    if images is None or labels is None:
        raise ValueError("kind='classifier' needs labelled images: pass images (b, H, W, C) in [-1, 1] "
                         "and labels (b,)")
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    config = dict(widths=list(widths), features=int(features), steps=int(steps), batch_size=int(batch_size),
                  learning_rate=float(learning_rate), test_fraction=float(test_fraction), seed=int(seed),
                  image_shape=list(images.shape[1:]), data_sha1=_fingerprint(images, labels))
    path = None if workdir is None else os.path.join(workdir, "feature_net")
    variables = meta = None
    cached = False
    if path is not None and os.path.exists(os.path.join(path, "meta.json")):
        with open(os.path.join(path, "meta.json")) as fh:
            meta = json.load(fh)
        if meta.get("config") != config:
            raise ValueError(f"{path} holds a feature classifier trained with different data or settings "
                             f"({meta.get('config')}); use another workdir or delete {path} to retrain")
        model = FeatureCNN(num_classes=len(meta["classes"]), widths=tuple(widths), features=features)
        template = model.init(jax.random.key(0), jnp.zeros((1,) + images.shape[1:], jnp.float32))
        with open(os.path.join(path, "params.msgpack"), "rb") as fh:
            variables = flax.serialization.from_bytes(template, fh.read())
        cached = True
    else:
        variables, meta = train_feature_classifier(images, labels, widths=tuple(widths), features=features,
                                                   steps=steps, batch_size=batch_size,
                                                   learning_rate=learning_rate,
                                                   test_fraction=test_fraction, seed=seed)
        meta["config"] = config
        if path is not None:
            os.makedirs(path, exist_ok=True)
            for fname, data, mode in (("params.msgpack", flax.serialization.to_bytes(variables), "wb"),
                                      ("meta.json", json.dumps(meta, indent=2), "w")):
                tmp = os.path.join(path, fname + ".tmp")
                with open(tmp, mode) as fh:
                    fh.write(data)
                os.replace(tmp, os.path.join(path, fname))
    model = FeatureCNN(num_classes=len(meta["classes"]), widths=tuple(widths), features=features)
    fn = jax.jit(lambda imgs: model.apply(variables, jnp.asarray(imgs, jnp.float32))[1])
    info = dict(test_accuracy=meta["test_accuracy"], cached=cached, path=path, config=config)
    return FeatureExtractor("classifier", fn, info)


def get_feature_extractor(kind: str | Callable = "classifier", images=None, labels=None,
                          workdir: str | None = None, *, widths: tuple[int, ...] = (32, 64, 64),
                          features: int = 64, steps: int = 400, batch_size: int = 128,
                          learning_rate: float = 3e-3, test_fraction: float = 0.2,
                          seed: int = 0, inception_weights: str | None = None) -> FeatureExtractor:
    """Builds a feature extractor images (b, H, W, C) in [-1, 1] -> (b, f).

    kind: 'classifier' (default; `FeatureCNN` trained on (images, labels), cached in
      <workdir>/feature_net/ and reloaded when the data and settings match; workdir=None: no cache),
      'pixels' (flattened pixels), 'inception' (InceptionV3 pool_3 features from the Keras weights file
      `inception_weights`; diffmem.inception), or a user callable / FeatureExtractor (returned as is).
    """
    if not isinstance(kind, str):
        return as_feature_extractor(kind)
    if kind == "pixels":
        return FeatureExtractor("pixels", _pixels)
    if kind == "classifier":
        return _classifier_extractor(images, labels, workdir, widths=widths, features=features, steps=steps,
                                     batch_size=batch_size, learning_rate=learning_rate,
                                     test_fraction=test_fraction, seed=seed)
    if kind == "inception":
        if not inception_weights:
            raise ValueError("kind='inception' needs inception_weights: the path of a Keras InceptionV3 weights file "
                             "(weights are not bundled or downloaded; see diffmem/inception.py)")
        from diffmem import inception  # local: Keras is only imported when Inception features are asked for
        return inception.inception_extractor(inception_weights)
    raise ValueError(f"kind must be 'classifier', 'pixels', 'inception' or a callable, got {kind!r}")


# ---------------------------------------------------------------- all image metrics

def image_metrics(samples, train_images, ref_images, extractor, *, k: int = 3, ratio: float = 1.0 / 3.0,
                  dedupe: bool = False, kid_subsets: int = 100, kid_subset_size: int | None = None,
                  seed: int = 0, chunk: int = DEFAULT_CHUNK, batch_size: int = 256,
                  sharded: bool = False) -> dict[str, Any]:
    """Memorization (pixel space, vs train_images) and FD / KID / precision-recall (features, vs ref_images).

    samples (m, H, W, C), train_images (n, H, W, C), ref_images (r, H, W, C), all in [-1, 1];
    extractor: a FeatureExtractor or a callable images -> (b, f).
    Returns Python numbers: memorization_ratio, fd, kid_mean, kid_std, precision, recall, plus
    extractor (its name), k, n_samples, n_ref.
    """
    shapes = {name: np.shape(a) for name, a in
              (("samples", samples), ("train_images", train_images), ("ref_images", ref_images))}
    for name, s in shapes.items():
        if len(s) != 4:
            raise ValueError(f"{name} must have shape (b, H, W, C), got {s}")
    if len({s[1:] for s in shapes.values()}) != 1:
        raise ValueError(f"samples, train_images and ref_images must share the image shape, got {shapes}")
    ext = as_feature_extractor(extractor)
    mem = memorization(samples, train_images, ratio, dedupe=dedupe, chunk=chunk, sharded=sharded)
    f_fake = ext(samples, batch_size=batch_size)
    f_real = ext(ref_images, batch_size=batch_size)
    kid_mean, kid_std = kid(f_real, f_fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    pr = precision_recall(f_real, f_fake, k, chunk=chunk)
    return dict(memorization_ratio=mem["memorization_ratio"], fd=frechet_distance(f_real, f_fake),
                kid_mean=kid_mean, kid_std=kid_std, precision=pr["precision"], recall=pr["recall"],
                extractor=ext.name, k=int(k), n_samples=int(shapes["samples"][0]),
                n_ref=int(shapes["ref_images"][0]))
