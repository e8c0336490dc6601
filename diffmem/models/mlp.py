"""Time-conditioned ReLU MLP score network (the network class of Theorem 5.1, arXiv 2511.03202 Section 5).

    h_0 = [x, emb(t)]                       (d + e,)   time is an input, as in Theorem 5.1
    h_l = relu(W_l h_{l-1} + b_l)            (width,)   l = 1..depth (depth = number of hidden layers)
    out = W_o h_depth + b_o                  (d,)

Time embedding `time_embed` (e features):
  'sinusoidal' (default): [sin(f_j log t), cos(f_j log t)]_j, e = embed_dim, with embed_dim/2 frequencies
                          f_j log-spaced in [1/8, 8] (log t spans ~[-9, 2.3] for t in [1e-4, 10]);
  'log':                  log t concatenated (e = 1);
  'raw':                  t concatenated (e = 1; the literal network class of Theorem 5.1).

Output parametrisation `output` (how `out` becomes a score):
  'eps' (default): out predicts the noise, score = -out / sigma_t. The DSM regression target of the network is
                   then eps = (x_t - alpha_t x0) / sigma_t, of unit scale at every t, which trains well; the
                   sigma_t^2-weighted DSM loss is exactly ||out - eps||^2.
  'score':         score = out (the plain network class; the target blows up like 1/sigma_t at small t).
  'x0':            out predicts the clean point (denoiser D), score = (alpha_t out - x) / sigma_t^2.
  'edm':           EDM preconditioning (Karras et al. 2022) in the OU clock: with y = x / alpha_t and
                   s_e = sigma_t / alpha_t, the network sees c_in y and D = c_skip y + c_out out, where
                   c_in = 1/sqrt(sd^2 + s_e^2), c_skip = sd^2/(sd^2 + s_e^2), c_out = s_e sd c_in
                   (sd = sigma_data, the data's per-coordinate std); score = (alpha_t D - x) / sigma_t^2.
                   D ~ y at small t and ~ out at large t: the best-training choice in diffmem's Gaussian-
                   mixture labs (the 'eps' net there did not even learn the identity at t = T within 2000
                   steps; see diffmem/gmm_lab.py). With out = 0 the score is that of N(0, sd^2 I) at time t.

Use through the pure `make_apply(model)(params, x, t) -> score` and `init_params(model, key)`.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmem import sde

Array = jax.Array
TIME_EMBEDS = ("sinusoidal", "log", "raw")
OUTPUTS = ("eps", "score", "edm", "x0")
MIN_FREQ, MAX_FREQ = 1.0 / 8.0, 8.0


def time_features(t: Array, kind: str = "sinusoidal", embed_dim: int = 16) -> Array:
    """Time embedding (see module docstring). t (b,) > 0 -> (b, e)."""
    t = jnp.asarray(t, jnp.float32)
    if kind == "raw":
        return t[:, None]
    s = jnp.log(t)                                                          # (b,)
    if kind == "log":
        return s[:, None]
    if kind == "sinusoidal":
        freqs = jnp.geomspace(MIN_FREQ, MAX_FREQ, embed_dim // 2)           # (e/2,)
        arg = s[:, None] * freqs[None]                                      # (b, e/2)
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], -1)            # (b, e)
    raise ValueError(f"time_embed must be one of {TIME_EMBEDS}, got {kind!r}")


def time_dim(kind: str = "sinusoidal", embed_dim: int = 16) -> int:
    """Number of time features e of `time_features`."""
    if kind not in TIME_EMBEDS:
        raise ValueError(f"time_embed must be one of {TIME_EMBEDS}, got {kind!r}")
    return embed_dim if kind == "sinusoidal" else 1


def check_mlp_args(dim: int, width: int, depth: int, time_embed: str = "sinusoidal", embed_dim: int = 16,
                   output: str = "eps") -> None:
    """Raises ValueError naming the first bad argument of `ScoreMLP`."""
    for name, v in (("dim", dim), ("width", width), ("depth", depth)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"ScoreMLP.{name} must be an int >= 1, got {v!r}")
    if time_embed not in TIME_EMBEDS:
        raise ValueError(f"ScoreMLP.time_embed must be one of {TIME_EMBEDS}, got {time_embed!r}")
    if time_embed == "sinusoidal" and (not isinstance(embed_dim, int) or embed_dim < 2 or embed_dim % 2):
        raise ValueError(f"ScoreMLP.embed_dim must be an even int >= 2 for time_embed='sinusoidal', "
                         f"got {embed_dim!r}")
    if output not in OUTPUTS:
        raise ValueError(f"ScoreMLP.output must be one of {OUTPUTS}, got {output!r}")


def mlp_param_count(dim: int, width: int, depth: int, time_embed: str = "sinusoidal",
                    embed_dim: int = 16) -> int:
    """Closed-form parameter count: (d+e) W + W  +  (depth-1) (W^2 + W)  +  W d + d."""
    e = time_dim(time_embed, embed_dim)
    return (dim + e) * width + width + (depth - 1) * (width * width + width) + width * dim + dim


class ScoreMLP(nn.Module):
    """ReLU MLP s_theta(x, t): x (b, d), t (b,) -> score (b, d). See the module docstring."""
    dim: int
    width: int
    depth: int
    time_embed: str = "sinusoidal"
    embed_dim: int = 16
    output: str = "eps"
    sigma_data: float = 1.0

    @nn.compact
    def __call__(self, x: Array, t: Array) -> Array:
        check_mlp_args(self.dim, self.width, self.depth, self.time_embed, self.embed_dim, self.output)
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"ScoreMLP input x must have shape (b, dim={self.dim}), got {x.shape}")
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])           # (b,)
        if self.output == "edm":
            a, se = sde.alpha(t)[:, None], (sde.sigma(t) / sde.alpha(t))[:, None]   # VE scale sigma_t / alpha_t
            sd2 = self.sigma_data ** 2
            c_in, c_skip = 1.0 / jnp.sqrt(sd2 + se ** 2), sd2 / (sd2 + se ** 2)
            c_out = se * self.sigma_data * c_in
            y = x / a                                                         # (b, d) VE-scaled input
            x = c_in * y
        h = jnp.concatenate([x, time_features(t, self.time_embed, self.embed_dim).astype(x.dtype)], -1)
        for i in range(self.depth):
            h = nn.relu(nn.Dense(self.width, name=f"hidden_{i}")(h))          # (b, W)
        out = nn.Dense(self.dim, name="out")(h)                              # (b, d)
        if self.output == "eps":
            return -out / sde.sigma(t)[:, None]
        if self.output == "x0":
            a = sde.alpha(t)[:, None]
            return (a * out - x) / sde.sigma2(t)[:, None]
        if self.output == "edm":
            den = c_skip * y + c_out * out                                    # (b, d) denoiser D(x, t) ~ E[x0|x]
            return (a * den - a * y) / sde.sigma2(t)[:, None]
        return out


@functools.partial(jax.jit, static_argnums=0)
def init_params(model: ScoreMLP, key: Array) -> dict:
    """Parameters of `model` (the 'params' collection) for inputs of dimension model.dim (one compiled program per
    model, instead of one per operation of an eager initialisation)."""
    x = jnp.zeros((1, model.dim), jnp.float32)
    return model.init(key, x, jnp.ones((1,), jnp.float32))["params"]


def make_apply(model: ScoreMLP) -> Callable[[dict, Array, Array], Array]:
    """Pure apply(params, x (b, d), t (b,) or ()) -> score (b, d)."""
    def apply(params, x, t):
        return model.apply({"params": params}, x, t)
    return apply


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def width_for_params(target: int, dim: int, depth: int, time_embed: str = "sinusoidal",
                     embed_dim: int = 16) -> int:
    """Smallest width whose `mlp_param_count` is >= target (for sweeps specified by parameter count)."""
    if target < 1:
        raise ValueError(f"target parameter count must be >= 1, got {target}")
    count = lambda w: mlp_param_count(dim, w, depth, time_embed, embed_dim)
    hi = 1
    while count(hi) < target:
        hi *= 2
    lo = hi // 2  # count(lo) < target (or lo = 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(mid) >= target else (mid, hi)
    return hi
