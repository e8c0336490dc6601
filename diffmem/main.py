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
    logging.info("diffmem: %s", runtime.describe())
    logging.info("config %s -> workdir %s", flags.FLAGS["config"].config_filename, FLAGS.workdir)
    experiments.run(FLAGS.config, FLAGS.workdir)


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
    app.run(main)
