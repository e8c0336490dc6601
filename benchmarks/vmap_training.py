"""Speed of training M sweep members as ONE vmapped jit step (diffmem.gmm_lab) vs one at a time.

  python benchmarks/vmap_training.py [--members 8] [--widths 32,128,512] [--steps 200] [--dim 32]

For each width, in the same process and on the same data, three ways to train M members (different n via
padded + masked data, different weight decays) for `steps` steps:
  vmapped          training.make_sweep_runner: one jit, lax.scan over steps, vmap over members;
  sequential-scan  the same runner with M = 1, called M times (a Python loop over members);
  sequential-step  a Python loop over members, and over steps of a jitted single step (one dispatch per
                   step, like a plain training loop / diffmem.training.train).
Times exclude compilation (one warm-up call each) and are the best of `--repeats`. On a shared CPU the
numbers are noisy; the speed-up grows where one member does not fill the device (small nets, accelerators).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import losses, training
from diffmem.models import mlp


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - tic)
    return best


def bench(width: int, members: int, steps: int, dim: int, batch: int, depth: int, repeats: int) -> dict:
    model = mlp.ScoreMLP(dim=dim, width=width, depth=depth, output="edm", sigma_data=2.2)
    apply = mlp.make_apply(model)
    loss = losses.make_lab_loss(apply, 1e-3, 10.0)
    cfg = training.TrainConfig(steps=steps, batch_size=batch, lr=1e-3, log_every=steps, ckpt_every=steps)
    rng = np.random.RandomState(0)
    ns = np.linspace(64, 1024, members).astype(int)
    data, mask = training.pad_datasets([rng.randn(n, dim) for n in ns])
    data, counts = jnp.asarray(data), jnp.asarray(training.mask_counts(mask))
    wds = jnp.linspace(0.0, 1.0, members)
    keys = jax.random.split(jax.random.key(0), members)
    params = training.init_members(lambda k: mlp.init_params(model, k), keys)
    states = training.init_states(params, cfg)

    run_all = training.make_sweep_runner(loss, cfg, steps)
    jax.block_until_ready(run_all(states, data, counts, wds, keys))
    t_vmap = _best(lambda: run_all(states, data, counts, wds, keys), repeats)

    run_one = training.make_sweep_runner(loss, cfg, steps)
    one = [jax.tree.map(lambda x, i=i: x[i:i + 1], (states, data, counts, wds, keys)) for i in range(members)]
    jax.block_until_ready(run_one(*one[0]))
    t_scan = _best(lambda: [run_one(*o) for o in one], repeats)

    step1 = jax.jit(jax.vmap(training.make_member_step(loss, cfg)))

    def per_step():
        out = []
        for o in one:
            st = o[0]
            for _ in range(steps):
                st, _m = step1(st, *o[1:])
            out.append(st.params)
        return out

    jax.block_until_ready(step1(*one[0]))
    t_step = _best(per_step, repeats)
    return {"width": width, "params": mlp.count_params(mlp.init_params(model, jax.random.key(0))),
            "members": members, "vmapped_ms_per_step": 1e3 * t_vmap / steps,
            "seq_scan_ms_per_step": 1e3 * t_scan / steps, "seq_step_ms_per_step": 1e3 * t_step / steps,
            "speedup_vs_seq_scan": t_scan / t_vmap, "speedup_vs_seq_step": t_step / t_vmap}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--widths", default="32,128,512")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    if a.members < 1 or a.steps < 1 or a.repeats < 1:
        raise ValueError("--members, --steps and --repeats must be >= 1")
    widths = [int(w) for w in a.widths.split(",")]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), M={a.members} members, "
          f"{a.steps} steps, batch {a.batch}, d={a.dim}, depth {a.depth}")
    hdr = (f"{'width':>6} {'params':>9} | {'vmapped':>10} {'seq-scan':>10} {'seq-step':>10} | "
           f"{'x vs scan':>9} {'x vs step':>9}   (ms per step of ALL members)")
    print(hdr)
    print("-" * len(hdr))
    for w in widths:
        r = bench(w, a.members, a.steps, a.dim, a.batch, a.depth, a.repeats)
        print(f"{r['width']:>6} {r['params']:>9,} | {r['vmapped_ms_per_step']:>10.2f} {r['seq_scan_ms_per_step']:>10.2f} "
              f"{r['seq_step_ms_per_step']:>10.2f} | {r['speedup_vs_seq_scan']:>9.2f} {r['speedup_vs_seq_step']:>9.2f}",
              flush=True)


if __name__ == "__main__":
    main()
