"""Runner ``subnetwork``: one subnetwork study per config (single task).

``config.method``: a comma-separated list of ``dense``, ``lottery_ticket``,
``zhou_supermask``, ``edge_popup`` (accuracy vs kept fraction, one curve per
method and variant), or one of ``pac_net`` / ``meta_ticket`` (their own
studies, see those modules). Writes ``results.json`` (atomic), ``curves.csv``
and ``accuracy_vs_kept.png`` to the workdir.
"""
from __future__ import annotations

import csv
import math
import os
import time
from typing import Any

import numpy as np

from supsup_jax import metrics
from supsup_jax import models
from supsup_jax import weights as weights_lib
from supsup_jax.data.single_task import single_task_stream
from supsup_jax.subnetwork import methods as methods_lib
from supsup_jax.subnetwork import pruning

STUDIES = ("pac_net", "meta_ticket")


def steps_of(config, stream) -> int:
  if config.get("iterations"):
    return int(config.iterations)
  return int(math.ceil(float(config.epochs) * stream.train_size(0) / int(config.batch_size)))


def _validate(config, methods) -> None:
  for m in methods:
    if m not in methods_lib.METHODS:
      raise ValueError(f"config.method {m!r} unknown; allowed: "
                       f"{', '.join(list(methods_lib.METHODS) + list(STUDIES))}")
  for f in config.kept_fractions:
    if not 0.0 < float(f) <= 1.0:
      raise ValueError(f"kept_fractions entries must be in (0, 1], got {f!r}")
  pruning.check_rate(config.lt_prune_rate, "lt_prune_rate")
  if not 0.0 <= float(config.lt_output_rate_factor) <= 1.0:
    raise ValueError(f"lt_output_rate_factor must be in [0, 1], got {config.lt_output_rate_factor!r}")
  if config.lt_scope not in ("layer", "global"):
    raise ValueError(f"lt_scope must be 'layer' or 'global', got {config.lt_scope!r}")
  if int(config.iterations) <= 0:
    raise ValueError(f"iterations must be >= 1, got {config.iterations!r}")
  if not 0 <= int(config.lt_rewind_iteration) <= int(config.iterations):
    raise ValueError(f"lt_rewind_iteration={config.lt_rewind_iteration} is beyond the training "
                     f"length; allowed: 0..{config.iterations} (config.iterations)")


def build(config) -> methods_lib.Setup:
  data_dir = config.get("data_dir") or None
  stream = single_task_stream(config.dataset, config.seed, data_dir,
                              bool(config.get("download", False)))
  model = models.make_model(config.model, stream.num_classes,
                            **dict(config.get("model_options") or {}))
  example = np.zeros((1, *stream.input_shape), np.float32)
  init_params = weights_lib.init_weights(model, int(config.seed), example, init=config.init)
  methods_lib.check_all_kernels(init_params)
  mask_weights = weights_lib.init_weights(model, int(config.seed), example, init=config.mask_init)
  reinit = weights_lib.init_weights(model, int(config.seed) + 1, example, init=config.init)
  x_test, y_test = stream.test_arrays(0)
  return methods_lib.Setup(model=model, stream=stream, x_test=x_test, y_test=y_test,
                           init_params=init_params, mask_weights=mask_weights,
                           reinit_params=reinit, config=config, steps=steps_of(config, stream))


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the study in ``config`` and writes its outputs to ``workdir``."""
  names = [m.strip() for m in str(config.method).split(",") if m.strip()]
  if len(names) == 1 and names[0] in STUDIES:
    os.makedirs(workdir, exist_ok=True)
    if names[0] == "pac_net":
      from supsup_jax.subnetwork import pac_net  # pylint: disable=import-outside-toplevel
      return pac_net.run(config, workdir)
    from supsup_jax.subnetwork import meta_ticket  # pylint: disable=import-outside-toplevel
    return meta_ticket.run(config, workdir)
  _validate(config, names)
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  setup = build(config)
  curves: dict[str, list] = {}
  for name in names:
    t = time.time()
    curves.update(methods_lib.METHODS[name](setup))
    print(f"{name}: done in {time.time() - t:.0f}s", flush=True)
  results = {
      "experiment": config.get("experiment") or "subnetwork",
      "runner": "subnetwork",
      "dataset": config.dataset,
      "model": config.model,
      "steps": setup.steps,
      "curves": curves,
      "table": table(curves, config.kept_fractions),
      "wall_time_s": time.time() - t0,
      "config": config.to_dict(),
  }
  metrics.write_json_atomic(os.path.join(workdir, "results.json"), results)
  write_csv(os.path.join(workdir, "curves.csv"), curves)
  plot(os.path.join(workdir, "accuracy_vs_kept.png"), curves,
       f"{config.model} on {config.dataset}, {setup.steps} steps per training")
  print(format_table(results["table"], config.kept_fractions))
  return results


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
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4.5))
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
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)
