"""Sweeps trained as ONE vmapped, jit-compiled step over stacked parameters, through the same host loop.

Sweep members that share an architecture but differ in training-set size n, seed or weight decay:

  * data: one padded array (M, n_max, d) plus a prefix mask (M, n_max); member m trains on its first n_m rows
    (`pad_datasets`), so every member has the same shapes and no n recompiles anything;
  * weight decay: a per-member (M,) array, passed as a traced value to `state.make_optimizer`;
  * the per-member step is `state.make_train_step` (pure), vmapped; `lax.scan` runs `chunk` steps per dispatch.
    Step s of member m uses k = fold_in(key_m, s): batch indices from fold_in(k, 0) (uniform over its n_m rows,
    with replacement), loss noise from fold_in(k, 1), as `loop.train`.

`train_sweep` hands the chunked runner to `loop.host_loop` (checkpoints of the stacked state, metrics with one value
per member, resume, NaN guard, progress; with cfg.tensorboard TensorBoard scalars per member, diffmem.tracking).

One process runs the sweep on its default device. Several JAX processes (jax.distributed) each run the whole sweep
on their first device (the same computation, so the same numbers as one process), and host_loop sees the state as
global arrays replicated over one device per process, built from these local copies (orbax saves only such global
arrays in a multi-process run); the trained state is returned as this process's local copy.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffmem.config import TrainConfig
from diffmem.training import loop, state as state_lib

Array = jax.Array
PyTree = Any


def pad_datasets(datasets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks M training sets (n_m, d) into data (M, n_max, d) (zero padded) and a prefix mask (M, n_max)."""
    if len(datasets) == 0:
        raise ValueError("datasets must hold at least one training set")
    arrs = [np.asarray(a, np.float32) for a in datasets]
    dims = {a.shape[1] if a.ndim == 2 else None for a in arrs}
    if len(dims) != 1 or None in dims:
        raise ValueError(f"every training set must have shape (n_m, d) with one d, got {[a.shape for a in arrs]}")
    if any(a.shape[0] < 1 for a in arrs):
        raise ValueError("every training set must hold n_m >= 1 points")
    n_max, d = max(a.shape[0] for a in arrs), dims.pop()
    data = np.zeros((len(arrs), n_max, d), np.float32)
    mask = np.zeros((len(arrs), n_max), np.float32)
    for i, a in enumerate(arrs):
        data[i, :a.shape[0]] = a
        mask[i, :a.shape[0]] = 1.0
    return data, mask


def mask_counts(mask) -> np.ndarray:
    """n_m = number of leading ones of each prefix mask row; ValueError if a row is not a prefix mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (M, n_max), got {mask.shape}")
    counts = (mask > 0).sum(1)
    prefix = np.arange(mask.shape[1])[None, :] < counts[:, None]
    if not np.array_equal(mask > 0, prefix) or not np.all((mask == 0) | (mask == 1)):
        raise ValueError("mask rows must be prefix masks of 0/1 (member m uses its first n_m rows), "
                         "as built by pad_datasets")
    if np.any(counts < 1):
        raise ValueError(f"every member needs n_m >= 1 training points, got counts {counts.tolist()}")
    return counts


def masked_batch(key: Array, data, count: Array, batch_size: int):
    """batch_size rows drawn uniformly WITH replacement from the first `count` rows of data (n_max, ...) (or of
    every leaf of a pytree of such arrays)."""
    idx = jax.random.randint(key, (batch_size,), 0, count)                          # (b,)
    return jax.tree.map(lambda a: a[idx], data)


def _process_replicated() -> Optional[NamedSharding]:
    """None with one process; else a sharding replicated over the first device of every process."""
    if jax.process_count() == 1:
        return None
    first = {}
    for dev in jax.devices():
        first.setdefault(dev.process_index, dev)
    return NamedSharding(Mesh(np.asarray([first[p] for p in sorted(first)]), ("process",)), P())


def _run_sweep(advance, states, inputs: tuple, cfg: TrainConfig, chunk: int, ckpt_every: int, workdir, progress,
               desc) -> tuple[state_lib.TrainState, list[dict]]:
    """loop.host_loop over advance(states, num, *inputs). With several processes every process computes on its
    first device, as one process does; host_loop (its checkpoints) sees the state as global arrays replicated over
    the processes, made of these local copies."""
    sharding = _process_replicated()
    if sharding is None:
        return loop.host_loop(lambda st, num: advance(st, num, *inputs), states, steps=cfg.steps, log_every=chunk,
                              ckpt_every=ckpt_every, keep_ckpts=cfg.keep_ckpts, workdir=workdir, chunk=chunk,
                              progress=progress, desc=desc, check=("loss",), tensorboard=cfg.tensorboard)
    device = sharding.mesh.devices[jax.process_index()]
    inputs = jax.device_put(inputs, device)

    def local(tree):
        return jax.tree.map(lambda x: x.addressable_data(0), tree)

    def to_global(tree):
        return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(x.shape, sharding, [x]), tree)

    def step(st, num):
        st, metrics = advance(local(st), num, *inputs)
        return to_global(st), metrics

    states, records = loop.host_loop(step, to_global(jax.device_put(states, device)), steps=cfg.steps,
                                     log_every=chunk, ckpt_every=ckpt_every, keep_ckpts=cfg.keep_ckpts,
                                     workdir=workdir, chunk=chunk, progress=progress, desc=desc, check=("loss",),
                                     tensorboard=cfg.tensorboard)
    return local(states), records


def init_members(init_fn: Callable[[Array], PyTree], keys: Array) -> PyTree:
    """Stacked parameters: leaf shapes (M, ...) from init_fn(key_m) for each of the M keys (one compilation)."""
    return jax.jit(jax.vmap(init_fn))(keys)


def unstack(tree: PyTree, m: int) -> PyTree:
    """Member m of a stacked pytree."""
    return jax.tree.map(lambda x: x[m], tree)


def init_states(params: PyTree, cfg: TrainConfig) -> state_lib.TrainState:
    """Stacked TrainState (step (M,), params, opt_state, ema_params) for stacked params (M, ...)."""
    opt = state_lib.make_optimizer(cfg, 0.0)  # the state structure does not depend on the decay value
    return jax.vmap(lambda p: state_lib.init_state(p, opt))(params)


def make_member_step(loss_fn, cfg: TrainConfig, with_extra: bool = False):
    """PURE step(state, data (n_max, d), count (), weight_decay (), key, extra) -> (state, metrics) of ONE member.

    Draws its own batch from fold_in(fold_in(key, state.step), 0) and loss noise from ... , 1). With
    with_extra the loss is called as loss_fn(params, key, batch, member) with
    member = {"data": data, "count": count, "extra": extra} (per-member targets, flags); else extra is unused.
    """
    def step(state, data, count, weight_decay, key, extra=None):
        k = jax.random.fold_in(key, state.step)
        batch = masked_batch(jax.random.fold_in(k, 0), data, count, cfg.batch_size)   # (b, d)
        lf = loss_fn
        if with_extra:
            member = {"data": data, "count": count, "extra": extra}
            lf = lambda p, kk, b: loss_fn(p, kk, b, member)
        inner = state_lib.make_train_step(lf, state_lib.make_optimizer(cfg, weight_decay), cfg.ema_decay)
        return inner(state, batch, jax.random.fold_in(k, 1))
    return step


@functools.lru_cache(maxsize=16)
def make_sweep_runner(loss_fn, cfg: TrainConfig, chunk: int, with_extra: bool = False, shared_data: bool = False):
    """jit(scan of `chunk` vmapped member steps) -> (states, {loss (M,), grad_norm (M,)} averaged over the chunk).

    shared_data: every member trains on the same data (n, ...) and count () (not stacked). Cached on (loss_fn, cfg,
    chunk, with_extra, shared_data): repeated / resumed sweeps with the same loss reuse the compiled step."""
    data_axis = None if shared_data else 0
    sweep_step = jax.vmap(make_member_step(loss_fn, cfg, with_extra),
                          in_axes=(0, data_axis, data_axis, 0, 0, 0 if with_extra else None))

    @jax.jit
    def run(states, data, counts, wds, keys, extra=None):
        def body(st, _):
            st, m = sweep_step(st, data, counts, wds, keys, extra)
            return st, {"loss": m["loss"], "grad_norm": m["grad_norm"]}
        states, ms = jax.lax.scan(body, states, None, length=chunk)
        return states, jax.tree.map(lambda v: jnp.mean(v, 0), ms)
    return run


def train_sweep(loss_fn, params: PyTree, data, mask, weight_decays, keys: Array, cfg: TrainConfig,
                workdir: Optional[str] = None, progress: bool = False, desc: str = "sweep",
                extra: Optional[PyTree] = None) -> tuple[state_lib.TrainState, list[dict]]:
    """Trains M stacked members for cfg.steps steps as one vmapped jit step (see the module docstring).

    params: stacked (M, ...); data (M, n_max, d), mask (M, n_max) prefix masks (`pad_datasets`);
    weight_decays (M,) >= 0 (cfg.weight_decay is ignored); keys (M,) typed keys, one per member.
    workdir: orbax checkpoints of the stacked state every cfg.ckpt_every steps (rounded up to a multiple of
    cfg.log_every) in <workdir>/checkpoints and the records in <workdir>/metrics.jsonl; a re-run resumes from the
    latest checkpoint. extra: optional per-member pytree (leading dim M); then the loss is called as
    loss_fn(params, key, batch, member) (see `make_member_step`). Returns (stacked TrainState, records:
    [{step, loss: [M], grad_norm: [M], steps_per_sec}]). Raises FloatingPointError if a loss turns NaN/inf.
    """
    data = np.asarray(data, np.float32)
    counts = mask_counts(mask)
    m = counts.shape[0]
    if data.ndim != 3 or data.shape[:2] != np.shape(mask):
        raise ValueError(f"data must have shape (M, n_max, d) matching mask (M, n_max)={np.shape(mask)}, "
                         f"got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("data contains NaN or inf")
    wds = np.asarray(weight_decays, np.float32).reshape(-1)
    if wds.shape != (m,) or np.any(wds < 0) or not np.isfinite(wds).all():
        raise ValueError(f"weight_decays must be {m} finite numbers >= 0, got {np.asarray(weight_decays)}")
    if keys.shape != (m,) or not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError(f"keys must be ({m},) typed keys from jax.random.key, got {keys.shape} {keys.dtype}")
    leading = {x.shape[0] for x in jax.tree.leaves(params)}
    if leading != {m}:
        raise ValueError(f"params must be stacked with leading dimension M={m}, got leading dims {leading}")
    with_extra = extra is not None
    if with_extra and {x.shape[0] if np.ndim(x) else None for x in jax.tree.leaves(extra)} != {m}:
        raise ValueError(f"extra must be a pytree of arrays with leading dimension M={m}")

    chunk = cfg.log_every
    ckpt_every = -(-cfg.ckpt_every // chunk) * chunk
    inputs = (jnp.asarray(data), jnp.asarray(counts, jnp.int32), jnp.asarray(wds), keys, extra)

    def advance(states, num, *inputs):  # a tail shorter than a chunk compiles once more
        return make_sweep_runner(loss_fn, cfg, num, with_extra)(states, *inputs)

    return _run_sweep(advance, init_states(params, cfg), inputs, cfg, chunk, ckpt_every, workdir, progress, desc)


def train_members(loss_fn, params: PyTree, data, keys: Array, cfg: TrainConfig, *, weight_decays=None,
                  extra: Optional[PyTree] = None, workdir: Optional[str] = None, progress: bool = False,
                  desc: str = "members") -> tuple[state_lib.TrainState, list[dict]]:
    """`train_sweep` for M members that all train on the SAME data (n, ...) (e.g. several seeds of one model, or many
    fine-tunes of one architecture that differ in their start, head mask, weight decay or key): the data is not
    stacked, so memory does not grow with M. params, keys (M,), weight_decays (M,) (default cfg.weight_decay for
    all), extra: per-member pytree (leading dim M) passed to loss_fn(params, key, batch, member) as member["extra"].
    Batches: uniform with replacement over the n rows, from each member's own key stream."""
    data = jax.tree.map(lambda a: np.asarray(a), data)
    leaves = jax.tree.leaves(data)
    if not leaves or len({np.shape(a)[0] for a in leaves}) != 1:
        raise ValueError("data must be an array (or pytree of arrays) with one leading dimension n")
    if any(np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all() for a in leaves):
        raise ValueError("data contains NaN or inf")
    m = keys.shape[0] if hasattr(keys, "shape") and keys.ndim == 1 else None
    if m is None or not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError(f"keys must be (M,) typed keys from jax.random.key, got {getattr(keys, 'shape', keys)}")
    wds = np.full((m,), cfg.weight_decay, np.float32) if weight_decays is None else \
        np.asarray(weight_decays, np.float32).reshape(-1)
    if wds.shape != (m,) or np.any(wds < 0) or not np.isfinite(wds).all():
        raise ValueError(f"weight_decays must be {m} finite numbers >= 0, got {np.asarray(weight_decays)}")
    leading = {x.shape[0] for x in jax.tree.leaves(params)}
    if leading != {m}:
        raise ValueError(f"params must be stacked with leading dimension M={m}, got leading dims {leading}")
    with_extra = extra is not None
    if with_extra and {x.shape[0] if np.ndim(x) else None for x in jax.tree.leaves(extra)} != {m}:
        raise ValueError(f"extra must be a pytree of arrays with leading dimension M={m}")
    chunk = cfg.log_every
    ckpt_every = -(-cfg.ckpt_every // chunk) * chunk
    n = leaves[0].shape[0]
    inputs = (jax.tree.map(jnp.asarray, data), jnp.int32(n), jnp.asarray(wds), keys, extra)

    def advance(states, num, *inputs):
        return make_sweep_runner(loss_fn, cfg, num, with_extra, shared_data=True)(states, *inputs)

    return _run_sweep(advance, init_states(params, cfg), inputs, cfg, chunk, ckpt_every, workdir, progress, desc)
