"""Every experiment has its 2-process check (tests/two_process.py: run as 2 JAX processes it gives the results of
1 process, and only process 0 writes files). The checks live in the experiments' own test files, beside the
1-process smoke run they compare against."""
import os

import two_process


def test_every_experiment_has_a_two_process_check():
    configs = {f[:-3] for f in os.listdir(os.path.join(two_process.ROOT, "configs")) if f.endswith(".py")} - {"common"}
    assert set(two_process.CHECKED_IN) == configs
    for name, test_file in two_process.CHECKED_IN.items():
        with open(os.path.join(two_process.ROOT, "tests", test_file)) as f:
            source = f.read()
        assert "def test_two_processes_equal_one_process(" in source, test_file
        assert f'two_process.check("{name}"' in source, (name, test_file)
