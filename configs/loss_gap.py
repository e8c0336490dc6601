"""Figure 1 / Theorem 4.3: Loss-Gap_t between the true and the empirical score (arXiv 2511.03202, Section 4).

  python -m diffmem.main --config=configs/loss_gap.py --workdir=/tmp/diffmem/loss_gap        # CPU default
  python -m diffmem.main --config=configs/loss_gap.py:smoke --workdir=/tmp/diffmem/loss_gap_smoke
  python -m diffmem.main --config=configs/loss_gap.py:paper --workdir=...                     # accelerators
"""
import ml_collections


def get_config(arg=None):
    arg = arg or "cpu"
    if arg not in ("cpu", "smoke", "paper"):
        raise ValueError(f"configs/loss_gap.py: arg must be 'cpu', 'smoke' or 'paper', got {arg!r}")
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
    c.num_datasets = 4              # independent training sets D (the E_D of Theorem 4.3)
    c.num_queries = 1024            # Monte-Carlo draws X ~ P_hat_t per (dataset, n, t)
    c.chunk = 4096                  # training points per streamed chunk of the empirical score
    c.time_loop = True              # also time the same n sweep as a Python loop over n
    c.progress = arg != "smoke"
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
