"""Feature extractors for the quality metrics: images (b, H, W, C) in [-1, 1] -> features (b, f).

'classifier' (offline default: a small CNN trained here on the dataset's labelled images, cached in
<workdir>/feature_net/; `classifier`), 'pixels' (flattened pixels), 'inception' (InceptionV3 pool features from a
weights file the user provides; `inception`, Keras imported only then), or any user callable.
"""
from __future__ import annotations

from typing import Callable

from diffmem.eval.features import classifier
from diffmem.eval.features.base import FeatureExtractor, as_feature_extractor, pixels


def get_feature_extractor(kind: str | Callable = "classifier", images=None, labels=None,
                          workdir: str | None = None, *, widths: tuple[int, ...] = (32, 64, 64),
                          features: int = 64, steps: int = 400, batch_size: int = 128,
                          learning_rate: float = 3e-3, test_fraction: float = 0.2,
                          seed: int = 0, inception_weights: str | None = None) -> FeatureExtractor:
    """Builds a feature extractor images (b, H, W, C) in [-1, 1] -> (b, f).

    kind: 'classifier' (default; `FeatureCNN` trained on (images, labels), cached in
      <workdir>/feature_net/ and reloaded when the data and settings match; workdir=None: no cache),
      'pixels' (flattened pixels), 'inception' (InceptionV3 pool_3 features from the Keras weights file
      `inception_weights`; diffmem.inception), or a user callable / FeatureExtractor (returned as is).
    """
    if not isinstance(kind, str):
        return as_feature_extractor(kind)
    if kind == "pixels":
        return FeatureExtractor("pixels", pixels)
    if kind == "classifier":
        return classifier.classifier_extractor(images, labels, workdir, widths=widths, features=features, steps=steps,
                                     batch_size=batch_size, learning_rate=learning_rate,
                                     test_fraction=test_fraction, seed=seed)
    if kind == "inception":
        if not inception_weights:
            raise ValueError("kind='inception' needs inception_weights: the path of a Keras InceptionV3 weights file "
                             "(weights are not bundled or downloaded; see diffmem/inception.py)")
        from diffmem.eval.features import inception  # local: Keras is imported only when asked for
        return inception.inception_extractor(inception_weights)
    raise ValueError(f"kind must be 'classifier', 'pixels', 'inception' or a callable, got {kind!r}")


