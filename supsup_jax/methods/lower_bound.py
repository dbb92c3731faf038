"""Lower bound: one network fine-tuned on every task in turn (it forgets).

The baseline of SupSup (Wortsman, Ramanujan et al. 2020, arXiv 2006.14769)
below which a continual learner is no better than naive fine-tuning: all
weights train (initialised Kaiming normal), task after task, with one shared
output head of the config's output size and one set of batch-norm
statistics. Nothing is kept per task, so each task overwrites the last and
earlier tasks are forgotten (catastrophic forgetting).
"""
from __future__ import annotations

from supsup_jax.learner import Learner
from supsup_jax.methods import trained_net

# Its config keys are those of any learner with trained weights.
check_config = trained_net.check_config


def make(model, weights, optimizer, *, input_shape, num_classes: int,
         learning_rate: float, batch_stats=None, init: str = "kaiming_normal") -> Learner:
  """The lower bound: ``model`` fine-tuned on every task in turn.

  Args:
    model: Flax module, images ``[B, *input_shape]`` -> logits
      ``[B, num_outputs]``, num_outputs >= num_classes.
    weights: initial ``params`` tree, or an int seed drawing it with ``init``.
    optimizer: optax update rule at unit learning rate (e.g.
      ``optax.rmsprop(1.0)``); ``learning_rate`` scales its updates.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: real classes per task (accuracy over the first outputs).
    learning_rate: the weights' learning rate (> 0).
    batch_stats: initial batch-norm statistics (None: the model's own).
    init: weight initialisation when ``weights`` is a seed.

  Returns:
    The learner; memory ``{"params", "batch_stats"}``: one network.
  """
  net = trained_net.make_net(model, weights, input_shape=input_shape,
                             num_classes=num_classes, batch_stats=batch_stats, init=init)
  weight_lr = trained_net.check_rate("learning_rate", learning_rate)

  def init_memory():
    return {"params": net.params, "batch_stats": net.batch_stats}

  def init_task(memory, task_id, key):
    del task_id, key  # the task starts from wherever the last one ended
    return trained_net.init_task_state(optimizer, {"weights": memory["params"]},
                                       {"weights": weight_lr}, memory["batch_stats"])

  def forward(memory, trainable, batch_stats, images, train):
    del memory
    return trained_net.apply(net, trainable["weights"], batch_stats, images, train)

  def end_task(memory, task_state, task_id):
    del memory, task_id
    return {"params": task_state["trainable"]["weights"],
            "batch_stats": task_state["batch_stats"]}

  def logits(memory, task_id, images):
    del task_id  # one network for every task
    return trained_net.apply(net, memory["params"], memory["batch_stats"], images,
                             False)[0]

  network_bytes = trained_net.tree_bytes((net.params, net.batch_stats))

  def summary(memory, num_learned):
    del memory, num_learned
    return {"method": "lower_bound", "bytes_per_task": 0,
            "bytes_shared": network_bytes, "trains_weights": True}

  return Learner(name="lower_bound", num_classes=net.num_classes,
                 init_memory=init_memory, init_task=init_task,
                 train_step=trained_net.make_train_step(forward, optimizer, net.num_classes),
                 end_task=end_task, logits=logits, summary=summary,
                 trains_weights=True)


def from_config(config, stream) -> Learner:
  """The lower bound for an experiment config: the common keys and
  ``config.trained_net`` (``init``, ``weight_learning_rate``)."""
  trained_net.check_sequential(config, "lower_bound")
  kwargs = trained_net.config_kwargs(config, stream)
  del kwargs["capacity"]  # nothing is kept per task
  return make(**kwargs)
