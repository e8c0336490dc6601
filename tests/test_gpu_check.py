"""benchmarks/gpu_check.py runs end to end on CPU (--small) and writes the JSON it promises; its FLOP count and its
run counts of the cifar10 presets against hand computations (no timing is asserted; XLA's own flop count is\nreported but not checked: on CPU it skips the matmuls inside YNNPACK library fusions)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
pytestmark = pytest.mark.slow   # two DiT compilations per dtype in a subprocess: DIFFMEM_SLOW_TESTS=1


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--small", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    with open(out) as f:
        return json.load(f)


def test_runs_and_fields(report):
    assert set(report["runs"]) == {"float32", "bfloat16"}
    for dtype, r in report["runs"].items():
        assert r["dtype"] == dtype and r["steps_per_s"] > 0 and r["sample_steps_per_s"] > 0
        assert r["memory_bytes"]["arguments"] > 0 and r["memory_bytes"]["temporaries"] > 0
        assert r["mfu"] is None                                   # no known peak for a CPU
        # analytic model FLOPs of the small DiT (8x8x1, patch 2: 16 tokens, hidden 32, depth 2, mlp 128), by hand:
        # patch 16*4*32, time MLP 256*32 + 32^2, per block 6*32^2 + 16*(4*32^2 + 2*32*128) + 2*16^2*32, final
        # 2*32^2 + 16*32*4; x2 FLOPs per multiply-add, x3 for a training step, x8 examples
        macs = 16 * 4 * 32 + 256 * 32 + 32 ** 2 + 2 * (6 * 32 ** 2 + 16 * (4 * 32 ** 2 + 2 * 32 * 128)
                                                         + 2 * 16 ** 2 * 32) + 2 * 32 ** 2 + 16 * 32 * 4
        assert r["model_flops_per_step"] == 3 * 2 * macs * 8


def test_projection_counts(report):
    td = report["projections"]["train_dit:cifar10"]
    assert (td["train_steps"], td["train_batch"], td["sample_steps"]) == (200_000, 128, 10_000 * 251)
    pd = report["projections"]["prune_dit:cifar10"]
    # configs/prune_dit.py:cifar10, per base (3): 5 repeats of original, finetune_only, weight_decay_base and the 5
    # methods at eta 0.2 (4 pruning methods + weight_decay_finetune, all fine-tuned), 2 sweep repeats of importance,
    # random, magnitude at eta 0.4; bases and weight-decay bases 200k steps each, every fine-tune 10k steps
    finetunes = 3 * (5 * (1 + 5) + 2 * 3)
    assert pd["finetune_runs"] == finetunes == 108
    assert pd["sample_runs"] == 3 * (5 * 8 + 2 * 3) == 138
    assert pd["train_steps"] == 3 * 2 * 200_000 + finetunes * 10_000
    # where: base 0's trajectories (2000) + the swap pair's two samplers at taus {0.1, 0.3, 0.5} on base 0 and at
    # tau 0.3 on bases 1, 2, each 10,000 samples
    where = 2000 + 10_000 * 2 * (3 + 2)
    assert pd["sample_steps"] == (138 * 10_000 + where) * 251
    for proj in (td, pd):
        assert all(proj[f"hours_{d}"] > 0 for d in ("float32", "bfloat16"))
