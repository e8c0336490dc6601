"""bfloat16 compute for the DiT (config model.dtype = 'bfloat16'): parameters, gradients and optimizer state stay
float32, matmuls run in bfloat16, softmax and the loss in float32; numbers close to the float32 model's (on CPU)."""
import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import image_diffusion as idf
from diffmem import training as train

SHAPE = (8, 8, 1)
SIZES = dict(patch=2, hidden=32, depth=2, heads=2)


@pytest.fixture(scope="module")
def models():
    return idf.build_model(SHAPE, **SIZES), idf.build_model(SHAPE, **SIZES, dtype="bfloat16")


@pytest.fixture(scope="module")
def params(models):
    p = idf.init_params(models[0], jax.random.key(0))
    rng = np.random.default_rng(0)  # leave adaLN-Zero's zero function: every layer matters
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + 0.1 * rng.standard_normal(a.shape), a.dtype), p)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _images(n=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n,) + SHAPE).astype(np.float32)


def test_params_are_shared_and_float32(models, params):
    f32, bf16 = models
    shapes = jax.eval_shape(lambda k: idf.init_params(bf16, k), jax.random.key(0))
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}


def test_matmuls_in_bfloat16_softmax_in_float32(models, params):
    _, bf16 = models
    x = jnp.asarray(_images(4))
    u = jnp.linspace(0.1, 0.9, 4)
    jaxpr = jax.make_jaxpr(lambda p: bf16.apply({"params": p}, x, u))(params)
    eqns = []

    def walk(j):
        for e in j.eqns:
            eqns.append(e)
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                walk(sub)
    walk(jaxpr.jaxpr)
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    assert len(dots) >= 2 * (4 + 2) + 4   # per block: qkv, proj, fc1, fc2, adaLN, 2 attention; + embedders, final
    assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars), \
        sorted({str(v.aval.dtype) for e in dots for v in e.invars})
    exps = [e for e in eqns if e.primitive.name == "exp"]
    n = (SHAPE[0] // SIZES["patch"]) ** 2
    softmax_exps = [e for e in exps if e.outvars[0].aval.shape[-2:] == (n, n)]
    assert softmax_exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in softmax_exps)
    out = bf16.apply({"params": params}, x, u)
    assert out.dtype == jnp.float32


@pytest.mark.slow
def test_forward_loss_and_gradients_close_to_float32(models, params):
    f32, bf16 = models
    x = jnp.asarray(_images(16))
    u = jnp.linspace(0.02, 0.98, 16)
    out32 = f32.apply({"params": params}, x, u)
    out16 = bf16.apply({"params": params}, x, u)
    assert 1e-4 < _rel(out16, out32) < 3e-2               # bf16 really ran, and stays close
    key = jax.random.key(3)
    l32, g32 = jax.jit(jax.value_and_grad(lambda p: idf.make_loss(f32, 1e-3)(p, key, x)[0]))(params)
    l16, g16 = jax.jit(jax.value_and_grad(lambda p: idf.make_loss(bf16, 1e-3)(p, key, x)[0]))(params)
    assert l16.dtype == jnp.float32 and abs(float(l16) / float(l32) - 1) < 1e-2
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    flat32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g32)])
    flat16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g16)])
    cos = flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32))
    assert cos > 0.999 and _rel(flat16, flat32) < 2e-2


@pytest.mark.slow
def test_training_and_sampling_close_to_float32(models, params, tmp_path):
    f32, bf16 = models
    images = _images(64, seed=2)
    cfg = train.TrainConfig(steps=40, batch_size=16, lr=2e-3, ema_decay=0.9, log_every=10, ckpt_every=40)
    runs = {}
    for name, model in (("f32", f32), ("bf16", bf16)):
        state, _ = idf.train_model(model, images, cfg, str(tmp_path / name), key=jax.random.key(5), u_min=1e-3,
                                   init=params, progress=False)
        assert {a.dtype for a in jax.tree.leaves((state.params, state.opt_state, state.ema_params))
                if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
        losses = [r["loss"] for r in train.read_metrics(str(tmp_path / name))]
        runs[name] = (state, np.asarray(losses))
    l32, l16 = runs["f32"][1], runs["bf16"][1]
    assert l32[-1] < 0.8 * l32[0]                           # it trained
    np.testing.assert_allclose(l16, l32, rtol=1e-2)        # the same loss curve (per 10-step window)
    sc = idf.SamplerConfig(num_samples=16, steps=20, method="ode", batch_size=16)
    s32 = idf.sample(f32, runs["f32"][0].ema_params, jax.random.key(7), sc, 1e-3)
    s16 = idf.sample(bf16, runs["bf16"][0].ema_params, jax.random.key(7), sc, 1e-3)
    assert np.isfinite(s16).all() and _rel(s16, s32) < 3e-2
    sc = dataclasses.replace(sc, method="sde")
    s32 = idf.sample(f32, runs["f32"][0].ema_params, jax.random.key(7), sc, 1e-3)
    s16 = idf.sample(f32, runs["bf16"][0].ema_params, jax.random.key(7), sc, 1e-3)
    assert _rel(s16, s32) < 3e-2                            # the bf16-trained parameters sample like the f32 ones
    s16 = idf.sample(bf16, runs["bf16"][0].ema_params, jax.random.key(7), sc, 1e-3)
    assert _rel(s16, s32) < 5e-2                            # and so does the bf16 sampler (reverse SDE)
