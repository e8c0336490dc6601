"""Tests for diffmem.data: sources, subsets, errors, device batches and PNG grids."""
import gzip
import io
import os
import time

import chex
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from diffmem import data, plots


# ---------------------------------------------------------------------------------------------------------------
# digits and subsets


def test_digits_full():
    d = data.load_images("digits")
    ref = load_digits()
    assert d.images.shape == (1797, 8, 8, 1) and d.images.dtype == np.float32
    np.testing.assert_array_equal(d.images[..., 0], ref.images / 8.0 - 1.0)
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    np.testing.assert_array_equal(d.labels, ref.target)
    assert d.labels.dtype == np.int32 and d.indices.dtype == np.int64
    np.testing.assert_array_equal(d.indices, np.arange(1797))
    assert d.num_classes == 10 and d.n == 1797 and d.image_shape == (8, 8, 1)


def test_subset_deterministic_and_traceable():
    full = data.load_images("digits")
    a = data.load_images("digits", n=100, seed=3)
    b = data.load_images("digits", n=100, seed=3)
    c = data.load_images("digits", n=100, seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.indices, c.indices)
    assert len(np.unique(a.indices)) == 100 and np.all(np.diff(a.indices) > 0)
    np.testing.assert_array_equal(a.images, full.images[a.indices])
    np.testing.assert_array_equal(a.labels, full.labels[a.indices])
    # The documented rule: the first n of one permutation from default_rng(seed), sorted.
    np.testing.assert_array_equal(a.indices, np.sort(np.random.default_rng(3).permutation(1797)[:100]))


def test_same_seed_same_indices_whatever_the_source(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npz"
    np.savez(path, images=rng.integers(0, 256, (1797, 4, 4, 3), dtype=np.uint8))
    np.testing.assert_array_equal(data.load_images(f"npz:{path}", n=50, seed=9).indices,
                                  data.load_images("digits", n=50, seed=9).indices)


def test_class_balanced():
    full = data.load_images("digits")
    d = data.load_images("digits", n=200, seed=1, class_balanced=True)
    np.testing.assert_array_equal(np.bincount(d.labels, minlength=10), np.full(10, 20))
    np.testing.assert_array_equal(d.labels, full.labels[d.indices])
    # Independent computation: the first 20 of every class in the seed's permutation.
    perm = np.random.default_rng(1).permutation(1797)
    expected = np.sort(np.concatenate([perm[full.labels[perm] == k][:20] for k in range(10)]))
    np.testing.assert_array_equal(d.indices, expected)
    smallest = int(np.bincount(full.labels).min())
    with pytest.raises(ValueError, match="divisible"):
        data.load_images("digits", n=25, class_balanced=True)
    with pytest.raises(ValueError, match=f"only {smallest}"):
        data.load_images("digits", n=10 * (smallest + 1), class_balanced=True)
    with pytest.raises(ValueError, match="equal class sizes"):
        data.load_images("digits", class_balanced=True)


@pytest.mark.parametrize("n", [0, -3, 1798])
def test_bad_n(n):
    with pytest.raises(ValueError, match=r"n must be in \[1, 1797\].*n=" + str(n)):
        data.load_images("digits", n=n)


@pytest.mark.parametrize("name", ["cifar10", "tfds:", "csv:/x", "npz", "", "digits:2"])
def test_bad_names(name):
    with pytest.raises(ValueError, match="'digits'.*'tfds:<name>'.*'npz:<path>'.*'idx:<dir>'"):
        data.load_images(name)


def test_digits_has_no_test_split():
    with pytest.raises(ValueError, match="split"):
        data.load_images("digits", split="test")


# ---------------------------------------------------------------------------------------------------------------
# npz


def test_npz_uint8_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (30, 5, 6), dtype=np.uint8)  # no channel axis
    raw[0, 0, 0], raw[0, 0, 1] = 0, 255
    labels = rng.integers(0, 4, 30)
    np.savez(tmp_path / "a.npz", images=raw, labels=labels)
    d = data.load_images(f"npz:{tmp_path / 'a.npz'}")
    assert d.images.shape == (30, 5, 6, 1) and d.num_classes == int(labels.max()) + 1
    np.testing.assert_allclose(d.images[..., 0], raw / 127.5 - 1.0, atol=1e-6)
    assert d.images[0, 0, 0, 0] == -1.0 and d.images[0, 0, 1, 0] == 1.0
    np.testing.assert_array_equal(d.labels, labels)
    # Back to uint8 exactly.
    np.testing.assert_array_equal(np.rint((d.images[..., 0] + 1) * 127.5).astype(np.uint8), raw)


def test_npz_float_round_trip_and_defaults(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (12, 3, 3, 3)).astype(np.float64)
    np.savez(tmp_path / "f.npz", images=x, labels=np.arange(12) % 3, num_classes=5)
    d = data.load_images(f"npz:{tmp_path / 'f.npz'}", n=6, seed=0)
    np.testing.assert_array_equal(d.images, x[d.indices].astype(np.float32))
    assert d.num_classes == 5
    np.savez(tmp_path / "nolab.npz", images=x)
    d = data.load_images(f"npz:{tmp_path / 'nolab.npz'}")
    assert d.num_classes == 0 and np.all(d.labels == -1)
    with pytest.raises(ValueError, match="labelled"):
        data.load_images(f"npz:{tmp_path / 'nolab.npz'}", n=6, class_balanced=True)


@pytest.mark.parametrize("images,match", [
    (np.full((4, 2, 2), np.nan, np.float32), "NaN"),
    (np.full((4, 2, 2), np.inf, np.float32), "NaN"),
    (np.full((4, 2, 2), 1.5, np.float32), r"\[-1, 1\]"),
    (np.full((4, 2, 2), 7, np.int32), "uint8"),
    (np.zeros((4, 2), np.uint8), "shape"),
])
def test_npz_rejects_bad_images(tmp_path, images, match):
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(ValueError, match=match):
        data.load_images(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_missing_key_or_file(tmp_path):
    np.savez(tmp_path / "k.npz", x=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="'images'"):
        data.load_images(f"npz:{tmp_path / 'k.npz'}")
    with pytest.raises(ValueError, match="no such file"):
        data.load_images(f"npz:{tmp_path / 'missing.npz'}")


# ---------------------------------------------------------------------------------------------------------------
# IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, (40, 7, 6), dtype=np.uint8)
    train_labels = (np.arange(40) % 4).astype(np.uint8)
    test = rng.integers(0, 256, (8, 7, 6), dtype=np.uint8)
    ext = ".gz" if gz else ""
    opener = gzip.open if gz else open
    for fname, arr in [("train-images-idx3-ubyte", train), ("train-labels-idx1-ubyte", train_labels),
                       ("t10k-images-idx3-ubyte", test)]:
        with opener(tmp_path / (fname + ext), "wb") as f:
            f.write(_idx_bytes(arr))
    d = data.load_images(f"idx:{tmp_path}", n=12, seed=2, class_balanced=True)
    assert d.images.shape == (12, 7, 6, 1) and d.num_classes == 4
    np.testing.assert_allclose(d.images[..., 0], train[d.indices] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(d.labels, train_labels[d.indices])
    np.testing.assert_array_equal(np.bincount(d.labels), [3, 3, 3, 3])
    perm = np.random.default_rng(2).permutation(40)
    expected = np.sort(np.concatenate([perm[train_labels[perm] == k][:3] for k in range(4)]))
    np.testing.assert_array_equal(d.indices, expected)
    t = data.load_images(f"idx:{tmp_path}", split="test")
    np.testing.assert_allclose(t.images[..., 0], test / 127.5 - 1.0, atol=1e-6)
    assert np.all(t.labels == -1) and t.num_classes == 0


def test_idx_float_and_errors(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 3)).astype(np.float32)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(x))
    np.testing.assert_array_equal(data.load_images(f"idx:{tmp_path}").images[..., 0], x)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))  # wrong count
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        data.load_images(f"idx:{tmp_path}")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.load_images(f"idx:{tmp_path}")
    with pytest.raises(ValueError, match="no t10k-images"):
        data.load_images(f"idx:{tmp_path}", split="test")
    with pytest.raises(ValueError, match="split"):
        data.load_images(f"idx:{tmp_path}", split="validation")


# ---------------------------------------------------------------------------------------------------------------
# TFDS


@pytest.mark.parametrize("ds_name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(ds_name, shape):
    with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
        d = data.load_images(f"tfds:{ds_name}", n=10, seed=4)
        again = data.load_images(f"tfds:{ds_name}", n=10, seed=4)
        source = tfds.data_source(ds_name, split="train", download=False)
        expected = np.stack([source[int(i)]["image"] for i in d.indices])
        expected_labels = [int(source[int(i)]["label"]) for i in d.indices]
    assert d.images.shape == (10,) + shape and d.images.dtype == np.float32
    assert d.num_classes == 10
    np.testing.assert_allclose(d.images, expected / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(d.labels, expected_labels)
    np.testing.assert_array_equal(d.images, again.images)
    np.testing.assert_array_equal(d.indices, np.sort(np.random.default_rng(4).permutation(60)[:10]))


def test_tfds_mock_class_balanced_and_bad_n():
    with tfds.testing.mock_data(num_examples=300, policy=tfds.testing.MockPolicy.USE_CODE):
        d = data.load_images("tfds:cifar10", n=20, seed=0, class_balanced=True)
        with pytest.raises(ValueError, match=r"n must be in \[1, 300\]"):
            data.load_images("tfds:cifar10", n=301)
    np.testing.assert_array_equal(np.bincount(d.labels, minlength=10), np.full(10, 2))


class DiffmemTestTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A real (not mocked) ArrayRecord dataset: image i is constant 7 * i, label i % 3."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 5, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30)}

    def _generate_examples(self, num):
        for i in range(num):
            buf = io.BytesIO()
            Image.fromarray(np.full((4, 5, 3), 7 * i, np.uint8)).save(buf, format="PNG")  # PNG without TF
            yield i, {"image": buf.getvalue(), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    DiffmemTestTiny(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_real_array_record_reads_only_chosen(tiny_tfds_dir, monkeypatch):
    decode = tfds.features.Image.decode_example_np
    calls = []

    def counting(self, example):
        calls.append(1)
        return decode(self, example)

    monkeypatch.setattr(tfds.features.Image, "decode_example_np", counting)
    d = data.load_images("tfds:diffmem_test_tiny", n=5, seed=1, data_dir=tiny_tfds_dir)
    assert len(calls) == 5  # random access: 5 of 30 records decoded
    values = np.rint((d.images[:, 0, 0, 0] + 1) * 127.5).astype(int)  # 7 * i for the generator's i
    assert np.all(d.images == d.images[:, :1, :1, :1])
    np.testing.assert_array_equal(d.labels, (values // 7) % 3)
    np.testing.assert_array_equal(d.indices, np.sort(np.random.default_rng(1).permutation(30)[:5]))
    calls.clear()
    b = data.load_images("tfds:diffmem_test_tiny", n=6, seed=0, class_balanced=True, data_dir=tiny_tfds_dir)
    assert len(calls) == 6  # labels of all records were read without decoding images
    np.testing.assert_array_equal(np.bincount(b.labels), [2, 2, 2])
    np.testing.assert_array_equal(b.labels, (np.rint((b.images[:, 0, 0, 0] + 1) * 127.5).astype(int) // 7) % 3)
    part = data.load_images("tfds:diffmem_test_tiny", split="train[10:20]", data_dir=tiny_tfds_dir)
    assert part.n == 10


def test_tfds_not_prepared_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        data.load_images("tfds:cifar10", n=10, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    for needle in ["not prepared", str(tmp_path), "pip install -e '.[tfds-prepare]'",
                   "tfds.builder('cifar10'", "download_and_prepare()", "file_format='array_record'",
                   "manual_dir", "TFDS_DATA_DIR"]:
        assert needle in msg, needle
    assert os.listdir(tmp_path) == []  # nothing downloaded, nothing written


def test_tfds_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="no such dataset"):
        data.load_images("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# device batches


def test_sample_batch():
    images = jnp.arange(10 * 2 * 2 * 1, dtype=jnp.float32).reshape(10, 2, 2, 1)
    key = jax.random.key(0)
    b = data.sample_batch(key, images, 64)
    chex.assert_shape(b, (64, 2, 2, 1))
    np.testing.assert_array_equal(b, data.sample_batch(key, images, 64))
    np.testing.assert_array_equal(b, jax.jit(data.sample_batch, static_argnums=2)(key, images, 64))
    assert not np.array_equal(b, data.sample_batch(jax.random.key(1), images, 64))
    rows = np.asarray(b[:, 0, 0, 0]).astype(int) // 4  # which image each row is
    np.testing.assert_array_equal(np.asarray(b), np.asarray(images)[rows])
    expected_rows = jax.random.randint(key, (64,), 0, 10)  # independent: the documented draw
    np.testing.assert_array_equal(rows, expected_rows)
    # num_valid (traced, vmapped over a sweep): draws only from the first num_valid rows.
    sweep = jax.jit(jax.vmap(lambda nv: data.sample_batch(key, images, 500, nv)))(jnp.array([1, 3, 10]))
    firsts = np.asarray(sweep[..., 0, 0, 0]).astype(int) // 4
    assert firsts[0].max() == 0 and set(firsts[1]) == {0, 1, 2} and set(firsts[2]) == set(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        data.sample_batch(key, images, 0)


def test_to_device():
    d = data.load_images("digits", n=8, seed=0)
    x = data.to_device(d)
    assert isinstance(x, jax.Array)
    np.testing.assert_array_equal(np.asarray(x), d.images)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    xs = data.to_device(d, sharding)
    assert xs.sharding == sharding and len(xs.addressable_shards) == 4
    np.testing.assert_array_equal(np.asarray(xs), d.images)
    with pytest.raises(ValueError, match="sharding"):
        data.to_device(data.load_images("digits", n=6, seed=0), sharding)


# ---------------------------------------------------------------------------------------------------------------
# PNG grids


def test_save_image_grid(tmp_path):
    imgs = np.stack([np.full((2, 3, 1), -1.0), np.full((2, 3, 1), 1.0), np.full((2, 3, 1), 0.0)])
    path = tmp_path / "sub" / "grid.png"
    canvas = plots.save_image_grid(path, imgs, ncols=2, scale=2, pad=1, highlight=np.array([False, True, False]))
    png = matplotlib.image.imread(path)[..., :3]
    assert png.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 3)
    np.testing.assert_allclose(png, canvas, atol=1 / 255)
    np.testing.assert_allclose(png[1:5, 1:7], 0.0)  # image 0: black
    np.testing.assert_allclose(png[1:5, 8:14], 1.0)  # image 1: white
    np.testing.assert_allclose(png[6:10, 1:7], 0.5, atol=1 / 255)  # image 2: grey
    np.testing.assert_allclose(png[10, 14], 1.0)  # empty slot / padding: white
    np.testing.assert_allclose(png[0, 7:15], np.tile([1.0, 0.0, 0.0], (8, 1)))  # red frame of image 1
    np.testing.assert_allclose(png[0, 0], 1.0)  # no frame on image 0
    with pytest.raises(ValueError, match="NaN"):
        plots.save_image_grid(path, np.full((1, 2, 2, 3), np.nan), ncols=1)
    with pytest.raises(ValueError, match="C in"):
        plots.save_image_grid(path, np.zeros((1, 2, 2, 2)), ncols=1)


def test_pair_grid(tmp_path):
    samples = np.stack([np.full((2, 2, 3), v) for v in (-1.0, 0.0, 1.0)])  # (3, 2, 2, 3)
    neighbours = -samples
    path = tmp_path / "pairs.png"
    plots.pair_grid(path, samples, neighbours, ncols=2, scale=1, pad=1, row_labels=False)
    png = matplotlib.image.imread(path)[..., :3]
    # 2 blocks of (sample row, neighbour row), 2 columns: 4 rows of 2-pixel cells.
    assert png.shape == (4 * 3 + 1, 2 * 3 + 1, 3)
    cell = lambda r, c: png[1 + 3 * r: 3 + 3 * r, 1 + 3 * c: 3 + 3 * c]  # noqa: E731
    np.testing.assert_allclose(cell(0, 0), 0.0)  # sample 0
    np.testing.assert_allclose(cell(1, 0), 1.0)  # its neighbour
    np.testing.assert_allclose(cell(0, 1), 0.5, atol=1 / 255)  # sample 1
    np.testing.assert_allclose(cell(2, 0), 1.0)  # sample 2 (second block)
    np.testing.assert_allclose(cell(3, 0), 0.0)  # its neighbour
    k2 = np.stack([neighbours, samples], axis=1)  # (3, 2, 2, 2, 3): two neighbours each
    assert plots.pair_grid(path, samples, k2, ncols=3, scale=1, pad=1, row_labels=False).shape == (
        3 * 3 + 1, 3 * 3 + 1, 3)
    with pytest.raises(ValueError, match="neighbours"):
        plots.pair_grid(path, samples, neighbours[:2], ncols=2)


def test_pair_grid_row_labels(tmp_path):
    """By default the rows are labelled on a strip left of the unchanged grid."""
    samples = np.stack([np.full((4, 4, 1), v) for v in (-1.0, 0.0, 1.0)])
    mem = np.array([True, False, False])
    bare = plots.pair_grid(tmp_path / "bare.png", samples, -samples, ncols=3, scale=8, highlight=mem,
                           row_labels=False)
    labelled = plots.pair_grid(tmp_path / "lab.png", samples, -samples, ncols=3, scale=8, highlight=mem,
                               sample_label="importance, eta 0.2")
    png = matplotlib.image.imread(tmp_path / "lab.png")[..., :3]
    np.testing.assert_allclose(png, labelled, atol=1 / 255)
    strip = labelled.shape[1] - bare.shape[1]
    assert labelled.shape[0] == bare.shape[0] and strip > 50
    np.testing.assert_allclose(labelled[:, strip:], bare, atol=1 / 255)  # the grid itself is unchanged
    h = bare.shape[0] // 2  # two rows: samples, nearest training images; text in each half of the strip
    assert (labelled[:h, :strip] < 0.5).any() and (labelled[h:, :strip] < 0.5).any()
    assert plots.pair_row_labels(2, "DiT", highlight=True) == [
        "DiT\n(red: memorized)", "nearest\ntraining image", "2nd nearest\ntraining image"]
    with pytest.raises(ValueError, match="row_labels"):
        plots.pair_grid(tmp_path / "x.png", samples, -samples, row_labels=["only one"])
