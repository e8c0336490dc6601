"""Closed-form scores, the OU process, the DSM loss and Proposition 4.1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from diffmem import losses, scores, sde


def _mixtures(d=5, k=3):
    key = jax.random.key(0)
    means = 2.0 * jax.random.normal(key, (k, d))
    a = jax.random.normal(jax.random.key(1), (k, d, d))
    full = jnp.einsum("kij,klj->kil", a, a) / d + 0.5 * jnp.eye(d)
    w = jnp.array([0.2, 0.3, 0.5])
    return {
        "isotropic": scores.gaussian_mixture(means, 0.7, w),
        "isotropic_per_comp": scores.gaussian_mixture(means, jnp.array([0.5, 1.0, 2.0]), w),
        "diagonal": scores.gaussian_mixture(means, jnp.linspace(0.3, 2.0, d), w, "diagonal"),
        "full_shared": scores.gaussian_mixture(means, full[0], w, "full"),
        "full_per_comp": scores.gaussian_mixture(means, full, w, "full"),
    }


def test_ou_marginal_moments():
    t = 0.3
    x0 = jnp.full((200_000, 1), 2.0)
    xt, _ = sde.marginal_sample(jax.random.key(0), x0, jnp.full((x0.shape[0],), t))
    np.testing.assert_allclose(float(xt.mean()), 2.0 * np.exp(-t / 2), atol=0.01)
    np.testing.assert_allclose(float(xt.var()), 1 - np.exp(-t), rtol=0.02)
    # sigma^2 stays accurate at tiny t (expm1).
    np.testing.assert_allclose(float(sde.sigma2(jnp.float32(1e-6))), 1e-6, rtol=1e-5)


def test_ddpm_time_change_matches_ddpm_alpha_bar():
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    u = np.arange(1, 1001) / 1000
    t = np.asarray(sde.ddpm_time(jnp.asarray(u)))
    # alpha_t^2 = exp(-t) equals the discrete DDPM alpha_bar up to the O(beta^2) discretisation.
    np.testing.assert_allclose(np.exp(-t), alpha_bar, rtol=0.02, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sde.ddpm_time_inverse(sde.ddpm_time(jnp.asarray(u)))), u, rtol=1e-4)


@pytest.mark.parametrize("kind", ["isotropic", "isotropic_per_comp", "diagonal", "full_shared", "full_per_comp"])
@pytest.mark.parametrize("t", [1e-4, 0.1, 2.0])
def test_mixture_score_is_grad_of_logpdf(kind, t):
    mix = _mixtures()[kind]
    x = jax.random.normal(jax.random.key(2), (7, 5)) * 2.0
    g = jax.grad(lambda x: scores.mixture_logpdf(x, t, mix).sum())(x)
    np.testing.assert_allclose(scores.mixture_score(x, t, mix), g, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "full_per_comp"])
def test_mixture_logpdf_against_scipy(kind):
    mix = _mixtures()[kind]
    t = 0.5
    x = np.asarray(jax.random.normal(jax.random.key(3), (6, 5)))
    a, s2 = np.exp(-t / 2), 1 - np.exp(-t)
    covs = np.asarray(mix.eigvals)[..., None, :] * np.eye(5)
    if mix.eigvecs is not None:
        v = np.asarray(mix.eigvecs)
        covs = v @ covs @ np.swapaxes(v, -1, -2)
    dens = sum(w * scipy.stats.multivariate_normal(a * m, a * a * c + s2 * np.eye(5)).pdf(x)
               for w, m, c in zip(np.asarray(mix.weights), np.asarray(mix.means), covs))
    np.testing.assert_allclose(scores.mixture_logpdf(x, t, mix), np.log(dens), rtol=1e-5, atol=1e-5)


def test_empirical_score_single_point_closed_form():
    x1 = jnp.array([[0.3, -1.2, 2.0]])
    x = jax.random.normal(jax.random.key(0), (4, 3))
    for t in (1e-4, 0.05, 3.0):
        a, s2 = np.exp(-t / 2), -np.expm1(-t)
        np.testing.assert_allclose(scores.empirical_score(x, t, x1), (a * x1 - x) / s2, rtol=1e-5)
        np.testing.assert_allclose(
            scores.empirical_logpdf(x, t, x1),
            scipy.stats.multivariate_normal(a * np.asarray(x1[0]), s2 * np.eye(3)).logpdf(np.asarray(x)),
            rtol=1e-4)


@pytest.mark.parametrize("t", [1e-4, 0.02, 1.5])
def test_empirical_score_is_grad_and_stable_at_small_t(t):
    data = jax.random.normal(jax.random.key(0), (300, 6))
    # queries close to training points (the memorization regime) and far ones
    x = jnp.concatenate([np.exp(-t / 2) * data[:5] + 1e-2 * jax.random.normal(jax.random.key(1), (5, 6)),
                         jax.random.normal(jax.random.key(2), (3, 6))])
    s = scores.empirical_score(x, t, data, chunk=64)
    g = jax.grad(lambda x: scores.empirical_logpdf(x, t, data, chunk=64).sum())(x)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, g, rtol=1e-3, atol=1e-3 * float(jnp.abs(s).max()))


def test_empirical_chunked_equals_unchunked_and_dense_formula():
    data = jax.random.normal(jax.random.key(0), (257, 4))
    x = jax.random.normal(jax.random.key(1), (9, 4))
    t = jnp.linspace(0.01, 1.0, 9)
    full = scores.empirical_score(x, t, data, chunk=257)
    for chunk in (1, 16, 100, 200, 1000):  # many chunks + a rest, one chunk + a rest, n <= chunk
        np.testing.assert_allclose(scores.empirical_score(x, t, data, chunk=chunk), full, rtol=1e-4, atol=1e-4)
    # dense reference: softmax over all points
    a, s2 = np.exp(-np.asarray(t) / 2)[:, None], (1 - np.exp(-np.asarray(t)))[:, None]
    d2 = ((np.asarray(x)[:, None] - a[:, :, None] * np.asarray(data)[None]) ** 2).sum(-1)
    w = jax.nn.softmax(-d2 / (2 * s2), -1)
    np.testing.assert_allclose(full, (a * (np.asarray(w) @ np.asarray(data)) - np.asarray(x)) / s2,
                               rtol=1e-4, atol=1e-4)
    stream = scores.empirical_stats_streaming(x, t, np.asarray(data), chunk=50)
    np.testing.assert_allclose(scores.score_from_stats(stream, x, t), full, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores.logpdf_from_stats(stream, x, t),
                               scores.empirical_logpdf(x, t, data), rtol=1e-5, atol=1e-4)


def test_padded_masked_equals_exact():
    data = jax.random.normal(jax.random.key(0), (100, 3))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    mask = (jnp.arange(100) < 37).astype(jnp.float32)
    padded = data.at[37:].set(1e3)      # garbage beyond n must not matter
    np.testing.assert_allclose(scores.empirical_score(x, 0.2, padded, mask, chunk=16),
                               scores.empirical_score(x, 0.2, data[:37]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.empirical_logpdf(x, 0.2, padded, mask, chunk=16),
                               scores.empirical_logpdf(x, 0.2, data[:37]), rtol=1e-5, atol=1e-5)


def test_dsm_loss_minimised_by_empirical_score():
    """The empirical score is the global minimiser of eq. 3.1: perturbing it raises the loss."""
    data = jax.random.normal(jax.random.key(0), (20, 2))
    key = jax.random.key(1)
    x0 = data[jax.random.randint(key, (20_000,), 0, 20)]
    emp = lambda x, t: scores.empirical_score(x, t, data)
    l_emp, aux = losses.dsm_loss(emp, key, x0, 0.05, 1.0)
    l_bad, _ = losses.dsm_loss(lambda x, t: emp(x, t) + 0.3, key, x0, 0.05, 1.0)
    assert aux["per_example_loss"].shape == (20_000,)
    # E||target - s - c||^2 = E||target - s||^2 + ||c||^2 (T - t0) when s is the minimiser
    np.testing.assert_allclose(float(l_bad - l_emp), 2 * 0.09 * 0.95, rtol=0.1)


@pytest.mark.parametrize("t", [0.003, 0.1, 0.8])
def test_proposition_4_1_estimators_agree(t):
    mix = scores.random_mixture(jax.random.key(0), 4, 3)
    data = scores.sample_mixture(jax.random.key(1), mix, 50)
    out = losses.loss_gap_samples(jax.random.key(2), t, data, mix, 20_000)
    ma, sa = losses.mean_and_stderr(out["a"])
    mb, sb = losses.mean_and_stderr(out["b"])
    assert float(mb) > 0
    assert abs(float(ma - mb)) <= 3 * float(jnp.hypot(sa, sb))


def test_gap_leading_order_small_t():
    """As t -> 0, Loss-Gap_t sigma_t^2 / d -> 1 (arXiv 2511.03202, Section 4)."""
    d = 16
    mix = scores.random_mixture(jax.random.key(0), 8, d)
    data = scores.sample_mixture(jax.random.key(1), mix, 500)
    t = 1e-3
    out = losses.loss_gap_samples(jax.random.key(2), t, data, mix, 8192)
    ratio = float(out["a"].mean()) * float(sde.sigma2(jnp.float32(t))) / d
    assert abs(ratio - 1) < 0.05, ratio


def test_bad_inputs_raise_clear_errors():
    data = jnp.ones((4, 3))
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="t must be > 0"):
        scores.empirical_score(x, 0.0, data)
    with pytest.raises(ValueError, match="dimension mismatch"):
        scores.empirical_score(jnp.zeros((2, 5)), 0.1, data)
    with pytest.raises(ValueError, match="n = 0"):
        scores.empirical_score(x, 0.1, jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="n = 0"):
        scores.empirical_score(x, 0.1, data, jnp.zeros((4,)))
    with pytest.raises(ValueError, match="NaN"):
        scores.empirical_score(x, 0.1, data.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        scores.empirical_logpdf(x, 0.1, data.at[3, 2].set(-jnp.inf))
    # the same checks when x is traced (under grad): the concrete data, mask and t are still checked
    grad = lambda d, m=None, t=0.1: jax.grad(lambda q: scores.empirical_logpdf(q, t, d, m).sum())(x)
    assert np.all(np.isfinite(grad(data)))
    with pytest.raises(ValueError, match="NaN or inf"):
        grad(data.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="n = 0"):
        grad(data, jnp.zeros((4,)))
    with pytest.raises(ValueError, match="t must be > 0"):
        grad(data, None, -1.0)
    with pytest.raises(ValueError, match="cov_type"):
        scores.gaussian_mixture(jnp.zeros((2, 3)), 1.0, cov_type="banana")
    with pytest.raises(ValueError, match="diagonal cov"):
        scores.gaussian_mixture(jnp.zeros((2, 3)), jnp.ones((4,)), cov_type="diagonal")
    with pytest.raises(ValueError, match="t0 must be > 0"):
        sde.log_time_grid(0.0, 1.0, 4)
