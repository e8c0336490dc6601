"""Gaussian-mixture memorization (arXiv 2511.03202, Section 6.1, Figures 2, 3a, 3b).

P = (1/K) sum_k N(mu_k, I_d), mu_k ~ N(0, mean_std^2 I_d). For every sweep cell (d, K, width, n, weight decay, seed)
a ReLU-MLP score network (diffmem.models.mlp) is trained by DSM on the first n points of one fixed draw from P
(nested training sets: a larger n contains every smaller one), sampled with the reverse SDE, and scored
(diffmem.gmm_lab.sample_metrics: memorization ratio, true-mixture log-likelihood, near-a-mean fraction).

  Figure 2   d = 2, K = 4, one n, growing width: underfit -> generalize -> memorize (scatter panels).
  Figure 3a  memorization ratio over n x size at (d, K) = (32, 8); and over n x d at one fixed width.
  Figure 3b  width sweep and weight-decay sweep at a small and a large n: memorization (solid) and mean
             log-likelihood (dashed).

Cells are de-duplicated across figures and grouped by architecture (d, K, width); each group (at most `max_members`
cells) trains as ONE vmapped jit step (gmm_lab.run_group). Randomness (diffmem.rng): mixture of (d, K) from
stream(seed, "mixture", d, K); training point i from stream(seed, "points", d, K, i) (so the first n points do not
depend on the largest n); a cell's network init and SGD stream from its training seed under stream(seed, "lab");
samples of the networks from stream(seed, "lab", "lab_samples") for every cell (common random numbers); the
closed-form reference samplers draw sample i from fold_in(stream(seed, "references"), i).

Resume: each finished cell is written to <workdir>/cells/<config hash>/<cell>.json (the hash covers every setting
that changes a cell's numbers, not the sweep lists), so a re-run (or a larger sweep) skips finished cells; groups
keep orbax checkpoints in <workdir>/groups/ and resume mid-training. With shard.count > 1 the run trains only the
groups with index % count == shard.index and returns without assembling (launch/sweep.py).

Claims (results.json["claims"], claims.md; report.py): the paper's 9 qualitative directions, each an estimate of
a paired difference between cells with a 95% bootstrap interval over the training seeds and a verdict.
"""
from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import gmm_lab, io, rng, sampling, scores, training
from diffmem.experiments.gmm_memorization.figures import make_plots, samples_path
from diffmem.experiments.gmm_memorization.report import assemble, claims_text, direction_claim
from diffmem.experiments.gmm_memorization.settings import (Cell, Settings, make_mixture, parse_config, plan_cells,
                                                           plan_groups, reference_sets, training_points)
from diffmem.models import mlp

__all__ = ["Cell", "Settings", "assemble", "direction_claim", "parse_config", "plan_cells", "plan_groups",
           "reference_sets", "run"]


def run_groups(s: Settings, groups: list[list[Cell]], cell_dir, group_dir, keep_samples: set) -> list[dict]:
    """Trains/samples/scores every group with an unfinished cell; writes each cell as it finishes."""
    timings = []
    for gi, group in enumerate(groups):
        if gi % s.shard.count != s.shard.index:
            continue
        todo = [c for c in group if not io.exists(cell_dir / f"{c.id}.json")]
        if not todo:
            continue
        dim, k, width = todo[0].group
        mix = make_mixture(s.seed, dim, k, s.mixture.mean_std)
        pts = training_points(s.seed, mix, max(c.n for c in todo))                                # (n_max, d)
        data, mask = training.pad_datasets([pts[:c.n] for c in todo])
        gid = io.hash_json(",".join(c.id for c in todo), 10)
        model = s.model_for(dim, width)
        logging.info("group %d/%d: d=%d K=%d width=%d (%d params), %d members", gi + 1, len(groups), dim, k, width,
                     mlp.mlp_param_count(dim, width, model.depth, model.time_embed, model.embed_dim), len(todo))
        tic = time.perf_counter()
        rows = gmm_lab.run_group(
            model=model, mix=mix, data=data, mask=mask, weight_decays=[c.weight_decay for c in todo],
            seeds=[c.seed for c in todo], train_cfg=s.train, sampler=s.sampler, t0=s.loss.t0, t1=s.loss.T,
            key=rng.stream(s.seed, "lab"), weighting=s.loss.weighting, time_dist=s.loss.time_dist,
            workdir=str(group_dir / f"{dim}_{k}_{width}_{gid}"), progress=s.progress,
            desc=f"d={dim} w={width} x{len(todo)}", keep_samples=True)
        for c, row in zip(todo, rows):
            samples = row.pop("samples")
            if c.id in keep_samples:
                io.save_npz(samples_path(cell_dir, c.id), samples=samples.astype(np.float32))
            io.write_json(cell_dir / f"{c.id}.json", {**dataclasses.asdict(c), **row})
        timings.append({"dim": dim, "num_components": k, "width": width, "members": len(todo),
                        "train_seconds": rows[0]["group_train_seconds"], "total_seconds": time.perf_counter() - tic})
    return timings


def run_references(s: Settings, cell_dir) -> None:
    """Closed-form empirical-score (memorizes) and true-score (generalizes) samplers per (d, K, n)."""
    sp = s.sampler
    grid = sampling.time_grid(s.loss.t0, s.loss.T, sp.steps, sp.spacing)
    key = rng.stream(s.seed, "references")
    for (dim, k), ns in reference_sets(s).items():
        todo = [n for n in ns if not io.exists(cell_dir / f"ref_d{dim}_K{k}_n{n}.json")]
        if not todo:
            continue
        logging.info("references: d=%d K=%d ns=%s", dim, k, todo)
        mix = make_mixture(s.seed, dim, k, s.mixture.mean_std)
        pts = training_points(s.seed, mix, max(todo))                                             # (n_max, d)
        data, mask = training.pad_datasets([pts[:n] for n in todo])
        true = gmm_lab.sample_members(lambda m, x, t: scores.mixture_score(x, t, mix), jnp.zeros((1,)), key,
                                      sp.num_samples, dim, grid, sp.method, sp.batch_size, sp.denoise)[0]
        emp = gmm_lab.sample_members(gmm_lab.empirical_member_score, (jnp.asarray(data), jnp.asarray(mask)), key,
                                     sp.num_samples, dim, grid, sp.method, sp.batch_size, sp.denoise)  # (M, m, d)
        for i, n in enumerate(todo):
            row = {"dim": dim, "num_components": k, "n": n,
                   "empirical": gmm_lab.sample_metrics(emp[i], pts[:n], mix),
                   "true": gmm_lab.sample_metrics(true, pts[:n], mix)}
            if dim == s.fig2.dim and k == s.fig2.num_components and n == s.fig2.n:
                io.save_npz(samples_path(cell_dir, f"ref_d{dim}_K{k}_n{n}_true"), samples=true.astype(np.float32))
            io.write_json(cell_dir / f"ref_d{dim}_K{k}_n{n}.json", row)


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the whole lab and writes results.json and the figures. See the module docstring."""
    tic = time.perf_counter()
    s = parse_config(config)
    wd = io.path(workdir)
    cell_dir = io.makedirs(wd / "cells" / s.cell_hash())
    group_dir = wd / "groups" / s.cell_hash()
    cells = plan_cells(s)
    groups = plan_groups(list(cells.values()), s.max_members)
    f2 = s.fig2
    fig2_ids = {c.id for c in cells.values()
                if (c.dim, c.num_components, c.n) == (f2.dim, f2.num_components, f2.n) and c.width in f2.widths}
    logging.info("gmm_memorization: %d cells in %d groups (shard %d of %d)", len(cells), len(groups),
                 s.shard.index, s.shard.count)
    timings = run_groups(s, groups, cell_dir, group_dir, fig2_ids)
    if s.references and s.shard.index == 0:
        run_references(s, cell_dir)
    if s.shard.count > 1:
        done = sum(io.exists(cell_dir / f"{c}.json") for c in cells)
        return {"shard": [s.shard.index, s.shard.count], "cells_done": done, "cells": len(cells),
                "group_timings": timings}
    rows = {cid: io.read_json(cell_dir / f"{cid}.json") for cid in cells}
    missing = [cid for cid, r in rows.items() if r is None]
    if missing:
        raise RuntimeError(f"cells not finished: {missing[:5]} ... ({len(missing)}); re-run to finish them")
    refs = {}
    if s.references:
        for (dim, k), ns in reference_sets(s).items():
            for n in ns:
                refs[f"d{dim}_K{k}_n{n}"] = io.read_json(cell_dir / f"ref_d{dim}_K{k}_n{n}.json")
    results = assemble(s, rows, refs)
    results["group_timings"] = timings
    results["wall_seconds"] = time.perf_counter() - tic
    results["config_hash"] = s.cell_hash()
    results = io.jsonable(results)
    make_plots(s, results, rows, cell_dir, wd)
    io.write_json(wd / "results.json", results)
    io.write_text(wd / "claims.md", claims_text(s, results["claims"]))
    for c in results["claims"]:
        logging.info("claim %-42s %-12s estimate %.4g [%.4g, %.4g] %s", c["id"], c["verdict"], c["estimate"],
                     c["ci_low"], c["ci_high"], c["note"])
    return results
