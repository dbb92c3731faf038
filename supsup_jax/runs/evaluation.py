"""Evaluation of any learner, with the task given (GG) or inferred (GN, NN).

Task inference follows the authors' protocol by default: for each test batch
the task is inferred from its first ``inference_examples`` images (1 in GNu on
PermutedMNIST; 0 means the whole batch) and the whole batch is classified with
the inferred task. In GNu (and NNs) a batch whose task is inferred wrongly
counts as all wrong; in GNs (shared labels) it is scored as it falls. With
``per_example_inference`` every test example infers its own task.

In NNs the learner's own slots ("masks") are not task ids: ``slot_task``
maps each slot to the true task it was trained on most, and inference is
right when the inferred slot maps to the task being evaluated.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax.learner import Learner

# Images per stacked classification call, at most (a LeNet test batch of 128
# is 0.4 MB, a CIFAR one 1.5 MB; 224 x 224 ImageNet batches go one by one).
_STACK_BYTES = 64 << 20


@dataclasses.dataclass
class Evaluation:
  """One evaluation point.

  Attributes:
    row: accuracy per task (``None`` for tasks not yet learned).
    inference_row: task-inference accuracy per task (GN/NN; else ``None``).
    other_inference: ``{name: average task-inference accuracy}`` of the extra
      inferrers (e.g. other objectives).
  """
  row: list
  inference_row: list | None = None
  other_inference: dict = dataclasses.field(default_factory=dict)


class Evaluator:
  """Evaluates a learner's memory on a stream's test splits."""

  def __init__(self, learner: Learner, stream, *, scenario: str, num_tasks: int,
               batch_size: int, max_batches: int = 0, inference_examples: int = 1,
               per_example_inference: bool = False,
               extra_inferrers: Mapping[str, Callable] | None = None,
               cache_bytes: int = 1 << 30):
    """Args:
      learner: the learner (its ``logits`` and, for GN/NN, ``infer_task``).
      stream: the task stream (``test_batches(task_id, batch_size)``).
      scenario: "GG", "GNs", "GNu" or "NNs".
      num_tasks: length of every row.
      batch_size: test batch size.
      max_batches: test batches per task (0 = the whole test split).
      inference_examples: images per batch used to infer its task (0 = all).
      per_example_inference: every example infers its own task.
      extra_inferrers: ``{name: infer_task}`` also scored (not used to classify).
      cache_bytes: test batches kept in memory across evaluations, at most
        this many bytes (default 1 GiB); past it a task's batches are made
        again each time (the same values). 2,500 PermutedMNIST tasks x 10
        float batches would otherwise hold ~10 GB.
    """
    if inference_examples < 0:
      raise ValueError(f"inference_examples must be >= 0 (0 = whole batch), got "
                       f"{inference_examples}")
    self.learner = learner
    self.stream = stream
    self.scenario = scenario
    self.num_tasks = num_tasks
    self.batch_size = int(batch_size)
    self.max_batches = int(max_batches)
    self.inference_examples = int(inference_examples)
    self.per_example = bool(per_example_inference)
    self.extra_inferrers = dict(extra_inferrers or {})
    self._cache: dict[int, list] = {}
    self._cache_budget = int(cache_bytes)
    self._cached_bytes = 0

    @jax.jit
    def count_correct(memory, task_id, images, labels):
      logits = learner.logits(memory, task_id, images)
      return jnp.sum(jnp.argmax(logits[:, :learner.num_classes], -1) == labels)

    @jax.jit
    def count_correct_stacked(memory, task_id, images, labels):
      """[n] correct per batch of images [n, B, ...], labels [n, B], one slot."""
      return jax.vmap(lambda x, y: count_correct(memory, task_id, x, y))(images, labels)

    self._count_correct = count_correct
    self._count_correct_stacked = count_correct_stacked

  def batches(self, task_id: int) -> list:
    """The test batches of a task (kept within ``cache_bytes``)."""
    if task_id in self._cache:
      return self._cache[task_id]
    batches = []
    for images, labels in self.stream.test_batches(task_id, self.batch_size):
      batches.append((images, labels))
      if self.max_batches and len(batches) >= self.max_batches:
        break
    if not batches:
      raise ValueError(f"task {task_id} has no test examples to evaluate")
    size = sum(int(x.nbytes) + int(y.nbytes) for x, y in batches)
    if self._cached_bytes + size <= self._cache_budget:
      self._cache[task_id] = batches
      self._cached_bytes += size
    return batches

  def _correct(self, memory, slot: int, images, labels) -> int:
    return int(self._count_correct(memory, jnp.int32(slot), images, labels))

  def _correct_per_batch(self, memory, slot: int, batches) -> np.ndarray:
    """Correct predictions in each of ``batches`` with learner slot ``slot``.

    Batches of one shape are stacked and classified in one call (up to
    ``_STACK_BYTES`` of images per call), not one call and one host sync
    per batch: the same per-example logits, ~2x less time per task for
    LeNet-sized batches (17 -> 8 ms for ten batches of 128 at 2,500 tasks;
    the 2,500-task run evaluates 7,910 tasks).
    """
    out = [None] * len(batches)
    groups: dict[tuple, list[int]] = {}
    for i, (images, _) in enumerate(batches):
      groups.setdefault(tuple(images.shape), []).append(i)
    pending = []
    for idx in groups.values():
      per_call = max(1, _STACK_BYTES // max(1, int(batches[idx[0]][0].nbytes)))
      for k in range(0, len(idx), per_call):
        part = idx[k:k + per_call]
        if len(part) == 1:
          images, labels = batches[part[0]]
          pending.append((part, self._count_correct(memory, jnp.int32(slot), images,
                                                    labels)[None]))
          continue
        images = jnp.stack([batches[i][0] for i in part])
        labels = jnp.stack([batches[i][1] for i in part])
        pending.append((part, self._count_correct_stacked(memory, jnp.int32(slot),
                                                          images, labels)))
    for part, counts in pending:  # one host sync per call, after all are issued
      for i, c in zip(part, np.asarray(counts)):
        out[i] = int(c)
    return np.asarray(out, np.int64)

  def task_given_accuracy(self, memory, task_id: int, slot: int | None = None) -> float:
    """Accuracy on task ``task_id``'s test split with learner slot ``slot``
    (default: the task itself)."""
    slot = task_id if slot is None else slot
    batches = self.batches(task_id)
    total = sum(int(labels.shape[0]) for _, labels in batches)
    return int(self._correct_per_batch(memory, slot, batches).sum()) / total

  def evaluate(self, memory, tasks: Sequence[int], num_learned: int,
               slot_task: Sequence[int] | None = None) -> Evaluation:
    """Evaluates ``tasks`` (the rest of the row stays ``None``).

    num_learned: slots the learner has filled (tasks, or masks in NNs).
    slot_task: NNs only, the true task of each slot.
    """
    row: list[float | None] = [None] * self.num_tasks
    if self.scenario == "GG":
      for j in tasks:
        row[j] = self.task_given_accuracy(memory, j)
      return Evaluation(row)
    inf_row: list[float | None] = [None] * self.num_tasks
    slot_task = np.arange(num_learned) if slot_task is None else np.asarray(slot_task)
    other: dict[str, list[float]] = {}
    for j in tasks:
      batches = self.batches(j)
      units = self._units(batches)
      slots = self._infer(self.learner.infer_task, memory, num_learned, units)
      row[j], inf_row[j] = self._score(memory, j, batches, slots, slot_task)
      for name, fn in self.extra_inferrers.items():
        other.setdefault(name, []).append(float(np.mean(
            slot_task[self._infer(fn, memory, num_learned, units)] == j)))
    return Evaluation(row, inf_row, {k: float(np.mean(v)) for k, v in other.items()})

  def _units(self, batches) -> list:
    """Images each inference sees (a list of [n, ...] arrays)."""
    if self.per_example:
      return [img[i:i + 1] for img, _ in batches for i in range(img.shape[0])]
    n = self.inference_examples
    return [img[:n] if n else img for img, _ in batches]

  @staticmethod
  def _infer(infer_fn, memory, num_learned: int, units) -> np.ndarray:
    """Inferred slot of every unit (units of equal shape are batched)."""
    groups: dict[tuple, list[int]] = {}
    for i, u in enumerate(units):
      groups.setdefault(u.shape, []).append(i)
    out = np.zeros(len(units), np.int64)
    for idx in groups.values():
      out[idx] = np.asarray(infer_fn(memory, num_learned,
                                     jnp.stack([units[i] for i in idx])))
    return out

  def _score(self, memory, task_id: int, batches, slots, slot_task):
    """(accuracy, task-inference accuracy) of one task given inferred slots."""
    right_task = slot_task[slots] == task_id
    strict = self.scenario != "GNs"  # a wrong task scores 0 (GNu, NNs)
    correct = 0
    if self.per_example:
      images = jnp.concatenate([b[0] for b in batches])
      labels = jnp.concatenate([b[1] for b in batches])
      for s in np.unique(slots):
        sel = np.flatnonzero(slots == s)
        if strict and slot_task[s] != task_id:
          continue
        correct += self._correct(memory, int(s), images[sel], labels[sel])
      total = int(labels.shape[0])
    else:
      total = sum(int(labels.shape[0]) for _, labels in batches)
      for s in np.unique(slots):
        sel = [i for i in range(len(batches))
               if slots[i] == s and (right_task[i] or not strict)]
        if sel:
          correct += int(self._correct_per_batch(memory, int(s),
                                                 [batches[i] for i in sel]).sum())
    return correct / total, float(np.mean(right_task))

