"""Glue between an epsilon-prediction DiT and the OU process of PAPER.md section 1 (DDPM time change).

The DiT predicts eps_hat(x, u) at the DDPM unit time u in [0, 1]; the diffusion time is t = sde.ddpm_time(u)
(the DDPM linear beta schedule, N = 1000, b0 = 1e-4, b1 = 0.02, is exactly the OU process under this change;
t(1) = 10.05). Since x_t = alpha_t x0 + sigma_t eps, E[eps | x_t] = -sigma_t score(x_t, t), so

    score(x, t) = -eps_hat(x, u(t)) / sigma_t,      u(t) = sde.ddpm_time_inverse(t).

Training (`make_loss`): losses.make_eps_loss, u ~ U(u_min, 1), i.e. the sigma_t^2-weighted DSM loss of eq. 3.1.
Sampling (`sample`): from Y_T ~ N(0, I) at T = t(1) down to the early-stopping time t0 = t(u_min) on a grid
uniform in u (sampling.time_grid(..., spacing='ddpm')), reverse SDE (Euler-Maruyama) or probability-flow ODE
(Heun), then a Tweedie denoising step at t0 (diffmem.sampling.sample_batch), data parallel over the local
devices. Sample i uses the key fold_in(key, start_index + i), so it does not depend on the batch size or device
count. The batch function is jit-compiled once per (model, image shape, sampler settings) with the parameters, the
head mask and the keys as ARGUMENTS: sampling another parameter set or head mask of the same model (the pruning
experiment) reuses the compiled program.

Training, sampling and evaluation helpers here are shared by experiments/train_dit.py and the pruning experiment.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import data as data_lib
from diffmem import losses, metrics, sampling, sde, train
from diffmem.models import dit as dit_lib

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

def variables(params: PyTree) -> dict:
    """The flax variables dict {'params': ...} from either it or the bare 'params' collection."""
    if isinstance(params, dict) and "params" in params and "x_embedder" not in params:
        return params
    return {"params": params}


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

    Without a head mask the function is cached per (model, u_min), so diffmem.train reuses its compiled step.
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


def build_model(image_shape: tuple[int, int, int], *, patch: int, hidden: int, depth: int, heads: int,
                mlp_ratio: float = 4.0, dtype: str = "float32") -> dit_lib.DiT:
    """An unconditional eps-prediction DiT for square images (H, W, C); validates the fields."""
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


def init_params(model: dit_lib.DiT, key: Array) -> PyTree:
    """The 'params' collection of a fresh model (adaLN-Zero: the zero function)."""
    return _init_fn(model)(key)


@functools.lru_cache(maxsize=16)
def _init_fn(model: dit_lib.DiT):
    s, c = model.image_size, model.channels
    return jax.jit(lambda key: model.init(key, jnp.zeros((1, s, s, c), jnp.float32),
                                          jnp.zeros((1,), jnp.float32))["params"])


# ---------------------------------------------------------------- training

def train_model(model: dit_lib.DiT, images, cfg: train.TrainConfig, workdir: Optional[str], *, key: Array,
                u_min: float, head_mask: Optional[Array] = None, init: Optional[PyTree] = None,
                pad_to: Optional[int] = None, progress: bool = True) -> tuple[train.TrainState, int]:
    """Trains (or resumes, or just restores) the DiT on images (n, H, W, C) with the eps loss.

    Parameters are initialised from fold_in(key, 0) (or `init`), training uses fold_in(key, 1) (diffmem.train:
    orbax checkpoints in <workdir>/checkpoints, metrics in <workdir>/metrics.jsonl). A finished checkpoint
    (step >= cfg.steps) is restored without training. pad_to >= n zero-pads the images to pad_to rows (batches
    are drawn from the first n only, `masked_batch`): every n of a sweep then shares ONE compiled train step, and
    the batches (so the whole run) are the same as without padding. Returns (state, steps trained by this call).
    """
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    pad_to = n if pad_to is None else pad_to
    if isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < n:
        raise ValueError(f"pad_to must be an int >= n={n}, got {pad_to!r}")
    data = {"images": np.concatenate([images, np.zeros((pad_to - n,) + images.shape[1:], np.float32)]),
            "valid": np.arange(pad_to) < n}
    params = init_params(model, jax.random.fold_in(key, 0)) if init is None else init
    count = [0]

    def hook(step, state, record):
        count[0] += 1

    state = train.train(make_loss(model, u_min, head_mask), params, data, cfg, workdir,
                        key=jax.random.fold_in(key, 1), sample_batch=masked_batch, hooks=(hook,),
                        progress=progress)
    return state, count[0]


def masked_batch(key: Array, data: dict, batch_size: int) -> Array:
    """Batch sampler of `train_model`: batch_size images uniform (with replacement) on the valid prefix of
    data['images'] (data['valid'] (N,) bool, True on the first n rows)."""
    num_valid = jnp.sum(data["valid"].astype(jnp.int32))
    return data_lib.sample_batch(key, data["images"], batch_size, num_valid)


# ---------------------------------------------------------------- sampling

SAMPLER_METHODS = sampling.METHODS


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """num_samples; steps (grid intervals); method 'sde' (Euler-Maruyama) or 'ode' (Heun); batch_size;
    denoise (final Tweedie step at t0); use_ema (sample with the EMA parameters)."""
    num_samples: int = 1000
    steps: int = 100
    method: str = "sde"
    batch_size: int = 500
    denoise: bool = True
    use_ema: bool = True

    def __post_init__(self):
        for f in ("num_samples", "steps", "batch_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"SamplerConfig.{f} must be an int >= 1, got {v!r}")
        if self.method not in SAMPLER_METHODS:
            raise ValueError(f"SamplerConfig.method must be one of {SAMPLER_METHODS}, got {self.method!r}")
        for f in ("denoise", "use_ema"):
            if not isinstance(getattr(self, f), (bool, np.bool_)):
                raise ValueError(f"SamplerConfig.{f} must be a bool, got {getattr(self, f)!r}")


@functools.lru_cache(maxsize=16)
def _batch_sampler(model: dit_lib.DiT, shape: tuple[int, ...], method: str, denoise: bool):
    """jit(params, head_mask, keys (b,), grid (steps+1,)) -> samples (b, *shape); one compile per model."""
    apply = eps_apply_fn(model)

    @jax.jit
    def run(params, head_mask, keys, grid):
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
    mesh = sampling.device_mesh(devices)
    params, head_mask, grid = sampling.replicate((params, head_mask, grid), mesh)

    def local(num, start):
        out = [np.asarray(run(params, head_mask, keys, grid))[:keep] for _, keep, keys in
               sampling.key_batches(key, num, cfg.batch_size, mesh, start, progress,
                                    f"sampling ({cfg.method}, {cfg.steps} steps)")]
        return np.concatenate(out, 0)
    return local(cfg.num_samples, start_index) if devices is not None else \
        sampling.split_over_processes(local, cfg.num_samples, start_index)


def sampling_params(state: train.TrainState, use_ema: bool = True) -> PyTree:
    """The parameters to sample with: the EMA parameters by default."""
    return state.ema_params if use_ema else state.params


# ---------------------------------------------------------------- evaluation

def empirical_optimum_loss(images, u_min: float, key: Array, num_queries: int = 2048,
                           edges=train.DEFAULT_TIME_EDGES, chunk: int = 4096) -> dict:
    """Monte-Carlo eps loss of the EMPIRICAL score (the global minimiser of the loss on the training set, whose
    sampler only returns training points; PAPER.md section 1): the floor a memorizing network approaches.

    Same draws as training (x0 uniform on the images, u ~ U(u_min, 1), t = ddpm_time(u)) and eps_hat =
    -sigma_t score_hat(x_t, t) (scores.empirical_score, chunked). Returns loss, its standard error, and
    loss_bin{i} means over the u bins `edges` (those of diffmem.train's loss_bin metrics).
    """
    x = np.asarray(images, np.float32).reshape(len(images), -1)               # (n, D)
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or inf values")
    per, u = _optimum_draws(jnp.asarray(x), key, check_u_min(u_min), int(num_queries), int(chunk))
    per, u = np.asarray(per, np.float64), np.asarray(u)                       # (q,), (q,)
    out = dict(loss=float(per.mean()), loss_stderr=float(per.std(ddof=1) / math.sqrt(len(per))),
               num_queries=int(num_queries))
    idx = np.searchsorted(np.asarray(edges[1:-1]), u, side="right")
    for b in range(len(edges) - 1):
        if np.any(idx == b):
            out[f"loss_bin{b}"] = float(per[idx == b].mean())
    return out


@functools.partial(jax.jit, static_argnames=("u_min", "num_queries", "chunk"))
def _optimum_draws(x: Array, key: Array, u_min: float, num_queries: int, chunk: int) -> tuple[Array, Array]:
    """Per-draw eps loss of the empirical score and the draws' u: x (n, D) -> ((q,), (q,))."""
    from diffmem import scores  # local: only this helper needs it
    ki, ku, kx = jax.random.split(key, 3)
    i = jax.random.randint(ki, (num_queries,), 0, x.shape[0])
    u = sde.sample_unit_time(ku, (num_queries,), "uniform", u_min=u_min)
    t = sde.ddpm_time(u)
    x_t, eps = sde.marginal_sample(kx, x[i], t)
    st = scores.empirical_stats(x_t, t, x, None, chunk)
    eps_hat = -sde.sigma(t)[:, None] * scores.score_from_stats(st, x_t, t)
    return jnp.mean((eps_hat - eps) ** 2, -1), u


def evaluate_samples(samples, train_images, ref_features: np.ndarray, extractor, *, k: int = 3,
                     ratio: float = 1.0 / 3.0, kid_subsets: int = 100, seed: int = 0,
                     batch_size: int = 256) -> tuple[dict, dict]:
    """Memorization (pixel space, vs train_images; PAPER.md section 4) and FD / KID / precision-recall (k-NN
    manifolds, Kynkaanniemi et al. 2019) of the samples' features against reference features (r, f).

    samples (m, H, W, C), train_images (n, H, W, C) in [-1, 1]. Returns (summary of Python numbers,
    metrics.memorization output with the per-sample arrays memorized, nn_idx, nn_dist, dist_ratio).
    """
    samples = np.asarray(samples, np.float32)
    if not np.isfinite(samples).all():
        raise ValueError(f"samples contain {int((~np.isfinite(samples)).sum())} NaN/inf values "
                         "(diverged sampler or model)")
    mem = metrics.memorization(samples, train_images, ratio)
    summary = dict(memorization_ratio=mem["memorization_ratio"], num_memorized=int(mem["memorized"].sum()),
                   mean_nn1_dist=float(mem["nn_dist"][:, 0].mean()),
                   median_dist_ratio=float(np.median(mem["dist_ratio"])))
    summary.update(feature_metrics(extractor(samples, batch_size=batch_size), ref_features, k=k,
                                   kid_subsets=kid_subsets, seed=seed))
    return summary, mem


def feature_metrics(fake_features: np.ndarray, ref_features: np.ndarray, *, k: int = 3,
                    kid_subsets: int = 100, seed: int = 0) -> dict:
    """FD, KID (mean, std) and precision/recall (k) of feature sets fake (m, f) vs reference (r, f)."""
    kid_mean, kid_std = metrics.kid(ref_features, fake_features, subsets=kid_subsets, seed=seed)
    pr = metrics.precision_recall(ref_features, fake_features, k)
    return dict(fd=metrics.frechet_distance(ref_features, fake_features), kid_mean=kid_mean, kid_std=kid_std,
                precision=pr["precision"], recall=pr["recall"], k=int(k),
                n_fake=int(fake_features.shape[0]), n_ref=int(ref_features.shape[0]))
