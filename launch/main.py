r"""Runs one experiment from a config file.

  python -m launch.main --config=launch/configs/gg_split_mnist.py \
      --workdir=/tmp/gg_split_mnist [--config.num_tasks=3 ...]

Dispatches on ``config.runner`` (default ``continual``, see
``supsup_jax/runs/__init__.py``). Writes results.json, accuracy.csv and accuracy.png
to the workdir and checkpoints after every task; the same command on the same
workdir resumes. Bad input (config file, config key or value, workdir, data)
ends with one ``error: ...`` line on stderr and exit code 2; an interrupted
run with exit code 130; a run whose results are not finite with exit code 3.
"""
import math
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
_DISTRIBUTED = flags.DEFINE_string(
    "distributed", "", "Multi-host: 'auto' (cluster auto-detection) or "
    "'host:port,num_processes,process_id'; empty: $SUPSUP_DISTRIBUTED or the "
    "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID environment.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_BAD_INPUT = 2
EXIT_NOT_FINITE = 3
EXIT_INTERRUPTED = 130


def _one_line(e: BaseException) -> str:
  """The innermost message of ``e`` on one line (ml_collections nests a
  KeyError with a "Did you mean" hint inside an AttributeError)."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  msg = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  lines = []
  for line in msg.strip().splitlines():
    line = line.strip()
    if len(line) > 1 and line[0] == line[-1] and line[0] in "'\"":
      line = line[1:-1]
    if line:
      lines.append(line)
  return "; ".join(lines) or type(e).__name__


def _fail(message: str, code: int = EXIT_BAD_INPUT):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv):
  """absl's flag parsing with one-line errors instead of tracebacks."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{_one_line(e)} (see --helpshort)")
  except (AttributeError, KeyError) as e:
    # An unknown --config.<key>: ml_collections raises while parsing.
    keys = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    _fail(f"unknown config key: {_one_line(e)} (overrides given: {', '.join(keys)})")
  except SyntaxError as e:
    _fail(f"config file has a syntax error: {e}")
  except Exception as e:  # pylint: disable=broad-except  (get_config() of the file failed)
    _fail(f"cannot load the config: {type(e).__name__}: {_one_line(e)}")


def _load_config():
  """The config, or one line saying why the file cannot be loaded."""
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  file_part = path.split(":", 1)[0]  # "file.py:arg" passes arg to get_config
  if not os.path.isfile(file_part):
    here = os.path.dirname(file_part) or "."
    names = sorted(f for f in os.listdir(here) if f.endswith(".py")
                   and not f.startswith(("_", "common"))) if os.path.isdir(here) else []
    _fail(f"config file {file_part!r} not found"
          + (f"; files in {here}/: {', '.join(names)}" if names else ""))
  try:
    config = _CONFIG.value
    config.keys()  # a config that failed to load raises here, not above
  except (OSError, ValueError, AttributeError, KeyError, TypeError, SyntaxError) as e:
    _fail(f"cannot load config file {file_part!r}: {_one_line(e).split('; ')[-1]}")
  return config


def _non_finite(results: dict) -> list:
  return sorted(k for k, v in results.items()
                if isinstance(v, float) and not math.isfinite(v))


def main(argv):
  from supsup_jax import xla_flags  # pylint: disable=import-outside-toplevel
  xla_flags.apply_cpu_defaults()  # before JAX starts its backend
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _load_config()
  workdir = _WORKDIR.value
  # Imported here so --help is fast and flag errors come before JAX starts.
  # pylint: disable=import-outside-toplevel
  from supsup_jax import runs as runners
  from supsup_jax import workdir as workdir_lib
  from supsup_jax.checkpoint import ConfigMismatchError
  from supsup_jax.data import DataNotFoundError
  # pylint: enable=import-outside-toplevel
  logging.get_absl_handler().python_handler.stream = sys.stdout
  logging.set_verbosity(logging.INFO)
  try:
    # Multi-host: jax.distributed.initialize, before any JAX computation.
    from supsup_jax import distributed  # pylint: disable=import-outside-toplevel
    distributed.maybe_initialize(_DISTRIBUTED.value or None)
    workdir_lib.check_workdir(workdir)
    run = runners.get_runner(config.get("runner", "continual"))
    results = run(config, workdir)
  except KeyboardInterrupt:
    _fail(f"interrupted; run the same command again to resume from the last checkpoint "
          f"in {os.path.abspath(workdir)}", EXIT_INTERRUPTED)
  except FloatingPointError as e:
    _fail(_one_line(e), EXIT_NOT_FINITE)
  except (ValueError, FileNotFoundError, DataNotFoundError, ConfigMismatchError,
          workdir_lib.WorkdirLockedError, PermissionError, NotADirectoryError) as e:
    _fail(_one_line(e))
  bad = _non_finite(results)
  if bad:
    _fail(f"the run ended with non-finite {', '.join(bad)}; see {os.path.abspath(workdir)}",
          EXIT_NOT_FINITE)
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
  app.run(main, flags_parser=_parse_flags)
