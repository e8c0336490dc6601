"""The settings of the pruning experiment (configs/prune_dit.py), as typed schemas, and its methods."""
from __future__ import annotations

import dataclasses

from diffmem import config as config_lib
from diffmem.config import (DiffusionConfig, DiTConfig, ImageDataConfig, ImageEvalConfig, SamplerConfig, Schema,
                            TrainConfig, field)

# Time laws of the importance scores (Algorithm 2): name -> (dist, a, b) of pruning.TimeDist on [u_min, 1].
SCORE_LAWS = {"importance": ("beta", 0.8, 2.0), "importance_large_t": ("beta", 2.0, 0.8),
              "importance_uniform": ("uniform", 1.0, 1.0)}
PRUNE_METHODS = tuple(SCORE_LAWS) + ("random", "magnitude")
UNPRUNED_METHODS = ("weight_decay_finetune",)
METHODS = PRUNE_METHODS + UNPRUNED_METHODS
ALWAYS = ("original", "finetune_only")            # run in every experiment
LABELS = {"original": "original (unpruned)", "finetune_only": "fine-tune only (control, no pruning)",
          "importance": "importance pruning, Beta(0.8,2) (paper)",
          "importance_large_t": "importance pruning, Beta(2,0.8) (large t)",
          "importance_uniform": "importance pruning, U(u_min,1)", "random": "random pruning",
          "magnitude": "magnitude pruning", "weight_decay_finetune": "fine-tune with weight decay (no pruning)",
          "weight_decay_base": "base trained with weight decay"}


@dataclasses.dataclass(frozen=True)
class PruneDataConfig(ImageDataConfig):
    """Training images: a seeded random subset of n images (the same for every base)."""
    n: int = field(64, min=2)


@dataclasses.dataclass(frozen=True)
class DesignConfig(Schema):
    """The replication design: `bases` base models trained from independent seeds (one vmapped group); for each
    base `repeats` independent pruning + fine-tuning + sampling repeats of every method at the paper's eta, and
    `sweep_repeats` at the other etas; fine-tunes run as vmapped groups of at most `group_size` models."""
    bases: int = field(3, min=1)
    repeats: int = field(5, min=1)
    sweep_repeats: int = field(2, min=1)
    group_size: int = field(64, min=1)


@dataclasses.dataclass(frozen=True)
class PruneConfig(Schema):
    """Pruning (Algorithms 1 and 2 of arXiv 2511.03202). etas: the sweep (each in [0, 1)); paper_eta: Table 1's
    eta (added to the sweep); keep_one_per_layer: never empty a layer (Algorithm 1 does not say; off = pure global
    ranking). Scores: score_batches batches of score_batch_size, ONE u in [u_min, 1] per batch; the loss right
    after pruning (before fine-tuning) over loss_batches batches."""
    etas: tuple[float, ...] = field((0.1, 0.2, 0.35, 0.5), item_min=0.0, item_max=1.0, item_open=(False, True),
                                    nonempty=True)
    paper_eta: float = field(0.2, min=0.0, max=1.0, min_open=True, max_open=True)
    keep_one_per_layer: bool = field(False)
    score_batches: int = field(32, min=1)
    score_batch_size: int = field(32, min=1)
    loss_batches: int = field(16, min=1)

    @property
    def sweep_etas(self) -> tuple[float, ...]:
        """The etas run: sorted, eta = 0 dropped (it is the finetune_only control), paper_eta included."""
        return tuple(sorted(set(float(e) for e in self.etas if e > 0) | {float(self.paper_eta)}))


@dataclasses.dataclass(frozen=True)
class WeightDecayConfig(Schema):
    """Weight-decay mitigation baselines: `finetune_value` = AdamW decay of the weight_decay_finetune control;
    `base` = also train one base per seed from scratch with decay `base_value` (in the same vmapped group)."""
    base: bool = field(False)
    base_value: float = field(0.1, min=0.0)
    finetune_value: float = field(3.0, min=0.0)


@dataclasses.dataclass(frozen=True)
class ClaimsConfig(Schema):
    """The claims' statistics (diffmem.eval.statistics): `level` intervals from `num_resamples` hierarchical
    bootstrap resamples (bases, then repeats within them). fd_tolerance: C4's non-inferiority margin as a fraction
    of the original model's FD; precision_tolerance: C4's margin in precision; frontier_levels: memorization levels
    at which C5 compares the frontiers; swap_tau / swap_share: C7's unit time and share."""
    level: float = field(0.95, min=0.0, max=1.0, min_open=True, max_open=True)
    num_resamples: int = field(10_000, min=100)
    fd_tolerance: float = field(0.1, min=0.0)
    precision_tolerance: float = field(0.02, min=0.0)
    frontier_levels: int = field(5, min=1)
    swap_tau: float = field(0.3, min=0.0, max=1.0, min_open=True)
    swap_share: float = field(0.5, min=0.0, max=1.0)


@dataclasses.dataclass(frozen=True)
class WhereConfig(Schema):
    """Where is memorization decided: the swap test for each pair (a, b) (model a for t > tau, b below, and the
    reverse) on repeat 0's models of every base at claims.swap_tau and of base 0 at every taus_u; the trajectory
    analysis of base 0 with num_samples samples."""
    enabled: bool = field(True)
    num_samples: int = field(500, min=2)
    taus_u: tuple[float, ...] = field((0.1, 0.3, 0.5), item_min=0.0, item_max=1.0, item_open=(True, False))
    swap_pairs: tuple[tuple[str, str], ...] = field((("finetune_only", "weight_decay_finetune"),))
    trajectory: bool = field(True)


@dataclasses.dataclass(frozen=True)
class Settings(Schema):
    """configs/prune_dit.py, validated."""
    experiment: str = field("prune_dit", choices=("prune_dit",))
    seed: int = field(0, min=0)
    preset: str = field("")
    base_checkpoint: str = field("", help="'' = train the bases here; else one base loaded (design.bases = 1)")
    base_model: str = field("", help="a saved model directory (python -m diffmem.convert, or an export) as the one "
                                     "base; its own sizes replace config.model")
    methods: tuple[str, ...] = field(METHODS, choices=METHODS)
    sweep_methods: tuple[str, ...] = field(("importance", "random", "magnitude"), choices=PRUNE_METHODS)
    progress: bool = field(False)
    data: PruneDataConfig = field(PruneDataConfig())
    model: DiTConfig = field(DiTConfig(patch=2, hidden=64, depth=3, heads=8))
    diffusion: DiffusionConfig = field(DiffusionConfig())
    train: TrainConfig = field(TrainConfig())
    finetune: TrainConfig = field(TrainConfig())
    design: DesignConfig = field(DesignConfig())
    prune: PruneConfig = field(PruneConfig())
    weight_decay: WeightDecayConfig = field(WeightDecayConfig())
    sampler: SamplerConfig = field(SamplerConfig())
    eval: ImageEvalConfig = field(ImageEvalConfig())
    claims: ClaimsConfig = field(ClaimsConfig())
    where: WhereConfig = field(WhereConfig())

    def check(self):
        for name in ("methods", "sweep_methods"):
            v = getattr(self, name)
            if len(set(v)) != len(v):
                raise self.fail(name, f"must not repeat a method, got {list(v)}")
        extra = [m for m in self.sweep_methods if m not in self.methods]
        if extra:
            raise self.fail("sweep_methods", f"must be pruning methods listed in config.methods, got {extra}")
        if self.sampler.num_samples <= self.eval.k:
            raise self.fail("sampler", f".num_samples ({self.sampler.num_samples}) must exceed config.eval.k "
                                       f"({self.eval.k})")
        if self.where.enabled and not self.where.taus_u:
            raise self.fail("where", ".taus_u must hold at least one unit time in (0, 1] when where.enabled")
        known = set(ALWAYS) | set(self.methods)
        for i, pr in enumerate(self.where.swap_pairs if self.where.enabled else ()):
            if pr[0] == pr[1] or not set(pr) <= known:
                raise self.fail("where", f".swap_pairs[{i}] must be a pair of two different models among "
                                         f"{sorted(known)} (config.methods plus original / finetune_only), got {pr!r}")
        if self.base_checkpoint and self.base_model:
            raise self.fail("base_model", "and config.base_checkpoint are alternatives: set at most one")
        loaded = "base_checkpoint" if self.base_checkpoint else "base_model" if self.base_model else None
        if loaded and self.design.bases != 1:
            raise self.fail("design", f".bases must be 1 with config.{loaded} (one loaded base), got "
                                      f"{self.design.bases}")
        if loaded and self.weight_decay.base:
            raise self.fail("weight_decay", f".base needs bases trained here (config.{loaded} is set)")


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; a ValueError naming the field for anything unknown, missing or out of range."""
    return config_lib.parse_config(Settings, config)
