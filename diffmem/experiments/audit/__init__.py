"""Audit: how much of a set of generated images memorizes its training set, and which samples.

Bring samples from any model (an .npz with 'images' / 'samples' / 'arr_0', uint8 or float NHWC, or a folder of PNG /
JPEG files) and the training set (any diffmem.data source: 'digits', 'tfds:...', 'npz:...', 'idx:...',
'folder:<dir>'); the audit applies the memorization criterion of arXiv 2511.03202, Section 6 - a sample x is
memorized when ||x - NN1|| < ||x - NN2|| / 3 in pixel space (config.eval.ratio) - and writes

  results.json        memorization ratio with its Wilson score interval (config.level); exact duplicates inside the
                      training set (count, groups) and the ratio with them removed (neighbors.memorization(...,
                      dedupe=True): a copy of a duplicated image has NN1 = NN2 = 0 and is otherwise NOT memorized);
                      FD / KID / precision / recall of config.eval.features against config.reference; the same for
                      two calibrations: a perfect copier (eval.images.copy_baseline: draws of training images) and
                      held-out real images (reference images that are not training images)
  memorization.csv    per sample: memorized (as given / deduplicated), d1 / d2, NN1 and NN2 (position in the
                      training set, index in its source, file name for folders) and their distances
  most_memorized.png  the eval.grid_samples samples with the smallest d1 / d2 against the deduplicated training
                      set (a copy of a duplicated image counts), each above its NN1 and NN2
  dist_ratio_hist.png d1 / d2 of the samples (and of the held-out images) with the threshold
  nn*.npz             the neighbour searches, stamped with the data they were made from: a re-run reuses them

Nothing is resized implicitly: the samples and the training images must share (H, W, C) after config.data.crop /
pool (and config.samples_channels), else the error names the setting that makes them agree.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import logging

from diffmem import io
from diffmem.eval import images as eval_images
from diffmem.eval import neighbors
from diffmem.eval.distribution import feature_metrics
from diffmem.experiments.audit import inputs, report
from diffmem.experiments.audit.settings import MAX_PIXEL_FEATURES, Settings, parse_config, proportion, wilson_interval

__all__ = ["Settings", "parse_config", "run", "wilson_interval"]


def cached_memorization(path: str, samples: np.ndarray, train: np.ndarray, ratio: float, dedupe: bool) -> dict:
    """neighbors.memorization(samples, train, ratio, dedupe=...), stored at `path` with a stamp of its inputs and
    reused when the stamp matches (the exact neighbour search is the expensive step of an audit)."""
    stamp = json.dumps(dict(samples=io.sha1_arrays(samples), train=io.sha1_arrays(train), ratio=ratio,
                            dedupe=dedupe))
    keys = ("memorized", "nn_idx", "nn_dist", "dist_ratio")
    if io.exists(path):
        f = io.load_npz(path)
        if str(f.get("stamp")) == stamp:
            return {k: f[k] for k in keys}
    mem = neighbors.memorization(samples, train, ratio, dedupe=dedupe)
    io.save_npz(path, stamp=np.asarray(stamp), **{k: mem[k] for k in keys})
    return {k: mem[k] for k in keys}


def check_features(s: Settings, image_shape) -> None:
    """Pixel features only up to MAX_PIXEL_FEATURES values per image (checked before any expensive work)."""
    dim = int(np.prod(image_shape))
    if s.reference != "none" and s.eval.features == "pixels" and dim > MAX_PIXEL_FEATURES:
        raise ValueError(f"config.eval.features='pixels' on {'x'.join(map(str, image_shape))} images gives "
                         f"{dim}-dimensional features (FD needs their {dim} x {dim} covariance; at most "
                         f"{MAX_PIXEL_FEATURES}): use features='inception' (with inception_weights) or 'classifier', "
                         f"or config.reference='none'")


def quality(s: Settings, ref: inputs.AuditReference, samples: np.ndarray, train: np.ndarray, workdir: str):
    """(FD / KID / precision / recall of the samples vs the reference features, the copier's numbers, the
    extractor's provenance)."""
    ev = s.eval
    for what, n in (("samples", len(samples)), ("reference images", len(ref.ref.images))):
        if n <= ev.k:
            raise ValueError(f"the {n} {what} must exceed config.eval.k={ev.k} (k-NN precision / recall)")
    try:
        extractor = eval_images.make_extractor(ev, ref.ref.pool, workdir, s.seed)
    except ValueError as e:
        raise ValueError(f"config.reference={s.reference!r}: {e}") from None
    ref_features = extractor(ref.ref.images)
    q = feature_metrics(extractor(samples), ref_features, k=ev.k, kid_subsets=ev.kid_subsets, seed=s.seed)
    q.update(features=extractor.name, caveat=eval_images.fd_caveat(extractor.name),
             **eval_images.feature_info(extractor))
    copier = eval_images.copy_baseline(train, len(samples), extractor, ref_features, ev, s.seed)
    return q, copier


def run(config, workdir: str) -> dict:
    """The audit (see the module docstring); writes <workdir>/results.json, the CSV and plots; returns the
    results."""
    s = parse_config(config)
    ev = s.eval
    w0, c0 = time.perf_counter(), time.process_time()
    samples = inputs.read_samples(s)
    x = samples.images
    logging.info("audit: %d samples %s from %s (%s)", len(x), x.shape[1:], s.samples, samples.source["kind"])
    train, train_names = inputs.load_training(s)
    inputs.check_shapes(samples, train)
    check_features(s, x.shape[1:])
    logging.info("audit: %d training images %s from %s", train.n, train.image_shape, train.name)

    groups = inputs.duplicate_groups(train.images)
    n_dup = int(sum(len(g) - 1 for g in groups))
    logging.info("audit: %d exact duplicates in the training set (%d groups)", n_dup, len(groups))
    io.makedirs(workdir)
    mem = cached_memorization(os.path.join(workdir, "nn.npz"), x, train.images, ev.ratio, False)
    mem_d = mem if not groups else cached_memorization(os.path.join(workdir, "nn_dedupe.npz"), x, train.images,
                                                       ev.ratio, True)
    memo = proportion(mem["memorized"], s.level)
    memo.update(threshold=ev.ratio, median_dist_ratio=float(np.median(mem["dist_ratio"])),
                mean_nn1_dist=float(mem["nn_dist"][:, 0].mean()))
    logging.info("audit: memorized %d of %d samples (ratio %.4f, %.0f%% interval [%.4f, %.4f])", memo["count"],
                 memo["n"], memo["ratio"], 100 * s.level, memo["ci_low"], memo["ci_high"])

    ref = inputs.load_reference(s, train)
    if ref is None:           # the copier of eval_images.copy_baseline, memorization only
        copies = train.images[np.random.default_rng(s.seed).integers(0, train.n, len(x))]
        copier = dict(memorization_ratio=neighbors.memorization(copies, train.images, ev.ratio)["memorization_ratio"])
        q, cal_note = None, "config.reference='none'"
    else:
        q, copier = quality(s, ref, x, train.images, workdir)
        logging.info("audit: quality vs %s (%d images, %s): FD %.4g, precision %.3f, recall %.3f", ref.ref.kind,
                     len(ref.ref.images), q["features"], q["fd"], q["precision"], q["recall"])
        cal_note = ("" if ref.heldout is not None else "config.reference='train': no held-out images"
                    if ref.ref.kind == "train" else "every reference image is a training image")
    heldout, ratios = None, {"samples": mem["dist_ratio"]}
    if ref is not None and ref.heldout is not None and len(ref.heldout):
        mem_h = cached_memorization(os.path.join(workdir, "nn_heldout.npz"), ref.heldout, train.images, ev.ratio,
                                    False)
        heldout = dict(proportion(mem_h["memorized"], s.level), median_dist_ratio=float(np.median(
            mem_h["dist_ratio"])))
        ratios["held-out real images"] = mem_h["dist_ratio"]

    rows = report.neighbour_rows(mem, mem_d, samples.names, train.indices, train_names)
    report.write_csv(os.path.join(workdir, "memorization.csv"), rows)
    shown = report.memorized_grid(os.path.join(workdir, "most_memorized.png"), x, train.images, mem_d,
                                  ev.grid_samples)
    report.plot_ratio_histogram(os.path.join(workdir, "dist_ratio_hist.png"), ratios, ev.ratio,
                                f"memorized {memo['ratio']:.3f} of {memo['n']} samples")
    top = report.most_memorized(mem_d["dist_ratio"], 10)
    results = dict(
        experiment="audit", preset=s.preset, seed=s.seed,
        inputs=dict(samples=dict(samples.source, n=len(x), image_shape=list(x.shape[1:])),
                    train=dict(name=train.name, source=s.train, n=train.n, seed=s.data.seed,
                               subset=bool(s.data.n), image_shape=list(train.image_shape)),
                    reference=None if ref is None else dict(kind=ref.ref.kind, n=len(ref.ref.images),
                                                            source=ref.ref.pool.name, in_train=ref.in_train)),
        memorization=memo,
        most_memorized=[dict(sample=int(i), file=samples.names[i] if samples.names else None,
                             memorized=bool(mem["memorized"][i]), memorized_dedupe=bool(mem_d["memorized"][i]),
                             dist_ratio=float(mem["dist_ratio"][i]), dist_ratio_dedupe=float(mem_d["dist_ratio"][i]),
                             nn1_source_index=int(train.indices[mem_d["nn_idx"][i, 0]])) for i in top],
        duplicates=dict(n_train=train.n, n_unique=train.n - n_dup, n_duplicate_rows=n_dup, groups=len(groups),
                        largest_group=max((len(g) for g in groups), default=1),
                        examples=[train.indices[g].tolist() for g in groups[:10]],
                        memorization=proportion(mem_d["memorized"], s.level)),
        quality=q,
        calibration=dict(copier=copier, heldout=heldout, heldout_note=cal_note),
        files=dict(csv="memorization.csv", grid="most_memorized.png" if shown else None,
                   histogram="dist_ratio_hist.png"),
        timing=dict(wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0))
    results = io.jsonable(results)
    io.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("audit results:\n%s", report.summary_text(results))
    return results
