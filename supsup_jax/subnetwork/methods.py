"""Single-task subnetwork methods; each returns accuracy-vs-kept-fraction points.

* ``dense``: all weights trained (the reference).
* ``lottery_ticket``: iterative magnitude pruning (Frankle & Carbin, ICLR 2019,
  arXiv 1803.03635): train, prune the smallest-``|θ|`` weights per layer (output
  layer at ``lt_output_rate_factor`` times the rate) or globally, reset the
  survivors, retrain; one point per round. ``lt_rewind``: "init" (θ0, the
  lottery ticket), "iteration" (θ_k, late rewinding, Frankle et al. 2019,
  arXiv 1903.01611; retrains the remaining steps from batch k), "none"
  (no rewinding: the pruned network fine-tunes its trained values),
  "reinit" (the paper's control: same mask, fresh random weights).
* ``zhou_supermask``: Zhou, Lan, Liu & Yosinski, NeurIPS 2019, arXiv
  1905.01067. (a) learned supermask: weights frozen at init, m ~
  Bernoulli(sigmoid(s)) in each forward pass, the gradient passes straight
  through the sample to sigmoid(s); scores start at logit(f) for each
  requested kept fraction f (the density then moves freely; the reported x is
  the measured density). Tested with sampled masks (mean accuracy and
  density over ``zhou_samples`` draws), as the paper reports. Scores train
  with ``zhou_learning_rate`` (Bernoulli-noisy gradients through sigmoid'
  need a larger step than edge-popup's scores).
  (b) "large final" and "large final, same sign" one-shot masks of the
  trained dense network applied to the *untrained* initial weights; and
  (from ``lottery_ticket`` with ``lt_rewind=init``) each round's iterative
  mask on the untrained θ0, ``zhou_lt_mask_on_init``, the paper's setting.
* ``edge_popup``: Ramanujan et al., CVPR 2020, arXiv 1911.13299: per-layer
  top-k of learned scores over fixed signed-constant (or Kaiming-normal)
  weights, straight-through (:func:`supsup_jax.masks.topk_mask`).

A point is ``{"kept_fraction", "accuracy", ...}`` with ``kept_fraction`` the
measured fraction of all kernel entries kept. All models here are bias-free
and batch-norm-free, so every parameter is a prunable kernel.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import masks as masks_lib
from supsup_jax import tree as tree_lib
from supsup_jax.subnetwork import fit
from supsup_jax.subnetwork import pruning

REWINDS = ("init", "iteration", "none", "reinit")


@dataclasses.dataclass
class Setup:
  """What every method of one run shares (built by :mod:`supsup_jax.runs.subnetwork`)."""
  model: Any
  stream: Any
  x_test: jax.Array
  y_test: jax.Array
  init_params: dict        # θ0 of weight-training methods (config.init)
  mask_weights: dict       # fixed weights under supermasks (config.mask_init)
  reinit_params: dict      # another draw of θ0 (lottery-ticket control)
  config: Any
  steps: int
  cache: dict = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def accuracy(self) -> Callable:
    return fit.make_accuracy(self.model)

  def weight_optimizer(self):
    from supsup_jax.training import make_optimizer  # pylint: disable=import-outside-toplevel
    c = self.config
    return make_optimizer(c.optimizer, c.learning_rate, momentum=c.momentum,
                          weight_decay=c.weight_decay)

  def mask_optimizer(self):
    from supsup_jax.training import make_optimizer  # pylint: disable=import-outside-toplevel
    c = self.config
    return make_optimizer(c.mask_optimizer, c.mask_learning_rate, momentum=c.momentum)

  def key(self, *salts: int) -> jax.Array:
    key = jax.random.key(int(self.config.seed))
    for s in salts:
      key = jax.random.fold_in(key, s)
    return key


def _masked(params, mask, key):
  del key
  return jax.tree.map(lambda w, m: w * m, params, mask)


def dense_run(setup: Setup) -> dict:
  """Trains θ0 for ``steps`` steps once per run (shared by dense, the lottery
  ticket's first round and Zhou's large-final masks). Keeps θ_k for late
  rewinding (k = ``lt_rewind_iteration``)."""
  if "dense" in setup.cache:
    return setup.cache["dense"]
  ones = pruning.ones_like(setup.init_params)
  train = _weight_trainer(setup)
  k = int(setup.config.lt_rewind_iteration)
  key = setup.key(1)
  theta_k, opt_state, _ = train(setup.init_params, ones, key, 0, k)
  theta, _, loss = train(theta_k, ones, key, k, setup.steps - k, opt_state)
  out = {"theta_k": theta_k, "theta": theta, "loss": float(loss),
         "accuracy": setup.accuracy(theta, setup.x_test, setup.y_test)}
  setup.cache["dense"] = out
  return out


def _weight_trainer(setup: Setup):
  if "weight_trainer" not in setup.cache:
    setup.cache["weight_trainer"] = fit.make_trainer(
        setup.model, _masked, setup.weight_optimizer(), setup.stream,
        int(setup.config.batch_size))
  return setup.cache["weight_trainer"]


def dense(setup: Setup) -> dict[str, list[dict]]:
  run = dense_run(setup)
  return {"dense": [{"kept_fraction": 1.0, "accuracy": run["accuracy"]}]}


def lottery_ticket(setup: Setup) -> dict[str, list[dict]]:
  """Iterative magnitude pruning, one curve per ``lt_rewind`` variant."""
  c = setup.config
  variants = [v.strip() for v in str(c.lt_rewind).split(",") if v.strip()]
  for v in variants:
    if v not in REWINDS:
      raise ValueError(f"lt_rewind {v!r} unknown; allowed: {', '.join(REWINDS)}")
  schedule = pruning.hidden_schedule(c.kept_fractions, int(c.lt_rounds), float(c.lt_prune_rate))
  run = dense_run(setup)
  train = _weight_trainer(setup)
  k = int(c.lt_rewind_iteration)
  curves = {}
  on_init = []
  for vi, variant in enumerate(variants):
    mask = pruning.ones_like(setup.init_params)
    values = run["theta"]
    points = [{"kept_fraction": 1.0, "accuracy": run["accuracy"], "round": 0}]
    for r in range(1, len(schedule)):
      rate = 1.0 - schedule[r] / schedule[r - 1]
      if c.lt_scope == "global":
        rates = rate
      else:
        rates = pruning.layer_rates(values, rate, float(c.lt_output_rate_factor))
      mask = pruning.magnitude_prune(values, mask, rates, scope=c.lt_scope)
      start = 0
      if variant == "init":
        params = pruning.rewind(setup.init_params, mask)
      elif variant == "iteration":
        params, start = pruning.rewind(run["theta_k"], mask), k
      elif variant == "none":
        params = pruning.rewind(values, mask)
      else:
        params = pruning.rewind(setup.reinit_params, mask)
      if variant == "init":
        # Zhou et al.'s supermask: the ticket's mask on the untrained θ0.
        on_init.append({"kept_fraction": pruning.kept_fraction(mask), "round": r,
                        "accuracy": setup.accuracy(params, setup.x_test, setup.y_test)})
      trained, _, _ = train(params, mask, setup.key(2, vi, r), start, setup.steps - start)
      values = _masked(trained, mask, None)
      points.append({"kept_fraction": pruning.kept_fraction(mask), "round": r,
                     "accuracy": setup.accuracy(values, setup.x_test, setup.y_test)})
    curves[f"lottery_ticket(rewind={variant})"] = points
  if on_init:
    curves["zhou_lt_mask_on_init"] = [
        {"kept_fraction": 1.0, "round": 0,
         "accuracy": setup.accuracy(setup.init_params, setup.x_test, setup.y_test)}] + on_init
  return curves


def bernoulli_st(scores: jax.Array, key: jax.Array) -> jax.Array:
  """m ~ Bernoulli(sigmoid(s)) forward; d m / d s := sigmoid'(s) (straight
  through the sample, Zhou et al. 2019)."""
  p = jax.nn.sigmoid(scores)
  m = jax.random.bernoulli(key, jax.lax.stop_gradient(p)).astype(scores.dtype)
  return p + jax.lax.stop_gradient(m - p)


def sample_masks(scores, key) -> dict:
  leaves, treedef = jax.tree.flatten(dict(scores))
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [bernoulli_st(s, k) for s, k in zip(leaves, keys)])


def _scaled(weights, fraction: float, scale_fan: bool):
  # Kaiming std over the kept fan-in (edge-popup's "scale_fan"): a layer that
  # keeps k of its inputs keeps its activation scale. Positive per-layer
  # scales never change a bias-free ReLU network's argmax, only training.
  if not scale_fan:
    return weights
  return jax.tree.map(lambda w: w / math.sqrt(fraction), weights)


def zhou_supermask(setup: Setup) -> dict[str, list[dict]]:
  c = setup.config
  weights0 = setup.mask_weights
  fractions = sorted({float(f) for f in c.kept_fractions}, reverse=True)
  x, y = setup.x_test, setup.y_test
  sampled = []

  def effective(scores, weights, key):
    return _masked(weights, sample_masks(scores, key), None)

  from supsup_jax.training import make_optimizer  # pylint: disable=import-outside-toplevel
  train = fit.make_trainer(setup.model, effective,
                           make_optimizer(c.mask_optimizer, c.zhou_learning_rate,
                                          momentum=c.momentum),
                           setup.stream, int(c.batch_size))
  for i, f in enumerate(fractions):
    if f >= 1.0:
      acc = setup.accuracy(weights0, x, y)  # all ones: the random network itself
      sampled.append({"kept_fraction": 1.0, "accuracy": acc, "init_density": 1.0})
      continue
    weights = _scaled(weights0, f, bool(c.mask_scale_fan))
    logit = math.log(f / (1.0 - f))
    noise = masks_lib.init_scores(weights, setup.key(3, i))  # +-1/sqrt(fan_in)
    scores = jax.tree.map(lambda n: logit + n, noise)
    scores, _, _ = train(scores, weights, setup.key(4, i), 0, setup.steps)
    accs, dens = [], []
    for s in range(int(c.zhou_samples)):
      m = sample_masks(scores, setup.key(5, i, s))
      accs.append(setup.accuracy(_masked(weights, m, None), x, y))
      dens.append(pruning.kept_fraction(m))
    sampled.append({"kept_fraction": float(np.mean(dens)), "accuracy": float(np.mean(accs)),
                    "accuracy_std": float(np.std(accs)), "init_density": f})
  curves = {"zhou_supermask": sampled}
  # (b) masks from the trained dense network, applied to the untrained θ0.
  run = dense_run(setup)
  theta0, theta = setup.init_params, run["theta"]
  same_sign = jax.tree.map(lambda w0, w: jnp.abs(w) * (jnp.sign(w) == jnp.sign(w0)),
                           theta0, theta)
  for name, ranking in (("large_final", theta), ("large_final_same_sign", same_sign)):
    pts = []
    for f in fractions:
      m = pruning.top_fraction_mask(ranking, f)
      pts.append({"kept_fraction": pruning.kept_fraction(m),
                  "accuracy": setup.accuracy(_masked(theta0, m, None), x, y)})
    curves[f"zhou_{name}_mask_on_init"] = pts
  return curves


def edge_popup(setup: Setup) -> dict[str, list[dict]]:
  c = setup.config
  fractions = sorted({float(f) for f in c.kept_fractions}, reverse=True)
  points = []
  for i, f in enumerate(fractions):
    if f >= 1.0:
      points.append({"kept_fraction": 1.0,
                     "accuracy": setup.accuracy(setup.mask_weights, setup.x_test, setup.y_test)})
      continue
    weights = _scaled(setup.mask_weights, f, bool(c.mask_scale_fan))

    def effective(scores, weights, key, f=f):
      return _masked(weights, masks_lib.masks_from_scores(scores, "topk", f), key)

    train = fit.make_trainer(setup.model, effective, setup.mask_optimizer(),
                             setup.stream, int(c.batch_size))
    scores = masks_lib.init_scores(weights, setup.key(6, i))
    scores, _, _ = train(scores, weights, setup.key(7, i), 0, setup.steps)
    m = masks_lib.masks_from_scores(scores, "topk", f)
    points.append({"kept_fraction": pruning.kept_fraction(m),
                   "accuracy": setup.accuracy(_masked(weights, m, None), setup.x_test, setup.y_test)})
  return {"edge_popup": points}


METHODS = {"dense": dense, "lottery_ticket": lottery_ticket,
           "zhou_supermask": zhou_supermask, "edge_popup": edge_popup}


def check_all_kernels(params) -> None:
  flat = tree_lib.flatten(params)
  others = [tree_lib.path_str(p) for p, v in flat.items() if not tree_lib.default_maskable(p, v)]
  if others:
    raise ValueError(f"subnetwork methods need a bias-free model whose parameters are all "
                     f"kernels; this one also has {others}")
