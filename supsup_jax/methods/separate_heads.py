"""Separate heads: a shared trunk and one output layer per task.

The "separate heads" baselines of SupSup (Wortsman, Ramanujan et al. 2020,
arXiv 2006.14769): the whole network trains on the first task; afterwards
the trunk is frozen and each task trains only its own copy of the output
layer (and its own batch-norm statistics). ``separate_heads_randw``: the
trunk is random and never trained (so a seed stores it); every task trains
only its head. In the authors' code the heads train with Adam at lr 1e-2 and
the first task's weights at the weight learning rate; here
``adapt_optimizer`` (default "adam"), ``adapt_learning_rate`` (default 1e-2)
and ``weight_learning_rate`` (default ``learning_rate``).

Every task's head starts from the same initial head (drawn from the seed), as
each per-task copy is made from the initial layer in the authors' code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from supsup_jax.learner import Learner
from supsup_jax.methods import trained_net


def _make(config, stream, random_trunk: bool) -> Learner:
  name = "separate_heads_randw" if random_trunk else "separate_heads"
  if not random_trunk:
    trained_net.check_sequential(config, name)
  net = trained_net.build_net(config, stream)
  weight_lr, adapt_lr = trained_net.learning_rates(config)
  optimizer = trained_net.make_optimizer(config, net,
                                         config.get("adapt_optimizer", "adam"))
  head = trained_net.head_path(net)
  initial_head = trained_net.get_leaf(net.params, head)

  def init_memory():
    return {"params": net.params,
            "heads": trained_net.stack(initial_head, net.num_tasks),
            "batch_stats": trained_net.stack(net.batch_stats, net.num_tasks)}

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
  """Trunk trained on task 1. Keys read: the common ones, ``trained_init``,
  ``weight_learning_rate``, ``adapt_learning_rate``, ``adapt_optimizer``."""
  return _make(config, stream, random_trunk=False)


def from_config_randw(config, stream) -> Learner:
  """Random trunk, never trained. Keys read: as :func:`from_config`."""
  return _make(config, stream, random_trunk=True)
