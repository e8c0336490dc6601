"""Closed-form scores and log-densities of the OU marginals (arXiv 2511.03202, Section 3).

* Gaussian mixture P = sum_k pi_k N(mu_k, Sigma_k): at time t component k is
  N(alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I); the score is the posterior-weighted sum of the
  component scores.
* Empirical distribution of n points: P_hat_t = (1/n) sum_i N(alpha_t x_i, sigma_t^2 I), whose score
  score_hat(x, t) = (alpha_t sum_i w_i(x) x_i - x) / sigma_t^2,  w = softmax_i(-||x - alpha_t x_i||^2 / 2 sigma_t^2)
  is the global minimiser of the DSM loss (eq. 3.1).

The empirical quantities stream over the training points in chunks with an online log-sum-exp, so
memory is O(queries x chunk + queries x d) whatever n is. A `mask` (n,) lets training sets of
different sizes share one padded array (entries with mask 0 do not exist). For training sets that do
not fit on the device (n = 10^6 at d = 3072 is 12 GB of float32), pass a host numpy array (or a
np.memmap) to `empirical_stats_streaming`: chunks are copied to the device one at a time, so the
device holds O(chunk x d); the host must hold (or memory-map) the data.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffmem import sde

Array = jax.Array
LOG_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------ Gaussian mixtures

@struct.dataclass
class GaussianMixture:
    """P = sum_k weights_k N(means_k, Sigma_k) with Sigma_k = V_k diag(eigvals_k) V_k^T.

    weights (K,), means (K, d), eigvals (K, d) > 0, eigvecs (K, d, d) or None (axis-aligned:
    isotropic or diagonal covariances). Build it with `gaussian_mixture`.
    """
    weights: Array
    means: Array
    eigvals: Array
    eigvecs: Optional[Array] = None

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def trace_cov(self) -> Array:
        """sum_k pi_k tr(Sigma_k) (equals tr(Sigma) for a shared covariance)."""
        return jnp.sum(self.weights * jnp.sum(self.eigvals, -1))


def gaussian_mixture(means, cov=1.0, weights=None, cov_type: str = "isotropic") -> GaussianMixture:
    """Builds a GaussianMixture.

    means (K, d). cov_type and the accepted shapes of `cov`:
      'isotropic': () shared s^2, or (K,) per component;
      'diagonal':  (d,) shared, or (K, d);
      'full':      (d, d) shared, or (K, d, d) (symmetric positive definite).
    weights (K,) non-negative, normalised here; None = equal weights.
    """
    means = jnp.asarray(means, jnp.float32)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, d), got {means.shape}")
    k, d = means.shape
    if weights is None:
        weights = jnp.full((k,), 1.0 / k)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (k,) or bool(jnp.any(weights < 0)) or not float(jnp.sum(weights)) > 0:
        raise ValueError(f"weights must be (K,)=({k},) non-negative with a positive sum, got {weights}")
    weights = weights / jnp.sum(weights)
    cov = jnp.asarray(cov, jnp.float32)
    eigvecs = None
    if cov_type == "isotropic":
        if cov.shape not in ((), (k,)):
            raise ValueError(f"isotropic cov must have shape () or (K,)=({k},), got {cov.shape}")
        eigvals = jnp.broadcast_to(cov.reshape(cov.shape + (1,)), (k, d))
    elif cov_type == "diagonal":
        if cov.shape not in ((d,), (k, d)):
            raise ValueError(f"diagonal cov must have shape (d,)=({d},) or (K, d)=({k}, {d}), got {cov.shape}")
        eigvals = jnp.broadcast_to(cov, (k, d))
    elif cov_type == "full":
        if cov.shape not in ((d, d), (k, d, d)):
            raise ValueError(f"full cov must have shape (d, d) or (K, d, d), got {cov.shape}")
        if not bool(jnp.allclose(cov, jnp.swapaxes(cov, -1, -2), atol=1e-5)):
            raise ValueError("full cov must be symmetric")
        eigvals, eigvecs = jnp.linalg.eigh(jnp.broadcast_to(cov, (k, d, d)))
    else:
        raise ValueError(f"cov_type must be 'isotropic', 'diagonal' or 'full', got {cov_type!r}")
    if not bool(jnp.all(eigvals > 0)) or not bool(jnp.all(jnp.isfinite(means))):
        raise ValueError("covariances must be positive definite and means finite")
    return GaussianMixture(weights=weights, means=means, eigvals=jnp.asarray(eigvals), eigvecs=eigvecs)


def random_mixture(key: Array, num_components: int, dim: int, mean_std: float = 2.0,
                   cov_scale: float = 1.0) -> GaussianMixture:
    """The mixture of the paper's Section 6.1: equal weights, mu_k ~ N(0, mean_std^2 I_d) (paper: 2),
    Sigma = cov_scale^2 I_d (paper: 1)."""
    if num_components < 1 or dim < 1:
        raise ValueError(f"num_components and dim must be >= 1, got {num_components}, {dim}")
    means = mean_std * jax.random.normal(key, (num_components, dim))
    return gaussian_mixture(means, cov_scale ** 2)


def sample_mixture(key: Array, mix: GaussianMixture, n: int) -> Array:
    """n i.i.d. draws from the mixture at t = 0, (n, d)."""
    kc, kz = jax.random.split(key)
    comp = jax.random.choice(kc, mix.num_components, (n,), p=mix.weights)  # (n,)
    z = jax.random.normal(kz, (n, mix.dim)) * jnp.sqrt(mix.eigvals[comp])  # (n, d)
    if mix.eigvecs is not None:
        z = jnp.einsum("nij,nj->ni", mix.eigvecs[comp], z)
    return mix.means[comp] + z


def _mixture_terms(x: Array, t: Array, mix: GaussianMixture):
    """Per-component log-densities (m, K) and scores (m, K, d) of the time-t marginal."""
    a = sde.alpha(t)[:, None, None]                       # (m, 1, 1)
    s2 = sde.sigma2(t)[:, None, None]
    var = a * a * mix.eigvals[None] + s2                  # (m, K, d) eigenvalues of the covariance
    diff = x[:, None, :] - a * mix.means[None]            # (m, K, d)
    if mix.eigvecs is not None:
        diff = jnp.einsum("kji,mkj->mki", mix.eigvecs, diff)  # rotate into the eigenbasis
    z = diff / var                                        # (m, K, d)
    logp = (-0.5 * jnp.sum(diff * z, -1) - 0.5 * jnp.sum(jnp.log(var), -1)
            - 0.5 * x.shape[-1] * LOG_2PI)                # (m, K)
    score = -z
    if mix.eigvecs is not None:
        score = jnp.einsum("kij,mkj->mki", mix.eigvecs, score)
    return logp + jnp.log(mix.weights)[None], score


def mixture_logpdf(x: Array, t: Array, mix: GaussianMixture) -> Array:
    """log p_t(x) of the mixture's time-t marginal (t = 0: the mixture itself). x (m, d), t () or (m,) -> (m,)."""
    x, t = _check_queries(x, t, mix.dim, allow_zero=True)
    logp, _ = _mixture_terms(x, t, mix)
    return jax.nn.logsumexp(logp, -1)


def mixture_score(x: Array, t: Array, mix: GaussianMixture) -> Array:
    """grad_x log p_t(x) of the mixture's time-t marginal. x (m, d), t () or (m,) -> (m, d)."""
    x, t = _check_queries(x, t, mix.dim, allow_zero=True)
    logp, comp_scores = _mixture_terms(x, t, mix)
    post = jax.nn.softmax(logp, -1)                       # (m, K) posterior over components
    return jnp.einsum("mk,mkd->md", post, comp_scores)


# ----------------------------------------------------------------------- empirical distribution

class EmpiricalStats(struct.PyTreeNode):
    """Online log-sum-exp state over training points j for each query x:
    logits_j = (2 alpha x.x_j - alpha^2 ||x_j||^2) / (2 sigma^2) + log mask_j
    (the query norm ||x||^2 / 2 sigma^2 is common to all j and added back in `empirical_logpdf`).
    """
    max: Array    # (m,)     running max of the logits
    sum: Array    # (m,)     sum_j exp(logit_j - max)
    mean: Array   # (m, d)   sum_j exp(logit_j - max) x_j
    count: Array  # ()       number of unmasked training points


def _init_stats(x: Array) -> EmpiricalStats:
    m = x.shape[0]
    return EmpiricalStats(max=jnp.full((m,), jnp.finfo(x.dtype).min, x.dtype),
                          sum=jnp.zeros((m,), x.dtype), mean=jnp.zeros_like(x),
                          count=jnp.zeros((), x.dtype))


def _query_factors(x: Array, t: Array) -> tuple[Array, Array]:
    """(x scaled by alpha / sigma^2 (m, d), alpha^2 / (2 sigma^2) (m,)): logit_j = xs.x_j - c2 ||x_j||^2 + log mask_j."""
    a = sde.alpha(t)                                      # (m,)
    inv = 1.0 / (2.0 * sde.sigma2(t))                     # (m,)
    return x * (2.0 * a * inv)[:, None], a * a * inv


def _point_terms(xc: Array, mc: Array) -> tuple[Array, Array]:
    """(||x_j||^2, log mask_j with -inf where mask_j = 0) of the points xc (c, d), mc (c,)."""
    return jnp.sum(xc * xc, -1), jnp.where(mc > 0, jnp.log(jnp.where(mc > 0, mc, 1.0)), -jnp.inf)


def _fold(st: EmpiricalStats, xs: Array, c2: Array, xc: Array, sq: Array, logm: Array) -> EmpiricalStats:
    """Folds one chunk of points xc (c, d) (with ||x_j||^2 `sq` and log-mask `logm`, (c,)) into the state."""
    logits = xs @ xc.T - c2[:, None] * sq[None] + logm[None]   # (m, c)
    new_max = jnp.maximum(st.max, jnp.max(logits, -1))    # (m,)
    scale = jnp.exp(st.max - new_max)                     # (m,)
    p = jnp.exp(logits - new_max[:, None])                # (m, c)
    return EmpiricalStats(max=new_max, sum=st.sum * scale + jnp.sum(p, -1),
                          mean=st.mean * scale[:, None] + p @ xc,
                          count=st.count + jnp.sum(logm > -jnp.inf))


def _update_stats(st: EmpiricalStats, x: Array, t: Array, xc: Array, mc: Array) -> EmpiricalStats:
    """Folds one chunk of training points xc (c, d) with mask mc (c,) into the state."""
    return _fold(st, *_query_factors(x, t), xc, *_point_terms(xc, mc))


@functools.partial(jax.jit, static_argnames=("chunk",))
def empirical_stats(x: Array, t: Array, data: Array, mask: Optional[Array] = None,
                    chunk: int = 4096) -> EmpiricalStats:
    """Streams the n training points in chunks of `chunk`. x (m, d), t (m,), data (n, d).

    The n // chunk full chunks are dynamic slices of `data` itself in a fori_loop, the n % chunk remaining points
    one more (smaller) update: `data` is never padded or copied whole (a padded copy cost a pass over all n x d
    floats per call). The query factors and the points' squared norms are computed once, outside the loop, so
    each chunk costs its two matmuls and (m, c) elementwise work.
    """
    n, d = data.shape
    if mask is None:
        mask = jnp.ones((n,), x.dtype)
    mask = mask.astype(x.dtype)
    chunk = max(1, min(chunk, n))
    full, rest = divmod(n, chunk)
    xs, c2 = _query_factors(x, t)                         # once, not per chunk
    sq, logm = _point_terms(data, mask)                   # (n,) each: one pass over the data
    st = _init_stats(x)
    if full == 1:
        st = _fold(st, xs, c2, data[:chunk], sq[:chunk], logm[:chunk])
    elif full > 1:
        def body(i, st):
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, i * chunk, chunk)
            return _fold(st, xs, c2, sl(data), sl(sq), sl(logm))
        st = jax.lax.fori_loop(0, full, body, st)
    if rest:
        lo = full * chunk
        st = _fold(st, xs, c2, data[lo:], sq[lo:], logm[lo:])
    return st


_update_stats_jit = jax.jit(_update_stats)


def empirical_stats_streaming(x: Array, t: Array, data: np.ndarray, mask: Optional[np.ndarray] = None,
                              chunk: int = 8192) -> EmpiricalStats:
    """Same as `empirical_stats` for a host (numpy / memmap) training set too large for the device:
    chunks are copied to the device one at a time. The last chunk is padded to keep one compilation."""
    x, t = _check_queries(x, t, data.shape[-1])
    n = data.shape[0]
    st = _init_stats(x)
    for lo in range(0, n, chunk):
        xc = np.asarray(data[lo:lo + chunk], np.float32)
        mc = np.ones((xc.shape[0],), np.float32) if mask is None else np.asarray(mask[lo:lo + chunk], np.float32)
        if xc.shape[0] < chunk and n > chunk:
            pad = chunk - xc.shape[0]
            xc, mc = np.pad(xc, ((0, pad), (0, 0))), np.pad(mc, (0, pad))
        st = _update_stats_jit(st, x, t, jnp.asarray(xc), jnp.asarray(mc))
    return st


def _check_data_shapes(x: Array, data: Array, mask: Optional[Array]):
    """Shape checks (free: no pass over the data). Raises ValueError naming the argument."""
    if data.ndim != 2:
        raise ValueError(f"data must have shape (n, d), got {data.shape}")
    if data.shape[0] == 0:
        raise ValueError("data must hold n >= 1 training points, got n = 0")
    if data.shape[1] != x.shape[-1]:
        raise ValueError(f"dimension mismatch: queries x have d={x.shape[-1]}, data has d={data.shape[1]}")
    if mask is not None and mask.shape != data.shape[:1]:
        raise ValueError(f"mask must have shape (n,)=({data.shape[0]},), got {mask.shape}")


def _raise_on_bad_values(t_min, data_finite, count):
    """The value checks of `empirical_score` / `empirical_logpdf`, from numbers computed with the result."""
    sde.check_time(t_min)
    if not data_finite:
        raise ValueError("data contains NaN or inf (or values beyond 1e19 in magnitude, whose squares overflow "
                         "float32)")
    if count <= 0:
        raise ValueError("mask selects no training point (n = 0); at least one entry must be > 0")


@functools.partial(jax.jit, static_argnames=("chunk", "logpdf"))
def _empirical_checked(x: Array, t: Array, data: Array, mask: Optional[Array], chunk: int, logpdf: bool):
    """score_hat (m, d) or log P_hat_t (m,), and the numbers `_raise_on_bad_values` checks (min t, data all
    finite, number of unmasked points), in one compiled program: the checks ride along with the computation
    instead of costing an eager pass over the n x d data before it (10% of the time at n = 5e4, d = 3072).
    Finiteness is read from the points' squared norms ||x_j||^2, which empirical_stats computes anyway (XLA
    merges the two): one is NaN / inf exactly when its point holds a NaN / inf or a square overflows float32."""
    t = jnp.broadcast_to(t, x.shape[:1])                  # (m,)
    st = empirical_stats(x, t, data, mask, chunk)
    out = logpdf_from_stats(st, x, t) if logpdf else score_from_stats(st, x, t)
    return out, (jnp.min(t), jnp.all(jnp.isfinite(jnp.sum(data * data, -1))), st.count)


def _empirical(x: Array, t: Array, data: Array, mask: Optional[Array], chunk: int, logpdf: bool) -> Array:
    x, t = _query_shapes(x, t, data.shape[-1])
    data = jnp.asarray(data)
    _check_data_shapes(x, data, mask)
    out, checks = _empirical_checked(x, t, data, mask, max(1, min(chunk, data.shape[0])), logpdf)
    if not any(isinstance(c, jax.core.Tracer) for c in checks):
        _raise_on_bad_values(*(v.item() for v in jax.device_get(checks)))
    else:    # inside someone's jit / grad / vmap: the concrete arguments are checked here, as before
        concrete = lambda a: not isinstance(a, jax.core.Tracer)
        _raise_on_bad_values(float(jnp.min(t)) if concrete(t) else 1.0,
                             not concrete(data) or np.isfinite(np.asarray(data)).all(),
                             1 if mask is None or not concrete(mask) else int((np.asarray(mask) > 0).sum()))
    return out


def empirical_score(x: Array, t: Array, data: Array, mask: Optional[Array] = None,
                    chunk: int = 4096) -> Array:
    """score_hat(x, t) = (alpha_t sum_i w_i x_i - x) / sigma_t^2 (Section 3 of the paper).

    x (m, d); t () or (m,); data (n, d); mask (n,) or None. Returns (m, d). Raises ValueError for t <= 0, data
    with NaN / inf, or a mask that selects no point (checked with the result, in the same compiled program).
    """
    return _empirical(x, t, data, mask, chunk, logpdf=False)


def score_from_stats(st: EmpiricalStats, x: Array, t: Array) -> Array:
    """The empirical score from a finished EmpiricalStats. x (m, d), t (m,) -> (m, d)."""
    return (sde.alpha(t)[:, None] * st.mean / st.sum[:, None] - x) / sde.sigma2(t)[:, None]


def logpdf_from_stats(st: EmpiricalStats, x: Array, t: Array) -> Array:
    """log P_hat_t(x) from a finished EmpiricalStats. x (m, d), t (m,) -> (m,)."""
    s2 = sde.sigma2(t)
    d = x.shape[-1]
    return (st.max + jnp.log(st.sum) - jnp.sum(x * x, -1) / (2.0 * s2)
            - jnp.log(st.count) - 0.5 * d * (LOG_2PI + jnp.log(s2)))


def empirical_logpdf(x: Array, t: Array, data: Array, mask: Optional[Array] = None,
                     chunk: int = 4096) -> Array:
    """log P_hat_t(x), P_hat_t = (1/n) sum_i N(alpha_t x_i, sigma_t^2 I). x (m, d) -> (m,). Checks as
    `empirical_score`."""
    return _empirical(x, t, data, mask, chunk, logpdf=True)


def _query_shapes(x: Array, t: Array, d: int) -> tuple[Array, Array]:
    """Shape checks of queries x (m, d) and times t (() or (m,)); returns them as arrays (t not broadcast)."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"queries x must have shape (m, d), got {x.shape}")
    if x.shape[-1] != d:
        raise ValueError(f"dimension mismatch: queries x have d={x.shape[-1]}, expected d={d}")
    t = jnp.asarray(t, x.dtype)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must be a scalar or have shape (m,)=({x.shape[0]},), got {t.shape}")
    return x, t


def _check_queries(x: Array, t: Array, d: int, allow_zero: bool = False):
    """Validates queries (m, d) and broadcasts t to (m,). Raises ValueError on bad input."""
    x, t = _query_shapes(x, t, d)
    if allow_zero and not isinstance(t, jax.core.Tracer):
        if not bool(jnp.all(t >= 0)):
            raise ValueError(f"t must be >= 0, got min {float(jnp.min(t))}")
    else:
        sde.check_time(t)
    return x, jnp.broadcast_to(t, x.shape[:1])
