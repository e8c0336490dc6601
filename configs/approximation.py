"""Approximation separation: arXiv 2511.03202, Section 5, Theorem 5.1 (width needed vs n and eps; exact attention
forms).

  python -m diffmem.main --config=configs/approximation.py[:smoke|cpu|paper] --workdir=/tmp/approx

Presets: `smoke` (about a minute, used by the tests: plumbing only, its W* are not meaningful), `cpu` (default; d = 2
and 8, six n, three replicates, the width ladder 2..256: under 30 minutes on 2 CPU cores), `paper` (d up to 32, n up
to 64, widths to 4096, longer fits, five replicates: accelerators). Every fit climbs the width ladder until it
reaches its eps; members that share (d, width) train as one vmapped jit step.
"""
import ml_collections

from configs import common


PRESETS = ("smoke", "cpu", "paper")


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in PRESETS:
        raise ValueError(f"configs/approximation.py: preset must be one of {PRESETS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "approximation"
    c.seed = 0
    c.preset = arg
    # Replicate s trains on the first n of its own draws from P_d = (1/K) sum N(mu_k, I_d), mu_k ~ N(0, mean_std^2).
    c.data = dict(dims=(2, 8), num_components=4, mean_std=2.0, ns=(2, 3, 4, 6, 8, 12))
    c.seeds = (0, 1, 2)                 # independent replicates: training points, init and SGD stream
    # ReLU MLP of fixed depth (number of hidden layers); each fit climbs the width ladder until it reaches its eps.
    c.model = common.lab_model(depth=2)
    c.widths = (2, 4, 8, 16, 32, 64, 128, 256)
    c.eps_empirical = 0.5               # W*(n) of the empirical score: max-over-t relative error <= 0.5
    c.eps_true = (0.5, 0.3, 0.2, 0.1)   # W* of the true score against eps (the theorem's other side)
    c.flat_slope = 0.25                 # the true score's W*(n) counts as flat below this log-log slope
    c.train = common.lab_train(schedule="cosine", ema_decay=0.0)
    # Regression inputs x ~ P_hat_t, t on [t0, T]; errors weighted sigma^4 (empirical) / sigma^2 (true), evaluated
    # at eval_times log-spaced times with eval_points draws each.
    c.regression = dict(t0=0.03, T=1.0, time_dist="log_uniform", eval_points=4096, eval_times=8)
    # Exact one-layer attention forms, checked against the closed-form scores.
    c.attention = dict(ns=(16, 256, 4096), dims=(2, 32), num_components=4, num_queries=256, times=(1e-3, 0.1, 1.0))
    c.progress = True
    if arg == "smoke":
        c.data.update(dims=(2, 3), ns=(2, 4))
        c.seeds = (0, 1)
        c.widths = (4, 16)
        c.train.update(steps=100, log_every=100, ckpt_every=100, warmup_steps=10)
        c.regression.update(eval_points=512, eval_times=3)
        c.attention.update(ns=(8, 64), dims=(2,), times=(1e-3, 1.0), num_queries=64)
        c.progress = False
    elif arg == "paper":
        c.data.update(dims=(2, 8, 32), ns=(2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))
        c.seeds = (0, 1, 2, 3, 4)
        c.widths = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
        c.eps_true = (0.5, 0.3, 0.2, 0.1, 0.05)
        c.regression.update(t0=0.01, eval_times=12, eval_points=16_384)
        c.train.update(steps=50_000, batch_size=1024, lr=1e-3, warmup_steps=1000, log_every=1000, ckpt_every=10_000)
    return c


def get_sweep(arg=None):
    """Overrides for launch/sweep.py: one run per dimension (a fit's width ladder is climbed in order, so widths do
    not split). The runs share the workdir; the final assembling run (no override) finds every cell finished."""
    return [{"data.dims": (d,)} for d in get_config(arg).data.dims]
