"""What every launcher shares: flag parsing, config loading, one-line errors, exit codes.

Bad input (flags, config file, config key or value, workdir, data) ends with
one ``error: ...`` line on stderr and exit code 2; an interrupted run
(Ctrl-C, or SIGTERM as a batch scheduler's preemption sends) with 130 after
the run saved what it had; a run whose training or results are not finite
with 3.
"""
import contextlib
import os
import signal
import sys

from absl import flags
from ml_collections import config_flags

EXIT_BAD_INPUT = 2
EXIT_NOT_FINITE = 3
EXIT_INTERRUPTED = 130


def one_line(e: BaseException) -> str:
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


def fail(message: str, code: int = EXIT_BAD_INPUT):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl's flag parsing with one-line errors instead of tracebacks."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = str(e)
    if "Traceback (most recent call last)" in msg:
      # ml_collections wraps an error of the config file's get_config() with its
      # traceback; its last line is what the user needs.
      fail(f"cannot load the config: {msg.strip().splitlines()[-1].strip()}")
    fail(f"{one_line(e)} (see --helpshort)")
  except (AttributeError, KeyError) as e:
    # An unknown --config.<key>: ml_collections raises while parsing.
    keys = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    fail(f"unknown config key: {one_line(e)} (overrides given: {', '.join(keys)})")
  except SyntaxError as e:
    fail(f"config file has a syntax error: {e}")
  except Exception as e:  # pylint: disable=broad-except  (get_config() of the file failed)
    fail(f"cannot load the config: {type(e).__name__}: {one_line(e)}")


def load_config(config_flag, flag_name: str = "config"):
  """The config of ``--config``, or one line saying why the file cannot be loaded."""
  path = config_flags.get_config_filename(flags.FLAGS[flag_name])
  file_part = path.split(":", 1)[0]  # "file.py:arg" passes arg to get_config
  if not os.path.isfile(file_part):
    here = os.path.dirname(file_part) or "."
    names = sorted(f for f in os.listdir(here) if f.endswith(".py")
                   and not f.startswith(("_", "common"))) if os.path.isdir(here) else []
    fail(f"config file {file_part!r} not found"
         + (f"; files in {here}/: {', '.join(names)}" if names else ""))
  try:
    config = config_flag.value
    config.keys()  # a config that failed to load raises here, not above
  except (OSError, ValueError, AttributeError, KeyError, TypeError, SyntaxError) as e:
    fail(f"cannot load config file {file_part!r}: {one_line(e).split('; ')[-1]}")
  return config


def _bad_input_errors() -> tuple:
  # Imported here so --help is fast and flag errors come before JAX starts.
  # pylint: disable=import-outside-toplevel
  from supsup_jax import workdir as workdir_lib
  from supsup_jax.checkpoint import CheckpointError, ConfigMismatchError
  from supsup_jax.data import DataNotFoundError
  # pylint: enable=import-outside-toplevel
  # OSError: a full disk or a lost mount where the run writes (lock file,
  # outputs), reported in one line like the rest.
  return (ValueError, OSError, DataNotFoundError, ConfigMismatchError, CheckpointError,
          workdir_lib.WorkdirLockedError, RuntimeError)


def _sigterm_as_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def one_line_errors(workdir: str):
  """Maps a run's failures to one ``error:`` line and the exit codes above.

  SIGTERM is raised as KeyboardInterrupt, so a preempted run stops like a
  Ctrl-C one: its checkpoints are closed cleanly and the same command resumes.
  """
  previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
  where = os.path.abspath(workdir)
  try:
    yield
  except KeyboardInterrupt as e:
    how = f" ({e})" if str(e) else ""
    fail(f"interrupted{how}; run the same command again to resume from the last "
         f"checkpoint in {where}", EXIT_INTERRUPTED)
  except FloatingPointError as e:
    fail(one_line(e), EXIT_NOT_FINITE)
  except _bad_input_errors() as e:
    fail(" ".join(one_line(e).split()))
  finally:
    signal.signal(signal.SIGTERM, previous)
