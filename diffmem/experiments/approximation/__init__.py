"""Approximation separation (arXiv 2511.03202, Section 5, Theorem 5.1).

Part 1 - network size needed. For every dimension d, training-set size n, replicate (seed) and width a ReLU MLP
(diffmem.models.mlp, fixed depth, time as an input) is fitted by regression (diffmem.losses.make_regression_loss) to
  (i)  the empirical score score_hat of the replicate's n training points, error weighted by sigma_t^4;
  (ii) the true mixture score, error weighted by sigma_t^2,
on inputs from the EMPIRICAL marginal P_hat_t (x = alpha_t x_i + sigma_t z, i uniform on the n points), as in the
theorem, with t log-uniform on [t0, T]. Evaluated on `eval_points` fresh draws at each of `eval_times` log-spaced
times (fixed key):
  err_t      = E_{P_hat_t} w_t ||s_theta - s*||^2     (the theorem's weighted error at time t)
  rel_err_t  = err_t / E_{P_hat_t} w_t ||s*||^2      (scale-free; w_t cancels at fixed t)
  rel_err_max = max_t rel_err_t                       (uniform in t, like the theorem's per-t bound)
W*(n) = the smallest width with rel_err_max <= eps, log-log interpolated between neighbouring widths of the ladder
`widths`. Each fit climbs the ladder from its smallest width until it reaches its eps (eps_empirical for (i), the
smallest of eps_true for (ii)), so W* is BRACKETED between two trained widths; a W* reached at the first width is
only an upper bound and one never reached is only a lower bound: both are reported ("below" / "above") and left out
of every fit.

What is measured is approximation AND optimisation (Adam, a fixed number of steps, one depth): a width reaching eps
shows that it suffices for this optimiser, missing it does not show that it cannot. Theorem 5.1's O~(n) for the
empirical score is a construction (an upper bound, for a deeper network); the measured slope is set beside it, not
equated with it.

Why relative and per t: an absolute error integrated over t lets a trivial network win. Near a training point at
small t the empirical score is ~ -(x - alpha_t x_i) / sigma_t^2, of squared norm ~ d / sigma_t^2, so the
sigma_t^4-weighted error of the network s = 0 is only ~ sigma_t^2 d there: the integrated absolute error is
dominated by large t where the two targets agree. Relative to w_t ||s*||^2 the network s = 0 scores exactly 1 at
every t: to do better at small t a network must locate the n training points to within sigma_t, which is where its
size has to grow with n. The window [t0, T] = [0.03, 1] is where the targets differ at these n.

Claims (results.json["claims"], claims.md; diffmem.eval.statistics, bootstrap over the replicates), per d:
  empirical_grows_d{d}  the per-seed log-log slope of the empirical W*(n) at eps_empirical is > 0;
  true_flat_d{d}        the true score's slope (at the smallest eps_true) is < flat_slope (its target does not
                        depend on n; the inputs x ~ P_hat_t do);
  separation_d{d}       empirical slope - true slope > 0 (paired by seed);
  true_eps_d{d}         the other side of the theorem: W* of the true score grows as eps shrinks (slope of the
                        geometric-mean W* over n against 1/eps > 0);
and true_eps_exponent_grows_with_d: that slope is larger at the largest d than at the smallest (Theorem 5.1's
eps^(-d/2 beta)).

Part 2 - exact attention form (`attention`): for isotropic equal covariances both scores are ONE softmax-attention
layer, with n d numbers for the empirical score against K d + 1 for the true one.

Randomness (diffmem.rng, under the root key of config.seed): "data" (then "mixture", d; and "points", d, replicate,
point i, so the first n points do not depend on the largest n), "fit" (then "init" / "train", d, replicate), "eval"
(then "data", "noise"), and the attention check of dimension d at index attention + d. Members that share (d, width)
train together as one vmapped jit step. Resume: each finished (d, width, n, target, seed) cell is written to
<workdir>/cells/<settings hash>/; the groups keep orbax checkpoints in <workdir>/groups/ and resume mid-training.
"""
from __future__ import annotations

import os
import time

import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import io, losses, rng, training
from diffmem.eval import statistics
from diffmem.experiments.approximation.attention import (attention_apply, attention_param_count, attention_score,
                                                         attention_table, empirical_attention, mixture_attention)
from diffmem.experiments.approximation.figures import make_plot
from diffmem.experiments.approximation.settings import (KINDS, Settings, make_mixture, parse_config,
                                                        training_points)
from diffmem.experiments.approximation.widths import (approximation_claims, bracket, cell_id, evaluate_members,
                                                      loglog_slope, member_curve, width_star, wstar_tables)
from diffmem.models import mlp

__all__ = ["Settings", "attention_apply", "attention_param_count", "attention_score", "attention_table",
           "approximation_claims", "bracket", "empirical_attention", "evaluate_members", "loglog_slope",
           "mixture_attention", "parse_config", "run", "width_star", "wstar_tables"]


def _done(cells: dict, s: Settings, dim: int, member: tuple) -> bool:
    """A member (n, kind, seed) stops climbing once a trained width reached its eps."""
    n, kind, seed = member
    _, rels = member_curve(cells, s, dim, n, kind, seed)
    return any(r <= s.stop_eps(kind) for r in rels)


def fit_dimension(s: Settings, dim: int, wd, cell_dir, cells: dict) -> list[dict]:
    """Climbs the width ladder for every member of dimension d (one vmapped group per width, only the members that
    have not reached their eps), writing each cell as it finishes. Returns the groups' timings."""
    mix = make_mixture(s, dim)
    pts = {seed: training_points(s, mix, seed, max(s.ns)) for seed in s.seeds}                    # (n_max, d) each
    reg = s.regression
    times = np.geomspace(reg.t0, reg.T, reg.eval_times)                                           # (T,)
    members = [(n, kind, seed) for n in s.ns for kind in KINDS for seed in s.seeds]
    timings = []
    for width in s.widths:
        active = [m for m in members if not _done(cells, s, dim, m)]
        if not active:
            break
        todo = [m for m in active if cell_id(dim, width, *m) not in cells]
        if not todo:
            continue
        data, mask = training.pad_datasets([pts[seed][:n] for n, _, seed in todo])                 # (M, n_max, d)
        counts = training.mask_counts(mask)                                                        # (M,)
        is_emp = jnp.asarray([1.0 if kind == "empirical" else 0.0 for _, kind, _ in todo])          # (M,)
        model = s.model_for(dim, width)
        apply_fn = mlp.make_apply(model)
        n_params = mlp.mlp_param_count(dim, width, model.depth, model.time_embed, model.embed_dim)
        logging.info("approximation: d=%d width %d (%d params), %d of %d members still climbing", dim, width,
                     n_params, len(todo), len(members))
        key = rng.stream(s.seed, "fit")
        params = training.init_members(lambda k: mlp.init_params(model, k),
                                       jnp.stack([rng.stream(key, "init", dim, sd) for _, _, sd in todo]))
        mkeys = jnp.stack([rng.stream(key, "train", dim, sd) for _, _, sd in todo])
        loss = losses.make_regression_loss(apply_fn, mix, reg.t0, reg.T, reg.time_dist)
        gid = io.hash_json([cell_id(dim, width, *m) for m in todo], 10)
        tic = time.perf_counter()
        states, hist = training.train_sweep(
            loss, params, data, mask, [s.train.weight_decay] * len(todo), mkeys, s.train,
            os.fspath(wd / "groups" / s.cell_hash() / f"d{dim}_w{width}_{gid}"), s.progress,
            f"d={dim} width {width}", extra=is_emp)
        train_s = time.perf_counter() - tic
        err_t, rel_t = evaluate_members(apply_fn, states.ema_params, jnp.asarray(data), jnp.asarray(counts), is_emp,
                                        mix, times, rng.stream(s.seed, "eval"), reg.eval_points)
        err_t, rel_t = np.asarray(err_t), np.asarray(rel_t)                                      # (M, T) x 2
        for i, (n, kind, seed) in enumerate(todo):
            cid = cell_id(dim, width, n, kind, seed)
            cells[cid] = {"dim": dim, "width": width, "n": n, "kind": kind, "seed": seed, "params": n_params,
                          "times": times.tolist(), "err_t": err_t[i].tolist(), "rel_err_t": rel_t[i].tolist(),
                          "rel_err_max": float(rel_t[i].max()), "rel_err_mean": float(rel_t[i].mean()),
                          "err_mean": float(err_t[i].mean()), "final_train_loss": hist[-1]["loss"][i]}
            io.write_json(cell_dir / f"{cid}.json", cells[cid])
        timings.append({"dim": dim, "width": width, "members": len(todo), "train_seconds": train_s})
    return timings


def read_cells(s: Settings, cell_dir) -> dict:
    """Every finished cell of this settings hash (a resumed run continues from them)."""
    out = {}
    for d in s.data.dims:
        for w in s.widths:
            for n in s.ns:
                for kind in KINDS:
                    for seed in s.seeds:
                        c = io.read_json(cell_dir / f"{cell_id(d, w, n, kind, seed)}.json")
                        if c is not None:
                            out[cell_id(d, w, n, kind, seed)] = c
    return out


def run(config, workdir: str) -> dict:
    """Runs (or resumes) both parts; writes results.json, claims.md and approximation.png."""
    tic = time.perf_counter()
    s = parse_config(config)
    wd = io.path(workdir)
    cell_dir = io.makedirs(wd / "cells" / s.cell_hash())
    cells = read_cells(s, cell_dir)
    timings = []
    for d in s.data.dims:
        timings += fit_dimension(s, d, wd, cell_dir, cells)
    tables = wstar_tables(s, cells)
    claims = approximation_claims(s, tables)
    params = {str(d): {str(w): mlp.mlp_param_count(d, w, s.model.depth, s.model.time_embed, s.model.embed_dim)
                       for w in s.widths} for d in s.data.dims}
    results = {"experiment": "approximation", "dims": list(s.data.dims), "ns": s.ns, "widths": list(s.widths),
               "seeds": list(s.seeds), "depth": s.model.depth, "params": params, "eps_empirical": s.eps_empirical,
               "eps_true": list(s.eps_true), "width_star": tables, "claims": claims, "cells": cells}
    logging.info("approximation: attention table")
    results["attention"] = attention_table(s.seed, s.attention, s.data.mean_std)
    results["group_timings"] = timings
    results["wall_seconds"] = time.perf_counter() - tic
    results["config_hash"] = s.cell_hash()
    results = io.jsonable(results)
    make_plot(s, results, wd / "approximation.png")
    io.write_json(wd / "results.json", results)
    io.write_text(wd / "claims.md", claims_text(s, claims))
    for c in claims:
        logging.info("claim %-32s %-12s estimate %s [%s, %s] %s", c["id"], c["verdict"], c["estimate"], c["ci_low"],
                     c["ci_high"], c["note"])
    return results


def claims_text(s: Settings, claims: list[dict]) -> str:
    """claims.md: what W* is, then the claims table."""
    head = (f"Theorem 5.1 (arXiv 2511.03202, Section 5). W* = smallest width of a depth-{s.model.depth} ReLU MLP, "
            f"fitted by Adam for {s.train.steps} steps, whose max-over-t relative weighted error is <= eps "
            f"(bracketed on the ladder {list(s.widths)}; open values left out of the fits); intervals: bootstrap "
            f"over {len(s.seeds)} replicates (own training points, init and SGD stream each).\n\n")
    return head + statistics.claims_markdown(claims, "approximation claims")
