"""W*(n): the smallest width whose fit reaches a relative error eps, bracketed on a width ladder; its tables and the
claims of Theorem 5.1 with intervals over the independent replicates (seeds)."""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import losses, rng, training
from diffmem.eval import statistics
from diffmem.experiments.approximation.settings import KINDS, Settings

BRACKETED, BELOW, ABOVE = "bracketed", "below", "above"   # W* inside the ladder / <= its first width / > its last


# ------------------------------------------------------------------------------------------------ evaluation

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


# ------------------------------------------------------------------------------------------------ W*

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


def bracket(widths, rel_errs, eps: float) -> tuple[Optional[float], str]:
    """(W*, status): BRACKETED when the first width misses eps and a later one reaches it (W* interpolated between
    them); BELOW when the first width already reaches it (W* <= widths[0], an upper bound); ABOVE when none does
    (W* > widths[-1]). Only BRACKETED values enter fits."""
    ws = width_star(widths, rel_errs, eps)
    if ws is None:
        return None, ABOVE
    return ws, BELOW if rel_errs[0] <= eps else BRACKETED


def loglog_slope(xs, ys) -> Optional[float]:
    """Least-squares slope of log y on log x over the finite entries (None with fewer than 2)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    a = np.asarray(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def cell_id(dim: int, width: int, n: int, kind: str, seed: int) -> str:
    return f"d{dim}_w{width}_n{n}_{kind}_s{seed}"


def member_curve(cells: dict, s: Settings, dim: int, n: int, kind: str, seed: int) -> tuple[list, list]:
    """(widths, rel_err_max) of one member over the ladder widths it was trained at, ascending."""
    ws = [w for w in s.widths if cell_id(dim, w, n, kind, seed) in cells]
    return ws, [cells[cell_id(dim, w, n, kind, seed)]["rel_err_max"] for w in ws]


def wstar_tables(s: Settings, cells: dict) -> dict:
    """{d: {kind: {eps: {"wstar": (seeds, ns), "status": (seeds, ns)}}}}: every eps of s.eps_list for the true
    score, those >= eps_empirical for the empirical one (its fits stop climbing there)."""
    out = {}
    for d in s.data.dims:
        out[str(d)] = {}
        for kind in KINDS:
            out[str(d)][kind] = {}
            for eps in [e for e in s.eps_list if kind == "true" or e >= s.eps_empirical]:
                ws, st = [], []
                for seed in s.seeds:
                    row = [bracket(*member_curve(cells, s, d, n, kind, seed), eps) for n in s.ns]
                    ws.append([v for v, _ in row])
                    st.append([x for _, x in row])
                out[str(d)][kind][f"{eps:g}"] = {"wstar": ws, "status": st}
    return out


def _seed_slopes(xs, table: dict) -> tuple[np.ndarray, int]:
    """Per-seed log-log slope of W* against xs over the BRACKETED entries (NaN with fewer than 2); the number of
    entries left out (open W*)."""
    out, left_out = [], 0
    for ws, st in zip(table["wstar"], table["status"]):
        keep = [(x, w) for x, w, z in zip(xs, ws, st) if z == BRACKETED]
        left_out += len(xs) - len(keep)
        slope = loglog_slope([x for x, _ in keep], [w for _, w in keep])
        out.append(np.nan if slope is None else slope)
    return np.asarray(out, np.float64), left_out


def _eps_slopes(s: Settings, kind_tables: dict) -> tuple[np.ndarray, int]:
    """Per seed: slope of log W* (geometric mean over the bracketed n at each eps) against log(1/eps)."""
    out, left_out = [], 0
    for i in range(len(s.seeds)):
        xs, ys = [], []
        for eps in s.eps_true:
            t = kind_tables[f"{eps:g}"]
            w = [v for v, z in zip(t["wstar"][i], t["status"][i]) if z == BRACKETED]
            left_out += len(t["wstar"][i]) - len(w)
            if w:
                xs.append(1.0 / eps)
                ys.append(float(np.exp(np.mean(np.log(w)))))
        slope = loglog_slope(xs, ys)
        out.append(np.nan if slope is None else slope)
    return np.asarray(out, np.float64), left_out


def _claim(id_, statement, metric, values, left_out: int, **kw) -> dict:
    """statistics.claim over the seeds with a value (NaN seeds dropped and counted in the note)."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    notes = []
    if left_out:
        notes.append(f"{left_out} open W* (outside the ladder) left out of the fits")
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} seed(s) without 2 bracketed points")
    if not ok.any():
        return statistics.unmeasured(id_, statement, metric, "; ".join(notes) or "nothing measured")
    c = statistics.claim(id_, statement, metric, v[ok], **kw)
    c["note"] = "; ".join([c["note"]] + notes if c["note"] else notes)
    return c


def approximation_claims(s: Settings, tables: dict) -> list[dict]:
    """Theorem 5.1 (arXiv 2511.03202, Section 5) as claims over the replicates; see the package docstring."""
    ns, e_emp, e_true = s.ns, s.eps_empirical, min(s.eps_true)
    method = (f"W* of an Adam-trained depth-{s.model.depth} ReLU MLP ({s.train.steps} steps): an optimisation "
              f"outcome, an upper bound on the width needed")
    claims, eps_slopes = [], {}
    for d in s.data.dims:
        t = tables[str(d)]
        emp, n_emp = _seed_slopes(ns, t["empirical"][f"{e_emp:g}"])
        tru, n_tru = _seed_slopes(ns, t["true"][f"{e_true:g}"])
        claims.append(_claim(
            f"empirical_grows_d{d}", f"d={d}: W*(n) of the empirical score grows with n (eps={e_emp:g}; {method}; "
            f"Theorem 5.1 constructs width O~(n) for a deeper network)", "log-log slope of W* in n", emp, n_emp,
            direction="greater", threshold=0.0))
        claims.append(_claim(
            f"true_flat_d{d}", f"d={d}: W*(n) of the true score does not grow with n: slope < {s.flat_slope:g} "
            f"(eps={e_true:g}; the target does not depend on n, the inputs x ~ P_hat_t do)",
            "log-log slope of W* in n", tru, n_tru, direction="less",
            threshold=s.flat_slope))
        claims.append(_claim(
            f"separation_d{d}", f"d={d}: the empirical score's W* grows faster in n than the true score's "
            f"(slopes at eps={e_emp:g} and {e_true:g}, paired by seed)", "slope difference", emp - tru,
            n_emp + n_tru, direction="greater", threshold=0.0))
        eps_slopes[d], n_eps = _eps_slopes(s, t["true"])
        claims.append(_claim(
            f"true_eps_d{d}", f"d={d}: W* of the true score grows as eps shrinks (the epsilon^(-d/2 beta) side of "
            f"Theorem 5.1; eps in {sorted(s.eps_true)})", "log-log slope of W* in 1/eps", eps_slopes[d], n_eps,
            direction="greater", threshold=0.0))
    if len(s.data.dims) >= 2:
        lo, hi = min(s.data.dims), max(s.data.dims)
        claims.append(_claim(
            f"true_eps_exponent_grows_with_d", f"the true score's eps-exponent grows with d (d={hi} vs d={lo}, "
            f"paired by seed; Theorem 5.1: d / 2 beta)", "slope difference", eps_slopes[hi] - eps_slopes[lo], 0,
            direction="greater", threshold=0.0))
    return claims
