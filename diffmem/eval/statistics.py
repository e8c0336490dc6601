"""Claims as estimates with intervals over independent seeds, and their verdicts (pure numpy).

The project's rule: a claim is an estimate with a 95% interval over independent seeds and a verdict
('holds' / 'fails' / 'inconclusive'): one-sided (`claim`), a tolerance band (`within`), or not measurable
(`unmeasured`); `claims_markdown` writes them as a table. Design (the paper's comparison of methods,
arXiv 2511.03202, Table 1, re-done with replication): B base models trained from independent seeds; for each base, R repeats
(independent pruning + fine-tuning + sampling seeds) per method; a metric per (method, base, repeat).
Methods are compared by PAIRED differences d[b, r] = metric(A, b, r) - metric(B, b, r) (same base, same
repeat seeds), an array (B, R). One-level designs (seeds only) are the case R = 1, or a 1-D array (B,).

Estimator: the mean over bases of the per-base means, m = (1/B) sum_b m_b, m_b = mean of base b's finite
repeats. Each base weighs equally whatever its repeat count: the base (a trained model) is the unit of
independent replication, and a base with more surviving repeats must not dominate the claim.
Interval: hierarchical (two-stage) percentile bootstrap (`hierarchical_bootstrap`, `interval`).
Caveat: the bootstrap's between-base spread is the plug-in one, smaller by (B-1)/B than the unbiased one,
and with B = 3 the base stage has only 10 distinct multisets, so when the base-to-base variation dominates
the interval is too narrow. Simulated coverage of the 95% interval (normal data, R = 5, base sd = repeat
sd; 1500 data sets): 83% at B = 3 (75% when base sd = 10 x repeat sd), 87% at B = 5, 92% at B = 10,
94% at B = 20; 96% at B = 3 when bases do not differ (the within-base spread then enters twice, once
through the spread of the base means: conservative).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np

STATISTICS = {"mean": np.mean, "median": np.median}  # over bases, of the per-base means
DIRECTIONS = ("less", "greater")
VERDICTS = ("holds", "fails", "inconclusive")
METHOD = "hierarchical percentile bootstrap"
FEW_BASES = 10  # below this many bases `claim` notes that the interval may be too narrow (module docstring)
_CHUNK = 1 << 22  # max elements of the (chunk, B, R) draw array: bounds memory, keeps the loop short


# ---------------------------------------------------------------- argument checks

def _table(values, name: str = "values") -> tuple[np.ndarray, np.ndarray]:
    """(B,) or (B, R) array, NaN = missing -> (compact (B, R_max), counts (B,)).

    compact holds each base's finite values first, in their original order, then zeros (never drawn).
    """
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real array of shape (B,) or (B, R), got {type(values).__name__}") from None
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty array of shape (B,) or (B, R), got shape {np.shape(values)}")
    if np.isinf(v).any():
        raise ValueError(f"{name} contains inf; only finite values and NaN (a missing repeat) are accepted")
    ok = ~np.isnan(v)
    counts = ok.sum(1)  # (B,) finite repeats per base
    if (counts == 0).any():
        raise ValueError(f"{name}: base(s) {np.flatnonzero(counts == 0).tolist()} have no finite value; "
                         "every base needs at least one")
    order = np.argsort(~ok, axis=1, kind="stable")  # finite entries first
    compact = np.take_along_axis(np.where(ok, v, 0.0), order, 1)[:, :counts.max()]
    return compact, counts


def _check_int(name: str, x, low: int) -> int:
    if isinstance(x, bool) or not isinstance(x, Integral) or x < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {x!r}")
    return int(x)


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, Real) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def _check_statistic(statistic) -> str:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    return statistic


def _base_means(compact: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return compact.sum(1) / counts  # (B,)


# ---------------------------------------------------------------- bootstrap and interval

def hierarchical_bootstrap(values, *, num_resamples: int = 10_000, seed: int = 0,
                           statistic: str = "mean") -> np.ndarray:
    """Bootstrap distribution (num_resamples,) of the statistic over bases of the per-base means.

    values: (B, R) float, NaN marks a missing repeat (bases may have different counts n_b >= 1), or (B,)
    for B bases with one value each (then this is the ordinary bootstrap of the mean). Each resample draws
    B bases uniformly with replacement; within each drawn base b it draws n_b of b's finite values
    uniformly with replacement (missing entries are never drawn) and takes their mean; the resampled
    statistic is `statistic` ('mean' or 'median') over the B drawn bases of those means.
    For 'mean' the bootstrap distribution has mean m (the data's mean of base means) and variance
        Var* = (1/B) [ mean_b (m_b - m)^2 + mean_b (s_b^2 / n_b) ],  s_b^2 = mean_r (d_br - m_b)^2.
    Vectorised: draws for many resamples at once (chunks of <= 2^22 elements), deterministic given seed.
    """
    compact, counts = _table(values)
    num_resamples = _check_int("num_resamples", num_resamples, 1)
    seed = _check_int("seed", seed, 0)
    stat = STATISTICS[_check_statistic(statistic)]
    n_bases, r_max = compact.shape
    rng = np.random.default_rng(seed)
    out = np.empty(num_resamples)  # (num_resamples,)
    step = max(1, _CHUNK // (n_bases * r_max))
    for start in range(0, num_resamples, step):
        c = min(step, num_resamples - start)
        idx = rng.integers(0, n_bases, size=(c, n_bases))  # (c, B) drawn bases
        if r_max == 1:
            means = compact[idx, 0]  # (c, B)
        else:
            n = counts[idx][..., None]  # (c, B, 1) repeats of each drawn base
            pos = rng.integers(0, n, size=(c, n_bases, r_max))  # (c, B, R_max) drawn repeat positions
            keep = np.arange(r_max) < n  # only the first n_b draws of a base count
            means = np.where(keep, compact[idx[..., None], pos], 0.0).sum(-1) / n[..., 0]  # (c, B)
        out[start:start + c] = stat(means, axis=-1)
    return out


def interval(values, *, level: float = 0.95, num_resamples: int = 10_000, seed: int = 0,
             statistic: str = "mean") -> dict:
    """Estimate and hierarchical percentile-bootstrap interval of the statistic of `values` (B, R).

    estimate = the statistic over bases of the per-base means of the data (see `hierarchical_bootstrap`);
    [ci_low, ci_high] = the (1-level)/2 and (1+level)/2 quantiles (numpy's default linear interpolation)
    of the bootstrap distribution. n_bases = B; n_repeats = the smallest per-base count of finite repeats
    (every base has at least that many); n_values = total count of finite values.
    """
    level = _check_level(level)
    boot = hierarchical_bootstrap(values, num_resamples=num_resamples, seed=seed, statistic=statistic)
    compact, counts = _table(values)
    lo, hi = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return dict(estimate=float(STATISTICS[statistic](_base_means(compact, counts))),
                ci_low=float(lo), ci_high=float(hi), n_bases=int(len(counts)), n_repeats=int(counts.min()),
                n_values=int(counts.sum()), level=level, method=METHOD, statistic=statistic)


def claim(id: str, statement: str, metric: str, diffs, *, direction: str, threshold: float = 0.0,
          level: float = 0.95, num_resamples: int = 10_000, seed: int = 0, min_bases: int = 2) -> dict:
    """A claim about the true mean paired difference, with its estimate, interval and verdict.

    diffs: (B, R) paired differences (NaN = missing repeat) or (B,). direction 'less' claims the true
    difference is < threshold, 'greater' that it is > threshold. With [lo, hi] = `interval(diffs)`:
    verdict 'holds' when the whole interval is on the claimed side (hi < threshold for 'less',
    lo > threshold for 'greater'), 'fails' when it is wholly on the other side (lo > threshold for 'less',
    hi < threshold for 'greater'), else 'inconclusive'; always 'inconclusive' with fewer than min_bases
    bases (stated in `note`; with fewer than FEW_BASES bases `note` says the interval may be too narrow,
    see the module docstring). A nonzero threshold serves non-inferiority claims, e.g. 'FD not worse than
    the original by more than tol': diffs = FD(method) - FD(original), direction 'less', threshold tol.
    Returns {id, statement, metric, estimate, ci_low, ci_high, n_bases, n_repeats, verdict, direction,
    threshold, level, note}; note is '' unless there is something to say.
    """
    for name, s in (("id", id), ("statement", statement), ("metric", metric)):
        if not isinstance(s, str) or (name == "id" and not s):
            raise ValueError(f"{name} must be a{' non-empty' if name == 'id' else ''} string, got {s!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    min_bases = _check_int("min_bases", min_bases, 2)
    ci = interval(diffs, level=level, num_resamples=num_resamples, seed=seed)
    lo, hi, t = ci["ci_low"], ci["ci_high"], float(threshold)
    holds, fails = (hi < t, lo > t) if direction == "less" else (lo > t, hi < t)
    note = _few_bases_note(ci["n_bases"], min_bases)
    if ci["n_bases"] < min_bases:
        holds = fails = False
    verdict = "holds" if holds else "fails" if fails else "inconclusive"
    return dict(id=id, statement=statement, metric=metric, estimate=ci["estimate"], ci_low=lo, ci_high=hi,
                n_bases=ci["n_bases"], n_repeats=ci["n_repeats"], verdict=verdict, direction=direction,
                threshold=t, level=ci["level"], note=note)


def _few_bases_note(n_bases: int, min_bases: int) -> str:
    if n_bases < min_bases:
        return f"only {n_bases} base(s); a verdict needs at least {min_bases} independently trained bases"
    if n_bases < FEW_BASES:
        return f"only {n_bases} bases: the interval may be too narrow if bases differ more than repeats do"
    return ""


def within(id: str, statement: str, metric: str, values, *, low: float, high: float, level: float = 0.95,
           num_resamples: int = 10_000, seed: int = 0, min_bases: int = 2) -> dict:
    """A tolerance claim: the true mean of `values` (B, R) or (B,) lies in [low, high] (e.g. a ratio that theory
    puts at 1, within 1 +- tol).

    With [lo, hi] = `interval(values)`: 'holds' when low <= lo and hi <= high (the whole interval inside),
    'fails' when hi < low or lo > high (wholly outside), else 'inconclusive'; always 'inconclusive' with fewer
    than min_bases bases (see `claim`, whose fields this returns, with direction 'within' and threshold
    [low, high]).
    """
    for name, s in (("id", id), ("statement", statement), ("metric", metric)):
        if not isinstance(s, str) or (name == "id" and not s):
            raise ValueError(f"{name} must be a{' non-empty' if name == 'id' else ''} string, got {s!r}")
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, Real) or not np.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if not low < high:
        raise ValueError(f"low must be < high, got low={low!r}, high={high!r}")
    min_bases = _check_int("min_bases", min_bases, 2)
    ci = interval(values, level=level, num_resamples=num_resamples, seed=seed)
    lo, hi = ci["ci_low"], ci["ci_high"]
    holds, fails = low <= lo and hi <= high, hi < low or lo > high
    if ci["n_bases"] < min_bases:
        holds = fails = False
    verdict = "holds" if holds else "fails" if fails else "inconclusive"
    return dict(id=id, statement=statement, metric=metric, estimate=ci["estimate"], ci_low=lo, ci_high=hi,
                n_bases=ci["n_bases"], n_repeats=ci["n_repeats"], verdict=verdict, direction="within",
                threshold=[float(low), float(high)], level=ci["level"],
                note=_few_bases_note(ci["n_bases"], min_bases))


def unmeasured(id: str, statement: str, metric: str, note: str) -> dict:
    """A claim that could not be measured (e.g. no seed reached the quantity): the fields of `claim` with no
    estimate or interval, verdict 'inconclusive' and the reason in `note`."""
    return dict(id=id, statement=statement, metric=metric, estimate=None, ci_low=None, ci_high=None, n_bases=0,
                n_repeats=0, verdict="inconclusive", direction=None, threshold=None, level=None, note=note)


def claims_markdown(claims: Sequence[Mapping], title: str = "") -> str:
    """A markdown table of claims (from `claim` / `within`): id, statement, metric, estimate [95% interval],
    bases x repeats, verdict, note (plus any 'context' entry)."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| id | statement | metric | estimate [interval] | bases x repeats | verdict | note |",
              "|---|---|---|---|---|---|---|"]
    for c in claims:
        note = "; ".join(x for x in (c.get("note", ""), c.get("context", "")) if x)
        cell = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{v:.4g}"
        lines.append(f"| {c['id']} | {c['statement']} | {c['metric']} | {cell(c['estimate'])} "
                     f"[{cell(c['ci_low'])}, {cell(c['ci_high'])}] | {c['n_bases']} x {c['n_repeats']} | "
                     f"**{c['verdict']}** | {note} |")
    return "\n".join(lines) + "\n"


def agree(verdicts_a: Sequence[Mapping], verdicts_b: Sequence[Mapping]) -> dict:
    """Compare two runs' claims (e.g. the same claims re-run with another seed set) by id.

    Returns {agree: ids with the same verdict, flip: ids whose verdicts differ (any change), reversed:
    the flips between 'holds' and 'fails', missing: ids in only one run, merged: {id: verdict}}. Rule: a
    claim keeps its verdict only when both runs agree; a flipped claim, or one not re-run, is
    'inconclusive'. Ids are listed in first-seen order (run a, then new ids of run b).
    """
    a, b = _verdicts_by_id(verdicts_a, "verdicts_a"), _verdicts_by_id(verdicts_b, "verdicts_b")
    ids = list(a) + [i for i in b if i not in a]
    both = [i for i in ids if i in a and i in b]
    same = [i for i in both if a[i] == b[i]]
    flip = [i for i in both if a[i] != b[i]]
    return dict(agree=same, flip=flip, reversed=[i for i in flip if {a[i], b[i]} == {"holds", "fails"}],
                missing=[i for i in ids if i not in both],
                merged={i: a[i] if i in same else "inconclusive" for i in ids})


def _verdicts_by_id(claims, name: str) -> dict:
    if isinstance(claims, (str, Mapping)) or not isinstance(claims, Sequence):
        raise ValueError(f"{name} must be a list of claim dicts (from `claim`), got {type(claims).__name__}")
    out = {}
    for c in claims:
        if not isinstance(c, Mapping) or "id" not in c or c.get("verdict") not in VERDICTS:
            raise ValueError(f"{name}: every item must be a dict with an 'id' and a 'verdict' in "
                             f"{list(VERDICTS)}, got {c!r}")
        if c["id"] in out:
            raise ValueError(f"{name}: duplicate claim id {c['id']!r}")
        out[c["id"]] = c["verdict"]
    return out


# ---------------------------------------------------------------- quality at matched memorization

def _curve(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Points (x_i, y_i) -> (unique sorted x (k,), y averaged over equal x (k,))."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"x and y must be non-empty 1-D arrays of one length, got shapes {x.shape}, {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (drop failed points before building a curve)")
    ux, inv = np.unique(x, return_inverse=True)
    return ux, np.bincount(inv, weights=y) / np.bincount(inv)


def interpolate_curve(x, y, levels) -> np.ndarray:
    """y of the curve through points (x_i, y_i) at x = levels; shape of levels.

    The points are sorted by x inside; the y of points with equal x are averaged into one point; between
    points the curve is linear (np.interp); outside [min x, max x] the result is NaN (no extrapolation).
    """
    ux, uy = _curve(x, y)
    lv = np.asarray(levels, dtype=np.float64)
    if not np.isfinite(lv).all():
        raise ValueError("levels must be finite numbers")
    return np.where((lv >= ux[0]) & (lv <= ux[-1]), np.interp(lv, ux, uy), np.nan)


def matched_difference(xa, ya, xb, yb, levels) -> float:
    """Mean over the levels inside BOTH curves' x-ranges of y_a(level) - y_b(level); NaN if there is none.

    E.g. x = memorization ratio, y = FD: the mean FD difference of methods A and B at matched memorization.
    """
    d = interpolate_curve(xa, ya, levels) - interpolate_curve(xb, yb, levels)
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else float("nan")


def common_levels(curves, num: int = 5) -> np.ndarray:
    """num evenly spaced levels (num,) from lo to hi, both included, where [lo, hi] is the intersection of
    the x-ranges of all curves (each curve given by its 1-D array of x values). Empty (0,) when the
    intersection is empty; one level when lo == hi or num == 1 (then the midpoint)."""
    num = _check_int("num", num, 1)
    if isinstance(curves, (str, np.ndarray)) or not isinstance(curves, Sequence) or not curves:
        raise ValueError("curves must be a non-empty list of 1-D arrays of x values")
    xs = [np.asarray(c, dtype=np.float64) for c in curves]
    if any(x.ndim != 1 or x.size == 0 or not np.isfinite(x).all() for x in xs):
        raise ValueError("curves: each curve must be a non-empty 1-D array of finite x values")
    lo, hi = max(x.min() for x in xs), min(x.max() for x in xs)
    if lo > hi:
        return np.empty(0)
    if lo == hi or num == 1:
        return np.array([(lo + hi) / 2.0])
    return np.linspace(lo, hi, num)
