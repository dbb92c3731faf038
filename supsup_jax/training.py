"""Training a task's scores over frozen weights.

The per-task training state is a plain pytree (:class:`TaskState`): scores,
optimizer state, that task's batch-norm statistics, a step counter and a PRNG
key. The frozen weights are passed to the step as a separate argument: they
are never part of the optimizer state, so they cannot change.

``train_step(weights, state, images, labels) -> (state, metrics)`` is one jitted
function; :func:`make_multitask_step` vmaps it over a leading task axis of the
state and the batch to train several tasks' masks at once (GG).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import masks as masks_lib

OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "cosine")


@flax.struct.dataclass
class TaskState:
  """Everything that changes while one task trains (a pytree)."""
  scores: Any
  opt_state: Any
  batch_stats: Any  # {} for models without batch norm
  step: jax.Array
  key: jax.Array


def make_schedule(learning_rate: float, schedule: str = "constant", *,
                  total_steps: int = 1, warmup_steps: int = 0) -> optax.Schedule:
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
  if schedule == "constant":
    if warmup_steps:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, learning_rate, warmup_steps),
           optax.constant_schedule(learning_rate)], [warmup_steps])
    return optax.constant_schedule(learning_rate)
  return optax.warmup_cosine_decay_schedule(
      0.0 if warmup_steps else learning_rate, learning_rate,
      max(warmup_steps, 0), max(total_steps, warmup_steps + 1), 0.0)


def make_optimizer(name: str = "rmsprop", learning_rate: float = 1e-4, *,
                   momentum: float = 0.9, weight_decay: float = 0.0,
                   schedule: str = "constant", total_steps: int = 1,
                   warmup_steps: int = 0) -> optax.GradientTransformation:
  """Optimizer over the scores, with PyTorch's conventions.

  Weight decay is L2 added to the gradient before the update (PyTorch's
  ``weight_decay``); RMSprop uses decay 0.99 and eps 1e-8 outside the sqrt.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
  lr = make_schedule(learning_rate, schedule, total_steps=total_steps,
                     warmup_steps=warmup_steps)
  if name == "rmsprop":
    base = optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)
  elif name == "adam":
    base = optax.adam(lr)
  else:
    base = optax.sgd(lr, momentum=momentum or None)
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), base)
  return base


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """How scores become masks: kind "topk" with fraction(s) k, or "threshold"."""
  kind: str = "topk"
  k: float | Mapping = 0.5

  def __post_init__(self):
    if self.kind not in masks_lib.MASK_KINDS:
      raise ValueError(f"unknown mask kind {self.kind!r}; allowed: "
                       f"{', '.join(masks_lib.MASK_KINDS)}")
    if self.kind == "topk":
      if isinstance(self.k, Mapping):
        jax.tree.map(masks_lib.check_fraction, dict(self.k))
      else:
        masks_lib.check_fraction(self.k)

  def __hash__(self):
    return hash((self.kind, str(self.k)))

  def __call__(self, scores: Mapping) -> dict:
    return masks_lib.masks_from_scores(scores, self.kind, self.k)


class MaskedModel:
  """A Flax model whose maskable weights are multiplied by a supermask.

  Attributes:
    model: the Flax module; ``model.apply(variables, x, train=...)``.
    mask_spec: how scores turn into masks.
    num_classes: real classes per task; logits beyond them are superfluous
      neurons (trained down by the cross-entropy, ignored by accuracy).
  """

  def __init__(self, model: nn.Module, mask_spec: MaskSpec, num_classes: int):
    self.model = model
    self.mask_spec = mask_spec
    self.num_classes = num_classes

  def logits_with_masks(self, weights, masks, batch_stats, images, train: bool,
                        key: jax.Array | None = None):
    """Logits [B, num_outputs] and updated batch_stats, given masks."""
    params = masks_lib.apply_masks(weights, masks)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    rngs = {"dropout": key} if key is not None else None
    if train and batch_stats:
      logits, updates = self.model.apply(variables, images, train=True,
                                         mutable=["batch_stats"], rngs=rngs)
      return logits, updates["batch_stats"]
    return self.model.apply(variables, images, train=train, rngs=rngs), batch_stats

  def logits(self, weights, scores, batch_stats, images, train: bool,
             key: jax.Array | None = None):
    return self.logits_with_masks(weights, self.mask_spec(scores), batch_stats,
                                  images, train, key)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Accuracy with the prediction restricted to the real classes."""
  return jnp.mean(jnp.argmax(logits[:, :num_classes], -1) == labels)


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

  images: float32 [B, *input_shape]; labels: int32 [B].
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


def unstack_state(states: TaskState, index: int) -> TaskState:
  return jax.tree.map(lambda x: x[index], states)


def make_eval_step(masked: MaskedModel) -> Callable:
  """``(weights, masks, batch_stats, images, labels) -> number correct`` (jitted)."""

  @jax.jit
  def eval_step(weights, masks, batch_stats, images, labels):
    logits, _ = masked.logits_with_masks(weights, masks, batch_stats, images, False)
    return jnp.sum(jnp.argmax(logits[:, :masked.num_classes], -1) == labels)

  return eval_step


def evaluate_task(eval_step: Callable, weights, masks, batch_stats, batches) -> float:
  """Accuracy of one task's masks over an iterable of (images, labels)."""
  correct, total = 0, 0
  for images, labels in batches:
    correct += int(eval_step(weights, masks, batch_stats, images, labels))
    total += int(np.shape(labels)[0])
  if total == 0:
    raise ValueError("no test examples to evaluate")
  return correct / total
