"""PackNet: several tasks packed into one network by iterative pruning.

Mallya & Lazebnik, CVPR 2018, arXiv 1711.05769. Weights are *trained*
(``trains_weights=True``). Task t trains the weights still free; at step
``prune_step`` of the task it prunes a fraction of those free weights by
magnitude (they are released for later tasks), and the remaining steps
retrain the survivors; ``end_task`` freezes them. Every weight records its
owner in one byte (``owner``: 0 = free, t + 1 = task t; up to 255 tasks).
Task t's forward pass uses the weights owned by tasks 0..t read-only (they
come from ``memory`` and receive no update) plus, while it trains, its own
free weights; evaluation of task t uses exactly the weights owned by tasks
<= t, so no later task changes it.

Protocol fit: the prune happens inside ``train_step`` at a fixed step (a
``lax.cond`` on the step counter held in the task state; the step-by-step
run loop and chunked checkpoints see the same trajectory). If
``prune_at`` is 1.0 (or the task ran fewer steps than the prune step),
``end_task`` prunes instead and nothing is retrained.

Config keys read (besides the common ones): ``config.packnet.prune_fraction``
(fraction of a task's free weights released; negative (default) = an even
split, task t keeps 1 / (num_tasks - t) of the free weights, the last task
keeps all), ``config.packnet.prune_at`` (fraction of the task's steps before
the prune, default 0.7: the paper trains, prunes, then retrains briefly),
``config.trained_net.init`` (default "kaiming_normal") and
``.weight_learning_rate`` (default ``config.learning_rate``). Per-task
batch-norm statistics are kept (as the paper does) when the model has batch
norm.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from supsup_jax import learner as learner_lib
from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import training
from supsup_jax.learner import Learner
from supsup_jax.methods import options
from supsup_jax.methods import trained_net
from supsup_jax import losses


PACKNET_DEFAULTS = {
    "prune_fraction": -1.0,  # < 0: an even split of the weights over tasks
    "prune_at": 0.7,         # fraction of a task's steps before pruning
}


def check_options(prune_fraction, prune_at, num_tasks, prefix: str = "") -> tuple[float, float]:
  """``(prune_fraction, prune_at)`` as floats, or a one-line ValueError naming
  ``prefix + key`` (e.g. ``config.packnet.prune_at``)."""
  if isinstance(prune_fraction, bool) or not isinstance(prune_fraction, numbers.Real) \
      or not prune_fraction < 1.0:  # also refuses NaN
    raise ValueError(f"{prefix}prune_fraction must be in [0, 1) (or negative for an "
                     f"even split over tasks), got {prune_fraction!r}")
  frac = float(prune_fraction)
  at = options.number(f"{prefix}prune_at", prune_at, low=0, high=1, low_open=True)
  if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
  if num_tasks > 255:
    raise ValueError(f"PackNet stores owners in one byte: num_tasks must be <= 255, "
                     f"got {num_tasks}")
  return frac, at


def free_topk(magnitude: jax.Array, free: jax.Array, n_keep: jax.Array) -> jax.Array:
  """Bool mask keeping the ``n_keep`` (traced int) largest ``magnitude`` entries
  among ``free`` ones (ties: lower flat index first). Sort-free, jittable."""
  flat = jnp.where(free, magnitude, 0.0).reshape(-1).astype(jnp.float32)
  # pylint: disable-next=protected-access
  keep = masks_lib._topk_flat_mask(flat, n_keep)  # traced-count-safe bit search
  return keep.reshape(magnitude.shape) & free


def make(model, weights, optimizer, *, input_shape, num_classes: int, num_tasks: int,
         steps_per_task: int, prune_fraction: float = -1.0, prune_at: float = 0.7,
         batch_stats=None, init: str = "kaiming_normal") -> Learner:
  """PackNet over ``model``'s parameters.

  Args:
    model: Flax module, images ``[B, *input_shape]`` -> logits
      ``[B, num_outputs]``, num_outputs >= num_classes.
    weights: initial ``params`` tree, or an int seed drawing it with ``init``.
    optimizer: optax optimizer, learning rate included (e.g.
      ``optax.rmsprop(1e-4)``); its updates move only the free, kept weights.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: real classes per task (accuracy over the first outputs).
    num_tasks: tasks to pack (1..255; sets the even split).
    steps_per_task: train steps per task (the prune happens at
      ``round(prune_at * steps_per_task)``).
    prune_fraction: fraction of a task's free weights released, in [0, 1);
      negative = an even split (task t keeps 1 / (num_tasks - t)).
    prune_at: fraction of the task's steps before the prune, in (0, 1]
      (1: ``end_task`` prunes and nothing is retrained).
    batch_stats: initial batch-norm statistics (None: the model's own).
    init: weight initialisation when ``weights`` is a seed.

  Returns:
    The learner; memory ``{"weights": params tree, "owner": uint8 tree of the
    same shapes (0 free, t + 1 task t), "batch_stats": [num_tasks, ...] per
    leaf}``.
  """
  frac, at = check_options(prune_fraction, prune_at, num_tasks)
  net = trained_net.make_net(model, weights, input_shape=input_shape,
                             num_classes=num_classes, capacity=num_tasks,
                             batch_stats=batch_stats, init=init)
  prune_step = int(round(at * int(steps_per_task)))
  kernels_only = dict(net.params)

  def prune_fraction(task_id):
    t = jnp.asarray(task_id, jnp.float32)
    if frac >= 0:
      return jnp.float32(frac)
    return 1.0 - 1.0 / jnp.maximum(num_tasks - t, 1.0)

  def init_memory():
    return {"weights": jax.tree.map(jnp.array, kernels_only),
            "owner": jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.uint8), kernels_only),
            "batch_stats": jax.tree.map(
                lambda x: jnp.broadcast_to(x, (num_tasks, *x.shape)).copy(), net.batch_stats)}

  def init_task(memory, task_id, key):
    del key
    params = jax.tree.map(jnp.array, memory["weights"])
    return {"params": params,
            "keep": jax.tree.map(lambda o: o == 0, memory["owner"]),
            "opt_state": optimizer.init(params),
            "batch_stats": jax.tree.map(jnp.array, net.batch_stats),
            "task_id": jnp.asarray(task_id, jnp.int32),
            "pruned": jnp.bool_(False),
            "step": jnp.int32(0)}

  def effective(memory, params, keep, task_id):
    """Owned by tasks <= task_id: frozen values from memory; free and kept:
    the task's own ``params``; everything else 0."""
    def leaf(w_mem, owner, w, k):
      o = owner.astype(jnp.int32)
      frozen = (o >= 1) & (o <= task_id)  # tasks before this one
      return jnp.where(frozen, w_mem, jnp.where((o == 0) & k, w, jnp.zeros_like(w)))
    return jax.tree.map(leaf, memory["weights"], memory["owner"], params, keep)

  def prune(memory, state):
    """keep := the largest (1 - fraction) of this task's free weights, per layer."""
    f = prune_fraction(state["task_id"])

    def leaf(owner, w):
      free = owner == 0
      n_free = jnp.sum(free, dtype=jnp.int32)
      n_keep = n_free - jnp.floor(f * n_free + 0.5).astype(jnp.int32)
      return free_topk(jnp.abs(w), free, n_keep)

    keep = jax.tree.map(leaf, memory["owner"], state["params"])
    return dict(state, keep=keep, pruned=jnp.bool_(True))

  def train_step(memory, state, images, labels):
    state = jax.lax.cond((state["step"] == prune_step) & ~state["pruned"],
                         lambda s: prune(memory, s), lambda s: s, state)

    def loss_fn(params):
      w = effective(memory, params, state["keep"], state["task_id"] + 1)
      logits, stats = trained_net.apply(net, w, state["batch_stats"], images, True)
      loss = losses.cross_entropy(logits, labels)
      return loss, (logits, stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    # Only free, kept weights move (frozen ones are read from memory anyway).
    updates = jax.tree.map(lambda u, o, k: jnp.where((o == 0) & k, u, jnp.zeros_like(u)),
                           updates, memory["owner"], state["keep"])
    params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
    acc = jnp.mean(jnp.argmax(logits[:, :net.num_classes], -1) == labels)
    return (dict(state, params=params, opt_state=opt_state, batch_stats=stats,
                 step=state["step"] + 1), {"loss": loss, "accuracy": acc})

  def end_task(memory, state, task_id):
    state = jax.lax.cond(state["pruned"], lambda s: s, lambda s: prune(memory, s), state)
    tag = (jnp.asarray(task_id, jnp.int32) + 1).astype(jnp.uint8)

    def owner_leaf(o, k):
      return jnp.where((o == 0) & k, tag, o)

    def weight_leaf(w_mem, o, k, w):
      return jnp.where((o == 0) & k, w, w_mem)  # frozen weights: never written

    return {"weights": jax.tree.map(weight_leaf, memory["weights"], memory["owner"],
                                    state["keep"], state["params"]),
            "owner": jax.tree.map(owner_leaf, memory["owner"], state["keep"]),
            "batch_stats": jax.tree.map(lambda x, v: x.at[task_id].set(v),
                                        memory["batch_stats"], state["batch_stats"])}

  def logits(memory, task_id, images):
    t = jnp.asarray(task_id, jnp.int32) + 1
    w = jax.tree.map(lambda wm, o: jnp.where((o >= 1) & (o.astype(jnp.int32) <= t), wm,
                                             jnp.zeros_like(wm)),
                     memory["weights"], memory["owner"])
    stats = jax.tree.map(lambda x: x[task_id], memory["batch_stats"])
    return trained_net.apply(net, w, stats, images, False)[0]

  n_weights = sum(int(x.size) for x in jax.tree.leaves(kernels_only))
  stats_bytes = 4 * sum(int(x.size) for x in jax.tree.leaves(net.batch_stats))

  def summary(memory, num_learned):
    owners = jnp.concatenate([o.reshape(-1) for o in jax.tree.leaves(memory["owner"])])
    counts = [int(jnp.sum(owners == t + 1)) for t in range(num_learned)]
    total = 5 * n_weights + stats_bytes * num_learned  # float32 weights + uint8 owner
    return {"method": "packnet", "trains_weights": True,
            "bytes_per_task": total / max(num_learned, 1),
            "bytes_total": total,
            "bytes_note": "one trained network (4 B/weight) plus one owner byte per "
                          "weight, shared by all tasks; bytes_per_task = total / tasks",
            "weights_owned_per_task": counts,
            "fraction_free": int(jnp.sum(owners == 0)) / n_weights}

  return Learner(name="packnet", num_classes=net.num_classes, init_memory=init_memory,
                 init_task=init_task, train_step=train_step, end_task=end_task,
                 logits=logits, summary=summary, trains_weights=True)


def check_config(config) -> None:
  """PackNet's keys (the learner keys, ``config.trained_net``,
  ``config.packnet``), checked before any data is loaded."""
  trained_net.check_config(config)
  part = options.part(config, "packnet", PACKNET_DEFAULTS)
  check_options(part["prune_fraction"], part["prune_at"], int(config.num_tasks),
                prefix="config.packnet.")


def from_config(config, stream) -> Learner:
  """PackNet for an experiment config: the common keys, ``config.packnet``
  (``prune_fraction``, ``prune_at``) and ``config.trained_net`` (``init``,
  ``weight_learning_rate``)."""
  part = options.part(config, "packnet", PACKNET_DEFAULTS)
  trained = trained_net.read_config(config)
  num_tasks = int(config.num_tasks)
  if num_tasks < 1:
    raise ValueError(f"config.num_tasks must be >= 1, got {config.num_tasks!r}")
  trained_net.check_sequential(config, "packnet")
  check_options(part["prune_fraction"], part["prune_at"], num_tasks, prefix="config.packnet.")
  num_outputs = int(config.get("num_outputs") or stream.num_classes)
  if num_outputs < stream.num_classes:
    raise ValueError(f"config.num_outputs={num_outputs} is smaller than the "
                     f"{stream.num_classes} classes per task")
  # XLA's own conv (not supsup_jax.conv), as PackNet has always run.
  model = models.make_model(config.model, num_outputs,
                            **dict(config.get("model_options") or {}))
  optimizer = training.make_optimizer(config.optimizer, trained["weight_learning_rate"],
                                      momentum=config.momentum,
                                      weight_decay=config.weight_decay)
  return make(model, int(config.seed), optimizer, input_shape=tuple(stream.input_shape),
              num_classes=int(stream.num_classes), num_tasks=num_tasks,
              steps_per_task=learner_lib.steps_per_task(config, stream),
              prune_fraction=part["prune_fraction"], prune_at=part["prune_at"],
              init=trained["init"])

