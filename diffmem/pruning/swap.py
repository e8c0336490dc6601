"""The swap test's sampler (where is memorization decided? arXiv 2511.03202, Section 6.2 and the reviewers'
question): sample with one gated DiT at diffusion times t > tau and another at t <= tau, on the same per-sample keys
as `image_diffusion.sample`, so that tau above T gives the second model alone and tau below t0 the first alone."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import image_diffusion as idf
from diffmem import sampling, sde
from diffmem.config import SamplerConfig
from diffmem.models.dit import DiT
from diffmem.pruning.surgery import check_mask


@functools.lru_cache(maxsize=8)
def swap_batch_fn(model: DiT, shape: tuple[int, ...], method: str, denoise: bool):
    """jit(keys, params_hi, mask_hi, params_lo, mask_lo, tau_t, grid) -> samples (b, *shape): model hi for
    t > tau_t, lo else (one compile per model: parameters, masks and tau are arguments)."""
    @jax.jit
    def run(keys, params_hi, mask_hi, params_lo, mask_lo, tau_t, grid):
        def score(x, t):  # t (b,): one grid time for the whole batch
            hi = t[0] > tau_t
            p = jax.tree.map(lambda a, b: jnp.where(hi, a, b), params_hi, params_lo)
            m = jnp.where(hi, mask_hi, mask_lo)
            return idf.make_score_fn(model, p, m)(x, t)
        return sampling.sample_batch(score, keys, shape, grid, method, denoise)
    return run


def swap_sample(model: DiT, params_hi, mask_hi, params_lo, mask_lo, tau_u: float, key: jax.Array,
                cfg: SamplerConfig, u_min: float) -> np.ndarray:
    """Samples (m, H, W, C) with model (params_hi, mask_hi) at diffusion times t > t(tau_u) and (params_lo, mask_lo)
    at t <= t(tau_u) (the final Tweedie step at t0 included). tau_u in unit time; tau_u > 1 gives lo alone, tau_u <
    u_min hi alone. Sample i uses fold_in(key, i), as image_diffusion.sample, so the endpoints equal it."""
    mask_hi = check_mask(mask_hi, model)
    mask_lo = check_mask(mask_lo, model)
    if isinstance(tau_u, bool) or not isinstance(tau_u, (int, float, np.floating)) or not math.isfinite(tau_u):
        raise ValueError(f"tau_u must be a finite number (unit time), got {tau_u!r}")
    tau_t = float(sde.ddpm_time(jnp.float32(tau_u))) if tau_u >= 0 else -1.0
    grid = idf.sampling_grid(u_min, cfg.steps)
    shape = (model.image_size, model.image_size, model.channels)
    run = swap_batch_fn(model, shape, cfg.method, bool(cfg.denoise))
    return sampling.generate(run, key, cfg.num_samples, cfg.batch_size,
                             args=(params_hi, jnp.asarray(mask_hi), params_lo, jnp.asarray(mask_lo),
                                   jnp.float32(tau_t), grid))
