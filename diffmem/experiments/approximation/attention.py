"""Part 2 of the approximation experiment: the exact one-layer attention forms of both scores (Theorem 5.1's
contrast in parameter counts: n d numbers for the empirical score, K d + 1 for the true one)."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import rng, scores, sde
from diffmem.experiments.approximation.settings import AttentionConfig

Array = jax.Array


def attention_score(x: Array, t: Array, keys: Array, var: Array, log_weights: Optional[Array] = None) -> Array:
    """One softmax-attention layer computing a Gaussian-mixture score with isotropic components.

    x (m, d) queries, t (m,) times, keys (J, d) (= values), var (m,) the component variance v_t at time t,
    log_weights (J,) or None (equal weights). Returns (m, d):
        (alpha_t softmax_j(<alpha_t x / v_t, k_j> - alpha_t^2 ||k_j||^2 / (2 v_t) + log w_j) @ K - x) / v_t,
    the score of sum_j w_j N(alpha_t k_j, v_t I).
    """
    a = sde.alpha(t)[:, None]                                             # (m, 1)
    v = var[:, None]                                                      # (m, 1)
    logits = (a / v) * (x @ keys.T) - (a * a / (2.0 * v)) * jnp.sum(keys * keys, -1)[None]   # (m, J)
    if log_weights is not None:
        logits = logits + log_weights[None]
    attn = jax.nn.softmax(logits, -1)                                     # (m, J)
    return (a * (attn @ keys) - x) / v


def empirical_attention(data: Array) -> dict:
    """Attention parameters of the empirical score: keys = values = the n training points (n d numbers)."""
    data = jnp.asarray(data, jnp.float32)
    return {"keys": data, "cov_scale2": None, "log_weights": None}


def mixture_attention(mix: scores.GaussianMixture) -> dict:
    """Attention parameters of the true score of an isotropic equal-covariance mixture: keys = the K means,
    Sigma = s^2 I (K d + 1 numbers, + K log-weights when unequal). ValueError for other covariances."""
    ev = np.asarray(mix.eigvals)  # all eigenvalues equal <=> every Sigma_k = s^2 I, whatever the eigenvectors
    if not np.allclose(ev, ev.flat[0], rtol=1e-6):
        raise ValueError(f"mixture_attention needs one shared isotropic covariance s^2 I, got eigenvalues "
                         f"ranging {ev.min():.4g}..{ev.max():.4g}")
    w = np.asarray(mix.weights)
    lw = None if np.allclose(w, w[0]) else jnp.log(mix.weights)
    return {"keys": mix.means, "cov_scale2": float(ev.flat[0]), "log_weights": lw}


def attention_param_count(att: dict) -> int:
    """Numbers stored by the layer: keys (= values) J d, + 1 for s^2, + J log-weights when present."""
    j, d = att["keys"].shape
    return j * d + (att["cov_scale2"] is not None) + (0 if att["log_weights"] is None else j)


def attention_apply(att: dict, x: Array, t: Array) -> Array:
    """Score of the attention layer `att` (from empirical_attention / mixture_attention). x (m, d), t (m,)."""
    a2, s2 = sde.alpha(t) ** 2, sde.sigma2(t)
    var = s2 if att["cov_scale2"] is None else a2 * att["cov_scale2"] + s2
    return attention_score(x, t, att["keys"], var, att["log_weights"])


def attention_table(seed: int, a: AttentionConfig, mean_std: float) -> list:
    """Side-by-side rows: for each (d, n, t): params of the empirical vs true attention layers and the max abs /
    relative deviation from scores.empirical_score / scores.mixture_score on P_hat_t queries."""
    rows = []
    for d in a.dims:
        key = rng.stream(seed, rng.index("attention") + d)
        mix = scores.random_mixture(rng.stream(key, "mixture"), a.num_components, d, mean_std)
        for n in a.ns:
            data = scores.sample_mixture(rng.stream(key, n), mix, n)                    # (n, d)
            emp, tru = empirical_attention(data), mixture_attention(mix)
            for t in a.times:
                tq = jnp.full((a.num_queries,), float(t))
                idx = jax.random.randint(rng.stream(key, 7 * n + 1), (a.num_queries,), 0, n)
                x, _ = sde.marginal_sample(rng.stream(key, 7 * n + 2), data[idx], tq)     # (q, d)
                ref_e, ref_t = scores.empirical_score(x, tq, data), scores.mixture_score(x, tq, mix)
                got_e, got_t = attention_apply(emp, x, tq), attention_apply(tru, x, tq)
                err = lambda u, v: float(jnp.max(jnp.abs(u - v)))
                rel = lambda u, v: float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
                rows.append({"dim": d, "n": n, "K": a.num_components, "t": float(t),
                             "params_empirical": attention_param_count(emp), "params_true": attention_param_count(tru),
                             "max_abs_err_empirical": err(got_e, ref_e), "max_abs_err_true": err(got_t, ref_t),
                             "max_rel_err_empirical": rel(got_e, ref_e), "max_rel_err_true": rel(got_t, ref_t)})
    return rows
