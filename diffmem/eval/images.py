"""Image evaluation shared by the image experiments: the reference set, the feature extractor, and the metrics of a
set of samples (memorization in pixel space against the training images, arXiv 2511.03202 Section 6; FD / KID /
precision-recall of features against the reference set), with the two baselines that put them in scale: a perfect
copier and real unseen images.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from diffmem import data as data_lib
from diffmem.config import ImageDataConfig, ImageEvalConfig
from diffmem.eval import features
from diffmem.eval.distribution import feature_metrics, frechet_distance, kid, precision_recall
from diffmem.eval.neighbors import DEFAULT_CHUNK, memorization

# Extractor provenance copied into results.json.
FEATURE_INFO = ("test_accuracy", "cached", "weights", "weights_sha1", "implementation")


@dataclasses.dataclass(frozen=True)
class Reference:
    """Reference images for the quality metrics and the labelled pool the feature classifier trains on."""
    images: np.ndarray      # (r, H, W, C)
    pool: data_lib.ImageData
    kind: str
    disjoint: bool          # no reference image is a training image


def load_reference(data: ImageDataConfig, ev: ImageEvalConfig, training: data_lib.ImageData) -> Reference:
    """The reference set of config.eval.reference: 'heldout' (the split's images outside `training`, the largest
    training subset), 'test' (the test split) or 'all' (the whole split), cropped / pooled like the training
    images; capped at a seeded random num_ref."""
    kind, seed = ev.reference, data.seed
    try:
        pool = data_lib.load_images(data.name, n=None, seed=seed, split="test" if kind == "test" else "train",
                                    data_dir=data.directory, crop=data.crop, pool=data.pool)
    except ValueError as e:
        raise ValueError(f"config.eval.reference={kind!r}: {e}") from None
    idx = np.arange(pool.n)
    if kind == "heldout":
        keep = np.ones(pool.n, bool)
        keep[training.indices] = False
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            raise ValueError(f"config.eval.reference='heldout' needs fewer training images ({training.n}) than the "
                             f"dataset holds ({pool.n}); use 'all' or 'test'")
    if ev.num_ref and ev.num_ref < idx.size:
        idx = np.sort(np.random.default_rng(seed).permutation(idx)[: ev.num_ref])
    if idx.size <= ev.k:
        raise ValueError(f"config.eval.reference={kind!r} leaves {idx.size} reference images; need more than "
                         f"config.eval.k={ev.k}")
    if pool.image_shape != training.image_shape:
        raise ValueError(f"reference images {pool.image_shape} and training images {training.image_shape} differ")
    return Reference(images=pool.images[idx], pool=pool, kind=kind, disjoint=kind != "all")


def make_extractor(ev: ImageEvalConfig, pool: data_lib.ImageData, workdir: str, seed: int
                   ) -> features.FeatureExtractor:
    """config.eval.features: 'classifier' (trained on the pool's labels, cached in <workdir>/feature_net),
    'pixels' or 'inception' (from config.eval.inception_weights)."""
    if ev.features == "pixels":
        return features.get_feature_extractor("pixels")
    if ev.features == "inception":
        return features.get_feature_extractor("inception", inception_weights=ev.inception_weights)
    if (pool.labels < 0).any():
        raise ValueError(f"config.eval.features='classifier' needs labelled images; {pool.name} has none "
                         "(use features='pixels' or 'inception')")
    return features.get_feature_extractor("classifier", pool.images, pool.labels, workdir,
                                          steps=ev.feature_steps, seed=seed)


def feature_info(extractor: features.FeatureExtractor) -> dict:
    return {k: v for k, v in extractor.info.items() if k in FEATURE_INFO}


def fd_caveat(name: str) -> str:
    """How an FD on these features compares with the paper's FID."""
    if name.startswith("inception"):
        return ("Keras InceptionV3 weights: FD comparable across runs with the same weights, not to published FIDs "
                "of the TTUR Inception graph")
    return "not Inception: not comparable to the paper's FID"


def evaluate_samples(samples, train_images, ref_features: np.ndarray, extractor, *, k: int = 3,
                     ratio: float = 1.0 / 3.0, kid_subsets: int = 100, seed: int = 0,
                     batch_size: int = 256) -> tuple[dict, dict]:
    """Memorization (pixel space, vs train_images) and FD / KID / precision-recall of the samples' features
    against reference features (r, f).

    samples (m, H, W, C), train_images (n, H, W, C) in [-1, 1]. Returns (summary of Python numbers incl. the
    binomial standard error of the memorization ratio, the `memorization` output with the per-sample arrays
    memorized, nn_idx, nn_dist, dist_ratio).
    """
    samples = np.asarray(samples, np.float32)
    if not np.isfinite(samples).all():
        raise ValueError(f"samples contain {int((~np.isfinite(samples)).sum())} NaN/inf values "
                         "(diverged sampler or model)")
    mem = memorization(samples, train_images, ratio)
    r, m = mem["memorization_ratio"], len(samples)
    summary = dict(memorization_ratio=r, memorization_stderr=math.sqrt(r * (1 - r) / m),
                   num_memorized=int(mem["memorized"].sum()), mean_nn1_dist=float(mem["nn_dist"][:, 0].mean()),
                   median_dist_ratio=float(np.median(mem["dist_ratio"])))
    summary.update(feature_metrics(extractor(samples, batch_size=batch_size), ref_features, k=k,
                                   kid_subsets=kid_subsets, seed=seed))
    return summary, mem


def copy_baseline(train_images: np.ndarray, num: int, extractor, ref_features: np.ndarray, ev: ImageEvalConfig,
                  seed: int) -> dict:
    """The numbers of a perfect copier: `num` draws with replacement from the training images (what a sampler that
    only returns training points, e.g. the empirical score's, produces; memorization 1 up to duplicates)."""
    idx = np.random.default_rng(seed).integers(0, len(train_images), num)
    copies = train_images[idx]
    out = feature_metrics(extractor(copies), ref_features, k=ev.k, kid_subsets=ev.kid_subsets, seed=seed)
    out["memorization_ratio"] = memorization(copies, train_images, ev.ratio)["memorization_ratio"]
    return out


def image_metrics(samples, train_images, ref_images, extractor, *, k: int = 3, ratio: float = 1.0 / 3.0,
                  dedupe: bool = False, kid_subsets: int = 100, kid_subset_size: int | None = None,
                  seed: int = 0, chunk: int = DEFAULT_CHUNK, batch_size: int = 256,
                  sharded: bool = False) -> dict[str, Any]:
    """Memorization (pixel space, vs train_images) and FD / KID / precision-recall (features, vs ref_images).

    samples (m, H, W, C), train_images (n, H, W, C), ref_images (r, H, W, C), all in [-1, 1];
    extractor: a FeatureExtractor or a callable images -> (b, f).
    Returns Python numbers: memorization_ratio, fd, kid_mean, kid_std, precision, recall, plus
    extractor (its name), k, n_samples, n_ref.
    """
    shapes = {name: np.shape(a) for name, a in
              (("samples", samples), ("train_images", train_images), ("ref_images", ref_images))}
    for name, s in shapes.items():
        if len(s) != 4:
            raise ValueError(f"{name} must have shape (b, H, W, C), got {s}")
    if len({s[1:] for s in shapes.values()}) != 1:
        raise ValueError(f"samples, train_images and ref_images must share the image shape, got {shapes}")
    ext = features.as_feature_extractor(extractor)
    mem = memorization(samples, train_images, ratio, dedupe=dedupe, chunk=chunk, sharded=sharded)
    f_fake = ext(samples, batch_size=batch_size)
    f_real = ext(ref_images, batch_size=batch_size)
    kid_mean, kid_std = kid(f_real, f_fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    pr = precision_recall(f_real, f_fake, k, chunk=chunk)
    return dict(memorization_ratio=mem["memorization_ratio"], fd=frechet_distance(f_real, f_fake),
                kid_mean=kid_mean, kid_std=kid_std, precision=pr["precision"], recall=pr["recall"],
                extractor=ext.name, k=int(k), n_samples=int(shapes["samples"][0]),
                n_ref=int(shapes["ref_images"][0]))