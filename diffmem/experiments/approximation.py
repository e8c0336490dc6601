"""Approximation separation (arXiv 2511.03202, Section 5, Theorem 5.1).

Part 1 - network size needed. For every (n, width) a ReLU MLP (diffmem.models.mlp, fixed depth, time as an input)
is fitted by regression (diffmem.losses.make_regression_loss) to
  (i)  the empirical score score_hat of n training points, error weighted by sigma_t^4;
  (ii) the true mixture score, error weighted by sigma_t^2,
on inputs from the EMPIRICAL marginal P_hat_t (x = alpha_t x_i + sigma_t z, i uniform on the n points), as in the
theorem, with t log-uniform on [t0, T]. Evaluated on `eval_points` fresh draws at each of `eval_times` log-spaced
times (fixed key):
  err_t      = E_{P_hat_t} w_t ||s_theta - s*||^2     (the theorem's weighted error at time t)
  rel_err_t  = err_t / E_{P_hat_t} w_t ||s*||^2      (scale-free; w_t cancels at fixed t)
  rel_err_max = max_t rel_err_t                       (uniform in t, like the theorem's per-t bound)
W*(n) = the smallest width with rel_err_max <= target_eps, found by log-log interpolation between neighbouring
widths (null when even the widest net misses eps); the log-log slope of W*(n) is fitted by least squares.
Theorem 5.1: W* = O~(n) for (i) and independent of n for (ii).

Why relative and per t: an absolute error integrated over t lets a trivial network win. Near a training point at
small t the empirical score is ~ -(x - alpha_t x_i) / sigma_t^2, of squared norm ~ d / sigma_t^2, so the
sigma_t^4-weighted error of the network s = 0 is only ~ sigma_t^2 d there: the integrated absolute error is
dominated by large t where the two targets agree. Relative to w_t ||s*||^2 the network s = 0 scores exactly 1 at
every t: to do better at small t a network must locate the n training points to within sigma_t, which is where its
size has to grow with n. The window [t0, T] = [0.03, 1] (d = 2) is where the targets differ (beyond t ~ 1 the
empirical score is the smooth true one at these n; far below t0 no CPU-sized net reaches any eps even for n = 4
within the step budget). What is measured is approximation AND optimisation (Adam, a fixed number of steps): a
trained width reaching eps shows the width suffices; missing it does not show that it cannot.

Members sharing a width (all n, both targets, all seeds) train together as one vmapped jit step
(diffmem.training.train_sweep, padded + masked data, per-member target flag).

Part 2 - exact attention form. For isotropic equal covariances both scores are ONE softmax-attention layer
(`attention_score`): query alpha_t x / v_t, keys = values = the n training points (empirical, v_t = sigma_t^2) or
the K means (mixture with Sigma = s^2 I, v_t = alpha_t^2 s^2 + sigma_t^2), key bias -alpha_t^2 ||k_j||^2 / (2 v_t)
+ log w_j, output (alpha_t * attention - x) / v_t. Parameters: n d (the data) against K d (+1 for s^2): the
empirical score needs a layer that grows with n, the true score does not. The table reports the max
|attention - closed form| against diffmem.scores.empirical_score / mixture_score.

Randomness (diffmem.rng, under the root key of config.seed): "data" (then "mixture", and "points" with training
point i at index i, so the first n points do not depend on the largest n), "fit" (then "init" / "train" per member
seed), "eval" (then "data", "noise"), and the attention check of dimension d at index attention + d.
Resume: each finished (width, n, target, seed) cell is written to <workdir>/cells/<settings hash>/; the groups keep
orbax checkpoints in <workdir>/groups/ and resume mid-training.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import config as config_lib
from diffmem import io, losses, plots, rng, sampling, scores, sde, training
from diffmem.config import LAB_TIME_DISTS, MLPConfig, Schema, TrainConfig, field
from diffmem.models import mlp

Array = jax.Array
KINDS = ("empirical", "true")


# ------------------------------------------------------------------------------------------------ config

@dataclasses.dataclass(frozen=True)
class DataConfig(Schema):
    """config.data: training points are the first n draws from P = (1/K) sum N(mu_k, I_d), mu_k ~ N(0, mean_std^2
    I_d)."""
    dim: int = field(2, min=1)
    num_components: int = field(4, min=1)
    mean_std: float = field(2.0, min=0, min_open=True)
    ns: tuple[int, ...] = field((4, 8, 16, 32), item_min=2, nonempty=True)

    def check(self):
        if len(set(self.ns)) != len(self.ns):
            raise self.fail("ns", f"must be distinct, got {list(self.ns)}")


@dataclasses.dataclass(frozen=True)
class RegressionConfig(Schema):
    """config.regression: inputs x ~ P_hat_t with t on [t0, T] (`time_dist`); errors evaluated at `eval_times`
    log-spaced times with `eval_points` draws each."""
    t0: float = field(0.03, min=0, min_open=True)
    T: float = field(1.0, min=0, min_open=True)
    time_dist: str = field("log_uniform", choices=LAB_TIME_DISTS)
    eval_points: int = field(4096, min=1)
    eval_times: int = field(8, min=1)

    def check(self):
        if not self.T > self.t0:
            raise self.fail("T", f"must exceed t0={self.t0:g}, got {self.T:g}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig(Schema):
    """config.attention: the exact one-layer attention forms, checked against the closed-form scores."""
    ns: tuple[int, ...] = field((16, 256), item_min=2, nonempty=True)
    dims: tuple[int, ...] = field((2,), item_min=1, nonempty=True)
    num_components: int = field(4, min=1)
    num_queries: int = field(256, min=1)
    times: tuple[float, ...] = field((1e-3, 1.0), item_min=0, item_open=(True, False), nonempty=True)


@dataclasses.dataclass(frozen=True)
class Settings(Schema):
    """configs/approximation.py, validated."""
    experiment: str = field("approximation", choices=("approximation",))
    seed: int = field(0, min=0)
    preset: str = field("")
    widths: tuple[int, ...] = field((16, 32), item_min=1, nonempty=True)
    target_eps: tuple[float, ...] = field((0.3,), item_min=0, item_max=1, item_open=(True, True), nonempty=True,
                                          help="max-over-t relative weighted errors defining W*(n)")
    seeds: tuple[int, ...] = field((0,), item_min=0, nonempty=True)
    progress: bool = field(True)
    data: DataConfig = field(DataConfig())
    model: MLPConfig = field(MLPConfig(depth=2))
    train: TrainConfig = field(TrainConfig())
    regression: RegressionConfig = field(RegressionConfig())
    attention: AttentionConfig = field(AttentionConfig())

    def check(self):
        for name in ("widths", "seeds", "target_eps"):
            v = getattr(self, name)
            if len(set(v)) != len(v):
                raise self.fail(name, f"must be distinct, got {list(v)}")

    @property
    def ns(self) -> list[int]:
        return sorted(self.data.ns)

    @property
    def width_list(self) -> list[int]:
        return sorted(self.widths)

    def model_for(self, width: int) -> mlp.ScoreMLP:
        kw = dataclasses.asdict(self.model)
        if kw["output"] == "edm" and not kw["sigma_data"] > 0:
            kw["sigma_data"] = math.sqrt(self.data.mean_std ** 2 + 1.0)   # per-coordinate std of the mixture
        return mlp.ScoreMLP(dim=self.data.dim, width=width, **kw)

    def cell_hash(self) -> str:
        """Hash of every setting that changes a cell's numbers (not the sweep lists)."""
        data = {k: v for k, v in dataclasses.asdict(self.data).items() if k != "ns"}
        return io.hash_json({"seed": self.seed, "data": data, "model": dataclasses.asdict(self.model),
                             "train": dataclasses.asdict(self.train),
                             "regression": dataclasses.asdict(self.regression)}, 10)


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming config.<section>.<field> for anything unknown or out of range."""
    return config_lib.parse_config(Settings, config)


# --------------------------------------------------------------------------- attention form (Part 2)

def attention_score(x: Array, t: Array, keys: Array, var: Array, log_weights: Optional[Array] = None) -> Array:
    """One softmax-attention layer computing a Gaussian-mixture score with isotropic components.

    x (m, d) queries, t (m,) times, keys (J, d) (= values), var (m,) the component variance v_t at time t,
    log_weights (J,) or None (equal weights). Returns (m, d):
        (alpha_t softmax_j(<alpha_t x / v_t, k_j> - alpha_t^2 ||k_j||^2 / (2 v_t) + log w_j) @ K - x) / v_t,
    the score of sum_j w_j N(alpha_t k_j, v_t I).
    """
    a = sde.alpha(t)[:, None]                                             # (m, 1)
    v = var[:, None]                                                      # (m, 1)
    logits = (a / v) * (x @ keys.T) - (a * a / (2.0 * v)) * jnp.sum(keys * keys, -1)[None]   # (m, J)
    if log_weights is not None:
        logits = logits + log_weights[None]
    attn = jax.nn.softmax(logits, -1)                                     # (m, J)
    return (a * (attn @ keys) - x) / v


def empirical_attention(data: Array) -> dict:
    """Attention parameters of the empirical score: keys = values = the n training points (n d numbers)."""
    data = jnp.asarray(data, jnp.float32)
    return {"keys": data, "cov_scale2": None, "log_weights": None}


def mixture_attention(mix: scores.GaussianMixture) -> dict:
    """Attention parameters of the true score of an isotropic equal-covariance mixture: keys = the K means,
    Sigma = s^2 I (K d + 1 numbers, + K log-weights when unequal). ValueError for other covariances."""
    ev = np.asarray(mix.eigvals)  # all eigenvalues equal <=> every Sigma_k = s^2 I, whatever the eigenvectors
    if not np.allclose(ev, ev.flat[0], rtol=1e-6):
        raise ValueError(f"mixture_attention needs one shared isotropic covariance s^2 I, got eigenvalues "
                         f"ranging {ev.min():.4g}..{ev.max():.4g}")
    w = np.asarray(mix.weights)
    lw = None if np.allclose(w, w[0]) else jnp.log(mix.weights)
    return {"keys": mix.means, "cov_scale2": float(ev.flat[0]), "log_weights": lw}


def attention_param_count(att: dict) -> int:
    """Numbers stored by the layer: keys (= values) J d, + 1 for s^2, + J log-weights when present."""
    j, d = att["keys"].shape
    return j * d + (att["cov_scale2"] is not None) + (0 if att["log_weights"] is None else j)


def attention_apply(att: dict, x: Array, t: Array) -> Array:
    """Score of the attention layer `att` (from empirical_attention / mixture_attention). x (m, d), t (m,)."""
    a2, s2 = sde.alpha(t) ** 2, sde.sigma2(t)
    var = s2 if att["cov_scale2"] is None else a2 * att["cov_scale2"] + s2
    return attention_score(x, t, att["keys"], var, att["log_weights"])


def attention_table(seed: int, a: AttentionConfig, mean_std: float) -> list:
    """Side-by-side rows: for each (d, n, t): params of the empirical vs true attention layers and the max abs /
    relative deviation from scores.empirical_score / scores.mixture_score on P_hat_t queries."""
    rows = []
    for d in a.dims:
        key = rng.stream(seed, rng.index("attention") + d)
        mix = scores.random_mixture(rng.stream(key, "mixture"), a.num_components, d, mean_std)
        for n in a.ns:
            data = scores.sample_mixture(rng.stream(key, n), mix, n)                    # (n, d)
            emp, tru = empirical_attention(data), mixture_attention(mix)
            for t in a.times:
                tq = jnp.full((a.num_queries,), float(t))
                idx = jax.random.randint(rng.stream(key, 7 * n + 1), (a.num_queries,), 0, n)
                x, _ = sde.marginal_sample(rng.stream(key, 7 * n + 2), data[idx], tq)     # (q, d)
                ref_e, ref_t = scores.empirical_score(x, tq, data), scores.mixture_score(x, tq, mix)
                got_e, got_t = attention_apply(emp, x, tq), attention_apply(tru, x, tq)
                err = lambda u, v: float(jnp.max(jnp.abs(u - v)))
                rel = lambda u, v: float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
                rows.append({"dim": d, "n": n, "K": a.num_components, "t": float(t),
                             "params_empirical": attention_param_count(emp), "params_true": attention_param_count(tru),
                             "max_abs_err_empirical": err(got_e, ref_e), "max_abs_err_true": err(got_t, ref_t),
                             "max_rel_err_empirical": rel(got_e, ref_e), "max_rel_err_true": rel(got_t, ref_t)})
    return rows


# ----------------------------------------------------------------------------- regression (Part 1)

def evaluate_members(apply_fn, params, data, counts, is_emp, mix, times, key, num_points):
    """Per-time errors of stacked members on `num_points` fresh P_hat_t draws per time (same key for all).

    params stacked (M, ...), data (M, n_max, d), counts (M,), is_emp (M,); x0 from stream(key, "data"), noise from
    stream(key, "noise"). Returns err (M, len(times)) = E w_t ||s_theta - s*||^2 and rel (M, len(times)) =
    err / E w_t ||s*||^2.
    """
    times = jnp.asarray(times, jnp.float32)
    nt = times.shape[0]
    k_data, k_noise = rng.stream(key, "data"), rng.stream(key, "noise")

    def one(p, d, c, e):
        member = {"data": d, "count": c, "extra": e}
        x0 = training.masked_batch(k_data, d, c, nt * num_points)                                  # (T P, d)
        t = jnp.repeat(times, num_points)                                                          # (T P,)
        err, norm = losses.regression_errors(apply_fn, p, k_noise, x0, t, member, mix)            # (T P,) x 2
        err, norm = err.reshape(nt, num_points).mean(1), norm.reshape(nt, num_points).mean(1)     # (T,) x 2
        return err, err / norm
    return jax.jit(jax.vmap(one))(params, data, counts, is_emp)


def width_star(widths, rel_errs, eps: float) -> Optional[float]:
    """Smallest width with rel_err <= eps, log-log interpolated between the neighbouring widths; None if no width
    reaches eps. rel_errs need not be monotone: the first crossing from above counts."""
    w = np.asarray(widths, float)
    e = np.asarray(rel_errs, float)
    if e[0] <= eps:
        return float(w[0])
    for i in range(1, len(w)):
        if e[i] <= eps:
            f = (math.log(e[i - 1]) - math.log(eps)) / (math.log(e[i - 1]) - math.log(e[i]))
            return float(math.exp(math.log(w[i - 1]) + f * (math.log(w[i]) - math.log(w[i - 1]))))
    return None


def loglog_slope(xs, ys) -> Optional[float]:
    """Least-squares slope of log y on log x over the finite entries (None with fewer than 2)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    a = np.asarray(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


# ------------------------------------------------------------------------------------------------ run

def mixture_and_points(s: Settings):
    """The mixture and the first max(ns) training points (n_max, d); point i from stream(seed, "data", "points",
    i), so every prefix is the same whatever the largest n."""
    key = rng.stream(s.seed, "data")
    mix = scores.random_mixture(rng.stream(key, "mixture"), s.data.num_components, s.data.dim, s.data.mean_std)
    keys = sampling.per_sample_keys(rng.stream(key, "points"), max(s.ns))                       # (n_max,)
    pts = np.asarray(jax.vmap(lambda k: scores.sample_mixture(k, mix, 1)[0])(keys))              # (n_max, d)
    return mix, pts


def _cell_id(width: int, n: int, kind: str, seed: int) -> str:
    return f"w{width}_n{n}_{kind}_s{seed}"


def run(config, workdir: str) -> dict:
    """Runs (or resumes) both parts; writes results.json and approximation.png. See the module docstring."""
    tic = time.perf_counter()
    s = parse_config(config)
    wd = io.path(workdir)
    cell_dir = io.makedirs(wd / "cells" / s.cell_hash())
    mix, pts = mixture_and_points(s)
    ns, reg = s.ns, s.regression
    times = np.geomspace(reg.t0, reg.T, reg.eval_times)                                         # (T,)
    members = [(n, kind, seed) for n in ns for kind in KINDS for seed in s.seeds]
    data, mask = training.pad_datasets([pts[:n] for n, _, _ in members])                         # (M, n_max, d)
    counts = training.mask_counts(mask)                                                           # (M,)
    is_emp = jnp.asarray([1.0 if kind == "empirical" else 0.0 for _, kind, _ in members])        # (M,)
    group_timings = []
    for width in s.width_list:
        ids = [_cell_id(width, n, kind, seed) for n, kind, seed in members]
        if all(io.exists(cell_dir / f"{i}.json") for i in ids):
            continue
        model = s.model_for(width)
        apply_fn = mlp.make_apply(model)
        n_params = mlp.mlp_param_count(model.dim, width, model.depth, model.time_embed, model.embed_dim)
        logging.info("approximation: width %d (%d params), %d members", width, n_params, len(members))
        key = rng.stream(s.seed, "fit")
        params = training.init_members(lambda k: mlp.init_params(model, k),
                                       jnp.stack([rng.stream(key, "init", sd) for _, _, sd in members]))
        mkeys = jnp.stack([rng.stream(key, "train", sd) for _, _, sd in members])
        loss = losses.make_regression_loss(apply_fn, mix, reg.t0, reg.T, reg.time_dist)
        t_start = time.perf_counter()
        states, hist = training.train_sweep(
            loss, params, data, mask, [s.train.weight_decay] * len(members), mkeys, s.train,
            os.fspath(wd / "groups" / s.cell_hash() / f"w{width}"), s.progress, f"width {width}", extra=is_emp)
        train_s = time.perf_counter() - t_start
        err_t, rel_t = evaluate_members(apply_fn, states.ema_params, jnp.asarray(data), jnp.asarray(counts), is_emp,
                                        mix, times, rng.stream(s.seed, "eval"), reg.eval_points)
        err_t, rel_t = np.asarray(err_t), np.asarray(rel_t)                                      # (M, T) x 2
        for i, ((n, kind, seed), cid) in enumerate(zip(members, ids)):
            io.write_json(cell_dir / f"{cid}.json", {
                "width": width, "n": n, "kind": kind, "seed": seed, "params": n_params,
                "times": times.tolist(), "err_t": err_t[i].tolist(), "rel_err_t": rel_t[i].tolist(),
                "rel_err_max": float(rel_t[i].max()), "rel_err_mean": float(rel_t[i].mean()),
                "err_mean": float(err_t[i].mean()), "final_train_loss": hist[-1]["loss"][i]})
        group_timings.append({"width": width, "members": len(members), "train_seconds": train_s})

    cells = {}
    for width in s.width_list:
        for n, kind, seed in members:
            cid = _cell_id(width, n, kind, seed)
            cells[cid] = io.read_json(cell_dir / f"{cid}.json")
    results = assemble(s, cells)
    logging.info("approximation: attention table")
    results["attention"] = attention_table(s.seed, s.attention, s.data.mean_std)
    results["group_timings"] = group_timings
    results["wall_seconds"] = time.perf_counter() - tic
    results["config_hash"] = s.cell_hash()
    make_plot(results, wd / "approximation.png")
    io.write_json(wd / "results.json", results)
    for k, v in results["width_star"].items():
        logging.info("W*(n) %s: %s (log-log slope %s)", k, v, results["width_star_loglog_slope"][k])
    return results


def assemble(s: Settings, cells: dict) -> dict:
    """Tables (kind -> (widths, ns), seed-averaged), W*(n) per target eps on rel_err_max, log-log slopes."""
    ns, widths = s.ns, s.width_list
    tables = {}
    for kind in KINDS:
        tables[kind] = {key: [[float(np.mean([cells[_cell_id(w, n, kind, sd)][key] for sd in s.seeds]))
                               for n in ns] for w in widths] for key in ("rel_err_max", "rel_err_mean", "err_mean")}
        tables[kind]["rel_err_t_widest"] = [np.mean([cells[_cell_id(widths[-1], n, kind, sd)]["rel_err_t"]
                                                     for sd in s.seeds], 0).tolist() for n in ns]
    params = [cells[_cell_id(w, ns[0], KINDS[0], s.seeds[0])]["params"] for w in widths]
    wstar, slopes = {}, {}
    for eps in s.target_eps:
        for kind in KINDS:
            rel = np.asarray(tables[kind]["rel_err_max"])             # (widths, ns)
            ws = [width_star(widths, rel[:, j], eps) for j in range(len(ns))]
            wstar[f"{kind}@{eps:g}"] = ws
            slopes[f"{kind}@{eps:g}"] = loglog_slope(ns, ws)
    # Error at fixed width against n: the empirical target gets harder with n, the true one does not.
    err_slopes = {kind: [loglog_slope(ns, row) for row in tables[kind]["rel_err_max"]] for kind in KINDS}
    summary = {
        "empirical_wstar_grows_with_n": {f"{eps:g}": _grows(wstar[f"empirical@{eps:g}"], widths[-1])
                                         for eps in s.target_eps},
        "true_wstar_does_not_grow_with_n": {f"{eps:g}": _not_growing(wstar[f"true@{eps:g}"], widths)
                                            for eps in s.target_eps},
    }
    return {"experiment": "approximation", "ns": ns, "widths": widths, "params": params,
            "depth": s.model.depth, "target_eps": list(s.target_eps),
            "times": cells[_cell_id(widths[0], ns[0], KINDS[0], s.seeds[0])]["times"], "errors": tables,
            "width_star": wstar, "width_star_loglog_slope": slopes, "rel_err_vs_n_loglog_slope": err_slopes,
            "summary": summary, "cells": cells}


def _grows(ws, w_max) -> dict:
    """W* at the largest n exceeds W* at the smallest n (a missing W* counts as > the widest net)."""
    first = ws[0] if ws[0] is not None else math.inf
    last = ws[-1] if ws[-1] is not None else math.inf
    held = math.isfinite(first) and last > first
    return {"held": bool(held), "wstar_smallest_n": ws[0], "wstar_largest_n": ws[-1],
            "note": None if ws[-1] is not None else f"largest n not reached by the widest net: W* > {w_max}"}


def _not_growing(ws, widths) -> dict:
    """All W* finite and none above one width-grid step (the largest ratio of neighbouring widths) times
    W*(smallest n): the width needed does not grow with n. A W* equal to widths[0] is only an upper bound."""
    if any(w is None for w in ws):
        return {"held": False, "wstar": ws, "note": "some n not reached by the widest net"}
    step = max(b / a for a, b in zip(widths[:-1], widths[1:])) if len(widths) > 1 else 1.0
    return {"held": bool(max(ws) <= step * ws[0]), "max_over_first": max(ws) / ws[0], "grid_step": step,
            "note": "W* = smallest width of the grid is an upper bound" if min(ws) <= widths[0] else None}


def make_plot(results: dict, path) -> None:
    """Left: rel_err_max vs width per n (solid empirical, dashed true). Middle: per-t relative error of the widest
    net. Right: W*(n) on log-log axes."""
    plt = plots.pyplot()
    ns, widths = results["ns"], results["widths"]
    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("viridis")
    for j, n in enumerate(ns):
        c = cmap(j / max(len(ns) - 1, 1))
        a1.plot(widths, [r[j] for r in results["errors"]["empirical"]["rel_err_max"]], "-o", c=c, ms=3,
                label=f"n={n} empirical")
        a1.plot(widths, [r[j] for r in results["errors"]["true"]["rel_err_max"]], "--s", c=c, ms=3,
                label=f"n={n} true")
        a3.plot(results["times"], results["errors"]["empirical"]["rel_err_t_widest"][j], "-o", c=c, ms=3,
                label=f"n={n} empirical")
        a3.plot(results["times"], results["errors"]["true"]["rel_err_t_widest"][j], "--s", c=c, ms=3,
                label=f"n={n} true")
    for eps in results["target_eps"]:
        a1.axhline(eps, c="gray", lw=0.8, ls=":")
    a1.set(xscale="log", yscale="log", xlabel="width W", ylabel="max over t of relative weighted error",
           title=f"fit error (depth {results['depth']})")
    a1.set_xscale("log", base=2)
    a1.legend(fontsize=6, ncol=2)
    a3.set(xscale="log", yscale="log", xlabel="t", ylabel="relative weighted error at t",
           title=f"per-t error, width {widths[-1]}")
    a3.legend(fontsize=6, ncol=2)
    for eps in results["target_eps"]:
        for kind, ls in (("empirical", "-o"), ("true", "--s")):
            ws = results["width_star"][f"{kind}@{eps:g}"]
            xs = [n for n, w in zip(ns, ws) if w is not None]
            ys = [w for w in ws if w is not None]
            slope = results["width_star_loglog_slope"][f"{kind}@{eps:g}"]
            lab = f"{kind}, eps={eps:g}" + (f" (slope {slope:.2f})" if slope is not None else "")
            a2.plot(xs, ys, ls, label=lab)
    if any(w is not None for ws in results["width_star"].values() for w in ws):
        a2.set_xscale("log", base=2)
        a2.set_yscale("log", base=2)
    else:
        a2.text(0.5, 0.5, "no width reached any target eps", ha="center", transform=a2.transAxes)
    a2.set(xlabel="n", ylabel="W* (smallest width reaching eps)", title="Theorem 5.1: W*(n)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)
