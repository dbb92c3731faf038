"""Continual-learning metrics and run outputs (JSON, CSV, PNG).

The accuracy matrix is stored at the evaluation points only:
``rows[r][j]`` = accuracy in [0, 1] on task j after training ``eval_after[r]``
tasks (``None`` for tasks not yet learned). In GN scenarios that accuracy is
with the task inferred. ``just_trained[j]`` is the task-given accuracy on task j
right after training it (recorded for every task, even between evaluation
points).

Definitions (T = tasks learned at the last evaluation point, averages over the
tasks learned before the last one, j = 0 .. T-2, because the last task has had
no chance to be forgotten):

* ``forgetting``: mean_j (just_trained[j] - final[j]).
* ``forgetting_max``: mean_j (max over time of task j's accuracy - final[j]),
  the maximum taken over just_trained[j] and every earlier evaluation point
  (Chaudhry et al., "Riemannian Walk for Incremental Learning", 2018,
  arXiv:1801.10112).
* ``bwt``: backward transfer, mean_j (R[T, j] - R[j, j]) with R[j, j] =
  just_trained[j] (Lopez-Paz & Ranzato, "Gradient Episodic Memory for
  Continual Learning", 2017, arXiv:1706.08840). So ``bwt == -forgetting``;
  negative BWT is forgetting, positive BWT means later tasks helped.

All plots use a fixed 0-100 % accuracy axis (and a fixed 0-100 % colour scale),
so a drop from 94.24 % to 94.15 % looks like the 0.09 points it is.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from supsup_jax import plotting

Row = Sequence[float | None]


def average_accuracy(row: Row) -> float:
  """Mean over the learned tasks of a row (NaN when none is learned)."""
  vals = [v for v in row if v is not None]
  return float(np.mean(vals)) if vals else float("nan")


def forgetting(just_trained: Sequence[float | None], final_row: Row) -> float:
  """Mean over the given tasks of (accuracy just after training - final accuracy).

  Averages over every task where both values exist; :func:`continual_metrics`
  passes only the tasks learned before the last one.
  """
  pairs = [(a, f) for a, f in zip(just_trained, final_row)
           if a is not None and f is not None]
  return float(np.mean([a - f for a, f in pairs])) if pairs else float("nan")


def _earlier_tasks(eval_after: Sequence[int], rows: Sequence[Row]) -> list[int]:
  """Tasks learned before the last one at the final evaluation point."""
  final = rows[-1]
  learned = int(eval_after[-1])
  return [j for j in range(min(learned - 1, len(final))) if final[j] is not None]


def forgetting_max(eval_after: Sequence[int], rows: Sequence[Row],
                   just_trained: Sequence[float | None]) -> float | None:
  """Mean over tasks j < T-1 of (max accuracy of task j over time - final).

  The maximum runs over ``just_trained[j]`` and every non-final evaluation
  point where task j was learned (Chaudhry et al. 2018, arXiv:1801.10112).
  None when fewer than two tasks were learned.
  """
  _check_matrix(eval_after, rows)
  tasks = _earlier_tasks(eval_after, rows)
  if not tasks:
    return None
  gaps = []
  for j in tasks:
    history = [r[j] for r in rows[:-1] if j < len(r) and r[j] is not None]
    if j < len(just_trained) and just_trained[j] is not None:
      history.append(just_trained[j])
    gaps.append(max(history, default=rows[-1][j]) - rows[-1][j])
  return float(np.mean(gaps))


def backward_transfer(eval_after: Sequence[int], rows: Sequence[Row],
                      just_trained: Sequence[float | None]) -> float | None:
  """BWT = mean over tasks j < T-1 of (final[j] - just_trained[j]).

  Lopez-Paz & Ranzato 2017 (arXiv:1706.08840), with R[j, j] the accuracy on
  task j right after training it. None when fewer than two tasks were learned.
  """
  _check_matrix(eval_after, rows)
  tasks = [j for j in _earlier_tasks(eval_after, rows)
           if j < len(just_trained) and just_trained[j] is not None]
  if not tasks:
    return None
  return float(np.mean([rows[-1][j] - just_trained[j] for j in tasks]))


def continual_metrics(results: Mapping[str, Any]) -> dict:
  """``forgetting``, ``forgetting_max`` and ``bwt`` of a results dict.

  Reads ``eval_after_tasks``, ``accuracy_matrix`` and
  ``accuracy_just_trained``; values are in accuracy units ([0, 1]); None
  (JSON null) when fewer than two tasks were learned.
  """
  eval_after, rows, just = _unpack(results)
  tasks = _earlier_tasks(eval_after, rows)
  forget = None
  if tasks:
    forget = forgetting([just[j] if j < len(just) else None for j in tasks],
                        [rows[-1][j] for j in tasks])
    forget = None if np.isnan(forget) else forget
  return {
      "forgetting": forget,
      "forgetting_max": forgetting_max(eval_after, rows, just),
      "bwt": backward_transfer(eval_after, rows, just),
  }


def _unpack(results: Mapping[str, Any]):
  missing = [k for k in ("accuracy_matrix", "eval_after_tasks", "accuracy_just_trained")
             if k not in results]
  if missing:
    raise ValueError(f"results lack {missing}; need accuracy_matrix, "
                     "eval_after_tasks and accuracy_just_trained")
  eval_after = list(results["eval_after_tasks"])
  rows = list(results["accuracy_matrix"])
  _check_matrix(eval_after, rows)
  return eval_after, rows, list(results["accuracy_just_trained"])


def _check_matrix(eval_after: Sequence[int], rows: Sequence[Row],
                  name: str = "accuracy_matrix") -> None:
  if not rows:
    raise ValueError(f"{name} is empty; need at least one evaluation point")
  if len(rows) != len(eval_after):
    raise ValueError(f"{name} has {len(rows)} rows but eval_after_tasks has "
                     f"{len(eval_after)} entries; they must match")
  for r, row in enumerate(rows):
    for j, v in enumerate(row):
      if v is not None and not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{name}[{r}][{j}] = {v!r} is not an accuracy in [0, 1] "
                         "(or None for an unlearned task)")


def write_json_atomic(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=_json_default)
  os.replace(tmp, path)


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def write_accuracy_csv(path: str, eval_after: Sequence[int],
                       rows: Sequence[Row],
                       inference_rows: Sequence[Row] | None = None) -> None:
  """Long format: after_tasks, task, accuracy[, task_inference_accuracy]."""
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    header = ["after_tasks", "task", "accuracy"]
    if inference_rows is not None:
      header.append("task_inference_accuracy")
    w.writerow(header)
    for r, (after, row) in enumerate(zip(eval_after, rows)):
      for j, acc in enumerate(row):
        if acc is None:
          continue
        line = [after, j, f"{acc:.6f}"]
        if inference_rows is not None:
          inf = inference_rows[r][j]
          line.append("" if inf is None else f"{inf:.6f}")
        w.writerow(line)
  os.replace(tmp, path)


_pyplot = plotting.pyplot
_save_atomic = plotting.save_atomic


def _integer_locator():
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  return ticker.MaxNLocator(10, integer=True, steps=[1, 2, 2.5, 5, 10])


def _tasks_axis(ax, eval_after: Sequence[int]) -> None:
  # From 0 tasks, so a single evaluation point does not get a zoomed x axis.
  last = max(eval_after)
  ax.set_xlim(0, last + max(1.0, 0.03 * last))
  ax.xaxis.set_major_locator(_integer_locator())
  ax.set_xlabel("tasks learned")


def _percent_axis(ax, label: str = "accuracy (%)") -> None:
  # Fixed full range: small changes stay small on the page.
  ax.set_ylim(0, 100)
  ax.set_yticks(range(0, 101, 20))
  ax.set_ylabel(label)
  ax.grid(alpha=0.3)


def plot_accuracy(path: str, eval_after: Sequence[int], rows: Sequence[Row],
                  title: str, inference_rows: Sequence[Row] | None = None) -> dict:
  """Average accuracy vs tasks learned (left) and final per-task accuracy
  (right), both on a 0-100 % axis, the final average written on the plot.

  Returns ``{"ylims": [(lo, hi) of each panel]}`` (for tests of the axis).
  """
  _check_matrix(eval_after, rows)
  plt = _pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
  avgs = [100 * average_accuracy(r) for r in rows]
  marker = "o-" if len(eval_after) <= 60 else "-"
  # clip_on=False: a point at 100 % stays whole on the fixed axis.
  ax1.plot(eval_after, avgs, marker, clip_on=False,
           label=f"average accuracy (final {avgs[-1]:.2f} %)")
  if inference_rows is not None:
    inf = [100 * average_accuracy(r) for r in inference_rows]
    ax1.plot(eval_after, inf, "s--" if len(eval_after) <= 60 else "--", clip_on=False,
             label=f"task-inference accuracy (final {inf[-1]:.2f} %)")
  _tasks_axis(ax1, eval_after)
  _percent_axis(ax1)
  ax1.set_title(title)
  ax1.legend(loc="lower left")
  final = rows[-1]
  tasks = [j for j, v in enumerate(final) if v is not None]
  ax2.bar(tasks, [100 * final[j] for j in tasks],
          width=1.0 if len(tasks) > 50 else 0.8)
  ax2.xaxis.set_major_locator(_integer_locator())
  ax2.set_xlabel("task")
  _percent_axis(ax2, "final accuracy (%)")
  ax2.set_title(f"per task after {eval_after[-1]} tasks "
                f"(min {100 * min(final[j] for j in tasks):.2f} %)")
  fig.tight_layout()
  ylims = [ax1.get_ylim(), ax2.get_ylim()]
  _save_atomic(fig, path)
  return {"ylims": ylims}


def _padded_matrix(rows: Sequence[Row]) -> np.ndarray:
  """float [num_evals, num_tasks] in %, NaN for unlearned tasks."""
  width = max(len(r) for r in rows)
  out = np.full((len(rows), width), np.nan)
  for r, row in enumerate(rows):
    for j, v in enumerate(row):
      if v is not None:
        out[r, j] = 100.0 * float(v)
  return out


def plot_accuracy_matrix(path: str, eval_after: Sequence[int], rows: Sequence[Row],
                         title: str, annotate_max_cells: int = 400,
                         cbar_label: str = "accuracy (%)") -> dict:
  """Heatmap of accuracy: task evaluated (y, task 0 on top) x tasks learned (x).

  Colour scale fixed at 0-100 % (viridis); unlearned tasks are light grey.
  Cells are annotated with their value when there are at most
  ``annotate_max_cells`` of them.

  Returns:
    ``data``: float [num_tasks, num_evals] in %, the array the image drew
    (NaN where unlearned); ``cmap`` and ``norm`` used; ``cell_pixel(j, r)``:
    (row, col) pixel of the saved PNG inside cell (task j, eval point r), off
    the cell centre so that the annotation does not cover it.
  """
  _check_matrix(eval_after, rows)
  plt = _pyplot()
  from matplotlib import colors  # pylint: disable=import-outside-toplevel
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel

  data = _padded_matrix(rows).T  # [tasks, evals]
  n_tasks, n_evals = data.shape
  cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
  norm = colors.Normalize(vmin=0.0, vmax=100.0)
  width = min(14.0, 3.0 + 0.45 * n_evals)
  height = min(9.0, 2.0 + 0.35 * n_tasks)
  fig, ax = plt.subplots(figsize=(max(width, 5.0), max(height, 3.5)), dpi=100)
  image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm,
                    aspect="auto", origin="upper", interpolation="nearest")
  fig.colorbar(image, ax=ax, label=cbar_label)
  labels = list(eval_after)
  if n_evals <= 12:
    ax.set_xticks(range(n_evals), [str(a) for a in labels])
  else:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(12, integer=True))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(
        lambda x, _: str(labels[int(x)]) if 0 <= int(x) < n_evals and x == int(x) else ""))
  if n_tasks <= 15:
    ax.set_yticks(range(n_tasks))
  else:
    ax.yaxis.set_major_locator(ticker.MaxNLocator(15, integer=True))
  ax.set_xlabel("tasks learned")
  ax.set_ylabel("task evaluated")
  ax.set_title(title)
  if n_tasks * n_evals <= annotate_max_cells:
    for j in range(n_tasks):
      for r in range(n_evals):
        if not np.isnan(data[j, r]):
          ax.text(r, j, f"{data[j, r]:.1f}", ha="center", va="center", fontsize=7,
                  color="white" if data[j, r] < 60 else "black")
  fig.tight_layout()
  fig.canvas.draw()
  fig_h = fig.canvas.get_width_height()[1]
  to_pixels = ax.transData

  def cell_pixel(j: int, r: int) -> tuple[int, int]:
    x, y = to_pixels.transform((r - 0.3, j - 0.3))
    return int(round(fig_h - y)), int(round(x))

  drawn = np.ma.filled(image.get_array().astype(float), np.nan)
  pixels = {(j, r): cell_pixel(j, r) for j in range(n_tasks) for r in range(n_evals)}
  _save_atomic(fig, path)
  return {"data": drawn, "cmap": cmap, "norm": norm,
          "cell_pixel": lambda j, r: pixels[(j, r)]}


def plot_task_inference(path: str, eval_after: Sequence[int],
                        inference_rows: Sequence[Row], title: str,
                        rows: Sequence[Row] | None = None) -> None:
  """GN scenarios: task-inference accuracy (mean over learned tasks) vs tasks
  learned, 0-100 % axis, with the average accuracy beside it when given."""
  _check_matrix(eval_after, inference_rows, "task_inference_matrix")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
  marker = len(eval_after) <= 60
  inf = [100 * average_accuracy(r) for r in inference_rows]
  ax.plot(eval_after, inf, "s-" if marker else "-", color="C1", clip_on=False,
          label=f"task-inference accuracy (final {inf[-1]:.2f} %)")
  if rows is not None:
    avgs = [100 * average_accuracy(r) for r in rows]
    ax.plot(eval_after, avgs, "o--" if marker else "--", color="C0", clip_on=False,
            label=f"average accuracy (final {avgs[-1]:.2f} %)")
  _tasks_axis(ax, eval_after)
  _percent_axis(ax)
  ax.set_title(title)
  ax.legend(loc="lower left")
  fig.tight_layout()
  _save_atomic(fig, path)


def write_run_outputs(workdir: str, results: Mapping[str, Any]) -> None:
  """Writes accuracy.csv, accuracy.png, accuracy_matrix.png and, when
  ``task_inference_matrix`` is in ``results``, task_inference_accuracy.png.

  ``results`` keys: ``experiment``, ``scenario``, ``num_tasks``,
  ``accuracy_matrix`` (rows = evaluation points, None for unlearned tasks),
  ``eval_after_tasks``, ``accuracy_just_trained``, optional
  ``task_inference_matrix``. Every file is written atomically (tmp +
  os.replace). Bad input raises ValueError before anything is written.
  """
  eval_after, rows, _ = _unpack(results)
  inf_rows = results.get("task_inference_matrix")
  if inf_rows is not None:
    inf_rows = list(inf_rows)
    _check_matrix(eval_after, inf_rows, "task_inference_matrix")
  title = f"{results.get('experiment', 'run')} ({results.get('scenario', '?')})"
  write_accuracy_csv(os.path.join(workdir, "accuracy.csv"), eval_after, rows, inf_rows)
  plot_accuracy(os.path.join(workdir, "accuracy.png"), eval_after, rows, title, inf_rows)
  plot_accuracy_matrix(os.path.join(workdir, "accuracy_matrix.png"), eval_after, rows,
                       title + ": accuracy matrix")
  if inf_rows is not None:
    plot_task_inference(os.path.join(workdir, "task_inference_accuracy.png"),
                        eval_after, inf_rows, title + ": task inference", rows)
