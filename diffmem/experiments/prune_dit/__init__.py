"""Head-importance pruning of a memorizing DiT (arXiv 2511.03202, Section 6.2: Table 1, Algorithms 1 and 2), with the
controls and the evidence the reviewers asked for (more baselines, an eta sweep, where memorization is decided).

Pipeline (configs/prune_dit.py; `pipeline`):
  1. base: train (or resume, or load from config.base_checkpoint) an unconditional eps-DiT on an n-image subset
     until it memorizes;
  2. scores (Algorithm 2, pruning.importance_many): |dL/dxi_h| summed over score_batches batches with ONE unit time
     u per batch, normalised per layer; three time laws on the SAME batches and noise (common random numbers):
     importance u ~ Beta(0.8, 2) (small t, the paper's), importance_large_t Beta(2, 0.8), importance_uniform U(0, 1);
     plus magnitude (pruning.magnitude_scores) and random (pruning.random_mask, a fresh mask per repeat);
  3. prune (Algorithm 1, pruning.prune_mask): remove the floor(eta H) lowest heads ranked over all layers, then
     fine-tune M steps with the mask fixed;
  4. sample and evaluate every model with the same per-repeat sampling keys and sample count (diffmem.eval.images).
Methods: original (no fine-tuning), finetune_only (the control: the same M fine-tuning steps with every head, so a
drop caused by fine-tuning alone is not credited to pruning), the five pruning methods above, weight_decay_finetune
(the control with strong AdamW decay) and weight_decay_base (a base trained from scratch with decay; config flag).
`where`: where along the reverse path memorization is decided. `report`: aggregates, Table 1, plots.

Resume: the base keeps orbax checkpoints in <workdir>/base (stamped with its settings; another model / data /
optimizer in the same workdir is refused). Every other piece is cached under <workdir>/pieces/<hash>/, the hash
covering every setting that changes its numbers but not the sweep lists (etas, methods, repeats). A killed run
re-run with the same workdir redoes only unfinished pieces; a larger sweep adds pieces.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from diffmem import image_diffusion as idf
from diffmem import io, pruning
from diffmem.eval import images as eval_images
from diffmem.experiments.prune_dit import pipeline, report, where
from diffmem.experiments.prune_dit.settings import (ALWAYS, PRUNE_METHODS, SCORE_LAWS, Settings,  # noqa: F401
                                                    parse_config)


def run(config, workdir: str) -> dict:
    """The experiment (see the module docstring): writes results.json, table.md, plots and grids into workdir."""
    s = parse_config(config)
    w0, c0 = time.perf_counter(), time.process_time()
    timing: dict[str, float] = {}

    def lap(name, t, c):
        timing[name + "_wall_s"] = time.perf_counter() - t
        timing[name + "_cpu_s"] = time.process_time() - c

    if s.base_checkpoint and not os.path.isdir(s.base_checkpoint):   # fail before any work
        raise ValueError(f"config.base_checkpoint={s.base_checkpoint!r}: no such directory (give a directory with "
                         "orbax checkpoints of the base DiT, e.g. a train_dit run's <workdir>/n<n>, or '' to train "
                         "the base here)")
    d, ref = pipeline.load_data(s)
    model = idf.model_from_config(d.image_shape, s.model)
    loaded = pipeline.load_base(s, model) if s.base_checkpoint else None   # before the feature network trains
    valid = pruning.head_valid_mask(model)
    num_heads, num_params = int(valid.sum()), idf.num_params(model)
    counters = dict(base_steps_trained=0, runs_computed=0, runs_reused=0, finetune_steps=0, scores_computed=0,
                    where_computed=0)
    logging.info("prune_dit: %s n=%d, DiT %s (%d params, %d heads), etas %s, methods %s", d.name, d.n,
                 s.model.resolved(), num_params, num_heads, list(s.prune.sweep_etas), list(s.methods))

    # features and base
    t, c = time.perf_counter(), time.process_time()
    extractor = eval_images.make_extractor(s.eval, ref.pool, workdir, s.seed)
    ref_features = extractor(ref.images)
    lap("features", t, c)
    t, c = time.perf_counter(), time.process_time()
    if loaded is not None:
        params, step = loaded
        base = dict(params=jax.tree.map(np.asarray, params), steps_trained=0, final_loss=None,
                    source=f"loaded:{os.path.abspath(s.base_checkpoint)}", steps=step)
    else:
        base = pipeline.train_base(s, model, d.images, d.indices, os.path.join(workdir, "base"))
    counters["base_steps_trained"] += base["steps_trained"]
    lap("base", t, c)
    base_params = base["params"]

    piece_stamp = dict(base=dict(source=base["source"], steps=base["steps"], seed=s.seed, model=s.model.resolved(),
                                 data=dataclasses.asdict(s.data), indices_sha1=io.sha1_arrays(d.indices),
                                 u_min=s.diffusion.u_min,
                                 train={k: v for k, v in dataclasses.asdict(s.train).items()
                                        if k not in ("log_every", "ckpt_every", "keep_ckpts")},
                                 params_sha1=io.sha1_arrays(*jax.tree.leaves(base_params))),
                       finetune=dataclasses.asdict(s.finetune), sampler=dataclasses.asdict(s.sampler),
                       eval=dataclasses.asdict(s.eval),
                       score=dict(batches=s.prune.score_batches, batch_size=s.prune.score_batch_size,
                                  loss_batches=s.prune.loss_batches),
                       keep_one_per_layer=s.prune.keep_one_per_layer,
                       ref_sha1=io.sha1_arrays(ref.images), features=extractor.name)
    piece_dir = os.path.join(workdir, "pieces", io.hash_json(piece_stamp))
    io.write_json(os.path.join(piece_dir, "stamp.json"), io.jsonable(piece_stamp))
    ctx = pipeline.Context(s=s, model=model, images=d.images, base_params=base_params, extractor=extractor,
                           ref_features=ref_features, piece_dir=piece_dir, counters=counters)
    ones = np.ones((model.depth, model.max_heads), np.float32)

    # runs
    t, c = time.perf_counter(), time.process_time()
    runs: list[dict] = []
    scores0, masks0 = None, {}
    wd_suffix = f"_wd{s.weight_decay.finetune_value:g}"
    for r in range(max(s.repeats, s.sweep_repeats)):
        if r < s.repeats:
            runs.append(pipeline.run_piece(ctx, "original", None, r, ones, base_params, tune=False))
            runs.append(pipeline.run_piece(ctx, "finetune_only", None, r, ones, base_params, tune=True))
            if "weight_decay_finetune" in s.methods:
                runs.append(pipeline.run_piece(
                    ctx, "weight_decay_finetune", None, r, ones, base_params, tune=True,
                    cfg=dataclasses.replace(s.finetune, weight_decay=s.weight_decay.finetune_value), suffix=wd_suffix))
        scores = pipeline.scores_cached(ctx, r)
        masks = pipeline.make_masks(s, model, scores, r)
        losses_after = pipeline.loss_after_prune(ctx, r, masks)
        for (m, eta), mask in sorted(masks.items()):
            runs.append(pipeline.run_piece(ctx, m, eta, r, mask, base_params, tune=True,
                                           loss_after=losses_after.get(pipeline.run_id(m, eta, r))))
        if r == 0:
            scores0, masks0 = scores, masks
    if s.weight_decay.base:
        tw, cw = time.perf_counter(), time.process_time()
        wd = pipeline.train_base(s, model, d.images, d.indices, os.path.join(workdir, "wd_base"),
                                 weight_decay=s.weight_decay.base_value)
        counters["base_steps_trained"] += wd["steps_trained"]
        for r in range(s.repeats):
            runs.append(pipeline.run_piece(ctx, "weight_decay_base", None, r, ones, wd["params"], tune=False,
                                           suffix=f"_wd{s.weight_decay.base_value:g}_steps{wd['steps']}"))
        lap("weight_decay_base", tw, cw)
    lap("runs", t, c)

    # exported (physically smaller) models at the paper eta, repeat 0
    exported = {m: pipeline.export(ctx, m, s.prune.paper_eta, workdir) for m in s.methods if m in PRUNE_METHODS}

    where_out = {}
    if s.where.enabled:
        t, c = time.perf_counter(), time.process_time()
        where_out = where.where_decided(ctx)
        lap("where", t, c)

    # outputs
    agg = report.aggregate(runs)
    rows = report.table_rows(s, agg)
    comp = report.comparisons(s, runs)
    context = (f"Ours: {d.name}, n = {d.n} training images, DiT depth {model.depth} x {model.max_heads} heads "
               f"(hidden {model.hidden}, patch {model.patch}; {num_params} parameters), base {base['source']} "
               f"({base['steps']} steps); fine-tuning M = {s.finetune.steps} steps; {s.sampler.num_samples} samples "
               f"per model; mean +- std over {s.repeats} repeat(s) (same seeds for every method). FD/KID: "
               f"{extractor.name} features vs {len(ref.images)} '{s.eval.reference}' images ("
               f"{eval_images.fd_caveat(extractor.name)}). Paper: CIFAR-10, 5,000 images, DiT, 5 runs.")
    table_md = report.format_table(s, rows, context)
    io.write_text(os.path.join(workdir, "table.md"), table_md)
    report.plot_vs_eta(os.path.join(workdir, "memorization_fd_vs_eta.png"), s, agg)
    if scores0 is not None:
        report.plot_heatmaps(os.path.join(workdir, "importance_heatmap.png"), s, scores0, masks0)
    if where_out:
        report.plot_where(os.path.join(workdir, "where_decided.png"), where_out)
    report.grids(ctx, workdir)

    lap("total", w0, c0)
    t0, t1 = idf.time_range(s.diffusion.u_min)
    results = dict(
        experiment="prune_dit", preset=s.preset, seed=s.seed,
        data=dict(name=d.name, n=d.n, seed=s.data.seed, image_shape=list(d.image_shape)),
        model=dict(s.model.resolved(), num_params=num_params, num_heads=num_heads),
        diffusion=dict(u_min=s.diffusion.u_min, t0=t0, T=t1),
        base=dict(source=base["source"], steps=base["steps"], final_loss=base["final_loss"]),
        train=dataclasses.asdict(s.train), finetune=dataclasses.asdict(s.finetune),
        sampler=dataclasses.asdict(s.sampler), eval=dataclasses.asdict(s.eval),
        prune=dict(etas=list(s.prune.sweep_etas), paper_eta=s.prune.paper_eta,
                   keep_one_per_layer=s.prune.keep_one_per_layer, score_batches=s.prune.score_batches,
                   score_batch_size=s.prune.score_batch_size, score_laws={k: list(v) for k, v in SCORE_LAWS.items()}),
        methods=list(ALWAYS) + list(s.methods) + (["weight_decay_base"] if s.weight_decay.base else []),
        repeats=s.repeats, sweep_repeats=s.sweep_repeats, weight_decay=dataclasses.asdict(s.weight_decay),
        reference=dict(kind=s.eval.reference, n_ref=int(len(ref.images)), features=extractor.name,
                       feature_test_accuracy=extractor.info.get("test_accuracy"),
                       feature_info=eval_images.feature_info(extractor)),
        runs=runs, aggregate=agg, table=rows, paper_table=report.PAPER_TABLE, comparisons=comp,
        scores=None if scores0 is None else dict(
            repeat=0, **{k: v.tolist() for k, v in scores0.items()},
            rank_correlation=report.score_agreement(scores0, valid)),
        exported=exported, where_decided=where_out, piece_dir=os.path.relpath(piece_dir, workdir),
        this_run=counters, timing=timing)
    results = io.jsonable(results)
    io.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("prune_dit table:\n%s", table_md)
    return results
