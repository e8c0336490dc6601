"""The Ornstein-Uhlenbeck (VP) forward process of arXiv 2511.03202 (Section 3), as pure functions.

Forward SDE  dX_t = -X_t/2 dt + dB_t, so  X_t | X_0 = x ~ N(alpha_t x, sigma_t^2 I) with
alpha_t = exp(-t/2) and sigma_t^2 = 1 - exp(-t).

Two clocks are used in diffmem:
  * diffusion time t in [t0, T] (t0 > 0 is the early-stopping time of the paper);
  * a DDPM-style unit time u in [0, 1] for the DiT. The DDPM linear beta schedule
    beta(s) = b0 + (b1 - b0) s (s in [0, 1], N steps) has alpha_bar(u) = exp(-N int_0^u beta),
    which is exactly this OU process at t(u) = N (b0 u + (b1 - b0) u^2 / 2) (see `ddpm_time`).
    With the DDPM defaults (N=1000, b0=1e-4, b1=0.02): t(1) = 10.05, alpha_T = 6.6e-3.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]  # (x: (..., d), t: (...)) -> (..., d)


def check_time(t, name: str = "t") -> None:
    """Raises ValueError if a concrete time is not > 0 (the OU marginal is degenerate at t = 0)."""
    if isinstance(t, jax.core.Tracer):
        return  # traced value: checked by the caller at the boundary
    t_min = float(jnp.min(jnp.asarray(t)))
    if not math.isfinite(t_min) or t_min <= 0.0:
        raise ValueError(f"{name} must be > 0 (diffusion time; the marginal at t=0 is a point mass), "
                         f"got min {t_min}")


def alpha(t: Array) -> Array:
    """alpha_t = exp(-t/2) (Section 3 of the paper)."""
    return jnp.exp(-0.5 * t)


def sigma2(t: Array) -> Array:
    """sigma_t^2 = 1 - exp(-t), computed as -expm1(-t) so it is accurate at t = 1e-6."""
    return -jnp.expm1(-t)


def sigma(t: Array) -> Array:
    """sigma_t = sqrt(1 - exp(-t))."""
    return jnp.sqrt(sigma2(t))


def marginal_sample(key: Array, x0: Array, t: Array) -> tuple[Array, Array]:
    """Draws X_t | X_0 = x0 ~ N(alpha_t x0, sigma_t^2 I).

    Args: x0 (b, ...) data; t (b,) or scalar. Returns (x_t, eps), both shaped like x0, with
    x_t = alpha_t x0 + sigma_t eps.
    """
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    t = _bcast(jnp.asarray(t, x0.dtype), x0)
    return alpha(t) * x0 + sigma(t) * eps, eps


def dsm_target(x_t: Array, x0: Array, t: Array) -> Array:
    """The conditional score -(x_t - alpha_t x0) / sigma_t^2 of eq. 3.1."""
    t = _bcast(t, x_t)
    return -(x_t - alpha(t) * x0) / sigma2(t)


def reverse_drift(score_fn: ScoreFn, y: Array, t: Array) -> Array:
    """Drift of the backward SDE in forward time t: dY = [Y/2 + score(Y, t)] ds, s = T - t."""
    return 0.5 * y + score_fn(y, t)


def flow_drift(score_fn: ScoreFn, y: Array, t: Array) -> Array:
    """Drift of the probability-flow ODE: dY = [Y/2 + score(Y, t)/2] ds, s = T - t."""
    return 0.5 * y + 0.5 * score_fn(y, t)


def tweedie(score_fn: ScoreFn, y: Array, t: Array) -> Array:
    """E[X_0 | X_t = y] = (y + sigma_t^2 score(y, t)) / alpha_t (Tweedie's formula); y (b, ...), t (b,)."""
    tb = _bcast(t, y)
    return (y + sigma2(tb) * score_fn(y, t)) / alpha(tb)


def posterior_step(y: Array, x0: Array, t: Array, s: Array) -> Array:
    """Mean of q(X_s | X_t = y, X_0 = x0) for s < t on the OU process: with a = alpha_t / alpha_s and
    v = 1 - a^2 (the s -> t transition), (alpha_s v / sigma_t^2) x0 + (a sigma_s^2 / sigma_t^2) y."""
    a = jnp.exp(-(t - s) / 2)
    v = -jnp.expm1(-(t - s))
    return (alpha(s) * v / sigma2(t)) * x0 + (a * sigma2(s) / sigma2(t)) * y


def posterior_var(t: Array, s: Array) -> Array:
    """Variance of q(X_s | X_t, X_0) for s < t: v sigma_s^2 / sigma_t^2 (v as in `posterior_step`)."""
    return -jnp.expm1(-(t - s)) * sigma2(s) / sigma2(t)


# ---------------------------------------------------------------- time grids and time samplers

def log_time_grid(t0: float, t1: float, num: int) -> Array:
    """`num` times log-spaced on [t0, t1] (t0 > 0), increasing."""
    if not t0 > 0:
        raise ValueError(f"t0 must be > 0, got {t0}")
    if not t1 > t0:
        raise ValueError(f"T must be > t0, got t0={t0}, T={t1}")
    if num < 1:
        raise ValueError(f"num (grid size) must be >= 1, got {num}")
    return jnp.geomspace(t0, t1, num)


def ddpm_time(u: Array, b0: float = 1e-4, b1: float = 0.02, n_steps: int = 1000) -> Array:
    """DDPM linear-beta time change t(u) = N (b0 u + (b1 - b0) u^2 / 2), u in [0, 1].

    Under it, alpha(t(u))^2 equals the DDPM alpha_bar of the continuous linear schedule.
    """
    return n_steps * (b0 * u + 0.5 * (b1 - b0) * u * u)


def ddpm_time_inverse(t: Array, b0: float = 1e-4, b1: float = 0.02, n_steps: int = 1000) -> Array:
    """Inverse of `ddpm_time`: the u in [0, 1] with t(u) = t."""
    a = 0.5 * (b1 - b0)
    c = t / n_steps
    if a == 0:
        return c / b0
    return (-b0 + jnp.sqrt(b0 * b0 + 4.0 * a * c)) / (2.0 * a)


def sample_unit_time(key: Array, shape: tuple[int, ...], dist: str = "uniform",
                     a: float = 0.8, b: float = 2.0, u_min: float = 0.0) -> Array:
    """Unit times u in [u_min, 1].

    dist: 'uniform' (training), 'beta' (Beta(a, b); Beta(0.8, 2) puts mass near small t as in
    Algorithm 2 of the paper; Beta(2, 0.8) is its large-t mirror).
    """
    if dist == "uniform":
        u = jax.random.uniform(key, shape)
    elif dist == "beta":
        if not (a > 0 and b > 0):
            raise ValueError(f"Beta time sampler needs a > 0 and b > 0, got a={a}, b={b}")
        u = jax.random.beta(key, a, b, shape)
    else:
        raise ValueError(f"time dist must be one of 'uniform', 'beta', got {dist!r}")
    return u_min + (1.0 - u_min) * u


def sample_time(key: Array, shape: tuple[int, ...], t0: float, t1: float,
                dist: str = "uniform") -> Array:
    """Diffusion times on [t0, T]: 'uniform' (eq. 3.1) or 'log_uniform' (importance sampling)."""
    if dist == "uniform":
        return jax.random.uniform(key, shape, minval=t0, maxval=t1)
    if dist == "log_uniform":
        return jnp.exp(jax.random.uniform(key, shape, minval=math.log(t0), maxval=math.log(t1)))
    raise ValueError(f"time dist must be one of 'uniform', 'log_uniform', got {dist!r}")


def _bcast(t: Array, x: Array) -> Array:
    """Reshapes t of shape (b,) or () to broadcast against x of shape (b, ...)."""
    t = jnp.asarray(t)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))
