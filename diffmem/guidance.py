"""Classifier-free guidance for class-conditional DiTs, as facebookresearch/DiT does it, through diffmem's sampler.

The DiT of the paper's image experiments (arXiv 2511.03202, Section 6.2) is Peebles & Xie's; its class-conditional
checkpoints are sampled with guidance (their paper: scale 1.5 for FID, 4.0 for the figures). The reference
`forward_with_cfg` runs the model on [x, x] with labels [y, null], and with eps_c, eps_u the two halves' outputs

    out = eps_u + s (eps_c - eps_u)   on the first 3 output channels only ("for exact reproducibility"),
    out = eps_c                       on every other channel (the conditional half),

so on their 4-channel latents the 4th eps channel is not guided, and on a 1- or 2-channel model with learn_sigma
the first variance channels are. `guided_output` reproduces that exactly (guided_channels=3, the default);
guided_channels=None guides all eps channels (the standard form). The sampler uses the eps channels only
(learn_sigma's variance channels are ignored: diffmem's samplers are the reverse SDE / ODE / ancestral step of the
OU process, not DDPM's learned-variance posterior).

Time input. diffmem's own DiTs see 1000 u with u = sde.ddpm_time_inverse(t) ('continuous'). A model trained with
DDPM's 1000 discrete steps (every facebookresearch/DiT checkpoint) saw step k at noise level alpha_bar_k =
prod_{i<=k} (1 - beta_i); 'discrete' feeds it the fractional step k(t) with -log alpha_bar_k = t, linearly
interpolated, so the OU noise level sigma_t^2 = 1 - exp(-t) is the one it was trained on (the continuous map is off
by about one step: sigma 29% low at step 1, log-SNR 0.09 off at step 999).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import image_diffusion as idf
from diffmem import rng, sampling, sde
from diffmem.config import SamplerConfig
from diffmem.models import dit as dit_lib

Array = jax.Array
REFERENCE_GUIDED_CHANNELS = 3      # facebookresearch/DiT forward_with_cfg: model_out[:, :3]
TIME_INPUTS = ("continuous", "discrete")
DDPM_BETAS = np.linspace(1e-4, 0.02, 1000)                     # DiT's diffusion: linear betas, 1000 steps
DDPM_STEP_TIMES = np.cumsum(-np.log1p(-DDPM_BETAS))            # (1000,) OU time t_k = -log alpha_bar_k of step k


def discrete_step_u(t: Array) -> Array:
    """u = k(t) / 1000 with k(t) the fractional DDPM step at OU time t (t_k = -log alpha_bar_k, interpolated
    linearly, clamped to [0, 999])."""
    k = jnp.interp(t, jnp.asarray(DDPM_STEP_TIMES, jnp.float32), jnp.arange(1000, dtype=jnp.float32))
    return k / dit_lib.TIME_SCALE


def discrete_time(u: Array) -> Array:
    """The inverse of `discrete_step_u`: the OU time t_k of the (fractional) DDPM step k = 1000 u, interpolated
    linearly; a `time_change` for training or scoring a DDPM-trained model on its own noise levels (e.g.
    diffmem.pruning.head_importance(..., time_change=discrete_time))."""
    return jnp.interp(jnp.asarray(u, jnp.float32) * dit_lib.TIME_SCALE, jnp.arange(1000, dtype=jnp.float32),
                      jnp.asarray(DDPM_STEP_TIMES, jnp.float32))


def _check(model: dit_lib.DiT, scale, guided_channels, time_input) -> None:
    if model.num_classes <= 0:
        raise ValueError("guidance needs a class-conditional DiT (num_classes > 0); sample an unconditional one "
                         "with diffmem.image_diffusion.sample")
    if not isinstance(scale, jax.Array) and (isinstance(scale, bool) or not np.isfinite(scale)):
        raise ValueError(f"scale must be a finite number (1 = no guidance; DiT uses 1.5 and 4.0), got {scale!r}")
    if guided_channels is not None and (isinstance(guided_channels, bool) or not isinstance(guided_channels, int)
                                        or guided_channels < 1):
        raise ValueError(f"guided_channels must be an int >= 1 or None (all eps channels), got {guided_channels!r}")
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")


def guided_output(model: dit_lib.DiT, params, x: Array, u: Array, y: Array, scale,
                  guided_channels: Optional[int] = REFERENCE_GUIDED_CHANNELS,
                  head_mask: Optional[Array] = None) -> Array:
    """The reference forward_with_cfg's output for the conditional half: x (b, H, W, C), u (b,) or (), y (b,) labels
    -> (b, H, W, out_channels): eps_u + scale (eps_c - eps_u) on the first min(guided_channels, out_channels)
    channels (None: the C eps channels), eps_c elsewhere. One model call on the batch [x, x] with labels
    [y, null]."""
    _check(model, scale, guided_channels, "continuous")
    b = x.shape[0]
    u = jnp.broadcast_to(jnp.asarray(u, jnp.float32), (b,))
    y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (b,))
    null = jnp.full((b,), model.num_classes, jnp.int32)
    out = model.apply(dit_lib.variables(params), jnp.concatenate([x, x]), jnp.concatenate([u, u]),
                      jnp.concatenate([y, null]), head_mask=head_mask)           # (2b, H, W, oc)
    cond, uncond = out[:b], out[b:]
    g = model.channels if guided_channels is None else min(guided_channels, out.shape[-1])
    guided = uncond[..., :g] + scale * (cond[..., :g] - uncond[..., :g])
    return jnp.concatenate([guided, cond[..., g:]], axis=-1)


def guided_score_fn(model: dit_lib.DiT, params, y: Array, scale, *,
                    guided_channels: Optional[int] = REFERENCE_GUIDED_CHANNELS, head_mask: Optional[Array] = None,
                    time_input: str = "continuous") -> sde.ScoreFn:
    """score(x (b, H, W, C), t (b,)) = -eps_guided(x, u(t)) / sigma_t of labels y (b,) (or one label) at guidance
    `scale`; u(t) by `time_input` (module doc)."""
    _check(model, scale, guided_channels, time_input)

    def score(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])              # (b,)
        u = sde.ddpm_time_inverse(t) if time_input == "continuous" else discrete_step_u(t)
        eps = guided_output(model, params, x, u, y, scale, guided_channels, head_mask)[..., :model.channels]
        return -eps / sde.sigma(t).reshape((-1,) + (1,) * (x.ndim - 1))
    return score


@functools.lru_cache(maxsize=16)
def _batch_sampler(model: dit_lib.DiT, shape: tuple[int, ...], method: str, denoise: bool,
                   guided_channels: Optional[int], time_input: str):
    """jit(keys (b,), params, label (), scale (), head_mask, grid) -> samples (b, *shape); one compile per model:
    the label and the scale are arguments."""
    @jax.jit
    def run(keys, params, label, scale, head_mask, grid):
        y = jnp.full(keys.shape[:1], label, jnp.int32)
        score = guided_score_fn(model, params, y, scale, guided_channels=guided_channels, head_mask=head_mask,
                                time_input=time_input)
        return sampling.sample_batch(score, keys, shape, grid, method, denoise)
    return run


def sample(model: dit_lib.DiT, params, key: Array, labels: Union[int, Sequence[int], np.ndarray],
           cfg: SamplerConfig, u_min: float, *, scale: float,
           guided_channels: Optional[int] = REFERENCE_GUIDED_CHANNELS, time_input: str = "continuous",
           head_mask: Optional[Array] = None, progress: bool = False,
           devices: Optional[Sequence[jax.Device]] = None) -> np.ndarray:
    """cfg.num_samples guided samples (m, H, W, C) through the sampling driver (`sampling.generate`).

    labels: one class for every sample, or (num_samples,) classes in [0, num_classes] (num_classes, the null label,
    gives unguided unconditional samples). Keys: the samples of class c form their own stream rng.stream(key, c);
    the j-th of them (in the order of `labels`) uses fold_in(rng.stream(key, c), j), so a sample depends on its
    class and rank, not on the batch size, the devices or the other classes. Grid: cfg.steps intervals uniform in u
    from t(1) to t(u_min), cfg.method, Tweedie denoising if cfg.denoise. One generate call per class present
    (every call reuses the one compiled sampler). head_mask (depth, max_heads) gates heads (None: all)."""
    _check(model, scale, guided_channels, time_input)
    m = cfg.num_samples
    labels = np.full(m, labels, np.int64) if np.ndim(labels) == 0 else np.asarray(labels)
    if labels.shape != (m,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be one int or an int array of shape (cfg.num_samples,) = ({m},), got "
                         f"{labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() > model.num_classes:
        raise ValueError(f"labels must be in [0, {model.num_classes}] ({model.num_classes} = null), got "
                         f"[{labels.min()}, {labels.max()}]")
    if head_mask is None:
        head_mask = np.ones((model.depth, model.max_heads), np.float32)
    head_mask = jnp.asarray(idf.check_head_mask(model, head_mask))
    shape = (model.image_size, model.image_size, model.channels)
    run = _batch_sampler(model, shape, cfg.method, bool(cfg.denoise), guided_channels, time_input)
    grid = idf.sampling_grid(u_min, cfg.steps)
    out = np.zeros((m,) + shape, np.float32)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        out[where] = sampling.generate(
            run, rng.stream(key, int(c)), len(where), cfg.batch_size,
            args=(params, jnp.int32(c), jnp.float32(scale), head_mask, grid), devices=devices, progress=progress,
            desc=f"sampling class {c} (cfg {scale:g}, {cfg.method}, {cfg.steps} steps)")
    return out
