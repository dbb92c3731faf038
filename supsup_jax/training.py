"""Training a task's scores over frozen weights (SupSup's inner loop).

The per-task training state is a plain pytree (:class:`TaskState`): scores,
optimizer state, that task's batch-norm statistics, a step counter and a PRNG
key. The frozen weights are passed to the step as a separate argument: they
are never part of the optimizer state, so they cannot change.

:func:`make_train_step` returns the pure, un-jitted step ``(weights, state,
images, labels) -> (state, metrics)``; the run loop (``supsup_jax.runs``) jits
it inside a ``lax.scan`` over a task's steps, vmapped over a task axis when it
trains several tasks at once. :func:`make_multitask_step` is that vmap for
library users.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from supsup_jax import masks as masks_lib
from supsup_jax.masked_model import MaskedModel
from supsup_jax.masked_model import accuracy
from supsup_jax.losses import cross_entropy
from supsup_jax.optim import make_optimizer  # noqa: F401  (kept importable from here)


@flax.struct.dataclass
class TaskState:
  """Everything that changes while one task trains (a pytree)."""
  scores: Any
  opt_state: Any
  batch_stats: Any  # {} for models without batch norm
  step: jax.Array
  key: jax.Array


def init_task_state(masked: MaskedModel, weights, optimizer, key: jax.Array,
                    batch_stats: Mapping | None = None,
                    scores: Mapping | None = None) -> TaskState:
  """A fresh state for one task; scores from ``key`` unless given (transfer)."""
  score_key, state_key = jax.random.split(key)
  if scores is None:
    scores = masks_lib.init_scores(weights, score_key)
  # Copies: train steps donate their state, and the initial statistics (or
  # transferred scores) are shared by every task.
  scores = jax.tree.map(jnp.array, scores)
  batch_stats = jax.tree.map(jnp.array, dict(batch_stats or {}))
  return TaskState(scores=scores, opt_state=optimizer.init(scores),
                   batch_stats=batch_stats, step=jnp.int32(0), key=state_key)


def make_train_step(masked: MaskedModel, optimizer: optax.GradientTransformation
                    ) -> Callable:
  """Returns the (un-jitted) step ``(weights, state, images, labels) -> (state, metrics)``.

  images: float32 ``[B, *input_shape]``; labels: int32 [B].
  metrics: {"loss", "accuracy"} scalars.
  """

  def train_step(weights, state: TaskState, images, labels):
    step_key = jax.random.fold_in(state.key, state.step)

    def loss_fn(scores):
      logits, new_stats = masked.logits(weights, scores, state.batch_stats,
                                        images, True, step_key)
      return cross_entropy(logits, labels), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.scores)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.scores)
    scores = optax.apply_updates(state.scores, updates)
    new_state = state.replace(scores=scores, opt_state=opt_state,
                              batch_stats=new_stats, step=state.step + 1)
    return new_state, {"loss": loss,
                       "accuracy": accuracy(logits, labels, masked.num_classes)}

  return train_step


def make_multitask_step(train_step: Callable) -> Callable:
  """vmaps a train step over a leading task axis of state and batch.

  ``(weights, states[T], images[T, B, ...], labels[T, B]) -> (states, metrics[T])``
  """
  return jax.vmap(train_step, in_axes=(None, 0, 0, 0))


def stack_states(states: list[TaskState]) -> TaskState:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def make_eval_step(masked: MaskedModel) -> Callable:
  """``(weights, masks, batch_stats, images, labels) -> number correct`` (jitted)."""

  @jax.jit
  def eval_step(weights, masks, batch_stats, images, labels):
    logits, _ = masked.logits_with_masks(weights, masks, batch_stats, images, False)
    return jnp.sum(jnp.argmax(logits[:, :masked.num_classes], -1) == labels)

  return eval_step
