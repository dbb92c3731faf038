"""What a continual learner is: a frozen bundle of pure functions over pytrees.

In the spirit of optax's ``GradientTransformation``: a :class:`Learner` holds
functions and static facts, never state. Its state lives in two pytrees that
the run loop owns, checkpoints and passes back in:

* ``memory``: what the learner keeps across tasks (SupSup: the frozen weights,
  the mask bank, per-task batch-norm statistics, the running score sum).
  Its structure and shapes are fixed when it is created, so functions taking
  it compile once.
* ``task_state``: what changes while one task trains (scores, optimizer state,
  batch-norm statistics, step counter, PRNG key).

Shapes at the boundaries: ``images`` float32 ``[B, *input_shape]``, ``labels``
int32 ``[B]``, logits ``[B, num_outputs]``; ``task_id`` an int32 scalar
(Python, NumPy or traced). ``train_step`` must be jittable and vmappable over
a leading task axis of ``task_state``, ``images`` and ``labels`` (the run loop
trains several tasks at once that way); ``logits`` and ``end_task`` must be
jittable. ``infer_task`` and ``detect_task`` may run host code (binary
search) but are pure.

Which scenarios a learner serves follows from what it has: every learner
serves GG; GNs/GNu need ``infer_task``; NNs needs ``infer_task``,
``detect_task`` and ``reopen_task``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

Memory = Any
TaskState = Any

SCENARIOS = ("GG", "GNs", "GNu", "NNs")


@dataclasses.dataclass(frozen=True)
class Learner:
  """A continual learner (see the module docstring for the contract).

  Attributes:
    name: shown in errors and results.
    num_classes: real classes per task; accuracy uses ``logits[:, :num_classes]``.
    init_memory: ``() -> memory``.
    init_task: ``(memory, task_id, key) -> task_state`` for a task not seen yet.
    train_step: ``(memory, task_state, images, labels) -> (task_state,
      {"loss", "accuracy"})``; pure, jittable, vmappable over tasks.
    end_task: ``(memory, task_state, task_id) -> memory``: keeps what the task
      learned. Called again with the same ``task_id`` it overwrites that task.
    logits: ``(memory, task_id, images) -> logits`` with the task given.
    trains_weights: whether the learner changes network weights (baselines,
      PackNet) or only masks over fixed weights (SupSup).
    infer_task: ``(memory, num_learned, images_many[N, n, ...]) -> int [N]``:
      the task of each of N units of n images (GN/NN scenarios).
    detect_task: ``(memory, num_learned, images) -> (is_new, best)``: whether
      a batch comes from data none of the ``num_learned`` tasks fits (NNs).
    reopen_task: ``(memory, task_id, key) -> task_state``: resume training a
      task already ended (NNs, when old data comes back).
    summary: ``(memory, num_learned) -> dict`` of JSON-able facts for
      results.json (``bytes_per_task`` at least).
    place_memory: ``(memory, mesh) -> memory``: the memory laid out on a
      device mesh (:mod:`supsup_jax.distributed`) by the learner itself (SupSup:
      the mask bank's rows split over the devices, the rest replicated);
      None: the run loop replicates every leaf. ``end_task``'s output keeps
      the layout of its input memory.
    infer_task_with: ``(objective) -> infer_task`` with another objective
      (e.g. "g" beside the learner's "entropy"), for runs that compare them.
    provenance: JSON-able record of where the learner's fixed inputs come
      from (SupSup over pretrained weights: the checkpoint's path and
      digest, :mod:`supsup_jax.pretrained`); the run loop writes it to
      results.json and every checkpoint and refuses a resume whose
      provenance changed. None: nothing beyond the config.

  The first eight fields are required; ``trains_weights`` defaults to False
  and the optional functions to None (a learner without ``infer_task``
  serves GG only, see :func:`check_serves`). A method's ``make`` in
  :mod:`supsup_jax.methods` builds one; ``"package.module:function"`` in
  ``config.method`` runs your own (:func:`supsup_jax.methods.make_learner`).

  Example:
    The run loop's life cycle of one task, driven by hand:

    >>> import jax, jax.numpy as jnp, optax
    >>> import supsup_jax as ss
    >>> from supsup_jax.methods import supsup
    >>> model = ss.models.LeNet300100(num_outputs=10)
    >>> weights = ss.init_weights(model, 0, jnp.zeros((1, 28, 28, 1)))
    >>> masked = ss.MaskedModel(model, ss.MaskSpec("topk", 0.5), num_classes=10)
    >>> learner = supsup.make(masked, weights, optax.rmsprop(1e-3), capacity=4)
    >>> memory = learner.init_memory()
    >>> ts = learner.init_task(memory, 0, jax.random.key(1))
    >>> images, labels = jnp.zeros((8, 28, 28, 1)), jnp.arange(8) % 10
    >>> ts, metrics = jax.jit(learner.train_step)(memory, ts, images, labels)
    >>> sorted(metrics)
    ['accuracy', 'loss']
    >>> memory = learner.end_task(memory, ts, 0)
    >>> learner.logits(memory, 0, images).shape
    (8, 10)
  """
  name: str
  num_classes: int
  init_memory: Callable[[], Memory]
  init_task: Callable[[Memory, Any, Any], TaskState]
  train_step: Callable[..., tuple[TaskState, dict]]
  end_task: Callable[[Memory, TaskState, Any], Memory]
  logits: Callable[[Memory, Any, Any], Any]
  summary: Callable[[Memory, int], dict]
  trains_weights: bool = False
  infer_task: Callable[[Memory, int, Any], Any] | None = None
  detect_task: Callable[[Memory, int, Any], tuple[bool, int]] | None = None
  reopen_task: Callable[[Memory, Any, Any], TaskState] | None = None
  place_memory: Callable[[Memory, Any], Memory] | None = None
  infer_task_with: Callable[[str], Callable[[Memory, int, Any], Any]] | None = None
  provenance: Mapping[str, Any] | None = None


_NEEDS = {
    "GG": (),
    "GNs": ("infer_task",),
    "GNu": ("infer_task",),
    "NNs": ("infer_task", "detect_task", "reopen_task"),
}


def check_serves(learner: Learner, scenario: str) -> None:
  """Raises a one-line ValueError unless ``learner`` can run ``scenario``."""
  if scenario not in _NEEDS:
    raise ValueError(f"scenario {scenario!r} unknown; allowed: {', '.join(SCENARIOS)}")
  missing = [f for f in _NEEDS[scenario] if getattr(learner, f) is None]
  if missing:
    raise ValueError(
        f"learner {learner.name!r} cannot serve scenario {scenario}: it lacks "
        f"{', '.join(missing)} (task identity is not given there); use GG or a "
        "learner that infers the task")


def serves(learner: Learner, scenario: str) -> bool:
  """Whether ``learner`` has every function ``scenario`` needs (no error)."""
  return all(getattr(learner, f) is not None for f in _NEEDS[scenario])


def train_steps(iterations, epochs, train_size: int, batch_size: int) -> int:
  """Steps of one training, the one formula every run uses: ``iterations``
  if > 0, else ``ceil(epochs * train_size / batch_size)`` (a last partial
  batch counts, as a PyTorch DataLoader without ``drop_last`` does)."""
  if iterations:
    return int(iterations)
  return int(math.ceil(float(epochs) * int(train_size) / int(batch_size)))


def steps_per_task(config, stream) -> int:
  """Train steps per task of an experiment config: ``iterations_per_task``,
  or ``epochs_per_task`` epochs of task 0's training split."""
  epochs = float(config.get("epochs_per_task") or 0)
  if not config.get("iterations_per_task") and epochs <= 0:
    raise ValueError("set config.iterations_per_task or config.epochs_per_task "
                     "to a positive number")
  return train_steps(config.get("iterations_per_task"), epochs, stream.train_size(0),
                     config.batch_size)
