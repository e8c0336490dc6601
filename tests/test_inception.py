"""InceptionV3 pool features (diffmem/inception.py) from user weights files, offline: the weights are random
(Keras's ImageNet weights are not downloadable here), saved in Keras's two file formats and loaded back."""
import shutil

import h5py
import numpy as np
import pytest

from diffmem.eval import features
from diffmem.eval.features import inception
from diffmem import config as config_lib
from diffmem.eval import images

pytestmark = pytest.mark.slow   # builds InceptionV3 (about a minute on 2 cores): DIFFMEM_SLOW_TESTS=1

keras = inception.import_keras()


def bilinear_upsample(x: np.ndarray, size: int) -> np.ndarray:
    """Independent numpy bilinear resize (half-pixel centres, edge clamp) of (b, H, W, C) to (b, size, size, C)."""
    def axis_weights(n_in):
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = src - lo
        m = np.zeros((size, n_in))
        m[np.arange(size), lo] += 1 - w
        m[np.arange(size), hi] += w
        return m                                                              # (size, n_in)
    rows, cols = axis_weights(x.shape[1]), axis_weights(x.shape[2])
    return np.einsum("ph,bhwc,qw->bpqc", rows, x.astype(np.float64), cols)


def random_inception(include_top: bool, seed: int):
    """A Keras InceptionV3 with random weights whose batch-norm statistics are those of a random batch (momentum 0
    for one training-mode pass): like trained weights, the features then depend strongly on the input."""
    model = keras.applications.InceptionV3(include_top=include_top, weights=None, input_shape=(299, 299, 3),
                                           pooling=None if include_top else "avg")
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(np.random.default_rng(seed).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = 0.99
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(headless model, its .weights.h5 path)."""
    model = random_inception(include_top=False, seed=0)
    path = str(tmp_path_factory.mktemp("inception") / "random_notop.weights.h5")
    model.save_weights(path)
    return model, path


def test_features_equal_keras_pool_of_resized_images(weights):
    model, path = weights
    ext = features.get_feature_extractor("inception", inception_weights=path)
    assert ext.name.startswith("inception_v3:") and ext.info["weights"] == path
    assert ext.info["weights_sha1"].startswith(ext.name.split(":")[1]) and not ext.info["include_top_file"]
    imgs = np.random.default_rng(1).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    feats = ext(imgs, batch_size=2)                                           # two batches, the last one padded
    assert feats.shape == (3, 2048)
    x = bilinear_upsample(imgs, 299).astype(np.float32)
    ref = model.predict(x, verbose=0)
    # pool_3: the spatial mean of the last Inception block ('mixed10'), from a separate Keras graph
    mixed10 = keras.Model(model.inputs, model.get_layer("mixed10").output).predict(x, verbose=0)
    np.testing.assert_allclose(ref, mixed10.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(feats, ref, rtol=1e-3, atol=1e-4 * scale)
    # different images give clearly different features (the loaded weights are really used)
    assert np.abs(feats[0] - feats[1]).max() > 0.02 * scale


def test_grayscale_is_repeated_to_rgb(weights):
    _, path = weights
    ext = inception.inception_extractor(path)
    gray = np.random.default_rng(2).uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(ext(gray), ext(np.repeat(gray, 3, axis=-1)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="C = 1"):
        ext(np.zeros((2, 8, 8, 2), np.float32))


@pytest.mark.parametrize("include_top", [False, True])
def test_legacy_h5_files_with_and_without_head(tmp_path, include_top):
    """Keras's published ImageNet files are in the legacy HDF5 layout; the one with the classifier head loads too."""
    from keras.src.legacy.saving import legacy_h5_format
    model = random_inception(include_top, seed=3)
    path = str(tmp_path / f"legacy_top{int(include_top)}.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    pool = keras.Model(model.inputs, model.get_layer("avg_pool").output) if include_top else model
    imgs = np.random.default_rng(4).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    ref = pool.predict(bilinear_upsample(imgs, 299).astype(np.float32), verbose=0)
    ext = inception.inception_extractor(path)
    assert ext.info["include_top_file"] == include_top
    np.testing.assert_allclose(ext(imgs), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_bad_weights_files(tmp_path, weights):
    _, path = weights
    with pytest.raises(ValueError, match="needs inception_weights"):
        features.get_feature_extractor("inception")
    with pytest.raises(ValueError, match="does not exist"):
        inception.inception_extractor(str(tmp_path / "missing.h5"))
    bad = tmp_path / "garbage.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="could not be loaded into Keras's InceptionV3"):
        inception.inception_extractor(str(bad))
    cut = tmp_path / "cut.weights.h5"                                        # one layer's weights missing
    shutil.copy(path, cut)
    with h5py.File(cut, "a") as f:
        del f["layers"][next(k for k in f["layers"] if k.startswith("conv2d"))]
    with pytest.raises(ValueError, match="could not be loaded"):
        inception.inception_extractor(str(cut))
    other = tmp_path / "other.weights.h5"                                    # valid Keras weights, wrong network
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save_weights(str(other))
    with pytest.raises(ValueError, match="could not be loaded"):
        inception.inception_extractor(str(other))


def test_experiment_config_fields(tmp_path, weights):
    _, path = weights
    parse = lambda **kw: config_lib.parse(config_lib.ImageEvalConfig, kw, "eval")
    with pytest.raises(ValueError, match=r"config\.eval\.inception_weights must be the path"):
        parse(features="inception", inception_weights="")
    with pytest.raises(ValueError, match="is not a file"):
        parse(features="inception", inception_weights=str(tmp_path / "nope.h5"))
    with pytest.raises(ValueError, match="only used with config.eval.features='inception'"):
        parse(features="pixels", inception_weights=path)
    ext = images.make_extractor(parse(features="inception", inception_weights=path), None, str(tmp_path), seed=0)
    assert ext.name.startswith("inception_v3:")
    parse(features="pixels")
