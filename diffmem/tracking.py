"""Optional TensorBoard tracking: metric records as scalars and image grids, in <workdir>/tensorboard.

Off unless asked for. `TrainConfig.tensorboard=True` (e.g. `--config.train.tensorboard=True`) makes every training
loop (`training.train`, `train_sweep`, `train_members`, through `loop.host_loop`) write each metric record it
appends to <workdir>/metrics.jsonl also as TensorBoard scalars in <workdir>/tensorboard:

  * every numeric field under its own name (loss, grad_norm, param_norm, loss_bin{i} = the loss by time bin,
    steps_per_sec, scalar aux metrics);
  * a field with one value per sweep member (a list, see `training.sweep`) as '<name>/m{i}' per member i plus
    '<name>/mean'.

A resumed run purges the orphaned events an interrupted run left beyond its checkpoint (tensorboardX
`purge_step`), as metrics.jsonl drops those records. `log_image` / `log_image_grid` add images (sample grids,
samples beside their nearest training image) to the same directory. Only process 0 writes (`runtime.is_writer`).

The writer is tensorboardX (the `tensorboard` extra: pip install -e '.[tensorboard]'); without it this module
still imports, and asking for tracking raises an ImportError that says what to install. View with
`tensorboard --logdir <workdir>`.
"""
from __future__ import annotations

import importlib.util
import itertools
import math
import os
from typing import Optional

import numpy as np

from diffmem import runtime

SUBDIR = "tensorboard"
INSTALL_HINT = "pip install -e '.[tensorboard]'"
_file_ids = itertools.count()   # event file suffixes: two writers opened within one second never share a file


def available() -> bool:
    """Whether tensorboardX (the `tensorboard` extra) is installed."""
    return importlib.util.find_spec("tensorboardX") is not None


def require(what: str = "TensorBoard tracking") -> None:
    """ImportError naming `what` and the install command when tensorboardX is missing."""
    if not available():
        raise ImportError(f"{what} needs tensorboardX, which is not installed: {INSTALL_HINT}")


def logdir(workdir: str) -> str:
    """<workdir>/tensorboard: the event files of a run, beside its metrics.jsonl."""
    return os.path.join(os.fspath(workdir), SUBDIR)


def _summary_writer(workdir: str, kind: str, purge_step: Optional[int] = None):
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir(workdir), purge_step=purge_step,
                         filename_suffix=f".{kind}.{os.getpid()}.{next(_file_ids)}")


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard scalars of one metric record: {tag: value} for every numeric field but 'step' (see the
    module docstring for the tags); strings, bools and None are left out."""
    out = {}
    for name, v in record.items():
        if name == "step" or v is None or isinstance(v, (str, bool, np.bool_)):
            continue
        arr = np.asarray(v)
        if not np.issubdtype(arr.dtype, np.number) or arr.dtype.kind == "c":
            continue
        if arr.ndim == 0:
            out[name] = float(arr)
        else:                                         # one value per sweep member: (M,)
            flat = arr.reshape(-1).astype(np.float64)
            out.update({f"{name}/m{i}": float(x) for i, x in enumerate(flat)})
            out[f"{name}/mean"] = float(flat.mean()) if flat.size else math.nan
    return out


class TensorBoardWriter:
    """A `training.loop.MetricWriter`: every record as scalars (`scalars`) in <workdir>/tensorboard, flushed at
    every record. purge_step: events of earlier files at steps >= purge_step are hidden (a resumed run). A no-op
    on processes other than 0."""

    def __init__(self, workdir: str, purge_step: Optional[int] = None):
        require()
        self._writer = _summary_writer(workdir, "metrics", purge_step) if runtime.is_writer() else None

    def write(self, step: int, record: dict) -> None:
        if self._writer is None:
            return
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, int(step))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def metric_writers(workdir: Optional[str], start_step: int = 0) -> list[TensorBoardWriter]:
    """[TensorBoardWriter] for a run in `workdir` that starts (or resumes) at start_step; [] without a workdir.
    Events that an interrupted run wrote beyond start_step are purged."""
    if workdir is None:
        return []
    return [TensorBoardWriter(workdir, purge_step=start_step + 1 if start_step > 0 else None)]


def _as_hwc(image) -> np.ndarray:
    """(H, W) or (H, W, C in {1, 3, 4}), float in [0, 1] or uint8 -> (H, W, C) float32 in [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4) or 0 in img.shape:
        raise ValueError(f"image must have shape (H, W) or (H, W, C) with C in {{1, 3, 4}}, got {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN/inf values")
    return np.clip(img, 0.0, 1.0)


def log_image(workdir: str, tag: str, image, step: int) -> None:
    """Adds one image (H, W) or (H, W, C), floats in [0, 1] or uint8, e.g. the canvas `plots.pair_grid` or
    `plots.save_image_grid` returns, to <workdir>/tensorboard under `tag` at `step`. Process 0 only."""
    require(f"tracking.log_image({tag!r})")
    img = _as_hwc(image)                                                  # (H, W, C)
    if not runtime.is_writer():
        return
    w = _summary_writer(workdir, "images")
    try:
        w.add_image(tag, img, int(step), dataformats="HWC")
    finally:
        w.close()


def image_grid(images, ncols: int = 8, pad: int = 2) -> np.ndarray:
    """Images (m, H, W, C in {1, 3}) in [-1, 1] (the data convention) tiled row by row, ncols per row, on a white
    canvas with `pad` pixels between them: (rows * (H + pad) + pad, ncols * (W + pad) + pad, C) in [0, 1]."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"images must have shape (m, H, W, C) with m > 0 and C in {{1, 3}}, got {x.shape}")
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1 or pad < 0:
        raise ValueError(f"ncols must be a positive int and pad >= 0, got ncols={ncols!r}, pad={pad!r}")
    m, h, w, c = x.shape
    ncols = min(int(ncols), m)
    nrows = -(-m // ncols)
    x = np.clip((x + 1.0) / 2.0, 0.0, 1.0)                                # (m, H, W, C) in [0, 1]
    canvas = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for i in range(m):
        r, col = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y0:y0 + h, x0:x0 + w] = x[i]
    return canvas


def log_image_grid(workdir: str, tag: str, images, step: int, ncols: int = 8, pad: int = 2) -> np.ndarray:
    """Logs `image_grid(images (m, H, W, C) in [-1, 1], ncols, pad)` under `tag` at `step`; returns the grid."""
    grid = image_grid(images, ncols, pad)
    log_image(workdir, tag, grid, step)
    return grid
