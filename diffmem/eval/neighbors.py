"""Exact nearest neighbours and the memorization criterion (arXiv 2511.03202, Section 6).

`top2_neighbors` is an exact, chunked, jit-compiled Euclidean top-2 search (memory O(m x chunk)). Squared distances
are scored as ||q-mu||^2 - 2 (q-mu).(x-mu) + ||x-mu||^2 (mu: the training mean, which shrinks the norms and so the
cancellation error), clamped at 0, in float32 with HIGHEST matmul precision. A few extra candidates are kept and
re-ranked with distances recomputed exactly as ||q - x|| from the selected points, so the returned distances are
accurate even for near-copies (distance ~ 0) and near-ties in the float32 expansion are resolved. Ties in the exact
distance go to the lower index. `top2_neighbors_sharded` splits the training set over a 1-D device mesh
(shard_map); every device returns its local candidates, which are all-gathered and merged: the result equals the
single-device one.

Memorization (Section 6 of the paper): x is memorized when ||x - NN1|| < ratio ||x - NN2||, ratio = 1/3. Strict
inequality: when the training set holds exact duplicates of a point, a copy of it has NN1 = NN2 = 0 and is NOT
memorized; `dedupe=True` removes exact duplicates from the training set first.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
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


# ---------------------------------------------------------------- memorization (Section 6)

def memorization(samples, train, ratio: float = 1.0 / 3.0, *, dedupe: bool = False,
                 chunk: int = DEFAULT_CHUNK, query_chunk: int | None = None,
                 sharded: bool = False) -> dict[str, Any]:
    """The memorization criterion of Section 6 of the paper: x memorized iff ||x - NN1|| < ratio ||x - NN2||.

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


