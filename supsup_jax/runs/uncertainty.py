"""Runner of the uncertainty study (``config.runner = "uncertainty"``).

One run trains one uncertainty method, ``config.method`` (``single``,
``mc_dropout``, ``masksembles``, ``deep_ensemble`` or ``supermask_ensemble``;
see :mod:`supsup_jax.uncertainty.members`), on an in-distribution dataset,
then measures on its test set accuracy, NLL, Brier and 15-bin ECE, and the OOD
AUROC of predictive entropy and of mutual information against an
out-of-distribution set (``ood_dataset`` / ``ood_classes``: another dataset, or
held-out classes of the same one; ``ood_auroc``, ``ood_auroc_mi``) and, when
the config names one, against a near-OOD set too (``near_ood_dataset`` /
``near_ood_classes``, e.g. CIFAR-100 for a CIFAR-10 network, the standard near
pair; ``near_ood_auroc``, ``near_ood_auroc_mi``). Both OOD sets are the test
split, normalised with the in-distribution statistics. The near-OOD keys are
optional (:data:`OPTIONAL`: absent = no near-OOD set, as in the MNIST config);
at their defaults they are left out of the run's identity, so a config without
them and one with ``--config.near_ood_dataset=`` are the same run, and a
workdir holding a run made before its config had a near-OOD set is refused
with that flag named (it reads or resumes the run as it was).

Config: the keys every method reads stay top level (``dataset``, ``hidden``,
``num_members`` = N, ``batch_size``, ``train_steps``, ``seed``, ...;
``optimizer`` / ``learning_rate`` train the dense networks); each method's own
options live in a sub-config named after it, read and checked by that method
only: ``config.mc_dropout.{samples, rate}``,
``config.masksembles.{scale}``, ``config.supermask_ensemble.{mask_kind,
topk_fraction, weights_seed, optimizer, learning_rate}``. A key the chosen
method would ignore (another method's sub-config, ``num_members`` for a method
without members, the dense ``optimizer`` / ``learning_rate`` for the supermask
ensemble) must stay at its default (:data:`DEFAULTS`); set otherwise, the run
is refused before any data is loaded, as are unknown keys and out-of-range or
non-finite values (one-line ``ValueError``).

The run is a :mod:`supsup_jax.runs.scaffold` run: its workdir is locked and
tied to this config (a workdir of another run kind or config is refused, its
results untouched), the members' parameters, optimizer states and the losses
so far are checkpointed after every ``steps_per_call`` chunk of training, and
the same command resumes a killed run exactly where its last checkpoint was
(batches and PRNG keys derive from the step index, so the resumed run ends
with the same numbers as an uninterrupted one). A chunk whose loss or
parameters are not finite stops the run (``FloatingPointError``, one line)
before it is checkpointed. ``config.stop_after_steps`` > 0 checkpoints and
stops after that many steps of this process (a time-limited job slot; the same
command continues).

Writes to the workdir: ``metrics.csv`` (one row), ``reliability.csv`` (per
bin), ``reliability.png`` and ``entropy_hist.png`` (one histogram per set,
labelled in / OOD / near-OOD with the dataset and classes), then, last,
``results.json`` (the metrics, ``train_time_s``, ``eval_time_s``,
``wall_time_s``, ``peak_rss_mb``, ``bytes_stored`` and the config): a
``results.json`` means the run is complete, and the same command on that
workdir returns it without recomputing. ``train_time_s`` and ``wall_time_s``
add up the run's processes (time a killed process spent after its last
checkpoint is not counted: the resumed run redoes it). ``peak_rss_mb`` is the
largest memory high-water mark (``getrusage`` maxrss) of the processes that
ran it, as each had reached at its last checkpoint or at the end; run one
method per process to compare methods. ``peak_rss_mb_after_data`` is the last
process's mark before training (JAX plus the data).
"""
from __future__ import annotations

import csv
import difflib
import functools
import json
import math
import os
import resource
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import plotting
from supsup_jax import state_io
from supsup_jax.data import single_task
from supsup_jax.data import transforms
from supsup_jax.data.sources import load_dataset
from supsup_jax.optim import OPTIMIZERS
from supsup_jax.runs import scaffold
from supsup_jax.training import make_optimizer
from supsup_jax.uncertainty import calibration
from supsup_jax.uncertainty import members as members_lib

KIND = "uncertainty"
_KEY_INIT, _KEY_TRAIN, _KEY_EVAL = 0, 1, 2
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}

# The values a key must keep when the chosen method does not read it (the
# defaults of launch/configs/uncertainty_mnist.py; a test keeps them equal).
DEFAULTS: dict[str, Any] = {
    "num_members": 4,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "mc_dropout": {"samples": 4, "rate": 0.5},
    "masksembles": {"scale": 2.0},
    "supermask_ensemble": {"mask_kind": "threshold", "topk_fraction": 0.5,
                           "weights_seed": 0, "optimizer": "adam", "learning_rate": 1e-3},
}
# Method sub-configs: each read by the method it is named after.
METHOD_OPTIONS = ("mc_dropout", "masksembles", "supermask_ensemble")
# Every key the runner reads (its sub-configs' keys are those of DEFAULTS).
KEYS = ("runner", "experiment", "method", "dataset", "id_classes", "ood_dataset",
        "ood_classes", "hidden", "num_members", "optimizer", "learning_rate",
        "batch_size", "train_steps", "steps_per_call", "eval_batch_size", "num_bins",
        "seed", "data_dir", "download", "stop_after_steps") + METHOD_OPTIONS
# Keys a config may leave out (absent = the value here): the near-OOD set came
# after runs of the MNIST config existed, and a config without it keeps its
# run identity (run.json) because these keys at these values are dropped from
# it (see :func:`identity_config`).
OPTIONAL: dict[str, Any] = {"near_ood_dataset": "", "near_ood_classes": ()}
# Image shape of each dataset a run can read: every OOD set must have the
# in-distribution shape (checked before any data is loaded).
INPUT_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}
# The OOD sets of a run, in table order: (name, results-key prefix, config keys).
# ``ood`` is the config's ``ood_dataset`` (its metrics keep their names,
# ``ood_auroc``, ...); ``near_ood`` the optional near-OOD set.
OOD_SETS = (("OOD", "ood", "ood_dataset", "ood_classes"),
            ("near-OOD", "near_ood", "near_ood_dataset", "near_ood_classes"))
_WITH_MEMBERS = ("masksembles", "deep_ensemble", "supermask_ensemble")
# Keys of the flat config before the per-method sub-configs.
MOVED = {"mc_samples": "mc_dropout.samples", "dropout_rate": "mc_dropout.rate",
         "masksembles_scale": "masksembles.scale", "mask_kind": "supermask_ensemble.mask_kind",
         "topk_fraction": "supermask_ensemble.topk_fraction",
         "weights_seed": "supermask_ensemble.weights_seed",
         "supermask_optimizer": "supermask_ensemble.optimizer",
         "supermask_learning_rate": "supermask_ensemble.learning_rate"}


def _peak_rss_mb() -> float:
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ config


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _int(config, key: str, low: int, high: int | None = None) -> int:
  value = config[key]
  if not _is_int(value) or value < low or (high is not None and value >= high):
    bound = f">= {low}" if high is None else f"in [{low}, {high})"
    raise ValueError(f"config.{key} must be an int {bound}, got {value!r}")
  return int(value)


def _positive_float(value, name: str) -> float:
  if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.number)):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  if not (math.isfinite(float(value)) and float(value) > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  return float(value)


def _optimizer(value, name: str) -> str:
  if value not in OPTIMIZERS:
    raise ValueError(f"{name} {value!r} unknown; allowed: {', '.join(OPTIMIZERS)}")
  return value


def _unknown(keys, known, where: str) -> None:
  for key in keys:
    if key not in known:
      if where == "config." and key in MOVED:
        raise ValueError(f"config.{key} is now config.{MOVED[key]} (each method's options "
                         "are in a sub-config named after it)")
      close = difflib.get_close_matches(key, known, n=1)
      hint = f"; did you mean {where}{close[0]}?" if close else (
          f"; the uncertainty runner reads: {', '.join(known)}")
      raise ValueError(f"config key {where}{key} is not read by the uncertainty runner{hint}")


def _classes(config, key: str, dataset: str) -> list[int]:
  value = config[key]
  if value is None or isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
    raise ValueError(f"config.{key} must be a tuple of class ids (() = all), got {value!r}")
  out = list(value)
  n = NUM_CLASSES.get(dataset)
  for c in out:
    if not _is_int(c) or c < 0 or (n is not None and c >= n):
      raise ValueError(f"config.{key} holds {c!r}; class ids of {dataset} are ints in "
                       f"[0, {n if n is not None else '?'})")
  if len(set(out)) != len(out):
    raise ValueError(f"config.{key} repeats a class: {tuple(out)}")
  return [int(c) for c in out]


def _as_dict(value) -> dict:
  return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def check_mc_dropout(options: Mapping, config) -> None:
  """``config.mc_dropout``: T stochastic passes and the drop rate."""
  members_lib.check_mc_dropout(options["samples"], options["rate"],
                               names=("config.mc_dropout.samples", "config.mc_dropout.rate"))


def check_masksembles(options: Mapping, config) -> None:
  """``config.masksembles``: the scale must make N masks of every hidden width,
  and each batch splits into N groups."""
  if config.batch_size % config.num_members:
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of "
                     f"config.num_members={config.num_members} (Masksembles splits each batch "
                     "into N groups)")
  members_lib.masksembles_masks(config.hidden, config.num_members, options["scale"],
                                seed=config.seed, name="config.masksembles.scale")


def check_supermask_ensemble(options: Mapping, config) -> None:
  """``config.supermask_ensemble``: masks, fixed weights, the scores' optimizer."""
  del config
  members_lib.check_supermask(
      options["mask_kind"], options["topk_fraction"], options["weights_seed"],
      names=tuple(f"config.supermask_ensemble.{k}"
                  for k in ("mask_kind", "topk_fraction", "weights_seed")))
  _optimizer(options["optimizer"], "config.supermask_ensemble.optimizer")
  _positive_float(options["learning_rate"], "config.supermask_ensemble.learning_rate")


_CHECKS = {"mc_dropout": check_mc_dropout, "masksembles": check_masksembles,
           "supermask_ensemble": check_supermask_ensemble}


def _same(a, b) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
    return float(a) == float(b)
  return a == b


def _ignored(config, method: str) -> None:
  """Refuses a key the method would ignore, set away from its default."""
  def refuse(key, value, default, why):
    raise ValueError(f"config.{key}={value!r} is not used by method {method!r} ({why}); "
                     f"leave it at {default!r} or choose a method that reads it")
  if method not in _WITH_MEMBERS and not _same(config.num_members, DEFAULTS["num_members"]):
    refuse("num_members", config.num_members, DEFAULTS["num_members"],
           "one network; mc_dropout's test passes are config.mc_dropout.samples")
  if method == "supermask_ensemble":
    for key in ("optimizer", "learning_rate"):
      if not _same(config[key], DEFAULTS[key]):
        refuse(key, config[key], DEFAULTS[key], "it trains scores with "
               f"config.supermask_ensemble.{key}")
  for name in METHOD_OPTIONS:
    if name == method:
      continue
    for key, default in DEFAULTS[name].items():
      if not _same(config[name][key], default):
        refuse(f"{name}.{key}", config[name][key], default,
               f"config.{name} is read by method {name!r} only")


def with_optional(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with every :data:`OPTIONAL` key it leaves out at its default."""
  out = ml_collections.ConfigDict(_as_dict(config))
  for key, default in OPTIONAL.items():
    if key not in out:
      out[key] = default
  return out


def identity_config(config) -> ml_collections.ConfigDict:
  """``config`` without the :data:`OPTIONAL` keys that hold their defaults: what
  run.json records, so a config that never had them (the MNIST one, a run
  made before the near-OOD set) and one that sets them to "none" are the same run."""
  out = ml_collections.ConfigDict(_as_dict(config))
  for key, default in OPTIONAL.items():
    if key in out and _same_value(out[key], default):
      del out[key]
  return out


def _same_value(a, b) -> bool:
  if isinstance(b, tuple) and not isinstance(a, (str, bytes)) and hasattr(a, "__iter__"):
    return tuple(a) == b
  return a == b


def _check_ood_sets(config, id_cls: list[int]) -> None:
  """Each OOD set: class ids in range, the in-distribution image shape, disjoint
  from the in-distribution classes when drawn from the same dataset, and the
  near-OOD set not the OOD set again."""
  chosen = {}
  for label, _, ds_key, cls_key in OOD_SETS:
    dataset = config[ds_key]
    cls = _classes(config, cls_key, dataset)
    if dataset == "":  # only the optional near-OOD set may be absent
      if cls:
        raise ValueError(f"config.{cls_key}={tuple(cls)!r} needs config.{ds_key} (the "
                         "dataset they are classes of)")
      continue
    if INPUT_SHAPES[dataset] != INPUT_SHAPES[config.dataset]:
      raise ValueError(f"config.{ds_key} {dataset!r} has {INPUT_SHAPES[dataset]} images, "
                       f"config.dataset {config.dataset!r} {INPUT_SHAPES[config.dataset]}: "
                       f"the {label} set must have the in-distribution image shape")
    if dataset == config.dataset and (not id_cls or not cls or set(id_cls) & set(cls)):
      raise ValueError(f"with {ds_key} == dataset, id_classes and {cls_key} must be "
                       f"non-empty and disjoint, got {tuple(id_cls)} and {tuple(cls)}")
    chosen[label] = (dataset, tuple(sorted(cls)))
  if len(chosen) == 2 and chosen["OOD"] == chosen["near-OOD"]:
    raise ValueError(f"config.near_ood_dataset/near_ood_classes repeat the OOD set "
                     f"{describe_set(*chosen['OOD'])}; choose another near-OOD set or '' for none")


def describe_set(dataset: str, classes) -> str:
  """``"cifar10 classes 5-9"``, ``"cifar100 (all classes)"``: a set's label in tables and plots."""
  cls = sorted(int(c) for c in classes)
  if not cls:
    return f"{dataset} (all classes)"
  if cls == list(range(cls[0], cls[-1] + 1)) and len(cls) > 2:
    return f"{dataset} classes {cls[0]}-{cls[-1]}"
  return f"{dataset} classes {', '.join(map(str, cls))}"


def validate(config) -> None:
  """Every check that needs no data (all keys, their ranges, finite numbers,
  keys the method would ignore); one-line ``ValueError`` naming the fix."""
  _unknown(config.keys(), KEYS + tuple(OPTIONAL), "config.")
  config = with_optional(config)
  for key in KEYS:
    if key not in config:
      raise ValueError(f"config.{key} is missing (see launch/configs/uncertainty_mnist.py)")
  for name in METHOD_OPTIONS:
    if not isinstance(config[name], Mapping) and not hasattr(config[name], "keys"):
      raise ValueError(f"config.{name} must be a sub-config, got {config[name]!r}")
    _unknown(config[name].keys(), tuple(DEFAULTS[name]), f"config.{name}.")
    for key in DEFAULTS[name]:
      if key not in config[name]:
        raise ValueError(f"config.{name}.{key} is missing")
  if config.method not in members_lib.METHODS:
    raise ValueError(f"config.method {config.method!r} unknown; allowed: "
                     f"{', '.join(members_lib.METHODS)} (one method per run)")
  if config.runner != KIND:
    raise ValueError(f"config.runner {config.runner!r} is not {KIND!r}")
  for key in ("dataset", "ood_dataset"):
    single_task.check_dataset(config[key], f"config.{key}")
  if config.near_ood_dataset != "" and config.near_ood_dataset not in single_task.DATASETS:
    raise ValueError(f"config.near_ood_dataset {config.near_ood_dataset!r} unknown; allowed: "
                     f"{', '.join(single_task.DATASETS)}, or '' for no near-OOD set")
  for key in ("experiment", "data_dir"):
    if not isinstance(config[key], str):
      raise ValueError(f"config.{key} must be a string, got {config[key]!r}")
  if not isinstance(config.download, bool):
    raise ValueError(f"config.download must be True or False, got {config.download!r}")
  for key in ("num_members", "batch_size", "train_steps", "steps_per_call",
              "eval_batch_size", "num_bins"):
    _int(config, key, 1)
  _int(config, "seed", 0, 2 ** 31)
  _int(config, "stop_after_steps", 0)
  hidden = config.hidden
  if (isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__") or not hidden
      or not all(_is_int(h) and h >= 1 for h in hidden)):
    raise ValueError(f"config.hidden must be a non-empty tuple of ints >= 1, got {hidden!r}")
  _optimizer(config.optimizer, "config.optimizer")
  _positive_float(config.learning_rate, "config.learning_rate")
  id_cls = _classes(config, "id_classes", config.dataset)
  _check_ood_sets(config, id_cls)
  if id_cls and len(id_cls) < 2:
    raise ValueError(f"config.id_classes needs >= 2 classes, got {tuple(id_cls)}")
  _ignored(config, config.method)
  if config.method in _CHECKS:
    _CHECKS[config.method](config[config.method], config)


# ------------------------------------------------------------------ data and method


def load_data(config, num_orders: int):
  """Training stream with ``num_orders`` batch orders, ID test set, OOD inputs.

  Returns ``(stream, x_test, y_test, ood, num_classes)``; ``ood`` maps each
  OOD set's results-key prefix (``"ood"``, and ``"near_ood"`` when the config
  has a near-OOD set; see :data:`OOD_SETS`) to its test images (float32
  ``[N, H, W, C]``). OOD inputs are normalised with the in-distribution
  statistics: the network sees them through the same preprocessing as its own data.
  """
  config = with_optional(config)
  data = load_dataset(config.dataset, config.data_dir or None, config.download)
  id_cls = [int(c) for c in config.id_classes]
  # Member k trains on "task" k: same data, its own shuffle (fold_in(seed, k)).
  stream = single_task.single_task_stream(
      config.dataset, config.seed, classes=id_cls or None, num_orders=num_orders, data=data)
  x_test, y_test = stream.test_arrays(0)
  mean, std = transforms.NORM[config.dataset]
  ood = {}
  for label, prefix, ds_key, cls_key in OOD_SETS:
    if config[ds_key] == "":
      continue
    source = data if config[ds_key] == config.dataset else load_dataset(
        config[ds_key], config.data_dir or None, config.download)
    x_ood, y_ood = source["test"]
    cls = [int(c) for c in config[cls_key]]
    if cls:
      x_ood = x_ood[np.isin(y_ood, cls)]
    if x_ood.shape[1:] != x_test.shape[1:] or not len(x_ood):
      raise ValueError(f"the {label} set {describe_set(config[ds_key], cls)} has "
                       f"{len(x_ood)} test images of shape {x_ood.shape[1:]}; the "
                       f"in-distribution images are {x_test.shape[1:]}: check config.{ds_key}")
    ood[prefix] = np.asarray(transforms.normalize(x_ood, mean, std)).astype(np.float32)
  num_classes = len(id_cls) if id_cls else int(data["num_classes"])
  return stream, np.asarray(x_test), np.asarray(y_test), ood, num_classes


# Runs of one config in one process (a resumed run, a test's runs) share the
# method and so its compiled init and predictor; a few are kept.
_make_method = functools.lru_cache(maxsize=4)(members_lib.make_method)


def build_method(config, input_shape, num_classes) -> members_lib.Method:
  mc, sm = config.mc_dropout, config.supermask_ensemble
  return _make_method(
      config.method, input_shape=tuple(input_shape), num_classes=int(num_classes),
      hidden=tuple(int(h) for h in config.hidden), num_members=int(config.num_members),
      mc_samples=mc.samples, dropout_rate=mc.rate,
      masksembles_scale=config.masksembles.scale, mask_kind=sm.mask_kind,
      topk_fraction=sm.topk_fraction, weights_seed=sm.weights_seed,
      masks_seed=config.seed)


def _optimizer_of(config):
  if config.method == "supermask_ensemble":
    sm = config.supermask_ensemble
    return make_optimizer(sm.optimizer, sm.learning_rate)
  return make_optimizer(config.optimizer, config.learning_rate)


def _all_finite(params, losses) -> bool:
  # On the host: the arrays are small, and a jitted check would cost a compile.
  return bool(np.isfinite(np.asarray(losses)).all()) and all(
      bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(params))


def train(config, method: members_lib.Method, stream, run: scaffold.Run,
          restored) -> tuple[Any, dict, int]:
  """Trains all members from the last checkpoint (``restored``) on, saving one
  after every ``steps_per_call`` chunk.

  Returns ``(params with member axis, meta, steps of this process)`` (meta:
  ``losses`` per chunk, ``train_time_s``, ``peak_rss_mb``, ``global_step``);
  params are None when ``config.stop_after_steps`` stopped it (checkpointed).
  """
  opt = _optimizer_of(config)
  key = jax.random.key(config.seed)
  init_key = jax.random.fold_in(key, _KEY_INIT)
  meta = {"global_step": 0, "losses": [], "train_time_s": 0.0, "peak_rss_mb": 0.0}
  last_good = "no checkpoint yet"
  if restored is None:
    params = members_lib.init_members(method, init_key)
    opt_state = jax.vmap(opt.init)(params)
  else:  # the initial values' shapes and dtypes are the template (nothing computed)
    tree, saved = restored
    shapes = jax.eval_shape(lambda k: members_lib.init_members(method, k), init_key)
    params = state_io.from_saveable(tree["params"], shapes)
    opt_state = state_io.from_saveable(tree["opt_state"],
                                       jax.eval_shape(jax.vmap(opt.init), shapes))
    meta = {k: saved[k] for k in meta}
    last_good = f"resumable from the checkpoint at step {meta['global_step']}"
    logging.info("%s: resuming %s from step %d/%d (workdir %s)", config.experiment,
                 method.name, meta["global_step"], config.train_steps, run.workdir)
  batch_fn, arrays = stream.train_batch_fn_args(config.batch_size)
  trainer = members_lib.make_trainer(method, opt, batch_fn)
  train_key = jax.random.fold_in(key, _KEY_TRAIN)
  step, total = int(meta["global_step"]), int(config.train_steps)
  progress = scaffold.Progress(total, step)
  stop_after, this_process = int(config.stop_after_steps), 0
  while step < total:
    t0 = time.time()
    n = min(config.steps_per_call, total - step)
    params, opt_state, loss = trainer(params, opt_state, method.frozen, arrays, train_key,
                                      jnp.int32(step), num_steps=n)
    scaffold.check_finite(_all_finite(params, loss),
                          f"{method.name} between steps {step} and {step + n}", last_good)
    step += n
    this_process += n
    meta["losses"].append(float(np.mean(np.asarray(loss))))
    meta["train_time_s"] += time.time() - t0
    meta["global_step"] = step
    meta["peak_rss_mb"] = max(meta["peak_rss_mb"], _peak_rss_mb())
    progress.done = step
    progress.report(method.name, step, total, {"loss": meta["losses"][-1]})
    run.scalars(step, {"train/loss": meta["losses"][-1]})
    run.save(step, {"params": state_io.to_saveable(params),
                    "opt_state": state_io.to_saveable(opt_state)}, meta)
    last_good = f"resumable from the checkpoint at step {step}"
    if run.stop_signal is not None and step < total:  # SIGINT/SIGTERM: saved, now stop
      raise run.interruption(f"step {step}/{total}")
    if stop_after and this_process >= stop_after and step < total:
      logging.info("Stopped after %d steps (config.stop_after_steps); the same command "
                   "resumes from step %d", this_process, step)
      return None, meta, this_process
  return params, meta, this_process


# ------------------------------------------------------------------ run


def run(config, workdir: str) -> dict:
  """Trains ``config.method`` and writes its uncertainty metrics and plots.

  Returns the results (see the module docstring), or ``{"complete": False,
  ...}`` when ``config.stop_after_steps`` stopped it.
  """
  config = ml_collections.ConfigDict(_as_dict(config))
  validate(config)
  # run.json, the checkpoints and results.json record the config without the
  # optional keys at their defaults; the run reads them all.
  identity = identity_config(config)
  _refuse_run_without_near_set(workdir, identity)
  config = with_optional(config)
  with scaffold.open_run(workdir, identity, kind=KIND, stops_at_boundaries=True) as sc:
    if sc.finished is not None:
      logging.info("%s: finished before; results in %s", config.experiment, workdir)
      return sc.finished
    restored = sc.restore()  # refuses a workdir of another config, before any data
    num_orders = config.num_members if config.method in ("deep_ensemble",
                                                         "supermask_ensemble") else 1
    stream, x_test, y_test, ood, num_classes = load_data(config, num_orders)
    rss_after_data = _peak_rss_mb()
    method = build_method(config, stream.input_shape, num_classes)
    params, meta, steps_here = train(config, method, stream, sc, restored)
    if params is None:
      return {"complete": False, "steps_this_process": steps_here,
              "global_step": meta["global_step"], "experiment": config.experiment}
    results, outputs = evaluate(config, method, params, x_test, y_test, ood, num_classes)
    results.update({
        "train_time_s": meta["train_time_s"],
        "peak_rss_mb": max(meta["peak_rss_mb"], _peak_rss_mb()),
        "peak_rss_mb_after_data": rss_after_data,
        "final_train_loss": meta["losses"][-1], "train_loss_per_call": meta["losses"],
        "wall_time_s": sc.elapsed(), "config": identity.to_dict()})
    sc.scalars(config.train_steps, {f"eval/{k}": results[k] for k in (
        "accuracy", "nll", "brier", "ece", *_ood_keys(results))})
    results = sc.finish(results, lambda r: write_outputs(workdir, r, **outputs))
  logging.info("%s (%s): accuracy %.4f, ECE %.4f, %s; results in %s",
               config.experiment, config.method, results["accuracy"], results["ece"],
               ", ".join(f"{label} AUROC {results[prefix + '_auroc']:.4f}"
                         for label, prefix, _, _ in OOD_SETS if prefix + "_auroc" in results),
               workdir)
  return results


def _ood_keys(results: Mapping) -> list[str]:
  """The AUROC keys of the OOD sets a run's results have, in table order."""
  return [f"{prefix}_auroc{s}" for _, prefix, _, _ in OOD_SETS for s in ("", "_mi")
          if f"{prefix}_auroc" in results]


def _refuse_run_without_near_set(workdir: str, identity) -> None:
  """A workdir holding this run as it was before its config had a near-OOD set
  is refused with the flag that reads it as it was (the scaffold's check
  would only name the differing key)."""
  if "near_ood_dataset" not in identity:
    return
  try:
    with open(os.path.join(workdir, scaffold.IDENTITY)) as f:
      held = json.load(f).get("config") or {}
  except (OSError, ValueError, AttributeError):
    return  # no readable run.json: the scaffold decides
  if "near_ood_dataset" in held or not isinstance(held, dict):
    return
  if set(ckpt_lib.config_diff(held, identity.to_dict())) <= set(OPTIONAL):
    raise ckpt_lib.ConfigMismatchError(
        f"workdir {os.path.abspath(workdir)!r} holds this run without a near-OOD set "
        f"(config.near_ood_dataset); add --config.near_ood_dataset= to read or resume it as "
        f"it was, or use a new --workdir for the run with near-OOD set "
        f"{describe_set(identity.near_ood_dataset, identity.get('near_ood_classes', ()))}")


def evaluate(config, method, params, x_test, y_test, ood: Mapping[str, np.ndarray],
             num_classes) -> tuple[dict, dict]:
  """(results without timings of training, what the plots need).

  ``ood``: the OOD sets' images by results-key prefix (:func:`load_data`).
  The first OOD set's predictions draw PRNG key 1 (as before there was a
  second set), the near-OOD set's key 2.
  """
  config = with_optional(config)
  t_eval = time.time()
  eval_key = jax.random.fold_in(jax.random.key(config.seed), _KEY_EVAL)
  lp_in = members_lib.predict_dataset(method, params, x_test, jax.random.fold_in(eval_key, 0),
                                      config.eval_batch_size)
  lp_ood = {prefix: members_lib.predict_dataset(
      method, params, ood[prefix], jax.random.fold_in(eval_key, 1 + i), config.eval_batch_size)
            for i, (_, prefix, _, _) in enumerate(OOD_SETS) if prefix in ood}
  scores = calibration.summarize(lp_in, y_test, lp_ood["ood"], config.num_bins)
  if "near_ood" in lp_ood:
    near = calibration.ood_detection(lp_in, lp_ood["near_ood"])
    scores.update({"near_ood_auroc": near["auroc"], "near_ood_auroc_mi": near["auroc_mi"],
                   "mean_entropy_near_ood": near["mean_entropy_ood"]})
  bad = sorted(k for k, v in scores.items() if not math.isfinite(float(v)))
  if bad:  # never a NaN metric in a finished results.json
    raise FloatingPointError(
        f"evaluation of {method.name} gave non-finite {', '.join(bad)}; the trained members "
        "are in the last checkpoint; lower config.learning_rate or check the data")
  p_in = np.exp(calibration.mean_log_probs(lp_in))
  bins = calibration.reliability_bins(p_in, y_test, config.num_bins)

  def entropy_and_mi(lp):
    return (calibration.entropy_from_log_probs(calibration.mean_log_probs(lp)),
            calibration.mutual_information(lp))

  sets = set_labels(config)
  results = {
      "experiment": config.experiment, "method": config.method,
      "dataset": config.dataset, "ood_dataset": config.ood_dataset,
      "num_members": method.num_members, "predictions_per_input": method.num_predictions,
      **scores, "eval_time_s": time.time() - t_eval,
      "bytes_stored": members_lib.bytes_stored(method, params),
      "num_test": int(len(y_test)), "num_ood": int(len(ood["ood"])),
      "in_set": sets["in"], "ood_set": sets["ood"],
  }
  if "near_ood" in ood:
    results.update({"near_ood_dataset": config.near_ood_dataset,
                    "num_near_ood": int(len(ood["near_ood"])), "near_ood_set": sets["near_ood"]})
  hist = {"in": entropy_and_mi(lp_in), **{p: entropy_and_mi(lp) for p, lp in lp_ood.items()}}
  outputs = {"bins": bins, "hist": hist, "num_classes": num_classes}
  return results, outputs


def set_labels(config) -> dict[str, str]:
  """``{"in": ..., "ood": ..., "near_ood": ...}``: what each set is, for tables
  and plots (``near_ood`` only when the config has one); works on the config
  a results.json records, whatever its age."""
  config = with_optional(config)
  out = {"in": describe_set(config.dataset, config.id_classes)}
  for _, prefix, ds_key, cls_key in OOD_SETS:
    if config[ds_key]:
      out[prefix] = describe_set(config[ds_key], config[cls_key])
  return out


TABLE_KEYS = ("accuracy", "nll", "brier", "ece", "ood_auroc", "ood_auroc_mi",
              "train_time_s", "wall_time_s", "peak_rss_mb", "bytes_stored")


# Beside the OOD set's AUROCs in metrics.csv, for a run with a near-OOD set.
NEAR_TABLE_KEYS = ("near_ood_auroc", "near_ood_auroc_mi")


def write_outputs(workdir: str, results: dict, bins: dict, hist: Mapping,
                  num_classes: int) -> None:
  """metrics.csv, reliability.csv and the two plots (before results.json).

  ``hist``: (entropy, mutual information) per example of each set, keyed
  ``"in"`` and by the OOD sets' results-key prefixes (:func:`evaluate`).
  """
  _write_csvs(workdir, results, bins)
  title = f"{results['experiment']}: {results['method']}"
  plot_reliability(os.path.join(workdir, "reliability.png"), bins, title, results["ece"])
  labels = {"in": f"in: {results['in_set']}",
            **{prefix: f"{label}: {results[prefix + '_set']}"
               for label, prefix, _, _ in OOD_SETS if prefix in hist}}
  plot_entropy_hist(os.path.join(workdir, "entropy_hist.png"),
                    {labels[k]: v for k, v in hist.items()}, num_classes, title)


def _csv_keys(results: Mapping) -> tuple[str, ...]:
  if "near_ood_auroc" not in results:
    return TABLE_KEYS
  at = TABLE_KEYS.index("ood_auroc_mi") + 1
  return TABLE_KEYS[:at] + NEAR_TABLE_KEYS + TABLE_KEYS[at:]


def _write_csvs(workdir, results, bins) -> None:
  path = os.path.join(workdir, "metrics.csv")
  keys = _csv_keys(results)
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(("method",) + keys)
    w.writerow((results["method"],) + tuple(results[k] for k in keys))
  os.replace(path + ".tmp", path)
  path = os.path.join(workdir, "reliability.csv")
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(("bin_lo", "bin_hi", "count", "accuracy", "confidence"))
    e = bins["edges"]
    for b in range(len(bins["count"])):
      w.writerow((f"{e[b]:.4f}", f"{e[b + 1]:.4f}", int(bins["count"][b]),
                  f"{bins['accuracy'][b]:.6f}", f"{bins['confidence'][b]:.6f}"))
  os.replace(path + ".tmp", path)


def plot_reliability(path: str, bins: dict, title: str, ece: float) -> None:
  """Accuracy vs confidence per bin (full [0, 1] axes) over the share of examples."""
  plt = plotting.pyplot()
  e, count = bins["edges"], bins["count"]
  centers, width = 0.5 * (e[1:] + e[:-1]), e[1] - e[0]
  full = count > 0
  fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(5, 6.5), sharex=True, dpi=110,
                                 gridspec_kw={"height_ratios": [3, 1]})
  ax1.bar(centers[full], bins["accuracy"][full], width=width, edgecolor="k",
          label="accuracy in bin")
  ax1.plot(centers[full], bins["confidence"][full], "o", color="tab:red", ms=4,
           label="mean confidence in bin")
  ax1.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
  ax1.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE {ece:.4f})")
  ax1.legend(loc="upper left", fontsize=8)
  ax2.bar(centers, count / max(count.sum(), 1), width=width, color="gray", edgecolor="k")
  ax2.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max p̄)", ylabel="share of inputs")
  fig.tight_layout()
  plotting.save_atomic(fig, path)


def plot_entropy_hist(path: str, sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
                      num_classes: int, title: str) -> None:
  """Histograms of predictive entropy and mutual information of each set
  (``{legend label: (entropy [N], mutual information [N])}``, the
  in-distribution set first, then the OOD sets: e.g. ``"OOD: ..."`` and
  ``"near-OOD: ..."``), on the full range [0, log C] (the largest possible
  value of either)."""
  plt = plotting.pyplot()
  top = float(np.log(num_classes))
  edges = np.linspace(0.0, top, 41)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
  for i, (ax, name) in enumerate(zip(axes, ("predictive entropy H[p̄] (nats)",
                                            "mutual information (nats)"))):
    for j, (label, values) in enumerate(sets.items()):
      # Two sets: both filled, half transparent. More: the in-distribution set
      # filled, each OOD set an outline (three filled ones hide each other).
      style = ({"alpha": 0.6} if j == 0 or len(sets) <= 2 else
               {"histtype": "step", "linewidth": 1.8})
      ax.hist(np.clip(values[i], 0, top), edges, density=True, label=label, **style)
    ax.set(xlim=(0, top), xlabel=name, ylabel="density")
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  plotting.save_atomic(fig, path)


def table(workdirs) -> str:
  """Markdown table of several runs' results.json (one row per workdir).

  "AUROC H" / "AUROC MI" are against the config's OOD set, "near AUROC H" /
  "near AUROC MI" (shown when a run has one; "-" for a run without) against
  its near-OOD set; a line under the table names the sets of each experiment.
  """
  results = []
  for d in workdirs:
    with open(os.path.join(d, "results.json")) as f:
      results.append(json.load(f))
  near = any("near_ood_auroc" in r for r in results)
  head = ("method", "acc %", "NLL", "Brier", "ECE", "AUROC H", "AUROC MI") + (
      ("near AUROC H", "near AUROC MI") if near else ()) + (
      "train s", "wall s", "peak RSS MB", "stored KB")
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  sets = {}
  for r in results:
    near_cells = tuple(f"{r[k]:.4f}" if k in r else "-" for k in NEAR_TABLE_KEYS) if near else ()
    rows.append("| " + " | ".join((
        r["method"], f"{100 * r['accuracy']:.2f}", f"{r['nll']:.4f}", f"{r['brier']:.4f}",
        f"{r['ece']:.4f}", f"{r['ood_auroc']:.4f}", f"{r['ood_auroc_mi']:.4f}", *near_cells,
        f"{r['train_time_s']:.1f}", f"{r['wall_time_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
        f"{r['bytes_stored'] / 1024:.0f}")) + " |")
    labels = set_labels(r["config"])
    if "near_ood_auroc" not in r:
      labels.pop("near_ood", None)
    line = f"in = {labels['in']}; AUROC vs OOD = {labels['ood']}" + (
        f"; near AUROC vs near-OOD = {labels['near_ood']}" if "near_ood" in labels else "")
    sets.setdefault(line, []).append(r["experiment"])
  rows.append("")
  for line, experiments in sets.items():
    rows.append(f"{', '.join(dict.fromkeys(experiments))}: {line}")
  return "\n".join(rows)


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  if len(sys.argv) < 2:
    sys.exit("usage: python -m supsup_jax.runs.uncertainty WORKDIR [WORKDIR ...]")
  print(table(sys.argv[1:]))
