"""Denoising score matching (arXiv 2511.03202, eq. 3.1), its variants, and the Loss-Gap / Fisher estimators
(Proposition 4.1).

Loss factories return pure functions `loss(params, key, batch) -> (scalar, aux)` (score_sde style), with
aux['per_example_loss'] (b,) and aux['time'] (b,) in [0, 1] for loss-by-time-bin metrics:
  * `make_dsm_loss`         eq. 3.1 (integral over [t0, T], unbiased Monte-Carlo);
  * `make_lab_loss`         the mixture lab's training loss (t uniform or log-uniform, 'none' / 'sigma2' weighting);
  * `make_eps_loss`         the DDPM/DiT epsilon loss on the OU process (sigma_t^2-weighted DSM);
  * `make_regression_loss`  direct regression onto a closed-form score (Theorem 5.1's approximation problem).
Every positive weighting and time law changes the integrand's measure, not the minimiser: all are minimised by the
empirical score (Section 3 of the paper), the memorizing solution.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

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


LAB_TIME_DISTS = ("uniform", "log_uniform")


def make_lab_loss(apply_fn: Callable[[dict, Array, Array], Array], t0: float, t1: float,
                  weighting: str = "sigma2", time_dist: str = "log_uniform"):
    """loss(params, key, batch (b, d)) -> (mean per-example DSM loss, aux) of the mixture lab.

    t ~ U[t0, T] or log-uniform on [t0, T] (puts the small times where memorization is decided on an equal
    footing), x_t = alpha_t x0 + sigma_t eps, per-example loss of eq. 3.1 with weighting 'none' or 'sigma2' (with
    an 'eps' network output it is ||eps_hat - eps||^2). aux: per_example_loss (b,), time (b,) = the position of t
    in [t0, T] on the sampling scale (linear for 'uniform', log for 'log_uniform'), for the loss-by-time bins.
    """
    if not (t0 > 0 and t1 > t0):
        raise ValueError(f"need 0 < t0 < T, got t0={t0}, T={t1}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if time_dist not in LAB_TIME_DISTS:
        raise ValueError(f"time_dist must be one of {LAB_TIME_DISTS}, got {time_dist!r}")

    def loss(params, key, batch):
        kt, kx = jax.random.split(key)
        t = sde.sample_time(kt, batch.shape[:1], t0, t1, time_dist)                  # (b,)
        x_t, _ = sde.marginal_sample(kx, batch, t)                                    # (b, d)
        per = dsm_per_example(lambda x, s: apply_fn(params, x, s), batch, x_t, t, weighting)
        if time_dist == "uniform":
            pos = (t - t0) / (t1 - t0)
        else:
            pos = jnp.log(t / t0) / math.log(t1 / t0)
        return jnp.mean(per), {"per_example_loss": per, "time": pos}

    return loss


def regression_errors(apply_fn, params, key, x0, t, member, mix: scores.GaussianMixture):
    """Per-draw w_t ||s_theta - s*||^2 and w_t ||s*||^2 at x = alpha_t x0 + sigma_t z ~ P_hat_t (Theorem 5.1).

    x0 (b, d), t (b,); member {"data" (n_max, d), "count" (), "extra" () > 0 for the empirical target}: the target
    s* is the empirical score of the member's first `count` points with weight w_t = sigma_t^4, or the true mixture
    score with w_t = sigma_t^2. Returns (b,), (b,).
    """
    x, _ = sde.marginal_sample(key, x0, t)                                         # (b, d) ~ P_hat_t
    data, count = member["data"], member["count"]
    mask = (jnp.arange(data.shape[0]) < count).astype(x.dtype)                      # (n_max,)
    s_emp = scores.score_from_stats(scores.empirical_stats(x, t, data, mask), x, t)
    s_true = scores.mixture_score(x, t, mix)
    is_emp = member["extra"] > 0
    target = jnp.where(is_emp, s_emp, s_true)                                      # (b, d)
    s2 = sde.sigma2(t)
    w = jnp.where(is_emp, s2 * s2, s2)                                             # (b,)
    err = w * jnp.sum((apply_fn(params, x, t) - target) ** 2, -1)
    return err, w * jnp.sum(target ** 2, -1)


def make_regression_loss(apply_fn, mix: scores.GaussianMixture, t0: float, t1: float,
                         time_dist: str = "log_uniform"):
    """loss(params, key, batch (b, d), member) for training.train_sweep(extra=is_empirical (M,)): x0 = batch
    (uniform over the member's n points), t on [t0, T] (`time_dist`), the weighted error of `regression_errors`.
    Returns (mean weighted squared error, {})."""
    def loss(params, key, batch, member):
        kt, kx = jax.random.split(key)
        t = sde.sample_time(kt, batch.shape[:1], t0, t1, time_dist)                  # (b,)
        err, _ = regression_errors(apply_fn, params, kx, batch, t, member, mix)
        return jnp.mean(err), {}
    return loss


def empirical_eps_loss(images, u_min: float, key: Array, num_queries: int = 2048,
                       edges=(0.0, 0.25, 0.5, 0.75, 1.0), chunk: int = 4096) -> dict:
    """Monte-Carlo eps loss of the EMPIRICAL score (the global minimiser of the loss on the training set, whose
    sampler only returns training points; Section 3 of the paper): the floor a memorizing network approaches.

    Same draws as `make_eps_loss` training (x0 uniform on the images, u ~ U(u_min, 1), t = ddpm_time(u)) and
    eps_hat = -sigma_t score_hat(x_t, t) (scores.empirical_stats, chunked). Returns loss, its standard error, and
    loss_bin{i} means over the u bins `edges` (those of the training loop's loss_bin metrics).
    """
    x = np.asarray(images, np.float32).reshape(len(images), -1)               # (n, D)
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or inf values")
    if not 0.0 < float(u_min) < 1.0:
        raise ValueError(f"u_min must be in (0, 1), got {u_min!r}")
    per, u = _empirical_eps_draws(jnp.asarray(x), key, float(u_min), int(num_queries), int(chunk))
    per, u = np.asarray(per, np.float64), np.asarray(u)                       # (q,), (q,)
    out = dict(loss=float(per.mean()), loss_stderr=float(per.std(ddof=1) / math.sqrt(len(per))),
               num_queries=int(num_queries))
    idx = np.searchsorted(np.asarray(edges[1:-1]), u, side="right")
    for b in range(len(edges) - 1):
        if np.any(idx == b):
            out[f"loss_bin{b}"] = float(per[idx == b].mean())
    return out


@functools.partial(jax.jit, static_argnames=("u_min", "num_queries", "chunk"))
def _empirical_eps_draws(x: Array, key: Array, u_min: float, num_queries: int, chunk: int) -> tuple[Array, Array]:
    """Per-draw eps loss of the empirical score and the draws' u: x (n, D) -> ((q,), (q,))."""
    ki, ku, kx = jax.random.split(key, 3)
    i = jax.random.randint(ki, (num_queries,), 0, x.shape[0])
    u = sde.sample_unit_time(ku, (num_queries,), "uniform", u_min=u_min)
    t = sde.ddpm_time(u)
    x_t, eps = sde.marginal_sample(kx, x[i], t)
    st = scores.empirical_stats(x_t, t, x, None, chunk)
    eps_hat = -sde.sigma(t)[:, None] * scores.score_from_stats(st, x_t, t)
    return jnp.mean((eps_hat - eps) ** 2, -1), u


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
