"""Memorization of a DiT against the training-set size (arXiv 2511.03202, Section 6.2's setting).

  python -m diffmem.main --config=configs/train_dit.py --workdir=runs/train_dit              # cpu (default)
  python -m diffmem.main --config=configs/train_dit.py:smoke --workdir=runs/train_dit_smoke  # seconds (tests)
  python -m diffmem.main --config=configs/train_dit.py:cifar10 --workdir=runs/train_dit_c10  # accelerators

Presets:
  smoke    a tiny DiT on 8x8 digits, a few steps and samples, pixel features: checks the plumbing only (an
           untrained model's samples are far off the data, its numbers are meaningless).
  cpu      DiT (patch 4, hidden 128, depth 2, 8 heads) on scikit-learn's 8x8 digits, n in {64, 128, 256, 1024},
           16,000 steps of batch 32 for every n (8,000 epochs at n = 64, 500 at n = 1024).
  cifar10  DiT-S/2 on a random 5,000-image CIFAR-10 subset (tfds:cifar10, prepared as array_record; see
           diffmem/data.py), reference = the 10,000 test images; 10,000 samples. For GPUs/TPUs.
Every n of `ns` trains its own model in <workdir>/n<n>/; re-running with the same workdir resumes.
"""
import ml_collections

from configs import common

PRESETS = ("smoke", "cpu", "cifar10")


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in PRESETS:
        raise ValueError(f"configs/train_dit.py: preset must be one of {PRESETS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "train_dit"
    c.seed = 0                    # model init, training stream and sampler keys (diffmem.rng streams)
    c.preset = arg
    c.data = common.image_data()
    c.ns = (64, 128, 256, 1024)   # nested subsets: the first n of one seeded permutation
    c.model = common.dit(patch=4, hidden=128, depth=2, heads=8)
    c.diffusion = common.diffusion()
    c.train = common.train(steps=16_000, batch_size=32, lr=2e-3, warmup_steps=100, ema_decay=0.995, log_every=200,
                           ckpt_every=2000)
    c.sampler = common.sampler(num_samples=1000, steps=100, batch_size=500)
    c.eval = common.image_eval()
    c.progress = True

    if arg == "smoke":
        c.ns = (16, 32)
        c.model.update(patch=2, hidden=32, depth=1, heads=2)
        c.train.update(steps=20, batch_size=16, log_every=5, ckpt_every=20, warmup_steps=0)
        c.sampler.update(num_samples=16, steps=8, batch_size=16)
        # pixel features: no classifier to train (the classifier path is the cpu default's)
        c.eval.update(num_ref=200, features="pixels", kid_subsets=5, grid_samples=8)
        c.progress = False
    elif arg == "cifar10":
        c.data.update(name="tfds:cifar10")
        c.ns = (5000,)
        c.model.update(name="S/2", patch=0, hidden=0, depth=0, heads=0)
        # DiT recipe (AdamW, lr 1e-4 constant, no decay, EMA 0.9999); 200k steps = 5,120 epochs of the 5k subset
        # (whether this memorizes like the paper's 74% is unverified).
        c.train.update(steps=200_000, batch_size=128, lr=1e-4, warmup_steps=0, ema_decay=0.9999, log_every=500,
                       ckpt_every=10_000)
        c.sampler.update(num_samples=10_000, steps=250, batch_size=1000)
        c.eval.update(reference="test", feature_steps=4000, kid_subsets=100, grid_samples=64)
    return c
