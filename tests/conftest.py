"""Test set-up: 4 fake CPU devices for the multi-device paths (must run before jax initialises)."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

import pytest  # noqa: E402

# Tests marked `slow` (whole experiments run again as several processes, long end-to-end paths) run when
# DIFFMEM_SLOW_TESTS=1; the default suite stays within a few minutes' budget on 2 CPU cores.
SLOW = os.environ.get("DIFFMEM_SLOW_TESTS", "") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs only with DIFFMEM_SLOW_TESTS=1 (the full suite)")


def pytest_collection_modifyitems(config, items):
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow: set DIFFMEM_SLOW_TESTS=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
