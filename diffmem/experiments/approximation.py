"""Approximation separation (PAPER.md section 3, Theorem 5.1).

Part 1 - network size needed. For every (n, width) a ReLU MLP (diffmem.models.mlp, fixed depth, time as an
input) is fitted by regression to
  (i)  the empirical score score_hat of n training points, error weighted by sigma_t^4;
  (ii) the true mixture score, error weighted by sigma_t^2,
on inputs from the EMPIRICAL marginal P_hat_t (x = alpha_t x_i + sigma_t z, i uniform on the n points), as in
the theorem, with t log-uniform on [t0, T]. Evaluated on `eval_points` fresh draws at each of `eval_times`
log-spaced times (fixed key):
  err_t      = E_{P_hat_t} w_t ||s_theta - s*||^2     (the theorem's weighted error at time t)
  rel_err_t  = err_t / E_{P_hat_t} w_t ||s*||^2      (scale-free; w_t cancels at fixed t)
  rel_err_max = max_t rel_err_t                       (uniform in t, like the theorem's per-t bound)
W*(n) = the smallest width with rel_err_max <= target_eps, found by log-log interpolation between
neighbouring widths (null when even the widest net misses eps); the log-log slope of W*(n) is fitted by
least squares. Theorem 5.1: W* = O~(n) for (i) and independent of n for (ii).

Why relative and per t: an absolute error integrated over t lets a trivial network win. At small t the
sigma_t^4-weighted error of the network "s = -x / sigma_t^2" (denoiser D = 0) is only sigma_t^2 d, so the
integrated absolute error is dominated by large t where the two targets agree (measured: it even decreased
with n). Relative to w_t ||s*||^2 that network scores 1 at every t: to do better at small t it must locate
the n training points to within sigma_t, which is where the size has to grow with n. The default window
[t0, T] = [0.03, 1] (d = 2) is where the targets differ (beyond t ~ 1 the empirical score is the smooth
true one at these n; far below t0 no CPU-sized net reaches any eps even for n = 4 within the step budget).
What is measured is approximation AND optimisation (Adam, a fixed number of steps): a trained width
reaching eps proves the width suffices; missing it does not prove it cannot.

Members sharing a width (all n, both targets, all seeds) train together as one vmapped jit step
(diffmem.gmm_lab.train_sweep, padded + masked data, per-member target flag).

Part 2 - exact attention form. For isotropic equal covariances both scores are ONE softmax-attention layer
(`attention_score`): query alpha_t x / v_t, keys = values = the n training points (empirical, v_t = sigma_t^2)
or the K means (mixture with Sigma = s^2 I, v_t = alpha_t^2 s^2 + sigma_t^2), key bias -alpha_t^2 ||k_j||^2
/ (2 v_t) + log w_j, output (alpha_t * attention - x) / v_t. Parameters: n d (the data) against K d (+1 for
s^2): the empirical score needs a layer that grows with n, the true score does not. The table reports the
max |attention - closed form| against diffmem.scores.empirical_score / mixture_score.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import experiments, gmm_lab, scores, sde, train
from diffmem.models import mlp

Array = jax.Array
KINDS = ("empirical", "true")
SECTIONS = {
    "data": ("dim", "num_components", "mean_std", "ns"),
    "model": ("depth", "time_embed", "embed_dim", "output", "sigma_data"),
    "train": ("steps", "batch_size", "lr", "warmup_steps", "schedule", "grad_clip", "ema_decay", "weight_decay",
              "b1", "b2", "log_every", "ckpt_every", "keep_ckpts"),
    "regression": ("t0", "T", "time_dist", "eval_points", "eval_times"),
    "attention": ("ns", "dims", "num_components", "num_queries", "times"),
}
TOP_LEVEL = ("experiment", "seed", "preset", "widths", "target_eps", "seeds", "progress") + tuple(SECTIONS)


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


def attention_table(seed: int, ns, dims, num_components: int, mean_std: float, num_queries: int, times) -> list:
    """Side-by-side rows: for each (d, n, t): params of the empirical vs true attention layers and the max
    abs / relative deviation from scores.empirical_score / scores.mixture_score on P_hat_t queries."""
    rows = []
    for d in dims:
        key = jax.random.fold_in(jax.random.key(seed), 100 + d)
        mix = scores.random_mixture(jax.random.fold_in(key, 0), num_components, d, mean_std)
        for n in ns:
            data = scores.sample_mixture(jax.random.fold_in(key, n), mix, n)
            emp, tru = empirical_attention(data), mixture_attention(mix)
            for t in times:
                tq = jnp.full((num_queries,), float(t))
                idx = jax.random.randint(jax.random.fold_in(key, 7 * n + 1), (num_queries,), 0, n)
                x, _ = sde.marginal_sample(jax.random.fold_in(key, 7 * n + 2), data[idx], tq)
                ref_e, ref_t = scores.empirical_score(x, tq, data), scores.mixture_score(x, tq, mix)
                got_e, got_t = attention_apply(emp, x, tq), attention_apply(tru, x, tq)
                err = lambda a, b: float(jnp.max(jnp.abs(a - b)))
                rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                rows.append({"dim": d, "n": n, "K": num_components, "t": float(t),
                             "params_empirical": attention_param_count(emp), "params_true": attention_param_count(tru),
                             "max_abs_err_empirical": err(got_e, ref_e), "max_abs_err_true": err(got_t, ref_t),
                             "max_rel_err_empirical": rel(got_e, ref_e), "max_rel_err_true": rel(got_t, ref_t)})
    return rows


# ----------------------------------------------------------------------------- regression (Part 1)

def make_regression_loss(apply_fn, mix: scores.GaussianMixture, t0: float, t1: float,
                         time_dist: str = "log_uniform"):
    """loss(params, key, batch (b, d), member) for gmm_lab.train_sweep(extra=is_empirical (M,)).

    x0 = batch (uniform over the member's n points), t on [t0, T] (`time_dist`), x = alpha_t x0 + sigma_t z
    (so x ~ P_hat_t); target = score_hat(x, t) of the member's points with weight sigma_t^4 (member extra = 1),
    or the true mixture score with weight sigma_t^2 (extra = 0). Returns (mean weighted squared error, {}).
    """
    def loss(params, key, batch, member):
        kt, kx = jax.random.split(key)
        t = sde.sample_time(kt, batch.shape[:1], t0, t1, time_dist)                  # (b,)
        err, _ = weighted_errors(apply_fn, params, kx, batch, t, member, mix)
        return jnp.mean(err), {}
    return loss


def weighted_errors(apply_fn, params, key, x0, t, member, mix):
    """Per-draw w_t ||s_theta - s*||^2 and w_t ||s*||^2 at x = alpha_t x0 + sigma_t z ~ P_hat_t.

    x0 (b, d), t (b,); member {"data" (n_max, d), "count" (), "extra" () > 0 for the empirical target}.
    Returns (b,), (b,).
    """
    x, _ = sde.marginal_sample(key, x0, t)                                         # (b, d) ~ P_hat_t
    data, count = member["data"], member["count"]
    mask = (jnp.arange(data.shape[0]) < count).astype(x.dtype)                      # (n_max,)
    s_emp = scores.score_from_stats(scores.empirical_stats(x, t, data, mask), x, t)
    s_true = scores.mixture_score(x, t, mix)
    is_emp = member["extra"] > 0
    target = jnp.where(is_emp, s_emp, s_true)                                      # (b, d)
    s2 = sde.sigma2(t)
    w = jnp.where(is_emp, s2 * s2, s2)                                             # (b,)
    err = w * jnp.sum((apply_fn(params, x, t) - target) ** 2, -1)
    return err, w * jnp.sum(target ** 2, -1)


def evaluate_members(apply_fn, params, data, counts, is_emp, mix, times, key, num_points):
    """Per-time errors of stacked members on `num_points` fresh P_hat_t draws per time (same key for all).

    Returns err (M, len(times)) = E w_t ||s_theta - s*||^2 and rel (M, len(times)) = err / E w_t ||s*||^2.
    """
    times = jnp.asarray(times, jnp.float32)
    nt = times.shape[0]

    def one(p, d, c, e):
        member = {"data": d, "count": c, "extra": e}
        x0 = gmm_lab.masked_batch(jax.random.fold_in(key, 0), d, c, nt * num_points)     # (T P, d)
        t = jnp.repeat(times, num_points)                                                 # (T P,)
        err, norm = weighted_errors(apply_fn, p, jax.random.fold_in(key, 1), x0, t, member, mix)
        err, norm = err.reshape(nt, num_points).mean(1), norm.reshape(nt, num_points).mean(1)
        return err, err / norm
    return jax.jit(jax.vmap(one))(params, data, counts, is_emp)


def width_star(widths, rel_errs, eps: float) -> Optional[float]:
    """Smallest width with rel_err <= eps, log-log interpolated between the neighbouring widths; None if no
    width reaches eps. rel_errs need not be monotone: the first crossing from above counts."""
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


# --------------------------------------------------------------------------------------- config

def _ints(name, v, minimum=1):
    v = list(v)
    if not v or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < minimum for x in v):
        raise ValueError(f"{name} must be a non-empty list of ints >= {minimum}, got {v}")
    return [int(x) for x in v]


@dataclasses.dataclass(frozen=True)
class Settings:
    seed: int
    data: dict
    model: dict
    train: train.TrainConfig
    regression: dict
    attention: dict
    widths: tuple
    target_eps: tuple
    seeds: tuple
    progress: bool

    def cell_hash(self) -> str:
        blob = json.dumps({"seed": self.seed, "data": {k: v for k, v in self.data.items() if k != "ns"},
                           "model": self.model, "train": dataclasses.asdict(self.train),
                           "regression": self.regression}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming the field for anything unknown or out of range."""
    unknown = sorted(set(config.keys()) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; accepted: {list(TOP_LEVEL)}")
    sec = {k: experiments.config_section(config, k, SECTIONS[k]) for k in SECTIONS}
    data = sec["data"]
    data["ns"] = sorted(set(_ints("config.data.ns", data["ns"], 2)))
    for k in ("dim", "num_components"):
        _ints(f"config.data.{k}", [data[k]])
    if not float(data["mean_std"]) > 0:
        raise ValueError(f"config.data.mean_std must be > 0, got {data['mean_std']}")
    model, reg = sec["model"], sec["regression"]
    tcfg = gmm_lab.check_lab_config(model, sec["train"], reg, "regression")
    _ints("config.regression.eval_points", [reg["eval_points"]])
    _ints("config.regression.eval_times", [reg["eval_times"]])
    att = sec["attention"]
    _ints("config.attention.ns", att["ns"], 2)
    _ints("config.attention.dims", att["dims"])
    _ints("config.attention.num_components", [att["num_components"]])
    _ints("config.attention.num_queries", [att["num_queries"]])
    if not list(att["times"]) or any(not float(t) > 0 for t in att["times"]):
        raise ValueError(f"config.attention.times must be a non-empty list of times > 0, got {list(att['times'])}")
    eps = config.target_eps
    eps = tuple(float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps]))
    if not eps or any(not 0 < e < 1 for e in eps):
        raise ValueError(f"config.target_eps must be relative errors in (0, 1), got {config.target_eps}")
    widths = tuple(sorted(set(_ints("config.widths", config.widths))))
    seeds = tuple(_ints("config.seeds", config.seeds, 0))
    return Settings(seed=int(config.seed), data=data, model=model, train=tcfg,
                    regression=dict(t0=float(reg["t0"]), T=float(reg["T"]), time_dist=reg["time_dist"],
                                    eval_points=int(reg["eval_points"]), eval_times=int(reg["eval_times"])),
                    attention=att, widths=widths, target_eps=eps, seeds=seeds,
                    progress=bool(config.get("progress", True)))


# ------------------------------------------------------------------------------------------ run

def _mixture_and_points(s: Settings):
    d = s.data
    key = jax.random.fold_in(jax.random.key(s.seed), 0)
    mix = scores.random_mixture(jax.random.fold_in(key, 0), d["num_components"], d["dim"], float(d["mean_std"]))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, 1), i))(jnp.arange(max(d["ns"])))
    pts = np.asarray(jax.vmap(lambda k: scores.sample_mixture(k, mix, 1)[0])(keys))  # prefix-stable draws
    return mix, pts


def _cell_id(width: int, n: int, kind: str, seed: int) -> str:
    return f"w{width}_n{n}_{kind}_s{seed}"


def run(config, workdir: str) -> dict:
    """Runs (or resumes) both parts; writes results.json and approximation.png. See the module docstring."""
    tic = time.perf_counter()
    s = parse_config(config)
    cell_dir = os.path.join(workdir, "cells", s.cell_hash())
    os.makedirs(cell_dir, exist_ok=True)
    mix, pts = _mixture_and_points(s)
    ns, reg = s.data["ns"], s.regression
    times = np.geomspace(reg["t0"], reg["T"], reg["eval_times"])
    model_kw = dict(s.model)
    if model_kw["output"] == "edm" and not model_kw["sigma_data"] > 0:
        model_kw["sigma_data"] = math.sqrt(float(s.data["mean_std"]) ** 2 + 1.0)
    members = [(n, kind, seed) for n in ns for kind in KINDS for seed in s.seeds]
    data, mask = gmm_lab.pad_datasets([pts[:n] for n, _, _ in members])
    counts = gmm_lab.mask_counts(mask)
    is_emp = jnp.asarray([1.0 if kind == "empirical" else 0.0 for _, kind, _ in members])
    group_timings = []
    for width in s.widths:
        ids = [_cell_id(width, n, kind, seed) for n, kind, seed in members]
        if all(os.path.exists(os.path.join(cell_dir, i + ".json")) for i in ids):
            continue
        model = mlp.ScoreMLP(dim=s.data["dim"], width=width, **model_kw)
        apply_fn = mlp.make_apply(model)
        n_params = mlp.mlp_param_count(model.dim, width, model.depth, model.time_embed, model.embed_dim)
        logging.info("approximation: width %d (%d params), %d members", width, n_params, len(members))
        key = jax.random.fold_in(jax.random.key(s.seed), 1)
        params = gmm_lab.init_members(lambda k: mlp.init_params(model, k),
                                      jnp.stack([jax.random.fold_in(jax.random.fold_in(key, 0), sd)
                                                 for _, _, sd in members]))
        mkeys = jnp.stack([jax.random.fold_in(jax.random.fold_in(key, 1), sd) for _, _, sd in members])
        loss = make_regression_loss(apply_fn, mix, reg["t0"], reg["T"], reg["time_dist"])
        t_start = time.perf_counter()
        states, hist = gmm_lab.train_sweep(
            loss, params, data, mask, [s.train.weight_decay] * len(members), mkeys, s.train,
            os.path.join(workdir, "groups", s.cell_hash(), f"w{width}"), s.progress, f"width {width}", extra=is_emp)
        train_s = time.perf_counter() - t_start
        err_t, rel_t = evaluate_members(apply_fn, states.ema_params, jnp.asarray(data), jnp.asarray(counts), is_emp,
                                        mix, times, jax.random.fold_in(jax.random.key(s.seed), 2), reg["eval_points"])
        err_t, rel_t = np.asarray(err_t), np.asarray(rel_t)
        for i, ((n, kind, seed), cid) in enumerate(zip(members, ids)):
            experiments.write_json(os.path.join(cell_dir, cid + ".json"), {
                "width": width, "n": n, "kind": kind, "seed": seed, "params": n_params,
                "times": times.tolist(), "err_t": err_t[i].tolist(), "rel_err_t": rel_t[i].tolist(),
                "rel_err_max": float(rel_t[i].max()), "rel_err_mean": float(rel_t[i].mean()),
                "err_mean": float(err_t[i].mean()), "final_train_loss": hist[-1]["loss"][i]})
        group_timings.append({"width": width, "members": len(members), "train_seconds": train_s})

    cells = {}
    for width in s.widths:
        for n, kind, seed in members:
            cid = _cell_id(width, n, kind, seed)
            with open(os.path.join(cell_dir, cid + ".json")) as f:
                cells[cid] = json.load(f)
    results = assemble(s, cells)
    logging.info("approximation: attention table")
    a = s.attention
    results["attention"] = attention_table(s.seed, list(a["ns"]), list(a["dims"]), int(a["num_components"]),
                                           float(s.data["mean_std"]), int(a["num_queries"]), list(a["times"]))
    results["group_timings"] = group_timings
    results["wall_seconds"] = time.perf_counter() - tic
    results["config_hash"] = s.cell_hash()
    make_plot(results, os.path.join(workdir, "approximation.png"))
    experiments.write_json(os.path.join(workdir, "results.json"), results)
    for k, v in results["width_star"].items():
        logging.info("W*(n) %s: %s (log-log slope %s)", k, v, results["width_star_loglog_slope"][k])
    return results


def assemble(s: Settings, cells: dict) -> dict:
    """Tables (kind -> (widths, ns), seed-averaged), W*(n) per target eps on rel_err_max, log-log slopes."""
    ns, widths = s.data["ns"], list(s.widths)
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
            "depth": s.model["depth"], "target_eps": list(s.target_eps),
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


def make_plot(results: dict, path: str) -> None:
    """Left: rel_err_max vs width per n (solid empirical, dashed true). Middle: per-t relative error of the
    widest net. Right: W*(n) on log-log axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("width W")
    a1.set_ylabel("max over t of relative weighted error")
    a1.legend(fontsize=6, ncol=2)
    a1.set_title(f"fit error (depth {results['depth']})")
    a3.set_xscale("log")
    a3.set_yscale("log")
    a3.set_xlabel("t")
    a3.set_ylabel("relative weighted error at t")
    a3.set_title(f"per-t error, width {widths[-1]}")
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
    a2.set_xlabel("n")
    a2.set_ylabel("W* (smallest width reaching eps)")
    a2.legend(fontsize=7)
    a2.set_title("Theorem 5.1: W*(n)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
