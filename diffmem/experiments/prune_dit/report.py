"""The pruning experiment's report: aggregates over repeats, paired comparisons, Table 1 (arXiv 2511.03202) beside
the paper's numbers, and the plots."""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from diffmem import io, plots
from diffmem.experiments.prune_dit.pipeline import Context, eta_tag, run_id
from diffmem.experiments.prune_dit.settings import PRUNE_METHODS, SCORE_LAWS, Settings

# Table 1 of the paper (mean +- std over 5 runs, eta = 20%).
PAPER_TABLE = {"original": dict(precision=(0.39, 0.01), recall=(0.08, 0.01), memorization_pct=(73.82, 1.12),
                                fid=(15.47, 0.28)),
               "importance": dict(precision=(0.33, 0.02), recall=(0.12, 0.01), memorization_pct=(68.58, 0.77),
                                  fid=(15.07, 0.33)),
               "random": dict(precision=(0.30, 0.02), recall=(0.09, 0.01), memorization_pct=(66.87, 0.94),
                              fid=(17.14, 0.25))}
METRIC_KEYS = ("memorization_ratio", "fd", "kid_mean", "precision", "recall", "param_count", "loss_after_prune",
               "final_finetune_loss", "mean_nn1_dist")


def aggregate(runs: list[dict]) -> dict:
    """{method: {eta_tag or '-': {metric: {mean, std, n, values}}}} (std with ddof=1; None for one repeat)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], "-" if r["eta"] is None else eta_tag(r["eta"])), []).append(r)
    out: dict[str, dict] = {}
    for (m, e), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["repeat"])
        cell = {"repeats": [r["repeat"] for r in rs]}
        for k in METRIC_KEYS:
            vals = [r.get(k) for r in rs]
            if any(v is None for v in vals):
                continue
            v = np.asarray(vals, np.float64)
            cell[k] = dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else None, n=int(v.size),
                           values=v.tolist())
        out.setdefault(m, {})[e] = cell
    return out


def paired(runs: list[dict], a: tuple, b: tuple, key: str) -> Optional[dict]:
    """Paired difference a - b of `key` over the repeats both have (same seeds): mean, std, standard error."""
    ra = {r["repeat"]: r[key] for r in runs if (r["method"], r["eta"]) == a and r.get(key) is not None}
    rb = {r["repeat"]: r[key] for r in runs if (r["method"], r["eta"]) == b and r.get(key) is not None}
    common = sorted(set(ra) & set(rb))
    if not common:
        return None
    d = np.asarray([ra[i] - rb[i] for i in common], np.float64)
    std = float(d.std(ddof=1)) if d.size > 1 else None
    return dict(mean=float(d.mean()), std=std, stderr=None if std is None else std / math.sqrt(d.size),
                n=int(d.size), values=d.tolist(), a=list(a), b=list(b))


def comparisons(s: Settings, runs: list[dict]) -> dict:
    """Paired differences at the paper eta (memorization ratio and FD): the questions of Table 1 and its control."""
    e = s.prune.paper_eta
    pairs = {"importance_minus_random": (("importance", e), ("random", e)),
             "importance_minus_finetune_only": (("importance", e), ("finetune_only", None)),
             "random_minus_finetune_only": (("random", e), ("finetune_only", None)),
             "finetune_only_minus_original": (("finetune_only", None), ("original", None)),
             "importance_minus_original": (("importance", e), ("original", None)),
             "importance_minus_importance_large_t": (("importance", e), ("importance_large_t", e)),
             "importance_minus_magnitude": (("importance", e), ("magnitude", e)),
             "weight_decay_finetune_minus_finetune_only": (("weight_decay_finetune", None), ("finetune_only", None))}
    out = {}
    for name, (a, b) in pairs.items():
        cell = {k: paired(runs, a, b, k) for k in ("memorization_ratio", "fd", "precision", "recall")}
        if any(v is not None for v in cell.values()):
            out[name] = cell
    return out


def score_agreement(scores: dict[str, np.ndarray], valid: np.ndarray) -> dict:
    """Spearman rank correlation between the head rankings of the score types (valid heads)."""
    names = [n for n in list(SCORE_LAWS) + ["magnitude"] if n in scores]
    ranks = {n: _rankdata(np.asarray(scores[n])[valid]) for n in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = ranks[a], ranks[b]
            c = np.corrcoef(ra, rb)[0, 1] if ra.std() > 0 and rb.std() > 0 else float("nan")
            out[f"{a}_vs_{b}"] = float(c)
    return out


def _rankdata(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(x.size, np.float64)
    r[order] = np.arange(x.size)
    return r


TABLE_ROWS = ("original", "finetune_only", "importance", "importance_large_t", "importance_uniform", "random",
              "magnitude", "weight_decay_finetune", "weight_decay_base")


ROW_LABELS = {"original": "original (unpruned)", "finetune_only": "fine-tune only (control, no pruning)",
              "importance": "importance pruning, Beta(0.8,2) (paper)",
              "importance_large_t": "importance pruning, Beta(2,0.8) (large t)",
              "importance_uniform": "importance pruning, U(0,1)", "random": "random pruning",
              "magnitude": "magnitude pruning", "weight_decay_finetune": "fine-tune with weight decay (no pruning)",
              "weight_decay_base": "base trained with weight decay"}


def table_rows(s: Settings, agg: dict) -> list[dict]:
    rows = []
    for m in TABLE_ROWS:
        cell = agg.get(m, {}).get("-" if m not in PRUNE_METHODS else eta_tag(s.prune.paper_eta))
        if not cell:
            continue
        row = dict(method=m, label=ROW_LABELS[m], eta=s.prune.paper_eta if m in PRUNE_METHODS else None,
                   repeats=len(cell["repeats"]))
        for k in ("precision", "recall", "memorization_ratio", "fd", "kid_mean", "param_count"):
            if k in cell:
                row[k] = dict(mean=cell[k]["mean"], std=cell[k]["std"])
        row["paper"] = PAPER_TABLE.get(m)
        rows.append(row)
    return rows


def _pm(c: Optional[dict], scale: float = 1.0, fmt: str = ".2f") -> str:
    if not c:
        return "-"
    m = format(c["mean"] * scale, fmt)
    return m if c["std"] is None else f"{m} +- {format(c['std'] * scale, fmt)}"


def format_table(s: Settings, rows: list[dict], context: str) -> str:
    """Markdown in the shape of the paper's Table 1 (ours beside the paper's where it has the row)."""
    eta_pct = f"{100 * s.prune.paper_eta:g}%"
    lines = [f"# Table 1 (arXiv 2511.03202): pruning at eta = {eta_pct}", "", context, "",
             "| model | precision | recall | memorization % | FD | KID | params | paper precision | paper recall "
             "| paper memorization % | paper FID |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["paper"]
        pp = ["-"] * 4 if p is None else [f"{p['precision'][0]:.2f} +- {p['precision'][1]:.2f}",
                                          f"{p['recall'][0]:.2f} +- {p['recall'][1]:.2f}",
                                          f"{p['memorization_pct'][0]:.2f} +- {p['memorization_pct'][1]:.2f}",
                                          f"{p['fid'][0]:.2f} +- {p['fid'][1]:.2f}"]
        label = r["label"] + ("" if r["eta"] is None else f", eta {eta_pct}")
        params = "-" if "param_count" not in r else f"{r['param_count']['mean']:.0f}"
        lines.append(f"| {label} | {_pm(r.get('precision'))} | {_pm(r.get('recall'))} | "
                     f"{_pm(r.get('memorization_ratio'), 100.0)} | {_pm(r.get('fd'), fmt='.3f')} | "
                     f"{_pm(r.get('kid_mean'), fmt='.3g')} | {params} | " + " | ".join(pp) + " |")
    return "\n".join(lines) + "\n"


def plot_vs_eta(path: str, s: Settings, agg: dict) -> None:
    """Memorization % and FD against eta, one line per pruning method (mean +- std over repeats); the
    finetune_only control is eta = 0 of every line, the original model a dashed line."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, scale, ylabel in ((axes[0], "memorization_ratio", 100.0, "memorization %"),
                                   (axes[1], "fd", 1.0, "FD (classifier features)")):
        ctrl = agg.get("finetune_only", {}).get("-", {}).get(key)
        for m in PRUNE_METHODS:
            cells = agg.get(m, {})
            pts = sorted((float(e), c[key]) for e, c in cells.items() if e != "-" and key in c)
            if not pts:
                continue
            if ctrl:
                pts = [(0.0, ctrl)] + pts
            x = [p[0] for p in pts]
            y = [p[1]["mean"] * scale for p in pts]
            err = [(p[1]["std"] or 0.0) * scale for p in pts]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m)
        orig = agg.get("original", {}).get("-", {}).get(key)
        if orig:
            ax.axhline(orig["mean"] * scale, color="k", ls="--", lw=1, label="original")
        wdf = agg.get("weight_decay_finetune", {}).get("-", {}).get(key)
        if wdf:
            ax.axhline(wdf["mean"] * scale, color="gray", ls=":", lw=1, label="weight_decay_finetune")
        ax.axvline(s.prune.paper_eta, color="lightgray", lw=0.8)
        ax.set(xlabel="eta (fraction of heads pruned; 0 = fine-tune only)", ylabel=ylabel)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    plots.save_figure(fig, path)


def plot_heatmaps(path: str, s: Settings, scores: dict, masks: dict) -> None:
    """Layer x head heat maps of the importance scores (per-layer normalised) and the magnitude scores; an x marks
    the heads each method prunes at the paper eta."""
    plt = plots.pyplot()
    names = [n for n in list(SCORE_LAWS) + ["magnitude"] if n in scores]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, n in zip(axes[0], names):
        a = np.asarray(scores[n], np.float64)
        im = ax.imshow(a, aspect="auto", cmap="viridis")
        mask = masks.get((n, s.prune.paper_eta))
        if mask is not None:
            ys, xs = np.nonzero(mask == 0)
            ax.scatter(xs, ys, marker="x", color="red", s=30)
        ax.set(title=n, xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"head scores (x: pruned at eta = {s.prune.paper_eta:g})", fontsize=9)
    fig.tight_layout()
    plots.save_figure(fig, path)


def plot_where(path: str, where: dict) -> None:
    """Left: along the base model's reverse path, the fraction of samples whose Tweedie estimate already has its
    final nearest training image (and stays there), and the fraction whose estimate passes the memorization test,
    against u. Right: swap test memorization against tau."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    tr = where.get("trajectory")
    if tr:
        ax = axes[0]
        ax.plot(tr["grid_u"], tr["frac_decided"], label="nearest training image final from here on")
        ax.plot(tr["grid_u"], tr["frac_same_nn_as_final"], ls="--", label="same nearest image as final")
        ax.plot(tr["grid_u"], tr["frac_memorized_along"], ls=":", label="Tweedie estimate memorized")
        med = (tr.get("decision_u_memorized") or {}).get("median")
        if med is not None:
            ax.axvline(med, color="red", lw=0.8, label=f"median decision u (memorized) = {med:.2f}")
        ax.set(xlabel="unit time u (0 = data, 1 = noise)", ylabel="fraction of samples", xlim=(0, 1))
        ax.legend(fontsize=7)
    sw = where.get("swap")
    if sw and sw["pairs"]:
        ax = axes[1]
        for i, p in enumerate(sw["pairs"]):
            a, b = p["pair"]
            taus = [0.0] + [c["tau_u"] for c in p["taus"]] + [1.0]
            ab = ([p["a_alone"]["memorization_ratio"]] + [c["a_then_b"]["memorization_ratio"] for c in p["taus"]]
                  + [p["b_alone"]["memorization_ratio"]])
            ba = ([p["b_alone"]["memorization_ratio"]] + [c["b_then_a"]["memorization_ratio"] for c in p["taus"]]
                  + [p["a_alone"]["memorization_ratio"]])
            color = f"C{i}"
            ax.plot(taus, 100 * np.asarray(ab), "o-", color=color, label=f"{a} (t > tau) then {b}")
            ax.plot(taus, 100 * np.asarray(ba), "s--", color=color, label=f"{b} (t > tau) then {a}")
        ax.set(xlabel="swap time tau (unit time u; 0: first model alone, 1: second alone)",
               ylabel="memorization %", xlim=(-0.02, 1.02))
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    plots.save_figure(fig, path)


def grids(ctx: Context, workdir: str) -> None:
    """samples_<method>.png: generated samples (top rows) above their nearest training images (red: memorized)."""
    g = ctx.s.eval.grid_samples
    if not g:
        return
    for m, eta in (("original", None), ("finetune_only", None), ("importance", ctx.s.prune.paper_eta),
                   ("random", ctx.s.prune.paper_eta), ("magnitude", ctx.s.prune.paper_eta)):
        p = os.path.join(ctx.piece_dir, "runs", run_id(m, eta, 0), "samples.npz")
        if not io.exists(p):
            continue
        f = io.load_npz(p)
        smp, nn, mem = f["samples"][:g], f["nn_idx"][:g, 0], f["memorized"][:g]
        plots.pair_grid(os.path.join(workdir, f"samples_{m}.png"), smp, ctx.images[nn], ncols=min(16, len(smp)),
                           highlight=np.asarray(mem, bool))
