"""A task stream seen without task identity (the NN scenarios).

The tasks follow one another every ``iterations_per_task`` batches; a batch
is addressed only by its position ``b`` in the whole stream. The batch
function handed to the learner's training takes ``(arrays, b)`` and nothing
else, so a learner cannot read the task id. ``true_task(b)`` is for the
bookkeeping of the experiment (which data each mask was trained on), never
for the learner.
"""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp


class TaskFreeStream:
  """Batches ``b = 0 .. num_tasks * iterations_per_task - 1`` of ``stream``."""

  def __init__(self, stream, iterations_per_task: int):
    if not hasattr(stream, "train_batch_fn_args"):
      raise ValueError(f"stream {stream.name!r} has no jittable batches; training "
                       "without task identity needs an in-memory stream")
    if int(iterations_per_task) < 1:
      raise ValueError(f"iterations_per_task must be >= 1, got {iterations_per_task!r}")
    self._stream = stream
    self.iterations_per_task = int(iterations_per_task)
    self.num_batches = stream.num_tasks * self.iterations_per_task

  @property
  def device_arrays(self) -> Any:
    return self._stream.device_arrays

  def batch_fn_args(self, batch_size: int) -> Callable:
    """``fn(arrays, b) -> (images [B, ...], labels [B])``, jittable."""
    fn, _ = self._stream.train_batch_fn_args(batch_size)
    its = self.iterations_per_task

    def batch(arrays, b):
      b = jnp.asarray(b, jnp.int32)
      return fn(arrays, b // its, b % its)

    return batch

  def true_task(self, b: int) -> int:
    """The task batch ``b`` comes from (bookkeeping only)."""
    return int(b) // self.iterations_per_task
