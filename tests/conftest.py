"""pytest set-up shared by all tests."""
import os

from absl import flags

# absltest helpers (create_tempdir) read absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

# Real-data tests read ../shared/data unless SUPSUP_DATA_DIR says otherwise.
os.environ.setdefault(
    "SUPSUP_DATA_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "shared", "data"))
