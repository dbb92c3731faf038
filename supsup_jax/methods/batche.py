"""BatchEnsemble as a continual learner (BatchE, and ABatchE with task inference).

BatchEnsemble (Wen, Tran & Ba 2020, "BatchEnsemble: an alternative approach
to efficient ensemble and lifelong learning", arXiv 2002.06715): a shared
weight W and, per member (here: per task) t and per layer, rank-one vectors
r_t (input side) and s_t (output side):

    out = (W (x ⊙ r_t)) ⊙ s_t,

i.e. the layer uses the effective kernel W ⊙ (r_t s_tᵀ) (Flax kernels are
``[..., in, out]``, so the factor of entry ``[..., i, o]`` is ``r[i] s[o]``;
for a conv, the same per input and output channel). This module applies it to
any Flax model through :func:`supsup_jax.masks.apply_masks` with real-valued
"masks" r sᵀ.

As in SupSup's comparison (Wortsman, Ramanujan et al. 2020, arXiv
2006.14769) and the authors' code: W trains with task 1's factors on the
first task (``batche``), or stays random and is never trained
(``batche_randw``); afterwards each task trains only its own r_t, s_t, which
start at random ±1; per-task batch-norm statistics; Adam
(``config.trained_net.adapt_optimizer``), task 1 at ``.weight_learning_rate``
and later factors at ``.adapt_learning_rate`` (1e-2 in the authors' MNIST
scripts).

``abatche`` also infers the task at test time (GN scenarios), chosen by
``config.abatche.inference``:

  * "entropy": run every learned member and take the one whose outputs have
    the lowest mean entropy (the paper's ABatchE);
  * "oneshot": superpose the members, W ⊙ Σ_t α_t r_t s_tᵀ with α uniform
    over the learned tasks, and take the task whose α-gradient of the
    output entropy is most negative (SupSup's one-shot algorithm applied to
    BatchE's rank-one factors).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from supsup_jax import masks as masks_lib
from supsup_jax import tree as tree_lib
from supsup_jax import weights as weights_lib
from supsup_jax.learner import Learner
from supsup_jax.methods import options
from supsup_jax.methods import trained_net
from supsup_jax import losses

# Its config keys are those of any learner with trained weights.
check_config = trained_net.check_config


INFERENCE = ("entropy", "oneshot")
_SALT = 0xBA7C4E  # keeps the factors' random stream apart from other uses of the seed


def init_factors(params, key: jax.Array) -> dict:
  """Random ±1 rank-one factors ``{"r": tree of [in], "s": tree of [out]}``
  for every kernel of ``params`` (one member)."""
  kernels = tree_lib.flatten(tree_lib.maskable_subtree(params))
  r, s = {}, {}
  for i, (path, w) in enumerate(sorted(kernels.items())):
    kr, ks = jax.random.split(jax.random.fold_in(key, i))
    r[path] = jax.random.rademacher(kr, (w.shape[-2],), jnp.float32)
    s[path] = jax.random.rademacher(ks, (w.shape[-1],), jnp.float32)
  return {"r": tree_lib.unflatten(r), "s": tree_lib.unflatten(s)}


def rank_one(w: jax.Array, r: jax.Array, s: jax.Array) -> jax.Array:
  """r sᵀ broadcast to a kernel's shape ``[..., in, out]``."""
  return jnp.broadcast_to(r[:, None] * s[None, :], w.shape)


def effective_params(params, factors: dict) -> dict:
  """``params`` with every kernel W replaced by W ⊙ (r sᵀ)."""
  kernels = tree_lib.maskable_subtree(params)
  products = jax.tree.map(rank_one, kernels, factors["r"], factors["s"])
  return masks_lib.apply_masks(params, products)


def superposed_params(params, stacked: dict, alphas: jax.Array) -> dict:
  """``params`` with every kernel W replaced by W ⊙ Σ_t α_t r_t s_tᵀ.

  stacked: factors with a leading task axis ``[T, in]`` / ``[T, out]``;
  alphas: ``[T]``.
  """
  kernels = tree_lib.maskable_subtree(params)
  mixed = jax.tree.map(
      lambda w, r, s: jnp.broadcast_to(jnp.einsum("t,ti,to->io", alphas, r, s), w.shape),
      kernels, stacked["r"], stacked["s"])
  return masks_lib.apply_masks(params, mixed)


# Shannon entropy of the softmax over all outputs, averaged over axis -2:
# logits [..., n, num_outputs] -> [...] (ABatchE's task score).
mean_entropy = losses.batch_entropy


def make(model, weights, optimizer, *, input_shape, num_classes: int, capacity: int,
         learning_rate: float, adapt_learning_rate: float = 1e-2, seed: int = 0,
         random_w: bool = False, inference: str | None = None, batch_stats=None,
         init: str = "kaiming_normal") -> Learner:
  """BatchE (or BatchE-randW, or ABatchE) over ``model``'s Dense/Conv kernels.

  Args:
    model: Flax module, images ``[B, *input_shape]`` -> logits
      ``[B, num_outputs]``, num_outputs >= num_classes.
    weights: initial ``params`` tree, or an int seed drawing it with ``init``.
    optimizer: optax update rule at unit learning rate, e.g.
      ``optax.adam(1.0)`` (the authors train with Adam); the rates below
      scale its updates.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: real classes per task (accuracy over the first outputs).
    capacity: task slots (members: factors and batch-norm statistics).
    learning_rate: the rate of task 1, which trains W and its factors (> 0).
    adapt_learning_rate: the rate of each later task's factors (> 0).
    seed: seeds the random ±1 factors (member t from ``(seed, t)``).
    random_w: ``batche_randw``: W stays random; every task trains only its
      factors at ``adapt_learning_rate``.
    inference: None (the task is given), or ``abatche``'s task inference:
      "entropy" or "oneshot" (module docstring).
    batch_stats: initial batch-norm statistics (None: the model's own).
    init: weight initialisation when ``weights`` is a seed.

  Returns:
    The learner; memory ``{"params": W, "factors": {"r": [capacity, in],
    "s": [capacity, out]} per kernel, "batch_stats": [capacity, ...] per
    leaf}``; ``infer_task`` set when ``inference`` is.
  """
  infer = None if inference is None else options.choice("inference", inference, INFERENCE)
  options.flag("random_w", random_w)
  name = "abatche" if infer else ("batche_randw" if random_w else "batche")
  net = trained_net.make_net(model, weights, input_shape=input_shape,
                             num_classes=num_classes, capacity=capacity,
                             batch_stats=batch_stats, init=init)
  weight_lr = trained_net.check_rate("learning_rate", learning_rate)
  adapt_lr = trained_net.check_rate("adapt_learning_rate", adapt_learning_rate)
  factor_key = jax.random.fold_in(jax.random.key(weights_lib.check_seed(seed)), _SALT)

  def init_memory():
    factors = [init_factors(net.params, jax.random.fold_in(factor_key, t))
               for t in range(net.capacity)]
    return {"params": net.params,
            "factors": jax.tree.map(lambda *xs: jnp.stack(xs), *factors),
            "batch_stats": trained_net.stack(net.batch_stats, net.capacity)}

  def init_task(memory, task_id, key):
    del key
    own = trained_net.take(memory["factors"], task_id)
    stats = trained_net.take(memory["batch_stats"], task_id)
    if random_w:
      return trained_net.init_task_state(optimizer, {"own": own}, {"own": adapt_lr}, stats)
    rates = trained_net.first_task_rates(task_id, weight_lr, adapt_lr)
    return trained_net.init_task_state(
        optimizer, {"weights": memory["params"], "own": own}, rates, stats)

  def forward(memory, trainable, batch_stats, images, train):
    params = memory["params"] if random_w else trainable["weights"]
    return trained_net.apply(net, effective_params(params, trainable["own"]),
                             batch_stats, images, train)

  def end_task(memory, task_state, task_id):
    trainable = task_state["trainable"]
    params = memory["params"]
    if not random_w:
      params = trained_net.keep_first_task_weights(trainable["weights"], params, task_id)
    return {"params": params,
            "factors": trained_net.put(memory["factors"], task_id, trainable["own"]),
            "batch_stats": trained_net.put(memory["batch_stats"], task_id,
                                           task_state["batch_stats"])}

  def logits(memory, task_id, images):
    params = effective_params(memory["params"], trained_net.take(memory["factors"], task_id))
    return trained_net.apply(net, params, trained_net.take(memory["batch_stats"], task_id),
                             images, False)[0]

  @jax.jit
  def infer_by_entropy(memory, num_learned, images_many):
    n_units, n = images_many.shape[:2]
    flat = images_many.reshape((n_units * n, *images_many.shape[2:]))

    def body(t, carry):
      best_h, best_t = carry
      h = mean_entropy(logits(memory, t, flat).reshape(n_units, n, -1))
      better = h < best_h
      return jnp.where(better, h, best_h), jnp.where(better, t, best_t)

    init = (jnp.full((n_units,), jnp.inf), jnp.zeros((n_units,), jnp.int32))
    return jax.lax.fori_loop(0, num_learned, body, init)[1]

  @jax.jit
  def infer_oneshot(memory, num_learned, images_many):
    learned = jnp.arange(net.capacity) < num_learned
    alphas = learned.astype(jnp.float32) / num_learned
    # Batch norm of the superposed model: the α-mixture of the members' statistics.
    stats = jax.tree.map(lambda x: jnp.tensordot(alphas, x, axes=1), memory["batch_stats"])

    def unit_grad(images):
      def entropy(a):
        params = superposed_params(memory["params"], memory["factors"], a)
        return mean_entropy(trained_net.apply(net, params, stats, images, False)[0])
      return jax.grad(entropy)(alphas)

    grads = jax.vmap(unit_grad)(images_many)  # [N, T]
    return jnp.argmin(jnp.where(learned, grads, jnp.inf), axis=-1).astype(jnp.int32)

  def infer_task(memory, num_learned, images_many):
    """Task of each of N units ``images_many[N, n, ...]`` -> int32 [N]."""
    if not isinstance(num_learned, jax.core.Tracer) and int(num_learned) < 1:
      raise ValueError(f"num_learned must be >= 1 to infer a task, got {num_learned!r}")
    fn = infer_by_entropy if infer == "entropy" else infer_oneshot
    return fn(memory, jnp.int32(num_learned), jnp.asarray(images_many))

  one = init_factors(net.params, factor_key)
  per_task = trained_net.tree_bytes((one, net.batch_stats))
  shared = 0 if random_w else trained_net.tree_bytes(net.params)

  def summary(memory, num_learned):
    del memory, num_learned
    out = {"method": name, "bytes_per_task": per_task, "bytes_shared": shared,
           "trains_weights": True}
    if infer:
      out["abatche_inference"] = infer  # a results field, not a config key
    return out

  return Learner(name=name, num_classes=net.num_classes,
                 init_memory=init_memory, init_task=init_task,
                 train_step=trained_net.make_train_step(forward, optimizer, net.num_classes),
                 end_task=end_task, logits=logits, summary=summary,
                 trains_weights=True,
                 infer_task=infer_task if infer else None)


def from_config(config, stream) -> Learner:
  """BatchE, W trained on task 1. Keys read: the common ones and
  ``config.trained_net`` (``init``, ``weight_learning_rate``,
  ``adapt_learning_rate``, ``adapt_optimizer``)."""
  trained_net.check_sequential(config, "batche")
  return make(**trained_net.config_kwargs(config, stream, adapt=True),
              seed=int(config.seed))


def from_config_randw(config, stream) -> Learner:
  """BatchE over a random W that never trains (keys as :func:`from_config`)."""
  return make(**trained_net.config_kwargs(config, stream, adapt=True),
              seed=int(config.seed), random_w=True)


ABATCHE_DEFAULTS = {"inference": "entropy"}


def from_config_abatche(config, stream) -> Learner:
  """ABatchE: BatchE (W trained on task 1) that infers the task; also reads
  ``config.abatche.inference`` ("entropy" default, or "oneshot")."""
  infer = options.part(config, "abatche", ABATCHE_DEFAULTS)["inference"]
  options.choice("config.abatche.inference", infer, INFERENCE)
  trained_net.check_sequential(config, "abatche")
  return make(**trained_net.config_kwargs(config, stream, adapt=True),
              seed=int(config.seed), inference=infer)
