"""Runner of the uncertainty study (``config.runner = "uncertainty"``).

One run trains one method (``config.method``) on an in-distribution dataset,
then measures on its test set accuracy, NLL, Brier and 15-bin ECE, and the OOD
AUROC of predictive entropy and of mutual information against an
out-of-distribution set (another dataset, or held-out classes of the same one).

Writes to the workdir: ``results.json`` (the metrics, ``train_time_s``,
``eval_time_s``, ``wall_time_s``, ``peak_rss_mb``, ``bytes_stored`` and the
resolved config), ``metrics.csv`` (one row), ``reliability.csv`` (per bin),
``reliability.png`` and ``entropy_hist.png``. ``peak_rss_mb`` is the process's
high-water mark (``getrusage`` maxrss), so run one method per process to compare
methods; ``peak_rss_mb_after_data`` is the same mark before training starts.
Runs take minutes, so there is no checkpointing: running again recomputes.
"""
from __future__ import annotations

import csv
import os
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from supsup_jax import masks as masks_lib
from supsup_jax.data import NORM, InMemoryStream, load_dataset
from supsup_jax.metrics import write_json_atomic
from supsup_jax.training import make_optimizer
from supsup_jax.uncertainty import calibration
from supsup_jax.uncertainty import masksembles as masksembles_lib
from supsup_jax.uncertainty import members as members_lib
from supsup_jax.data import transforms

DATASETS = ("mnist", "fashion_mnist", "cifar10")
_KEY_INIT, _KEY_TRAIN, _KEY_EVAL = 0, 1, 2


def _peak_rss_mb() -> float:
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _classes(value) -> list[int]:
  return [int(c) for c in (value or ())]


def validate(config) -> None:
  """Every check that needs no data; one-line ``ValueError`` naming the fix."""
  if config.method not in members_lib.METHODS:
    raise ValueError(f"config.method {config.method!r} unknown; allowed: "
                     f"{', '.join(members_lib.METHODS)}")
  for key in ("dataset", "ood_dataset"):
    if config[key] not in DATASETS:
      raise ValueError(f"config.{key} {config[key]!r} unknown; allowed: {', '.join(DATASETS)}")
  for key in ("num_members", "mc_samples", "batch_size", "train_steps", "steps_per_call",
              "eval_batch_size"):
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"config.{key} must be an int >= 1, got {value!r}")
  if not config.learning_rate > 0 or not config.supermask_learning_rate > 0:
    raise ValueError("config.learning_rate and config.supermask_learning_rate must be > 0, got "
                     f"{config.learning_rate!r}, {config.supermask_learning_rate!r}")
  id_cls, ood_cls = _classes(config.id_classes), _classes(config.ood_classes)
  if config.ood_dataset == config.dataset:
    if not id_cls or not ood_cls or set(id_cls) & set(ood_cls):
      raise ValueError("with ood_dataset == dataset, id_classes and ood_classes must be "
                       f"non-empty and disjoint, got {id_cls} and {ood_cls}")
  if id_cls and len(id_cls) < 2:
    raise ValueError(f"config.id_classes needs >= 2 classes, got {id_cls}")
  if config.method == "mc_dropout" and not 0.0 < config.dropout_rate < 1.0:
    raise ValueError(f"config.dropout_rate must be in (0, 1), got {config.dropout_rate!r}")
  if config.method == "masksembles":
    if config.batch_size % config.num_members:
      raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of "
                       f"num_members={config.num_members} (Masksembles splits each batch "
                       "into N groups)")
    for width in config.hidden:
      masksembles_lib.generate_masks(int(width), config.num_members, config.masksembles_scale,
                                     seed=config.seed)
  if config.method == "supermask_ensemble":
    if config.mask_kind not in masks_lib.MASK_KINDS:
      raise ValueError(f"config.mask_kind {config.mask_kind!r} unknown; allowed: "
                       f"{', '.join(masks_lib.MASK_KINDS)}")
    masks_lib.check_fraction(config.topk_fraction, "config.topk_fraction")


def load_data(config, num_streams: int):
  """Training stream with ``num_streams`` batch orders, ID test set, OOD inputs.

  OOD inputs are normalised with the in-distribution statistics: the network
  sees them through the same preprocessing as its own data.
  """
  data = load_dataset(config.dataset, config.data_dir or None, config.download)
  mean, std = NORM[config.dataset]
  id_cls = _classes(config.id_classes)
  # Member k trains on "task" k: same data, its own shuffle (fold_in(seed, k)).
  stream = InMemoryStream(
      name=config.dataset, data=data, num_tasks=num_streams, seed=config.seed,
      mean=mean, std=std, task_classes=[id_cls] * num_streams if id_cls else None,
      shared_labels=False)
  x_test, y_test = stream.test_arrays(0)
  ood = data if config.ood_dataset == config.dataset else load_dataset(
      config.ood_dataset, config.data_dir or None, config.download)
  x_ood, y_ood = ood["test"]
  ood_cls = _classes(config.ood_classes)
  if ood_cls:
    x_ood = x_ood[np.isin(y_ood, ood_cls)]
  x_ood = np.asarray(transforms.normalize(x_ood, mean, std))
  num_classes = len(id_cls) if id_cls else int(data["num_classes"])
  return stream, np.asarray(x_test), np.asarray(y_test), x_ood.astype(np.float32), num_classes


def build_method(config, input_shape, num_classes) -> members_lib.Method:
  return members_lib.make_method(
      config.method, input_shape=input_shape, num_classes=num_classes,
      hidden=tuple(config.hidden), num_members=config.num_members,
      mc_samples=config.mc_samples, dropout_rate=config.dropout_rate,
      masksembles_scale=config.masksembles_scale, mask_kind=config.mask_kind,
      topk_fraction=config.topk_fraction, weights_seed=config.weights_seed,
      masks_seed=config.seed)


def train(config, method: members_lib.Method, stream) -> tuple[Any, list[float]]:
  """Trains all members; returns (params with member axis, mean loss per call)."""
  if method.name == "supermask_ensemble":
    opt = make_optimizer(config.supermask_optimizer, config.supermask_learning_rate)
  else:
    opt = make_optimizer(config.optimizer, config.learning_rate)
  key = jax.random.key(config.seed)
  params = members_lib.init_members(method, jax.random.fold_in(key, _KEY_INIT))
  opt_state = jax.vmap(opt.init)(params)
  batch_fn, arrays = stream.train_batch_fn_args(config.batch_size)
  trainer = members_lib.make_trainer(method, opt, batch_fn)
  train_key = jax.random.fold_in(key, _KEY_TRAIN)
  losses, step, t0 = [], 0, time.time()
  while step < config.train_steps:
    n = min(config.steps_per_call, config.train_steps - step)
    params, opt_state, loss = trainer(params, opt_state, method.frozen, arrays, train_key,
                                      jnp.int32(step), num_steps=n)
    step += n
    losses.append(float(jnp.mean(loss)))
    logging.info("%s: step %d/%d, loss %.4f, %.1fs", method.name, step, config.train_steps,
                 losses[-1], time.time() - t0)
  return params, losses


def run(config, workdir: str) -> dict:
  """Trains ``config.method`` and writes its uncertainty metrics and plots."""
  t_start = time.time()
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  num_streams = config.num_members if config.method in ("deep_ensemble",
                                                        "supermask_ensemble") else 1
  stream, x_test, y_test, x_ood, num_classes = load_data(config, num_streams)
  rss_after_data = _peak_rss_mb()
  method = build_method(config, stream.input_shape, num_classes)

  t_train = time.time()
  params, losses = train(config, method, stream)
  jax.block_until_ready(params)
  train_time = time.time() - t_train

  t_eval = time.time()
  eval_key = jax.random.fold_in(jax.random.key(config.seed), _KEY_EVAL)
  lp_in = members_lib.predict_dataset(method, params, x_test, jax.random.fold_in(eval_key, 0),
                                      config.eval_batch_size)
  lp_ood = members_lib.predict_dataset(method, params, x_ood, jax.random.fold_in(eval_key, 1),
                                       config.eval_batch_size)
  scores = calibration.summarize(lp_in, y_test, lp_ood, config.num_bins)
  eval_time = time.time() - t_eval

  p_in = np.exp(calibration.mean_log_probs(lp_in))
  bins = calibration.reliability_bins(p_in, y_test, config.num_bins)
  h_in = calibration.entropy_from_log_probs(calibration.mean_log_probs(lp_in))
  h_ood = calibration.entropy_from_log_probs(calibration.mean_log_probs(lp_ood))
  mi_in, mi_ood = calibration.mutual_information(lp_in), calibration.mutual_information(lp_ood)

  results = {
      "experiment": config.experiment, "method": config.method,
      "dataset": config.dataset, "ood_dataset": config.ood_dataset,
      "num_members": method.num_members, "predictions_per_input": method.num_predictions,
      **scores,
      "train_time_s": train_time, "eval_time_s": eval_time,
      "wall_time_s": time.time() - t_start,
      "peak_rss_mb": _peak_rss_mb(), "peak_rss_mb_after_data": rss_after_data,
      "bytes_stored": members_lib.bytes_stored(method, params),
      "final_train_loss": losses[-1], "train_loss_per_call": losses,
      "num_test": int(len(y_test)), "num_ood": int(len(x_ood)),
      "config": config.to_dict(),
  }
  _write_csvs(workdir, results, bins)
  title = f"{config.experiment}: {config.method}"
  plot_reliability(os.path.join(workdir, "reliability.png"), bins, title, scores["ece"])
  plot_entropy_hist(os.path.join(workdir, "entropy_hist.png"), h_in, h_ood, mi_in, mi_ood,
                    num_classes, title, config.dataset, config.ood_dataset)
  results["wall_time_s"] = time.time() - t_start
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results


TABLE_KEYS = ("accuracy", "nll", "brier", "ece", "ood_auroc", "ood_auroc_mi",
              "train_time_s", "wall_time_s", "peak_rss_mb", "bytes_stored")


def _write_csvs(workdir, results, bins) -> None:
  path = os.path.join(workdir, "metrics.csv")
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(("method",) + TABLE_KEYS)
    w.writerow((results["method"],) + tuple(results[k] for k in TABLE_KEYS))
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


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def plot_reliability(path: str, bins: dict, title: str, ece: float) -> None:
  """Accuracy vs confidence per bin (full [0, 1] axes) over the share of examples."""
  plt = _pyplot()
  e, count = bins["edges"], bins["count"]
  centers, width = 0.5 * (e[1:] + e[:-1]), e[1] - e[0]
  full = count > 0
  fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(5, 6.5), sharex=True,
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
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_entropy_hist(path: str, h_in, h_ood, mi_in, mi_ood, num_classes: int, title: str,
                      in_name: str, ood_name: str) -> None:
  """Histograms of predictive entropy and mutual information, in vs OOD, both on
  the full range [0, log C] (the largest possible value of either)."""
  plt = _pyplot()
  top = float(np.log(num_classes))
  edges = np.linspace(0.0, top, 41)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, (a, b, name) in zip(axes, ((h_in, h_ood, "predictive entropy H[p̄] (nats)"),
                                     (mi_in, mi_ood, "mutual information (nats)"))):
    ax.hist(np.clip(a, 0, top), edges, alpha=0.6, density=True, label=f"in: {in_name}")
    ax.hist(np.clip(b, 0, top), edges, alpha=0.6, density=True, label=f"OOD: {ood_name}")
    ax.set(xlim=(0, top), xlabel=name, ylabel="density")
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(workdirs) -> str:
  """Markdown table of several runs' results.json (one row per workdir)."""
  import json  # pylint: disable=import-outside-toplevel
  head = ("method", "acc %", "NLL", "Brier", "ECE", "AUROC H", "AUROC MI", "train s",
          "wall s", "peak RSS MB", "stored KB")
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for d in workdirs:
    with open(os.path.join(d, "results.json")) as f:
      r = json.load(f)
    rows.append("| " + " | ".join((
        r["method"], f"{100 * r['accuracy']:.2f}", f"{r['nll']:.4f}", f"{r['brier']:.4f}",
        f"{r['ece']:.4f}", f"{r['ood_auroc']:.4f}", f"{r['ood_auroc_mi']:.4f}",
        f"{r['train_time_s']:.1f}", f"{r['wall_time_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
        f"{r['bytes_stored'] / 1024:.0f}")) + " |")
  return "\n".join(rows)


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  if len(sys.argv) < 2:
    sys.exit("usage: python -m supsup_jax.runs.uncertainty WORKDIR [WORKDIR ...]")
  print(table(sys.argv[1:]))
