"""ScoreMLP: shapes, closed-form parameter counts, output parametrisations, time features, bad arguments."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import sde
from diffmem.models import mlp


@pytest.mark.parametrize("dim,width,depth,time_embed,embed_dim", [
    (2, 8, 1, "sinusoidal", 16), (5, 16, 3, "raw", 16), (32, 24, 2, "log", 4), (3, 7, 4, "sinusoidal", 6)])
def test_shapes_and_param_count(dim, width, depth, time_embed, embed_dim):
    model = mlp.ScoreMLP(dim=dim, width=width, depth=depth, time_embed=time_embed, embed_dim=embed_dim)
    params = mlp.init_params(model, jax.random.key(0))
    e = embed_dim if time_embed == "sinusoidal" else 1
    expected = (dim + e) * width + width + (depth - 1) * (width * width + width) + width * dim + dim
    assert mlp.count_params(params) == expected == mlp.mlp_param_count(dim, width, depth, time_embed, embed_dim)
    x = jax.random.normal(jax.random.key(1), (6, dim))
    out = mlp.make_apply(model)(params, x, jnp.linspace(0.01, 2.0, 6))
    chex.assert_shape(out, (6, dim))
    chex.assert_tree_all_finite(out)
    # a scalar t broadcasts over the batch
    np.testing.assert_allclose(mlp.make_apply(model)(params, x, 0.5), mlp.make_apply(model)(params, x, jnp.full(6, 0.5)),
                               rtol=1e-6)


def test_width_for_params_is_smallest_width():
    for target in (1, 100, 24_000, 1_000_000):
        w = mlp.width_for_params(target, 32, 3)
        assert mlp.mlp_param_count(32, w, 3) >= target
        assert w == 1 or mlp.mlp_param_count(32, w - 1, 3) < target


def test_sinusoidal_time_features_formula():
    t = jnp.asarray([1e-3, 0.1, 1.0, 10.0])
    f = mlp.time_features(t, "sinusoidal", 8)
    freqs = np.geomspace(1 / 8, 8, 4)
    arg = np.log(np.asarray(t))[:, None] * freqs[None]
    np.testing.assert_allclose(f, np.concatenate([np.sin(arg), np.cos(arg)], 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mlp.time_features(t, "raw")[:, 0], t)
    np.testing.assert_allclose(mlp.time_features(t, "log")[:, 0], np.log(np.asarray(t)), rtol=1e-6)


def test_eps_output_is_raw_output_over_minus_sigma():
    kw = dict(dim=4, width=16, depth=2)
    eps_model, raw_model = mlp.ScoreMLP(output="eps", **kw), mlp.ScoreMLP(output="score", **kw)
    params = mlp.init_params(raw_model, jax.random.key(0))  # same parameter tree for both outputs
    x, t = jax.random.normal(jax.random.key(1), (5, 4)), jnp.asarray([1e-3, 0.01, 0.3, 1.0, 5.0])
    raw = mlp.make_apply(raw_model)(params, x, t)
    np.testing.assert_allclose(mlp.make_apply(eps_model)(params, x, t), -raw / np.sqrt(-np.expm1(-t))[:, None],
                               rtol=1e-5)


def test_x0_output_is_denoiser_parametrisation():
    kw = dict(dim=3, width=8, depth=2)
    x0_model, raw_model = mlp.ScoreMLP(output="x0", **kw), mlp.ScoreMLP(output="score", **kw)
    params = mlp.init_params(raw_model, jax.random.key(0))
    x, t = jax.random.normal(jax.random.key(1), (4, 3)), jnp.asarray([1e-2, 0.1, 1.0, 5.0])
    d = mlp.make_apply(raw_model)(params, x, t)
    want = (sde.alpha(t)[:, None] * d - x) / sde.sigma2(t)[:, None]
    np.testing.assert_allclose(mlp.make_apply(x0_model)(params, x, t), want, rtol=1e-4, atol=1e-4)


def test_edm_output_with_zero_last_layer_is_gaussian_score():
    """F = 0 leaves D = c_skip x / alpha, whose score is that of N(0, sigma_data^2 I) at time t:
    -x / (alpha_t^2 sigma_data^2 + sigma_t^2)."""
    sd = 1.7
    model = mlp.ScoreMLP(dim=3, width=8, depth=2, output="edm", sigma_data=sd)
    params = mlp.init_params(model, jax.random.key(0))
    params = dict(params)
    params["out"] = jax.tree.map(jnp.zeros_like, params["out"])
    x, t = jax.random.normal(jax.random.key(1), (4, 3)), jnp.asarray([1e-3, 0.1, 1.0, 8.0])
    want = -x / (sde.alpha(t) ** 2 * sd ** 2 + sde.sigma2(t))[:, None]
    np.testing.assert_allclose(mlp.make_apply(model)(params, x, t), want, rtol=1e-4, atol=1e-5)


def test_vmap_over_stacked_params():
    model = mlp.ScoreMLP(dim=2, width=8, depth=2)
    apply = mlp.make_apply(model)
    keys = jax.random.split(jax.random.key(0), 3)
    stacked = jax.vmap(lambda k: mlp.init_params(model, k))(keys)
    x, t = jnp.ones((4, 2)), jnp.full((4,), 0.5)
    out = jax.vmap(lambda p: apply(p, x, t))(stacked)
    for i in range(3):
        np.testing.assert_allclose(out[i], apply(jax.tree.map(lambda a: a[i], stacked), x, t), rtol=1e-6)


@pytest.mark.parametrize("kwargs,field", [
    (dict(width=0), "width"), (dict(depth=0), "depth"), (dict(time_embed="fourier"), "time_embed"),
    (dict(output="v"), "output"), (dict(embed_dim=5), "embed_dim")])
def test_bad_arguments_raise(kwargs, field):
    kw = dict(dim=2, width=4, depth=1)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=field):
        mlp.init_params(mlp.ScoreMLP(**kw), jax.random.key(0))


def test_bad_input_shape_raises():
    model = mlp.ScoreMLP(dim=3, width=4, depth=1)
    params = mlp.init_params(model, jax.random.key(0))
    with pytest.raises(ValueError, match="dim=3"):
        mlp.make_apply(model)(params, jnp.ones((2, 4)), jnp.ones(2))
    with pytest.raises(ValueError, match="time_embed"):
        mlp.time_dim("nope")
