"""Benchmark: DiT training and sampling throughput for a train_dit preset (default: the `cpu` preset's DiT).

Measured side by side in one process on the preset's data (digits for `cpu` / `smoke`): training through
diffmem.training.train (the experiment's own path: jitted step, on-device batches, no checkpoints) and sampling through
diffmem.image_diffusion.sample with the reverse SDE (Euler-Maruyama, 1 network evaluation per step) and the
probability-flow ODE (Heun, 2 per step), plus the final Tweedie step. Every row is timed after a warm-up call with
the same shapes (its time, compile included, is `first_s`); `cpu_ms` is process CPU time (all threads) per
training step / per sample, which is what a shared machine costs. Sampling runs data parallel over all local devices
(`xN` in the label); with more than one, the SDE row is repeated on one device for the ratio.

    python benchmarks/train_sample_throughput.py [--preset cpu] [--train_steps 300] [--num_samples 500]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

from diffmem import data as data_lib
from diffmem import image_diffusion as idf
from diffmem.experiments import train_dit
from diffmem.models import dit as dit_lib


def _load_config(preset: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)   # configs/ imports configs.common
    from configs import train_dit as config_module
    return config_module.get_config(preset)


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help="configs/train_dit.py preset (smoke, cpu, cifar10)")
    ap.add_argument("--train_steps", type=int, default=300, help="timed training steps")
    ap.add_argument("--num_samples", type=int, default=500, help="timed samples per method")
    ap.add_argument("--n", type=int, default=None, help="training images (default: the preset's smallest n)")
    args = ap.parse_args()

    s = train_dit.parse_config(_load_config(args.preset))
    n = args.n or min(s.ns)
    d = data_lib.load_images(s.data.name, n=n, seed=s.data.seed, data_dir=s.data.directory)
    model = idf.model_from_config(d.image_shape, s.model)
    params = idf.init_params(model, jax.random.key(0))
    print(f"devices: {jax.devices()}  preset={args.preset}  data={s.data.name} n={n} {d.image_shape}  "
          f"DiT {s.model.resolved()} ({dit_lib.count_params(params):,} params)")
    hdr = (f"{'what':<26} {'batch':>6} {'first_s':>8} {'timed':>7} {'wall_s':>8} {'per_s':>9} {'ms_each':>8} "
           f"{'cpu_ms':>8}")
    print(hdr)
    print("-" * len(hdr))

    key = jax.random.key(1)
    cfg = dataclasses.replace(s.train, steps=args.train_steps, log_every=args.train_steps,
                              ckpt_every=args.train_steps)
    warm = dataclasses.replace(cfg, steps=5, log_every=5, ckpt_every=5)
    _, first, _ = _timed(lambda: idf.train_model(model, d.images, warm, None, key=key, u_min=s.diffusion.u_min,
                                                 progress=False))
    (state, _), wall, cpu = _timed(lambda: jax.block_until_ready(idf.train_model(
        model, d.images, cfg, None, key=key, u_min=s.diffusion.u_min, progress=False)))
    k = args.train_steps
    print(f"{'train step':<26} {cfg.batch_size:>6} {first:>8.2f} {k:>7} {wall:>8.2f} {k / wall:>9.1f} "
          f"{1e3 * wall / k:>8.2f} {1e3 * cpu / k:>8.2f}", flush=True)

    # sampling is data parallel over all local devices; with several, the SDE is also timed on one device
    local = jax.local_devices()
    runs = [("sde", local), ("ode", local)] + ([("sde", local[:1])] if len(local) > 1 else [])
    for method, devices in runs:
        sc = dataclasses.replace(s.sampler, num_samples=args.num_samples, method=method,
                                 batch_size=min(s.sampler.batch_size, args.num_samples))
        w = dataclasses.replace(sc, num_samples=sc.batch_size)
        _, first, _ = _timed(lambda: idf.sample(model, state.ema_params, key, w, s.diffusion.u_min, devices=devices))
        out, wall, cpu = _timed(lambda: idf.sample(model, state.ema_params, key, sc, s.diffusion.u_min, devices=devices))
        assert np.isfinite(out).all()
        m = args.num_samples
        nfe = sc.steps * (1 if method == "sde" else 2) + int(sc.denoise)
        label = f"sample {method} ({nfe} NFE) x{len(devices)}"
        print(f"{label:<26} {sc.batch_size:>6} {first:>8.2f} {m:>7} {wall:>8.2f} {m / wall:>9.1f} "
              f"{1e3 * wall / m:>8.2f} {1e3 * cpu / m:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
