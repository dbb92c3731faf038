"""PSP: parameter superposition with random orthogonal contexts.

Parameter Superposition (Cheung, Terekhov, Chen, Agrawal & Olshausen 2019,
"Superposition of many models into one", arXiv 1902.05522), rotational
variant, as compared in SupSup (Wortsman, Ramanujan et al. 2020, arXiv
2006.14769): one weight W, trained on every task in turn; task t binds each
layer's input to a fixed random orthogonal context C_t,

    out = W (C_t x),

so a Flax layer uses the effective kernel C_t @ W (``[in, in] @ [in, out]``;
for a conv, C_t mixes the input channels at every pixel). The task is given
(GG only).

C_t is Haar-distributed (as ``scipy.stats.ortho_group`` in the authors'
code) and a pure function of ``(seed, task, layer path)``: it is drawn as a
product of Householder reflections of independent Gaussian vectors of
decreasing length (Stewart 1980, "The efficient generation of random
orthogonal matrices"), the same distribution as the Q of a QR factorisation
of a Gaussian matrix with R's diagonal made positive. Nothing about it is
stored: training forms the dense C_t once per task (in the task state) and
rotates each layer's input, x -> x C_t; ``logits`` applies the reflections to
W directly (C_t @ W in O(in² out) per call, no O(in³) QR), so evaluation at a
traced task id recomputes it from the seed.
Storage per task is only the task's batch-norm statistics, if any.
"""
from __future__ import annotations

import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from supsup_jax import tree as tree_lib
from supsup_jax import weights as weights_lib
from supsup_jax.learner import Learner
from supsup_jax.methods import trained_net

# Its config keys are those of any learner with trained weights.
check_config = trained_net.check_config


_SALT = 0x9595  # keeps the contexts' random stream apart from other uses of the seed


def context_key(seed: int, task_id, path: tuple) -> jax.Array:
  """The key of task ``task_id``'s context for the layer at ``path``."""
  key = jax.random.fold_in(jax.random.key(int(seed)), _SALT)
  key = jax.random.fold_in(key, task_id)
  return jax.random.fold_in(key, zlib.crc32(tree_lib.path_str(path).encode()))


def context_matmul(key: jax.Array, n: int, x: jax.Array) -> jax.Array:
  """``C @ x`` for the Haar-random orthogonal ``C`` [n, n] of ``key``.

  x: ``[n, m]``. C = H_0 H_1 ... H_{n-2} D, where H_k reflects coordinates
  k..n-1 along v_k = z_k + sign(z_k[k]) ``|z_k|`` e_k with z_k Gaussian on those
  coordinates, and D_kk = -sign(z_k[k]) (D_{n-1} the sign of one more
  Gaussian) makes the implied R diagonal positive. The reflections are applied
  right to left: D first, then H_{n-2}, ..., H_0.
  """
  idx = jnp.arange(n)

  def draw(k):
    z = jax.random.normal(jax.random.fold_in(key, k), (n,), jnp.float32)
    return jnp.where(idx >= k, z, 0.0)

  def sign(v):
    return jnp.where(v >= 0, 1.0, -1.0)

  heads = jax.vmap(lambda k: sign(draw(k)[k]))(jnp.arange(n))  # sign(z_k[k])
  d = jnp.concatenate([-heads[:-1], heads[-1:]])
  x = d[:, None] * x

  def reflect(x, k):
    z = draw(k)
    v = z + sign(z[k]) * jnp.linalg.norm(z) * (idx == k)
    v = v / jnp.linalg.norm(v)
    return x - 2.0 * v[:, None] * (v @ x)[None, :], None

  x, _ = jax.lax.scan(reflect, x, jnp.arange(n - 2, -1, -1))
  return x


@functools.partial(jax.jit, static_argnums=1)
def _dense_context(key: jax.Array, n: int) -> jax.Array:
  return context_matmul(key, n, jnp.eye(n, dtype=jnp.float32))


def context(seed: int, task_id, path: tuple, n: int) -> jax.Array:
  """The dense context ``C_t`` [n, n] of a layer with ``n`` inputs."""
  return _dense_context(context_key(seed, task_id, path), n)


def bind_kernel(c: jax.Array, w: jax.Array) -> jax.Array:
  """C @ W over the input axis of a kernel ``[..., in, out]``."""
  return jnp.einsum("ij,...jo->...io", c, w)


def bind_kernel_from_key(key: jax.Array, w: jax.Array) -> jax.Array:
  """C @ W without forming C (same result as :func:`bind_kernel` to round-off)."""
  n = w.shape[-2]
  moved = jnp.moveaxis(w, -2, 0)
  out = context_matmul(key, n, moved.reshape(n, -1)).reshape(moved.shape)
  return jnp.moveaxis(out, 0, -2)


def make(model, weights, optimizer, *, input_shape, num_classes: int, capacity: int,
         learning_rate: float, seed: int = 0, batch_stats=None,
         init: str = "kaiming_normal") -> Learner:
  """PSP over ``model``: one W trained on every task, task t's inputs bound to C_t.

  Args:
    model: Flax module, images ``[B, *input_shape]`` -> logits
      ``[B, num_outputs]``, num_outputs >= num_classes.
    weights: initial ``params`` tree, or an int seed drawing it with ``init``.
    optimizer: optax update rule at unit learning rate (e.g.
      ``optax.rmsprop(1.0)``); ``learning_rate`` scales its updates.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: real classes per task (accuracy over the first outputs).
    capacity: task slots (batch-norm statistics kept per task).
    learning_rate: the weights' learning rate (> 0).
    seed: seeds the contexts (C_t of a layer from ``(seed, t, path)``).
    batch_stats: initial batch-norm statistics (None: the model's own).
    init: weight initialisation when ``weights`` is a seed.

  Returns:
    The learner; memory ``{"params": W, "batch_stats": [capacity, ...] per
    leaf}`` (the contexts are recomputed from the seed, never stored).
  """
  net = trained_net.make_net(model, weights, input_shape=input_shape,
                             num_classes=num_classes, capacity=capacity,
                             batch_stats=batch_stats, init=init)
  weight_lr = trained_net.check_rate("learning_rate", learning_rate)
  seed = weights_lib.check_seed(seed)
  kernels = tree_lib.flatten(tree_lib.maskable_subtree(net.params))

  def contexts(task_id) -> dict:
    return tree_lib.unflatten({p: context(seed, task_id, p, w.shape[-2])
                               for p, w in kernels.items()})

  def bind_inputs(ctx: dict):
    """Interceptor rotating each layer's input by its context: x -> x C, so
    (x C) W = x (C W). Cheaper than forming C @ W in training: the first
    layer's input is data, so no gradient flows through its rotation."""
    by_module = {p[:-1]: c for p, c in tree_lib.flatten(ctx).items()}

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv)):
        c = by_module.get(tuple(context.module.path))
        if c is not None:
          args = (jnp.einsum("...i,ij->...j", args[0], c),) + tuple(args[1:])
      return next_fun(*args, **kwargs)
    return interceptor

  def init_memory():
    return {"params": net.params,
            "batch_stats": trained_net.stack(net.batch_stats, net.capacity)}

  def init_task(memory, task_id, key):
    del key
    state = trained_net.init_task_state(
        optimizer, {"weights": memory["params"]}, {"weights": weight_lr},
        trained_net.take(memory["batch_stats"], task_id))
    # Derived from (seed, task) while the task trains; never kept in memory.
    state["contexts"] = contexts(task_id)
    return state

  def train_step(memory, state, images, labels):
    def forward(memory, trainable, batch_stats, images, train):
      del memory
      with nn.intercept_methods(bind_inputs(state["contexts"])):
        return trained_net.apply(net, trainable["weights"], batch_stats, images, train)
    step = trained_net.make_train_step(forward, optimizer, net.num_classes)
    return step(memory, state, images, labels)

  def end_task(memory, task_state, task_id):
    return {"params": task_state["trainable"]["weights"],
            "batch_stats": trained_net.put(memory["batch_stats"], task_id,
                                           task_state["batch_stats"])}

  def logits(memory, task_id, images):
    flat = tree_lib.flatten(memory["params"])
    params = tree_lib.unflatten(
        {p: (bind_kernel_from_key(context_key(seed, task_id, p), w) if p in kernels else w)
         for p, w in flat.items()})
    return trained_net.apply(net, params, trained_net.take(memory["batch_stats"], task_id),
                             images, False)[0]

  per_task = trained_net.tree_bytes(net.batch_stats)
  network_bytes = trained_net.tree_bytes(net.params)

  def summary(memory, num_learned):
    del memory, num_learned
    return {"method": "psp", "bytes_per_task": per_task, "bytes_shared": network_bytes,
            "trains_weights": True}

  return Learner(name="psp", num_classes=net.num_classes,
                 init_memory=init_memory, init_task=init_task, train_step=train_step,
                 end_task=end_task, logits=logits, summary=summary,
                 trains_weights=True)


def from_config(config, stream) -> Learner:
  """PSP for an experiment config: the common keys and ``config.trained_net``
  (``init``, ``weight_learning_rate``); the contexts from ``config.seed``."""
  trained_net.check_sequential(config, "psp")
  return make(**trained_net.config_kwargs(config, stream), seed=int(config.seed))
