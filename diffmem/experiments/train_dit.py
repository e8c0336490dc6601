"""Memorization of a DiT against the training-set size (arXiv 2511.03202, Section 6.2's setting).

For every n in config.ns (its own sub-workdir <workdir>/n<n>/):
  1. train an unconditional eps-prediction DiT on the first n images of one seeded permutation of the dataset
     (nested subsets) with the DDPM-time eps loss (image_diffusion.train_model);
  2. draw num_samples samples (reverse SDE or probability-flow ODE from T = t(1) to t0 = t(u_min), EMA params);
  3. evaluate (diffmem.eval.images): memorization in pixel space against the n training images, FD / KID /
     precision-recall of features against the reference set, and two baselines that put the numbers in scale:
     a perfect copier and the criterion applied to real unseen images.

Randomness (diffmem.rng): model init and training stream under stream(seed, "base"), samples
stream(seed, "samples") with one key per sample: the same keys for every n (common random numbers).
Resume: each n keeps orbax checkpoints, samples.npz and results.json, each stamped with the settings that produced
it; a re-run reuses every stage whose stamp matches (a larger train.steps continues from the last checkpoint). A
workdir trained with other settings (model, data, optimizer) is refused with the differing fields named.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import numpy as np
from absl import logging

from diffmem import config as config_lib
from diffmem import data as data_lib
from diffmem import image_diffusion as idf
from diffmem import io, losses, plots, rng, tracking, training
from diffmem.config import (DiffusionConfig, DiTConfig, ImageDataConfig, ImageEvalConfig, SamplerConfig, Schema,
                            TrainConfig, field)
from diffmem.eval import images as eval_images
from diffmem.eval import neighbors

RESULTS_VERSION = 1  # bump when the per-n results change meaning or fields: older results.json are recomputed


@dataclasses.dataclass(frozen=True)
class Settings(Schema):
    """configs/train_dit.py, validated."""
    experiment: str = field("train_dit", choices=("train_dit",))
    seed: int = field(0, min=0)
    preset: str = field("")
    ns: tuple[int, ...] = field((64,), item_min=2, nonempty=True)
    progress: bool = field(True)
    data: ImageDataConfig = field(ImageDataConfig())
    model: DiTConfig = field(DiTConfig(patch=4, hidden=128, depth=2, heads=8))
    diffusion: DiffusionConfig = field(DiffusionConfig())
    train: TrainConfig = field(TrainConfig())
    sampler: SamplerConfig = field(SamplerConfig())
    eval: ImageEvalConfig = field(ImageEvalConfig())

    def check(self):
        if len(set(self.ns)) != len(self.ns):
            raise self.fail("ns", f"must be distinct, got {list(self.ns)}")
        if self.sampler.num_samples <= self.eval.k:
            raise self.fail("sampler", f".num_samples ({self.sampler.num_samples}) must exceed config.eval.k "
                                       f"({self.eval.k}) for the k-NN precision/recall")


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming the field for anything unknown, missing or out of range."""
    return config_lib.parse_config(Settings, config)


# ------------------------------------------------------------------------------------------ data

def load_training_sets(s: Settings) -> dict[int, data_lib.ImageData]:
    """{n: the n-image training subset}; the largest first, so a too-large n fails before any work."""
    out = {}
    for n in sorted(s.ns, reverse=True):
        try:
            out[n] = data_lib.load_images(s.data.name, n=n, seed=s.data.seed, data_dir=s.data.directory,
                                          crop=s.data.crop, pool=s.data.pool)
        except ValueError as e:
            raise ValueError(f"config.data.name={s.data.name!r} / config.ns (n={n}): {e}") from None
    shapes = {d.image_shape for d in out.values()}
    if len(shapes) != 1:
        raise ValueError(f"training subsets have different image shapes {sorted(shapes)}")
    return out


# ------------------------------------------------------------------------------------------ one n

def _train_stamp(s: Settings, d: data_lib.ImageData) -> dict:
    tc = {k: v for k, v in dataclasses.asdict(s.train).items() if k not in config_lib.RESUMABLE_TRAIN_FIELDS}
    return dict(seed=s.seed, data=d.name, n=d.n, indices_sha1=io.sha1_arrays(d.indices), model=s.model.resolved(),
                u_min=s.diffusion.u_min, train=tc)


def run_one(s: Settings, d: data_lib.ImageData, ref: eval_images.Reference, ref_features: np.ndarray, extractor,
            n_dir: str, pad_to: Optional[int] = None) -> dict:
    """Train / sample / evaluate one training-set size in n_dir (each stage reused when its stamp matches).

    Returns the per-n results (written to n_dir/results.json) plus 'this_run' (what this call did).
    """
    io.makedirs(n_dir)
    t_stamp = _train_stamp(s, d)
    io.check_stamp(os.path.join(n_dir, "train_settings.json"), t_stamp, "model",
                   "use a fresh workdir (only train.steps / log_every / ckpt_every / keep_ckpts may change on resume)")
    s_stamp = json.loads(json.dumps(dict(train=t_stamp, steps=s.train.steps, sampler=dataclasses.asdict(s.sampler))))
    e_stamp = json.loads(json.dumps(dict(samples=s_stamp, eval=dataclasses.asdict(s.eval),
                                         reference=dict(kind=ref.kind, sha1=io.sha1_arrays(ref.images)),
                                         features=extractor.name, version=RESULTS_VERSION)))
    res_path = os.path.join(n_dir, "results.json")
    old = io.read_json(res_path)
    if old is not None and old.get("stamp") == e_stamp:
        logging.info("n=%d: finished results found in %s, skipping", d.n, res_path)
        return dict(old, this_run=dict(reused="results", steps_trained=0, wall_s=0.0, cpu_s=0.0))

    w0, c0 = time.perf_counter(), time.process_time()
    timing: dict[str, float] = {}
    samples_path = os.path.join(n_dir, "samples.npz")
    samples, reused, steps_trained = None, "none", 0
    if io.exists(samples_path):
        f = io.load_npz(samples_path)
        if json.loads(str(f["stamp"])) == s_stamp:
            samples, reused = f["samples"], "samples"
    if samples is None:
        model = idf.model_from_config(d.image_shape, s.model)
        t, c = time.perf_counter(), time.process_time()
        state, steps_trained = idf.train_model(model, d.images, s.train, n_dir, key=rng.stream(s.seed, "base"),
                                               u_min=s.diffusion.u_min, pad_to=pad_to, progress=s.progress)
        timing.update(train_wall_s=time.perf_counter() - t, train_cpu_s=time.process_time() - c)
        reused = "checkpoint" if steps_trained == 0 else "none"
        logging.info("n=%d: %d steps trained now (%s), %.1f s", d.n, steps_trained,
                     "restored finished checkpoint" if steps_trained == 0 else "trained", timing["train_wall_s"])
        t, c = time.perf_counter(), time.process_time()
        samples = idf.sample(model, idf.sampling_params(state, s.sampler.use_ema), rng.stream(s.seed, "samples"),
                             s.sampler, s.diffusion.u_min, progress=s.progress)
        timing.update(sample_wall_s=time.perf_counter() - t, sample_cpu_s=time.process_time() - c)
        io.save_npz(samples_path, samples=samples.astype(np.float32), stamp=np.asarray(json.dumps(s_stamp)))

    t, c = time.perf_counter(), time.process_time()
    ev = s.eval
    summary, mem = eval_images.evaluate_samples(samples, d.images, ref_features, extractor, k=ev.k, ratio=ev.ratio,
                                                kid_subsets=ev.kid_subsets, seed=s.seed)
    io.save_npz(os.path.join(n_dir, "nn.npz"), nn_idx=mem["nn_idx"], nn_dist=mem["nn_dist"],
                memorized=mem["memorized"], dist_ratio=mem["dist_ratio"], train_indices=d.indices)
    m = len(samples)
    summary["num_samples"] = m
    copy = eval_images.copy_baseline(d.images, m, extractor, ref_features, ev, s.seed)
    heldout_mem = (neighbors.memorization(ref.images, d.images, ev.ratio)["memorization_ratio"]
                   if ref.disjoint else None)
    if ev.grid_samples:
        g = min(ev.grid_samples, m)
        canvas = plots.pair_grid(os.path.join(n_dir, "samples_vs_nn.png"), samples[:g],
                                 d.images[mem["nn_idx"][:g]], ncols=min(16, g), highlight=mem["memorized"][:g],
                                 sample_label=f"DiT sample (n={d.n})")
        if s.train.tensorboard:  # the same grid beside the loss curves in <n_dir>/tensorboard
            tracking.log_image(n_dir, "samples_vs_nn", canvas, step=s.train.steps)
    records = training.read_metrics(n_dir)
    floor = losses.empirical_eps_loss(d.images, s.diffusion.u_min, rng.stream(s.seed, "loss_floor"))
    plot_loss_curves(os.path.join(n_dir, "loss_curve.png"), {d.n: records}, {d.n: floor["loss"]})
    timing.update(eval_wall_s=time.perf_counter() - t, eval_cpu_s=time.process_time() - c)
    last = records[-1] if records else {}
    result = dict(
        n=d.n, train_steps=s.train.steps, batch_size=s.train.batch_size,
        epochs=s.train.steps * s.train.batch_size / d.n,
        final_loss=last.get("loss"), final_loss_bins={k: v for k, v in last.items() if k.startswith("loss_bin")},
        empirical_optimum_loss=floor, **summary, copy_baseline=copy, heldout_memorization_ratio=heldout_mem,
        timing=timing, stamp=e_stamp)
    io.write_json(res_path, result)
    return dict(result, this_run=dict(reused=reused, steps_trained=steps_trained,
                                      wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0))


# ------------------------------------------------------------------------------------------ plots

def plot_loss_curves(path: str, curves: dict[int, list[dict]], optimum: Optional[dict[int, float]] = None) -> None:
    """Training loss (mean eps-MSE per logged window) against step, one line per n; log-scale loss. Dashed: the
    loss of the empirical score for that n (losses.empirical_eps_loss, the memorization floor)."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (n, recs) in enumerate(sorted(curves.items())):
        if recs:
            ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], color=f"C{i}", label=f"n={n}")
        if optimum and n in optimum:
            ax.axhline(optimum[n], color=f"C{i}", ls="--", lw=1)
    ax.set(xlabel="step", ylabel="eps loss (per pixel)", yscale="log",
           title="training loss (dashed: empirical-score loss)")
    plots.integer_ticks(ax, "x")
    ax.legend()
    plots.save_figure(fig, path)


def plot_memorization(path: str, runs: list[dict]) -> None:
    """Memorization ratio (with binomial standard error) against n, and the held-out baseline."""
    plt = plots.pyplot()
    runs = sorted(runs, key=lambda r: r["n"])
    ns = [r["n"] for r in runs]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(ns, [r["memorization_ratio"] for r in runs], yerr=[r["memorization_stderr"] for r in runs],
                marker="o", capsize=3, label="DiT samples")
    held = [r["heldout_memorization_ratio"] for r in runs]
    if all(h is not None for h in held):
        ax.plot(ns, held, "s--", color="gray", label="held-out real images")
    ax.set(xscale="log", xlabel="training images n", ylabel="memorization ratio", ylim=(-0.02, 1.02),
           title="memorization vs n")
    plots.integer_ticks(ax, "x", ns)
    ax.legend()
    plots.save_figure(fig, path)


# ------------------------------------------------------------------------------------------ run

TABLE_FIELDS = ("n", "epochs", "memorization_ratio", "memorization_stderr", "fd", "kid_mean", "precision", "recall",
                "copy_fd", "copy_precision", "copy_recall", "heldout_memorization_ratio", "final_loss")


def _table(runs: list[dict]) -> list[dict]:
    rows = []
    for r in sorted(runs, key=lambda r: r["n"]):
        row = {k: r[k] for k in TABLE_FIELDS if k in r}
        for k in ("fd", "precision", "recall"):
            row[f"copy_{k}"] = r["copy_baseline"][k]
        rows.append({k: row[k] for k in TABLE_FIELDS})
    return rows


def format_table(rows: list[dict]) -> str:
    hdr = f"{'n':>6} {'epochs':>8} {'mem':>6} {'+-':>5} {'FD':>8} {'prec':>5} {'rec':>5} " \
          f"{'copyFD':>8} {'c.prec':>6} {'c.rec':>5} {'heldout':>7}"
    lines = [hdr]
    for r in rows:
        h = "-" if r["heldout_memorization_ratio"] is None else f"{r['heldout_memorization_ratio']:.3f}"
        lines.append(f"{r['n']:>6} {r['epochs']:>8.0f} {r['memorization_ratio']:>6.3f} "
                     f"{r['memorization_stderr']:>5.3f} {r['fd']:>8.3f} {r['precision']:>5.2f} {r['recall']:>5.2f} "
                     f"{r['copy_fd']:>8.3f} {r['copy_precision']:>6.2f} {r['copy_recall']:>5.2f} {h:>7}")
    return "\n".join(lines)


def run(config, workdir: str) -> dict:
    """The experiment (see the module docstring); writes <workdir>/results.json and plots, returns the results."""
    s = parse_config(config)
    w0, c0 = time.perf_counter(), time.process_time()
    sets = load_training_sets(s)
    largest = sets[max(s.ns)]
    model = idf.model_from_config(largest.image_shape, s.model)
    ref = eval_images.load_reference(s.data, s.eval, largest)
    t, c = time.perf_counter(), time.process_time()
    extractor = eval_images.make_extractor(s.eval, ref.pool, workdir, s.seed)
    ref_features = extractor(ref.images)
    feat_time = dict(wall_s=time.perf_counter() - t, cpu_s=time.process_time() - c)
    num_params = idf.num_params(model)
    logging.info("train_dit: %s, ns=%s, DiT %s (%d params), reference %s (%d images), features %s",
                 s.data.name, list(s.ns), s.model.resolved(), num_params, ref.kind, len(ref.images), extractor.name)

    runs = []
    for n in sorted(s.ns):
        runs.append(run_one(s, sets[n], ref, ref_features, extractor, os.path.join(workdir, f"n{n}"),
                            pad_to=max(s.ns)))
        logging.info("n=%d: memorization %.3f, FD %.3f, precision %.3f, recall %.3f (%s)", n,
                     runs[-1]["memorization_ratio"], runs[-1]["fd"], runs[-1]["precision"], runs[-1]["recall"],
                     runs[-1]["this_run"]["reused"])
    curves = {r["n"]: training.read_metrics(os.path.join(workdir, f"n{r['n']}")) for r in runs}
    plot_loss_curves(os.path.join(workdir, "loss_curves.png"), curves,
                     {r["n"]: r["empirical_optimum_loss"]["loss"] for r in runs})
    plot_memorization(os.path.join(workdir, "memorization_vs_n.png"), runs)
    table = _table(runs)
    logging.info("train_dit results:\n%s", format_table(table))
    t0, t1 = idf.time_range(s.diffusion.u_min)
    results = dict(
        experiment="train_dit", preset=s.preset, seed=s.seed,
        data=dict(name=s.data.name, seed=s.data.seed, image_shape=list(largest.image_shape), ns=list(s.ns)),
        model=dict(s.model.resolved(), num_params=num_params),
        diffusion=dict(u_min=s.diffusion.u_min, t0=t0, T=t1),
        train=dataclasses.asdict(s.train), sampler=dataclasses.asdict(s.sampler),
        reference=dict(kind=ref.kind, n_ref=int(len(ref.images)), source=ref.pool.name,
                       disjoint_from_training=ref.disjoint),
        features=dict(kind=extractor.name, **eval_images.feature_info(extractor)),
        runs=runs, table=table,
        timing=dict(total_wall_s=time.perf_counter() - w0, total_cpu_s=time.process_time() - c0,
                    features=feat_time))
    io.write_json(os.path.join(workdir, "results.json"), results)
    return results
