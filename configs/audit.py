"""Audit your own samples: memorization of generated images against a training set (arXiv 2511.03202, Section 6's
criterion), with intervals, duplicates, quality metrics and calibration (diffmem/experiments/audit).

  python -m diffmem.main --config=configs/audit.py --workdir=runs/audit \
      --config.samples=samples.npz --config.train=folder:/data/train_pngs
  python -m diffmem.main --config=configs/audit.py:inception --workdir=runs/audit_c10 \
      --config.samples=/data/edm_samples --config.train=tfds:cifar10 --config.reference=test \
      --config.eval.inception_weights=/weights/inception_v3.h5

config.samples: an .npz (first of samples_keys: 'images', 'samples', 'arr_0'; uint8 0..255 or float in [-1, 1] /
[0, 1] by float_range; NHWC) or a folder of PNG / JPEG files. config.train: a diffmem.data source ('digits',
'tfds:<name>', 'npz:<path>', 'idx:<dir>', 'folder:<dir>'); config.data.n / seed pick a seeded subset (0 = all),
crop / pool make its images the samples' size. config.reference: 'train' (FD etc. against the training images),
'heldout' (config.train's images outside the n-subset), 'test', 'none', or another data source (e.g. held-out
images in 'folder:<dir>'); its images that are not training images calibrate the criterion.

Presets:
  default    pixel features (images up to 4096 values, e.g. 32x32x3), reference = the training images.
  smoke      the tests' settings: pixel features, 5 KID subsets, an 8-sample grid.
  inception  InceptionV3 features (set config.eval.inception_weights): any image size.
"""
import ml_collections

from configs import common

PRESETS = ("default", "smoke", "inception")


def get_config(arg=None):
    arg = arg or "default"
    if arg not in PRESETS:
        raise ValueError(f"configs/audit.py: preset must be one of {PRESETS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "audit"
    c.seed = 0                          # the subsets' draws: KID subsets, the copier's draws
    c.preset = arg
    c.samples = ""                      # required: .npz or folder
    c.samples_keys = ("images", "samples", "arr_0")
    c.num_samples = 0                   # 0 = all
    c.float_range = "-1,1"              # float samples: '-1,1' or '0,1' (uint8 is always 0..255)
    c.clip_samples = False              # clip float samples to float_range (else out-of-range is an error)
    c.samples_channels = 0              # 0 = as stored; 1 = RGB with R = G = B -> gray; 3 = gray -> RGB
    c.train = ""                        # required: a diffmem.data source
    c.reference = "train"
    c.level = 0.95                      # the Wilson interval's level
    c.data = ml_collections.ConfigDict(dict(n=0, seed=0, data_dir="", crop=0, pool=1))
    c.eval = common.image_eval(features="pixels")
    del c.eval["reference"]             # config.reference decides it
    if arg == "smoke":
        c.eval.update(kid_subsets=5, grid_samples=8)
    elif arg == "inception":
        c.eval.update(features="inception")
    return c
