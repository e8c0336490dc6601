"""Gaussian-mixture memorization (PAPER.md section 4, Figures 2, 3a, 3b).

P = (1/K) sum_k N(mu_k, I_d), mu_k ~ N(0, mean_std^2 I_d). For every sweep cell (d, K, width, n, weight decay,
seed) a ReLU-MLP score network (diffmem.models.mlp) is trained by DSM on the first n points of one fixed draw
from P (nested training sets: a larger n contains every smaller one), sampled with the reverse SDE, and scored
(diffmem.gmm_lab.sample_metrics: memorization ratio, true-mixture log-likelihood, near-a-mean fraction).

  Figure 2   d = 2, K = 4, one n, growing width: underfit -> generalize -> memorize (scatter panels).
  Figure 3a  memorization ratio over n x size at (d, K) = (32, 8); and over n x d at one fixed width.
  Figure 3b  width sweep and weight-decay sweep at a small and a large n: memorization (solid) and mean
             log-likelihood (dashed).

Cells are de-duplicated across figures and grouped by architecture (d, K, width); each group (at most
`max_members` cells) trains as ONE vmapped jit step (gmm_lab.run_group). Randomness: mixture of (d, K) from
fold_in(key(seed), 0, d, K); training point i from fold_in(key(seed), 1, d, K, i) (so the first n points do
not depend on the largest n); a cell's network init and SGD stream from its training seed; samples from
fold_in(key(seed), 2) for every cell (common random numbers).

Resume: each finished cell is written to <workdir>/cells/<config hash>/<cell>.json (the hash covers every
setting that changes a cell's numbers, not the sweep lists), so a re-run (or a larger sweep) skips finished
cells; groups keep orbax checkpoints in <workdir>/groups/ and resume mid-training. With shard.count > 1 the
run trains only the groups with index % count == shard.index and returns without assembling (launch/sweep.py).

`directions` in results.json: each qualitative claim of the paper, the criterion, whether it held and the
numbers. "a > b" means a - b > 2 standard errors (binomial errors with the (k+1)/(m+2) estimate for
memorization ratios, sample standard errors for log-likelihoods, both averaged over seeds).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import experiments, gmm_lab, sampling, scores, train
from diffmem.experiments import check_int
from diffmem.models import mlp

SECTIONS = {
    "mixture": ("mean_std",),
    "model": ("depth", "time_embed", "embed_dim", "output", "sigma_data"),
    "train": ("steps", "batch_size", "lr", "warmup_steps", "schedule", "grad_clip", "ema_decay", "b1", "b2",
              "log_every", "ckpt_every", "keep_ckpts"),
    "loss": ("t0", "T", "weighting", "time_dist"),
    "sampler": ("num_samples", "steps", "method", "spacing", "batch_size", "denoise"),
    "fig2": ("dim", "num_components", "n", "widths"),
    "fig3a": ("dim", "num_components", "ns", "widths", "param_counts", "dims", "dim_sweep_width",
              "dim_sweep_param_count"),
    "fig3b": ("n_small", "n_large", "weight_decays", "wd_width", "wd_param_count", "widths"),
    "shard": ("index", "count"),
}
TOP_LEVEL = ("experiment", "seed", "preset", "seeds", "max_members", "references", "progress") + tuple(SECTIONS)


# ------------------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class Cell:
    """One sweep cell: a network of `width` trained on the first n points of the (dim, K) mixture."""
    dim: int
    num_components: int
    width: int
    n: int
    weight_decay: float
    seed: int

    @property
    def id(self) -> str:
        return (f"d{self.dim}_K{self.num_components}_w{self.width}_n{self.n}_wd{self.weight_decay:g}"
                f"_s{self.seed}")

    @property
    def group(self) -> tuple[int, int, int]:
        return (self.dim, self.num_components, self.width)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated, plain-valued form of the config."""
    seed: int
    mean_std: float
    model: dict
    train: train.TrainConfig
    loss: dict
    sampler: gmm_lab.SamplerConfig
    fig2: dict
    fig3a: dict
    fig3b: dict
    seeds: tuple
    max_members: int
    references: bool
    shard_index: int
    shard_count: int
    progress: bool

    def model_for(self, dim: int, width: int) -> mlp.ScoreMLP:
        kw = dict(self.model)
        if kw["output"] == "edm" and not kw["sigma_data"] > 0:
            kw["sigma_data"] = math.sqrt(self.mean_std ** 2 + 1.0)  # per-coordinate std of the mixture
        return mlp.ScoreMLP(dim=dim, width=width, **kw)

    def width_of(self, dim: int, width: int, param_count: int) -> int:
        if param_count:
            return mlp.width_for_params(param_count, dim, self.model["depth"], self.model["time_embed"],
                                        self.model["embed_dim"])
        return width

    def fig3a_widths(self) -> list[int]:
        f = self.fig3a
        if f["param_counts"]:
            return sorted({self.width_of(f["dim"], 0, p) for p in f["param_counts"]})
        return list(f["widths"])

    def dim_sweep_width(self, dim: int) -> int:
        f = self.fig3a
        return self.width_of(dim, f["dim_sweep_width"], f["dim_sweep_param_count"])

    def fig3b_widths(self) -> list[int]:
        return list(self.fig3b["widths"]) or self.fig3a_widths()

    def wd_width(self) -> int:
        f = self.fig3b
        return self.width_of(self.fig3a["dim"], f["wd_width"], f["wd_param_count"])

    def cell_hash(self) -> str:
        """Hash of every setting that changes a cell's numbers (not the sweep lists)."""
        blob = json.dumps({"seed": self.seed, "mean_std": self.mean_std, "model": self.model,
                           "train": dataclasses.asdict(self.train), "loss": self.loss,
                           "sampler": dataclasses.asdict(self.sampler)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _int_list(name: str, v, minimum: int = 1, allow_empty: bool = False) -> list[int]:
    v = list(v)
    if not v and not allow_empty:
        raise ValueError(f"{name} must be a non-empty list of ints >= {minimum}")
    return [check_int(f"{name}[{i}]", x, minimum) for i, x in enumerate(v)]


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming the field for anything unknown or out of range."""
    unknown = sorted(set(config.keys()) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; accepted: {list(TOP_LEVEL)}")
    sec = {name: experiments.config_section(config, name, SECTIONS[name],
                                            optional=("b1", "b2", "schedule", "denoise"))
           for name in SECTIONS}
    mean_std = float(sec["mixture"]["mean_std"])
    if not mean_std > 0:
        raise ValueError(f"config.mixture.mean_std must be > 0, got {mean_std}")
    model, loss = sec["model"], sec["loss"]
    tcfg = gmm_lab.check_lab_config(model, sec["train"], loss, "loss")
    model["sigma_data"] = float(model["sigma_data"])
    if loss["weighting"] not in gmm_lab.LAB_WEIGHTINGS:
        raise ValueError(f"config.loss.weighting must be one of {gmm_lab.LAB_WEIGHTINGS}, got {loss['weighting']!r}")
    loss = dict(t0=float(loss["t0"]), T=float(loss["T"]), weighting=loss["weighting"], time_dist=loss["time_dist"])
    try:
        sampler = gmm_lab.SamplerConfig(**sec["sampler"])
        sampling.time_grid(loss["t0"], loss["T"], sampler.steps, sampler.spacing)
    except ValueError as e:
        raise ValueError(f"config.sampler: {e}") from None
    f2 = sec["fig2"]
    f2 = dict(dim=check_int("config.fig2.dim", f2["dim"]),
              num_components=check_int("config.fig2.num_components", f2["num_components"]),
              n=check_int("config.fig2.n", f2["n"], 2), widths=_int_list("config.fig2.widths", f2["widths"]))
    f3 = sec["fig3a"]
    f3 = dict(dim=check_int("config.fig3a.dim", f3["dim"]),
              num_components=check_int("config.fig3a.num_components", f3["num_components"]),
              ns=_int_list("config.fig3a.ns", f3["ns"], 2),
              widths=_int_list("config.fig3a.widths", f3["widths"], allow_empty=True),
              param_counts=_int_list("config.fig3a.param_counts", f3["param_counts"], allow_empty=True),
              dims=_int_list("config.fig3a.dims", f3["dims"]),
              dim_sweep_width=check_int("config.fig3a.dim_sweep_width", f3["dim_sweep_width"], 0),
              dim_sweep_param_count=check_int("config.fig3a.dim_sweep_param_count", f3["dim_sweep_param_count"], 0))
    if bool(f3["widths"]) == bool(f3["param_counts"]):
        raise ValueError("exactly one of config.fig3a.widths and config.fig3a.param_counts must be non-empty, "
                         f"got widths={f3['widths']}, param_counts={f3['param_counts']}")
    if bool(f3["dim_sweep_width"]) == bool(f3["dim_sweep_param_count"]):
        raise ValueError("exactly one of config.fig3a.dim_sweep_width and config.fig3a.dim_sweep_param_count must "
                         "be > 0")
    fb = sec["fig3b"]
    wds = [float(w) for w in fb["weight_decays"]]
    if not wds or any(not (w >= 0 and math.isfinite(w)) for w in wds):
        raise ValueError(f"config.fig3b.weight_decays must be a non-empty list of finite numbers >= 0, got {wds}")
    if 0.0 not in wds:
        raise ValueError(f"config.fig3b.weight_decays must contain 0.0 (the reference), got {wds}")
    fb = dict(n_small=check_int("config.fig3b.n_small", fb["n_small"], 2),
              n_large=check_int("config.fig3b.n_large", fb["n_large"], 2), weight_decays=sorted(wds),
              wd_width=check_int("config.fig3b.wd_width", fb["wd_width"], 0),
              wd_param_count=check_int("config.fig3b.wd_param_count", fb["wd_param_count"], 0),
              widths=_int_list("config.fig3b.widths", fb["widths"], allow_empty=True))
    if not fb["n_small"] < fb["n_large"]:
        raise ValueError(f"config.fig3b needs n_small < n_large, got {fb['n_small']}, {fb['n_large']}")
    if bool(fb["wd_width"]) == bool(fb["wd_param_count"]):
        raise ValueError("exactly one of config.fig3b.wd_width and config.fig3b.wd_param_count must be > 0")
    seeds = tuple(_int_list("config.seeds", config.seeds, 0))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"config.seeds must be distinct, got {list(seeds)}")
    sh = sec["shard"]
    count = check_int("config.shard.count", sh["count"])
    index = check_int("config.shard.index", sh["index"], 0)
    if index >= count:
        raise ValueError(f"config.shard.index must be in [0, shard.count={count}), got {index}")
    return Settings(seed=check_int("config.seed", config.seed, 0), mean_std=mean_std, model=model, train=tcfg,
                    loss=loss, sampler=sampler, fig2=f2, fig3a=f3, fig3b=fb, seeds=seeds,
                    max_members=check_int("config.max_members", config.max_members),
                    references=bool(config.references), shard_index=index, shard_count=count,
                    progress=bool(config.get("progress", True)))


# ------------------------------------------------------------------------------------- mixtures

def make_mixture(seed: int, dim: int, num_components: int, mean_std: float) -> scores.GaussianMixture:
    """The (d, K) mixture of this run: means from fold_in(key(seed), 0, d, K)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), dim), num_components)
    return scores.random_mixture(key, num_components, dim, mean_std)


def training_points(seed: int, mix: scores.GaussianMixture, n: int) -> np.ndarray:
    """The first n training points (n, d); point i from fold_in(key(seed), 1, d, K, i), so prefixes agree."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), mix.dim),
                              mix.num_components)
    keys = sampling.per_sample_keys(base, n)
    return np.asarray(jax.vmap(lambda k: scores.sample_mixture(k, mix, 1)[0])(keys))


# ----------------------------------------------------------------------------------------- plan

def plan_cells(s: Settings) -> dict[str, Cell]:
    """Every cell the figures need, de-duplicated."""
    cells: dict[str, Cell] = {}

    def add(dim, k, width, n, wd):
        for seed in s.seeds:
            c = Cell(dim, k, width, n, float(wd), seed)
            cells[c.id] = c

    f2, f3, fb = s.fig2, s.fig3a, s.fig3b
    for w in f2["widths"]:
        add(f2["dim"], f2["num_components"], w, f2["n"], 0.0)
    for w in s.fig3a_widths():
        for n in f3["ns"]:
            add(f3["dim"], f3["num_components"], w, n, 0.0)
    for d in f3["dims"]:
        for n in f3["ns"]:
            add(d, f3["num_components"], s.dim_sweep_width(d), n, 0.0)
    for n in (fb["n_small"], fb["n_large"]):
        for w in s.fig3b_widths():
            add(f3["dim"], f3["num_components"], w, n, 0.0)
        for wd in fb["weight_decays"]:
            add(f3["dim"], f3["num_components"], s.wd_width(), n, wd)
    return cells


def plan_groups(cells: Sequence[Cell], max_members: int) -> list[list[Cell]]:
    """Cells grouped by architecture (d, K, width), split into chunks of at most max_members, sorted."""
    by_arch: dict[tuple, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: (c.group, c.n, c.weight_decay, c.seed)):
        by_arch.setdefault(c.group, []).append(c)
    groups = []
    for arch in sorted(by_arch):
        members = by_arch[arch]
        groups += [members[i:i + max_members] for i in range(0, len(members), max_members)]
    return groups


def reference_sets(s: Settings) -> dict[tuple[int, int], list[int]]:
    """(d, K) -> the ns that need closed-form reference samplers."""
    refs: dict[tuple[int, int], set] = {}
    f2, f3, fb = s.fig2, s.fig3a, s.fig3b
    refs.setdefault((f2["dim"], f2["num_components"]), set()).add(f2["n"])
    for d in f3["dims"]:
        refs.setdefault((d, f3["num_components"]), set()).update(f3["ns"])
    refs.setdefault((f3["dim"], f3["num_components"]), set()).update(f3["ns"] + [fb["n_small"], fb["n_large"]])
    return {k: sorted(v) for k, v in sorted(refs.items())}


# ------------------------------------------------------------------------------------------ run

def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_groups(s: Settings, groups: list[list[Cell]], cell_dir: str, group_dir: str, keep_samples: set) -> list[dict]:
    """Trains/samples/scores every group with an unfinished cell; writes each cell as it finishes."""
    timings = []
    for gi, group in enumerate(groups):
        if gi % s.shard_count != s.shard_index:
            continue
        todo = [c for c in group if not os.path.exists(os.path.join(cell_dir, c.id + ".json"))]
        if not todo:
            continue
        dim, k, width = todo[0].group
        mix = make_mixture(s.seed, dim, k, s.mean_std)
        pts = training_points(s.seed, mix, max(c.n for c in todo))
        data, mask = gmm_lab.pad_datasets([pts[:c.n] for c in todo])
        gid = hashlib.sha1(",".join(c.id for c in todo).encode()).hexdigest()[:10]
        model = s.model_for(dim, width)
        logging.info("group %d/%d: d=%d K=%d width=%d (%d params), %d members", gi + 1, len(groups), dim, k, width,
                     mlp.mlp_param_count(dim, width, model.depth, model.time_embed, model.embed_dim), len(todo))
        tic = time.perf_counter()
        rows = gmm_lab.run_group(
            model=model, mix=mix, data=data, mask=mask, weight_decays=[c.weight_decay for c in todo],
            seeds=[c.seed for c in todo], train_cfg=s.train, sampler=s.sampler, t0=s.loss["t0"], t1=s.loss["T"],
            key=jax.random.fold_in(jax.random.key(s.seed), 2), weighting=s.loss["weighting"],
            time_dist=s.loss["time_dist"], workdir=os.path.join(group_dir, f"{dim}_{k}_{width}_{gid}"),
            progress=s.progress, desc=f"d={dim} w={width} x{len(todo)}", keep_samples=True)
        for c, row in zip(todo, rows):
            samples = row.pop("samples")
            if c.id in keep_samples:
                np.save(os.path.join(cell_dir, c.id + ".npy"), samples.astype(np.float32))
            experiments.write_json(os.path.join(cell_dir, c.id + ".json"), {**dataclasses.asdict(c), **row})
        timings.append({"dim": dim, "num_components": k, "width": width, "members": len(todo),
                        "train_seconds": rows[0]["group_train_seconds"],
                        "total_seconds": time.perf_counter() - tic})
    return timings


def run_references(s: Settings, cell_dir: str) -> None:
    """Closed-form empirical-score (memorizes) and true-score (generalizes) samplers per (d, K, n)."""
    grid = sampling.time_grid(s.loss["t0"], s.loss["T"], s.sampler.steps, s.sampler.spacing)
    key = jax.random.fold_in(jax.random.key(s.seed), 2)
    for (dim, k), ns in reference_sets(s).items():
        todo = [n for n in ns if not os.path.exists(os.path.join(cell_dir, f"ref_d{dim}_K{k}_n{n}.json"))]
        if not todo:
            continue
        logging.info("references: d=%d K=%d ns=%s", dim, k, todo)
        mix = make_mixture(s.seed, dim, k, s.mean_std)
        pts = training_points(s.seed, mix, max(todo))
        data, mask = gmm_lab.pad_datasets([pts[:n] for n in todo])
        true = gmm_lab.sample_members(lambda m, x, t: scores.mixture_score(x, t, mix), jnp.zeros((1,)), key,
                                      s.sampler.num_samples, dim, grid, s.sampler.method, s.sampler.batch_size,
                                      s.sampler.denoise)[0]
        emp = gmm_lab.sample_members(gmm_lab.empirical_member_score, (jnp.asarray(data), jnp.asarray(mask)), key,
                                     s.sampler.num_samples, dim, grid, s.sampler.method, s.sampler.batch_size,
                                     s.sampler.denoise)
        for i, n in enumerate(todo):
            row = {"dim": dim, "num_components": k, "n": n,
                   "empirical": gmm_lab.sample_metrics(emp[i], pts[:n], mix),
                   "true": gmm_lab.sample_metrics(true, pts[:n], mix)}
            if dim == s.fig2["dim"] and k == s.fig2["num_components"] and n == s.fig2["n"]:
                np.save(os.path.join(cell_dir, f"ref_d{dim}_K{k}_n{n}_true.npy"), true.astype(np.float32))
            experiments.write_json(os.path.join(cell_dir, f"ref_d{dim}_K{k}_n{n}.json"), row)


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the whole lab and writes results.json and the figures. See the module docstring."""
    tic = time.perf_counter()
    s = parse_config(config)
    cell_dir = os.path.join(workdir, "cells", s.cell_hash())
    group_dir = os.path.join(workdir, "groups", s.cell_hash())
    os.makedirs(cell_dir, exist_ok=True)
    cells = plan_cells(s)
    groups = plan_groups(list(cells.values()), s.max_members)
    fig2_ids = {c.id for c in cells.values() if (c.dim, c.num_components, c.n) ==
                (s.fig2["dim"], s.fig2["num_components"], s.fig2["n"]) and c.width in s.fig2["widths"]}
    logging.info("gmm_memorization: %d cells in %d groups (shard %d of %d)", len(cells), len(groups),
                 s.shard_index, s.shard_count)
    timings = run_groups(s, groups, cell_dir, group_dir, fig2_ids)
    if s.references and s.shard_index == 0:
        run_references(s, cell_dir)
    if s.shard_count > 1:
        done = sum(os.path.exists(os.path.join(cell_dir, c + ".json")) for c in cells)
        return {"shard": [s.shard_index, s.shard_count], "cells_done": done, "cells": len(cells),
                "group_timings": timings}
    rows = {cid: _read_json(os.path.join(cell_dir, cid + ".json")) for cid in cells}
    missing = [cid for cid, r in rows.items() if r is None]
    if missing:
        raise RuntimeError(f"cells not finished: {missing[:5]} ... ({len(missing)}); re-run to finish them")
    refs = {}
    if s.references:
        for (dim, k), ns in reference_sets(s).items():
            for n in ns:
                refs[f"d{dim}_K{k}_n{n}"] = _read_json(os.path.join(cell_dir, f"ref_d{dim}_K{k}_n{n}.json"))
    results = assemble(s, rows, refs)
    results["group_timings"] = timings
    results["wall_seconds"] = time.perf_counter() - tic
    results["config_hash"] = s.cell_hash()
    make_plots(s, results, rows, cell_dir, workdir)
    experiments.write_json(os.path.join(workdir, "results.json"), results)
    for name, d in results["directions"].items():
        logging.info("direction %-45s held=%s", name, d["held"])
    return results


# ------------------------------------------------------------------------------------- assemble

_KEYS = ("memorization_ratio", "loglik_mean", "loglik_stderr", "frac_near_mean", "median_dist_ratio",
         "final_loss", "params")


def _avg(s: Settings, rows: dict, dim, k, width, n, wd) -> dict:
    """Seed-averaged metrics of one cell, with standard errors for the direction checks."""
    rs = [rows[Cell(dim, k, width, n, float(wd), seed).id] for seed in s.seeds]
    out = {key: float(np.mean([r[key] for r in rs])) for key in _KEYS}
    out["params"] = int(rs[0]["params"])
    m = s.sampler.num_samples
    ps = [(r["memorization_ratio"] * m + 1) / (m + 2) for r in rs]
    out["memorization_stderr"] = float(math.sqrt(sum(p * (1 - p) / m for p in ps)) / len(rs))
    out["loglik_stderr"] = float(math.sqrt(sum(r["loglik_stderr"] ** 2 for r in rs)) / len(rs))
    out.update(width=width, n=n, weight_decay=float(wd), dim=dim)
    return out


def _greater(a: dict, b: dict, key: str) -> bool:
    """a[key] > b[key] by more than 2 combined standard errors."""
    se = {"memorization_ratio": "memorization_stderr", "loglik_mean": "loglik_stderr"}[key]
    return a[key] - b[key] > 2.0 * math.hypot(a[se], b[se])


def _not_less(a: dict, b: dict, key: str) -> bool:
    return not _greater(b, a, key)


def assemble(s: Settings, rows: dict, refs: dict) -> dict:
    """results.json content: per-figure tables, references, directions, every cell."""
    f2, f3, fb = s.fig2, s.fig3a, s.fig3b
    d3, k3 = f3["dim"], f3["num_components"]
    avg = lambda *a: _avg(s, rows, *a)
    fig2 = {"dim": f2["dim"], "num_components": f2["num_components"], "n": f2["n"],
            "rows": [avg(f2["dim"], f2["num_components"], w, f2["n"], 0.0) for w in f2["widths"]]}
    widths = s.fig3a_widths()
    size_cells = [[avg(d3, k3, w, n, 0.0) for n in f3["ns"]] for w in widths]
    fig3a_size = {"dim": d3, "num_components": k3, "ns": f3["ns"], "widths": widths,
                  "params": [r[0]["params"] for r in size_cells]}
    dim_cells = [[avg(d, k3, s.dim_sweep_width(d), n, 0.0) for n in f3["ns"]] for d in f3["dims"]]
    fig3a_dim = {"dims": f3["dims"], "ns": f3["ns"], "widths": [s.dim_sweep_width(d) for d in f3["dims"]],
                 "params": [r[0]["params"] for r in dim_cells]}
    for key in ("memorization_ratio", "loglik_mean", "frac_near_mean"):
        fig3a_size[key] = [[c[key] for c in r] for r in size_cells]   # (widths, ns)
        fig3a_dim[key] = [[c[key] for c in r] for r in dim_cells]     # (dims, ns)
    wb, wdw = s.fig3b_widths(), s.wd_width()
    fig3b = {"n_small": fb["n_small"], "n_large": fb["n_large"], "dim": d3,
             "width_sweep": {"widths": wb}, "wd_sweep": {"width": wdw, "weight_decays": fb["weight_decays"]}}
    sweeps = {}
    for label, n in (("n_small", fb["n_small"]), ("n_large", fb["n_large"])):
        wc = [avg(d3, k3, w, n, 0.0) for w in wb]
        dc = [avg(d3, k3, wdw, n, wd) for wd in fb["weight_decays"]]
        sweeps[label] = (wc, dc)
        fig3b["width_sweep"]["params"] = [c["params"] for c in wc]
        fig3b["wd_sweep"]["params"] = dc[0]["params"]
        for key in ("memorization_ratio", "loglik_mean", "frac_near_mean"):
            fig3b["width_sweep"].setdefault(label, {})[key] = [c[key] for c in wc]
            fig3b["wd_sweep"].setdefault(label, {})[key] = [c[key] for c in dc]
    results = {"experiment": "gmm_memorization", "fig2": fig2, "fig3a_size": fig3a_size, "fig3a_dim": fig3a_dim,
               "fig3b": fig3b, "references": refs,
               "directions": directions(size_cells, dim_cells, sweeps, f3, fb, widths),
               "cells": rows}
    return results


def _pairwise(name: str, criterion: str, pairs: list[tuple[str, dict, dict]], key: str) -> dict:
    """held iff a >= b (not significantly less) for every pair and a > b significantly for at least one."""
    ev = {label: {"a": a[key], "b": b[key], "greater": _greater(a, b, key), "not_less": _not_less(a, b, key)}
          for label, a, b in pairs}
    held = all(e["not_less"] for e in ev.values()) and any(e["greater"] for e in ev.values())
    return {"held": bool(held), "criterion": criterion, "metric": key, "evidence": ev}


def directions(size_cells, dim_cells, sweeps, f3, fb, widths) -> dict:
    """The paper's qualitative claims as checks on the measured numbers (see the module docstring)."""
    ns = f3["ns"]
    out = {}
    out["bigger_nets_memorize_more"] = _pairwise(
        "bigger_nets_memorize_more",
        f"fig3a: at every n, memorization(width {widths[-1]}) >= memorization(width {widths[0]}), and > at one n "
        f"at least ('a' = largest, 'b' = smallest net)",
        [(f"n={n}", size_cells[-1][j], size_cells[0][j]) for j, n in enumerate(ns)], "memorization_ratio")
    out["more_data_memorizes_less"] = _pairwise(
        "more_data_memorizes_less",
        f"fig3a: at every width, memorization(n={ns[0]}) >= memorization(n={ns[-1]}), and > at one width at "
        f"least ('a' = smallest n)",
        [(f"width={w}", size_cells[i][0], size_cells[i][-1]) for i, w in enumerate(widths)], "memorization_ratio")
    out["higher_d_memorizes_less"] = _pairwise(
        "higher_d_memorizes_less",
        f"fig3a (n x d): at every n, memorization(d={f3['dims'][0]}) >= memorization(d={f3['dims'][-1]}), and > at "
        f"one n at least ('a' = smallest d)",
        [(f"n={n}", dim_cells[0][j], dim_cells[-1][j]) for j, n in enumerate(ns)], "memorization_ratio")
    (ws, ds), (wl, dl) = sweeps["n_small"], sweeps["n_large"]
    wd0s, wdmax_s, wd0l, wdmax_l = ds[0], ds[-1], dl[0], dl[-1]
    best_ll_s = max(ds[1:], key=lambda c: c["loglik_mean"]) if len(ds) > 1 else ds[0]
    out["small_n_weight_decay_lowers_memorization"] = _pairwise(
        "small_n_weight_decay_lowers_memorization",
        f"fig3b, n={fb['n_small']}: memorization(wd=0) > memorization(wd={wdmax_s['weight_decay']:g})",
        [("wd", wd0s, wdmax_s)], "memorization_ratio")
    out["small_n_weight_decay_raises_loglik"] = _pairwise(
        "small_n_weight_decay_raises_loglik",
        f"fig3b, n={fb['n_small']}: the best decay > 0 (here wd={best_ll_s['weight_decay']:g}) has a higher mean "
        f"log-likelihood than wd=0",
        [("wd", best_ll_s, wd0s)], "loglik_mean")
    out["small_n_narrower_lowers_memorization"] = _pairwise(
        "small_n_narrower_lowers_memorization",
        f"fig3b, n={fb['n_small']}: memorization(width {ws[-1]['width']}) > memorization(width {ws[0]['width']})",
        [("width", ws[-1], ws[0])], "memorization_ratio")
    best_ll_w = max(ws[:-1], key=lambda c: c["loglik_mean"]) if len(ws) > 1 else ws[0]
    out["small_n_narrower_raises_loglik"] = _pairwise(
        "small_n_narrower_raises_loglik",
        f"fig3b, n={fb['n_small']}: the best narrower net (here width {best_ll_w['width']}) has a higher mean "
        f"log-likelihood than the widest ({ws[-1]['width']})",
        [("width", best_ll_w, ws[-1])], "loglik_mean")
    out["large_n_strong_decay_lowers_loglik"] = _pairwise(
        "large_n_strong_decay_lowers_loglik",
        f"fig3b, n={fb['n_large']}: loglik(wd=0) > loglik(wd={wdmax_l['weight_decay']:g})",
        [("wd", wd0l, wdmax_l)], "loglik_mean")
    out["large_n_wider_generalizes"] = _pairwise(
        "large_n_wider_generalizes",
        f"fig3b, n={fb['n_large']}: loglik(width {wl[-1]['width']}) > loglik(width {wl[0]['width']})",
        [("width", wl[-1], wl[0])], "loglik_mean")
    return out


# ---------------------------------------------------------------------------------------- plots

def make_plots(s: Settings, results: dict, rows: dict, cell_dir: str, workdir: str) -> None:
    """fig2.png, fig3a_size.png, fig3a_dim.png, fig3b_width.png, fig3b_wd.png in workdir."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f2 = s.fig2
    mix = make_mixture(s.seed, f2["dim"], f2["num_components"], s.mean_std)
    pts = training_points(s.seed, mix, f2["n"])
    panels = [("true score", os.path.join(cell_dir, f"ref_d{f2['dim']}_K{f2['num_components']}_n{f2['n']}_true.npy"),
               None)]
    for w in f2["widths"]:
        c = Cell(f2["dim"], f2["num_components"], w, f2["n"], 0.0, s.seeds[0])
        panels.append((f"width {w} ({rows[c.id]['params']:,} params)", os.path.join(cell_dir, c.id + ".npy"),
                       rows[c.id]))
    panels = [p for p in panels if os.path.exists(p[1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    means = np.asarray(mix.means)
    lim = np.abs(np.concatenate([pts, means])).max() + 3.0
    for ax, (title, path, row) in zip(axes[0], panels):
        x = np.load(path)
        if x.shape[1] >= 2:
            from diffmem import metrics
            mem = metrics.memorization(x, pts)["memorized"]
            ax.scatter(x[~mem, 0], x[~mem, 1], s=3, c="tab:blue", alpha=0.4, label="generated")
            ax.scatter(pts[:, 0], pts[:, 1], s=45, facecolors="none", edgecolors="k", lw=0.8, label="training")
            ax.scatter(x[mem, 0], x[mem, 1], s=4, c="tab:red", alpha=0.7, label="memorized")
            ax.scatter(means[:, 0], means[:, 1], s=80, marker="*", c="gold", edgecolors="k", label="true means")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_title(f"{title}\nmemorized {mem.mean():.0%}", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Figure 2: d={f2['dim']}, K={f2['num_components']}, n={f2['n']}")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "fig2.png"), dpi=110)
    plt.close(fig)

    for name, block, ylabels, ytitle in (
            ("fig3a_size", results["fig3a_size"], [f"{p:,}" for p in results["fig3a_size"]["params"]], "parameters"),
            ("fig3a_dim", results["fig3a_dim"], [str(d) for d in results["fig3a_dim"]["dims"]], "d")):
        m = np.asarray(block["memorization_ratio"])
        fig, ax = plt.subplots(figsize=(1.1 * len(block["ns"]) + 2.5, 0.6 * len(ylabels) + 1.8))
        im = ax.imshow(m, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(block["ns"])), [str(n) for n in block["ns"]])
        ax.set_yticks(range(len(ylabels)), ylabels)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if m[i, j] < 0.5 else "k")
        ax.set_xlabel("training set size n")
        ax.set_ylabel(ytitle)
        ax.set_title("memorization ratio" + (f" (width {block['widths'][0]})" if name == "fig3a_dim" else
                                             f" (d={block['dim']})"))
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, f"{name}.png"), dpi=110)
        plt.close(fig)

    fb = results["fig3b"]
    for name, sweep, xs, xlabel in (("fig3b_width", fb["width_sweep"], fb["width_sweep"]["widths"], "width"),
                                    ("fig3b_wd", fb["wd_sweep"], fb["wd_sweep"]["weight_decays"], "weight decay")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax2 = ax.twinx()
        xplot = list(range(len(xs)))
        for label, color in (("n_small", "tab:red"), ("n_large", "tab:blue")):
            ax.plot(xplot, sweep[label]["memorization_ratio"], "-o", c=color, label=f"n={fb[label]} memorization")
            ax2.plot(xplot, sweep[label]["loglik_mean"], "--s", c=color, label=f"n={fb[label]} log-lik")
        ax.set_xticks(xplot, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("memorization ratio (solid)")
        ax2.set_ylabel("mean log-likelihood (dashed)")
        ax.set_ylim(-0.02, 1.02)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
        ax.set_title(f"Figure 3b: {xlabel} sweep (d={fb['dim']})")
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, f"{name}.png"), dpi=110)
        plt.close(fig)
