"""The Gaussian-mixture memorization lab (arXiv 2511.03202, Section 6.1, Figures 2 and 3): groups of small score
networks trained together (training.train_sweep: one vmapped jit step), sampled together (the sampling driver,
common random numbers across the group) and scored against the true mixture.

Sampling (`sample_members`): the reverse SDE (Euler-Maruyama) or probability-flow ODE (Heun) of
`diffmem.sampling` from T to t0, with Tweedie denoising at t0; sample i uses fold_in(key, i) for every member.
`reference_score_fns` gives the two closed-form references: the empirical score (samples only training points,
memorization ~ 1) and the true mixture score (~ 0).

Metrics (`sample_metrics`) of generated samples:
  memorization_ratio  fraction with ||x - NN1|| < ||x - NN2|| / 3 (eval.memorization);
  loglik_mean         mean log p(x) under the TRUE mixture at t = 0 (scores.mixture_logpdf), with stderr;
  frac_near_mean      fraction with min_k ||x - mu_k|| <= r_d, r_d^2 = chi2_d quantile 0.999: a sample of the
                      true mixture is within r_d of its own mean with probability >= 0.999 (0.999 exactly for
                      unit covariances), so a low value flags underfitting (samples off the components).

Network output (diffmem.models.mlp): the experiments use output='edm' (EDM preconditioning). At d = 32, K = 8,
width 256 and 2000-3000 steps, output='eps' left the samples far off the mixture (the eps net had not learned
eps ~ x_t even at t = T) while 'edm' gave the expected memorization pattern; the parametrisation does not change
the minimiser.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import eval as eval_lib
from diffmem import losses, rng, sampling, scores, training
from diffmem.config import SamplerConfig, TrainConfig
from diffmem.models import mlp

Array = jax.Array
PyTree = Any
NEAR_MEAN_QUANTILE = 0.999


def sample_members(score_fn: Callable[[PyTree, Array, Array], Array], members: PyTree, key: Array,
                   num_samples: int, dim: int, grid: Array, method: str = "sde", batch_size: int = 1024,
                   denoise: bool = True) -> np.ndarray:
    """Samples every stacked member with the same per-sample keys fold_in(key, i) (common random numbers).

    score_fn(member, x (b, d), t (b,)) -> (b, d), vmapped over `members` (a pytree with leading dim M: stacked
    network parameters with score_fn = apply, or stacked (data, mask) for empirical-score references).
    Returns a host array (M, num_samples, dim), through the sampling driver (one compilation per call).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")

    @jax.jit
    def run(keys, members, grid):
        one = lambda mb: sampling.sample_batch(lambda x, t: score_fn(mb, x, t), keys, (dim,), grid, method,
                                               denoise)
        return jnp.moveaxis(jax.vmap(one)(members), 0, 1)                        # (b, M, d)

    out = sampling.generate(run, key, num_samples, min(batch_size, num_samples), args=(members, grid))
    return np.moveaxis(out, 1, 0)                                                # (M, m, d)


def empirical_member_score(member: tuple[Array, Array], x: Array, t: Array) -> Array:
    """Closed-form empirical score of one member (data (n_max, d), mask (n_max,)), for `sample_members`."""
    data, mask = member
    return scores.score_from_stats(scores.empirical_stats(x, t, data, mask), x, t)


def reference_score_fns(data: Array, mix: scores.GaussianMixture, mask: Optional[Array] = None) -> dict:
    """The closed-form reference samplers' scores: 'empirical' (of the training set) and 'true' (mixture)."""
    data = jnp.asarray(data, jnp.float32)
    mask = jnp.ones(data.shape[:1], jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)

    def empirical(x, t):
        return scores.score_from_stats(scores.empirical_stats(x, t, data, mask), x, t)

    def true(x, t):
        return scores.mixture_score(x, t, mix)

    return {"empirical": empirical, "true": true}


def near_mean_radius(dim: int, quantile: float = NEAR_MEAN_QUANTILE) -> float:
    """r_d = sqrt(chi2_d^{-1}(quantile)): N(mu, I_d) lies within r_d of mu with probability `quantile`."""
    from scipy import stats  # scipy ships with scikit-learn, a diffmem dependency
    return float(math.sqrt(stats.chi2.ppf(quantile, dim)))


def sample_metrics(samples, train_points, mix: scores.GaussianMixture, radius: Optional[float] = None) -> dict:
    """Memorization ratio, true-mixture log-likelihood and near-a-mean fraction of samples (m, d).

    train_points (n, d), n >= 2. radius defaults to `near_mean_radius(d)` (for unit component covariances).
    Returns plain floats: memorization_ratio, loglik_mean, loglik_stderr, frac_near_mean, radius,
    median_dist_ratio (median ||x - NN1|| / ||x - NN2||).
    """
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 2 or samples.shape[1] != mix.dim:
        raise ValueError(f"samples must have shape (m, d={mix.dim}), got {samples.shape}")
    if not np.isfinite(samples).all():
        bad = float(np.mean(~np.isfinite(samples).all(1)))
        raise FloatingPointError(f"{bad:.1%} of the generated samples are NaN/inf (diverged sampler or network)")
    radius = near_mean_radius(mix.dim) if radius is None else float(radius)
    mem = eval_lib.memorization(samples, np.asarray(train_points, np.float32))
    ll = np.asarray(scores.mixture_logpdf(jnp.asarray(samples), 0.0, mix))
    ll_mean, ll_se = losses.mean_and_stderr(jnp.asarray(ll))
    dmin = np.sqrt(np.min(np.sum((samples[:, None, :] - np.asarray(mix.means)[None]) ** 2, -1), -1))
    return {"memorization_ratio": mem["memorization_ratio"], "loglik_mean": float(ll_mean),
            "loglik_stderr": float(ll_se), "frac_near_mean": float(np.mean(dmin <= radius)),
            "radius": radius, "median_dist_ratio": float(np.median(mem["dist_ratio"]))}


def run_group(*, model, mix: scores.GaussianMixture, data, mask, weight_decays, seeds: Sequence[int],
              train_cfg: TrainConfig, sampler: SamplerConfig, t0: float, t1: float, key: Array,
              weighting: str = "sigma2", time_dist: str = "log_uniform", workdir: Optional[str] = None,
              progress: bool = False, desc: str = "group", keep_samples: bool = False) -> list[dict]:
    """Trains, samples and scores one group of members that share `model` (a ScoreMLP).

    Member m: params from stream(key, "init", seeds[m]), training stream stream(key, "train", seeds[m]); samples
    from stream(key, "lab_samples") (shared by all members). Returns one dict per member with
    n, seed, weight_decay, final_loss, group_train_seconds (the whole group's training wall time),
    group_size M, params and `sample_metrics` (plus 'samples' (m, d) when keep_samples).
    """
    counts = training.mask_counts(mask)
    seeds = [int(s) for s in seeds]
    if len(seeds) != counts.shape[0]:
        raise ValueError(f"seeds must have one entry per member ({counts.shape[0]}), got {len(seeds)}")
    apply_fn = mlp.make_apply(model)
    params = training.init_members(lambda k: mlp.init_params(model, k),
                                   jnp.stack([rng.stream(key, "init", s) for s in seeds]))
    member_keys = jnp.stack([rng.stream(key, "train", s) for s in seeds])
    loss_fn = losses.make_lab_loss(apply_fn, t0, t1, weighting, time_dist)
    tic = time.perf_counter()
    states, history = training.train_sweep(loss_fn, params, data, mask, weight_decays, member_keys, train_cfg,
                                           workdir, progress, desc)
    train_s = time.perf_counter() - tic
    grid = sampling.time_grid(t0, t1, sampler.steps, sampler.spacing)
    samples = sample_members(apply_fn, states.ema_params, rng.stream(key, "lab_samples"), sampler.num_samples,
                             model.dim, grid, sampler.method, sampler.batch_size, sampler.denoise)
    data = np.asarray(data)
    out = []
    for m, n in enumerate(counts):
        res = {"n": int(n), "seed": seeds[m], "weight_decay": float(np.asarray(weight_decays)[m]),
               "final_loss": history[-1]["loss"][m] if history else float("nan"),
               "group_train_seconds": train_s, "group_size": len(counts),
               "params": mlp.count_params(training.unstack(params, 0)),
               **sample_metrics(samples[m], data[m, :n], mix)}
        if keep_samples:
            res["samples"] = samples[m]
        out.append(res)
    return out
