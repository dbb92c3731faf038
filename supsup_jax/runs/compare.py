r"""Several continual learners on one experiment, side by side.

:func:`compare` runs each entry in ``<workdir>/<name>`` through the
continual loop (:mod:`supsup_jax.runs.continual`: a finished run is reused, an
interrupted one resumes, one of another config is refused) and writes to
``<workdir>``. An entry is a registered method (``config.method``) or a named
variant of one (:data:`supsup_jax.methods.VARIANTS`, e.g. ``supsup_transfer``
= ``supsup`` with ``config.supsup.transfer=True``), labelled by its name; its
config is :func:`supsup_jax.methods.entry_config`, the same one ``launch.main``
runs with the variant's overrides as flags, so such a finished run moved into
``<workdir>/<name>`` is reused.

* ``comparison.csv``: one row per entry: final average accuracy, forgetting,
  bytes per task, shared bytes, storage per task, total bytes, mean wall time
  per task;
* ``comparison.json``: the same plus each method's average-accuracy curve;
* ``comparison.png``: average accuracy vs tasks learned (one line per
  method) and final accuracy vs storage per task (log axis), both with the
  accuracy axis from 0 to 100 %.

Storage per task = ``bytes_per_task + bytes_shared / num_tasks``: what each
task costs, with what is stored once (a trained network; nothing for a
network given by its seed) spread over the tasks. Total bytes = storage per
task x ``num_tasks`` = ``bytes_per_task * num_tasks + bytes_shared``: all a
method stores after the last task (the x axis of the paper's Figure 2). The
comparison's workdir is locked while it runs and must not hold a run of its
own.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
import numpy as np

from supsup_jax import workdir as workdir_lib
from supsup_jax import plotting

CSV_FIELDS = ("method", "num_tasks", "avg_accuracy", "forgetting", "bytes_per_task",
              "bytes_shared", "storage_per_task", "total_bytes", "wall_time_per_task_s",
              "task_inference_accuracy", "workdir")


# ------------------------------------------------------------------ checks --

def check_methods(methods: Sequence[str], config, stream_fn: Callable[[], Any]) -> None:
  """One-line ValueError for an unknown entry (a method or a variant), one
  whose overrides the config lacks, or one that cannot serve the config's
  scenario (naming those that can). ``stream_fn`` builds the data stream,
  only when a learner has to be built to tell."""
  from supsup_jax import learner as learner_lib  # pylint: disable=import-outside-toplevel
  from supsup_jax import methods as methods_lib  # pylint: disable=import-outside-toplevel
  unknown = [m for m in methods if m not in methods_lib.entry_names()]
  if unknown:
    raise ValueError(f"unknown method {unknown[0]!r}; allowed: "
                     f"{', '.join(methods_lib.entry_names())}")
  if len(set(methods)) != len(methods):
    raise ValueError(f"--methods lists a method twice: {','.join(methods)}")
  configs = {m: methods_lib.entry_config(m, config) for m in methods}
  scenario = config.get("scenario", "GG")
  if scenario == "GG" or not methods:
    return  # every learner serves GG
  stream = stream_fn()

  def can_serve(name) -> bool:
    try:
      cfg = configs.get(name) or methods_lib.entry_config(name, config)
      return learner_lib.serves(methods_lib.make_learner(cfg.method, cfg, stream), scenario)
    except Exception:  # pylint: disable=broad-except
      return False  # a method that cannot even be built for this config cannot serve it

  for m in methods:
    if not can_serve(m):
      able = [n for n in methods_lib.entry_names() if n != m and can_serve(n)]
      raise ValueError(f"method {m!r} cannot serve scenario {scenario} of "
                       f"{config.get('experiment') or 'this config'}; methods that can: "
                       f"{', '.join(able) or 'none'}")


# ----------------------------------------------------------------- results --

def _mean(x) -> float | None:
  if x is None:
    return None
  if isinstance(x, (list, tuple)):
    vals = [v for v in x if v is not None]
    return float(np.mean(vals)) if vals else None
  return float(x)


def load_run(workdir: str, name: str | None = None) -> dict:
  """One run's comparison entry from its ``results.json``, labelled ``name``
  (default: the variant or method the recorded config is, see
  :func:`supsup_jax.methods.entry_name`)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no results.json (not a finished run)")
  with open(path) as f:
    r = json.load(f)
  missing = [k for k in ("avg_accuracy", "accuracy_matrix", "eval_after_tasks")
             if k not in r]
  if missing:
    raise ValueError(f"{path} lacks {', '.join(missing)}")
  method = r.get("method") or (r.get("config") or {}).get("method") or os.path.basename(
      os.path.normpath(workdir))
  if name is None:
    from supsup_jax import methods as methods_lib  # pylint: disable=import-outside-toplevel
    name = methods_lib.entry_name(method, r.get("config") or {})
  num_tasks = int(r.get("num_tasks") or len(r["accuracy_matrix"][-1]))
  curve = [_mean(row) for row in r["accuracy_matrix"]]
  bytes_per_task = r.get("bytes_per_task")
  shared = r.get("bytes_shared") or 0
  storage = None if bytes_per_task is None else float(bytes_per_task) + shared / num_tasks
  return {
      "method": name,
      "base_method": method,
      "num_tasks": num_tasks,
      "avg_accuracy": float(r["avg_accuracy"]),
      "forgetting": _mean(r.get("forgetting")),
      "bytes_per_task": bytes_per_task,
      "bytes_shared": shared,
      "storage_per_task": storage,
      "total_bytes": None if storage is None else storage * num_tasks,
      "wall_time_per_task_s": _mean(r.get("wall_time_per_task_s")),
      "task_inference_accuracy": _mean(r.get("task_inference_accuracy")),
      "workdir": os.path.abspath(workdir),
      "experiment": r.get("experiment"),
      "scenario": r.get("scenario"),
      "steps_per_task": r.get("steps_per_task"),
      "config": r.get("config") or {},
      "curve": {"tasks_learned": [int(t) for t in r["eval_after_tasks"]],
                "avg_accuracy": curve},
  }


def _is_finished(workdir: str, config) -> bool:
  """Whether ``workdir`` holds a finished run of ``config``: the same keys
  that change results, as the run scaffold compares them (keys added later
  at their neutral default, e.g. ``weights_from=""``, and keys that do not
  change results, e.g. ``progress``, do not count)."""
  from supsup_jax import checkpoint  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    r = json.load(f)
  same = json.loads(json.dumps(config.to_dict(), default=str))
  return ("avg_accuracy" in r and isinstance(r.get("config"), dict)
          and not checkpoint.config_diff(r["config"], same))


# ----------------------------------------------------------------- outputs --

def write_outputs(out_dir: str, entries: Sequence[Mapping], title: str = "") -> dict:
  """Writes comparison.csv / .json / .png to ``out_dir``; returns the paths."""
  from supsup_jax import metrics  # pylint: disable=import-outside-toplevel
  if not entries:
    raise ValueError("nothing to compare: give --methods and/or --runs")
  os.makedirs(out_dir, exist_ok=True)
  paths = {ext: os.path.join(out_dir, f"comparison.{ext}") for ext in ("csv", "json", "png")}
  tmp = paths["csv"] + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for e in entries:
      w.writerow({k: ("" if e.get(k) is None else e.get(k)) for k in CSV_FIELDS})
  os.replace(tmp, paths["csv"])
  _plot(paths["png"], entries, title)
  metrics.write_json_atomic(paths["json"], {"title": title, "methods": list(entries)})
  return paths


def _plot(path: str, entries: Sequence[Mapping], title: str) -> None:
  plt = plotting.pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
  max_tasks = 1
  for i, e in enumerate(entries):
    color = f"C{i % 10}"
    xs = [0] + list(e["curve"]["tasks_learned"])
    ys = [None] + [None if v is None else 100 * v for v in e["curve"]["avg_accuracy"]]
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    max_tasks = max(max_tasks, max(x for x, _ in pts))
    ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color,
             label=f"{e['method']} ({100 * e['avg_accuracy']:.1f}%)")
    if e.get("storage_per_task"):
      ax2.scatter([e["storage_per_task"]], [100 * e["avg_accuracy"]], color=color, s=50)
      ax2.annotate(e["method"], (e["storage_per_task"], 100 * e["avg_accuracy"]),
                   textcoords="offset points", xytext=(5, 5), fontsize=8)
  ax1.set(xlabel="tasks learned", ylabel="average accuracy (%)", ylim=(0, 100),
          xlim=(0, max_tasks + 0.5), title="average accuracy over the tasks learned")
  ax1.xaxis.get_major_locator().set_params(integer=True)
  ax1.grid(alpha=0.3)
  ax1.legend(fontsize=8, loc="lower left")
  ax2.set_xscale("log")
  ax2.set(xlabel="storage per task (bytes, log scale; shared network spread over the tasks)",
          ylabel="final average accuracy (%)", ylim=(0, 100),
          title="accuracy vs storage per task")
  ax2.grid(alpha=0.3, which="both")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  plotting.save_atomic(fig, path, dpi=110)


# -------------------------------------------------------------------- main --

def compare(config, methods: Sequence[str], workdir: str, runs: Iterable[str] = (),
            run_fn: Callable[[Any, str], Any] | None = None,
            stream_fn: Callable[[], Any] | None = None) -> list[dict]:
  """Runs the missing methods and writes the comparison; returns its entries.

  ``run_fn(config, subdir)`` defaults to :func:`supsup_jax.runs.continual.run`;
  ``stream_fn`` to the config's data stream (for the scenario check).
  """
  runs = list(runs)
  if methods and config is None:
    raise ValueError("--methods needs --config")
  if config is not None:
    if stream_fn is None:
      def stream_fn():
        from supsup_jax.runs import scaffold  # pylint: disable=import-outside-toplevel
        return scaffold.stream_from_config(config)
    check_methods(list(methods), config, stream_fn)
  for r in runs:
    if not os.path.exists(os.path.join(r, "results.json")):
      raise FileNotFoundError(f"--runs {r}: no results.json there (not a finished run)")
  if run_fn is None:
    from supsup_jax.runs import continual  # pylint: disable=import-outside-toplevel
    run_fn = continual.run
  with workdir_lib.lock(workdir):
    _check_not_a_run(workdir)
    return _compare_locked(config, methods, workdir, runs, run_fn)


def _check_not_a_run(workdir: str) -> None:
  """A comparison writes beside its methods' subdirs, never into a run's workdir."""
  for name in ("run.json", "results.json"):
    if os.path.exists(os.path.join(workdir, name)):
      raise ValueError(f"workdir {os.path.abspath(workdir)!r} holds a run ({name}), not a "
                       "comparison; give launch.compare a workdir of its own")


def _compare_locked(config, methods, workdir, runs, run_fn) -> list[dict]:
  from supsup_jax import methods as methods_lib  # pylint: disable=import-outside-toplevel
  dirs = []
  for m in methods:
    sub = os.path.join(workdir, m)
    cfg = methods_lib.entry_config(m, config)
    if _is_finished(sub, cfg):
      logging.info("%s: finished run found in %s", m, sub)
    else:
      # Resumes an interrupted run; refuses a workdir of another config.
      logging.info("%s: running in %s", m, sub)
      run_fn(cfg, sub)
      if not os.path.exists(os.path.join(sub, "results.json")):
        raise RuntimeError(f"{m}: the run in {sub} stopped before writing results.json; "
                           "run the same command again to resume")
    dirs.append(sub)
  entries = [load_run(d, m) for d, m in zip(dirs, methods)] + [load_run(d) for d in runs]
  title = ""
  if config is not None:
    title = f"{config.get('experiment') or ''} ({config.get('scenario', 'GG')}, {config.num_tasks} tasks)"
  write_outputs(workdir, entries, title)
  return entries


def format_table(entries: Sequence[Mapping]) -> str:
  lines = [f"{'method':<22}{'avg acc':>9}{'forgetting':>12}{'bytes/task':>13}"
           f"{'shared bytes':>14}{'s/task':>9}"]
  for e in entries:
    fmt = lambda v, f: "-" if v is None else format(v, f)
    lines.append(f"{e['method']:<22}{fmt(100 * e['avg_accuracy'], '8.2f')}%"
                 f"{fmt(None if e['forgetting'] is None else 100 * e['forgetting'], '11.2f')}%"
                 f"{fmt(e['bytes_per_task'], '13,d')}{fmt(e['bytes_shared'], '14,d')}"
                 f"{fmt(e['wall_time_per_task_s'], '9.1f')}")
  return "\n".join(lines)
