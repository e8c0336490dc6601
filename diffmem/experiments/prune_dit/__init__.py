"""Head-importance pruning of a memorizing DiT (arXiv 2511.03202, Section 6.2: Table 1, Algorithms 1 and 2), answered
with replication: several base models, repeats of every method, and each claim of Table 1 as an estimate with a 95%
interval and a verdict.

Pipeline (configs/prune_dit.py; `pipeline`):
  1. bases: design.bases unconditional eps-DiTs trained from independent seeds on the same n-image subset, as ONE
     vmapped group (or one base loaded from config.base_checkpoint);
  2. scores (Algorithm 2) per base and repeat: |dL/dxi_h| summed over score_batches batches with ONE unit time u in
     [u_min, 1] per batch, normalised per layer, under three time laws on the same batches (importance: Beta(0.8, 2),
     the paper's; importance_large_t: Beta(2, 0.8); importance_uniform), plus magnitude and random baselines;
  3. prune (Algorithm 1): remove the floor(eta H) lowest heads ranked over all layers; the training loss right after
     pruning, before fine-tuning, for every mask; then fine-tune M steps with the mask fixed. Every fine-tune of the
     architecture shares ONE compiled step (the mask is an input) and runs in vmapped groups;
  4. sample every model (design.repeats x bases of each method at the paper's eta, sweep_repeats at the other etas,
     the original and the controls) in vmapped groups and evaluate it (diffmem.eval.images);
  5. where memorization is decided (`where`): the swap test on every base, trajectories of base 0;
  6. claims with intervals (`claims`) and the report (`report`): table.md, claims, the memorization-FD frontier.
Controls: original (no fine-tuning), finetune_only (the same fine-tuning with every head: a drop caused by
fine-tuning alone is not credited to pruning), weight_decay_finetune (the control with strong AdamW decay) and, with
weight_decay.base, bases trained with decay.

Resume: the bases keep orbax checkpoints in <workdir>/bases (stamped; other settings in the same workdir are refused).
Every other piece is cached under <workdir>/pieces/<hash>/ (the hash covers every setting that changes its numbers,
not the sweep lists): scores, losses after pruning, fine-tune groups (with checkpoints), per-run results, swap test.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
from absl import logging

from diffmem import image_diffusion as idf
from diffmem import config as config_lib, io, pruning
from diffmem.eval import images as eval_images
from diffmem.experiments.prune_dit import claims as claims_lib
from diffmem.experiments.prune_dit import pipeline, report, where
from diffmem.experiments.prune_dit.pipeline import Run, Stopwatch
from diffmem.experiments.prune_dit.settings import (ALWAYS, PRUNE_METHODS, SCORE_LAWS, Settings,  # noqa: F401
                                                    parse_config)


def _train_numbers(cfg) -> dict:
    """A training section's fields that change the numbers (not its cadence of logs and checkpoints)."""
    return {k: v for k, v in config_lib.train_numbers(cfg).items() if k not in ("log_every", "ckpt_every", "keep_ckpts")}


def _piece_stamp(s: Settings, base: dict, d, ref, extractor) -> dict:
    return dict(base=dict(source=base["source"], steps=base["steps"], seed=s.seed, model=s.model.resolved(),
                          data=dataclasses.asdict(s.data), indices_sha1=io.sha1_arrays(d.indices),
                          u_min=s.diffusion.u_min, bases=s.design.bases, weight_decay_base=s.weight_decay.base,
                          base_value=s.weight_decay.base_value,
                          train=_train_numbers(s.train),
                          params_sha1=io.sha1_arrays(*jax.tree.leaves(base["params"]))),
                finetune=_train_numbers(s.finetune),
                wd_finetune=s.weight_decay.finetune_value, group_size=s.design.group_size,
                sampler=dataclasses.asdict(s.sampler), eval=dataclasses.asdict(s.eval),
                score=dict(batches=s.prune.score_batches, batch_size=s.prune.score_batch_size,
                           loss_batches=s.prune.loss_batches, laws=SCORE_LAWS),
                keep_one_per_layer=s.prune.keep_one_per_layer, ref_sha1=io.sha1_arrays(ref.images),
                features=extractor.name)


def run(config, workdir: str) -> dict:
    """The experiment (see the module docstring): writes results.json, table.md, plots and grids into workdir."""
    s = parse_config(config)
    w0, c0 = time.perf_counter(), time.process_time()
    if s.base_checkpoint and not os.path.isdir(s.base_checkpoint):   # fail before any work
        raise ValueError(f"config.base_checkpoint={s.base_checkpoint!r}: no such directory (give a directory with "
                         "orbax checkpoints of the base DiT, e.g. a train_dit run's <workdir>/n<n>, or '' to train "
                         "the bases here)")
    d, ref = pipeline.load_data(s)
    if s.base_model:                                                        # before the feature network trains
        model, loaded = pipeline.load_model(s, d.image_shape)
    else:
        model = idf.model_from_config(d.image_shape, s.model)
        loaded = pipeline.load_base(s, model) if s.base_checkpoint else None
    valid = pruning.head_valid_mask(model)
    num_heads, num_params = int(valid.sum()), idf.num_params(model)
    counters = dict(base_steps_trained=0, runs_computed=0, runs_reused=0, finetune_steps=0, scores_computed=0,
                    where_computed=0)
    timing: dict = {}
    runs = pipeline.plan_runs(s)
    logging.info("prune_dit: %s n=%d %s, DiT %s (%d params, %d heads, %d tokens), %d base(s) x %d repeat(s), "
                 "%d runs, etas %s", d.name, d.n, d.image_shape, loaded["source"] if s.base_model else
                 s.model.resolved(), num_params, num_heads,
                 (model.image_size // model.patch) ** 2, s.design.bases, s.design.repeats, len(runs),
                 list(s.prune.sweep_etas))

    t, c = time.perf_counter(), time.process_time()
    extractor = eval_images.make_extractor(s.eval, ref.pool, workdir, s.seed)
    ref_features = extractor(ref.images)
    timing.update(features_wall_s=time.perf_counter() - t, features_cpu_s=time.process_time() - c)
    t, c = time.perf_counter(), time.process_time()
    base = loaded or dict(pipeline.train_bases(s, model, d.images, d.indices, os.path.join(workdir, "bases")),
                          source="trained")
    counters["base_steps_trained"] = base["steps_trained"]
    timing.update(bases_wall_s=time.perf_counter() - t, bases_cpu_s=time.process_time() - c)

    piece_stamp = _piece_stamp(s, base, d, ref, extractor)
    piece_dir = os.path.join(workdir, "pieces", io.hash_json(piece_stamp))
    io.write_json(os.path.join(piece_dir, "stamp.json"), io.jsonable(piece_stamp))
    ctx = pipeline.Context(s=s, model=model, images=d.images, bases=base["params"], extractor=extractor,
                           ref_features=ref_features, piece_dir=piece_dir, counters=counters, timing=timing)

    with Stopwatch(ctx, "scores"):
        for b, r in sorted({(x.base, x.repeat) for x in runs if x.eta is not None}):
            pipeline.scores(ctx, b, r)
    results = []
    groups = pipeline.groups(runs, s.design.group_size)
    size = max((len(g) for g in groups), default=0)
    for i, g in enumerate(groups):
        logging.info("prune_dit: fine-tune group %d/%d (%d models)", i + 1, len(groups), len(g))
        results += pipeline.evaluate_group(ctx, g, runs, f"g{i}_{io.hash_json([x.id for x in g], 8)}", size)
    untuned = [x for x in runs if not x.tuned]
    if untuned:
        results += pipeline.evaluate_group(ctx, untuned, runs, "untuned")

    exported = {}
    for m in s.methods:
        if m in PRUNE_METHODS:
            exported[m] = pipeline.export(ctx, Run(0, 0, m, s.prune.paper_eta), workdir)
    where_out = {}
    if s.where.enabled:
        with Stopwatch(ctx, "where"):
            where_out = where.where_decided(ctx, results)

    with Stopwatch(ctx, "claims"):
        summ = claims_lib.summaries(s, results)
        claims = claims_lib.build(s, results, where_out)
    rows = report.table_rows(s, summ)
    features = extractor.name.split(":")[0]
    context = (f"Ours: {d.name}, n = {d.n} training images {d.image_shape}, DiT depth {model.depth} x "
               f"{model.max_heads} heads (hidden {model.hidden}, patch {model.patch}, "
               f"{(model.image_size // model.patch) ** 2} tokens; {num_params} parameters); {s.design.bases} base(s) "
               f"({base['source']}, {base['steps']} steps) x {s.design.repeats} repeat(s) at eta {s.prune.paper_eta:g} "
               f"({s.design.sweep_repeats} at the other etas); fine-tuning M = {s.finetune.steps} steps; "
               f"{s.sampler.num_samples} samples per model ({s.sampler.method}, {s.sampler.steps} steps). FD/KID: "
               f"{extractor.name} features vs {len(ref.images)} '{s.eval.reference}' images "
               f"({eval_images.fd_caveat(extractor.name)}). Paper: CIFAR-10, 5,000 images, DiT, 5 runs.")
    table_md = report.format_table(s, rows, claims, context)
    io.write_text(os.path.join(workdir, "table.md"), table_md)
    report.plot_frontier(os.path.join(workdir, "frontier.png"), s, summ, features)
    report.plot_vs_eta(os.path.join(workdir, "memorization_fd_vs_eta.png"), s, summ, features)
    if any(x.eta is not None for x in runs):
        sc = pipeline.scores(ctx, 0, 0)
        masks = {m: pipeline.mask_of(ctx, Run(0, 0, m, s.prune.paper_eta)) for m in PRUNE_METHODS if m in sc}
        report.plot_heatmaps(os.path.join(workdir, "importance_heatmap.png"), s, sc, masks)
    if where_out:
        report.plot_where(os.path.join(workdir, "where_decided.png"), where_out)
    report.grids(ctx, workdir)

    timing.update(total_wall_s=time.perf_counter() - w0, total_cpu_s=time.process_time() - c0)
    t0, t1 = idf.time_range(s.diffusion.u_min)
    out = dict(
        experiment="prune_dit", preset=s.preset, seed=s.seed,
        data=dict(name=d.name, n=d.n, seed=s.data.seed, image_shape=list(d.image_shape), crop=s.data.crop,
                  pool=s.data.pool),
        model=dict(s.model.resolved() if not s.base_model else dict(
                       source=loaded["source"], patch=model.patch, hidden=model.hidden, depth=model.depth,
                       heads=list(model.head_counts), num_classes=model.num_classes, learn_sigma=model.learn_sigma),
                   num_params=num_params, num_heads=num_heads, tokens=(model.image_size // model.patch) ** 2),
        diffusion=dict(u_min=s.diffusion.u_min, t0=t0, T=t1),
        base=dict(source=base["source"], steps=base["steps"], final_loss=base["final_loss"]),
        design=dataclasses.asdict(s.design), train=dataclasses.asdict(s.train),
        finetune=dataclasses.asdict(s.finetune), sampler=dataclasses.asdict(s.sampler), eval=dataclasses.asdict(s.eval),
        prune=dict(dataclasses.asdict(s.prune), sweep_etas=list(s.prune.sweep_etas),
                   score_laws={k: list(v) for k, v in SCORE_LAWS.items()}, score_u_range=[s.diffusion.u_min, 1.0]),
        methods=list(ALWAYS) + list(s.methods) + (["weight_decay_base"] if s.weight_decay.base else []),
        weight_decay=dataclasses.asdict(s.weight_decay), claims_settings=dataclasses.asdict(s.claims),
        reference=dict(kind=s.eval.reference, n_ref=int(len(ref.images)), features=extractor.name,
                       feature_info=eval_images.feature_info(extractor)),
        claims=claims, summary=summ, table=rows, paper_table=report.PAPER_TABLE, runs=results, exported=exported,
        where_decided=where_out, piece_dir=os.path.relpath(piece_dir, workdir), this_run=counters, timing=timing)
    out = io.jsonable(out)
    io.write_json(os.path.join(workdir, "results.json"), out)
    logging.info("prune_dit table:\n%s", table_md)
    return out
