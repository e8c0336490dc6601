"""The settings of the audit (configs/audit.py), as typed schemas, and the small pure pieces they decide."""
from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np

from diffmem import config as config_lib
from diffmem import data as data_lib
from diffmem.config import ImageDataConfig, ImageEvalConfig, Schema, field

REFERENCE_KINDS = ("train", "heldout", "test", "none")   # or any diffmem.data source name
FLOAT_RANGES = ("-1,1", "0,1")
MAX_PIXEL_FEATURES = 4096      # features='pixels': FD needs a (D, D) covariance and its square root


@dataclasses.dataclass(frozen=True)
class TrainImagesConfig(ImageDataConfig):
    """The training images (config.data; the source itself is config.train): all of them (n = 0) or the seeded
    random subset of n images that diffmem.data.load_images(train, n, seed) picks (a train_dit / prune_dit
    training set: the same n and seed), cropped / pooled explicitly (crop, pool; nothing else resizes)."""
    n: int = field(0, min=0, help="0 = every image of the source")


@dataclasses.dataclass(frozen=True)
class Settings(Schema):
    """configs/audit.py, validated. config.reference replaces config.eval.reference (fixed from it)."""
    experiment: str = field("audit", choices=("audit",))
    seed: int = field(0, min=0)
    preset: str = field("")
    samples: str = field("", help="an .npz or a folder of PNG / JPEG files")
    samples_keys: tuple[str, ...] = field(("images", "samples", "arr_0"), nonempty=True)
    num_samples: int = field(0, min=0, help="0 = all; else the first num_samples")
    float_range: str = field("-1,1", choices=FLOAT_RANGES)
    clip_samples: bool = field(False, help="clip float samples to float_range (else out-of-range is an error)")
    samples_channels: int = field(0, choices=(0, 1, 3), help="0 = as stored")
    train: str = field("")
    reference: str = field("train")
    level: float = field(0.95, min=0, max=1, min_open=True, max_open=True)
    data: TrainImagesConfig = field(TrainImagesConfig())
    eval: ImageEvalConfig = field(ImageEvalConfig())

    def check(self):
        if not self.samples:
            raise self.fail("samples", "must be the path of an .npz (key 'images', 'samples' or 'arr_0') or of a "
                                       "folder of PNG / JPEG files, got ''")
        if self.reference not in REFERENCE_KINDS and ":" not in self.reference:
            raise self.fail("reference", f"must be one of {REFERENCE_KINDS} or a data source name "
                                         f"({', '.join(data_lib.ACCEPTED_NAMES)}), got {self.reference!r}")
        if self.reference == "heldout" and not self.data.n:
            raise self.fail("reference", "'heldout' needs config.data.n > 0 (the images of config.train outside "
                                         "the training subset); with every image as training data use 'train', "
                                         "'test' or another source")


def parse_config(config) -> Settings:
    """ConfigDict -> Settings: config.train becomes config.data.name, config.reference config.eval.reference."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    train, ref = d.get("train", ""), d.get("reference", "train")
    if not isinstance(train, str) or not train:
        raise ValueError(f"config.train must be a data source name, one of {', '.join(data_lib.ACCEPTED_NAMES)}; "
                         f"got {train!r}")
    d.setdefault("data", {})
    d.setdefault("eval", {})
    fixed_ref = ref if ref in ("heldout", "test") else "all"
    return config_lib.parse_config(Settings, d, **{"data.name": train, "eval.reference": fixed_ref})


def wilson_interval(k: int, m: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / m (k memorized of m samples): with z the normal
    (1 + level) / 2 quantile and p = k / m, (p + z^2 / 2m +- z sqrt(p (1 - p) / m + z^2 / 4m^2)) / (1 + z^2 / m).
    Unlike the bootstrap it does not collapse to a point at k = 0 or k = m."""
    if m < 1 or not 0 <= k <= m:
        raise ValueError(f"need 0 <= k <= m and m >= 1, got k={k}, m={m}")
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = k / m, z * z
    centre = (p + z2 / (2 * m)) / (1 + z2 / m)
    half = z * math.sqrt(p * (1 - p) / m + z2 / (4 * m * m)) / (1 + z2 / m)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == m else min(1.0, centre + half))


def proportion(flags, level: float) -> dict:
    """{ratio, count, n, ci_low, ci_high, level, method} of a (m,) bool array."""
    flags = np.asarray(flags, bool)
    k, m = int(flags.sum()), int(flags.size)
    lo, hi = wilson_interval(k, m, level)
    return dict(ratio=k / m, count=k, n=m, ci_low=lo, ci_high=hi, level=level, method="Wilson score interval")
