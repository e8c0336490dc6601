"""Every config file's presets: sequence-valued fields are tuples that the command line can override
(`--config.prune.etas='(0.3,)'`), and every preset parses through its experiment's schema."""
import importlib
import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("loss_gap", "approximation", "gmm_memorization", "train_dit", "prune_dit", "audit")


def _sequence_fields(c: ml_collections.ConfigDict, prefix: str = ""):
    for k, v in c.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _sequence_fields(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)):
            yield f"{prefix}{k}", v


def _override(path: str, argv: list[str]):
    argv = ["prog", f"--config={path}"] + argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def _get(c, dotted):
    for k in dotted.split("."):
        c = c[k]
    return c


@pytest.mark.parametrize("name", CONFIGS)
def test_every_sequence_field_is_a_tuple_overridable_from_the_command_line(name):
    module = importlib.import_module(f"configs.{name}")
    presets = getattr(module, "PRESETS", ("smoke", "cpu"))
    seen = 0
    for preset in presets:
        c = module.get_config(preset)
        fields = list(_sequence_fields(c))
        for dotted, v in fields:
            assert isinstance(v, tuple), f"configs/{name}.py:{preset} config.{dotted} is a {type(v).__name__}"
        if preset != presets[0]:
            continue
        for dotted, v in fields:   # set each to its own value reversed (or repeated) through the flags
            new = tuple(reversed(v)) if len(v) > 1 else tuple(v) * 2 if v else v
            literal = repr(new)
            got = _get(_override(os.path.join(ROOT, "configs", f"{name}.py") + f":{preset}",
                                 [f"--config.{dotted}={literal}"]), dotted)
            assert tuple(got) == new, (dotted, got, new)
            seen += 1
    assert seen > 0
