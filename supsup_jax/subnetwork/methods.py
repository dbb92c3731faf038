"""Single-task subnetwork methods; each returns accuracy-vs-kept-fraction points.

* ``dense``: all weights trained (the reference).
* ``lottery_ticket``: iterative magnitude pruning (Frankle & Carbin, ICLR 2019,
  arXiv 1803.03635): train, prune the smallest-``|θ|`` weights per layer (output
  layer at ``lottery_ticket.output_rate_factor`` times the rate) or globally
  (``lottery_ticket.scope``), reset the survivors, retrain; one point per
  round. ``lottery_ticket.rewind``: "init" (θ0, the lottery ticket),
  "iteration" (θ_k, k = ``lottery_ticket.rewind_iteration``, late rewinding,
  Frankle et al. 2019, arXiv 1903.01611; retrains the remaining steps from
  batch k), "none" (no rewinding: the pruned network fine-tunes its trained
  values), "reinit" (the paper's control: same mask, fresh random weights).
* ``zhou_supermask``: Zhou, Lan, Liu & Yosinski, NeurIPS 2019, arXiv
  1905.01067. (a) learned supermask: weights frozen at init, m ~
  Bernoulli(sigmoid(s)) in each forward pass, the gradient passes straight
  through the sample to sigmoid(s); scores start at logit(f) for each
  requested kept fraction f (the density then moves freely; the reported x is
  the measured density). Tested with sampled masks (mean accuracy and
  density over ``zhou.samples`` draws), as the paper reports. Scores train
  with ``zhou.learning_rate`` (Bernoulli-noisy gradients through sigmoid'
  need a larger step than edge-popup's scores).
  (b) "large final" and "large final, same sign" one-shot masks of the
  trained dense network applied to the *untrained* initial weights; and
  (from ``lottery_ticket`` with rewind "init") each round's iterative
  mask on the untrained θ0, ``zhou_lt_mask_on_init``, the paper's setting.
* ``edge_popup``: Ramanujan et al., CVPR 2020, arXiv 1911.13299: per-layer
  top-k of learned scores over fixed signed-constant (or Kaiming-normal)
  weights, straight-through (:func:`supsup_jax.masks.topk_mask`).

Config (each method reads its own sub-config; :func:`validate` checks them):
``config.lottery_ticket.{rewind, rewind_iteration, scope, output_rate_factor,
rounds, prune_rate}``; ``config.supermask.{init, scale_fan, optimizer,
learning_rate}`` (the fixed weights and score training of both supermask
methods); ``config.zhou.{learning_rate, samples}``. Weight training (dense,
lottery ticket) uses the top-level ``optimizer``, ``learning_rate``,
``momentum``, ``weight_decay``, ``batch_size``.

A point is ``{"kept_fraction", "accuracy", ...}`` with ``kept_fraction`` the
measured fraction of all kernel entries kept. All models here are bias-free
and batch-norm-free, so every parameter is a prunable kernel.

Resumable: each method ``put``s its progress to the setup's session
(:class:`supsup_jax.subnetwork.fit.Session`) after each unit of work (the
dense training; each lottery-ticket round: mask, weights and points so far;
each supermask fraction) and continues from it when ``get`` returns it.
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
from supsup_jax import optim
from supsup_jax import tree as tree_lib
from supsup_jax import weights as weights_lib
from supsup_jax.subnetwork import fit
from supsup_jax.subnetwork import options
from supsup_jax.subnetwork import pruning

REWINDS = ("init", "iteration", "none", "reinit")

# Flat keys of earlier configs -> their place now.
MOVED = {
    "lt_rewind": "lottery_ticket.rewind",
    "lt_rewind_iteration": "lottery_ticket.rewind_iteration",
    "lt_scope": "lottery_ticket.scope",
    "lt_output_rate_factor": "lottery_ticket.output_rate_factor",
    "lt_rounds": "lottery_ticket.rounds",
    "lt_prune_rate": "lottery_ticket.prune_rate",
    "mask_init": "supermask.init",
    "mask_scale_fan": "supermask.scale_fan",
    "mask_optimizer": "supermask.optimizer",
    "mask_learning_rate": "supermask.learning_rate",
    "zhou_learning_rate": "zhou.learning_rate",
    "zhou_samples": "zhou.samples",
}
SUBCONFIG_KEYS = {
    "lottery_ticket": ("rewind", "rewind_iteration", "scope", "output_rate_factor",
                       "rounds", "prune_rate"),
    "supermask": ("init", "scale_fan", "optimizer", "learning_rate"),
    "zhou": ("learning_rate", "samples"),
}
# The sub-configs each method reads (dense, lottery ticket and Zhou's
# large-final masks share one dense training, which keeps θ_k for rewinding).
READS = {"dense": ("lottery_ticket",), "lottery_ticket": ("lottery_ticket",),
         "zhou_supermask": ("lottery_ticket", "supermask", "zhou"),
         "edge_popup": ("supermask",)}


def validate(config, names, steps: int | None = None) -> None:
  """Checks the sub-configs of ``names`` (and any other present) in one-line
  errors; ``steps`` (when known) bounds ``lottery_ticket.rewind_iteration``."""
  options.refuse_moved(config, MOVED)
  needed = {s for n in names for s in READS[n]}
  for sub, keys in SUBCONFIG_KEYS.items():
    if sub in needed or sub in config:
      options.known_keys(options.section(config, sub, {k: v for k, v in MOVED.items()
                                                       if v.startswith(sub + ".")}),
                         sub, keys)
  if "lottery_ticket" in config or "lottery_ticket" in needed:
    lt = config.lottery_ticket
    options.comma_list(lt, "rewind", REWINDS, "lottery_ticket")
    k = options.integer(lt, "rewind_iteration", "lottery_ticket", low=0)
    if steps is not None and k > steps:
      raise ValueError(f"config.lottery_ticket.rewind_iteration={k} is beyond the training "
                       f"length; allowed: 0..{steps} (steps per training)")
    options.choice(lt, "scope", ("layer", "global"), "lottery_ticket")
    options.number(lt, "output_rate_factor", "lottery_ticket", low=0.0, high=1.0)
    options.integer(lt, "rounds", "lottery_ticket", low=0)
    pruning.check_rate(lt.prune_rate, "config.lottery_ticket.prune_rate (prune rate)")
  if "supermask" in config or "supermask" in needed:
    sm = config.supermask
    options.choice(sm, "init", weights_lib.INITS, "supermask")
    options.boolean(sm, "scale_fan", "supermask")
    options.choice(sm, "optimizer", optim.OPTIMIZERS, "supermask")
    options.number(sm, "learning_rate", "supermask", low=0.0, low_open=True)
  if "zhou" in config or "zhou" in needed:
    options.number(config.zhou, "learning_rate", "zhou", low=0.0, low_open=True)
    options.integer(config.zhou, "samples", "zhou", low=1)


def planned_steps(config, names, steps: int) -> int:
  """Training steps the methods ``names`` take in all (for an ETA)."""
  fractions = {float(f) for f in config.kept_fractions}
  below_one = sum(1 for f in fractions if f < 1.0)
  total = 0
  if {"dense", "lottery_ticket", "zhou_supermask"} & set(names):
    total += steps
  if "lottery_ticket" in names:
    lt = config.lottery_ticket
    rounds = len(pruning.hidden_schedule(config.kept_fractions, int(lt.rounds),
                                         float(lt.prune_rate))) - 1
    for v in [v.strip() for v in str(lt.rewind).split(",") if v.strip()]:
      total += rounds * (steps - (int(lt.rewind_iteration) if v == "iteration" else 0))
  total += steps * below_one * sum(1 for n in ("zhou_supermask", "edge_popup") if n in names)
  return total


@dataclasses.dataclass
class Setup:
  """What every method of one run shares (built by :mod:`supsup_jax.runs.subnetwork`)."""
  model: Any
  stream: Any
  x_test: jax.Array
  y_test: jax.Array
  init_params: dict        # θ0 of weight-training methods (config.init)
  mask_weights: dict       # fixed weights under supermasks (config.supermask.init)
  reinit_params: dict      # another draw of θ0 (lottery-ticket control)
  config: Any
  steps: int
  session: fit.Session = dataclasses.field(default_factory=fit.Session)
  cache: dict = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def accuracy(self) -> Callable:
    return fit.make_accuracy(self.model)

  def weight_optimizer(self):
    c = self.config
    return optim.make_optimizer(c.optimizer, c.learning_rate, momentum=c.momentum,
                                weight_decay=c.weight_decay)

  def mask_optimizer(self, learning_rate: float | None = None):
    c = self.config
    lr = c.supermask.learning_rate if learning_rate is None else learning_rate
    return optim.make_optimizer(c.supermask.optimizer, lr, momentum=c.momentum)

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
  rewinding (k = ``lottery_ticket.rewind_iteration``)."""
  if "dense" in setup.cache:
    return setup.cache["dense"]
  session = setup.session
  saved = session.get("dense_run")
  if saved is not None:
    tree, meta = saved
    out = {"theta_k": tree["theta_k"], "theta": tree["theta"], "accuracy": meta["accuracy"]}
  else:
    ones = pruning.ones_like(setup.init_params)
    train = _weight_trainer(setup)
    k = int(setup.config.lottery_ticket.rewind_iteration)
    key = setup.key(1)
    theta_k, opt_state, _ = session.train(train, f"dense steps 0..{k}", setup.init_params,
                                          ones, key, 0, k)
    theta, _, _ = session.train(train, "dense", theta_k, ones, key, k, setup.steps - k,
                                opt_state)
    out = {"theta_k": theta_k, "theta": theta,
           "accuracy": setup.accuracy(theta, setup.x_test, setup.y_test)}
    session.put("dense_run", {"theta_k": theta_k, "theta": theta},
                {"accuracy": out["accuracy"]}, where="the end of the dense training")
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
  """Iterative magnitude pruning, one curve per ``lottery_ticket.rewind`` variant.

  Resumable after each round: the session holds the variant's mask and
  weights and the points so far (entry ``"lottery_ticket"``).
  """
  c, lt, session = setup.config, setup.config.lottery_ticket, setup.session
  variants = options.comma_list(lt, "rewind", REWINDS, "lottery_ticket")
  schedule = pruning.hidden_schedule(c.kept_fractions, int(lt.rounds), float(lt.prune_rate))
  run = dense_run(setup)
  train = _weight_trainer(setup)
  k = int(lt.rewind_iteration)
  curves: dict[str, list] = {}
  on_init: list[dict] = []
  resume_v, carry = 0, None
  saved = session.get("lottery_ticket")
  if saved is not None:
    tree, meta = saved
    curves, on_init, resume_v = dict(meta["curves"]), list(meta["on_init"]), int(meta["variant"])
    carry = (tree["mask"], tree["values"], list(meta["points"]), int(meta["round"]) + 1)
  for vi, variant in enumerate(variants):
    if vi < resume_v:
      continue
    name = f"lottery_ticket(rewind={variant})"
    if carry is not None:
      mask, values, points, first = carry
      carry = None
    else:
      mask = pruning.ones_like(setup.init_params)
      values = run["theta"]
      points = [{"kept_fraction": 1.0, "accuracy": run["accuracy"], "round": 0}]
      first = 1
    for r in range(first, len(schedule)):
      rate = 1.0 - schedule[r] / schedule[r - 1]
      if lt.scope == "global":
        rates = rate
      else:
        rates = pruning.layer_rates(values, rate, float(lt.output_rate_factor))
      mask = pruning.magnitude_prune(values, mask, rates, scope=lt.scope)
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
      label = f"{name} round {r}/{len(schedule) - 1}"
      trained, _, _ = session.train(train, label, params, mask, setup.key(2, vi, r), start,
                                    setup.steps - start)
      values = _masked(trained, mask, None)
      points.append({"kept_fraction": pruning.kept_fraction(mask), "round": r,
                     "accuracy": setup.accuracy(values, setup.x_test, setup.y_test)})
      session.put("lottery_ticket", {"mask": mask, "values": values},
                  {"curves": curves, "on_init": on_init, "variant": vi, "round": r,
                   "points": points}, where=f"the end of {label}")
    curves[name] = points
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
  """Zhou et al.'s learned supermasks (resumable after each kept fraction,
  entry ``"zhou_supermask"``) and one-shot masks of the dense network on θ0."""
  c, session = setup.config, setup.session
  weights0 = setup.mask_weights
  fractions = sorted({float(f) for f in c.kept_fractions}, reverse=True)
  x, y = setup.x_test, setup.y_test
  sampled: list[dict] = []
  saved = session.get("zhou_supermask")
  if saved is not None:
    sampled = list(saved[1]["points"])

  def effective(scores, weights, key):
    return _masked(weights, sample_masks(scores, key), None)

  train = fit.make_trainer(setup.model, effective,
                           setup.mask_optimizer(c.zhou.learning_rate),
                           setup.stream, int(c.batch_size))
  for i, f in enumerate(fractions):
    if i < len(sampled):
      continue
    if f >= 1.0:
      acc = setup.accuracy(weights0, x, y)  # all ones: the random network itself
      sampled.append({"kept_fraction": 1.0, "accuracy": acc, "init_density": 1.0})
      continue
    weights = _scaled(weights0, f, bool(c.supermask.scale_fan))
    logit = math.log(f / (1.0 - f))
    noise = masks_lib.init_scores(weights, setup.key(3, i))  # +-1/sqrt(fan_in)
    scores = jax.tree.map(lambda n: logit + n, noise)
    scores, _, _ = session.train(train, f"zhou_supermask kept {f:g}", scores, weights,
                                 setup.key(4, i), 0, setup.steps)
    accs, dens = [], []
    for s in range(int(c.zhou.samples)):
      m = sample_masks(scores, setup.key(5, i, s))
      accs.append(setup.accuracy(_masked(weights, m, None), x, y))
      dens.append(pruning.kept_fraction(m))
    sampled.append({"kept_fraction": float(np.mean(dens)), "accuracy": float(np.mean(accs)),
                    "accuracy_std": float(np.std(accs)), "init_density": f})
    session.put("zhou_supermask", None, {"points": sampled},
                where=f"the end of zhou_supermask kept {f:g}")
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
  """Edge-popup supermasks, resumable after each kept fraction (entry ``"edge_popup"``)."""
  c, session = setup.config, setup.session
  fractions = sorted({float(f) for f in c.kept_fractions}, reverse=True)
  points: list[dict] = []
  saved = session.get("edge_popup")
  if saved is not None:
    points = list(saved[1]["points"])
  for i, f in enumerate(fractions):
    if i < len(points):
      continue
    if f >= 1.0:
      points.append({"kept_fraction": 1.0,
                     "accuracy": setup.accuracy(setup.mask_weights, setup.x_test, setup.y_test)})
      continue
    weights = _scaled(setup.mask_weights, f, bool(c.supermask.scale_fan))

    def effective(scores, weights, key, f=f):
      return _masked(weights, masks_lib.masks_from_scores(scores, "topk", f), key)

    train = fit.make_trainer(setup.model, effective, setup.mask_optimizer(),
                             setup.stream, int(c.batch_size))
    scores = masks_lib.init_scores(weights, setup.key(6, i))
    scores, _, _ = session.train(train, f"edge_popup kept {f:g}", scores, weights,
                                 setup.key(7, i), 0, setup.steps)
    m = masks_lib.masks_from_scores(scores, "topk", f)
    points.append({"kept_fraction": pruning.kept_fraction(m),
                   "accuracy": setup.accuracy(_masked(weights, m, None), setup.x_test, setup.y_test)})
    session.put("edge_popup", None, {"points": points},
                where=f"the end of edge_popup kept {f:g}")
  return {"edge_popup": points}


METHODS = {"dense": dense, "lottery_ticket": lottery_ticket,
           "zhou_supermask": zhou_supermask, "edge_popup": edge_popup}


def check_all_kernels(params) -> None:
  flat = tree_lib.flatten(params)
  others = [tree_lib.path_str(p) for p, v in flat.items() if not tree_lib.default_maskable(p, v)]
  if others:
    raise ValueError(f"subnetwork methods need a bias-free model whose parameters are all "
                     f"kernels; this one also has {others}")
