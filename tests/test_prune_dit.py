"""Tests for diffmem.experiments.prune_dit: the smoke pipeline end to end (files, masks, counts, numbers recomputed
independently), resume and determinism, config errors, the masked fine-tuning loss, the swap sampler's endpoints and
the trajectory decision times."""
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prune_dit as prune_cfg
from diffmem import data as data_lib
from diffmem import experiments, image_diffusion as idf, pruning, rng, sampling, sde, training
from diffmem.config import SamplerConfig
from diffmem.experiments import prune_dit as P
from diffmem.experiments.prune_dit import pipeline, where
from diffmem.models import dit as dit_lib

U_MIN = 1e-3


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("prune_smoke"))
    config = prune_cfg.get_config("smoke")
    # the weight-decay base with decay 0: the same training as the base (a check of that path, see below)
    config.weight_decay.update(base=True, base_value=0.0)
    results = experiments.run(config, workdir)
    return config, workdir, results


def _run(results, method, eta, repeat=0):
    hits = [r for r in results["runs"] if (r["method"], r["eta"], r["repeat"]) == (method, eta, repeat)]
    assert len(hits) == 1, (method, eta, repeat)
    return hits[0]


# ---------------------------------------------------------------- end to end

def test_smoke_outputs_and_masks(smoke):
    config, workdir, res = smoke
    for f in ("results.json", "table.md", "config.json", "memorization_fd_vs_eta.png", "importance_heatmap.png",
              "where_decided.png", "samples_original.png", "samples_importance.png",
              "exported/importance_eta0.25/model.json", "exported/importance_eta0.25/params.msgpack"):
        assert os.path.exists(os.path.join(workdir, f)), f
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["runs"] == res["runs"]
    eta = config.prune.paper_eta
    got = {(r["method"], r["eta"]) for r in res["runs"]}
    want = {("original", None), ("finetune_only", None), ("weight_decay_base", None)} | {
        (m, eta) if m in P.PRUNE_METHODS else (m, None) for m in config.methods}
    assert got == want
    heads = config.model.depth * config.model.heads
    k = math.floor(eta * heads)
    full = _run(res, "original", None)["param_count"]
    assert full == res["model"]["num_params"]
    assert _run(res, "finetune_only", None)["param_count"] == full
    sc = res["scores"]
    valid = np.ones((config.model.depth, config.model.heads), bool)
    for r in res["runs"]:
        assert 0.0 <= r["memorization_ratio"] <= 1.0 and math.isfinite(r["fd"])
        if r["method"] in P.PRUNE_METHODS:
            mask = np.asarray(r["mask"], np.float32)
            assert r["num_pruned"] == k == int((mask == 0).sum())
            # a removed head takes its qkv (3 Dh (hidden + 1)) and proj (Dh hidden) parameters with it
            dh = config.model.hidden // config.model.heads
            assert r["param_count"] == full - k * (3 * dh * (config.model.hidden + 1) + dh * config.model.hidden)
            if r["method"] in P.SCORE_LAWS or r["method"] == "magnitude":   # Algorithm 1 on the stored scores
                np.testing.assert_array_equal(mask, pruning.prune_mask(np.asarray(sc[r["method"]]), eta,
                                                                       valid=valid))
    # the exported small model has the masked model's parameter count
    meta = res["exported"]["importance"]
    assert meta["param_count"] == _run(res, "importance", eta)["param_count"]
    assert sum(meta["model"]["heads"]) == heads - k
    # a base trained from scratch with weight decay 0 is the base: the same samples and numbers
    wd0, orig = _run(res, "weight_decay_base", None), _run(res, "original", None)
    for key in ("memorization_ratio", "fd", "precision", "recall"):
        assert wd0[key] == orig[key], key
    # one repeat: the aggregate is the run itself
    agg = res["aggregate"]["importance"][pipeline.eta_tag(eta)]["memorization_ratio"]
    assert agg["mean"] == _run(res, "importance", eta)["memorization_ratio"] and agg["std"] is None


def test_smoke_numbers_recomputed_independently(smoke):
    config, workdir, res = smoke
    d = data_lib.load_images("digits", n=config.data.n, seed=config.data.seed)
    rdir = os.path.join(workdir, res["piece_dir"], "runs", "random_eta0.25_r0")
    with np.load(os.path.join(rdir, "samples.npz")) as f:
        samples = f["samples"]
    assert samples.shape == (config.sampler.num_samples, 8, 8, 1)
    # memorization by a brute-force numpy nearest-neighbour search
    dist = np.linalg.norm(samples.reshape(len(samples), 1, -1) - d.images.reshape(1, d.n, -1), axis=-1)
    dist.sort(axis=1)
    want = float(np.mean(dist[:, 0] < dist[:, 1] / 3.0))
    assert _run(res, "random", config.prune.paper_eta)["memorization_ratio"] == pytest.approx(want)
    # table.md: our rows and the paper's numbers beside them
    table = open(os.path.join(workdir, "table.md")).read()
    for s in ("73.82 +- 1.12", "68.58 +- 0.77", "17.14 +- 0.25", "fine-tune only", "random pruning"):
        assert s in table
    orig = _run(res, "original", None)
    assert f"{100 * orig['memorization_ratio']:.2f}" in table
    # where-decided: swap endpoints are stored, the trajectory's final memorization is a ratio
    wd = res["where_decided"]
    assert 0.0 <= wd["trajectory"]["memorization_ratio"] <= 1.0
    assert wd["trajectory"]["frac_decided"][-1] == 1.0       # at t0 every sample has its final nearest image
    pairs = wd["swap"]["pairs"]
    assert [p["pair"] for p in pairs] == [list(p) for p in config.where.swap_pairs]
    assert all(len(p["taus"]) == len(config.where.taus_u) for p in pairs)
    # the 'original alone' of the swap test is the base sampled on the where-keys: the trajectory's final samples
    assert pairs[0]["a_alone"]["memorization_ratio"] == pytest.approx(wd["trajectory"]["memorization_ratio"])


def test_resume_reuses_pieces_and_same_seed_same_numbers(smoke):
    config, workdir, res = smoke
    again = experiments.run(config, workdir)
    c = again["this_run"]
    assert c["base_steps_trained"] == 0 and c["runs_computed"] == 0 and c["scores_computed"] == 0
    assert c["where_computed"] == 0 and c["runs_reused"] == len(res["runs"])
    assert again["runs"] == res["runs"]
    # a run killed before it finished: its piece is redone from scratch and gives the same numbers
    rdir = os.path.join(workdir, res["piece_dir"], "runs", "random_eta0.25_r0")
    for f in ("result.json", "params.msgpack", "samples.npz", "finetune.json"):
        os.remove(os.path.join(rdir, f))
    shutil.rmtree(os.path.join(rdir, "checkpoints"), ignore_errors=True)
    third = experiments.run(config, workdir)
    assert third["this_run"]["runs_computed"] == 1 and third["this_run"]["finetune_steps"] == config.finetune.steps
    a, b = _run(res, "random", 0.25), _run(third, "random", 0.25)
    for k in ("memorization_ratio", "fd", "precision", "recall", "final_finetune_loss", "param_count"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k


def test_load_base_checkpoint(smoke, tmp_path):
    config, workdir, res = smoke
    s = P.parse_config(config)
    model = idf.build_model((8, 8, 1), **s.model.sizes())
    params, step = idf.load_checkpoint(os.path.join(workdir, "base"), model)
    assert step == config.train.steps
    # the loaded EMA parameters give the original model's samples
    samples = idf.sample(model, params, rng.stream(s.seed, "samples", 0), s.sampler, s.diffusion.u_min)
    with np.load(os.path.join(workdir, res["piece_dir"], "runs", "original_r0", "samples.npz")) as f:
        np.testing.assert_allclose(samples, f["samples"], atol=1e-5)
    with pytest.raises(ValueError, match="no checkpoint"):
        idf.load_checkpoint(str(tmp_path), model)
    with pytest.raises(ValueError, match="do not match"):
        idf.load_checkpoint(os.path.join(workdir, "base"), model.clone(hidden=16, heads=2))


# ---------------------------------------------------------------- config errors

@pytest.mark.parametrize("field,value", [("etas", [0.2, 1.0]), ("etas", [-0.1]), ("paper_eta", 1.0),
                                         ("paper_eta", -0.5), ("etas", [float("nan")])])
def test_bad_eta(field, value):
    c = prune_cfg.get_config("smoke")
    c.prune[field] = value
    with pytest.raises(ValueError, match=r"eta.*[\[(]0, 1\)"):
        P.parse_config(c)


def test_missing_base_checkpoint(tmp_path):
    c = prune_cfg.get_config("smoke")
    c.base_checkpoint = str(tmp_path / "no_such_run")
    with pytest.raises(ValueError, match="base_checkpoint.*no such directory"):
        experiments.run(c, str(tmp_path / "w"))
    c.base_checkpoint = str(tmp_path)            # exists, holds no checkpoint
    with pytest.raises(ValueError, match="base_checkpoint.*no checkpoint"):
        experiments.run(c, str(tmp_path / "w"))


@pytest.mark.parametrize("field,value", [("methods", ["importance", "pruning"]), ("unknown_key", 1),
                                         ("sweep_methods", ["weight_decay_finetune"])])
def test_bad_config_fields(field, value):
    c = prune_cfg.get_config("smoke")
    with c.unlocked():
        c[field] = value
    with pytest.raises(ValueError, match=field):
        P.parse_config(c)


@pytest.mark.parametrize("pair", [["original", "original"], ["original", "magnitude_pruning"], ["original"]])
def test_bad_swap_pairs(pair):
    c = prune_cfg.get_config("smoke")
    c.where.swap_pairs = [pair]
    with pytest.raises(ValueError, match=r"swap_pairs\[0\]"):
        P.parse_config(c)


def test_presets_parse():
    for arg in ("smoke", "cpu", "cifar10"):
        s = P.parse_config(prune_cfg.get_config(arg))
        assert s.prune.paper_eta in s.prune.sweep_etas
    s = P.parse_config(prune_cfg.get_config("cifar10"))
    assert (s.model.sizes()["depth"], s.model.sizes()["heads"], s.model.sizes()["hidden"]) == (12, 6, 384) and s.repeats == 5
    with pytest.raises(ValueError, match="preset must be"):
        prune_cfg.get_config("gpu")


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
    np.testing.assert_allclose(pruning.swap_sample(MODEL, P_HI, M_HI, P_LO, M_LO, 2.0, KEY, CFG, U_MIN), lo, atol=1e-5)
    np.testing.assert_allclose(pruning.swap_sample(MODEL, P_HI, M_HI, P_LO, M_LO, 0.0, KEY, CFG, U_MIN), hi, atol=1e-5)
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
            pipeline.finetune(MODEL, P_LO, bad, np.asarray(x), cfg, None, key=k, u_min=U_MIN)


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
