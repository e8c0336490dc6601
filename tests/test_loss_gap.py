"""The loss_gap experiment: vmapped n sweep, entry point, results.json, bad configs."""
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


def _smoke_config():
    c = loss_gap_config.get_config("smoke")
    c.dims = (4,)
    c.ns = (10, 30)
    c.num_times = 3
    c.num_queries = 64
    return c


def test_experiment_writes_results(tmp_path):
    res = experiments.run(_smoke_config(), str(tmp_path))
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["summary"] == json.loads(json.dumps(res["summary"]))
    assert len(written["records"]) == 1 * 2 * 3
    for rec in written["records"]:
        for k in ("gap_mean", "gap_stderr", "bound", "sigma2", "fisher_mean", "ab_agree_3se"):
            assert k in rec
        assert rec["bound"] == pytest.approx(rec["d"] / rec["sigma2"] + rec["d"], rel=0.5)
    assert written["timing"]["vmap_traces_d4"] == 1
    for f in ("config.json", "loss_gap_vs_t.png", "integrated_gap.png", "gap_sigma2_over_d.png"):
        assert (tmp_path / f).exists()
    # same seed, same numbers
    again = experiments.run(_smoke_config(), str(tmp_path / "again"))
    assert again["records"] == res["records"]


@pytest.mark.parametrize("field,value,match", [
    ("t0", 0.0, "config.t0 must be a finite number > 0"),
    ("ns", (0, 10), "config.ns"),
    ("num_queries", 1, "num_queries"),
])
def test_bad_config_values(tmp_path, field, value, match):
    c = _smoke_config()
    c[field] = value
    with pytest.raises(ValueError, match=match):
        experiments.run(c, str(tmp_path))


def test_main_entry_smoke_and_unknown_key(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [sys.executable, "-m", "diffmem.main", "--config=configs/loss_gap.py:smoke",
            f"--workdir={tmp_path}", "--config.dims=(4,)", "--config.ns=(10,20)", "--config.num_times=2",
            "--config.num_queries=32", "--config.time_loop=False"]
    proc = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["n"] for r in res["records"]} == {10, 20}
    bad = subprocess.run(base + ["--config.not_a_field=3"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0
    assert "not_a_field" in bad.stderr
