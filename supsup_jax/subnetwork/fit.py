"""A jitted single-task training loop, test accuracy, and the run session a study trains in.

Every method here trains some pytree ``trainable`` (weights, or scores) that
an ``effective(trainable, frozen, key) -> params`` map turns into the model's
parameter tree (weights times a fixed mask, frozen weights times a sampled
mask, ...). ``frozen`` holds what the method keeps fixed (initial weights,
masks); it is an argument, never a constant of the compiled program. The loop
is a ``lax.scan`` over steps, each reading batch ``step`` of the stream's task
(a pure function of (seed, task, step), so rounds, chunks and resumptions see
the same batches: training ``n`` steps in chunks gives bit-identical results).

A study never checkpoints or logs by itself: it asks its :class:`Session`
(``get``/``put`` named resumable state, ``train`` in chunks with a
non-finite guard). This base session keeps nothing (a notebook, a test); the
``subnetwork`` runner passes one that checkpoints to its workdir and resumes
(:class:`supsup_jax.runs.subnetwork.RunSession`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import state_io
from supsup_jax import losses

Effective = Callable[[Any, Any, jax.Array], Any]


cross_entropy = losses.cross_entropy


def all_finite(tree) -> jax.Array:
  """True iff every leaf of ``tree`` is finite (a traced bool under jit)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_trainer(model, effective: Effective, optimizer: optax.GradientTransformation,
                 stream, batch_size: int, task_id: int = 0) -> Callable:
  """Returns ``train(trainable, frozen, key, start_step, num_steps, opt_state=None)
  -> (trainable, opt_state, mean_loss)``.

  ``num_steps`` is static (one compile per distinct value); ``start_step``
  selects the batches (late rewinding resumes at step k). ``mean_loss`` is NaN
  when any step's loss or the final ``trainable`` / optimizer state is not
  finite (the runners' non-finite guard reads it), and NaN for ``num_steps <=
  0`` (nothing trained). ``train.init_opt(trainable)`` is the optimizer's
  initial state (a template to restore a saved one on). images: float32
  ``[B, *input_shape]``, labels int32 ``[B]``.
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
    finite = all_finite(losses) & all_finite(trainable) & all_finite(opt_state)
    return trainable, opt_state, jnp.where(finite, jnp.mean(losses), jnp.nan)

  run_jit = jax.jit(run, static_argnames=("num_steps",))

  def train(trainable, frozen, key, start_step: int, num_steps: int, opt_state=None):
    if num_steps <= 0:
      return trainable, opt_state, float("nan")
    if opt_state is None:
      opt_state = optimizer.init(trainable)
    return run_jit(trainable, opt_state, frozen, arrays, key,
                   jnp.int32(start_step), num_steps=int(num_steps))

  train.init_opt = optimizer.init
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


class Session:
  """What a study asks of the run it is in; this one keeps nothing.

  * ``get(name)`` / ``put(name, tree, meta, where=...)``: named resumable
    state. A study ``put``s what it needs to go on (a pytree of arrays and a
    JSON dict) at each resumable point, and on entry ``get``s it back: after a
    resume it continues from there. A runner's ``put`` checkpoints, and may
    end this process's share of the run there (``stop_after_steps``), so a
    ``put`` must come where everything needed to go on has been stored. Here
    ``get`` returns what ``put`` stored in this process only.
  * ``train(train, unit, trainable, frozen, key, start, num_steps, opt_state)``:
    a :func:`make_trainer` ``train`` run in chunks of ``chunk_steps`` steps
    (bit-identical to one call), each checked by the non-finite guard
    (``FloatingPointError``, one line). ``unit`` names the training (unique
    in the run); a runner's session checkpoints inside it.
  * ``advance(label, n, done, total, loss)``: counts and reports ``n`` steps
    trained (``train`` calls it per chunk; a study with its own loop, e.g.
    Meta-ticket's, too) and says whether to checkpoint there; ``chunk`` gives
    the next chunk's length, ``check_finite`` is the guard, ``plan`` takes the
    run's total steps for the ETA.
  """

  def __init__(self, chunk_steps: int = 500):
    self.chunk_steps = max(1, int(chunk_steps))
    self.steps_done = 0
    self.last_good = "no checkpoint yet"
    self._store: dict[str, tuple[Any, dict]] = {}

  # -- named resumable state ---------------------------------------------------
  def get(self, name: str) -> tuple[Any, dict] | None:
    return self._store.get(name)

  def put(self, name: str, tree: Any = None, meta: Mapping | None = None, *,
          where: str = "") -> None:
    del where
    self._store[name] = (tree, dict(meta or {}))

  def drop(self, name: str) -> None:
    self._store.pop(name, None)

  # -- progress and the guard --------------------------------------------------
  def plan(self, total_steps: int) -> None:
    """The run's total training steps (for an ETA)."""

  def check_finite(self, finite, where: str) -> None:
    if not bool(finite):
      raise FloatingPointError(
          f"training became non-finite (NaN or inf loss or state) in {where}; "
          f"stopped, {self.last_good}; lower the learning rate or check the data")

  def advance(self, label: str, n: int, done: int, total: int, loss: float) -> bool:
    """Counts ``n`` steps of ``label`` (now ``done`` of ``total``); returns
    whether the caller should checkpoint here (never, in this session)."""
    del label, done, total, loss
    self.steps_done += int(n)
    return False

  # -- training ------------------------------------------------------------------
  def chunk(self, done: int, num_steps: int) -> int:
    return min(self.chunk_steps, num_steps - done)

  def train(self, train: Callable, unit: str, trainable, frozen, key, start: int,
            num_steps: int, opt_state=None):
    """``train`` (from :func:`make_trainer`) for steps ``start .. start +
    num_steps`` in chunks; returns ``(trainable, opt_state, mean_loss)``."""
    num_steps = int(num_steps)
    done, losses = 0, []
    saved = self.get(unit + "#train")
    if saved is not None:  # resumed inside this training
      tree, meta = saved
      trainable = state_io.from_saveable(tree["trainable"], trainable)
      opt_state = state_io.from_saveable(tree["opt_state"], train.init_opt(trainable))
      done, losses = int(meta["done"]), list(meta["losses"])
    while done < num_steps:
      n = self.chunk(done, num_steps)
      trainable, opt_state, loss = train(trainable, frozen, key, start + done, n, opt_state)
      loss = float(loss)
      self.check_finite(math.isfinite(loss), f"{unit}, steps {start + done}.."
                                             f"{start + done + n}")
      done += n
      losses.append((n, loss))
      if self.advance(unit, n, done, num_steps, loss) and done < num_steps:
          self.put(unit + "#train", {"trainable": state_io.to_saveable(trainable),
                                   "opt_state": state_io.to_saveable(opt_state)},
                 {"done": done, "losses": losses}, where=f"{unit} step {start + done}")
    self.drop(unit + "#train")
    total = sum(n for n, _ in losses)
    mean = sum(n * l for n, l in losses) / total if total else float("nan")
    return trainable, opt_state, mean
