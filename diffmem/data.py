"""Image data for training diffusion models (arXiv 2511.03202, Section 6.2: a random 5,000-image CIFAR-10 subset).

Sources (the `name` argument of `load_images`):
  * 'digits'           scikit-learn's bundled 8x8 digits (1797 images, 1 channel, values 0..16); the offline
                       default. It has no split: split='train' means all images.
  * 'tfds:<name>'      any TFDS image dataset with an 'image' feature (and optional 'label'), e.g. 'tfds:cifar10',
                       'tfds:mnist', 'tfds:fashion_mnist', 'tfds:mnist:3.0.1'. Read with `tfds.data_source`
                       (ArrayRecord random access, no tensorflow needed); only the chosen records are decoded.
                       Never downloads: an unprepared dataset fails at once with instructions.
  * 'npz:<path>'       an .npz with 'images' (n, H, W[, C]) and optional 'labels' (n,) / 'num_classes' (scalar).
  * 'idx:<dir>'        MNIST-format IDX files: <prefix>-images[-.]idx3-ubyte[.gz] and
                       <prefix>-labels[-.]idx1-ubyte[.gz] with prefix 'train' (split='train') or 't10k' / 'test'
                       (split='test').
  * 'folder:<dir>'     a folder of PNG / JPEG files (.png, .jpg, .jpeg, any case; other and hidden files are
                       ignored), read with Pillow in sorted file-name order (`folder_files`). Labels from class
                       sub-folders (ImageFolder layout <dir>/<class>/<file>, classes = the sorted sub-folder names,
                       one level deep) or -1 when the images lie in <dir> itself (both at once is an error). Modes:
                       8-bit grayscale 'L' -> 1 channel, 'RGB' -> 3; an alpha channel is dropped only when fully
                       opaque; palette / 1-bit images are expanded losslessly; anything else (16-bit, CMYK,
                       transparency) is an error. Every image must have the same size and channel count: nothing
                       is resized or converted between grayscale and RGB (crop / pool apply afterwards, to the
                       equal-size images). It has no split: split='train' means all images.

Pixel range, decided by dtype (never by the values): uint8 is read as 0..255 and mapped to [-1, 1] by
x / 127.5 - 1; floating point is taken as already in [-1, 1] (it must be finite and inside [-1, 1]); any other
dtype is rejected. Images are returned as float32 (n, H, W, C).

Subsets: `subset_indices` draws a uniformly random subset of size n from a numpy Generator seeded with `seed`
(one permutation of range(N); the first n, or the first n / K of every class when class-balanced), returned
sorted. It only depends on (N, n, seed[, labels]), so the same seed picks the same indices whatever the source.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ACCEPTED_NAMES = ("'digits'", "'tfds:<name>' (e.g. 'tfds:cifar10', 'tfds:mnist')", "'npz:<path>'",
                  "'idx:<dir>'", "'folder:<dir>' (PNG / JPEG files)")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # 'folder:' sources, compared lower-case


@dataclasses.dataclass(frozen=True, eq=False)
class ImageData:
    """An image set (or a traceable subset of one).

    images: float32 (n, H, W, C) in [-1, 1]; labels: int32 (n,), -1 where unknown; indices: int64 (n,), the
    positions of these images in the source split; name: the `load_images` name (plus split); num_classes: number
    of classes of the source (0 when it has no labels).
    """
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    name: str
    num_classes: int

    def __post_init__(self):
        if not isinstance(self.images, np.ndarray) or self.images.ndim != 4 or self.images.dtype != np.float32:
            raise ValueError("images must be a float32 np.ndarray of shape (n, H, W, C), got "
                             f"{type(self.images).__name__} {getattr(self.images, 'dtype', None)} "
                             f"{getattr(self.images, 'shape', None)}")
        n = self.images.shape[0]
        for field, dtype in (("labels", np.int32), ("indices", np.int64)):
            value = getattr(self, field)
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != (n,):
                raise ValueError(f"{field} must be a {np.dtype(dtype).name} np.ndarray of shape ({n},), got "
                                 f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', None)}")
        bad = (self.labels < -1) | (self.labels >= self.num_classes)
        if self.num_classes < 0 or np.any(bad):
            raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}) or be -1 (unknown), got "
                             f"{self.labels[bad][:5].tolist()}")

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[1:])


# ----------------------------------------------------------------------------------------------------------------
# Pixel conversion and subsets (pure numpy).


def to_unit_range(images: np.ndarray, what: str = "images") -> np.ndarray:
    """uint8 0..255 -> x / 127.5 - 1; float must already be finite and in [-1, 1]. Returns float32 (n, H, W, C).

    Accepts (n, H, W) (one channel added) or (n, H, W, C).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0 or min(images.shape[1:]) <= 0:
        raise ValueError(f"{what} must have shape (n, H, W) or (n, H, W, C) with n, H, W, C > 0, "
                         f"got {images.shape}")
    if images.dtype == np.uint8:
        return (images.astype(np.float32) / np.float32(127.5) - np.float32(1.0))
    if np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
        finite = np.isfinite(images)
        if not finite.all():
            raise ValueError(f"{what} contain {int((~finite).sum())} NaN/inf values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.0 or hi > 1.0:
            raise ValueError(f"{what}: float images must lie in [-1, 1] (give uint8 0..255 otherwise), "
                             f"got range [{lo}, {hi}]")
        return images
    raise ValueError(f"{what} must be uint8 (0..255) or floating point (in [-1, 1]), got dtype {images.dtype}")


def _check_labels(labels: Any, n: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}")
    if n and labels.min() < 0:
        raise ValueError(f"{what} must be >= 0, got min {labels.min()}")
    return labels.astype(np.int64)


def subset_indices(num_available: int, n: int | None, seed: int, labels: np.ndarray | None = None,
                   class_balanced: bool = False, num_classes: int | None = None) -> np.ndarray:
    """Sorted int64 indices of a random subset of range(num_available) of size n (all when n is None).

    One permutation of range(num_available) from np.random.default_rng(seed); the subset is its first n entries,
    or, when class_balanced, the first n / num_classes entries of every class (labels: (num_available,) in
    [0, num_classes)).
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if n is not None and not 0 < n <= num_available:
        raise ValueError(f"n must be in [1, {num_available}] (the available size), got n={n}")
    if not class_balanced:
        if n is None:
            return np.arange(num_available, dtype=np.int64)
        perm = np.random.default_rng(seed).permutation(num_available)
        return np.sort(perm[:n]).astype(np.int64)
    if labels is None or num_classes is None or num_classes <= 0:
        raise ValueError("class_balanced=True needs labelled data (this source has no labels)")
    labels = np.asarray(labels)
    if labels.shape != (num_available,) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must have shape ({num_available},) and values in [0, {num_classes}), got shape "
                         f"{labels.shape} and range [{labels.min()}, {labels.max()}]")
    counts = np.bincount(labels, minlength=num_classes)
    if n is None:
        if counts.min() != counts.max():
            raise ValueError(f"class_balanced=True with n=None needs equal class sizes, got counts "
                             f"{counts.tolist()}; pass n (a multiple of {num_classes}, at most "
                             f"{num_classes * counts.min()})")
        return np.arange(num_available, dtype=np.int64)
    if n % num_classes:
        raise ValueError(f"class_balanced=True needs n divisible by num_classes={num_classes}, got n={n}")
    per_class = n // num_classes
    if per_class > counts.min():
        raise ValueError(f"class_balanced=True with n={n} needs {per_class} images per class but class "
                         f"{int(counts.argmin())} has only {int(counts.min())} (at most n="
                         f"{num_classes * int(counts.min())})")
    perm = np.random.default_rng(seed).permutation(num_available)
    chosen = [perm[labels[perm] == c][:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _finish(images: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, name: str,
            num_classes: int) -> ImageData:
    images = to_unit_range(images, what=f"images of {name}")
    labels = (np.full(len(indices), -1, np.int32) if labels is None else labels.astype(np.int32))
    return ImageData(images=np.ascontiguousarray(images), labels=labels, indices=indices.astype(np.int64),
                     name=name, num_classes=int(num_classes))


def _require_train_split(split: str, source: str) -> None:
    if split != "train":
        raise ValueError(f"split must be 'train' for {source} (it has no splits; 'train' means all images), "
                         f"got {split!r}")


# ----------------------------------------------------------------------------------------------------------------
# Sources.


def _load_digits(n, seed, split, class_balanced) -> ImageData:
    from sklearn.datasets import load_digits
    _require_train_split(split, "'digits'")
    digits = load_digits()
    images = digits.images.astype(np.float32) / np.float32(8.0) - np.float32(1.0)  # (1797, 8, 8), 0..16 -> [-1, 1]
    labels = digits.target.astype(np.int64)
    idx = subset_indices(len(images), n, seed, labels, class_balanced, 10)
    return _finish(images[idx], labels[idx], idx, "digits", 10)


def _load_npz(path, n, seed, split, class_balanced) -> ImageData:
    _require_train_split(split, "'npz:' files")
    if not os.path.isfile(path):
        raise ValueError(f"name 'npz:{path}': no such file")
    with np.load(path, allow_pickle=False) as f:
        if "images" not in f.files:
            raise ValueError(f"name 'npz:{path}': the .npz needs an 'images' array, found keys {f.files}")
        images = f["images"]
        if images.ndim not in (3, 4):
            raise ValueError(f"'images' in {path} must have shape (n, H, W) or (n, H, W, C), got {images.shape}")
        labels = _check_labels(f["labels"], len(images), f"'labels' in {path}") if "labels" in f.files else None
        if "num_classes" in f.files:
            num_classes = int(f["num_classes"])
            if labels is not None and labels.size and labels.max() >= num_classes:
                raise ValueError(f"'labels' in {path} must be < num_classes={num_classes}, got max {labels.max()}")
        else:
            num_classes = int(labels.max()) + 1 if labels is not None and labels.size else 0
    idx = subset_indices(len(images), n, seed, labels, class_balanced, num_classes)
    return _finish(images[idx], None if labels is None else labels[idx], idx, f"npz:{path}", num_classes)


_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
    """Parses an IDX file (LeCun's MNIST format; gzip allowed): 2 zero bytes, a dtype byte, ndim, then ndim
    big-endian uint32 dims and the big-endian data. Plain files are memory-mapped (only indexed rows are read)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
            raise ValueError(f"{path} is not an IDX file (bad magic {head!r})")
        dtype, ndim = _IDX_DTYPES[head[2]], head[3]
        shape = tuple(int(d) for d in np.frombuffer(f.read(4 * ndim), ">u4"))
        offset = 4 + 4 * ndim
        size = math.prod(shape)
        if opener is open:
            if os.path.getsize(path) != offset + size * dtype.itemsize:
                raise ValueError(f"{path}: size {os.path.getsize(path)} does not match the header shape {shape}")
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        data = f.read()
    if len(data) != size * dtype.itemsize:
        raise ValueError(f"{path}: {len(data)} data bytes do not match the header shape {shape}")
    return np.frombuffer(data, dtype).reshape(shape)


def _find_idx(directory: str, prefixes: Sequence[str], kind: str, rank: int) -> str | None:
    found = []
    for prefix in prefixes:
        for sep in ("-", "."):
            for ext in ("", ".gz"):
                found += glob.glob(os.path.join(directory, f"{prefix}-{kind}{sep}idx{rank}-ubyte{ext}"))
    if len(found) > 1:
        raise ValueError(f"name 'idx:{directory}': several {kind} files match: {sorted(found)}")
    return found[0] if found else None


def _load_idx(directory, n, seed, split, class_balanced) -> ImageData:
    prefixes = {"train": ("train",), "test": ("t10k", "test")}
    if split not in prefixes:
        raise ValueError(f"split must be 'train' or 'test' for 'idx:' directories, got {split!r}")
    if not os.path.isdir(directory):
        raise ValueError(f"name 'idx:{directory}': no such directory")
    image_path = _find_idx(directory, prefixes[split], "images", 3)
    if image_path is None:
        raise ValueError(f"name 'idx:{directory}': no {prefixes[split][0]}-images-idx3-ubyte[.gz] file "
                         f"for split {split!r}; found {sorted(os.listdir(directory))}")
    images = read_idx(image_path)
    if images.ndim not in (3, 4):
        raise ValueError(f"{image_path} must hold (n, H, W) or (n, H, W, C) images, got shape {images.shape}")
    label_path = _find_idx(directory, prefixes[split], "labels", 1)
    labels = None
    if label_path is not None:
        labels = _check_labels(np.asarray(read_idx(label_path)), len(images), f"labels in {label_path}")
    num_classes = int(labels.max()) + 1 if labels is not None and labels.size else 0
    idx = subset_indices(len(images), n, seed, labels, class_balanced, num_classes)
    return _finish(np.asarray(images[idx]), None if labels is None else labels[idx], idx,
                   f"idx:{directory}:{split}", num_classes)


def folder_files(directory: str) -> tuple[list[str], np.ndarray, list[str]]:
    """The images of a 'folder:' source: (paths in load order, labels (N,) int64, class names).

    Files with an IMAGE_EXTENSIONS suffix (any case; hidden files ignored) directly in `directory` (labels -1, no
    classes), or in its sub-folders (labels = index of the sub-folder in the sorted names of those holding images);
    sorted by file name (within a class). Index i of `load_images('folder:<dir>')` is paths[i].
    """
    if not os.path.isdir(directory):
        raise ValueError(f"name 'folder:{directory}': no such directory")

    def images_in(d):
        return sorted(f for f in os.listdir(d) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                      and os.path.isfile(os.path.join(d, f)))

    top = images_in(directory)
    subs = sorted(e for e in os.listdir(directory) if not e.startswith(".")
                  and os.path.isdir(os.path.join(directory, e)))
    classes = [c for c in subs if images_in(os.path.join(directory, c))]
    if top and classes:
        raise ValueError(f"name 'folder:{directory}': holds images both directly ({len(top)}, e.g. {top[0]!r}) and in "
                         f"class sub-folders ({classes[:3]}); use one layout: <dir>/<file> (no labels) or "
                         f"<dir>/<class>/<file>")
    if top:
        return [os.path.join(directory, f) for f in top], np.full(len(top), -1, np.int64), []
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = images_in(os.path.join(directory, c))
        paths += [os.path.join(directory, c, f) for f in files]
        labels += [k] * len(files)
    if not paths:
        raise ValueError(f"name 'folder:{directory}': no {'/'.join(IMAGE_EXTENSIONS)} files in it or in its "
                         f"sub-folders")
    return paths, np.asarray(labels, np.int64), classes


def read_image_file(path: str) -> np.ndarray:
    """One PNG / JPEG file as uint8 (H, W, C), C = 1 ('L') or 3 ('RGB'); see the module doc for the modes."""
    try:
        from PIL import Image
    except ImportError as e:  # matplotlib depends on Pillow, so this is only a broken install
        raise ValueError("'folder:' sources need Pillow (pip install pillow)") from e
    try:
        with Image.open(path) as im:
            if im.mode == "1":
                im = im.convert("L")                     # bilevel: 0 / 255, lossless
            elif im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")   # palette: lossless
            mode = im.mode
            if mode not in ("L", "LA", "RGB", "RGBA"):
                raise ValueError(f"{path}: image mode {mode!r} is not supported; accepted: 8-bit grayscale ('L') or "
                                 f"RGB, with a fully opaque alpha channel allowed (convert the file)")
            a = np.asarray(im)
    except OSError as e:
        raise ValueError(f"{path}: not a readable PNG / JPEG file ({e})") from None
    a = a[..., None] if a.ndim == 2 else a
    if mode in ("LA", "RGBA"):
        if (a[..., -1] != 255).any():
            raise ValueError(f"{path}: the alpha channel is not fully opaque; diffmem does not composite "
                             f"transparency (convert the file to 'L' or 'RGB')")
        a = a[..., :-1]
    return np.ascontiguousarray(a, np.uint8)


def _examples(groups: dict, what) -> str:
    return ", ".join(f"{len(v)} {what(k)} (e.g. {os.path.basename(v[0])!r})" for k, v in sorted(groups.items()))


def _load_folder(directory, n, seed, split, class_balanced) -> ImageData:
    _require_train_split(split, "'folder:' directories")
    paths, labels, classes = folder_files(directory)
    idx = subset_indices(len(paths), n, seed, labels if classes else None, class_balanced, len(classes))
    arrays = [read_image_file(paths[i]) for i in idx]
    sizes, modes = {}, {}
    for i, a in zip(idx, arrays):
        sizes.setdefault(a.shape[:2], []).append(paths[i])
        modes.setdefault(a.shape[2], []).append(paths[i])
    if len(sizes) > 1:
        raise ValueError(f"name 'folder:{directory}': images differ in size: "
                         f"{_examples(sizes, lambda s: f'of {s[0]}x{s[1]}')}; diffmem never resizes: make the files "
                         f"one size first (crop / pool then apply to the equal-size images)")
    if len(modes) > 1:
        raise ValueError(f"name 'folder:{directory}': images mix grayscale and RGB: "
                         f"{_examples(modes, lambda c: 'grayscale' if c == 1 else 'RGB')}; diffmem converts "
                         f"neither way implicitly: convert the files to one mode")
    return _finish(np.stack(arrays), labels[idx] if classes else None, idx, f"folder:{directory}", len(classes))


def _tfds_data_dir(data_dir) -> str:
    return os.fspath(data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets"))


def _not_prepared_message(ds_name: str, data_dir) -> str:
    base = ds_name.split(":")[0].split("/")[0]
    where = _tfds_data_dir(data_dir)
    return (
        f"TFDS dataset {ds_name!r} is not prepared under data_dir={where!r} (diffmem never downloads). "
        f"Prepare it once, on a machine with internet (or with the files in a manual_dir):\n"
        f"  pip install -e '.[tfds-prepare]'   (from the diffmem checkout; diffmem is not on PyPI)\n"
        f"  python -c \"import tensorflow_datasets as tfds; tfds.builder('{base}', data_dir='{where}', "
        f"file_format='array_record').download_and_prepare()\"\n"
        f"(file_format='array_record' is required: tfds.data_source needs random access; for a manual download "
        f"add download_config=tfds.download.DownloadConfig(manual_dir=...)). Then copy the directory here if "
        f"needed and pass data_dir=... or set TFDS_DATA_DIR to it.")


def _open_tfds(ds_name: str, split: str, data_dir, **kwargs):
    """tfds.data_source(download=False), with every failure turned into a ValueError that says what to do."""
    import tensorflow_datasets as tfds
    try:
        return tfds.data_source(ds_name, split=split, data_dir=data_dir, download=False, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"name 'tfds:{ds_name}': TFDS knows no such dataset and none is prepared under "
                         f"{_tfds_data_dir(data_dir)!r} ({str(e).splitlines()[0]})") from e
    except Exception as e:  # noqa: BLE001 - re-raised below with instructions
        try:
            prepared = tfds.builder(ds_name, data_dir=data_dir).is_prepared()
        except Exception:  # noqa: BLE001
            prepared = False
        if not prepared:
            raise ValueError(_not_prepared_message(ds_name, data_dir)) from e
        raise ValueError(
            f"TFDS dataset {ds_name!r} (split={split!r}) under {_tfds_data_dir(data_dir)!r} could not be opened "
            f"for random access: {type(e).__name__}: {e}. If it was prepared as TFRecord, prepare it again with "
            f"tfds.builder(..., file_format='array_record').download_and_prepare().") from e


def _tfds_all_labels(source, open_skip_image) -> np.ndarray:
    """Labels of every record. Tries a second data source that skips image decoding (real ArrayRecord data);
    tfds.testing.mock_data cannot serve undecoded images without tensorflow, so fall back to full records."""
    try:
        fast = open_skip_image()
        return np.array([int(np.asarray(fast[i]["label"])) for i in range(len(fast))], np.int64)
    except ModuleNotFoundError:
        return np.array([int(np.asarray(source[i]["label"])) for i in range(len(source))], np.int64)


def _load_tfds(ds_name, n, seed, split, class_balanced, data_dir) -> ImageData:
    source = _open_tfds(ds_name, split, data_dir)
    features = source.dataset_info.features
    if "image" not in features.keys():
        raise ValueError(f"name 'tfds:{ds_name}': needs an 'image' feature, found {list(features.keys())}")
    has_labels = "label" in features.keys() and hasattr(features["label"], "num_classes")
    num_classes = int(features["label"].num_classes) if has_labels else 0
    labels_all = None
    if class_balanced and has_labels:
        import tensorflow_datasets as tfds
        labels_all = _tfds_all_labels(source, lambda: _open_tfds(
            ds_name, split, data_dir, decoders={"image": tfds.decode.SkipDecoding()}))
    idx = subset_indices(len(source), n, seed, labels_all, class_balanced, num_classes)
    records = [source[int(i)] for i in idx]  # random access: only the chosen records are read and decoded
    shapes = {np.shape(r["image"]) for r in records}
    if len(shapes) != 1:
        raise ValueError(f"name 'tfds:{ds_name}': images have different shapes {sorted(shapes)[:5]}; "
                         "only fixed-size image datasets are supported")
    images = np.stack([np.asarray(r["image"]) for r in records])  # (n, H, W, C)
    labels = np.array([int(np.asarray(r["label"])) for r in records], np.int64) if has_labels else None
    return _finish(images, labels, idx, f"tfds:{ds_name}:{split}", num_classes)


def load_images(name: str = "digits", n: int | None = None, seed: int = 0, split: str = "train",
                class_balanced: bool = False, data_dir: str | os.PathLike | None = None, crop: int = 0,
                pool: int = 1) -> ImageData:
    """Loads a deterministic subset of an image set as float32 (n, H, W, C) in [-1, 1] (see the module doc).

    n=None takes all images; otherwise a random subset of size n chosen by `seed` (class-balanced on request:
    n / num_classes images of every class). data_dir is the TFDS data directory (default $TFDS_DATA_DIR or
    ~/tensorflow_datasets); other sources ignore it. crop > 0 center-crops to crop x crop pixels, then pool > 1
    average-pools pool x pool blocks (`resize`); the name records both.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a str, one of {', '.join(ACCEPTED_NAMES)}; got {name!r}")
    kind, _, rest = name.partition(":")
    if name == "digits":
        d = _load_digits(n, seed, split, class_balanced)
    elif kind in ("tfds", "npz", "idx", "folder") and rest:
        loader = {"tfds": lambda: _load_tfds(rest, n, seed, split, class_balanced, data_dir),
                  "npz": lambda: _load_npz(rest, n, seed, split, class_balanced),
                  "idx": lambda: _load_idx(rest, n, seed, split, class_balanced),
                  "folder": lambda: _load_folder(rest, n, seed, split, class_balanced)}[kind]
        d = loader()
    else:
        raise ValueError(f"name must be one of {', '.join(ACCEPTED_NAMES)}; got {name!r}")
    return resize(d, crop, pool)


def resize(d: ImageData, crop: int = 0, pool: int = 1) -> ImageData:
    """Center crop to crop x crop pixels (0 = off; crop <= H, W and H - crop, W - crop even), then pool x pool
    average pooling (1 = off; the size must be divisible by pool). Explicit only: nothing else resizes images."""
    for name, v, lo in (("crop", crop, 0), ("pool", pool, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    x = d.images
    h, w = x.shape[1:3]
    if crop:
        if crop > min(h, w) or (h - crop) % 2 or (w - crop) % 2:
            raise ValueError(f"crop={crop} must be <= the image size {h}x{w} and leave an even margin on each axis")
        top, left = (h - crop) // 2, (w - crop) // 2
        x = x[:, top:top + crop, left:left + crop]
    if pool > 1:
        h, w = x.shape[1:3]
        if h % pool or w % pool:
            raise ValueError(f"pool={pool} must divide the (cropped) image size {h}x{w}")
        x = x.reshape(x.shape[0], h // pool, pool, w // pool, pool, x.shape[3]).mean((2, 4))
    if x is d.images:
        return d
    tag = "".join(t for t in (f":crop{crop}" if crop else "", f":pool{pool}" if pool > 1 else ""))
    return dataclasses.replace(d, images=np.ascontiguousarray(x, np.float32), name=d.name + tag)


# ----------------------------------------------------------------------------------------------------------------
# On device.


def to_device(data: ImageData | np.ndarray, sharding: jax.sharding.Sharding | None = None) -> Array:
    """Puts the images (n, H, W, C) on device (default device, or `sharding`, e.g. a NamedSharding over n)."""
    images = data.images if isinstance(data, ImageData) else np.asarray(data)
    if sharding is not None:
        try:
            sharding.shard_shape(images.shape)
        except ValueError as e:
            raise ValueError(f"sharding {sharding} does not divide images of shape {images.shape}: {e}") from e
    return jax.device_put(images, sharding)


def sample_batch(key: Array, images: Array, batch_size: int, num_valid: Array | int | None = None) -> Array:
    """(batch_size, H, W, C) images drawn uniformly with replacement (jittable; batch_size static).

    num_valid (optional, may be traced): draw only from the first num_valid rows, for a padded array shared by a
    sweep over n (one vmap, one jit).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (n, ...) with n > 0, got {images.shape}")
    maxval = images.shape[0] if num_valid is None else num_valid
    idx = jax.random.randint(key, (int(batch_size),), 0, maxval)  # (b,)
    return jnp.take(images, idx, axis=0)
