"""pytest set-up shared by all tests."""
import os

from absl import flags

# absltest helpers (create_tempdir) read absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

# The library's CPU XLA flags (supsup_jax/xla_flags.py), as the launchers set
# them: in-process results then equal those of launcher subprocesses.
from supsup_jax import xla_flags  # pylint: disable=wrong-import-position
xla_flags.apply_cpu_defaults()

# Real-data tests read ../shared/data unless SUPSUP_DATA_DIR says otherwise.
os.environ.setdefault(
    "SUPSUP_DATA_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "shared", "data"))


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: long real-data run; skipped unless SUPSUP_SLOW=1 "
      "(CI runs the short versions)")


def pytest_collection_modifyitems(config, items):
  del config
  if os.environ.get("SUPSUP_SLOW") == "1":
    return
  import pytest  # pylint: disable=import-outside-toplevel
  skip = pytest.mark.skip(reason="slow real-data run; set SUPSUP_SLOW=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
