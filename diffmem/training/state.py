"""Optimizer, train state and the pure training step (the pieces every diffmem model trains with).

  * `make_optimizer`   AdamW (Loshchilov & Hutter 2019) with linear warm-up then constant or cosine learning
                       rate, global-norm clipping, and weight decay on kernels only (ndim >= 2); the decay may be
                       given separately as a traced value (one decay per member of a vmapped sweep).
  * `TrainState`       pytree (step, params, opt_state, ema_params).
  * `make_train_step`  PURE `step(state, batch, key) -> (state, metrics)`; no jit inside, so it can be
                       `jax.vmap`-ed over stacked parameters (sweeps) or jitted over a device mesh.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffmem.config import TrainConfig

Array = jax.Array
PyTree = Any
LossFn = Callable[[PyTree, Array, PyTree], tuple[Array, Mapping[str, Array]]]  # (params, key, batch) -> (loss, aux)
DEFAULT_TIME_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)
BIN_SUM, BIN_COUNT = "loss_bin_sum", "loss_bin_count"


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Learning rate at optimizer count s (0-based): lr * min(1, (s+1)/warmup), then constant or
    lr * (1 + cos(pi * (s - warmup) / (steps - warmup))) / 2 (cosine, reaches 0 at s = steps)."""
    lr, warm = float(cfg.lr), int(cfg.warmup_steps)
    decay_steps = max(cfg.steps - warm, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm_frac = jnp.minimum(1.0, (count + 1.0) / warm) if warm > 0 else 1.0
        if cfg.schedule == "constant":
            return lr * warm_frac
        frac = jnp.clip((count - warm) / decay_steps, 0.0, 1.0)
        return lr * warm_frac * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return schedule


def kernel_mask(params: PyTree) -> PyTree:
    """True for leaves with ndim >= 2 (kernels, embeddings): the leaves weight decay applies to."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def make_optimizer(cfg: TrainConfig, weight_decay=None) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (if > 0), then Adam(b1, b2), decoupled weight decay on kernels
    (`kernel_mask`; biases and norm scales are not decayed) and the learning rate `make_schedule(cfg)`: optax's
    AdamW, written out so that `weight_decay` (default cfg.weight_decay) may be a traced per-member value."""
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    adamw = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2), optax.add_decayed_weights(wd, kernel_mask),
                        optax.scale_by_learning_rate(make_schedule(cfg)))
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar (completed steps); params; opt_state; ema_params (== params when EMA is off)."""
    step: Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree


def init_state(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """Fresh state at step 0 (pure; EMA starts at the initial params)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema_params=jax.tree.map(jnp.copy, params))


def as_dict(state: TrainState) -> dict:
    """{step, params, opt_state, ema_params}: the checkpointed item (no copies, unlike dataclasses.asdict)."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "ema_params": state.ema_params}


def time_bin_stats(per_example_loss: Array, t: Array,
                   edges: Sequence[float] = DEFAULT_TIME_EDGES) -> tuple[Array, Array]:
    """Sums and counts of per-example losses in time bins (for 'loss_bin{i}' metrics).

    per_example_loss, t: (b,). Bin i is [edges[i], edges[i+1]); the first and last bins are open towards
    -inf / +inf. Returns (sums (nb,), counts (nb,)); means are taken on the host over a log window, so an
    empty bin never produces a NaN.
    """
    nb = len(edges) - 1
    idx = jnp.searchsorted(jnp.asarray(edges[1:-1], t.dtype), t, side="right")  # (b,) in [0, nb)
    onehot = jax.nn.one_hot(idx, nb, dtype=jnp.float32)  # (b, nb)
    return onehot.T @ per_example_loss.astype(jnp.float32), onehot.sum(0)


def check_time_edges(time_edges: Sequence[float]) -> tuple[float, ...]:
    if len(time_edges) < 2 or any(b <= a for a, b in zip(time_edges[:-1], time_edges[1:])):
        raise ValueError(f"time_edges must be >= 2 strictly increasing numbers, got {time_edges}")
    return tuple(float(e) for e in time_edges)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, ema_decay: float, *,
                    time_edges: Optional[Sequence[float]] = DEFAULT_TIME_EDGES):
    """Returns the PURE `step(state, batch, key) -> (state, metrics)` (no jit inside; vmap-able).

    loss_fn(params, key, batch) -> (scalar loss, aux dict). metrics: loss, grad_norm (before clipping),
    param_norm (after the update), every scalar aux entry, and when aux has 'per_example_loss' (b,) and
    'time' (b,) and time_edges is not None: 'loss_bin_sum' / 'loss_bin_count' (nb,) per `time_bin_stats`
    (turned into 'loss_bin{i}' means by `summarize_metrics`). EMA: ema <- d * ema + (1 - d) * params_new.
    """
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if time_edges is not None:
        time_edges = check_time_edges(time_edges)

    def step(state: TrainState, batch: PyTree, key: Array) -> tuple[TrainState, dict]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if ema_decay > 0:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
        else:
            ema = params
        metrics = {k: v for k, v in aux.items() if jnp.ndim(v) == 0}
        if time_edges is not None and "per_example_loss" in aux and "time" in aux:
            metrics[BIN_SUM], metrics[BIN_COUNT] = time_bin_stats(aux["per_example_loss"], aux["time"], time_edges)
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        return TrainState(state.step + 1, params, opt_state, ema), metrics

    return step


def summarize_metrics(window: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Host-side mean of per-step (or per-chunk) metrics over a log window; array-valued metrics (one value per
    sweep member) stay lists; binned losses become 'loss_bin{i}' = sum / count over the window (bins with no
    member are omitted)."""
    out = {}
    for k in window[0]:
        vals = np.stack([np.asarray(m[k], np.float64) for m in window])
        if k == BIN_SUM:
            counts = np.stack([np.asarray(m[BIN_COUNT], np.float64) for m in window]).sum(0)
            for i, (s, c) in enumerate(zip(vals.sum(0), counts)):
                if c > 0:
                    out[f"loss_bin{i}"] = float(s / c)
        elif k != BIN_COUNT:
            mean = vals.mean(0)
            out[k] = float(mean) if mean.ndim == 0 else mean.tolist()
    return out


def uniform_batch(key: Array, data: PyTree, batch_size: int) -> PyTree:
    """Default batch sampler: batch_size indices uniform on [0, n) WITH replacement; gathers every leaf."""
    n = jax.tree.leaves(data)[0].shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, n)  # (b,)
    return jax.tree.map(lambda x: x[idx], data)
