"""The offline feature network: a small CNN classifier trained (through diffmem.training) on the dataset's labelled
images; its penultimate layer is the feature map of FD / KID / precision-recall when no Inception weights are at
hand. Cached in <workdir>/feature_net/ (weights + meta.json stamped with the data and settings)."""
from __future__ import annotations

import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffmem import io, rng, training
from diffmem.config import TrainConfig
from diffmem.eval.features.base import FeatureExtractor
from diffmem.eval.neighbors import _check_chunk

Array = jax.Array


class FeatureCNN(nn.Module):
    """Small CNN classifier; its penultimate ReLU layer (`features` wide) is the feature map.

    (b, H, W, C) -> (logits (b, num_classes), features (b, features)). 3x3 convs, 2x2 average pooling
    between stages (while the image is at least 2x2), global average pool, dense, dense.
    """
    num_classes: int
    widths: tuple[int, ...] = (32, 64, 64)
    features: int = 64

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        for i, w in enumerate(self.widths):
            x = nn.relu(nn.Conv(w, (3, 3), name=f"conv{i}")(x))
            if i < len(self.widths) - 1 and min(x.shape[1], x.shape[2]) >= 2:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))  # (b, widths[-1])
        h = nn.relu(nn.Dense(self.features, name="penultimate")(x))  # (b, features)
        return nn.Dense(self.num_classes, name="head")(h), h


def train_feature_classifier(images, labels, *, widths: tuple[int, ...] = (32, 64, 64), features: int = 64,
                             steps: int = 400, batch_size: int = 128, learning_rate: float = 3e-3,
                             test_fraction: float = 0.2, seed: int = 0) -> tuple[dict, dict]:
    """Trains `FeatureCNN` on labelled images (b, H, W, C) in [-1, 1], labels (b,) ints: softmax cross-entropy,
    Adam (training.train: no decay, no clipping, no EMA), batches uniform with replacement.

    A random `test_fraction` of the images is held out for the reported test accuracy.
    Returns (variables, meta) with meta['test_accuracy'] and the class values.
    """
    x = np.asarray(images, np.float32)
    y = np.asarray(labels)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (b, H, W, C), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or inf values")
    if x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3:
        raise ValueError(f"images must be scaled to [-1, 1], got range [{x.min():.3g}, {x.max():.3g}]")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got {y.shape} {y.dtype}")
    classes, y = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError("labels must hold at least 2 classes to train the feature classifier")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("features", features)):
        _check_chunk(name, v)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = max(1, int(round(test_fraction * x.shape[0])))
    if x.shape[0] - n_test < 2:
        raise ValueError(f"too few labelled images ({x.shape[0]}) to train the feature classifier")
    te, tr = perm[:n_test], perm[n_test:]
    model = FeatureCNN(num_classes=int(classes.size), widths=tuple(widths), features=features)
    params = model.init(rng.stream(seed, "init"), jnp.asarray(x[tr][:1]))["params"]

    def loss_fn(p, key, batch):
        logits, _ = model.apply({"params": p}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=learning_rate, grad_clip=0.0, log_every=steps,
                      ckpt_every=steps, keep_ckpts=1, seed=seed)
    state = training.train(loss_fn, params, {"x": x[tr], "y": y[tr].astype(np.int32)}, cfg, None,
                           key=rng.stream(seed, "train"), progress=False, desc="feature classifier")
    params = jax.device_get(state.params)
    logits, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(x[te]))
    acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y[te])))
    final_loss = float(loss_fn(params, None, {"x": jnp.asarray(x[tr][:batch_size]),
                                              "y": jnp.asarray(y[tr][:batch_size], jnp.int32)})[0])
    meta = dict(test_accuracy=acc, final_train_loss=final_loss, n_train=int(tr.size),
                n_test=int(n_test), classes=[int(c) for c in classes])
    return {"params": params}, meta


def classifier_extractor(images, labels, workdir: str | None, *, widths, features, steps, batch_size,
                          learning_rate, test_fraction, seed) -> FeatureExtractor:
    if images is None or labels is None:
        raise ValueError("kind='classifier' needs labelled images: pass images (b, H, W, C) in [-1, 1] "
                         "and labels (b,)")
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    config = dict(widths=list(widths), features=int(features), steps=int(steps), batch_size=int(batch_size),
                  learning_rate=float(learning_rate), test_fraction=float(test_fraction), seed=int(seed),
                  image_shape=list(images.shape[1:]), data_sha1=io.sha1_arrays(images, labels.astype(np.int64)))
    path = None if workdir is None else os.path.join(workdir, "feature_net")
    variables = meta = None
    cached = False
    if path is not None and io.exists(os.path.join(path, "meta.json")):
        meta = io.read_json(os.path.join(path, "meta.json"))
        if meta.get("config") != config:
            raise ValueError(f"{path} holds a feature classifier trained with different data or settings "
                             f"({meta.get('config')}); use another workdir or delete {path} to retrain")
        model = FeatureCNN(num_classes=len(meta["classes"]), widths=tuple(widths), features=features)
        template = model.init(jax.random.key(0), jnp.zeros((1,) + images.shape[1:], jnp.float32))
        variables = flax.serialization.from_bytes(template, io.read_bytes(os.path.join(path, "params.msgpack")))
        cached = True
    else:
        variables, meta = train_feature_classifier(images, labels, widths=tuple(widths), features=features,
                                                   steps=steps, batch_size=batch_size,
                                                   learning_rate=learning_rate,
                                                   test_fraction=test_fraction, seed=seed)
        meta["config"] = config
        if path is not None:  # the weights first: meta.json marks a finished cache
            io.write_bytes(os.path.join(path, "params.msgpack"), flax.serialization.to_bytes(variables))
            io.write_json(os.path.join(path, "meta.json"), meta)
    model = FeatureCNN(num_classes=len(meta["classes"]), widths=tuple(widths), features=features)
    fn = jax.jit(lambda imgs: model.apply(variables, jnp.asarray(imgs, jnp.float32))[1])
    info = dict(test_accuracy=meta["test_accuracy"], cached=cached, path=path, config=config)
    return FeatureExtractor("classifier", fn, info)

