"""The loss_gap experiment: vmapped n sweep, Theorem 4.3's window and claims on constructed gaps, entry point,
results.json, bad configs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import loss_gap as loss_gap_config
from diffmem import experiments, scores, sde
from diffmem.experiments import loss_gap

import two_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vmapped_sweep_equals_loop_and_traces_once():
    mix = scores.random_mixture(jax.random.key(0), 4, 3)
    ts = sde.log_time_grid(1e-2, 1.0, 3)
    ns = [5, 17, 40]
    masks = jnp.asarray(np.arange(40)[None] < np.asarray(ns)[:, None], jnp.float32)
    sweep = loss_gap.make_sweep_fn(mix, ts, 64, 8)
    loop = loss_gap.make_loop_fn(mix, ts, 64, 8)
    key = jax.random.key(1)
    for r in range(3):   # several training sets: still one trace
        data = scores.sample_mixture(jax.random.fold_in(key, r), mix, 40)
        out = sweep(key, data, masks)
        assert out["a"].shape == (3, 3, 64)
        for i, n in enumerate(ns):
            ref = loop(jax.random.fold_in(key, i), data[:n])
            np.testing.assert_allclose(out["a"][i], ref["a"], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(out["b"][i], ref["b"], rtol=1e-4, atol=1e-4)
    assert sweep.traces() == 1


def test_integrated_gap_of_d_over_t_is_d_log():
    ts = np.geomspace(1e-3, 1.0, 30)
    integ = loss_gap.integrated_gap(ts, 4.0 / ts)
    np.testing.assert_allclose(integ[0], 4.0 * np.log(1e3), rtol=1e-6)


def test_window_end_is_sigma_t1_equal_scale_d_to_minus_k():
    """sigma_{t1}^2 = 1 - exp(-t1) = (c d^-k)^2: d = 4, c = 1, k = 1/2 -> t1 = -log(3/4)."""
    np.testing.assert_allclose(loss_gap.window_end(4, 1.0, 0.5), -np.log(0.75), rtol=1e-12)
    np.testing.assert_allclose(loss_gap.window_end(16, 2.0, 1.0), -np.log1p(-1 / 64), rtol=1e-12)
    assert loss_gap.window_end(1, 1.0, 0.5) == float("inf")


def _claims_on(gap_fn, d=16, n=50, sets=6, spread=0.01, **overrides):
    """The claims of (d, n) for constructed per-set gaps gap_fn(ts) * (1 + spread z_r) on a 12-point grid."""
    s = loss_gap.Settings(dims=(d,), ns=(n,), t0=1e-3, t1=3.0, num_times=12, **overrides)
    ts = np.asarray(sde.log_time_grid(s.t0, s.t1, s.num_times), np.float64)
    z = np.random.RandomState(0).randn(sets, 1)
    z = (z - z.mean()) / z.std()                                                  # mean 0, sd 1
    gaps = gap_fn(ts)[None] * (1 + spread * z)                                    # (R, T)
    return {c["id"].split("_")[0]: c for c in loss_gap.gap_claims(d, n, ts, gaps, float(d), s)}


def test_claims_hold_for_the_theorems_gap():
    """gap = d / sigma_t^2 (the leading order of Theorem 4.3): the limit is 1, the gap is d^2 / (d^2 + d) > 1/2 of
    the bound on the window, and its integral grows like d log(1/t0)."""
    d = 16
    c = _claims_on(lambda ts: d / -np.expm1(-ts), d=d)
    assert [c[k]["verdict"] for k in ("limit", "bound", "integrated")] == ["holds"] * 3
    np.testing.assert_allclose(c["limit"]["estimate"], 1.0, rtol=0.01)
    # the smallest ratio (d / s2) / (d / s2 + d) = 1 / (1 + s2) is at the last grid time inside the window
    ts = np.asarray(sde.log_time_grid(1e-3, 3.0, 12), np.float64)
    t_last = ts[ts <= loss_gap.window_end(d, 1.0, 0.5)].max()
    assert c["bound"]["estimate"] == pytest.approx(1 / (1 - np.expm1(-t_last)), rel=1e-3)
    assert -np.expm1(-t_last) <= 1 / d
    assert c["integrated"]["estimate"] == pytest.approx(1.0, abs=0.05)
    assert c["bound"]["n_bases"] == 6 and c["limit"]["direction"] == "within"


def test_claims_ignore_times_outside_the_window_and_fail_half_the_gap():
    """A gap of d / sigma^2 on the window but 1e-3 x the bound's shape beyond it still satisfies the bound claim (the
    theorem says nothing there); half the leading order fails all three claims."""
    d = 16
    t1 = loss_gap.window_end(d, 1.0, 0.5)
    inside = lambda ts: np.where(ts <= t1, d / -np.expm1(-ts), 1e-3 * (d / -np.expm1(-ts) + d))
    assert _claims_on(inside, d=d)["bound"]["verdict"] == "holds"
    half = _claims_on(lambda ts: 0.5 * d / -np.expm1(-ts), d=d)
    assert [half[k]["verdict"] for k in ("limit", "bound", "integrated")] == ["fails"] * 3
    # the same half gap, tested against a constant 1/4 instead of 1/2, holds
    assert _claims_on(lambda ts: 0.5 * d / -np.expm1(-ts), d=d, bound_constant=0.25)["bound"]["verdict"] == "holds"


def test_claims_are_inconclusive_when_training_sets_disagree():
    d = 16
    c = _claims_on(lambda ts: d / -np.expm1(-ts), d=d, spread=0.5)
    assert c["limit"]["verdict"] == "inconclusive" and c["limit"]["ci_low"] < 0.9 < 1.1 < c["limit"]["ci_high"]


SMOKE_OVERRIDES = {"dims": (4,), "ns": (10, 30), "num_times": 3, "num_queries": 64, "cov_scale": 0.5}


def _smoke_config():
    return two_process.smoke_config(loss_gap_config, SMOKE_OVERRIDES)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("loss_gap_smoke")
    _, res, snapshot = two_process.run_smoke(loss_gap_config, SMOKE_OVERRIDES, workdir)
    return workdir, res, snapshot


def test_two_processes_equal_one_process(smoke_run, tmp_path):
    """The smoke run, run again through `python -m diffmem.main` as 2 processes x 2 devices: the same results,
    files only from process 0."""
    two_process.check("loss_gap", SMOKE_OVERRIDES, smoke_run[2], str(tmp_path / "two"))


def test_experiment_writes_results(smoke_run, tmp_path):
    workdir, res, _ = smoke_run
    written = json.loads((workdir / "results.json").read_text())
    assert written["summary"] == json.loads(json.dumps(res["summary"]))
    assert len(written["records"]) == 1 * 2 * 3
    t1 = loss_gap.window_end(4, 1.0, 0.5)
    for rec in written["records"]:
        for k in ("gap_mean", "gap_stderr", "bound", "sigma2", "fisher_mean", "ab_agree_3se", "in_window"):
            assert k in rec
        # tr Sigma = d cov_scale^2 = 4 x 0.25 (not d: a wrong trace would show)
        assert rec["bound"] == pytest.approx(rec["d"] / rec["sigma2"] + 1.0, rel=1e-6)
        assert rec["in_window"] == (rec["t"] <= t1)
        assert (rec["gap_over_bound"] is None) == (not rec["in_window"])
    assert written["window"]["4"]["trace_cov"] == pytest.approx(1.0, rel=1e-6)
    ids = [c["id"] for c in written["claims"]]
    assert ids == [f"{k}_d4_n{n}" for n in (10, 30) for k in ("limit", "bound", "integrated")]
    for c in written["claims"]:
        assert c["verdict"] in ("holds", "fails", "inconclusive") and c["n_bases"] == 2
        assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
    assert "limit_d4_n10" in (workdir / "claims.md").read_text()
    assert written["timing"]["vmap_traces_d4"] == 1
    for f in ("config.json", "loss_gap_vs_t.png", "integrated_gap.png", "gap_sigma2_over_d.png"):
        assert (workdir / f).exists()
    # same seed, same numbers (a fresh workdir)
    again = experiments.run(_smoke_config(), str(tmp_path))
    assert again["records"] == res["records"]


@pytest.mark.parametrize("field,value,match", [
    ("t0", 0.0, "config.t0 must be a finite number > 0"),
    ("ns", (0, 10), "config.ns"),
    ("num_queries", 1, "num_queries"),
    ("window_scale", 0.01, "config.window_scale"),
    ("dims", (4, 4), "config.dims must be distinct"),
])
def test_bad_config_values(tmp_path, field, value, match):
    c = _smoke_config()
    c[field] = value
    with pytest.raises(ValueError, match=match):
        experiments.run(c, str(tmp_path))


def test_main_entry_rejects_an_unknown_key(tmp_path):
    """(The entry point's successful run is test_two_processes_equal_one_process's.)"""
    cmd = [sys.executable, "-m", "diffmem.main", "--config=configs/loss_gap.py:smoke", f"--workdir={tmp_path}",
           "--config.not_a_field=3"]
    bad = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0
    assert "not_a_field" in bad.stderr


@pytest.mark.parametrize("preset", loss_gap_config.PRESETS)
def test_every_preset_parses(preset):
    s = loss_gap.parse_config(loss_gap_config.get_config(preset))
    assert s.preset == preset and s.num_datasets >= 2
