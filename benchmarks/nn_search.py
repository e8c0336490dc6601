"""Benchmark: diffmem.neighbors.top2_neighbors (jit, warm) vs scikit-learn brute-force kneighbors.

Both run side by side in one process on the same float32 data (standard normal); the table gives
the median wall time of each, their ratio (sklearn / ours; > 1 means ours is faster), the jit compile
time, and whether the two return the same top-2 indices (mismatches that are exact distance ties,
checked in float64, are counted separately).

    python benchmarks/nn_search.py [--m 1000] [--ns 2000,10000] [--ds 64,3072] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from sklearn.neighbors import NearestNeighbors

from diffmem.eval import neighbors
from timing import median_time  # benchmarks/timing.py



def _ties(q, x, i_a, i_b) -> int:
    """Rows whose differing index sets are at equal float64 distances (legitimate tie-breaks)."""
    rows = np.nonzero((i_a != i_b).any(1))[0]
    n = 0
    for r in rows:
        da = np.sort(np.linalg.norm(x[i_a[r]].astype(np.float64) - q[r], axis=1))
        db = np.sort(np.linalg.norm(x[i_b[r]].astype(np.float64) - q[r], axis=1))
        n += bool(np.allclose(da, db, rtol=1e-6, atol=0))
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=1000, help="number of queries")
    ap.add_argument("--ns", default="2000,10000", help="comma-separated training-set sizes")
    ap.add_argument("--ds", default="64,3072", help="comma-separated dimensions")
    ap.add_argument("--chunk", type=int, default=neighbors.DEFAULT_CHUNK, help="training rows per chunk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(f"devices: {jax.devices()}  m={args.m}  chunk={args.chunk}  repeats={args.repeats} (median)")
    hdr = (f"{'n':>7} {'d':>6} {'ours_s':>9} {'sklearn_s':>10} {'sk/ours':>8} {'compile_s':>10} "
           f"{'same_idx':>9} {'ties':>5} {'max|dd|':>9}")
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(args.seed)
    for d in (int(v) for v in args.ds.split(",")):
        for n in (int(v) for v in args.ns.split(",")):
            x = rng.standard_normal((n, d), dtype=np.float32)
            q = rng.standard_normal((args.m, d), dtype=np.float32)
            xj, qj = jax.device_put(x), jax.device_put(q)

            def ours():
                return jax.block_until_ready(neighbors.top2_neighbors(qj, xj, chunk=args.chunk))

            t = time.perf_counter()
            dist, idx = ours()
            compile_s = time.perf_counter() - t
            ours_s = median_time(ours, args.repeats)

            nnb = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(x)
            sk_d, sk_i = nnb.kneighbors(q, n_neighbors=2)
            sk_s = median_time(lambda: nnb.kneighbors(q, n_neighbors=2), args.repeats)

            idx, dist = np.asarray(idx), np.asarray(dist)
            same = float((idx == sk_i).all(1).mean())
            ties = _ties(q, x, idx, sk_i)
            dd = float(np.abs(dist - sk_d).max())
            print(f"{n:>7} {d:>6} {ours_s:>9.4f} {sk_s:>10.4f} {sk_s / ours_s:>8.2f} {compile_s:>10.2f} "
                  f"{same:>9.4f} {ties:>5d} {dd:>9.2e}", flush=True)


if __name__ == "__main__":
    main()
