r"""Runs one SupSup experiment from a config file.

  python -m launch.main --config=launch/configs/gg_split_mnist.py \
      --workdir=/tmp/gg_split_mnist [--config.num_tasks=3 ...]

Writes results.json, accuracy.csv and accuracy.png to the workdir and
checkpoints after every task; the same command on the same workdir resumes.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (launch/configs/*.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Imported here so --help is fast and flag errors come before JAX starts.
  from supsup_jax import experiment  # pylint: disable=import-outside-toplevel
  from supsup_jax.checkpoint import ConfigMismatchError  # pylint: disable=import-outside-toplevel
  from supsup_jax.data import DataNotFoundError  # pylint: disable=import-outside-toplevel
  logging.get_absl_handler().python_handler.stream = sys.stdout
  logging.set_verbosity(logging.INFO)
  try:
    results = experiment.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, ConfigMismatchError, DataNotFoundError) as e:
    sys.exit(f"error: {e}")
  line = (f"{results['experiment']}: average accuracy "
          f"{100 * results['avg_accuracy']:.2f}% over {results['num_tasks']} tasks")
  if "task_inference_accuracy" in results:
    line += f", task-inference accuracy {100 * results['task_inference_accuracy']:.2f}%"
  line += f" in {results['wall_time_s']:.0f}s; see {os.path.abspath(_WORKDIR.value)}"
  print(line)


if __name__ == "__main__":
  app.run(main)
