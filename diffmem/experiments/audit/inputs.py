"""The audit's inputs: the generated images (an .npz or a folder), the training set, the reference set, and the exact
duplicates inside a set. Every image is float32 (n, H, W, C) in [-1, 1]; nothing is resized implicitly."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional

import numpy as np

from diffmem import data as data_lib
from diffmem.eval import images as eval_images
from diffmem.experiments.audit.settings import Settings


@dataclasses.dataclass(frozen=True)
class Samples:
    """The generated images (m, H, W, C) in [-1, 1], their file names (folders; None for an .npz) and where they
    came from (path, kind, key, stored dtype and shape, how many were stored)."""
    images: np.ndarray
    names: Optional[list[str]]
    source: dict


def _npz_images(s: Settings) -> tuple[np.ndarray, str]:
    path = s.samples
    with np.load(path, allow_pickle=False) as f:
        key = next((k for k in s.samples_keys if k in f.files), None)
        if key is None:
            raise ValueError(f"config.samples={path!r}: the .npz holds none of config.samples_keys "
                             f"{list(s.samples_keys)}; its keys: {f.files}")
        return f[key], key


def read_samples(s: Settings) -> Samples:
    """config.samples: a folder ('folder:' rules of diffmem.data) or an .npz array under the first of
    config.samples_keys; uint8 is 0..255, floats are in [-1, 1] or [0, 1] (config.float_range), values outside
    are an error unless config.clip_samples; NHWC only. The first config.num_samples (0 = all); channels converted
    only on request (config.samples_channels, `convert_channels`)."""
    path = s.samples
    if os.path.isdir(path):
        try:
            d = data_lib.load_images(f"folder:{path}")
        except ValueError as e:
            raise ValueError(f"config.samples={path!r}: {e}") from None
        images, key, stored = d.images, None, ("uint8", (d.n,) + d.image_shape)
        names = [os.path.relpath(p, path) for p in data_lib.folder_files(path)[0]]
    elif os.path.isfile(path) and path.endswith(".npz"):
        arr, key = _npz_images(s)
        stored, names = (str(arr.dtype), tuple(arr.shape)), None
        if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
            raise ValueError(f"config.samples={path!r}[{key!r}] has shape {arr.shape}, which looks like NCHW; "
                             f"diffmem reads NHWC (n, H, W, C): save np.transpose(x, (0, 2, 3, 1))")
        if np.issubdtype(arr.dtype, np.floating):
            lo, hi = (0.0, 1.0) if s.float_range == "0,1" else (-1.0, 1.0)
            arr = arr.astype(np.float32)
            if s.clip_samples:
                arr = np.clip(arr, lo, hi)
            elif np.isfinite(arr).all() and (arr.min() < lo or arr.max() > hi):
                raise ValueError(f"config.samples={path!r}[{key!r}]: float values in [{arr.min():.4g}, "
                                 f"{arr.max():.4g}] leave config.float_range={s.float_range!r}; set "
                                 f"config.clip_samples=True to clip them (sampler overshoot) or fix the range")
            arr = 2.0 * arr - 1.0 if s.float_range == "0,1" else arr
        images = data_lib.to_unit_range(arr, what=f"config.samples={path!r}[{key!r}]")
    else:
        raise ValueError(f"config.samples={path!r}: expected an existing .npz file (key 'images', 'samples' or "
                         f"'arr_0') or a folder of PNG / JPEG files")
    total = len(images)
    if s.num_samples:
        images, names = images[:s.num_samples], None if names is None else names[:s.num_samples]
    images = convert_channels(images, s.samples_channels, f"config.samples={path!r}")
    return Samples(images=np.ascontiguousarray(images), names=names,
                   source=dict(path=path, kind="folder" if names is not None else "npz", key=key,
                               stored_dtype=stored[0], stored_shape=list(stored[1]), num_stored=total))


def convert_channels(images: np.ndarray, channels: int, what: str) -> np.ndarray:
    """channels 0: as stored; 3: grayscale (C = 1) repeated to RGB; 1: RGB with R = G = B exactly (a grayscale
    image saved as RGB) to one channel; anything else is an error (no lossy colour conversion)."""
    c = images.shape[-1]
    if channels in (0, c):
        return images
    if channels == 3 and c == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and c == 3:
        gray = (images[..., 0] == images[..., 1]) & (images[..., 1] == images[..., 2])
        if not gray.all():
            raise ValueError(f"{what}: samples_channels=1 needs grayscale images stored as RGB (R = G = B), but "
                             f"{int((~gray.reshape(len(images), -1).all(1)).sum())} images have colour")
        return images[..., :1]
    raise ValueError(f"{what}: cannot turn {c}-channel images into {channels} channels")


def load_training(s: Settings) -> tuple[data_lib.ImageData, Optional[list[str]]]:
    """The training images of config.train / config.data (all, or the seeded n-subset), and their file names for a
    folder source."""
    d = s.data
    try:
        train = data_lib.load_images(s.train, n=d.n or None, seed=d.seed, data_dir=d.directory, crop=d.crop,
                                     pool=d.pool)
    except ValueError as e:
        raise ValueError(f"config.train={s.train!r}: {e}") from None
    if train.n < 2:
        raise ValueError(f"config.train={s.train!r}: the criterion needs at least 2 training images, got {train.n}")
    names = None
    if s.train.startswith("folder:"):
        root = s.train[len("folder:"):]
        paths = data_lib.folder_files(root)[0]
        names = [os.path.relpath(paths[i], root) for i in train.indices]
    return train, names


def check_shapes(samples: Samples, train: data_lib.ImageData) -> None:
    """The samples and the training images must share (H, W, C); the error says which setting makes them agree."""
    (hs, ws, cs), (ht, wt, ct) = samples.images.shape[1:], train.image_shape
    if (hs, ws, cs) == (ht, wt, ct):
        return
    hints = []
    if cs != ct:
        hints.append(f"config.samples_channels={ct}" if (cs, ct) in ((1, 3), (3, 1)) else "other images")
    if (hs, ws) != (ht, wt):
        if ht % hs == 0 and wt % ws == 0 and ht // hs == wt // ws:
            hints.append(f"config.data.pool={ht // hs} (average-pool the training images)")
        else:
            hints.append("config.data.crop / config.data.pool to bring the training images to the samples' size")
    raise ValueError(f"the samples are {hs}x{ws}x{cs} but the training images {ht}x{wt}x{ct}; diffmem never "
                     f"resizes implicitly: use {' and '.join(hints)}")


@dataclasses.dataclass(frozen=True)
class AuditReference:
    """The reference set of the quality metrics (images, the labelled pool a feature classifier trains on, kind),
    how many of its images are exact copies of training images, and the others (held-out real images: the
    calibration of the memorization criterion; None for kind 'train')."""
    ref: eval_images.Reference
    in_train: int
    heldout: Optional[np.ndarray]


def load_reference(s: Settings, train: data_lib.ImageData) -> Optional[AuditReference]:
    """config.reference: 'none' (None), 'train' (the training images), 'heldout' / 'test' (eval.images
    load_reference on config.train) or a data source name (all its images, cropped / pooled like the training
    images), capped at a seeded random config.eval.num_ref (0 = all)."""
    kind, d, ev = s.reference, s.data, s.eval
    if kind == "none":
        return None
    if kind == "train":
        return AuditReference(eval_images.Reference(train.images, train, "train", False), train.n, None)
    try:
        if kind in ("heldout", "test"):
            ref = eval_images.load_reference(d, ev, train)
        else:
            pool = data_lib.load_images(kind, n=None, seed=d.seed, data_dir=d.directory, crop=d.crop, pool=d.pool)
            idx = np.arange(pool.n)
            if ev.num_ref and ev.num_ref < pool.n:
                idx = np.sort(np.random.default_rng(d.seed).permutation(pool.n)[:ev.num_ref])
            ref = eval_images.Reference(pool.images[idx], pool, kind, True)
    except ValueError as e:
        raise ValueError(f"config.reference={kind!r}: {e}") from None
    if ref.images.shape[1:] != train.images.shape[1:]:
        raise ValueError(f"config.reference={kind!r}: its images are {ref.images.shape[1:]}, the training images "
                         f"{train.images.shape[1:]}")
    seen = set(row_digests(train.images))
    in_train = np.array([h in seen for h in row_digests(ref.images)], bool)
    ref = dataclasses.replace(ref, disjoint=not in_train.any())
    return AuditReference(ref, int(in_train.sum()), ref.images[~in_train] if (~in_train).any() else None)


def row_digests(images: np.ndarray) -> list[bytes]:
    """SHA-1 of every image's float32 bytes (-0.0 counted as 0.0, as value equality does)."""
    x = np.ascontiguousarray(np.asarray(images, np.float32).reshape(len(images), -1) + np.float32(0.0))
    return [hashlib.sha1(row.tobytes()).digest() for row in x]


def duplicate_groups(images: np.ndarray) -> list[np.ndarray]:
    """The groups (index arrays, ascending, ordered by first index) of exactly equal images, each of size >= 2."""
    groups: dict[bytes, list[int]] = {}
    for i, h in enumerate(row_digests(images)):
        groups.setdefault(h, []).append(i)
    return [np.asarray(g) for g in groups.values() if len(g) > 1]
