"""Approximation experiment: exact attention forms of both scores, weighted regression errors, W* helpers,
the :smoke run end to end, config errors."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import approximation as approx_cfg
from diffmem import experiments, losses, scores, sde
from diffmem.experiments import approximation as ap


def _config(arg="smoke"):
    return approx_cfg.get_config(arg)


def _queries(data, t, m=64, seed=0):
    """x ~ P_hat_t at time t: (m, d), (m,)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    idx = jax.random.randint(k1, (m,), 0, data.shape[0])
    tq = jnp.full((m,), t)
    return sde.marginal_sample(k2, data[idx], tq)[0], tq


@pytest.mark.parametrize("t", [0.01, 0.3, 2.0])
def test_attention_forms_equal_closed_form_scores(t):
    mix = scores.random_mixture(jax.random.key(0), 5, 6, mean_std=2.0, cov_scale=0.7)
    data = scores.sample_mixture(jax.random.key(1), mix, 40)
    x, tq = _queries(data, t)
    emp, tru = ap.empirical_attention(data), ap.mixture_attention(mix)
    np.testing.assert_allclose(ap.attention_apply(emp, x, tq), scores.empirical_score(x, tq, data),
                               rtol=1e-4, atol=1e-3 / float(sde.sigma2(t)))
    np.testing.assert_allclose(ap.attention_apply(tru, x, tq), scores.mixture_score(x, tq, mix), rtol=1e-4, atol=1e-4)
    assert ap.attention_param_count(emp) == 40 * 6          # n d
    assert ap.attention_param_count(tru) == 5 * 6 + 1       # K d + s^2


def test_attention_with_unequal_weights_and_rejects_anisotropic():
    means = jnp.asarray([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.0]])
    mix = scores.gaussian_mixture(means, 0.5, weights=[0.2, 0.3, 0.5])
    x, tq = _queries(means, 0.4)
    att = ap.mixture_attention(mix)
    np.testing.assert_allclose(ap.attention_apply(att, x, tq), scores.mixture_score(x, tq, mix), rtol=1e-4, atol=1e-5)
    assert ap.attention_param_count(att) == 3 * 2 + 1 + 3
    with pytest.raises(ValueError, match="isotropic"):
        ap.mixture_attention(scores.gaussian_mixture(means, [0.5, 1.0], cov_type="diagonal"))


def test_weighted_errors_are_theorem_weights():
    """A zero network has error w_t ||s*||^2 exactly: sigma^4 for the empirical target, sigma^2 for the true."""
    mix = scores.random_mixture(jax.random.key(0), 3, 2)
    data = scores.sample_mixture(jax.random.key(1), mix, 16)
    zero = lambda p, x, t: jnp.zeros_like(x)
    x0 = data[:8]
    for flag in (1.0, 0.0):
        member = {"data": data, "count": jnp.int32(16), "extra": jnp.float32(flag)}
        t = jnp.geomspace(0.01, 10.0, 8)
        err, norm = losses.regression_errors(zero, None, jax.random.key(2), x0, t, member, mix)
        np.testing.assert_allclose(err, norm, rtol=1e-6)
        x, _ = sde.marginal_sample(jax.random.key(2), x0, t)
        target = scores.empirical_score(x, t, data) if flag else scores.mixture_score(x, t, mix)
        w = sde.sigma2(t) ** (2 if flag else 1)
        np.testing.assert_allclose(norm, w * jnp.sum(target ** 2, -1), rtol=1e-4)


def test_width_star_and_slope():
    assert ap.width_star([8, 16, 32], [0.5, 0.2, 0.04], 0.5) == 8.0
    assert ap.width_star([8, 16, 32], [0.5, 0.4, 0.3], 0.1) is None
    w = ap.width_star([8, 16], [0.4, 0.1], 0.2)   # log-log halfway: 0.2 = sqrt(0.4 * 0.1)
    np.testing.assert_allclose(w, math.sqrt(8 * 16))
    np.testing.assert_allclose(ap.loglog_slope([1, 2, 4, 8], [3, 6, 12, 24]), 1.0, rtol=1e-9)
    np.testing.assert_allclose(ap.loglog_slope([1, 2, 4], [5, None, 5]), 0.0, atol=1e-12)


def test_approximation_smoke_end_to_end(tmp_path):
    config = _config()
    res = experiments.run(config, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    for key in ("errors", "width_star", "width_star_loglog_slope", "attention", "summary", "params", "cells"):
        assert key in saved
    rel = np.asarray(saved["errors"]["empirical"]["rel_err_max"])
    assert rel.shape == (2, 2) and np.all(np.isfinite(rel)) and np.all(rel > 0)
    for row in saved["attention"]:
        assert row["max_rel_err_empirical"] < 1e-3 and row["max_rel_err_true"] < 1e-4
        assert row["params_empirical"] == row["n"] * row["dim"]
        assert row["params_true"] == row["K"] * row["dim"] + 1
    assert os.path.getsize(tmp_path / "approximation.png") > 1000
    again = experiments.run(config, str(tmp_path))    # resumes from the stored cells
    assert again["errors"] == res["errors"] and again["group_timings"] == []


@pytest.mark.parametrize("path,value,match", [
    ("regression.t0", 0.0, "t0"), ("target_eps", (1.5,), "target_eps"), ("data.ns", (1, 4), "data.ns"),
    ("widths", (0, 8), "widths"), ("regression.time_dist", "beta", "time_dist")])
def test_config_errors(path, value, match, tmp_path):
    config = _config()
    if "." in path:
        sec, key = path.split(".")
        config[sec][key] = value
    else:
        config[path] = value
    with pytest.raises(ValueError, match=match):
        experiments.run(config, str(tmp_path))


def test_unknown_config_key(tmp_path):
    config = _config()
    config.train.momentum = 0.9
    with pytest.raises(ValueError, match="momentum"):
        experiments.run(config, str(tmp_path))
