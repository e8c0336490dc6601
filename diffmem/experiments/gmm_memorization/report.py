"""results.json of the lab: seed-averaged tables per figure, the references, and the paper's qualitative claims
(Section 6.1, Figures 2-3) as claims with 95% intervals over the training seeds (diffmem.eval.statistics).

A direction compares two cells a and b through the paired per-seed difference metric(a, seed) - metric(b, seed)
(same training points, same sampler keys; the seed changes the network's init and SGD stream). Directions that hold
"at every n" (or width) are claims about the mean of the differences over those pairs, and additionally require
that no single pair is reversed: verdict 'holds' when the mean's interval is above 0 and no pair's interval is
wholly below 0, 'fails' when the mean's interval is below 0, else 'inconclusive' (the per-pair claims are listed
under 'pairs').
"""
from __future__ import annotations

import numpy as np

from diffmem.eval import statistics
from diffmem.experiments.gmm_memorization.settings import Cell, Settings

_KEYS = ("memorization_ratio", "loglik_mean", "loglik_stderr", "frac_near_mean", "median_dist_ratio",
         "final_loss", "params")
_PER_SEED = ("memorization_ratio", "loglik_mean")


def _avg(s: Settings, rows: dict, dim, k, width, n, wd) -> dict:
    """Seed-averaged metrics of one cell, with the per-seed values of memorization and log-likelihood."""
    rs = [rows[Cell(dim, k, width, n, float(wd), seed).id] for seed in s.seeds]
    out = {key: float(np.mean([r[key] for r in rs])) for key in _KEYS}
    out["params"] = int(rs[0]["params"])
    for key in _PER_SEED:
        out[f"{key}_seeds"] = [float(r[key]) for r in rs]
    out.update(width=width, n=n, weight_decay=float(wd), dim=dim)
    return out


def direction_claim(id_: str, statement: str, metric: str, pairs: list[tuple[str, np.ndarray]]) -> dict:
    """A direction 'a > b' over one or more pairs: pairs [(label, diffs (S,) = a - b per seed)]; see the module
    docstring for the verdict. Returns the claim of the mean difference, with 'pairs' and the combined verdict."""
    per_pair = [statistics.claim(f"{id_}[{label}]", f"{statement} ({label})", metric, np.asarray(d, np.float64),
                                 direction="greater", threshold=0.0) for label, d in pairs]
    mean = np.mean(np.stack([np.asarray(d, np.float64) for _, d in pairs]), 0)                  # (S,)
    c = statistics.claim(id_, statement, metric + (" (mean over the pairs)" if len(pairs) > 1 else ""), mean,
                         direction="greater", threshold=0.0)
    reversed_ = [p["id"] for p in per_pair if p["verdict"] == "fails"]
    if c["verdict"] == "holds" and reversed_:
        c["verdict"] = "inconclusive"
        c["note"] = "; ".join(x for x in (c["note"], f"reversed: {reversed_}") if x)
    c["pairs"] = [{k: p[k] for k in ("id", "estimate", "ci_low", "ci_high", "verdict")} for p in per_pair]
    return c


def _diff(a: dict, b: dict, key: str) -> np.ndarray:
    return np.asarray(a[f"{key}_seeds"]) - np.asarray(b[f"{key}_seeds"])                     # (S,)


def direction_claims(s: Settings, size_cells, dim_cells, sweeps) -> list[dict]:
    """The 9 directions of Figures 3a / 3b (cells averaged by `_avg`, per seed in '*_seeds')."""
    f3, fb = s.fig3a, s.fig3b
    ns, widths = list(f3.ns), s.fig3a_widths()
    (ws, ds), (wl, dl) = sweeps["n_small"], sweeps["n_large"]
    wds = s.weight_decays
    wd_mod, w_mod = s.wd_moderate(), s.width_moderate()
    i_wd, i_w = wds.index(wd_mod), [c["width"] for c in ws].index(w_mod)
    mem, ll = "memorization_ratio", "loglik_mean"
    return [
        direction_claim("bigger_nets_memorize_more", f"fig3a: the largest net (width {widths[-1]}) memorizes more "
                        f"than the smallest (width {widths[0]}) at every n", "memorization ratio difference",
                        [(f"n={n}", _diff(size_cells[-1][j], size_cells[0][j], mem)) for j, n in enumerate(ns)]),
        direction_claim("more_data_memorizes_less", f"fig3a: n={ns[0]} memorizes more than n={ns[-1]} at every "
                        f"width", "memorization ratio difference",
                        [(f"width={w}", _diff(size_cells[i][0], size_cells[i][-1], mem)) for i, w in enumerate(widths)]),
        direction_claim("higher_d_memorizes_less", f"fig3a (n x d): d={f3.dims[0]} memorizes more than "
                        f"d={f3.dims[-1]} at every n", "memorization ratio difference",
                        [(f"n={n}", _diff(dim_cells[0][j], dim_cells[-1][j], mem)) for j, n in enumerate(ns)]),
        direction_claim("small_n_weight_decay_lowers_memorization", f"fig3b, n={fb.n_small}: weight decay "
                        f"{wds[-1]:g} memorizes less than none", "memorization(wd=0) - memorization(wd)",
                        [("wd", _diff(ds[0], ds[-1], mem))]),
        direction_claim("small_n_weight_decay_raises_loglik", f"fig3b, n={fb.n_small}: weight decay {wd_mod:g} "
                        f"raises the mean true log-likelihood over none", "loglik(wd) - loglik(wd=0)",
                        [("wd", _diff(ds[i_wd], ds[0], ll))]),
        direction_claim("small_n_narrower_lowers_memorization", f"fig3b, n={fb.n_small}: the widest net (width "
                        f"{ws[-1]['width']}) memorizes more than the narrowest (width {ws[0]['width']})",
                        "memorization ratio difference", [("width", _diff(ws[-1], ws[0], mem))]),
        direction_claim("small_n_narrower_raises_loglik", f"fig3b, n={fb.n_small}: the narrower width {w_mod} has a "
                        f"higher mean true log-likelihood than the widest ({ws[-1]['width']})",
                        "loglik difference", [("width", _diff(ws[i_w], ws[-1], ll))]),
        direction_claim("large_n_strong_decay_lowers_loglik", f"fig3b, n={fb.n_large}: weight decay {wds[-1]:g} "
                        f"lowers the mean true log-likelihood", "loglik(wd=0) - loglik(wd)",
                        [("wd", _diff(dl[0], dl[-1], ll))]),
        direction_claim("large_n_wider_generalizes", f"fig3b, n={fb.n_large}: the widest net (width "
                        f"{wl[-1]['width']}) has a higher mean true log-likelihood than the narrowest (width "
                        f"{wl[0]['width']})", "loglik difference", [("width", _diff(wl[-1], wl[0], ll))]),
    ]


def assemble(s: Settings, rows: dict, refs: dict) -> dict:
    """results.json content: per-figure tables, references, claims, every cell."""
    f2, f3, fb = s.fig2, s.fig3a, s.fig3b
    d3, k3 = f3.dim, f3.num_components
    avg = lambda *a: _avg(s, rows, *a)
    fig2_seed = [s.seeds[0]]
    fig2 = {"dim": f2.dim, "num_components": f2.num_components, "n": f2.n, "seed": fig2_seed[0],
            "rows": [rows[Cell(f2.dim, f2.num_components, w, f2.n, 0.0, fig2_seed[0]).id] for w in f2.widths]}
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
        for key in ("memorization_ratio", "loglik_mean", "frac_near_mean") + tuple(f"{k}_seeds" for k in _PER_SEED):
            fig3b["width_sweep"].setdefault(label, {})[key] = [c[key] for c in wc]
            fig3b["wd_sweep"].setdefault(label, {})[key] = [c[key] for c in dc]
    return {"experiment": "gmm_memorization", "seeds": list(s.seeds), "fig2": fig2, "fig3a_size": fig3a_size,
            "fig3a_dim": fig3a_dim, "fig3b": fig3b, "references": refs,
            "claims": direction_claims(s, size_cells, dim_cells, sweeps), "cells": rows}


def claims_text(s: Settings, claims: list[dict]) -> str:
    """claims.md: the design, the claims table, then each multi-pair claim's pairs."""
    head = (f"Figures 2-3 of arXiv 2511.03202 (Section 6.1) as claims: paired differences between cells over "
            f"{len(s.seeds)} training seeds (init + SGD; the training points and sampler keys are shared), 95% "
            f"bootstrap intervals; {s.sampler.num_samples} samples per cell.\n\n")
    lines = [head, statistics.claims_markdown(claims, "gmm_memorization claims"), "", "## pairs", ""]
    for c in claims:
        if len(c["pairs"]) > 1:
            cells = ", ".join(f"{p['id'].split('[')[-1].rstrip(']')}: {p['estimate']:.3g} [{p['ci_low']:.3g}, "
                              f"{p['ci_high']:.3g}] {p['verdict']}" for p in c["pairs"])
            lines.append(f"- {c['id']}: {cells}")
    return "\n".join(lines) + "\n"
