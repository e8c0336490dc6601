"""Two JAX processes on localhost (CPU, gloo collectives) train exactly like one process.

The test runs this file as the program of launch/local_multiprocess.py (2 processes x 2 CPU devices = a global
mesh of 4 devices); each process calls `diffmem.train.train` unchanged. It then compares the final params and
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
    from diffmem import train as T
    data, params = tiny_problem()
    return T.train(mlp_loss, params, data, T.TrainConfig(**CFG), workdir, key=jax.random.key(5),
                   progress=False, devices=devices)


def _worker_main(workdir, out):
    """Runs inside each of the launched processes."""
    from diffmem import train as T
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

    from diffmem import train as T
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
    _worker_main(*sys.argv[1:])
