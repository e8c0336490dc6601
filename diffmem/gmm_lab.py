"""Gaussian-mixture memorization lab (PAPER.md section 4, Figures 2 and 3): sweeps of small score networks
trained together, sampled together and scored against the true mixture.

Sweep members that share an architecture (same `ScoreMLP`) but differ in training-set size n, seed or weight
decay train as ONE `jax.vmap`-ed, `jax.jit`-compiled step over stacked parameters:

  * data: one padded array (M, n_max, d) plus a prefix mask (M, n_max); member m trains on its first n_m
    rows (`pad_datasets`), so every member has the same shapes and no n recompiles anything;
  * weight decay: a per-member (M,) array, passed as a traced value to the AdamW of `sweep_optimizer`, which
    is `train.make_optimizer` with the decay as an argument (same transforms, same order);
  * the per-member step is `train.make_train_step` (pure), vmapped; `lax.scan` runs `log_every` steps per
    dispatch. Step s of member m uses k = fold_in(key_m, s): batch indices from fold_in(k, 0) (uniform over
    its n_m rows, with replacement, as `train.uniform_batch`), loss noise from fold_in(k, 1), as `train.train`.

Training loss (`make_lab_loss`): t ~ U[t0, T] or log-uniform on [t0, T] (default, puts the small times where
memorization is decided on an equal footing), x_t = alpha_t x0 + sigma_t eps, per-example DSM loss of eq. 3.1
with weighting 'none' or 'sigma2' (default; with the 'eps' MLP output it is ||eps_hat - eps||^2). The weighting
and time law change the integrand's measure, not the minimiser: every positive weighting is minimised by the
empirical score (PAPER.md section 1), the memorizing solution.

Network output (diffmem.models.mlp): the experiments use output='edm' (EDM preconditioning). Measured at
d = 32, K = 8, width 256, 2000-3000 steps: with output='eps' the samples were far off the mixture (mean true
log-likelihood -85 to -395 against -47 for exact samples; even at t = T the eps net had a sigma^2-weighted
error of ~2 per sample, i.e. it had not learned eps ~ x_t), with 'edm' -46 and the expected memorization
pattern. The parametrisation does not change the minimiser either.

Sampling (`sample_members`): the reverse SDE (Euler-Maruyama) or probability-flow ODE (Heun) of
`diffmem.sampling` from T to t0, with Tweedie denoising at t0; sample i uses fold_in(key, i) for every member
(common random numbers across the sweep). `reference_score_fns` gives the two closed-form references: the
empirical score (samples only training points, memorization ~ 1) and the true mixture score (~ 0).

Metrics (`sample_metrics`) of generated samples:
  memorization_ratio  fraction with ||x - NN1|| < ||x - NN2|| / 3 (metrics.memorization);
  loglik_mean         mean log p(x) under the TRUE mixture at t = 0 (scores.mixture_logpdf), with stderr;
  frac_near_mean      fraction with min_k ||x - mu_k|| <= r_d, r_d^2 = chi2_d quantile 0.999: a sample of the
                      true mixture is within r_d of its own mean with probability >= 0.999 (0.999 exactly for
                      unit covariances), so a low value flags underfitting (samples off the components).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffmem import losses, metrics, sampling, scores, sde, train

Array = jax.Array
PyTree = Any
NEAR_MEAN_QUANTILE = 0.999
LAB_WEIGHTINGS = losses.WEIGHTINGS
LAB_TIME_DISTS = ("uniform", "log_uniform")


# ------------------------------------------------------------------------------------------- config

def check_lab_config(model: dict, train_section: dict, times: dict, times_name: str) -> train.TrainConfig:
    """Checks shared by the lab experiments' configs: config.model (ScoreMLP fields and sigma_data >= 0),
    config.train (returned as a TrainConfig) and config.<times_name> (0 < t0 < T, time_dist in LAB_TIME_DISTS)."""
    from diffmem import experiments  # local: only config parsing needs these
    from diffmem.models import mlp
    experiments.check_int("config.model.depth", model["depth"], 1)
    mlp.check_mlp_args(1, 1, model["depth"], model["time_embed"], model["embed_dim"], model["output"])
    if not float(model["sigma_data"]) >= 0:
        raise ValueError(f"config.model.sigma_data must be >= 0 (0 = automatic), got {model['sigma_data']}")
    try:
        tcfg = train.TrainConfig.from_dict(train_section)
    except ValueError as e:
        raise ValueError(f"config.train: {e}") from None
    if not (float(times["t0"]) > 0 and float(times["T"]) > float(times["t0"])):
        raise ValueError(f"config.{times_name} needs 0 < t0 < T, got t0={times['t0']}, T={times['T']}")
    if times["time_dist"] not in LAB_TIME_DISTS:
        raise ValueError(f"config.{times_name}.time_dist must be one of {LAB_TIME_DISTS}, "
                         f"got {times['time_dist']!r}")
    return tcfg


# ------------------------------------------------------------------------------------------- loss

def make_lab_loss(apply_fn: Callable[[PyTree, Array, Array], Array], t0: float, t1: float,
                  weighting: str = "sigma2", time_dist: str = "log_uniform"):
    """loss(params, key, batch (b, d)) -> (mean per-example DSM loss, aux). See the module docstring.

    aux: per_example_loss (b,), time (b,) = the position of t in [t0, T] on the sampling scale (linear for
    'uniform', log for 'log_uniform'), in [0, 1], for `train.make_train_step`'s loss-by-time bins.
    """
    if not (t0 > 0 and t1 > t0):
        raise ValueError(f"need 0 < t0 < T, got t0={t0}, T={t1}")
    if weighting not in LAB_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {LAB_WEIGHTINGS}, got {weighting!r}")
    if time_dist not in LAB_TIME_DISTS:
        raise ValueError(f"time_dist must be one of {LAB_TIME_DISTS}, got {time_dist!r}")

    def loss(params, key, batch):
        kt, kx = jax.random.split(key)
        t = sde.sample_time(kt, batch.shape[:1], t0, t1, time_dist)                  # (b,)
        x_t, _ = sde.marginal_sample(kx, batch, t)                                    # (b, d)
        per = losses.dsm_per_example(lambda x, s: apply_fn(params, x, s), batch, x_t, t, weighting)
        if time_dist == "uniform":
            pos = (t - t0) / (t1 - t0)
        else:
            pos = jnp.log(t / t0) / math.log(t1 / t0)
        return jnp.mean(per), {"per_example_loss": per, "time": pos}

    return loss


# -------------------------------------------------------------------------------- data and members

def pad_datasets(datasets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks M training sets (n_m, d) into data (M, n_max, d) (zero padded) and a prefix mask (M, n_max)."""
    if len(datasets) == 0:
        raise ValueError("datasets must hold at least one training set")
    arrs = [np.asarray(a, np.float32) for a in datasets]
    dims = {a.shape[1] if a.ndim == 2 else None for a in arrs}
    if len(dims) != 1 or None in dims:
        raise ValueError(f"every training set must have shape (n_m, d) with one d, got {[a.shape for a in arrs]}")
    if any(a.shape[0] < 1 for a in arrs):
        raise ValueError("every training set must hold n_m >= 1 points")
    n_max, d = max(a.shape[0] for a in arrs), dims.pop()
    data = np.zeros((len(arrs), n_max, d), np.float32)
    mask = np.zeros((len(arrs), n_max), np.float32)
    for i, a in enumerate(arrs):
        data[i, :a.shape[0]] = a
        mask[i, :a.shape[0]] = 1.0
    return data, mask


def mask_counts(mask) -> np.ndarray:
    """n_m = number of leading ones of each prefix mask row; ValueError if a row is not a prefix mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (M, n_max), got {mask.shape}")
    counts = (mask > 0).sum(1)
    prefix = np.arange(mask.shape[1])[None, :] < counts[:, None]
    if not np.array_equal(mask > 0, prefix) or not np.all((mask == 0) | (mask == 1)):
        raise ValueError("mask rows must be prefix masks of 0/1 (member m uses its first n_m rows), "
                         "as built by pad_datasets")
    if np.any(counts < 1):
        raise ValueError(f"every member needs n_m >= 1 training points, got counts {counts.tolist()}")
    return counts


def masked_batch(key: Array, data: Array, count: Array, batch_size: int) -> Array:
    """batch_size rows drawn uniformly WITH replacement from the first `count` rows of data (n_max, d)."""
    idx = jax.random.randint(key, (batch_size,), 0, count)                          # (b,)
    return data[idx]


def init_members(init_fn: Callable[[Array], PyTree], keys: Array) -> PyTree:
    """Stacked parameters: leaf shapes (M, ...) from init_fn(key_m) for each of the M keys (one compilation)."""
    return jax.jit(jax.vmap(init_fn))(keys)


def unstack(tree: PyTree, m: int) -> PyTree:
    """Member m of a stacked pytree."""
    return jax.tree.map(lambda x: x[m], tree)


# ---------------------------------------------------------------------------------------- training

def sweep_optimizer(cfg: train.TrainConfig, weight_decay) -> optax.GradientTransformation:
    """`train.make_optimizer(cfg)` with `weight_decay` given separately (a float or a traced scalar, so
    that a vmapped sweep can give each member its own decay): clip, Adam, masked decoupled decay, lr."""
    adamw = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2),
                        optax.add_decayed_weights(weight_decay, train.kernel_mask),
                        optax.scale_by_learning_rate(train.make_schedule(cfg)))
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def init_states(params: PyTree, cfg: train.TrainConfig) -> train.TrainState:
    """Stacked TrainState (step (M,), params, opt_state, ema_params) for stacked params (M, ...)."""
    opt = sweep_optimizer(cfg, 0.0)  # the state structure does not depend on the decay value
    return jax.vmap(lambda p: train.init_state(p, opt))(params)


def make_member_step(loss_fn, cfg: train.TrainConfig, with_extra: bool = False):
    """PURE step(state, data (n_max, d), count (), weight_decay (), key, extra) -> (state, metrics) of ONE member.

    Draws its own batch from fold_in(fold_in(key, state.step), 0) and loss noise from ... , 1). With
    with_extra the loss is called as loss_fn(params, key, batch, member) with
    member = {"data": data, "count": count, "extra": extra} (per-member targets, flags); else extra is unused.
    """
    def step(state, data, count, weight_decay, key, extra=None):
        k = jax.random.fold_in(key, state.step)
        batch = masked_batch(jax.random.fold_in(k, 0), data, count, cfg.batch_size)   # (b, d)
        lf = loss_fn
        if with_extra:
            member = {"data": data, "count": count, "extra": extra}
            lf = lambda p, kk, b: loss_fn(p, kk, b, member)
        inner = train.make_train_step(lf, sweep_optimizer(cfg, weight_decay), cfg.ema_decay)
        return inner(state, batch, jax.random.fold_in(k, 1))
    return step


def make_sweep_step(loss_fn, cfg: train.TrainConfig, with_extra: bool = False):
    """The vmapped member step: step(states, data (M, n_max, d), counts (M,), wds (M,), keys (M,), extra)."""
    return jax.vmap(make_member_step(loss_fn, cfg, with_extra))


@functools.lru_cache(maxsize=16)
def make_sweep_runner(loss_fn, cfg: train.TrainConfig, chunk: int, with_extra: bool = False):
    """jit(scan of `chunk` vmapped steps) -> (states, {loss (M,), grad_norm (M,)} averaged over the chunk).

    Cached on (loss_fn, cfg, chunk, with_extra), so repeated / resumed sweeps with the same loss reuse the
    compiled step."""
    sweep_step = make_sweep_step(loss_fn, cfg, with_extra)

    @jax.jit
    def run(states, data, counts, wds, keys, extra=None):
        def body(st, _):
            st, m = sweep_step(st, data, counts, wds, keys, extra)
            return st, {"loss": m["loss"], "grad_norm": m["grad_norm"]}
        states, ms = jax.lax.scan(body, states, None, length=chunk)
        return states, jax.tree.map(lambda v: jnp.mean(v, 0), ms)
    return run


def _as_dict(state: train.TrainState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def train_sweep(loss_fn, params: PyTree, data, mask, weight_decays, keys: Array, cfg: train.TrainConfig,
                workdir: Optional[str] = None, progress: bool = False, desc: str = "sweep",
                extra: Optional[PyTree] = None) -> tuple[train.TrainState, list[dict]]:
    """Trains M stacked members for cfg.steps steps as one vmapped jit step (see the module docstring).

    params: stacked (M, ...); data (M, n_max, d), mask (M, n_max) prefix masks (`pad_datasets`);
    weight_decays (M,) >= 0 (cfg.weight_decay is ignored); keys (M,) typed keys, one per member.
    workdir: orbax checkpoints of the stacked state every cfg.ckpt_every steps (rounded up to a multiple of
    cfg.log_every) in <workdir>/checkpoints and the history in <workdir>/metrics.jsonl; a re-run resumes
    from the latest checkpoint. extra: optional per-member pytree (leading dim M); then the loss is called as
    loss_fn(params, key, batch, member) (see `make_member_step`). Returns (stacked TrainState, history: [{step, loss: [M], grad_norm: [M]}]).
    Raises FloatingPointError if a loss turns NaN/inf.
    """
    data = np.asarray(data, np.float32)
    counts = mask_counts(mask)
    m = counts.shape[0]
    if data.ndim != 3 or data.shape[:2] != np.shape(mask):
        raise ValueError(f"data must have shape (M, n_max, d) matching mask (M, n_max)={np.shape(mask)}, "
                         f"got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("data contains NaN or inf")
    wds = np.asarray(weight_decays, np.float32).reshape(-1)
    if wds.shape != (m,) or np.any(wds < 0) or not np.isfinite(wds).all():
        raise ValueError(f"weight_decays must be {m} finite numbers >= 0, got {np.asarray(weight_decays)}")
    if keys.shape != (m,) or not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError(f"keys must be ({m},) typed keys from jax.random.key, got {keys.shape} {keys.dtype}")
    leading = {x.shape[0] for x in jax.tree.leaves(params)}
    if leading != {m}:
        raise ValueError(f"params must be stacked with leading dimension M={m}, got leading dims {leading}")

    chunk = cfg.log_every
    ckpt_every = -(-cfg.ckpt_every // chunk) * chunk
    with_extra = extra is not None
    if with_extra and {x.shape[0] if np.ndim(x) else None for x in jax.tree.leaves(extra)} != {m}:
        raise ValueError(f"extra must be a pytree of arrays with leading dimension M={m}")
    run = make_sweep_runner(loss_fn, cfg, chunk, with_extra)
    states = init_states(params, cfg)
    history: list[dict] = []
    mngr = None
    if workdir is not None:
        import orbax.checkpoint as ocp
        quiet_orbax()
        workdir = os.path.abspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                     options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_ckpts))
    try:
        start = 0
        if mngr is not None and mngr.latest_step() is not None:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _as_dict(states))
            states = train.TrainState(**mngr.restore(mngr.latest_step(),
                                                     args=ocp.args.StandardRestore(abstract)))
            start = int(np.asarray(states.step)[0])
            history = _read_history(workdir, start)
        from tqdm.auto import tqdm
        d_data, d_counts, d_wds = jnp.asarray(data), jnp.asarray(counts, jnp.int32), jnp.asarray(wds)
        with tqdm(total=cfg.steps, initial=start, desc=desc, disable=not progress, leave=False) as bar:
            step = start
            while step < cfg.steps:
                if cfg.steps - step < chunk:  # tail shorter than a chunk: one extra compilation
                    run = make_sweep_runner(loss_fn, cfg, cfg.steps - step, with_extra)
                states, ms = run(states, d_data, d_counts, d_wds, keys, extra)
                ms = jax.device_get(ms)
                step = int(np.asarray(states.step)[0])
                if not np.isfinite(ms["loss"]).all():
                    raise FloatingPointError(f"{desc}: loss became non-finite before step {step} for members "
                                             f"{np.flatnonzero(~np.isfinite(ms['loss'])).tolist()}")
                history.append({"step": step, "loss": ms["loss"].tolist(), "grad_norm": ms["grad_norm"].tolist()})
                if workdir is not None:
                    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
                        f.write(json.dumps(history[-1]) + "\n")
                if mngr is not None and (step % ckpt_every == 0 or step == cfg.steps):
                    mngr.save(step, args=ocp.args.StandardSave(_as_dict(states)))
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{float(np.mean(ms['loss'])):.4g}", refresh=False)
    finally:
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
    return states, history


def quiet_orbax() -> None:
    """Drops orbax's INFO records (several per checkpoint) from the absl log handler; warnings stay."""
    import logging as pylogging
    from absl import logging as absl_logging
    handler = absl_logging.get_absl_handler()
    if not any(getattr(f, "_diffmem_orbax", False) for f in handler.filters):
        def keep(record):
            return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname
        keep._diffmem_orbax = True
        handler.addFilter(keep)


def _read_history(workdir: str, upto: int) -> list[dict]:
    """metrics.jsonl records with step <= upto (the file is rewritten without later records)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        recs = [json.loads(ln) for ln in f if ln.strip()]
    recs = [r for r in recs if r["step"] <= upto]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return recs


# ---------------------------------------------------------------------------------------- sampling

def sample_members(score_fn: Callable[[PyTree, Array, Array], Array], members: PyTree, key: Array,
                   num_samples: int, dim: int, grid: Array, method: str = "sde", batch_size: int = 1024,
                   denoise: bool = True) -> np.ndarray:
    """Samples every stacked member with the same per-sample keys fold_in(key, i) (common random numbers).

    score_fn(member, x (b, d), t (b,)) -> (b, d), vmapped over `members` (a pytree with leading dim M: stacked
    network parameters with score_fn = apply, or stacked (data, mask) for empirical-score references).
    Returns a host array (M, num_samples, dim). One jit compilation (the last batch is padded).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    batch_size = min(batch_size, num_samples)

    @jax.jit
    def run(members, keys):
        one = lambda mb: sampling.sample_batch(lambda x, t: score_fn(mb, x, t), keys, (dim,), grid, method,
                                               denoise)
        return jax.vmap(one)(members)                                                 # (M, b, d)

    out = []
    for lo in range(0, num_samples, batch_size):
        keys = sampling.per_sample_keys(key, batch_size, lo)
        out.append(np.asarray(run(members, keys))[:, :num_samples - lo])
    return np.concatenate(out, 1)


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


# ----------------------------------------------------------------------------------------- metrics

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
    mem = metrics.memorization(samples, np.asarray(train_points, np.float32))
    ll = np.asarray(scores.mixture_logpdf(jnp.asarray(samples), 0.0, mix))
    ll_mean, ll_se = losses.mean_and_stderr(jnp.asarray(ll))
    dmin = np.sqrt(np.min(np.sum((samples[:, None, :] - np.asarray(mix.means)[None]) ** 2, -1), -1))
    return {"memorization_ratio": mem["memorization_ratio"], "loglik_mean": float(ll_mean),
            "loglik_stderr": float(ll_se), "frac_near_mean": float(np.mean(dmin <= radius)),
            "radius": radius, "median_dist_ratio": float(np.median(mem["dist_ratio"]))}


# ------------------------------------------------------------------------------------ one-call API

@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Reverse-time sampler: method 'sde' | 'ode', `steps` on a `spacing` grid from T to t0, Tweedie denoise."""
    num_samples: int = 1000
    steps: int = 100
    method: str = "sde"
    spacing: str = "log"
    batch_size: int = 1024
    denoise: bool = True

    def __post_init__(self):
        if self.method not in sampling.METHODS:
            raise ValueError(f"sampler.method must be one of {sampling.METHODS}, got {self.method!r}")
        for name in ("num_samples", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"sampler.{name} must be an int >= 1, got {v!r}")


def run_group(*, model, mix: scores.GaussianMixture, data, mask, weight_decays, seeds: Sequence[int],
              train_cfg: train.TrainConfig, sampler: SamplerConfig, t0: float, t1: float, key: Array,
              weighting: str = "sigma2", time_dist: str = "log_uniform", workdir: Optional[str] = None,
              progress: bool = False, desc: str = "group", keep_samples: bool = False) -> list[dict]:
    """Trains, samples and scores one group of members that share `model` (a ScoreMLP).

    Member m: params from fold_in(fold_in(key, 0), seeds[m]), training stream fold_in(fold_in(key, 1),
    seeds[m]); samples from fold_in(key, 2) (shared by all members). Returns one dict per member with
    n, seed, weight_decay, final_loss, group_train_seconds (the whole group's training wall time),
    group_size M, params and `sample_metrics` (plus 'samples' (m, d) when keep_samples).
    """
    from diffmem.models import mlp

    counts = mask_counts(mask)
    seeds = [int(s) for s in seeds]
    if len(seeds) != counts.shape[0]:
        raise ValueError(f"seeds must have one entry per member ({counts.shape[0]}), got {len(seeds)}")
    apply_fn = mlp.make_apply(model)
    k_init, k_train, k_sample = (jax.random.fold_in(key, i) for i in range(3))
    params = init_members(lambda k: mlp.init_params(model, k),
                          jnp.stack([jax.random.fold_in(k_init, s) for s in seeds]))
    member_keys = jnp.stack([jax.random.fold_in(k_train, s) for s in seeds])
    loss_fn = make_lab_loss(apply_fn, t0, t1, weighting, time_dist)
    tic = time.perf_counter()
    states, history = train_sweep(loss_fn, params, data, mask, weight_decays, member_keys, train_cfg,
                                  workdir, progress, desc)
    train_s = time.perf_counter() - tic
    grid = sampling.time_grid(t0, t1, sampler.steps, sampler.spacing)
    samples = sample_members(apply_fn, states.ema_params, k_sample, sampler.num_samples, model.dim, grid,
                             sampler.method, sampler.batch_size, sampler.denoise)
    data = np.asarray(data)
    out = []
    for m, n in enumerate(counts):
        res = {"n": int(n), "seed": seeds[m], "weight_decay": float(np.asarray(weight_decays)[m]),
               "final_loss": history[-1]["loss"][m] if history else float("nan"),
               "group_train_seconds": train_s, "group_size": len(counts),
               "params": mlp.count_params(unstack(params, 0)),
               **sample_metrics(samples[m], data[m, :n], mix)}
        if keep_samples:
            res["samples"] = samples[m]
        out.append(res)
    return out
