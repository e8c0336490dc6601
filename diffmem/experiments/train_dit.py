"""Train a DiT on an n-image subset, sample it, measure memorization and quality (PAPER.md section 4).

For every n in config.ns (its own sub-workdir <workdir>/n<n>/):
  1. train an unconditional eps-prediction DiT on the first n images of one seeded permutation of the dataset
     (data.load_images(name, n, seed): nested subsets) with the DDPM-time eps loss (image_diffusion.make_loss);
  2. draw num_samples samples (reverse SDE or probability-flow ODE from T = t(1) to t0 = t(u_min), EMA params);
  3. memorization ratio in pixel space against the n training images (||x - NN1|| < ratio ||x - NN2||), and
     FD / KID / precision-recall (k-NN manifolds, k = 3) of classifier features against a reference set.
Two baselines per n put the numbers in scale: `copy` = num_samples draws with replacement from the training images
(what a sampler that only returns training points, e.g. the empirical score's, produces: memorization 1 up to
duplicates) scored like the samples; `heldout_memorization_ratio` = the memorization ratio of the reference images
themselves against the training images (the criterion's false-positive rate on real unseen images; only when the
reference is disjoint from the training set).

Randomness: model init fold_in(key(seed), 1, 0), training stream fold_in(key(seed), 1, 1), samples
fold_in(key(seed), 2) with one key per sample: the same keys for every n (common random numbers).

Resume: each n keeps orbax checkpoints (train.train resumes an interrupted run, or restores a finished one without
training), samples.npz and results.json, each stamped with the settings that produced it; a re-run reuses every
stage whose stamp matches (a larger train.steps continues training from the last checkpoint). A workdir trained
with other settings (model, data, optimizer) is refused with the differing fields named.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Optional

import jax
import numpy as np
from absl import logging

from diffmem import data as data_lib
from diffmem import experiments, image_diffusion as idf, metrics, train
from diffmem.models import dit as dit_lib

SECTIONS = {
    "data": ("name", "seed", "data_dir"),
    "model": ("name", "patch", "hidden", "depth", "heads", "mlp_ratio", "dtype"),
    "diffusion": ("u_min",),
    "train": tuple(f.name for f in dataclasses.fields(train.TrainConfig) if f.name != "seed"),
    "sampler": tuple(f.name for f in dataclasses.fields(idf.SamplerConfig)),
    "eval": ("reference", "num_ref", "features", "feature_steps", "k", "ratio", "kid_subsets", "grid_samples",
             "inception_weights"),
}
TOP_LEVEL = ("experiment", "seed", "preset", "ns", "progress") + tuple(SECTIONS)
REFERENCES = ("heldout", "test", "all")
RESULTS_VERSION = 1  # bump when the per-n results change meaning or fields: older results.json are recomputed
FEATURES = ("classifier", "pixels", "inception")
FEATURE_INFO = ("test_accuracy", "cached", "weights", "weights_sha1", "implementation")  # provenance in results.json
# Train settings that may change between runs of one workdir without invalidating its checkpoints.
_RESUMABLE_TRAIN_FIELDS = ("steps", "log_every", "ckpt_every", "keep_ckpts")


# ------------------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated, plain-valued form of the config."""
    seed: int
    preset: str
    data_name: str
    data_seed: int
    data_dir: Optional[str]
    ns: tuple[int, ...]
    model: dict          # resolved DiT sizes: patch, hidden, depth, heads, mlp_ratio, dtype (+ name)
    u_min: float
    train: train.TrainConfig
    sampler: idf.SamplerConfig
    eval: dict
    progress: bool


def _require(sec: dict, name: str, keys) -> None:
    missing = [k for k in keys if k not in sec]
    if missing:
        raise ValueError(f"config.{name} is missing key(s) {missing}")


def resolve_model(model: dict) -> dict:
    """config.model -> dict(name, patch, hidden, depth, heads, mlp_ratio, dtype): sizes of dit.DIT_CONFIGS[name]
    with the non-zero fields overriding them (name '' needs all four sizes)."""
    name = model.get("name", "")
    sizes = {}
    if name:
        try:
            sizes = dit_lib.dit_kwargs(name)
        except ValueError as e:
            raise ValueError(f"config.model.name: {e}") from None
    for f in ("patch", "hidden", "depth", "heads"):
        v = experiments.check_int(f"config.model.{f}", model.get(f, 0), 0)
        if v:
            sizes[f] = v
        elif f not in sizes:
            raise ValueError(f"config.model.{f} must be > 0 when config.model.name is empty, got {v}")
    mlp_ratio = model.get("mlp_ratio", 4.0)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
        raise ValueError(f"config.model.mlp_ratio must be a number > 0, got {mlp_ratio!r}")
    dtype = model.get("dtype", "float32")
    if dtype not in idf.MODEL_DTYPES:
        raise ValueError(f"config.model.dtype must be one of {sorted(idf.MODEL_DTYPES)}, got {dtype!r}")
    return dict(name=name, **{f: sizes[f] for f in ("patch", "hidden", "depth", "heads")},
                mlp_ratio=float(mlp_ratio), dtype=dtype)


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming the field for anything unknown, missing or out of range."""
    unknown = sorted(set(config.keys()) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; accepted: {list(TOP_LEVEL)}")
    sec = {name: experiments.config_section(config, name, SECTIONS[name]) for name in SECTIONS}
    _require(sec["data"], "data", ("name",))
    name = sec["data"]["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"config.data.name must be a non-empty str, one of {', '.join(data_lib.ACCEPTED_NAMES)}; "
                         f"got {name!r}")
    data_seed = experiments.check_int("config.data.seed", sec["data"].get("seed", 0), 0)
    data_dir = sec["data"].get("data_dir", "") or None
    if "ns" not in config:
        raise ValueError("config.ns is missing: a list of training-set sizes")
    ns = [experiments.check_int(f"config.ns[{i}]", n, 2) for i, n in enumerate(list(config.ns))]
    if not ns:
        raise ValueError("config.ns must be a non-empty list of training-set sizes >= 2")
    if len(set(ns)) != len(ns):
        raise ValueError(f"config.ns must be distinct, got {ns}")
    model = resolve_model(sec["model"])
    _require(sec["diffusion"], "diffusion", ("u_min",))
    try:
        u_min = idf.check_u_min(sec["diffusion"]["u_min"])
    except ValueError as e:
        raise ValueError(f"config.diffusion.{e}") from None
    try:
        tcfg = train.TrainConfig.from_dict({**sec["train"], "seed": int(config.get("seed", 0))})
        scfg = idf.SamplerConfig(**sec["sampler"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.train / config.sampler: {e}") from None
    ev = dict(sec["eval"])
    _require(ev, "eval", [k for k in SECTIONS["eval"] if k != "inception_weights"])
    if ev["reference"] not in REFERENCES:
        raise ValueError(f"config.eval.reference must be one of {REFERENCES}, got {ev['reference']!r}")
    check_features(ev)
    ev["num_ref"] = experiments.check_int("config.eval.num_ref", ev["num_ref"], 0)
    ev["feature_steps"] = experiments.check_int("config.eval.feature_steps", ev["feature_steps"], 1)
    ev["k"] = experiments.check_int("config.eval.k", ev["k"], 1)
    ev["kid_subsets"] = experiments.check_int("config.eval.kid_subsets", ev["kid_subsets"], 1)
    ev["grid_samples"] = experiments.check_int("config.eval.grid_samples", ev["grid_samples"], 0)
    r = ev["ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
        raise ValueError(f"config.eval.ratio must be a number in (0, 1] (paper: 1/3), got {r!r}")
    ev["ratio"] = float(r)
    if scfg.num_samples <= ev["k"]:
        raise ValueError(f"config.sampler.num_samples ({scfg.num_samples}) must exceed config.eval.k ({ev['k']}) "
                         "for the k-NN precision/recall")
    if ev["num_ref"] and ev["num_ref"] <= ev["k"]:
        raise ValueError(f"config.eval.num_ref ({ev['num_ref']}) must be 0 (all) or exceed config.eval.k "
                         f"({ev['k']})")
    return Settings(seed=experiments.check_int("config.seed", config.get("seed", 0), 0), preset=str(config.get("preset", "")),
                    data_name=name, data_seed=data_seed, data_dir=data_dir, ns=tuple(ns), model=model,
                    u_min=u_min, train=tcfg, sampler=scfg, eval=ev, progress=bool(config.get("progress", True)))


# ------------------------------------------------------------------------------------------ data

@dataclasses.dataclass(frozen=True)
class Reference:
    """Reference images for the quality metrics and the labelled pool the feature classifier trains on."""
    images: np.ndarray
    pool: data_lib.ImageData
    kind: str
    disjoint: bool       # no reference image is a training image of any n


def load_training_sets(s: Settings) -> dict[int, data_lib.ImageData]:
    """{n: the n-image training subset}; the largest first, so a too-large n fails before any work."""
    out = {}
    for n in sorted(s.ns, reverse=True):
        try:
            out[n] = data_lib.load_images(s.data_name, n=n, seed=s.data_seed, data_dir=s.data_dir)
        except ValueError as e:
            raise ValueError(f"config.data.name={s.data_name!r} / config.ns (n={n}): {e}") from None
    shapes = {d.image_shape for d in out.values()}
    if len(shapes) != 1:
        raise ValueError(f"training subsets have different image shapes {sorted(shapes)}")
    return out


def load_reference(s: Settings, largest: data_lib.ImageData) -> Reference:
    """The reference set of config.eval.reference (see configs/train_dit.py), capped at num_ref (seeded)."""
    kind = s.eval["reference"]
    try:
        pool = data_lib.load_images(s.data_name, n=None, seed=s.data_seed, split="test" if kind == "test" else "train",
                                    data_dir=s.data_dir)
    except ValueError as e:
        raise ValueError(f"config.eval.reference={kind!r}: {e}") from None
    if kind == "heldout":
        keep = np.ones(pool.n, bool)
        keep[largest.indices] = False
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            raise ValueError(f"config.eval.reference='heldout' needs max(config.ns)={largest.n} below the dataset size "
                             f"{pool.n} (use 'all' or 'test')")
    else:
        idx = np.arange(pool.n)
    if s.eval["num_ref"] and s.eval["num_ref"] < idx.size:
        idx = np.sort(np.random.default_rng(s.data_seed).permutation(idx)[: s.eval["num_ref"]])
    if idx.size <= s.eval["k"]:
        raise ValueError(f"config.eval.reference={kind!r} leaves {idx.size} reference images; need more than "
                         f"config.eval.k={s.eval['k']}")
    if pool.image_shape != largest.image_shape:
        raise ValueError(f"reference images {pool.image_shape} and training images {largest.image_shape} differ")
    return Reference(images=pool.images[idx], pool=pool, kind=kind, disjoint=kind != "all")


def check_features(ev: dict) -> None:
    """Validates config.eval.features and config.eval.inception_weights in place (shared with prune_dit)."""
    if ev["features"] not in FEATURES:
        raise ValueError(f"config.eval.features must be one of {FEATURES}, got {ev['features']!r}")
    w = ev.get("inception_weights", "") or ""
    if not isinstance(w, str):
        raise ValueError(f"config.eval.inception_weights must be a path (str), got {w!r}")
    if ev["features"] == "inception":
        if not w:
            raise ValueError("config.eval.inception_weights must be the path of a Keras InceptionV3 weights file when "
                             "config.eval.features='inception' (weights are not bundled; see diffmem/inception.py)")
        if not os.path.isfile(os.path.expanduser(w)):
            raise ValueError(f"config.eval.inception_weights={w!r} is not a file")
    elif w:
        raise ValueError(f"config.eval.inception_weights is only used with config.eval.features='inception', "
                         f"got features={ev['features']!r}")
    ev["inception_weights"] = w


def make_feature_extractor(ev: dict, pool: data_lib.ImageData, workdir: str,
                           seed: int) -> metrics.FeatureExtractor:
    """config.eval.features: 'classifier' (metrics' offline CNN trained on the pool's labels, cached in
    <workdir>/feature_net), 'pixels' (flattened pixels) or 'inception' (diffmem.inception, from
    config.eval.inception_weights). Shared with prune_dit."""
    if ev["features"] == "pixels":
        return metrics.get_feature_extractor("pixels")
    if ev["features"] == "inception":
        return metrics.get_feature_extractor("inception", inception_weights=ev["inception_weights"])
    if (pool.labels < 0).any():
        raise ValueError(f"config.eval.features='classifier' needs labelled images; {pool.name} has none "
                         "(use features='pixels' or 'inception')")
    return metrics.get_feature_extractor("classifier", pool.images, pool.labels, workdir,
                                         steps=ev["feature_steps"], seed=seed)


# ------------------------------------------------------------------------------------------ stamps


def _train_stamp(s: Settings, d: data_lib.ImageData) -> dict:
    tc = {k: v for k, v in dataclasses.asdict(s.train).items() if k not in _RESUMABLE_TRAIN_FIELDS}
    return dict(seed=s.seed, data=d.name, n=d.n, indices_sha1=experiments.sha1_arrays(d.indices), model=s.model, u_min=s.u_min,
                train=tc)


def _sample_stamp(s: Settings, train_stamp: dict) -> dict:
    return dict(train=train_stamp, steps=s.train.steps, sampler=dataclasses.asdict(s.sampler))


def _check_train_stamp(path: str, stamp: dict) -> None:
    old = experiments.read_json(path)
    if old is None:
        experiments.write_json(path, stamp)
        return
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(stamp))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = {k: (old.get(k), new.get(k)) for k in diff}
        raise ValueError(f"{os.path.dirname(path)} holds a model trained with other settings (fields {diff}: "
                         f"(stored, requested) = {detail}); use a fresh workdir (only train.steps / log_every / "
                         f"ckpt_every / keep_ckpts may change on resume)")


# ------------------------------------------------------------------------------------------ one n

def run_one(s: Settings, d: data_lib.ImageData, ref: Reference, ref_features: np.ndarray,
            extractor: metrics.FeatureExtractor, n_dir: str, pad_to: Optional[int] = None) -> dict:
    """Train / sample / evaluate one training-set size in n_dir (each stage reused when its stamp matches).

    Returns the per-n results (written to n_dir/results.json) plus 'this_run' (what this call did).
    """
    os.makedirs(n_dir, exist_ok=True)
    t_stamp = _train_stamp(s, d)
    _check_train_stamp(os.path.join(n_dir, "train_settings.json"), t_stamp)
    s_stamp = _sample_stamp(s, t_stamp)
    e_stamp = dict(samples=s_stamp, eval=s.eval, reference=dict(kind=ref.kind, sha1=experiments.sha1_arrays(ref.images)),
                   features=extractor.name, version=RESULTS_VERSION)
    e_stamp = json.loads(json.dumps(e_stamp))
    res_path = os.path.join(n_dir, "results.json")
    old = experiments.read_json(res_path)
    if old is not None and old.get("stamp") == e_stamp:
        logging.info("n=%d: finished results found in %s, skipping", d.n, res_path)
        return dict(old, this_run=dict(reused="results", steps_trained=0, wall_s=0.0, cpu_s=0.0))

    w0, c0 = time.perf_counter(), time.process_time()
    timing: dict[str, float] = {}
    samples_path = os.path.join(n_dir, "samples.npz")
    samples = None
    reused = "none"
    steps_trained = 0
    if os.path.exists(samples_path):
        with np.load(samples_path) as f:
            if json.loads(str(f["stamp"])) == json.loads(json.dumps(s_stamp)):
                samples = f["samples"]
                reused = "samples"
    if samples is None:
        model = idf.build_model(d.image_shape, **{k: v for k, v in s.model.items() if k != "name"})
        t, c = time.perf_counter(), time.process_time()
        state, steps_trained = idf.train_model(model, d.images, s.train, n_dir,
                                               key=jax.random.fold_in(jax.random.key(s.seed), 1), u_min=s.u_min,
                                               pad_to=pad_to, progress=s.progress)
        timing.update(train_wall_s=time.perf_counter() - t, train_cpu_s=time.process_time() - c)
        reused = "checkpoint" if steps_trained == 0 else "none"
        logging.info("n=%d: %d steps trained now (%s), %.1f s", d.n, steps_trained,
                     "restored finished checkpoint" if steps_trained == 0 else "trained", timing["train_wall_s"])
        t, c = time.perf_counter(), time.process_time()
        samples = idf.sample(model, idf.sampling_params(state, s.sampler.use_ema),
                             jax.random.fold_in(jax.random.key(s.seed), 2), s.sampler, s.u_min, progress=s.progress)
        timing.update(sample_wall_s=time.perf_counter() - t, sample_cpu_s=time.process_time() - c)
        experiments.save_npz(samples_path, samples=samples.astype(np.float32), stamp=np.asarray(json.dumps(s_stamp)))

    t, c = time.perf_counter(), time.process_time()
    ev = s.eval
    summary, mem = idf.evaluate_samples(samples, d.images, ref_features, extractor, k=ev["k"], ratio=ev["ratio"],
                                        kid_subsets=ev["kid_subsets"], seed=s.seed)
    experiments.save_npz(os.path.join(n_dir, "nn.npz"), nn_idx=mem["nn_idx"], nn_dist=mem["nn_dist"],
           memorized=mem["memorized"], dist_ratio=mem["dist_ratio"], train_indices=d.indices)
    m = len(samples)
    summary["memorization_stderr"] = math.sqrt(summary["memorization_ratio"] * (1 - summary["memorization_ratio"]) / m)
    summary["num_samples"] = m

    # Baselines: a perfect copier (m draws with replacement from the training images), and real unseen images.
    copy_idx = np.random.default_rng(s.seed).integers(0, d.n, m)
    copy = idf.feature_metrics(extractor(d.images[copy_idx]), ref_features, k=ev["k"],
                               kid_subsets=ev["kid_subsets"], seed=s.seed)
    copy["memorization_ratio"] = metrics.memorization(d.images[copy_idx], d.images, ev["ratio"])["memorization_ratio"]
    heldout_mem = (metrics.memorization(ref.images, d.images, ev["ratio"])["memorization_ratio"]
                   if ref.disjoint else None)

    if ev["grid_samples"]:
        g = min(ev["grid_samples"], m)
        data_lib.pair_grid(os.path.join(n_dir, "samples_vs_nn.png"), samples[:g], d.images[mem["nn_idx"][:g]],
                           ncols=min(16, g), highlight=mem["memorized"][:g])
    records = train.read_metrics(n_dir)
    optimum = idf.empirical_optimum_loss(d.images, s.u_min, jax.random.fold_in(jax.random.key(s.seed), 3))
    plot_loss_curves(os.path.join(n_dir, "loss_curve.png"), {d.n: records}, {d.n: optimum["loss"]})
    timing.update(eval_wall_s=time.perf_counter() - t, eval_cpu_s=time.process_time() - c)
    last = records[-1] if records else {}
    result = dict(
        n=d.n, train_steps=s.train.steps, batch_size=s.train.batch_size,
        epochs=s.train.steps * s.train.batch_size / d.n,
        final_loss=last.get("loss"), final_loss_bins={k: v for k, v in last.items() if k.startswith("loss_bin")},
        empirical_optimum_loss=optimum,
        **summary, copy_baseline=copy, heldout_memorization_ratio=heldout_mem,
        timing=timing, stamp=e_stamp)
    experiments.write_json(res_path, result)
    return dict(result, this_run=dict(reused=reused, steps_trained=steps_trained,
                                      wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0))


# ------------------------------------------------------------------------------------------ plots


def plot_loss_curves(path: str, curves: dict[int, list[dict]], optimum: Optional[dict[int, float]] = None) -> None:
    """Training loss (mean eps-MSE per logged window) against step, one line per n; log-scale loss. Dashed: the
    loss of the empirical score for that n (`image_diffusion.empirical_optimum_loss`, the memorization floor)."""
    plt = experiments.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (n, recs) in enumerate(sorted(curves.items())):
        if recs:
            ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], color=f"C{i}", label=f"n={n}")
        if optimum and n in optimum:
            ax.axhline(optimum[n], color=f"C{i}", ls="--", lw=1)
    ax.set(xlabel="step", ylabel="eps loss (per pixel)", yscale="log",
           title="training loss (dashed: empirical-score loss)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memorization(path: str, runs: list[dict]) -> None:
    """Memorization ratio (with binomial standard error) against n, and the copy / held-out baselines."""
    plt = experiments.pyplot()
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
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
                     f"{r['memorization_stderr']:>5.3f} {r['fd']:>8.3f} {r['precision']:>5.2f} {r['recall']:>5.2f} {r['copy_fd']:>8.3f} "
                     f"{r['copy_precision']:>6.2f} {r['copy_recall']:>5.2f} {h:>7}")
    return "\n".join(lines)


def run(config, workdir: str) -> dict:
    """The experiment (see the module docstring); writes <workdir>/results.json and plots, returns the results."""
    s = parse_config(config)
    w0, c0 = time.perf_counter(), time.process_time()
    sets = load_training_sets(s)
    largest = sets[max(s.ns)]
    try:
        model = idf.build_model(largest.image_shape, **{k: v for k, v in s.model.items() if k != "name"})
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None
    ref = load_reference(s, largest)
    t, c = time.perf_counter(), time.process_time()
    extractor = make_feature_extractor(s.eval, ref.pool, workdir, s.seed)
    ref_features = extractor(ref.images)
    feat_time = dict(wall_s=time.perf_counter() - t, cpu_s=time.process_time() - c)
    num_params = dit_lib.count_params(jax.eval_shape(lambda: idf.init_params(model, jax.random.key(0))))
    logging.info("train_dit: %s, ns=%s, DiT %s (%d params), reference %s (%d images), features %s",
                 s.data_name, list(s.ns), s.model, num_params, ref.kind, len(ref.images), extractor.name)

    runs = []
    for n in sorted(s.ns):
        runs.append(run_one(s, sets[n], ref, ref_features, extractor, os.path.join(workdir, f"n{n}"),
                            pad_to=max(s.ns)))
        logging.info("n=%d: memorization %.3f, FD %.3f, precision %.3f, recall %.3f (%s)", n,
                     runs[-1]["memorization_ratio"], runs[-1]["fd"], runs[-1]["precision"], runs[-1]["recall"],
                     runs[-1]["this_run"]["reused"])
    curves = {r["n"]: train.read_metrics(os.path.join(workdir, f"n{r['n']}")) for r in runs}
    plot_loss_curves(os.path.join(workdir, "loss_curves.png"), curves,
                     {r["n"]: r["empirical_optimum_loss"]["loss"] for r in runs})
    plot_memorization(os.path.join(workdir, "memorization_vs_n.png"), runs)
    table = _table(runs)
    logging.info("train_dit results:\n%s", format_table(table))
    results = dict(
        experiment="train_dit", preset=s.preset, seed=s.seed,
        data=dict(name=s.data_name, seed=s.data_seed, image_shape=list(largest.image_shape), ns=list(s.ns)),
        model=dict(s.model, num_params=num_params),
        diffusion=dict(u_min=s.u_min, t0=idf.time_range(s.u_min)[0], T=idf.time_range(s.u_min)[1]),
        train=dataclasses.asdict(s.train), sampler=dataclasses.asdict(s.sampler),
        reference=dict(kind=ref.kind, n_ref=int(len(ref.images)), source=ref.pool.name,
                       disjoint_from_training=ref.disjoint),
        features=dict(kind=extractor.name, **{k: v for k, v in extractor.info.items() if k in FEATURE_INFO}),
        runs=runs, table=table,
        timing=dict(total_wall_s=time.perf_counter() - w0, total_cpu_s=time.process_time() - c0,
                    features=feat_time))
    experiments.write_json(os.path.join(workdir, "results.json"), results)
    return results
