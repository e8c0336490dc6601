"""Statistical separation (arXiv 2511.03202, Section 4): Loss-Gap_t against t, n and d (Figure 1, Theorem 4.3).

For each dimension d a K-mixture P is drawn once; R training sets of n_max points are drawn from it, and each n of
the sweep uses the first n points (a prefix mask over one padded array), so the whole n sweep is ONE jax.vmap under
ONE jax.jit (traced once per d). Per (d, n, t) we report both estimators of Proposition 4.1 on the same draws and
gap * sigma_t^2 / d, whose limit as t -> 0 is 1.

Theorem 4.3's window. The lower bound Loss-Gap_t = Omega(d / sigma_t^2 + tr Sigma) is stated on a window
[t0, t1] of small times with log sigma_{t1} = O(-log d): the theorem fixes the order, not the constant. We take
sigma_{t1} = window_scale * d^(-window_exponent) (defaults 1 and 1/2: sigma_{t1}^2 = 1/d, t1 = -log(1 - 1/d)) and
report the bound's shape d / sigma_t^2 + tr Sigma everywhere but compare the gap to it only on the window (outside
it the theorem says nothing: at t ~ 1 the gap is far below the shape, which is no violation). The Omega constant
is unspecified too; the claim uses `bound_constant` (default 1/2).

Claims (results.json["claims"], claims.md; diffmem.eval.statistics: estimate, 95% interval and verdict from a
bootstrap over the R independent training sets), for every (d, n):
  limit_d{d}_n{n}       Loss-Gap_t sigma_t^2 / d at the smallest time t0 lies in 1 +- limit_tol;
  bound_d{d}_n{n}       min over the window's grid times of Loss-Gap_t / (d / sigma_t^2 + tr Sigma) > bound_constant;
  integrated_d{d}_n{n}  the slope of int_{t0}^{T} Loss-Gap_t dt against log(1/t0), over the window's grid times,
                        divided by d, lies in 1 +- slope_tol (the integrated gap grows like d log(1/t0)).

Randomness (diffmem.rng): the key of dimension d is stream(seed, d); under it the mixture ("mixture") and training
set r at index gap_sets + r; under a training set's key its points ("data") and the Monte-Carlo draws ("queries"),
then the index i of n in the sorted sweep and the index j of t on the grid.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from diffmem import config as config_lib
from diffmem import io, losses, plots, rng, sampling, scores, sde
from diffmem.config import Schema, field
from diffmem.eval import statistics

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Settings(Schema):
    """configs/loss_gap.py, validated. P = (1/K) sum_k N(mu_k, cov_scale^2 I_d), mu_k ~ N(0, mean_std^2 I_d)."""
    experiment: str = field("loss_gap", choices=("loss_gap",))
    seed: int = field(0, min=0)
    preset: str = field("")
    num_components: int = field(8, min=1)
    mean_std: float = field(2.0, min=0)
    cov_scale: float = field(1.0, min=0, min_open=True, help="s; tr(Sigma) = d s^2")
    dims: tuple[int, ...] = field((8,), item_min=1, nonempty=True)
    ns: tuple[int, ...] = field((100,), item_min=1, nonempty=True, help="training-set sizes")
    t0: float = field(1e-3, min=0, min_open=True, help="smallest time of the log grid")
    t1: float = field(3.0, min=0, min_open=True, help="T, the largest time of the grid")
    num_times: int = field(12, min=1)
    num_datasets: int = field(4, min=1, help="independent training sets D (the E_D of Theorem 4.3)")
    num_queries: int = field(1024, min=2, help="Monte-Carlo draws X ~ P_hat_t per (set, n, t); >= 2 (stderr)")
    chunk: int = field(4096, min=1, help="training points per streamed chunk of the empirical score")
    time_loop: bool = field(True, help="also time the n sweep of the first training set as a Python loop over n")
    progress: bool = field(True)
    window_scale: float = field(1.0, min=0, min_open=True, help="c of sigma_{t1} = c d^-k (Theorem 4.3's window)")
    window_exponent: float = field(0.5, min=0, min_open=True, help="k of sigma_{t1} = c d^-k")
    bound_constant: float = field(0.5, min=0, min_open=True, help="the claim: gap > this x (d/sigma^2 + tr Sigma)")
    limit_tol: float = field(0.1, min=0, min_open=True, help="the claim: gap sigma_t0^2 / d in 1 +- limit_tol")
    slope_tol: float = field(0.15, min=0, min_open=True, help="the claim: integrated-gap slope / d in 1 +- this")

    def check(self):
        if not self.t1 > self.t0:
            raise self.fail("t1", f"(T) must exceed config.t0={self.t0:g}, got {self.t1:g}")
        for name in ("dims", "ns"):
            v = getattr(self, name)
            if len(set(v)) != len(v):
                raise self.fail(name, f"must be distinct, got {list(v)}")
        for d in self.dims:
            t1 = window_end(d, self.window_scale, self.window_exponent)
            if not t1 > self.t0:
                raise self.fail("window_scale", f"(with window_exponent={self.window_exponent:g}) puts Theorem 4.3's "
                                                f"window end t1={t1:.3g} at or below config.t0={self.t0:g} for d={d}")


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming config.<field> for anything unknown or out of range."""
    return config_lib.parse_config(Settings, config)


# ------------------------------------------------------------------------------------------- estimators

def gap_terms(key, ts, data, mask, mix, num_queries, chunk):
    """Estimator terms for one training set data (n_max, d) and one mask (n_max,) at every t of ts (T,).

    Returns {'a': (T, q), 'b': (T, q)} (Proposition 4.1 (a) and (b) on the same draws). The key of time index j is
    fold_in(key, j) (a traced index), so results do not depend on how the sweep is batched.
    """
    def one_t(j):
        return losses.loss_gap_samples(jax.random.fold_in(key, j), ts[j], data, mix, num_queries, mask, chunk)
    return jax.lax.map(one_t, jnp.arange(ts.shape[0]))


def make_sweep_fn(mix, ts, num_queries, chunk):
    """The n sweep for one training set as one vmap over masks, jit-compiled; the key of n index i is
    fold_in(key, i). `sweep.traces()` counts how often it was traced (the experiment asserts 1 per d)."""
    def sweep(key, data, masks):        # data (n_max, d), masks (N, n_max) -> {'a','b'}: (N, T, q)
        sweep.traces += 1               # runs at trace time only
        keys = sampling.per_sample_keys(key, masks.shape[0])                       # (N,) key i = fold_in(key, i)
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
        # Standard error of the E_D estimate: the across-set one has only R - 1 degrees of freedom and can come out
        # below the within-set one by chance, so report the larger of the two.
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
    """int_{t0_j}^{T} Loss-Gap_t dt for every grid point t0_j of ts (T,) (trapezoid in log t: gap(t) t dlog t)."""
    f = gap * ts
    lt = np.log(ts)
    seg = 0.5 * (f[1:] + f[:-1]) * np.diff(lt)                  # (T-1,)
    return np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])


# ------------------------------------------------------------------------------------------- Theorem 4.3

def window_end(d: int, scale: float, exponent: float) -> float:
    """t1 of Theorem 4.3's window: sigma_{t1} = scale * d^-exponent, t1 = -log(1 - sigma_{t1}^2) (inf when
    sigma_{t1} >= 1: every time is in the window)."""
    s2 = (scale * float(d) ** -exponent) ** 2
    return float(-np.log1p(-s2)) if s2 < 1 else float("inf")


def bound_shape(d: int, t, trace_cov: float):
    """d / sigma_t^2 + tr Sigma, the order of Theorem 4.3's lower bound (meaningful on its window only)."""
    return d / np.asarray(sde.sigma2(jnp.asarray(t, jnp.float32)), np.float64) + trace_cov


def gap_claims(d: int, n: int, ts: np.ndarray, gaps: np.ndarray, trace_cov: float, s: Settings) -> list[dict]:
    """The three claims of (d, n) (module docstring) from the per-training-set gaps (R, T) on the grid ts (T,);
    the training sets are the independent bases of the bootstrap."""
    ts = np.asarray(ts, np.float64)
    gaps = np.asarray(gaps, np.float64)                                                  # (R, T)
    t1 = window_end(d, s.window_scale, s.window_exponent)
    win = ts <= t1                                                                      # (T,)
    s2 = np.asarray(sde.sigma2(jnp.asarray(ts, jnp.float32)), np.float64)              # (T,)
    where = f"d={d}, n={n}"
    window_text = (f"window t in [{ts[0]:.3g}, {min(t1, ts[-1]):.3g}] (sigma_t1 = {s.window_scale:g} d^-"
                   f"{s.window_exponent:g}), {int(win.sum())} grid times")
    out = [statistics.within(
        f"limit_d{d}_n{n}", f"{where}: Loss-Gap_t sigma_t^2 / d -> 1 as t -> 0 (at t = {ts[0]:.3g})",
        "gap sigma_t^2 / d at the smallest t", gaps[:, 0] * s2[0] / d, low=1 - s.limit_tol, high=1 + s.limit_tol)]
    ratio = gaps[:, win] / bound_shape(d, ts[win], trace_cov)[None]                    # (R, T_win)
    out.append(statistics.claim(
        f"bound_d{d}_n{n}", f"{where}: Loss-Gap_t >= {s.bound_constant:g} (d / sigma_t^2 + tr Sigma) on Theorem "
        f"4.3's window", "min over the window of gap / (d / sigma_t^2 + tr Sigma)", ratio.min(1),
        direction="greater", threshold=s.bound_constant))
    if win.sum() >= 2:
        x = -np.log(ts[win])                                                            # (T_win,) log(1/t0)
        integ = np.stack([integrated_gap(ts, g)[win] for g in gaps])                    # (R, T_win)
        slopes = np.polyfit(x, integ.T, 1)[0] / d                                       # (R,)
        out.append(statistics.within(
            f"integrated_d{d}_n{n}", f"{where}: int_t0^T Loss-Gap_t dt grows like d log(1/t0) on the window",
            "slope of the integrated gap against log(1/t0), / d", slopes, low=1 - s.slope_tol,
            high=1 + s.slope_tol))
    else:
        out.append(statistics.unmeasured(
            f"integrated_d{d}_n{n}", f"{where}: int_t0^T Loss-Gap_t dt grows like d log(1/t0) on the window",
            "slope of the integrated gap against log(1/t0), / d", "fewer than 2 grid times in the window"))
    for c in out:
        c["context"] = window_text
    return out


# ------------------------------------------------------------------------------------------------ run

def _set_key(kd, r: int):
    """Training set r of dimension key kd: index gap_sets + r (the numbers of the first release)."""
    return rng.stream(kd, rng.index("gap_sets") + r)


def run(config, workdir: str) -> dict:
    s = parse_config(config)
    ts = np.asarray(sde.log_time_grid(s.t0, s.t1, s.num_times))                       # (T,)
    ns = sorted(s.ns)
    n_max = ns[-1]
    masks = jnp.asarray(np.arange(n_max)[None, :] < np.asarray(ns)[:, None], jnp.float32)  # (N, n_max)
    records, timing, integrated, claims, windows = [], {}, [], [], {}
    for d in s.dims:
        kd = rng.stream(s.seed, d)
        mix = scores.random_mixture(rng.stream(kd, "mixture"), s.num_components, d, s.mean_std, s.cov_scale)
        sweep = make_sweep_fn(mix, jnp.asarray(ts), s.num_queries, s.chunk)
        loop = make_loop_fn(mix, jnp.asarray(ts), s.num_queries, s.chunk)
        res_a, res_b = [], []                                   # (R, N, T, q) after stacking
        t_vmap = t_loop = 0.0
        for r in tqdm(range(s.num_datasets), desc=f"d={d}: training sets", leave=False, disable=not s.progress):
            kr = _set_key(kd, r)
            data = scores.sample_mixture(rng.stream(kr, "data"), mix, n_max)          # (n_max, d)
            kq = rng.stream(kr, "queries")
            t_start = time.perf_counter()
            out = jax.block_until_ready(sweep(kq, data, masks))
            t_vmap += time.perf_counter() - t_start
            if r == 0:
                timing[f"vmap_seconds_first_set_d{d}"] = t_vmap          # compilation included, as in the loop's
            res_a.append(np.asarray(out["a"]))
            res_b.append(np.asarray(out["b"]))
            if s.time_loop and r == 0:   # the loop on the first set: its time, and the vmapped numbers again
                t_start = time.perf_counter()
                loop_out = [loop(rng.stream(kq, i), data[:n]) for i, n in enumerate(ns)]
                jax.block_until_ready(loop_out)
                t_loop += time.perf_counter() - t_start
                timing.setdefault("loop_vs_vmap_max_rel_diff", {})[str(d)] = float(max(
                    np.max(np.abs(np.asarray(lo["a"]) - res_a[0][i])) / (np.max(np.abs(res_a[0][i])) + 1e-30)
                    for i, lo in enumerate(loop_out)))
        if sweep.traces() != 1:
            raise AssertionError(f"the vmapped n sweep traced {sweep.traces()} times for d={d}, expected 1")
        timing[f"vmap_traces_d{d}"] = sweep.traces()
        timing[f"vmap_seconds_d{d}"] = t_vmap
        if s.time_loop:
            timing[f"loop_seconds_first_set_d{d}"] = t_loop
        logging.info("d=%d: vmapped n sweep %.1fs (%d sets), Python loop %.1fs (first set)", d, t_vmap,
                     s.num_datasets, t_loop)
        a, b = np.stack(res_a), np.stack(res_b)                 # (R, N, T, q)
        trace_cov = float(mix.trace_cov())
        t1 = window_end(d, s.window_scale, s.window_exponent)
        windows[str(d)] = {"t0": float(ts[0]), "t1": t1, "sigma_t1": s.window_scale * d ** -s.window_exponent,
                           "grid_times": int(np.sum(ts <= t1)), "trace_cov": trace_cov}
        for i, n in enumerate(ns):
            gaps = []
            for j, t in enumerate(ts):
                s2 = float(sde.sigma2(t))
                rec = {"d": d, "n": n, "t": float(t), "sigma2": s2, **summarize(a[:, i, j], b[:, i, j])}
                rec["bound"] = d / s2 + trace_cov          # the bound's shape; compared to the gap on the window only
                rec["in_window"] = bool(t <= t1)
                rec["gap_sigma2_over_d"] = rec["gap_mean"] * s2 / d
                rec["fisher_sigma2_over_d"] = rec["fisher_mean"] * s2 / d
                rec["gap_over_bound"] = rec["gap_mean"] / rec["bound"] if rec["in_window"] else None
                records.append(rec)
                gaps.append(rec["gap_mean"])
            claims += gap_claims(d, n, ts, a[:, i].mean(-1), trace_cov, s)             # per set: (R, T)
            integ = integrated_gap(ts, np.asarray(gaps))
            for j, t in enumerate(ts[:-1]):
                integrated.append({"d": d, "n": n, "t0": float(t), "log_1_over_t0": float(-np.log(t)),
                                   "integrated_gap": float(integ[j]), "d_log_1_over_t0": float(-d * np.log(t))})
    timing["vmap_seconds_total"] = sum(v for k, v in timing.items() if k.startswith("vmap_seconds_d"))
    if s.time_loop:
        timing["loop_seconds_total"] = sum(v for k, v in timing.items() if k.startswith("loop_seconds_first_set"))
    summary = _summary(records, ts)
    results = {"experiment": "loss_gap", "records": records, "integrated": integrated, "timing": timing,
               "summary": summary, "times": ts.tolist(), "ns": ns, "dims": list(s.dims), "window": windows,
               "claims": claims}
    results = io.jsonable(results)
    wd = io.path(workdir)
    io.write_json(wd / "results.json", results)
    io.write_text(wd / "claims.md", claims_text(claims, s))
    _plot(records, integrated, windows, s, workdir)
    logging.info("loss_gap summary: %s", summary)
    for c in claims:
        logging.info("claim %-22s %-12s estimate %s [%s, %s]", c["id"], c["verdict"], c["estimate"], c["ci_low"],
                     c["ci_high"])
    return results


def claims_text(claims: list[dict], s: Settings) -> str:
    """claims.md: the window's definition, then the claims table."""
    head = (f"Theorem 4.3 (arXiv 2511.03202, Section 4) on the window sigma_t <= {s.window_scale:g} d^-"
            f"{s.window_exponent:g} (the theorem fixes log sigma_t1 = O(-log d), not the constant); intervals: "
            f"bootstrap over {s.num_datasets} independent training sets.\n\n")
    return head + statistics.claims_markdown(claims, "loss_gap claims")


def _summary(records, ts) -> dict:
    """Estimator diagnostics (Proposition 4.1's (a) and (b) on the same draws) and gap sigma^2 / d at t_min."""
    small = [r for r in records if r["t"] == float(ts[0])]
    return {
        "t_min": float(ts[0]),
        "gap_sigma2_over_d_at_t_min": {f"d={r['d']},n={r['n']}": r["gap_sigma2_over_d"] for r in small},
        "ab_agree_3se_fraction": float(np.mean([r["ab_agree_3se"] for r in records])),
        "ab_paired_abs_z_below_2_fraction": float(np.mean([abs(r["ab_paired_z"]) < 2 for r in records])),
        "ab_paired_abs_z_max": float(max(abs(r["ab_paired_z"]) for r in records)),
    }


def _plot(records, integrated, windows, s: Settings, workdir) -> None:
    """loss_gap_vs_t.png (the bound's shape drawn on Theorem 4.3's window only, the window shaded),
    integrated_gap.png (window shaded in log(1/t0)), gap_sigma2_over_d.png (window ends marked)."""
    plt = plots.pyplot()
    wd = io.path(workdir)
    dims, ns = list(s.dims), sorted(set(r["n"] for r in records))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(ns)))
    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for col, n in zip(colors, ns):
            rs = [r for r in records if r["d"] == d and r["n"] == n]
            t = np.array([r["t"] for r in rs])
            g = np.array([r["gap_mean"] for r in rs])
            e = np.array([r["gap_stderr"] for r in rs])
            ax.errorbar(t, np.maximum(g, 1e-12), yerr=e, color=col, marker="o", ms=3, label=f"n={n}")
        w = windows[str(d)]
        tt = np.geomspace(w["t0"], min(w["t1"], s.t1), 64)                                     # the window
        shape = bound_shape(d, tt, w["trace_cov"])
        ax.axvspan(w["t0"], min(w["t1"], s.t1), color="0.9", zorder=0, label="Theorem 4.3 window")
        ax.plot(tt, shape, "k--", label=r"$d/\sigma_t^2+\mathrm{tr}\,\Sigma$ (window only)")
        ax.plot(tt, s.bound_constant * shape, "k:", label=f"{s.bound_constant:g} x bound (claim)")
        ax.set(xscale="log", yscale="log", xlabel="t", ylabel=r"Loss-Gap$_t$",
               title=f"d = {d} (window: $\\sigma_t \\leq {s.window_scale:g}\\,d^{{-{s.window_exponent:g}}}$)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save_figure(fig, wd / "loss_gap_vs_t.png")

    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for col, n in zip(colors, ns):
            rs = [r for r in integrated if r["d"] == d and r["n"] == n]
            ax.plot([r["log_1_over_t0"] for r in rs], [r["integrated_gap"] for r in rs], "o-", color=col, ms=3,
                    label=f"n={n}")
        rs = [r for r in integrated if r["d"] == d and r["n"] == ns[0]]
        w = windows[str(d)]
        ax.axvspan(-np.log(min(w["t1"], s.t1)), -np.log(w["t0"]), color="0.9", zorder=0, label="Theorem 4.3 window")
        ax.plot([r["log_1_over_t0"] for r in rs], [r["d_log_1_over_t0"] for r in rs], "k--",
                label=r"$d\,\log(1/t_0)$")
        ax.set(xlabel=r"$\log(1/t_0)$", ylabel=r"$\int_{t_0}^{T}$ Loss-Gap$_t\,dt$", title=f"d = {d}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save_figure(fig, wd / "integrated_gap.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    for d in dims:
        rs = [r for r in records if r["d"] == d and r["n"] == ns[-1]]
        line, = ax.plot([r["t"] for r in rs], [r["gap_sigma2_over_d"] for r in rs], "o-", ms=3, label=f"d={d}")
        if windows[str(d)]["t1"] < s.t1:
            ax.axvline(windows[str(d)]["t1"], color=line.get_color(), ls=":", lw=1)
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.axhspan(1 - s.limit_tol, 1 + s.limit_tol, color="0.9", zorder=0, label=f"1 +- {s.limit_tol:g} (claim)")
    ax.set(xscale="log", xlabel="t", ylabel=r"Loss-Gap$_t\,\sigma_t^2/d$",
           title=f"n = {ns[-1]} (dotted: window ends $t_1(d)$)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save_figure(fig, wd / "gap_sigma2_over_d.png")
