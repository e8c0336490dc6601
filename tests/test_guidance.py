"""diffmem.guidance against facebookresearch/DiT's forward_with_cfg (PyTorch outputs in tests/fixtures/dit_pt, made by
tests/fixtures/make_dit_pt.py; no torch needed), the DDPM discrete time input, and guided sampling through the
sampling driver (per-class key streams)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import guidance, image_diffusion as idf, rng, sde, torch_dit
from diffmem.config import SamplerConfig

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "dit_pt")
Z = np.load(os.path.join(FIX, "outputs.npz"))
META = json.loads(bytes(Z["meta"]).decode())
COND = ("cond_p2_latent", "cond_p4_rgb")
# jit-compiled (a first eager call costs more: every op compiles on its own); model and guided_channels static
guided_output = jax.jit(guidance.guided_output, static_argnums=(0, 6))
U_MIN = 1e-3


def _load(name):
    model, params, _ = torch_dit.import_dit(os.path.join(FIX, f"{name}.pt"),
                                              heads=META["cases"][name]["num_heads"])
    return model, params


def _half(name):
    x = jnp.asarray(Z[f"{name}/x_half"].astype(np.float32).transpose(0, 2, 3, 1))
    return x, jnp.asarray(Z[f"{name}/u"][:META["half"]]), jnp.asarray(Z[f"{name}/y_half"])


@pytest.mark.parametrize("name", COND)
@pytest.mark.parametrize("scale", [1.5, 4.0])
def test_matches_forward_with_cfg(name, scale):
    """The conditional half of forward_with_cfg, every output channel: guided first 3 (on the latent model: 3 of
    the 4 eps channels), conditional elsewhere (the 4th eps channel, the learned-sigma channels)."""
    model, params = _load(name)
    x, u, y = _half(name)
    ref = Z[f"{name}/cfg{scale}"].transpose(0, 2, 3, 1)[:len(x)]
    got = np.asarray(guided_output(model, params, x, u, y, scale))
    assert got.shape == ref.shape == x.shape[:3] + (2 * model.channels,)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5 * np.abs(ref).max())


def test_which_channels_are_guided():
    model, params = _load("cond_p2_latent")
    x, u, y = _half("cond_p2_latent")
    fwd = jax.jit(model.apply)
    apply = lambda labels: np.asarray(fwd({"params": params}, x, u, labels))
    cond, uncond = apply(y), apply(jnp.full_like(y, model.num_classes))
    s = 4.0
    standard = uncond + s * (cond - uncond)
    ref_style = np.asarray(guided_output(model, params, x, u, y, s))            # guided_channels=3
    all_eps = np.asarray(guided_output(model, params, x, u, y, s, guided_channels=None))
    tol = dict(rtol=1e-5, atol=1e-5 * np.abs(standard).max())
    np.testing.assert_allclose(ref_style[..., :3], standard[..., :3], **tol)
    np.testing.assert_allclose(ref_style[..., 3:], cond[..., 3:], **tol)                 # eps channel 3 unguided
    np.testing.assert_allclose(all_eps[..., :4], standard[..., :4], **tol)
    np.testing.assert_allclose(all_eps[..., 4:], cond[..., 4:], **tol)                   # sigma channels: cond
    assert np.abs(all_eps[..., 3] - ref_style[..., 3]).max() > 0.1
    np.testing.assert_allclose(np.asarray(guided_output(model, params, x, u, y, 1.0)), cond, **tol)
    np.testing.assert_allclose(np.asarray(guided_output(model, params, x, u, y, 0.0))[..., :3],
                               uncond[..., :3], **tol)


def test_discrete_time_input_is_the_ddpm_noise_level():
    k = np.array([0, 1, 10, 500, 999])
    t = jnp.asarray(guidance.DDPM_STEP_TIMES[k], jnp.float32)
    np.testing.assert_allclose(np.asarray(guidance.discrete_step_u(t)) * 1000, k, atol=2e-3)
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[k]
    np.testing.assert_allclose(np.asarray(sde.sigma(t)) ** 2, 1 - alpha_bar, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(guidance.discrete_time(jnp.asarray(k / 1000, jnp.float32))),
                               guidance.DDPM_STEP_TIMES[k], rtol=1e-5)
    u = jnp.linspace(0.0, 0.999, 37)
    np.testing.assert_allclose(np.asarray(guidance.discrete_step_u(guidance.discrete_time(u))), np.asarray(u),
                               atol=2e-6)
    # halfway between steps 10 and 11: step 10.5
    mid = jnp.float32(0.5 * (guidance.DDPM_STEP_TIMES[10] + guidance.DDPM_STEP_TIMES[11]))
    assert abs(float(guidance.discrete_step_u(mid)) * 1000 - 10.5) < 1e-3


@pytest.mark.parametrize("time_input", guidance.TIME_INPUTS)
def test_guided_score_is_minus_guided_eps_over_sigma(time_input):
    model, params = _load("cond_p4_rgb")
    x, _, y = _half("cond_p4_rgb")
    t = jnp.asarray([0.01, 3.0], jnp.float32)
    u = sde.ddpm_time_inverse(t) if time_input == "continuous" else guidance.discrete_step_u(t)
    eps = np.asarray(guided_output(model, params, x, u, y, 4.0))[..., :3]
    score = guidance.guided_score_fn(model, params, y, 4.0, time_input=time_input)
    got = np.asarray(jax.jit(score)(x, t))
    want = -eps / np.asarray(sde.sigma(t))[:, None, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


CFG = SamplerConfig(num_samples=6, steps=3, method="sde", batch_size=4, denoise=True)


def test_sampling_uses_per_class_streams_and_the_null_label_is_unguided():
    model, params = _load("cond_p4_rgb")
    key = jax.random.key(3)
    labels = np.array([1, 0, 1, 2, 0, 1])
    out = guidance.sample(model, params, key, labels, CFG, U_MIN, scale=4.0)
    assert out.shape == (6, 8, 8, 3) and np.isfinite(out).all()
    for c in (0, 1, 2):                          # the samples of class c alone: the same, in the same rank order
        n = int((labels == c).sum())
        alone = guidance.sample(model, params, key, c, CFG.__class__(**{**CFG.to_dict(), "num_samples": n}),
                                U_MIN, scale=4.0)
        np.testing.assert_allclose(out[labels == c], alone, rtol=1e-5, atol=1e-5)
    small = guidance.sample(model, params, key, labels, CFG.__class__(**{**CFG.to_dict(), "batch_size": 2}), U_MIN,
                            scale=4.0)
    np.testing.assert_allclose(small, out, rtol=1e-4, atol=1e-4)
    assert np.abs(out[labels == 1][0] - out[labels == 0][0]).max() > 0.1
    weak = guidance.sample(model, params, key, labels, CFG, U_MIN, scale=1.5)
    assert np.abs(weak - out).max() > 0.1                                        # the scale matters
    null = guidance.sample(model, params, key, model.num_classes, CFG, U_MIN, scale=4.0)
    plain = idf.sample(model, params, rng.stream(key, model.num_classes), CFG, U_MIN)
    np.testing.assert_allclose(null, plain, rtol=1e-4, atol=1e-4)


def test_errors():
    model, params = _load("cond_p4_rgb")
    umodel, uparams = _load("uncond_p2_gray")
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="needs a class-conditional DiT"):
        guidance.sample(umodel, uparams, key, 0, CFG, U_MIN, scale=4.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\] \(3 = null\), got \[0, 4\]"):
        guidance.sample(model, params, key, np.array([0, 4, 0, 0, 0, 0]), CFG, U_MIN, scale=4.0)
    with pytest.raises(ValueError, match=r"shape \(cfg.num_samples,\) = \(6,\)"):
        guidance.sample(model, params, key, np.array([0, 1]), CFG, U_MIN, scale=4.0)
    with pytest.raises(ValueError, match="time_input must be one of"):
        guidance.sample(model, params, key, 0, CFG, U_MIN, scale=4.0, time_input="ddim")
    with pytest.raises(ValueError, match="guided_channels must be an int >= 1 or None"):
        guidance.sample(model, params, key, 0, CFG, U_MIN, scale=4.0, guided_channels=0)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        guidance.sample(model, params, key, 0, CFG, U_MIN, scale=float("nan"))
