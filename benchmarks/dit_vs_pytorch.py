"""Benchmark: diffmem's DiT training step (and forward, and sampling) against PyTorch eager running the reference
facebookresearch/DiT `models.py`, same shapes, same optimizer work, float32, both on all CPU cores.

    python benchmarks/dit_vs_pytorch.py --reference /path/to/DiT/models.py --torch_python /path/to/torch/python
    python benchmarks/dit_vs_pytorch.py --configs 16x16-p2 --modes train,forward,sample --reps 7
    python benchmarks/dit_vs_pytorch.py            # no --reference: diffmem only (ms/step and GFLOP/s)

How the two sides run. diffmem runs in this process. PyTorch runs in a WORKER SUBPROCESS started with
`--torch_python` (default: this interpreter) as `python benchmarks/dit_vs_pytorch.py --worker --reference PATH`,
so torch never has to be installed next to jax (diffmem does not depend on torch). The worker imports the
reference models.py (which imports timm's PatchEmbed / Attention / Mlp; timm imports torchvision, which a CPU-only
torch may lack: the worker gives the import a stand-in module when torchvision is missing; install timm with
`pip install --no-deps timm` plus pillow and pyyaml). The two processes never compute at the same time: for each
config and mode the main process alternates `--reps` rounds of [PyTorch: `iters` steps] and [diffmem: `iters`
steps], each side warmed up first, and reports the median over rounds of each side's mean time per step, their
ratio (PyTorch / diffmem: > 1 means diffmem is faster) and the estimated GFLOP/s of each (analytic matmul FLOPs
of the model, `dit_flops`; a training step counts 3 forward passes). Both sides use every core the process may run
on: torch's intra-op threads (torch.get_num_threads(), printed) and XLA:CPU's thread pool. The `*_cpu` columns are
each process's CPU time per step (all threads) and their ratio: on a machine shared with other jobs, wall times
(PyTorch's OpenMP threads especially) suffer from preemption, while CPU time still measures the work; pinned to one
core (`taskset -c 0 python benchmarks/dit_vs_pytorch.py ...`: both sides then run one thread) it compares the
kernels alone.

What is timed (the same work on both sides):
  train    one optimizer step at batch b: draw b images of a resident random data set and u ~ U(u_min, 1),
           noise them (x_t = alpha x0 + sigma eps), eps-MSE loss, backward, global-norm clip 1.0, AdamW
           (weight decay 0), parameter EMA. diffmem: the jitted, state-donating step of `diffmem.training.train`
           (built by `training.loop._build` from `image_diffusion.make_loss`, `training.make_optimizer` and
           `training.make_train_step`; batches drawn on device, the step counter folded into the key), dispatched as
           `training.host_loop` does. PyTorch: the reference DiT used unconditionally (num_classes=1, class dropout 0,
           learn_sigma False) in train mode, torch.optim.AdamW(foreach=True), clip_grad_norm_(foreach=True),
           EMA with torch._foreach_mul_/_foreach_add_ (the fastest eager forms).
  forward  one forward pass at batch b without gradients (diffmem: jitted `model.apply`; PyTorch: eval mode under
           torch.inference_mode()).
  matmul   the training step's matrix products alone (`train_matmuls`: every linear layer's forward, input- and
           weight-gradient product at batch x tokens rows, attention's per-head products), on resident random
           operands, in one jitted program (diffmem side: XLA's matmul, YNNPACK / Eigen) and as torch.mm/bmm calls.
           After a train row, `matmul share` = matmul time / train step time of each side: how close the step is
           to its own library's matmul rate (the evidence for "bounded by XLA's matmul").
  sample   `--sample_steps` reverse-SDE (Euler-Maruyama) steps of a batch of `--sample_batch` images, one network
           evaluation per step, timed per network evaluation (diffmem: `image_diffusion`'s jitted batch sampler,
           fori_loop over the steps, per-sample noise keys, final Tweedie step; PyTorch: the same loop in eager
           mode under inference_mode).

Configs (image, channels, patch, hidden, depth, heads, batch): the rows of issue 11's table plus the `cpu`
presets of configs/train_dit.py and configs/prune_dit.py. The machine may be shared: only same-run ratios mean
anything; rerun and compare runs before trusting a single row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # name: (image_size, channels, patch, hidden, depth, heads, batch)
    "train_dit-cpu": (8, 1, 4, 128, 2, 8, 32),
    "prune_dit-cpu": (8, 1, 2, 48, 3, 8, 32),
    "8x8-p2": (8, 1, 2, 128, 4, 4, 64),
    "16x16-p2": (16, 1, 2, 128, 4, 4, 64),
    "32x32x3-p4": (32, 3, 4, 256, 6, 8, 64),
    "DiT-S/2": (32, 3, 2, 384, 12, 6, 32),
}
MODES = ("train", "forward", "sample", "matmul")
U_MIN = 1e-3
DATA_N = 256          # resident training images (random normal) on each side
LR, EMA_DECAY, CLIP = 1e-4, 0.9999, 1.0


def train_matmuls(image_size: int, channels: int, patch: int, hidden: int, depth: int, heads: int, batch: int,
                  mlp_ratio: float = 4.0) -> list[tuple[int, int, int, int, str]]:
    """The matrix products of one DiT training step, as (batch_count, M, K, N, form): every linear layer's forward
    (x @ W, 'nn'), input gradient (g @ W^T, 'nt') and weight gradient (x^T @ g, 'tn') on batch x tokens rows, and
    attention's q k^T / p v per (example, head) with their gradients. (The small per-example layers, adaLN and the
    timestep MLP, are left out.)"""
    n = (image_size // patch) ** 2
    rows, d, f, dh = batch * n, hidden, int(hidden * mlp_ratio), hidden // heads
    layers = [(d, 3 * d), (d, d), (d, f), (f, d)] * depth + [(channels * patch * patch, d), (d, patch * patch * channels)]
    out = []
    for k, m in layers:
        out += [(1, rows, k, m, "nn"), (1, rows, m, k, "nt"), (1, k, rows, m, "tn")]
    bh = batch * heads
    for _ in range(depth):
        out += [(bh, n, dh, n, "nt"), (bh, n, n, dh, "nn"),                          # q k^T, p v
                (bh, n, dh, n, "nt"), (bh, n, n, dh, "tn"),                          # dp = dO v^T, dv = p^T dO
                (bh, n, n, dh, "nn"), (bh, n, n, dh, "tn")]                          # dq = ds k, dk = ds^T q
    return out


def dit_flops(image_size: int, channels: int, patch: int, hidden: int, depth: int, heads: int,
              mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one sample (2 per multiply-add) of the DiT's matmuls: patch embedding, timestep MLP,
    adaLN modulations, qkv / attention scores / attention-weighted values / output projection, MLP, final linear.
    Elementwise work (LayerNorm, softmax, GELU, ...) is not counted."""
    n = (image_size // patch) ** 2
    d, f = hidden, int(hidden * mlp_ratio)
    macs = n * channels * patch * patch * d                      # patch embedding
    macs += 256 * d + d * d                                      # timestep MLP
    per_block = 6 * d * d                                        # adaLN modulation (per sample)
    per_block += n * (3 * d * d + d * d + 2 * d * f)             # qkv, proj, fc1, fc2
    per_block += 2 * n * n * d                                   # q k^T and attn v (all heads)
    macs += depth * per_block
    macs += 2 * d * d + n * d * patch * patch * channels         # final adaLN + linear
    return 2.0 * macs


# ------------------------------------------------------------------------------------------ PyTorch worker

def _stub_torchvision() -> None:
    """timm imports torchvision; a CPU-only torch build may not have a working one. The DiT needs none of it, so
    a stand-in package answers the import when the real one is missing."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # missing, or broken against this torch
        pass
    import importlib.abc
    import importlib.machinery
    import types

    class _Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Stub(f"{self.__name__}.{name}")

        def __call__(self, *args, **kwargs):
            return _Stub("call")

        def __mro_entries__(self, bases):  # `class X(torchvision.transforms.ToTensor)` in timm.data
            return (object,)

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            mod = _Stub(spec.name)
            mod.__path__ = []
            return mod

        def exec_module(self, module):
            pass

    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    sys.meta_path.insert(0, _Finder())


def load_reference(path: str):
    """The reference models.py as a module (torch side only)."""
    import importlib.util
    _stub_torchvision()
    spec = importlib.util.spec_from_file_location("dit_reference_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class TorchSide:
    """The PyTorch half of one config (runs in the worker)."""

    def __init__(self, ref, image_size, channels, patch, hidden, depth, heads, batch, sample_batch, sample_steps):
        import torch
        torch.manual_seed(0)
        self.torch = torch
        self.b, self.sb, self.steps = batch, sample_batch, sample_steps
        self.model = ref.DiT(input_size=image_size, patch_size=patch, in_channels=channels, hidden_size=hidden,
                             depth=depth, num_heads=heads, class_dropout_prob=0.0, num_classes=1, learn_sigma=False)
        with torch.no_grad():  # leave adaLN-Zero's zero function: realistic (and non-trivial) values everywhere
            for p in self.model.parameters():
                if p.requires_grad:
                    p.add_(0.02 * torch.randn_like(p))
        self.ema = [p.detach().clone() for p in self.model.parameters()]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0, foreach=True)
        self.data = torch.randn(DATA_N, channels, image_size, image_size)
        self.shape = (channels, image_size, image_size)
        # OU time of the DDPM linear schedule (diffmem.sde.ddpm_time): t(u) = N (b0 u + (b1 - b0) u^2 / 2)
        self.t_of_u = lambda uu: 1000 * (1e-4 * uu + (0.02 - 1e-4) * uu * uu / 2)
        self.mm_shapes = train_matmuls(image_size, channels, patch, hidden, depth, heads, batch)
        self.mm_ops = None   # built by the first `matmul` call (at DiT-S/2 the operands take ~10 GB)

    def _matmul_ops(self):
        torch = self.torch
        ops = []
        for bc, m, k, n, form in self.mm_shapes:
            a = torch.randn(bc, *((k, m) if form == "tn" else (m, k)))
            b = torch.randn(bc, *((n, k) if form == "nt" else (k, n)))
            tr = {"nn": lambda a, b: torch.bmm(a, b), "nt": lambda a, b: torch.bmm(a, b.transpose(1, 2)),
                  "tn": lambda a, b: torch.bmm(a.transpose(1, 2), b)}[form]
            ops.append((tr, a, b) if bc > 1 else ((lambda f: lambda a, b: f(a[None], b[None]))(tr), a[0], b[0]))
        return ops

    def train_step(self):
        torch = self.torch
        idx = torch.randint(0, DATA_N, (self.b,))
        x0 = self.data[idx]
        u = U_MIN + (1 - U_MIN) * torch.rand(self.b)
        t = self.t_of_u(u).view(-1, 1, 1, 1)
        eps = torch.randn_like(x0)
        xt = torch.exp(-0.5 * t) * x0 + torch.sqrt(-torch.expm1(-t)) * eps
        out = self.model(xt, 1000 * u, torch.zeros(self.b, dtype=torch.long))
        loss = ((out - eps) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP, foreach=True)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_mul_(self.ema, EMA_DECAY)
            torch._foreach_add_(self.ema, [p.detach() for p in self.model.parameters()], alpha=1 - EMA_DECAY)
        return float(loss.detach())  # a host sync, like block_until_ready on the diffmem side

    def matmul(self):
        """The step's matrix products alone (`train_matmuls`), on resident random operands."""
        torch = self.torch
        self.mm_ops = self.mm_ops or self._matmul_ops()
        with torch.inference_mode():
            for f, a, b in self.mm_ops:
                f(a, b)

    def forward(self):
        torch = self.torch
        with torch.inference_mode():
            x = torch.randn(self.b, *self.shape)
            u = torch.rand(self.b)
            self.model(x, 1000 * u, torch.zeros(self.b, dtype=torch.long))

    def sample(self):
        """Euler-Maruyama on the reverse OU SDE, `steps` network evaluations + the Tweedie step."""
        torch = self.torch
        b = self.sb
        with torch.inference_mode():
            grid_u = torch.linspace(1.0, U_MIN, self.steps + 1)
            grid = self.t_of_u(grid_u)
            y = torch.randn(b, *self.shape)
            y0 = torch.zeros(b, dtype=torch.long)
            for k in range(self.steps):
                t, tn = grid[k], grid[k + 1]
                h = t - tn
                eps = self.model(y, torch.full((b,), 1000 * float(grid_u[k])), y0)
                score = -eps / torch.sqrt(-torch.expm1(-t))
                y = y + h * (0.5 * y + score) + torch.sqrt(h) * torch.randn_like(y)
            eps = self.model(y, torch.full((b,), 1000 * float(grid_u[-1])), y0)
            t0 = grid[-1]
            y = (y - torch.sqrt(-torch.expm1(-t0)) * eps) / torch.exp(-0.5 * t0)
        return y


def worker_main(reference: str) -> None:
    """JSON lines on stdin -> JSON lines on stdout: {"cmd": "setup", ...} / {"cmd": "time", "mode", "iters"}."""
    import torch
    ref = load_reference(reference)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the protocol channel
    side = None
    out.write(json.dumps({"ok": True, "torch": torch.__version__, "threads": torch.get_num_threads()}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "setup":
            side = TorchSide(ref, *req["config"], req["sample_batch"], req["sample_steps"])
            for mode in req["modes"]:  # warm up (allocator, thread pool, autograd graph)
                for _ in range(2 if mode == "sample" else 3):
                    getattr(side, _METHOD[mode])()
            resp = {"ok": True}
        elif req["cmd"] == "time":
            fn = getattr(side, _METHOD[req["mode"]])
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(req["iters"]):
                fn()
            resp = {"ok": True, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
        else:
            resp = {"ok": False, "error": f"unknown cmd {req['cmd']!r}"}
        out.write(json.dumps(resp) + "\n")
        out.flush()


_METHOD = {"train": "train_step", "forward": "forward", "sample": "sample", "matmul": "matmul"}


class TorchWorker:
    """The main process's handle on the worker subprocess."""

    def __init__(self, python: str, reference: str):
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", "--reference", reference],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker exited (see its stderr above)")
        resp = json.loads(line)
        if not resp.get("ok"):
            raise RuntimeError(f"PyTorch worker: {resp}")
        return resp

    def call(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------ diffmem side

class JaxSide:
    """The diffmem half of one config: the real training step, forward and sampler."""

    def __init__(self, image_size, channels, patch, hidden, depth, heads, batch, sample_batch, sample_steps,
                 dtype="float32"):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from diffmem import image_diffusion as idf
        from diffmem import training as train
        from diffmem.training import loop as train_loop
        self.jax = jax
        self.b = batch
        model = idf.build_model((image_size, image_size, channels), patch=patch, hidden=hidden, depth=depth,
                                heads=heads, dtype=dtype)
        params = idf.init_params(model, jax.random.key(0))
        rng = np.random.default_rng(0)  # leave adaLN-Zero's zero function, as on the torch side
        params = jax.tree.map(lambda a: a + jnp.asarray(0.02 * rng.standard_normal(a.shape), a.dtype), params)
        images = rng.standard_normal((DATA_N, image_size, image_size, channels)).astype(np.float32)
        data = {"images": images, "valid": np.ones((DATA_N,), bool)}
        # exactly what train.train builds and runs (same cache, same compiled program)
        key = jax.random.key(1)
        opt_cfg = train.TrainConfig(steps=1, batch_size=batch, lr=LR, weight_decay=0.0, grad_clip=CLIP,
                                    ema_decay=EMA_DECAY, log_every=1, ckpt_every=1, keep_ckpts=1, seed=0)
        init_fn, step_fn, replicated = train_loop._build(
            idf.make_loss(model, U_MIN), idf.masked_batch, opt_cfg, tuple(train.DEFAULT_TIME_EDGES),
            tuple(jax.devices()), jax.random.key_impl(key))
        self.data = jax.device_put(data, replicated)
        self.key_data = jax.device_put(np.asarray(jax.random.key_data(key)), replicated)
        self.state = init_fn(jax.device_put(params, replicated))
        self.step_fn = step_fn
        self.params = params
        apply = jax.jit(lambda p, x, u: model.apply({"params": p}, x, u))
        self.x = jnp.asarray(rng.standard_normal((batch, image_size, image_size, channels)), jnp.float32)
        self.u = jnp.asarray(rng.uniform(size=(batch,)), jnp.float32)
        self.apply = apply
        self.sampler = idf._batch_sampler(model, (image_size, image_size, channels), "sde", True)
        self.grid = idf.sampling_grid(U_MIN, sample_steps)
        self.keys = jax.random.split(jax.random.key(2), sample_batch)
        self.mask = jnp.ones((model.depth, model.max_heads), jnp.float32)
        shapes = train_matmuls(image_size, channels, patch, hidden, depth, heads, batch)
        # the operands are built by the first `matmul` call (at DiT-S/2 they take ~10 GB)
        self.mm_args = lambda: [
            (jnp.asarray(rng.standard_normal((bc,) + ((k, m) if form == "tn" else (m, k))), jnp.float32),
             jnp.asarray(rng.standard_normal((bc,) + ((n, k) if form == "nt" else (k, n))), jnp.float32))
            for bc, m, k, n, form in shapes]
        forms = [form for *_, form in shapes]
        eq = {"nn": "bmk,bkn->bmn", "nt": "bmk,bnk->bmn", "tn": "bkm,bkn->bmn"}

        @jax.jit
        def matmuls(args):  # one program, like the step; 2-D products stay 2-D (as the model's Dense layers)
            return [jnp.einsum(eq[f], a, b) if a.shape[0] > 1 else jnp.einsum(eq[f].replace("b", ""), a[0], b[0])
                    for f, (a, b) in zip(forms, args)]
        self.matmuls = matmuls

    def train_step(self, iters=1):
        metrics = None
        for _ in range(iters):  # asynchronous dispatch like training.host_loop (it keeps <= 8 steps in flight)
            self.state, metrics = self.step_fn(self.state, data=self.data, key_data=self.key_data)
        self.jax.block_until_ready(metrics)

    def forward(self, iters=1):
        for _ in range(iters):
            out = self.apply(self.params, self.x, self.u)
            out.block_until_ready()

    def matmul(self, iters=1):
        if callable(self.mm_args):
            self.mm_args = self.mm_args()
        for _ in range(iters):
            self.jax.block_until_ready(self.matmuls(self.mm_args))

    def sample(self, iters=1):
        for _ in range(iters):
            self.sampler(self.keys, self.params, self.mask, self.grid).block_until_ready()


# ------------------------------------------------------------------------------------------ driver

def _iters(mode: str, est_s: float, target_s: float) -> int:
    return max(1, int(round(target_s / max(est_s, 1e-6))))


def run(args) -> list[dict]:
    import jax
    worker = None
    if args.reference:
        worker = TorchWorker(args.torch_python, args.reference)
        print(f"PyTorch {worker.info['torch']} (worker: {args.torch_python}), intra-op threads "
              f"{worker.info['threads']}")
    print(f"jax {jax.__version__} on {jax.devices()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"CPUs usable {len(os.sched_getaffinity(0))}, load average {os.getloadavg()}")
    modes = args.modes.split(",")
    rows = []
    hdr = (f"{'config':<14} {'mode':<8} {'batch':>5} {'torch_ms':>9} {'ours_ms':>9} {'torch/ours':>10} "
           f"{'torch_GF/s':>10} {'ours_GF/s':>9} {'torch_cpu':>9} {'ours_cpu':>9} {'cpu_ratio':>9}")
    print(hdr)
    print("-" * len(hdr))
    try:
        for name in args.configs.split(","):
            cfg = CONFIGS[name]
            image, ch, p, hid, depth, heads, batch = cfg
            ours = JaxSide(*cfg, args.sample_batch, args.sample_steps, dtype=args.dtype)
            if worker:
                worker.call(cmd="setup", config=list(cfg), modes=modes, sample_batch=args.sample_batch,
                            sample_steps=args.sample_steps)
            fwd_flops = dit_flops(image, ch, p, hid, depth, heads)
            for mode in modes:
                fn = getattr(ours, _METHOD[mode])
                for _ in range(2):
                    fn()  # compile + warm up
                t0 = time.perf_counter()
                fn()
                est = time.perf_counter() - t0
                iters = _iters(mode, est, args.round_s)
                units = {"train": batch, "forward": batch, "sample": args.sample_batch * (args.sample_steps + 1)}
                if mode == "matmul":
                    flops = sum(2.0 * bc * m * k * n for bc, m, k, n, _ in train_matmuls(*cfg))
                else:
                    flops = fwd_flops * units[mode] * (3 if mode == "train" else 1)
                per_unit = 1 if mode != "sample" else args.sample_steps + 1  # sample: per network evaluation
                t_torch, t_ours, c_torch, c_ours = [], [], [], []
                for _ in range(args.reps):
                    if worker:
                        r = worker.call(cmd="time", mode=mode, iters=iters)
                        t_torch.append(r["seconds"] / iters)
                        c_torch.append(r["cpu_seconds"] / iters)
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn(iters)
                    t_ours.append((time.perf_counter() - t0) / iters)
                    c_ours.append((time.process_time() - c0) / iters)
                mo = statistics.median(t_ours)
                mt = statistics.median(t_torch) if t_torch else float("nan")
                co = statistics.median(c_ours)
                ct = statistics.median(c_torch) if c_torch else float("nan")
                b = batch if mode != "sample" else args.sample_batch
                row = dict(config=name, mode=mode, batch=b, torch_ms=1e3 * mt / per_unit,
                           ours_ms=1e3 * mo / per_unit, ratio=mt / mo, torch_gflops=flops / mt / 1e9,
                           ours_gflops=flops / mo / 1e9, torch_cpu_ms=1e3 * ct / per_unit,
                           ours_cpu_ms=1e3 * co / per_unit, cpu_ratio=ct / co, reps=args.reps, iters=iters,
                           torch_all_ms=[1e3 * t / per_unit for t in t_torch],
                           ours_all_ms=[1e3 * t / per_unit for t in t_ours])
                rows.append(row)
                if mode == "matmul":  # the share of the training step that runs at each side's matmul rate
                    tr = [r for r in rows if r["config"] == name and r["mode"] == "train"]
                    if tr:
                        row.update(ours_matmul_share=row["ours_ms"] / tr[0]["ours_ms"],
                                   torch_matmul_share=row["torch_ms"] / tr[0]["torch_ms"])
                print(f"{name:<14} {mode:<8} {b:>5} {row['torch_ms']:>9.2f} {row['ours_ms']:>9.2f} "
                      f"{row['ratio']:>10.2f} {row['torch_gflops']:>10.1f} {row['ours_gflops']:>9.1f} "
                      f"{row['torch_cpu_ms']:>9.2f} {row['ours_cpu_ms']:>9.2f} {row['cpu_ratio']:>9.2f}"
                      + (f"   matmul share of the train step: torch {row['torch_matmul_share']:.2f}, ours "
                         f"{row['ours_matmul_share']:.2f}" if "ours_matmul_share" in row else ""), flush=True)
            del ours
    finally:
        if worker:
            worker.close()
    print(f"load average at the end {os.getloadavg()}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="", help="path of facebookresearch/DiT models.py (PyTorch side)")
    ap.add_argument("--torch_python", default=sys.executable, help="interpreter with torch + timm for the worker")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated names of {list(CONFIGS)}")
    ap.add_argument("--modes", default="train,forward,sample", help=f"comma-separated subset of {MODES}")
    ap.add_argument("--reps", type=int, default=5, help="alternating rounds per config and mode (median)")
    ap.add_argument("--round_s", type=float, default=1.0, help="approximate seconds per side per round")
    ap.add_argument("--sample_batch", type=int, default=64)
    ap.add_argument("--sample_steps", type=int, default=10)
    ap.add_argument("--dtype", default="float32", help="diffmem compute dtype (float32 or bfloat16)")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.reference)
    for m in args.modes.split(","):
        if m not in MODES:
            raise ValueError(f"--modes entries must be in {MODES}, got {m!r}")
    for c in args.configs.split(","):
        if c not in CONFIGS:
            raise ValueError(f"--configs entries must be in {list(CONFIGS)}, got {c!r}")
    rows = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
