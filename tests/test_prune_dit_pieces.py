"""Tests for diffmem.experiments.prune_dit's pieces on tiny models (the smoke pipeline end to end, the claims and the
config errors are in test_prune_dit.py): one compiled fine-tune step for many masks, the swap sampler, the
fine-tune loss, the trajectory analysis, and an imported DiT checkpoint pruned and exported back."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prune_dit as prune_cfg
from diffmem import experiments, image_diffusion as idf, pruning, sampling, sde, training
from diffmem.config import SamplerConfig
from diffmem.experiments.prune_dit import where
from diffmem.models import dit as dit_lib

U_MIN = 1e-3


def test_one_compiled_finetune_step_for_many_masks(tmp_path):
    """Two groups of fine-tunes with different masks, starts and decays share ONE compiled step: the loss is traced
    once (chex.assert_max_traces)."""
    model = dit_lib.DiT(image_size=8, channels=1, patch=2, hidden=16, depth=2, heads=2)
    images = np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    loss = chex.assert_max_traces(idf.make_member_loss(model, U_MIN), n=1)
    cfg = training.TrainConfig(steps=4, batch_size=4, lr=1e-3, log_every=2, ckpt_every=4)
    keys = jnp.stack([jax.random.key(i) for i in range(3)])
    params = training.init_members(lambda k: idf.init_params(model, k), keys)
    for g in range(2):
        masks = np.ones((3, 2, 2), np.float32)
        masks[g, g % 2, 1 - g % 2] = 0.0
        masks[2, 1, 0] = 0.0
        training.train_members(loss, params, images, keys, cfg, weight_decays=[0.0, 0.1 * g, 1.0],
                               extra=jnp.asarray(masks), workdir=str(tmp_path / f"g{g}"))


# ---------------------------------------------------------------- pieces on a tiny random model

# The smoke preset's DiT and sampler settings, so that these tests reuse the samplers compiled by the smoke run.
MODEL = dit_lib.DiT(image_size=8, channels=1, patch=2, hidden=32, depth=2, heads=2)


def _params(seed):
    """Every parameter random (open adaLN gates, so every head matters)."""
    shapes = jax.eval_shape(MODEL.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))["params"]
    rng = np.random.default_rng(seed)

    def draw(a):
        std = 1 / math.sqrt(math.prod(a.shape[:-1])) if len(a.shape) >= 2 else 0.3
        return jnp.asarray(std * rng.standard_normal(a.shape), jnp.float32)
    return jax.tree.map(draw, shapes)


P_HI, P_LO = _params(1), _params(2)
M_HI = np.ones((2, 2), np.float32)
M_LO = np.array([[1, 0], [0, 1]], np.float32)
CFG = SamplerConfig(num_samples=24, steps=6, batch_size=24)
KEY = jax.random.key(11)


def test_swap_endpoints_equal_single_models():
    lo = idf.sample(MODEL, P_LO, KEY, CFG, U_MIN, head_mask=M_LO)
    hi = idf.sample(MODEL, P_HI, KEY, CFG, U_MIN, head_mask=M_HI)
    # tau beyond T: every time is <= tau, so the 'lo' (pruned) model alone; tau below t0: the 'hi' model alone
    # (two differently compiled programs: float32 rounding differs in the last bits of samples of size up to ~100,
    # so 1e-6 of that scale; the mid-tau swap below differs from both by more than 1e-3)
    np.testing.assert_allclose(pruning.swap_sample(MODEL, P_HI, M_HI, P_LO, M_LO, 2.0, KEY, CFG, U_MIN), lo,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pruning.swap_sample(MODEL, P_HI, M_HI, P_LO, M_LO, 0.0, KEY, CFG, U_MIN), hi,
                               rtol=1e-5, atol=1e-4)
    mid = pruning.swap_sample(MODEL, P_HI, M_HI, P_LO, M_LO, 0.5, KEY, CFG, U_MIN)
    assert np.abs(mid - lo).max() > 1e-3 and np.abs(mid - hi).max() > 1e-3
    with pytest.raises(ValueError, match="head_mask must have shape"):
        pruning.swap_sample(MODEL, P_HI, np.ones((2, 3)), P_LO, M_LO, 0.5, KEY, CFG, U_MIN)
    with pytest.raises(ValueError, match="head_mask entries must be exactly 0 or 1"):
        pruning.swap_sample(MODEL, P_HI, M_HI, P_LO, 0.5 * M_LO, 0.5, KEY, CFG, U_MIN)


def test_swap_switches_at_tau():
    """Swapping at tau equals running the hi model down to the first grid time <= tau and the lo model after:
    with the hi and lo parameter sets equal but masks different, the switch is the mask change."""
    grid = np.asarray(idf.sampling_grid(U_MIN, CFG.steps))
    tau_u = 0.5
    out = pruning.swap_sample(MODEL, P_HI, M_HI, P_HI, M_LO, tau_u, KEY, CFG, U_MIN)
    tau_t = jnp.float32(sde.ddpm_time(jnp.float32(tau_u)))
    hi = idf.make_score_fn(MODEL, P_HI, jnp.asarray(M_HI))
    lo = idf.make_score_fn(MODEL, P_HI, jnp.asarray(M_LO))

    def score(x, t):   # reference: a lax.cond on the grid time instead of selecting parameters
        return jax.lax.cond(t[0] > tau_t, hi, lo, x, t)
    keys = sampling.per_sample_keys(KEY, CFG.num_samples)
    ref = sampling.sample_batch(score, keys, (8, 8, 1), jnp.asarray(grid), "sde", True)
    np.testing.assert_allclose(out, np.asarray(ref), atol=1e-4)


def test_finetune_loss_equals_make_loss_and_mask_errors():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)), jnp.float32)
    k = jax.random.key(5)
    ref, _ = idf.make_loss(MODEL, U_MIN, M_LO)(P_LO, k, x)
    got, _ = idf.make_masked_loss(MODEL, U_MIN)(P_LO, k, {"x": x, "mask": jnp.broadcast_to(M_LO, (8, 2, 2))})
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    cfg = training.TrainConfig(steps=1, batch_size=4, log_every=1, ckpt_every=1)
    for bad in (np.ones((2, 3), np.float32), np.full((2, 2), 0.5, np.float32)):
        with pytest.raises(ValueError, match="head_mask"):
            idf.train_masked(MODEL, P_LO, bad, np.asarray(x), cfg, None, key=k, u_min=U_MIN)


def test_decision_index_hand_made():
    nn = np.array([[3, 1, 2, 5],     # k = 0 (t = T)
                   [1, 1, 2, 6],
                   [2, 1, 4, 6],
                   [2, 1, 2, 6]])    # k = K (t0): final nearest images
    k_star, same, decided = where.decision_index(nn)
    np.testing.assert_array_equal(k_star, [2, 0, 3, 1])
    np.testing.assert_array_equal(decided[:, 2], [False, False, False, True])   # back to 2 only at the end
    np.testing.assert_array_equal(same[:, 2], [True, True, False, True])


def test_trajectory_final_is_the_sample_and_its_tweedie_estimate():
    tr = where.trajectory_decisions(MODEL, P_HI, np.random.default_rng(1).uniform(-1, 1, (5, 8, 8, 1)), KEY, CFG,
                                U_MIN, mask=M_HI)
    ref = idf.sample(MODEL, P_HI, KEY, CFG, U_MIN, head_mask=M_HI)
    np.testing.assert_allclose(tr["final"], ref, atol=1e-5)
    np.testing.assert_allclose(tr["tweedie_last"], tr["final"], atol=1e-5)
    assert tr["nn"].shape == (CFG.steps + 1, CFG.num_samples)
    assert tr["u_grid"][0] == pytest.approx(1.0) and tr["u_grid"][-1] == pytest.approx(U_MIN, rel=1e-3)
    assert np.all(tr["u_star"] == tr["u_grid"][tr["k_star"]])


# ---------------------------------------------------------------- an imported DiT, pruned and exported

def test_imported_dit_through_prune_dit_and_back_to_a_state_dict(tmp_path):
    """A facebookresearch/DiT-format checkpoint (written without torch by torch_dit.export_dit from a random DiT)
    imported by `python -m diffmem.convert`, pruned by prune_dit:smoke as its one base, its pruned export written
    back as a .pt: read back into a DiT with every head (the pruned ones zero-padded) it gives the masked fine-tuned
    model's outputs. (tests/test_checkpoints.py loads such exports into the PyTorch reference itself.)"""
    import flax.serialization
    from diffmem import checkpoints, convert, torch_dit
    src = dit_lib.DiT(image_size=8, channels=1, patch=2, hidden=32, depth=2, heads=2)
    torch_dit.export_dit(tmp_path / "src.pt", src, _params(3))
    assert convert.main(["--checkpoint", str(tmp_path / "src.pt"), "--out", str(tmp_path / "model"),
                         "--heads", "2"]) == 0
    c = prune_cfg.get_config("smoke")
    c.base_model = str(tmp_path / "model")
    c.design.update(bases=1, repeats=1)
    c.where.update(enabled=False)
    res = experiments.run(c, str(tmp_path / "w"))
    assert res["base"]["source"].startswith("model:") and res["model"]["heads"] == [2, 2]
    eta = c.prune.paper_eta
    exp_dir = tmp_path / "w" / "exported" / f"importance_eta{eta:g}"
    assert convert.main(["--model", str(exp_dir), "--export_pt", str(tmp_path / "pruned.pt")]) == 0
    sd, _ = checkpoints.state_dict_of(checkpoints.read_pt(tmp_path / "pruned.pt"))
    back = torch_dit.state_dict_to_params(sd, src)                     # every head, pruned ones zero
    (run,) = [r for r in res["runs"] if (r["method"], r["eta"]) == ("importance", eta)]   # 1 base, 1 repeat
    mask = np.asarray(run["mask"], np.float32)
    piece = tmp_path / "w" / res["piece_dir"]
    tuned = flax.serialization.from_bytes(_params(3), (piece / "params" / f"{run['run']}.msgpack").read_bytes())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8, 8, 1)), jnp.float32)
    u = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
    want = src.apply({"params": tuned}, x, u, head_mask=jnp.asarray(mask))
    np.testing.assert_allclose(src.apply({"params": back}, x, u), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"config\.base_model.*takes images"):
        c.data.pool = 2
        experiments.run(c, str(tmp_path / "w2"))
