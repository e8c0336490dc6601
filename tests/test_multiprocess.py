"""Two JAX processes on localhost (CPU, gloo collectives) train and sample exactly like one process.

The test runs this file as the program of launch/local_multiprocess.py (2 processes x 2 CPU devices = a global
mesh of 4 devices); each process calls `diffmem.training.train` unchanged. It then compares the final params and
the logged losses with a one-process run over the 4 devices of the pytest process, and with one device.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(steps=4, batch_size=8, lr=0.05, log_every=1, ckpt_every=2, ema_decay=0.5, weight_decay=0.01)


def tiny_problem():
    """Data (32, 3) = [x (2), y] and params of a 2-4-1 tanh MLP, the same on every process."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2)).astype(np.float32)
    data = np.concatenate([x, np.sin(x[:, :1]) + x[:, 1:] ** 2], axis=1)
    params = {"w1": rng.normal(size=(2, 4)).astype(np.float32), "b1": np.zeros(4, np.float32),
              "w2": rng.normal(size=(4, 1)).astype(np.float32), "b2": np.zeros(1, np.float32)}
    return data, params


def mlp_loss(params, key, batch):
    x, y = batch[:, :2], batch[:, 2]  # (b, 2), (b,)
    x = x + 0.1 * jax.random.normal(key, x.shape)
    pred = (jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"])[:, 0]  # (b,)
    return jnp.mean((pred - y) ** 2), {}


def run_train(workdir, devices=None):
    from diffmem import training as T
    data, params = tiny_problem()
    return T.train(mlp_loss, params, data, T.TrainConfig(**CFG), workdir, key=jax.random.key(5),
                   progress=False, devices=devices)


def _worker_main(workdir, out):
    """Runs inside each of the launched processes."""
    from diffmem import training as T
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2, (
        jax.process_count(), jax.device_count(), jax.local_device_count())
    state = run_train(workdir)
    if jax.process_index() == 0:
        params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
        np.savez(out, losses=[r["loss"] for r in T.read_metrics(workdir)], **params)


def test_two_processes_match_one_process(tmp_path):
    workdir, out = str(tmp_path / "mp"), str(tmp_path / "mp.npz")
    cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", "2",
           "--devices_per_process", "2", "--timeout", "150", "--", os.path.abspath(__file__), workdir, out]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mp = np.load(out)

    from diffmem import training as T
    assert jax.device_count() == 4
    one = run_train(str(tmp_path / "one"))
    losses = [r["loss"] for r in T.read_metrics(str(tmp_path / "one"))]
    np.testing.assert_allclose(mp["losses"], losses, rtol=1e-6)
    for name, value in one.params.items():
        np.testing.assert_allclose(mp[name], np.asarray(value), rtol=1e-6, atol=1e-7, err_msg=name)
    single = run_train(None, devices=jax.devices()[:1])  # and one process on one device
    for name, value in single.params.items():
        np.testing.assert_allclose(mp[name], np.asarray(value), rtol=1e-5, atol=1e-6, err_msg=name)
    # the two processes wrote one checkpoint directory with the final step
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


SAMPLER = dict(num_samples=10, steps=4, batch_size=4)


def tiny_dit_params():
    """A tiny DiT and parameters with every weight perturbed (so the samples depend on them), same on every process."""
    from diffmem import config as config_lib, image_diffusion as idf
    model = idf.build_model((8, 8, 1), patch=2, hidden=32, depth=1, heads=2)
    params = idf.init_params(model, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    leaves = [a + 0.05 * jax.random.normal(jax.random.key(i), a.shape) for i, a in enumerate(leaves)]
    return model, jax.tree.unflatten(tree, leaves)


def run_sample(model, params, devices=None):
    from diffmem import config as config_lib, image_diffusion as idf
    return idf.sample(model, params, jax.random.key(7), config_lib.SamplerConfig(**SAMPLER), 1e-3, devices=devices)


def _sample_worker(out):
    """Each process draws its share of the samples from parameters replicated over the 4 global devices (as
    trained parameters are) and receives everyone's."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    model, params = tiny_dit_params()
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("d",)), PartitionSpec())
    params = jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sharding, lambda idx: np.asarray(a)[idx]),
                          params)
    assert not params["final_layer"]["linear"]["kernel"].is_fully_addressable
    samples = run_sample(model, params)
    np.save(f"{out}.{jax.process_index()}.npy", samples)


def test_two_processes_sample_like_one(tmp_path):
    out = str(tmp_path / "samples")
    cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", "2",
           "--devices_per_process", "2", "--timeout", "150", "--", os.path.abspath(__file__), "sample", out]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model, params = tiny_dit_params()
    one = run_sample(model, params, devices=jax.devices()[:1])
    assert one.shape == (10, 8, 8, 1)
    for i in range(2):
        np.testing.assert_allclose(np.load(f"{out}.{i}.npy"), one, rtol=1e-5, atol=1e-5)


def test_launcher_stops_the_others_when_one_process_fails(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys, time\n"
                      "import jax\n"
                      "assert jax.process_count() == 2\n"
                      "sys.exit(3) if os.environ['DIFFMEM_PROCESS_ID'] == '1' else time.sleep(120)\n")
    cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", "2", "--timeout", "90",
           "--", str(script)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]  # not 124: process 0 was stopped, not timed out


if __name__ == "__main__":
    if sys.argv[1] == "sample":
        _sample_worker(sys.argv[2])
    else:
        _worker_main(*sys.argv[1:])
