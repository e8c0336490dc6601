"""The OU process's time laws and the reverse-SDE step (diffmem/sde.py, diffmem/sampling.py) against closed forms:
Beta(a, b) unit times (moments, so a and b cannot be swapped), log-uniform diffusion times, the log-uniform
importance weight of the DSM loss (unbiased for the integral of eq. 3.1), and Euler-Maruyama with a nonzero score
(one step by hand, and many steps to the Gaussian marginal)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import losses, sampling, sde

N = 200_000


def _mean_se(x):
    x = np.asarray(x, np.float64)
    return x.mean(), x.std(ddof=1) / math.sqrt(x.size)


@pytest.mark.parametrize("a,b,u_min", [(0.8, 2.0, 0.0), (2.0, 0.8, 0.0), (0.8, 2.0, 0.1)])
def test_beta_unit_time_moments(a, b, u_min):
    """u = u_min + (1 - u_min) Beta(a, b): mean u_min + (1 - u_min) a / (a + b), variance
    (1 - u_min)^2 a b / ((a + b)^2 (a + b + 1)). Beta(0.8, 2) has mean 0.286, Beta(2, 0.8) 0.714: a swap fails."""
    u = np.asarray(sde.sample_unit_time(jax.random.key(0), (N,), "beta", a, b, u_min), np.float64)
    assert u.min() >= u_min and u.max() <= 1.0
    mean = u_min + (1 - u_min) * a / (a + b)
    var = (1 - u_min) ** 2 * a * b / ((a + b) ** 2 * (a + b + 1))
    m, se = _mean_se(u)
    assert abs(m - mean) < 5 * se
    np.testing.assert_allclose(u.var(), var, rtol=0.02)
    # third central moment: skew 2 (b - a) sqrt(a + b + 1) / ((a + b + 2) sqrt(a b)), sign flips with the swap
    skew = 2 * (b - a) * math.sqrt(a + b + 1) / ((a + b + 2) * math.sqrt(a * b))
    got = np.mean((u - u.mean()) ** 3) / u.std() ** 3
    np.testing.assert_allclose(got, skew, rtol=0.05)


def test_uniform_unit_time_and_bad_beta():
    u = np.asarray(sde.sample_unit_time(jax.random.key(1), (N,), "uniform", u_min=0.2), np.float64)
    m, se = _mean_se(u)
    assert abs(m - 0.6) < 5 * se and u.min() >= 0.2
    with pytest.raises(ValueError, match="a > 0 and b > 0"):
        sde.sample_unit_time(jax.random.key(0), (3,), "beta", 0.0, 1.0)
    with pytest.raises(ValueError, match="time dist"):
        sde.sample_unit_time(jax.random.key(0), (3,), "gamma")


def test_log_uniform_time_law():
    """log t ~ U[log t0, log T]: E log t = (log t0 + log T) / 2, Var log t = log(T / t0)^2 / 12, E t = (T - t0) /
    log(T / t0) (the density 1 / (t log(T / t0)))."""
    t0, t1 = 1e-3, 10.0
    t = np.asarray(sde.sample_time(jax.random.key(2), (N,), t0, t1, "log_uniform"), np.float64)
    assert t.min() >= t0 * (1 - 1e-6) and t.max() <= t1 * (1 + 1e-6)
    L = math.log(t1 / t0)
    m, se = _mean_se(np.log(t))
    assert abs(m - 0.5 * (math.log(t0) + math.log(t1))) < 5 * se
    np.testing.assert_allclose(np.log(t).var(), L * L / 12, rtol=0.02)
    m, se = _mean_se(t)
    assert abs(m - (t1 - t0) / L) < 5 * se
    # a quarter of the draws in each quarter of the log range
    counts = np.histogram(np.log(t), bins=4, range=(math.log(t0), math.log(t1)))[0] / N
    np.testing.assert_allclose(counts, 0.25, atol=0.005)


@pytest.mark.parametrize("time_dist", ["uniform", "log_uniform"])
@pytest.mark.parametrize("weighting", ["none", "sigma2"])
def test_dsm_loss_is_unbiased_for_the_time_integral(time_dist, weighting):
    """With the score s = 0 the per-example loss at time t has mean d / sigma_t^2 (the target is -eps / sigma_t), so
    L = int_t0^T w_t d / sigma_t^2 dt: d [log(e^t - 1)]_t0^T unweighted, d (T - t0) with w_t = sigma_t^2. The
    log-uniform draw with weight t log(T / t0) estimates the same integral as the uniform one with weight T - t0."""
    d, t0, t1 = 3, 1e-2, 5.0
    x0 = jnp.ones((N, d)) * 0.7
    zero = lambda x, t: jnp.zeros_like(x)
    loss, aux = jax.jit(lambda k: losses.dsm_loss(zero, k, x0, t0, t1, weighting, time_dist))(jax.random.key(3))
    per = np.asarray(aux["per_example_loss"], np.float64)
    if weighting == "none":
        want = d * (math.log(math.expm1(t1)) - math.log(math.expm1(t0)))
    else:
        want = d * (t1 - t0)
    m, se = _mean_se(per)
    np.testing.assert_allclose(float(loss), m, rtol=1e-4)
    assert abs(m - want) < 5 * se, (m, se, want)
    assert abs(m - want) / want < 0.05


def test_log_uniform_weight_reduces_variance_of_the_unweighted_integral():
    """The unweighted integrand d / sigma_t^2 ~ d / t is what the log-uniform law flattens: its per-draw values
    t log(T/t0) d / sigma_t^2 vary little, the uniform law's (T - t0) d / sigma_t^2 a lot."""
    d, t0, t1 = 3, 1e-3, 5.0
    x0 = jnp.zeros((50_000, d))
    zero = lambda x, t: jnp.zeros_like(x)
    sd = {}
    for dist in ("uniform", "log_uniform"):
        _, aux = losses.dsm_loss(zero, jax.random.key(4), x0, t0, t1, "none", dist)
        sd[dist] = float(np.std(np.asarray(aux["per_example_loss"])))
    assert sd["log_uniform"] < 0.2 * sd["uniform"]


S2, MU = 0.3, np.array([1.5, -0.5, 0.25])


def gaussian_score(x, t):
    """Exact score of the OU marginal of N(MU, S2 I): -(x - alpha_t MU) / v_t, v_t = alpha_t^2 S2 + sigma_t^2."""
    a = sde.alpha(t)[:, None]
    v = a * a * S2 + sde.sigma2(t)[:, None]
    return -(x - a * jnp.asarray(MU, x.dtype)) / v


def test_one_euler_maruyama_step_with_a_nonzero_score():
    """One reverse-SDE step by hand: y1 = y0 + h (y0 / 2 + score(y0, t)) + sqrt(h) z1, with y0 and z1 the normals
    of fold_in(key_i, 0) and fold_in(key_i, 1); no denoising."""
    t, h = 0.8, 0.05
    grid = jnp.asarray([t, t - h])
    keys = sampling.per_sample_keys(jax.random.key(5), 4)
    got = np.asarray(sampling.sample_batch(gaussian_score, keys, (3,), grid, "sde", denoise=False), np.float64)
    for i in range(4):
        y0 = np.asarray(jax.random.normal(jax.random.fold_in(keys[i], 0), (3,)), np.float64)
        z1 = np.asarray(jax.random.normal(jax.random.fold_in(keys[i], 1), (3,)), np.float64)
        a = math.exp(-t / 2)
        v = a * a * S2 + (1 - math.exp(-t))
        score = -(y0 - a * MU) / v
        np.testing.assert_allclose(got[i], y0 + h * (0.5 * y0 + score) + math.sqrt(h) * z1, rtol=1e-5, atol=1e-5)


def test_reverse_sde_reaches_the_gaussian_marginal():
    """Euler-Maruyama from T to t0 with the exact score of N(MU, S2 I) draws N(alpha_t0 MU, v_t0 I) up to the
    discretisation bias; Tweedie's step then gives N(MU, S2^2 alpha^2 / v_t0 I) (the posterior mean's law)."""
    t0, t1, m = 0.05, 8.0, 20_000
    grid = sampling.time_grid(t0, t1, 400, "log")
    x = sampling.sample(gaussian_score, jax.random.key(6), m, (3,), grid, "sde", batch_size=m, denoise=False)
    a0 = math.exp(-t0 / 2)
    v0 = a0 * a0 * S2 + (1 - math.exp(-t0))
    mean_se = math.sqrt(v0 / m)
    assert np.all(np.abs(x.mean(0) - a0 * MU) < 5 * mean_se + 0.01)
    np.testing.assert_allclose(x.var(0), v0, rtol=0.05)
    x = sampling.sample(gaussian_score, jax.random.key(6), m, (3,), grid, "sde", batch_size=m, denoise=True)
    var_tweedie = (S2 * a0) ** 2 / v0
    assert np.all(np.abs(x.mean(0) - MU) < 5 * math.sqrt(var_tweedie / m) + 0.01)
    np.testing.assert_allclose(x.var(0), var_tweedie, rtol=0.05)
