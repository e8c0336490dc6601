"""The pruning experiment's report: Table 1 of arXiv 2511.03202 with our intervals beside the paper's numbers, the
claims with their verdicts, the memorization-quality frontier, and the other plots."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from diffmem import io, plots
from diffmem.experiments.prune_dit.pipeline import Context
from diffmem.experiments.prune_dit.settings import LABELS, PRUNE_METHODS, SCORE_LAWS, Settings

# Table 1 of the paper (mean +- std over 5 runs, eta = 20%).
PAPER_TABLE = {"original": dict(precision=(0.39, 0.01), recall=(0.08, 0.01), memorization_pct=(73.82, 1.12),
                                fid=(15.47, 0.28)),
               "importance": dict(precision=(0.33, 0.02), recall=(0.12, 0.01), memorization_pct=(68.58, 0.77),
                                  fid=(15.07, 0.33)),
               "random": dict(precision=(0.30, 0.02), recall=(0.09, 0.01), memorization_pct=(66.87, 0.94),
                              fid=(17.14, 0.25))}
TABLE_ROWS = ("original", "finetune_only", "importance", "importance_large_t", "importance_uniform", "random",
              "magnitude", "weight_decay_finetune", "weight_decay_base")


def _cell(s: Settings, summ: dict, m: str) -> Optional[dict]:
    return summ.get(m, {}).get(f"{s.prune.paper_eta:g}" if m in PRUNE_METHODS else "-")


def _ci(c: Optional[dict], scale: float = 1.0, fmt: str = ".2f") -> str:
    if not c or c.get("estimate") is None:
        return "-"
    f = lambda v: format(v * scale, fmt)                                              # noqa: E731
    return f"{f(c['estimate'])} [{f(c['ci_low'])}, {f(c['ci_high'])}]"


def table_rows(s: Settings, summ: dict) -> list[dict]:
    rows = []
    for m in TABLE_ROWS:
        cell = _cell(s, summ, m)
        if cell:
            rows.append(dict(method=m, label=LABELS[m], eta=s.prune.paper_eta if m in PRUNE_METHODS else None,
                             paper=PAPER_TABLE.get(m), **cell))
    return rows


def format_table(s: Settings, rows: list[dict], claims: list[dict], context: str) -> str:
    """Markdown: Table 1 in the paper's shape (estimate [95% interval] over bases and repeats), the paper's numbers
    beside it, then every claim with its verdict."""
    eta_pct = f"{100 * s.prune.paper_eta:g}%"
    lvl = f"{100 * s.claims.level:g}%"
    lines = [f"# Table 1 (arXiv 2511.03202): pruning at eta = {eta_pct}", "", context, "",
             f"Ours: mean over bases of the mean over repeats [{lvl} hierarchical bootstrap interval].", "",
             "| model | precision | recall | memorization % | FD | KID | paper precision | paper recall "
             "| paper memorization % | paper FID |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["paper"]
        pp = ["-"] * 4 if p is None else [f"{p[k][0]:.2f} +- {p[k][1]:.2f}"
                                          for k in ("precision", "recall", "memorization_pct", "fid")]
        label = r["label"] + ("" if r["eta"] is None else f", eta {eta_pct}")
        lines.append(f"| {label} | {_ci(r.get('precision'))} | {_ci(r.get('recall'))} | "
                     f"{_ci(r.get('memorization_ratio'), 100.0)} | {_ci(r.get('fd'), fmt='.3g')} | "
                     f"{_ci(r.get('kid_mean'), fmt='.3g')} | " + " | ".join(pp) + " |")
    lines += ["", f"## Claims ({lvl} intervals; 'holds' only when the interval excludes the threshold on the claimed "
                  "side)", "", "| id | claim | metric | estimate [interval] | threshold | bases x repeats | verdict |",
              "|---|---|---|---|---|---|---|"]
    for c in claims:
        est = "-" if c["estimate"] is None else f"{c['estimate']:.4g} [{c['ci_low']:.4g}, {c['ci_high']:.4g}]"
        side = "<" if c["direction"] == "less" else ">"
        lines.append(f"| {c['id']} | {c['statement']} | {c['metric']} | {est} | {side} {c['threshold']:.4g} | "
                     f"{c['n_bases']} x {c['n_repeats']} | **{c['verdict']}** |")
    notes = sorted({c["note"] for c in claims if c.get("note")})
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots

def _err(c: dict, scale: float = 1.0) -> tuple[float, float, float]:
    return c["estimate"] * scale, (c["estimate"] - c["ci_low"]) * scale, (c["ci_high"] - c["estimate"]) * scale


def features_label(features: str) -> str:
    """The feature extractor's name (results.json reference.features, before any ':') as an axis label says it."""
    return {"classifier": "CNN-classifier (trained here, not Inception)", "pixels": "pixel",
            "inception_v3": "InceptionV3 pool"}.get(features, features)


def plot_frontier(path: str, s: Settings, summ: dict, features: str) -> None:
    """Memorization (x) against FD (y) for each pruning method over the eta sweep (error bars: the intervals over
    bases and repeats), with the original, fine-tune only and weight-decay models as points."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, m in enumerate(m for m in PRUNE_METHODS if m in summ):
        pts = sorted((float(e), c) for e, c in summ[m].items() if e != "-" and "fd" in c)
        if not pts:
            continue
        xs = [_err(c["memorization_ratio"], 100.0) for _, c in pts]
        ys = [_err(c["fd"]) for _, c in pts]
        ax.errorbar([x[0] for x in xs], [y[0] for y in ys], xerr=np.array([[x[1] for x in xs], [x[2] for x in xs]]),
                    yerr=np.array([[y[1] for y in ys], [y[2] for y in ys]]), marker="o", capsize=2, color=f"C{i}",
                    label=m)
        for (e, _), x, y in zip(pts, xs, ys):
            ax.annotate(f"{e:g}", (x[0], y[0]), textcoords="offset points", xytext=(3, 3), fontsize=6, color=f"C{i}")
    for j, m in enumerate(("original", "finetune_only", "weight_decay_finetune", "weight_decay_base")):
        c = summ.get(m, {}).get("-")
        if c and "fd" in c:
            x, y = _err(c["memorization_ratio"], 100.0), _err(c["fd"])
            ax.errorbar([x[0]], [y[0]], xerr=[[x[1]], [x[2]]], yerr=[[y[1]], [y[2]]], marker="s*^v"[j], ms=8,
                        color="k" if j == 0 else f"C{6 + j}", ls="none", capsize=2, label=m)
    ax.set(xlabel="memorization % (lower is better)", ylabel=f"FD on {features_label(features)} features\n(lower is better)",
           title=f"memorization-quality frontier over eta (labels: eta; {100 * s.claims.level:g}% intervals)")
    ax.legend(fontsize=7)
    plots.save_figure(fig, path)


def plot_vs_eta(path: str, s: Settings, summ: dict, features: str) -> None:
    """Memorization %, FD and the loss increase right after pruning against eta, one line per pruning method."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    for ax, key, scale, ylabel in ((axes[0], "memorization_ratio", 100.0, "memorization %"),
                                   (axes[1], "fd", 1.0, f"FD ({features_label(features)} features)"),
                                   (axes[2], "loss_increase_after_prune", 1.0, "loss increase right after pruning")):
        for i, m in enumerate(m for m in PRUNE_METHODS if m in summ):
            pts = sorted((float(e), c[key]) for e, c in summ[m].items() if e != "-" and key in c)
            if pts:
                e = [_err(c, scale) for _, c in pts]
                ax.errorbar([p[0] for p in pts], [x[0] for x in e], yerr=np.array([[x[1] for x in e], [x[2] for x in e]]),
                            marker="o", capsize=3, color=f"C{i}", label=m)
        for m, ls in (("original", "--"), ("finetune_only", ":")):
            c = summ.get(m, {}).get("-", {}).get(key)
            if c:
                ax.axhline(c["estimate"] * scale, color="k", ls=ls, lw=1, label=m)
        ax.axvline(s.prune.paper_eta, color="lightgray", lw=0.8)
        ax.set(xlabel="eta (fraction of heads pruned)", ylabel=ylabel)
    axes[0].legend(fontsize=7)
    plots.save_figure(fig, path)


def plot_heatmaps(path: str, s: Settings, scores: dict, masks: dict) -> None:
    """Layer x head heat maps of the importance scores (per-layer normalised) and the magnitude scores of base 0,
    repeat 0; an x marks the heads each method prunes at the paper eta."""
    plt = plots.pyplot()
    names = [n for n in list(SCORE_LAWS) + ["magnitude"] if n in scores]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False, layout="constrained")
    for ax, n in zip(axes[0], names):
        im = ax.imshow(np.asarray(scores[n], np.float64), aspect="auto", cmap="viridis")
        mask = masks.get(n)
        if mask is not None:
            ys, xs = np.nonzero(mask == 0)
            ax.scatter(xs, ys, marker="x", color="red", s=30)
        ax.set(title=n, xlabel="head", ylabel="layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_major_locator().set_params(integer=True)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"head scores, base 0 repeat 0 (x: pruned at eta = {s.prune.paper_eta:g})", fontsize=9)
    plots.save_figure(fig, path)


def plot_where(path: str, where: dict) -> None:
    """Left: along base 0's reverse path, the fraction of samples whose Tweedie estimate already has its final
    nearest training image (and keeps it), against u. Right: the swap test's memorization against tau, per base."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
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
    ax = axes[1]
    for base in where.get("swap", {}).get("bases", []):
        for i, p in enumerate(base["pairs"]):
            a, b = p["pair"]
            taus = [0.0] + [c["tau_u"] for c in p["taus"]] + [1.0]
            ab = ([p["a_alone"]["memorization_ratio"]] + [c["a_then_b"]["memorization_ratio"] for c in p["taus"]]
                  + [p["b_alone"]["memorization_ratio"]])
            lab = f"{a} (t > tau) then {b}" if base["base"] == 0 else None
            ax.plot(taus, 100 * np.asarray(ab), "o-", color=f"C{i}", alpha=0.8, label=lab)
    ax.set(xlabel="swap time tau (unit time u; 0: first model alone, 1: second alone)", ylabel="memorization %",
           xlim=(-0.02, 1.02), title="swap test (one line per base)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    plots.save_figure(fig, path)


def grids(ctx: Context, workdir: str) -> None:
    """samples_<method>.png: base 0, repeat 0's generated samples (top rows) above their nearest training images
    (red: memorized)."""
    if not ctx.s.eval.grid_samples:
        return
    for m, eta in (("original", None), ("finetune_only", None), ("importance", ctx.s.prune.paper_eta),
                   ("random", ctx.s.prune.paper_eta), ("magnitude", ctx.s.prune.paper_eta),
                   ("weight_decay_finetune", None)):
        rid = f"b0_r0_{m}" + ("" if eta is None else f"_eta{eta:g}")
        p = os.path.join(ctx.piece_dir, "grids", rid + ".npz")
        if not io.exists(p):
            continue
        f = io.load_npz(p)
        smp, nn, mem = f["samples"], f["nn_idx"][:, 0], f["memorized"]
        plots.pair_grid(os.path.join(workdir, f"samples_{m}.png"), smp, ctx.images[nn], ncols=min(16, len(smp)),
                        highlight=np.asarray(mem, bool),
                        sample_label=m.replace("_", " ") + ("" if eta is None else f", eta {eta:g}"))
