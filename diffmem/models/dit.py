"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023) in Flax linen, with per-head gates.

A faithful port of facebookresearch/DiT `models.py` (parameter names follow the PyTorch module names, kernels
are the transposed torch weights, so official checkpoints map one-to-one):

  * patch embedding: Conv(kernel = stride = patch; computed as patchify + matmul), initialised like a Linear
    (Xavier-uniform on the flattened (C p p, hidden) kernel), zero bias;
  * FIXED 2-D sin-cos position embedding (MAE's `get_2d_sincos_pos_embed`), a trace-time constant: it is not a
    parameter, so neither the optimizer nor weight decay ever sees it;
  * timestep embedder: the DiT sinusoidal embedding (dim 256, [cos, sin], max period 1e4) of 1000 u, where u in
    [0, 1] is the unit time of `diffmem.sde.ddpm_time` (u = 1 is DDPM step 1000), then Dense-SiLU-Dense,
    weights N(0, 0.02^2);
  * label embedder (num_classes > 0): a (num_classes + 1, hidden) table, N(0, 0.02^2); index num_classes is the
    null label of classifier-free guidance (`drop_labels` is DiT's `token_drop`);
  * adaLN-Zero blocks: 6 modulation vectors from Dense(SiLU(c)) zero-initialised, LayerNorm without affine
    (eps 1e-6), multi-head self-attention with qkv bias, MLP (ratio 4, tanh-GELU); x + gate * branch;
  * final layer: adaLN (2 vectors, zero-init) + zero-initialised linear, then unpatchify;
  * every other Dense is Xavier-uniform with zero bias (DiT's `_basic_init`).

Additions for pruning (arXiv 2511.03202, Section 6.2, Algorithms 1 and 2): attention is written out (einsum +
softmax) so a gate `head_mask[l, h]` multiplies the output of head h of block l exactly, before the output
projection; the gradient w.r.t. `head_mask` at all-ones is the importance signal of Algorithm 2. A model may have
different head counts per block (`heads` a tuple): what `diffmem.pruning.remove_heads` returns.

At init the model is the zero function and every block is the identity (adaLN-Zero).

Speed on XLA:CPU (benchmarks/dit_vs_pytorch.py; same sums as the plain formulation, tests/test_dit_formulation.py):
every residual-stream value passes through `cotangent_barrier` (without it XLA recomputes the residual gradient
chain inside every consumer: O(depth^2) backward work); Dense layers multiply 2-D flattened inputs (`Dense`: the
weight gradient then needs no transposed copy of the activation gradient); the patch embedding is a matmul
(`PatchEmbed`), not a strided convolution; attention's backward is written out (`attention_core`).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

Array = jax.Array

FREQ_EMBED_DIM = 256     # DiT TimestepEmbedder.frequency_embedding_size
TIME_SCALE = 1000.0      # DiT sees DDPM step indices in [0, 1000); the unit time u maps to 1000 u
LN_EPS = 1e-6

# Sizes of DiT paper Table 1 (depth, hidden, heads) plus two CPU sizes of ours:
#   T (tiny): depth 4, hidden 64, heads 4 (head_dim 16)  ~0.3M params at 32x32x3, patch 2
#   M (mini): depth 6, hidden 128, heads 4 (head_dim 32) ~1.9M params at 32x32x3, patch 2
_SIZES = {
    "T": dict(depth=4, hidden=64, heads=4),
    "M": dict(depth=6, hidden=128, heads=4),
    "S": dict(depth=12, hidden=384, heads=6),
    "B": dict(depth=12, hidden=768, heads=12),
    "L": dict(depth=24, hidden=1024, heads=16),
    "XL": dict(depth=28, hidden=1152, heads=16),
}
DIT_CONFIGS: dict[str, dict[str, int]] = {
    f"{size}/{patch}": dict(patch=patch, **kw) for size, kw in _SIZES.items() for patch in (2, 4, 8)}


def dit_kwargs(name: str) -> dict[str, int]:
    """DiT size by name ('S/2', 'XL/8', 'T/2', ...) -> dict(patch, depth, hidden, heads) for `DiT(**kw, ...)`."""
    if name not in DIT_CONFIGS:
        raise ValueError(f"DiT config name must be one of {sorted(DIT_CONFIGS)}, got {name!r}")
    return dict(DIT_CONFIGS[name])


def variables(params) -> dict:
    """The flax variables dict {'params': ...} from either it or the bare 'params' collection of a DiT."""
    if isinstance(params, dict) and "params" in params and "x_embedder" not in params:
        return params
    return {"params": params}


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree (works on ShapeDtypeStructs from jax.eval_shape)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


# ---------------------------------------------------------------- pure pieces

def timestep_embedding(t: Array, dim: int = FREQ_EMBED_DIM, max_period: float = 10000.0) -> Array:
    """DiT's sinusoidal timestep embedding: t (b,) float -> (b, dim), [cos(t f_i), sin(t f_i)], f_i = P^(-i/half)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # (half,)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]                           # (b, half)
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)                        # (b, 2 half)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


@functools.lru_cache(maxsize=None)
def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE/DiT fixed 2-D sin-cos position embedding -> (grid_size**2, embed_dim) float32 numpy constant.

    Tokens are in row-major (row, col) order; as in the reference code (meshgrid(w, h)) the first half of the
    channels encodes the column index and the second half the row index, each as [sin, cos].
    """
    if embed_dim % 4:
        raise ValueError(f"hidden must be divisible by 4 for the 2-D sin-cos embedding, got {embed_dim}")
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # (2, gs, gs): grid[0] = column, grid[1] = row

    def emb_1d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000 ** omega                                # (dim/2,)
        out = np.einsum("m,d->md", pos.reshape(-1), omega)          # (M, dim/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)   # (M, dim)

    emb = np.concatenate([emb_1d(embed_dim // 2, grid[0]), emb_1d(embed_dim // 2, grid[1])], axis=1)
    out = emb.astype(np.float32)
    out.flags.writeable = False
    return out


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN modulation x (b, n, d) * (1 + scale (b, d)) + shift (b, d)."""
    return x * (1 + scale[:, None]) + shift[:, None]


@jax.custom_vjp
def cotangent_barrier(x: Array) -> Array:
    """The identity; its backward pass makes XLA:CPU compute the incoming cotangent ONCE.

    Every residual-stream value of the DiT goes through this. Without it, XLA:CPU's fusion pass treats the long
    chain of cheap elementwise ops that accumulates the residual stream's cotangent (adds, LayerNorm-backward
    multiplies) as free to duplicate and fuses the whole chain, from the output back to block l, into every
    consumer at block l (transposes for the weight gradients, bias/gate reductions, ...): a training step of depth
    L recomputed O(L^2) block backwards (measured: 5/6 of the backward of a depth-4 DiT at 16 tokens). The
    backward here divides the cotangent by a runtime 1 that the compiler cannot fold, 1 + 0 * min(|g|, 1), which
    is exact for every float (finite, +-inf, NaN; subnormals are flushed to zero, as by any XLA:CPU arithmetic)
    and costs one elementwise pass; XLA does not duplicate divides
    into several consumers, so the cotangent is materialised there. Only on CPU (jax.lax.platform_dependent); other
    backends get the plain identity.
    """
    return x


def _cotangent_barrier_fwd(x):
    return x, None


def _cotangent_barrier_bwd(_, g):
    one = 1.0 + 0.0 * jnp.minimum(jnp.abs(g), 1.0)   # == 1 exactly; min(inf, 1) = 1, NaN stays NaN
    return (jax.lax.platform_dependent(g, one, cpu=lambda g, o: g / o, default=lambda g, o: g),)


cotangent_barrier.defvjp(_cotangent_barrier_fwd, _cotangent_barrier_bwd)


def drop_labels(key: Array, y: Array, num_classes: int, p: float) -> Array:
    """DiT `token_drop` for classifier-free guidance: each label becomes the null index num_classes w.p. p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label drop probability p must be in [0, 1], got {p}")
    drop = jax.random.uniform(key, jnp.shape(y)) < p
    return jnp.where(drop, num_classes, y)


# ---------------------------------------------------------------- modules

_xavier = nn.initializers.xavier_uniform()
# PatchEmbed is initialised "like nn.Linear": Xavier on the (C*p*p, hidden) view of the conv kernel.
_patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
_normal02 = nn.initializers.normal(stddev=0.02)
_zeros = nn.initializers.zeros


class Bias(nn.Module):
    """A lone bias vector: what the output projection of an attention layer with no heads left reduces to."""
    features: int

    @nn.compact
    def __call__(self, shape_prefix: tuple[int, ...], dtype) -> Array:
        b = self.param("bias", _zeros, (self.features,))
        return jnp.broadcast_to(b.astype(dtype), shape_prefix + (self.features,))


class Dense(nn.Module):
    """`flax.linen.Dense` (same parameters 'kernel' (in, out) and 'bias', same initialisation) that multiplies the
    inputs flattened to 2-D, (prod(leading dims), in) @ (in, out). Same sums; the gradient's weight product is then
    the 2-D x^T g, which XLA:CPU runs straight from g, where the (b, n, in) form made it transpose g into a copy
    first (one extra pass over every activation gradient of the network)."""
    features: int
    kernel_init: Any = _xavier
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:  # x (..., in) -> (..., features)
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", _zeros, (self.features,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel) + bias                     # (prod(lead), features)
        return y.reshape(x.shape[:-1] + (self.features,))


class PatchEmbed(nn.Module):
    """DiT PatchEmbed, a Conv with kernel = stride = patch, computed as patchify + one matmul (the same sums; XLA:CPU
    runs a matmul and its gradient much faster than a strided convolution). The kernel keeps the Conv's shape
    (p, p, C, hidden) and initialisation, so the parameters are those of `nn.Conv`."""
    patch: int
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:  # x (b, H, W, C) -> (b, (H/p) (W/p), hidden), tokens row-major
        b, s, w, c = x.shape
        p, gh, gw = self.patch, s // self.patch, w // self.patch
        kernel = self.param("kernel", _patch_init, (p, p, c, self.hidden))
        bias = self.param("bias", _zeros, (self.hidden,))
        x = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
        return jnp.dot(x.astype(self.dtype), kernel.reshape(p * p * c, self.hidden).astype(self.dtype)) + \
            bias.astype(self.dtype)


@jax.custom_vjp
def attention_core(q: Array, k: Array, v: Array) -> Array:
    """softmax(q k^T) v for every (example, head): q (already scaled by head_dim^-1/2), k, v (b, n, H, Dh) ->
    (b, n, H, Dh). Softmax in float32 (the products in the inputs' dtype).

    The same function as autodiff of the plain formulation; the backward is written out (the standard softmax
    attention gradient, with the row sums of dP * P taken as the row sums of dO * O, FlashAttention's identity):
        dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K,  dK = dS^T Q,
    so that XLA:CPU gets one batched product per term and no (b, H, n, n) temporaries beyond P and dS. Measured
    against autodiff of the plain formulation, both compiled in one process on 2 CPU cores (the training step of
    benchmarks/dit_vs_pytorch.py's configs): 1.18x less CPU time per step for prune_dit's cpu preset (16 tokens, 8
    heads), 1.05x at 16x16-p2 (64 tokens), no change at 32x32x3-p4. Checked against autodiff in
    tests/test_dit_formulation.py.
    """
    return _attention_fwd(q, k, v)[0]


def _attention_fwd(q, k, v):
    dtype = q.dtype
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)            # (b, H, n, n)
    p = jax.nn.softmax(s, axis=-1).astype(dtype)                            # (b, H, n, n) softmax rows
    o = jnp.einsum("bhqk,bkhd->bqhd", p, v)                                 # (b, n, H, Dh)
    return o, (q, k, v, p, o)


def _attention_bwd(res, g):  # g (b, n, H, Dh) = dL/dO
    q, k, v, p, o = res
    dtype = q.dtype
    dv = jnp.einsum("bhqk,bqhd->bkhd", p, g)                                # (b, n, H, Dh)
    dp = jnp.einsum("bqhd,bkhd->bhqk", g, v).astype(jnp.float32)            # (b, H, n, n)
    row = jnp.einsum("bqhd,bqhd->bhq", g.astype(jnp.float32), o.astype(jnp.float32))[..., None]  # (b, H, n, 1)
    ds = (p.astype(jnp.float32) * (dp - row)).astype(dtype)                 # (b, H, n, n)
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k)
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q)
    return dq, dk, dv


attention_core.defvjp(_attention_fwd, _attention_bwd)


def gated_attention(qkv: Array, head_mask: Array, heads: int, head_dim: int) -> Array:
    """Multi-head self-attention with a gate per head on its output: qkv (b, n, 3 H Dh) laid out (3, H, Dh) on the
    last axis (timm), head_mask (H,) -> (b, n, H Dh), head h's output times head_mask[h]. Softmax in float32."""
    b, n, _ = qkv.shape
    dtype = qkv.dtype
    qkv = qkv.reshape(b, n, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]                     # (b, n, H, Dh)
    o = attention_core(q * head_dim ** -0.5, k, v)                          # (b, n, H, Dh)
    o = o * head_mask.astype(dtype)[None, None, :, None]                    # per-head output gate
    return o.reshape(b, n, heads * head_dim)


class Attention(nn.Module):
    """timm Attention (qkv bias, scale head_dim^-1/2) with a gate per head on its output before `proj`.

    qkv kernel (hidden, 3 * heads * head_dim) is laid out (3, heads, head_dim) on its output axis, as in timm;
    proj kernel (heads * head_dim, hidden): rows [h*head_dim, (h+1)*head_dim) belong to head h.
    """
    hidden: int
    heads: int
    head_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, head_mask: Array) -> Array:  # x (b, n, hidden), head_mask (heads,)
        b, n, _ = x.shape
        if self.heads == 0:  # every head removed: the branch is the projection bias alone
            return Bias(self.hidden, name="proj")((b, n), self.dtype)
        inner = self.heads * self.head_dim
        qkv = Dense(3 * inner, kernel_init=_xavier, dtype=self.dtype, name="qkv")(x)   # (b, n, 3 H Dh)
        o = gated_attention(qkv, head_mask, self.heads, self.head_dim)                         # (b, n, H Dh)
        return Dense(self.hidden, kernel_init=_xavier, dtype=self.dtype, name="proj")(o)


class Mlp(nn.Module):
    """timm Mlp: fc1 -> tanh-GELU -> fc2."""
    hidden: int
    mlp_hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = Dense(self.mlp_hidden, kernel_init=_xavier, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=True)
        return Dense(self.hidden, kernel_init=_xavier, dtype=self.dtype, name="fc2")(x)


def _layer_norm(dtype, name):
    return nn.LayerNorm(epsilon=LN_EPS, use_bias=False, use_scale=False, use_fast_variance=False,
                        dtype=dtype, name=name)


class DiTBlock(nn.Module):
    """adaLN-Zero DiT block: x + g_msa * Attn(mod(LN(x))) then x + g_mlp * MLP(mod(LN(x)))."""
    hidden: int
    heads: int
    head_dim: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, c: Array, head_mask: Array) -> Array:  # x (b, n, d), c (b, d), mask (heads,)
        mod = Dense(6 * self.hidden, kernel_init=_zeros, dtype=self.dtype,
                       name="adaLN_modulation")(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        h = modulate(_layer_norm(self.dtype, "norm1")(x), shift_msa, scale_msa)
        x = x + gate_msa[:, None] * Attention(self.hidden, self.heads, self.head_dim, self.dtype,
                                              name="attn")(h, head_mask)
        x = cotangent_barrier(x)
        h = modulate(_layer_norm(self.dtype, "norm2")(x), shift_mlp, scale_mlp)
        x = x + gate_mlp[:, None] * Mlp(self.hidden, int(self.hidden * self.mlp_ratio), self.dtype,
                                        name="mlp")(h)
        return x


class TimestepEmbedder(nn.Module):
    """DiT TimestepEmbedder: sinusoidal(t) (256) -> Dense -> SiLU -> Dense, weights N(0, 0.02^2)."""
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: Array) -> Array:  # t (b,) DDPM step (float) -> (b, hidden)
        e = timestep_embedding(t).astype(self.dtype)                          # (b, 256)
        e = Dense(self.hidden, kernel_init=_normal02, dtype=self.dtype, name="mlp_0")(e)
        return Dense(self.hidden, kernel_init=_normal02, dtype=self.dtype, name="mlp_2")(nn.silu(e))


class FinalLayer(nn.Module):
    """DiT FinalLayer: adaLN (shift, scale; zero-init) on a non-affine LayerNorm, then a zero-init linear."""
    hidden: int
    out_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, c: Array) -> Array:  # x (b, n, d), c (b, d) -> (b, n, out_features)
        mod = Dense(2 * self.hidden, kernel_init=_zeros, dtype=self.dtype, name="adaLN_modulation")(nn.silu(c))
        shift, scale = jnp.split(mod, 2, axis=-1)
        x = modulate(_layer_norm(self.dtype, "norm_final")(x), shift, scale)
        return Dense(self.out_features, kernel_init=_zeros, dtype=self.dtype, name="linear")(x)


class DiT(nn.Module):
    """Diffusion Transformer for epsilon prediction on NHWC images (Peebles & Xie 2023).

    Fields:
      image_size, channels: input (b, image_size, image_size, channels); image_size % patch == 0.
      patch, hidden, depth: DiT sizes (see `DIT_CONFIGS`).
      heads: heads per block, an int or a length-`depth` tuple (a pruned model; entries may be 0).
      head_dim: per-head width; None = hidden // heads (needs equal, non-zero heads dividing hidden).
      mlp_ratio: MLP hidden = int(hidden * mlp_ratio).
      num_classes: 0 = unconditional; > 0 adds a (num_classes + 1)-row label table (row num_classes = null).
      learn_sigma: output 2 * channels (eps, variance interpolation) as in DiT; default eps only.
      dtype: computation dtype (params stay float32; softmax in float32; the output is float32).
    """
    image_size: int
    channels: int
    patch: int
    hidden: int
    depth: int
    heads: int | tuple[int, ...]
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    num_classes: int = 0
    learn_sigma: bool = False
    dtype: Any = jnp.float32

    # -- static structure (valid on unbound modules)
    @property
    def head_counts(self) -> tuple[int, ...]:
        """Heads of every block, a length-depth tuple (validates the fields)."""
        self.check_fields()
        return _head_counts(self)

    @property
    def max_heads(self) -> int:
        """Width of a head mask: max(head_counts) (0 if every head is gone)."""
        return max(self.head_counts, default=0)

    @property
    def resolved_head_dim(self) -> int:
        self.check_fields()
        return _head_dim(self)

    @property
    def out_channels(self) -> int:
        return 2 * self.channels if self.learn_sigma else self.channels

    def check_fields(self) -> None:
        """Raises ValueError on inconsistent fields."""
        for f in ("image_size", "channels", "patch", "hidden", "depth"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"DiT.{f} must be a positive int, got {v!r}")
        if self.image_size % self.patch:
            raise ValueError(f"DiT.image_size ({self.image_size}) must be divisible by DiT.patch ({self.patch})")
        if self.hidden % 4:
            raise ValueError(f"DiT.hidden must be divisible by 4 (2-D sin-cos position embedding), "
                             f"got {self.hidden}")
        if self.num_classes < 0:
            raise ValueError(f"DiT.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"DiT.mlp_ratio must be > 0, got {self.mlp_ratio}")
        counts = _head_counts(self)
        if self.head_dim is None:
            if isinstance(self.heads, (int, np.integer)):
                if self.heads < 1 or self.hidden % self.heads:
                    raise ValueError(f"DiT.heads must be >= 1 and divide hidden ({self.hidden}) when head_dim "
                                     f"is None, got heads={self.heads}")
            elif len(set(counts)) != 1 or counts[0] < 1 or self.hidden % counts[0]:
                raise ValueError(f"DiT.head_dim must be given when heads differ across layers, are 0, or do not "
                                 f"divide hidden ({self.hidden}); got heads={self.heads}")
        elif not isinstance(self.head_dim, (int, np.integer)) or self.head_dim < 1:
            raise ValueError(f"DiT.head_dim must be a positive int or None, got {self.head_dim!r}")

    @nn.compact
    def __call__(self, x: Array, u: Array, y: Array | None = None, head_mask: Array | None = None) -> Array:
        """eps prediction.

        Args:
          x: (b, H, W, C) noisy images (NHWC).
          u: (b,) (or scalar) unit time in [0, 1] (`diffmem.sde.ddpm_time`); embedded as DiT step 1000 u.
          y: (b,) int labels in [0, num_classes] (num_classes = null label); None = null label. Must be None
             for an unconditional model.
          head_mask: (depth, max_heads) gates on each head's output (None = all ones); row l uses its first
             head_counts[l] entries.
        Returns: (b, H, W, C) (or 2C if learn_sigma), float32.
        """
        self.check_fields()
        counts, dh = _head_counts(self), _head_dim(self)
        s, p, d = self.image_size, self.patch, self.hidden
        if x.ndim != 4 or x.shape[1:] != (s, s, self.channels):
            raise ValueError(f"x must have shape (b, {s}, {s}, {self.channels}) (NHWC), got {x.shape}")
        b = x.shape[0]
        u = jnp.asarray(u)
        if u.ndim == 0:
            u = jnp.broadcast_to(u, (b,))
        if u.shape != (b,):
            raise ValueError(f"u must have shape ({b},) or (), got {u.shape}")
        mh = max(counts, default=0)
        if head_mask is None:
            head_mask = jnp.ones((self.depth, mh), self.dtype)
        head_mask = jnp.asarray(head_mask)
        if head_mask.shape != (self.depth, mh):
            raise ValueError(f"head_mask must have shape (depth, max_heads) = {(self.depth, mh)}, "
                             f"got {head_mask.shape}")
        if self.num_classes > 0:
            if y is None:
                y = jnp.full((b,), self.num_classes, jnp.int32)
            y = jnp.asarray(y)
            if y.shape != (b,) or not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(f"y must be an int array of shape ({b},), got {y.dtype} {y.shape}")
            _check_labels(y, self.num_classes)
        elif y is not None:
            raise ValueError("y must be None for an unconditional DiT (num_classes=0)")

        # patch embedding + fixed position embedding
        g = s // p
        h = PatchEmbed(p, d, self.dtype, name="x_embedder")(x)                 # (b, g g, d)
        h = h + jnp.asarray(get_2d_sincos_pos_embed(d, g), self.dtype)[None]

        # conditioning c = t_emb (+ y_emb)
        c = TimestepEmbedder(d, self.dtype, name="t_embedder")(TIME_SCALE * u)  # (b, d)
        if self.num_classes > 0:
            c = c + nn.Embed(self.num_classes + 1, d, embedding_init=_normal02, dtype=self.dtype,
                             name="y_embedder")(y)

        for l in range(self.depth):
            h = cotangent_barrier(h)
            h = DiTBlock(d, counts[l], dh, self.mlp_ratio, self.dtype, name=f"blocks_{l}")(
                h, c, head_mask[l, :counts[l]])

        # final layer + unpatchify
        oc = self.out_channels
        h = cotangent_barrier(h)
        h = FinalLayer(d, p * p * oc, self.dtype, name="final_layer")(h, c)   # (b, n, p p oc)
        h = h.reshape(b, g, g, p, p, oc)
        h = jnp.einsum("nhwpqc->nhpwqc", h).reshape(b, s, s, oc)               # (b, H, W, oc)
        return h.astype(jnp.float32)


def _head_counts(model: DiT) -> tuple[int, ...]:
    if isinstance(model.heads, (int, np.integer)):
        return (int(model.heads),) * model.depth
    counts = tuple(model.heads)
    if len(counts) != model.depth or any(not isinstance(c, (int, np.integer)) or c < 0 for c in counts):
        raise ValueError(f"DiT.heads must be an int or a tuple of {model.depth} (depth) ints >= 0, "
                         f"got {model.heads!r}")
    return tuple(int(c) for c in counts)


def _head_dim(model: DiT) -> int:
    if model.head_dim is not None:
        return int(model.head_dim)
    return model.hidden // _head_counts(model)[0]


def _check_labels(y: Array, num_classes: int) -> None:
    try:
        lo, hi = int(jnp.min(y)), int(jnp.max(y))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return  # traced: checked by the caller at the boundary
    if lo < 0 or hi > num_classes:
        raise ValueError(f"y must be in [0, {num_classes}] ({num_classes} = null label), got [{lo}, {hi}]")
