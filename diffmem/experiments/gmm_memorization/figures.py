"""The lab's figures: fig2.png (scatter panels), fig3a_size.png / fig3a_dim.png (memorization heat maps),
fig3b_width.png / fig3b_wd.png (memorization and log-likelihood against width / weight decay)."""
from __future__ import annotations

import numpy as np

from diffmem import eval as eval_lib
from diffmem import io, plots
from diffmem.experiments.gmm_memorization.settings import Cell, Settings, make_mixture, training_points


def samples_path(cell_dir, name: str):
    """The .npz of kept samples (array 'samples' (m, d)) of a cell or reference `name`."""
    return io.path(cell_dir) / f"{name}.npz"


def make_plots(s: Settings, results: dict, rows: dict, cell_dir, workdir) -> None:
    """fig2.png, fig3a_size.png, fig3a_dim.png, fig3b_width.png, fig3b_wd.png in workdir."""
    plt = plots.pyplot()
    wd = io.path(workdir)
    f2 = s.fig2
    mix = make_mixture(s.seed, f2.dim, f2.num_components, s.mixture.mean_std)
    pts = training_points(s.seed, mix, f2.n)                                                  # (n, d)
    panels = [("true score", samples_path(cell_dir, f"ref_d{f2.dim}_K{f2.num_components}_n{f2.n}_true"), None)]
    for w in f2.widths:
        c = Cell(f2.dim, f2.num_components, w, f2.n, 0.0, s.seeds[0])
        panels.append((f"width {w} ({rows[c.id]['params']:,} params)", samples_path(cell_dir, c.id), rows[c.id]))
    panels = [p for p in panels if io.exists(p[1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    means = np.asarray(mix.means)                                                             # (K, d)
    lim = np.abs(np.concatenate([pts, means])).max() + 3.0
    for ax, (title, path, row) in zip(axes[0], panels):
        x = io.load_npz(path)["samples"]                                                      # (m, d)
        if x.shape[1] >= 2:
            mem = eval_lib.memorization(x, pts)["memorized"]
            ax.scatter(x[~mem, 0], x[~mem, 1], s=3, c="tab:blue", alpha=0.4, label="generated")
            ax.scatter(pts[:, 0], pts[:, 1], s=45, facecolors="none", edgecolors="k", lw=0.8, label="training")
            ax.scatter(x[mem, 0], x[mem, 1], s=4, c="tab:red", alpha=0.7, label="memorized")
            ax.scatter(means[:, 0], means[:, 1], s=80, marker="*", c="gold", edgecolors="k", label="true means")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_title(f"{title}\nmemorized {mem.mean():.0%}", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Figure 2: d={f2.dim}, K={f2.num_components}, n={f2.n}")
    fig.tight_layout()
    plots.save_figure(fig, wd / "fig2.png", dpi=110)

    for name, block, ylabels, ytitle in (
            ("fig3a_size", results["fig3a_size"], [f"{p:,}" for p in results["fig3a_size"]["params"]], "parameters"),
            ("fig3a_dim", results["fig3a_dim"], [str(d) for d in results["fig3a_dim"]["dims"]], "d")):
        m = np.asarray(block["memorization_ratio"])                                           # (rows, ns)
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
        plots.save_figure(fig, wd / f"{name}.png", dpi=110)

    fb = results["fig3b"]
    for name, sweep, xs, xlabel in (("fig3b_width", fb["width_sweep"], fb["width_sweep"]["widths"], "width"),
                                    ("fig3b_wd", fb["wd_sweep"], fb["wd_sweep"]["weight_decays"], "weight decay")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax2 = ax.twinx()
        xplot = list(range(len(xs)))
        for label, color in (("n_small", "tab:red"), ("n_large", "tab:blue")):
            for a, key, ls, what in ((ax, "memorization_ratio", "-o", "memorization"),
                                     (ax2, "loglik_mean", "--s", "log-lik")):
                seeds = np.asarray(sweep[label][f"{key}_seeds"])                            # (points, seeds)
                mean = np.asarray(sweep[label][key])
                a.errorbar(xplot, mean, yerr=[mean - seeds.min(1), seeds.max(1) - mean], fmt=ls, c=color,
                           capsize=2, label=f"n={fb[label]} {what}")
        ax.set_xticks(xplot, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("memorization ratio (solid)")
        ax2.set_ylabel("mean log-likelihood (dashed)")
        ax.set_ylim(-0.02, 1.02)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
        ax.set_title(f"Figure 3b: {xlabel} sweep (d={fb['dim']}; bars: range over {len(s.seeds)} seeds)")
        fig.tight_layout()
        plots.save_figure(fig, wd / f"{name}.png", dpi=110)
