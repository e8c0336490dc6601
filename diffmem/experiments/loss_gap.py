"""Statistical separation (PAPER.md section 2): Loss-Gap_t against t, n and d (Figure 1, Theorem 4.3).

For each dimension d, a K-mixture P is drawn once; R training sets of n_max points are drawn from it,
and each n of the sweep uses the first n points (a prefix mask over one padded array), so the whole
n sweep is ONE jax.vmap under ONE jax.jit (traced once per d). Per (d, n, t) we report both estimators
of Proposition 4.1 on the same draws, the bound's shape d / sigma_t^2 + tr(Sigma), and
gap * sigma_t^2 / d, whose limit as t -> 0 is 1.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from diffmem import losses, scores, sde
from diffmem.experiments import write_json


def validate(c) -> None:
    """Clear errors for bad config values (field name and accepted range)."""
    if not c.t0 > 0:
        raise ValueError(f"config.t0 must be > 0, got {c.t0}")
    if not c.t1 > c.t0:
        raise ValueError(f"config.t1 (T) must be > config.t0, got t0={c.t0}, t1={c.t1}")
    if not c.ns or min(c.ns) < 1:
        raise ValueError(f"config.ns must be non-empty sizes >= 1, got {c.ns}")
    if not c.dims or min(c.dims) < 1:
        raise ValueError(f"config.dims must be non-empty dimensions >= 1, got {c.dims}")
    for f in ("num_times", "num_datasets", "num_queries", "chunk", "num_components"):
        if int(c[f]) < 1:
            raise ValueError(f"config.{f} must be >= 1, got {c[f]}")
    if c.num_queries < 2:
        raise ValueError(f"config.num_queries must be >= 2 (standard errors), got {c.num_queries}")
    if not c.cov_scale > 0 or not c.mean_std >= 0:
        raise ValueError(f"config.cov_scale must be > 0 and mean_std >= 0, got {c.cov_scale}, {c.mean_std}")


def gap_terms(key, ts, data, mask, mix, num_queries, chunk):
    """Estimator terms for one training set (n_max, d) and one mask (n_max,) at every t of `ts`.

    Returns {'a': (T, q), 'b': (T, q)} (Proposition 4.1 (a) and (b) on the same draws).
    The key of time index j is fold_in(key, j), so results do not depend on how the sweep is batched.
    """
    def one_t(j):
        return losses.loss_gap_samples(jax.random.fold_in(key, j), ts[j], data, mix, num_queries,
                                       mask, chunk)
    return jax.lax.map(one_t, jnp.arange(ts.shape[0]))


def make_sweep_fn(mix, ts, num_queries, chunk):
    """The n sweep for one training set as one vmap over masks, jit-compiled.

    `sweep.traces` counts how often it was traced (the experiment asserts 1 for all training sets).
    """
    def sweep(key, data, masks):        # data (n_max, d), masks (N, n_max) -> {'a','b'}: (N, T, q)
        sweep.traces += 1               # runs at trace time only
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(masks.shape[0]))
        return jax.vmap(lambda k, m: gap_terms(k, ts, data, m, mix, num_queries, chunk))(keys, masks)
    sweep.traces = 0
    jitted = jax.jit(sweep)
    jitted.traces = lambda: sweep.traces
    return jitted


def make_loop_fn(mix, ts, num_queries, chunk):
    """The same computation for one n at a time on an exact (unpadded) array: retraces per n."""
    @jax.jit
    def single(key, data):              # data (n, d) -> {'a','b'}: (T, q)
        return gap_terms(key, ts, data, None, mix, num_queries, chunk)
    return single


def summarize(a: np.ndarray, b: np.ndarray) -> dict:
    """Statistics of the draws a, b of shape (R, q) (R training sets, q draws each)."""
    r = a.shape[0]
    out = {}
    for name, x in (("gap", a), ("fisher", b)):
        per_set = x.mean(1)                                     # (R,) estimates of Loss-Gap_t(D)
        within = x.std(ddof=1) / np.sqrt(x.size)
        across = per_set.std(ddof=1) / np.sqrt(r) if r > 1 else 0.0
        out[f"{name}_mean"] = float(x.mean())
        # Standard error of the E_D estimate: the across-set one has only R - 1 degrees of freedom and
        # can come out below the within-set one by chance, so report the larger of the two.
        out[f"{name}_stderr"] = float(max(across, within))
        out[f"{name}_stderr_across_sets"] = float(across)
        out[f"{name}_stderr_within"] = float(within)
    diff = (a - b).ravel()
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    out["ab_paired_z"] = float(diff.mean() / se) if se > 0 else 0.0
    out["ab_agree_3se"] = bool(abs(out["gap_mean"] - out["fisher_mean"])
                               <= 3 * np.hypot(out["gap_stderr"], out["fisher_stderr"]))
    return out


def integrated_gap(ts: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """int_{t0_j}^{T} Loss-Gap_t dt for every grid point t0_j (trapezoid in log t: gap(t) t dlog t)."""
    f = gap * ts
    lt = np.log(ts)
    seg = 0.5 * (f[1:] + f[:-1]) * np.diff(lt)                  # (T-1,)
    return np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])


def run(config, workdir: str) -> dict:
    validate(config)
    c = config
    ts = np.asarray(sde.log_time_grid(c.t0, c.t1, c.num_times))
    ns = sorted(int(n) for n in c.ns)
    n_max = ns[-1]
    masks = jnp.asarray(np.arange(n_max)[None, :] < np.asarray(ns)[:, None], jnp.float32)  # (N, n_max)
    base = jax.random.key(c.seed)
    records, timing, integrated = [], {}, []
    for d in c.dims:
        kd = jax.random.fold_in(base, d)
        mix = scores.random_mixture(jax.random.fold_in(kd, 0), c.num_components, d, c.mean_std,
                                    c.cov_scale)
        sweep = make_sweep_fn(mix, jnp.asarray(ts), c.num_queries, c.chunk)
        loop = make_loop_fn(mix, jnp.asarray(ts), c.num_queries, c.chunk)
        res_a, res_b = [], []                                   # (R, N, T, q) after stacking
        t_vmap = t_loop = 0.0
        for r in tqdm(range(c.num_datasets), desc=f"d={d}: training sets", leave=False):
            kr = jax.random.fold_in(kd, 1 + r)
            data = scores.sample_mixture(jax.random.fold_in(kr, 0), mix, n_max)  # (n_max, d)
            kq = jax.random.fold_in(kr, 1)
            t_start = time.perf_counter()
            out = jax.block_until_ready(sweep(kq, data, masks))
            t_vmap += time.perf_counter() - t_start
            res_a.append(np.asarray(out["a"]))
            res_b.append(np.asarray(out["b"]))
            if c.time_loop:
                t_start = time.perf_counter()
                loop_out = [loop(jax.random.fold_in(kq, i), data[:n]) for i, n in enumerate(ns)]
                jax.block_until_ready(loop_out)
                t_loop += time.perf_counter() - t_start
                if r == 0:   # the loop must give the vmapped numbers (same keys, same draws)
                    timing.setdefault("loop_vs_vmap_max_rel_diff", {})[str(d)] = float(max(
                        np.max(np.abs(np.asarray(lo["a"]) - res_a[0][i]))
                        / (np.max(np.abs(res_a[0][i])) + 1e-30) for i, lo in enumerate(loop_out)))
        if sweep.traces() != 1:
            raise AssertionError(f"the vmapped n sweep traced {sweep.traces()} times for d={d}, expected 1")
        timing[f"vmap_traces_d{d}"] = sweep.traces()
        timing[f"vmap_seconds_d{d}"] = t_vmap
        if c.time_loop:
            timing[f"loop_seconds_d{d}"] = t_loop
        logging.info("d=%d: vmapped n sweep %.1fs, Python loop %.1fs", d, t_vmap, t_loop)
        a = np.stack(res_a)                                     # (R, N, T, q)
        b = np.stack(res_b)
        trace_cov = float(mix.trace_cov())
        for i, n in enumerate(ns):
            gaps = []
            for j, t in enumerate(ts):
                s2 = float(sde.sigma2(t))
                rec = {"d": d, "n": n, "t": float(t), "sigma2": s2, **summarize(a[:, i, j], b[:, i, j])}
                rec["bound"] = d / s2 + trace_cov
                rec["gap_sigma2_over_d"] = rec["gap_mean"] * s2 / d
                rec["fisher_sigma2_over_d"] = rec["fisher_mean"] * s2 / d
                rec["gap_over_bound"] = rec["gap_mean"] / rec["bound"]
                records.append(rec)
                gaps.append(rec["gap_mean"])
            integ = integrated_gap(ts, np.asarray(gaps))
            for j, t in enumerate(ts[:-1]):
                integrated.append({"d": d, "n": n, "t0": float(t), "log_1_over_t0": float(-np.log(t)),
                                   "integrated_gap": float(integ[j]),
                                   "d_log_1_over_t0": float(-d * np.log(t))})
    timing["vmap_seconds_total"] = sum(v for k, v in timing.items() if k.startswith("vmap_seconds_d"))
    if c.time_loop:
        timing["loop_seconds_total"] = sum(v for k, v in timing.items() if k.startswith("loop_seconds_d"))
    summary = _summary(records, ts)
    results = {"experiment": "loss_gap", "records": records, "integrated": integrated,
               "timing": timing, "summary": summary, "times": ts.tolist(), "ns": ns,
               "dims": list(c.dims)}
    write_json(os.path.join(workdir, "results.json"), results)
    _plot(records, integrated, c, workdir)
    logging.info("loss_gap summary: %s", summary)
    return results


def _summary(records, ts) -> dict:
    small = [r for r in records if r["t"] == float(ts[0])]
    return {
        "t_min": float(ts[0]),
        "gap_sigma2_over_d_at_t_min": {f"d={r['d']},n={r['n']}": r["gap_sigma2_over_d"] for r in small},
        "all_within_5pct_at_t_min": bool(all(abs(r["gap_sigma2_over_d"] - 1) <= 0.05 for r in small)),
        "ab_agree_3se_fraction": float(np.mean([r["ab_agree_3se"] for r in records])),
        "ab_paired_abs_z_below_2_fraction": float(np.mean([abs(r["ab_paired_z"]) < 2 for r in records])),
        "ab_paired_abs_z_max": float(max(abs(r["ab_paired_z"]) for r in records)),
    }


def _plot(records, integrated, c, workdir) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims, ns = list(c.dims), sorted(set(r["n"] for r in records))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(ns)))
    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for col, n in zip(colors, ns):
            rs = [r for r in records if r["d"] == d and r["n"] == n]
            t = np.array([r["t"] for r in rs])
            g = np.array([r["gap_mean"] for r in rs])
            e = np.array([r["gap_stderr"] for r in rs])
            ax.errorbar(t, np.maximum(g, 1e-12), yerr=e, color=col, marker="o", ms=3, label=f"n={n}")
        rs = [r for r in records if r["d"] == d and r["n"] == ns[0]]
        ax.plot([r["t"] for r in rs], [r["bound"] for r in rs], "k--", label=r"$d/\sigma_t^2+\mathrm{tr}\,\Sigma$")
        ax.set(xscale="log", yscale="log", xlabel="t", ylabel=r"Loss-Gap$_t$", title=f"d = {d}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "loss_gap_vs_t.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for col, n in zip(colors, ns):
            rs = [r for r in integrated if r["d"] == d and r["n"] == n]
            ax.plot([r["log_1_over_t0"] for r in rs], [r["integrated_gap"] for r in rs], "o-",
                    color=col, ms=3, label=f"n={n}")
        rs = [r for r in integrated if r["d"] == d and r["n"] == ns[0]]
        ax.plot([r["log_1_over_t0"] for r in rs], [r["d_log_1_over_t0"] for r in rs], "k--",
                label=r"$d\,\log(1/t_0)$")
        ax.set(xlabel=r"$\log(1/t_0)$", ylabel=r"$\int_{t_0}^{T}$ Loss-Gap$_t\,dt$", title=f"d = {d}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "integrated_gap.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for d in dims:
        rs = [r for r in records if r["d"] == d and r["n"] == ns[-1]]
        ax.plot([r["t"] for r in rs], [r["gap_sigma2_over_d"] for r in rs], "o-", ms=3, label=f"d={d}")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set(xscale="log", xlabel="t", ylabel=r"Loss-Gap$_t\,\sigma_t^2/d$", title=f"n = {ns[-1]}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "gap_sigma2_over_d.png"), dpi=120)
    plt.close(fig)
