"""diffmem: memorization vs generalization in diffusion models (Ye, Zhu, Tao, Chen; ICLR 2026)."""
import setuptools

setuptools.setup(
    name="diffmem",
    version="0.1.0",
    description="Reference JAX/Flax implementation of 'Provable Separations between Memorization "
                "and Generalization in Diffusion Models'.",
    packages=setuptools.find_packages(include=["diffmem", "diffmem.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5.0,<0.13",
        "flax>=0.10.0,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11.0,<0.13",
        "tensorflow-datasets>=4.9.7,<4.10",
        "importlib_resources>=6.0",  # tensorflow-datasets builders crash without it
        "ml-collections>=1.0.0,<2",
        "chex>=0.1.89,<0.2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "matplotlib>=3.8,<4",
        "scikit-learn>=1.5,<2",
        "scipy>=1.11,<2",
        "tqdm>=4.66,<5",
    ],
    extras_require={
        # InceptionV3 features (diffmem/inception.py): Keras 3 on the JAX backend; the tests exercise it too.
        "inception": ["keras>=3.6,<4"],
        # TensorBoard tracking (diffmem/tracking.py, TrainConfig.tensorboard): the tensorboardX event writer.
        "tensorboard": ["tensorboardX>=2.6,<3"],
        # The tests also read the event files back with TensorBoard's own reader; they run on 2 worker processes
        # (pytest-xdist) that share one compilation cache (filelock guards it, see tests/conftest.py).
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "filelock>=3.12,<4", "keras>=3.6,<4", "tensorboardX>=2.6,<3",
                 "tensorboard>=2.16,<3"],
        "gpu": ["jax[cuda12]>=0.5.0,<0.13"],
        "tfds-prepare": ["tensorflow-cpu>=2.16,<3"],
    },
)
