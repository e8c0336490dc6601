"""The DiT experiments (train_dit, prune_dit) and the audit run as 2 JAX processes give the results of 1 process over
2 devices, and only process 0 writes files: the check of test_multiprocess_experiments.py (see its docstring for
the method and the tolerance), in a module of its own so that pytest-xdist runs it beside the mixture-lab half.
"""
import os

import pytest

import test_multiprocess_experiments as mpx

DIT = ("train_dit", "prune_dit", "audit")


def test_every_experiment_is_checked():
    """Every experiment config (configs/*.py but common.py) is in exactly one of the two halves."""
    configs = {f[:-3] for f in os.listdir(os.path.join(mpx.ROOT, "configs")) if f.endswith(".py")} - {"common"}
    assert set(mpx.LAB) | set(DIT) == set(mpx.OVERRIDES) == configs and not set(mpx.LAB) & set(DIT)


@pytest.mark.parametrize("name", DIT)
def test_two_processes_equal_one_process(name, tmp_path):
    mpx.check_two_processes_equal_one_process(name, tmp_path)
