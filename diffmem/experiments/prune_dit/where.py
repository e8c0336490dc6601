"""Where is memorization decided? (the reviewers' question on arXiv 2511.03202, Section 6.2)

  * trajectories of the base model: along the reverse path from T to t0, the Tweedie estimate
    x0_hat(y_t) = (y_t + sigma_t^2 score(y_t, t)) / alpha_t and its nearest training image; the decision time of a
    sample is the largest grid time from which on its nearest training image no longer changes (reported in u and
    t, separately for memorized and non-memorized samples);
  * swap test, for each pair (a, b) of config.where.swap_pairs: sample with model a for t > tau and model b for
    t <= tau ('a_then_b'), and the reverse ('b_then_a'), for several tau (unit time u; t = ddpm_time(u)), all on the
    same keys (diffmem.pruning.swap_sample). If memorization is decided at small t, a_then_b moves to b alone
    already at small tau.
Both run through the one sampling driver (diffmem.sampling.generate); the swap test on the keys of the models' own
evaluation (so its endpoints are their measured memorization) on every base at claims.swap_tau (claim C7 takes its
interval over the bases) and on base 0 at every where.taus_u. Cached in <piece_dir>/where/.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import image_diffusion as idf
from diffmem import io, pruning, rng, sampling, sde
from diffmem.config import SamplerConfig
from diffmem.eval import neighbors
from diffmem.experiments.prune_dit.pipeline import Context, Run, mask_of, run_params
from diffmem.experiments.prune_dit.settings import PRUNE_METHODS
from diffmem.models.dit import DiT

PATH_BATCH = 256          # paths per batch of the trajectory analysis (memory: (steps + 1) x batch images)


@functools.lru_cache(maxsize=8)
def _path_batch_fn(model: DiT, shape: tuple[int, ...], method: str):
    """jit(keys, params, mask, grid) -> (final samples (b, ...), Tweedie estimates (b, K+1, ...) along the path)."""
    @jax.jit
    def run(keys, params, mask, grid):
        score = idf.make_score_fn(model, params, mask)
        final, path = sampling.sample_batch(score, keys, shape, grid, method, True, return_path=True)

        def tweedie(args):  # x0_hat = (y + sigma_t^2 score(y, t)) / alpha_t
            y, t = args
            tb = jnp.full((y.shape[0],), t, y.dtype)
            return (y + sde.sigma2(t) * score(y, tb)) / sde.alpha(t)
        return final, jnp.moveaxis(jax.lax.map(tweedie, (path, grid)), 0, 1)
    return run


def trajectory_decisions(model: DiT, params, train_images, key: jax.Array, cfg: SamplerConfig, u_min: float,
                         ratio: float = 1.0 / 3.0, mask=None) -> dict:
    """Where along the reverse path is each sample's nearest training image decided?

    Tweedie estimates x0_hat_k at every grid time t_k (k = 0: T, ..., K: t0; x0_hat_K is the final sample); nn_k =
    index of the training image nearest x0_hat_k. decided_k = (nn_j == nn_K for every j >= k). The decision index is
    the first k with decided_k, i.e. the largest time from which on the nearest training image no longer changes.
    Returns per-sample arrays and curves over the grid (numpy / Python numbers)."""
    mask = np.ones((model.depth, model.max_heads), np.float32) if mask is None else pruning.check_mask(mask, model)
    grid = idf.sampling_grid(u_min, cfg.steps)                                        # (K+1,) decreasing t
    shape = (model.image_size, model.image_size, model.channels)
    train_flat = np.asarray(train_images, np.float32).reshape(len(train_images), -1)

    def reduce(out):  # one batch of paths -> nearest training image and memorization flag at every grid time
        final, x0 = out                                                               # (b, ...), (b, K+1, ...)
        x0 = np.moveaxis(x0, 1, 0)                                                    # (K+1, b, H, W, C)
        k1, b = x0.shape[:2]
        dist, idx = neighbors.top2_neighbors(x0.reshape(k1 * b, -1), train_flat)
        dist, idx = np.asarray(dist).reshape(k1, b, 2), np.asarray(idx).reshape(k1, b, 2)
        return dict(final=final, last=x0[-1], nn=idx[..., 0].T, mem=(dist[..., 0] < ratio * dist[..., 1]).T)

    out = sampling.generate(_path_batch_fn(model, shape, cfg.method), key, cfg.num_samples,
                            min(cfg.batch_size, PATH_BATCH), args=(params, jnp.asarray(mask), grid),
                            postprocess=reduce)
    nn, mem_along = out["nn"].T, out["mem"].T                                         # (K+1, m)
    k_star, same, decided = decision_index(nn)
    t_grid = np.asarray(grid, np.float64)
    u_grid = np.asarray(sde.ddpm_time_inverse(jnp.asarray(grid)), np.float64)
    return dict(final=out["final"], nn=nn, memorized=mem_along[-1], k_star=k_star, t_star=t_grid[k_star],
                u_star=u_grid[k_star], t_grid=t_grid, u_grid=u_grid, frac_same=same.mean(1),
                frac_decided=decided.mean(1), frac_memorized_along=mem_along.mean(1), tweedie_last=out["last"])


def decision_index(nn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nn (K+1, m): nearest-training-image index of each sample at grid steps k = 0 (T) .. K (t0).

    Returns (k_star (m,), same (K+1, m), decided (K+1, m)): same[k] = nn[k] == nn[K]; decided[k] = same[j] for every
    j >= k; k_star = the first k with decided[k] (K if the last step changed the nearest image)."""
    nn = np.asarray(nn)
    if nn.ndim != 2 or nn.shape[0] < 1:
        raise ValueError(f"nn must have shape (steps + 1, m), got {nn.shape}")
    same = nn == nn[-1][None]
    decided = np.flip(np.cumprod(np.flip(same, 0), 0), 0).astype(bool)
    return np.argmax(decided, axis=0), same, decided


def _quantiles(x: np.ndarray) -> Optional[dict]:
    if x.size == 0:
        return None
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    return dict(n=int(x.size), mean=float(x.mean()), q10=float(q[0]), q25=float(q[1]), median=float(q[2]),
                q75=float(q[3]), q90=float(q[4]))


def summarize_decisions(tr: dict) -> dict:
    mem = tr["memorized"]
    out = dict(num_samples=int(mem.size), memorization_ratio=float(mem.mean()),
               grid_u=tr["u_grid"].tolist(), grid_t=tr["t_grid"].tolist(),
               frac_same_nn_as_final=tr["frac_same"].tolist(), frac_decided=tr["frac_decided"].tolist(),
               frac_memorized_along=tr["frac_memorized_along"].tolist())
    for name, sel in (("all", np.ones_like(mem)), ("memorized", mem), ("not_memorized", ~mem)):
        out[f"decision_u_{name}"] = _quantiles(tr["u_star"][sel])
        out[f"decision_t_{name}"] = _quantiles(tr["t_star"][sel])
    return out


def swap_run(ctx: Context, name: str, base: int) -> Run:
    """The run (repeat 0 of `base`) the swap test uses for model `name`."""
    return Run(base, 0, name, ctx.s.prune.paper_eta if name in PRUNE_METHODS else None)


def where_decided(ctx: Context, results: list[dict]) -> dict:
    """The swap test of every pair on every base (repeat 0's models, on the keys and sample count of their own
    evaluation, so the endpoints are the runs' own memorization): at claims.swap_tau on every base, at every
    where.taus_u on base 0; and the trajectory decision times of base 0. Cached in <piece_dir>/where/."""
    s, model = ctx.s, ctx.model
    wdir = os.path.join(ctx.piece_dir, "where")
    u_min = s.diffusion.u_min
    by_id = {r["run"]: r for r in results}

    def cached(name, fn):
        p = os.path.join(wdir, f"{name}.json")
        v = io.read_json(p)
        if v is None:
            v = io.jsonable(fn())
            io.write_json(p, v)
            ctx.counters["where_computed"] += 1
        return v

    def mem_of(samples):
        r = neighbors.memorization(samples, ctx.images, s.eval.ratio)
        return dict(memorization_ratio=float(r["memorization_ratio"]), num_samples=int(len(samples)))

    out = {}
    if s.where.trajectory:
        cfg = dataclasses.replace(s.sampler, num_samples=s.where.num_samples,
                                  batch_size=min(s.sampler.batch_size, s.where.num_samples))
        out["trajectory"] = cached(f"trajectory_b0_m{s.where.num_samples}", lambda: summarize_decisions(
            trajectory_decisions(model, ctx.base_params(0), ctx.images, rng.stream(s.seed, "where", 0), cfg, u_min,
                                 s.eval.ratio)))
    bases = []
    for b in range(s.design.bases):
        key = rng.stream(s.seed, "samples", b, 0)
        taus = sorted(set(s.where.taus_u) | {s.claims.swap_tau}) if b == 0 else [s.claims.swap_tau]
        pairs = []
        for a_name, b_name in s.where.swap_pairs:
            ra, rb = swap_run(ctx, a_name, b), swap_run(ctx, b_name, b)
            if ra.id not in by_id or rb.id not in by_id:
                continue
            pa, ma = run_params(ctx, ra), mask_of(ctx, ra)
            pb, mb = run_params(ctx, rb), mask_of(ctx, rb)
            alone = lambda r: dict(memorization_ratio=by_id[r.id]["memorization_ratio"],   # noqa: E731
                                   num_samples=s.sampler.num_samples)
            cells = []
            for tau in taus:
                cell = dict(tau_u=tau, tau_t=float(sde.ddpm_time(tau)))
                cell["a_then_b"] = cached(f"{ra.id}_then_{rb.id}_{tau:g}", lambda: mem_of(
                    pruning.swap_sample(model, pa, ma, pb, mb, tau, key, s.sampler, u_min)))
                cell["b_then_a"] = cached(f"{rb.id}_then_{ra.id}_{tau:g}", lambda: mem_of(
                    pruning.swap_sample(model, pb, mb, pa, ma, tau, key, s.sampler, u_min)))
                cells.append(cell)
            pairs.append(dict(pair=[a_name, b_name], runs=[ra.id, rb.id], a_alone=alone(ra), b_alone=alone(rb),
                              taus=cells))
        bases.append(dict(base=b, pairs=pairs))
    out["swap"] = dict(note="a_then_b: model a for t > tau, model b for t <= tau (b_then_a: the reverse); tau in "
                            "unit time u, t = ddpm_time(u); memorization ratios of sampler.num_samples samples on the "
                            "keys of the runs' own evaluation (stream 'samples'/base/0), so a_alone and b_alone are "
                            "the runs' memorization; repeat 0's models of each base", bases=bases)
    return out
