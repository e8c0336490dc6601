"""Glue between an epsilon-prediction DiT and the OU process of arXiv 2511.03202 (Section 3), via the DDPM time change.

The DiT predicts eps_hat(x, u) at the DDPM unit time u in [0, 1]; the diffusion time is t = sde.ddpm_time(u)
(the DDPM linear beta schedule, N = 1000, b0 = 1e-4, b1 = 0.02, is this OU process in the continuous limit;
t(1) = 10.05). Since x_t = alpha_t x0 + sigma_t eps, E[eps | x_t] = -sigma_t score(x_t, t), so

    score(x, t) = -eps_hat(x, u(t)) / sigma_t,      u(t) = sde.ddpm_time_inverse(t).

Training (`make_loss`, `train_model`): losses.make_eps_loss, u ~ U(u_min, 1), i.e. the sigma_t^2-weighted DSM loss
of eq. 3.1, through diffmem.training. `make_masked_loss` / `train_masked` carry a head mask in the batch so that
every mask (and the unmasked base) shares ONE compiled train step (the pruning experiment).
Sampling (`sample`): from Y_T ~ N(0, I) at T = t(1) down to the early-stopping time t0 = t(u_min) on a grid
uniform in u, reverse SDE (Euler-Maruyama) or probability-flow ODE (Heun), then a Tweedie denoising step at t0,
through the one sampling driver `diffmem.sampling.generate` (per-sample keys, devices, processes). The batch
function is jit-compiled once per (model, image shape, sampler settings) with the parameters, the head mask and the
keys as ARGUMENTS: sampling another parameter set or head mask of the same model reuses the compiled program.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import data as data_lib
from diffmem import losses, rng, runtime, sampling, sde, training
from diffmem.config import DiTConfig, SamplerConfig, TrainConfig
from diffmem.models import dit as dit_lib
from diffmem.models.dit import variables

Array = jax.Array
PyTree = Any
MODEL_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---------------------------------------------------------------- times

def check_u_min(u_min) -> float:
    """u_min (early stopping in unit time) must be a number in (0, 1): t0 = ddpm_time(u_min) > 0."""
    if isinstance(u_min, bool) or not isinstance(u_min, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(u_min) < 1.0:
        raise ValueError(f"u_min must be a number in (0, 1) (t0 = sde.ddpm_time(u_min) > 0), got {u_min!r}")
    return float(u_min)


def time_range(u_min: float) -> tuple[float, float]:
    """(t0, T) = (ddpm_time(u_min), ddpm_time(1)) in diffusion time."""
    u_min = check_u_min(u_min)
    return float(sde.ddpm_time(u_min)), float(sde.ddpm_time(1.0))


def sampling_grid(u_min: float, steps: int) -> Array:
    """Decreasing (steps + 1,) diffusion times from T = t(1) to t0 = t(u_min), uniform in the unit time u."""
    t0, t1 = time_range(u_min)
    return sampling.time_grid(t0, t1, steps, spacing="ddpm")


# ---------------------------------------------------------------- model <-> score

def eps_apply_fn(model: dit_lib.DiT) -> Callable[..., Array]:
    """apply(params, x (b, H, W, C), u (b,), head_mask=None) -> eps_hat (b, H, W, C).

    Unconditional use (null label if the model is class-conditional); with learn_sigma only the eps channels.
    """
    def apply(params, x, u, head_mask=None):
        out = model.apply(variables(params), x, u, None, head_mask=head_mask)
        return out[..., :model.channels]
    return apply


def score_from_eps(eps_fn: Callable[[Array, Array], Array]) -> sde.ScoreFn:
    """score(x, t) = -eps_fn(x, u(t)) / sigma_t with u(t) = ddpm_time_inverse(t); x (b, ...), t (b,)."""
    def score(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])    # (b,)
        sig = sde.sigma(t).reshape((-1,) + (1,) * (x.ndim - 1))      # (b, 1, ..., 1)
        return -eps_fn(x, sde.ddpm_time_inverse(t)) / sig
    return score


def make_score_fn(model: dit_lib.DiT, params: PyTree, head_mask: Optional[Array] = None) -> sde.ScoreFn:
    """The score of a trained eps-DiT (optionally with a head mask (depth, max_heads))."""
    apply = eps_apply_fn(model)
    return score_from_eps(lambda x, u: apply(params, x, u, head_mask))


def make_loss(model: dit_lib.DiT, u_min: float, head_mask: Optional[Array] = None):
    """Epsilon loss(params, key, batch) of the DiT (losses.make_eps_loss), u ~ U(u_min, 1), optional head mask.

    Without a head mask the function is cached per (model, u_min), so diffmem.training reuses its compiled step.
    """
    u_min = check_u_min(u_min)
    if head_mask is None:
        return _cached_loss(model, u_min)
    apply = eps_apply_fn(model)
    hm = jnp.asarray(head_mask)
    return losses.make_eps_loss(lambda p, x, u: apply(p, x, u, hm), u_min=u_min)


@functools.lru_cache(maxsize=32)
def _cached_loss(model: dit_lib.DiT, u_min: float):
    apply = eps_apply_fn(model)
    return losses.make_eps_loss(lambda p, x, u: apply(p, x, u, None), u_min=u_min)


@functools.lru_cache(maxsize=16)
def make_masked_loss(model: dit_lib.DiT, u_min: float):
    """Eps loss(params, key, batch) of the DiT gated by batch['mask'][0] (depth, max_heads) on batch['x'].

    The same numbers as make_loss(model, u_min, mask); the mask travels in the batch (one copy per example, so the
    batch sampler gathers it like the images) so that every run of one model (any mask) shares ONE compiled
    train step."""
    apply = eps_apply_fn(model)
    u_min = check_u_min(u_min)

    def loss(params, key, batch):
        mask = batch["mask"][0]
        return losses.make_eps_loss(lambda p, x, u: apply(p, x, u, mask), u_min=u_min)(params, key, batch["x"])
    return loss


@functools.lru_cache(maxsize=16)
def make_member_loss(model: dit_lib.DiT, u_min: float):
    """Eps loss(params, key, batch, member) of the DiT gated by member["extra"] (depth, max_heads): the loss of one
    member of a vmapped group (training.train_members), where every member may carry its own head mask."""
    apply = eps_apply_fn(model)
    u_min = check_u_min(u_min)

    def loss(params, key, batch, member):
        mask = member["extra"]
        return losses.make_eps_loss(lambda p, x, u: apply(p, x, u, mask), u_min=u_min)(params, key, batch)
    return loss


def build_model(image_shape: tuple[int, int, int], *, patch: int, hidden: int, depth: int, heads: int,
                mlp_ratio: float = 4.0, dtype: str = "float32") -> dit_lib.DiT:
    """An unconditional eps-prediction DiT for square images (H, W, C); validates the fields."""
    if isinstance(image_shape, DiTConfig):
        raise TypeError("build_model takes the image shape first; use model_from_config for a DiTConfig")
    h, w, c = image_shape
    if h != w:
        raise ValueError(f"the DiT needs square images, got image shape {image_shape}")
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(MODEL_DTYPES)}, got {dtype!r}")
    model = dit_lib.DiT(image_size=int(h), channels=int(c), patch=int(patch), hidden=int(hidden),
                        depth=int(depth), heads=int(heads), mlp_ratio=float(mlp_ratio),
                        dtype=MODEL_DTYPES[dtype])
    model.check_fields()
    return model


def model_from_config(image_shape: tuple[int, int, int], cfg: DiTConfig) -> dit_lib.DiT:
    """The DiT of config.model for images of `image_shape`; errors name config.model."""
    try:
        return build_model(image_shape, **cfg.sizes())
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None


def num_params(model: dit_lib.DiT) -> int:
    return dit_lib.count_params(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))


def init_params(model: dit_lib.DiT, key: Array) -> PyTree:
    """The 'params' collection of a fresh model (adaLN-Zero: the zero function)."""
    return _init_fn(model)(key)


@functools.lru_cache(maxsize=16)
def _init_fn(model: dit_lib.DiT):
    s, c = model.image_size, model.channels
    return jax.jit(lambda key: model.init(key, jnp.zeros((1, s, s, c), jnp.float32),
                                          jnp.zeros((1,), jnp.float32))["params"])


# ---------------------------------------------------------------- training

def train_model(model: dit_lib.DiT, images, cfg: TrainConfig, workdir: Optional[str], *, key: Array,
                u_min: float, head_mask: Optional[Array] = None, init: Optional[PyTree] = None,
                pad_to: Optional[int] = None, progress: bool = True) -> tuple[training.TrainState, int]:
    """Trains (or resumes, or just restores) the DiT on images (n, H, W, C) with the eps loss.

    Parameters are initialised from fold_in(key, "init") (or `init`), training uses fold_in(key, "train")
    (diffmem.training: orbax checkpoints in <workdir>/checkpoints, metrics in <workdir>/metrics.jsonl). A finished
    checkpoint (step >= cfg.steps) is restored without training. pad_to >= n zero-pads the images to pad_to rows
    (batches are drawn from the first n only, `masked_batch`): every n of a sweep then shares ONE compiled train
    step, and the batches (so the whole run) are the same as without padding. Returns (state, steps trained now).
    """
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    pad_to = n if pad_to is None else pad_to
    if isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < n:
        raise ValueError(f"pad_to must be an int >= n={n}, got {pad_to!r}")
    data = {"images": np.concatenate([images, np.zeros((pad_to - n,) + images.shape[1:], np.float32)]),
            "valid": np.arange(pad_to) < n}
    params = init_params(model, rng.stream(key, "init")) if init is None else init
    count = [0]

    def hook(step, state, record):
        count[0] += 1

    state = training.train(make_loss(model, u_min, head_mask), params, data, cfg, workdir,
                           key=rng.stream(key, "train"), sample_batch=masked_batch, hooks=(hook,), progress=progress,
                           desc=f"train n={n}")
    return state, count[0]


def masked_batch(key: Array, data: dict, batch_size: int) -> Array:
    """Batch sampler of `train_model`: batch_size images uniform (with replacement) on the valid prefix of
    data['images'] (data['valid'] (N,) bool, True on the first n rows)."""
    num_valid = jnp.sum(data["valid"].astype(jnp.int32))
    return data_lib.sample_batch(key, data["images"], batch_size, num_valid)


def check_head_mask(model: dit_lib.DiT, mask) -> np.ndarray:
    """A concrete head mask (depth, max_heads) of exact 0/1 as float32 numpy; ValueError otherwise."""
    m = np.asarray(jax.device_get(mask), np.float64)
    shape = (model.depth, model.max_heads)
    if m.shape != shape:
        raise ValueError(f"head_mask must have shape (depth, max_heads) = {shape}, got {m.shape}")
    bad = m[(m != 0) & (m != 1)]
    if bad.size:
        raise ValueError(f"head_mask entries must be exactly 0 or 1, got {bad[:4].tolist()}")
    return m.astype(np.float32)


def train_masked(model: dit_lib.DiT, params: PyTree, mask, images, cfg: TrainConfig, workdir: Optional[str], *,
                 key: Array, u_min: float, progress: bool = False, desc: str = "train",
                 hooks=()) -> training.TrainState:
    """cfg.steps steps of the eps loss of the DiT gated by a FIXED head mask (depth, max_heads) from `params`
    (a fresh optimizer; resumable in workdir): Algorithm 1's fine-tuning of arXiv 2511.03202, and with an all-ones
    mask the ordinary training of a base model. Batches uniform with replacement (training.uniform_batch); every
    mask shares one compiled step (`make_masked_loss`)."""
    images = np.asarray(images, np.float32)
    mask = check_head_mask(model, mask)
    data = {"x": images, "mask": np.broadcast_to(mask, (images.shape[0],) + mask.shape).copy()}
    return training.train(make_masked_loss(model, float(u_min)), params, data, cfg, workdir, key=key,
                          progress=progress, desc=desc, hooks=hooks)


# ---------------------------------------------------------------- sampling

@functools.lru_cache(maxsize=16)
def _batch_sampler(model: dit_lib.DiT, shape: tuple[int, ...], method: str, denoise: bool):
    """jit(keys (b,), params, head_mask, grid (steps+1,)) -> samples (b, *shape); one compile per model."""
    apply = eps_apply_fn(model)

    @jax.jit
    def run(keys, params, head_mask, grid):
        score = score_from_eps(lambda x, u: apply(params, x, u, head_mask))
        return sampling.sample_batch(score, keys, shape, grid, method, denoise)
    return run


def sample(model: dit_lib.DiT, params: PyTree, key: Array, cfg: SamplerConfig, u_min: float, *,
           head_mask: Optional[Array] = None, progress: bool = False, start_index: int = 0,
           devices: Optional[Sequence[jax.Device]] = None) -> np.ndarray:
    """cfg.num_samples images (m, H, W, C) from the DiT; sample i uses fold_in(key, start_index + i).

    Batches of cfg.batch_size (rounded up to a multiple of the device count; the last one padded, so one
    compilation), data parallel over `devices` (default: all local devices; sampling.key_batches) with the
    parameters replicated; with several JAX processes and devices=None, each process draws a share of the samples
    and all receive all of them (sampling.split_over_processes). params: the parameters to use (state.ema_params
    or state.params; see `sampling_params`). head_mask (depth, max_heads) or None (all heads).
    """
    grid = sampling_grid(u_min, cfg.steps)
    shape = (model.image_size, model.image_size, model.channels)
    if head_mask is None:
        head_mask = np.ones((model.depth, model.max_heads), np.float32)
    head_mask = jnp.asarray(head_mask, jnp.float32)
    if head_mask.shape != (model.depth, model.max_heads):
        raise ValueError(f"head_mask must have shape (depth, max_heads) = {(model.depth, model.max_heads)}, "
                         f"got {head_mask.shape}")
    run = _batch_sampler(model, shape, cfg.method, bool(cfg.denoise))
    return sampling.generate(run, key, cfg.num_samples, cfg.batch_size, args=(params, head_mask, grid),
                             devices=devices, start_index=start_index, progress=progress,
                             desc=f"sampling ({cfg.method}, {cfg.steps} steps)")


@functools.lru_cache(maxsize=16)
def _group_sampler(model: dit_lib.DiT, shape: tuple[int, ...], method: str, denoise: bool):
    """jit(keys (b, M), params (M, ...), head_masks (M, depth, max_heads), grid) -> samples (b, M, *shape)."""
    apply = eps_apply_fn(model)

    @jax.jit
    def run(keys, params, head_masks, grid):
        def one(k, p, m):
            score = score_from_eps(lambda x, u: apply(p, x, u, m))
            return sampling.sample_batch(score, k, shape, grid, method, denoise)
        return jax.vmap(one, in_axes=(1, 0, 0), out_axes=1)(keys, params, head_masks)
    return run


CPU_WORKERS = min(2, os.cpu_count() or 1)   # models sampled at once by sample_group on the CPU


def group_vmapped() -> bool:
    """Whether `sample_group` samples a group's models as one vmapped batch by default (accelerators) rather than
    one after another (the CPU)."""
    return jax.default_backend() != "cpu"


def sample_group(model: dit_lib.DiT, params: PyTree, head_masks, keys: Array, cfg: SamplerConfig, u_min: float, *,
                 progress: bool = False, devices: Optional[Sequence[jax.Device]] = None,
                 vmap: Optional[bool] = None) -> np.ndarray:
    """cfg.num_samples images of each of M models of one architecture: params stacked (M, ...), head_masks
    (M, depth, max_heads), keys (M,) typed keys; sample i of model m uses fold_in(keys[m], i), as
    `sample(model, params[m], keys[m], ...)` does. vmap: the M models as ONE vmapped batch (default on accelerators)
    or one after another through the same compiled sampler (default on the CPU, where it measured faster: 3.9 vs
    5.3 ms per sample for the prune_dit cpu DiT). Returns (M, num_samples, H, W, C); one compilation either way."""
    head_masks = jnp.asarray(head_masks, jnp.float32)
    m = keys.shape[0]
    if head_masks.shape != (m, model.depth, model.max_heads):
        raise ValueError(f"head_masks must have shape (M, depth, max_heads) = {(m, model.depth, model.max_heads)}, "
                         f"got {head_masks.shape}")
    if vmap is None:
        vmap = group_vmapped()
    if not vmap:
        def one(i):
            return sample(model, jax.tree.map(lambda a: a[i], params), keys[i], cfg, u_min, head_mask=head_masks[i],
                          progress=progress, devices=devices)
        out, t0 = [], time.perf_counter()
        t_line = t0
        # models in CPU_WORKERS threads: one model's sampler keeps about one core busy (small matrices); each
        # model's samples are the same as alone (the same compiled program on the same inputs). One thread with
        # several processes: their all-gathers must come in the same order on every process.
        workers = max(1, min(CPU_WORKERS, m)) if jax.process_count() == 1 else 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for i, x in enumerate(pool.map(one, range(m))):
                out.append(x)
                now = time.perf_counter()
                if runtime.is_writer() and now - t_line >= training.LOG_SECONDS and i + 1 < m:
                    per = (now - t0) / (i + 1)
                    logging.info("sampling: model %d/%d, %.1f s per model, ETA %.0f s", i + 1, m, per,
                                 per * (m - i - 1))
                    t_line = now
        return np.stack(out)
    grid = sampling_grid(u_min, cfg.steps)
    shape = (model.image_size, model.image_size, model.channels)
    run = _group_sampler(model, shape, cfg.method, bool(cfg.denoise))
    out = sampling.generate(run, keys, cfg.num_samples, cfg.batch_size, args=(params, head_masks, grid),
                            devices=devices, progress=progress, desc=f"sampling {m} models ({cfg.method})")
    return np.moveaxis(out, 1, 0)


def sampling_params(state: training.TrainState, use_ema: bool = True) -> PyTree:
    """The parameters to sample with: the EMA parameters by default."""
    return state.ema_params if use_ema else state.params


# ---------------------------------------------------------------- checkpoints

def load_checkpoint(path: str, model: dit_lib.DiT, use_ema: bool = True) -> tuple[PyTree, int]:
    """(params, step) from the latest orbax checkpoint in `path` (a directory of step folders, or a workdir with a
    checkpoints/ folder, as diffmem.training writes them). use_ema picks ema_params (else params). The tree must
    match `model`; a missing directory / checkpoint or another architecture raises a ValueError saying which."""
    import os

    import orbax.checkpoint as ocp
    if not path or not os.path.isdir(path):
        raise ValueError(f"{path!r}: no such directory (expected orbax checkpoints of a DiT, e.g. a train_dit run's "
                         "<workdir>/n<n>)")
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    mngr = ocp.CheckpointManager(os.path.abspath(root))
    try:
        step = mngr.latest_step()
        if step is None:
            raise ValueError(f"{path!r}: no checkpoint found in {root} (expected orbax step folders written by "
                             "diffmem.training)")
        restored = mngr.restore(step, args=ocp.args.StandardRestore())
    finally:
        mngr.close()
    name = "ema_params" if use_ema else "params"
    if not isinstance(restored, dict) or name not in restored:
        raise ValueError(f"{path!r}: checkpoint {step} has no '{name}' entry (keys: "
                         f"{sorted(restored) if isinstance(restored, dict) else type(restored).__name__})")
    params = restored[name]
    want = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    got_s = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    want_s = jax.tree.map(lambda a: tuple(a.shape), want)
    if jax.tree.structure(got_s) != jax.tree.structure(want_s) or got_s != want_s:
        sizes = dict(depth=model.depth, hidden=model.hidden, heads=model.heads, patch=model.patch)
        raise ValueError(f"{path!r}: the checkpoint's parameters do not match the DiT {sizes}")
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params), int(step)
