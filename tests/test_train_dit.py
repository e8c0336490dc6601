"""Tests for diffmem.image_diffusion (DiT <-> OU glue, sampler) and the train_dit experiment (smoke, resume, errors)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from configs import train_dit as config_module
from diffmem import data as data_lib
from diffmem import experiments, image_diffusion as idf, losses, sampling, sde, tracking, training
from diffmem.config import SamplerConfig
from diffmem.experiments import train_dit

import two_process


U_MIN = 1e-3
SMOKE_STEPS = 8  # sampler steps of the smoke preset: the tests share its compiled sampler (same model, grid size)


def tiny_model():
    """The smoke preset's DiT on 8x8x1 digits (so compiled functions are shared with the smoke run)."""
    return idf.build_model((8, 8, 1), patch=2, hidden=32, depth=1, heads=2)


def perturbed_params(model, seed=0, std=0.2):
    """Init params plus N(0, std^2) noise on every leaf (the zero-initialised adaLN / output layers too)."""
    params = idf.init_params(model, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + std * rng.standard_normal(a.shape), a.dtype), params)


def u_of_t_numpy(t, b0=1e-4, b1=0.02, n=1000):
    """Independent float64 inverse of t(u) = n (b0 u + (b1 - b0) u^2 / 2) (the positive root)."""
    a, b, c = n * (b1 - b0) / 2, n * b0, -np.asarray(t, np.float64)
    return (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)


# ---------------------------------------------------------------- glue

def test_score_is_minus_eps_over_sigma():
    model = tiny_model()
    params = perturbed_params(model)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 1)), jnp.float32)
    t = np.array([1e-3, 0.05, 1.0, 9.0])
    u = jnp.asarray(u_of_t_numpy(t), jnp.float32)
    apply = jax.jit(lambda p, x, u, m: model.apply({"params": p}, x, u, head_mask=m))
    score = jax.jit(lambda p, x, t, m: idf.make_score_fn(model, p, m)(x, t))
    sig = np.sqrt(-np.expm1(-t))[:, None, None, None]
    for mask in (np.ones((1, 2), np.float32), np.array([[0.0, 1.0]], np.float32)):
        eps = np.asarray(apply(params, x, u, mask))
        got = np.asarray(score(params, x, jnp.asarray(t, jnp.float32), mask))
        np.testing.assert_allclose(got, -eps / sig, rtol=2e-4, atol=1e-4 * np.abs(eps / sig).max())
        assert np.abs(eps).mean() > 0.1  # a non-trivial model
    assert np.abs(got - np.asarray(score(params, x, jnp.asarray(t), np.ones((1, 2), np.float32)))).max() > 1e-3


def test_eps_loss_is_sigma2_weighted_dsm_of_glue_score():
    """loss_i = mean_pixels ||eps - eps_hat||^2 = sigma_t^2 ||target - score||^2 / D on the same draws."""
    model = tiny_model()
    params = perturbed_params(model, seed=2)
    x0 = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (6, 8, 8, 1)), jnp.float32)
    key = jax.random.key(7)

    @jax.jit
    def both(params, key, x0):
        _, aux = idf.make_loss(model, U_MIN)(params, key, x0)
        ku, kx = jax.random.split(key)  # the draws of losses.make_eps_loss
        u = sde.sample_unit_time(ku, (6,), "uniform", u_min=U_MIN)
        t = sde.ddpm_time(u)
        x_t, _ = sde.marginal_sample(kx, x0, t)
        dsm = losses.dsm_per_example(idf.make_score_fn(model, params), x0, x_t, t, weighting="sigma2")
        return aux, u, dsm

    aux, u, dsm = both(params, key, x0)
    np.testing.assert_allclose(np.asarray(aux["time"]), np.asarray(u), rtol=1e-6)
    assert float(jnp.min(u)) >= U_MIN
    np.testing.assert_allclose(np.asarray(aux["per_example_loss"]), np.asarray(dsm) / 64, rtol=2e-3)


def test_time_range_and_grid():
    t0, t1 = idf.time_range(U_MIN)
    assert t1 == pytest.approx(1000 * (1e-4 + 0.5 * (0.02 - 1e-4)), rel=1e-6)  # 10.05
    assert t0 == pytest.approx(1000 * (1e-4 * U_MIN + 0.5 * (0.02 - 1e-4) * U_MIN ** 2), rel=1e-5)
    grid = np.asarray(idf.sampling_grid(U_MIN, 10), np.float64)
    np.testing.assert_allclose(u_of_t_numpy(grid), np.linspace(1.0, U_MIN, 11), atol=2e-6)
    for bad in (0.0, 1.0, -0.1, True):
        with pytest.raises(ValueError, match="u_min"):
            idf.check_u_min(bad)


def test_empirical_optimum_loss_single_image_is_zero():
    """With one training image the empirical score is the conditional score, so eps_hat = eps exactly."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, 8, 8, 1)).astype(np.float32)
    out = losses.empirical_eps_loss(x, U_MIN, jax.random.key(0), num_queries=64)
    assert out["loss"] < 1e-6 and out["num_queries"] == 64
    two = np.concatenate([x, -x])  # two images: exact at small t, but at larger t the posterior is split
    out2 = losses.empirical_eps_loss(two, U_MIN, jax.random.key(0), num_queries=256)
    assert out2["loss_bin0"] < 1e-8 and out2["loss"] > 1e-4


def _keys_normal(key, i, step):
    """The per-sample, per-step noise of diffmem.sampling: normal(fold_in(fold_in(key, i), step))."""
    return np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), step), (8, 8, 1)), np.float64)


def test_zero_model_sde_sampler_closed_form():
    """A fresh DiT is the zero function (adaLN-Zero), so score = 0 and Euler-Maruyama on the reverse SDE is
    y <- (1 + h/2) y + sqrt(h) z_k on the grid uniform in u from t(1) to t(u_min); Tweedie divides by alpha_t0."""
    model = tiny_model()
    params = idf.init_params(model, jax.random.key(0))
    key = jax.random.key(11)
    m = 16
    out = idf.sample(model, params, key, SamplerConfig(num_samples=m, steps=SMOKE_STEPS, batch_size=m), U_MIN)
    grid = np.asarray(idf.sampling_grid(U_MIN, SMOKE_STEPS), np.float64)
    for i in (0, 9):
        y = _keys_normal(key, i, 0)
        for k in range(SMOKE_STEPS):
            h = grid[k] - grid[k + 1]
            y = (1 + h / 2) * y + np.sqrt(h) * _keys_normal(key, i, k + 1)
        np.testing.assert_allclose(out[i], y / np.exp(-grid[-1] / 2), rtol=1e-4, atol=1e-4 * np.abs(y).max())


def test_sampler_per_sample_keys_independent_of_batch_size():
    model = tiny_model()
    params = perturbed_params(model, seed=4, std=0.05)
    key = jax.random.key(5)
    cfg = lambda **kw: SamplerConfig(**{**dict(num_samples=16, steps=SMOKE_STEPS, batch_size=16), **kw})
    a = idf.sample(model, params, key, cfg(), U_MIN)
    b = idf.sample(model, params, key, cfg(batch_size=6), U_MIN)  # 6 + 6 + 4 (padded)
    c = idf.sample(model, params, key, cfg(num_samples=6, batch_size=6), U_MIN, start_index=10)
    assert a.shape == (16, 8, 8, 1) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[10:], c, rtol=1e-5, atol=1e-5)
    assert np.abs(a[0] - a[1]).max() > 0.1  # different samples differ


def test_dit_sampling_is_data_parallel():
    """With the 4 fake CPU devices the batch is split over all of them; the samples equal one device's."""
    devices = jax.local_devices()
    assert len(devices) == 4
    model = tiny_model()
    params = perturbed_params(model, seed=4, std=0.05)
    key = jax.random.key(5)
    cfg = SamplerConfig(num_samples=10, steps=SMOKE_STEPS, batch_size=6)   # batches of 8: 8 + 2 (padded)
    four = idf.sample(model, params, key, cfg, U_MIN)
    one = idf.sample(model, params, key, cfg, U_MIN, devices=devices[:1])
    assert four.shape == (10, 8, 8, 1)
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5)
    mesh = sampling.device_mesh()
    run = idf._batch_sampler(model, (8, 8, 1), "sde", True)
    p, m, g = sampling.replicate((params, jnp.ones((model.depth, model.max_heads)),
                                  idf.sampling_grid(U_MIN, SMOKE_STEPS)), mesh)
    (_, _, keys), = sampling.key_batches(key, 8, 8, mesh)
    assert [s.data.shape for s in run(keys, p, m, g).addressable_shards] == [(2, 8, 8, 1)] * 4


def test_sampler_config_errors():
    with pytest.raises(ValueError, match="method"):
        SamplerConfig(method="euler")
    with pytest.raises(ValueError, match="num_samples"):
        SamplerConfig(num_samples=0)
    model = tiny_model()
    with pytest.raises(ValueError, match="head_mask"):
        idf.sample(model, idf.init_params(model, jax.random.key(0)), jax.random.key(0),
                   SamplerConfig(num_samples=2, steps=2, batch_size=2), U_MIN, head_mask=np.ones((3, 3)))


# ---------------------------------------------------------------- experiment

# tensorboard event files: checked in test_smoke_end_to_end (the `test` extra has the writer)
SMOKE_OVERRIDES = {"train.tensorboard": tracking.available()}


def smoke_config():
    return two_process.smoke_config(config_module, SMOKE_OVERRIDES)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """(workdir, results, snapshot): the snapshot is taken before other tests touch the workdir."""
    workdir = str(tmp_path_factory.mktemp("train_dit_smoke"))
    _, results, snapshot = two_process.run_smoke(config_module, SMOKE_OVERRIDES, workdir)
    return workdir, results, snapshot


def test_two_processes_equal_one_process(smoke_run, tmp_path):
    """The smoke run above, run again as 2 processes x 2 devices: the same results, files only from process 0."""
    two_process.check("train_dit", SMOKE_OVERRIDES, smoke_run[2], str(tmp_path / "two"))


def _png(path):
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 8 and img.shape[1] > 8
    return img


def test_smoke_end_to_end(smoke_run):
    workdir, results, _ = smoke_run
    cfg = smoke_config()
    with open(os.path.join(workdir, "results.json")) as f:
        on_disk = json.load(f)
    assert on_disk["experiment"] == "train_dit"
    assert [r["n"] for r in on_disk["runs"]] == sorted(cfg.ns)
    assert [r["n"] for r in on_disk["table"]] == sorted(cfg.ns)
    assert on_disk["model"]["num_params"] > 0 and on_disk["reference"]["disjoint_from_training"]
    assert on_disk["reference"]["n_ref"] == cfg.eval.num_ref
    for name in ("config.json", "loss_curves.png", "memorization_vs_n.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    _png(os.path.join(workdir, "loss_curves.png"))
    _png(os.path.join(workdir, "memorization_vs_n.png"))
    m = cfg.sampler.num_samples
    for run in on_disk["runs"]:
        n = run["n"]
        nd = os.path.join(workdir, f"n{n}")
        _png(os.path.join(nd, "samples_vs_nn.png"))
        _png(os.path.join(nd, "loss_curve.png"))
        assert run["epochs"] == pytest.approx(cfg.train.steps * cfg.train.batch_size / n)
        assert run["this_run"]["steps_trained"] == cfg.train.steps
        for k in ("memorization_ratio", "fd", "kid_mean", "precision", "recall"):
            assert isinstance(run[k], float) and np.isfinite(run[k]), k
        # memorization: recompute the top-2 neighbours by brute force from the saved samples
        samples = np.load(os.path.join(nd, "samples.npz"))["samples"]
        nn = np.load(os.path.join(nd, "nn.npz"))
        train_images = data_lib.load_images("digits", n=n, seed=cfg.data.seed).images
        np.testing.assert_array_equal(nn["train_indices"], data_lib.load_images("digits", n=n, seed=0).indices)
        d = np.linalg.norm(samples.reshape(m, 1, -1).astype(np.float64)
                           - train_images.reshape(1, n, -1).astype(np.float64), axis=-1)  # (m, n)
        order = np.argsort(d, axis=1, kind="stable")[:, :2]
        np.testing.assert_array_equal(nn["nn_idx"], order)
        np.testing.assert_allclose(nn["nn_dist"], np.take_along_axis(d, order, 1), rtol=1e-4)
        mem = d[np.arange(m), order[:, 0]] < cfg.eval.ratio * d[np.arange(m), order[:, 1]]
        np.testing.assert_array_equal(nn["memorized"], mem)
        assert run["memorization_ratio"] == pytest.approx(mem.mean())
        # the copy baseline is a perfect memorizer (the smoke training sets hold no duplicate images)
        assert run["copy_baseline"]["memorization_ratio"] == 1.0
        assert len(training.read_metrics(nd)) == cfg.train.steps // cfg.train.log_every
        if cfg.train.tensorboard:
            _check_tensorboard(nd, cfg.train.steps)


def _check_tensorboard(nd, steps):
    """config.train.tensorboard: the loss of metrics.jsonl and the samples_vs_nn.png grid in <nd>/tensorboard."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(tracking.logdir(nd), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    records = training.read_metrics(nd)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == \
        [(r["step"], float(np.float32(r["loss"]))) for r in records]
    png = matplotlib.image.imread(os.path.join(nd, "samples_vs_nn.png"))        # (H, W, 3 or 4)
    (ev,) = acc.Images("samples_vs_nn")
    assert (ev.step, ev.height, ev.width) == (steps, png.shape[0], png.shape[1])


def test_resume_skips_finished_work(smoke_run, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(smoke_run[0], workdir)
    first = smoke_run[1]
    again = experiments.run(smoke_config(), workdir)
    assert [r["this_run"]["reused"] for r in again["runs"]] == ["results"] * len(first["runs"])
    for a, b in zip(first["runs"], again["runs"]):
        assert a["memorization_ratio"] == b["memorization_ratio"] and a["fd"] == b["fd"]

    # without results and samples: the finished checkpoint is restored (no training) and gives the same samples
    n = first["runs"][0]["n"]
    nd = os.path.join(workdir, f"n{n}")
    before = np.load(os.path.join(nd, "samples.npz"))["samples"]
    with open(os.path.join(nd, "metrics.jsonl")) as f:
        log_before = f.read()
    os.remove(os.path.join(nd, "results.json"))
    os.remove(os.path.join(nd, "samples.npz"))
    third = experiments.run(smoke_config(), workdir)
    assert third["runs"][0]["this_run"] == dict(third["runs"][0]["this_run"], reused="checkpoint", steps_trained=0)
    np.testing.assert_allclose(np.load(os.path.join(nd, "samples.npz"))["samples"], before, rtol=1e-6, atol=1e-6)
    assert third["runs"][0]["memorization_ratio"] == first["runs"][0]["memorization_ratio"]
    with open(os.path.join(nd, "metrics.jsonl")) as f:
        assert f.read() == log_before

    # more steps: training continues from the checkpoint (only the new steps run)
    cfg = smoke_config()
    cfg.train.steps = cfg.train.steps + 5
    fourth = experiments.run(cfg, workdir)
    assert [r["this_run"]["steps_trained"] for r in fourth["runs"]] == [5] * len(cfg.ns)

    # other model settings in the same workdir: refused, naming the field
    cfg = smoke_config()
    cfg.model.hidden = 16
    with pytest.raises(ValueError, match="model"):
        experiments.run(cfg, workdir)


@pytest.mark.parametrize("field,value,match", [
    ("ns", (64, 5000), r"config\.ns.*1797"),
    ("data.name", "no_such_data", r"config\.data\.name"),
    ("data.name", "tfds:", r"config\.data\.name"),
    ("sampler.method", "euler", "method"),
    ("diffusion.u_min", 0.0, "u_min"),
    ("eval.reference", "train", r"config\.eval\.reference"),
    ("eval.features", "vgg", r"config\.eval\.features"),
    ("eval.features", "inception", r"config\.eval\.inception_weights must be the path"),
    ("eval.inception_weights", "/no/such/file.h5", r"config\.eval\.inception_weights is only used"),
    ("model.name", "Q/2", r"config\.model\.name"),
    ("model.heads", 3, "heads"),
    ("train.lr", -1.0, "lr"),
])
def test_bad_config_values(tmp_path, field, value, match):
    cfg = smoke_config()
    section, _, key = field.rpartition(".")
    (cfg[section] if section else cfg)[key] = value
    with pytest.raises(ValueError, match=match):
        experiments.run(cfg, str(tmp_path))


def test_bad_config_keys_and_heldout_size(tmp_path):
    cfg = smoke_config()
    cfg.model.width = 3
    with pytest.raises(ValueError, match=r"unknown key.*width"):
        experiments.run(cfg, str(tmp_path))
    cfg = smoke_config()
    cfg.ns = (1797,)
    with pytest.raises(ValueError, match="heldout"):
        experiments.run(cfg, str(tmp_path))


@pytest.mark.slow
def test_cifar10_preset_runs_on_mock_tfds(tmp_path):
    """The paper-scale preset's pipeline (tfds:cifar10 through data_source, DiT-S/2 on 32x32x3, the 'test' reference,
    the classifier features on CIFAR labels) end to end on mocked CIFAR-10, with the run lengths cut to seconds.
    The batch is cut too: the preset's batch of 128 needs more than 24 GB for DiT-S/2's backward on the CPU."""
    import tensorflow_datasets as tfds
    cfg = config_module.get_config("cifar10")
    cfg.ns = (40,)
    cfg.train.update(steps=2, batch_size=4, log_every=1, ckpt_every=2)
    cfg.sampler.update(num_samples=8, steps=2, batch_size=8)
    cfg.eval.update(num_ref=16, feature_steps=2, kid_subsets=2, grid_samples=4)
    cfg.progress = False
    with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
        results = experiments.run(cfg, str(tmp_path))
    (row,) = results["table"]
    assert row["n"] == 40 and np.isfinite(row["fd"]) and np.isfinite(row["final_loss"])
    assert results["model"]["num_params"] > 30e6  # DiT-S/2 (33M)
    samples = np.load(tmp_path / "n40" / "samples.npz")["samples"]
    assert samples.shape == (8, 32, 32, 3) and np.isfinite(samples).all()


def test_sample_group_equals_each_model_sampled_alone():
    """M models of one architecture sampled as a group (vmapped, or one after another) == each sampled alone."""
    from diffmem import training
    model = tiny_model()
    keys = jnp.stack([jax.random.key(i) for i in range(3)])
    params = jax.tree.map(lambda *a: jnp.stack(a), *[perturbed_params(model, seed=i, std=0.05) for i in range(3)])
    masks = np.ones((3, model.depth, model.max_heads), np.float32)
    masks[1, 0, 1] = 0.0
    cfg = SamplerConfig(num_samples=10, steps=SMOKE_STEPS, batch_size=6)
    for vmap in (True, False):
        group = idf.sample_group(model, params, masks, keys, cfg, U_MIN, vmap=vmap)
        assert group.shape == (3, 10, 8, 8, 1)
        for m in range(3):
            alone = idf.sample(model, training.unstack(params, m), keys[m], cfg, U_MIN, head_mask=masks[m])
            np.testing.assert_allclose(group[m], alone, atol=1e-4)
    with pytest.raises(ValueError, match="head_masks"):
        idf.sample_group(model, params, masks[:2], keys, cfg, U_MIN)
