"""Tests for diffmem.experiments.prune_dit: the smoke pipeline end to end (files, the plan of runs, masks, counts,
numbers recomputed independently, the vmapped fine-tune equal to a single one), resume, one compiled fine-tune step
for many masks, the claims on constructed results, config errors, the swap sampler and the trajectory analysis."""
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prune_dit as prune_cfg
from diffmem import experiments, image_diffusion as idf, pruning, rng
from diffmem.experiments import prune_dit as P
from diffmem.experiments.prune_dit import claims as claims_lib
from diffmem.experiments.prune_dit import pipeline

import two_process

U_MIN = 1e-3


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(config, workdir, results, snapshot): the snapshot is taken before the resume test below touches the workdir."""
    workdir = str(tmp_path_factory.mktemp("prune_smoke"))
    config, results, snapshot = two_process.run_smoke(prune_cfg, SMOKE_OVERRIDES, workdir)
    return config, workdir, results, snapshot


# the weight-decay bases with decay 0: the same training as the bases (a check of that path, see below)
SMOKE_OVERRIDES = {"weight_decay.base": True, "weight_decay.base_value": 0.0}


def test_two_processes_equal_one_process(smoke, tmp_path):
    """The smoke run above, run again as 2 processes x 2 devices: the same results, files only from process 0."""
    two_process.check("prune_dit", SMOKE_OVERRIDES, smoke[3], str(tmp_path / "two"))


def _run(results, method, eta, base=0, repeat=0):
    hits = [r for r in results["runs"] if (r["method"], r["eta"], r["base"], r["repeat"]) == (method, eta, base, repeat)]
    assert len(hits) == 1, (method, eta, base, repeat)
    return hits[0]


# ---------------------------------------------------------------- end to end

def test_smoke_outputs_plan_and_masks(smoke):
    config, workdir, res, _ = smoke
    for f in ("results.json", "table.md", "config.json", "frontier.png", "memorization_fd_vs_eta.png",
              "importance_heatmap.png", "where_decided.png", "samples_original.png", "samples_importance.png",
              "exported/importance_eta0.25/model.json", "exported/importance_eta0.25/params.msgpack"):
        assert os.path.exists(os.path.join(workdir, f)), f
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["runs"] == res["runs"]
    B, R, eta = config.design.bases, config.design.repeats, config.prune.paper_eta
    got = {(r["method"], r["eta"], r["base"], r["repeat"]) for r in res["runs"]}
    want = set()
    for b in range(B):
        for r in range(R):
            want |= {("original", None, b, r), ("finetune_only", None, b, r), ("weight_decay_base", None, b, r)}
            want |= {(m, eta if m in P.PRUNE_METHODS else None, b, r) for m in config.methods}
        for r in range(config.design.sweep_repeats):
            want |= {(m, 0.5, b, r) for m in config.sweep_methods}
    assert got == want
    heads = config.model.depth * config.model.heads
    full = _run(res, "original", None)["param_count"]
    assert full == res["model"]["num_params"] and _run(res, "finetune_only", None)["param_count"] == full
    dh = config.model.hidden // config.model.heads
    valid = np.ones((config.model.depth, config.model.heads), bool)
    for r in res["runs"]:
        assert 0.0 <= r["memorization_ratio"] <= 1.0 and math.isfinite(r["fd"])
        if r["method"] in P.PRUNE_METHODS:
            mask = np.asarray(r["mask"], np.float32)
            k = math.floor(r["eta"] * heads)
            assert r["num_pruned"] == k == int((mask == 0).sum())
            # a removed head takes its qkv (3 Dh (hidden + 1)) and proj (Dh hidden) parameters with it
            assert r["param_count"] == full - k * (3 * dh * (config.model.hidden + 1) + dh * config.model.hidden)
            sc = np.load(os.path.join(workdir, res["piece_dir"], "scores", f"b{r['base']}_r{r['repeat']}.npz"))
            if r["method"] in P.SCORE_LAWS or r["method"] == "magnitude":   # Algorithm 1 on the stored scores
                np.testing.assert_array_equal(mask, pruning.prune_mask(sc[r["method"]], r["eta"], valid=valid))
            else:                                                              # random: its own seeded stream
                want_mask = pruning.random_mask(rng.stream(config.seed, "random_mask", r["base"], r["repeat"]),
                                                config.model.depth, config.model.heads, r["eta"], valid=valid)
                np.testing.assert_array_equal(mask, want_mask)
            assert r["loss_after_prune"] is not None and r["loss_unpruned"] is not None
    meta = res["exported"]["importance"]
    assert meta["num_params"] == _run(res, "importance", eta)["param_count"]
    assert sum(meta["fields"]["heads"]) == heads - math.floor(eta * heads)
    # a base trained from scratch with weight decay 0 is the base of the same seed: the same numbers
    for b in range(B):
        wd0, orig = _run(res, "weight_decay_base", None, b), _run(res, "original", None, b)
        for key in ("memorization_ratio", "fd", "precision", "recall"):
            assert wd0[key] == pytest.approx(orig[key], rel=1e-6, abs=1e-9), key
    # claims: every field, verdicts consistent with the intervals
    ids = [c["id"] for c in res["claims"]]
    assert ids[:9] == ["C1", "C2", "C3", "C4a", "C4b", "C5a", "C5b", "C6", "C7"]
    for c in res["claims"]:
        assert set(c) >= {"id", "statement", "metric", "estimate", "ci_low", "ci_high", "n_bases", "n_repeats",
                          "verdict"}
        if c["estimate"] is not None and c["verdict"] == "holds":
            assert (c["ci_high"] < c["threshold"]) if c["direction"] == "less" else (c["ci_low"] > c["threshold"])
    assert res["timing"]["total_wall_s"] > 0 and "finetune_wall_s" in res["timing"]
    table = open(os.path.join(workdir, "table.md")).read()
    for s in ("73.82 +- 1.12", "68.58 +- 0.77", "17.14 +- 0.25", "fine-tune only", "| C3 |", "verdict"):
        assert s in table


def test_numbers_recomputed_independently(smoke):
    """The stored memorization of the kept importance model (base 0, repeat 0) from a single-model re-sampling and a
    brute-force nearest-neighbour search; the vmapped group fine-tune equals fine-tuning that model alone."""
    config, workdir, res, _ = smoke
    s = P.parse_config(config)
    d, _ = pipeline.load_data(s)
    model = idf.model_from_config(d.image_shape, s.model)
    eta = s.prune.paper_eta
    rid = f"b0_r0_importance_eta{eta:g}"
    import flax.serialization
    import orbax.checkpoint as ocp
    template = idf.init_params(model, jax.random.key(0))
    params = flax.serialization.from_bytes(template, open(os.path.join(
        workdir, res["piece_dir"], "params", rid + ".msgpack"), "rb").read())
    run = _run(res, "importance", eta)
    mask = np.asarray(run["mask"], np.float32)
    samples = idf.sample(model, params, rng.stream(s.seed, "samples", 0, 0), s.sampler, U_MIN, head_mask=mask)
    dist = np.linalg.norm(samples.reshape(len(samples), 1, -1) - d.images.reshape(1, d.n, -1), axis=-1)
    dist.sort(axis=1)
    want = float(np.mean(dist[:, 0] < dist[:, 1] / 3.0))
    assert abs(run["memorization_ratio"] - want) <= 1.0 / len(samples) + 1e-9   # a borderline sample may flip
    # base 0 from the bases' checkpoint, fine-tuned ALONE (training.train, the same key stream and batches)
    mngr = ocp.CheckpointManager(os.path.join(workdir, "bases", "checkpoints"))
    state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore())
    mngr.close()
    base0 = jax.tree.map(lambda a: jnp.asarray(a)[0], state["ema_params"])
    alone = idf.train_masked(model, base0, mask, d.images, s.finetune, None,
                             key=rng.stream(s.seed, "finetune", 0, 0), u_min=U_MIN)
    chex.assert_trees_all_close(alone.ema_params, params, rtol=1e-4, atol=1e-5)


def test_resume_reuses_pieces_and_redoes_a_killed_group(smoke):
    config, workdir, res, _ = smoke
    again = experiments.run(config, workdir)
    c = again["this_run"]
    assert c["base_steps_trained"] == 0 and c["runs_computed"] == 0 and c["scores_computed"] == 0
    assert c["where_computed"] == 0 and c["runs_reused"] == len(res["runs"])
    assert again["runs"] == res["runs"] and again["claims"] == res["claims"]
    # a group killed before it finished: only its missing run is sampled and evaluated again, with the same numbers
    rid = f"b1_r0_random_eta{config.prune.paper_eta:g}"
    os.remove(os.path.join(workdir, res["piece_dir"], "runs", rid + ".json"))
    third = experiments.run(config, workdir)
    assert third["this_run"]["runs_computed"] == 1 and third["this_run"]["runs_reused"] == len(res["runs"]) - 1
    a, b = _run(res, "random", config.prune.paper_eta, 1), _run(third, "random", config.prune.paper_eta, 1)
    for k in ("memorization_ratio", "fd", "precision", "recall", "param_count"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k


# ---------------------------------------------------------------- claims on constructed results

def _results(B=4, R=5, seed=0, effect=-0.1, noise=0.01):
    """Synthetic runs: memorization of importance = original + effect (+ noise), random = original; FD equal."""
    rs, g = [], np.random.default_rng(seed)
    for b in range(B):
        base = 0.7 + 0.05 * g.standard_normal()
        for r in range(R):
            def add(m, eta, mem, fd=10.0, **kw):
                rs.append(dict(method=m, eta=eta, base=b, repeat=r, memorization_ratio=mem, fd=fd,
                               precision=0.9, recall=0.5, kid_mean=0.0, **kw))
            add("original", None, base)
            add("finetune_only", None, base + 0.02 + noise * g.standard_normal())
            add("importance", 0.2, base + effect + noise * g.standard_normal(), loss_after_prune=1.0,
                loss_unpruned=0.9)
            add("importance_large_t", 0.2, base + noise * g.standard_normal(), loss_after_prune=1.1, loss_unpruned=0.9)
            add("random", 0.2, base + noise * g.standard_normal(), loss_after_prune=1.5, loss_unpruned=0.9)
            add("magnitude", 0.2, base + noise * g.standard_normal(), fd=10.0 + 1.0, loss_after_prune=1.2,
                loss_unpruned=0.9)
    return rs


def _settings(B=4, R=5):
    c = prune_cfg.get_config("smoke")
    c.design.update(bases=B, repeats=R, sweep_repeats=1)
    c.prune.update(etas=(0.2,), paper_eta=0.2)
    c.methods = ("importance", "importance_large_t", "random", "magnitude")
    c.sweep_methods = ("importance", "random", "magnitude")
    c.claims.update(num_resamples=2000)
    c.where.update(enabled=False)
    return P.parse_config(c)


def test_claims_on_constructed_results():
    s = _settings()
    by = {c["id"]: c for c in claims_lib.build(s, _results(effect=-0.1), {})}
    assert by["C1"]["verdict"] == "holds" and by["C1"]["estimate"] == pytest.approx(-0.1, abs=0.02)
    assert by["C3"]["verdict"] == "holds" and by["C6"]["verdict"] == "holds"
    assert by["C4a"]["verdict"] == "holds"            # FD equal: within the 10% margin
    assert by["H0.2"]["verdict"] == "holds" and by["H0.2"]["estimate"] == pytest.approx(0.5)
    assert by["C5b"]["verdict"] == "holds"            # magnitude's FD is 1 higher at every memorization level
    by = {c["id"]: c for c in claims_lib.build(s, _results(effect=+0.1), {})}
    assert by["C1"]["verdict"] == "fails" and by["C3"]["verdict"] == "fails"
    by = {c["id"]: c for c in claims_lib.build(s, _results(effect=0.0, noise=0.05), {})}
    assert by["C3"]["verdict"] == "inconclusive"


def test_frontier_difference_and_swap_share_by_hand():
    s = _settings(B=1, R=1)
    rs = [dict(method="finetune_only", eta=None, base=0, repeat=0, memorization_ratio=0.8, fd=10.0),
          dict(method="importance", eta=0.2, base=0, repeat=0, memorization_ratio=0.4, fd=12.0),
          dict(method="random", eta=0.2, base=0, repeat=0, memorization_ratio=0.6, fd=14.0)]
    # importance: FD 10 -> 12 over memorization 0.8 -> 0.4; random: 10 -> 14 over 0.8 -> 0.6. Common levels
    # 0.6..0.8: importance FD = 10 + 5 (0.8 - m), random FD = 10 + 20 (0.8 - m): mean difference -15 * mean(0.8 - m)
    d = claims_lib.frontier_differences(s, rs, "importance", "random")
    levels = np.linspace(0.6, 0.8, s.claims.frontier_levels)
    assert d.shape == (1, 1) and d[0, 0] == pytest.approx(float(np.mean(-15 * (0.8 - levels))))
    w = {"swap": {"bases": [{"base": 0, "pairs": [{"pair": ["a", "b"], "a_alone": {"memorization_ratio": 0.8},
                                                   "b_alone": {"memorization_ratio": 0.4},
                                                   "taus": [{"tau_u": 0.3, "a_then_b": {"memorization_ratio": 0.5}}]}]}]}}
    np.testing.assert_allclose(claims_lib.swap_shares(w, ("a", "b"), 0.3), [0.75])


# ---------------------------------------------------------------- config errors

@pytest.mark.parametrize("field,value", [("etas", (0.2, 1.0)), ("etas", (-0.1,)), ("paper_eta", 1.0),
                                         ("paper_eta", -0.5), ("etas", (float("nan"),))])
def test_bad_eta(field, value):
    c = prune_cfg.get_config("smoke")
    c.prune[field] = value
    with pytest.raises(ValueError, match=r"eta.*[\[(]0, 1\)"):
        P.parse_config(c)


def test_missing_base_checkpoint(tmp_path):
    c = prune_cfg.get_config("smoke")
    c.base_checkpoint = str(tmp_path / "no_such_run")
    c.design.bases = 1
    with pytest.raises(ValueError, match="base_checkpoint.*no such directory"):
        experiments.run(c, str(tmp_path / "w"))
    c.base_checkpoint = str(tmp_path)            # exists, holds no checkpoint
    with pytest.raises(ValueError, match="base_checkpoint.*no checkpoint"):
        experiments.run(c, str(tmp_path / "w"))
    c.design.bases = 2
    with pytest.raises(ValueError, match=r"config\.design\.bases must be 1"):
        P.parse_config(c)


@pytest.mark.parametrize("field,value", [("methods", ("importance", "pruning")), ("unknown_key", 1),
                                         ("sweep_methods", ("weight_decay_finetune",))])
def test_bad_config_fields(field, value):
    c = prune_cfg.get_config("smoke")
    with c.unlocked():
        c[field] = value
    with pytest.raises(ValueError, match=field):
        P.parse_config(c)


@pytest.mark.parametrize("pair", [("original", "original"), ("original", "magnitude_pruning"), ("original",)])
def test_bad_swap_pairs(pair):
    c = prune_cfg.get_config("smoke")
    c.where.swap_pairs = (pair,)
    with pytest.raises(ValueError, match=r"swap_pairs\[0\]"):
        P.parse_config(c)


def test_presets_parse():
    for arg in prune_cfg.PRESETS:
        s = P.parse_config(prune_cfg.get_config(arg))
        assert s.prune.paper_eta in s.prune.sweep_etas
    s = P.parse_config(prune_cfg.get_config("cpu"))
    m = s.model.sizes()
    assert (8 // m["patch"]) ** 2 >= 16 and m["depth"] * m["heads"] >= 24      # the testbed where heads matter
    assert s.design.bases >= 3 and s.design.repeats >= 5 and s.sampler.num_samples >= 1000
    s = P.parse_config(prune_cfg.get_config("cifar10"))
    assert (s.model.sizes()["depth"], s.model.sizes()["heads"], s.model.sizes()["hidden"]) == (12, 6, 384)
    with pytest.raises(ValueError, match="preset must be"):
        prune_cfg.get_config("gpu")
