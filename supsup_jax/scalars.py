"""Training and evaluation scalars as TensorBoard event files.

``ScalarWriter(logdir).write(step, {"train/task_003/loss": 0.12, ...})``
appends one event holding every scalar of the dict (``simple_value`` summaries,
the format TensorBoard, ``tf.compat.v1.train.summary_iterator`` and
``tensorboard.backend.event_processing`` read).

Written with tensorboardX: pure Python (NumPy + protobuf), so the run loop does
not import TensorFlow for it, and its event-file writer serialises and writes on
a background thread, so ``write`` only builds one protobuf and queues it (tens
of microseconds). Call it every log chunk; ``flush`` forces the file to disk.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping


class ScalarWriter:
  """TensorBoard scalar writer; usable as a context manager.

  Args:
    logdir: folder for the event files (created if missing); point TensorBoard
      at it (``tensorboard --logdir <workdir>``).
    purge_step: when resuming from a checkpoint taken at this step, events of an
      earlier process at steps >= purge_step are hidden by TensorBoard, so a
      resumed curve has no doubled segment.
    flush_secs: the background writer flushes at least this often.
  """

  def __init__(self, logdir: str, *, purge_step: int | None = None,
               flush_secs: int = 10):
    if not isinstance(logdir, str) or not logdir:
      raise ValueError(f"logdir must be a non-empty path string, got {logdir!r}")
    if purge_step is not None:
      _check_step(purge_step, "purge_step")
    # Imported here so that importing supsup_jax does not need tensorboardX.
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import summary_pb2  # pylint: disable=import-outside-toplevel
    self._summary_pb2 = summary_pb2
    self._writer = SummaryWriter(logdir=logdir, purge_step=purge_step,
                                 flush_secs=flush_secs, max_queue=100)
    # The event file (and purge_step's marker event) is created here, not
    # lazily at the first write; add_summary on it takes one Summary with many
    # values, one event per write instead of one per scalar.
    self._file_writer = self._writer._get_file_writer()  # pylint: disable=protected-access
    self.logdir = logdir
    self._closed = False

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One event at ``step`` with every ``tag: value`` of ``scalars``.

    Values must be real numbers (Python, NumPy or 0-d JAX arrays; a JAX array
    waits for its computation). NaN and inf are written as they are, so a
    diverging loss shows up in TensorBoard.
    """
    if self._closed:
      raise ValueError(f"ScalarWriter for {self.logdir!r} is closed")
    _check_step(step, "step")
    values = []
    for tag, value in scalars.items():
      if not isinstance(tag, str) or not tag:
        raise ValueError(f"scalar tags must be non-empty strings, got {tag!r}")
      try:
        number = float(value)
      except (TypeError, ValueError):
        raise ValueError(f"scalar {tag!r} must be a real number, got {value!r}") from None
      values.append(self._summary_pb2.Summary.Value(tag=tag, simple_value=number))
    if values:
      self._file_writer.add_summary(self._summary_pb2.Summary(value=values), int(step))

  def flush(self) -> None:
    if not self._closed:
      self._writer.flush()

  def close(self) -> None:
    if not self._closed:
      self._writer.close()
      self._closed = True

  def __enter__(self) -> "ScalarWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _check_step(step: Any, name: str) -> None:
  if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {step!r}")
