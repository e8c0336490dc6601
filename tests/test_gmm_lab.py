"""gmm_lab: padded/masked sweeps, vmapped training == member-by-member training, resume, reference samplers,
metrics against scipy, and the gmm_memorization experiment end to end (:smoke)."""
import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import gmm_memorization as gmm_cfg
import optax

from diffmem import config as config_lib
from diffmem import experiments, gmm_lab, losses, sampling, scores, training
from diffmem.experiments import gmm_memorization as gmm_mem
from diffmem.models import mlp

import two_process

D = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg="smoke"):
    return gmm_cfg.get_config(arg)


def _setup(ns=(4, 9, 6), width=8):
    model = mlp.ScoreMLP(dim=D, width=width, depth=2)
    apply = mlp.make_apply(model)
    rng = np.random.RandomState(0)
    data, mask = training.pad_datasets([rng.randn(n, D) for n in ns])
    keys = jax.random.split(jax.random.key(1), len(ns))
    params = training.init_members(lambda k: mlp.init_params(model, k), keys)
    return model, apply, data, mask, keys, params


def test_pad_datasets_and_prefix_masks():
    data, mask = training.pad_datasets([np.ones((2, 3)), 2 * np.ones((4, 3))])
    assert data.shape == (2, 4, 3) and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert training.mask_counts(mask).tolist() == [2, 4]
    np.testing.assert_array_equal(data[0, 2:], 0)
    with pytest.raises(ValueError, match="prefix"):
        training.mask_counts(np.asarray([[1, 0, 1]]))
    with pytest.raises(ValueError, match="n_m"):
        training.pad_datasets([np.ones((0, 3))])


def test_masked_batch_uses_only_first_count_rows():
    data = jnp.arange(10.0)[:, None]
    b = training.masked_batch(jax.random.key(0), data, jnp.int32(3), 500)
    assert set(np.asarray(b[:, 0]).tolist()) == {0.0, 1.0, 2.0}


@pytest.mark.parametrize("traced", [False, True])
def test_make_optimizer_is_optax_adamw(traced):
    """make_optimizer (static or traced per-member decay) == clip + optax.adamw with the decay masked to kernels."""
    cfg = training.TrainConfig(steps=10, lr=1e-2, warmup_steps=3, weight_decay=0.3, grad_clip=0.5)
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((3, 2), 2.0), "b": jnp.full((2,), -1.0)}
    ref = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(training.make_schedule(cfg), weight_decay=0.3,
                                                                  mask=training.kernel_mask))
    ours = training.make_optimizer(cfg, jnp.float32(0.3)) if traced else training.make_optimizer(cfg)
    s1, s2 = ref.init(params), ours.init(params)
    for _ in range(3):
        u1, s1 = ref.update(grads, s1, params)
        u2, s2 = ours.update(grads, s2, params)
        chex.assert_trees_all_close(u1, u2, rtol=1e-6)


def test_vmapped_step_equals_member_by_member():
    """One vmapped step over 2 members (different n, weight decay, key) == make_train_step per member."""
    model, apply, data, mask, keys, params = _setup(ns=(4, 9))
    cfg = training.TrainConfig(steps=3, batch_size=16, lr=1e-2, warmup_steps=1, grad_clip=1.0, ema_decay=0.5)
    loss = losses.make_lab_loss(apply, 1e-3, 10.0)
    wds = jnp.asarray([0.0, 1.0])
    counts = jnp.asarray(training.mask_counts(mask))
    step = jax.jit(jax.vmap(training.make_member_step(loss, cfg)))
    states = training.init_states(params, cfg)
    for _ in range(3):
        states, metrics = step(states, jnp.asarray(data), counts, wds, keys)
    for m in range(2):
        opt = training.make_optimizer(dataclasses.replace(cfg, weight_decay=float(wds[m])))
        one = jax.jit(training.make_train_step(loss, opt, cfg.ema_decay))
        st = training.init_state(training.unstack(params, m), opt)
        for s in range(3):
            k = jax.random.fold_in(keys[m], s)
            batch = jnp.asarray(data[m])[jax.random.randint(jax.random.fold_in(k, 0), (16,), 0, int(counts[m]))]
            st, met = one(st, batch, jax.random.fold_in(k, 1))
        chex.assert_trees_all_close(st.params, training.unstack(states.params, m), rtol=2e-5, atol=1e-6)
        chex.assert_trees_all_close(st.ema_params, training.unstack(states.ema_params, m), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(met["loss"], metrics["loss"][m], rtol=1e-5)
    assert int(states.step[0]) == 3


def test_one_compilation_for_any_n_and_weight_decay():
    model, apply, data, mask, keys, params = _setup()
    cfg = training.TrainConfig(steps=2, batch_size=8, lr=1e-3)
    traces = []
    base = losses.make_lab_loss(apply, 1e-3, 10.0)

    def loss(p, k, b):
        traces.append(1)  # runs at trace time only
        return base(p, k, b)

    run = training.make_sweep_runner(loss, cfg, 2)
    states = training.init_states(params, cfg)
    for counts, wds in (([4, 9, 6], [0.0, 0.1, 1.0]), ([1, 2, 3], [1.0, 0.0, 0.5])):
        run(states, jnp.asarray(data), jnp.asarray(counts), jnp.asarray(wds), keys)
    assert len(traces) == 1


def test_train_sweep_resumes_exactly(tmp_path):
    """Train 4 steps with checkpoints at 2 and 4, drop the step-4 checkpoint (a crash after step 2), re-run:
    it resumes from step 2 and ends where the uninterrupted run ended."""
    import shutil
    model, apply, data, mask, keys, params = _setup()
    loss = losses.make_lab_loss(apply, 1e-3, 10.0)
    cfg = training.TrainConfig(steps=4, batch_size=8, lr=1e-2, log_every=2, ckpt_every=2, keep_ckpts=2, ema_decay=0.5)
    wds = [0.0, 0.1, 0.2]
    straight, hist = training.train_sweep(loss, params, data, mask, wds, keys, cfg, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    resumed, hist2 = training.train_sweep(loss, params, data, mask, wds, keys, cfg, str(tmp_path))
    chex.assert_trees_all_close(straight.params, resumed.params, rtol=1e-6)
    chex.assert_trees_all_close(straight.opt_state, resumed.opt_state, rtol=1e-6)
    assert [h["step"] for h in hist2] == [2, 4] and np.allclose(hist[-1]["loss"], hist2[-1]["loss"], rtol=1e-6)


def test_train_sweep_bad_inputs():
    model, apply, data, mask, keys, params = _setup()
    loss = losses.make_lab_loss(apply, 1e-3, 10.0)
    cfg = training.TrainConfig(steps=1, batch_size=4)
    with pytest.raises(ValueError, match="weight_decays"):
        training.train_sweep(loss, params, data, mask, [0.0, -1.0, 0.0], keys, cfg)
    with pytest.raises(ValueError, match="keys"):
        training.train_sweep(loss, params, data, mask, [0.0] * 3, keys[:2], cfg)
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        training.train_sweep(loss, params, bad, mask, [0.0] * 3, keys, cfg)
    with pytest.raises(ValueError, match="time_dist"):
        losses.make_lab_loss(apply, 1e-3, 10.0, time_dist="beta")
    with pytest.raises(ValueError, match="t0"):
        losses.make_lab_loss(apply, 0.0, 10.0)
    with pytest.raises(ValueError, match="method"):
        config_lib.SamplerConfig(method="ddim")


def test_reference_samplers_memorize_and_generalize():
    """Empirical-score sampler returns training points (ratio >= 0.95), the true score does not (<= 0.05)."""
    d, n = 8, 32
    mix = scores.random_mixture(jax.random.key(0), 4, d)
    pts = np.asarray(scores.sample_mixture(jax.random.key(1), mix, n))
    data, mask = training.pad_datasets([pts, pts[:16]])
    grid = sampling.time_grid(1e-3, 10.0, 50)
    emp = gmm_lab.sample_members(gmm_lab.empirical_member_score, (jnp.asarray(data), jnp.asarray(mask)),
                                 jax.random.key(2), 200, d, grid)
    fns = gmm_lab.reference_score_fns(pts, mix)
    true = gmm_lab.sample_members(lambda _, x, t: fns["true"](x, t), jnp.zeros((1,)), jax.random.key(2), 200, d, grid)
    m_emp = gmm_lab.sample_metrics(emp[0], pts, mix)
    m_emp16 = gmm_lab.sample_metrics(emp[1], pts[:16], mix)
    m_true = gmm_lab.sample_metrics(true[0], pts, mix)
    assert m_emp["memorization_ratio"] >= 0.95 and m_emp16["memorization_ratio"] >= 0.95
    assert m_true["memorization_ratio"] <= 0.05
    assert m_true["frac_near_mean"] >= 0.95
    # the n=16 member only returns points of its own (masked) training set
    nn = np.argmin(((emp[1][:, None] - pts[None]) ** 2).sum(-1), 1)
    assert nn.max() < 16


def test_mixture_loglik_and_radius_against_scipy():
    mix = scores.random_mixture(jax.random.key(3), 3, 4)
    x = np.asarray(scores.sample_mixture(jax.random.key(4), mix, 50))
    means = np.asarray(mix.means)
    want = np.log(sum(stats.multivariate_normal(means[k], np.eye(4)).pdf(x) / 3 for k in range(3)))
    np.testing.assert_allclose(scores.mixture_logpdf(jnp.asarray(x), 0.0, mix), want, rtol=1e-4)
    m = gmm_lab.sample_metrics(x, x[:10], mix)
    np.testing.assert_allclose(m["loglik_mean"], want.mean(), rtol=1e-4)
    assert m["memorization_ratio"] == 0.2  # the 10 training points among the 50 samples are exact copies
    r = gmm_lab.near_mean_radius(4)
    np.testing.assert_allclose(stats.chi2.cdf(r * r, 4), 0.999, rtol=1e-6)
    with pytest.raises(FloatingPointError):
        gmm_lab.sample_metrics(np.full((3, 4), np.nan), x[:10], mix)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gmm_smoke")
    return (workdir, *two_process.run_smoke(gmm_cfg, {}, workdir))


def test_two_processes_equal_one_process(smoke_run, tmp_path):
    """The smoke run, run again as 2 processes x 2 devices: the same results, files only from process 0."""
    two_process.check("gmm_memorization", {}, smoke_run[3], str(tmp_path / "two"))


def test_gmm_memorization_smoke_end_to_end(smoke_run):
    tmp_path, config, res, _ = smoke_run
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    for key in ("fig2", "fig3a_size", "fig3a_dim", "fig3b", "references", "claims", "cells"):
        assert key in saved
    assert np.asarray(saved["fig3a_size"]["memorization_ratio"]).shape == (2, 2)
    assert np.asarray(saved["fig3a_dim"]["memorization_ratio"]).shape == (2, 2)
    assert len(saved["fig3b"]["wd_sweep"]["n_small"]["loglik_mean"]) == 2
    for ref in saved["references"].values():
        assert ref["empirical"]["memorization_ratio"] >= 0.9
    assert [c["id"] for c in saved["claims"]] == list(CLAIM_IDS)
    for c in saved["claims"]:
        assert c["verdict"] in ("holds", "fails", "inconclusive") and c["n_bases"] == 2
        assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
    # a claim's estimate is the seed mean of the paired difference of its cells
    size = saved["fig3a_size"]
    mem = lambda w, n, seed: saved["cells"][f"d8_K4_w{w}_n{n}_wd0_s{seed}"]["memorization_ratio"]
    want = np.mean([np.mean([mem(64, n, sd) - mem(16, n, sd) for sd in (0, 1)]) for n in (8, 32)])
    assert saved["claims"][0]["estimate"] == pytest.approx(want, abs=1e-9)
    assert size["widths"] == [16, 64]
    assert "bigger_nets_memorize_more" in (tmp_path / "claims.md").read_text()
    for name in ("fig2.png", "fig3a_size.png", "fig3a_dim.png", "fig3b_width.png", "fig3b_wd.png"):
        assert os.path.getsize(tmp_path / name) > 1000
    # a re-run resumes: every cell is read back, the numbers are the same
    again = experiments.run(config, str(tmp_path))
    assert again["fig3a_size"] == res["fig3a_size"] and again["group_timings"] == []


CLAIM_IDS = ("bigger_nets_memorize_more", "more_data_memorizes_less", "higher_d_memorizes_less",
             "small_n_weight_decay_lowers_memorization", "small_n_weight_decay_raises_loglik",
             "small_n_narrower_lowers_memorization", "small_n_narrower_raises_loglik",
             "large_n_strong_decay_lowers_loglik", "large_n_wider_generalizes")


def test_plan_groups_splits_evenly_by_architecture():
    cells = [gmm_mem.Cell(8, 4, w, n, 0.0, 0) for w in (16, 64) for n in range(2, 35)]        # 33 cells per width
    sizes = [(g[0].width, len(g)) for g in gmm_mem.plan_groups(cells, 16)]
    assert sizes == [(16, 11), (16, 11), (16, 11), (64, 11), (64, 11), (64, 11)]
    assert [len(g) for g in gmm_mem.plan_groups(cells[:32], 16)] == [16, 16]
    assert [len(g) for g in gmm_mem.plan_groups(cells[:5], 16)] == [5]


def test_direction_claim_verdicts_on_constructed_pairs():
    """Every pair up -> holds; the mean up but one pair clearly down -> inconclusive (named); all down -> fails; seeds
    that disagree -> inconclusive. The estimate is the seed mean of the pairs' mean difference."""
    up = [("n=8", np.array([0.30, 0.35, 0.32])), ("n=32", np.array([0.10, 0.12, 0.11]))]
    c = gmm_mem.direction_claim("x", "a > b", "diff", up)
    assert c["verdict"] == "holds" and c["estimate"] == pytest.approx((0.97 / 3 + 0.33 / 3) / 2)
    assert [p["verdict"] for p in c["pairs"]] == ["holds", "holds"]
    mixed = up + [("n=64", np.array([-0.05, -0.06, -0.055]))]
    c = gmm_mem.direction_claim("x", "a > b", "diff", mixed)
    assert c["ci_low"] > 0 and c["verdict"] == "inconclusive" and "x[n=64]" in c["note"]
    c = gmm_mem.direction_claim("x", "a > b", "diff", [(k, -v) for k, v in up])
    assert c["verdict"] == "fails"
    c = gmm_mem.direction_claim("x", "a > b", "diff", [("wd", np.array([0.3, -0.3, 0.05]))])
    assert c["verdict"] == "inconclusive" and c["n_bases"] == 3


def _fake_rows(s, mem_width_sign=1.0):
    """Cells with memorization rising with width (times mem_width_sign) and falling with n, d and weight decay;
    log-likelihood that decay and narrower nets raise at n_small and lower at n_large (the paper's directions),
    plus per-cell noise much smaller than the effects."""
    rs = np.random.RandomState(0)
    rows = {}
    for c in gmm_mem.plan_cells(s).values():
        small = c.n == s.fig3b.n_small
        mem = 0.5 + 0.1 * mem_width_sign * np.log2(c.width) - 0.1 * np.log2(c.n) - 0.02 * c.dim - 0.2 * c.weight_decay
        ll = -10.0 + (1 if small else -1) * (0.5 * c.weight_decay - 0.01 * c.width)
        rows[c.id] = dict(memorization_ratio=mem + 0.002 * rs.randn(), loglik_mean=ll + 0.002 * rs.randn(),
                          loglik_stderr=0.1, frac_near_mean=1.0, median_dist_ratio=0.5, final_loss=1.0, params=100,
                          n=c.n, seed=c.seed, weight_decay=c.weight_decay, width=c.width)
    return rows


def test_claims_read_the_right_cells():
    """On constructed cells that follow every direction of the paper all 9 claims hold; flipping memorization
    against width makes exactly the two width-memorization claims fail."""
    s = gmm_mem.parse_config(_config())
    res = gmm_mem.assemble(s, _fake_rows(s), {})
    assert [c["id"] for c in res["claims"]] == list(CLAIM_IDS)
    assert {c["id"]: c["verdict"] for c in res["claims"]} == dict.fromkeys(CLAIM_IDS, "holds")
    # bigger nets: width 64 vs 16 is 0.1 * log2(4) = 0.2 at every n
    assert res["claims"][0]["estimate"] == pytest.approx(0.2, abs=0.01)
    flipped = {c["id"]: c["verdict"] for c in gmm_mem.assemble(s, _fake_rows(s, -1.0), {})["claims"]}
    assert [k for k, v in flipped.items() if v != "holds"] == ["bigger_nets_memorize_more",
                                                             "small_n_narrower_lowers_memorization"]
    assert flipped["bigger_nets_memorize_more"] == "fails"


@pytest.mark.parametrize("path,value,match", [
    ("fig3b.n_small", 64, "n_small < n_large"), ("fig3b.weight_decays", (0.1, 1.0), "contain 0.0"),
    ("fig3b.weight_decays", (0.0,), "a decay > 0"), ("fig3b.wd_moderate", 0.5, "wd_moderate"),
    ("fig3b.width_moderate", 64, "width_moderate"), ("train.weight_decay", 0.1, "config.train.weight_decay"),
    ("sampler.use_ema", False, "use_ema"),
    ("loss.t0", 0.0, "t0"), ("shard.index", 3, "shard.index"), ("fig3a.ns", (1, 8), r"fig3a.ns\[0\]"),
    ("model.output", "x1", "output"), ("train.lr", -1.0, "lr")])
def test_gmm_config_errors(path, value, match, tmp_path):
    config = _config()
    sec, key = path.split(".")
    config[sec][key] = value
    with pytest.raises(ValueError, match=match):
        experiments.run(config, str(tmp_path))


def test_gmm_config_unknown_key(tmp_path):
    config = _config()
    config.fig2.colour = "red"
    with pytest.raises(ValueError, match="colour"):
        experiments.run(config, str(tmp_path))


def test_launch_sweep_expands_get_sweep():
    import importlib.util
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "launch", "sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    path, arg, overrides = sweep.load_sweep(os.path.join(ROOT, "configs", "gmm_memorization.py") + ":smoke")
    assert arg == "smoke" and overrides == [{"shard.index": 0, "shard.count": 2}, {"shard.index": 1, "shard.count": 2}]
    cmds = sweep.build_commands(path, arg, "/w", overrides)
    assert cmds[1][-2:] == ["--config.shard.count=2", "--config.shard.index=1"]
    assert cmds[0][3].endswith("gmm_memorization.py:smoke") and cmds[0][4] == "--workdir=/w"
    assert sweep.format_value((8,)) == "(8,)" and sweep.format_value([1, 2]) == "(1, 2)"
    assert sweep.format_value(True) == "true"
    with pytest.raises(ValueError, match="does not exist"):
        sweep.load_sweep("configs/nope.py:cpu")


@pytest.mark.parametrize("preset", gmm_cfg.PRESETS)
def test_every_preset_parses(preset):
    s = gmm_mem.parse_config(gmm_cfg.get_config(preset))
    assert s.preset == preset and len(s.seeds) >= (2 if preset == "smoke" else 3)
