r"""Runs one experiment from a config file.

  python -m launch.main --config=launch/configs/gg_split_mnist.py \
      --workdir=/tmp/gg_split_mnist [--config.num_tasks=3 ...]

Dispatches on ``config.runner`` (default ``continual``; the registry is
``supsup_jax/runs/__init__.py``). Every runner locks the workdir, checkpoints,
resumes with the same command and writes ``results.json`` last, beside its own
outputs (CSV, PNG). Bad input (config file, config key or value, workdir,
data) ends with one ``error: ...`` line on stderr and exit code 2; an
interrupted run (Ctrl-C, SIGTERM) with 130; a non-finite run with 3 (see
``launch/cli.py``).
"""
import math
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (launch/configs/*.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results and checkpoints.")
_DISTRIBUTED = flags.DEFINE_string(
    "distributed", "", "Multi-host: 'auto' (cluster auto-detection) or "
    "'host:port,num_processes,process_id'; empty: $SUPSUP_DISTRIBUTED or the "
    "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID environment.")
flags.mark_flags_as_required(["config", "workdir"])


def _non_finite(results: dict) -> list:
  return sorted(k for k, v in results.items()
                if isinstance(v, float) and not math.isfinite(v))


def main(argv):
  from supsup_jax import xla_flags  # pylint: disable=import-outside-toplevel
  xla_flags.apply_cpu_defaults()  # before JAX starts its backend
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.load_config(_CONFIG)
  try:  # also before JAX starts its backend
    xla_flags.split_cpu(xla_flags.cpu_device_count(
        config.get("cpu_devices", 1), config.get("tasks_in_parallel", 1)))
  except ValueError as e:
    cli.fail(str(e))
  workdir = _WORKDIR.value
  logging.get_absl_handler().python_handler.stream = sys.stdout
  logging.set_verbosity(logging.INFO)
  with cli.one_line_errors(workdir):
    # Imported here so --help is fast and flag errors come before JAX starts.
    # pylint: disable=import-outside-toplevel
    from supsup_jax import distributed
    from supsup_jax import runs
    # pylint: enable=import-outside-toplevel
    # Multi-host: jax.distributed.initialize, before any JAX computation.
    distributed.maybe_initialize(_DISTRIBUTED.value or None)
    results = runs.get_runner(config.get("runner", "continual"))(config, workdir)
  bad = _non_finite(results)
  if bad:
    cli.fail(f"the run ended with non-finite {', '.join(bad)}; see {os.path.abspath(workdir)}",
             cli.EXIT_NOT_FINITE)
  name = results.get("experiment", config.get("experiment", "run"))
  if results.get("complete") is False:
    print(f"{name}: stopped after {results.get('steps_this_process')} steps "
          f"(config.stop_after_steps); run the same command to resume from "
          f"{os.path.abspath(workdir)}")
    return
  if "avg_accuracy" in results:
    line = (f"{name}: average accuracy {100 * results['avg_accuracy']:.2f}% over "
            f"{results.get('num_tasks', '?')} tasks")
  else:
    line = f"{name}: done"
  if "task_inference_accuracy" in results:
    line += f", task-inference accuracy {100 * results['task_inference_accuracy']:.2f}%"
  if "wall_time_s" in results:
    line += f" in {results['wall_time_s']:.0f}s"
  print(f"{line}; see {os.path.abspath(workdir)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
