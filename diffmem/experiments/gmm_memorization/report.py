"""results.json of the lab: seed-averaged tables per figure, the references, and the paper's qualitative claims
("directions") checked on the measured numbers."""
from __future__ import annotations

import math

import numpy as np

from diffmem.experiments.gmm_memorization.settings import Cell, Settings

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
    d3, k3 = f3.dim, f3.num_components
    avg = lambda *a: _avg(s, rows, *a)
    fig2 = {"dim": f2.dim, "num_components": f2.num_components, "n": f2.n,
            "rows": [avg(f2.dim, f2.num_components, w, f2.n, 0.0) for w in f2.widths]}
    widths = s.fig3a_widths()
    size_cells = [[avg(d3, k3, w, n, 0.0) for n in f3.ns] for w in widths]
    fig3a_size = {"dim": d3, "num_components": k3, "ns": list(f3.ns), "widths": widths,
                  "params": [r[0]["params"] for r in size_cells]}
    dim_cells = [[avg(d, k3, s.dim_sweep_width(d), n, 0.0) for n in f3.ns] for d in f3.dims]
    fig3a_dim = {"dims": list(f3.dims), "ns": list(f3.ns), "widths": [s.dim_sweep_width(d) for d in f3.dims],
                 "params": [r[0]["params"] for r in dim_cells]}
    for key in ("memorization_ratio", "loglik_mean", "frac_near_mean"):
        fig3a_size[key] = [[c[key] for c in r] for r in size_cells]   # (widths, ns)
        fig3a_dim[key] = [[c[key] for c in r] for r in dim_cells]     # (dims, ns)
    wb, wdw = s.fig3b_widths(), s.wd_width()
    fig3b = {"n_small": fb.n_small, "n_large": fb.n_large, "dim": d3,
             "width_sweep": {"widths": wb}, "wd_sweep": {"width": wdw, "weight_decays": s.weight_decays}}
    sweeps = {}
    for label, n in (("n_small", fb.n_small), ("n_large", fb.n_large)):
        wc = [avg(d3, k3, w, n, 0.0) for w in wb]
        dc = [avg(d3, k3, wdw, n, wd) for wd in s.weight_decays]
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
    ns = list(f3.ns)
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
        f"fig3a (n x d): at every n, memorization(d={f3.dims[0]}) >= memorization(d={f3.dims[-1]}), and > at "
        f"one n at least ('a' = smallest d)",
        [(f"n={n}", dim_cells[0][j], dim_cells[-1][j]) for j, n in enumerate(ns)], "memorization_ratio")
    (ws, ds), (wl, dl) = sweeps["n_small"], sweeps["n_large"]
    wd0s, wdmax_s, wd0l, wdmax_l = ds[0], ds[-1], dl[0], dl[-1]
    best_ll_s = max(ds[1:], key=lambda c: c["loglik_mean"]) if len(ds) > 1 else ds[0]
    out["small_n_weight_decay_lowers_memorization"] = _pairwise(
        "small_n_weight_decay_lowers_memorization",
        f"fig3b, n={fb.n_small}: memorization(wd=0) > memorization(wd={wdmax_s['weight_decay']:g})",
        [("wd", wd0s, wdmax_s)], "memorization_ratio")
    out["small_n_weight_decay_raises_loglik"] = _pairwise(
        "small_n_weight_decay_raises_loglik",
        f"fig3b, n={fb.n_small}: the best decay > 0 (here wd={best_ll_s['weight_decay']:g}) has a higher mean "
        f"log-likelihood than wd=0",
        [("wd", best_ll_s, wd0s)], "loglik_mean")
    out["small_n_narrower_lowers_memorization"] = _pairwise(
        "small_n_narrower_lowers_memorization",
        f"fig3b, n={fb.n_small}: memorization(width {ws[-1]['width']}) > memorization(width {ws[0]['width']})",
        [("width", ws[-1], ws[0])], "memorization_ratio")
    best_ll_w = max(ws[:-1], key=lambda c: c["loglik_mean"]) if len(ws) > 1 else ws[0]
    out["small_n_narrower_raises_loglik"] = _pairwise(
        "small_n_narrower_raises_loglik",
        f"fig3b, n={fb.n_small}: the best narrower net (here width {best_ll_w['width']}) has a higher mean "
        f"log-likelihood than the widest ({ws[-1]['width']})",
        [("width", best_ll_w, ws[-1])], "loglik_mean")
    out["large_n_strong_decay_lowers_loglik"] = _pairwise(
        "large_n_strong_decay_lowers_loglik",
        f"fig3b, n={fb.n_large}: loglik(wd=0) > loglik(wd={wdmax_l['weight_decay']:g})",
        [("wd", wd0l, wdmax_l)], "loglik_mean")
    out["large_n_wider_generalizes"] = _pairwise(
        "large_n_wider_generalizes",
        f"fig3b, n={fb.n_large}: loglik(width {wl[-1]['width']}) > loglik(width {wl[0]['width']})",
        [("width", wl[-1], wl[0])], "loglik_mean")
    return out
