"""The audit experiment on generated sets whose memorized samples are known: k of m samples are copies of training
images (plus small noise), the rest fresh images; one copied image is duplicated in the training set (so it is not
memorized as given, and is after deduplication). From an .npz (in-process) and from a folder of PNGs (through
python -m diffmem.main)."""
import csv
import dataclasses
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import audit as config_module
from diffmem import experiments
from diffmem.experiments import audit
from diffmem.experiments.audit import inputs, report

import two_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIES = [3, 7, 12, 20, 41, 44]          # training images copied by samples 0..5; 7 is duplicated (= 30)
DUP = (7, 30)


def _scene(tmp_path, m=20, n=50, seed=0):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    train[DUP[1]] = train[DUP[0]]
    x = train.astype(np.float32) / 127.5 - 1
    noisy = np.clip(x[COPIES] + 0.02 * rng.standard_normal((len(COPIES), 8, 8, 3)), -1, 1)
    samples = np.concatenate([noisy, rng.uniform(-1, 1, (m - len(COPIES), 8, 8, 3))]).astype(np.float32)
    held = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=train)
    np.savez(tmp_path / "samples.npz", samples=samples)
    np.savez(tmp_path / "ref.npz", images=np.concatenate([held, train[[5, 9]]]))   # 2 of 32 are training images
    return train, samples


def _config(**over):
    c = config_module.get_config("smoke")
    for k, v in over.items():
        if isinstance(v, dict):
            c[k].update(v)
        else:
            c[k] = v
    return c


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    """The smoke preset on the npz scene (samples, training set and reference as .npz files)."""
    root = tmp_path_factory.mktemp("audit_npz")
    _, samples = _scene(root)
    overrides = {"samples": str(root / "samples.npz"), "train": f"npz:{root / 'train.npz'}",
                 "reference": f"npz:{root / 'ref.npz'}"}
    wd = str(root / "run")
    _, r, snapshot = two_process.run_smoke(config_module, overrides, wd)
    return overrides, wd, r, len(samples), snapshot


def test_two_processes_equal_one_process(npz_run, tmp_path):
    """The npz audit, run again as 2 processes x 2 devices: the same results, files only from process 0."""
    two_process.check("audit", npz_run[0], npz_run[4], str(tmp_path / "two"))


def test_npz_audit_finds_exactly_the_copies(npz_run):
    _, wd, r, m, _ = npz_run
    mem = r["memorization"]
    # as given: the copy of the duplicated image has NN1 = NN2 (distance equal) and is not memorized: 5 of 20
    assert (mem["count"], mem["n"], mem["ratio"]) == (5, 20, 0.25)
    assert mem["ci_low"] == pytest.approx(0.111862, abs=1e-5) and mem["ci_high"] == pytest.approx(0.468701, abs=1e-5)
    assert mem["method"] == "Wilson score interval"
    dup = r["duplicates"]
    assert (dup["n_duplicate_rows"], dup["groups"], dup["n_unique"], dup["examples"]) == (1, 1, 49, [list(DUP)])
    assert (dup["memorization"]["count"], dup["memorization"]["ratio"]) == (6, 0.3)
    with open(os.path.join(wd, "memorization.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m and list(rows[0]) == list(report.CSV_COLUMNS)
    for i, row in enumerate(rows):
        assert int(row["memorized_dedupe"]) == (i < len(COPIES))
        assert int(row["memorized"]) == (i < len(COPIES) and COPIES[i] != DUP[0])
        if i < len(COPIES):
            nn = {int(row["nn1_source_index"]), int(row["nn2_source_index"])}
            assert int(row["nn1_source_index"]) == COPIES[i] or nn == set(DUP)
            assert float(row["nn1_dist"]) < 0.02 * np.sqrt(192) * 1.5
    assert {e["sample"] for e in r["most_memorized"][:6]} == set(range(6))
    # calibration: 30 held-out real images (2 of the 32 reference images are training images), none memorized;
    # the copier's draws are memorized unless they drew the duplicated pair
    assert r["inputs"]["reference"]["in_train"] == 2
    h = r["calibration"]["heldout"]
    assert (h["count"], h["n"]) == (0, 30) and h["ci_high"] == pytest.approx(3.8415 / (30 + 3.8415), rel=1e-4)
    draws = np.random.default_rng(0).integers(0, 50, m)
    assert r["calibration"]["copier"]["memorization_ratio"] == pytest.approx(np.isin(draws, DUP, invert=True).mean())
    q = r["quality"]
    assert q["features"] == "pixels" and q["n_fake"] == m and q["n_ref"] == 32 and q["fd"] > 0
    for f in ("results.json", "most_memorized.png", "dist_ratio_hist.png"):
        assert os.path.getsize(os.path.join(wd, f)) > 0
    assert json.load(open(os.path.join(wd, "results.json")))["memorization"]["count"] == 5


def test_rerun_reuses_the_neighbour_search(tmp_path, monkeypatch):
    _scene(tmp_path)
    cfg = _config(samples=str(tmp_path / "samples.npz"), train=f"npz:{tmp_path / 'train.npz'}", reference="none")
    first = experiments.run(cfg, str(tmp_path / "run"))
    assert first["quality"] is None and first["calibration"]["heldout"] is None
    calls, orig = [], audit.neighbors.memorization
    monkeypatch.setattr(audit.neighbors, "memorization", lambda *a, **k: calls.append(len(a[0])) or orig(*a, **k))
    cfg.eval.grid_samples = 0
    again = experiments.run(cfg, str(tmp_path / "run"))
    assert again["memorization"] == first["memorization"] and again["duplicates"] == first["duplicates"]
    assert calls == [20]                       # only the copier's 20 draws: both stamped searches were reused
    assert again["files"]["grid"] is None


def _png_folder(root, images):
    os.makedirs(root, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(os.path.join(root, f"img_{i:03d}.png"))


def test_folder_audit_through_main(tmp_path):
    """PNG folders through the command line: the training folder in class sub-folders, samples = exact PNG copies
    of 3 training images, 2 copies with +-3 grey-level noise, 10 fresh images."""
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    for c in range(3):
        _png_folder(tmp_path / "train" / f"class_{c}", train[8 * c:8 * (c + 1)])
    noisy = np.clip(train[[10, 21]].astype(int) + rng.integers(-3, 4, (2, 8, 8, 3)), 0, 255).astype(np.uint8)
    fresh = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    _png_folder(tmp_path / "samples", np.concatenate([train[[0, 5, 17]], noisy, fresh]))
    wd = tmp_path / "run"
    cmd = [sys.executable, "-m", "diffmem.main", f"--config={ROOT}/configs/audit.py:smoke", f"--workdir={wd}",
           f"--config.samples={tmp_path / 'samples'}", f"--config.train=folder:{tmp_path / 'train'}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "memorized 5 of 15 samples" in p.stderr
    r = json.load(open(wd / "results.json"))
    assert (r["memorization"]["count"], r["inputs"]["samples"]["kind"], r["duplicates"]["groups"]) == (5, "folder", 0)
    assert r["inputs"]["reference"]["kind"] == "train" and r["calibration"]["heldout"] is None
    rows = list(csv.DictReader(open(wd / "memorization.csv")))
    got = [(row["sample_file"], row["nn1_file"], row["memorized"]) for row in rows[:5]]
    assert got == [("img_000.png", "class_0/img_000.png", "1"), ("img_001.png", "class_0/img_005.png", "1"),
                   ("img_002.png", "class_2/img_001.png", "1"), ("img_003.png", "class_1/img_002.png", "1"),
                   ("img_004.png", "class_2/img_005.png", "1")]
    assert float(rows[0]["nn1_dist"]) == 0.0 and all(row["memorized"] == "0" for row in rows[5:])
    # the perfect copier scores FD ~ 0 against the training set it copies: FD vs train rewards memorization
    assert r["calibration"]["copier"]["memorization_ratio"] == 1.0
    assert r["calibration"]["copier"]["fd"] < r["quality"]["fd"]


def test_samples_formats_and_channel_rules(tmp_path):
    _scene(tmp_path)
    s = audit.parse_config(_config(samples=str(tmp_path / "samples.npz"), train="digits"))
    u8 = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", arr_0=u8)
    got = inputs.read_samples(_with(s, samples=str(tmp_path / "u8.npz")))
    np.testing.assert_array_equal(got.images, u8 / np.float32(127.5) - 1)
    assert got.source["key"] == "arr_0"
    f01 = np.random.default_rng(3).uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "f01.npz", images=f01)
    got = inputs.read_samples(_with(s, samples=str(tmp_path / "f01.npz"), float_range="0,1"))
    np.testing.assert_allclose(got.images, 2 * f01 - 1, rtol=1e-6)
    over = np.full((2, 8, 8, 1), 1.2, np.float32)
    np.savez(tmp_path / "over.npz", images=over)
    with pytest.raises(ValueError, match=r"float values in \[1.2, 1.2\] .* config.clip_samples=True"):
        inputs.read_samples(_with(s, samples=str(tmp_path / "over.npz")))
    assert inputs.read_samples(_with(s, samples=str(tmp_path / "over.npz"), clip_samples=True)).images.max() == 1.0
    np.savez(tmp_path / "nchw.npz", images=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="looks like NCHW"):
        inputs.read_samples(_with(s, samples=str(tmp_path / "nchw.npz")))
    with pytest.raises(ValueError, match=r"none of config.samples_keys \['x'\]"):
        inputs.read_samples(_with(s, samples_keys=("x",)))
    with pytest.raises(ValueError, match="expected an existing .npz file"):
        inputs.read_samples(_with(s, samples=str(tmp_path / "missing.npz")))
    gray_rgb = np.repeat(u8, 3, axis=-1)
    np.testing.assert_array_equal(inputs.convert_channels(gray_rgb, 1, "x"), u8)
    np.testing.assert_array_equal(inputs.convert_channels(u8, 3, "x"), gray_rgb)
    colour = gray_rgb.copy()
    colour[0, 0, 0, 0] += 1
    with pytest.raises(ValueError, match="1 images have colour"):
        inputs.convert_channels(colour, 1, "x")


def _with(s, **kw):
    return dataclasses.replace(s, **kw)


def test_errors_name_the_setting(tmp_path):
    _scene(tmp_path)
    npz, train = str(tmp_path / "samples.npz"), f"npz:{tmp_path / 'train.npz'}"
    with pytest.raises(ValueError, match="config.train must be a data source name"):
        audit.parse_config(_config(samples=npz))
    with pytest.raises(ValueError, match="config.samples must be the path"):
        audit.parse_config(_config(train=train))
    with pytest.raises(ValueError, match=r"config.reference 'heldout' needs config.data.n > 0"):
        audit.parse_config(_config(samples=npz, train=train, reference="heldout"))
    with pytest.raises(ValueError, match="config.reference must be one of"):
        audit.parse_config(_config(samples=npz, train=train, reference="validation"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['reference'\] in config.eval"):
        audit.parse_config(_config(samples=npz, train=train, eval={"reference": "test"}))
    # digits are 8x8x1, the samples 8x8x3
    with pytest.raises(ValueError, match=r"samples are 8x8x3 but the training images 8x8x1; .* "
                                         r"config.samples_channels=1"):
        experiments.run(_config(samples=npz, train="digits"), str(tmp_path / "a"))
    big = np.zeros((4, 16, 16, 3), np.float32)
    np.savez(tmp_path / "big.npz", images=big)
    with pytest.raises(ValueError, match=r"16x16x3 but the training images 8x8x3; .*config.data.pool"):
        experiments.run(_config(samples=str(tmp_path / "big.npz"), train=train), str(tmp_path / "b"))
    np.savez(tmp_path / "odd.npz", images=np.zeros((4, 6, 6, 3), np.float32))
    with pytest.raises(ValueError, match=r"6x6x3 but the training images 8x8x3; .*config.data.crop / config.data.pool"):
        experiments.run(_config(samples=str(tmp_path / "odd.npz"), train=train), str(tmp_path / "c"))
    np.savez(tmp_path / "big64.npz", images=np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"features='pixels' on 64x64x3 images gives 12288-dimensional"):
        experiments.run(_config(samples=str(tmp_path / "big64.npz"), train=f"npz:{tmp_path / 'big64.npz'}"),
                        str(tmp_path / "d"))


def test_wilson_interval():
    assert audit.wilson_interval(0, 10) == (0.0, pytest.approx(3.8415 / 13.8415, rel=1e-4))
    lo, hi = audit.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / 13.8415, rel=1e-4)
    lo, hi = audit.wilson_interval(5, 20, 0.9)
    assert (lo, hi) == (pytest.approx(0.12738, abs=1e-4), pytest.approx(0.43221, abs=1e-4))   # by hand, z = 1.6449
    with pytest.raises(ValueError):
        audit.wilson_interval(3, 2)


def test_config_presets_parse_and_tuple_override():
    for preset in ("default", "smoke"):
        s = audit.parse_config(ml_collections.ConfigDict({**config_module.get_config(preset).to_dict(),
                                                           "samples": "x.npz", "train": "digits"}))
        assert s.data.name == "digits" and s.eval.reference == "all" and s.samples_keys == ("images", "samples",
                                                                                             "arr_0")
    with pytest.raises(ValueError, match="inception_weights must be the path"):
        audit.parse_config(ml_collections.ConfigDict({**config_module.get_config("inception").to_dict(),
                                                       "samples": "x.npz", "train": "digits"}))
    from absl import flags
    from ml_collections import config_flags
    argv = ["prog", f"--config={ROOT}/configs/audit.py:smoke", "--config.samples_keys=('x', 'images')",
            "--config.data.pool=2"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    assert fv.config.samples_keys == ("x", "images") and fv.config.data.pool == 2
