"""Denoising score matching (eq. 3.1) and the Loss-Gap / Fisher estimators (Proposition 4.1).

Loss factories return pure functions `loss(params, key, batch) -> (scalar, aux)` (score_sde style),
with aux['per_example_loss'] (b,) and aux['time'] (b,) in [0, 1] for loss-by-time-bin metrics.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffmem import scores, sde

Array = jax.Array
WEIGHTINGS = ("none", "sigma2")


def dsm_per_example(score_fn: sde.ScoreFn, x0: Array, x_t: Array, t: Array,
                    weighting: str = "none") -> Array:
    """l_t(x0, s) = || -(x_t - alpha_t x0)/sigma_t^2 - s(x_t, t) ||^2 for each example (eq. 3.1).

    x0, x_t (b, d); t (b,). weighting 'none' is eq. 3.1; 'sigma2' multiplies by sigma_t^2 (the usual
    "epsilon" loss ||eps + sigma_t s||^2). Returns (b,).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    err = sde.dsm_target(x_t, x0, t) - score_fn(x_t, t)
    loss = jnp.sum(err.reshape(err.shape[0], -1) ** 2, -1)
    return loss * sde.sigma2(t) if weighting == "sigma2" else loss


def dsm_loss(score_fn: sde.ScoreFn, key: Array, x0: Array, t0: float, t1: float,
             weighting: str = "none", time_dist: str = "uniform") -> tuple[Array, dict]:
    """Monte-Carlo estimate of L(s) = int_{t0}^{T} (1/n) sum_i E ||target - s||^2 dt (eq. 3.1).

    One t ~ U[t0, T] and one noise draw per example; the mean is multiplied by (T - t0) so the
    estimate is unbiased for the integral as written. time_dist 'log_uniform' importance-samples
    t ~ 1/t (the weight t log(T/t0) keeps it unbiased). x0 (b, d). Returns (scalar, aux).
    """
    if not t0 > 0 or not t1 > t0:
        raise ValueError(f"need 0 < t0 < T, got t0={t0}, T={t1}")
    kt, kx = jax.random.split(key)
    t = sde.sample_time(kt, x0.shape[:1], t0, t1, time_dist)                  # (b,)
    x_t, _ = sde.marginal_sample(kx, x0, t)
    per = dsm_per_example(score_fn, x0, x_t, t, weighting)                    # (b,)
    w = (t1 - t0) if time_dist == "uniform" else t * jnp.log(t1 / t0)
    per = per * w
    return jnp.mean(per), {"per_example_loss": per, "time": (t - t0) / (t1 - t0)}


def make_dsm_loss(apply_fn: Callable[[dict, Array, Array], Array], t0: float, t1: float,
                  weighting: str = "none", time_dist: str = "uniform"):
    """Factory: loss(params, key, batch) with score s(x, t) = apply_fn(params, x, t)."""
    def loss(params, key, batch):
        return dsm_loss(lambda x, t: apply_fn(params, x, t), key, batch, t0, t1, weighting, time_dist)
    return loss


def make_eps_loss(apply_fn: Callable[..., Array], u_min: float = 0.0,
                  time_change: Callable[[Array], Array] = sde.ddpm_time):
    """Factory for the epsilon-prediction loss of DDPM/DiT on the OU process.

    u ~ U(u_min, 1), t = time_change(u) (default: the DDPM linear schedule, sde.ddpm_time),
    x_t = alpha_t x0 + sigma_t eps, loss = mean ||eps - eps_hat(x_t, u)||^2 over pixels. This is the
    sigma_t^2-weighted DSM loss with score = -eps_hat / sigma_t. apply_fn(params, x_t, u) -> eps_hat.
    """
    def loss(params, key, batch):
        ku, kx = jax.random.split(key)
        u = sde.sample_unit_time(ku, batch.shape[:1], "uniform", u_min=u_min)  # (b,)
        x_t, eps = sde.marginal_sample(kx, batch, time_change(u))
        err = apply_fn(params, x_t, u) - eps
        per = jnp.mean(err.reshape(err.shape[0], -1) ** 2, -1)                # (b,)
        return jnp.mean(per), {"per_example_loss": per, "time": u}
    return loss


# ---------------------------------------------------------------- Loss-Gap (Proposition 4.1)

def loss_gap_samples(key: Array, t: Array, data: Array, mix: scores.GaussianMixture,
                     num_queries: int, mask: Optional[Array] = None, chunk: int = 4096) -> dict:
    """Per-draw terms of the two Loss-Gap_t estimators of Proposition 4.1, on the SAME draws.

    Draw i uniformly from the (masked) training points, X = alpha_t x_i + sigma_t eps, so X ~ P_hat_t.
      (a) l_t(x_i, true) - l_t(x_i, empirical)   (difference of DSM losses on the same noise)
      (b) || score_hat(X) - score_true(X) ||^2   (Fisher divergence under P_hat_t)
    Both have expectation Loss-Gap_t = Fisher(P_hat_t, P_t). data (n, d), mask (n,) or None,
    t scalar. Returns {'a': (q,), 'b': (q,)}.
    """
    n = data.shape[0]
    mask = jnp.ones((n,), data.dtype) if mask is None else mask.astype(data.dtype)
    ki, kx = jax.random.split(key)
    # The r-th kept point (r uniform): for a prefix mask this is index r, as on the unpadded array.
    r = jax.random.randint(ki, (num_queries,), 0, jnp.sum(mask > 0).astype(jnp.int32))
    idx = jnp.searchsorted(jnp.cumsum(mask > 0), r, side="right")                # (q,)
    x0 = data[idx]                                                            # (q, d)
    tq = jnp.full((num_queries,), t, data.dtype)
    x_t, _ = sde.marginal_sample(kx, x0, tq)
    s_hat = scores.score_from_stats(scores.empirical_stats(x_t, tq, data, mask, chunk), x_t, tq)
    s_true = scores.mixture_score(x_t, tq, mix)
    target = sde.dsm_target(x_t, x0, tq)
    a = jnp.sum((target - s_true) ** 2, -1) - jnp.sum((target - s_hat) ** 2, -1)
    b = jnp.sum((s_hat - s_true) ** 2, -1)
    return {"a": a, "b": b}


def mean_and_stderr(x: Array, axis: int = -1) -> tuple[Array, Array]:
    """Sample mean and its standard error along `axis`."""
    m = x.shape[axis]
    return jnp.mean(x, axis), jnp.std(x, axis, ddof=1) / jnp.sqrt(m)
