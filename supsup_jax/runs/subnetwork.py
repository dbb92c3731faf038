"""Runner ``subnetwork``: single-task subnetwork studies, one per config.

``config.method`` means one thing here, a choice of study:

* a comma-separated list of subnetwork methods, ``dense``, ``lottery_ticket``,
  ``zhou_supermask``, ``edge_popup`` (:mod:`supsup_jax.subnetwork.methods`),
  run in that order on one dataset: accuracy vs kept fraction, one curve per
  method and variant. Writes ``curves.csv``, ``accuracy_vs_kept.png`` and
  ``results.json`` (``curves``, ``table``);
* or the name of one study of :data:`STUDIES` (``pac_net``, ``meta_ticket``,
  ``strong_ticket``),
  which runs on its own sub-config (``config.pac_net``, ``config.meta_ticket``).

Each method or study reads its own sub-config and validates it (one-line
``ValueError``, :func:`validate`) before the workdir is claimed or any data is
loaded (epoch-based steps read the dataset's size); a top-level key the chosen
study does not read is refused. Sub-configs named after another method or study
(e.g. ``config.zhou`` in a ``--config.method=lottery_ticket`` run) are not
read.

Every study runs on the run scaffold (:mod:`supsup_jax.runs.scaffold`): the
workdir is locked and bound to this run (another kind of run or another
config there is refused in one line, never overwritten); the study
checkpoints at its resumable points through a :class:`RunSession` (the
subnetwork methods after the dense training, after each lottery-ticket round
and each supermask fraction, after each method's curve; PAC-Net after each
stage; Meta-ticket after each method) and, with
``config.checkpoint_every_steps``, inside trainings every that many steps; the
same command resumes exactly where a killed run stopped (same numbers as an
uninterrupted run). Training runs in chunks of ``config.log_every_steps``
steps (bit-identical to one call), each logged with an ETA and checked: a
non-finite loss or state stops the run with one line (``FloatingPointError``,
exit 3 from ``launch.main``). ``config.stop_after_steps`` > 0 stops (with a
checkpoint) once that many steps were trained in this process. Results that
are not finite are never written (``FloatingPointError``, exit 3).
``results.json`` comes last.

A study is a module with ``validate(config)`` (one-line ``ValueError``s,
before anything is loaded), ``run(config, session) -> dict`` (the results;
it checkpoints through the :class:`supsup_jax.subnetwork.fit.Session` it
gets), and optionally ``KEYS`` (the top-level keys it reads; others are
refused), ``MOVED`` (old flat key -> its sub-config key),
``write_outputs(workdir, results)`` and ``summary(results) -> str``. Adding
one is one line in :data:`STUDIES`.
"""
from __future__ import annotations

import csv
import importlib
import math
import os
import re
import types
from typing import Any, Mapping

from absl import logging
import ml_collections
import numpy as np

from supsup_jax import plotting
from supsup_jax import models
from supsup_jax import state_io
from supsup_jax import weights as weights_lib
from supsup_jax.runs import scaffold
from supsup_jax.subnetwork import fit
from supsup_jax.subnetwork import methods as methods_lib
from supsup_jax.subnetwork import options

KIND = "subnetwork"

# config.method -> the module of a study of its own (see the module doc).
STUDIES: dict[str, str] = {
    "pac_net": "supsup_jax.subnetwork.pac_net",
    "meta_ticket": "supsup_jax.subnetwork.meta_ticket",
    "strong_ticket": "supsup_jax.subnetwork.strong_ticket",
}

# Keys of the run itself, read whatever the study (none changes results).
RUN_KEYS = ("experiment", "runner", "method", "log_every_steps", "checkpoint_every_steps",
            "stop_after_steps")


class Stopped(Exception):
  """``config.stop_after_steps`` reached; a checkpoint was just written."""


# ----------------------------------------------------------------- session --

def _tree_key(name: str, i: int) -> str:
  return f"e{i}_{re.sub(r'[^0-9A-Za-z]+', '_', name).strip('_')}"


class RunSession(fit.Session):
  """A :class:`~supsup_jax.subnetwork.fit.Session` that checkpoints to the
  run's workdir: each ``put`` saves every live entry (arrays under their tree
  paths, JSON meta) as one checkpoint, and a resumed run's ``get`` returns
  what the last one held."""

  def __init__(self, sc: scaffold.Run, config, restored: tuple[Any, dict] | None):
    super().__init__(int(config.get("log_every_steps") or 500))
    self.sc = sc
    self.ckpt_every = int(config.get("checkpoint_every_steps") or 0)
    self.stop_after = int(config.get("stop_after_steps") or 0)
    self.steps_this_process = 0
    self.saves = 0
    self.progress = scaffold.Progress(0)
    self._entries: dict[str, tuple[Any, dict]] = {}
    if restored is not None:
      tree, meta = restored
      for name, entry in meta["entries"].items():
        key = entry.get("key")
        self._entries[name] = (tree[key] if key is not None else None, entry["meta"])
      self.saves, self.steps_done = int(meta["saves"]), int(meta["steps_done"])
      self.last_good = f"resumable from the checkpoint at {meta['where']}"
      logging.info("Resuming from the checkpoint at %s (workdir %s)", meta["where"], sc.workdir)

  def get(self, name: str) -> tuple[Any, dict] | None:
    return self._entries.get(name)

  def drop(self, name: str) -> None:
    self._entries.pop(name, None)

  def put(self, name: str, tree: Any = None, meta: Mapping | None = None, *,
          where: str = "") -> None:
    self._entries[name] = (tree, dict(meta or {}))
    arrays, index = {}, {}
    for i, (n, (t, m)) in enumerate(self._entries.items()):
      saveable = state_io.to_saveable(t) if t is not None else {}
      key = _tree_key(n, i) if saveable else None
      if key is not None:
        arrays[key] = saveable
      index[n] = {"key": key, "meta": m}
    self.saves += 1
    self.sc.save(self.saves, arrays or {"none": np.zeros((), np.int8)},
                 {"entries": index, "saves": self.saves, "steps_done": self.steps_done,
                  "global_step": self.steps_done, "where": where})
    self.last_good = f"resumable from the checkpoint at {where}"
    if self.sc.stop_signal is not None:  # SIGINT/SIGTERM: saved, now stop
      raise self.sc.interruption(where)
    if self.stop_after and self.steps_this_process >= self.stop_after:
      raise Stopped(where)

  def plan(self, total_steps: int) -> None:
    self.progress = scaffold.Progress(max(int(total_steps), self.steps_done), self.steps_done)

  def chunk(self, done: int, num_steps: int) -> int:
    n = min(self.chunk_steps, num_steps - done)
    if self.ckpt_every:
      n = min(n, self.ckpt_every - done % self.ckpt_every)
    if self.stop_after and self.steps_this_process < self.stop_after:
      n = min(n, self.stop_after - self.steps_this_process)
    return max(1, n)

  def advance(self, label: str, n: int, done: int, total: int, loss: float) -> bool:
    self.steps_done += int(n)
    self.steps_this_process += int(n)
    self.progress.done = self.steps_done
    self.progress.report(f"{label} (run {self.steps_done}/{self.progress.total} steps)",
                         done, total, {"loss": loss})
    self.sc.scalars(self.steps_done, {"train/loss": float(loss)})
    # A checkpoint is due: every ckpt_every steps, at stop_after_steps, or at
    # this chunk boundary when a signal asked the run to stop.
    return bool((self.ckpt_every and done % self.ckpt_every == 0)
                or (self.stop_after and self.steps_this_process >= self.stop_after)
                or self.sc.stop_signal is not None)


# ------------------------------------------------------------ the curves --

CURVES_KEYS = ("dataset", "data_dir", "download", "model", "model_options", "seed",
               "kept_fractions", "init", "optimizer", "learning_rate", "momentum",
               "weight_decay", "batch_size", "iterations", "epochs",
               *methods_lib.SUBCONFIG_KEYS)


def method_names(config) -> list[str]:
  return [m.strip() for m in str(config.method).split(",") if m.strip()]


def _validate_curves(config) -> None:
  names = options.comma_list(config, "method", methods_lib.METHODS)
  from supsup_jax.data import single_task  # pylint: disable=import-outside-toplevel
  options.choice(config, "dataset", single_task.DATASETS)
  options.weight_training(config)
  options.fractions(config, "kept_fractions")
  options.iterations_or_epochs(config)
  methods_lib.validate(config, names, _steps_per_training(config))
  _check_model_is_all_kernels(config)


# Input shape and classes of the single-task datasets (for checks before loading).
_DATASET_SHAPES = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10),
                   "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100)}


def _check_model_is_all_kernels(config) -> None:
  """The model's parameter shapes (traced, nothing computed) are all kernels."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shape, classes = _DATASET_SHAPES.get(config.dataset, (None, None))
  if shape is None:
    return  # checked on the built model
  model = models.make_model(config.model, classes, **dict(config.get("model_options") or {}))
  try:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"config.model {config.model!r} with model_options "
                     f"{dict(config.get('model_options') or {})} cannot take "
                     f"{config.dataset} images: {type(e).__name__}: {e}".splitlines()[0]) from None
  if set(variables) != {"params"}:
    raise ValueError(f"subnetwork methods need a model without state such as batch norm "
                     f"statistics; config.model {config.model!r} has {sorted(variables)}")
  methods_lib.check_all_kernels(variables["params"])


def _steps_per_training(config) -> int:
  """Steps of one training (the dataset's size is read for epochs: before the
  workdir is claimed, so a config refused for it leaves the workdir untouched)."""
  if int(config.iterations) > 0:
    return int(config.iterations)
  from supsup_jax.data.sources import load_dataset  # pylint: disable=import-outside-toplevel
  data = load_dataset(config.dataset, config.get("data_dir") or None,
                      bool(config.get("download", False)))  # cached in the process
  return options.train_steps(0, config.epochs, len(data["train"][1]), config.batch_size)


def build(config, session: fit.Session | None = None) -> methods_lib.Setup:
  """The dataset, model and initial weights every method of ``config`` shares."""
  from supsup_jax.data.single_task import single_task_stream  # pylint: disable=import-outside-toplevel
  stream = single_task_stream(config.dataset, config.seed, config.get("data_dir") or None,
                              bool(config.get("download", False)))
  model = models.make_model(config.model, stream.num_classes,
                            **dict(config.get("model_options") or {}))
  example = np.zeros((1, *stream.input_shape), np.float32)
  init_params = weights_lib.init_weights(model, int(config.seed), example, init=config.init)
  methods_lib.check_all_kernels(init_params)
  mask_weights = weights_lib.init_weights(model, int(config.seed), example,
                                          init=config.supermask.init)
  reinit = weights_lib.init_weights(model, int(config.seed) + 1, example, init=config.init)
  x_test, y_test = stream.test_arrays(0)
  steps = options.train_steps(config.iterations, config.get("epochs", 0.0),
                              stream.train_size(0), config.batch_size)
  return methods_lib.Setup(model=model, stream=stream, x_test=x_test, y_test=y_test,
                           init_params=init_params, mask_weights=mask_weights,
                           reinit_params=reinit, config=config, steps=steps,
                           session=session or fit.Session())


def _run_curves(config, session: fit.Session) -> dict:
  names = method_names(config)
  setup = build(config, session)
  session.plan(methods_lib.planned_steps(config, names, setup.steps))
  saved = session.get("curves")
  curves: dict[str, list] = dict(saved[1]["curves"]) if saved else {}
  done: list[str] = list(saved[1]["done"]) if saved else []
  for name in names:
    if name in done:
      continue
    curves.update(methods_lib.METHODS[name](setup))
    done.append(name)
    session.drop(name)  # its own progress entry
    session.put("curves", None, {"curves": curves, "done": done},
                where=f"the end of {name}")
    logging.info("%s: done", name)
  return {"experiment": config.get("experiment") or "subnetwork",
          "dataset": config.dataset, "model": config.model, "steps": setup.steps,
          "curves": curves, "table": table(curves, config.kept_fractions)}


def _curves_outputs(workdir: str, results: dict) -> None:
  write_csv(os.path.join(workdir, "curves.csv"), results["curves"])
  c = results["config"]
  plot(os.path.join(workdir, "accuracy_vs_kept.png"), results["curves"],
       f"{c['model']} on {c['dataset']}, {results['steps']} steps per training")


CURVES = types.SimpleNamespace(
    KEYS=CURVES_KEYS, MOVED=methods_lib.MOVED, validate=_validate_curves, run=_run_curves,
    write_outputs=_curves_outputs,
    summary=lambda r: format_table(r["table"], r["config"]["kept_fractions"]))


# ---------------------------------------------------------------- the runner --

def study_of(config):
  """The study ``config.method`` chooses: one of :data:`STUDIES`, or the curves
  of a list of subnetwork methods."""
  names = method_names(config)
  if len(names) == 1 and names[0] in STUDIES:
    return importlib.import_module(STUDIES[names[0]])
  for n in names:
    if n not in methods_lib.METHODS:
      raise ValueError(f"config.method {n!r} unknown; allowed: a comma list of "
                       f"{', '.join(methods_lib.METHODS)}, or one of {', '.join(STUDIES)}")
  return CURVES


def _check_top_keys(config, study) -> None:
  """Refuses a top-level key the study would silently ignore (a key that moved
  into a sub-config says where to)."""
  options.refuse_moved(config, getattr(study, "MOVED", {}))
  keys = getattr(study, "KEYS", None)
  if keys is None:
    return
  allowed = set(RUN_KEYS) | set(keys)
  others = set(methods_lib.METHODS) | set(STUDIES) | set(methods_lib.SUBCONFIG_KEYS)
  for key in config.keys():
    if key in allowed or (key in others and hasattr(config[key], "keys")):
      continue  # another method's or study's sub-config is not read
    raise ValueError(f"config.{key} is not read by the subnetwork runner with "
                     f"config.method={config.method!r}; remove it or choose the study that "
                     "reads it")


def _check_run_keys(config) -> None:
  for key, low in (("log_every_steps", 1), ("checkpoint_every_steps", 0),
                   ("stop_after_steps", 0)):
    if key in config:
      options.integer(config, key, low=low)


def _non_finite(value, path: str = "") -> list[str]:
  if isinstance(value, float):
    return [] if math.isfinite(value) else [path or "results"]
  if isinstance(value, Mapping):
    return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}" if path else str(k))]
  if isinstance(value, (list, tuple)):
    return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}[{i}]")]
  return []


def validate(config):
  """Checks every key of ``config`` (one-line ``ValueError``) before anything is
  loaded or any workdir touched; returns the study it chooses."""
  study = study_of(config)
  _check_top_keys(config, study)
  _check_run_keys(config)
  study.validate(config)  # its sub-config and values
  return study


def run(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the study of ``config`` in ``workdir``; returns its results
  (``{"complete": False, ...}`` when stopped by ``config.stop_after_steps``)."""
  config = ml_collections.ConfigDict(config)
  study = validate(config)
  with scaffold.open_run(workdir, config, kind=KIND, stops_at_boundaries=True) as sc:
    if sc.finished is not None:
      logging.info("%s: finished before; results in %s", config.get("experiment"), workdir)
      return sc.finished
    session = RunSession(sc, config, sc.restore())
    try:
      results = study.run(config, session)
    except Stopped as stop:
      logging.info("Stopped after %d steps (config.stop_after_steps) at %s; the same "
                   "command resumes", session.steps_this_process, stop)
      return {"complete": False, "steps_this_process": session.steps_this_process}
    bad = _non_finite({k: v for k, v in results.items() if k != "config"})
    if bad:
      raise FloatingPointError(
          f"the study's results are not finite at {', '.join(bad[:5])}; results.json not "
          f"written ({session.last_good}); check the study's settings")
    results = {"experiment": config.get("experiment") or KIND, **results,
               "config": config.to_dict()}
    outputs = getattr(study, "write_outputs", None)
    results = sc.finish(results, (lambda r: outputs(workdir, r)) if outputs else None)
  summary = getattr(study, "summary", None)
  if summary is not None:
    print(summary(results), flush=True)
  return results


# ------------------------------------------------------------------ outputs --

def table(curves, kept_fractions) -> dict[str, dict[str, float | None]]:
  """{curve: {requested fraction: accuracy of the point nearest it in
  log-distance (within a factor 1.5), or None}}."""
  out = {}
  for name, pts in curves.items():
    row = {}
    for f in sorted({float(x) for x in kept_fractions}, reverse=True):
      best = min(pts, key=lambda p: abs(math.log(max(p["kept_fraction"], 1e-9) / f)), default=None)
      ok = best is not None and abs(math.log(max(best["kept_fraction"], 1e-9) / f)) <= math.log(1.5)
      row[f"{f:g}"] = best["accuracy"] if ok else None
    out[name] = row
  return out


def format_table(tab, kept_fractions) -> str:
  cols = [f"{float(f):g}" for f in sorted({float(x) for x in kept_fractions}, reverse=True)]
  lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, row in tab.items():
    cells = ["-" if row[c] is None else f"{100 * row[c]:.2f}" for c in cols]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(path: str, curves) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["curve", "kept_fraction", "accuracy"])
    for name, pts in curves.items():
      for p in pts:
        w.writerow([name, f"{p['kept_fraction']:.6f}", f"{p['accuracy']:.6f}"])
  os.replace(tmp, path)


def plot(path: str, curves, title: str) -> None:
  """Accuracy (0..100 %, full range) vs kept fraction (log axis, labelled)."""
  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for name, pts in curves.items():
    pts = sorted(pts, key=lambda p: p["kept_fraction"])
    ax.plot([p["kept_fraction"] for p in pts], [100 * p["accuracy"] for p in pts],
            marker="o", label=name)
  ax.set_xscale("log")  # kept fractions span 0.05..1; the axis says so
  ax.set_xlabel("fraction of weights kept (log scale)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  plotting.save_atomic(fig, path)
