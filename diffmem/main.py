"""Entry point: python -m diffmem.main --config=configs/<experiment>.py[:preset] --workdir=DIR.

Thin absl entry (flax/examples style): sets up the runtime (jax.distributed when DIFFMEM_DISTRIBUTED is set),
logs the devices and processes, parses and locks the config, then hands it to the experiment named by
`config.experiment` (diffmem.experiments).
"""
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


if __name__ == "__main__":
    app.run(main)
