"""Reverse-SDE and probability-flow samplers for the OU process (arXiv 2511.03202, Section 3).

Backward SDE  dY = [Y/2 + score(Y, T-s)] ds + dB_s  (Euler-Maruyama, 'sde'), probability-flow ODE
dY = [Y/2 + score(Y, T-s)/2] ds (Heun, 'ode'), integrated from T down to t0 on a decreasing time grid, and the
ancestral sampler ('ancestral', DDPM's): from y_t draw y_t' from the exact OU posterior q(y_t' | y_t, x0) at the
Tweedie estimate x0 = (y_t + sigma_t^2 score(y_t, t)) / alpha_t; for the empirical score it returns training points
with far fewer steps than Euler-Maruyama.

Per-sample seeds (EDM style): sample i uses key fold_in(base_key, i) for its initial draw and for the
noise of every step, so sample i is identical whatever the batch size or device count.

`generate` is the one sampling driver (every sampler of diffmem goes through it); `sample` runs a plain score
function through it.

Data parallel: `key_batches` shards each batch of per-sample keys over a 1-D device mesh (`device_mesh`, default all
local devices) and `replicate` puts the model's parameters on every device; the jit-compiled sampler is then
partitioned along the batch by XLA (no communication: samples are independent). With several processes
(jax.distributed), `split_over_processes` gives each process a contiguous share of the sample indices to draw on
its own devices and all-gathers the shares, so every process returns the same samples as one process would.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from diffmem import sde

Array = jax.Array
METHODS = ("sde", "ode", "ancestral")


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
        elif method == "ancestral":
            y = sde.posterior_step(y, sde.tweedie(score_fn, y, tb(t)), t, t_next) + \
                jnp.sqrt(sde.posterior_var(t, t_next)) * _noise(keys, k + 1, shape)
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


def generate(batch_fn: Callable[..., Any], key: Array, num_samples: int, batch_size: int, *, args: tuple = (),
             devices: Optional[Sequence[jax.Device]] = None, start_index: int = 0, progress: bool = False,
             desc: str = "sampling", postprocess: Optional[Callable[[Any], Any]] = None) -> Any:
    """THE sampling driver of diffmem: every sampler (image DiT, swap test, trajectories, mixture lab) runs here.

    batch_fn(keys (b,), *args) -> pytree of arrays with the batch on axis 0 (jit-compiled by the caller, once per
    model: the parameters, masks and grids travel in `args`). key may also be a stack (M,) of keys, one per model of
    a vmapped group: batch_fn then gets keys (b, M). Sample i uses the key fold_in(key, start_index + i),
    so it does not depend on the batch size, the device count or the process count. Batches of batch_size (rounded
    up to a multiple of the device count; the last one padded, so one compilation) run data parallel over
    `devices` (default: all local devices; `key_batches`) with `args` replicated; with several JAX processes and
    devices=None each process draws a contiguous share and all receive every sample (`split_over_processes`).
    postprocess(outputs of one batch, padding dropped) -> pytree with the batch on axis 0, applied on the host
    batch by batch (e.g. to reduce a whole trajectory to a few numbers before the next batch).
    Returns the host pytree of all num_samples rows.
    """
    mesh = device_mesh(devices)
    args = replicate(args, mesh)

    def local(num, start):
        outs = []
        for _, keep, keys in key_batches(key, num, batch_size, mesh, start, progress, desc):
            out = jax.tree.map(lambda a: np.asarray(a)[:keep], batch_fn(keys, *args))
            outs.append(out if postprocess is None else postprocess(out))
        return jax.tree.map(lambda *parts: np.concatenate(parts, 0), *outs)
    return local(num_samples, start_index) if devices is not None else \
        split_over_processes(local, num_samples, start_index)


def sample(score_fn: sde.ScoreFn, key: Array, num_samples: int, shape: tuple[int, ...], grid: Array,
           method: str = "sde", batch_size: int = 512, denoise: bool = True, progress: bool = False,
           start_index: int = 0, devices: Optional[Sequence[jax.Device]] = None) -> np.ndarray:
    """num_samples samples (num_samples, *shape) of a score function through `generate` (`sample_batch` on the
    decreasing time `grid`); sample i uses fold_in(key, start_index + i). The score function is closed over, so
    this compiles once per call: for a model sampled repeatedly, pass its parameters through `generate`'s args."""
    run = jax.jit(lambda keys, grid: sample_batch(score_fn, keys, shape, grid, method, denoise))
    return generate(run, key, num_samples, batch_size, args=(jnp.asarray(grid),), devices=devices,
                    start_index=start_index, progress=progress, desc=f"sampling ({method})")


def per_sample_keys(key: Array, num: int, start: int = 0) -> Array:
    """keys (num,) with key i = fold_in(key, start + i); for a stack of M keys (one per model of a vmapped group),
    (num, M) with entry (i, m) = fold_in(key[m], start + i)."""
    one = lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(start + jnp.arange(num))
    return one(key) if key.ndim == 0 else jax.vmap(one, out_axes=1)(key)


def device_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh with axis 'batch' over `devices` (default: this process's local devices) for data-parallel
    sampling."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must hold at least one device")
    return Mesh(np.asarray(devices), ("batch",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """The arrays of `tree` replicated on every device of `mesh` (parameters, masks, time grids). Arrays replicated
    over several processes (e.g. parameters trained with jax.distributed) are taken from this process's copy."""
    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.sharding.is_fully_replicated:
                raise ValueError(f"sampling needs every array replicated on each process; got one of shape "
                                 f"{x.shape} sharded as {x.sharding}")
            return x.addressable_data(0)
        return x
    return jax.device_put(jax.tree.map(local, tree), NamedSharding(mesh, P()))


def key_batches(key: Array, num_samples: int, batch_size: int, mesh: Mesh, start_index: int = 0,
                progress: bool = False, desc: str = "sampling") -> Iterator[tuple[int, int, Array]]:
    """Yields (lo, keep, keys) for the batches of samples lo .. lo + keep - 1: keys (b,) with key j =
    fold_in(key, start_index + lo + j), sharded over the mesh's 'batch' axis.

    b = min(batch_size, num_samples) rounded up to a multiple of the device count, the same for every batch (one
    compilation); the last batch's padding rows (j >= keep) are extra samples for the caller to drop.
    """
    for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    nd = mesh.devices.size
    b = -(-min(batch_size, num_samples) // nd) * nd
    sharding = NamedSharding(mesh, P("batch"))
    for lo in tqdm(range(0, num_samples, b), desc=desc, disable=not progress, leave=False):
        keys = jax.device_put(per_sample_keys(key, b, start_index + lo), sharding)
        yield lo, min(b, num_samples - lo), keys


def split_over_processes(sample_fn: Callable[[int, int], Any], num_samples: int, start_index: int = 0) -> Any:
    """All num_samples samples, drawn by every JAX process in contiguous shares and all-gathered.

    sample_fn(num, start) -> pytree of (num, ...) host arrays of samples start .. start + num - 1 (on this
    process's devices).
    With P processes each draws ceil(num_samples / P) (the last share may run past num_samples: dropped) and
    every process returns the same (num_samples, ...) array; with one process this is sample_fn(num_samples,
    start_index).
    """
    procs = jax.process_count()
    if procs == 1:
        return sample_fn(num_samples, start_index)
    from jax.experimental import multihost_utils  # only with several processes
    share = -(-num_samples // procs)
    mine = sample_fn(share, start_index + jax.process_index() * share)                # (share, ...)
    return jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True))[:num_samples],
                        mine)
