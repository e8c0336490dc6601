"""Head importance of a DiT (arXiv 2511.03202, Section 6.2, Algorithm 2) and the loss of candidate masks.

Algorithm 2 (head importance, after Michel et al. 2019 / Liang et al. 2021): put a gate xi_h = 1 on the output of
every head (`DiT(..., head_mask=xi)`); over B batches x ~ D with ONE unit time u per batch,
    S(h) = sum_batches | dL(x, u) / d xi_h |,     I(h) = S(h) / sqrt(sum_{h' in layer(h)} S(h')^2),
where L is the training loss of the DiT: the epsilon loss mean ||eps - eps_hat(x_t, u)||^2 on the OU process with
x_t = alpha_t x0 + sigma_t eps and t = sde.ddpm_time(u) (the DDPM linear schedule, as in `losses.make_eps_loss`).
Time mapping (the paper only says "t ~ Beta(0.8, 2) on [0, 1]"): the Beta draw is the DDPM unit time u (u = 1 is
DDPM step 1000), so Beta(0.8, 2) puts its mass at small diffusion times; Beta(2, 0.8) is the large-t mirror.

Randomness: batch i uses key_i = fold_in(key, i) (`draw_batch`); inside a batch, example j draws its data index,
noise (and, for per-example times, its u) from fold_in(., j), so batch content never depends on the device count.
Multi-device: `head_importance` shards every batch over a 1-D mesh (jit + NamedSharding, gradient of the batch-mean
loss, so the value is the single-device one); `importance_many` / `evaluate_masks` map time distributions / masks
over the devices with shard_map. The default mesh spans every device of every JAX process (jax.distributed): the
inputs (identical on every process) are placed with `_put` and every process receives the whole result (`_fetch`).
Scores are (depth, max_heads), NaN on the padding entries of an unevenly pruned model (`surgery.head_valid_mask`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffmem import sde
from diffmem.models.dit import DiT
from diffmem.pruning.surgery import check_mask, head_valid_mask, variables

Array = jax.Array
TIME_DISTS = ("uniform", "beta")


@dataclasses.dataclass(frozen=True)
class TimeDist:
    """Distribution of the DDPM unit time u in [u_min, 1] (`sde.sample_unit_time`): 'uniform' or Beta(a, b)."""
    dist: str = "beta"
    a: float = 0.8
    b: float = 2.0
    u_min: float = 0.0

    def __post_init__(self):
        if self.dist not in TIME_DISTS:
            raise ValueError(f"time_dist must be one of {TIME_DISTS}, got {self.dist!r}")
        if self.dist == "beta" and not (_is_real(self.a) and _is_real(self.b) and self.a > 0 and self.b > 0):
            raise ValueError(f"a Beta time_dist needs a > 0 and b > 0, got a={self.a!r}, b={self.b!r}")
        if not (_is_real(self.u_min) and 0.0 <= self.u_min < 1.0):
            raise ValueError(f"u_min must be in [0, 1), got {self.u_min!r}")

    def sample(self, key: Array, shape: tuple[int, ...] = ()) -> Array:
        return sde.sample_unit_time(key, shape, self.dist, float(self.a), float(self.b), float(self.u_min))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _time_dists(time_dists) -> tuple[TimeDist, ...]:
    out = []
    for i, td in enumerate(time_dists):
        if isinstance(td, TimeDist):
            out.append(td)
            continue
        if not isinstance(td, (tuple, list)) or len(td) != 3:
            raise ValueError(f"time_dists[{i}] must be a (dist, a, b) tuple, got {td!r}")
        out.append(TimeDist(*td))
    if not out:
        raise ValueError("time_dists must hold at least one (dist, a, b) tuple, got an empty list")
    return tuple(out)


def _sample_u(key: Array, tds: tuple[TimeDist, ...], which) -> Array:
    """A scalar u from tds[which] (`which` may be traced: lax.switch over the static distributions)."""
    if len(tds) == 1:
        return tds[0].sample(key)
    return jax.lax.switch(which, [td.sample for td in tds], key)


def _draw(key: Array, images: Array, labels: Optional[Array], batch_size: int, tds: tuple[TimeDist, ...],
          which, per_example_time: bool) -> dict[str, Array]:
    """The batch of `draw_batch` (traceable; `which` picks the time distribution in tds)."""
    n = images.shape[0]
    k_idx, k_eps, k_u = jax.random.split(key, 3)
    j = jnp.arange(batch_size)
    idx = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(k_idx, i), (), 0, n))(j)     # (b,)
    # noise drawn flat per example and reshaped (the same numbers as a shaped draw)
    size = math.prod(images.shape[1:])
    eps = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_eps, i), (size,), images.dtype))(j)
    eps = eps.reshape((batch_size,) + images.shape[1:])                                         # (b, H, W, C)
    if per_example_time:
        u = jax.vmap(lambda i: _sample_u(jax.random.fold_in(k_u, i), tds, which))(j)           # (b,)
    else:
        u = jnp.broadcast_to(_sample_u(k_u, tds, which), (batch_size,))                        # (b,) one value
    return {"x0": images[idx], "eps": eps, "u": u.astype(images.dtype), "idx": idx,
            "y": None if labels is None else labels[idx]}


def draw_batch(key: Array, images, batch_size: int, *, time_dist: str = "beta", a: float = 0.8, b: float = 2.0,
               u_min: float = 0.0, per_example_time: bool = False, labels=None) -> dict[str, Array]:
    """One scoring batch: dict(x0 (b,H,W,C), eps (b,H,W,C), u (b,), idx (b,), y (b,) or None).

    Indices are uniform on [0, n) WITH replacement; example j uses fold_in(., j) for its index and noise.
    per_example_time=False draws ONE u for the whole batch (Algorithm 2); True draws one u per example.
    Batch i of `head_importance` / `importance_many` / `evaluate_masks` is draw_batch(fold_in(key, i), ...).
    """
    images, labels = _check_data(images, labels)
    _check_pos_int("batch_size", batch_size)
    fn = _draw_fn(batch_size, TimeDist(time_dist, a, b, u_min), per_example_time, labels is not None)
    return fn(key, images, _labels_or_dummy(labels, images))


@functools.lru_cache(maxsize=64)
def _draw_fn(batch_size, td, per_example_time, has_labels):
    return jax.jit(lambda key, images, labels: _draw(key, images, labels if has_labels else None, batch_size,
                                                     (td,), 0, per_example_time))


def batch_loss(model: DiT, params, batch: dict, head_mask: Array,
               time_change: Callable[[Array], Array] = sde.ddpm_time) -> Array:
    """Epsilon loss mean_{b, pixels} (eps_hat(x_t, u; head_mask) - eps)^2 with x_t = alpha_t x0 + sigma_t eps,
    t = time_change(u) (same loss as `losses.make_eps_loss`, on the given draws). Differentiable in head_mask."""
    t = time_change(batch["u"])[:, None, None, None]                                 # (b, 1, 1, 1)
    x_t = sde.alpha(t) * batch["x0"] + sde.sigma(t) * batch["eps"]                    # (b, H, W, C)
    out = model.apply(variables(params), x_t, batch["u"], batch["y"], head_mask=head_mask)
    return jnp.mean(jnp.square(out[..., :model.channels] - batch["eps"]))


def _raw_scores(model, params, images, labels, key, which, *, tds, num_batches, batch_size, time_change,
                constrain=lambda b: b) -> Array:
    """S (depth, max_heads) = sum over batches of |dL/dxi| at xi = 1 (traceable, single program)."""
    ones = jnp.ones((model.depth, model.max_heads), jnp.float32)

    def body(s, i):
        batch = constrain(_draw(jax.random.fold_in(key, i), images, labels, batch_size, tds, which, False))
        g = jax.grad(lambda m: batch_loss(model, params, batch, m, time_change))(ones)   # (depth, max_heads)
        return s + jnp.abs(g), None

    s, _ = jax.lax.scan(body, jnp.zeros_like(ones), jnp.arange(num_batches))
    return s


def _mean_loss(model, params, images, labels, key, mask, *, td, num_batches, batch_size, time_change,
               per_example_time) -> Array:
    """Mean of `batch_loss` over batches fold_in(key, i), i < num_batches (traceable)."""
    def body(acc, i):
        batch = _draw(jax.random.fold_in(key, i), images, labels, batch_size, (td,), 0, per_example_time)
        return acc + batch_loss(model, params, batch, mask, time_change), None

    acc, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), jnp.arange(num_batches))
    return acc / num_batches


@functools.lru_cache(maxsize=64)
def _importance_fn(model, tds, num_batches, batch_size, time_change, has_labels, mesh):
    axis = mesh.axis_names[0]
    shard = NamedSharding(mesh, P(axis))

    def constrain(batch):  # data parallel: every per-example array of the batch is split over the mesh
        return {k: (v if v is None else jax.lax.with_sharding_constraint(v, shard)) for k, v in batch.items()}

    def fn(params, images, labels, key):
        return _raw_scores(model, params, images, labels if has_labels else None, key, 0, tds=tds,
                           num_batches=num_batches, batch_size=batch_size, time_change=time_change,
                           constrain=constrain)
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))


def head_importance(model: DiT, params, images, key: Array, *, num_batches: int, batch_size: int,
                    time_dist: str = "beta", a: float = 0.8, b: float = 2.0, u_min: float = 0.0, labels=None,
                    mesh: Optional[Mesh] = None,
                    time_change: Callable[[Array], Array] = sde.ddpm_time) -> dict[str, Array]:
    """Algorithm 2: head importance of a DiT from |dL/dxi_h| at xi = 1, ONE u ~ time_dist per batch.

    Args: model, params ('params' collection or variables dict); images (n, H, W, C); key (typed);
      num_batches B, batch_size (a multiple of the mesh size); time_dist 'beta' (Beta(a, b); default
      Beta(0.8, 2), small t; a=2, b=0.8 is the large-t mirror) or 'uniform'; u in [u_min, 1]; labels (n,) ints
      for a class-conditional DiT (None: null label); mesh: 1-D mesh the batch is split over (None: all devices).
    Returns dict(raw=S (depth, max_heads), importance=I (depth, max_heads)); NaN on padding heads.
    """
    images, labels = _check_data(images, labels, model)
    _check_pos_int("num_batches", num_batches)
    _check_pos_int("batch_size", batch_size)
    mesh = _mesh(mesh)
    if batch_size % mesh.size:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of devices in the mesh "
                         f"({mesh.size}): each batch is split evenly over the mesh")
    fn = _importance_fn(model, (TimeDist(time_dist, a, b, u_min),), num_batches, batch_size, time_change,
                        labels is not None, mesh)
    args = _put((variables(params), images, _labels_or_dummy(labels, images), key), NamedSharding(mesh, P()))
    raw = _nan_padding(_fetch(fn(*args)), model)
    return {"raw": raw, "importance": normalize_per_layer(raw)}


@functools.lru_cache(maxsize=64)
def _importance_many_fn(model, tds, num_batches, batch_size, time_change, has_labels, mesh):
    axis = mesh.axis_names[0]

    def local(params, images, labels, key, which):  # which (k,) indices into tds of this device
        return jax.lax.map(lambda w: _raw_scores(
            model, params, images, labels if has_labels else None, key, w, tds=tds, num_batches=num_batches,
            batch_size=batch_size, time_change=time_change), which)                    # (k, depth, max_heads)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(), P(axis)), out_specs=P(axis),
                           check_vma=False)
    return jax.jit(mapped)


def importance_many(model: DiT, params, images, key: Array, time_dists: Sequence, *, num_batches: int,
                    batch_size: int, labels=None, mesh: Optional[Mesh] = None,
                    time_change: Callable[[Array], Array] = sde.ddpm_time) -> dict[str, Array]:
    """`head_importance` for several time distributions at once, mapped over the devices (shard_map).

    time_dists: list of (dist, a, b) (or `TimeDist`, to set u_min). Every entry uses the SAME key, so the same
    images and noise (common random numbers): entry i equals head_importance(..., key, time_dist=dist_i, a=a_i,
    b=b_i). The list is padded to a multiple of the device count; each device scores its share in turn.
    Returns dict(raw (len, depth, max_heads), importance (len, depth, max_heads)).
    """
    images, labels = _check_data(images, labels, model)
    _check_pos_int("num_batches", num_batches)
    _check_pos_int("batch_size", batch_size)
    tds = _time_dists(time_dists)
    mesh = _mesh(mesh)
    which = _pad_to(np.arange(len(tds), dtype=np.int32), mesh.size)                  # (L_pad,)
    fn = _importance_many_fn(model, tds, num_batches, batch_size, time_change, labels is not None, mesh)
    rep = NamedSharding(mesh, P())
    args = _put((variables(params), images, _labels_or_dummy(labels, images), key), rep)
    raw = _fetch(fn(*args, _put(which, NamedSharding(mesh, P(mesh.axis_names[0])))))[:len(tds)]
    raw = jax.vmap(lambda s: _nan_padding(s, model))(raw)
    return {"raw": raw, "importance": jax.vmap(normalize_per_layer)(raw)}


@functools.lru_cache(maxsize=64)
def _evaluate_masks_fn(model, td, num_batches, batch_size, time_change, per_example_time, has_labels, mesh):
    axis = mesh.axis_names[0]

    def local(params, images, labels, key, masks):  # masks (k, depth, max_heads) of this device
        return jax.lax.map(lambda m: _mean_loss(
            model, params, images, labels if has_labels else None, key, m, td=td, num_batches=num_batches,
            batch_size=batch_size, time_change=time_change, per_example_time=per_example_time), masks)  # (k,)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(), P(axis)), out_specs=P(axis),
                           check_vma=False)
    return jax.jit(mapped)


def evaluate_masks(model: DiT, params, images, key: Array, masks, *, num_batches: int, batch_size: int,
                   time_dist: str = "uniform", a: float = 0.8, b: float = 2.0, u_min: float = 0.0,
                   per_example_time: bool = True, labels=None, mesh: Optional[Mesh] = None,
                   time_change: Callable[[Array], Array] = sde.ddpm_time) -> Array:
    """Mean epsilon loss of the model gated by each of M candidate masks (M, depth, max_heads), the masks mapped
    over a 1-D mesh (shard_map; default: all devices).

    Loss of mask m = mean over i < num_batches of `batch_loss` on draw_batch(fold_in(key, i), ...): every mask
    sees the same batches (common random numbers). Default: the training loss (u ~ U(0, 1) per example).
    M is padded to a multiple of the device count with all-ones masks, whose losses are dropped. Returns (M,).
    """
    images, labels = _check_data(images, labels, model)
    _check_pos_int("num_batches", num_batches)
    _check_pos_int("batch_size", batch_size)
    masks = np.asarray(jax.device_get(masks))
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(f"masks must have shape (M >= 1, depth, max_heads) = (M, {model.depth}, "
                         f"{model.max_heads}), got {masks.shape}")
    masks = np.stack([check_mask(m, model) for m in masks])                          # (M, depth, max_heads)
    mesh = _mesh(mesh)
    m_pad = _pad_to(masks, mesh.size, fill=1.0)
    fn = _evaluate_masks_fn(model, TimeDist(time_dist, a, b, u_min), num_batches, batch_size, time_change,
                            per_example_time, labels is not None, mesh)
    rep = NamedSharding(mesh, P())
    args = _put((variables(params), images, _labels_or_dummy(labels, images), key), rep)
    return _fetch(fn(*args, _put(m_pad, NamedSharding(mesh, P(mesh.axis_names[0])))))[:masks.shape[0]]


def normalize_per_layer(scores: Array) -> Array:
    """I(h) = S(h) / sqrt(sum_{h' in layer} S(h')^2) row by row (Algorithm 2); NaN entries (padding) are left
    out of the sum and stay NaN; a row whose scores are all 0 stays 0."""
    s = jnp.asarray(scores, jnp.float32)
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (depth, max_heads), got {s.shape}")
    norm = jnp.sqrt(jnp.nansum(jnp.square(s), axis=1, keepdims=True))                # (depth, 1)
    return jnp.where(norm > 0, s / jnp.where(norm > 0, norm, 1.0), s)


def _mesh(mesh: Optional[Mesh]) -> Mesh:
    if mesh is None:
        return Mesh(np.asarray(jax.devices()), ("data",))
    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be a 1-D jax.sharding.Mesh, got {mesh!r}")
    return mesh


def _put(tree, sharding: NamedSharding):
    """jax.device_put(tree, sharding) for values identical on every process, also when the sharding spans several
    processes (device_put accepts only this process's devices there): typed keys as key data, arrays replicated
    over the processes taken from this process's copy."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding == sharding:
                return x
            if not x.sharding.is_fully_replicated:
                raise ValueError(f"inputs must be identical on every process; got an array of shape {x.shape} "
                                 f"sharded as {x.sharding}")
            x = x.addressable_data(0)      # replicated over the processes (e.g. trained parameters)
        a = np.asarray(x)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])
    return jax.tree.map(one, tree)


def _fetch(x: Array) -> Array:
    """The whole of x on this process (an array of a mesh over several processes is all-gathered)."""
    if x.is_fully_addressable:
        return x
    from jax.experimental import multihost_utils
    return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))


def _pad_to(a: np.ndarray, multiple: int, fill=None) -> np.ndarray:
    """Pads axis 0 to a multiple of `multiple` with copies of a[0] (fill=None) or with `fill`."""
    r = (-a.shape[0]) % multiple
    if not r:
        return a
    pad = np.repeat(a[:1], r, axis=0) if fill is None else np.full((r,) + a.shape[1:], fill, a.dtype)
    return np.concatenate([a, pad])


def _check_pos_int(name: str, v) -> None:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _check_data(images, labels, model: Optional[DiT] = None):
    images = jnp.asarray(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must have shape (n >= 1, H, W, C), got {images.shape}")
    if model is not None:
        want = (model.image_size, model.image_size, model.channels)
        if images.shape[1:] != want:
            raise ValueError(f"images must have shape (n, {want[0]}, {want[1]}, {want[2]}) for this model, "
                             f"got {images.shape}")
    if labels is not None:
        labels = jnp.asarray(labels)
        if labels.shape != images.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be an int array of shape ({images.shape[0]},), got "
                             f"{labels.dtype} {labels.shape}")
        if model is not None and model.num_classes == 0:
            raise ValueError("labels must be None for an unconditional DiT (num_classes=0)")
    return images, labels


def _labels_or_dummy(labels, images):
    return jnp.zeros(images.shape[:1], jnp.int32) if labels is None else labels


def _nan_padding(s: Array, model: DiT) -> Array:
    return jnp.where(jnp.asarray(head_valid_mask(model)), s, jnp.nan)
