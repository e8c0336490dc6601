"""Reverse-SDE and probability-flow samplers for the OU process (PAPER.md section 1).

Backward SDE  dY = [Y/2 + score(Y, T-s)] ds + dB_s  (Euler-Maruyama), and probability-flow ODE
dY = [Y/2 + score(Y, T-s)/2] ds (Heun), integrated from T down to t0 on a decreasing time grid.

Per-sample seeds (EDM style): sample i uses key fold_in(base_key, i) for its initial draw and for the
noise of every step, so sample i is identical whatever the batch size or device count.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffmem import sde

Array = jax.Array
METHODS = ("sde", "ode")


def time_grid(t0: float, t1: float, steps: int, spacing: str = "log") -> Array:
    """Decreasing grid of steps+1 times from T to t0. spacing: 'log', 'linear', or 'ddpm'
    (uniform in the DDPM unit time u; t0, t1 are then diffusion times mapped through sde.ddpm_time)."""
    if not t0 > 0 or not t1 > t0:
        raise ValueError(f"sampler needs 0 < t0 < T, got t0={t0}, T={t1}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if spacing == "log":
        g = jnp.geomspace(t1, t0, steps + 1)
    elif spacing == "linear":
        g = jnp.linspace(t1, t0, steps + 1)
    elif spacing == "ddpm":
        u = jnp.linspace(sde.ddpm_time_inverse(t1), sde.ddpm_time_inverse(t0), steps + 1)
        g = sde.ddpm_time(u)
    else:
        raise ValueError(f"spacing must be 'log', 'linear' or 'ddpm', got {spacing!r}")
    return g


def _noise(keys: Array, step: int, shape: tuple[int, ...]) -> Array:
    """Per-sample standard normal noise for one step: keys (b,) -> (b, *shape)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(keys)


def sample_batch(score_fn: sde.ScoreFn, keys: Array, shape: tuple[int, ...], grid: Array,
                 method: str = "sde", denoise: bool = True, return_path: bool = False):
    """Integrates one batch of samples. keys (b,) per-sample keys; shape: one sample's shape.

    Starts at Y_T ~ N(0, I) (the OU stationary law), steps down `grid` (decreasing). With
    denoise=True the last state at t0 is mapped to its Tweedie mean (y + sigma^2 s(y, t0)) / alpha.
    score_fn(x (b, *shape), t (b,)) -> (b, *shape). Returns (b, *shape) (and (steps+1, b, *shape)
    path if return_path).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b = keys.shape[0]
    y = _noise(keys, 0, shape)
    tb = lambda t: jnp.full((b,), t, y.dtype)

    def body(k, y):
        t, t_next = grid[k], grid[k + 1]
        h = t - t_next
        if method == "sde":
            y = y + h * sde.reverse_drift(score_fn, y, tb(t)) + jnp.sqrt(h) * _noise(keys, k + 1, shape)
        else:
            d1 = sde.flow_drift(score_fn, y, tb(t))
            y_e = y + h * d1
            y = y + 0.5 * h * (d1 + sde.flow_drift(score_fn, y_e, tb(t_next)))
        return y

    n_steps = grid.shape[0] - 1
    if return_path:
        def scan_body(y, k):
            y = body(k, y)
            return y, y
        y_last, path = jax.lax.scan(scan_body, y, jnp.arange(n_steps))
        path = jnp.concatenate([y[None], path], 0)
    else:
        y_last = jax.lax.fori_loop(0, n_steps, body, y)
    if denoise:
        t0 = tb(grid[-1])
        t0b = t0.reshape((b,) + (1,) * len(shape))
        y_last = (y_last + sde.sigma2(t0b) * score_fn(y_last, t0)) / sde.alpha(t0b)
    return (y_last, path) if return_path else y_last


def generate(score_fn: sde.ScoreFn, key: Array, num_samples: int, shape: tuple[int, ...],
             grid: Array, method: str = "sde", batch_size: int = 512, denoise: bool = True,
             progress: bool = False, start_index: int = 0) -> np.ndarray:
    """num_samples samples in batches; sample i uses fold_in(key, start_index + i).

    Returns a host array (num_samples, *shape). The batch function is jit-compiled once (the last
    batch is padded to the same size).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = min(batch_size, num_samples)
    run = jax.jit(lambda keys: sample_batch(score_fn, keys, shape, grid, method, denoise))
    out = []
    starts = range(0, num_samples, batch_size)
    for lo in tqdm(starts, desc=f"sampling ({method})", disable=not progress, leave=False):
        keys = per_sample_keys(key, batch_size, start_index + lo)
        out.append(np.asarray(run(keys))[: num_samples - lo])
    return np.concatenate(out, 0)


def per_sample_keys(key: Array, num: int, start: int = 0) -> Array:
    """keys (num,) with key i = fold_in(key, start + i)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(num))

