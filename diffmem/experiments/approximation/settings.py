"""config sections of the approximation experiment, its mixtures and training points."""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from diffmem import config as config_lib
from diffmem import io, rng, sampling, scores
from diffmem.config import LAB_TIME_DISTS, MLPConfig, Schema, TrainConfig, field
from diffmem.models import mlp

KINDS = ("empirical", "true")


def _distinct(section: Schema, name: str) -> None:
    v = getattr(section, name)
    if len(set(v)) != len(v):
        raise section.fail(name, f"must be distinct, got {list(v)}")


@dataclasses.dataclass(frozen=True)
class DataConfig(Schema):
    """config.data: for every dimension d, P_d = (1/K) sum N(mu_k, I_d), mu_k ~ N(0, mean_std^2 I_d); replicate
    (seed) s trains on the first n points of its own draw from P_d."""
    dims: tuple[int, ...] = field((2, 8), item_min=1, nonempty=True)
    num_components: int = field(4, min=1)
    mean_std: float = field(2.0, min=0, min_open=True)
    ns: tuple[int, ...] = field((2, 3, 4, 6, 8, 12), item_min=2, nonempty=True)

    def check(self):
        _distinct(self, "dims")
        _distinct(self, "ns")
        if len(self.ns) < 2:
            raise self.fail("ns", f"needs at least 2 sizes for a slope in n, got {list(self.ns)}")


@dataclasses.dataclass(frozen=True)
class RegressionConfig(Schema):
    """config.regression: inputs x ~ P_hat_t with t on [t0, T] (`time_dist`); errors evaluated at `eval_times`
    log-spaced times with `eval_points` draws each."""
    t0: float = field(0.03, min=0, min_open=True)
    T: float = field(1.0, min=0, min_open=True)
    time_dist: str = field("log_uniform", choices=LAB_TIME_DISTS)
    eval_points: int = field(4096, min=1)
    eval_times: int = field(8, min=1)

    def check(self):
        if not self.T > self.t0:
            raise self.fail("T", f"must exceed t0={self.t0:g}, got {self.T:g}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig(Schema):
    """config.attention: the exact one-layer attention forms, checked against the closed-form scores."""
    ns: tuple[int, ...] = field((16, 256), item_min=2, nonempty=True)
    dims: tuple[int, ...] = field((2,), item_min=1, nonempty=True)
    num_components: int = field(4, min=1)
    num_queries: int = field(256, min=1)
    times: tuple[float, ...] = field((1e-3, 1.0), item_min=0, item_open=(True, False), nonempty=True)


@dataclasses.dataclass(frozen=True)
class Settings(Schema):
    """configs/approximation.py, validated. `widths` is the ladder a member climbs until its fit reaches its eps
    (eps_empirical for the empirical target, the smallest of eps_true for the true one)."""
    experiment: str = field("approximation", choices=("approximation",))
    seed: int = field(0, min=0, help="mixtures, training points, evaluation draws")
    preset: str = field("")
    widths: tuple[int, ...] = field((2, 4, 8, 16, 32, 64, 128, 256), item_min=1, nonempty=True)
    eps_empirical: float = field(0.5, min=0, max=1, min_open=True, max_open=True,
                                 help="relative error defining W*(n) of the empirical score")
    eps_true: tuple[float, ...] = field((0.5, 0.3, 0.2, 0.1), item_min=0, item_max=1, item_open=(True, True),
                                        nonempty=True, help="relative errors probing W* of the true score")
    flat_slope: float = field(0.25, min=0, help="the true score's W*(n) counts as flat below this log-log slope")
    seeds: tuple[int, ...] = field((0, 1, 2), item_min=0, nonempty=True, help="independent replicates")
    progress: bool = field(True)
    data: DataConfig = field(DataConfig())
    model: MLPConfig = field(MLPConfig(depth=2))
    train: TrainConfig = field(TrainConfig())
    regression: RegressionConfig = field(RegressionConfig())
    attention: AttentionConfig = field(AttentionConfig())

    def check(self):
        for name in ("widths", "seeds", "eps_true"):
            _distinct(self, name)
        if list(self.widths) != sorted(self.widths):
            raise self.fail("widths", f"must increase (a ladder climbed from the smallest), got {list(self.widths)}")

    @property
    def ns(self) -> list[int]:
        return sorted(self.data.ns)

    @property
    def eps_list(self) -> list[float]:
        """Every eps a W* is reported for, largest first."""
        return sorted(set(self.eps_true) | {self.eps_empirical}, reverse=True)

    def stop_eps(self, kind: str) -> float:
        """A member climbs the width ladder until its max-over-t relative error is <= this."""
        return self.eps_empirical if kind == "empirical" else min(self.eps_true)

    def model_for(self, dim: int, width: int) -> mlp.ScoreMLP:
        kw = dataclasses.asdict(self.model)
        if kw["output"] == "edm" and not kw["sigma_data"] > 0:
            kw["sigma_data"] = math.sqrt(self.data.mean_std ** 2 + 1.0)   # per-coordinate std of the mixture
        return mlp.ScoreMLP(dim=dim, width=width, **kw)

    def cell_hash(self) -> str:
        """Hash of every setting that changes a cell's numbers (not the sweep lists: dims, ns, widths, seeds, eps)."""
        data = {k: v for k, v in dataclasses.asdict(self.data).items() if k not in ("ns", "dims")}
        return io.hash_json({"seed": self.seed, "data": data, "model": dataclasses.asdict(self.model),
                             "train": config_lib.train_numbers(self.train),
                             "regression": dataclasses.asdict(self.regression)}, 10)


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming config.<section>.<field> for anything unknown or out of range."""
    return config_lib.parse_config(Settings, config)


def make_mixture(s: Settings, dim: int) -> scores.GaussianMixture:
    """The mixture of dimension d: means from stream(seed, "data", "mixture", d)."""
    return scores.random_mixture(rng.stream(s.seed, "data", "mixture", dim), s.data.num_components, dim,
                                 s.data.mean_std)


def training_points(s: Settings, mix: scores.GaussianMixture, replicate: int, n: int) -> np.ndarray:
    """The first n training points (n, d) of replicate s: point i from stream(seed, "data", "points", d, s, i), so
    every prefix is the same whatever the largest n."""
    keys = sampling.per_sample_keys(rng.stream(s.seed, "data", "points", mix.dim, replicate), n)          # (n,)
    return np.asarray(jax.vmap(lambda k: scores.sample_mixture(k, mix, 1)[0])(keys))                    # (n, d)
