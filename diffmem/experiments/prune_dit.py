"""Head-importance pruning of a memorizing DiT (PAPER.md section 4: Table 1, Algorithms 1 and 2) and the evidence
the reviewers asked for (PAPER.md section 5).

Pipeline (configs/prune_dit.py):
  1. base: train (or resume, or load from config.base_checkpoint) an unconditional eps-DiT on an n-image subset
     until it memorizes (image_diffusion.train_model; the same keys as experiments/train_dit.py).
  2. scores (Algorithm 2, pruning.importance_many): |dL/dxi_h| summed over score_batches batches with ONE unit time
     u per batch, normalised per layer; three time laws on the SAME batches and noise (common random numbers):
     importance u ~ Beta(0.8, 2) (small t, the paper's), importance_large_t Beta(2, 0.8), importance_uniform U(0, 1);
     plus magnitude (pruning.magnitude_scores) and random (pruning.random_mask, a fresh mask per repeat).
  3. prune (Algorithm 1, pruning.prune_mask): remove the floor(eta H) lowest heads ranked over all layers, then
     fine-tune M steps with the mask fixed (train.train on the eps loss of the gated model).
  4. sample and evaluate every model with the same per-repeat sampling keys and sample count: memorization ratio
     (pixel space, PAPER.md section 4), FD / KID / precision-recall of classifier features, parameter count of the
     physically pruned model (dit.remove_heads).
Methods: original (no fine-tuning), finetune_only (the control: the same M fine-tuning steps with every head, so a
drop caused by fine-tuning alone is not credited to pruning), the five pruning methods above, weight_decay_finetune
(the control with strong AdamW decay) and weight_decay_base (a base trained from scratch with decay; config flag).

"Where is memorization decided?" (config.where):
  * trajectories of the base model: along the reverse path from T to t0, the Tweedie estimate
    x0_hat(y_t) = (y_t + sigma_t^2 score(y_t, t)) / alpha_t and its nearest training image; the decision time of a
    sample is the largest grid time from which on its nearest training image no longer changes (reported in u and
    t, separately for memorized and non-memorized samples);
  * swap test, for each pair (a, b) of config.where.swap_pairs (e.g. a = original, b = importance-pruned): sample
    with model a for t > tau and model b for t <= tau ('a_then_b'), and the reverse ('b_then_a'), for several tau
    (unit time u; t = ddpm_time(u)); all on the same keys. tau above T gives the second model alone, tau below t0
    the first alone (tested). Models are repeat 0's: original, finetune_only, weight_decay_finetune, or a pruning
    method at paper_eta. If memorization is decided at small t, a_then_b moves to b alone already at small tau.

Randomness (typed keys, fold_in): base init + training fold_in(key(seed), 1) (as train_dit: image_diffusion.
train_model folds 0 / 1 in); repeat r: sampling fold_in(key(seed), 2, r), scores fold_in(key(seed), 3, r), random
mask fold_in(key(seed), 4, r), fine-tuning stream fold_in(key(seed), 5, r); trajectories and swap test
fold_in(key(seed), 7). Within a repeat every method sees the same fine-tuning batches and sampling noise.

Resume: the base keeps orbax checkpoints in <workdir>/base (stamped with its settings; another model / data /
optimizer in the same workdir is refused). Every other piece is cached under <workdir>/pieces/<hash>/, the hash
covering every setting that changes its numbers (base, fine-tuning, sampler, evaluation, scoring) but not the sweep
lists (etas, methods, repeats): scores_r<r>.npz, runs/<run>/{mask.npy, samples.npz, result.json, params.msgpack
(the fine-tuned weights; kept for repeat 0 at the paper eta and for the unpruned controls)}, where/m<samples>/*.json.
A killed run re-run with the same workdir redoes only unfinished pieces; a larger sweep adds pieces.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
from typing import Any, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import data as data_lib
from diffmem import experiments, losses, metrics, pruning, sampling, sde, train
from diffmem import image_diffusion as idf
from diffmem.experiments import train_dit
from diffmem.models import dit as dit_lib

# Time laws of the importance scores (Algorithm 2): name -> (dist, a, b) of pruning.TimeDist.
SCORE_LAWS = {"importance": ("beta", 0.8, 2.0), "importance_large_t": ("beta", 2.0, 0.8),
              "importance_uniform": ("uniform", 1.0, 1.0)}
PRUNE_METHODS = tuple(SCORE_LAWS) + ("random", "magnitude")
UNPRUNED_METHODS = ("weight_decay_finetune",)
METHODS = PRUNE_METHODS + UNPRUNED_METHODS
ALWAYS = ("original", "finetune_only")            # run in every experiment
# Table 1 of the paper (mean +- std over 5 runs, eta = 20%).
PAPER_TABLE = {"original": dict(precision=(0.39, 0.01), recall=(0.08, 0.01), memorization_pct=(73.82, 1.12),
                                fid=(15.47, 0.28)),
               "importance": dict(precision=(0.33, 0.02), recall=(0.12, 0.01), memorization_pct=(68.58, 0.77),
                                  fid=(15.07, 0.33)),
               "random": dict(precision=(0.30, 0.02), recall=(0.09, 0.01), memorization_pct=(66.87, 0.94),
                              fid=(17.14, 0.25))}
PATH_BATCH = 256          # paths per batch of the trajectory analysis (memory: (steps + 1) x batch images)
METRIC_KEYS = ("memorization_ratio", "fd", "kid_mean", "precision", "recall", "param_count", "loss_after_prune",
               "final_finetune_loss", "mean_nn1_dist")

SECTIONS = {
    "data": ("name", "n", "seed", "data_dir"),
    "model": ("name", "patch", "hidden", "depth", "heads", "mlp_ratio", "dtype"),
    "diffusion": ("u_min",),
    "train": tuple(f.name for f in dataclasses.fields(train.TrainConfig) if f.name != "seed"),
    "finetune": tuple(f.name for f in dataclasses.fields(train.TrainConfig) if f.name != "seed"),
    "prune": ("etas", "paper_eta", "keep_one_per_layer", "score_batches", "score_batch_size", "loss_batches"),
    "weight_decay": ("base", "base_value", "finetune_value"),
    "sampler": tuple(f.name for f in dataclasses.fields(idf.SamplerConfig)),
    "eval": ("reference", "num_ref", "features", "feature_steps", "k", "ratio", "kid_subsets", "grid_samples",
             "inception_weights"),
    "where": ("enabled", "num_samples", "taus_u", "swap_pairs"),
}
TOP_LEVEL = ("experiment", "seed", "preset", "base_checkpoint", "methods", "sweep_methods", "repeats",
             "sweep_repeats", "progress") + tuple(SECTIONS)
_RESUMABLE_TRAIN_FIELDS = ("steps", "log_every", "ckpt_every", "keep_ckpts")


# ------------------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated, plain-valued form of the config."""
    seed: int
    preset: str
    data: dict                 # name, n, seed, data_dir (None = default)
    model: dict                # resolved sizes (train_dit.resolve_model)
    u_min: float
    base_checkpoint: str
    train: train.TrainConfig
    finetune: train.TrainConfig
    etas: tuple[float, ...]    # sorted, paper_eta included
    paper_eta: float
    keep_one_per_layer: bool
    score_batches: int
    score_batch_size: int
    loss_batches: int
    methods: tuple[str, ...]
    sweep_methods: tuple[str, ...]
    repeats: int
    sweep_repeats: int
    wd_base: bool
    wd_base_value: float
    wd_finetune_value: float
    sampler: idf.SamplerConfig
    eval: dict
    where: dict
    progress: bool


def _num(name: str, v, lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> float:
    ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
          and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a number in {rng}, got {v!r}")
    return float(v)


def check_eta(eta, name: str = "eta") -> float:
    """eta (fraction of heads pruned) must be a number in [0, 1)."""
    return _num(f"{name} (fraction of heads to prune)", eta, 0.0, 1.0)


def _methods(name: str, v) -> tuple[str, ...]:
    v = list(v)
    bad = [m for m in v if m not in METHODS]
    if bad:
        raise ValueError(f"{name} has unknown method(s) {bad}; accepted: {list(METHODS)} ('original' and "
                         f"'finetune_only' always run)")
    if len(set(v)) != len(v):
        raise ValueError(f"{name} must not repeat a method, got {v}")
    return tuple(v)


def parse_config(config) -> Settings:
    """ConfigDict -> Settings; a ValueError naming the field for anything unknown, missing or out of range."""
    unknown = sorted(set(config.keys()) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; accepted: {list(TOP_LEVEL)}")
    sec = {name: experiments.config_section(config, name, SECTIONS[name],
                                optional=("b1", "b2", "schedule", "denoise", "use_ema", "seed",
                                          "inception_weights"))
           for name in SECTIONS}
    d = sec["data"]
    if not isinstance(d["name"], str) or not d["name"]:
        raise ValueError(f"config.data.name must be a non-empty str, one of {', '.join(data_lib.ACCEPTED_NAMES)}; "
                         f"got {d['name']!r}")
    data = dict(name=d["name"], n=experiments.check_int("config.data.n", d["n"], 2), seed=experiments.check_int("config.data.seed", d["seed"], 0),
                data_dir=d["data_dir"] or None)
    model = train_dit.resolve_model(sec["model"])
    try:
        u_min = idf.check_u_min(sec["diffusion"]["u_min"])
    except ValueError as e:
        raise ValueError(f"config.diffusion.{e}") from None
    seed = experiments.check_int("config.seed", config.get("seed", 0), 0)
    tcfg = {}
    for name in ("train", "finetune"):
        try:
            tcfg[name] = train.TrainConfig.from_dict({**sec[name], "seed": seed})
        except (ValueError, TypeError) as e:
            raise ValueError(f"config.{name}: {e}") from None
    p = sec["prune"]
    etas = list(p["etas"]) if isinstance(p["etas"], (list, tuple)) else None
    if not etas:
        raise ValueError(f"config.prune.etas must be a non-empty list of numbers in [0, 1), got {p['etas']!r}")
    etas = [check_eta(e, f"config.prune.etas[{i}]") for i, e in enumerate(etas)]
    paper_eta = check_eta(p["paper_eta"], "config.prune.paper_eta")
    if paper_eta == 0.0:
        raise ValueError("config.prune.paper_eta must be > 0 (Table 1 compares pruned models; paper: 0.2)")
    etas = tuple(sorted(set(e for e in etas if e > 0) | {paper_eta}))   # eta = 0 is the finetune_only control
    methods = _methods("config.methods", config.methods)
    sweep = _methods("config.sweep_methods", config.sweep_methods)
    extra = [m for m in sweep if m not in methods or m not in PRUNE_METHODS]
    if extra:
        raise ValueError(f"config.sweep_methods must be pruning methods listed in config.methods, got {extra}")
    wd = sec["weight_decay"]
    sampler_d = sec["sampler"]
    try:
        scfg = idf.SamplerConfig(**sampler_d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.sampler: {e}") from None
    ev = dict(sec["eval"])
    if ev["reference"] not in train_dit.REFERENCES:
        raise ValueError(f"config.eval.reference must be one of {train_dit.REFERENCES}, got {ev['reference']!r}")
    train_dit.check_features(ev)
    for f, lo in (("num_ref", 0), ("feature_steps", 1), ("k", 1), ("kid_subsets", 1), ("grid_samples", 0)):
        ev[f] = experiments.check_int(f"config.eval.{f}", ev[f], lo)
    ev["ratio"] = _num("config.eval.ratio", ev["ratio"], 0.0, 1.0, lo_open=True, hi_open=False)
    if scfg.num_samples <= ev["k"]:
        raise ValueError(f"config.sampler.num_samples ({scfg.num_samples}) must exceed config.eval.k ({ev['k']})")
    w = dict(sec["where"])
    w["enabled"] = bool(w["enabled"])
    w["num_samples"] = experiments.check_int("config.where.num_samples", w["num_samples"], 1)
    taus = list(w["taus_u"])
    w["taus_u"] = tuple(_num(f"config.where.taus_u[{i}]", t, 0.0, 1.0, lo_open=True, hi_open=False)
                        for i, t in enumerate(taus))
    if w["enabled"] and not w["taus_u"]:
        raise ValueError("config.where.taus_u must hold at least one unit time in (0, 1] when where.enabled")
    pairs = [tuple(p) if isinstance(p, (list, tuple)) else p for p in list(w["swap_pairs"])]
    known = set(ALWAYS) | set(methods)
    for i, pr in enumerate(pairs):
        if not (isinstance(pr, tuple) and len(pr) == 2 and pr[0] != pr[1] and set(pr) <= known):
            raise ValueError(f"config.where.swap_pairs[{i}] must be a pair of two different models among "
                             f"{sorted(known)} (config.methods plus original / finetune_only), got {pr!r}")
    w["swap_pairs"] = tuple(pairs)
    base_ckpt = config.get("base_checkpoint", "") or ""
    if not isinstance(base_ckpt, str):
        raise ValueError(f"config.base_checkpoint must be a str path ('' = train the base here), got {base_ckpt!r}")
    return Settings(
        seed=seed, preset=str(config.get("preset", "")), data=data, model=model, u_min=u_min,
        base_checkpoint=base_ckpt, train=tcfg["train"], finetune=tcfg["finetune"], etas=etas, paper_eta=paper_eta,
        keep_one_per_layer=bool(p["keep_one_per_layer"]),
        score_batches=experiments.check_int("config.prune.score_batches", p["score_batches"], 1),
        score_batch_size=experiments.check_int("config.prune.score_batch_size", p["score_batch_size"], 1),
        loss_batches=experiments.check_int("config.prune.loss_batches", p["loss_batches"], 1),
        methods=methods, sweep_methods=sweep, repeats=experiments.check_int("config.repeats", config.repeats, 1),
        sweep_repeats=experiments.check_int("config.sweep_repeats", config.sweep_repeats, 1), wd_base=bool(wd["base"]),
        wd_base_value=_num("config.weight_decay.base_value", wd["base_value"], 0.0, math.inf),
        wd_finetune_value=_num("config.weight_decay.finetune_value", wd["finetune_value"], 0.0, math.inf),
        sampler=scfg, eval=ev, where=w, progress=bool(config.get("progress", False)))


# ------------------------------------------------------------------------------------------ small helpers

def _key(seed: int, *path: int) -> jax.Array:
    k = jax.random.key(seed)
    for p in path:
        k = jax.random.fold_in(k, p)
    return k


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _save_bytes(path: str, blob: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


def _jsonable(x):
    """numpy scalars / arrays -> Python; NaN / inf -> None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def eta_tag(eta: float) -> str:
    return f"{eta:g}"


def run_id(method: str, eta: Optional[float], repeat: int) -> str:
    return f"{method}_r{repeat}" if eta is None else f"{method}_eta{eta_tag(eta)}_r{repeat}"


# ------------------------------------------------------------------------------------------ base model

def load_base_checkpoint(path: str, model: dit_lib.DiT, use_ema: bool = True) -> tuple[Any, int]:
    """(params, step) from the latest orbax checkpoint in `path` (a directory of step folders, or a workdir with a
    checkpoints/ folder, as written by diffmem.train). use_ema picks ema_params (else params). The tree must match
    `model`; a missing directory / checkpoint or another architecture raises ValueError."""
    import orbax.checkpoint as ocp
    if not path or not os.path.isdir(path):
        raise ValueError(f"config.base_checkpoint={path!r}: no such directory (give a directory with orbax "
                         "checkpoints of the base DiT, e.g. a train_dit run's <workdir>/n<n>, or '' to train it here)")
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    mngr = ocp.CheckpointManager(os.path.abspath(root))
    try:
        step = mngr.latest_step()
        if step is None:
            raise ValueError(f"config.base_checkpoint={path!r}: no checkpoint found in {root} (expected orbax step "
                             "folders written by diffmem.train)")
        restored = mngr.restore(step, args=ocp.args.StandardRestore())
    finally:
        mngr.close()
    name = "ema_params" if use_ema else "params"
    if not isinstance(restored, dict) or name not in restored:
        raise ValueError(f"config.base_checkpoint={path!r}: checkpoint {step} has no '{name}' entry (keys: "
                         f"{sorted(restored) if isinstance(restored, dict) else type(restored).__name__})")
    params = restored[name]
    want = jax.eval_shape(lambda: idf.init_params(model, jax.random.key(0)))
    got_s = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    want_s = jax.tree.map(lambda a: tuple(a.shape), want)
    if jax.tree.structure(got_s) != jax.tree.structure(want_s) or got_s != want_s:
        sizes = dict(depth=model.depth, hidden=model.hidden, heads=model.heads, patch=model.patch)
        raise ValueError(f"config.base_checkpoint={path!r}: the checkpoint's parameters do not match the DiT of "
                         f"config.model {sizes}")
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params), int(step)


def _check_stamp(path: str, stamp: dict, what: str) -> None:
    old = experiments.read_json(path)
    new = json.loads(json.dumps(stamp))
    if old is None:
        experiments.write_json(path, new)
        return
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{os.path.dirname(path)} holds a {what} trained with other settings (fields {diff}: "
                         f"stored {[old.get(k) for k in diff]}, requested {[new.get(k) for k in diff]}); use a fresh "
                         f"workdir (only train.steps / log_every / ckpt_every / keep_ckpts may change on resume)")


def train_base(s: Settings, model: dit_lib.DiT, images: np.ndarray, indices: np.ndarray, base_dir: str,
               weight_decay: Optional[float] = None) -> dict:
    """Trains / resumes / restores the base in base_dir (init + stream from fold_in(key(seed), 1), as train_dit).
    Returns dict(params (sampling params), steps_trained (by this call), final_loss, source)."""
    cfg = s.train if weight_decay is None else dataclasses.replace(s.train, weight_decay=weight_decay)
    os.makedirs(base_dir, exist_ok=True)
    tc = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUMABLE_TRAIN_FIELDS}
    stamp = dict(seed=s.seed, data=s.data["name"], n=int(len(images)), indices_sha1=experiments.sha1_arrays(indices),
                 model=s.model, u_min=s.u_min, train=tc)
    _check_stamp(os.path.join(base_dir, "train_settings.json"), stamp, "base model")
    logging.info("prune_dit: base model in %s: %d steps (weight decay %g; resumes from the last checkpoint)",
                 base_dir, cfg.steps, cfg.weight_decay)
    # image_diffusion.train_model's keys (init fold_in(key, 0), stream fold_in(key, 1)) and loss, through the
    # masked loss with every gate 1 (the same numbers): it shares its compiled step with fine-tuning when the
    # optimizer settings agree.
    key = _key(s.seed, 1)
    count = [0]
    ones = np.ones((len(images), model.depth, model.max_heads), np.float32)
    state = train.train(masked_loss(model, float(s.u_min)), idf.init_params(model, jax.random.fold_in(key, 0)),
                        {"x": np.asarray(images, np.float32), "mask": ones}, cfg, base_dir,
                        key=jax.random.fold_in(key, 1), hooks=(lambda *a: count.__setitem__(0, count[0] + 1),),
                        progress=s.progress)
    ran = count[0]
    recs = train.read_metrics(base_dir) if os.path.exists(os.path.join(base_dir, "metrics.jsonl")) else []
    params = jax.tree.map(np.asarray, idf.sampling_params(state, s.sampler.use_ema))
    return dict(params=params, steps_trained=int(ran), final_loss=recs[-1]["loss"] if recs else None,
                source="trained", steps=int(cfg.steps))


# ------------------------------------------------------------------------------------------ fine-tuning

@functools.lru_cache(maxsize=16)
def masked_loss(model: dit_lib.DiT, u_min: float):
    """Eps loss(params, key, batch) of the DiT gated by batch['mask'][0] (depth, max_heads) on batch['x'].

    The same numbers as image_diffusion.make_loss(model, u_min, mask) (losses.make_eps_loss); the mask travels in
    the batch so that every fine-tuning run (any mask) shares ONE compiled train step."""
    apply = idf.eps_apply_fn(model)

    def loss(params, key, batch):
        mask = batch["mask"][0]
        return losses.make_eps_loss(lambda p, x, u: apply(p, x, u, mask), u_min=u_min)(params, key, batch["x"])
    return loss


def finetune(model: dit_lib.DiT, params, mask, images, cfg: train.TrainConfig, workdir: Optional[str], *,
             key: jax.Array, u_min: float, progress: bool = False) -> tuple[Any, Optional[float]]:
    """Algorithm 1's fine-tuning: cfg.steps steps of the eps loss with the head mask FIXED, from `params` (fresh
    optimizer; train.train, resumable in workdir). mask (depth, max_heads) of exact 0/1 (ValueError otherwise).
    Returns (sampling params: EMA if cfg.ema_decay > 0, else the raw params; last logged loss)."""
    mask = pruning.check_mask(mask, model)
    images = np.asarray(images, np.float32)
    data = {"x": images, "mask": np.broadcast_to(mask, (images.shape[0],) + mask.shape).copy()}
    state = train.train(masked_loss(model, float(u_min)), params, data, cfg, workdir, key=key, progress=progress)
    recs = train.read_metrics(workdir) if workdir and os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    out = state.ema_params if cfg.ema_decay > 0 else state.params
    return jax.tree.map(np.asarray, out), (recs[-1]["loss"] if recs else None)


# ------------------------------------------------------------------------------------------ masks

def make_masks(s: Settings, model: dit_lib.DiT, scores: dict[str, np.ndarray], repeat: int) -> dict:
    """{(method, eta): mask} for every pruning method of s.methods at every eta it runs at for this repeat."""
    valid = dit_lib.head_valid_mask(model)
    out = {}
    for m in s.methods:
        if m not in PRUNE_METHODS:
            continue
        for eta in s.etas:
            if not _runs_at(s, m, eta, repeat):
                continue
            if m == "random":
                mask = pruning.random_mask(_key(s.seed, 4, repeat), model.depth, model.max_heads, eta,
                                           keep_one_per_layer=s.keep_one_per_layer, valid=valid)
            else:
                mask = pruning.prune_mask(scores[m], eta, keep_one_per_layer=s.keep_one_per_layer, valid=valid)
            out[(m, eta)] = mask
    return out


def _runs_at(s: Settings, method: str, eta: float, repeat: int) -> bool:
    if eta == s.paper_eta:
        return repeat < s.repeats
    return method in s.sweep_methods and repeat < s.sweep_repeats


def compute_scores(s: Settings, model: dit_lib.DiT, params, images, repeat: int) -> dict[str, np.ndarray]:
    """Algorithm 2 under the three time laws on the same batches (importance, normalised per layer), the raw sums,
    and the magnitude scores. Arrays (depth, max_heads)."""
    laws = list(SCORE_LAWS.values())
    out = pruning.importance_many(model, params, images, _key(s.seed, 3, repeat), laws,
                                  num_batches=s.score_batches, batch_size=s.score_batch_size)
    res = {}
    for i, name in enumerate(SCORE_LAWS):
        res[name] = np.asarray(out["importance"][i])
        res[name + "_raw"] = np.asarray(out["raw"][i])
    res["magnitude"] = np.asarray(pruning.magnitude_scores(model, params))
    return res


# ------------------------------------------------------------------------------------------ swap sampler

@functools.lru_cache(maxsize=8)
def _swap_sampler(model: dit_lib.DiT, shape: tuple[int, ...], method: str, denoise: bool):
    """jit(params_hi, mask_hi, params_lo, mask_lo, tau_t, keys, grid) -> samples: model hi for t > tau_t, lo else."""
    @jax.jit
    def run(params_hi, mask_hi, params_lo, mask_lo, tau_t, keys, grid):
        def score(x, t):  # t (b,): one grid time for the whole batch
            hi = t[0] > tau_t
            p = jax.tree.map(lambda a, b: jnp.where(hi, a, b), params_hi, params_lo)
            m = jnp.where(hi, mask_hi, mask_lo)
            return idf.make_score_fn(model, p, m)(x, t)
        return sampling.sample_batch(score, keys, shape, grid, method, denoise)
    return run


def swap_sample(model: dit_lib.DiT, params_hi, mask_hi, params_lo, mask_lo, tau_u: float, key: jax.Array,
                cfg: idf.SamplerConfig, u_min: float) -> np.ndarray:
    """Samples (m, H, W, C) with model (params_hi, mask_hi) at diffusion times t > t(tau_u) and (params_lo, mask_lo)
    at t <= t(tau_u) (the final Tweedie step at t0 included). tau_u in unit time; tau_u > 1 gives lo alone, tau_u <
    u_min hi alone. Sample i uses fold_in(key, i), as image_diffusion.sample, so the endpoints equal it."""
    mask_hi = pruning.check_mask(mask_hi, model)
    mask_lo = pruning.check_mask(mask_lo, model)
    if isinstance(tau_u, bool) or not isinstance(tau_u, (int, float, np.floating)) or not math.isfinite(tau_u):
        raise ValueError(f"tau_u must be a finite number (unit time), got {tau_u!r}")
    tau_t = float(sde.ddpm_time(jnp.float32(tau_u))) if tau_u >= 0 else -1.0
    grid = idf.sampling_grid(u_min, cfg.steps)
    shape = (model.image_size, model.image_size, model.channels)
    run = _swap_sampler(model, shape, cfg.method, bool(cfg.denoise))
    mesh = sampling.device_mesh()
    args = sampling.replicate((params_hi, jnp.asarray(mask_hi), params_lo, jnp.asarray(mask_lo),
                               jnp.float32(tau_t)), mesh)
    grid = sampling.replicate(grid, mesh)
    out = [np.asarray(run(*args, keys, grid))[:keep]
           for _, keep, keys in sampling.key_batches(key, cfg.num_samples, cfg.batch_size, mesh)]
    return np.concatenate(out, 0)


# ------------------------------------------------------------------------------------------ trajectories

@functools.lru_cache(maxsize=8)
def _path_sampler(model: dit_lib.DiT, shape: tuple[int, ...], method: str):
    """jit(params, mask, keys, grid) -> (final samples (b, ...), Tweedie estimates (K+1, b, ...) along the path)."""
    @jax.jit
    def run(params, mask, keys, grid):
        score = idf.make_score_fn(model, params, mask)
        final, path = sampling.sample_batch(score, keys, shape, grid, method, True, return_path=True)

        def tweedie(args):  # x0_hat = (y + sigma_t^2 score(y, t)) / alpha_t
            y, t = args
            tb = jnp.full((y.shape[0],), t, y.dtype)
            return (y + sde.sigma2(t) * score(y, tb)) / sde.alpha(t)
        return final, jax.lax.map(tweedie, (path, grid))
    return run


def trajectory_decisions(model: dit_lib.DiT, params, train_images, key: jax.Array, cfg: idf.SamplerConfig,
                         u_min: float, ratio: float = 1.0 / 3.0, mask=None) -> dict:
    """Where along the reverse path is each sample's nearest training image decided?

    Tweedie estimates x0_hat_k at every grid time t_k (k = 0: T, ..., K: t0; x0_hat_K is the final sample); nn_k =
    index of the training image nearest x0_hat_k. decided_k = (nn_j == nn_K for every j >= k). The decision index is
    the first k with decided_k, i.e. the largest time from which on the nearest training image no longer changes.
    Returns per-sample arrays and curves over the grid (numpy / Python numbers)."""
    mask = np.ones((model.depth, model.max_heads), np.float32) if mask is None else pruning.check_mask(mask, model)
    grid = idf.sampling_grid(u_min, cfg.steps)                                        # (K+1,) decreasing t
    shape = (model.image_size, model.image_size, model.channels)
    run = _path_sampler(model, shape, cfg.method)
    train_flat = np.asarray(train_images, np.float32).reshape(len(train_images), -1)
    mesh = sampling.device_mesh()
    params, mask, grid = sampling.replicate((params, jnp.asarray(mask), grid), mesh)
    finals, lasts, nns, mems = [], [], [], []
    # one batch of paths at a time: (K+1, b, H, W, C) on the devices
    for _, keep, keys in sampling.key_batches(key, cfg.num_samples, min(cfg.batch_size, PATH_BATCH), mesh):
        f, x0 = run(params, mask, keys, grid)
        x0 = np.asarray(x0)[:, :keep]                                                 # (K+1, keep, H, W, C)
        k1 = x0.shape[0]
        dist, idx = metrics.top2_neighbors(x0.reshape(k1 * keep, -1), train_flat)
        dist, idx = np.asarray(dist).reshape(k1, keep, 2), np.asarray(idx).reshape(k1, keep, 2)
        nns.append(idx[..., 0])                                                       # (K+1, b)
        mems.append(dist[..., 0] < ratio * dist[..., 1])                              # (K+1, b)
        finals.append(np.asarray(f)[:keep])
        lasts.append(x0[-1])
    final = np.concatenate(finals, 0)                                                 # (m, H, W, C)
    nn = np.concatenate(nns, 1)                                                       # (K+1, m)
    mem_along = np.concatenate(mems, 1)                                               # (K+1, m)
    k_star, same, decided = decision_index(nn)
    t_grid = np.asarray(grid, np.float64)
    u_grid = np.asarray(sde.ddpm_time_inverse(jnp.asarray(grid)), np.float64)
    memorized = mem_along[-1]
    return dict(final=final, nn=nn, memorized=memorized, k_star=k_star, t_star=t_grid[k_star], u_star=u_grid[k_star],
                t_grid=t_grid, u_grid=u_grid, frac_same=same.mean(1), frac_decided=decided.mean(1),
                frac_memorized_along=mem_along.mean(1), tweedie_last=np.concatenate(lasts, 0))


def decision_index(nn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nn (K+1, m): nearest-training-image index of each sample at grid steps k = 0 (T) .. K (t0).

    Returns (k_star (m,), same (K+1, m), decided (K+1, m)): same[k] = nn[k] == nn[K]; decided[k] = same[j] for every
    j >= k; k_star = the first k with decided[k] (K if the last step changed the nearest image)."""
    nn = np.asarray(nn)
    if nn.ndim != 2 or nn.shape[0] < 1:
        raise ValueError(f"nn must have shape (steps + 1, m), got {nn.shape}")
    same = nn == nn[-1][None]
    decided = np.flip(np.cumprod(np.flip(same, 0), 0), 0).astype(bool)
    return np.argmax(decided, axis=0), same, decided


def _quantiles(x: np.ndarray) -> Optional[dict]:
    if x.size == 0:
        return None
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    return dict(n=int(x.size), mean=float(x.mean()), q10=float(q[0]), q25=float(q[1]), median=float(q[2]),
                q75=float(q[3]), q90=float(q[4]))


def summarize_decisions(tr: dict) -> dict:
    mem = tr["memorized"]
    out = dict(num_samples=int(mem.size), memorization_ratio=float(mem.mean()),
               grid_u=tr["u_grid"].tolist(), grid_t=tr["t_grid"].tolist(),
               frac_same_nn_as_final=tr["frac_same"].tolist(), frac_decided=tr["frac_decided"].tolist(),
               frac_memorized_along=tr["frac_memorized_along"].tolist())
    for name, sel in (("all", np.ones_like(mem)), ("memorized", mem), ("not_memorized", ~mem)):
        out[f"decision_u_{name}"] = _quantiles(tr["u_star"][sel])
        out[f"decision_t_{name}"] = _quantiles(tr["t_star"][sel])
    return out


# ------------------------------------------------------------------------------------------ evaluation

@dataclasses.dataclass
class Context:
    """Everything a piece needs: settings, data, model, base, evaluation set-up, directories."""
    s: Settings
    model: dit_lib.DiT
    images: np.ndarray
    base_params: Any
    extractor: metrics.FeatureExtractor
    ref_features: np.ndarray
    piece_dir: str
    counters: dict


def evaluate(ctx: Context, samples: np.ndarray) -> tuple[dict, dict]:
    ev = ctx.s.eval
    summary, mem = idf.evaluate_samples(samples, ctx.images, ctx.ref_features, ctx.extractor, k=ev["k"],
                                        ratio=ev["ratio"], kid_subsets=ev["kid_subsets"], seed=ctx.s.seed)
    m = len(samples)
    r = summary["memorization_ratio"]
    summary["memorization_stderr"] = math.sqrt(r * (1 - r) / m)
    return summary, mem


def param_count(model: dit_lib.DiT, params, mask) -> int:
    """Parameters of the physically pruned model (dit.remove_heads)."""
    _, small = dit_lib.remove_heads(model, params, mask)
    return dit_lib.count_params(small)


def run_piece(ctx: Context, method: str, eta: Optional[float], repeat: int, mask: np.ndarray,
              init_params, *, tune: bool, cfg: Optional[train.TrainConfig] = None,
              loss_after_prune: Optional[float] = None, suffix: str = "") -> dict:
    """One (method, eta, repeat): fine-tune (if `tune`) with the mask fixed, sample, evaluate; cached on disk in
    <piece_dir>/runs/<run_id><suffix>/ (suffix: settings outside the piece hash, e.g. a weight-decay value)."""
    s, model = ctx.s, ctx.model
    rid = run_id(method, eta, repeat) + suffix
    rdir = os.path.join(ctx.piece_dir, "runs", rid)
    res_path = os.path.join(rdir, "result.json")
    old = experiments.read_json(res_path)
    if old is not None:
        ctx.counters["runs_reused"] += 1
        return old
    os.makedirs(rdir, exist_ok=True)
    w0, c0 = time.perf_counter(), time.process_time()
    mask = pruning.check_mask(mask, model)
    np.save(os.path.join(rdir, "mask.npy"), mask)
    params_path = os.path.join(rdir, "params.msgpack")
    final_loss = None
    if not tune:
        params = init_params
    elif os.path.exists(params_path):
        params = flax.serialization.from_bytes(init_params, open(params_path, "rb").read())
        final_loss = (experiments.read_json(os.path.join(rdir, "finetune.json")) or {}).get("final_finetune_loss")
    else:
        cfg = cfg or s.finetune
        params, final_loss = finetune(model, init_params, mask, ctx.images, cfg, rdir, key=_key(s.seed, 5, repeat),
                                      u_min=s.u_min, progress=s.progress)
        ctx.counters["finetune_steps"] += cfg.steps
        _save_bytes(params_path, flax.serialization.to_bytes(params))
        experiments.write_json(os.path.join(rdir, "finetune.json"), dict(final_finetune_loss=final_loss))
        shutil.rmtree(os.path.join(rdir, "checkpoints"), ignore_errors=True)   # params.msgpack is the checkpoint
    samples = idf.sample(model, params, _key(s.seed, 2, repeat), s.sampler, s.u_min, head_mask=mask)
    summary, mem = evaluate(ctx, samples)
    experiments.save_npz(os.path.join(rdir, "samples.npz"), samples=samples.astype(np.float32), nn_idx=mem["nn_idx"],
           memorized=mem["memorized"], dist_ratio=mem["dist_ratio"])
    valid = dit_lib.head_valid_mask(model)
    result = dict(method=method, eta=eta, repeat=repeat, run=rid, num_heads=int(valid.sum()),
                  num_pruned=int((mask[valid] == 0).sum()), heads_per_layer=[int(r.sum()) for r in mask * valid],
                  param_count=param_count(model, params, mask), final_finetune_loss=final_loss,
                  loss_after_prune=loss_after_prune, mask=mask.astype(int).tolist(), **summary,
                  wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0)
    result = _jsonable(result)
    experiments.write_json(res_path, result)
    if tune and not keep_params(s, eta, repeat):   # the mask and samples stay; the weights only where used later
        os.remove(params_path)
    ctx.counters["runs_computed"] += 1
    logging.info("prune_dit %s: memorization %.3f, FD %.3f, precision %.3f, recall %.3f, params %d (%.1f s)", rid,
                 result["memorization_ratio"], result["fd"], result["precision"], result["recall"],
                 result["param_count"], result["wall_s"])
    return result


def keep_params(s: Settings, eta: Optional[float], repeat: int) -> bool:
    """Fine-tuned weights kept on disk (params.msgpack): repeat 0 at the paper eta and of the unpruned controls
    (the exported models and the swap test use them); the other runs keep their mask, samples and result."""
    return repeat == 0 and (eta is None or eta == s.paper_eta)


def load_run_params(ctx: Context, rid: str):
    return flax.serialization.from_bytes(ctx.base_params,
                                         open(os.path.join(ctx.piece_dir, "runs", rid, "params.msgpack"), "rb").read())


# ------------------------------------------------------------------------------------------ aggregation

def aggregate(runs: list[dict]) -> dict:
    """{method: {eta_tag or '-': {metric: {mean, std, n, values}}}} (std with ddof=1; None for one repeat)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], "-" if r["eta"] is None else eta_tag(r["eta"])), []).append(r)
    out: dict[str, dict] = {}
    for (m, e), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["repeat"])
        cell = {"repeats": [r["repeat"] for r in rs]}
        for k in METRIC_KEYS:
            vals = [r.get(k) for r in rs]
            if any(v is None for v in vals):
                continue
            v = np.asarray(vals, np.float64)
            cell[k] = dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else None, n=int(v.size),
                           values=v.tolist())
        out.setdefault(m, {})[e] = cell
    return out


def paired(runs: list[dict], a: tuple, b: tuple, key: str) -> Optional[dict]:
    """Paired difference a - b of `key` over the repeats both have (same seeds): mean, std, standard error."""
    ra = {r["repeat"]: r[key] for r in runs if (r["method"], r["eta"]) == a and r.get(key) is not None}
    rb = {r["repeat"]: r[key] for r in runs if (r["method"], r["eta"]) == b and r.get(key) is not None}
    common = sorted(set(ra) & set(rb))
    if not common:
        return None
    d = np.asarray([ra[i] - rb[i] for i in common], np.float64)
    std = float(d.std(ddof=1)) if d.size > 1 else None
    return dict(mean=float(d.mean()), std=std, stderr=None if std is None else std / math.sqrt(d.size),
                n=int(d.size), values=d.tolist(), a=list(a), b=list(b))


def comparisons(s: Settings, runs: list[dict]) -> dict:
    """Paired differences at the paper eta (memorization ratio and FD): the questions of Table 1 and its control."""
    e = s.paper_eta
    pairs = {"importance_minus_random": (("importance", e), ("random", e)),
             "importance_minus_finetune_only": (("importance", e), ("finetune_only", None)),
             "random_minus_finetune_only": (("random", e), ("finetune_only", None)),
             "finetune_only_minus_original": (("finetune_only", None), ("original", None)),
             "importance_minus_original": (("importance", e), ("original", None)),
             "importance_minus_importance_large_t": (("importance", e), ("importance_large_t", e)),
             "importance_minus_magnitude": (("importance", e), ("magnitude", e)),
             "weight_decay_finetune_minus_finetune_only": (("weight_decay_finetune", None), ("finetune_only", None))}
    out = {}
    for name, (a, b) in pairs.items():
        cell = {k: paired(runs, a, b, k) for k in ("memorization_ratio", "fd", "precision", "recall")}
        if any(v is not None for v in cell.values()):
            out[name] = cell
    return out


def score_agreement(scores: dict[str, np.ndarray], valid: np.ndarray) -> dict:
    """Spearman rank correlation between the head rankings of the score types (valid heads)."""
    names = [n for n in list(SCORE_LAWS) + ["magnitude"] if n in scores]
    ranks = {n: _rankdata(np.asarray(scores[n])[valid]) for n in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = ranks[a], ranks[b]
            c = np.corrcoef(ra, rb)[0, 1] if ra.std() > 0 and rb.std() > 0 else float("nan")
            out[f"{a}_vs_{b}"] = float(c)
    return out


def _rankdata(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(x.size, np.float64)
    r[order] = np.arange(x.size)
    return r


# ------------------------------------------------------------------------------------------ table

TABLE_ROWS = ("original", "finetune_only", "importance", "importance_large_t", "importance_uniform", "random",
              "magnitude", "weight_decay_finetune", "weight_decay_base")
ROW_LABELS = {"original": "original (unpruned)", "finetune_only": "fine-tune only (control, no pruning)",
              "importance": "importance pruning, Beta(0.8,2) (paper)",
              "importance_large_t": "importance pruning, Beta(2,0.8) (large t)",
              "importance_uniform": "importance pruning, U(0,1)", "random": "random pruning",
              "magnitude": "magnitude pruning", "weight_decay_finetune": "fine-tune with weight decay (no pruning)",
              "weight_decay_base": "base trained with weight decay"}


def table_rows(s: Settings, agg: dict) -> list[dict]:
    rows = []
    for m in TABLE_ROWS:
        cell = agg.get(m, {}).get("-" if m not in PRUNE_METHODS else eta_tag(s.paper_eta))
        if not cell:
            continue
        row = dict(method=m, label=ROW_LABELS[m], eta=s.paper_eta if m in PRUNE_METHODS else None,
                   repeats=len(cell["repeats"]))
        for k in ("precision", "recall", "memorization_ratio", "fd", "kid_mean", "param_count"):
            if k in cell:
                row[k] = dict(mean=cell[k]["mean"], std=cell[k]["std"])
        row["paper"] = PAPER_TABLE.get(m)
        rows.append(row)
    return rows


def _pm(c: Optional[dict], scale: float = 1.0, fmt: str = ".2f") -> str:
    if not c:
        return "-"
    m = format(c["mean"] * scale, fmt)
    return m if c["std"] is None else f"{m} +- {format(c['std'] * scale, fmt)}"


def format_table(s: Settings, rows: list[dict], context: str) -> str:
    """Markdown in the shape of the paper's Table 1 (ours beside the paper's where it has the row)."""
    eta_pct = f"{100 * s.paper_eta:g}%"
    lines = [f"# Table 1 (PAPER.md section 4): pruning at eta = {eta_pct}", "", context, "",
             "| model | precision | recall | memorization % | FD | KID | params | paper precision | paper recall "
             "| paper memorization % | paper FID |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["paper"]
        pp = ["-"] * 4 if p is None else [f"{p['precision'][0]:.2f} +- {p['precision'][1]:.2f}",
                                          f"{p['recall'][0]:.2f} +- {p['recall'][1]:.2f}",
                                          f"{p['memorization_pct'][0]:.2f} +- {p['memorization_pct'][1]:.2f}",
                                          f"{p['fid'][0]:.2f} +- {p['fid'][1]:.2f}"]
        label = r["label"] + ("" if r["eta"] is None else f", eta {eta_pct}")
        params = "-" if "param_count" not in r else f"{r['param_count']['mean']:.0f}"
        lines.append(f"| {label} | {_pm(r.get('precision'))} | {_pm(r.get('recall'))} | "
                     f"{_pm(r.get('memorization_ratio'), 100.0)} | {_pm(r.get('fd'), fmt='.3f')} | "
                     f"{_pm(r.get('kid_mean'), fmt='.3g')} | {params} | " + " | ".join(pp) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plots


def plot_vs_eta(path: str, s: Settings, agg: dict) -> None:
    """Memorization % and FD against eta, one line per pruning method (mean +- std over repeats); the
    finetune_only control is eta = 0 of every line, the original model a dashed line."""
    plt = experiments.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, scale, ylabel in ((axes[0], "memorization_ratio", 100.0, "memorization %"),
                                   (axes[1], "fd", 1.0, "FD (classifier features)")):
        ctrl = agg.get("finetune_only", {}).get("-", {}).get(key)
        for m in PRUNE_METHODS:
            cells = agg.get(m, {})
            pts = sorted((float(e), c[key]) for e, c in cells.items() if e != "-" and key in c)
            if not pts:
                continue
            if ctrl:
                pts = [(0.0, ctrl)] + pts
            x = [p[0] for p in pts]
            y = [p[1]["mean"] * scale for p in pts]
            err = [(p[1]["std"] or 0.0) * scale for p in pts]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m)
        orig = agg.get("original", {}).get("-", {}).get(key)
        if orig:
            ax.axhline(orig["mean"] * scale, color="k", ls="--", lw=1, label="original")
        wdf = agg.get("weight_decay_finetune", {}).get("-", {}).get(key)
        if wdf:
            ax.axhline(wdf["mean"] * scale, color="gray", ls=":", lw=1, label="weight_decay_finetune")
        ax.axvline(s.paper_eta, color="lightgray", lw=0.8)
        ax.set(xlabel="eta (fraction of heads pruned; 0 = fine-tune only)", ylabel=ylabel)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmaps(path: str, s: Settings, scores: dict, masks: dict) -> None:
    """Layer x head heat maps of the importance scores (per-layer normalised) and the magnitude scores; an x marks
    the heads each method prunes at the paper eta."""
    plt = experiments.pyplot()
    names = [n for n in list(SCORE_LAWS) + ["magnitude"] if n in scores]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, n in zip(axes[0], names):
        a = np.asarray(scores[n], np.float64)
        im = ax.imshow(a, aspect="auto", cmap="viridis")
        mask = masks.get((n, s.paper_eta))
        if mask is not None:
            ys, xs = np.nonzero(mask == 0)
            ax.scatter(xs, ys, marker="x", color="red", s=30)
        ax.set(title=n, xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"head scores (x: pruned at eta = {s.paper_eta:g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_where(path: str, where: dict) -> None:
    """Left: along the base model's reverse path, the fraction of samples whose Tweedie estimate already has its
    final nearest training image (and stays there), and the fraction whose estimate passes the memorization test,
    against u. Right: swap test memorization against tau."""
    plt = experiments.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    tr = where.get("trajectory")
    if tr:
        ax = axes[0]
        ax.plot(tr["grid_u"], tr["frac_decided"], label="nearest training image final from here on")
        ax.plot(tr["grid_u"], tr["frac_same_nn_as_final"], ls="--", label="same nearest image as final")
        ax.plot(tr["grid_u"], tr["frac_memorized_along"], ls=":", label="Tweedie estimate memorized")
        med = (tr.get("decision_u_memorized") or {}).get("median")
        if med is not None:
            ax.axvline(med, color="red", lw=0.8, label=f"median decision u (memorized) = {med:.2f}")
        ax.set(xlabel="unit time u (0 = data, 1 = noise)", ylabel="fraction of samples", xlim=(0, 1))
        ax.legend(fontsize=7)
    sw = where.get("swap")
    if sw and sw["pairs"]:
        ax = axes[1]
        for i, p in enumerate(sw["pairs"]):
            a, b = p["pair"]
            taus = [0.0] + [c["tau_u"] for c in p["taus"]] + [1.0]
            ab = ([p["a_alone"]["memorization_ratio"]] + [c["a_then_b"]["memorization_ratio"] for c in p["taus"]]
                  + [p["b_alone"]["memorization_ratio"]])
            ba = ([p["b_alone"]["memorization_ratio"]] + [c["b_then_a"]["memorization_ratio"] for c in p["taus"]]
                  + [p["a_alone"]["memorization_ratio"]])
            color = f"C{i}"
            ax.plot(taus, 100 * np.asarray(ab), "o-", color=color, label=f"{a} (t > tau) then {b}")
            ax.plot(taus, 100 * np.asarray(ba), "s--", color=color, label=f"{b} (t > tau) then {a}")
        ax.set(xlabel="swap time tau (unit time u; 0: first model alone, 1: second alone)",
               ylabel="memorization %", xlim=(-0.02, 1.02))
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ data

def load_data(s: Settings) -> tuple[data_lib.ImageData, np.ndarray, data_lib.ImageData]:
    """(training subset, reference images, labelled pool for the feature classifier)."""
    try:
        d = data_lib.load_images(s.data["name"], n=s.data["n"], seed=s.data["seed"], data_dir=s.data["data_dir"])
    except ValueError as e:
        raise ValueError(f"config.data (name={s.data['name']!r}, n={s.data['n']}): {e}") from None
    kind = s.eval["reference"]
    try:
        pool = data_lib.load_images(s.data["name"], n=None, seed=s.data["seed"],
                                    split="test" if kind == "test" else "train", data_dir=s.data["data_dir"])
    except ValueError as e:
        raise ValueError(f"config.eval.reference={kind!r}: {e}") from None
    idx = np.arange(pool.n)
    if kind == "heldout":
        keep = np.ones(pool.n, bool)
        keep[d.indices] = False
        idx = np.flatnonzero(keep)
    if s.eval["num_ref"] and s.eval["num_ref"] < idx.size:
        idx = np.sort(np.random.default_rng(s.data["seed"]).permutation(idx)[: s.eval["num_ref"]])
    if idx.size <= s.eval["k"]:
        raise ValueError(f"config.eval.reference={kind!r} leaves {idx.size} reference images; need more than "
                         f"config.eval.k={s.eval['k']}")
    return d, pool.images[idx], pool


def _fd_caveat(features: str) -> str:
    """How an FD on these features compares with the paper's FID."""
    if features.startswith("inception"):
        return ("Keras InceptionV3 weights: FD comparable across runs with the same weights, not to published FIDs "
                "of the TTUR Inception graph")
    return "not Inception: not comparable to the paper's FID"


# ------------------------------------------------------------------------------------------ run

def run(config, workdir: str) -> dict:
    """The experiment (see the module docstring): writes results.json, table.md, plots and grids into workdir."""
    s = parse_config(config)
    w0, c0 = time.perf_counter(), time.process_time()
    timing: dict[str, float] = {}

    def lap(name, t, c):
        timing[name + "_wall_s"] = time.perf_counter() - t
        timing[name + "_cpu_s"] = time.process_time() - c

    if s.base_checkpoint and not os.path.isdir(s.base_checkpoint):   # fail before any work
        raise ValueError(f"config.base_checkpoint={s.base_checkpoint!r}: no such directory (give a directory with "
                         "orbax checkpoints of the base DiT, e.g. a train_dit run's <workdir>/n<n>, or '' to train "
                         "the base here)")
    d, ref_images, pool = load_data(s)
    model = idf.build_model(d.image_shape, **{k: v for k, v in s.model.items() if k != "name"})
    if s.base_checkpoint:   # checked (and loaded) before the feature network is trained
        loaded = load_base_checkpoint(s.base_checkpoint, model, s.sampler.use_ema)
    valid = dit_lib.head_valid_mask(model)
    num_heads = int(valid.sum())
    num_params = dit_lib.count_params(jax.eval_shape(lambda: idf.init_params(model, jax.random.key(0))))
    counters = dict(base_steps_trained=0, runs_computed=0, runs_reused=0, finetune_steps=0, scores_computed=0,
                    where_computed=0)
    logging.info("prune_dit: %s n=%d, DiT %s (%d params, %d heads), etas %s, methods %s", d.name, d.n, s.model,
                 num_params, num_heads, list(s.etas), list(s.methods))

    # features and base
    t, c = time.perf_counter(), time.process_time()
    extractor = train_dit.make_feature_extractor(s.eval, pool, workdir, s.seed)
    ref_features = extractor(ref_images)
    lap("features", t, c)
    t, c = time.perf_counter(), time.process_time()
    if s.base_checkpoint:
        params, step = loaded
        base = dict(params=jax.tree.map(np.asarray, params), steps_trained=0, final_loss=None,
                    source=f"loaded:{os.path.abspath(s.base_checkpoint)}", steps=step)
    else:
        base = train_base(s, model, d.images, d.indices, os.path.join(workdir, "base"))
    counters["base_steps_trained"] += base["steps_trained"]
    lap("base", t, c)
    base_params = base["params"]

    piece_stamp = dict(base=dict(source=base["source"], steps=base["steps"], seed=s.seed, model=s.model,
                                 data=s.data, indices_sha1=experiments.sha1_arrays(d.indices), u_min=s.u_min,
                                 train={k: v for k, v in dataclasses.asdict(s.train).items()
                                        if k not in ("log_every", "ckpt_every", "keep_ckpts")},
                                 params_sha1=experiments.sha1_arrays(*jax.tree.leaves(base_params))),
                       finetune=dataclasses.asdict(s.finetune), sampler=dataclasses.asdict(s.sampler), eval=s.eval,
                       score=dict(batches=s.score_batches, batch_size=s.score_batch_size, loss_batches=s.loss_batches),
                       keep_one_per_layer=s.keep_one_per_layer,
                       ref_sha1=experiments.sha1_arrays(ref_images), features=extractor.name)
    piece_dir = os.path.join(workdir, "pieces", _hash(piece_stamp))
    os.makedirs(os.path.join(piece_dir, "runs"), exist_ok=True)
    experiments.write_json(os.path.join(piece_dir, "stamp.json"), _jsonable(piece_stamp))
    ctx = Context(s=s, model=model, images=d.images, base_params=base_params, extractor=extractor,
                  ref_features=ref_features, piece_dir=piece_dir, counters=counters)
    ones = np.ones((model.depth, model.max_heads), np.float32)

    # runs
    t, c = time.perf_counter(), time.process_time()
    runs: list[dict] = []
    scores0, masks0 = None, {}
    for r in range(max(s.repeats, s.sweep_repeats)):
        if r < s.repeats:
            runs.append(run_piece(ctx, "original", None, r, ones, base_params, tune=False))
            runs.append(run_piece(ctx, "finetune_only", None, r, ones, base_params, tune=True))
            if "weight_decay_finetune" in s.methods:
                runs.append(run_piece(ctx, "weight_decay_finetune", None, r, ones, base_params, tune=True,
                                      cfg=dataclasses.replace(s.finetune, weight_decay=s.wd_finetune_value),
                                      suffix=f"_wd{s.wd_finetune_value:g}"))
        scores = _scores_cached(ctx, r)
        masks = make_masks(s, model, scores, r)
        losses_after = _loss_after_prune(ctx, r, masks)
        for (m, eta), mask in sorted(masks.items()):
            runs.append(run_piece(ctx, m, eta, r, mask, base_params, tune=True,
                                  loss_after_prune=losses_after.get(run_id(m, eta, r))))
        if r == 0:
            scores0, masks0 = scores, masks
    if s.wd_base:
        tw, cw = time.perf_counter(), time.process_time()
        wd = train_base(s, model, d.images, d.indices, os.path.join(workdir, "wd_base"), weight_decay=s.wd_base_value)
        counters["base_steps_trained"] += wd["steps_trained"]
        for r in range(s.repeats):
            runs.append(run_piece(ctx, "weight_decay_base", None, r, ones, wd["params"], tune=False,
                                  suffix=f"_wd{s.wd_base_value:g}_steps{wd['steps']}"))
        lap("weight_decay_base", tw, cw)
    lap("runs", t, c)

    # exported (physically smaller) models at the paper eta, repeat 0
    exported = {}
    for m in s.methods:
        if m in PRUNE_METHODS:
            exported[m] = _export(ctx, m, s.paper_eta, workdir)

    # where is memorization decided?
    where = {}
    if s.where["enabled"]:
        t, c = time.perf_counter(), time.process_time()
        where = _where(ctx)
        lap("where", t, c)

    # outputs
    agg = aggregate(runs)
    rows = table_rows(s, agg)
    comp = comparisons(s, runs)
    context = (f"Ours: {d.name}, n = {d.n} training images, DiT depth {model.depth} x {model.max_heads} heads "
               f"(hidden {model.hidden}, patch {model.patch}; {num_params} parameters), base {base['source']} "
               f"({base['steps']} steps); fine-tuning M = {s.finetune.steps} steps; {s.sampler.num_samples} samples "
               f"per model; mean +- std over {s.repeats} repeat(s) (same seeds for every method). FD/KID: "
               f"{extractor.name} features vs {len(ref_images)} '{s.eval['reference']}' images ("
               f"{_fd_caveat(extractor.name)}). Paper: CIFAR-10, 5,000 images, DiT, 5 runs.")
    table_md = format_table(s, rows, context)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table_md)
    plot_vs_eta(os.path.join(workdir, "memorization_fd_vs_eta.png"), s, agg)
    if scores0 is not None:
        plot_heatmaps(os.path.join(workdir, "importance_heatmap.png"), s, scores0, masks0)
    if where:
        plot_where(os.path.join(workdir, "where_decided.png"), where)
    _grids(ctx, workdir)

    lap("total", w0, c0)
    results = dict(
        experiment="prune_dit", preset=s.preset, seed=s.seed,
        data=dict(name=d.name, n=d.n, seed=s.data["seed"], image_shape=list(d.image_shape)),
        model=dict(s.model, num_params=num_params, num_heads=num_heads),
        diffusion=dict(u_min=s.u_min, t0=idf.time_range(s.u_min)[0], T=idf.time_range(s.u_min)[1]),
        base=dict(source=base["source"], steps=base["steps"], final_loss=base["final_loss"]),
        train=dataclasses.asdict(s.train), finetune=dataclasses.asdict(s.finetune),
        sampler=dataclasses.asdict(s.sampler), eval=s.eval,
        prune=dict(etas=list(s.etas), paper_eta=s.paper_eta, keep_one_per_layer=s.keep_one_per_layer,
                   score_batches=s.score_batches, score_batch_size=s.score_batch_size,
                   score_laws={k: list(v) for k, v in SCORE_LAWS.items()}),
        methods=list(ALWAYS) + list(s.methods) + (["weight_decay_base"] if s.wd_base else []),
        repeats=s.repeats, sweep_repeats=s.sweep_repeats,
        weight_decay=dict(base=s.wd_base, base_value=s.wd_base_value, finetune_value=s.wd_finetune_value),
        reference=dict(kind=s.eval["reference"], n_ref=int(len(ref_images)), features=extractor.name,
                       feature_test_accuracy=extractor.info.get("test_accuracy"),
                       feature_info={k: v for k, v in extractor.info.items() if k in train_dit.FEATURE_INFO}),
        runs=runs, aggregate=agg, table=rows, paper_table=PAPER_TABLE, comparisons=comp,
        scores=None if scores0 is None else dict(
            repeat=0, **{k: v.tolist() for k, v in scores0.items()},
            rank_correlation=score_agreement(scores0, valid)),
        exported=exported, where_decided=where, piece_dir=os.path.relpath(piece_dir, workdir),
        this_run=counters, timing=timing)
    results = _jsonable(results)
    experiments.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("prune_dit table:\n%s", table_md)
    return results


def _scores_cached(ctx: Context, repeat: int) -> dict[str, np.ndarray]:
    path = os.path.join(ctx.piece_dir, f"scores_r{repeat}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    scores = compute_scores(ctx.s, ctx.model, ctx.base_params, ctx.images, repeat)
    experiments.save_npz(path, **scores)
    ctx.counters["scores_computed"] += 1
    return scores


def _loss_after_prune(ctx: Context, repeat: int, masks: dict) -> dict[str, float]:
    """Training loss (u ~ U(u_min, 1) per example) of the base gated by each mask BEFORE fine-tuning, all masks on
    the same batches (pruning.evaluate_masks); cached with the runs."""
    path = os.path.join(ctx.piece_dir, f"loss_after_prune_r{repeat}.json")
    cached = experiments.read_json(path) or {}
    todo = [(k, m) for k, m in sorted(masks.items()) if run_id(k[0], k[1], repeat) not in cached]
    if todo:
        s = ctx.s
        vals = pruning.evaluate_masks(ctx.model, ctx.base_params, ctx.images, _key(s.seed, 6, repeat),
                                      np.stack([m for _, m in todo]), num_batches=s.loss_batches,
                                      batch_size=s.score_batch_size, u_min=s.u_min)
        for (k, _), v in zip(todo, np.asarray(vals)):
            cached[run_id(k[0], k[1], repeat)] = float(v)
        experiments.write_json(path, cached)
    return cached


def _export(ctx: Context, method: str, eta: float, workdir: str) -> dict:
    """The physically smaller model (pruning.export_pruned, output equality checked) of (method, eta, repeat 0):
    <workdir>/exported/<method>_eta<eta>/{model.json, params.msgpack}."""
    rid = run_id(method, eta, 0)
    out_dir = os.path.join(workdir, "exported", f"{method}_eta{eta_tag(eta)}")
    meta_path = os.path.join(out_dir, "model.json")
    old = experiments.read_json(meta_path)
    if old is not None and old.get("piece_dir") == os.path.relpath(ctx.piece_dir, workdir):
        return old
    mask = np.load(os.path.join(ctx.piece_dir, "runs", rid, "mask.npy"))
    params = load_run_params(ctx, rid)
    small, small_params = pruning.export_pruned(ctx.model, params, mask)
    os.makedirs(out_dir, exist_ok=True)
    _save_bytes(os.path.join(out_dir, "params.msgpack"), flax.serialization.to_bytes(small_params))
    meta = dict(run=rid, piece_dir=os.path.relpath(ctx.piece_dir, workdir),
                model=dict(image_size=small.image_size, channels=small.channels, patch=small.patch,
                           hidden=small.hidden, depth=small.depth, heads=list(small.heads),
                           head_dim=small.head_dim, mlp_ratio=small.mlp_ratio),
                param_count=dit_lib.count_params(small_params),
                param_count_unpruned=dit_lib.count_params(params), path=os.path.relpath(out_dir, workdir))
    experiments.write_json(meta_path, _jsonable(meta))
    return _jsonable(meta)


def _where(ctx: Context) -> dict:
    """Trajectory decision times of the base and the swap test (cached in <piece_dir>/where/)."""
    s, model = ctx.s, ctx.model
    wdir = os.path.join(ctx.piece_dir, "where", f"m{s.where['num_samples']}")
    os.makedirs(wdir, exist_ok=True)
    cfg = dataclasses.replace(s.sampler, num_samples=s.where["num_samples"],
                              batch_size=min(s.sampler.batch_size, s.where["num_samples"]))
    key = _key(s.seed, 7)
    out = {}
    tpath = os.path.join(wdir, "trajectory.json")
    tr = experiments.read_json(tpath)
    if tr is None:
        dec = trajectory_decisions(model, ctx.base_params, ctx.images, key, cfg, s.u_min, s.eval["ratio"])
        tr = _jsonable(summarize_decisions(dec))
        experiments.write_json(tpath, tr)
        ctx.counters["where_computed"] += 1
    out["trajectory"] = tr

    def mem_of(samples):
        r = metrics.memorization(samples, ctx.images, s.eval["ratio"])
        return dict(memorization_ratio=float(r["memorization_ratio"]), num_samples=int(len(samples)))

    def cached(name, fn):
        p = os.path.join(wdir, f"swap_{name}.json")
        v = experiments.read_json(p)
        if v is None:
            v = fn()
            experiments.write_json(p, v)
            ctx.counters["where_computed"] += 1
        return v

    swaps = []
    for a, b in s.where["swap_pairs"]:
        pa, ma = _swap_model(ctx, a)
        pb, mb = _swap_model(ctx, b)
        sw = dict(pair=[a, b], runs=[_model_run_id(ctx, a), _model_run_id(ctx, b)])
        sw["a_alone"] = cached(f"{a}_alone", lambda: mem_of(
            idf.sample(model, pa, key, cfg, s.u_min, head_mask=ma)))
        sw["b_alone"] = cached(f"{b}_alone", lambda: mem_of(
            idf.sample(model, pb, key, cfg, s.u_min, head_mask=mb)))
        cells = []
        for tau in s.where["taus_u"]:
            cell = dict(tau_u=tau, tau_t=float(sde.ddpm_time(tau)))
            cell["a_then_b"] = cached(f"{a}_then_{b}_{tau:g}", lambda: mem_of(
                swap_sample(model, pa, ma, pb, mb, tau, key, cfg, s.u_min)))
            cell["b_then_a"] = cached(f"{b}_then_{a}_{tau:g}", lambda: mem_of(
                swap_sample(model, pb, mb, pa, ma, tau, key, cfg, s.u_min)))
            cells.append(cell)
        sw["taus"] = cells
        swaps.append(sw)
    out["swap"] = dict(note="a_then_b: model a for t > tau, model b for t <= tau (b_then_a: the reverse); tau in "
                            "unit time u, t = ddpm_time(u); memorization ratios of where.num_samples samples on the "
                            "same keys", pairs=swaps)
    return out


def _model_run_id(ctx: Context, name: str) -> str:
    s = ctx.s
    if name == "weight_decay_finetune":
        return run_id(name, None, 0) + f"_wd{s.wd_finetune_value:g}"
    return run_id(name, s.paper_eta if name in PRUNE_METHODS else None, 0)


def _swap_model(ctx: Context, name: str):
    """(params, mask) of repeat 0's model `name` (the base for 'original')."""
    ones = np.ones((ctx.model.depth, ctx.model.max_heads), np.float32)
    if name == "original":
        return ctx.base_params, ones
    rid = _model_run_id(ctx, name)
    return load_run_params(ctx, rid), np.load(os.path.join(ctx.piece_dir, "runs", rid, "mask.npy"))


def _grids(ctx: Context, workdir: str) -> None:
    """samples_<method>.png: generated samples (top rows) above their nearest training images (red: memorized)."""
    g = ctx.s.eval["grid_samples"]
    if not g:
        return
    for m, eta in (("original", None), ("finetune_only", None), ("importance", ctx.s.paper_eta),
                   ("random", ctx.s.paper_eta), ("magnitude", ctx.s.paper_eta)):
        p = os.path.join(ctx.piece_dir, "runs", run_id(m, eta, 0), "samples.npz")
        if not os.path.exists(p):
            continue
        with np.load(p) as f:
            smp, nn, mem = f["samples"][:g], f["nn_idx"][:g, 0], f["memorized"][:g]
        data_lib.pair_grid(os.path.join(workdir, f"samples_{m}.png"), smp, ctx.images[nn], ncols=min(16, len(smp)),
                           highlight=np.asarray(mem, bool))
