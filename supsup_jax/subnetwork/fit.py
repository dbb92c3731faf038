"""A jitted single-task training loop and test accuracy.

Every method here trains some pytree ``trainable`` (weights, or scores) that
an ``effective(trainable, frozen, key) -> params`` map turns into the model's
parameter tree (weights times a fixed mask, frozen weights times a sampled
mask, ...). ``frozen`` holds what the method keeps fixed (initial weights,
masks); it is an argument, never a constant of the compiled program. The loop
is a ``lax.scan`` over steps, each reading batch ``step`` of the stream's task
(a pure function of (seed, task, step), so rounds and resumptions see the same
batches).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Effective = Callable[[Any, Any, jax.Array], Any]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_trainer(model, effective: Effective, optimizer: optax.GradientTransformation,
                 stream, batch_size: int, task_id: int = 0) -> Callable:
  """Returns ``train(trainable, frozen, key, start_step, num_steps, opt_state=None)
  -> (trainable, opt_state, mean_loss)``.

  ``num_steps`` is static (one compile per distinct value); ``start_step``
  selects the batches (late rewinding resumes at step k). images: float32
  ``[B, *input_shape]``, labels int32 [B].
  """
  batch_fn, arrays = stream.train_batch_fn_args(batch_size)

  def loss_fn(trainable, frozen, images, labels, key):
    logits = model.apply({"params": effective(trainable, frozen, key)}, images)
    return cross_entropy(logits, labels)

  def run(trainable, opt_state, frozen, arrays, key, start_step, num_steps):
    def step(carry, i):
      params, opt_state = carry
      images, labels = batch_fn(arrays, task_id, start_step + i)
      loss, grads = jax.value_and_grad(loss_fn)(
          params, frozen, images, labels, jax.random.fold_in(key, start_step + i))
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (trainable, opt_state), losses = jax.lax.scan(
        step, (trainable, opt_state), jnp.arange(num_steps, dtype=jnp.int32))
    return trainable, opt_state, jnp.mean(losses)

  run_jit = jax.jit(run, static_argnames=("num_steps",))

  def train(trainable, frozen, key, start_step: int, num_steps: int, opt_state=None):
    if num_steps <= 0:
      return trainable, opt_state, float("nan")
    if opt_state is None:
      opt_state = optimizer.init(trainable)
    return run_jit(trainable, opt_state, frozen, arrays, key,
                   jnp.int32(start_step), num_steps=int(num_steps))

  return train


def make_accuracy(model, num_classes: int | None = None, chunk: int = 2000) -> Callable:
  """Returns ``accuracy(params, images, labels) -> float`` (whole test set, in
  chunks of ``chunk`` images; prediction restricted to the first
  ``num_classes`` logits when given)."""

  @jax.jit
  def correct(params, images, labels):
    logits = model.apply({"params": params}, images)
    if num_classes is not None:
      logits = logits[:, :num_classes]
    return jnp.sum(jnp.argmax(logits, -1) == labels)

  def accuracy(params, images, labels) -> float:
    n = int(np.shape(labels)[0])
    total = 0
    for s in range(0, n, chunk):
      total += int(correct(params, images[s:s + chunk], labels[s:s + chunk]))
    return total / n

  return accuracy
