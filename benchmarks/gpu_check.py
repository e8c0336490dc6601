"""Accelerator check: DiT-S/2 training and sampling speed, memory and FLOP utilisation, and the projected wall time
of the `cifar10` presets (configs/train_dit.py, configs/prune_dit.py), written as JSON. Well under 10 minutes on one
GPU; `--small` runs the same code on a tiny DiT in seconds (CPU smoke test, tests/test_gpu_check.py).

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --small --out /tmp/gpu_check.json

Measured, for float32 and bfloat16 compute (config model.dtype; parameters and optimizer state float32):
  * training: the jitted step of diffmem.training.train (eps loss, AdamW, clip 1.0, EMA, batches drawn on device) of
    DiT-S/2 on 32x32x3 at batch 128 (the cifar10 presets), after compile and warm-up: steps/s, the compile time;
  * memory: the compiled step's memory analysis (arguments, outputs, temporaries) and the device's peak bytes in use
    (memory_stats, when the backend reports it; cumulative over the process);
  * FLOP utilisation: model FLOPs (benchmarks/dit_vs_pytorch.py: dit_flops, 3 forward passes per training step)
    per second over the device's dense peak (bfloat16 peak for bfloat16; for float32 the TF32 peak on GPUs, which
    XLA uses for float32 matmuls at JAX's default precision), plus XLA's own flop count of the step (on CPU it
    misses the matmuls inside YNNPACK library fusions);
  * sampling: reverse-SDE network evaluations per second of image_diffusion's batch sampler at the cifar10
    sampler batch (1000), timed over `--sample_steps` steps.
Projection (hours) = training steps x step time + sample-steps x time per sample-step, for train_dit:cifar10
(200k steps + 10k samples x 250 steps) and prune_dit:cifar10 (base, the fine-tunes and samples of every run the
experiment makes, the weight-decay base, the "where" samplers); evaluation (features, FD/KID, nearest neighbours)
and checkpointing are not included.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dit_vs_pytorch import JaxSide, dit_flops  # noqa: E402

# Dense peak TFLOP/s (bf16, float32 as used by XLA at default precision) by device-kind substring.
PEAKS = {
    "H200": (989.5, 494.7), "H100 PCIe": (756.0, 378.0), "H100": (989.5, 494.7), "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0), "L4": (121.0, 60.0), "A10G": (70.0, 35.0), "V100": (125.0, 15.7),
    "TPU v6": (918.0, 918.0), "TPU v5p": (459.0, 459.0), "TPU v5": (197.0, 197.0), "TPU v4": (275.0, 275.0),
}
FULL = dict(image=32, channels=3, patch=2, hidden=384, depth=12, heads=6, batch=128, sample_batch=1000)
SMALL = dict(image=8, channels=1, patch=2, hidden=32, depth=2, heads=2, batch=8, sample_batch=16)


def peak_tflops(kind: str, override: str) -> tuple[float | None, float | None]:
    if override:
        bf16, f32 = (float(v) for v in override.split(","))
        return bf16, f32
    for k, v in PEAKS.items():
        if k.lower() in kind.lower():
            return v
    return None, None


def _timed(fn, iters: int) -> float:
    t0 = time.perf_counter()
    fn(iters)
    return (time.perf_counter() - t0) / iters


def measure(size: dict, dtype: str, train_iters: int, sample_steps: int, sample_iters: int) -> dict:
    t0 = time.perf_counter()
    side = JaxSide(size["image"], size["channels"], size["patch"], size["hidden"], size["depth"], size["heads"],
                   size["batch"], size["sample_batch"], sample_steps, dtype=dtype)
    side.train_step()
    compile_s = time.perf_counter() - t0
    side.train_step(2)
    step_s = _timed(side.train_step, train_iters)
    compiled = side.step_fn.lower(side.state, data=side.data, key_data=side.key_data).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    side.sample()
    sample_call_s = _timed(side.sample, sample_iters)
    nfe = sample_steps + 1                                # Euler-Maruyama steps + the Tweedie step
    flops = 3 * dit_flops(size["image"], size["channels"], size["patch"], size["hidden"], size["depth"],
                          size["heads"]) * size["batch"]
    stats = jax.devices()[0].memory_stats() or {}
    return dict(
        dtype=dtype, batch=size["batch"], compile_and_first_step_s=compile_s, step_s=step_s,
        steps_per_s=1.0 / step_s, model_flops_per_step=flops, model_tflops_per_s=flops / step_s / 1e12,
        xla_flops_per_step=float(cost.get("flops", float("nan"))) if cost else None,
        memory_bytes=None if mem is None else dict(
            arguments=int(mem.argument_size_in_bytes), outputs=int(mem.output_size_in_bytes),
            temporaries=int(mem.temp_size_in_bytes), generated_code=int(mem.generated_code_size_in_bytes)),
        device_peak_bytes_in_use=stats.get("peak_bytes_in_use"),
        sample_batch=size["sample_batch"], sample_nfe_per_call=nfe,
        sample_call_s=sample_call_s, sample_steps_per_s=size["sample_batch"] * nfe / sample_call_s)


def prune_dit_counts(cfg) -> dict:
    """Training steps and sample-steps of one prune_dit run, counted on the experiment's own plan
    (diffmem.experiments.prune_dit.pipeline.plan_runs) and its where-decided samplers."""
    from diffmem.experiments.prune_dit import pipeline, settings
    s = settings.parse_config(cfg)
    runs = pipeline.plan_runs(s)
    ft_runs = sum(r.tuned for r in runs)
    base_steps = s.train.steps * s.design.bases * (2 if s.weight_decay.base else 1)
    samples = len(runs) * s.sampler.num_samples
    where = 0
    if s.where.enabled:
        pairs = len(s.where.swap_pairs)
        taus0 = len(set(s.where.taus_u) | {s.claims.swap_tau})
        # per pair and tau the two swapped samplers at sampler.num_samples (base 0: every tau, the other bases:
        # claims.swap_tau); base 0's trajectories at where.num_samples
        where = (s.where.num_samples if s.where.trajectory else 0) + s.sampler.num_samples * pairs * 2 * (
            taus0 + s.design.bases - 1)
    return dict(train_steps=base_steps + ft_runs * s.finetune.steps, train_batch=s.train.batch_size,
                finetune_runs=ft_runs, sample_runs=len(runs),
                sample_steps=(samples + where) * (s.sampler.steps + 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--small", action="store_true", help="a tiny DiT (CPU smoke test, seconds)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--train_iters", type=int, default=None, help="timed training steps (default 50; 3 small)")
    ap.add_argument("--sample_steps", type=int, default=None, help="sampler steps per timed call (25; 2 small)")
    ap.add_argument("--peak_tflops", default="", help="'bf16,f32' dense peak TFLOP/s (default: by device kind)")
    args = ap.parse_args()
    size = SMALL if args.small else FULL
    train_iters = args.train_iters or (3 if args.small else 50)
    sample_steps = args.sample_steps or (2 if args.small else 25)
    dev = jax.devices()[0]
    peaks = peak_tflops(dev.device_kind, args.peak_tflops)
    t_start = time.perf_counter()
    out = dict(device=dict(platform=dev.platform, kind=dev.device_kind, count=jax.device_count(),
                           jax=jax.__version__, peak_tflops_bf16=peaks[0], peak_tflops_f32=peaks[1]),
               model=dict(size, name="small" if args.small else "DiT-S/2"), runs={}, projections={})
    print(f"{dev.platform} {dev.device_kind} x{jax.device_count()}  model {out['model']}", flush=True)
    for dtype in args.dtypes.split(","):
        r = measure(size, dtype, train_iters, sample_steps, 1 if args.small else 2)
        peak = peaks[0] if dtype == "bfloat16" else peaks[1]
        r["mfu"] = None if peak is None else r["model_tflops_per_s"] / peak
        out["runs"][dtype] = r
        print(f"{dtype}: {r['steps_per_s']:.2f} steps/s (batch {r['batch']}), {r['model_tflops_per_s']:.2f} "
              f"TFLOP/s, MFU {r['mfu']}, sampling {r['sample_steps_per_s']:.0f} sample-steps/s, memory "
              f"{r['memory_bytes']}", flush=True)

    from configs import prune_dit as prune_cfg, train_dit as train_cfg
    tc = train_cfg.get_config("cifar10")
    td = dict(train_steps=tc.train.steps, train_batch=tc.train.batch_size,
              sample_steps=tc.sampler.num_samples * (tc.sampler.steps + 1) * len(tc.ns))
    td["train_steps"] *= len(tc.ns)
    pd = prune_dit_counts(prune_cfg.get_config("cifar10"))
    for name, counts in (("train_dit:cifar10", td), ("prune_dit:cifar10", pd)):
        proj = dict(counts)
        for dtype, r in out["runs"].items():  # (--small: the tiny model's times, only a smoke test)
            proj[f"hours_{dtype}"] = (counts["train_steps"] * r["step_s"]
                                      + counts["sample_steps"] / r["sample_steps_per_s"]) / 3600
        out["projections"][name] = proj
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in proj.items() if k.startswith("hours")), flush=True)
    out["wall_s"] = time.perf_counter() - t_start
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
