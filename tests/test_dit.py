"""Tests for diffmem.models.dit: DiT sizes, adaLN-Zero identity at init, head gates and physical head removal."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import pruning
from diffmem.models import dit as D

S, C, P = 8, 3, 2  # tiny images 8x8x3, patch 2 -> 16 tokens


def tiny(**kw):
    base = dict(image_size=S, channels=C, patch=P, hidden=32, depth=2, heads=4)
    base.update(kw)
    return D.DiT(**base)


def cond():
    """The conditional test model: depth 3, 3 classes, learn_sigma."""
    return tiny(depth=3, num_classes=3, learn_sigma=True)


# Test data and perturbations come from numpy's RNG: no XLA compile per shape keeps this file fast.
def inputs(b=2, num_classes=0, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, S, S, C)), jnp.float32)
    u = jnp.asarray(rng.uniform(size=(b,)), jnp.float32)
    y = jnp.asarray(rng.integers(0, num_classes, (b,)), jnp.int32) if num_classes else None
    return x, u, y


def perturb(variables, seed=1, std=0.1):
    """Adds N(0, std^2) noise to EVERY parameter (so zero-init adaLN / final layers are non-trivial)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a) + std * rng.standard_normal(a.shape), a.dtype), variables)


_INIT_CACHE = {}


def init(model, num_classes=0, seed=0):
    """Jitted, cached init with an rbg key (one cheap XLA program instead of one threefry compile per shape)."""
    key = (repr(model), seed)
    if key not in _INIT_CACHE:
        x, u, y = inputs(2, num_classes)
        _INIT_CACHE[key] = jax.jit(model.init)(jax.random.key(seed, impl="rbg"), x, u, y)
    return jax.tree_util.tree_map(lambda a: a, _INIT_CACHE[key])


_FWD_CACHE = {}


def fwd(model, variables, x, u, y=None, head_mask=None):
    """Jitted model.apply, cached per (model, which optional args are given): few whole-model compiles
    instead of hundreds of op-by-op ones."""
    key = (repr(model), y is None, head_mask is None)
    if key not in _FWD_CACHE:
        _FWD_CACHE[key] = jax.jit(lambda v, x, u, y, m: model.apply(v, x, u, y, head_mask=m))
    return _FWD_CACHE[key](variables, x, u, y, head_mask)


# ---------------------------------------------------------------- shapes, sizes, fixed embeddings

@pytest.mark.parametrize("num_classes,learn_sigma", [(0, False), (3, True)])
def test_output_shapes(num_classes, learn_sigma):
    m = cond() if num_classes else tiny()
    x, u, y = inputs(2, num_classes)
    v = init(m, num_classes)
    out = fwd(m, v, x, u, y)
    chex.assert_shape(out, (2, S, S, 2 * C if learn_sigma else C))
    assert out.dtype == jnp.float32
    # scalar u broadcasts; y=None means the null label
    vp = perturb(v)
    np.testing.assert_array_equal(fwd(m, vp, x, jnp.float32(0.3), y),
                                  fwd(m, vp, x, jnp.full((2,), 0.3), y))
    if num_classes:
        np.testing.assert_array_equal(fwd(m, vp, x, u), fwd(m, vp, x, u, jnp.full((2,), num_classes)))
        assert not np.allclose(fwd(m, vp, x, u), fwd(m, vp, x, u, y))


# Reference sizes: DiT paper (Peebles & Xie 2023) Table 1 / 4 at 256x256 (latent 32x32x4), learn_sigma,
# 1000 classes: S/2 33M, B/2 130M, L/2 458M, XL/2 675M. The official models.py count of DiT-XL/2 is
# 675,129,632 including its frozen (requires_grad=False) pos_embed of 256 x 1152 entries, which we do not store.
@pytest.mark.parametrize("name,ref", [("S/2", 33e6), ("B/2", 130e6), ("L/2", 458e6), ("XL/2", 675e6)])
def test_param_counts_match_paper(name, ref):
    m = D.DiT(image_size=32, channels=4, num_classes=1000, learn_sigma=True, **D.dit_kwargs(name))
    shapes = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,)),
                            jnp.zeros((1,), jnp.int32))
    n = D.count_params(shapes)
    assert abs(n - ref) / ref < 0.01, (name, n)
    if name == "XL/2":
        assert n + 256 * 1152 == 675_129_632


def test_configs():
    assert D.dit_kwargs("XL/8") == dict(patch=8, depth=28, hidden=1152, heads=16)
    assert D.dit_kwargs("T/2") == dict(patch=2, depth=4, hidden=64, heads=4)
    assert D.dit_kwargs("M/4") == dict(patch=4, depth=6, hidden=128, heads=4)
    with pytest.raises(ValueError, match="DiT config name"):
        D.dit_kwargs("XXL/2")


def test_pos_embed_is_fixed_constant_not_param():
    v = init(tiny())
    paths = ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(v)[0]]
    assert not any("pos" in p for p in paths), paths
    # closed form of the MAE/DiT embedding: channels [0, d/4) sin(col w_j), [d/4, d/2) cos(col w_j),
    # [d/2, 3d/4) sin(row w_j), [3d/4, d) cos(row w_j), w_j = 10000^(-j / (d/4)); tokens row-major.
    d, g = 32, 4
    pe = D.get_2d_sincos_pos_embed(d, g)
    chex.assert_shape(pe, (g * g, d))
    w = 10000.0 ** (-np.arange(d // 4) / (d / 4))
    for row, col in [(0, 0), (1, 3), (3, 2)]:
        ref = np.concatenate([np.sin(col * w), np.cos(col * w), np.sin(row * w), np.cos(row * w)])
        np.testing.assert_allclose(pe[row * g + col], ref, atol=1e-6)


def test_timestep_embedding_closed_form():
    t = jnp.array([0.0, 3.0, 999.0])
    e = D.timestep_embedding(t)
    f = np.exp(-math.log(10000.0) * np.arange(128) / 128)
    ref = np.concatenate([np.cos(np.asarray(t)[:, None] * f), np.sin(np.asarray(t)[:, None] * f)], axis=1)
    np.testing.assert_allclose(e, ref, atol=2e-4)


# ---------------------------------------------------------------- adaLN-Zero: identity at init

def test_identity_at_init():
    m = cond()
    x, u, y = inputs(2, 3)
    v = init(m, 3)
    out, inter = jax.jit(lambda v: m.apply(v, x, u, y, capture_intermediates=True))(v)
    np.testing.assert_array_equal(out, 0.0)
    # the first block's input is patch-embed + fixed position embedding; every block returns its input
    tokens = inter["intermediates"]["x_embedder"]["__call__"][0].reshape(2, 16, 32) + D.get_2d_sincos_pos_embed(32, 4)
    np.testing.assert_allclose(inter["intermediates"]["blocks_0"]["__call__"][0], tokens, atol=1e-6)
    for l in (1, 2):
        np.testing.assert_array_equal(inter["intermediates"][f"blocks_{l}"]["__call__"][0],
                                      inter["intermediates"]["blocks_0"]["__call__"][0])
    # standalone: block(x, c) == x for arbitrary x, c with the init params
    xb = jax.random.normal(jax.random.key(5), (2, 16, 32))
    cb = jax.random.normal(jax.random.key(6), (2, 32))
    blk = jax.jit(lambda p: D.DiTBlock(32, 4, 8).apply({"params": p}, xb, cb, jnp.ones(4)))
    for l in range(3):
        np.testing.assert_array_equal(blk(v["params"][f"blocks_{l}"]), xb)


def test_unpatchify_layout_matches_dit():
    """With only the final bias non-zero, pixel (i, j, ch) reads bias[((i % p) p + j % p) oc + ch] (DiT layout)."""
    m = tiny()
    v = jax.tree_util.tree_map(jnp.zeros_like, init(m))
    bias = jnp.arange(P * P * C, dtype=jnp.float32)
    v["params"]["final_layer"]["linear"]["bias"] = bias
    out = np.asarray(fwd(m, v, *inputs()[:2]))[1]
    i, j, ch = np.meshgrid(np.arange(S), np.arange(S), np.arange(C), indexing="ij")
    np.testing.assert_array_equal(out, ((i % P) * P + j % P) * C + ch)


# ---------------------------------------------------------------- head gates

def test_all_ones_mask_equals_no_mask():
    m = tiny()
    x, u, _ = inputs()
    v = perturb(init(m))
    np.testing.assert_array_equal(fwd(m, v, x, u, head_mask=jnp.ones((2, 4))), fwd(m, v, x, u))


def test_masking_head_equals_zeroing_proj_rows():
    m = tiny()
    x, u, _ = inputs()
    v = perturb(init(m))
    l, h = 1, 2
    mask = jnp.ones((2, 4)).at[l, h].set(0.0)
    sl = pruning.head_output_slices(m)[l][h]
    assert sl == slice(16, 24)  # head_dim 8
    v0 = jax.tree_util.tree_map(lambda a: a, v)
    k = v0["params"][f"blocks_{l}"]["attn"]["proj"]["kernel"]
    v0["params"][f"blocks_{l}"]["attn"]["proj"]["kernel"] = k.at[sl].set(0.0)
    masked, zeroed, full = fwd(m, v, x, u, head_mask=mask), fwd(m, v0, x, u), fwd(m, v, x, u)
    np.testing.assert_allclose(masked, zeroed, atol=1e-5)
    assert np.max(np.abs(masked - full)) > 1e-3  # the head mattered


def test_head_proj_norms():
    m = tiny()
    v = perturb(init(m))
    norms = pruning.head_proj_norms(m, v)
    chex.assert_shape(norms, (2, 4))
    k = np.asarray(v["params"]["blocks_1"]["attn"]["proj"]["kernel"])
    np.testing.assert_allclose(norms[1, 3], np.linalg.norm(k[24:32]), rtol=1e-5)
    np.testing.assert_allclose(pruning.head_proj_norms(m, v["params"]), norms)


def test_head_mask_gradient_matches_finite_difference():
    m = cond()
    x, u, y = inputs(2, 3)
    v = perturb(init(m, 3))

    def loss(mask):
        return jnp.mean(jnp.square(fwd(m, v, x, u, y, head_mask=mask)))

    loss = jax.jit(loss)
    ones = jnp.ones((3, 4))
    g = jax.jit(jax.grad(loss))(ones)
    chex.assert_shape(g, (3, 4))
    assert np.all(np.abs(g) > 0)
    eps = 3e-2  # central difference, O(eps^2) bias; float32 round-off ~1e-7 * loss / eps
    for l, h in [(0, 1), (2, 3)]:
        fd = (loss(ones.at[l, h].add(eps)) - loss(ones.at[l, h].add(-eps))) / (2 * eps)
        np.testing.assert_allclose(g[l, h], fd, rtol=5e-3)


# ---------------------------------------------------------------- physical removal

def test_remove_heads_equals_masking():
    m = cond()
    x, u, y = inputs(2, 3)
    v = perturb(init(m, 3))
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0]], np.float32)  # block 1 loses every head
    m2, v2 = pruning.remove_heads(m, v, mask)
    assert m2.head_counts == (2, 0, 3) and m2.head_dim == 8 and m2.max_heads == 3
    assert set(v2["params"]["blocks_1"]["attn"]) == {"proj"}
    assert set(v2["params"]["blocks_1"]["attn"]["proj"]) == {"bias"}
    # removed: 7 heads x (3 qkv columns + 1 proj row-block) of 8 x 32 weights + 3 x 8 qkv biases each
    assert D.count_params(v) - D.count_params(v2) == 7 * (4 * 8 * 32 + 3 * 8)
    ref = fwd(m, v, x, u, y, head_mask=jnp.asarray(mask))
    out = fwd(m2, v2, x, u, y)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert np.max(np.abs(ref - fwd(m, v, x, u, y, head_mask=jnp.ones((3, 4))))) > 1e-3
    # pruned norms are the kept heads' norms, NaN on padding
    n1, n2 = pruning.head_proj_norms(m, v), pruning.head_proj_norms(m2, v2)
    np.testing.assert_allclose(n2[0, :2], n1[0, [0, 2]], rtol=1e-6)
    np.testing.assert_allclose(n2[2], n1[2, :3], rtol=1e-6)
    assert np.all(np.isnan(n2[1])) and np.array_equal(pruning.head_valid_mask(m2), ~np.isnan(n2))
    # prune the pruned model again (padded mask; padding ignored) == masking it, and == masking the original
    mask2 = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]], np.float32)
    m3, v3 = pruning.remove_heads(m2, v2["params"], mask2)
    assert m3.head_counts == (1, 0, 2)
    out3 = fwd(m3, {"params": v3}, x, u, y)
    np.testing.assert_allclose(out3, fwd(m2, v2, x, u, y, head_mask=jnp.asarray(mask2)), atol=1e-5, rtol=1e-5)
    orig_mask = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]], np.float32)
    np.testing.assert_allclose(out3, fwd(m, v, x, u, y, head_mask=jnp.asarray(orig_mask)), atol=1e-5, rtol=1e-5)


def test_remove_heads_rejects_bad_masks():
    m = tiny()
    v = init(m)
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        pruning.remove_heads(m, v, np.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        pruning.remove_heads(m, v, np.array([[1, 1, 1, np.nan], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"head_mask.*\(2, 4\)"):
        pruning.remove_heads(m, v, np.ones((4, 2)))


# ---------------------------------------------------------------- validation

def test_bad_inputs_raise():
    m = tiny()
    x, u, _ = inputs(2)
    v = init(m)
    for bad in (jnp.ones((2, 3)), jnp.ones((4,)), jnp.ones((3, 4))):
        with pytest.raises(ValueError, match=r"head_mask must have shape \(depth, max_heads\) = \(2, 4\)"):
            m.apply(v, x, u, head_mask=bad)
    with pytest.raises(ValueError, match="image_size"):
        tiny(image_size=9).init(jax.random.key(0), jnp.zeros((1, 9, 9, C)), jnp.zeros((1,)))
    with pytest.raises(ValueError, match="heads"):
        tiny(heads=5).init(jax.random.key(0), x, u)
    with pytest.raises(ValueError, match="heads"):
        tiny(heads=(4, 4, 4)).init(jax.random.key(0), x, u)
    with pytest.raises(ValueError, match="head_dim must be given"):
        tiny(heads=(4, 2)).init(jax.random.key(0), x, u)
    with pytest.raises(ValueError, match="x must have shape"):
        m.apply(v, jnp.zeros((2, S, S, C + 1)), u)
    with pytest.raises(ValueError, match="y must be None"):
        m.apply(v, x, u, jnp.zeros((2,), jnp.int32))
    mc = cond()
    vc = init(mc, 3)
    with pytest.raises(ValueError, match=r"y must be in \[0, 3\]"):
        mc.apply(vc, x, u, jnp.array([0, 4]))


def test_drop_labels():
    y = jnp.arange(6) % 3
    np.testing.assert_array_equal(D.drop_labels(jax.random.key(0), y, 3, 0.0), y)
    np.testing.assert_array_equal(D.drop_labels(jax.random.key(0), y, 3, 1.0), 3)
    frac = float(jnp.mean(D.drop_labels(jax.random.key(1), jnp.zeros(20000, jnp.int32), 3, 0.1) == 3))
    assert abs(frac - 0.1) < 0.01
    with pytest.raises(ValueError, match="p must be in"):
        D.drop_labels(jax.random.key(0), y, 3, 1.5)
