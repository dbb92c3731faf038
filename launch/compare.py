r"""Runs several continual learners on one experiment and compares them.

  python -m launch.compare --config=launch/configs/gg_permuted_mnist.py \
      --methods=supsup,lower_bound,upper_bound,separate_heads,batche,psp \
      --workdir=runs/compare_permuted_mnist [--config.num_tasks=10 ...] \
      [--runs=runs/other_run,...]

Each method runs in ``<workdir>/<method>`` through the same run loop as
``launch.main`` with ``config.method`` set (a finished run, one with a
``results.json`` of the same config, is reused; an interrupted one resumes).
A named variant (``supsup_jax.methods.VARIANTS``) is a method with config
overrides, run in ``<workdir>/<variant>`` and labelled so, e.g.
``supsup_transfer`` = ``supsup`` with ``--config.supsup.transfer=True``: a
finished ``launch.main`` run with those flags, moved to
``<workdir>/supsup_transfer``, is reused. ``--runs`` adds finished workdirs of
other runs (labelled by the variant or method their config is). Writes to
``<workdir>``:

* ``comparison.csv``: one row per entry: final average accuracy, forgetting,
  bytes per task, shared bytes, storage per task, total bytes, mean wall time
  per task;
* ``comparison.json``: the same plus each method's average-accuracy curve;
* ``comparison.png``: average accuracy vs tasks learned (one line per
  method) and final accuracy vs storage per task (log axis), both with the
  accuracy axis from 0 to 100 %.

Storage per task = ``bytes_per_task + bytes_shared / num_tasks``: what each
task costs, with what is stored once (a trained network; nothing for a
network given by its seed) spread over the tasks; total bytes = storage per
task x num_tasks.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (launch/configs/*.py).", lock_config=False)
_METHODS = flags.DEFINE_list("methods", [], "Methods to run: supsup_jax.methods.METHODS "
                             "and the named variants of supsup_jax.methods.VARIANTS.")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory of the comparison; each method (or variant) "
                               "runs in <workdir>/<name>.")
_RUNS = flags.DEFINE_list("runs", [], "Finished workdirs (with results.json) to include.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  from supsup_jax import xla_flags  # pylint: disable=import-outside-toplevel
  xla_flags.apply_cpu_defaults()  # before JAX starts its backend
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.load_config(_CONFIG) if flags.FLAGS["config"].present else None
  logging.get_absl_handler().python_handler.stream = sys.stdout
  logging.set_verbosity(logging.INFO)
  with cli.one_line_errors(_WORKDIR.value):
    from supsup_jax.runs import compare  # pylint: disable=import-outside-toplevel
    entries = compare.compare(config, _METHODS.value, _WORKDIR.value, _RUNS.value)
  print(compare.format_table(entries))
  print(f"wrote comparison.csv, comparison.json, comparison.png to "
        f"{os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
