"""Feature extractors: a `FeatureExtractor` maps images (b, H, W, C) in [-1, 1] to features (b, f)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from diffmem.eval.neighbors import _check_chunk


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A named feature map: fn(images (b, H, W, C) in [-1, 1]) -> features (b, f).

    `info` carries provenance (e.g. the classifier's test accuracy and cache path).
    Calling it maps a whole image array in batches of `batch_size` and returns float32 numpy (b, f).
    """
    name: str
    fn: Callable[[Any], Any]
    info: dict = dataclasses.field(default_factory=dict)

    def __call__(self, images, batch_size: int = 256) -> np.ndarray:
        _check_chunk("batch_size", batch_size)
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"images must have shape (b, H, W, C), got {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or inf values")
        b = images.shape[0]
        out = []
        for s in range(0, b, batch_size):
            blk = images[s:s + batch_size]
            pad = batch_size - blk.shape[0] if b > batch_size else 0  # fixed shape: one compilation
            if pad:
                blk = np.concatenate([blk, np.zeros((pad,) + blk.shape[1:], blk.dtype)])
            feats = np.asarray(self.fn(blk), np.float32)
            if feats.ndim != 2 or feats.shape[0] != blk.shape[0]:
                raise ValueError(f"feature extractor {self.name!r} must return (b, f) for b={blk.shape[0]} "
                                 f"images, got shape {feats.shape}")
            out.append(feats[:feats.shape[0] - pad])
        return np.concatenate(out, axis=0)


def as_feature_extractor(obj) -> FeatureExtractor:
    """Accepts a FeatureExtractor, an object with `name` and `fn`, or a plain callable images -> (b, f)."""
    if isinstance(obj, FeatureExtractor):
        return obj
    if hasattr(obj, "fn") and hasattr(obj, "name") and callable(obj.fn):
        return FeatureExtractor(str(obj.name), obj.fn, dict(getattr(obj, "info", {}) or {}))
    if callable(obj):
        return FeatureExtractor(getattr(obj, "__name__", type(obj).__name__), obj)
    raise ValueError(f"extractor must be a FeatureExtractor or a callable images -> (b, f), got {obj!r}")


def pixels(images):
    return jnp.reshape(images, (images.shape[0], -1))

