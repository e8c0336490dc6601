"""InceptionV3 pool features for FD / KID / precision-recall (Table 1 of arXiv 2511.03202 reports FID), from user weights.

The network is Keras 3's `keras.applications.InceptionV3` run on the JAX backend (a maintained implementation,
not a re-write): its 2048-d global average pool after the last Inception block, the 'pool_3' features of
Heusel et al. (2017). Weights are never bundled or downloaded: pass a Keras InceptionV3 weights file, e.g.
Keras's ImageNet file `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5` (or the one with the top; the
classifier head is dropped), or a `.weights.h5` / `.keras` file saved by Keras for this architecture.

Preprocessing (`preprocess`): images (b, H, W, C) in [-1, 1] (diffmem's scaling, which is also the scaling Keras's
InceptionV3 weights expect: x / 127.5 - 1 of 8-bit pixels), grayscale (C = 1) repeated to 3 channels, resized
bilinearly to 299 x 299 (jax.image.resize, antialiased when shrinking). Values are used as given (generated
samples slightly outside [-1, 1] are not clipped).

Caveat for comparisons with published FIDs: those use the 2015-12-05 TensorFlow Inception graph (TTUR,
pytorch-fid, clean-fid), whose last block max-pools where Keras's average-pools and whose weights differ from
Keras's ImageNet weights. FD on these features is comparable across runs with the same weights file (results
record its SHA-1), not to the numbers of other papers. For those, pass your own extractor (a callable
images -> (b, 2048)) to `diffmem.eval.features.get_feature_extractor`.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings

import jax
import jax.numpy as jnp

from diffmem.eval.features.base import FeatureExtractor

Array = jax.Array
RESOLUTION = 299          # InceptionV3's input size
_PARTIAL_LOAD = "freshly-initialized"  # Keras's warning when a weights file leaves layers at their random init
_INSTALL_HINT = "pip install 'keras>=3.6' (or diffmem's extra: pip install -e '.[inception]')"


def import_keras():
    """Keras 3 on the JAX backend (KERAS_BACKEND is set to 'jax' unless Keras was already imported)."""
    if "keras" not in sys.modules:
        backend = os.environ.setdefault("KERAS_BACKEND", "jax")
        if backend != "jax":
            raise ValueError(f"the Inception extractor runs Keras on the JAX backend, but KERAS_BACKEND={backend!r}; "
                             "unset it or set KERAS_BACKEND=jax")
    try:
        import keras
    except ImportError as e:
        raise ImportError(f"the Inception extractor needs Keras 3: {_INSTALL_HINT}") from e
    if not hasattr(keras, "ops") or keras.backend.backend() != "jax":
        raise ValueError(f"the Inception extractor needs Keras 3 on the JAX backend; got Keras {keras.__version__} "
                         f"on backend {keras.backend.backend()!r} (set KERAS_BACKEND=jax before importing keras)")
    return keras


def preprocess(images: Array) -> Array:
    """images (b, H, W, C) in [-1, 1], C in {1, 3} -> (b, 299, 299, 3), bilinear resize."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"the Inception extractor needs images of shape (b, H, W, C) with C = 1 (grayscale, "
                         f"repeated to RGB) or 3, got {images.shape}")
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)                                         # (b, H, W, 3)
    return jax.image.resize(x, (x.shape[0], RESOLUTION, RESOLUTION, 3), method="bilinear")


def file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_pool_model(weights: str):
    """The Keras InceptionV3 with `weights` loaded, as a model images (b, 299, 299, 3) -> pool_3 (b, 2048).

    Tries the headless architecture (include_top=False, global average pooling) first, then the full classifier
    (whose 'avg_pool' layer is the same features). Returns (model, include_top).
    """
    keras = import_keras()
    errors = []
    for include_top in (False, True):
        model = keras.applications.InceptionV3(include_top=include_top, weights=None,
                                               input_shape=(RESOLUTION, RESOLUTION, 3),
                                               pooling=None if include_top else "avg")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(weights)
            partial = [str(w.message) for w in caught if _PARTIAL_LOAD in str(w.message)]
            if partial:  # Keras loads what matches and warns about the rest: refuse a half-loaded network
                raise ValueError(f"{len(partial)} part(s) of the network were not in the file: {partial[0][:200]}")
        except Exception as e:  # noqa: BLE001 - Keras / h5py raise many kinds; all mean "not these weights"
            errors.append(f"include_top={include_top}: {type(e).__name__}: {str(e)[:300]}")
            continue
        if include_top:
            model = keras.Model(model.inputs, model.get_layer("avg_pool").output)
        return model, include_top
    raise ValueError(f"inception weights {weights!r} could not be loaded into Keras's InceptionV3 (with or without "
                     "its classifier head). Accepted: a Keras InceptionV3 weights file such as "
                     "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5, or a .weights.h5 / .keras file "
                     "saved by Keras for keras.applications.InceptionV3. Errors: " + " | ".join(errors))


def inception_extractor(weights: str) -> FeatureExtractor:
    """FeatureExtractor images (b, H, W, C) in [-1, 1] -> InceptionV3 pool_3 features (b, 2048).

    The forward pass is one jit-compiled pure function of (weights, images) (Keras `stateless_call`), compiled
    once per batch shape. Its name records the weights' SHA-1 prefix; info holds the path and full SHA-1.
    """
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"inception weights must be a path to a Keras InceptionV3 weights file, got {weights!r}")
    path = os.path.abspath(os.path.expanduser(weights))
    if not os.path.isfile(path):
        raise ValueError(f"inception weights file {weights!r} does not exist (resolved to {path}); weights are not "
                         "downloaded: fetch e.g. inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 from "
                         "the keras-applications releases on a machine with network access and pass its path")
    model, include_top = build_pool_model(path)
    trainable = [jnp.asarray(v.value) for v in model.trainable_variables]
    fixed = [jnp.asarray(v.value) for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, fixed, images):
        out, _ = model.stateless_call(trainable, fixed, preprocess(images), training=False)
        return out                                                            # (b, 2048)

    def fn(images):
        return forward(trainable, fixed, jnp.asarray(images, jnp.float32))

    sha1 = file_sha1(path)
    keras = import_keras()
    info = dict(weights=path, weights_sha1=sha1, include_top_file=include_top, resolution=RESOLUTION,
                implementation=f"keras {keras.__version__} applications.InceptionV3 (jax backend)")
    return FeatureExtractor(f"inception_v3:{sha1[:12]}", fn, info)

