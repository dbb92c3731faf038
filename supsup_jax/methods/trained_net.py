"""What the weight-training baselines share: a Flax network whose weights train.

The baselines of SupSup (Wortsman, Ramanujan et al. 2020, arXiv 2006.14769)
train network weights, unlike SupSup itself: the lower and upper bounds,
separate heads, BatchEnsemble and PSP. They use the same models
(:func:`supsup_jax.models.make_model`), optimizers
(:func:`supsup_jax.optim.make_optimizer`) and data as SupSup; this module
holds the pieces every baseline needs:

* :class:`Net` (:func:`make_net`): the model, its trained-style initial
  weights (Kaiming normal by default, a pure function of the seed like
  SupSup's random weights) and initial batch-norm statistics.
* :func:`config_kwargs`: the keyword arguments of a baseline's ``make`` for
  an experiment config; the baselines' own part is ``config.trained_net``
  (``init``, ``weight_learning_rate``, ``adapt_learning_rate``,
  ``adapt_optimizer``).
* per-task storage: pytrees with a leading task axis, read and written at a
  traced task id (:func:`take`, :func:`put`), so memory shapes never change.
* :func:`make_train_step`: one optimizer over a dict of parameter groups
  (``{"weights": ..., "own": ...}``), each group's update scaled by a traced
  learning rate held in the task state. A group whose rate is 0 stays frozen
  exactly, so the same compiled step trains the whole network on task 1 and
  only the task's own parameters afterwards (BatchE, separate heads).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import conv
from supsup_jax import learner as learner_lib
from supsup_jax import models
from supsup_jax import optim
from supsup_jax import training
from supsup_jax import tree as tree_lib
from supsup_jax import weights as weights_lib
from supsup_jax.methods import options
from supsup_jax import losses


@dataclasses.dataclass(frozen=True)
class Net:
  """A model and its initial variables.

  Attributes:
    model: Flax module, ``apply(variables, images[B, *input_shape], train)``
      -> logits ``[B, num_outputs]`` (num_outputs >= num_classes; more =
      superfluous neurons).
    num_classes: real classes per task.
    capacity: task slots of per-task storage.
    params: initial ``params`` tree (float32).
    batch_stats: initial ``batch_stats`` tree ({} without batch norm).
    example_shape: ``(1, *input_shape)``.
  """
  model: nn.Module
  num_classes: int
  capacity: int
  params: Any
  batch_stats: Any
  example_shape: tuple


def make_net(model: nn.Module, weights, *, input_shape: Sequence[int], num_classes: int,
             capacity: int = 1, batch_stats=None, init: str = "kaiming_normal") -> Net:
  """The :class:`Net` of ``model`` with initial weights ``weights``.

  Args:
    model: Flax module mapping images ``[B, *input_shape]`` to logits
      ``[B, num_outputs]``.
    weights: the initial ``params`` tree, or an int seed drawing it with
      ``init`` (a pure function of the seed,
      :func:`supsup_jax.weights.init_weights`).
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: real classes per task (the first outputs).
    capacity: task slots of per-task storage (>= 1).
    batch_stats: initial batch-norm statistics; None -> the model's own
      initial ones ({} without batch norm).
    init: weight initialisation when ``weights`` is a seed.

  Returns:
    The :class:`Net`. Raises one-line ValueErrors for a bad init, capacity or
    class count.
  """
  options.choice("init", init, weights_lib.INITS)
  for key, value in (("capacity", capacity), ("num_classes", num_classes)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{key} must be an int >= 1, got {value!r}")
  example = np.zeros((1, *input_shape), np.float32)
  if isinstance(weights, (int, np.integer)) and not isinstance(weights, bool):
    weights = weights_lib.init_weights(model, int(weights), example, init=init)
  if batch_stats is None:
    batch_stats = weights_lib.init_model_state(model, example).get("batch_stats", {})
  return Net(model, int(num_classes), int(capacity), weights, batch_stats, example.shape)


TRAINED_NET_DEFAULTS = {
    "init": "kaiming_normal",     # the usual init of a network whose weights train
    "weight_learning_rate": 0.0,  # 0 -> config.learning_rate
    "adapt_learning_rate": 1e-2,  # the authors' lr for BatchE factors / heads (MNIST)
    "adapt_optimizer": "adam",    # separate heads and BatchE (authors' code)
}


def read_config(config) -> dict:
  """``config.trained_net`` validated: ``{"init", "weight_learning_rate",
  "adapt_learning_rate", "adapt_optimizer"}`` with the rates resolved (a 0 or
  absent weight rate -> ``config.learning_rate``; a 0 adaptation rate -> 1e-2).

  weight rate: every step that trains network weights ("train_weight_lr" in
  the authors' code). adaptation rate: a task's own parameters once the
  weights are fixed (BatchE factors, separate heads).
  """
  part = options.part(config, "trained_net", TRAINED_NET_DEFAULTS)
  options.choice("config.trained_net.init", part["init"], weights_lib.INITS)
  options.choice("config.trained_net.adapt_optimizer", part["adapt_optimizer"],
                 optim.OPTIMIZERS)
  part["weight_learning_rate"] = part["weight_learning_rate"] or config.learning_rate
  part["adapt_learning_rate"] = part["adapt_learning_rate"] or 1e-2
  for key in ("weight_learning_rate", "adapt_learning_rate"):
    part[key] = options.number(f"config.trained_net.{key}", part[key], low=0,
                               low_open=True)
  return part


def check_config(config) -> None:
  """The keys a learner with trained weights reads (the learner keys and
  ``config.trained_net``), checked before any data is loaded."""
  options.check_learner_keys(config)
  read_config(config)


def config_kwargs(config, stream, *, adapt: bool = False) -> dict:
  """Keyword arguments of a weight-training learner's ``make`` for an
  experiment config (keys of ``launch/configs/common.py``) over ``stream``.

  Returns:
    ``{"model", "weights" (the int seed), "optimizer" (at unit learning
    rate), "input_shape", "num_classes", "capacity" (num_tasks), "init",
    "learning_rate"}``, and ``"adapt_learning_rate"`` when ``adapt`` (the
    optimizer is then ``config.trained_net.adapt_optimizer``, else
    ``config.optimizer``).
  """
  part = read_config(config)
  if config.model not in models.MODELS:
    raise ValueError(f"config.model {config.model!r} unknown; allowed: "
                     f"{', '.join(models.MODELS)}")
  num_tasks = int(config.num_tasks)
  if num_tasks < 1:
    raise ValueError(f"config.num_tasks must be >= 1, got {config.num_tasks!r}")
  num_outputs = int(config.get("num_outputs") or stream.num_classes)
  if num_outputs < stream.num_classes:
    raise ValueError(f"config.num_outputs={num_outputs} is smaller than the "
                     f"{stream.num_classes} classes per task")
  model_kwargs = dict(config.get("model_options") or {})
  if conv.use_fast_conv(config.get("fast_conv", True), config.model):
    model_kwargs["conv_general_dilated"] = conv.conv_general_dilated
  out = {"model": models.make_model(config.model, num_outputs, **model_kwargs),
         "weights": int(config.seed),
         "optimizer": unit_rate_optimizer(
             config, learner_lib.steps_per_task(config, stream),
             part["adapt_optimizer"] if adapt else None),
         "input_shape": tuple(stream.input_shape),
         "num_classes": int(stream.num_classes),
         "capacity": num_tasks,
         "init": part["init"],
         "learning_rate": part["weight_learning_rate"]}
  if adapt:
    out["adapt_learning_rate"] = part["adapt_learning_rate"]
  return out


def check_sequential(config, name: str) -> None:
  """Methods whose task t starts from what task t-1 learned cannot train
  tasks side by side."""
  if int(config.get("tasks_in_parallel") or 1) != 1:
    raise ValueError(f"method {name!r} trains tasks one after another; set "
                     f"config.tasks_in_parallel=1 (got {config.tasks_in_parallel!r})")


def apply(net: Net, params, batch_stats, images, train: bool):
  """``(logits [B, num_outputs], new batch_stats)``; stats unchanged when
  not training or without batch norm."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  if train and batch_stats:
    logits, updates = net.model.apply(variables, images, train=True,
                                      mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return net.model.apply(variables, images, train=train), batch_stats


# ---------------------------------------------------------------- per task --

def stack(tree, n: int):
  """``n`` copies of ``tree`` along a new leading task axis."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))).copy(), tree)


def take(stacked, task_id):
  """Task ``task_id``'s slice (task_id may be traced)."""
  return jax.tree.map(lambda x: x[task_id], stacked)


def put(stacked, task_id, value):
  """``stacked`` with task ``task_id``'s slice replaced by ``value``."""
  return jax.tree.map(lambda x, v: x.at[task_id].set(v), stacked, value)


def tree_bytes(tree) -> int:
  """Bytes of all leaves (as stored: their own dtypes)."""
  return int(sum(np.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------- training --

def check_rate(key: str, rate) -> float:
  """A learning rate as a float: finite and > 0, else a one-line ValueError."""
  return options.number(key, rate, low=0, low_open=True)


def unit_rate_optimizer(config, total_steps: int, name: str | None = None
                        ) -> optax.GradientTransformation:
  """``config``'s optimizer (or ``name``) at unit learning rate.

  The learners here apply the rate per parameter group (:func:`make_train_step`);
  every update rule of :func:`supsup_jax.training.make_optimizer` (SGD with
  momentum, RMSprop, Adam, with L2 weight decay before it) is linear in the
  rate, so scaling the unit-rate update equals running at that rate.
  """
  return training.make_optimizer(
      name or config.optimizer, 1.0, momentum=config.momentum,
      weight_decay=config.weight_decay, schedule=config.get("schedule", "constant"),
      total_steps=total_steps, warmup_steps=int(config.get("warmup_steps") or 0))


def init_task_state(optimizer, trainable: dict, rates: dict, batch_stats) -> dict:
  """A fresh task state: trainable groups, their rates (f32 scalars, may be
  traced), optimizer state, batch-norm statistics and a step counter.

  Arrays are copied because the run loop donates the task state while the
  memory they come from is kept.
  """
  trainable = jax.tree.map(jnp.array, trainable)
  return {"trainable": trainable,
          "rates": {k: jnp.asarray(rates[k], jnp.float32) for k in trainable},
          "opt_state": optimizer.init(trainable),
          "batch_stats": jax.tree.map(jnp.array, batch_stats),
          "step": jnp.int32(0)}


_cross_entropy = losses.cross_entropy


def make_train_step(forward: Callable, optimizer, num_classes: int) -> Callable:
  """``(memory, task_state, images, labels) -> (task_state, metrics)``.

  ``forward(memory, trainable, batch_stats, images, train)`` -> ``(logits,
  new batch_stats)``. Loss: softmax cross-entropy over all outputs (as
  SupSup); accuracy over the real classes. Each group's update is scaled by
  its rate, so a group at rate 0 is exactly frozen (weight decay included).
  """

  def train_step(memory, state, images, labels):
    def loss_fn(trainable):
      logits, stats = forward(memory, trainable, state["batch_stats"], images, True)
      return _cross_entropy(logits, labels), (logits, stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["trainable"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
    updates = {k: jax.tree.map(lambda u, r=state["rates"][k]: u * r, v)
               for k, v in updates.items()}
    trainable = optax.apply_updates(state["trainable"], updates)
    new_state = dict(state, trainable=trainable, opt_state=opt_state,
                     batch_stats=stats, step=state["step"] + 1)
    return new_state, {"loss": loss,
                       "accuracy": jnp.mean(
                           jnp.argmax(logits[:, :num_classes], -1) == labels)}

  return train_step


# -------------------------------------------------------------------- head --

def head_path(net: Net) -> tuple:
  """Path of the output layer's kernel: the last Dense/Conv the model calls.

  Found by intercepting module calls while tracing the model on shapes only,
  so it works for any Flax model whose output comes from a Dense or Conv.
  """
  called = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv)):
      called.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: net.model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct(net.example_shape, jnp.float32))
  if not called:
    raise ValueError(f"model {type(net.model).__name__} has no Dense or Conv "
                     "layer to use as a per-task head")
  path = called[-1] + ("kernel",)
  if path not in tree_lib.flatten(net.params):
    raise ValueError(f"head {tree_lib.path_str(path)} is not a parameter of the model")
  return path


def replace_leaf(params, path: tuple, value):
  flat = tree_lib.flatten(params)
  flat[path] = value
  return tree_lib.unflatten(flat)


def get_leaf(params, path: tuple):
  return tree_lib.flatten(params)[path]


def first_task_rates(task_id, weight_lr: float, adapt_lr: float) -> dict:
  """Task 1 trains the shared weights and its own parameters at the weight
  rate; later tasks only their own parameters, at the adaptation rate."""
  first = jnp.asarray(task_id) == 0
  return {"weights": jnp.where(first, weight_lr, 0.0),
          "own": jnp.where(first, weight_lr, adapt_lr)}


def keep_first_task_weights(trained, params, task_id):
  """``trained`` weights after task 1, ``params`` unchanged after later tasks."""
  first = jnp.asarray(task_id) == 0
  return jax.tree.map(lambda new, old: jnp.where(first, new, old), trained, params)
