"""Weights of facebookresearch/DiT (PyTorch `models.py`) <-> parameters of `diffmem.models.dit.DiT`, in numpy.

The DiT of Peebles & Xie (2023) is the network of the paper's image experiments (arXiv 2511.03202, section 5:
DiT-S/2 on CIFAR-10, head pruning by Algorithms 1 and 2). diffmem's Flax port keeps the PyTorch module names, so the
map is one rule per leaf (torch nn.Linear weights are (out, in), Flax kernels are (in, out)):

  torch key                                   shape                  diffmem path                        rule
  x_embedder.proj.weight                      (D, C, p, p)           x_embedder/kernel (p, p, C, D)       w.transpose(2, 3, 1, 0)
  x_embedder.proj.bias                        (D,)                   x_embedder/bias                      copy
  t_embedder.mlp.{0,2}.{weight,bias}          (D, 256), (D, D)       t_embedder/mlp_{0,2}/{kernel,bias}   W.T, copy
  y_embedder.embedding_table.weight           (K [+1], D)            y_embedder/embedding (K + 1, D)      see below
  blocks.l.attn.qkv / attn.proj / mlp.fc1 / mlp.fc2 / adaLN_modulation.1    blocks_l/attn/qkv, ... /adaLN_modulation
  final_layer.linear / final_layer.adaLN_modulation.1                       final_layer/linear, /adaLN_modulation
  pos_embed                                   (1, N, D)              (none: a fixed constant in diffmem)  checked

Same layouts otherwise: the qkv output axis is (3, heads, head_dim) and the final linear's output axis is
(p, p, channels) in both, so attention heads and unpatchify agree. Inputs differ only in conventions: PyTorch takes
NCHW images and the DDPM step t in [0, 1000), diffmem NHWC images and the unit time u = t / 1000.

Labels. diffmem's table always has num_classes + 1 rows, the last one being the null label of classifier-free
guidance; the reference has num_classes + 1 rows when trained with class dropout > 0 (the official checkpoints: 1001)
and num_classes rows otherwise. A one-row table (a model trained with one class, i.e. unconditionally) maps to an
UNCONDITIONAL diffmem DiT (num_classes = 0): the constant row is added to the bias of t_embedder/mlp_2, which gives
the same conditioning vector c = t_emb + y_emb. A table of num_classes rows without a null row gets a zero null row
(the null label then means "no label embedding"; the reference model has no null label to compare with).

Everything here is numpy (no torch import): a state dict of torch tensors can be passed as is (each value goes
through np.asarray) or as {k: v.numpy()}. Checkpoint files: `import_dit` reads a `.pt` (diffmem.checkpoints.read_pt,
torch-free) into (DiT, params); `export_dit` writes one that the reference `models.DiT(**reference_kwargs(model))`
loads with torch.load + load_state_dict.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import numpy as np

from diffmem import checkpoints, io
from diffmem.models import dit as dit_lib

_BLOCK_LINEARS = {"attn.qkv": ("attn", "qkv"), "attn.proj": ("attn", "proj"), "mlp.fc1": ("mlp", "fc1"),
                  "mlp.fc2": ("mlp", "fc2"), "adaLN_modulation.1": ("adaLN_modulation",)}
_TOP_LINEARS = {"t_embedder.mlp.0": ("t_embedder", "mlp_0"), "t_embedder.mlp.2": ("t_embedder", "mlp_2"),
                "final_layer.linear": ("final_layer", "linear"),
                "final_layer.adaLN_modulation.1": ("final_layer", "adaLN_modulation")}
_Y_KEY = "y_embedder.embedding_table.weight"
_POS_KEY = "pos_embed"
# heads of the named DiT sizes (DiT paper Table 1), keyed by (depth, hidden): the state dict does not record them
_KNOWN_HEADS = {(kw["depth"], kw["hidden"]): kw["heads"] for kw in dit_lib._SIZES.values()}


def _np(sd: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in sd:
        raise ValueError(f"state_dict lacks {key!r}")
    v = sd[key]
    if hasattr(v, "detach"):  # a torch tensor: plain numpy without importing torch
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _depth(sd: Mapping[str, Any]) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"state_dict must hold blocks.0 ... blocks.(depth-1), got block indices {sorted(idx)}")
    return len(idx)


def infer_dit_fields(state_dict: Mapping[str, Any], heads: Optional[int] = None) -> dict:
    """The diffmem DiT fields of a reference state dict: dict(image_size, channels, patch, hidden, depth, heads,
    mlp_ratio, num_classes, learn_sigma), for `dit.DiT(**fields)`.

    image_size comes from pos_embed (None when the state dict has none); num_classes from the label table (one row:
    0, unconditional; otherwise rows - 1, i.e. the table is taken to include the null row as in DiT's official
    checkpoints: pass num_classes yourself for a model trained without class dropout). heads are not recorded in a
    state dict: `heads` if given, else the DiT paper's value for this (depth, hidden) (S, B, L, XL, and diffmem's
    T, M), else a ValueError.
    """
    w = _np(state_dict, "x_embedder.proj.weight")
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"x_embedder.proj.weight must have shape (hidden, channels, p, p), got {w.shape}")
    hidden, channels, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = _depth(state_dict)
    if heads is None:
        if (depth, hidden) not in _KNOWN_HEADS:
            raise ValueError(f"heads must be given: a state dict does not record them and (depth, hidden) = "
                             f"({depth}, {hidden}) is none of the DiT sizes {sorted(_KNOWN_HEADS)}")
        heads = _KNOWN_HEADS[(depth, hidden)]
    mlp_ratio = _np(state_dict, "blocks.0.mlp.fc1.weight").shape[0] / hidden
    out = _np(state_dict, "final_layer.linear.weight").shape[0]
    if out not in (patch * patch * channels, 2 * patch * patch * channels):
        raise ValueError(f"final_layer.linear.weight has {out} rows; expected p^2 C = {patch * patch * channels} "
                         f"or 2 p^2 C (learn_sigma)")
    image_size = None
    if _POS_KEY in state_dict:
        n = _np(state_dict, _POS_KEY).shape[-2]
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"pos_embed must hold a square number of tokens, got {n}")
        image_size = g * patch
    rows = _np(state_dict, _Y_KEY).shape[0] if _Y_KEY in state_dict else 1
    return dict(image_size=image_size, channels=channels, patch=patch, hidden=hidden, depth=depth,
                heads=int(heads), mlp_ratio=float(mlp_ratio), num_classes=0 if rows == 1 else rows - 1,
                learn_sigma=out == 2 * patch * patch * channels)


def _check_model(model: dit_lib.DiT) -> tuple[int, int]:
    model.check_fields()
    dh, counts = model.resolved_head_dim, model.head_counts
    if model.hidden % dh:
        raise ValueError(f"model head_dim ({dh}) must divide hidden ({model.hidden}) to match a reference DiT")
    full = model.hidden // dh
    if any(c > full for c in counts):
        raise ValueError(f"model heads {counts} exceed hidden / head_dim = {full}")
    return dh, full


def state_dict_to_params(state_dict: Mapping[str, Any], model: dit_lib.DiT) -> dict:
    """The 'params' collection of `model` (numpy float32 leaves) from a reference DiT state dict.

    `model` must have all its heads (heads * head_dim == hidden in every block; see `infer_dit_fields`). Shapes are
    checked against `model`; keys the map does not use raise a ValueError naming them.
    """
    dh, full = _check_model(model)
    if any(c != full for c in model.head_counts):
        raise ValueError(f"model must have hidden / head_dim = {full} heads in every block to load a reference "
                         f"DiT, got heads {model.head_counts}")
    sd = state_dict
    d, c, p = model.hidden, model.channels, model.patch
    used = set()

    def take(key, shape):
        v = _np(sd, key).astype(np.float32)
        if v.shape != tuple(shape):
            raise ValueError(f"state_dict[{key!r}] must have shape {tuple(shape)} for this model, got {v.shape}")
        used.add(key)
        return v

    def linear(prefix, n_in, n_out):
        return {"kernel": take(prefix + ".weight", (n_out, n_in)).T.copy(), "bias": take(prefix + ".bias", (n_out,))}

    f = int(d * model.mlp_ratio)
    oc = model.out_channels
    params: dict = {
        "x_embedder": {"kernel": take("x_embedder.proj.weight", (d, c, p, p)).transpose(2, 3, 1, 0).copy(),
                       "bias": take("x_embedder.proj.bias", (d,))},
        "t_embedder": {"mlp_0": linear("t_embedder.mlp.0", dit_lib.FREQ_EMBED_DIM, d),
                       "mlp_2": linear("t_embedder.mlp.2", d, d)},
        "final_layer": {"linear": linear("final_layer.linear", d, p * p * oc),
                        "adaLN_modulation": linear("final_layer.adaLN_modulation.1", d, 2 * d)},
    }
    sizes = {"attn.qkv": (d, 3 * d), "attn.proj": (d, d), "mlp.fc1": (d, f), "mlp.fc2": (f, d),
             "adaLN_modulation.1": (d, 6 * d)}
    for l in range(model.depth):
        blk: dict = {"attn": {}, "mlp": {}}
        for tkey, path in _BLOCK_LINEARS.items():
            leaf = linear(f"blocks.{l}.{tkey}", *sizes[tkey])
            if len(path) == 1:
                blk[path[0]] = leaf
            else:
                blk[path[0]][path[1]] = leaf
        params[f"blocks_{l}"] = blk

    table = None
    if _Y_KEY in sd:
        table = _np(sd, _Y_KEY).astype(np.float32)
        used.add(_Y_KEY)
        if table.ndim != 2 or table.shape[1] != d:
            raise ValueError(f"state_dict[{_Y_KEY!r}] must have shape (rows, {d}), got {table.shape}")
    if model.num_classes == 0:
        if table is not None:
            if table.shape[0] != 1:
                raise ValueError(f"an unconditional model (num_classes=0) takes a 1-row label table, got "
                                 f"{table.shape[0]} rows: build the model with num_classes")
            params["t_embedder"]["mlp_2"]["bias"] = params["t_embedder"]["mlp_2"]["bias"] + table[0]
    else:
        k = model.num_classes
        if table is None or table.shape[0] not in (k, k + 1):
            raise ValueError(f"model.num_classes={k} needs a label table of {k} or {k + 1} rows, got "
                             f"{None if table is None else table.shape[0]}")
        if table.shape[0] == k:
            table = np.concatenate([table, np.zeros((1, d), np.float32)])
        params["y_embedder"] = {"embedding": table}

    if _POS_KEY in sd:
        used.add(_POS_KEY)
        pos = _np(sd, _POS_KEY).reshape(-1, d)
        ref = dit_lib.get_2d_sincos_pos_embed(d, model.image_size // p)
        if pos.shape != ref.shape or not np.allclose(pos, ref, atol=1e-5):
            raise ValueError(f"state_dict['pos_embed'] {pos.shape} is not the fixed sin-cos embedding of a "
                             f"{model.image_size}x{model.image_size} image with patch {p}: wrong image_size?")
    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"state_dict keys not used by this model: {unused[:8]}{' ...' if len(unused) > 8 else ''}")
    return params


def params_to_state_dict(model: dit_lib.DiT, params) -> dict[str, np.ndarray]:
    """The reference DiT state dict (numpy float32) of `model`'s parameters ('params' collection or variables).

    Load it into `models.DiT(input_size=image_size, patch_size=patch, in_channels=channels, hidden_size=hidden,
    depth=depth, num_heads=hidden // head_dim, mlp_ratio=mlp_ratio, num_classes=max(num_classes, 1),
    class_dropout_prob=0.1 if num_classes else 0, learn_sigma=learn_sigma)` (pos_embed included). A pruned model
    (fewer heads in some blocks, `dit.remove_heads`) is padded back to hidden / head_dim heads with zero weights:
    a zero head's attention output is 0 whatever its softmax, so the function is unchanged. An unconditional model
    gets a zero 1-row label table (use label 0).
    """
    dh, full = _check_model(model)
    p = dit_lib.variables(params)["params"]
    d = model.hidden
    get = lambda *path: np.asarray(_get(p, path), np.float32)
    sd: dict[str, np.ndarray] = {
        "x_embedder.proj.weight": get("x_embedder", "kernel").transpose(3, 2, 0, 1).copy(),
        "x_embedder.proj.bias": get("x_embedder", "bias"),
    }

    def linear(prefix, *path):
        sd[prefix + ".weight"] = get(*path, "kernel").T.copy()
        sd[prefix + ".bias"] = get(*path, "bias")

    for tkey, path in _TOP_LINEARS.items():
        linear(tkey, *path)
    for l, count in enumerate(model.head_counts):
        for tkey, path in _BLOCK_LINEARS.items():
            if tkey.startswith("attn."):
                continue
            linear(f"blocks.{l}.{tkey}", f"blocks_{l}", *path)
        qkv_w = np.zeros((3, full, dh, d), np.float32)    # (3, heads, head_dim, hidden), torch (out, in) order
        qkv_b = np.zeros((3, full, dh), np.float32)
        proj_w = np.zeros((d, full, dh), np.float32)      # (hidden, heads, head_dim)
        if count:
            qkv_w[:, :count] = get(f"blocks_{l}", "attn", "qkv", "kernel").T.reshape(3, count, dh, d)
            qkv_b[:, :count] = get(f"blocks_{l}", "attn", "qkv", "bias").reshape(3, count, dh)
            proj_w[:, :count] = get(f"blocks_{l}", "attn", "proj", "kernel").T.reshape(d, count, dh)
        sd[f"blocks.{l}.attn.qkv.weight"] = qkv_w.reshape(3 * d, d)
        sd[f"blocks.{l}.attn.qkv.bias"] = qkv_b.reshape(3 * d)
        sd[f"blocks.{l}.attn.proj.weight"] = proj_w.reshape(d, d)
        sd[f"blocks.{l}.attn.proj.bias"] = get(f"blocks_{l}", "attn", "proj", "bias")
    if model.num_classes > 0:
        sd[_Y_KEY] = get("y_embedder", "embedding")
    else:
        sd[_Y_KEY] = np.zeros((1, d), np.float32)
    sd[_POS_KEY] = dit_lib.get_2d_sincos_pos_embed(d, model.image_size // model.patch)[None].copy()
    return sd


# ---------------------------------------------------------------------------------------- checkpoint files

def import_dit(path, *, key: str = "auto", heads: Optional[int] = None, num_classes: Optional[int] = None,
               image_size: Optional[int] = None) -> tuple[dit_lib.DiT, dict, dict]:
    """A facebookresearch/DiT `.pt` checkpoint as (diffmem DiT, params (numpy), info).

    key: which entry holds the weights (`checkpoints.state_dict_of`); heads / num_classes override `infer_dit_fields`
    (heads are not stored; num_classes for a label table without a null row, i.e. class_dropout_prob = 0);
    image_size: the DiT's input size (for the official latent DiTs the latent size, image / 8), checked against
    pos_embed, needed when the state dict has none. info: source, key, fields, num_params.
    """
    sd, used = checkpoints.state_dict_of(checkpoints.read_pt(path), key)
    fields = infer_dit_fields(sd, heads=heads)
    if num_classes is not None:
        fields["num_classes"] = int(num_classes)
    stored = fields["image_size"]
    if image_size is not None and stored is not None and image_size != stored:
        hint = (f" (the official DiTs take latents: input size = image size / 8 = {stored})"
                if image_size == 8 * stored else "")
        raise ValueError(f"image_size={image_size} disagrees with the checkpoint's pos_embed, which is for input "
                         f"size {stored}{hint}")
    fields["image_size"] = stored if stored is not None else image_size
    if fields["image_size"] is None:
        raise ValueError("image_size must be given: the checkpoint has no pos_embed to read it from")
    model = dit_lib.DiT(**fields)
    params = state_dict_to_params(sd, model)
    return model, params, dict(source=str(path), key=used, fields=fields, num_params=dit_lib.count_params(params))


def reference_kwargs(model: dit_lib.DiT) -> dict:
    """The constructor arguments of the reference `models.DiT` that loads `params_to_state_dict(model, ...)`."""
    dh = model.resolved_head_dim
    return dict(input_size=model.image_size, patch_size=model.patch, in_channels=model.channels,
                hidden_size=model.hidden, depth=model.depth, num_heads=model.hidden // dh,
                mlp_ratio=float(model.mlp_ratio), class_dropout_prob=0.1 if model.num_classes else 0.0,
                num_classes=max(model.num_classes, 1), learn_sigma=bool(model.learn_sigma))


def export_dit(path, model: dit_lib.DiT, params) -> dict:
    """Writes the reference state dict of `model` (a pruned one as zero-padded heads) as a `.pt` at `path` and
    `reference_kwargs(model)` beside it as `<path>.json`; returns those kwargs."""
    checkpoints.write_pt(path, params_to_state_dict(model, params))
    kwargs = reference_kwargs(model)
    io.write_json(f"{path}.json", dict(reference_kwargs=kwargs, heads=list(model.head_counts),
                                       note="models.DiT(**reference_kwargs).load_state_dict(torch.load(path))"))
    return kwargs


def _get(tree, path):
    for k in path:
        if k not in tree:
            raise ValueError(f"params lack {'/'.join(path)}")
        tree = tree[k]
    return tree
