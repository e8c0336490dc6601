"""Approximation separation: arXiv 2511.03202, Section 5, Theorem 5.1 (width needed vs n; exact attention forms).

  python -m diffmem.main --config=configs/approximation.py[:smoke|cpu|paper] --workdir=/tmp/approx

Presets: `smoke` (seconds, used by the tests), `cpu` (default; minutes on 2 CPU cores), `paper` (larger n, widths
and steps for an accelerator). Members that share a width (every n, both targets, every seed) train as one vmapped
jit step.
"""
import ml_collections

from configs import common


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in ("smoke", "cpu", "paper"):
        raise ValueError(f"config arg must be one of 'smoke', 'cpu', 'paper', got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "approximation"
    c.seed = 0
    c.preset = arg
    # Training points: the first n draws from P = (1/K) sum N(mu_k, I_d), mu_k ~ N(0, mean_std^2 I_d).
    c.data = dict(dim=2, num_components=4, mean_std=2.0, ns=(4, 8, 16, 32))
    # ReLU MLP of fixed depth (number of hidden layers); widths swept below.
    c.model = common.lab_model(depth=2)
    c.widths = (16, 32, 64, 128, 256, 512)
    c.train = common.lab_train(schedule="cosine", ema_decay=0.0)
    # Regression inputs x ~ P_hat_t, t on [t0, T]; errors weighted sigma^4 (empirical) / sigma^2 (true), evaluated
    # at eval_times log-spaced times with eval_points draws each.
    c.regression = dict(t0=0.03, T=1.0, time_dist="log_uniform", eval_points=4096, eval_times=8)
    c.target_eps = (0.05, 0.3, 0.5)  # max-over-t relative weighted errors defining W*(n)
    c.seeds = (0,)
    # Exact one-layer attention forms, checked against the closed-form scores.
    c.attention = dict(ns=(16, 256, 4096), dims=(2, 32), num_components=4, num_queries=256, times=(1e-3, 0.1, 1.0))
    c.progress = True
    if arg == "smoke":
        c.data.ns = (8, 32)
        c.widths = (8, 32)
        c.train.update(steps=100, log_every=100, ckpt_every=100, warmup_steps=10)
        c.regression.update(eval_points=512, eval_times=3)
        c.attention.update(ns=(8, 64), dims=(2,), times=(1e-3, 1.0), num_queries=64)
        c.progress = False
    elif arg == "paper":
        c.data.ns = (4, 8, 16, 32, 64, 128, 256)
        c.widths = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
        c.regression.update(t0=0.01, eval_times=12)
        c.target_eps = (0.1, 0.3, 0.5)
        c.train.update(steps=50_000, batch_size=1024, lr=1e-3, warmup_steps=1000, log_every=1000,
                       ckpt_every=10_000)
        c.regression.eval_points = 16_384
        c.seeds = (0, 1, 2)
    return c


def get_sweep(arg=None):
    """Overrides for launch/sweep.py: one run per width. The runs share the workdir (cells are per width); the final
    assembling run (no override) then finds every cell finished."""
    return [{"widths": (w,)} for w in get_config(arg).widths]
