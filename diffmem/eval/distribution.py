"""Distribution metrics on features (m, f): FD (Heusel et al. 2017), KID (Binkowski et al. 2018, cubic polynomial
kernel, unbiased MMD^2 over random subsets), precision / recall (Kynkaanniemi et al. 2019, k-NN manifolds) - the
quality columns of Table 1 of arXiv 2511.03202."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import io
from diffmem.eval.neighbors import DEFAULT_CHUNK, _as_points, _check_chunk, _check_pair, _topk_core

Array = jax.Array


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


_radii_jit = jax.jit(_manifold_radii, static_argnames=("k", "chunk"))


@functools.partial(jax.jit, static_argnames=("chunk",))
def _manifold_counts_jit(real: Array, fake: Array, r_rad: Array, f_rad: Array, *, chunk: int
                         ) -> tuple[Array, Array]:
    """Counts (fake inside the real manifold, real inside the fake manifold); see `precision_recall`."""
    return (jnp.sum(_in_manifold(fake, real, r_rad, chunk), dtype=jnp.int32),
            jnp.sum(_in_manifold(real, fake, f_rad, chunk), dtype=jnp.int32))


# The real set's radii, by the SHA-1 of its bytes: an experiment scores many sample sets against ONE reference, and
# the reference's k-NN radii (an r x r scan: 60,000 Fashion-MNIST images cost ~1,000x a model's 1,000 samples) are
# then computed once.
_REAL_RADII: dict[tuple, np.ndarray] = {}
_REAL_RADII_MAX = 4


def _real_radii(real: np.ndarray, k: int, chunk: int) -> np.ndarray:
    key = (io.sha1_arrays(real), k, chunk)
    if key not in _REAL_RADII:
        if len(_REAL_RADII) >= _REAL_RADII_MAX:
            _REAL_RADII.pop(next(iter(_REAL_RADII)))
        _REAL_RADII[key] = np.asarray(_radii_jit(jnp.asarray(real), k=k, chunk=chunk))
    return _REAL_RADII[key]


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
    r_rad = _real_radii(np.asarray(r), int(k), int(chunk))
    f_rad = _radii_jit(f, k=int(k), chunk=int(chunk))
    n_fake_in, n_real_in = _manifold_counts_jit(r, f, r_rad, f_rad, chunk=int(chunk))
    return dict(precision=int(n_fake_in) / f.shape[0], recall=int(n_real_in) / r.shape[0])



def feature_metrics(fake_features: np.ndarray, ref_features: np.ndarray, *, k: int = 3,
                    kid_subsets: int = 100, seed: int = 0) -> dict:
    """FD, KID (mean, std) and precision/recall (k) of feature sets fake (m, f) vs reference (r, f)."""
    kid_mean, kid_std = kid(ref_features, fake_features, subsets=kid_subsets, seed=seed)
    pr = precision_recall(ref_features, fake_features, k)
    return dict(fd=frechet_distance(ref_features, fake_features), kid_mean=kid_mean, kid_std=kid_std,
                precision=pr["precision"], recall=pr["recall"], k=int(k),
                n_fake=int(fake_features.shape[0]), n_ref=int(ref_features.shape[0]))
