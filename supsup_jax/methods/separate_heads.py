"""Separate heads: a shared trunk and one output layer per task.

The "separate heads" baselines of SupSup (Wortsman, Ramanujan et al. 2020,
arXiv 2006.14769): the whole network trains on the first task; afterwards
the trunk is frozen and each task trains only its own copy of the output
layer (and its own batch-norm statistics). ``separate_heads_randw``: the
trunk is random and never trained (so a seed stores it); every task trains
only its head. In the authors' code the heads train with Adam at lr 1e-2 and
the first task's weights at the weight learning rate; here
``config.trained_net.adapt_optimizer`` (default "adam"),
``.adapt_learning_rate`` (default 1e-2) and ``.weight_learning_rate``
(default ``config.learning_rate``).

Every task's head starts from the same initial head (drawn from the seed), as
each per-task copy is made from the initial layer in the authors' code.
"""
from __future__ import annotations

from supsup_jax.learner import Learner
from supsup_jax.methods import options
from supsup_jax.methods import trained_net

# Its config keys are those of any learner with trained weights.
check_config = trained_net.check_config


def make(model, weights, optimizer, *, input_shape, num_classes: int, capacity: int,
         learning_rate: float, adapt_learning_rate: float = 1e-2,
         random_trunk: bool = False, batch_stats=None,
         init: str = "kaiming_normal") -> Learner:
  """Separate heads over ``model``'s trunk (its last Dense/Conv is the head).

  Args:
    model: Flax module, images ``[B, *input_shape]`` -> logits
      ``[B, num_outputs]`` from a final Dense or Conv layer.
    weights: initial ``params`` tree, or an int seed drawing it with ``init``.
    optimizer: optax update rule at unit learning rate, e.g.
      ``optax.adam(1.0)`` (the authors train with Adam); the rates below
      scale its updates.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: real classes per task (accuracy over the first outputs).
    capacity: task slots (heads and batch-norm statistics kept).
    learning_rate: the rate of task 1, which trains trunk and head (> 0).
    adapt_learning_rate: the rate of each later task's head (> 0).
    random_trunk: ``separate_heads_randw``: the trunk stays random and every
      task trains only its head at ``adapt_learning_rate``.
    batch_stats: initial batch-norm statistics (None: the model's own).
    init: weight initialisation when ``weights`` is a seed.

  Returns:
    The learner; memory ``{"params": trunk and initial head, "heads":
    [capacity, *head shape], "batch_stats": [capacity, ...] per leaf}``.
  """
  name = "separate_heads_randw" if random_trunk else "separate_heads"
  net = trained_net.make_net(model, weights, input_shape=input_shape,
                             num_classes=num_classes, capacity=capacity,
                             batch_stats=batch_stats, init=init)
  weight_lr = trained_net.check_rate("learning_rate", learning_rate)
  adapt_lr = trained_net.check_rate("adapt_learning_rate", adapt_learning_rate)
  options.flag("random_trunk", random_trunk)
  head = trained_net.head_path(net)
  initial_head = trained_net.get_leaf(net.params, head)

  def init_memory():
    return {"params": net.params,
            "heads": trained_net.stack(initial_head, net.capacity),
            "batch_stats": trained_net.stack(net.batch_stats, net.capacity)}

  def init_task(memory, task_id, key):
    del key
    own = memory["heads"][task_id]
    stats = trained_net.take(memory["batch_stats"], task_id)
    if random_trunk:
      return trained_net.init_task_state(optimizer, {"own": own}, {"own": adapt_lr}, stats)
    rates = trained_net.first_task_rates(task_id, weight_lr, adapt_lr)
    return trained_net.init_task_state(
        optimizer, {"weights": memory["params"], "own": own}, rates, stats)

  def params_with_head(params, own):
    return trained_net.replace_leaf(params, head, own)

  def forward(memory, trainable, batch_stats, images, train):
    trunk = memory["params"] if random_trunk else trainable["weights"]
    return trained_net.apply(net, params_with_head(trunk, trainable["own"]),
                             batch_stats, images, train)

  def end_task(memory, task_state, task_id):
    trainable = task_state["trainable"]
    params = memory["params"]
    if not random_trunk:
      params = trained_net.keep_first_task_weights(trainable["weights"], params, task_id)
    return {"params": params,
            "heads": memory["heads"].at[task_id].set(trainable["own"]),
            "batch_stats": trained_net.put(memory["batch_stats"], task_id,
                                           task_state["batch_stats"])}

  def logits(memory, task_id, images):
    params = params_with_head(memory["params"], memory["heads"][task_id])
    return trained_net.apply(net, params, trained_net.take(memory["batch_stats"], task_id),
                             images, False)[0]

  per_task = trained_net.tree_bytes((initial_head, net.batch_stats))
  trunk_bytes = trained_net.tree_bytes(net.params) - trained_net.tree_bytes(initial_head)

  def summary(memory, num_learned):
    del memory, num_learned
    # A random trunk is a function of the seed; a trained one must be stored.
    return {"method": name, "bytes_per_task": per_task,
            "bytes_shared": 0 if random_trunk else trunk_bytes,
            "trains_weights": True}

  return Learner(name=name, num_classes=net.num_classes,
                 init_memory=init_memory, init_task=init_task,
                 train_step=trained_net.make_train_step(forward, optimizer, net.num_classes),
                 end_task=end_task, logits=logits, summary=summary,
                 trains_weights=True)


def from_config(config, stream) -> Learner:
  """Trunk trained on task 1. Keys read: the common ones and
  ``config.trained_net`` (``init``, ``weight_learning_rate``,
  ``adapt_learning_rate``, ``adapt_optimizer``)."""
  trained_net.check_sequential(config, "separate_heads")
  return make(**trained_net.config_kwargs(config, stream, adapt=True))


def from_config_randw(config, stream) -> Learner:
  """Random trunk, never trained. Keys read: as :func:`from_config`."""
  return make(**trained_net.config_kwargs(config, stream, adapt=True), random_trunk=True)
