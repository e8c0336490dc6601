"""The pruning pipeline's pieces: data, base model, head scores, masks, fine-tuning, sampling and evaluation of one
(method, eta, repeat), each cached under <workdir>/pieces/<hash>/ so that a killed run resumes.

Randomness (diffmem.rng, under the root key of config.seed): the base trains under "base"; repeat r's sampling
keys "samples"/r, Algorithm 2's batches "scores"/r, the random mask "random_mask"/r, the fine-tuning stream
"finetune"/r and the loss right after pruning "prune_loss"/r. Within a repeat every method sees the same fine-tuning
batches and sampling noise.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import flax.serialization
import jax
import numpy as np
from absl import logging

from diffmem import config as config_lib
from diffmem import data as data_lib
from diffmem import image_diffusion as idf
from diffmem import io, pruning, rng
from diffmem.config import TrainConfig
from diffmem.eval import images as eval_images
from diffmem.eval.features import FeatureExtractor
from diffmem.experiments.prune_dit.settings import PRUNE_METHODS, SCORE_LAWS, Settings
from diffmem.models.dit import DiT


def eta_tag(eta: float) -> str:
    return f"{eta:g}"


def run_id(method: str, eta: Optional[float], repeat: int) -> str:
    return f"{method}_r{repeat}" if eta is None else f"{method}_eta{eta_tag(eta)}_r{repeat}"


@dataclasses.dataclass
class Context:
    """Everything a piece needs: settings, data, model, base, evaluation set-up, directories."""
    s: Settings
    model: DiT
    images: np.ndarray
    base_params: Any
    extractor: FeatureExtractor
    ref_features: np.ndarray
    piece_dir: str
    counters: dict


# ------------------------------------------------------------------------------------------ data and base

def load_data(s: Settings) -> tuple[data_lib.ImageData, eval_images.Reference]:
    """(training subset, reference set with its labelled pool)."""
    try:
        d = data_lib.load_images(s.data.name, n=s.data.n, seed=s.data.seed, data_dir=s.data.directory)
    except ValueError as e:
        raise ValueError(f"config.data (name={s.data.name!r}, n={s.data.n}): {e}") from None
    return d, eval_images.load_reference(s.data.name, s.data.seed, s.data.directory, s.eval, d)


def load_base(s: Settings, model: DiT) -> tuple[Any, int]:
    """(params, step) of config.base_checkpoint; errors name the field."""
    try:
        return idf.load_checkpoint(s.base_checkpoint, model, s.sampler.use_ema)
    except ValueError as e:
        raise ValueError(f"config.base_checkpoint={e}") from None


def train_base(s: Settings, model: DiT, images: np.ndarray, indices: np.ndarray, base_dir: str,
               weight_decay: Optional[float] = None) -> dict:
    """Trains / resumes / restores the base in base_dir (init and stream under stream(seed, "base"), as train_dit).
    Returns dict(params (sampling params), steps_trained (by this call), final_loss, source, steps)."""
    cfg = s.train if weight_decay is None else dataclasses.replace(s.train, weight_decay=weight_decay)
    io.makedirs(base_dir)
    tc = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in config_lib.RESUMABLE_TRAIN_FIELDS}
    stamp = dict(seed=s.seed, data=s.data.name, n=int(len(images)), indices_sha1=io.sha1_arrays(indices),
                 model=s.model.resolved(), u_min=s.diffusion.u_min, train=tc)
    io.check_stamp(os.path.join(base_dir, "train_settings.json"), stamp, "base model",
                   "use a fresh workdir (only train.steps / log_every / ckpt_every / keep_ckpts may change on resume)")
    logging.info("prune_dit: base model in %s: %d steps (weight decay %g; resumes from the last checkpoint)",
                 base_dir, cfg.steps, cfg.weight_decay)
    # image_diffusion.train_model's keys and loss, through the masked loss with every gate 1 (the same numbers):
    # it shares its compiled step with fine-tuning when the optimizer settings agree.
    key = rng.stream(s.seed, "base")
    count = [0]
    ones = np.ones((model.depth, model.max_heads), np.float32)
    state = idf.train_masked(model, idf.init_params(model, rng.stream(key, "init")), ones, images, cfg, base_dir,
                             key=rng.stream(key, "train"), u_min=s.diffusion.u_min, progress=s.progress,
                             desc="base", hooks=(lambda *a: count.__setitem__(0, count[0] + 1),))
    recs = _metrics(base_dir)
    params = jax.tree.map(np.asarray, idf.sampling_params(state, s.sampler.use_ema))
    return dict(params=params, steps_trained=int(count[0]), final_loss=recs[-1]["loss"] if recs else None,
                source="trained", steps=int(cfg.steps))


def _metrics(workdir: str) -> list[dict]:
    from diffmem import training
    return training.read_metrics(workdir) if io.exists(os.path.join(workdir, "metrics.jsonl")) else []


def finetune(model: DiT, params, mask, images, cfg: TrainConfig, workdir: Optional[str], *, key: jax.Array,
             u_min: float, progress: bool = False) -> tuple[Any, Optional[float]]:
    """Algorithm 1's fine-tuning: cfg.steps steps of the eps loss with the head mask FIXED, from `params` (fresh
    optimizer, resumable in workdir). mask (depth, max_heads) of exact 0/1 (ValueError otherwise).
    Returns (sampling params: EMA if cfg.ema_decay > 0, else the raw params; last logged loss)."""
    mask = pruning.check_mask(mask, model)
    state = idf.train_masked(model, params, mask, images, cfg, workdir, key=key, u_min=u_min, progress=progress,
                             desc="fine-tune")
    recs = _metrics(workdir) if workdir else []
    out = state.ema_params if cfg.ema_decay > 0 else state.params
    return jax.tree.map(np.asarray, out), (recs[-1]["loss"] if recs else None)


# ------------------------------------------------------------------------------------------ scores and masks

def runs_at(s: Settings, method: str, eta: float, repeat: int) -> bool:
    if eta == s.prune.paper_eta:
        return repeat < s.repeats
    return method in s.sweep_methods and repeat < s.sweep_repeats


def make_masks(s: Settings, model: DiT, scores: dict[str, np.ndarray], repeat: int) -> dict:
    """{(method, eta): mask} for every pruning method of s.methods at every eta it runs at for this repeat."""
    valid = pruning.head_valid_mask(model)
    out = {}
    for m in s.methods:
        if m not in PRUNE_METHODS:
            continue
        for eta in s.prune.sweep_etas:
            if not runs_at(s, m, eta, repeat):
                continue
            if m == "random":
                mask = pruning.random_mask(rng.stream(s.seed, "random_mask", repeat), model.depth, model.max_heads,
                                           eta, keep_one_per_layer=s.prune.keep_one_per_layer, valid=valid)
            else:
                mask = pruning.prune_mask(scores[m], eta, keep_one_per_layer=s.prune.keep_one_per_layer, valid=valid)
            out[(m, eta)] = mask
    return out


def compute_scores(s: Settings, model: DiT, params, images, repeat: int) -> dict[str, np.ndarray]:
    """Algorithm 2 under the three time laws on the same batches (importance, normalised per layer), the raw sums,
    and the magnitude scores. Arrays (depth, max_heads)."""
    out = pruning.importance_many(model, params, images, rng.stream(s.seed, "scores", repeat),
                                  list(SCORE_LAWS.values()), num_batches=s.prune.score_batches,
                                  batch_size=s.prune.score_batch_size)
    res = {}
    for i, name in enumerate(SCORE_LAWS):
        res[name] = np.asarray(out["importance"][i])
        res[name + "_raw"] = np.asarray(out["raw"][i])
    res["magnitude"] = np.asarray(pruning.magnitude_scores(model, params))
    return res


def scores_cached(ctx: Context, repeat: int) -> dict[str, np.ndarray]:
    path = os.path.join(ctx.piece_dir, f"scores_r{repeat}.npz")
    if io.exists(path):
        return io.load_npz(path)
    scores = compute_scores(ctx.s, ctx.model, ctx.base_params, ctx.images, repeat)
    io.save_npz(path, **scores)
    ctx.counters["scores_computed"] += 1
    return scores


def loss_after_prune(ctx: Context, repeat: int, masks: dict) -> dict[str, float]:
    """Training loss (u ~ U(u_min, 1) per example) of the base gated by each mask BEFORE fine-tuning, all masks on
    the same batches (pruning.evaluate_masks); cached with the runs."""
    path = os.path.join(ctx.piece_dir, f"loss_after_prune_r{repeat}.json")
    cached = io.read_json(path) or {}
    todo = [(k, m) for k, m in sorted(masks.items()) if run_id(k[0], k[1], repeat) not in cached]
    if todo:
        s = ctx.s
        vals = pruning.evaluate_masks(ctx.model, ctx.base_params, ctx.images, rng.stream(s.seed, "prune_loss", repeat),
                                      np.stack([m for _, m in todo]), num_batches=s.prune.loss_batches,
                                      batch_size=s.prune.score_batch_size, u_min=s.diffusion.u_min)
        for (k, _), v in zip(todo, np.asarray(vals)):
            cached[run_id(k[0], k[1], repeat)] = float(v)
        io.write_json(path, cached)
    return cached


# ------------------------------------------------------------------------------------------ one run

def keep_params(s: Settings, eta: Optional[float], repeat: int) -> bool:
    """Fine-tuned weights kept on disk (params.msgpack): repeat 0 at the paper eta and of the unpruned controls
    (the exported models and the swap test use them); the other runs keep their mask, samples and result."""
    return repeat == 0 and (eta is None or eta == s.prune.paper_eta)


def load_run_params(ctx: Context, rid: str):
    return flax.serialization.from_bytes(ctx.base_params,
                                         io.read_bytes(os.path.join(ctx.piece_dir, "runs", rid, "params.msgpack")))


def run_piece(ctx: Context, method: str, eta: Optional[float], repeat: int, mask: np.ndarray,
              init_params, *, tune: bool, cfg: Optional[TrainConfig] = None,
              loss_after: Optional[float] = None, suffix: str = "") -> dict:
    """One (method, eta, repeat): fine-tune (if `tune`) with the mask fixed, sample, evaluate; cached on disk in
    <piece_dir>/runs/<run_id><suffix>/ (suffix: settings outside the piece hash, e.g. a weight-decay value)."""
    s, model = ctx.s, ctx.model
    rid = run_id(method, eta, repeat) + suffix
    rdir = os.path.join(ctx.piece_dir, "runs", rid)
    res_path = os.path.join(rdir, "result.json")
    old = io.read_json(res_path)
    if old is not None:
        ctx.counters["runs_reused"] += 1
        return old
    io.makedirs(rdir)
    w0, c0 = time.perf_counter(), time.process_time()
    mask = pruning.check_mask(mask, model)
    io.save_npy(os.path.join(rdir, "mask.npy"), mask)
    params_path = os.path.join(rdir, "params.msgpack")
    final_loss = None
    if not tune:
        params = init_params
    elif io.exists(params_path):
        params = flax.serialization.from_bytes(init_params, io.read_bytes(params_path))
        final_loss = (io.read_json(os.path.join(rdir, "finetune.json")) or {}).get("final_finetune_loss")
    else:
        cfg = cfg or s.finetune
        params, final_loss = finetune(model, init_params, mask, ctx.images, cfg, rdir,
                                      key=rng.stream(s.seed, "finetune", repeat), u_min=s.diffusion.u_min,
                                      progress=s.progress)
        ctx.counters["finetune_steps"] += cfg.steps
        io.write_bytes(params_path, flax.serialization.to_bytes(params))
        io.write_json(os.path.join(rdir, "finetune.json"), dict(final_finetune_loss=final_loss))
        io.remove(os.path.join(rdir, "checkpoints"))   # params.msgpack is the checkpoint
    samples = idf.sample(model, params, rng.stream(s.seed, "samples", repeat), s.sampler, s.diffusion.u_min,
                         head_mask=mask)
    ev = s.eval
    summary, mem = eval_images.evaluate_samples(samples, ctx.images, ctx.ref_features, ctx.extractor, k=ev.k,
                                                ratio=ev.ratio, kid_subsets=ev.kid_subsets, seed=s.seed)
    io.save_npz(os.path.join(rdir, "samples.npz"), samples=samples.astype(np.float32), nn_idx=mem["nn_idx"],
                memorized=mem["memorized"], dist_ratio=mem["dist_ratio"])
    valid = pruning.head_valid_mask(model)
    result = dict(method=method, eta=eta, repeat=repeat, run=rid, num_heads=int(valid.sum()),
                  num_pruned=int((mask[valid] == 0).sum()), heads_per_layer=[int(r.sum()) for r in mask * valid],
                  param_count=pruning.param_count(model, params, mask), final_finetune_loss=final_loss,
                  loss_after_prune=loss_after, mask=mask.astype(int).tolist(), **summary,
                  wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0)
    result = io.jsonable(result)
    io.write_json(res_path, result)
    if tune and not keep_params(s, eta, repeat):   # the mask and samples stay; the weights only where used later
        io.remove(params_path)
    ctx.counters["runs_computed"] += 1
    logging.info("prune_dit %s: memorization %.3f, FD %.3f, precision %.3f, recall %.3f, params %d (%.1f s)", rid,
                 result["memorization_ratio"], result["fd"], result["precision"], result["recall"],
                 result["param_count"], result["wall_s"])
    return result


def export(ctx: Context, method: str, eta: float, workdir: str) -> dict:
    """The physically smaller model (pruning.export_pruned, output equality checked) of (method, eta, repeat 0):
    <workdir>/exported/<method>_eta<eta>/{model.json, params.msgpack}."""
    rid = run_id(method, eta, 0)
    out_dir = os.path.join(workdir, "exported", f"{method}_eta{eta_tag(eta)}")
    meta_path = os.path.join(out_dir, "model.json")
    old = io.read_json(meta_path)
    if old is not None and old.get("piece_dir") == os.path.relpath(ctx.piece_dir, workdir):
        return old
    mask = io.load_npy(os.path.join(ctx.piece_dir, "runs", rid, "mask.npy"))
    params = load_run_params(ctx, rid)
    small, small_params = pruning.export_pruned(ctx.model, params, mask)
    io.write_bytes(os.path.join(out_dir, "params.msgpack"), flax.serialization.to_bytes(small_params))
    from diffmem.models import dit as dit_lib
    meta = dict(run=rid, piece_dir=os.path.relpath(ctx.piece_dir, workdir),
                model=dict(image_size=small.image_size, channels=small.channels, patch=small.patch,
                           hidden=small.hidden, depth=small.depth, heads=list(small.heads),
                           head_dim=small.head_dim, mlp_ratio=small.mlp_ratio),
                param_count=dit_lib.count_params(small_params),
                param_count_unpruned=dit_lib.count_params(params), path=os.path.relpath(out_dir, workdir))
    meta = io.jsonable(meta)
    io.write_json(meta_path, meta)
    return meta
