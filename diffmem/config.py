"""Config sections declared once: frozen dataclasses whose field metadata holds ranges and choices, one parser.

Every section of an experiment config (`configs/*.py`, ml_collections) is described by a `Schema` subclass:

    @dataclasses.dataclass(frozen=True)
    class SamplerConfig(Schema):
        num_samples: int = field(1000, min=1)
        method: str = field("sde", choices=("sde", "ode"))

Construction validates every field (type from the annotation, range / choices from `field`) and then the
cross-field rules of `check()`; a bad value raises `FieldError`, whose message names the field
(`SamplerConfig.method must be one of ('sde', 'ode'), got 'ddim'`). `parse(SamplerConfig, config.sampler,
"sampler")` turns a ConfigDict section into the typed object, rejecting unknown keys, and words every error with
the config path (`config.sampler.method must be ...`). Experiments only ever hold these typed objects.

Types understood: int (not bool), float (ints accepted, finite), bool, str, `tuple[T, ...]` of those (lists are
accepted and stored as tuples, so command-line overrides of tuple fields work), `tuple[tuple[str, str], ...]`,
`Optional[T]` (None allowed) and nested `Schema` sections. The shared sections (training, sampler, DiT, data,
image evaluation) live here; an experiment declares its own sections beside it with the same machinery.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping, Optional

import numpy as np

_MISSING = dataclasses.MISSING


class FieldError(ValueError):
    """A bad value of one field: `field` (dotted path inside the section) and what is wrong (`problem`)."""

    def __init__(self, owner: str, field_name: str, problem: str):
        self.owner, self.field, self.problem = owner, field_name, problem
        super().__init__(_join(owner, field_name, problem))


def _join(owner: str, field_name: str, problem: str) -> str:
    """'config.sampler' + 'method' + 'must be ...' -> 'config.sampler.method must be ...' ('[2] ...' and '.x ...'
    attach)."""
    return f"{owner}.{field_name}{'' if problem[:1] in '[.' else ' '}{problem}"


def field(default=_MISSING, *, min=None, max=None, min_open: bool = False, max_open: bool = False,
          choices: Optional[tuple] = None, item_min=None, item_max=None, item_open: tuple = (False, False),
          nonempty: bool = False, help: str = ""):  # noqa: A002 (min / max read like the docs)
    """A dataclass field with its accepted values: [min, max] (open ends with min_open / max_open), `choices`,
    for tuple fields the range of every item (item_min, item_max; item_open = (lo_open, hi_open)) and `nonempty`."""
    meta = dict(min=min, max=max, min_open=min_open, max_open=max_open, choices=choices, item_min=item_min,
                item_max=item_max, item_open=item_open, nonempty=nonempty, help=help)
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def _range_text(kind: str, lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {hi:g}"
    return kind


def _in_range(v, lo, hi, lo_open, hi_open) -> bool:
    return ((lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi)))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(float(v)))


def _check_scalar(tp, v, lo=None, hi=None, lo_open=False, hi_open=False, choices=None) -> tuple[Any, Optional[str]]:
    """(value, None) when v is a valid `tp` in range, else (v, the problem in words)."""
    if tp is int:
        if not _is_int(v) or not _in_range(v, lo, hi, lo_open, hi_open):
            return v, f"must be {_range_text('an int', lo, hi, lo_open, hi_open)}"
        v = int(v)
    elif tp is float:
        if not _is_num(v) or not _in_range(float(v), lo, hi, lo_open, hi_open):
            return v, f"must be {_range_text('a finite number', lo, hi, lo_open, hi_open)}"
        v = v if isinstance(v, (int, float)) else float(v)
    elif tp is bool:
        if not isinstance(v, (bool, np.bool_)):
            return v, "must be a bool (True or False)"
        v = bool(v)
    elif tp is str:
        if not isinstance(v, str):
            return v, "must be a str"
    else:
        raise TypeError(f"unsupported field type {tp!r}")
    if choices is not None and v not in choices:
        return v, f"must be one of {tuple(choices)}"
    return v, None


def _check_value(tp, v, meta: Mapping) -> tuple[Any, Optional[str]]:
    """Validates v against the annotation tp and the field metadata; returns (normalised value, problem)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if v is None:
            return None, None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(inner, v, meta)
    if origin is tuple:
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if not isinstance(v, (list, tuple)):
            return v, "must be a tuple (a list is accepted)"
        item_tp = args[0]
        if meta.get("nonempty") and not v:
            return v, "must not be empty"
        out = []
        for i, item in enumerate(v):
            if typing.get_origin(item_tp) is tuple:      # tuple[tuple[str, str], ...]
                inner = typing.get_args(item_tp)
                if not isinstance(item, (list, tuple)) or len(item) != len(inner):
                    return v, f"[{i}] must be a tuple of {len(inner)} items, got {item!r}"
                parts = []
                for x, t in zip(item, inner):
                    x, bad = _check_scalar(t, x)
                    if bad:
                        return v, f"[{i}] {bad}, got {item!r}"
                    parts.append(x)
                out.append(tuple(parts))
                continue
            lo_open, hi_open = meta.get("item_open", (False, False))
            x, bad = _check_scalar(item_tp, item, meta.get("item_min"), meta.get("item_max"), lo_open, hi_open,
                                   meta.get("choices"))
            if bad:
                return v, f"[{i}] {bad}, got {item!r}"
            out.append(x)
        return tuple(out), None
    return _check_scalar(tp, v, meta.get("min"), meta.get("max"), meta.get("min_open", False),
                         meta.get("max_open", False), meta.get("choices"))


@dataclasses.dataclass(frozen=True)
class Schema:
    """Base of every config section: validates the fields on construction (see the module docstring)."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            tp = hints[f.name]
            if isinstance(tp, type) and issubclass(tp, Schema):
                if not isinstance(v, tp):
                    raise FieldError(type(self).__name__, f.name, f"must be a {tp.__name__} section, got {v!r}")
                continue
            new, bad = _check_value(tp, v, f.metadata)
            if bad:
                raise FieldError(type(self).__name__, f.name, bad if bad.startswith("[") else f"{bad}, got {v!r}")
            if new is not v:
                object.__setattr__(self, f.name, new)
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise `self.fail(field, problem)`."""

    def fail(self, field_name: str, problem: str) -> FieldError:
        return FieldError(type(self).__name__, field_name, problem)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Builds the section from a dict / ConfigDict; unknown keys raise a ValueError naming them."""
        return parse(cls, d, None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_dict(section) -> dict:
    if hasattr(section, "to_dict"):        # ml_collections.ConfigDict
        return section.to_dict()
    if isinstance(section, Mapping):
        return dict(section)
    raise ValueError(f"expected a section (dict), got {type(section).__name__}")


def parse(cls: type, section: Any, path: Optional[str], **fixed):
    """The `cls` section from a ConfigDict / dict at config.<path>; `fixed` values are set by the program (e.g. a
    seed from the top level). Errors name config.<path>.<field> (or <cls>.<field> when path is None)."""
    owner = cls.__name__ if path is None else ("config" if path == "" else f"config.{path}")
    nested: dict[str, dict] = {}
    for k in [k for k in fixed if "." in k]:          # "train.seed": a value fixed inside a nested section
        head, _, rest = k.partition(".")
        nested.setdefault(head, {})[rest] = fixed.pop(k)
    if section is None:
        raise ValueError(f"{owner} is missing; expected a section with keys {list(cls.keys())}")
    d = _as_dict(section)
    accepted = [k for k in cls.keys() if k not in fixed]
    unknown = sorted(set(d) - set(accepted))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {owner}; accepted keys: {accepted}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif f.name in d:
            tp = hints[f.name]
            sub = d[f.name]
            if isinstance(tp, type) and issubclass(tp, Schema):
                sub = parse(tp, sub, None if path is None else (f"{path}.{f.name}" if path else f.name),
                            **nested.get(f.name, {}))
            values[f.name] = sub
        elif f.default is _MISSING:
            raise ValueError(f"{owner} is missing key {f.name!r} (accepted keys: {accepted})")
    try:
        return cls(**values)
    except FieldError as e:
        if path is None:
            raise
        raise ValueError(_join(owner, e.field, e.problem)) from None


def seed_of(config) -> int:
    """config.seed, validated (it is also fixed into nested sections such as config.train)."""
    seed = _as_dict(config).get("seed", 0)
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"config.seed must be an int >= 0, got {seed!r}")
    return int(seed)


def parse_config(cls: type, config, **fixed):
    """A whole experiment config (top-level fields and nested Schema sections) as `cls`; config.seed is fixed into
    every nested TrainConfig (its seed is the run's seed, not a config field of the section)."""
    seed = seed_of(config)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if hints[f.name] is TrainConfig:
            fixed.setdefault(f"{f.name}.seed", seed)
    return parse(cls, config, "", **fixed)


def check_top_level(config, accepted) -> None:
    """Unknown top-level keys of an experiment config raise a ValueError naming them and the accepted keys."""
    unknown = sorted(set(_as_dict(config)) - set(accepted))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; accepted: {list(accepted)}")


def top(cls: type, config, **fixed):
    """A schema of top-level scalar fields (seed, preset, ...) read from the config's top level."""
    d = _as_dict(config)
    return parse(cls, {k: d[k] for k in cls.keys() if k in d and k not in fixed}, "", **fixed)


# =============================================================================================== shared sections

SCHEDULES = ("constant", "cosine")
SAMPLER_METHODS = ("sde", "ode", "ancestral")
GRID_SPACINGS = ("log", "linear", "ddpm")
MODEL_DTYPES = ("float32", "bfloat16")
REFERENCES = ("heldout", "test", "all")
FEATURES = ("classifier", "pixels", "inception")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Schema):
    """Training hyper-parameters (config.train / config.finetune; diffmem.training).

    lr(s) = lr * min(1, (s + 1) / warmup_steps) then constant or cosine decay to 0 at `steps`; AdamW with
    decoupled weight decay on kernels only (ndim >= 2); global-norm clipping (0 = off); parameter EMA (0 = off).
    The last step is always logged and checkpointed; `seed` is the default key of `training.train`. `tensorboard`
    also writes the metric records as TensorBoard scalars to <workdir>/tensorboard (diffmem.tracking).
    """
    steps: int = field(10_000, min=1)
    batch_size: int = field(128, min=1)
    lr: float = field(1e-3, min=0, min_open=True)
    warmup_steps: int = field(0, min=0)
    schedule: str = field("constant", choices=SCHEDULES)
    weight_decay: float = field(0.0, min=0)
    grad_clip: float = field(1.0, min=0, help="0 = off")
    ema_decay: float = field(0.0, min=0, max=1, max_open=True, help="0 = off")
    b1: float = field(0.9, min=0, max=1, max_open=True)
    b2: float = field(0.999, min=0, max=1, max_open=True)
    log_every: int = field(100, min=1)
    ckpt_every: int = field(1_000, min=1)
    keep_ckpts: int = field(2, min=1)
    seed: int = field(0, min=0)
    tensorboard: bool = field(False, help="also write the metric records as TensorBoard scalars to "
                                          "<workdir>/tensorboard (needs pip install -e '.[tensorboard]')")

    def check(self):
        from diffmem import tracking
        if self.tensorboard and not tracking.available():
            raise self.fail("tensorboard", f"is True but tensorboardX is not installed: {tracking.INSTALL_HINT}")


# Train settings that change no number of a run: stamps and config hashes leave them out (`train_numbers`).
TRACKING_TRAIN_FIELDS = ("tensorboard",)
# Train settings that may change between runs of one workdir without invalidating its checkpoints.
RESUMABLE_TRAIN_FIELDS = ("steps", "log_every", "ckpt_every", "keep_ckpts") + TRACKING_TRAIN_FIELDS


def train_numbers(cfg: TrainConfig) -> dict:
    """The TrainConfig fields as a dict without the TRACKING_TRAIN_FIELDS (for stamps and config hashes)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in TRACKING_TRAIN_FIELDS}


@dataclasses.dataclass(frozen=True)
class SamplerConfig(Schema):
    """Reverse-time sampler (diffmem.sampling): `steps` intervals of a `spacing` grid from T down to t0, reverse
    SDE ('sde', Euler-Maruyama), probability-flow ODE ('ode', Heun) or the ancestral sampler ('ancestral': the exact
    OU posterior at the Tweedie estimate, DDPM's), Tweedie denoising at t0 (`denoise`);
    sample i from fold_in(key, i). Image DiTs always use the grid uniform in DDPM unit time ('ddpm') and sample
    with the EMA parameters when use_ema."""
    num_samples: int = field(1000, min=1)
    steps: int = field(100, min=1)
    method: str = field("sde", choices=SAMPLER_METHODS)
    batch_size: int = field(500, min=1)
    denoise: bool = field(True)
    use_ema: bool = field(True)
    spacing: str = field("ddpm", choices=GRID_SPACINGS)


@dataclasses.dataclass(frozen=True)
class ImageDataConfig(Schema):
    """Training images (config.data): diffmem.data.load_images(name, n, seed), a seeded random subset; data_dir is
    the TFDS data directory ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets); crop (center crop to crop x crop
    pixels, 0 = off) and pool (pool x pool average pooling, 1 = off) make images the size the DiT needs, explicitly:
    nothing is resized otherwise."""
    name: str = field("digits")
    seed: int = field(0, min=0)
    data_dir: str = field("")
    crop: int = field(0, min=0)
    pool: int = field(1, min=1)

    def check(self):
        from diffmem import data
        if not self.name:
            raise self.fail("name", f"must be a non-empty str, one of {', '.join(data.ACCEPTED_NAMES)}; got ''")

    @property
    def directory(self):
        return self.data_dir or None


@dataclasses.dataclass(frozen=True)
class DiTConfig(Schema):
    """DiT sizes (config.model; diffmem.models.dit): `name` from dit.DIT_CONFIGS (e.g. 'S/2'), each non-zero size
    overriding it ('' needs all four sizes). Unconditional eps prediction."""
    name: str = field("")
    patch: int = field(0, min=0)
    hidden: int = field(0, min=0)
    depth: int = field(0, min=0)
    heads: int = field(0, min=0)
    mlp_ratio: float = field(4.0, min=0, min_open=True)
    dtype: str = field("float32", choices=MODEL_DTYPES)

    def check(self):
        from diffmem.models import dit  # architectures only: no import back into this module
        if self.name and self.name not in dit.DIT_CONFIGS:
            raise self.fail("name", f"must be '' or one of {sorted(dit.DIT_CONFIGS)}, got {self.name!r}")
        for f in ("patch", "hidden", "depth", "heads"):
            if not self.name and not getattr(self, f):
                raise self.fail(f, f"must be > 0 when name is empty, got {getattr(self, f)}")

    def sizes(self) -> dict:
        """dict(patch, hidden, depth, heads, mlp_ratio, dtype) with the name's sizes resolved."""
        from diffmem.models import dit
        s = dit.dit_kwargs(self.name) if self.name else {}
        for f in ("patch", "hidden", "depth", "heads"):
            if getattr(self, f):
                s[f] = getattr(self, f)
        return dict(patch=s["patch"], hidden=s["hidden"], depth=s["depth"], heads=s["heads"],
                    mlp_ratio=float(self.mlp_ratio), dtype=self.dtype)

    def resolved(self) -> dict:
        """The stamped form: name plus resolved sizes."""
        return dict(name=self.name, **self.sizes())


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(Schema):
    """The OU process with the DDPM time change t(u) (diffmem.sde.ddpm_time): training draws u ~ U(u_min, 1) and
    the sampler stops at t0 = t(u_min)."""
    u_min: float = field(1e-3, min=0, max=1, min_open=True, max_open=True)


@dataclasses.dataclass(frozen=True)
class ImageEvalConfig(Schema):
    """Image evaluation (diffmem.eval.images): memorization in pixel space against the training images,
    ||x - NN1|| < ratio ||x - NN2|| (arXiv 2511.03202, Section 6); FD, KID, precision/recall (k-NN manifolds, k)
    of `features` ('classifier': a small CNN trained feature_steps on the reference pool's labels; 'pixels';
    'inception': Keras InceptionV3 from the weights file `inception_weights`) against the reference set
    ('heldout': the split's images outside the training subset; 'test'; 'all'), capped at num_ref (0 = all)."""
    reference: str = field("heldout", choices=REFERENCES)
    num_ref: int = field(0, min=0)
    features: str = field("classifier", choices=FEATURES)
    feature_steps: int = field(400, min=1)
    k: int = field(3, min=1)
    ratio: float = field(1.0 / 3.0, min=0, max=1, min_open=True)
    kid_subsets: int = field(100, min=1)
    grid_samples: int = field(32, min=0)
    inception_weights: str = field("")

    def check(self):
        import os
        w = self.inception_weights
        if self.features == "inception":
            if not w:
                raise self.fail("inception_weights", "must be the path of a Keras InceptionV3 weights file when "
                                "features='inception' (weights are not bundled; see diffmem/eval/features)")
            if not os.path.isfile(os.path.expanduser(w)):
                raise self.fail("inception_weights", f"={w!r} is not a file")
        elif w:
            raise self.fail("inception_weights", f"is only used with config.eval.features='inception', got "
                                                 f"features={self.features!r}")
        if self.num_ref and self.num_ref <= self.k:
            raise self.fail("num_ref", f"({self.num_ref}) must be 0 (all) or exceed k ({self.k})")


# ------------------------------------------------------------------------------------------- mixture lab

TIME_EMBEDS = ("sinusoidal", "log", "raw")       # diffmem.models.mlp
MLP_OUTPUTS = ("eps", "score", "edm", "x0")
WEIGHTINGS = ("none", "sigma2")                  # diffmem.losses
LAB_TIME_DISTS = ("uniform", "log_uniform")


@dataclasses.dataclass(frozen=True)
class MLPConfig(Schema):
    """The lab's score network (config.model; diffmem.models.mlp.ScoreMLP without dim and width, which the
    experiments sweep): hidden layers `depth`, time embedding, output parametrisation; sigma_data 0 = automatic
    (the per-coordinate std of the mixture, for output='edm')."""
    depth: int = field(3, min=1)
    time_embed: str = field("sinusoidal", choices=TIME_EMBEDS)
    embed_dim: int = field(16, min=2)
    output: str = field("edm", choices=MLP_OUTPUTS)
    sigma_data: float = field(0.0, min=0)

    def check(self):
        if self.time_embed == "sinusoidal" and self.embed_dim % 2:
            raise self.fail("embed_dim", f"must be even for time_embed='sinusoidal', got {self.embed_dim}")


@dataclasses.dataclass(frozen=True)
class LabLossConfig(Schema):
    """The lab's DSM loss (config.loss; diffmem.losses.make_lab_loss): t on [t0, T], uniform or log-uniform,
    weighting 'none' (eq. 3.1) or 'sigma2'."""
    t0: float = field(1e-3, min=0, min_open=True)
    T: float = field(10.0, min=0, min_open=True)
    weighting: str = field("sigma2", choices=WEIGHTINGS)
    time_dist: str = field("log_uniform", choices=LAB_TIME_DISTS)

    def check(self):
        if not self.T > self.t0:
            raise self.fail("T", f"must exceed t0={self.t0:g}, got {self.T:g}")
