"""The lab's config sections, the sweep plan (cells de-duplicated across figures, grouped by architecture) and the
mixture / training points of every (d, K)."""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from diffmem import config as config_lib
from diffmem import io, rng, sampling, scores
from diffmem.config import LabLossConfig, MLPConfig, SamplerConfig, Schema, TrainConfig, field
from diffmem.models import mlp


# ------------------------------------------------------------------------------------------------ sections

@dataclasses.dataclass(frozen=True)
class MixtureConfig(Schema):
    """config.mixture: P = (1/K) sum_k N(mu_k, I_d), mu_k ~ N(0, mean_std^2 I_d) (Section 6.1: mean_std = 2)."""
    mean_std: float = field(2.0, min=0, min_open=True)


@dataclasses.dataclass(frozen=True)
class Fig2Config(Schema):
    """config.fig2 (Figure 2): one (d, K, n), growing width: underfit -> generalize -> memorize."""
    dim: int = field(2, min=1)
    num_components: int = field(4, min=1)
    n: int = field(16, min=2)
    widths: tuple[int, ...] = field((4, 8, 16, 64, 256), item_min=1, nonempty=True)


@dataclasses.dataclass(frozen=True)
class Fig3aConfig(Schema):
    """config.fig3a (Figure 3a): memorization over n x size at (dim, K), and over n x d at one size. Sizes are
    `widths` or `param_counts` (width = the smallest with at least that many parameters): exactly one non-empty;
    likewise exactly one of dim_sweep_width / dim_sweep_param_count is > 0."""
    dim: int = field(32, min=1)
    num_components: int = field(8, min=1)
    ns: tuple[int, ...] = field((32, 64, 128, 256, 512), item_min=2, nonempty=True)
    widths: tuple[int, ...] = field((), item_min=1)
    param_counts: tuple[int, ...] = field((), item_min=1)
    dims: tuple[int, ...] = field((8, 16, 32, 64), item_min=1, nonempty=True)
    dim_sweep_width: int = field(0, min=0)
    dim_sweep_param_count: int = field(0, min=0)

    def check(self):
        if bool(self.widths) == bool(self.param_counts):
            raise self.fail("widths", f"and config.fig3a.param_counts: exactly one must be non-empty, got widths="
                                      f"{list(self.widths)}, param_counts={list(self.param_counts)}")
        if bool(self.dim_sweep_width) == bool(self.dim_sweep_param_count):
            raise self.fail("dim_sweep_width", "and config.fig3a.dim_sweep_param_count: exactly one must be > 0, got "
                                               f"{self.dim_sweep_width}, {self.dim_sweep_param_count}")


@dataclasses.dataclass(frozen=True)
class Fig3bConfig(Schema):
    """config.fig3b (Figure 3b): width sweep (`widths`, () = the fig3a sizes) and weight-decay sweep (at wd_width or
    the smallest width with wd_param_count parameters) at a small and a large n, at fig3a's (dim, K)."""
    n_small: int = field(32, min=2)
    n_large: int = field(512, min=2)
    weight_decays: tuple[float, ...] = field((0.0, 1.0), item_min=0, nonempty=True)
    wd_width: int = field(0, min=0)
    wd_param_count: int = field(0, min=0)
    widths: tuple[int, ...] = field((), item_min=1)
    wd_moderate: float = field(0.0, min=0, help="the decay of the small-n log-likelihood claim; 0 = the middle "
                                                "positive decay")
    width_moderate: int = field(0, min=0, help="the narrower width of the small-n log-likelihood claim; 0 = the "
                                               "second widest of the width sweep")

    def check(self):
        if not self.n_small < self.n_large:
            raise self.fail("n_small", f"must be < config.fig3b.n_large (n_small < n_large), got {self.n_small}, "
                                       f"{self.n_large}")
        if 0.0 not in self.weight_decays or len(self.weight_decays) < 2:
            raise self.fail("weight_decays", f"must contain 0.0 (the reference) and a decay > 0, got "
                                             f"{list(self.weight_decays)}")
        if self.wd_moderate and self.wd_moderate not in self.weight_decays:
            raise self.fail("wd_moderate", f"must be 0 (automatic) or one of weight_decays "
                                           f"{list(self.weight_decays)}, got {self.wd_moderate:g}")
        if len(set(self.weight_decays)) != len(self.weight_decays):
            raise self.fail("weight_decays", f"must be distinct, got {list(self.weight_decays)}")
        if bool(self.wd_width) == bool(self.wd_param_count):
            raise self.fail("wd_width", "and config.fig3b.wd_param_count: exactly one must be > 0, got "
                                        f"{self.wd_width}, {self.wd_param_count}")


@dataclasses.dataclass(frozen=True)
class ShardConfig(Schema):
    """config.shard (launch/sweep.py): shard `index` of `count` trains the groups with group index % count == index
    and returns without assembling."""
    index: int = field(0, min=0)
    count: int = field(1, min=1)

    def check(self):
        if self.index >= self.count:
            raise self.fail("index", f"must be in [0, shard.count={self.count}), got {self.index}")


@dataclasses.dataclass(frozen=True)
class Settings(Schema):
    """configs/gmm_memorization.py, validated."""
    experiment: str = field("gmm_memorization", choices=("gmm_memorization",))
    seed: int = field(0, min=0, help="mixture, training points and sampler keys")
    preset: str = field("")
    seeds: tuple[int, ...] = field((0,), item_min=0, nonempty=True, help="training seeds (init + SGD) per cell")
    max_members: int = field(16, min=1, help="sweep members per vmapped group (memory bound)")
    references: bool = field(True, help="closed-form empirical- and true-score samplers for every (d, n)")
    progress: bool = field(True)
    mixture: MixtureConfig = field(MixtureConfig())
    model: MLPConfig = field(MLPConfig())
    train: TrainConfig = field(TrainConfig())
    loss: LabLossConfig = field(LabLossConfig())
    sampler: SamplerConfig = field(SamplerConfig(spacing="log"))
    fig2: Fig2Config = field(Fig2Config())
    fig3a: Fig3aConfig = field(Fig3aConfig(widths=(32,), dim_sweep_width=32))
    fig3b: Fig3bConfig = field(Fig3bConfig(wd_width=32))
    shard: ShardConfig = field(ShardConfig())

    def check(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise self.fail("seeds", f"must be distinct, got {list(self.seeds)}")
        for name, v in (("fig3a", self.fig3a_widths()), ("fig3b", self.fig3b_widths())):
            if len(v) < 2:
                raise self.fail(name, f".widths: the claims compare the narrowest with the widest net, so at least "
                                      f"2 sizes are needed, got {v}")
        if len(self.fig3a.ns) < 2 or len(self.fig3a.dims) < 2:
            raise self.fail("fig3a", f".ns and config.fig3a.dims need at least 2 values each, got "
                                     f"{list(self.fig3a.ns)}, {list(self.fig3a.dims)}")
        w = self.fig3b.width_moderate
        if w and (w not in self.fig3b_widths() or w == max(self.fig3b_widths())):
            raise self.fail("fig3b", f".width_moderate must be 0 (automatic) or a width of the fig3b width sweep "
                                     f"below the widest {self.fig3b_widths()}, got {w}")
        if self.train.weight_decay != 0:
            raise self.fail("train", f".weight_decay must be 0: the lab sets weight decay per sweep cell "
                                     f"(config.fig3b.weight_decays), got {self.train.weight_decay}")
        if not self.sampler.use_ema:
            raise self.fail("sampler", ".use_ema must be True: the lab samples with the EMA parameters (set "
                                       "config.train.ema_decay=0 to sample the raw ones)")

    @property
    def weight_decays(self) -> list[float]:
        return sorted(float(w) for w in self.fig3b.weight_decays)

    def model_for(self, dim: int, width: int) -> mlp.ScoreMLP:
        kw = dataclasses.asdict(self.model)
        if kw["output"] == "edm" and not kw["sigma_data"] > 0:
            kw["sigma_data"] = math.sqrt(self.mixture.mean_std ** 2 + 1.0)  # per-coordinate std of the mixture
        return mlp.ScoreMLP(dim=dim, width=width, **kw)

    def width_of(self, dim: int, width: int, param_count: int) -> int:
        if param_count:
            m = self.model
            return mlp.width_for_params(param_count, dim, m.depth, m.time_embed, m.embed_dim)
        return width

    def fig3a_widths(self) -> list[int]:
        f = self.fig3a
        if f.param_counts:
            return sorted({self.width_of(f.dim, 0, p) for p in f.param_counts})
        return sorted(f.widths)

    def dim_sweep_width(self, dim: int) -> int:
        return self.width_of(dim, self.fig3a.dim_sweep_width, self.fig3a.dim_sweep_param_count)

    def fig3b_widths(self) -> list[int]:
        return sorted(self.fig3b.widths) or self.fig3a_widths()

    def wd_moderate(self) -> float:
        """The decay of the small-n log-likelihood claim: config.fig3b.wd_moderate, or the middle positive decay."""
        pos = [w for w in self.weight_decays if w > 0]
        return float(self.fig3b.wd_moderate) if self.fig3b.wd_moderate else pos[(len(pos) - 1) // 2]

    def width_moderate(self) -> int:
        """The narrower width of the small-n log-likelihood claim: config.fig3b.width_moderate, or the second
        widest of the width sweep."""
        return self.fig3b.width_moderate or self.fig3b_widths()[-2]

    def wd_width(self) -> int:
        return self.width_of(self.fig3a.dim, self.fig3b.wd_width, self.fig3b.wd_param_count)

    def cell_hash(self) -> str:
        """Hash of every setting that changes a cell's numbers (not the sweep lists)."""
        return io.hash_json({"seed": self.seed, "mean_std": self.mixture.mean_std,
                             "model": dataclasses.asdict(self.model), "train": config_lib.train_numbers(self.train),
                             "loss": dataclasses.asdict(self.loss), "sampler": dataclasses.asdict(self.sampler)}, 10)


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; ValueError naming config.<section>.<field> for anything unknown or out of range."""
    return config_lib.parse_config(Settings, config)


# ------------------------------------------------------------------------------------------------ cells

@dataclasses.dataclass(frozen=True)
class Cell:
    """One sweep cell: a network of `width` trained on the first n points of the (dim, K) mixture."""
    dim: int
    num_components: int
    width: int
    n: int
    weight_decay: float
    seed: int

    @property
    def id(self) -> str:
        return (f"d{self.dim}_K{self.num_components}_w{self.width}_n{self.n}_wd{self.weight_decay:g}"
                f"_s{self.seed}")

    @property
    def group(self) -> tuple[int, int, int]:
        return (self.dim, self.num_components, self.width)


def plan_cells(s: Settings) -> dict[str, Cell]:
    """Every cell the figures need, de-duplicated, for every training seed (Figure 2: the first seed)."""
    cells: dict[str, Cell] = {}

    def add(dim, k, width, n, wd, seeds=s.seeds):
        for seed in seeds:
            c = Cell(dim, k, width, n, float(wd), seed)
            cells[c.id] = c

    f2, f3, fb = s.fig2, s.fig3a, s.fig3b
    for w in f2.widths:                     # Figure 2 shows one training seed (its panels feed no claim)
        add(f2.dim, f2.num_components, w, f2.n, 0.0, s.seeds[:1])
    for w in s.fig3a_widths():
        for n in f3.ns:
            add(f3.dim, f3.num_components, w, n, 0.0)
    for d in f3.dims:
        for n in f3.ns:
            add(d, f3.num_components, s.dim_sweep_width(d), n, 0.0)
    for n in (fb.n_small, fb.n_large):
        for w in s.fig3b_widths():
            add(f3.dim, f3.num_components, w, n, 0.0)
        for wd in s.weight_decays:
            add(f3.dim, f3.num_components, s.wd_width(), n, wd)
    return cells


def plan_groups(cells: Sequence[Cell], max_members: int) -> list[list[Cell]]:
    """Cells grouped by architecture (d, K, width), sorted, split into the fewest chunks of at most max_members, of
    sizes as equal as possible (33 cells at 16 -> 11 + 11 + 11, not 16 + 16 + 1; the same number of groups and of
    member-steps, with a smaller largest group)."""
    by_arch: dict[tuple, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: (c.group, c.n, c.weight_decay, c.seed)):
        by_arch.setdefault(c.group, []).append(c)
    groups = []
    for arch in sorted(by_arch):
        members = by_arch[arch]
        size = -(-len(members) // -(-len(members) // max_members))       # ceil(len / number of chunks)
        groups += [members[i:i + size] for i in range(0, len(members), size)]
    return groups


def reference_sets(s: Settings) -> dict[tuple[int, int], list[int]]:
    """(d, K) -> the ns that need closed-form reference samplers."""
    refs: dict[tuple[int, int], set] = {}
    f2, f3, fb = s.fig2, s.fig3a, s.fig3b
    refs.setdefault((f2.dim, f2.num_components), set()).add(f2.n)
    for d in f3.dims:
        refs.setdefault((d, f3.num_components), set()).update(f3.ns)
    refs.setdefault((f3.dim, f3.num_components), set()).update(list(f3.ns) + [fb.n_small, fb.n_large])
    return {k: sorted(v) for k, v in sorted(refs.items())}


# ------------------------------------------------------------------------------------------------ data

def make_mixture(seed: int, dim: int, num_components: int, mean_std: float) -> scores.GaussianMixture:
    """The (d, K) mixture of this run: means from stream(seed, "mixture", d, K)."""
    return scores.random_mixture(rng.stream(seed, "mixture", dim, num_components), num_components, dim, mean_std)


def training_points(seed: int, mix: scores.GaussianMixture, n: int) -> np.ndarray:
    """The first n training points (n, d); point i from stream(seed, "points", d, K, i), so prefixes agree."""
    keys = sampling.per_sample_keys(rng.stream(seed, "points", mix.dim, mix.num_components), n)    # (n,)
    return np.asarray(jax.vmap(lambda k: scores.sample_mixture(k, mix, 1)[0])(keys))
