"""The one host loop every diffmem model trains through, and `train` (one model, data parallel) on top of it.

`host_loop(advance, state, ...)` owns what is the same for every training run: resume from the latest orbax
checkpoint in <workdir>/checkpoints, the metric records (mean over a log window) in <workdir>/metrics.jsonl
(written by process 0; records left beyond the resumed step by a killed run are dropped) and any other metric
writers (with `tensorboard`: diffmem.tracking's TensorBoard scalars in <workdir>/tensorboard), the NaN/inf guard
(checked at each log and checkpoint step, so a checkpoint is never written from a non-finite run), a tqdm bar
for terminals and a log line with step, loss, steps/s and ETA at least every `LOG_SECONDS` for batch jobs, and
per-step hooks. What a step is stays pluggable: `advance(state, num)` runs
`num` steps and returns their metrics (per-step for a single model, chunk means for a vmapped sweep, see
diffmem.training.sweep).

`train` trains one parameter set: batches drawn on the devices from fold_in(key, step) (so a resumed run continues
the same random stream and the batch does not depend on the device count), data parallel over all devices of all
processes (jit + NamedSharding on a 1-D mesh 'data'), asynchronous dispatch at most MAX_STEPS_IN_FLIGHT ahead.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffmem import runtime, tracking
from diffmem.config import TrainConfig
from diffmem.training import state as state_lib
from diffmem.training.state import TrainState

Array = jax.Array
PyTree = Any
SampleBatchFn = Callable[[Array, PyTree, int], PyTree]        # (key, data, batch_size) -> batch
Hook = Callable[[int, Any, Optional[dict]], None]             # (step, state, record or None)
Advance = Callable[[Any, int], tuple[Any, dict]]               # (state, num steps) -> (state, metrics)

# Asynchronous dispatch runs ahead of the devices by at most this many steps. Unbounded, XLA:CPU deadlocks with
# several (fake) devices: hundreds of queued executions whose all-reduces wait for each other (seen with 2 devices
# and 200 queued steps); on accelerators a few steps ahead keep the device busy.
MAX_STEPS_IN_FLIGHT = 8
LOG_SECONDS = 15.0        # a progress line on process 0 at the first log record after this many seconds


class MetricWriter(Protocol):
    """Receives every metric record (step, scalars) of a run; `close` at the end (e.g. TensorBoard)."""

    def write(self, step: int, record: dict) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """JSON lines at `path` (None: in memory only), written by process 0; records beyond `start_step` (left by an
    interrupted run) are dropped so that every step appears once after a resume. `records` holds them all."""

    def __init__(self, path: Optional[str], start_step: int):
        self.path = path
        self.records: list[dict] = []
        if path is not None and os.path.exists(path):
            with open(path) as f:
                self.records = [r for r in (json.loads(ln) for ln in f if ln.strip()) if r["step"] <= start_step]
        if path is not None and runtime.is_writer():
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None and runtime.is_writer():
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str) -> list[dict]:
    """The records of <workdir>/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def _first(x) -> int:
    return int(np.asarray(jax.device_get(x)).reshape(-1)[0])


def _check_finite(fetched: Sequence[dict], names: Sequence[str], checked: int, step: int, last_ckpt, desc) -> None:
    for name in names:
        bad = [np.asarray(m[name]) for m in fetched if name in m and not np.isfinite(m[name]).all()]
        if bad:
            members = ""
            if bad[0].ndim:
                members = f" for members {np.flatnonzero(~np.isfinite(bad[0])).tolist()}"
            raise FloatingPointError(
                f"{desc}: {name} became non-finite between step {checked} and {step}{members}; last finite "
                f"checkpoint at step {last_ckpt if last_ckpt is not None else 'none (no checkpoint)'}")


def host_loop(advance: Advance, state, *, steps: int, log_every: int, ckpt_every: int, keep_ckpts: int,
              workdir: Optional[str], chunk: int = 1, hooks: Iterable[Hook] = (), progress: bool = True,
              desc: str = "train", writers: Sequence[MetricWriter] = (),
              check: Sequence[str] = ("loss", "grad_norm"), tensorboard: bool = False) -> tuple[Any, list[dict]]:
    """Runs `advance` until state.step == steps, resuming from <workdir>/checkpoints (see the module docstring).

    state: the fresh state (its tree, shapes and shardings are the restore target); its `step` may be stacked
    (a sweep: every member at the same step). chunk: steps per `advance` call (the log and checkpoint cadence must
    be multiples of it; the last call may be shorter). writers: also receive every record; tensorboard: add a
    `tracking.TensorBoardWriter` on <workdir>/tensorboard (ignored when workdir is None). Returns (state, every
    metric record of the run).
    """
    if chunk > 1 and (log_every % chunk or ckpt_every % chunk):
        raise ValueError(f"log_every ({log_every}) and ckpt_every ({ckpt_every}) must be multiples of chunk ({chunk})")
    mngr = None
    writers = list(writers)
    if tensorboard and workdir is not None:
        tracking.require("TrainConfig.tensorboard=True")
    if workdir is not None:
        import orbax.checkpoint as ocp  # deferred: heavy import, not needed for workdir=None
        runtime.quiet_orbax()
        workdir = os.path.abspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                     options=ocp.CheckpointManagerOptions(max_to_keep=keep_ckpts))
    try:
        last_ckpt = mngr.latest_step() if mngr is not None else None
        if last_ckpt is not None:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                                   sharding=getattr(x, "sharding", None)),
                                    state_lib.as_dict(state))
            try:
                state = TrainState(**mngr.restore(last_ckpt, args=ocp.args.StandardRestore(abstract)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"checkpoint {last_ckpt} in {workdir}/checkpoints does not match these params / "
                                 f"optimizer settings (use a fresh workdir): {e}") from e
        start = _first(state.step)
        log = MetricsLog(os.path.join(workdir, "metrics.jsonl") if workdir else None, start)
        if start >= steps:
            return state, log.records
        if tensorboard and workdir is not None:
            writers += tracking.metric_writers(workdir, start)
        state = _run(advance, state, log, mngr, start, last_ckpt, steps=steps, log_every=log_every,
                     ckpt_every=ckpt_every, chunk=chunk, hooks=list(hooks), progress=progress, desc=desc,
                     writers=writers, check=check)
        return state, log.records
    finally:
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
        for w in writers:
            w.close()


def _run(advance, state, log, mngr, start, last_ckpt, *, steps, log_every, ckpt_every, chunk, hooks, progress,
         desc, writers, check):
    import tqdm  # deferred like orbax
    writer = runtime.is_writer()
    pbar = tqdm.tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True, leave=False,
                     disable=True if not progress or not writer else None)
    pending, window = [], []        # device metrics not yet fetched; host metrics since the last record
    in_flight = collections.deque()  # losses of dispatched steps not yet known to be done
    checked, t_last, s_last = start, time.perf_counter(), start
    t0, t_line = t_last, t_last
    step = start
    with pbar:
        while step < steps:
            num = min(chunk, steps - step)
            state, metrics = advance(state, num)
            step += num
            pending.append(metrics)
            in_flight.append(metrics["loss"])
            if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                jax.block_until_ready(in_flight.popleft())
            is_log = step % log_every == 0 or step == steps
            is_ckpt = step % ckpt_every == 0 or step == steps
            record = None
            if is_log or is_ckpt:
                fetched, pending = jax.device_get(pending), []
                in_flight.clear()
                _check_finite(fetched, check, checked, step, last_ckpt, desc)
                checked = step
                window += fetched
            if is_log:
                now = time.perf_counter()
                record = {"step": step, **state_lib.summarize_metrics(window),
                          "steps_per_sec": (step - s_last) / max(now - t_last, 1e-9)}
                window, t_last, s_last = [], now, step
                log.write(record)
                for w in writers:
                    w.write(step, record)
                loss = record["loss"]
                loss_text = f"{loss:.4g}" if isinstance(loss, float) else f"{np.mean(loss):.4g} (mean of {len(loss)})"
                pbar.set_postfix(loss=loss_text, refresh=False)
                if writer and (now - t_line >= LOG_SECONDS or step == steps):
                    rate = (step - start) / max(now - t0, 1e-9)
                    logging.info("%s: step %d/%d, loss %s, %.1f steps/s, ETA %.0f s", desc, step, steps, loss_text,
                                 rate, (steps - step) / max(rate, 1e-9))
                    t_line = now
            if is_ckpt and mngr is not None:
                import orbax.checkpoint as ocp
                mngr.save(step, args=ocp.args.StandardSave(state_lib.as_dict(state)))
                last_ckpt = step
            pbar.update(num)
            for hook in hooks:
                hook(step, state, record)
    return state


# ------------------------------------------------------------------------------------------ one model

def replicate(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Host (or device) values, identical on every process, as global replicated arrays."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
                        tree)


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


def train(loss_fn, params: PyTree, data: PyTree, cfg: TrainConfig, workdir: Optional[str], *,
          key: Optional[Array] = None, sample_batch: Optional[SampleBatchFn] = None,
          hooks: Iterable[Hook] = (), progress: bool = True, devices: Optional[Sequence[Any]] = None,
          time_edges: Sequence[float] = state_lib.DEFAULT_TIME_EDGES, desc: str = "train",
          writers: Sequence[MetricWriter] = ()) -> TrainState:
    """Trains `params` on `loss_fn` for cfg.steps steps through `host_loop`, resuming from <workdir>/checkpoints.

    data: pytree of arrays (n, ...) (identical on every process), replicated on every device. Step s (0-based)
    uses k_s = fold_in(key, s): batch = sample_batch(fold_in(k_s, 0), data, batch_size) (default
    `uniform_batch`), loss key fold_in(k_s, 1). The batch is sharded over a 1-D mesh 'data' spanning `devices`
    (default: all devices of all processes); params are replicated. key defaults to jax.random.key(cfg.seed).
    workdir None: no checkpoints, no metrics file. hooks: called as hook(step, state, record_or_None) after every
    step (the state's buffers are donated to the next step: copy what you keep).
    """
    runtime.check_distributed()
    devices = tuple(jax.devices() if devices is None else devices)
    _check_data(data, cfg.batch_size, len(devices))
    key = jax.random.key(cfg.seed) if key is None else key
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
        raise ValueError(f"key must be a single typed key from jax.random.key, got {getattr(key, 'dtype', key)!r}")
    # The compiled functions depend on cfg only through the optimizer fields and batch_size: runs that differ
    # in steps (constant schedule), logging or checkpointing share them (no re-trace when resuming).
    opt_cfg = dataclasses.replace(cfg, steps=cfg.steps if cfg.schedule == "cosine" else 1, log_every=1,
                                  ckpt_every=1, keep_ckpts=1, seed=0, tensorboard=False)
    build_args = (loss_fn, state_lib.uniform_batch if sample_batch is None else sample_batch, opt_cfg,
                  state_lib.check_time_edges(time_edges), devices, jax.random.key_impl(key))
    try:
        hash(build_args)
    except TypeError:  # an unhashable loss_fn / sample_batch: build without the cache
        init_fn, step_fn, replicated = _build.__wrapped__(*build_args)
    else:
        init_fn, step_fn, replicated = _build(*build_args)
    data = replicate(data, replicated)
    key_data = replicate(np.asarray(jax.random.key_data(key)), replicated)
    state = init_fn(replicate(params, replicated))
    step = functools.partial(step_fn, data=data, key_data=key_data)
    state, _ = host_loop(lambda st, num: step(st), state, steps=cfg.steps, log_every=cfg.log_every,
                         ckpt_every=cfg.ckpt_every, keep_ckpts=cfg.keep_ckpts, workdir=workdir, hooks=hooks,
                         progress=progress, desc=desc, writers=writers, tensorboard=cfg.tensorboard)
    return state


@functools.lru_cache(maxsize=8)
def _build(loss_fn, sample_batch, opt_cfg: TrainConfig, time_edges, devices, key_impl):
    """The jitted (init, step) of `train` and the replicated sharding, cached across `train` calls."""
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    optimizer = state_lib.make_optimizer(opt_cfg)
    train_step = state_lib.make_train_step(loss_fn, optimizer, opt_cfg.ema_decay, time_edges=time_edges)

    @functools.partial(jax.jit, out_shardings=replicated)
    def init_fn(params):  # copies: the caller's params are never donated to the step
        return state_lib.init_state(jax.tree.map(jnp.copy, params), optimizer)

    @functools.partial(jax.jit, out_shardings=replicated, donate_argnums=0)
    def step_fn(state, data, key_data):
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=key_impl), state.step)
        batch = sample_batch(jax.random.fold_in(key, 0), data, opt_cfg.batch_size)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)  # (b, ...) split over 'data'
        return train_step(state, batch, jax.random.fold_in(key, 1))

    return init_fn, step_fn, replicated
