"""Tests of diffmem.tracking: TensorBoard scalars of training runs (single model, resumed, sweeps) and images, read
back with TensorBoard's own event reader; off by default; a clear error when the extra is missing."""

import io as _io
import os
import sys

import jax
import numpy as np
import pytest

from diffmem import config as config_lib
from diffmem import runtime, tracking, training as T

D = 3


def make_data(n=32, seed=0):
    """Rows [x (3), y] with y = x . w + 0.5."""
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return np.concatenate([x, (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.5)[:, None]], axis=1)  # (n, 4)


def init_params():
    return {"w": np.zeros((D, 1), np.float32), "b": np.zeros((1,), np.float32)}


def linear_loss(params, key, batch):
    """Squared error of a linear model; per-example losses and times give the 'loss_bin{i}' fields."""
    x, y = batch[:, :D], batch[:, D]                                        # (b, 3), (b,)
    per_example = (x @ params["w"][:, 0] + params["b"][0] - y) ** 2         # (b,)
    t = jax.random.uniform(key, y.shape)                                    # (b,)
    return per_example.mean(), {"per_example_loss": per_example, "time": t}


def cfg(**kw):
    base = dict(steps=10, batch_size=8, lr=0.05, log_every=1, ckpt_every=5, keep_ckpts=3, tensorboard=True)
    return T.TrainConfig(**{**base, **kw})


def accumulator(workdir):
    """TensorBoard's reader on <workdir>/tensorboard, every event kept."""
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(tracking.logdir(workdir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    return acc


def assert_scalars_match_metrics(acc, records, tags):
    """Every record's value of each (tag, field, member) at its step, once per step (float32 in the event file);
    records without the field (a time bin no example fell in) have no event."""
    for tag, field, member in tags:
        recs = [r for r in records if field in r]
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["step"] for r in recs], tag
        want = [r[field] if member is None else (np.mean(r[field]) if member == "mean" else r[field][member])
                for r in recs]
        np.testing.assert_array_equal([e.value for e in events], np.float32(want), err_msg=tag)


# ------------------------------------------------------------------------------------------- training runs

def test_train_scalars_equal_metrics_jsonl_after_kill_and_resume(tmp_path):
    """A run killed after the records of step 7 (checkpoint 5) and resumed: TensorBoard shows each step 1..10 once
    (the orphaned 6 and 7 are purged), with the values of metrics.jsonl."""
    wd = str(tmp_path)

    def kill(step, state, record):
        if step == 7:
            raise KeyboardInterrupt("simulated kill")
    with pytest.raises(KeyboardInterrupt):
        T.train(linear_loss, init_params(), make_data(), cfg(), wd, key=jax.random.key(0), progress=False,
                hooks=[kill])
    T.train(linear_loss, init_params(), make_data(), cfg(), wd, key=jax.random.key(0), progress=False)
    records = T.read_metrics(wd)
    assert [r["step"] for r in records] == list(range(1, 11))
    acc = accumulator(wd)
    fields = sorted({k for r in records for k in r} - {"step"})
    assert {"loss", "grad_norm", "param_norm", "steps_per_sec", "loss_bin0"} <= set(fields)
    assert set(acc.Tags()["scalars"]) == set(fields)
    assert_scalars_match_metrics(acc, records, [(f, f, None) for f in fields if f.startswith("loss")]
                                 + [("grad_norm", "grad_norm", None), ("steps_per_sec", "steps_per_sec", None)])


def test_sweep_scalars_per_member(tmp_path):
    """train_sweep records hold one value per member: tags '<field>/m{i}' and '<field>/mean'."""
    data, mask = T.pad_datasets([make_data(16, 0), make_data(24, 1)])       # (2, 24, 4), (2, 24)
    params = jax.tree.map(lambda a: np.stack([a, a]), init_params())        # stacked (2, ...)
    keys = jax.random.split(jax.random.key(0), 2)
    wd = str(tmp_path)
    _, records = T.train_sweep(linear_loss, params, data, mask, [0.0, 0.1], keys, cfg(steps=6, log_every=2), wd)
    assert [r["step"] for r in records] == [2, 4, 6] and len(records[0]["loss"]) == 2
    acc = accumulator(wd)
    assert {"loss/m0", "loss/m1", "loss/mean", "grad_norm/m1", "steps_per_sec"} <= set(acc.Tags()["scalars"])
    assert_scalars_match_metrics(acc, records, [("loss/m0", "loss", 0), ("loss/m1", "loss", 1),
                                                ("loss/mean", "loss", "mean"), ("grad_norm/m0", "grad_norm", 0)])


def test_off_by_default_writes_no_tensorboard_dir(tmp_path):
    assert T.TrainConfig().tensorboard is False
    T.train(linear_loss, init_params(), make_data(), cfg(steps=2, tensorboard=False), str(tmp_path),
            key=jax.random.key(0), progress=False)
    assert os.path.exists(tmp_path / "metrics.jsonl")
    assert not os.path.exists(tracking.logdir(str(tmp_path)))


# ------------------------------------------------------------------------------------------- images

def test_log_image_grid_reads_back_with_its_size_and_pixels(tmp_path):
    from PIL import Image
    wd = str(tmp_path)
    images = np.random.default_rng(0).uniform(-1, 1, size=(5, 6, 7, 1)).astype(np.float32)   # (m, H, W, C)
    grid = tracking.log_image_grid(wd, "samples", images, step=3, ncols=3, pad=2)
    assert grid.shape == (2 * (6 + 2) + 2, 3 * (7 + 2) + 2, 1)                              # 2 rows of 3 cells
    np.testing.assert_allclose(grid[2:8, 2:9, 0], (images[0, ..., 0] + 1) / 2, rtol=1e-6)   # cell 0
    np.testing.assert_allclose(grid[10:16, 11:18, 0], (images[4, ..., 0] + 1) / 2, rtol=1e-6)  # cell 4
    canvas = np.linspace(0, 1, 20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)          # e.g. plots.pair_grid's
    tracking.log_image(wd, "samples_vs_nn", canvas, step=7)
    acc = accumulator(wd)
    assert set(acc.Tags()["images"]) == {"samples", "samples_vs_nn"}
    for tag, want, step in (("samples", grid, 3), ("samples_vs_nn", canvas, 7)):
        (ev,) = acc.Images(tag)
        assert (ev.step, ev.height, ev.width) == (step, want.shape[0], want.shape[1])
        got = np.asarray(Image.open(_io.BytesIO(ev.encoded_image_string)), np.float32) / 255.0
        got = got.reshape(want.shape[:2] + (-1,))[..., :want.shape[2]]
        np.testing.assert_allclose(got, want, atol=1.5 / 255)


def test_image_errors():
    with pytest.raises(ValueError, match="shape"):
        tracking.image_grid(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        tracking._as_hwc(np.full((4, 4, 3), np.nan))


# ------------------------------------------------------------------------------------------- switches

def test_only_process_0_writes(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    monkeypatch.setattr(runtime, "is_writer", lambda: False)
    w = tracking.TensorBoardWriter(str(tmp_path))
    w.write(1, {"step": 1, "loss": 0.5})
    w.close()
    tracking.log_image(str(tmp_path), "x", np.zeros((4, 4, 3)), step=1)
    assert not os.path.exists(tracking.logdir(str(tmp_path)))


def test_scalars_flattens_members_and_skips_non_numbers():
    rec = {"step": 4, "loss": 0.25, "grad_norm": [1.0, 3.0], "note": "x", "flag": True, "none": None}
    assert tracking.scalars(rec) == {"loss": 0.25, "grad_norm/m0": 1.0, "grad_norm/m1": 3.0, "grad_norm/mean": 2.0}


def test_missing_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # find_spec sees it as not installed
    assert not tracking.available()
    T.TrainConfig(tensorboard=False)                          # off: nothing needed
    with pytest.raises(ValueError, match=r"^config\.train\.tensorboard is True but tensorboardX is not installed: "
                                         r"pip install -e '\.\[tensorboard\]'$"):
        config_lib.parse(T.TrainConfig, {"tensorboard": True}, "train")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tensorboard\]'"):
        tracking.log_image("/nonexistent", "x", np.zeros((4, 4, 3)), step=0)


def test_tracking_fields_stay_out_of_stamps():
    """Switching tensorboard on changes no stamp / config hash (a workdir resumes, cached results are reused)."""
    assert "tensorboard" in config_lib.RESUMABLE_TRAIN_FIELDS
    assert config_lib.train_numbers(T.TrainConfig(tensorboard=False)) == \
        config_lib.train_numbers(T.TrainConfig(tensorboard=True if tracking.available() else False))
    assert "tensorboard" not in config_lib.train_numbers(T.TrainConfig())

