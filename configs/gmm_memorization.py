"""Gaussian-mixture memorization lab: arXiv 2511.03202, Section 6.1, Figures 2, 3a and 3b.

  python -m diffmem.main --config=configs/gmm_memorization.py[:smoke|cpu|paper] --workdir=/tmp/gmm

Presets: `smoke` (about a minute, used by the tests; two seeds, plumbing only), `cpu` (default; three training
seeds, 3 sizes x 3 n at d = 32, the n x d and weight-decay sweeps at width 128: under 30 minutes on 2 CPU cores),
`paper` (the paper's ranges: d = 32, K = 8, sizes ~24K..44M parameters, n 1K..100K, d 8..64, five seeds;
accelerators, spread with launch/sweep.py which runs `get_sweep` shards then assembles).
Every sweep cell (d, K, width, n, weight decay, seed) is trained once even when several figures use it;
members that share an architecture train together as one vmapped jit step (diffmem.gmm_lab).
"""
import ml_collections

from configs import common


PRESETS = ("smoke", "cpu", "paper")


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in PRESETS:
        raise ValueError(f"configs/gmm_memorization.py: preset must be one of {PRESETS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "gmm_memorization"
    c.seed = 0
    c.preset = arg

    # P = (1/K) sum_k N(mu_k, I_d), mu_k ~ N(0, mean_std^2 I_d) (Section 6.1: mean_std = 2).
    c.mixture = dict(mean_std=2.0)

    # Score network: ReLU MLP (diffmem.models.mlp.ScoreMLP); sigma_data 0 = sqrt(mean_std^2 + 1), the
    # per-coordinate std of the mixture (EDM preconditioning of output='edm').
    c.model = common.lab_model()

    # DSM training (diffmem.config.TrainConfig fields; weight_decay stays 0: it is set per sweep cell).
    c.train = common.lab_train()
    c.loss = common.lab_loss()
    c.sampler = common.lab_sampler()

    # Figure 2: d = 2, K = 4, growing width at one n (underfit -> generalize -> memorize).
    c.fig2 = dict(dim=2, num_components=4, n=16, widths=(4, 8, 16, 64, 256))
    # Figure 3a: memorization over n x size at (dim, K); then at one fixed width over n x d.
    # Sizes are `widths`, or `param_counts` (then width = the smallest width with at least that many params).
    c.fig3a = dict(dim=32, num_components=8, ns=(32, 128, 512), widths=(32, 128, 512), param_counts=(),
                   dims=(8, 16, 32, 64), dim_sweep_width=128, dim_sweep_param_count=0)
    # Figure 3b: width sweep (widths () = the fig3a sizes) and weight-decay sweep (at wd_width) at a small and a
    # large n; the small-n log-likelihood claims use wd_moderate and width_moderate (0 = the middle positive decay,
    # the second widest width).
    c.fig3b = dict(n_small=32, n_large=512, weight_decays=(0.0, 0.1, 0.3, 1.0, 3.0), wd_width=128,
                   wd_param_count=0, widths=(), wd_moderate=0.0, width_moderate=0)
    c.seeds = (0, 1, 2)           # training seeds (init + SGD stream): the claims' intervals are over these
    c.max_members = 16            # sweep members per vmapped group (memory bound)
    c.references = True           # closed-form empirical- and true-score samplers for every (d, n)
    c.shard = dict(index=0, count=1)  # launch/sweep.py: shard i of count trains its groups only
    c.progress = True

    if arg == "smoke":
        c.train.update(steps=100, log_every=100, ckpt_every=100, warmup_steps=10)
        c.sampler.update(num_samples=64, steps=20, batch_size=64)
        # Three architectures in all (d, width) = (8, 16), (8, 64), (4, 16): figure 2 runs at d = 4 here so
        # that it shares the n x d group (the plot shows the first two coordinates).
        c.fig2.update(dim=4, num_components=4, n=8, widths=(16,))
        c.fig3a.update(dim=8, num_components=4, ns=(8, 32), widths=(16, 64), dims=(4, 8), dim_sweep_width=16)
        c.fig3b.update(n_small=8, n_large=32, weight_decays=(0.0, 1.0), wd_width=64)
        c.seeds = (0, 1)
        c.progress = False
    elif arg == "paper":
        c.model.update(depth=4)
        c.train.update(steps=200_000, batch_size=1024, lr=1e-3, warmup_steps=1000, ema_decay=0.999,
                       log_every=1000, ckpt_every=10_000)
        c.sampler.update(num_samples=10_000, steps=200, batch_size=2000)
        c.fig2.update(n=64, widths=(4, 16, 64, 256, 1024))
        c.fig3a.update(ns=(1000, 3200, 10_000, 32_000, 100_000), widths=(),
                       param_counts=(24_000, 100_000, 400_000, 1_600_000, 6_400_000, 12_000_000, 44_000_000),
                       dims=(8, 16, 32, 64), dim_sweep_width=0, dim_sweep_param_count=12_000_000)
        c.fig3b.update(n_small=3200, n_large=10_000, weight_decays=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0),
                       wd_width=1024, widths=(64, 128, 256, 512, 1024))
        c.seeds = (0, 1, 2, 3, 4)
        c.max_members = 8
        c.progress = True
    return c


def get_sweep(arg=None):
    """Overrides for launch/sweep.py: `shard.count` processes, each training a disjoint set of groups."""
    count = {"smoke": 2, "cpu": 2, "paper": 8}.get(arg or "cpu", 2)
    return [{"shard.index": i, "shard.count": count} for i in range(count)]
