"""Upper bound: one fully trained network per task, each kept.

The upper bound of SupSup (Wortsman, Ramanujan et al. 2020, arXiv
2006.14769): all weights train; task t's network is fine-tuned from task
t-1's (so "the trunk for task t has seen tasks 1..t"), starting from Kaiming
normal weights for the first task, and every task's copy (weights and
batch-norm statistics) is kept and used to evaluate that task. No forgetting,
at the price of one full network stored per task. The memory stacks
``capacity`` copies (one slot per task) with a leading task axis.
"""
from __future__ import annotations

import jax.numpy as jnp

from supsup_jax.learner import Learner
from supsup_jax.methods import trained_net

# Its config keys are those of any learner with trained weights.
check_config = trained_net.check_config


def make(model, weights, optimizer, *, input_shape, num_classes: int, capacity: int,
         learning_rate: float, batch_stats=None, init: str = "kaiming_normal") -> Learner:
  """The upper bound: one fine-tuned copy of ``model`` kept per task.

  Args:
    model: Flax module, images ``[B, *input_shape]`` -> logits
      ``[B, num_outputs]``, num_outputs >= num_classes.
    weights: initial ``params`` tree, or an int seed drawing it with ``init``.
    optimizer: optax update rule at unit learning rate (e.g.
      ``optax.rmsprop(1.0)``); ``learning_rate`` scales its updates.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: real classes per task (accuracy over the first outputs).
    capacity: task slots (networks kept).
    learning_rate: the weights' learning rate (> 0).
    batch_stats: initial batch-norm statistics (None: the model's own).
    init: weight initialisation when ``weights`` is a seed.

  Returns:
    The learner; memory ``{"params", "batch_stats"}``, each leaf with a
    leading task axis ``[capacity, ...]``.
  """
  net = trained_net.make_net(model, weights, input_shape=input_shape,
                             num_classes=num_classes, capacity=capacity,
                             batch_stats=batch_stats, init=init)
  weight_lr = trained_net.check_rate("learning_rate", learning_rate)

  def init_memory():
    # Slot t holds task t's network once trained; until then the initial one.
    return {"params": trained_net.stack(net.params, net.capacity),
            "batch_stats": trained_net.stack(net.batch_stats, net.capacity)}

  def init_task(memory, task_id, key):
    del key
    source = jnp.maximum(jnp.asarray(task_id) - 1, 0)  # fine-tune task t-1's copy
    return trained_net.init_task_state(
        optimizer, {"weights": trained_net.take(memory["params"], source)},
        {"weights": weight_lr}, trained_net.take(memory["batch_stats"], source))

  def forward(memory, trainable, batch_stats, images, train):
    del memory
    return trained_net.apply(net, trainable["weights"], batch_stats, images, train)

  def end_task(memory, task_state, task_id):
    return {"params": trained_net.put(memory["params"], task_id,
                                      task_state["trainable"]["weights"]),
            "batch_stats": trained_net.put(memory["batch_stats"], task_id,
                                           task_state["batch_stats"])}

  def logits(memory, task_id, images):
    return trained_net.apply(net, trained_net.take(memory["params"], task_id),
                             trained_net.take(memory["batch_stats"], task_id),
                             images, False)[0]

  network_bytes = trained_net.tree_bytes((net.params, net.batch_stats))

  def summary(memory, num_learned):
    del memory, num_learned
    return {"method": "upper_bound", "bytes_per_task": network_bytes,
            "bytes_shared": 0, "trains_weights": True}

  return Learner(name="upper_bound", num_classes=net.num_classes,
                 init_memory=init_memory, init_task=init_task,
                 train_step=trained_net.make_train_step(forward, optimizer, net.num_classes),
                 end_task=end_task, logits=logits, summary=summary,
                 trains_weights=True)


def from_config(config, stream) -> Learner:
  """The upper bound for an experiment config: the common keys and
  ``config.trained_net`` (``init``, ``weight_learning_rate``)."""
  trained_net.check_sequential(config, "upper_bound")
  return make(**trained_net.config_kwargs(config, stream))
