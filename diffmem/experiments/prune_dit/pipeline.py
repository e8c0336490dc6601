"""The pruning pipeline's pieces: data, the bases (one vmapped group), head scores and masks per (base, repeat), the
plan of runs, and each vmapped group of fine-tunes sampled and evaluated together; every piece cached under
<workdir>/pieces/<hash>/ so that a killed run resumes.

A run is (method, eta, base b, repeat r). Randomness (diffmem.rng, under the root key config.seed): base b trains
under "base"/b; repeat r of base b draws Algorithm 2's batches from "scores"/b/r, the random mask from
"random_mask"/b/r, the fine-tuning stream from "finetune"/b/r and its samples from "samples"/b/r; the loss right after
pruning uses "prune_loss"/b for every mask of the base. So within (b, r) every method sees the same fine-tuning
batches and sampling noise (paired comparisons), and (b, r) pairs are independent replicates.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffmem import config as config_lib
from diffmem import data as data_lib
from diffmem import image_diffusion as idf
from diffmem import io, pruning, rng, training
from diffmem.eval import images as eval_images
from diffmem.eval.features import FeatureExtractor
from diffmem.experiments.prune_dit.settings import PRUNE_METHODS, SCORE_LAWS, Settings
from diffmem.models.dit import DiT


@dataclasses.dataclass(frozen=True, order=True)
class Run:
    """One evaluated model: `method` at `eta` (None: unpruned) from base `base`, repeat `repeat`."""
    base: int
    repeat: int
    method: str
    eta: Optional[float] = None

    @property
    def id(self) -> str:
        return f"b{self.base}_r{self.repeat}_{self.method}" + ("" if self.eta is None else f"_eta{self.eta:g}")

    @property
    def tuned(self) -> bool:
        return self.method not in ("original", "weight_decay_base")


@dataclasses.dataclass
class Context:
    """Everything a piece needs: settings, data, model, bases, evaluation set-up, directories, counters."""
    s: Settings
    model: DiT
    images: np.ndarray
    bases: Any                  # stacked sampling params (B, ...) of the bases (+ weight-decay bases after them)
    extractor: FeatureExtractor
    ref_features: np.ndarray
    piece_dir: str
    counters: dict
    timing: dict

    def base_params(self, b: int):
        return jax.tree.map(lambda a: a[b], self.bases)

    def lap(self, name: str, wall: float, cpu: float) -> None:
        self.timing[name + "_wall_s"] = self.timing.get(name + "_wall_s", 0.0) + wall
        self.timing[name + "_cpu_s"] = self.timing.get(name + "_cpu_s", 0.0) + cpu


class Stopwatch:
    """with Stopwatch(ctx, "stage"): adds the block's wall and CPU seconds to ctx.timing."""

    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name = ctx, name

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.ctx.lap(self.name, time.perf_counter() - self.w, time.process_time() - self.c)


# ------------------------------------------------------------------------------------------ data and bases

def load_data(s: Settings) -> tuple[data_lib.ImageData, eval_images.Reference]:
    """(training subset, reference set with its labelled pool)."""
    try:
        d = data_lib.load_images(s.data.name, n=s.data.n, seed=s.data.seed, data_dir=s.data.directory,
                                 crop=s.data.crop, pool=s.data.pool)
    except ValueError as e:
        raise ValueError(f"config.data (name={s.data.name!r}, n={s.data.n}): {e}") from None
    return d, eval_images.load_reference(s.data, s.eval, d)


def base_weight_decays(s: Settings) -> list[float]:
    """The decay of every member of the base group: the B bases, then (weight_decay.base) B bases with decay."""
    b = s.design.bases
    return [s.train.weight_decay] * b + ([s.weight_decay.base_value] * b if s.weight_decay.base else [])


def train_bases(s: Settings, model: DiT, images: np.ndarray, indices: np.ndarray, base_dir: str) -> dict:
    """Trains / resumes / restores the bases as ONE vmapped group (training.train_members) in base_dir: base b
    initialised from stream(seed, "base", b, "init") and trained on stream(seed, "base", b, "train"); the
    weight-decay base of seed b (weight_decay.base) uses the same two streams, so it differs from base b only by its
    decay. Returns dict(params (stacked sampling params), steps_trained (by this call), final_loss (per member),
    steps)."""
    decays = base_weight_decays(s)
    tc = {k: v for k, v in dataclasses.asdict(s.train).items() if k not in config_lib.RESUMABLE_TRAIN_FIELDS}
    stamp = dict(seed=s.seed, data=s.data.name, n=int(len(images)), indices_sha1=io.sha1_arrays(indices),
                 crop=s.data.crop, pool=s.data.pool, model=s.model.resolved(), u_min=s.diffusion.u_min, train=tc,
                 weight_decays=decays)
    io.check_stamp(os.path.join(base_dir, "train_settings.json"), stamp, "group of bases",
                   "use a fresh workdir (only train.steps / log_every / ckpt_every / keep_ckpts may change on resume)")
    m = len(decays)
    keys = [rng.stream(s.seed, "base", i % s.design.bases) for i in range(m)]
    params = training.init_members(lambda k: idf.init_params(model, k),
                                   jnp.stack([rng.stream(k, "init") for k in keys]))
    ones = jnp.ones((m, model.depth, model.max_heads), jnp.float32)
    logging.info("prune_dit: %d base(s) as one vmapped group in %s: %d steps (resumes from the last checkpoint)",
                 m, base_dir, s.train.steps)
    before = _latest_step(base_dir)
    state, records = training.train_members(
        idf.make_member_loss(model, s.diffusion.u_min), params, images, jnp.stack([rng.stream(k, "train") for k in keys]),
        s.train, weight_decays=decays, extra=ones, workdir=base_dir, progress=s.progress, desc="bases")
    out = state.ema_params if s.train.ema_decay > 0 and s.sampler.use_ema else state.params
    return dict(params=jax.tree.map(np.asarray, out), steps_trained=int(s.train.steps - before),
                final_loss=records[-1]["loss"] if records else None, steps=int(s.train.steps))


def _latest_step(workdir: str) -> int:
    ck = os.path.join(workdir, "checkpoints")
    steps = [int(p) for p in os.listdir(ck) if p.isdigit()] if os.path.isdir(ck) else []
    return max(steps, default=0)


def load_model(s: Settings, image_shape) -> tuple[DiT, dict]:
    """The DiT and the one base of config.base_model (a saved model directory: diffmem.checkpoints.load_model), its
    image shape checked against the data. A class-conditional model is used unconditionally (its null label) in
    scoring, fine-tuning and sampling."""
    from diffmem import checkpoints
    try:
        model, params = checkpoints.load_model(s.base_model, s.model.dtype)
    except (ValueError, OSError) as e:
        raise ValueError(f"config.base_model={s.base_model!r}: {e}") from None
    want = (model.image_size, model.image_size, model.channels)
    if tuple(image_shape) != want:
        raise ValueError(f"config.base_model={s.base_model!r} takes images {want}, but config.data gives "
                         f"{tuple(image_shape)} (set data.crop / data.pool or another data set)")
    return model, dict(params=jax.tree.map(lambda a: np.asarray(a)[None], params), steps_trained=0,
                       final_loss=None, steps=int(checkpoints.model_info(s.base_model).get("steps", 0) or 0),
                       source=f"model:{os.path.abspath(s.base_model)}")


def load_base(s: Settings, model: DiT) -> dict:
    """The one base of config.base_checkpoint, stacked as a group of one; errors name the field."""
    try:
        params, step = idf.load_checkpoint(s.base_checkpoint, model, s.sampler.use_ema)
    except ValueError as e:
        raise ValueError(f"config.base_checkpoint={e}") from None
    return dict(params=jax.tree.map(lambda a: np.asarray(a)[None], params), steps_trained=0, final_loss=None,
                steps=step, source=f"loaded:{os.path.abspath(s.base_checkpoint)}")


# ------------------------------------------------------------------------------------------ the plan

def plan_runs(s: Settings) -> list[Run]:
    """Every run of the experiment: for each base and repeat r < design.repeats the original, the controls and
    every method of config.methods at the paper's eta; for r < design.sweep_repeats the sweep methods at the other
    etas; with weight_decay.base, the weight-decay base of the same seed (unpruned, not fine-tuned)."""
    runs = []
    eta0 = s.prune.paper_eta
    for b in range(s.design.bases):
        for r in range(max(s.design.repeats, s.design.sweep_repeats)):
            if r < s.design.repeats:
                runs += [Run(b, r, "original"), Run(b, r, "finetune_only")]
                runs += [Run(b, r, m, eta0 if m in PRUNE_METHODS else None) for m in s.methods]
                if s.weight_decay.base:
                    runs.append(Run(b, r, "weight_decay_base"))
            if r < s.design.sweep_repeats:
                runs += [Run(b, r, m, e) for e in s.prune.sweep_etas if e != eta0 for m in s.sweep_methods]
    return sorted(set(runs))


def scores(ctx: Context, b: int, r: int) -> dict[str, np.ndarray]:
    """Algorithm 2 under the three time laws (u in [u_min, 1], the trained range) on the same batches, the raw
    sums, and the magnitude scores of base b, repeat r: arrays (depth, max_heads); cached."""
    path = os.path.join(ctx.piece_dir, "scores", f"b{b}_r{r}.npz")
    if io.exists(path):
        return io.load_npz(path)
    s, model = ctx.s, ctx.model
    params = ctx.base_params(b)
    laws = [pruning.TimeDist(dist, a, bb, s.diffusion.u_min) for dist, a, bb in SCORE_LAWS.values()]
    out = pruning.importance_many(model, params, ctx.images, rng.stream(s.seed, "scores", b, r), laws,
                                  num_batches=s.prune.score_batches, batch_size=s.prune.score_batch_size)
    res = {}
    for i, name in enumerate(SCORE_LAWS):
        res[name] = np.asarray(out["importance"][i])
        res[name + "_raw"] = np.asarray(out["raw"][i])
    res["magnitude"] = np.asarray(pruning.magnitude_scores(model, params))
    io.save_npz(path, **res)
    ctx.counters["scores_computed"] += 1
    return res


def mask_of(ctx: Context, run: Run) -> np.ndarray:
    """The head mask (depth, max_heads) of a run (all ones when unpruned)."""
    model, s = ctx.model, ctx.s
    if run.eta is None:
        return np.ones((model.depth, model.max_heads), np.float32)
    valid = pruning.head_valid_mask(model)
    if run.method == "random":
        return pruning.random_mask(rng.stream(s.seed, "random_mask", run.base, run.repeat), model.depth,
                                   model.max_heads, run.eta, keep_one_per_layer=s.prune.keep_one_per_layer,
                                   valid=valid)
    return pruning.prune_mask(scores(ctx, run.base, run.repeat)[run.method], run.eta,
                              keep_one_per_layer=s.prune.keep_one_per_layer, valid=valid)


def loss_after_prune(ctx: Context, b: int, runs: list[Run]) -> dict[str, float]:
    """Training loss (u ~ U(u_min, 1) per example) of base b gated by each run's mask BEFORE fine-tuning, every mask
    (and the unpruned base, key 'unpruned') on the same batches (pruning.evaluate_masks); cached."""
    path = os.path.join(ctx.piece_dir, "loss_after_prune", f"b{b}.json")
    cached = io.read_json(path) or {}
    todo = [r for r in runs if r.base == b and r.eta is not None and r.id not in cached]
    if "unpruned" not in cached or todo:
        s = ctx.s
        masks = np.stack([np.ones((ctx.model.depth, ctx.model.max_heads), np.float32)] + [mask_of(ctx, r) for r in todo])
        vals = np.asarray(pruning.evaluate_masks(ctx.model, ctx.base_params(b), ctx.images,
                                                 rng.stream(s.seed, "prune_loss", b), masks,
                                                 num_batches=s.prune.loss_batches,
                                                 batch_size=s.prune.score_batch_size, u_min=s.diffusion.u_min))
        cached["unpruned"] = float(vals[0])
        cached.update({r.id: float(v) for r, v in zip(todo, vals[1:])})
        io.write_json(path, cached)
    return cached


def groups(runs: list[Run], group_size: int) -> list[list[Run]]:
    """The fine-tuned runs in balanced vmapped groups of at most group_size (sorted: the same plan, the same groups)."""
    tuned = [r for r in runs if r.tuned]
    if not tuned:
        return []
    count = -(-len(tuned) // group_size)
    size = -(-len(tuned) // count)
    return [tuned[i:i + size] for i in range(0, len(tuned), size)]


# ------------------------------------------------------------------------------------------ groups of models

def keep_params(s: Settings, run: Run) -> bool:
    """Fine-tuned weights kept on disk: repeat 0 of the models the swap test and the exports use."""
    swap = {m for pair in s.where.swap_pairs for m in pair} if s.where.enabled else set()
    return run.repeat == 0 and (run.method in swap or (run.method in PRUNE_METHODS and run.eta == s.prune.paper_eta))


def run_params(ctx: Context, run: Run):
    """Sampling params of a run: the base for original / weight_decay_base, else the kept fine-tuned weights."""
    if run.method == "original":
        return ctx.base_params(run.base)
    if run.method == "weight_decay_base":
        return ctx.base_params(ctx.s.design.bases + run.base)
    path = os.path.join(ctx.piece_dir, "params", run.id + ".msgpack")
    return flax.serialization.from_bytes(ctx.base_params(run.base), io.read_bytes(path))


def evaluate_group(ctx: Context, runs: list[Run], all_runs: list[Run], tag: str, size: int = 0) -> list[dict]:
    """Fine-tunes (if tuned) a group of runs as ONE vmapped group (every mask is an input of the one compiled step),
    samples every model of the group at once (image_diffusion.sample_group) and evaluates each; cached per run in
    <piece_dir>/runs/<id>.json (a group whose runs are all done is skipped). size > len(runs) pads the group with
    copies of its last run (computed, not evaluated) so that every group of the plan shares the compiled programs."""
    s, model = ctx.s, ctx.model
    paths = {r.id: os.path.join(ctx.piece_dir, "runs", r.id + ".json") for r in runs}
    done = {r.id: io.read_json(paths[r.id]) for r in runs}
    if all(v is not None for v in done.values()):
        ctx.counters["runs_reused"] += len(runs)
        return [done[r.id] for r in runs]
    members = len(runs)
    runs = runs + [runs[-1]] * max(0, size - members)
    masks = np.stack([mask_of(ctx, r) for r in runs])                                 # (M, depth, max_heads)
    if runs[0].tuned:
        with Stopwatch(ctx, "finetune"):
            params = finetune_group(ctx, runs, masks, tag)
    else:
        params = jax.tree.map(lambda *a: np.stack(a), *[run_params(ctx, r) for r in runs])
    for i, r in enumerate(runs[:members]):
        if r.tuned and keep_params(s, r):
            io.write_bytes(os.path.join(ctx.piece_dir, "params", r.id + ".msgpack"),
                           flax.serialization.to_bytes(jax.tree.map(lambda a: a[i], params)))
    # Only the models not evaluated yet are sampled (a run killed inside a group loses none of its evaluations);
    # model i's samples depend only on its own key, so they equal those of the whole group. Where the group is
    # vmapped (accelerators) the selection is padded back to the group's size: one compiled sampler.
    todo = [i for i, r in enumerate(runs[:members]) if done[r.id] is None]
    sel = todo + [todo[-1]] * (len(runs) - len(todo)) if idf.group_vmapped() else todo
    with Stopwatch(ctx, "sampling"):
        keys = jnp.stack([rng.stream(s.seed, "samples", runs[i].base, runs[i].repeat) for i in sel])
        sampled = idf.sample_group(model, jax.tree.map(lambda a: a[np.asarray(sel)], params), masks[sel], keys,
                                   s.sampler, s.diffusion.u_min, progress=s.progress)
        samples = {i: sampled[j] for j, i in enumerate(todo)}                          # run index -> (N, H, W, C)
    with Stopwatch(ctx, "loss_after_prune"):
        losses_after = {b: loss_after_prune(ctx, b, all_runs) for b in sorted({r.base for r in runs if r.eta is not None})}
    out = []
    with Stopwatch(ctx, "evaluation"):
        valid = pruning.head_valid_mask(model)
        for i, r in enumerate(runs[:members]):
            if i not in samples:
                out.append(done[r.id])
                continue
            ev = s.eval
            summary, mem = eval_images.evaluate_samples(samples[i], ctx.images, ctx.ref_features, ctx.extractor,
                                                        k=ev.k, ratio=ev.ratio, kid_subsets=ev.kid_subsets,
                                                        seed=s.seed)
            if r.base == 0 and r.repeat == 0 and ev.grid_samples:   # kept for the sample grids
                g = ev.grid_samples
                io.save_npz(os.path.join(ctx.piece_dir, "grids", r.id + ".npz"), samples=samples[i][:g],
                            nn_idx=mem["nn_idx"][:g], memorized=mem["memorized"][:g])
            m = masks[i]
            res = dict(run=r.id, method=r.method, eta=r.eta, base=r.base, repeat=r.repeat,
                       num_heads=int(valid.sum()), num_pruned=int((m[valid] == 0).sum()),
                       heads_per_layer=[int(x.sum()) for x in m * valid], mask=m.astype(int).tolist(),
                       param_count=pruning.param_count(model, jax.tree.map(lambda a: a[i], params), m),
                       loss_after_prune=losses_after[r.base].get(r.id) if r.eta is not None else None,
                       loss_unpruned=losses_after[r.base]["unpruned"] if r.eta is not None else None, **summary)
            res = io.jsonable(res)
            io.write_json(paths[r.id], res)
            out.append(res)
    ctx.counters["runs_computed"] += len(todo)
    ctx.counters["runs_reused"] += members - len(todo)
    logging.info("prune_dit group %s: %d models; memorization %s", tag, members,
                 " ".join(f"{o['memorization_ratio']:.2f}" for o in out))
    return out


def finetune_group(ctx: Context, runs: list[Run], masks: np.ndarray, tag: str):
    """Algorithm 1's fine-tuning of a group: finetune.steps steps of the eps loss with every member's mask FIXED,
    from its base, with a fresh optimizer (weight decay finetune_value for weight_decay_finetune); resumable in
    <piece_dir>/finetune/<tag>. Returns the stacked sampling params (EMA when finetune.ema_decay > 0)."""
    s, model = ctx.s, ctx.model
    init = jax.tree.map(lambda *a: np.stack(a), *[ctx.base_params(r.base) for r in runs])
    decays = [s.weight_decay.finetune_value if r.method == "weight_decay_finetune" else s.finetune.weight_decay
              for r in runs]
    keys = jnp.stack([rng.stream(s.seed, "finetune", r.base, r.repeat) for r in runs])
    wd = os.path.join(ctx.piece_dir, "finetune", tag)
    io.write_json(os.path.join(wd, "members.json"), [r.id for r in runs])
    state, _ = training.train_members(idf.make_member_loss(model, s.diffusion.u_min), init, ctx.images, keys,
                                      s.finetune, weight_decays=decays, extra=jnp.asarray(masks), workdir=wd,
                                      progress=s.progress, desc=f"fine-tune {tag}")
    ctx.counters["finetune_steps"] += s.finetune.steps * len(runs)
    out = state.ema_params if s.finetune.ema_decay > 0 else state.params
    return jax.tree.map(np.asarray, out)


def export(ctx: Context, run: Run, workdir: str) -> dict:
    """The physically smaller model (pruning.export_pruned, output equality checked) of a kept run, as a saved model
    directory (diffmem.checkpoints.save_model: model.json + params.msgpack) in
    <workdir>/exported/<method>_eta<eta>/; `python -m diffmem.convert --model DIR --export_pt X.pt` writes it as a
    state dict for facebookresearch/DiT's models.py."""
    from diffmem import checkpoints
    from diffmem.models import dit as dit_lib
    out_dir = os.path.join(workdir, "exported", f"{run.method}_eta{run.eta:g}")
    meta_path = os.path.join(out_dir, "model.json")
    old = io.read_json(meta_path)
    if old is not None and old.get("piece_dir") == os.path.relpath(ctx.piece_dir, workdir):
        return old
    params = run_params(ctx, run)
    small, small_params = pruning.export_pruned(ctx.model, params, mask_of(ctx, run))
    info = dict(run=run.id, piece_dir=os.path.relpath(ctx.piece_dir, workdir),
                param_count_unpruned=dit_lib.count_params(params), path=os.path.relpath(out_dir, workdir))
    checkpoints.save_model(out_dir, small, small_params, **info)
    return io.jsonable(dict(info, fields=checkpoints.model_fields(small), num_params=dit_lib.count_params(small_params)))
