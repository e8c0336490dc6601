"""Tests for diffmem.metrics: exact top-2 search, memorization criterion, FD, KID, precision/recall,
feature extractors."""
import json
import os

import chex
import jax
import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import load_digits

from diffmem.eval import distribution, features, images, neighbors


def _brute_knn(q, x, k):
    """float64 numpy reference: distances and stable-argsort indices of the k nearest."""
    d = np.sqrt(((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1))
    o = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, o, 1), o


@pytest.fixture(scope="module")
def rand_data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(37, 6)).astype(np.float32), rng.normal(size=(101, 6)).astype(np.float32))


# ---------------------------------------------------------------- nearest neighbours

@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_top2_matches_brute_force(rand_data, chunk):
    q, x = rand_data
    dist, idx = neighbors.top2_neighbors(q, x, chunk=chunk)
    ref_d, ref_i = _brute_knn(q, x, 2)
    chex.assert_shape([dist, idx], (37, 2))
    np.testing.assert_array_equal(np.asarray(idx), ref_i)
    np.testing.assert_allclose(np.asarray(dist), ref_d, rtol=1e-5)


def test_top2_query_chunks_images_and_knn(rand_data):
    q, x = rand_data
    ref_d, ref_i = _brute_knn(q, x, 5)
    d, i = neighbors.top2_neighbors(q, x, chunk=9, query_chunk=10)  # 37 = 3 * 10 + 7
    np.testing.assert_array_equal(np.asarray(i), ref_i[:, :2])
    # images (b, H, W, C) are flattened
    d_img, i_img = neighbors.top2_neighbors(q.reshape(37, 1, 2, 3), x.reshape(101, 1, 2, 3), chunk=9)
    np.testing.assert_array_equal(np.asarray(i_img), ref_i[:, :2])
    dk, ik = neighbors.knn(q, x, 5, chunk=16)
    np.testing.assert_array_equal(np.asarray(ik), ref_i)
    np.testing.assert_allclose(np.asarray(dk), ref_d, rtol=1e-5)


def test_top2_accurate_for_near_copies_far_from_origin():
    # Large norms (offset 300) make ||q||^2 - 2 q.x + ||x||^2 lose ~1e-2 absolute in float32; the exact
    # re-ranking must still return the 1e-3 distance of a near-copy to 1e-3 relative.
    rng = np.random.default_rng(1)
    x = (300.0 + rng.normal(size=(50, 16))).astype(np.float32)
    delta = np.zeros(16, np.float32)
    delta[0] = 1e-3
    q = x[[4, 17]] + delta
    dist, idx = neighbors.top2_neighbors(q, x, chunk=8)
    ref_d, ref_i = _brute_knn(q, x, 2)
    np.testing.assert_array_equal(np.asarray(idx), ref_i)
    np.testing.assert_allclose(np.asarray(dist), ref_d, rtol=1e-3)
    assert np.asarray(idx)[:, 0].tolist() == [4, 17]


def test_ties_go_to_lower_index():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], np.float32)
    dist, idx = neighbors.top2_neighbors(np.zeros((1, 2), np.float32), x, chunk=1)
    np.testing.assert_array_equal(np.asarray(idx), [[0, 1]])
    np.testing.assert_allclose(np.asarray(dist), [[1.0, 1.0]])


@pytest.mark.parametrize("n,chunk", [(103, 7), (5, 2048), (2, 1)])
def test_sharded_equals_single_device(n, chunk):
    assert jax.device_count() == 4
    rng = np.random.default_rng(n)
    q = rng.normal(size=(29, 5)).astype(np.float32)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    d1, i1 = neighbors.top2_neighbors(q, x, chunk=chunk)
    d4, i4 = neighbors.top2_neighbors_sharded(q, x, chunk=chunk)
    np.testing.assert_array_equal(np.asarray(i4), np.asarray(i1))
    np.testing.assert_allclose(np.asarray(d4), np.asarray(d1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(i1), _brute_knn(q, x, 2)[1])


def test_nn_bad_inputs(rand_data):
    q, x = rand_data
    with pytest.raises(ValueError, match="same point shape"):
        neighbors.top2_neighbors(q, x[:, :5])
    with pytest.raises(ValueError, match="at least 2"):
        neighbors.top2_neighbors(q, x[:1])
    with pytest.raises(ValueError, match="at least 2"):
        neighbors.top2_neighbors_sharded(q, x[:1])
    bad = q.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="queries contains NaN"):
        neighbors.top2_neighbors(bad, x)
    with pytest.raises(ValueError, match="chunk"):
        neighbors.top2_neighbors(q, x, chunk=0)
    with pytest.raises(ValueError, match="ndim"):
        neighbors.top2_neighbors(q[0], x)


# ---------------------------------------------------------------- memorization criterion

def test_memorization_hand_built():
    train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    samples = np.array([[10.0, 0.0],   # exact copy of train[1]: d1 = 0 -> memorized
                        [5.0, 0.0],    # midpoint of train[0], train[1]: d1 = d2 -> not
                        [0.1, 0.0],    # slightly off train[0]: 0.1 < 9.9 / 3 -> memorized
                        [2.0, 0.0],    # 2 < 8 / 3 -> memorized
                        [3.0, 0.0]],   # 3 > 7 / 3 -> not
                       np.float32)
    out = neighbors.memorization(samples, train)
    np.testing.assert_array_equal(out["memorized"], [True, False, True, True, False])
    np.testing.assert_array_equal(out["nn_idx"][:, 0], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(out["nn_dist"][:, 0], [0.0, 5.0, 0.1, 2.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(out["dist_ratio"], [0.0, 1.0, 0.1 / 9.9, 0.25, 3.0 / 7.0], rtol=1e-5)
    assert out["memorization_ratio"] == pytest.approx(3 / 5)
    # a looser threshold flips the last one; the sharded path agrees
    assert neighbors.memorization(samples, train, ratio=0.5)["memorized"].tolist() == [True, False, True,
                                                                                       True, True]
    sh = neighbors.memorization(samples, train, sharded=True)
    np.testing.assert_array_equal(sh["memorized"], out["memorized"])
    np.testing.assert_array_equal(sh["nn_idx"], out["nn_idx"])


def test_memorization_duplicates():
    train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 0.0], [0.0, 10.0]], np.float32)  # 0 and 2 equal
    samples = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 9.5]], np.float32)
    strict = neighbors.memorization(samples, train)
    # a copy of a duplicated point has NN1 = NN2 = 0: not memorized by the strict criterion
    assert strict["memorized"].tolist() == [False, True, True]
    np.testing.assert_array_equal(strict["nn_idx"][0], [0, 2])
    assert strict["dist_ratio"][0] == 1.0
    assert strict["n_unique"] == 4
    dd = neighbors.memorization(samples, train, dedupe=True)
    assert dd["memorized"].tolist() == [True, True, True]
    assert dd["n_unique"] == 3 and dd["n_train"] == 4
    # indices refer to the original training set (first occurrence kept)
    np.testing.assert_array_equal(dd["nn_idx"][:, 0], [0, 1, 3])
    with pytest.raises(ValueError, match="fewer than 2 distinct"):
        neighbors.memorization(samples, np.zeros((3, 2), np.float32), dedupe=True)


def test_memorization_bad_inputs():
    train = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="at least 2"):
        neighbors.memorization(train[:2], train[:1])
    with pytest.raises(ValueError, match="same point shape"):
        neighbors.memorization(train[:, :2], train)
    with pytest.raises(ValueError, match="ratio"):
        neighbors.memorization(train, train, ratio=1.5)
    bad = train.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="samples contains NaN"):
        neighbors.memorization(bad, train)
    with pytest.raises(ValueError, match="train contains NaN"):
        neighbors.memorization(train, bad)


# ---------------------------------------------------------------- Frechet distance

def test_fd_identical_and_exact_shift():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    scale = 2 * np.trace(np.cov(f1, rowvar=False))
    assert abs(distribution.frechet_distance(f1, f1)) < 1e-6 * scale
    c = np.linspace(-1.0, 2.0, 8)
    assert distribution.frechet_distance(f1, f1 + c) == pytest.approx(c @ c, rel=1e-8)
    # rank-deficient covariances (m < f) are fine too
    g = rng.normal(size=(5, 12))
    assert abs(distribution.frechet_distance(g, g)) < 1e-6 * 2 * np.trace(np.cov(g, rowvar=False))


def test_fd_matches_scipy_on_sample_statistics():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 5)), 0.5 + 2.0 * rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert distribution.frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def test_fd_gaussians_closed_form():
    rng = np.random.default_rng(0)
    f = 3
    A, B = rng.normal(size=(f, f)), rng.normal(size=(f, f))
    s1, s2 = A @ A.T / f + 0.5 * np.eye(f), B @ B.T / f + 0.2 * np.eye(f)
    mu1, mu2 = np.zeros(f), np.array([0.5, -0.3, 0.2])
    true = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    m = 20000
    a = rng.multivariate_normal(mu1, s1, m)
    b = rng.multivariate_normal(mu2, s2, m)
    # sampling std of the estimate ~ sqrt(4 d'(S1+S2)d/m + 2(|S1|_F^2+|S2|_F^2)/m) (~2x the measured
    # std over 30 seeds); allow 4 of these (the cross term 2 tr((S1 S2)^1/2) is ~0.9 here)
    d = mu1 - mu2
    std = np.sqrt(4 * d @ (s1 + s2) @ d / m + 2 * ((s1 ** 2).sum() + (s2 ** 2).sum()) / m)
    assert abs(distribution.frechet_distance(a, b) - true) < 4 * std
    assert 4 * std < 0.2


def test_fd_bad_inputs():
    a = np.ones((10, 3))
    with pytest.raises(ValueError, match="feature dimension"):
        distribution.frechet_distance(a, np.ones((10, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        distribution.frechet_distance(a[:1], a)
    bad = a.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        distribution.frechet_distance(a, bad)
    with pytest.raises(ValueError, match=r"\(m, f\)"):
        distribution.frechet_distance(np.ones((10, 2, 2)), a)


# ---------------------------------------------------------------- KID

def test_kid_full_set_matches_explicit_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), 0.3 + rng.normal(size=(7, 3))
    k = lambda u, v: (u @ v / 3 + 1.0) ** 3  # noqa: E731
    s = 7
    kxx = sum(k(x[i], x[j]) for i in range(s) for j in range(s) if i != j) / (s * (s - 1))
    kyy = sum(k(y[i], y[j]) for i in range(s) for j in range(s) if i != j) / (s * (s - 1))
    kxy = sum(k(x[i], y[j]) for i in range(s) for j in range(s)) / s ** 2
    mean, std = distribution.kid(x, y, subsets=3, subset_size=7, seed=1)  # a full subset is a permutation
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    assert std < 1e-10


def test_kid_same_vs_shifted_distribution():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    mean, std = distribution.kid(f1, f2, subsets=50, subset_size=100, seed=0)
    assert std > 0 and abs(mean) < std
    mean_s, std_s = distribution.kid(f1, f2 + 0.5, subsets=50, subset_size=100, seed=0)
    assert mean_s > 5 * std_s > 0
    # same seed -> same numbers
    assert distribution.kid(f1, f2, subsets=50, subset_size=100, seed=0) == (mean, std)


def test_kid_bad_inputs():
    a = np.ones((10, 3))
    with pytest.raises(ValueError, match="subset_size"):
        distribution.kid(a, a, subset_size=11)
    with pytest.raises(ValueError, match="feature dimension"):
        distribution.kid(a, np.ones((10, 2)))


# ---------------------------------------------------------------- precision / recall

def _brute_pr(real, fake, k):
    drr = np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1))
    dff = np.sqrt(((fake[:, None] - fake[None]) ** 2).sum(-1))
    dfr = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))
    rr, rf = np.sort(drr, 1)[:, k], np.sort(dff, 1)[:, k]
    return (dfr <= rr[None]).any(1).mean(), (dfr.T <= rf[None]).any(1).mean()


def test_precision_recall_identities_and_hand_case():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4)).astype(np.float32)
    assert distribution.precision_recall(real, real) == dict(precision=1.0, recall=1.0)
    assert distribution.precision_recall(real, real + 100.0) == dict(precision=0.0, recall=0.0)
    # 1-D, k = 1: real radii [1, 1, 1, 1]; fake radii [0.3, 0.3, 1, 1].
    # fake 0.5, 0.8 lie within 1 of real 0/1; 6, 7 are > 1 from 3  -> precision 2/4
    # real 1 is within 0.3 of fake 0.8; 0, 2, 3 are outside every fake ball -> recall 1/4
    r = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    f = np.array([[0.5], [0.8], [6.0], [7.0]], np.float32)
    assert distribution.precision_recall(r, f, k=1, chunk=3) == dict(precision=0.5, recall=0.25)


@pytest.mark.parametrize("k,chunk", [(3, 2048), (2, 17)])
def test_precision_recall_matches_brute_force(k, chunk):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(150, 3))
    fake = 0.7 * rng.normal(size=(120, 3)) + np.array([0.8, 0.0, 0.0])
    p, r = _brute_pr(real, fake, k)
    assert 0.1 < p < 1.0 and 0.1 < r < 1.0  # a non-trivial case
    out = distribution.precision_recall(real.astype(np.float32), fake.astype(np.float32), k=k, chunk=chunk)
    assert out["precision"] == pytest.approx(p) and out["recall"] == pytest.approx(r)


def test_precision_recall_reuses_the_reference_radii_only_for_the_same_reference():
    """Many sample sets against one reference compute its k-NN radii once (cached by content); each result still
    equals brute force, and a reference that differs in one value gets its own radii."""
    rng = np.random.default_rng(5)
    real = rng.normal(size=(150, 3)).astype(np.float32)
    distribution._REAL_RADII.clear()
    for i in range(3):
        fake = (0.7 * rng.normal(size=(120, 3)) + np.array([0.3 * i, 0.0, 0.0])).astype(np.float32)
        out = distribution.precision_recall(real, fake, k=3)
        p, r = _brute_pr(real.astype(np.float64), fake.astype(np.float64), 3)
        assert out["precision"] == pytest.approx(p) and out["recall"] == pytest.approx(r)
    assert len(distribution._REAL_RADII) == 1
    moved = real.copy()
    moved[0, 0] += 5.0
    out = distribution.precision_recall(moved, fake, k=3)
    p, r = _brute_pr(moved.astype(np.float64), fake.astype(np.float64), 3)
    assert out["precision"] == pytest.approx(p) and out["recall"] == pytest.approx(r)
    assert len(distribution._REAL_RADII) == 2


def test_precision_recall_bad_inputs():
    a = np.ones((10, 3), np.float32)
    with pytest.raises(ValueError, match="more than k"):
        distribution.precision_recall(a[:3], a, k=3)
    with pytest.raises(ValueError, match="same point shape"):
        distribution.precision_recall(a, np.ones((10, 2), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        distribution.precision_recall(a, a, k=0)


# ---------------------------------------------------------------- feature extractors, image metrics

def _digits():
    d = load_digits()
    return (d.images / 16.0 * 2.0 - 1.0)[..., None].astype(np.float32), d.target


def test_classifier_extractor_trains_caches_and_reloads(tmp_path):
    images, labels = _digits()
    kw = dict(widths=(32, 64), features=64, steps=300)
    ext = features.get_feature_extractor("classifier", images, labels, str(tmp_path), **kw)
    assert ext.name == "classifier" and not ext.info["cached"]
    assert ext.info["test_accuracy"] > 0.9
    meta = json.loads((tmp_path / "feature_net" / "meta.json").read_text())
    assert meta["test_accuracy"] == ext.info["test_accuracy"]
    assert os.path.exists(tmp_path / "feature_net" / "params.msgpack")
    again = features.get_feature_extractor("classifier", images, labels, str(tmp_path), **kw)
    assert again.info["cached"] and again.info["test_accuracy"] == ext.info["test_accuracy"]
    f1, f2 = ext(images[:300], batch_size=128), again(images[:300], batch_size=128)
    chex.assert_shape(f1, (300, 64))
    np.testing.assert_array_equal(f1, f2)
    with pytest.raises(ValueError, match="different data or settings"):
        features.get_feature_extractor("classifier", images, labels, str(tmp_path), widths=(32, 64),
                                      steps=301)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        features.get_feature_extractor("classifier", images * 16, labels, None, **kw)


def test_extractor_kinds():
    imgs = np.random.default_rng(0).uniform(-1, 1, size=(5, 4, 4, 3)).astype(np.float32)
    pix = features.get_feature_extractor("pixels")
    np.testing.assert_array_equal(pix(imgs, batch_size=2), imgs.reshape(5, 48))
    user = features.get_feature_extractor(lambda x: np.asarray(x).mean(axis=(1, 2)))
    np.testing.assert_allclose(user(imgs), imgs.mean(axis=(1, 2)), rtol=1e-6)
    with pytest.raises(ValueError, match="needs inception_weights"):
        features.get_feature_extractor("inception")
    with pytest.raises(ValueError, match="kind must be"):
        features.get_feature_extractor("vgg")
    with pytest.raises(ValueError, match="needs labelled images"):
        features.get_feature_extractor("classifier")
    with pytest.raises(ValueError, match=r"must return \(b, f\)"):
        features.FeatureExtractor("bad", lambda x: np.zeros(len(x)))(imgs)


def test_image_metrics_with_user_callable():
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, size=(60, 4, 4, 1)).astype(np.float32)
    ref = rng.uniform(-1, 1, size=(50, 4, 4, 1)).astype(np.float32)
    samples = np.concatenate([train[:10], rng.uniform(-1, 1, size=(30, 4, 4, 1)).astype(np.float32)])

    def my_features(x):  # a user-supplied extractor: any callable (b, H, W, C) -> (b, f)
        return np.asarray(x).reshape(len(x), -1)[:, :6] * 2.0

    out = images.image_metrics(samples, train, ref, my_features, k=3, kid_subsets=5, kid_subset_size=20)
    assert out["extractor"] == "my_features" and out["n_samples"] == 40 and out["n_ref"] == 50
    assert out["memorization_ratio"] == pytest.approx(
        neighbors.memorization(samples, train)["memorization_ratio"])
    assert out["memorization_ratio"] >= 10 / 40
    fr, ff = my_features(ref), my_features(samples)
    assert out["fd"] == pytest.approx(distribution.frechet_distance(fr, ff))
    assert (out["kid_mean"], out["kid_std"]) == pytest.approx(distribution.kid(fr, ff, 5, 20, 0))
    pr = distribution.precision_recall(fr, ff, 3)
    assert (out["precision"], out["recall"]) == (pr["precision"], pr["recall"])
    with pytest.raises(ValueError, match="image shape"):
        images.image_metrics(samples[:, :2], train, ref, my_features)
