"""Tests of diffmem.training: optimizer, pure step (vmap), EMA, resume, NaN guard, data parallelism, config."""

import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from diffmem import runtime, training as T

D = 3  # input dim of the tiny linear model
W_TRUE = np.array([1.0, -2.0, 0.5], np.float32)


def make_data(n=64, seed=0):
    """Rows [x (3), y] with y = x . W_TRUE + 0.5."""
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return np.concatenate([x, (x @ W_TRUE + 0.5)[:, None]], axis=1)  # (n, 4)


def init_params():
    return {"w": np.zeros((D, 1), np.float32), "b": np.zeros((1,), np.float32)}


def linear_loss(params, key, batch):
    """Squared error of a linear model with a little key-dependent input noise (so the key matters)."""
    x, y = batch[:, :D], batch[:, D]  # (b, 3), (b,)
    x = x + 0.01 * jax.random.normal(key, x.shape)
    per_example = (x @ params["w"][:, 0] + params["b"][0] - y) ** 2  # (b,)
    t = jax.random.uniform(jax.random.fold_in(key, 1), y.shape)
    return per_example.mean(), {"per_example_loss": per_example, "time": t, "max_err": per_example.max()}


def small_cfg(**kw):
    base = dict(steps=10, batch_size=8, lr=0.05, log_every=1, ckpt_every=5, keep_ckpts=3, grad_clip=1.0)
    return T.TrainConfig(**{**base, **kw})


def leaves_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# ------------------------------------------------------------------------------------------- config

def test_config_from_dict_roundtrip_and_configdict():
    cfg = T.TrainConfig.from_dict({"steps": 5, "lr": 2e-4, "schedule": "cosine"})
    assert (cfg.steps, cfg.lr, cfg.schedule, cfg.batch_size) == (5, 2e-4, "cosine", 128)
    assert T.TrainConfig.from_dict(ml_collections.ConfigDict({"steps": 7})).steps == 7


def test_config_rejects_unknown_keys_naming_them():
    msg = r"unknown key\(s\) \['bogus', 'lr_max'\] in TrainConfig; accepted keys.*'ema_decay'"
    with pytest.raises(ValueError, match=msg):
        T.TrainConfig.from_dict({"steps": 5, "lr_max": 1.0, "bogus": 0})


@pytest.mark.parametrize("field,value,msg", [
    ("steps", 0, "an int >= 1"), ("lr", 0.0, "> 0"), ("lr", -1e-3, "> 0"), ("ema_decay", 1.0, r"\[0, 1\)"),
    ("ema_decay", -0.1, r"\[0, 1\)"), ("batch_size", -2, ">= 1"), ("warmup_steps", -1, ">= 0"),
    ("weight_decay", -1e-4, ">= 0"), ("grad_clip", -1.0, ">= 0"), ("b2", 1.0, r"\[0, 1\)"),
    ("log_every", 0, ">= 1"), ("keep_ckpts", 0, ">= 1"), ("schedule", "linear", "one of"),
    ("steps", 10.0, "an int"), ("lr", float("nan"), "finite"), ("steps", True, "an int"),
])
def test_config_validates_ranges(field, value, msg):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be .*{msg}"):
        T.TrainConfig.from_dict({field: value})


# ---------------------------------------------------------------------------------------- optimizer

def test_schedule_warmup_constant_and_cosine():
    sched = T.make_schedule(T.TrainConfig(steps=14, lr=0.1, warmup_steps=4))
    np.testing.assert_allclose([float(sched(s)) for s in (0, 1, 3, 4, 13)], [0.025, 0.05, 0.1, 0.1, 0.1],
                               rtol=1e-6)
    sched = T.make_schedule(T.TrainConfig(steps=14, lr=0.1, warmup_steps=4, schedule="cosine"))
    # after warm-up: 0.1 * (1 + cos(pi (s - 4) / 10)) / 2
    expected = [0.025, 0.1, 0.05 * (1 + np.cos(np.pi * 0.3)), 0.05, 0.0]
    np.testing.assert_allclose([float(sched(s)) for s in (0, 4, 7, 9, 14)], expected, rtol=1e-5, atol=1e-8)


def test_weight_decay_touches_kernels_only():
    lr, wd = 0.1, 0.5
    opt = T.make_optimizer(T.TrainConfig(lr=lr, weight_decay=wd, grad_clip=1.0))
    params = {"dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 3.0)},
              "norm": {"scale": jnp.full((2,), 4.0)}, "emb": jnp.full((2, 2, 2), 5.0)}
    zero_grads = jax.tree.map(jnp.zeros_like, params)  # Adam update of a zero gradient is exactly 0
    new = jax.jit(lambda p: optax.apply_updates(p, opt.update(zero_grads, opt.init(p), p)[0]))(params)
    np.testing.assert_allclose(new["dense"]["kernel"], 2.0 * (1 - lr * wd), rtol=1e-6)
    np.testing.assert_allclose(new["emb"], 5.0 * (1 - lr * wd), rtol=1e-6)
    np.testing.assert_array_equal(new["dense"]["bias"], params["dense"]["bias"])
    np.testing.assert_array_equal(new["norm"]["scale"], params["norm"]["scale"])


def hand_adam(p0, c, lr, clip, steps, b1=0.9, b2=0.999, eps=1e-8):
    """Params of Adam on 0.5 ||p - c||^2 (grad p - c), gradients clipped to global norm `clip` (0 = off)."""
    p, m, v, out = np.asarray(p0, np.float64), 0.0, 0.0, []
    for t in range(1, steps + 1):
        g = p - np.asarray(c, np.float64)
        if clip > 0:
            g = g * min(1.0, clip / np.linalg.norm(g))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        out.append(p)
    return out


def jit_init(params, opt):
    return jax.jit(lambda p: T.init_state(p, opt))(params)


def quadratic_step(cfg, c):
    return jax.jit(T.make_train_step(lambda p, k, b: (0.5 * jnp.sum((p - c) ** 2), {}), T.make_optimizer(cfg),
                                     cfg.ema_decay))


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_optimizer_matches_hand_adam_with_global_norm_clip(clip):
    cfg = T.TrainConfig(lr=1.0, grad_clip=clip)
    c, p0 = np.array([3.0, 4.0], np.float32), np.zeros(2, np.float32)
    step = quadratic_step(cfg, c)
    state = jit_init(p0, T.make_optimizer(cfg))
    expected = hand_adam(p0, c, 1.0, clip, steps=3)
    for s in range(3):
        state, metrics = step(state, None, jax.random.key(s))
        np.testing.assert_allclose(state.params, expected[s], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(expected[1] - c), rtol=1e-5)  # pre-clip
    np.testing.assert_allclose(metrics["param_norm"], np.linalg.norm(expected[2]), rtol=1e-5)
    if clip:  # the clip is active (|g| ~ 5 > 0.5) and changes steps 2 and 3
        assert np.abs(hand_adam(p0, c, 1.0, 0.0, 3)[2] - expected[2]).max() > 1e-2


# ------------------------------------------------------------------------------------- pure step

def test_ema_and_adam_match_hand_computation_for_two_steps():
    """Quadratic loss 0.5 ||p - c||^2: grad = p - c. First Adam step: p1 = p0 - lr g0 / (|g0| + eps)."""
    lr, d, eps = 0.1, 0.9, 1e-8
    cfg = T.TrainConfig(lr=lr, ema_decay=d, grad_clip=0.0)
    c, p0 = np.array([1.0, -2.0, 0.5], np.float32), np.array([0.3, 0.0, 2.0], np.float32)
    step = quadratic_step(cfg, c)
    s1, _ = step(jit_init(p0, T.make_optimizer(cfg)), None, jax.random.key(0))
    s2, _ = step(s1, None, jax.random.key(1))
    p1, p2 = hand_adam(p0, c, lr, 0.0, steps=2)
    np.testing.assert_allclose(s1.params, p0 - lr * np.sign(p0 - c), rtol=1e-5)  # first Adam step
    np.testing.assert_allclose(s1.params, p1, rtol=1e-5)
    np.testing.assert_allclose(s2.params, p2, rtol=1e-5)
    ema1 = d * np.asarray(p0) + (1 - d) * p1
    np.testing.assert_allclose(s1.ema_params, ema1, rtol=1e-5)
    np.testing.assert_allclose(s2.ema_params, d * ema1 + (1 - d) * p2, rtol=1e-5)
    assert int(s2.step) == 2


def test_ema_off_tracks_params():
    opt = T.make_optimizer(T.TrainConfig(lr=0.1))
    step = T.make_train_step(lambda p, k, b: (jnp.sum(p ** 2), {}), opt, 0.0)
    s, _ = jax.jit(lambda p: step(T.init_state(p, opt), None, jax.random.key(0)))(np.ones(3, np.float32))
    np.testing.assert_array_equal(s.ema_params, s.params)


def test_metrics_include_scalar_aux_and_time_bins():
    opt = T.make_optimizer(T.TrainConfig(lr=0.1))
    step = jax.jit(T.make_train_step(linear_loss, opt, 0.0))
    params = {"w": np.ones((D, 1), np.float32), "b": np.zeros((1,), np.float32)}
    batch = make_data(16)
    key = jax.random.key(3)
    _, m = step(jit_init(params, opt), batch, key)
    (loss, aux), grads = jax.jit(jax.value_and_grad(linear_loss, has_aux=True))(params, key, batch)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(m["max_err"], aux["max_err"], rtol=1e-6)
    assert "per_example_loss" not in m and "time" not in m
    np.testing.assert_allclose(m["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
    # bins by hand
    t, pel = np.asarray(aux["time"]), np.asarray(aux["per_example_loss"])
    idx = np.minimum((t * 4).astype(int), 3)
    np.testing.assert_allclose(m["loss_bin_sum"], [pel[idx == i].sum() for i in range(4)], rtol=1e-5)
    np.testing.assert_array_equal(m["loss_bin_count"], [(idx == i).sum() for i in range(4)])


def test_time_bins_and_summary_omit_empty_bins():
    sums, counts = T.time_bin_stats(jnp.array([1.0, 2.0, 3.0, 5.0]), jnp.array([0.0, 0.3, 0.26, 1.0]))
    np.testing.assert_allclose(sums, [1.0, 5.0, 0.0, 5.0])
    np.testing.assert_array_equal(counts, [1, 2, 0, 1])
    window = [{"loss": 1.0, "loss_bin_sum": np.array([1.0, 5.0, 0.0, 5.0]),
               "loss_bin_count": np.array([1.0, 2.0, 0.0, 1.0])},
              {"loss": 3.0, "loss_bin_sum": np.array([3.0, 0.0, 0.0, 1.0]),
               "loss_bin_count": np.array([1.0, 0.0, 0.0, 1.0])}]
    assert T.summarize_metrics(window) == {"loss": 2.0, "loss_bin0": 2.0, "loss_bin1": 2.5, "loss_bin3": 3.0}


def test_vmapped_step_equals_separate_runs():
    opt = T.make_optimizer(T.TrainConfig(lr=0.05, weight_decay=0.1, ema_decay=0.5))
    step = T.make_train_step(linear_loss, opt, 0.5)

    def run(params, batch, i):  # 2 steps of one member; member i uses keys fold_in(fold_in(base, i), s)
        state, key = T.init_state(params, opt), jax.random.fold_in(jax.random.key(7), i)
        for s in range(2):
            state, metrics = step(state, batch, jax.random.fold_in(key, s))
        return state, metrics["loss"]

    members = {"w": np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, D, 1), np.float32),
               "b": -np.arange(3, dtype=np.float32)[:, None]}  # (3, D, 1), (3, 1)
    batches = make_data(24).reshape(3, 8, D + 1)
    v_states, v_loss = jax.jit(jax.vmap(run))(members, batches, np.arange(3))
    single = jax.jit(run)
    for i in range(3):
        state, loss = single(jax.tree.map(lambda x: x[i], members), batches[i], i)
        chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x)[i], v_states), state,
                                    rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v_loss[i], loss, rtol=1e-5)
    assert float(np.abs(np.asarray(v_states.params["w"][0]) - np.asarray(v_states.params["w"][1])).max()) > 0.5


# ------------------------------------------------------------------------------------------- train

def test_loss_decreases(tmp_path):
    cfg = small_cfg(steps=60, lr=0.1, log_every=20, ckpt_every=60)
    state = T.train(linear_loss, init_params(), make_data(), cfg, str(tmp_path), key=jax.random.key(0),
                    progress=False)
    recs = T.read_metrics(str(tmp_path))
    assert [r["step"] for r in recs] == [20, 40, 60]
    assert recs[-1]["loss"] < 0.05 * recs[0]["loss"]
    assert all(r["steps_per_sec"] > 0 and {"loss_bin0", "grad_norm", "param_norm", "max_err"} <= set(r)
               for r in recs)
    np.testing.assert_allclose(state.params["w"][:, 0], W_TRUE, atol=0.15)
    assert int(state.step) == 60


def _run(workdir, cfg, **kw):
    return T.train(linear_loss, init_params(), make_data(), cfg, workdir, key=jax.random.key(1),
                   progress=False, **kw)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    cfg = small_cfg(ema_decay=0.8, weight_decay=0.01)
    ref = _run(str(tmp_path / "ref"), cfg)
    ref_recs = T.read_metrics(str(tmp_path / "ref"))
    assert [r["step"] for r in ref_recs] == list(range(1, 11))

    # (a) a run stopped after 6 steps (checkpoints 5 and 6), then continued to 10
    _run(str(tmp_path / "a"), small_cfg(ema_decay=0.8, weight_decay=0.01, steps=6))
    a = _run(str(tmp_path / "a"), cfg)
    # (b) a run killed during step 8 (after checkpoint 5 and records up to 7): resumes from 5
    def kill(step, state, record):
        if step == 7:
            raise KeyboardInterrupt("simulated kill")
    with pytest.raises(KeyboardInterrupt):
        _run(str(tmp_path / "b"), cfg, hooks=[kill])
    assert [r["step"] for r in T.read_metrics(str(tmp_path / "b"))] == list(range(1, 8))
    b = _run(str(tmp_path / "b"), cfg)

    for name, st in (("a", a), ("b", b)):
        leaves_equal(st.params, ref.params)
        leaves_equal(st.ema_params, ref.ema_params)
        leaves_equal(st.opt_state, ref.opt_state)
        recs = T.read_metrics(str(tmp_path / name))
        assert [r["step"] for r in recs] == list(range(1, 11)), name
        assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs], name
    # a finished run returns immediately with the saved state
    again = _run(str(tmp_path / "ref"), cfg, hooks=[lambda *a: pytest.fail("should not step")])
    leaves_equal(again.params, ref.params)
    assert len(T.read_metrics(str(tmp_path / "ref"))) == 10
    # a checkpoint of another optimizer structure (no clipping state) is refused with a clear error
    with pytest.raises(ValueError, match="checkpoint 10 in .* does not match"):
        _run(str(tmp_path / "ref"), small_cfg(ema_decay=0.8, weight_decay=0.01, grad_clip=0.0, steps=12))


def nan_at_step_loss(k):
    """Loss whose value is NaN from 0-based step k on: Adam with lr=1 and a constant gradient -1 moves
    params['c'] by +1 per step, so after s steps c = s (up to eps)."""
    def loss_fn(params, key, batch):
        c = params["c"][0]
        return -c + jnp.where(c > k - 0.5, jnp.nan, 0.0) + 0.0 * batch.sum(), {}
    return loss_fn


@pytest.mark.parametrize("log_every,ckpt_every,window,last_ckpt", [(4, 4, (8, 12), 8), (4, 3, (8, 9), 6)])
def test_nan_guard_names_window(tmp_path, log_every, ckpt_every, window, last_ckpt):
    cfg = small_cfg(steps=20, lr=1.0, grad_clip=0.0, log_every=log_every, ckpt_every=ckpt_every)
    # the step with 0-based index 8 (record step 9) is the first with a NaN loss
    msg = (rf"loss became non-finite between step {window[0]} and {window[1]}; "
           rf"last finite checkpoint at step {last_ckpt}")
    with pytest.raises(FloatingPointError, match=msg):
        T.train(nan_at_step_loss(8), {"c": jnp.zeros((1,))}, np.zeros((4, 1), np.float32), cfg, str(tmp_path),
                key=jax.random.key(0), progress=False)
    import orbax.checkpoint as ocp
    assert max(ocp.CheckpointManager(str(tmp_path / "checkpoints")).all_steps()) == last_ckpt


def test_data_parallel_four_devices_equals_single_device():
    assert jax.device_count() == 4
    cfg = small_cfg(steps=4, ckpt_every=4)
    losses = {}
    states = {}
    for n_dev in (1, 4):
        records = []
        states[n_dev] = T.train(linear_loss, init_params(), make_data(), cfg, None, key=jax.random.key(2),
                                progress=False, devices=jax.devices()[:n_dev],
                                hooks=[lambda s, st, r: records.append(r["loss"])])
        losses[n_dev] = records
    assert len(states[4].params["w"].sharding.device_set) == 4
    params = jax.device_put(init_params(), jax.devices()[0])  # the caller's arrays are not donated
    T.train(linear_loss, params, make_data(), cfg, None, key=jax.random.key(2), progress=False,
            devices=jax.devices()[:1])
    np.testing.assert_array_equal(params["w"], 0.0)
    np.testing.assert_allclose(losses[1], losses[4], rtol=1e-5)
    chex.assert_trees_all_close(states[1].params, states[4].params, rtol=1e-5, atol=1e-6)


_QUEUED_STEPS_SCRIPT = """
import os, sys
os.environ["JAX_NUM_CPU_DEVICES"] = "4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[1])
import jax
import test_train as tt
from diffmem import runtime, training as T
cfg = tt.small_cfg(steps=400, log_every=400, ckpt_every=400)
state = T.train(tt.linear_loss, tt.init_params(), tt.make_data(), cfg, None, key=jax.random.key(0), progress=False)
print("done", int(jax.block_until_ready(state).step))
"""


def test_many_queued_steps_on_four_devices_do_not_deadlock():
    """400 steps without a metrics fetch on 4 CPU devices: with unbounded asynchronous dispatch XLA:CPU's all-reduces
    deadlock and the process aborts after ~60 s (training.MAX_STEPS_IN_FLIGHT bounds the queue). In a subprocess, so
    a regression fails this test instead of killing the test run."""
    import subprocess
    import sys
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _QUEUED_STEPS_SCRIPT, tests_dir], capture_output=True, text=True,
                          timeout=180, cwd=os.path.dirname(tests_dir))
    assert proc.returncode == 0 and "done 400" in proc.stdout, proc.stderr[-2000:]


def test_train_traces_step_once_including_resume(tmp_path):
    traces = []

    def counting_loss(params, key, batch):
        traces.append(1)  # Python side effect: runs once per trace
        return linear_loss(params, key, batch)

    cfg = small_cfg(steps=7, log_every=2, ckpt_every=3)
    T.train(counting_loss, init_params(), make_data(), cfg, str(tmp_path), key=jax.random.key(0), progress=False)
    assert len(traces) == 1
    # resumed from the step-7 checkpoint: the restored state has the same types and shardings as a fresh one,
    # so the compiled step is reused (a longer constant-schedule run shares it)
    state = T.train(counting_loss, init_params(), make_data(), small_cfg(steps=11, log_every=2, ckpt_every=3),
                    str(tmp_path), key=jax.random.key(0), progress=False)
    assert len(traces) == 1 and int(state.step) == 11
    T.train(counting_loss, init_params(), make_data(), small_cfg(steps=3, lr=0.01), None, key=jax.random.key(0),
            progress=False)  # another optimizer: a new step function, traced once
    assert len(traces) == 2


def test_train_input_errors(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=6 must be divisible by the device count 4"):
        _run(None, small_cfg(batch_size=6))
    with pytest.raises(ValueError, match="share a leading dimension"):
        T.train(linear_loss, init_params(), {"x": np.zeros((4, 2)), "y": np.zeros((5,))}, small_cfg(), None)
    bad = make_data()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="data contains NaN"):
        T.train(linear_loss, init_params(), bad, small_cfg(), None, key=jax.random.key(0))
    with pytest.raises(ValueError, match="typed key"):
        T.train(linear_loss, init_params(), make_data(), small_cfg(), None, key=jax.random.PRNGKey(0))


def test_initialize_distributed_is_noop_without_flag(monkeypatch):
    monkeypatch.delenv("DIFFMEM_DISTRIBUTED", raising=False)
    assert runtime.initialize_distributed() is False
    monkeypatch.setenv("DIFFMEM_DISTRIBUTED", "0")
    assert runtime.initialize_distributed() is False
    assert not jax.distributed.is_initialized()
