"""Plots and image grids, written as PNG by process 0 (diffmem.io): matplotlib on the non-interactive Agg backend."""
from __future__ import annotations

import io as _io
import os

import jax
import numpy as np

from diffmem import io

Array = jax.Array


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi: int = 120) -> None:
    """Writes a matplotlib figure as PNG (process 0, atomically) and closes it."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    io.write_bytes(path, buf.getvalue())


_RED = np.array([1.0, 0.0, 0.0], np.float32)


def _to_rgb01(images: np.ndarray, what: str) -> np.ndarray:
    """(m, H, W, C) in [-1, 1], C in {1, 3} -> (m, H, W, 3) in [0, 1]; out-of-range values (sampler overshoot) are
    clipped for display only."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"{what} must have shape (m, H, W, C) with m > 0 and C in {{1, 3}}, got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError(f"{what} contain NaN/inf values")
    images = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _tile(cells: list[np.ndarray | None], ncols: int, pad: int, frames: list[bool]) -> np.ndarray:
    """Places (h, w, 3) cells row by row, ncols per row, on a white canvas with `pad` pixels between cells;
    cells with frames[i] get a red border (in the padding around them)."""
    h, w = next(c for c in cells if c is not None).shape[:2]
    nrows = -(-len(cells) // ncols)
    canvas = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), np.float32)
    for i, cell in enumerate(cells):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        if frames[i] and pad > 0:
            canvas[y - pad:y + h + pad, x - pad:x + w + pad] = _RED
        if cell is not None:
            canvas[y:y + h, x:x + w] = cell
    return canvas


def _upscale(images: np.ndarray, scale: int | None) -> np.ndarray:
    if scale is None:
        scale = max(1, -(-32 // max(images.shape[1:3])))  # at least 32 px per cell
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive int or None, got {scale!r}")
    return np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)


def _check_ncols(ncols) -> None:
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")


def _save_png(path, canvas: np.ndarray) -> None:
    import matplotlib.image
    buf = _io.BytesIO()
    matplotlib.image.imsave(buf, canvas, format="png")
    io.write_bytes(path, buf.getvalue())


def save_image_grid(path: str | os.PathLike, images: np.ndarray | Array, ncols: int = 8, scale: int | None = None,
                    pad: int = 2, highlight: np.ndarray | None = None) -> np.ndarray:
    """Writes images (m, H, W, C in {1, 3}) in [-1, 1] as a PNG grid, ncols per row, each upscaled `scale` times
    (None: at least 32 px). highlight (m,) bool draws a red frame (e.g. memorized samples). Returns the canvas
    (rows, cols, 3) in [0, 1] that was written."""
    _check_ncols(ncols)
    rgb = _upscale(_to_rgb01(np.asarray(images), "images"), scale)  # (m, h, w, 3)
    frames = _check_highlight(highlight, len(rgb))
    canvas = _tile(list(rgb), int(ncols), int(pad), frames)
    _save_png(path, canvas)
    return canvas


def _check_highlight(highlight, m: int) -> list[bool]:
    if highlight is None:
        return [False] * m
    highlight = np.asarray(highlight)
    if highlight.shape != (m,) or highlight.dtype != bool:
        raise ValueError(f"highlight must be a bool array of shape ({m},), got {highlight.dtype} {highlight.shape}")
    return highlight.tolist()


def integer_ticks(ax, axis: str = "x", values=None) -> None:
    """Integer-valued axis (n, width, depth, steps, counts): ticks only at integers. On a log axis, or when
    `values` (the integers plotted) are given, ticks go exactly at those values, labelled plainly."""
    from matplotlib import ticker
    a = ax.xaxis if axis == "x" else ax.yaxis
    if values is not None:
        values = sorted({int(v) for v in values})
        a.set_major_locator(ticker.FixedLocator(values))
        a.set_major_formatter(ticker.FixedFormatter([str(v) for v in values]))
        a.set_minor_locator(ticker.NullLocator())
    else:
        a.set_major_locator(ticker.MaxNLocator(integer=True))


def _row_label_strip(canvas: np.ndarray, rows: list[tuple[int, int, str]], fontsize: float = 8.0) -> np.ndarray:
    """canvas (H, W, 3) with a white strip on its left holding each row's label, right-aligned and vertically
    centred on pixel rows [y0, y1). Rendered with matplotlib at one pixel per canvas pixel; returns (H, W', 3)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    h, w = canvas.shape[:2]
    px_per_char = 0.62 * fontsize * 100 / 72
    lines = [ln for _, _, t in rows for ln in t.split("\n")]
    margin = int(max(len(ln) for ln in lines) * px_per_char) + 10
    fig = Figure(figsize=((w + margin) / 100, h / 100), dpi=100, facecolor="white")
    agg = FigureCanvasAgg(fig)
    fig.figimage(canvas, xo=margin, yo=0, origin="upper")
    for y0, y1, text in rows:
        fig.text((margin - 5) / (w + margin), 1 - 0.5 * (y0 + y1) / h, text, ha="right", va="center",
                 fontsize=fontsize, linespacing=1.1)
    agg.draw()
    return np.asarray(agg.buffer_rgba())[..., :3].astype(np.float32) / 255.0


def pair_row_labels(k: int, sample_label: str = "generated sample", highlight: bool = False) -> list[str]:
    """Labels of a pair grid's k + 1 rows: the samples, then their nearest, 2nd nearest, ... training images."""
    ordinal = lambda j: {1: "", 2: "2nd ", 3: "3rd "}.get(j, f"{j}th ")  # noqa: E731
    first = sample_label + ("\n(red: memorized)" if highlight else "")
    return [first] + [f"{ordinal(j)}nearest\ntraining image" for j in range(1, k + 1)]


def pair_grid(path: str | os.PathLike, samples: np.ndarray | Array, neighbours: np.ndarray | Array,
              ncols: int = 8, scale: int | None = None, pad: int = 2,
              highlight: np.ndarray | None = None, row_labels: list[str] | bool = True,
              sample_label: str = "generated sample") -> np.ndarray:
    """Writes each generated sample above its nearest training image(s) as a PNG.

    samples (m, H, W, C); neighbours (m, H, W, C) or (m, k, H, W, C) (k nearest, nearest first). Sample i
    and its neighbours form column i mod ncols of row block i // ncols: with k = 1 every block is two rows
    (samples, then their nearest training images). highlight (m,) bool frames samples in red (e.g. memorized).
    row_labels: True (default) labels the rows on the left: `sample_label` (e.g. the model or method), then
    "nearest training image", ...; a list of k + 1 strings gives them; False leaves the bare grid.
    Returns the canvas written.
    """
    _check_ncols(ncols)
    samples = np.asarray(samples)
    neighbours = np.asarray(neighbours)
    if neighbours.ndim == 4:
        neighbours = neighbours[:, None]
    if neighbours.ndim != 5 or neighbours.shape[0] != samples.shape[0] or neighbours.shape[2:] != samples.shape[1:]:
        raise ValueError(f"neighbours must have shape (m, H, W, C) or (m, k, H, W, C) matching samples "
                         f"{samples.shape}, got {np.shape(neighbours)}")
    m, k = neighbours.shape[:2]
    s_rgb = _upscale(_to_rgb01(samples, "samples"), scale)  # (m, h, w, 3)
    n_rgb = _upscale(_to_rgb01(neighbours.reshape((m * k,) + neighbours.shape[2:]), "neighbours"), scale)
    n_rgb = n_rgb.reshape((m, k) + n_rgb.shape[1:])  # (m, k, h, w, 3)
    frames_s = _check_highlight(highlight, m)
    ncols = min(int(ncols), m)
    cells, frames = [], []
    for block in range(-(-m // ncols)):
        cols = range(block * ncols, min((block + 1) * ncols, m))
        for row in range(k + 1):
            for i in range(block * ncols, (block + 1) * ncols):
                if i not in cols:
                    cells.append(None)
                    frames.append(False)
                else:
                    cells.append(s_rgb[i] if row == 0 else n_rgb[i, row - 1])
                    frames.append(frames_s[i] if row == 0 else False)
    canvas = _tile(cells, ncols, int(pad), frames)
    if row_labels is not False:
        labels = (pair_row_labels(k, sample_label, highlight is not None and bool(np.any(highlight)))
                  if row_labels is True else list(row_labels))
        if len(labels) != k + 1:
            raise ValueError(f"row_labels must have k + 1 = {k + 1} entries, got {len(labels)}")
        h, p = s_rgb.shape[1], int(pad)
        spans = [(p + (b * (k + 1) + r) * (h + p), p + (b * (k + 1) + r) * (h + p) + h, labels[r])
                 for b in range(-(-m // ncols)) for r in range(k + 1)]
        canvas = _row_label_strip(canvas, spans)
    _save_png(path, canvas)
    return canvas
