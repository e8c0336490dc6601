"""approximation.png: the fit error against width, W*(n) with its bracketing, and the true score's W* against 1/eps,
one row per dimension."""
from __future__ import annotations

import numpy as np

from diffmem import plots
from diffmem.experiments.approximation.settings import KINDS, Settings
from diffmem.experiments.approximation.widths import ABOVE, BELOW, BRACKETED, cell_id


def make_plot(s: Settings, results: dict, path) -> None:
    plt = plots.pyplot()
    dims, ns, widths = s.data.dims, s.ns, list(s.widths)
    cells, tables = results["cells"], results["width_star"]
    fig, axes = plt.subplots(len(dims), 3, figsize=(15, 4.2 * len(dims)), squeeze=False)
    cmap = plt.get_cmap("viridis")
    e_true = min(s.eps_true)
    for row, d in zip(axes, dims):
        a1, a2, a3 = row
        for j, n in enumerate(ns):
            c = cmap(j / max(len(ns) - 1, 1))
            for kind, ls in (("empirical", "-o"), ("true", "--s")):
                rel = np.full((len(s.seeds), len(widths)), np.nan)                                # (seeds, widths)
                for i, seed in enumerate(s.seeds):
                    for k, w in enumerate(widths):
                        cell = cells.get(cell_id(d, w, n, kind, seed))
                        rel[i, k] = cell["rel_err_max"] if cell else np.nan
                ok = np.isfinite(rel).any(0)
                if ok.any():
                    a1.plot(np.asarray(widths)[ok], np.nanmean(rel[:, ok], 0), ls, c=c, ms=3,
                            label=f"n={n} {kind}" if kind == "empirical" or j == 0 else None)
        a1.axhline(s.eps_empirical, c="gray", lw=0.8, ls=":")
        a1.axhline(e_true, c="gray", lw=0.8, ls="--")
        a1.set(xscale="log", yscale="log", xlabel="width W", ylabel="max over t of relative weighted error",
               title=f"d={d}: fit error (seed mean; fits stop at eps)")
        a1.set_xticks(widths, [str(w) for w in widths])
        a1.legend(fontsize=6, ncol=2)
        for kind, eps, color in (("empirical", s.eps_empirical, "tab:red"), ("true", e_true, "tab:blue")):
            t = tables[str(d)][kind][f"{eps:g}"]
            geo = []
            for j, n in enumerate(ns):
                for ws, st in zip(t["wstar"], t["status"]):
                    if st[j] == BRACKETED:
                        a2.plot(n, ws[j], "o", c=color, ms=4, alpha=0.6)
                    elif st[j] == ABOVE:
                        a2.plot(n, widths[-1], "^", c=color, ms=6)
                    elif st[j] == BELOW:
                        a2.plot(n, widths[0], "v", c=color, ms=6)
                vals = [ws[j] for ws, st in zip(t["wstar"], t["status"]) if st[j] == BRACKETED]
                geo.append(float(np.exp(np.mean(np.log(vals)))) if vals else np.nan)
            a2.plot(ns, geo, "-", c=color, label=f"{kind}, eps={eps:g} (geometric mean over seeds)")
        a2.set(xscale="log", yscale="log", xlabel="n", ylabel="W* (bracketed; ^ above / v below the ladder)",
               title=f"d={d}: W*(n), depth-{s.model.depth} MLP fitted by Adam")
        a2.set_xticks(ns, [str(n) for n in ns])
        a2.legend(fontsize=7)
        geo_eps = []
        for eps in s.eps_true:
            t = tables[str(d)]["true"][f"{eps:g}"]
            vals = [w for ws, st in zip(t["wstar"], t["status"]) for w, z in zip(ws, st) if z == BRACKETED]
            geo_eps.append(float(np.exp(np.mean(np.log(vals)))) if vals else np.nan)
        a3.plot([1 / e for e in s.eps_true], geo_eps, "-s", c="tab:blue")
        a3.set(xscale="log", yscale="log", xlabel="1 / eps", ylabel="W* of the true score (geometric mean)",
               title=f"d={d}: true score, W* against 1/eps")
        a3.set_xticks([1 / e for e in s.eps_true], [f"{1 / e:.3g}" for e in s.eps_true])
    from matplotlib.ticker import NullLocator
    for ax in axes.flat:
        ax.xaxis.set_minor_locator(NullLocator())
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=100)
