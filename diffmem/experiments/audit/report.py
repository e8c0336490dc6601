"""The audit's outputs: the per-sample neighbour table (CSV), the grid of the most memorized samples beside their
nearest training images, the distance-ratio histogram, and the summary the log prints."""
from __future__ import annotations

import csv
import io as _io
from typing import Optional

import numpy as np

from diffmem import io, plots

CSV_COLUMNS = ("sample", "sample_file", "memorized", "memorized_dedupe", "dist_ratio", "nn1_index", "nn1_source_index",
               "nn1_file", "nn1_dist", "nn2_index", "nn2_source_index", "nn2_file", "nn2_dist")


def most_memorized(dist_ratio: np.ndarray, top: Optional[int] = None) -> np.ndarray:
    """Sample indices by increasing d1 / d2 (ties: lower index first): the most memorized first."""
    order = np.argsort(dist_ratio, kind="stable")
    return order if top is None else order[:top]


def neighbour_rows(mem: dict, mem_dedupe: dict, sample_names, source_indices: np.ndarray, train_names) -> list[dict]:
    """One row per sample (CSV_COLUMNS): NN1 / NN2 as positions in the training set as loaded (`nn*_index`), in
    its source (`nn*_source_index`, e.g. the folder's sorted file list) and file names where known; memorized by
    the criterion on the training set as given and with exact duplicates removed."""
    rows = []
    for i in range(len(mem["memorized"])):
        (a, b), (da, db) = mem["nn_idx"][i], mem["nn_dist"][i]
        rows.append(dict(sample=i, sample_file=sample_names[i] if sample_names else "",
                         memorized=int(mem["memorized"][i]), memorized_dedupe=int(mem_dedupe["memorized"][i]),
                         dist_ratio=f"{mem['dist_ratio'][i]:.6g}", nn1_index=int(a),
                         nn1_source_index=int(source_indices[a]), nn1_file=train_names[a] if train_names else "",
                         nn1_dist=f"{da:.6g}", nn2_index=int(b), nn2_source_index=int(source_indices[b]),
                         nn2_file=train_names[b] if train_names else "", nn2_dist=f"{db:.6g}"))
    return rows


def write_csv(path, rows: list[dict]) -> None:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    io.write_text(path, buf.getvalue())


def memorized_grid(path, samples: np.ndarray, train_images: np.ndarray, mem: dict, top: int) -> Optional[list]:
    """The `top` most memorized samples (smallest d1 / d2), each above its nearest and second-nearest training
    images, memorized ones framed in red (plots.pair_grid). Returns the sample indices shown (None when the
    images cannot be shown: C not in {1, 3})."""
    if top == 0 or samples.shape[-1] not in (1, 3):
        return None
    idx = most_memorized(mem["dist_ratio"], min(top, len(samples)))
    plots.pair_grid(path, samples[idx], train_images[mem["nn_idx"][idx]], ncols=min(16, len(idx)),
                    highlight=mem["memorized"][idx], sample_label="most memorized\nsamples")
    return [int(i) for i in idx]


def plot_ratio_histogram(path, ratios: dict[str, np.ndarray], threshold: float, title: str) -> None:
    """Histograms of d1 / d2 (one per set: the samples, held-out real images, ...) on [0, 1] with the criterion's
    threshold (arXiv 2511.03202, Section 6: memorized when d1 / d2 < 1/3)."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bins = np.linspace(0.0, 1.0, 41)
    for i, (label, r) in enumerate(ratios.items()):
        ax.hist(np.clip(r, 0.0, 1.0), bins=bins, density=True, histtype="step" if i else "stepfilled",
                alpha=1.0 if i else 0.5, color=f"C{i}", label=f"{label} (n={len(r)})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set(xlabel="d(x, NN1) / d(x, NN2)", ylabel="density", title=title)
    ax.legend(fontsize=8)
    plots.save_figure(fig, path)


def summary_text(r: dict) -> str:
    """The lines the log prints at the end."""
    m, dup = r["memorization"], r["duplicates"]
    lines = [f"memorized {m['count']} of {m['n']} samples: ratio {m['ratio']:.4f} "
             f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}] ({m['level']:.0%} {m['method']})",
             f"training set: {dup['n_train']} images, {dup['n_duplicate_rows']} exact duplicates in "
             f"{dup['groups']} groups; deduplicated ratio {dup['memorization']['ratio']:.4f}"]
    q, cal = r["quality"], r["calibration"]
    if q is not None:
        lines.append(f"quality vs {r['inputs']['reference']['kind']} ({q['features']}): FD {q['fd']:.4g}, KID "
                     f"{q['kid_mean']:.4g}, precision {q['precision']:.3f}, recall {q['recall']:.3f}")
    c = cal["copier"]
    lines.append("perfect copier: memorization {:.4f}".format(c["memorization_ratio"]) + (
        f", FD {c['fd']:.4g}, precision {c['precision']:.3f}, recall {c['recall']:.3f}" if "fd" in c else ""))
    h = cal["heldout"]
    lines.append(f"held-out real images: memorization {h['ratio']:.4f} [{h['ci_low']:.4f}, {h['ci_high']:.4f}] "
                 f"(n={h['n']})" if h else f"held-out real images: none ({cal['heldout_note']})")
    return "\n".join(lines)
