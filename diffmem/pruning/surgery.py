"""Head surgery on a DiT (arXiv 2511.03202, Algorithm 1's pruned model): which heads exist, their output-projection
norms, head masks, the physically smaller model, and the gated model as a function.

Masks are (depth, max_heads) float 0/1 arrays (1 = keep). A pruned model may have different head counts per block;
its mask is padded to max_heads and the padding entries (heads a block does not have, `head_valid_mask`) are never
used by the model; masks built here set them to 1 and scores built here set them to NaN.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.models import dit as dit_lib
from diffmem.models.dit import DiT, variables

Array = jax.Array


def head_valid_mask(model: DiT) -> np.ndarray:
    """(depth, max_heads) bool: True where block l really has head h (False on the padding of pruned models)."""
    counts = model.head_counts
    mh = max(counts, default=0)
    return np.arange(mh)[None, :] < np.asarray(counts)[:, None]


def head_output_slices(model: DiT) -> list[list[slice]]:
    """slices[l][h]: the rows of `blocks_l/attn/proj/kernel` (and the entries of the attention output before
    `proj`) that belong to head h of block l."""
    dh = model.resolved_head_dim
    return [[slice(h * dh, (h + 1) * dh) for h in range(c)] for c in model.head_counts]


def head_proj_norms(model: DiT, params) -> Array:
    """(depth, max_heads) Frobenius norms of each head's rows of the attention output projection kernel.

    Padding entries (heads a pruned block does not have) are NaN. `params` may be the 'params' collection
    or the whole variables dict.
    """
    params = _unwrap(params)
    counts, dh = model.head_counts, model.resolved_head_dim
    mh = max(counts, default=0)
    rows = []
    for l, c in enumerate(counts):
        norms = jnp.zeros((0,), jnp.float32)
        if c:
            w = params[f"blocks_{l}"]["attn"]["proj"]["kernel"].reshape(c, dh, model.hidden)
            norms = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axis=(1, 2)))  # (c,)
        rows.append(jnp.concatenate([norms, jnp.full((mh - c,), jnp.nan, jnp.float32)]))
    return jnp.stack(rows) if rows else jnp.zeros((0, mh), jnp.float32)


def remove_heads(model: DiT, params, head_mask) -> tuple[DiT, Any]:
    """Physically removes the heads whose gate is 0.

    Args: model; params ('params' collection or variables dict, returned in the same form); head_mask
    (depth, max_heads) concrete array of exact 0/1 (row l: first head_counts[l] entries used).
    Returns (smaller DiT with per-layer heads and explicit head_dim, its params); its outputs equal
    `model.apply(params, ..., head_mask=head_mask)`. A block with no heads left keeps only the projection bias.
    """
    counts, dh = model.head_counts, model.resolved_head_dim
    mh = max(counts, default=0)
    try:
        mask = np.asarray(jax.device_get(head_mask), np.float64)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
        raise ValueError("head_mask must be a concrete array for remove_heads (not traced)") from e
    if mask.shape != (model.depth, mh):
        raise ValueError(f"head_mask must have shape (depth, max_heads) = {(model.depth, mh)}, got {mask.shape}")
    wrapped = _is_variables(params)
    p = _unwrap(params)
    new = dict(p)
    new_counts = []
    for l, c in enumerate(counts):
        m = mask[l, :c]
        if not np.all((m == 0) | (m == 1)):
            raise ValueError(f"head_mask entries must be exactly 0 or 1 for remove_heads; row {l} has "
                             f"{m[(m != 0) & (m != 1)][:4].tolist()}")
        keep = np.flatnonzero(m == 1)
        new_counts.append(len(keep))
        if len(keep) == c:
            continue
        attn = p[f"blocks_{l}"]["attn"]
        if len(keep) == 0:
            new_attn = {"proj": {"bias": attn["proj"]["bias"]}}
        else:
            k = len(keep)
            qkv_k = attn["qkv"]["kernel"].reshape(model.hidden, 3, c, dh)[:, :, keep].reshape(model.hidden, 3 * k * dh)
            qkv_b = attn["qkv"]["bias"].reshape(3, c, dh)[:, keep].reshape(3 * k * dh)
            proj_k = attn["proj"]["kernel"].reshape(c, dh, model.hidden)[keep].reshape(k * dh, model.hidden)
            new_attn = {"qkv": {"kernel": qkv_k, "bias": qkv_b},
                        "proj": {"kernel": proj_k, "bias": attn["proj"]["bias"]}}
        new[f"blocks_{l}"] = {**p[f"blocks_{l}"], "attn": new_attn}
    new_model = model.clone(heads=tuple(new_counts), head_dim=dh)
    return new_model, ({**params, "params": new} if wrapped else new)


def _is_variables(tree) -> bool:
    """True for a variables dict {'params': ..., other collections} rather than the params collection."""
    return isinstance(tree, dict) and "params" in tree and "x_embedder" not in tree


def _unwrap(params):
    return params["params"] if _is_variables(params) else params


def check_mask(mask, model: DiT) -> np.ndarray:
    """Validates a head mask: shape (depth, max_heads), entries exactly 0 or 1. Returns it as float32 numpy."""
    shape = (model.depth, model.max_heads)
    try:
        m = np.asarray(jax.device_get(mask), np.float64)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
        raise ValueError("head_mask must be a concrete array (not traced)") from e
    if m.shape != shape:
        raise ValueError(f"head_mask must have shape (depth, max_heads) = {shape}, got {m.shape}")
    bad = m[(m != 0) & (m != 1)]
    if bad.size:
        raise ValueError(f"head_mask entries must be exactly 0 or 1, got {bad[:4].tolist()}")
    return m.astype(np.float32)


@functools.lru_cache(maxsize=64)
def jitted_apply(model: DiT) -> Callable[..., Array]:
    """jax.jit of model.apply(variables, x, u, y=None, head_mask=None), cached per model (one compile per model
    and input structure, shared by `make_masked_apply` and `export_pruned`)."""
    def apply(variables, x, u, y=None, head_mask=None):
        return model.apply(variables, x, u, y, head_mask=head_mask)
    return jax.jit(apply)


def make_masked_apply(model: DiT, mask, labels=None) -> Callable[..., Array]:
    """apply(params, x, u, y=labels) -> eps_hat (b, H, W, C) of the model gated by a FIXED mask.

    Plugs into `losses.make_eps_loss` to fine-tune the pruned model (Algorithm 1). labels: None (null label /
    unconditional), an int class for every example, or a (b,) array. With learn_sigma only the eps channels
    are returned.
    """
    m = jnp.asarray(check_mask(mask, model))

    def apply(params, x, u, y=labels):
        if y is not None and np.ndim(y) == 0:
            y = jnp.full((x.shape[0],), y, jnp.int32)
        out = jitted_apply(model)(variables(params), x, u, y, head_mask=m)
        return out[..., :model.channels]
    return apply


def export_pruned(model: DiT, params, mask, *, check_batch: int = 2, rtol: float = 1e-4,
                  seed: int = 0) -> tuple[DiT, Any]:
    """Physically removes the masked heads (`remove_heads`) -> (smaller DiT, its params).

    Checks that the small model's outputs equal the masked model's on `check_batch` random inputs (numpy seed
    `seed`), to |diff| <= rtol (1 + max |out|); raises RuntimeError otherwise. check_batch=0 skips the check.
    """
    mask = check_mask(mask, model)
    small, small_params = remove_heads(model, params, mask)
    if check_batch:
        rng = np.random.default_rng(seed)
        s, c = model.image_size, model.channels
        x = jnp.asarray(rng.standard_normal((check_batch, s, s, c)), jnp.float32)
        u = jnp.asarray(rng.uniform(size=(check_batch,)), jnp.float32)
        y = (jnp.asarray(rng.integers(0, model.num_classes + 1, (check_batch,)), jnp.int32)
             if model.num_classes else None)
        ref = jitted_apply(model)(variables(params), x, u, y, head_mask=jnp.asarray(mask))
        out = jitted_apply(small)(variables(small_params), x, u, y)
        err = float(jnp.max(jnp.abs(out - ref)))
        tol = rtol * (1.0 + float(jnp.max(jnp.abs(ref))))
        if not err <= tol:
            raise RuntimeError(f"export_pruned: the exported model differs from the masked model by {err:.3g} "
                               f"(> {tol:.3g})")
    return small, small_params


def param_count(model: DiT, params, mask) -> int:
    """Parameters of the physically pruned model (`remove_heads`)."""
    _, small = remove_heads(model, params, mask)
    return dit_lib.count_params(small)


def variables(params):
    """The flax variables dict {'params': ...} from either it or the bare 'params' collection."""
    return params if _is_variables(params) else {"params": params}
