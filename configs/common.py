"""Shared config sections (big_vision style): each configs/<experiment>.py starts from these and its presets override
only what they change. Every section is parsed by its schema in diffmem/config.py (ranges, choices, defaults), so
an unknown or out-of-range field fails at start-up with the field's name. Sequence-valued fields are tuples, so the
command line can override them (`--config.ns='(64,512)'`).
"""
import ml_collections


def _section(defaults: dict, overrides: dict) -> ml_collections.ConfigDict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; accepted: {sorted(defaults)}")
    return ml_collections.ConfigDict({**defaults, **overrides})


# ------------------------------------------------------------------------------------------------ image DiTs

def image_data(**kw) -> ml_collections.ConfigDict:
    """Training images: diffmem.data.load_images(name, n, seed) (a seeded random subset); data_dir: the TFDS
    directory ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    return _section(dict(name="digits", seed=0, data_dir=""), kw)


def dit(**kw) -> ml_collections.ConfigDict:
    """DiT sizes (diffmem.models.dit): `name` from dit.DIT_CONFIGS ('S/2', ...); a non-zero patch / hidden / depth /
    heads overrides it ('' needs all four)."""
    return _section(dict(name="", patch=4, hidden=128, depth=2, heads=8, mlp_ratio=4.0, dtype="float32"), kw)


def diffusion(**kw) -> ml_collections.ConfigDict:
    """The OU process with the DDPM time change t(u): training u ~ U(u_min, 1), sampling stops at t0 = t(u_min)
    (u_min = 1e-3: DDPM step 1, t0 = 1.1e-4)."""
    return _section(dict(u_min=1e-3), kw)


def train(**kw) -> ml_collections.ConfigDict:
    """diffmem.config.TrainConfig fields (the seed comes from config.seed): AdamW, warm-up, clipping, EMA;
    tensorboard=True also writes TensorBoard scalars to <workdir>/tensorboard (diffmem.tracking)."""
    return _section(dict(steps=10_000, batch_size=32, lr=2e-3, warmup_steps=100, schedule="constant",
                         weight_decay=0.0, grad_clip=1.0, ema_decay=0.995, log_every=200, ckpt_every=2000,
                         keep_ckpts=1, tensorboard=False), kw)


def sampler(**kw) -> ml_collections.ConfigDict:
    """diffmem.config.SamplerConfig: reverse SDE ('sde', Euler-Maruyama) or probability-flow ODE ('ode', Heun) on a
    grid uniform in the DDPM unit time, Tweedie denoising at t0, EMA parameters."""
    return _section(dict(num_samples=1000, steps=100, method="sde", batch_size=500, denoise=True, use_ema=True), kw)


def image_eval(**kw) -> ml_collections.ConfigDict:
    """diffmem.config.ImageEvalConfig: memorization in pixel space against the training images (||x - NN1|| < ratio
    ||x - NN2||); FD / KID / precision-recall (k-NN radii) of `features` ('classifier': the offline CNN trained
    feature_steps on the reference pool's labels; 'pixels'; 'inception': Keras InceptionV3 from the weights file
    `inception_weights`) against the reference ('heldout', 'test' or 'all'), capped at num_ref (0 = all)."""
    return _section(dict(reference="heldout", num_ref=0, features="classifier", feature_steps=400, k=3,
                         ratio=1.0 / 3.0, kid_subsets=100, grid_samples=32, inception_weights=""), kw)


# ------------------------------------------------------------------------------------------- mixture lab

def lab_model(**kw) -> ml_collections.ConfigDict:
    """The lab's ReLU-MLP score network (diffmem.config.MLPConfig); sigma_data 0 = sqrt(mean_std^2 + 1), the
    per-coordinate std of the mixture (EDM preconditioning of output='edm')."""
    return _section(dict(depth=3, time_embed="sinusoidal", embed_dim=16, output="edm", sigma_data=0.0), kw)


def lab_train(**kw) -> ml_collections.ConfigDict:
    """TrainConfig fields of the lab's sweeps (weight decay is set per sweep cell where a figure sweeps it)."""
    return _section(dict(steps=3000, batch_size=256, lr=3e-3, warmup_steps=100, schedule="constant",
                         weight_decay=0.0, grad_clip=1.0, ema_decay=0.99, log_every=250, ckpt_every=1000,
                         keep_ckpts=1, tensorboard=False), kw)


def lab_loss(**kw) -> ml_collections.ConfigDict:
    """diffmem.config.LabLossConfig: DSM on [t0, T], t log-uniform or uniform, weighting 'sigma2' or 'none'."""
    return _section(dict(t0=1e-3, T=10.0, weighting="sigma2", time_dist="log_uniform"), kw)


def lab_sampler(**kw) -> ml_collections.ConfigDict:
    """SamplerConfig of the lab: reverse SDE on a log-spaced grid from T to t0, Tweedie denoising."""
    return _section(dict(num_samples=1000, steps=100, method="sde", spacing="log", batch_size=1000, denoise=True), kw)
