"""Tests for diffmem.eval.statistics: hierarchical bootstrap (closed form, exact enumeration, ragged data,
coverage), intervals, claim verdicts, matched-memorization helpers, agreement of re-runs, errors."""
import itertools
import math

import numpy as np
import pytest

from diffmem.eval import statistics as st

NAN = np.nan


# ---------------------------------------------------------------- references

def _closed_form_var(values):
    """Var* of the bootstrap mean of base means: (1/B)[mean_b (m_b - m)^2 + mean_b s_b^2 / n_b]."""
    rows = [r[np.isfinite(r)] for r in np.atleast_2d(np.asarray(values, float))]
    mb = np.array([r.mean() for r in rows])
    within = np.array([r.var() / r.size for r in rows])  # plug-in s_b^2 / n_b
    return (np.mean((mb - mb.mean()) ** 2) + within.mean()) / len(rows), mb.mean()


def _exact_distribution(values, statistic="mean"):
    """Every resample with its probability: (support (k,), probs (k,)), by brute-force enumeration."""
    rows = [r[np.isfinite(r)] for r in np.asarray(values, float)]
    B = len(rows)
    ys, ps = [], []  # a drawn base's resampled mean Y, and its probability (one stage-1 draw)
    for r in rows:
        n = r.size
        for draw in itertools.product(range(n), repeat=n):
            ys.append(r[list(draw)].mean())
            ps.append(1.0 / B / n ** n)
    ys, ps = np.array(ys), np.array(ps)
    grid = np.array(list(itertools.product(range(len(ys)), repeat=B)))  # (k^B, B) stage-1 outcomes
    stat = ys[grid].mean(1) if statistic == "mean" else np.median(ys[grid], 1)
    prob = ps[grid].prod(1)
    support, inv = np.unique(np.round(stat, 12), return_inverse=True)
    return support, np.bincount(inv, weights=prob)


def _check_against_exact(boot, support, probs):
    """Mean, variance, CDF and quantiles of Monte-Carlo draws `boot` against the exact distribution."""
    n = boot.size
    mean = (support * probs).sum()
    var = ((support - mean) ** 2 * probs).sum()
    m4 = ((support - mean) ** 4 * probs).sum()
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-12)
    assert abs(boot.mean() - mean) < 5 * math.sqrt(var / n)
    assert abs(boot.var() - var) < 5 * math.sqrt((m4 - var ** 2) / n)
    # every draw lies on the exact support
    assert np.isin(np.round(boot, 12), support).all()
    # DKW: P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2) = 1e-6
    eps = math.sqrt(math.log(2e6) / (2 * n))
    cdf = np.cumsum(probs)
    emp = np.searchsorted(np.sort(boot), support + 1e-9, side="right") / n
    assert np.max(np.abs(emp - cdf)) < eps
    for q in (0.025, 0.5, 0.975):  # the MC quantile is a support point whose CDF jump brackets q
        x = np.quantile(boot, q, method="inverted_cdf")
        k = np.searchsorted(support, x - 1e-9)
        below = cdf[k - 1] if k else 0.0
        assert below - eps <= q <= cdf[k] + eps, (q, x, below, cdf[k])


# ---------------------------------------------------------------- bootstrap: closed form

@pytest.mark.parametrize("ragged", [False, True])
def test_bootstrap_variance_matches_closed_form(ragged):
    rng = np.random.default_rng(0)
    B, R, N = 5, 6, 200_000
    d = rng.normal(0.0, 1.0, (B, 1)) + rng.normal(0.0, 2.0, (B, R))
    if ragged:  # counts 1, 3, 4, 5, 6, with holes in varied places
        d[0, 1:] = NAN
        d[1, [0, 2, 5]] = NAN
        d[2, [1, 4]] = NAN
        d[3, 3] = NAN
    var, m = _closed_form_var(d)
    boot = st.hierarchical_bootstrap(d, num_resamples=N, seed=3)
    assert boot.shape == (N,)
    se_mean = math.sqrt(var / N)
    assert abs(boot.mean() - m) < 5 * se_mean
    c = boot - boot.mean()
    se_var = math.sqrt((np.mean(c ** 4) - np.mean(c ** 2) ** 2) / N)  # SE of the MC variance
    tol = 5 * se_var
    assert tol / var < 0.03  # "within a few percent": the test resolves ~2% errors
    assert abs(boot.var() - var) < tol
    # the test can fail: dropping the within-base term, or using unbiased variances, is rejected
    mb = np.nanmean(d, 1)
    assert abs(boot.var() - np.mean((mb - mb.mean()) ** 2) / B) > tol
    assert abs(boot.var() - var * B / (B - 1)) > tol


# ---------------------------------------------------------------- bootstrap: exact enumeration

@pytest.mark.parametrize("values, statistic", [
    ([[0.0, 1.0], [3.0, 7.0]], "mean"),                                # B = 2, R = 2: 64 resamples
    ([[0.0], [1.0], [5.0]], "mean"),                                   # B = 3, R = 1: 27 resamples
    ([[2.0, NAN, NAN], [NAN, 0.0, 5.0], [1.0, 4.0, 9.0]], "mean"),     # ragged counts 1, 2, 3
    ([[2.0, NAN, NAN], [NAN, 0.0, 5.0], [1.0, 4.0, 9.0]], "median"),
])
def test_bootstrap_matches_exact_enumeration(values, statistic):
    support, probs = _exact_distribution(values, statistic)
    boot = st.hierarchical_bootstrap(values, num_resamples=100_000, seed=1, statistic=statistic)
    _check_against_exact(boot, support, probs)


def test_exact_enumeration_catches_a_wrong_scheme():
    """The exact check is sharp: pooling all values (one-level bootstrap, ignoring bases) is rejected."""
    values = np.array([[0.0, 1.0], [3.0, 7.0]])
    support, probs = _exact_distribution(values)
    pooled = np.random.default_rng(0).choice(values.ravel(), size=(100_000, 4)).mean(1)
    with pytest.raises(AssertionError):
        _check_against_exact(pooled, support, probs)


# ---------------------------------------------------------------- one-level and ragged designs

def test_one_level_is_the_ordinary_bootstrap():
    x = np.random.default_rng(5).normal(size=12)
    a = st.hierarchical_bootstrap(x, num_resamples=20_000, seed=7)
    b = st.hierarchical_bootstrap(x[:, None], num_resamples=20_000, seed=7)
    naive = x[np.random.default_rng(7).integers(0, x.size, (20_000, x.size))].mean(1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, naive)
    assert abs(a.var() / (x.var() / x.size) - 1) < 0.05  # plug-in s^2 / n, MC rel. SE ~1%


def test_missing_repeats_are_never_drawn():
    np.testing.assert_array_equal(st.hierarchical_bootstrap([[NAN, 5.0, NAN]], num_resamples=500), 5.0)
    # where the holes sit does not matter: same draws, bit for bit
    a = st.hierarchical_bootstrap([[1.0, NAN, NAN], [3.0, NAN, 5.0]], num_resamples=2000, seed=2)
    b = st.hierarchical_bootstrap([[NAN, 1.0, NAN], [3.0, 5.0, NAN]], num_resamples=2000, seed=2)
    np.testing.assert_array_equal(a, b)
    # support of the mean of 2 drawn base means: base0 mean 1, base1 mean in {3, 4, 5}
    assert set(np.round(a, 12)) == {1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0}


def test_interval_weighs_bases_equally_and_counts():
    d = [[0.0, NAN, NAN, NAN], [1.0, 1.0, 1.0, NAN]]
    ci = st.interval(d, num_resamples=4000)
    assert ci["estimate"] == 0.5  # mean of base means (pooled mean would be 0.75)
    assert (ci["n_bases"], ci["n_repeats"], ci["n_values"]) == (2, 1, 4)
    assert ci["method"] == "hierarchical percentile bootstrap" and ci["level"] == 0.95
    boot = st.hierarchical_bootstrap(d, num_resamples=4000)
    assert (ci["ci_low"], ci["ci_high"]) == tuple(np.quantile(boot, [0.025, 0.975]))
    assert (ci["ci_low"], ci["ci_high"]) == (0.0, 1.0)  # P(both draws = base 0) = 1/4 > 2.5%
    med = st.interval([[0.0], [1.0], [10.0]], statistic="median", num_resamples=100)
    assert med["estimate"] == 1.0 and med["statistic"] == "median"


# ---------------------------------------------------------------- coverage

def _coverage(B, R, sd_base, sd_rep, n_sets=300, seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n_sets):
        d = 1.5 + rng.normal(0, sd_base, (B, 1)) + rng.normal(0, sd_rep, (B, R))
        ci = st.interval(d, num_resamples=1000, seed=i)
        hits += ci["ci_low"] <= 1.5 <= ci["ci_high"]
    return hits / n_sets


@pytest.mark.parametrize("B, R, sd_base", [(30, 1, 0.0), (20, 3, 1.0)])
def test_coverage_near_nominal(B, R, sd_base):
    assert 0.90 <= _coverage(B, R, sd_base, 1.0) <= 0.98


def test_coverage_with_three_bases_is_low_when_bases_differ():
    """Documents the caveat in the module docstring: B = 3 and base sd >> repeat sd under-covers."""
    assert _coverage(3, 5, 1.0, 0.1) < 0.88  # ~0.75 in longer simulations


# ---------------------------------------------------------------- claims

KEYS = {"id", "statement", "metric", "estimate", "ci_low", "ci_high", "n_bases", "n_repeats", "verdict",
        "direction", "threshold", "level", "note"}


def _claim(diffs, direction, threshold=0.0, **kw):
    return st.claim("c", "A memorizes less than B", "mem_ratio", diffs, direction=direction,
                    threshold=threshold, num_resamples=2000, **kw)


@pytest.mark.parametrize("shift, less, greater", [(-1.0, "holds", "fails"), (1.0, "fails", "holds"),
                                                  (0.0, "inconclusive", "inconclusive")])
def test_claim_verdicts_both_directions(shift, less, greater):
    d = shift + np.random.default_rng(0).normal(0, 0.3, (4, 5))
    d -= d.mean() if shift == 0.0 else 0.0  # straddle 0 exactly
    a, b = _claim(d, "less"), _claim(d, "greater")
    assert set(a) == KEYS and (a["verdict"], b["verdict"]) == (less, greater)
    assert (a["n_bases"], a["n_repeats"], a["threshold"], a["level"]) == (4, 5, 0.0, 0.95)
    assert "4 bases" in a["note"]


def test_claim_threshold_non_inferiority():
    d = 0.5 + np.random.default_rng(1).normal(0, 0.01, (12, 5))  # FD(method) - FD(original), tol = 1
    assert _claim(d, "less", threshold=1.0)["verdict"] == "holds"
    assert _claim(d, "less", threshold=0.0)["verdict"] == "fails"
    assert _claim(d, "less", threshold=0.5)["verdict"] == "inconclusive"
    assert _claim(d, "greater", threshold=0.4)["verdict"] == "holds"
    assert _claim(d, "less", threshold=1.0)["note"] == ""  # 12 bases: nothing to say


def test_claim_interval_touching_threshold_is_inconclusive():
    assert _claim(np.zeros((3, 5)), "less")["verdict"] == "inconclusive"  # ci = [0, 0]
    assert _claim(np.zeros((3, 5)), "greater")["verdict"] == "inconclusive"
    assert _claim(-np.ones((3, 5)), "less")["verdict"] == "holds"
    assert _claim(-np.ones((3, 5)), "less", threshold=-1.0)["verdict"] == "inconclusive"


def test_claim_needs_two_bases():
    c = _claim([[-1.0, -1.1, -0.9, -1.05, -0.95]], "less")
    assert c["ci_high"] < 0 and c["verdict"] == "inconclusive" and "only 1 base" in c["note"]
    c = _claim(-np.ones((2, 5)), "less", min_bases=3)
    assert c["verdict"] == "inconclusive" and "at least 3" in c["note"]


def test_claim_verdict_follows_its_interval():
    for s in range(20):
        d = np.random.default_rng(s).normal(0.1, 0.5, (3, 5))
        for direction, t in (("less", 0.0), ("greater", 0.0), ("less", 0.3)):
            c = _claim(d, direction, t, seed=s)
            side = (c["ci_high"] < t, c["ci_low"] > t)
            holds, fails = side if direction == "less" else side[::-1]
            assert c["verdict"] == ("holds" if holds else "fails" if fails else "inconclusive")


# ---------------------------------------------------------------- matched memorization

def test_interpolate_curve():
    x, y = [2.0, 0.0, 1.0, 1.0], [4.0, 0.0, 1.0, 3.0]  # unsorted; x = 1 twice -> y = 2
    got = st.interpolate_curve(x, y, [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_array_equal(got, [NAN, 0.0, 1.0, 2.0, 3.0, 4.0, NAN])
    assert float(st.interpolate_curve(x, y, 0.25)) == 0.5
    np.testing.assert_array_equal(st.interpolate_curve([3.0], [7.0], [2.9, 3.0, 3.1]), [NAN, 7.0, NAN])


def test_matched_difference_and_common_levels():
    xa, ya, xb, yb = [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [5.0, 9.0, 7.0]
    # inside both ranges: 1, 1.5, 2 -> (1-5, 1.5-7, 2-9) -> mean -5.5; levels 0 and 3 are dropped
    assert st.matched_difference(xa, ya, xb, yb, [0.0, 1.0, 1.5, 2.0, 3.0]) == -5.5
    assert math.isnan(st.matched_difference(xa, ya, xb, yb, [5.0]))
    np.testing.assert_array_equal(st.common_levels([[0, 1, 4], [2, 3, 5], [1, 6]]), [2, 2.5, 3, 3.5, 4])
    np.testing.assert_array_equal(st.common_levels([[0, 1, 4], [2, 3, 5]], num=1), [3.0])
    np.testing.assert_array_equal(st.common_levels([[0, 2], [2, 3]]), [2.0])
    assert st.common_levels([[0, 1], [2, 3]]).shape == (0,)


def test_matched_differences_feed_a_claim():
    """Per (base, repeat): curves of FD vs memorization for A and B; A is 1 FD unit better everywhere."""
    rng = np.random.default_rng(2)
    diffs = np.empty((4, 5))
    for b, r in np.ndindex(diffs.shape):
        xa, xb = np.sort(rng.uniform(0, 1, 6)), np.sort(rng.uniform(0, 1, 6))
        off = rng.normal(0, 0.05)
        levels = st.common_levels([xa, xb])
        diffs[b, r] = st.matched_difference(xa, 10 - 5 * xa + off, xb, 11 - 5 * xb, levels)
    np.testing.assert_allclose(diffs.mean(), -1.0, atol=0.05)
    assert _claim(diffs, "less")["verdict"] == "holds"


# ---------------------------------------------------------------- re-runs

def test_agree_flips_are_inconclusive():
    a = [{"id": "c1", "verdict": "holds"}, {"id": "c2", "verdict": "fails"},
         {"id": "c3", "verdict": "inconclusive"}, {"id": "c4", "verdict": "holds"}]
    b = [{"id": "c4", "verdict": "fails"}, {"id": "c3", "verdict": "inconclusive"},
         {"id": "c2", "verdict": "inconclusive"}, {"id": "c1", "verdict": "holds"},
         {"id": "c5", "verdict": "holds"}]
    r = st.agree(a, b)
    assert r["agree"] == ["c1", "c3"] and r["flip"] == ["c2", "c4"]
    assert r["reversed"] == ["c4"] and r["missing"] == ["c5"]
    assert r["merged"] == {"c1": "holds", "c2": "inconclusive", "c3": "inconclusive",
                           "c4": "inconclusive", "c5": "inconclusive"}


def test_agree_on_real_reruns():
    rng = np.random.default_rng(3)
    run = [_claim(rng.normal(-1, 0.2, (4, 5)), "less", seed=s) for s in (0, 1)]
    run[1]["id"] = "c"  # same claim, other seed set
    assert st.agree([run[0]], [run[1]])["merged"] == {"c": "holds"}
    with pytest.raises(ValueError, match="duplicate claim id"):
        st.agree(run, run)


# ---------------------------------------------------------------- determinism

def test_same_seed_same_results(monkeypatch):
    d = np.random.default_rng(4).normal(size=(3, 4))
    d[1, 2] = NAN
    with monkeypatch.context() as m:
        m.setattr(st, "_CHUNK", 48)  # 4 resamples per internal chunk: 251 chunks
        a = st.hierarchical_bootstrap(d, num_resamples=1003, seed=9)
        np.testing.assert_array_equal(a, st.hierarchical_bootstrap(d, num_resamples=1003, seed=9))
    var, m = _closed_form_var(d)  # chunked draws are still the right distribution
    assert abs(a.mean() - m) < 5 * math.sqrt(var / a.size) and abs(a.var() / var - 1) < 0.25
    assert not np.array_equal(st.hierarchical_bootstrap(d, num_resamples=100, seed=9),
                              st.hierarchical_bootstrap(d, num_resamples=100, seed=10))
    assert _claim(d, "less", seed=5) == _claim(d, "less", seed=5)
    assert st.interval(d, seed=5) == st.interval(d, seed=5)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("call, match", [
    (lambda: st.hierarchical_bootstrap(np.zeros((2, 2, 2))), "values"),
    (lambda: st.hierarchical_bootstrap([]), "values"),
    (lambda: st.hierarchical_bootstrap(["a", "b"]), "values"),
    (lambda: st.hierarchical_bootstrap([[1.0, np.inf]]), "values"),
    (lambda: st.hierarchical_bootstrap([[1.0, 2.0], [NAN, NAN]]), r"base\(s\) \[1\]"),
    (lambda: st.hierarchical_bootstrap([1.0], num_resamples=0), "num_resamples"),
    (lambda: st.hierarchical_bootstrap([1.0], num_resamples=10.0), "num_resamples"),
    (lambda: st.hierarchical_bootstrap([1.0], seed=-1), "seed"),
    (lambda: st.hierarchical_bootstrap([1.0], statistic="max"), "statistic"),
    (lambda: st.interval([1.0], level=1.0), "level"),
    (lambda: st.interval([1.0], level=0), "level"),
    (lambda: st.interval([1.0], level=True), "level"),
    (lambda: _claim([1.0, 2.0], "lt"), "direction"),
    (lambda: _claim([1.0, 2.0], "less", threshold=NAN), "threshold"),
    (lambda: _claim([1.0, 2.0], "less", min_bases=1), "min_bases"),
    (lambda: st.claim("", "s", "m", [1.0], direction="less"), "id"),
    (lambda: st.claim("c", None, "m", [1.0], direction="less"), "statement"),
    (lambda: st.interpolate_curve([0, 1], [0], [0.5]), "x and y"),
    (lambda: st.interpolate_curve([0, NAN], [0, 1], [0.5]), "x and y"),
    (lambda: st.interpolate_curve([0, 1], [0, 1], [NAN]), "levels"),
    (lambda: st.common_levels([]), "curves"),
    (lambda: st.common_levels([[0, 1]], num=0), "num"),
    (lambda: st.agree([{"id": "c"}], []), "verdicts_a"),
    (lambda: st.agree([], {"id": "c", "verdict": "holds"}), "verdicts_b"),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- tolerance claims and the claims table

def test_within_verdicts_follow_the_interval():
    """holds when the whole interval is inside [low, high], fails when wholly outside, else inconclusive; the numbers
    are those of `interval` with the same seed."""
    near = np.array([0.98, 1.01, 1.02, 0.99, 1.00])
    c = st.within("w", "ratio -> 1", "ratio", near, low=0.9, high=1.1)
    ci = st.interval(near)
    assert c["verdict"] == "holds" and (c["ci_low"], c["ci_high"]) == (ci["ci_low"], ci["ci_high"])
    assert c["direction"] == "within" and c["threshold"] == [0.9, 1.1]
    assert st.within("w", "s", "m", near + 0.5, low=0.9, high=1.1)["verdict"] == "fails"
    assert st.within("w", "s", "m", near - 0.5, low=0.9, high=1.1)["verdict"] == "fails"
    wide = np.array([0.6, 1.4, 0.8, 1.2, 1.0])
    assert st.within("w", "s", "m", wide, low=0.9, high=1.1)["verdict"] == "inconclusive"
    one = st.within("w", "s", "m", [1.0], low=0.9, high=1.1)
    assert one["verdict"] == "inconclusive" and "1 base" in one["note"]
    with pytest.raises(ValueError, match="low must be < high"):
        st.within("w", "s", "m", near, low=1.1, high=0.9)


def test_claims_markdown_and_unmeasured():
    claims = [st.claim("a", "x > 0", "x", [0.5, 0.6, 0.55], direction="greater"),
              st.unmeasured("b", "y grows", "slope", "nothing bracketed")]
    assert claims[1]["verdict"] == "inconclusive" and claims[1]["estimate"] is None
    text = st.claims_markdown(claims, "demo")
    lines = text.splitlines()
    assert lines[0] == "## demo" and lines[2].startswith("| id | statement")
    assert "| a | x > 0 | x | 0.55 [" in text and "**holds**" in text
    assert "| b | y grows | slope | n/a [n/a, n/a] | 0 x 0 | **inconclusive** | nothing bracketed |" in text
