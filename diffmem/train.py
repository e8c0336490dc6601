"""The generic training loop shared by every diffmem model (DESIGN.md, train.py).

Pieces, from pure to stateful:
  * `TrainConfig`      frozen dataclass of plain values (validated; `from_dict` rejects unknown keys).
  * `make_optimizer`   AdamW (Loshchilov & Hutter 2019) with linear warm-up then constant or cosine learning
                       rate, global-norm clipping, and weight decay on kernels only (ndim >= 2).
  * `TrainState`       pytree (step, params, opt_state, ema_params).
  * `make_train_step`  PURE `step(state, batch, key) -> (state, metrics)`; no jit inside, so it can be
                       `jax.vmap`-ed over stacked parameters (sweeps) or jitted over a device mesh.
  * `train`            the loop: batches drawn on device from `fold_in(key, step)`, data parallel over all
                       devices of all processes (1-D mesh 'data'), orbax checkpoints with exact resume,
                       JSON-lines metrics, tqdm progress, NaN/inf guard.

Multi-process (several hosts, or several processes on one host): JAX's own distributed runtime. Set
DIFFMEM_DISTRIBUTED=1 (plus, outside SLURM / Cloud TPU / k8s, DIFFMEM_COORDINATOR_ADDRESS, DIFFMEM_NUM_PROCESSES,
DIFFMEM_PROCESS_ID) and call `initialize_distributed()` before any other JAX call; `train` itself is unchanged
(its mesh spans `jax.devices()`, every process runs the same program). On CPU the cross-process collectives are
gloo (`jax_cpu_collectives_implementation`, default "gloo" in jax 0.10). See launch/.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Array = jax.Array
PyTree = Any
LossFn = Callable[[PyTree, Array, PyTree], tuple[Array, Mapping[str, Array]]]
# (params, key, batch) -> (scalar loss, aux dict)
SampleBatchFn = Callable[[Array, PyTree, int], PyTree]  # (key, data, batch_size) -> batch
Hook = Callable[[int, "TrainState", Optional[dict]], None]  # (step, state, record or None)

SCHEDULES = ("constant", "cosine")
DEFAULT_TIME_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)
_BIN_SUM, _BIN_COUNT = "loss_bin_sum", "loss_bin_count"


# ------------------------------------------------------------------------------------------ config

@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (plain values; validated on construction).

    steps: number of optimizer steps (> 0).
    batch_size: global batch size (> 0; `train` needs it divisible by the device count).
    lr: peak learning rate (> 0).
    warmup_steps: linear warm-up length (>= 0); lr(s) = lr * min(1, (s + 1) / warmup_steps).
    schedule: "constant" (after warm-up) or "cosine" (cosine decay to 0 at `steps` after warm-up).
    weight_decay: decoupled AdamW decay (>= 0), applied to kernels (ndim >= 2) only.
    grad_clip: max global gradient norm (>= 0; 0 = off).
    ema_decay: parameter EMA decay in [0, 1) (0 = off, then ema_params == params).
    b1, b2: Adam moment decays in [0, 1).
    log_every: steps between metric records (> 0).
    ckpt_every: steps between checkpoints (> 0); the last step is always saved.
    keep_ckpts: number of checkpoints kept (>= 1).
    seed: default seed of `train` when no key is passed.
    """
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    log_every: int = 100
    ckpt_every: int = 1_000
    keep_ckpts: int = 2
    seed: int = 0

    def __post_init__(self):
        def check(name, ok, accepted):
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {accepted}, got {getattr(self, name)!r}")

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int":
                check(f.name, isinstance(v, (int, np.integer)) and not isinstance(v, bool), "an int")
            elif f.type == "float":
                check(f.name, isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                      and math.isfinite(v), "a finite number")
            elif f.type == "str":
                check(f.name, isinstance(v, str), "a str")
        check("steps", self.steps > 0, "> 0")
        check("batch_size", self.batch_size > 0, "> 0")
        check("lr", self.lr > 0, "> 0")
        check("warmup_steps", self.warmup_steps >= 0, ">= 0")
        check("schedule", self.schedule in SCHEDULES, f"one of {SCHEDULES}")
        check("weight_decay", self.weight_decay >= 0, ">= 0")
        check("grad_clip", self.grad_clip >= 0, ">= 0 (0 = off)")
        check("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0 = off)")
        check("b1", 0 <= self.b1 < 1, "in [0, 1)")
        check("b2", 0 <= self.b2 < 1, "in [0, 1)")
        check("log_every", self.log_every > 0, "> 0")
        check("ckpt_every", self.ckpt_every > 0, "> 0")
        check("keep_ckpts", self.keep_ckpts >= 1, ">= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Builds a config from a dict / ConfigDict; unknown keys raise a ValueError naming them."""
        if hasattr(d, "to_dict"):  # ml_collections.ConfigDict
            d = d.to_dict()
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(accepted))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; accepted keys: {accepted}")
        return cls(**d)


# ---------------------------------------------------------------------------------------- optimizer

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


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (if > 0) then AdamW(make_schedule(cfg), b1, b2, weight_decay) with the
    decay masked to kernels (`kernel_mask`): biases and norm scales are not decayed."""
    adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                        mask=kernel_mask)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


# ------------------------------------------------------------------------------------- train state

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


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, ema_decay: float, *,
                    time_edges: Sequence[float] = DEFAULT_TIME_EDGES):
    """Returns the PURE `step(state, batch, key) -> (state, metrics)` (no jit inside; vmap-able).

    loss_fn(params, key, batch) -> (scalar loss, aux dict). metrics: loss, grad_norm (before clipping),
    param_norm (after the update), every scalar aux entry, and when aux has 'per_example_loss' (b,) and
    'time' (b,): 'loss_bin_sum' / 'loss_bin_count' (nb,) per `time_bin_stats` (turned into 'loss_bin{i}'
    means by `summarize_metrics`). EMA: ema <- ema_decay * ema + (1 - ema_decay) * params_new.
    """
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if len(time_edges) < 2 or any(b <= a for a, b in zip(time_edges[:-1], time_edges[1:])):
        raise ValueError(f"time_edges must be >= 2 strictly increasing numbers, got {time_edges}")
    time_edges = tuple(float(e) for e in time_edges)

    def step(state: TrainState, batch: PyTree, key: Array) -> tuple[TrainState, dict]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if ema_decay > 0:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
        else:
            ema = params
        metrics = {k: v for k, v in aux.items() if jnp.ndim(v) == 0}
        if "per_example_loss" in aux and "time" in aux:
            metrics[_BIN_SUM], metrics[_BIN_COUNT] = time_bin_stats(aux["per_example_loss"], aux["time"],
                                                                    time_edges)
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        return TrainState(state.step + 1, params, opt_state, ema), metrics

    return step


def summarize_metrics(window: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Host-side mean of per-step metrics over a log window; binned losses become 'loss_bin{i}' =
    sum / count over the window (bins with no member are omitted)."""
    out = {}
    for k in window[0]:
        vals = np.stack([np.asarray(m[k], np.float64) for m in window])
        if k == _BIN_SUM:
            counts = np.stack([np.asarray(m[_BIN_COUNT], np.float64) for m in window]).sum(0)
            for i, (s, c) in enumerate(zip(vals.sum(0), counts)):
                if c > 0:
                    out[f"loss_bin{i}"] = float(s / c)
        elif k != _BIN_COUNT:
            out[k] = float(vals.mean())
    return out


def uniform_batch(key: Array, data: PyTree, batch_size: int) -> PyTree:
    """Default batch sampler: batch_size indices uniform on [0, n) WITH replacement; gathers every leaf."""
    n = jax.tree.leaves(data)[0].shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, n)  # (b,)
    return jax.tree.map(lambda x: x[idx], data)


# -------------------------------------------------------------------------------- distributed setup

def initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize` when DIFFMEM_DISTRIBUTED is set (not "" / "0"); a no-op otherwise.

    Optional env: DIFFMEM_COORDINATOR_ADDRESS (host:port), DIFFMEM_NUM_PROCESSES, DIFFMEM_PROCESS_ID; left
    unset, JAX auto-detects SLURM, Cloud TPU VMs, Open MPI and k8s. Must run before any other JAX call.
    Idempotent. Returns whether the distributed runtime is initialised.
    """
    if os.environ.get("DIFFMEM_DISTRIBUTED", "0") in ("", "0"):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if addr := os.environ.get("DIFFMEM_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = addr
    for env, arg in (("DIFFMEM_NUM_PROCESSES", "num_processes"), ("DIFFMEM_PROCESS_ID", "process_id")):
        if v := os.environ.get(env):
            if not v.isdigit():
                raise ValueError(f"{env} must be a non-negative integer, got {v!r}")
            kwargs[arg] = int(v)
    jax.distributed.initialize(**kwargs)
    return True


def _replicate(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Host (or device) values, identical on every process, as global replicated arrays."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
                        tree)


# ------------------------------------------------------------------------------------- metrics file

class _MetricsLog:
    """JSON lines at <workdir>/metrics.jsonl, written by process 0; records beyond `start_step` (left by an
    interrupted run) are dropped so that every step appears once after a resume."""

    def __init__(self, path: Optional[str], start_step: int):
        self.path = path if jax.process_index() == 0 else None
        if self.path is None:
            return
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                kept = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= start_step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str) -> list[dict]:
    """The records of <workdir>/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


# -------------------------------------------------------------------------------------------- train

def _check_data(data: PyTree, batch_size: int, n_dev: int) -> None:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data must hold at least one array (n, ...)")
    ns = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(ns) != 1 or None in ns or 0 in ns:
        raise ValueError(f"data leaves must share a leading dimension n > 0, got leading dims {sorted(ns, key=str)}")
    for x in leaves:
        xnp = jnp if isinstance(x, jax.Array) else np  # no device round trip for host data
        if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(xnp.isfinite(x).all()):
            raise ValueError("data contains NaN or inf values")
    if batch_size % n_dev:
        raise ValueError(f"TrainConfig.batch_size={batch_size} must be divisible by the device count {n_dev} "
                         f"(data parallel over a 1-D 'data' mesh)")


def train(loss_fn: LossFn, params: PyTree, data: PyTree, cfg: TrainConfig, workdir: Optional[str], *,
          key: Optional[Array] = None, sample_batch: Optional[SampleBatchFn] = None,
          hooks: Iterable[Hook] = (), progress: bool = True, devices: Optional[Sequence[Any]] = None,
          time_edges: Sequence[float] = DEFAULT_TIME_EDGES) -> TrainState:
    """Trains `params` on `loss_fn` for cfg.steps steps, resuming from <workdir>/checkpoints; returns the state.

    data: pytree of arrays (n, ...) (identical on every process), replicated on every device. Step s (0-based)
    uses k_s = fold_in(key, s): batch = sample_batch(fold_in(k_s, 0), data, batch_size) (default
    `uniform_batch`), loss key fold_in(k_s, 1); so a resumed run continues the same random stream and the
    batch does not depend on the device count. The batch is sharded over a 1-D mesh 'data' spanning `devices`
    (default: all devices of all processes); params are replicated. key defaults to jax.random.key(cfg.seed).
    workdir None: no checkpoints, no metrics file. Records (mean over the steps since the previous record;
    shorter first window after a resume that is not on a log step) go to <workdir>/metrics.jsonl.
    hooks: called as hook(step, state, record_or_None) after every step (the state's buffers are donated to
    the next step: copy what you keep). Raises FloatingPointError when the loss or gradient norm turns NaN/inf
    (checked at each log and checkpoint step, so a checkpoint is never written from a non-finite run).
    """
    if os.environ.get("DIFFMEM_DISTRIBUTED", "0") not in ("", "0") and not jax.distributed.is_initialized():
        raise RuntimeError("DIFFMEM_DISTRIBUTED is set but jax.distributed is not initialized: call "
                           "diffmem.train.initialize_distributed() before any other JAX call")
    devices = tuple(jax.devices() if devices is None else devices)
    _check_data(data, cfg.batch_size, len(devices))
    key = jax.random.key(cfg.seed) if key is None else key
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
        raise ValueError(f"key must be a single typed key from jax.random.key, got {getattr(key, 'dtype', key)!r}")
    # The compiled functions depend on cfg only through the optimizer fields and batch_size: runs that differ
    # in steps (constant schedule), logging or checkpointing share them (no re-trace when resuming).
    opt_cfg = dataclasses.replace(cfg, steps=cfg.steps if cfg.schedule == "cosine" else 1, log_every=1,
                                  ckpt_every=1, keep_ckpts=1, seed=0)
    build_args = (loss_fn, uniform_batch if sample_batch is None else sample_batch, opt_cfg,
                  tuple(float(e) for e in time_edges), devices, jax.random.key_impl(key))
    try:
        hash(build_args)
    except TypeError:  # an unhashable loss_fn / sample_batch: build without the cache
        init_fn, step_fn, replicated = _build.__wrapped__(*build_args)
    else:
        init_fn, step_fn, replicated = _build(*build_args)
    data = _replicate(data, replicated)
    key_data = _replicate(np.asarray(jax.random.key_data(key)), replicated)
    params = _replicate(params, replicated)

    mngr = None
    if workdir is not None:
        import orbax.checkpoint as ocp  # deferred: heavy import, not needed for workdir=None
        workdir = os.path.abspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                     options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_ckpts))
    try:
        last_ckpt = mngr.latest_step() if mngr is not None else None
        if last_ckpt is None:
            state = init_fn(params)
        else:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                                    _as_dict(jax.eval_shape(init_fn, params)))
            try:
                state = TrainState(**mngr.restore(last_ckpt, args=ocp.args.StandardRestore(abstract)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"checkpoint {last_ckpt} in {workdir}/checkpoints does not match these params / "
                                 f"TrainConfig optimizer fields (use a fresh workdir): {e}") from e
        start = int(state.step)
        if start >= cfg.steps:
            return state
        log = _MetricsLog(os.path.join(workdir, "metrics.jsonl") if workdir else None, start)
        step = functools.partial(step_fn, data=data, key_data=key_data)
        return _loop(step, state, cfg, start, last_ckpt, log, mngr, list(hooks), progress)
    finally:
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()


@functools.lru_cache(maxsize=8)
def _build(loss_fn, sample_batch, opt_cfg: TrainConfig, time_edges, devices, key_impl):
    """The jitted (init, step) of `train` and the replicated sharding, cached across `train` calls."""
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    optimizer = make_optimizer(opt_cfg)
    train_step = make_train_step(loss_fn, optimizer, opt_cfg.ema_decay, time_edges=time_edges)

    @functools.partial(jax.jit, out_shardings=replicated)
    def init_fn(params):  # copies: the caller's params are never donated to the step
        return init_state(jax.tree.map(jnp.copy, params), optimizer)

    @functools.partial(jax.jit, out_shardings=replicated, donate_argnums=0)
    def step_fn(state, data, key_data):
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=key_impl), state.step)
        batch = sample_batch(jax.random.fold_in(key, 0), data, opt_cfg.batch_size)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)  # (b, ...) split over 'data'
        return train_step(state, batch, jax.random.fold_in(key, 1))

    return init_fn, step_fn, replicated


# Asynchronous dispatch runs ahead of the devices by at most this many steps. Unbounded, XLA:CPU deadlocks with
# several (fake) devices: hundreds of queued executions whose all-reduces wait for each other (seen with 2 devices
# and 200 queued steps); on accelerators a few steps ahead keep the device busy.
MAX_STEPS_IN_FLIGHT = 8


def _loop(step_fn, state, cfg, start, last_ckpt, log, mngr, hooks, progress) -> TrainState:
    """The host loop: dispatch steps asynchronously (at most MAX_STEPS_IN_FLIGHT ahead); fetch metrics only at log
    / checkpoint steps."""
    import tqdm  # deferred like orbax

    pbar = tqdm.tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                     disable=True if not progress or jax.process_index() != 0 else None)
    pending, window = [], []  # device metrics not yet fetched; host metrics since the last record
    in_flight = collections.deque()  # losses of dispatched steps not yet known to be done
    checked, t_last, s_last = start, time.perf_counter(), start
    with pbar:
        for step in range(start + 1, cfg.steps + 1):  # `step` = completed steps after this iteration
            state, metrics = step_fn(state)
            pending.append(metrics)
            in_flight.append(metrics["loss"])
            if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                in_flight.popleft().block_until_ready()
            is_log = step % cfg.log_every == 0 or step == cfg.steps
            is_ckpt = step % cfg.ckpt_every == 0 or step == cfg.steps
            record = None
            if is_log or is_ckpt:
                fetched, pending = jax.device_get(pending), []
                for name in ("loss", "grad_norm"):
                    if not all(np.isfinite(m[name]) for m in fetched):
                        raise FloatingPointError(
                            f"{name} became non-finite between step {checked} and {step}; last finite "
                            f"checkpoint at step {last_ckpt if last_ckpt is not None else 'none (no checkpoint)'}")
                checked = step
                window += fetched
            if is_log:
                now = time.perf_counter()
                record = {"step": step, **summarize_metrics(window),
                          "steps_per_sec": (step - s_last) / max(now - t_last, 1e-9)}
                window, t_last, s_last = [], now, step
                log.write(record)
                pbar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
            if is_ckpt and mngr is not None:
                mngr.save(step, args=_standard_save(state))
                last_ckpt = step
            pbar.update(1)
            for hook in hooks:
                hook(step, state, record)
    return state


def _standard_save(state: TrainState):
    import orbax.checkpoint as ocp
    return ocp.args.StandardSave(_as_dict(state))


def _as_dict(state: TrainState) -> dict:
    """{step, params, opt_state, ema_params}: the checkpointed item (no copies, unlike dataclasses.asdict)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
