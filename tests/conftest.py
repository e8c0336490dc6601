"""Test set-up (runs in every pytest process, before jax initialises):

* 4 fake CPU devices for the multi-device paths (`jax_num_cpu_devices`, through the environment so that the
  subprocesses a test starts inherit it unless they set their own);
* one persistent XLA compilation cache for the whole run: the pytest-xdist workers and every subprocess a test
  starts (experiments through `python -m diffmem.main`, 2-process launches) read and write the same directory, so
  a program compiled once (the smoke presets' DiTs, samplers, training steps) is not compiled again by the next
  test or process. The directory is fresh for each run and removed at its end (cold-cache timings, no stale
  state); set JAX_COMPILATION_CACHE_DIR yourself to keep one across runs.
"""
import os
import re
import shutil
import tempfile

# Compilation is most of the suite's time (about two thirds of the pytest workers' time: ~3,500 programs, most of
# them the op-by-op programs of eager code), so the tests ask XLA:CPU for cheaper compiles:
# * LLVM optimisation level 1 instead of XLA's default: about 40% less compile time; the same float semantics,
#   only the generated machine code is less tuned. (Level 0 compiles another 15% faster but is not safe: the
#   gradient of scores.empirical_logpdf came out NaN there, and compute-heavy tests ran up to 5x slower.)
# * XLA:CPU's older elemental emitter for fusions instead of the MLIR fusion emitters (which set up an MLIR
#   context per compilation): a tiny program compiles in ~40 ms instead of ~55, the smoke presets of prune_dit
#   and gmm_memorization ran 10-18% faster end to end, and test_mlp + test_mixed_precision +
#   test_dit_formulation 82-89 s -> 68-72 s (2 cores, alternating runs).
# The XLA flag is the older way to ask for fake devices; it would override jax_num_cpu_devices, so it goes.
_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
for _flag in ("--xla_backend_optimization_level=1", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.split("=")[0] not in _flags:
        _flags += " " + _flag
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ["JAX_NUM_CPU_DEVICES"] = "4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:   # the xdist controller runs this first; workers inherit it
    _OWN_CACHE = tempfile.mkdtemp(prefix="diffmem-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# A size limit turns on jax's file lock around every cache read and write (processes share the directory).
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

import pytest  # noqa: E402

# Tests marked `slow` (long end-to-end paths) run when DIFFMEM_SLOW_TESTS=1; the default suite stays within its
# budget on 2 CPU cores.
SLOW = os.environ.get("DIFFMEM_SLOW_TESTS", "") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs only with DIFFMEM_SLOW_TESTS=1 (the full suite)")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The longest test files first (measured: `pytest --durations=60`), so that pytest-xdist (`--dist loadfile
# --no-loadscope-reorder`: files handed out in this order, each worker starting with two) starts them at once on
# all workers instead of leaving one of them alone at the end (its default order puts the files with the most tests
# first); the other files keep their order. The experiments' files hold their 1-process smoke run and the 2-process
# check against it (tests/two_process.py).
LONGEST_FIRST = ("test_gmm_lab.py", "test_approximation.py", "test_prune_dit.py", "test_train_dit.py",
                 "test_prune_dit_pieces.py", "test_multiprocess.py", "test_loss_gap.py", "test_dit_formulation.py",
                 "test_audit.py")


def _file_rank(item):
    name = os.path.basename(str(item.fspath))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_rank)   # stable: tests keep their order within a file
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow: set DIFFMEM_SLOW_TESTS=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
