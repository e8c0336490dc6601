"""The fast formulation of diffmem.models.dit.DiT (cotangent barriers, 2-D Dense, matmul patch embedding, the
written-out attention backward) against the plain one written out here independently (strided convolution,
(b, n, d) dot_generals, einsum attention, autodiff): same outputs and same gradients (parameters and the per-head
gate of Algorithm 2), and a compiled backward without the O(depth^2) recomputation the barriers exist for."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem.models import dit as D


def _ln(x):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + D.LN_EPS)


def _dense(p, x):
    return jax.lax.dot_general(x, p["kernel"], (((x.ndim - 1,), (0,)), ((), ()))) + p["bias"]


def plain_dit(model, params, x, u, head_mask):
    """The DiT forward as the reference models.py writes it (unconditional, eps channels)."""
    s, p, d = model.image_size, model.patch, model.hidden
    g = s // p
    b = x.shape[0]
    h = jax.lax.conv_general_dilated(x, params["x_embedder"]["kernel"], (p, p), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["x_embedder"]["bias"]
    h = h.reshape(b, g * g, d) + D.get_2d_sincos_pos_embed(d, g)[None]
    te = D.timestep_embedding(D.TIME_SCALE * u)
    c = _dense(params["t_embedder"]["mlp_2"], jax.nn.silu(_dense(params["t_embedder"]["mlp_0"], te)))
    heads, dh = model.head_counts, model.resolved_head_dim
    for l in range(model.depth):
        bp = params[f"blocks_{l}"]
        sh1, sc1, g1, sh2, sc2, g2 = jnp.split(_dense(bp["adaLN_modulation"], jax.nn.silu(c)), 6, -1)
        a = _ln(h) * (1 + sc1[:, None]) + sh1[:, None]
        qkv = _dense(bp["attn"]["qkv"], a).reshape(b, g * g, 3, heads[l], dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh), -1)
        o = jnp.einsum("bhqk,bkhd->bqhd", w, v) * head_mask[l, :heads[l]][None, None, :, None]
        h = h + g1[:, None] * _dense(bp["attn"]["proj"], o.reshape(b, g * g, heads[l] * dh))
        m = _ln(h) * (1 + sc2[:, None]) + sh2[:, None]
        m = _dense(bp["mlp"]["fc2"], jax.nn.gelu(_dense(bp["mlp"]["fc1"], m), approximate=True))
        h = h + g2[:, None] * m
    fp = params["final_layer"]
    sh, sc = jnp.split(_dense(fp["adaLN_modulation"], jax.nn.silu(c)), 2, -1)
    h = _dense(fp["linear"], _ln(h) * (1 + sc[:, None]) + sh[:, None])
    oc = model.out_channels
    return jnp.einsum("nhwpqc->nhpwqc", h.reshape(b, g, g, p, p, oc)).reshape(b, s, s, oc)


@pytest.fixture(scope="module")
def case():
    model = D.DiT(image_size=8, channels=3, patch=2, hidden=32, depth=3, heads=4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 8, 8, 3)), jnp.float32)
    u = jnp.asarray([0.05, 0.5, 0.95], jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), x, u)["params"]
    params = jax.tree.map(lambda a: a + jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype), params)
    mask = jnp.asarray(rng.uniform(0.5, 1.5, (3, 4)), jnp.float32)
    return model, params, x, u, mask


def test_outputs_and_gradients_equal_plain_formulation(case):
    model, params, x, u, mask = case
    target = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)

    def loss(f):
        return lambda p, m: jnp.mean((f(p, m) - target) ** 2)
    ours = loss(lambda p, m: model.apply({"params": p}, x, u, head_mask=m))
    plain = loss(lambda p, m: plain_dit(model, p, x, u, m))
    out, ref = model.apply({"params": params}, x, u, head_mask=mask), plain_dit(model, params, x, u, mask)
    assert float(jnp.max(jnp.abs(ref))) > 1.0
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    (l1, (gp1, gm1)) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(params, mask)
    (l2, (gp2, gm2)) = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(params, mask)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    assert float(jnp.max(jnp.abs(gm2))) > 1e-3                                  # the gates matter
    np.testing.assert_allclose(gm1, gm2, rtol=1e-4, atol=1e-6)                   # Algorithm 2's signal
    for a, b in zip(jax.tree.leaves(gp1), jax.tree.leaves(gp2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-8)


def test_attention_core_equals_autodiff_of_softmax_attention():
    """The written-out backward of `attention_core` against autodiff of softmax(q k^T) v, with logits up to ~80 (the
    max subtraction matters) and a cotangent that is not a function of the output."""
    rng = np.random.default_rng(2)
    q, k, v, g = (jnp.asarray(rng.standard_normal((2, 5, 3, 4)) * s, jnp.float32) for s in (3.0, 3.0, 1.0, 1.0))

    def plain(q, k, v):
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), -1), v)
    assert float(jnp.max(jnp.abs(jnp.einsum("bqhd,bkhd->bhqk", q, k)))) > 40
    o1, vjp1 = jax.vjp(D.attention_core, q, k, v)
    o2, vjp2 = jax.vjp(plain, q, k, v)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.jit(vjp1)(g), jax.jit(vjp2)(g)):
        assert float(jnp.max(jnp.abs(b))) > 1e-2
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    # vmapped (prune_dit samples two models at a time)
    ov = jax.vmap(D.attention_core)(q[None].repeat(2, 0), k[None].repeat(2, 0), v[None].repeat(2, 0))
    np.testing.assert_allclose(ov[1], o2, rtol=1e-5, atol=1e-6)


def test_cotangent_barrier_is_exact_identity():
    # (subnormals are left out: XLA:CPU flushes them to zero in any arithmetic, this division included)
    g = jnp.asarray([1.5, -0.0, 0.0, 1.2e-38, -1e38, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    _, vjp = jax.vjp(D.cotangent_barrier, jnp.zeros_like(g))
    out = np.asarray(jax.jit(vjp)(g)[0])
    np.testing.assert_array_equal(out, np.asarray(g))                           # NaN == NaN for assert_array_equal
    assert np.signbit(out[1]) and not np.signbit(out[2])


def _fused_instructions(depth: int) -> int:
    """Instructions in all fused kernels of the compiled training gradient of a DiT of this depth."""
    model = D.DiT(image_size=8, channels=1, patch=2, hidden=32, depth=depth, heads=2)
    x = jnp.ones((4, 8, 8, 1))
    u = jnp.full((4,), 0.5)
    params = jax.eval_shape(model.init, jax.random.key(0), x, u)["params"]
    params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), params)
    txt = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, u) ** 2))).lower(params).compile().as_text()
    return sum(len(c.split("\n")) for c in re.split(r"\n(?=\S)", txt) if c.startswith("%fused"))


def test_backward_is_linear_in_depth():
    """Going from depth 4 to 8 adds twice the fused code of going from 2 to 4 (linear in depth). Without the
    barriers XLA:CPU fused the residual-gradient chain of every later block into each block's kernels: measured
    3378, 7960, 22308 instructions at depth 2, 4, 8 (ratio 3.1), with them 2000, 3522, 6566 (ratio 2.0)."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU fusion property")
    n2, n4, n8 = (_fused_instructions(d) for d in (2, 4, 8))
    assert (n8 - n4) / (n4 - n2) < 2.3, (n2, n4, n8)
