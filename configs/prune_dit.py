"""Head-importance pruning of a memorizing DiT (arXiv 2511.03202, Section 6.2, Table 1; Algorithms 1 and 2) and the
evidence the reviewers asked for: more baselines, an eta sweep, and where in time memorization is decided.

  python -m diffmem.main --config=configs/prune_dit.py --workdir=runs/prune_dit                # cpu (default)
  python -m diffmem.main --config=configs/prune_dit.py:smoke --workdir=runs/prune_dit_smoke    # seconds (tests)
  python -m diffmem.main --config=configs/prune_dit.py:cifar10 --workdir=runs/prune_dit_c10    # accelerators

Presets:
  smoke    a tiny DiT on 8x8 digits, a few steps, one eta, one repeat, few samples: plumbing only.
  cpu      DiT (depth 3, hidden 128, 8 heads of width 16, patch 4; 24 heads, 0.98M parameters) trained 9,000
           steps on n = 64 of scikit-learn's 8x8 digits, until ~70% of its samples are memorized (the paper's
           original model: 73.8%); eta sweep {0.1, 0.2, 0.3, 0.5}; 3 repeats at the paper's eta = 20%. Runs end
           to end in well under 30 minutes on 2 CPU cores. (Patch 4 = 4 tokens: the DiT of train_dit's cpu preset,
           T/2, memorizes far more slowly per CPU second; see the README.)
  cifar10  the paper's setting: DiT-S/2 (12 x 6 = 72 heads) on a random 5,000-image CIFAR-10 subset
           (tfds:cifar10, prepared as array_record; see diffmem/data.py), eta = 20%, 5 repeats, 10,000 samples,
           reference = the 10,000 test images; plus the weight-decay-trained base. For GPUs/TPUs.

Methods (every one with the same per-repeat seeds and sample counts, see diffmem/experiments/prune_dit/):
  original (the unpruned base), finetune_only (base fine-tuned M steps with every head: the control),
  importance (Algorithm 2, u ~ Beta(0.8, 2): small t), importance_large_t (Beta(2, 0.8)), importance_uniform
  (U(0, 1)), random (a fresh random mask per repeat), magnitude (output-projection norms), weight_decay_finetune
  (the control with strong AdamW decay), and, if weight_decay.base, a base trained from scratch with decay.
"""
import ml_collections

from configs import common

PRESETS = ("smoke", "cpu", "cifar10")


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in PRESETS:
        raise ValueError(f"configs/prune_dit.py: preset must be one of {PRESETS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "prune_dit"
    c.seed = 0                    # base init / training stream, and the per-repeat scoring, fine-tune, sampling keys
    c.preset = arg

    # Training images: data.load_images(name, n, seed) (a seeded random subset). data_dir: TFDS directory.
    c.data = ml_collections.ConfigDict(dict(common.image_data(), n=64))
    # DiT sizes (diffmem.models.dit): `name` from dit.DIT_CONFIGS, non-zero patch / hidden / depth / heads override.
    c.model = common.dit(patch=4, hidden=128, depth=3, heads=8)
    # OU process with the DDPM time change t(u); training u ~ U(u_min, 1); sampling stops at t0 = t(u_min).
    c.diffusion = common.diffusion()
    # '' = train the base here (<workdir>/base, resumable); otherwise a directory holding orbax checkpoints of a
    # model with exactly these sizes (e.g. <train_dit workdir>/n5000 or its checkpoints/ folder).
    c.base_checkpoint = ""
    # Base training (diffmem.train.TrainConfig fields; the seed is config.seed).
    c.train = common.train(steps=9000, batch_size=32, lr=2e-3, warmup_steps=100, ema_decay=0.995, log_every=100,
                           ckpt_every=1000)
    # Fine-tuning after pruning (Algorithm 1: M steps of the ordinary loss, mask fixed), from the base's sampling
    # parameters with a fresh optimizer. The control `finetune_only` uses exactly these settings with every head.
    c.finetune = common.train(steps=300, batch_size=32, lr=1e-3, warmup_steps=20, ema_decay=0.99, log_every=50,
                              ckpt_every=300)
    # Pruning. etas: the sweep (each in [0, 1)); paper_eta: Table 1's eta (added to the sweep); keep_one_per_layer:
    # never empty a layer (the paper's Algorithm 1 does not say; off = pure global ranking).
    # Scores (Algorithm 2): score_batches batches of score_batch_size, ONE u per batch.
    c.prune = dict(etas=(0.1, 0.2, 0.3, 0.5), paper_eta=0.2, keep_one_per_layer=False, score_batches=64,
                   score_batch_size=32, loss_batches=16)
    c.methods = ("importance", "importance_large_t", "importance_uniform", "random", "magnitude",
                 "weight_decay_finetune")
    c.sweep_methods = ("importance", "importance_large_t", "random", "magnitude")   # methods run at every eta
    c.repeats = 3                 # seeds at the paper eta (and for original / finetune_only / weight decay)
    c.sweep_repeats = 1           # seeds at the other etas
    # Weight-decay mitigation baselines: `finetune` = the control with AdamW decay finetune_value (method
    # weight_decay_finetune, when listed in methods); `base` = a second base trained from scratch with decay
    # base_value (off on CPU: it doubles the base training time).
    c.weight_decay = dict(base=False, base_value=0.1, finetune_value=3.0)
    # image_diffusion.SamplerConfig fields.
    c.sampler = common.sampler(num_samples=256, steps=100, batch_size=256)
    # Evaluation: memorization in pixel space vs the n training images (||x - NN1|| < ratio ||x - NN2||); FD, KID,
    # precision/recall (k-NN manifolds) of `features` against the reference ('heldout': the images outside the
    # training subset; 'test'; 'all'), num_ref > 0 caps it (seeded). features: 'classifier' (offline CNN),
    # 'pixels', or 'inception' with inception_weights = the path of a Keras InceptionV3 weights file
    # (diffmem/eval/features/inception.py; not bundled), e.g. --config.eval.features=inception --config.eval.inception_weights=...
    c.eval = dict(reference="heldout", num_ref=0, features="classifier", feature_steps=400, k=3, ratio=1.0 / 3.0,
                  kid_subsets=50, grid_samples=32, inception_weights="")
    # "Where is memorization decided?": base trajectories (Tweedie estimate's nearest training image along the
    # reverse path) and the swap test at unit times taus_u: for each pair (a, b), model a for t > tau and model b
    # below, and the reverse (repeat 0's models; pruning methods at paper_eta).
    c.where = dict(enabled=True, num_samples=256, taus_u=(0.05, 0.1, 0.2, 0.3, 0.5, 0.7),
                   swap_pairs=(("original", "importance"), ("finetune_only", "importance"),
                               ("finetune_only", "weight_decay_finetune")))
    c.progress = False

    if arg == "smoke":
        c.data.update(n=16)
        c.model.update(hidden=32, depth=2, heads=2)
        # fine-tuning with the base's optimizer settings: one compiled train step for both
        c.train.update(steps=20, batch_size=16, log_every=10, ckpt_every=10, warmup_steps=0)
        c.finetune = dict(c.train.to_dict(), steps=4, log_every=2, ckpt_every=4)
        c.prune.update(etas=(0.25,), paper_eta=0.25, score_batches=2, score_batch_size=8, loss_batches=2)
        c.methods = ("importance", "importance_large_t", "random", "magnitude")
        c.sweep_methods = ("importance", "random")
        c.repeats = 1
        c.sampler.update(num_samples=24, steps=6, batch_size=24)
        c.eval.update(num_ref=100, features="pixels", kid_subsets=5, grid_samples=8)
        # num_samples = sampler.num_samples: the sampler compiles once
        c.where.update(num_samples=24, taus_u=(0.5,), swap_pairs=(("original", "importance"),
                                                                 ("finetune_only", "random")))
    elif arg == "cifar10":
        c.data.update(name="tfds:cifar10", n=5000)
        c.model.update(name="S/2", hidden=0, depth=0, heads=0, patch=0)
        # DiT recipe (AdamW, lr 1e-4 constant, EMA 0.9999); long enough for a 5k subset to memorize (Table 1:
        # 73.8% of the original model's samples are memorized).
        c.train.update(steps=200_000, batch_size=128, lr=1e-4, warmup_steps=0, ema_decay=0.9999, log_every=500,
                       ckpt_every=10_000)
        c.finetune.update(steps=10_000, batch_size=128, lr=1e-4, warmup_steps=0, ema_decay=0.999, log_every=500,
                          ckpt_every=2_000)
        c.prune.update(score_batches=200, score_batch_size=128, loss_batches=50)
        c.sweep_methods = ("importance", "random", "magnitude")
        c.repeats = 5
        c.sweep_repeats = 2
        c.weight_decay.update(base=True, base_value=0.1, finetune_value=0.3)
        c.sampler.update(num_samples=10_000, steps=250, batch_size=1000)
        c.eval.update(reference="test", feature_steps=4000, kid_subsets=100, grid_samples=64)
        c.where.update(num_samples=2000)
        c.progress = True
    return c
