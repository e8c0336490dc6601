"""Table 1's claims (arXiv 2511.03202, Section 6.2) as estimates with 95% intervals over bases and repeats, and
verdicts (diffmem.eval.statistics): paired differences d[b, r] between two methods on the same base and repeat
(same fine-tuning batches and sampling noise), a hierarchical bootstrap (bases, then repeats within them), and
'holds' only when the whole interval lies on the claimed side of the threshold.

  C1  importance pruning (Beta(0.8, 2)) lowers memorization vs the original;
  C2  ... vs fine-tune only (the effect is the pruning, not the extra training);
  C3  ... vs random pruning at the same eta;
  C4  importance pruning does not worsen quality vs the original: FD by less than fd_tolerance x the original's
      FD (C4a), precision by less than precision_tolerance (C4b);
  C5  at matched memorization, importance pruning has a lower FD than random (C5a) and magnitude (C5b) pruning:
      along the memorization-FD frontier over eta, interpolated at common memorization levels;
  C6  small-t scores (Beta(0.8, 2)) lower memorization more than large-t scores (Beta(2, 0.8)) at the same eta;
  C7  memorization is decided at small t: in the swap test, switching to the mitigated model only for u <= tau
      carries more than `swap_share` of its effect on memorization;
  H<eta>  heads matter: right after pruning (before fine-tuning), random masks raise the training loss more than
      importance masks.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from diffmem.eval import statistics
from diffmem.experiments.prune_dit.settings import Settings

METRICS = ("memorization_ratio", "fd", "precision", "recall", "kid_mean", "loss_after_prune")


def metric_table(results: list[dict], method: str, eta: Optional[float], key: str, bases: int, repeats: int
                 ) -> np.ndarray:
    """(bases, repeats) array of `key` for (method, eta); NaN where the run does not exist."""
    out = np.full((bases, repeats), np.nan)
    for r in results:
        if r["method"] == method and r["eta"] == eta and r["repeat"] < repeats and r.get(key) is not None:
            out[r["base"], r["repeat"]] = r[key]
    return out


def _both(a: np.ndarray, b: np.ndarray) -> Optional[np.ndarray]:
    """Paired differences a - b (NaN where either run is missing), keeping the bases that have at least one pair;
    None when none has."""
    d = a - b
    keep = np.isfinite(d).any(axis=1)
    return d[keep] if keep.any() else None


def _claim(s: Settings, cid, statement, metric, diffs, direction, threshold=0.0, seed=0) -> dict:
    c = s.claims
    if diffs is None:
        return dict(id=cid, statement=statement, metric=metric, estimate=None, ci_low=None, ci_high=None,
                    n_bases=0, n_repeats=0, verdict="inconclusive", direction=direction, threshold=threshold,
                    level=c.level, note="no paired runs (method not run)")
    return statistics.claim(cid, statement, metric, diffs, direction=direction, threshold=threshold, level=c.level,
                            num_resamples=c.num_resamples, seed=seed)


def frontier_differences(s: Settings, results: list[dict], method: str, other: str) -> Optional[np.ndarray]:
    """(bases, sweep_repeats) mean FD difference method - other at common memorization levels along the two
    frontiers over eta (each curve: the fine-tune-only control at eta = 0, then every swept eta)."""
    b_n, r_n = s.design.bases, s.design.sweep_repeats
    etas = (None,) + s.prune.sweep_etas
    out = np.full((b_n, r_n), np.nan)
    for b in range(b_n):
        for r in range(r_n):
            curves = {}
            for m in (method, other):
                pts = []
                for e in etas:
                    mm = "finetune_only" if e is None else m
                    hit = [x for x in results if (x["method"], x["eta"], x["base"], x["repeat"]) == (mm, e, b, r)]
                    if hit:
                        pts.append((hit[0]["memorization_ratio"], hit[0]["fd"]))
                if len(pts) >= 2:
                    curves[m] = np.asarray(pts)
            if len(curves) == 2:
                levels = statistics.common_levels([curves[method][:, 0], curves[other][:, 0]], s.claims.frontier_levels)
                if levels.size:
                    out[b, r] = statistics.matched_difference(curves[method][:, 0], curves[method][:, 1],
                                                              curves[other][:, 0], curves[other][:, 1], levels)
    ok = np.isfinite(out).any(axis=1)
    return out[ok] if ok.any() else None


def swap_shares(where: dict, pair: tuple[str, str], tau: float) -> Optional[np.ndarray]:
    """(bases,) share of the mitigated model's effect carried by u <= tau: (mem(a then b at tau) - mem(a)) /
    (mem(b) - mem(a)), a the memorizing model, b the mitigated one, per base; NaN where a and b do not differ."""
    out = []
    for base in where.get("swap", {}).get("bases", []):
        for p in base["pairs"]:
            if tuple(p["pair"]) != tuple(pair):
                continue
            cell = [c for c in p["taus"] if abs(c["tau_u"] - tau) < 1e-9]
            a, b = p["a_alone"]["memorization_ratio"], p["b_alone"]["memorization_ratio"]
            if cell and abs(b - a) > 1e-9:
                out.append((cell[0]["a_then_b"]["memorization_ratio"] - a) / (b - a))
    return np.asarray(out) if out else None


def build(s: Settings, results: list[dict], where: dict) -> list[dict]:
    """The claims list of results.json (see the module docstring)."""
    B, R = s.design.bases, max(s.design.repeats, s.design.sweep_repeats)
    e0, c = s.prune.paper_eta, s.claims
    t = lambda m, key, eta=e0: metric_table(results, m, eta, key, B, R)              # noqa: E731
    mem, fd, prec = "memorization_ratio", "fd", "precision"
    orig = lambda key: t("original", key, None)                                       # noqa: E731
    claims = []

    def add(cid, statement, metric, diffs, direction, threshold=0.0):
        claims.append(_claim(s, cid, statement, metric, diffs, direction, threshold, seed=s.seed + len(claims)))

    pct = f"{100 * e0:g}%"
    add("C1", f"importance pruning (Beta(0.8, 2), eta {pct}) lowers memorization vs the original", mem,
        _both(t("importance", mem), orig(mem)), "less")
    add("C2", f"importance pruning (eta {pct}) lowers memorization vs fine-tuning alone (same steps, every head)", mem,
        _both(t("importance", mem), t("finetune_only", mem, None)), "less")
    add("C3", f"importance pruning lowers memorization vs random pruning of as many heads (eta {pct})", mem,
        _both(t("importance", mem), t("random", mem)), "less")
    fd0 = float(np.nanmean(orig(fd)))
    add("C4a", f"importance pruning does not worsen FD vs the original by more than {100 * c.fd_tolerance:g}% of "
               f"the original's FD (margin {c.fd_tolerance * fd0:.4g})", fd,
        _both(t("importance", fd), orig(fd)), "less", c.fd_tolerance * fd0)
    add("C4b", f"importance pruning does not lower precision vs the original by more than {c.precision_tolerance:g}",
        prec, _both(t("importance", prec), orig(prec)), "greater", -c.precision_tolerance)
    for cid, other in (("C5a", "random"), ("C5b", "magnitude")):
        add(cid, f"at matched memorization (the frontier over eta), importance pruning has a lower FD than {other} "
                 f"pruning", "fd_at_matched_memorization", frontier_differences(s, results, "importance", other),
            "less")
    add("C6", f"small-t scores (Beta(0.8, 2)) lower memorization more than large-t scores (Beta(2, 0.8)) at eta "
              f"{pct}", mem, _both(t("importance", mem), t("importance_large_t", mem)), "less")
    if s.where.enabled and s.where.swap_pairs:
        pair = tuple(s.where.swap_pairs[0])
        add("C7", f"memorization is decided at small t: switching from {pair[0]} to {pair[1]} only for u <= "
                  f"{c.swap_tau:g} carries more than {100 * c.swap_share:g}% of the change in memorization",
            "swap_share", swap_shares(where, pair, c.swap_tau), "greater", c.swap_share)
    for eta in s.prune.sweep_etas:
        la = lambda m: t(m, "loss_after_prune", eta)                                  # noqa: E731
        add(f"H{eta:g}", f"heads matter at eta {100 * eta:g}%: right after pruning, random masks raise the training "
                         f"loss more than importance masks", "loss_after_prune", _both(la("random"), la("importance")),
            "greater")
    return claims


def summaries(s: Settings, results: list[dict]) -> dict:
    """{method: {eta or '-': {metric: interval dict}}}: every metric of every (method, eta) with its interval over
    bases and repeats (and, for the pruned ones, the loss increase right after pruning)."""
    B, R = s.design.bases, max(s.design.repeats, s.design.sweep_repeats)
    out: dict = {}
    for m, eta in sorted({(r["method"], r["eta"]) for r in results}, key=lambda x: (x[0], x[1] or -1)):
        cell = {}
        for key in METRICS:
            v = metric_table(results, m, eta, key, B, R)
            if np.isfinite(v).any():
                keep = np.isfinite(v).any(axis=1)
                cell[key] = statistics.interval(v[keep], level=s.claims.level, num_resamples=s.claims.num_resamples,
                                                seed=s.seed)
        if eta is not None:
            inc = metric_table(results, m, eta, "loss_after_prune", B, R) - \
                metric_table(results, m, eta, "loss_unpruned", B, R)
            if np.isfinite(inc).any():
                cell["loss_increase_after_prune"] = statistics.interval(
                    inc[np.isfinite(inc).any(axis=1)], level=s.claims.level, num_resamples=s.claims.num_resamples,
                    seed=s.seed)
        out.setdefault(m, {})["-" if eta is None else f"{eta:g}"] = cell
    return out
