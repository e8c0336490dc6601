"""Figure 1 / Theorem 4.3: Loss-Gap_t between the true and the empirical score (arXiv 2511.03202, Section 4), with
the theorem's claims on its window (results.json["claims"], claims.md).

  python -m diffmem.main --config=configs/loss_gap.py --workdir=/tmp/diffmem/loss_gap        # CPU default
  python -m diffmem.main --config=configs/loss_gap.py:smoke --workdir=/tmp/diffmem/loss_gap_smoke
  python -m diffmem.main --config=configs/loss_gap.py:paper --workdir=...                     # accelerators
"""
import ml_collections


PRESETS = ("smoke", "cpu", "paper")


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in PRESETS:
        raise ValueError(f"configs/loss_gap.py: preset must be one of {PRESETS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "loss_gap"
    c.seed = 0
    c.preset = arg
    # Data distribution: P = (1/K) sum_k N(mu_k, s^2 I_d), mu_k ~ N(0, mean_std^2 I_d).
    c.num_components = 8
    c.mean_std = 2.0
    c.cov_scale = 1.0               # s; tr(Sigma) = d s^2
    c.dims = (8, 32, 64)
    c.ns = (100, 316, 1000, 3162, 10000)   # training-set sizes, log-spaced; one vmap over padded data
    c.t0 = 1e-3                     # smallest time of the log grid (early stopping time)
    c.t1 = 3.0                      # T, largest time of the grid
    c.num_times = 12
    c.num_datasets = 8              # independent training sets D (the E_D of Theorem 4.3; the claims' bases)
    c.num_queries = 1024            # Monte-Carlo draws X ~ P_hat_t per (dataset, n, t)
    c.chunk = 4096                  # training points per streamed chunk of the empirical score
    c.time_loop = True              # also time the first training set's n sweep as a Python loop over n
    c.progress = arg != "smoke"
    # Theorem 4.3's window sigma_t <= window_scale * d^-window_exponent (the theorem fixes log sigma_t1 = O(-log d),
    # not the constant) and the claims' tolerances (diffmem/experiments/loss_gap.py).
    c.window_scale = 1.0
    c.window_exponent = 0.5
    c.bound_constant = 0.5          # claim: Loss-Gap_t >= 0.5 (d / sigma_t^2 + tr Sigma) on the window
    c.limit_tol = 0.1               # claim: Loss-Gap_t0 sigma_t0^2 / d in [0.9, 1.1]
    c.slope_tol = 0.15              # claim: d/dlog(1/t0) int_t0^T Loss-Gap_t dt / d in [0.85, 1.15]
    if arg == "smoke":
        c.dims = (4, 8)
        c.ns = (20, 60, 200)
        c.num_times = 5
        c.num_datasets = 2
        c.num_queries = 256
    elif arg == "paper":
        c.dims = (8, 16, 32, 64, 128)
        c.ns = (100, 316, 1000, 3162, 10000, 31623, 100000)
        c.num_times = 24
        c.num_datasets = 16
        c.num_queries = 8192
    return c
