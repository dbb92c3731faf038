"""Continual-learning metrics and run outputs (JSON, CSV, PNG).

The accuracy matrix is stored at the evaluation checkpoints only:
``rows[r][j]`` = accuracy on task j after training ``eval_after[r]`` tasks
(``None`` for tasks not yet learned). Forgetting is "just after training minus
final" (per task, averaged); backward transfer is its negative mean.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Sequence

import numpy as np


def average_accuracy(row: Sequence[float | None]) -> float:
  vals = [v for v in row if v is not None]
  return float(np.mean(vals)) if vals else float("nan")


def forgetting(just_trained: Sequence[float], final_row: Sequence[float | None]) -> float:
  """Mean over tasks of (accuracy just after training - final accuracy)."""
  pairs = [(a, f) for a, f in zip(just_trained, final_row)
           if a is not None and f is not None]
  return float(np.mean([a - f for a, f in pairs])) if pairs else float("nan")


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
                       rows: Sequence[Sequence[float | None]],
                       inference_rows: Sequence[Sequence[float | None]] | None = None
                       ) -> None:
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


def plot_accuracy(path: str, eval_after: Sequence[int],
                  rows: Sequence[Sequence[float | None]], title: str,
                  inference_rows: Sequence[Sequence[float | None]] | None = None
                  ) -> None:
  """Average accuracy vs tasks learned (left) and final per-task accuracy."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  avgs = [100 * average_accuracy(r) for r in rows]
  ax1.plot(eval_after, avgs, "o-", label="average accuracy")
  if inference_rows is not None:
    ax1.plot(eval_after, [100 * average_accuracy(r) for r in inference_rows],
             "s--", label="task-inference accuracy")
  ax1.set_xlabel("tasks learned")
  ax1.set_ylabel("accuracy (%)")
  ax1.set_title(title)
  ax1.grid(alpha=0.3)
  ax1.legend()
  final = [v for v in rows[-1]]
  tasks = [j for j, v in enumerate(final) if v is not None]
  ax2.bar(tasks, [100 * final[j] for j in tasks], width=1.0 if len(tasks) > 50 else 0.8)
  ax2.set_xlabel("task")
  ax2.set_ylabel("final accuracy (%)")
  ax2.set_ylim(max(0, min(100 * final[j] for j in tasks) - 5), 100.5)
  ax2.set_title(f"after {eval_after[-1]} tasks")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)
