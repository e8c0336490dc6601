"""Benchmark: diffmem.scores.empirical_score (JAX, jit, streamed chunks) vs numpy/BLAS of the same formula.

    score_hat(x, t) = (alpha_t sum_i w_i(x) x_i - x) / sigma_t^2,  w = softmax_i(-||x - alpha_t x_i||^2 / 2 sigma_t^2)

Both run side by side in one process on the same float32 data, alternating (`--repeats` rounds of [ours, numpy]), (standard normal training points, queries drawn
from the empirical marginal P_hat_t so the weights are not degenerate). The numpy reference computes the logits
(2 alpha x.x_i - alpha^2 ||x_i||^2) / (2 sigma^2) in chunks with BLAS matmuls and a two-pass log-sum-exp
(max over all chunks, then the weighted sums). The table gives the median wall time of each (after a first call,
`first_s`, that includes the jit compile), their ratio (numpy / ours; > 1 means ours is faster), the same for
process CPU time (`cpu_np/ours`: on a machine shared with other jobs), and the max relative difference of the
scores. `xla_mm_s` is XLA's time for the algorithm's matmuls alone (x @ chunk^T and (m, chunk) @ chunk for every
chunk, on resident chunks: no slicing, no softmax), and `mm/ours` = xla_mm_s / ours_s the share of ours that runs
at XLA's own matmul rate (1 = ours is exactly as fast as its matmuls).

    python benchmarks/empirical_score.py            # d = 3072 (CIFAR-10 size), n up to 5e4, m = 256 queries
    python benchmarks/empirical_score.py --small    # n up to 1e4, m = 64: about a minute on 2 CPU cores
    python benchmarks/empirical_score.py --m 64,256 # both query counts in one run
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import scores


def numpy_empirical_score(x: np.ndarray, t: float, data: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The empirical score with numpy/BLAS: x (m, d), scalar t, data (n, d) -> (m, d) (float32 math)."""
    a = np.float32(np.exp(-t / 2))
    s2 = np.float32(-np.expm1(-t))
    n = data.shape[0]
    logits = np.empty((x.shape[0], n), np.float32)
    for lo in range(0, n, chunk):
        xc = data[lo:lo + chunk]
        logits[:, lo:lo + chunk] = (2 * a * (x @ xc.T) - (a * a) * np.einsum("ij,ij->i", xc, xc)[None]) / (2 * s2)
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    w = logits / logits.sum(axis=1, keepdims=True)  # (m, n)
    mean = np.zeros_like(x)
    for lo in range(0, n, chunk):
        mean += w[:, lo:lo + chunk] @ data[lo:lo + chunk]
    return (a * mean - x) / s2



def xla_matmuls(m: int, n: int, d: int, chunk: int):
    """A function running, in XLA, just the matmuls of the streamed empirical score: for each of the n / chunk
    chunks, (m, d) @ (d, c) and (m, c) @ (c, d), on resident arrays (no slicing, no softmax)."""
    c = min(chunk, n)
    full, rest = divmod(n, c)
    rng = np.random.default_rng(1)
    x = jax.device_put(rng.standard_normal((m, d), dtype=np.float32))
    xc = jax.device_put(rng.standard_normal((c, d), dtype=np.float32) / np.sqrt(d))

    @jax.jit
    def run(x, xc):
        def body(i, acc):  # x + i: a different product each time (else XLA hoists it out of the loop)
            return acc + ((x + i.astype(x.dtype)) @ xc.T) @ xc
        acc = jax.lax.fori_loop(0, full, body, jnp.zeros_like(x))
        if rest:
            acc = acc + (x @ xc[:rest].T) @ xc[:rest]
        return acc
    return lambda: jax.block_until_ready(run(x, xc))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="n up to 1e4 and m = 64 (about a minute on 2 cores)")
    ap.add_argument("--ns", default=None, help="comma-separated training-set sizes (default 1000,10000,50000)")
    ap.add_argument("--d", type=int, default=3072, help="dimension (3072 = 32x32x3)")
    ap.add_argument("--m", default=None, help="comma-separated numbers of queries (default 256; 64 with --small)")
    ap.add_argument("--t", default="0.01,1.0", help="comma-separated diffusion times")
    ap.add_argument("--chunk", type=int, default=4096, help="training points per chunk (both implementations)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ns = [int(v) for v in (args.ns or ("1000,10000" if args.small else "1000,10000,50000")).split(",")]
    ms = [int(v) for v in (args.m or ("64" if args.small else "256")).split(",")]
    times = [float(v) for v in args.t.split(",")]

    print(f"devices: {jax.devices()}  d={args.d}  m={ms}  chunk={args.chunk}  repeats={args.repeats} (median), "
          f"load average {os.getloadavg()}")
    hdr = (f"{'m':>4} {'n':>7} {'t':>6} {'ours_s':>9} {'numpy_s':>9} {'np/ours':>8} {'cpu_np/ours':>11} "
           f"{'xla_mm_s':>9} {'mm/ours':>8} {'first_s':>8} {'max_rel_diff':>13}")
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(args.seed)
    for m, n in [(m, n) for m in ms for n in ns]:
        data = rng.standard_normal((n, args.d), dtype=np.float32)
        data_j = jax.device_put(data)
        for t in times:
            a, s = np.exp(-t / 2), np.sqrt(-np.expm1(-t))
            x = (a * data[rng.integers(0, n, m)] + s * rng.standard_normal((m, args.d))).astype(np.float32)
            x_j = jax.device_put(x)
            t_j = jnp.float32(t)

            def ours():
                return jax.block_until_ready(scores.empirical_score(x_j, t_j, data_j, chunk=args.chunk))

            t0 = time.perf_counter()
            ref_ours = np.asarray(ours())
            compile_s = time.perf_counter() - t0
            ref_np = numpy_empirical_score(x, t, data, args.chunk)
            mm = xla_matmuls(m, n, args.d, args.chunk)
            mm()
            runs = {"ours": ours, "numpy": lambda: numpy_empirical_score(x, t, data, args.chunk), "mm": mm}
            wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
            for _ in range(args.repeats):  # alternating rounds
                for k, fn in runs.items():
                    w0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    wall[k].append(time.perf_counter() - w0)
                    cpu[k].append(time.process_time() - c0)
            ours_s, np_s, mm_s = (statistics.median(wall[k]) for k in ("ours", "numpy", "mm"))
            cpu_ratio = statistics.median(cpu["numpy"]) / statistics.median(cpu["ours"])
            rel = float(np.max(np.abs(ref_ours - ref_np)) / np.max(np.abs(ref_np)))
            print(f"{m:>4} {n:>7} {t:>6g} {ours_s:>9.4f} {np_s:>9.4f} {np_s / ours_s:>8.2f} {cpu_ratio:>11.2f} "
                  f"{mm_s:>9.4f} {mm_s / ours_s:>8.2f} {compile_s:>8.2f} {rel:>13.2e}", flush=True)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
