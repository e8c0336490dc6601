"""Table 1 of arXiv 2511.03202 (Section 6.2; Algorithms 1 and 2), answered with intervals: head-importance pruning of
memorizing DiTs, with its controls, on several base models and repeats, each claim an estimate with a 95% interval
and a verdict.

  python -m diffmem.main --config=configs/prune_dit.py --workdir=runs/prune_dit                # cpu: the main job
  python -m diffmem.main --config=configs/prune_dit.py:smoke --workdir=runs/prune_dit_smoke    # seconds (tests)
  python -m diffmem.main --config=configs/prune_dit.py:cpu_full --workdir=runs/prune_dit_full  # more bases/repeats
  python -m diffmem.main --config=configs/prune_dit.py:fashion --workdir=runs/prune_dit_fashion
  python -m diffmem.main --config=configs/prune_dit.py:cifar10 --workdir=runs/prune_dit_c10    # accelerators

Presets:
  smoke    a tiny DiT on 8x8 digits, a few steps, 2 bases x 2 repeats, few samples: plumbing only.
  cpu      the testbed where heads matter: n = 32 of scikit-learn's 8x8 digits at patch 2 (16 tokens per image), a DiT
           with 3 layers x 8 heads (24 heads), 9,000 base steps, 3 bases x 5 repeats at eta 20% (2 at eta 40%),
           1,000 samples per model; the CI's main job.
  cpu_full the same testbed with 5 bases x 5 repeats, 3 repeats at each eta of 0.1 .. 0.5, and importance_uniform.
  fashion  Fashion-MNIST (Debian's dataset-fashion-mnist IDX files: apt-get install dataset-fashion-mnist),
           center-cropped to 24 x 24 and 2 x 2 average-pooled to 12 x 12 (stated in results.json), patch 2 = 36 tokens;
           n = 48, DiT hidden 64 x 3 layers x 8 heads, 8,000 base steps.
  cifar10  the paper's setting: DiT-S/2 (12 x 6 = 72 heads) on a random 5,000-image CIFAR-10 subset (tfds:cifar10,
           prepared as array_record), 3 bases x 5 repeats, 10,000 samples, reference = the 10,000 test images; the
           weight-decay bases too. For GPUs/TPUs.
Methods (every one with the same per-(base, repeat) seeds and sample counts, see diffmem/experiments/prune_dit/):
  original (the unpruned base), finetune_only (the base fine-tuned M steps with every head: the control),
  importance (Algorithm 2, u ~ Beta(0.8, 2): small t), importance_large_t (Beta(2, 0.8)), importance_uniform,
  random (a fresh random mask per repeat), magnitude (output-projection norms), weight_decay_finetune (the control
  with strong AdamW decay), and, with weight_decay.base, bases trained from scratch with decay.
"""
import ml_collections

from configs import common

PRESETS = ("smoke", "cpu", "cpu_full", "fashion", "cifar10")
FASHION_IDX = "/usr/share/datasets/fashion-mnist"   # dpkg -L dataset-fashion-mnist


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in PRESETS:
        raise ValueError(f"configs/prune_dit.py: preset must be one of {PRESETS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "prune_dit"
    c.seed = 0                    # every random stream (bases, repeats, samples): another seed = another seed set
    c.preset = arg

    # Training images: the same seeded random subset of n for every base.
    c.data = ml_collections.ConfigDict(dict(common.image_data(), n=32))
    # 8x8 digits at patch 2: 16 tokens of 2x2 pixels; 3 layers x 8 heads of width 6 = 24 heads (0.15M parameters).
    c.model = common.dit(patch=2, hidden=48, depth=3, heads=8)
    c.diffusion = common.diffusion()
    # '' = train the bases here (<workdir>/bases, resumable); else a directory with orbax checkpoints of ONE base
    # with exactly these sizes (e.g. <train_dit workdir>/n5000); then design.bases = 1.
    c.base_checkpoint = ""
    # Base training: every base is one member of a vmapped group (seeds 0..bases-1 under config.seed).
    c.train = common.train(steps=9000, batch_size=32, lr=2e-3, warmup_steps=100, ema_decay=0.995, log_every=250,
                           ckpt_every=2000)
    # Fine-tuning after pruning (Algorithm 1: M steps of the ordinary loss, mask fixed), from the base's sampling
    # parameters with a fresh optimizer; the finetune_only control uses exactly these settings with every head.
    c.finetune = common.train(steps=200, batch_size=32, lr=1e-3, warmup_steps=20, ema_decay=0.99, log_every=20,
                              ckpt_every=200)
    c.design = dict(bases=3, repeats=5, sweep_repeats=2, group_size=64)
    # etas: the sweep of the frontier (paper_eta added); scores: batches of ONE u in [u_min, 1] (Algorithm 2).
    c.prune = dict(etas=(0.2, 0.4), paper_eta=0.2, keep_one_per_layer=False, score_batches=32,
                   score_batch_size=32, loss_batches=16)
    c.methods = ("importance", "importance_large_t", "random", "magnitude", "weight_decay_finetune")
    c.sweep_methods = ("importance", "random", "magnitude")   # methods run at every eta (the frontier, claim C5)
    c.weight_decay = dict(base=False, base_value=0.1, finetune_value=3.0)
    # The ancestral sampler (exact OU posterior steps): 50 steps measure the memorization that 100 Euler-Maruyama
    # steps do (Euler-Maruyama with 50 steps misses a quarter of it).
    c.sampler = common.sampler(num_samples=1000, steps=50, method="ancestral", batch_size=250)
    # KID is reported, not claimed: 10 subsets keep its cost (float64 kernels) at a tenth of a second per model
    c.eval = common.image_eval(kid_subsets=10, grid_samples=32)
    c.claims = dict(level=0.95, num_resamples=10_000, fd_tolerance=0.1, precision_tolerance=0.02, frontier_levels=5,
                    swap_tau=0.3, swap_share=0.5)
    # Where is memorization decided: the swap test on every base (claim C7) and base 0's trajectories.
    c.where = dict(enabled=True, num_samples=256, taus_u=(0.1, 0.3, 0.5),
                   swap_pairs=(("finetune_only", "weight_decay_finetune"),), trajectory=True)
    c.progress = False

    if arg == "smoke":
        c.data.update(n=16)
        c.model.update(hidden=32, depth=2, heads=2)
        c.train.update(steps=20, batch_size=16, log_every=10, ckpt_every=10, warmup_steps=0)
        c.finetune.update(steps=4, batch_size=16, log_every=2, ckpt_every=4, warmup_steps=0)
        c.design.update(bases=2, repeats=2, sweep_repeats=1, group_size=16)
        c.prune.update(etas=(0.25, 0.5), paper_eta=0.25, score_batches=2, score_batch_size=8, loss_batches=2)
        c.methods = ("importance", "importance_large_t", "random", "magnitude", "weight_decay_finetune")
        c.sweep_methods = ("importance", "random")
        c.sampler.update(num_samples=24, steps=6, batch_size=24)
        c.eval.update(num_ref=100, features="pixels", kid_subsets=5, grid_samples=8)
        c.claims.update(num_resamples=200)
        c.where.update(num_samples=24, taus_u=(0.5,))
    elif arg == "cpu_full":
        c.design.update(bases=5, repeats=5, sweep_repeats=3)
        c.prune.update(etas=(0.1, 0.2, 0.3, 0.4, 0.5))
        c.methods = ("importance", "importance_large_t", "importance_uniform", "random", "magnitude",
                     "weight_decay_finetune")
    elif arg == "fashion":
        c.data.update(name=f"idx:{FASHION_IDX}", crop=24, pool=2, n=48)
        c.model.update(patch=2, hidden=64, depth=3, heads=8)
        c.train.update(steps=8000)
    elif arg == "cifar10":
        c.data.update(name="tfds:cifar10", n=5000)
        c.model.update(name="S/2", hidden=0, depth=0, heads=0, patch=0)
        # DiT recipe (AdamW, lr 1e-4 constant, EMA 0.9999); long enough for a 5k subset to memorize (Table 1:
        # 73.8% of the original model's samples are memorized).
        c.train.update(steps=200_000, batch_size=128, lr=1e-4, warmup_steps=0, ema_decay=0.9999, log_every=500,
                       ckpt_every=10_000)
        c.finetune.update(steps=10_000, batch_size=128, lr=1e-4, warmup_steps=0, ema_decay=0.999, log_every=500,
                          ckpt_every=2_000)
        c.design.update(bases=3, repeats=5, sweep_repeats=2, group_size=8)
        c.prune.update(score_batches=200, score_batch_size=128, loss_batches=50)
        c.weight_decay.update(base=True, base_value=0.1, finetune_value=0.3)
        c.sampler.update(num_samples=10_000, steps=250, batch_size=500)
        c.eval.update(reference="test", feature_steps=4000, kid_subsets=100, grid_samples=64)
        c.where.update(num_samples=2000)
        c.progress = True
    return c
