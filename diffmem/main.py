"""Entry point: python -m diffmem.main --config=configs/<experiment>.py[:preset] --workdir=DIR.

Thin absl entry (flax/examples style): sets up the runtime (jax.distributed when DIFFMEM_DISTRIBUTED is set),
logs the devices and processes, parses and locks the config, then hands it to the experiment named by
`config.experiment` (diffmem.experiments).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from diffmem import experiments, runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:preset]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, results.json, plots and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected command-line arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    runtime.initialize_distributed()   # multi-host runs (launch/); a no-op unless DIFFMEM_DISTRIBUTED is set
    runtime.quiet_orbax()
    try:
        config = FLAGS.config
        config.get("experiment")                   # loads the file now (the flag loads lazily)
    except (IOError, OSError, ValueError) as e:   # a missing file or an unknown preset: one line, not a traceback
        cause = e.__cause__ or e
        raise app.UsageError(f"--config={FLAGS['config'].config_filename}: "
                             f"{str(cause).strip().splitlines()[-1].strip()}") from None
    logging.info("diffmem: %s", runtime.describe())
    logging.info("config %s -> workdir %s", FLAGS["config"].config_filename, FLAGS.workdir)
    try:
        experiments.run(config, FLAGS.workdir)
    except ValueError as e:
        if not str(e).startswith(("config", "unknown key", "unknown top-level")):
            raise
        logging.error("%s", e)                     # a bad config value: the field and what is accepted
        sys.exit(2)


def _usage() -> str:
    """The module docstring plus the experiments and their presets (shown by --help)."""
    lines = [__doc__ or "", "Experiments (configs/<name>.py[:preset]):"]
    root = os.path.join(os.getcwd(), "configs")
    for name, what in experiments.EXPERIMENTS.items():
        presets = ""
        path = os.path.join(root, f"{name}.py")
        if os.path.exists(path):
            import re
            m = re.search(r"^PRESETS = \((.*)\)", open(path).read(), re.M)
            presets = f" [presets: {m.group(1).replace(chr(34), '').rstrip(',')}]" if m else ""
        lines.append(f"  {name:<18} {what}{presets}")
    return "\n".join(lines)


def _config_root_on_path(argv) -> None:
    """Config files import their shared sections (`from configs import common`): put the folder that holds the
    config's folder on sys.path, so a run from outside the repository root finds it too."""
    for a in argv[1:]:
        if a.startswith("--config="):
            root = os.path.dirname(os.path.dirname(os.path.abspath(a.split("=", 1)[1].split(":", 1)[0])))
            if root not in sys.path:
                sys.path.insert(0, root)


if __name__ == "__main__":
    _config_root_on_path(sys.argv)
    sys.modules["__main__"].__doc__ = _usage()
    app.run(main)
