"""Evaluation with the task given (GG) or inferred (GNs / GNu).

Task inference follows the authors' protocol by default: for each test batch
the task is inferred from its first ``inference_examples`` images (1 in GNu on
PermutedMNIST; 0 means the whole batch) and the whole batch is classified with
the inferred mask. In GNu a batch whose task is inferred wrongly counts as all
wrong; in GNs (shared labels) it is scored as it falls. With
``per_example_inference`` every test example infers its own task.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from supsup_jax import inference
from supsup_jax import training


def check_inference_config(config) -> None:
  if config.inference_algorithm not in inference.ALGORITHMS:
    raise ValueError(f"config.inference_algorithm {config.inference_algorithm!r} "
                     f"unknown; allowed: {', '.join(inference.ALGORITHMS)}")
  inference.check_objective(config.inference_objective)
  for objective in config.get("compare_objectives") or ():
    inference.check_objective(objective)
  if config.inference_examples < 0:
    raise ValueError("config.inference_examples must be >= 0 (0 = whole batch), "
                     f"got {config.inference_examples}")


class Evaluator:
  """Evaluates the tasks in a mask bank on a stream's test splits."""

  def __init__(self, config, setup, bank):
    self.config = config
    self.setup = setup
    self.bank = bank
    self.masked: training.MaskedModel = setup.masked
    self.eval_step = training.make_eval_step(self.masked)
    self.batch_size = int(config.get("test_batch_size") or config.batch_size)
    self.max_batches = int(config.get("eval_batches_per_task") or 0)
    self._cache: dict[int, list] = {}
    # objective -> {task: task-inference accuracy} at the latest evaluation.
    self.comparison: dict[str, dict[int, float]] = {}

  def _batches(self, task_id: int) -> list:
    if task_id not in self._cache:
      batches = []
      for images, labels in self.setup.stream.test_batches(task_id, self.batch_size):
        batches.append((images, labels))
        if self.max_batches and len(batches) >= self.max_batches:
          break
      # Keep the test sets of small streams in memory across evaluations.
      if self.setup.stream.num_tasks * len(batches) <= 50_000:
        self._cache[task_id] = batches
      return batches
    return self._cache[task_id]

  def task_given_accuracy(self, task_id: int, weights, batch_stats) -> float:
    masks = self.bank.get(task_id)
    return training.evaluate_task(self.eval_step, weights, masks, batch_stats or {},
                                  self._batches(task_id))

  def evaluate_all(self, num_learned: int, weights,
                   task_batch_stats: Mapping[str, Any]):
    """Row of accuracies (None for unlearned tasks) and task-inference row."""
    num_tasks = self.config.num_tasks
    row: list[float | None] = [None] * num_tasks
    if self.config.scenario == "GG":
      for j in range(num_learned):
        row[j] = self.task_given_accuracy(j, weights, task_batch_stats.get(str(j)))
      return row, None
    inf_row: list[float | None] = [None] * num_tasks
    for j in range(num_learned):
      row[j], inf_row[j] = self._inferred_accuracy(j, weights, task_batch_stats)
    return row, inf_row

  # -- GN --------------------------------------------------------------------
  def _inference_units(self, batches):
    """Images each inference sees: [N, n, ...] and the owner of each unit."""
    cfg = self.config
    if cfg.get("per_example_inference"):
      units = [img[i:i + 1] for img, _ in batches for i in range(img.shape[0])]
    else:
      n = int(cfg.inference_examples)
      units = [img[:n] if n else img for img, _ in batches]
    return units

  def _infer(self, weights, units, objective: str) -> np.ndarray:
    """Inferred task of every unit (units of equal shape are batched)."""
    cfg = self.config
    groups: dict[tuple, list[int]] = {}
    for i, u in enumerate(units):
      groups.setdefault(u.shape, []).append(i)
    out = np.zeros(len(units), np.int64)
    for idx in groups.values():
      stacked = jnp.stack([units[i] for i in idx])
      if cfg.inference_algorithm == "oneshot":
        grads = inference.alpha_grads_many(self.masked, weights, self.bank, stacked,
                                           objective=objective)
        out[idx] = np.asarray(jnp.argmin(grads, axis=-1))
      else:
        out[idx] = inference.binary_many(self.masked, weights, self.bank, stacked,
                                         objective=objective)
    return out

  def _inferred_accuracy(self, task_id: int, weights, task_batch_stats):
    cfg = self.config
    batches = self._batches(task_id)
    units = self._inference_units(batches)
    inferred = self._infer(weights, units, cfg.inference_objective)
    for objective in cfg.get("compare_objectives") or ():
      if objective != cfg.inference_objective:
        other = self._infer(weights, units, objective)
        self.comparison.setdefault(objective, {})[task_id] = float(
            np.mean(other == task_id))
    stats = lambda t: task_batch_stats.get(str(t)) or {}
    correct, total = 0, 0
    if cfg.get("per_example_inference"):
      images = jnp.concatenate([b[0] for b in batches])
      labels = jnp.concatenate([b[1] for b in batches])
      for t in np.unique(inferred):
        if cfg.scenario == "GNu" and t != task_id:
          continue
        sel = np.flatnonzero(inferred == t)
        correct += int(self.eval_step(weights, self.bank.get(int(t)), stats(t),
                                      images[sel], labels[sel]))
      total = int(labels.shape[0])
      return correct / total, float(np.mean(inferred == task_id))
    for (images, labels), t in zip(batches, inferred):
      total += int(labels.shape[0])
      if cfg.scenario == "GNu" and t != task_id:
        continue
      correct += int(self.eval_step(weights, self.bank.get(int(t)), stats(t),
                                    images, labels))
    return correct / total, float(np.mean(inferred == task_id))
