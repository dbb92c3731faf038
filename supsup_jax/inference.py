"""Task inference by the alpha-gradient of the superposed model (GN scenarios).

With k masks in the bank, the superposed model is
``p(alpha) = f(x; W * sum_i alpha_i M_i)``. The effective weights are linear in
alpha, so the gradient of an objective w.r.t. alpha factorises:

    d obj / d alpha_i = sum_layers < d obj / d W_eff , W * M_i >

One backward pass at the uniform superposition gives G = (d obj/d W_eff) * W
flattened to ``[num_bits]``; the k gradients are then one pass over the
bit-packed bank (``bank.rows_dot``; N units at once: ``bank.rows_matmul``).
On CPU the pass is a compiled kernel (``supsup_jax.bitdot``: 16 bits of a
mask are an AVX-512 write mask over G, so the masks are never unpacked);
elsewhere a per-byte lookup table, ``lut[j, v] = sum_b bit_b(v) * G[8j + b]``.

Checks and ``jit``: every public function here can be wrapped in ``jax.jit``
(the model, objective, algorithm and ``num_tasks`` closed over or static).
Input values are checked only where they are concrete (outside a trace, see
:mod:`supsup_jax.checks`): an empty bank, empty or non-finite images, and
non-finite weights, batch statistics or gradients are one-line ValueErrors
there. Under ``jit`` nothing is read back to the host: a bank whose task
count is traced gives ``[capacity]`` gradients with ``+inf`` past
``num_tasks`` (pass ``num_tasks=`` for ``[num_tasks]``), and :func:`oneshot`,
:func:`binary`, :func:`binary_many` and :func:`infer_task` return ``-1``
(never a task id) when the gradients they compare are not finite or the bank
is empty. Images whose shape does not fit the weights are refused in one line
under ``jit`` too (shapes are static).

Objectives (``objective=``):
  * "entropy" (H): mean Shannon entropy of the softmax over all outputs.
  * "g" (G): mean logsumexp of the logits where the real-class logits are
    detached, so the gradient flows only through the superfluous neurons.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import losses
from supsup_jax import tree as tree_lib
from supsup_jax import checks
from supsup_jax.masked_model import InputShapeError, MaskedModel

OBJECTIVES = ("entropy", "g")
ALGORITHMS = ("oneshot", "binary")


def check_objective(objective: str) -> None:
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")


def objective_value(logits: jax.Array, objective: str, num_classes: int) -> jax.Array:
  """Scalar objective of a batch of logits [B, num_outputs]."""
  check_objective(objective)
  if objective == "entropy":
    return losses.batch_entropy(logits)
  if logits.shape[-1] <= num_classes:
    raise ValueError(
        f"objective 'g' needs superfluous neurons: the model has "
        f"{logits.shape[-1]} outputs for {num_classes} classes")
  logits = jnp.concatenate(
      [jax.lax.stop_gradient(logits[:, :num_classes]), logits[:, num_classes:]], -1)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1))


def superposed_logits(masked: MaskedModel, weights, stacked_masks: Mapping,
                      alphas: jax.Array, images: jax.Array,
                      batch_stats: Mapping | None = None) -> jax.Array:
  """Logits of the model with weights W * sum_i alphas[i] * masks[i].

  Args:
    stacked_masks: masks tree with a leading task axis ``[k, ...]``.
    alphas: ``[k]`` coefficients.
    images: ``[B, *input_shape]``.
  Returns:
    logits ``[B, num_outputs]``. Pure: works under jit, grad and vmap.
  """
  leaves = jax.tree.leaves(stacked_masks)
  k = np.shape(leaves[0])[0] if leaves and np.ndim(leaves[0]) else None
  if np.shape(alphas) != (k,):
    raise ValueError(f"alphas must have shape ({k},), one per stacked mask, got "
                     f"{np.shape(alphas)}")
  mixed = jax.tree.map(lambda m: jnp.tensordot(alphas, m, axes=1), dict(stacked_masks))
  logits, _ = masked.logits_with_masks(weights, mixed, batch_stats or {}, images,
                                       train=False)
  return logits


def superposed_objective(masked: MaskedModel, weights, stacked_masks, alphas,
                         images, objective: str = "entropy", batch_stats=None):
  return objective_value(
      superposed_logits(masked, weights, stacked_masks, alphas, images, batch_stats),
      objective, masked.num_classes)


def effective_weight_grad(masked: MaskedModel, weights, mixed_masks: Mapping,
                          images, objective: str, batch_stats=None) -> dict:
  """G = (d obj / d W_eff) * W at W_eff = W * mixed_masks, over maskable leaves."""
  maskable = tree_lib.maskable_subtree(weights)
  paths = set(tree_lib.flatten(mixed_masks))
  w_masked = {p: v for p, v in tree_lib.flatten(maskable).items() if p in paths}
  w_masked = tree_lib.unflatten(w_masked)

  def obj(effective):
    # The effective weights replace the masked leaves of the weight tree.
    flat = tree_lib.flatten(weights)
    flat.update(tree_lib.flatten(effective))
    params = tree_lib.unflatten(flat)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    logits = masked.apply(variables, images, train=False)
    return objective_value(logits, objective, masked.num_classes)

  effective = jax.tree.map(jnp.multiply, w_masked, dict(mixed_masks))
  grad_eff = jax.grad(obj)(effective)
  return jax.tree.map(jnp.multiply, grad_eff, w_masked)


@functools.partial(jax.jit, static_argnames=("masked", "layout", "objective",
                                              "packed", "block"))
def _alpha_grad(masked, layout, weights, rows, counts, num_tasks, images,
                batch_stats, objective, packed, block):
  mean = layout.unflatten(counts.astype(jnp.float32) / num_tasks)
  g_tree = effective_weight_grad(masked, weights, mean, images, objective, batch_stats)
  return bank_lib.rows_dot(rows, layout.flatten(g_tree), num_tasks.astype(jnp.int32),
                           packed=packed, block=block)


def alpha_grad(masked: MaskedModel, weights, bank, images: jax.Array, *,
               objective: str = "entropy", batch_stats=None,
               block: int = 64, num_tasks: int | None = None) -> jax.Array:
  """d obj / d alpha at the uniform superposition of all tasks in ``bank``.

  bank: a :class:`~supsup_jax.bank.BankState` or ``MaskBank``.
  images: ``[B, *input_shape]``. Returns ``[num_tasks]`` float32.
  Uses the bank's incrementally kept mean mask and reads its rows in place;
  the compiled program depends only on the bank's capacity, not on how many
  tasks it holds.

  Concrete inputs: an empty bank, empty or non-finite images, and
  gradients that are not finite (non-finite weights or batch statistics are
  named) are one-line ValueErrors. Under ``jit`` with a traced bank and no
  ``num_tasks`` the result is ``[capacity]``, ``+inf`` past the stored tasks;
  non-finite inputs give non-finite gradients (no check).
  """
  state, k = _check_bank(bank, objective, images, num_tasks)
  grads = _alpha_grad(masked, state.layout, weights, state.rows, state.counts,
                      state.num_tasks.astype(jnp.float32), images, batch_stats,
                      objective, state.packed, block)
  if k is None:
    return _inf_past(grads, state.num_tasks)
  grads = grads[:k]
  if checks.is_concrete(grads) and not checks.all_finite(grads):
    _refuse_nonfinite(weights, images, batch_stats)
  return grads


@functools.partial(jax.jit, static_argnames=("masked", "layout", "objective",
                                              "packed", "block", "all_alive"))
def _alpha_grads_units(masked, layout, weights, rows, counts, num_tasks, alive,
                       images_many, batch_stats, objective, packed, block, all_alive):
  """Per-unit alpha-gradients at alpha uniform over each unit's alive tasks.

  rows: [capacity, bytes]; alive: [N, capacity] bool (ignored if all_alive,
  then the bank's kept counts give the mean); images_many: [N, n, ...].
  Returns [N, capacity]; the bank products are bank.rows_matmul (masked adds
  over the packed bits on CPU, block-unpacked matmuls elsewhere).
  """
  n_units = images_many.shape[0]
  if all_alive:
    means = jnp.broadcast_to(counts.astype(jnp.float32) / num_tasks,
                             (n_units, layout.num_bits))
  else:
    alive_f = alive.astype(jnp.float32)
    sums = bank_lib.rows_weighted_sum(rows, alive_f, num_tasks.astype(jnp.int32),
                                      layout.num_bits, packed=packed, block=block)
    means = sums / jnp.sum(alive_f, axis=1, keepdims=True)

  def unit_grad(mean, images):
    return layout.flatten(effective_weight_grad(
        masked, weights, layout.unflatten(mean), images, objective, batch_stats))

  g = jax.vmap(unit_grad)(means, images_many)  # [N, num_bits]

  # [capacity, N]: the compiled masked-add kernel on CPU (no unpacking),
  # else block-unpacked matmuls.
  out = bank_lib.rows_matmul(rows, g, num_tasks.astype(jnp.int32), packed=packed,
                             block=block)
  return out.T


def _unpack_rows_per_block(num_bits: int, block: int) -> int:
  """Rows unpacked at once: at most ``block`` and ~128 MB of float32."""
  rows = block
  while rows > 8 and rows * num_bits * 4 > (128 << 20):
    rows //= 2
  return rows


def _inf_past(grads: jax.Array, num_tasks) -> jax.Array:
  """``grads [..., capacity]`` with ``+inf`` past ``num_tasks`` (never an argmin)."""
  return jnp.where(jnp.arange(grads.shape[-1]) < num_tasks, grads, jnp.inf)


def _argmin_or_minus_one(grads: jax.Array, num_valid) -> jax.Array:
  """argmin over the first ``num_valid`` entries of the last axis, or -1
  where one of them is not finite or there are none (jit-safe)."""
  valid = jnp.arange(grads.shape[-1]) < num_valid
  ok = jnp.all(jnp.isfinite(grads) | ~valid, axis=-1) & (num_valid > 0)
  return jnp.where(ok, jnp.argmin(jnp.where(valid, grads, jnp.inf), axis=-1), -1)


def _refuse_nonfinite(weights, images, batch_stats) -> None:
  """Called on concrete gradients that are not finite: a one-line ValueError
  naming the input that made them so."""
  bad = checks.nonfinite_paths(weights)
  if bad:
    raise ValueError(f"task inference got non-finite weights (NaN or inf in {bad[:4]}); "
                     "rebuild them with weights.init_weights(model, seed, ...) or check "
                     "where they were loaded from")
  bad = checks.nonfinite_paths(batch_stats)
  if bad:
    raise ValueError(f"task inference got non-finite batch statistics (in {bad[:4]}); "
                     "the task's batch-norm statistics diverged: retrain it")
  if checks.nonfinite_paths(images):
    raise ValueError("task inference got non-finite images (NaN or inf); check the input data")
  raise ValueError("task inference got non-finite alpha-gradients from finite inputs "
                   "(the logits overflow): check the scale of the weights and images")


def _units_call(masked, weights, state, k, images_many, alive, objective,
                batch_stats, block):
  block = _unpack_rows_per_block(state.layout.num_bits, block)
  all_alive = alive is None
  if all_alive:
    alive = jnp.zeros((1, 1), bool)
  else:
    alive = jnp.pad(jnp.asarray(alive, bool), ((0, 0), (0, state.capacity - k)))
  grads = _alpha_grads_units(masked, state.layout, weights, state.rows, state.counts,
                             state.num_tasks.astype(jnp.float32), alive, images_many,
                             batch_stats, objective, state.packed, block, all_alive)
  return grads[:, :k]


def _num_tasks_arg(num_tasks) -> int | None:
  """``num_tasks=`` as a Python int (None when not given or traced)."""
  if num_tasks is None or isinstance(num_tasks, jax.core.Tracer):
    return None
  dtype = getattr(num_tasks, "dtype", None)
  if isinstance(num_tasks, bool) or not (
      isinstance(num_tasks, (int, np.integer)) or dtype is not None
      and np.ndim(num_tasks) == 0 and jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"num_tasks must be an integer (the bank's stored tasks), got "
                     f"{num_tasks!r}")
  return int(num_tasks)


def _check_bank(bank, objective: str, images, num_tasks: int | None = None):
  """(BankState, number of stored tasks) after checking the inputs.

  The number is ``num_tasks`` if given, else read from the bank when it is
  concrete, else None (a traced bank under ``jit``). Image values are only
  checked when concrete (no host sync under tracing).
  """
  check_objective(objective)
  state = bank_lib.as_state(bank)
  k = _num_tasks_arg(num_tasks)
  if k is None and isinstance(bank, bank_lib.MaskBank):
    k = bank.num_tasks
  elif k is None and checks.is_concrete(state.num_tasks):
    k = int(state.num_tasks)
  if k == 0:
    raise ValueError("task inference needs at least one mask in the bank")
  if k is not None and not 0 < k <= state.capacity:
    raise ValueError(f"num_tasks={k} is not in 1..{state.capacity} (the bank's capacity)")
  if np.size(images) == 0:
    raise ValueError(f"task inference needs at least one image, got shape {np.shape(images)}")
  if checks.is_concrete(images) and checks.nonfinite_paths(images):
    raise ValueError("task inference got non-finite images (NaN or inf); check the input data")
  return state, k


def _restate_shape(error: InputShapeError, images, lead: str = "N, n",
                   what: str = "images_many") -> InputShapeError:
  """An error raised for one unit's ``[n, ...]`` batch, restated for the
  caller's ``images`` (``[N, n, ...]`` by default)."""
  return InputShapeError(tuple(np.shape(images)), error.expected, error.detail,
                         lead=lead, what=what)


def _check_units(images_many) -> None:
  if np.ndim(images_many) < 3:
    raise ValueError(f"images_many must be [N, n, *input_shape] (N units of n images), got "
                     f"shape {np.shape(images_many)}; one batch: images[None]")


def alpha_grads_many(masked: MaskedModel, weights, bank, images_many: jax.Array, *,
                     objective: str = "entropy", batch_stats=None, block: int = 64,
                     unit_chunk: int = 64, num_tasks: int | None = None) -> jax.Array:
  """Alpha-gradients at the uniform superposition for N independent units.

  images_many: ``[N, n, *input_shape]`` (N units of n images each).
  Returns ``[N, num_tasks]``. Units are processed ``unit_chunk`` at a
  time (bounds memory to unit_chunk x num_bits floats). ``num_tasks`` (the
  bank's, if given) saves a device sync. Checks as :func:`alpha_grad`
  (under ``jit`` with a traced bank and no ``num_tasks``: ``[N, capacity]``,
  ``+inf`` past the stored tasks).
  """
  state, k = _check_bank(bank, objective, images_many, num_tasks)
  _check_units(images_many)
  try:
    out = jnp.concatenate([
        _units_call(masked, weights, state, k, images_many[i:i + unit_chunk], None,
                    objective, batch_stats, block)
        for i in range(0, images_many.shape[0], unit_chunk)])
  except InputShapeError as e:
    raise _restate_shape(e, images_many) from None
  if k is None:
    return _inf_past(out, state.num_tasks)
  if checks.is_concrete(out) and not checks.all_finite(out):
    _refuse_nonfinite(weights, images_many, batch_stats)
  return out


@functools.partial(jax.jit, static_argnames="n_keep")
def _halve(g, alive, finite, n_keep):
  """One binary round: per unit, the ``n_keep`` alive tasks of smallest
  gradient (stable); ``finite`` drops units whose alive gradients are not."""
  finite = finite & jnp.all(jnp.isfinite(g) | ~alive, axis=1)
  order = jnp.argsort(jnp.where(alive, g, jnp.inf), axis=1, stable=True)[:, :n_keep]
  rows = jnp.arange(alive.shape[0])[:, None]
  return jnp.zeros_like(alive).at[rows, order].set(True), finite


def binary_many(masked: MaskedModel, weights, bank, images_many: jax.Array, *,
                objective: str = "entropy", batch_stats=None, block: int = 64,
                unit_chunk: int = 16, num_tasks: int | None = None):
  """Binary task inference for N units at once; returns ``[N]`` task ids.

  Each round keeps, per unit, the half of its candidates with the smallest
  gradient and resets alpha uniform over them (<= log2 k + 1 rounds).
  Returns a NumPy int array on concrete inputs (non-finite gradients are a
  one-line ValueError naming the input). Jittable when the number of tasks
  is known at trace time (a concrete bank, or ``num_tasks=``): the rounds
  depend on it; a unit whose gradients are not finite then gets ``-1``.
  """
  state, k = _check_bank(bank, objective, images_many, num_tasks)
  _check_units(images_many)
  if k is None:
    raise ValueError("binary inference on a traced bank needs num_tasks= (a Python int): "
                     "the number of halving rounds depends on it")
  picks = []
  try:
    for start in range(0, images_many.shape[0], unit_chunk):
      images = images_many[start:start + unit_chunk]
      alive = jnp.ones((images.shape[0], k), bool)
      finite = jnp.ones((images.shape[0],), bool)
      n_alive = k
      while n_alive > 1:
        g = _units_call(masked, weights, state, k, images,
                        None if n_alive == k else alive, objective, batch_stats, block)
        n_alive = (n_alive + 1) // 2
        alive, finite = _halve(g, alive, finite, n_alive)
      picks.append(jnp.where(finite, jnp.argmax(alive, axis=1), -1))
  except InputShapeError as e:
    raise _restate_shape(e, images_many) from None
  picks = jnp.concatenate(picks)
  if not checks.is_concrete(picks):
    return picks
  picks = np.asarray(picks).astype(np.int64)
  if np.any(picks < 0):
    _refuse_nonfinite(weights, images_many, batch_stats)
  return picks


def oneshot(masked: MaskedModel, weights, bank, images, *,
            objective: str = "entropy", batch_stats=None,
            num_tasks: int | None = None):
  """One-shot task inference: argmin of the alpha-gradient (an int).

  Concrete inputs are checked as in :func:`alpha_grad` (a NaN never becomes
  task 0). Under ``jit`` returns a traced int32: the task, or ``-1`` when
  the gradients are not finite or the bank is empty.
  """
  grads = alpha_grad(masked, weights, bank, images, objective=objective,
                     batch_stats=batch_stats, num_tasks=num_tasks)
  if checks.is_concrete(grads):
    return int(jnp.argmin(grads))  # finite: alpha_grad checked
  return _argmin_or_minus_one(grads, bank_lib.as_state(bank).num_tasks)


def binary(masked: MaskedModel, weights, bank, images, *,
           objective: str = "entropy", batch_stats=None, block: int = 64,
           num_tasks: int | None = None):
  """Binary task inference for one batch of images [B, ...] (see binary_many)."""
  try:
    picks = binary_many(masked, weights, bank, images[None], objective=objective,
                        batch_stats=batch_stats, block=block, num_tasks=num_tasks)
  except InputShapeError as e:
    raise _restate_shape(e, images, "B", "images") from None
  return int(picks[0]) if checks.is_concrete(picks) else picks[0]


def infer_task(masked: MaskedModel, weights, bank, images, *,
               algorithm: str = "oneshot", objective: str = "entropy",
               batch_stats=None, num_tasks: int | None = None):
  """Infers the task of a batch of images with the chosen algorithm (an int;
  under ``jit`` a traced int32, ``-1`` where no task can be chosen)."""
  if algorithm not in ALGORITHMS:
    raise ValueError(f"unknown inference algorithm {algorithm!r}; allowed: "
                     f"{', '.join(ALGORITHMS)}")
  fn = oneshot if algorithm == "oneshot" else binary
  return fn(masked, weights, bank, images, objective=objective,
            batch_stats=batch_stats, num_tasks=num_tasks)
