"""Train a DiT on an n-image subset, sample it, measure memorization and quality (PAPER.md section 4).

  python -m diffmem.main --config=configs/train_dit.py --workdir=runs/train_dit              # cpu (default)
  python -m diffmem.main --config=configs/train_dit.py:smoke --workdir=runs/train_dit_smoke  # seconds (tests)
  python -m diffmem.main --config=configs/train_dit.py:cifar10 --workdir=runs/train_dit_c10  # accelerators

Presets:
  smoke    a tiny DiT on 8x8 digits, a few steps and samples, pixel features: checks the plumbing only (an
           untrained model's samples are far off the data, its numbers are meaningless).
  cpu      DiT (patch 4, hidden 128, depth 2, 8 heads; 0.68M parameters) on scikit-learn's 8x8 digits,
           n in {64, 128, 256, 1024}, 16,000 steps of batch 32 for every n (so 8,000 epochs at n = 64, 500 at
           n = 1024): n = 64 memorizes most of its samples, n = 128 some, n >= 256 none. About 10 CPU-minutes.
  cifar10  DiT-S/2 on a random 5,000-image CIFAR-10 subset (tfds:cifar10, prepared as array_record; see
           diffmem/data.py), reference = the 10,000 test images; 10,000 samples. For GPUs/TPUs.
Every n of `ns` trains its own model in <workdir>/n<n>/; re-running with the same workdir resumes.
"""
import ml_collections


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in ("smoke", "cpu", "cifar10"):
        raise ValueError(f"configs/train_dit.py: arg must be 'smoke', 'cpu' or 'cifar10', got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "train_dit"
    c.seed = 0                    # model init, training stream and sampler keys
    c.preset = arg

    # Training images: data.load_images(name, n, seed) for every n in `ns` (nested subsets: the first n of one
    # seeded permutation). data_dir: TFDS data directory ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
    c.data = dict(name="digits", seed=0, data_dir="")
    c.ns = (64, 128, 256, 1024)

    # DiT (diffmem.models.dit): `name` gives (patch, hidden, depth, heads) from dit.DIT_CONFIGS; a non-zero
    # patch / hidden / depth / heads overrides it. Unconditional eps prediction.
    # cpu: 8x8 images in 2x2 = 4 tokens of 4x4 pixels, hidden 128, depth 2, 8 heads of width 16 (0.68M params).
    c.model = dict(name="", patch=4, hidden=128, depth=2, heads=8, mlp_ratio=4.0, dtype="float32")
    # OU process with the DDPM time change t(u) (sde.ddpm_time); training u ~ U(u_min, 1); the sampler stops at
    # t0 = t(u_min) (u_min = 1e-3: DDPM step 1, t0 = 1.1e-4).
    c.diffusion = dict(u_min=1e-3)
    # diffmem.train.TrainConfig fields.
    c.train = dict(steps=16_000, batch_size=32, lr=2e-3, warmup_steps=100, schedule="constant", weight_decay=0.0,
                   grad_clip=1.0, ema_decay=0.995, log_every=200, ckpt_every=2000, keep_ckpts=1)
    # image_diffusion.SamplerConfig fields: reverse SDE ('sde', Euler-Maruyama) or probability-flow ODE ('ode',
    # Heun) on a grid uniform in u; Tweedie denoising at t0; EMA parameters.
    c.sampler = dict(num_samples=1000, steps=100, method="sde", batch_size=500, denoise=True, use_ema=True)
    # Evaluation. Memorization: pixel space vs the n training images, ||x - NN1|| < ratio ||x - NN2||.
    # Quality (FD, KID, precision/recall with k-NN radii) on `features` ('classifier': the offline CNN of
    # diffmem.metrics trained for feature_steps on the reference pool's labelled images; 'pixels'; 'inception':
    # InceptionV3 pool features from the Keras weights file `inception_weights`, see diffmem/inception.py) against the
    # reference set: 'heldout' (images of the split outside the largest training subset: disjoint from every
    # training set, the same for every n), 'test' (the test split), or 'all' (the whole split, training
    # images included). num_ref > 0 caps the reference at a seeded random num_ref of them (0 = all).
    c.eval = dict(reference="heldout", num_ref=0, features="classifier", feature_steps=400, k=3, ratio=1.0 / 3.0,
                  kid_subsets=100, grid_samples=32, inception_weights="")
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
        # (not run here: whether this memorizes like the paper's 74% is unverified).
        c.train.update(steps=200_000, batch_size=128, lr=1e-4, warmup_steps=0, ema_decay=0.9999, log_every=500,
                       ckpt_every=10_000)
        c.sampler.update(num_samples=10_000, steps=250, batch_size=1000)
        c.eval.update(reference="test", feature_steps=4000, kid_subsets=100, grid_samples=64)
    return c
