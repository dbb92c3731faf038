"""HopSupSup: batch-norm gain masks stored in Hopfield networks, recovered at test time.

Wortsman, Ramanujan et al., "Supermasks in Superposition", NeurIPS 2020,
arXiv:2006.14769 (HopSupSup). The network is the 784-2048-2048-out MLP with
non-affine batch norm (batch statistics only) and Swish; its weights are fixed
signed constants and never trained. Each task learns one binary gain per
output channel of the two batch-norm layers, ``gain = 1[score >= 0]``
(straight-through, scores start at 0, i.e. every gain on). When a task ends,
its two gain masks go into two Hopfield stores (one d x d matrix per layer,
:mod:`supsup_jax.hopfield`); the learner keeps no per-task mask.

Recovery (the task is not given): on a stream of B batches, start the scores
``s`` from the mean of the stored patterns and at batch b = 1..B take one SGD
step on ``(1 - b/B) H(output) + gamma (b/B) sum_layers E(2 1[s >= 0] - 1)``
(H the mean entropy of the softmax; E the Hopfield energy), as the authors'
``adaptors.hopfield_recovery`` does (b counted from 1, so the last step is
energy-only). The whole loop is one ``lax.scan``; :func:`Parts.recover` is
vmappable over tasks.

Protocol notes: ``end_task`` cannot overwrite a task (a Hopfield store has no
index), and ``logits(memory, task_id, images)`` ignores ``task_id``: it
recovers a mask from ``images`` themselves, split into chunks of
``recovery_batch_size`` (the runner :mod:`supsup_jax.runs.hopsupsup` recovers on
the task's whole test stream instead).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from supsup_jax import hopfield
from supsup_jax.learner import Learner
from supsup_jax.masks import threshold_mask
from supsup_jax.methods import options
from supsup_jax.training import make_optimizer
from supsup_jax.weights import init_weights
from supsup_jax import losses


class GainBNSwishMLP(nn.Module):
  """784-2048-2048-out MLP, non-affine batch norm times a per-channel gain, Swish.

  Same parameter names and shapes as ``supsup_jax.models.BNSwishMLP``; batch
  norm always uses the batch's statistics (biased variance, eps 1e-5, as
  PyTorch's ``track_running_stats=False``), so there is no ``batch_stats``.
  ``gains``: one float32 [width] per hidden layer, multiplying the normalised
  activations before Swish.
  """
  hidden: Sequence[int] = (2048, 2048)
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, gains: Sequence[jax.Array]) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for width, gain in zip(self.hidden, gains):
      x = nn.Dense(width, use_bias=False)(x)
      mean = jnp.mean(x, axis=0)
      var = jnp.mean(jnp.square(x - mean), axis=0)
      x = nn.swish((x - mean) * jax.lax.rsqrt(var + 1e-5) * gain)
    return nn.Dense(self.num_outputs, use_bias=False)(x)


# Mean over the batch of the softmax entropy, logits [B, C] -> [] (the
# recovery's H term).
entropy = losses.batch_entropy


class RecoveryConfig(NamedTuple):
  """Recovery: SGD (momentum, L2 weight decay) at ``learning_rate`` on
  ``(1 - b/B) H + gamma (b/B) E`` (module docstring)."""
  gamma: float = 1.5e-3
  learning_rate: float = 500.0
  momentum: float = 0.9
  weight_decay: float = 1e-4


def check_recovery_config(rc: RecoveryConfig) -> None:
  if not rc.gamma >= 0:
    raise ValueError(f"recovery gamma must be >= 0, got {rc.gamma!r}")
  if not rc.learning_rate > 0:
    raise ValueError(f"recovery learning_rate must be > 0, got {rc.learning_rate!r}")


class Parts(NamedTuple):
  """HopSupSup's functions beyond the learner protocol (all pure, jittable).

  masks_of(task_state) -> tuple of bool [d_l]: the task's gain masks now.

  apply(memory, masks, images[n, ...]) -> logits [n, C] with the given masks.

  recover(memory, batches[Bmax, n, ...], num_batches, reference) -> (masks, hamming[Bmax + 1])
    recovered masks (tuple of bool [d_l]) after
    ``num_batches`` (<= Bmax, may be traced) steps; ``hamming[k]`` is the
    Hamming distance, summed over layers, between the mask after k steps and
    ``reference`` (tuple of bool [d_l], e.g. the stored masks; zeros if not
    needed); it stays constant past ``num_batches``. vmappable over tasks
    (batches, num_batches, reference).

  recover_by_energy(stores, s0, steps) -> masks
    after ``steps`` SGD steps on
    the energy alone from start scores ``s0`` (tuple of float [d_l]).
  """
  model: GainBNSwishMLP
  hidden: tuple
  rule: str
  recovery: RecoveryConfig
  masks_of: Any
  apply: Any
  recover: Any
  recover_by_energy: Any


def check_stores(stores: Sequence[hopfield.HopfieldStore], hidden: Sequence[int]) -> None:
  """One store per hidden layer, each of that layer's width (one-line errors)."""
  if len(stores) != len(hidden):
    raise ValueError(f"{len(stores)} Hopfield stores for {len(hidden)} masked layers "
                     f"(widths {tuple(hidden)}); pass one store per layer")
  for i, (st, w) in enumerate(zip(stores, hidden)):
    if st.d != w:
      raise ValueError(f"Hopfield store {i} has d={st.d} but layer {i} has {w} "
                       "channels; the store size must equal the layer width")


def _energy_loss(stores, scores) -> jax.Array:
  # Straight-through +-1 pattern of the current mask, as the authors' code.
  return sum(hopfield.energy(st.W, 2.0 * threshold_mask(s) - 1.0)
             for st, s in zip(stores, scores))


def build(*, hidden: Sequence[int] = (2048, 2048), num_outputs: int = 10,
          num_classes: int = 10, seed: int = 0, init: str = "signed_constant",
          input_shape: Sequence[int] = (28, 28, 1), optimizer: str = "sgd",
          learning_rate: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 1e-4, rule: str = "storkey",
          recovery: RecoveryConfig = RecoveryConfig(),
          recovery_batch_size: int = 64) -> tuple[Learner, Parts]:
  """The HopSupSup learner and its extra functions.

  Args:
    hidden: widths of the hidden (gain-masked, batch-normed) layers.
    num_outputs: output width (>= num_classes).
    num_classes: real classes per task (accuracy over the first outputs).
    seed: seeds the fixed weights (drawn with ``init``).
    init: weight initialisation (:data:`supsup_jax.weights.INITS`).
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    optimizer, learning_rate, momentum, weight_decay: training of the gain
      scores (:func:`supsup_jax.training.make_optimizer`).
    rule: Hopfield learning rule, "storkey" or "hebbian".
    recovery: the test-time recovery's settings.
    recovery_batch_size: images per recovery step in ``logits`` (>= 2).

  Returns:
    ``(learner, parts)``: the learner (memory ``{"weights", "stores": one
    Hopfield store [d_l, d_l] per hidden layer}``) and :class:`Parts`.
  """
  hidden = tuple(int(w) for w in hidden)
  if not hidden or min(hidden) < 1:
    raise ValueError(f"hidden widths must be >= 1, got {hidden!r}")
  hopfield._check_rule(rule)  # pylint: disable=protected-access
  check_recovery_config(recovery)
  if recovery_batch_size < 2:
    raise ValueError(f"recovery_batch_size must be >= 2 (batch-norm statistics), "
                     f"got {recovery_batch_size!r}")
  model = GainBNSwishMLP(hidden=hidden, num_outputs=num_outputs)
  ones = tuple(jnp.ones((w,), jnp.float32) for w in hidden)
  example = jnp.zeros((2, *input_shape), jnp.float32)
  opt = make_optimizer(optimizer, learning_rate, momentum=momentum,
                       weight_decay=weight_decay)
  rec_opt = make_optimizer("sgd", recovery.learning_rate, momentum=recovery.momentum,
                           weight_decay=recovery.weight_decay)

  def apply(memory, masks, images):
    gains = tuple(jnp.asarray(m, jnp.float32) for m in masks)
    return model.apply({"params": memory["weights"]}, images, gains)

  def logits_st(memory, scores, images):
    return model.apply({"params": memory["weights"]}, images,
                       tuple(threshold_mask(s) for s in scores))

  def init_memory():
    weights = init_weights(model, seed, example, init=init, gains=ones)
    return {"weights": weights,
            "stores": tuple(hopfield.init_store(w) for w in hidden)}

  def init_task(memory, task_id, key):
    del task_id, key  # scores start at 0 (every gain on), as the authors'
    scores = tuple(jnp.zeros((w,), jnp.float32) for w in hidden)
    check_stores(memory["stores"], hidden)
    return {"scores": scores, "opt_state": opt.init(scores)}

  def train_step(memory, ts, images, labels):
    def loss_fn(scores):
      out = logits_st(memory, scores, images)
      return losses.cross_entropy(out, labels), out
    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts["scores"])
    updates, opt_state = opt.update(grads, ts["opt_state"], ts["scores"])
    scores = optax.apply_updates(ts["scores"], updates)
    acc = jnp.mean(jnp.argmax(out[:, :num_classes], -1) == labels)
    return {"scores": scores, "opt_state": opt_state}, {"loss": loss, "accuracy": acc}

  def masks_of(ts):
    return tuple(s >= 0 for s in ts["scores"])

  def end_task(memory, ts, task_id):
    del task_id  # a Hopfield store has no index: the pattern is superposed
    stores = tuple(hopfield.store_mask(st, m, rule)
                   for st, m in zip(memory["stores"], masks_of(ts)))
    return {**memory, "stores": stores}

  def _descend(stores, s0, num_batches, reference, step_loss, xs):
    """SGD on the scores over the scan inputs ``xs`` (one per step)."""
    reference = tuple(jnp.asarray(r, bool) for r in reference)

    def hamming(scores):
      return sum(jnp.sum((s >= 0) != r) for s, r in zip(scores, reference))

    def body(carry, x):
      scores, opt_state, b = carry
      grads = jax.grad(step_loss)(scores, b, x)
      updates, new_opt = rec_opt.update(grads, opt_state, scores)
      new_scores = optax.apply_updates(scores, updates)
      live = b <= num_batches  # padded steps past num_batches change nothing
      scores, opt_state = jax.tree.map(lambda n, o: jnp.where(live, n, o),
                                       (new_scores, new_opt), (scores, opt_state))
      return (scores, opt_state, b + 1), hamming(scores)

    (scores, _, _), curve = jax.lax.scan(
        body, (s0, rec_opt.init(s0), jnp.asarray(1, jnp.int32)), xs)
    curve = jnp.concatenate([hamming(s0)[None], curve])
    return tuple(s >= 0 for s in scores), curve

  def recover(memory, batches, num_batches, reference):
    stores = memory["stores"]
    check_stores(stores, hidden)
    s0 = tuple(hopfield.start_state(st) for st in stores)
    nb = jnp.asarray(num_batches, jnp.float32)

    def step_loss(scores, b, images):
      frac = b.astype(jnp.float32) / nb
      h = entropy(logits_st(memory, scores, images))
      return (1.0 - frac) * h + recovery.gamma * frac * _energy_loss(stores, scores)

    return _descend(stores, s0, num_batches, reference, step_loss, batches)

  def recover_by_energy(stores, s0, steps):
    def step_loss(scores, b, x):
      del b, x
      return recovery.gamma * _energy_loss(stores, scores)
    zeros = tuple(jnp.zeros(s.shape, bool) for s in s0)
    masks, _ = _descend(stores, tuple(s0), steps, zeros, step_loss,
                        jnp.zeros((steps,), jnp.float32))
    return masks

  def logits(memory, task_id, images):
    del task_id  # recovered from the images: the store has no task index
    n = images.shape[0]
    chunk = min(recovery_batch_size, n)
    nb = max(n // chunk, 1)
    batches = images[:nb * chunk].reshape((nb, chunk, *images.shape[1:]))
    zeros = tuple(jnp.zeros((w,), bool) for w in hidden)
    masks, _ = recover(memory, batches, nb, zeros)
    return apply(memory, masks, images)

  def summary(memory, num_learned):
    total = sum(hopfield.store_bytes(st) for st in memory["stores"])
    bank = sum(hopfield.bit_bank_bytes(w, num_learned) for w in hidden)
    return {"bytes_per_task": total / max(int(num_learned), 1),
            "store_bytes": total,
            "bit_bank_bytes": bank,
            "hopfield_rule": rule,
            "stored_patterns": [int(st.count) for st in memory["stores"]]}

  learner = Learner(name="hopsupsup", num_classes=num_classes,
                    init_memory=init_memory, init_task=init_task,
                    train_step=train_step, end_task=end_task, logits=logits,
                    summary=summary, trains_weights=False)
  parts = Parts(model=model, hidden=hidden, rule=rule, recovery=recovery,
                masks_of=masks_of, apply=apply, recover=recover,
                recover_by_energy=recover_by_energy)
  return learner, parts


def make(*, hidden: Sequence[int] = (2048, 2048), num_outputs: int = 10,
         num_classes: int = 10, seed: int = 0, init: str = "signed_constant",
         input_shape: Sequence[int] = (28, 28, 1), optimizer: str = "sgd",
         learning_rate: float = 0.1, momentum: float = 0.9,
         weight_decay: float = 1e-4, rule: str = "storkey",
         recovery: RecoveryConfig = RecoveryConfig(),
         recovery_batch_size: int = 64) -> Learner:
  """The HopSupSup learner alone (:func:`build`'s first value; same arguments).

  Args:
    hidden: widths of the hidden (gain-masked, batch-normed) layers.
    num_outputs: output width (>= num_classes).
    num_classes: real classes per task (accuracy over the first outputs).
    seed: seeds the fixed weights (drawn with ``init``).
    init: weight initialisation (:data:`supsup_jax.weights.INITS`).
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    optimizer: the gain scores' optimizer name
      (:func:`supsup_jax.training.make_optimizer`), e.g. ``"sgd"``.
    learning_rate: its learning rate.
    momentum: its momentum.
    weight_decay: its L2 weight decay.
    rule: Hopfield learning rule, "storkey" or "hebbian".
    recovery: the test-time recovery's settings (:class:`RecoveryConfig`).
    recovery_batch_size: images per recovery step in ``logits`` (>= 2).

  Returns:
    The learner (name ``"hopsupsup"``, ``trains_weights=False``); memory
    ``{"weights", "stores": one Hopfield store [d_l, d_l] per hidden layer}``;
    ``logits`` recovers the task's masks from the images themselves (the
    ``task_id`` is not read). Use :func:`build` for its :class:`Parts` too.

  Raises:
    ValueError: a hidden width < 1, an unknown rule, a bad recovery setting
      or ``recovery_batch_size`` < 2.
  """
  return build(hidden=hidden, num_outputs=num_outputs, num_classes=num_classes, seed=seed,
               init=init, input_shape=input_shape, optimizer=optimizer,
               learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
               rule=rule, recovery=recovery, recovery_batch_size=recovery_batch_size)[0]


HOPFIELD_DEFAULTS = {
    "rule": "storkey",        # the authors' code; "hebbian" is the paper text's
    "gamma": 1.5e-3,          # weight of the energy term in recovery
    "learning_rate": 500.0,   # recovery SGD
    "momentum": 0.9,
    "weight_decay": 1e-4,     # the authors' optimizer keeps args.wd
}


def read_config(config: Any) -> tuple[str, RecoveryConfig]:
  """``config.hopfield`` validated: ``(rule, RecoveryConfig)``."""
  part = options.part(config, "hopfield", HOPFIELD_DEFAULTS)
  rule = options.choice("config.hopfield.rule", part["rule"], hopfield.RULES)
  num = functools.partial(options.number, low=0)
  return rule, RecoveryConfig(
      gamma=num("config.hopfield.gamma", part["gamma"]),
      learning_rate=num("config.hopfield.learning_rate", part["learning_rate"], low_open=True),
      momentum=num("config.hopfield.momentum", part["momentum"]),
      weight_decay=num("config.hopfield.weight_decay", part["weight_decay"]))


def build_from_config(config: Any, stream: Any) -> tuple[Learner, Parts]:
  """:func:`build` for an experiment config: the common keys and
  ``config.hopfield`` (``rule``, ``gamma``, ``learning_rate``, ``momentum``,
  ``weight_decay``)."""
  rule, recovery = read_config(config)
  opts = config.get("model_options", {}) or {}
  num_outputs = int(config.get("num_outputs", 0)) or int(stream.num_classes)
  return build(hidden=tuple(opts.get("hidden", (2048, 2048))),
               num_outputs=num_outputs, num_classes=int(stream.num_classes),
               seed=int(config.get("seed", 0)),
               init=config.get("init", "signed_constant"),
               input_shape=tuple(stream.input_shape),
               optimizer=config.get("optimizer", "sgd"),
               learning_rate=float(config.get("learning_rate", 0.1)),
               momentum=float(config.get("momentum", 0.9)),
               weight_decay=float(config.get("weight_decay", 1e-4)),
               rule=rule, recovery=recovery,
               # logits recovers on chunks as large as the runner's recovery batches.
               recovery_batch_size=int((config.get("study") or {}).get(
                   "recovery_batch_size", 64)))


def check_config(config: Any) -> None:
  """HopSupSup's keys (the learner keys and ``config.hopfield``), checked
  before any data is loaded."""
  options.check_learner_keys(config)
  read_config(config)


def from_config(config: Any, stream: Any) -> Learner:
  """The registered entry point (``METHODS["hopsupsup"]``)."""
  return build_from_config(config, stream)[0]
