"""Tests for diffmem.pruning: Algorithm 2 head importance (vs finite differences, multi-device), Algorithm 1 masks,
random / magnitude baselines, mask evaluation mapped over devices, fine-tuning apply and export."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import losses, pruning
from diffmem.models import dit as D

S, C = 8, 1                      # 8x8x1 images, patch 2 -> 16 tokens
DEPTH, HEADS = 2, 4
NB, BS = 2, 4                     # scoring batches, batch size (a multiple of the 4 CPU devices)
KEY = jax.random.key(3)


def tiny(**kw):
    base = dict(image_size=S, channels=C, patch=2, hidden=32, depth=DEPTH, heads=HEADS)
    base.update(kw)
    return D.DiT(**base)


MODEL = tiny()


def _random_params(seed=1):
    """Every parameter random (numpy, no XLA compile): N(0, 1/fan_in) kernels, N(0, 0.3^2) biases/embeddings,
    so the zero-initialised adaLN gates are open and the head gradients are non-trivial."""
    shapes = jax.eval_shape(MODEL.init, jax.random.key(0), jnp.zeros((1, S, S, C)), jnp.zeros((1,)))
    rng = np.random.default_rng(seed)

    def draw(a):
        std = 1 / math.sqrt(math.prod(a.shape[:-1])) if len(a.shape) >= 2 else 0.3
        return jnp.asarray(std * rng.standard_normal(a.shape), a.dtype)
    return jax.tree_util.tree_map(draw, shapes)


PARAMS = _random_params()
IMAGES = jnp.asarray(np.random.default_rng(5).standard_normal((16, S, S, C)), jnp.float32)


@pytest.fixture(scope="module")
def scores4():
    """Importance on the default mesh (each batch split over all 4 CPU devices), Beta(0.8, 2)."""
    assert jax.device_count() == 4
    return pruning.head_importance(MODEL, PARAMS, IMAGES, KEY, num_batches=NB, batch_size=BS)


@pytest.fixture(scope="module")
def many():
    """importance_many over 2 time laws (padded to the 4 devices): entry i is computed on device i alone."""
    return pruning.importance_many(MODEL, PARAMS, IMAGES, KEY, [("beta", 0.8, 2.0), ("uniform", 1.0, 1.0)],
                                   num_batches=NB, batch_size=BS)


# ---------------------------------------------------------------- Algorithm 2 vs finite differences

def _independent_loss(params, x0, eps, u, mask):
    """Epsilon loss written out from the closed forms alpha = e^{-t/2}, sigma^2 = 1 - e^{-t}, t = ddpm_time(u)."""
    t = (1000 * (1e-4 * u + 0.5 * (0.02 - 1e-4) * u * u))[:, None, None, None]
    x_t = jnp.exp(-t / 2) * x0 + jnp.sqrt(1 - jnp.exp(-t)) * eps
    return jnp.mean((MODEL.apply(params, x_t, u, head_mask=mask) - eps) ** 2)


# one compiled program for all reference losses: masks 0..7 = 1 + delta e_h, 8..15 = 1 - delta e_h, 16 = ones
DELTA = 1e-2
_BASIS = np.eye(DEPTH * HEADS, dtype=np.float32).reshape(-1, DEPTH, HEADS)
REF_MASKS = jnp.asarray(np.concatenate([1 + DELTA * _BASIS, 1 - DELTA * _BASIS, np.ones((1, DEPTH, HEADS))]))
_ref_losses = jax.jit(jax.vmap(_independent_loss, in_axes=(None, None, None, None, 0)))


def fd_scores(time_dist="beta", a=0.8, b=2.0):
    """S by central differences of the independent loss on the batches draw_batch(fold_in(KEY, i))."""
    s = np.zeros((DEPTH, HEADS))
    for i in range(NB):
        bt = pruning.draw_batch(jax.random.fold_in(KEY, i), IMAGES, BS, time_dist=time_dist, a=a, b=b)
        assert np.all(np.asarray(bt["u"]) == float(bt["u"][0]))                      # ONE u per batch
        np.testing.assert_array_equal(bt["x0"], IMAGES[bt["idx"]])
        l = np.asarray(_ref_losses(PARAMS, bt["x0"], bt["eps"], bt["u"], REF_MASKS), np.float64)
        s += np.abs((l[:DEPTH * HEADS] - l[DEPTH * HEADS:-1]) / (2 * DELTA)).reshape(DEPTH, HEADS)
    return s


def test_importance_equals_finite_differences(scores4):
    s_fd = fd_scores()
    raw = np.asarray(scores4["raw"])
    assert s_fd.min() > 1e-3 * s_fd.max() > 0                                         # non-trivial gradients
    np.testing.assert_allclose(raw, s_fd, rtol=2e-2, atol=2e-3 * s_fd.max())
    # I is the per-layer normalisation of S: every layer has unit l2 norm
    np.testing.assert_allclose(scores4["importance"], raw / np.linalg.norm(raw, axis=1, keepdims=True),
                               rtol=1e-6)


def test_multi_device_scores_equal_single_device(scores4, many):
    """The data-parallel scores (4 devices) equal the single-device computation of the same batches (entry 0 of
    importance_many runs on one device); only the float32 summation order differs."""
    np.testing.assert_allclose(scores4["raw"], many["raw"][0], rtol=1e-4)
    np.testing.assert_allclose(scores4["importance"], many["importance"][0], rtol=1e-4)


def test_importance_many_equals_sequential(many):
    chex.assert_shape([many["raw"], many["importance"]], (2, DEPTH, HEADS))
    # every entry against its own sequential single-device finite-difference reference
    for i, dist in enumerate(["beta", "uniform"]):
        ref = fd_scores(dist)
        np.testing.assert_allclose(many["raw"][i], ref, rtol=2e-2, atol=2e-3 * ref.max())
        np.testing.assert_allclose(many["importance"][i], pruning.normalize_per_layer(many["raw"][i]), rtol=1e-6)
    assert not np.allclose(many["raw"][1], many["raw"][0], rtol=0.05)                 # the time law matters


def test_zero_head_gets_zero_importance_and_is_pruned_first():
    p = jax.tree_util.tree_map(lambda a: a, PARAMS)
    k = p["params"]["blocks_1"]["attn"]["proj"]["kernel"]
    dh = 32 // HEADS
    p["params"]["blocks_1"]["attn"]["proj"]["kernel"] = k.at[2 * dh:3 * dh].set(0.0)   # head (1, 2) is dead
    out = pruning.one_shot_mask(MODEL, p, IMAGES, KEY, 1 / 8, num_batches=NB, batch_size=BS)
    assert out["raw"][1, 2] == 0.0 and np.all(np.delete(np.asarray(out["raw"]).ravel(), 6) > 0)
    expected = np.ones((DEPTH, HEADS), np.float32)
    expected[1, 2] = 0
    np.testing.assert_array_equal(out["mask"], expected)


# ---------------------------------------------------------------- masks from scores

def test_normalize_per_layer_hand_made():
    s = jnp.array([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [6.0, 8.0, jnp.nan, jnp.nan]])
    i = np.asarray(pruning.normalize_per_layer(s))
    np.testing.assert_allclose(i[:3], [[0.6, 0.8, 0, 0], [0.5] * 4, [0] * 4], rtol=1e-6)
    np.testing.assert_allclose(i[3, :2], [0.6, 0.8], rtol=1e-6)
    assert np.isnan(i[3, 2:]).all()


def test_global_rank_hand_made_with_stable_ties():
    imp = np.array([[0.9, 0.1, 0.5], [0.1, 0.3, 0.2]])
    np.testing.assert_array_equal(pruning.global_rank(imp), [[5, 0, 4], [1, 3, 2]])
    valid = np.array([[True, True, False], [True, True, True]])
    np.testing.assert_array_equal(pruning.global_rank(imp, valid), [[4, 0, -1], [1, 3, 2]])
    np.testing.assert_array_equal(pruning.global_rank(np.where(valid, imp, np.nan)), [[4, 0, -1], [1, 3, 2]])
    # all tied: row-major order
    np.testing.assert_array_equal(pruning.global_rank(np.ones((2, 2))), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="NaN"):
        pruning.global_rank(np.array([[np.nan, 1.0]]), np.ones((1, 2), bool))


@pytest.mark.parametrize("shape,eta", [((2, 4), 0.0), ((2, 4), 0.1), ((2, 4), 0.2), ((2, 4), 0.25),
                                       ((2, 4), 0.5), ((2, 4), 0.99), ((6, 5), 0.2), ((6, 5), 0.7),
                                       ((10, 10), 0.29), ((10, 10), 0.07)])
def test_prune_mask_removes_floor_eta_h_lowest(shape, eta):
    imp = np.random.default_rng(0).uniform(size=shape)
    h = math.prod(shape)
    k = {0.29: 29, 0.07: 7}.get(eta, math.floor(eta * h))   # exact values for the float-rounding cases
    mask = pruning.prune_mask(imp, eta)
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == k
    if 0 < k < h:
        assert imp[mask == 0].max() < imp[mask == 1].min()                                   # the lowest ones


def test_prune_mask_padding_and_invalid():
    imp = np.array([[0.5, 0.1, np.nan], [0.3, 0.2, 0.4]])                  # H = 5 valid heads
    mask = pruning.prune_mask(imp, 0.5)                                      # floor(2.5) = 2
    np.testing.assert_array_equal(mask, [[1, 0, 1], [1, 0, 1]])


def test_keep_one_per_layer():
    imp = np.array([[0.01, 0.02, 0.03], [0.5, 0.6, 0.7]])
    np.testing.assert_array_equal(pruning.prune_mask(imp, 0.5), [[0, 0, 0], [1, 1, 1]])   # layer 0 emptied
    m = pruning.prune_mask(imp, 0.5, keep_one_per_layer=True)
    np.testing.assert_array_equal(m, [[0, 0, 1], [0, 1, 1]])
    assert np.all(m.sum(1) >= 1)
    with pytest.raises(ValueError, match="keep_one_per_layer"):
        pruning.prune_mask(imp, 0.9, keep_one_per_layer=True)                # 5 of 6 with 2 layers: impossible


@pytest.mark.parametrize("eta", [-0.1, 1.0, 1.5, float("nan"), "0.2"])
def test_bad_eta(eta):
    with pytest.raises(ValueError, match="eta"):
        pruning.prune_mask(np.ones((2, 4)), eta)
    with pytest.raises(ValueError, match="eta"):
        pruning.random_mask(KEY, 2, 4, eta)


def test_random_mask_seeded_and_same_count():
    masks = [pruning.random_mask(jax.random.key(s), 3, 4, 0.5) for s in range(4)]
    for m in masks:
        assert int((m == 0).sum()) == 6
    np.testing.assert_array_equal(masks[0], pruning.random_mask(jax.random.key(0), 3, 4, 0.5))
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])
    m = pruning.random_mask(jax.random.key(7), 3, 4, 0.8, keep_one_per_layer=True)
    assert int((m == 0).sum()) == 9 and np.all(m.sum(1) == 1)


def test_magnitude_scores_are_proj_norms():
    s = np.asarray(pruning.magnitude_scores(MODEL, PARAMS))
    w = np.asarray(PARAMS["params"]["blocks_0"]["attn"]["proj"]["kernel"]).reshape(HEADS, 8, 32)
    np.testing.assert_allclose(s[0], np.sqrt((w ** 2).sum((1, 2))), rtol=1e-5)


def test_draw_batch_labels_follow_indices():
    labels = jnp.arange(16, dtype=jnp.int32) % 3
    b = pruning.draw_batch(KEY, IMAGES, BS, time_dist="uniform", labels=labels)
    np.testing.assert_array_equal(b["y"], labels[b["idx"]])
    np.testing.assert_array_equal(b["x0"], IMAGES[b["idx"]])
    with pytest.raises(ValueError, match="labels"):
        pruning.head_importance(MODEL, PARAMS, IMAGES, KEY, num_batches=1, batch_size=4, labels=labels)


def test_check_mask_errors():
    with pytest.raises(ValueError, match=r"head_mask.*\(2, 4\)"):
        pruning.check_mask(np.ones((2, 3)), MODEL)
    with pytest.raises(ValueError, match="head_mask.*0 or 1"):
        pruning.check_mask(np.full((2, 4), 0.5), MODEL)
    with pytest.raises(ValueError, match=r"head_mask.*\(2, 4\)"):
        pruning.make_masked_apply(MODEL, np.ones((3, 4)))
    with pytest.raises(ValueError, match="batch_size"):
        pruning.head_importance(MODEL, PARAMS, IMAGES, KEY, num_batches=1, batch_size=3)     # 3 % 4 devices
    with pytest.raises(ValueError, match="time_dist"):
        pruning.head_importance(MODEL, PARAMS, IMAGES, KEY, num_batches=1, batch_size=4, time_dist="gamma")
    with pytest.raises(ValueError, match="a > 0"):
        pruning.importance_many(MODEL, PARAMS, IMAGES, KEY, [("beta", 0.0, 2.0)], num_batches=1, batch_size=4)
    with pytest.raises(ValueError, match="masks"):
        pruning.evaluate_masks(MODEL, PARAMS, IMAGES, KEY, np.ones((2, 4)), num_batches=1, batch_size=4)
    with pytest.raises(ValueError, match="images"):
        pruning.head_importance(MODEL, PARAMS, IMAGES[..., 0], KEY, num_batches=1, batch_size=4)


# ---------------------------------------------------------------- using masks

_apply = pruning.jitted_apply(MODEL)       # shared with make_masked_apply / export_pruned: compiled once
X2, U2 = IMAGES[:2], jnp.array([0.2, 0.7])  # export_pruned checks on 2 inputs: the same compiled programs


def test_eta_zero_is_identity():
    mask = pruning.prune_mask(np.random.default_rng(1).uniform(size=(DEPTH, HEADS)), 0.0)
    np.testing.assert_array_equal(mask, np.ones((DEPTH, HEADS)))
    ref = _apply(PARAMS, X2, U2)                                                      # no head_mask at all
    np.testing.assert_allclose(pruning.make_masked_apply(MODEL, mask)(PARAMS, X2, U2), ref, rtol=1e-6, atol=1e-6)
    small, sp = pruning.export_pruned(MODEL, PARAMS, mask, check_batch=0)   # nothing removed: same weights
    assert small.head_counts == (HEADS,) * DEPTH
    chex.assert_trees_all_equal(sp, PARAMS)


def test_export_pruned_equals_masked():
    mask = pruning.prune_mask(np.asarray(pruning.magnitude_scores(MODEL, PARAMS)), 0.5)   # 4 of 8
    small, sp = pruning.export_pruned(MODEL, PARAMS, mask)
    assert small.head_counts == tuple(int(c) for c in mask.sum(1)) and D.count_params(sp) < D.count_params(PARAMS)
    out_small = jax.jit(lambda p, x, u: small.apply(p, x, u))(sp, X2, U2)             # independent compile
    masked = pruning.make_masked_apply(MODEL, mask)
    np.testing.assert_allclose(out_small, masked(PARAMS, X2, U2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_small, _apply(PARAMS, X2, U2, None, jnp.asarray(mask)), rtol=1e-5, atol=1e-5)
    assert np.abs(out_small - _apply(PARAMS, X2, U2)).max() > 1e-2                    # pruning changed the model


def test_masked_apply_fine_tunes_only_kept_heads():
    """make_masked_apply plugs into losses.make_eps_loss; the fine-tuning gradient of a removed head's weights is
    exactly 0 (its gated output never reaches the loss), and non-zero for the kept heads."""
    mask = np.ones((DEPTH, HEADS), np.float32)
    mask[0, 1] = mask[1, 3] = 0
    loss = losses.make_eps_loss(pruning.make_masked_apply(MODEL, mask))
    g = jax.jit(jax.grad(lambda p: loss(p, KEY, X2)[0]))(PARAMS)["params"]
    for l in range(DEPTH):
        rows = np.abs(np.asarray(g[f"blocks_{l}"]["attn"]["proj"]["kernel"])).reshape(HEADS, -1).max(1)  # (heads,)
        np.testing.assert_array_equal(rows == 0, mask[l] == 0)


def test_evaluate_masks_mapped_equals_sequential():
    masks = np.stack([np.ones((DEPTH, HEADS), np.float32),
                      pruning.random_mask(jax.random.key(0), DEPTH, HEADS, 0.5),
                      pruning.random_mask(jax.random.key(1), DEPTH, HEADS, 0.25)])        # 3 -> padded to 4
    mapped = np.asarray(pruning.evaluate_masks(MODEL, PARAMS, IMAGES, KEY, masks, num_batches=NB, batch_size=BS))
    chex.assert_shape(mapped, (3,))
    # sequential single-device reference: the written-out loss of every mask on the same draws (u per example)
    stack = jnp.asarray(np.concatenate([masks, np.ones((len(REF_MASKS) - 3, DEPTH, HEADS), np.float32)]))
    seq = np.zeros(3)
    for i in range(NB):
        b = pruning.draw_batch(jax.random.fold_in(KEY, i), IMAGES, BS, time_dist="uniform", per_example_time=True)
        assert len(np.unique(np.asarray(b["u"]))) == BS
        seq += np.asarray(_ref_losses(PARAMS, b["x0"], b["eps"], b["u"], stack)[:3]) / NB
    np.testing.assert_allclose(mapped, seq, rtol=1e-5)
    assert len(set(np.round(seq, 5))) == 3                                                  # masks matter
