"""A compact bank of many tasks' binary masks.

Each task's masks tree is flattened (leaves in sorted path order) into one
0/1 vector of length ``num_bits`` (= number of maskable weights) and stored as
one row of a device array: bit-packed (``packed=True``, 1 bit per weight,
``ceil(num_bits / 8)`` bytes per task) or as bool (1 byte per weight).

The running per-weight count of ones across tasks is kept up to date as tasks
are added, so the mean mask (the uniform superposition used by task inference)
never has to be recomputed from the whole bank.

LeNet 300-100 with 10 outputs has 266,200 maskable weights: 33,275 bytes per
task packed, so 2,500 tasks take 83 MB (98.5 MB with 500 outputs).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import tree as tree_lib


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each mask leaf lives in the flat vector."""
  paths: tuple[tree_lib.Path, ...]
  shapes: tuple[tuple[int, ...], ...]
  offsets: tuple[int, ...]

  @classmethod
  def from_tree(cls, tree: Mapping) -> "Layout":
    flat = tree_lib.flatten(tree)
    paths = tuple(sorted(flat))
    shapes = tuple(tuple(np.shape(flat[p])) for p in paths)
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = tuple(int(o) for o in np.cumsum([0] + sizes[:-1]))
    return cls(paths, shapes, offsets)

  @property
  def num_bits(self) -> int:
    return int(sum(int(np.prod(s)) for s in self.shapes))

  @property
  def packed_bytes(self) -> int:
    return (self.num_bits + 7) // 8

  def flatten(self, tree: Mapping) -> jax.Array:
    """Tree -> flat [num_bits] vector (leading batch axes are kept)."""
    flat = tree_lib.flatten(tree)
    lead = np.shape(flat[self.paths[0]])[:-len(self.shapes[0])] if self.shapes[0] else ()
    parts = [jnp.reshape(flat[p], (*lead, -1)) for p in self.paths]
    return jnp.concatenate(parts, axis=-1)

  def unflatten(self, vec: jax.Array) -> dict:
    """Flat [..., num_bits] vector -> tree (leading axes kept)."""
    lead = vec.shape[:-1]
    out = {}
    for p, s, o in zip(self.paths, self.shapes, self.offsets):
      n = int(np.prod(s))
      out[p] = vec[..., o:o + n].reshape(*lead, *s)
    return tree_lib.unflatten(out)


@functools.partial(jax.jit, donate_argnums=0)
def _set_row(rows: jax.Array, row: jax.Array, index: jax.Array) -> jax.Array:
  return rows.at[index].set(row)


@functools.partial(jax.jit, static_argnums=1)
def _pack(flat_mask: jax.Array, packed: bool) -> jax.Array:
  bits = flat_mask > 0.5
  return jnp.packbits(bits) if packed else bits


ROW_ALIGN = 64  # capacity is a multiple of this: inference reads 64-row blocks


def _capacity(n: int) -> int:
  return max(ROW_ALIGN, -(-n // ROW_ALIGN) * ROW_ALIGN)


class MaskBank:
  """Masks of many tasks in one device array, with an incremental mean.

  Rows live in a preallocated ``[capacity, bytes_per_task]`` array (capacity a
  multiple of ``ROW_ALIGN``, doubled when full); adding a task writes one row
  in place (buffer donation), so growing to thousands of tasks never copies
  the whole bank per task.
  """

  def __init__(self, template: Mapping, *, packed: bool = True,
               capacity: int = 16):
    """Args:
      template: a masks (or scores/weights) tree giving the leaf shapes.
      packed: store 1 bit per weight (True) or 1 bool byte per weight.
      capacity: initial number of rows; grows by doubling.
    """
    self.layout = Layout.from_tree(template)
    self.packed = packed
    width = self.layout.packed_bytes if packed else self.layout.num_bits
    dtype = jnp.uint8 if packed else jnp.bool_
    self._rows = jnp.zeros((_capacity(capacity), width), dtype)
    self._counts = jnp.zeros((self.layout.num_bits,), jnp.int32)
    self.num_tasks = 0

  # -- storage -------------------------------------------------------------
  @property
  def bytes_per_task(self) -> int:
    """Bytes one task's masks occupy in the bank."""
    return int(self._rows.shape[1] * self._rows.dtype.itemsize)

  @property
  def nbytes(self) -> int:
    """Bytes used by the stored tasks (not the spare capacity)."""
    return self.bytes_per_task * self.num_tasks

  @property
  def rows(self) -> jax.Array:
    """The stored rows, ``[num_tasks, bytes_per_task]`` (uint8 or bool); a copy."""
    return self._rows[:self.num_tasks]

  @property
  def storage(self) -> jax.Array:
    """All ``[capacity, bytes_per_task]`` rows (no copy); rows past
    ``num_tasks`` are zero."""
    return self._rows

  @property
  def counts(self) -> jax.Array:
    """Per-weight number of tasks whose mask keeps it, ``[num_bits]`` int32."""
    return self._counts

  def _check_task(self, task_id: int) -> int:
    if not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < self.num_tasks:
      raise ValueError(
          f"task id {task_id!r} was never added to the mask bank; stored "
          f"task ids are 0..{self.num_tasks - 1}" if self.num_tasks else
          f"task id {task_id!r} was never added: the mask bank is empty")
    return int(task_id)

  def add(self, masks: Mapping) -> int:
    """Stores one task's masks (0/1 tree like the template); returns its id."""
    tree_lib.check_same_paths(self.layout.unflatten(
        jnp.zeros((self.layout.num_bits,), jnp.bool_)), masks, "mask tree")
    flat = self.layout.flatten(jax.tree.map(jax.lax.stop_gradient, masks))
    if self.num_tasks == self._rows.shape[0]:
      grown = jnp.zeros((2 * self._rows.shape[0], self._rows.shape[1]),
                        self._rows.dtype)
      self._rows = grown.at[:self.num_tasks].set(self._rows)
    self._rows = _set_row(self._rows, _pack(flat, self.packed),
                          jnp.int32(self.num_tasks))
    self._counts = self._counts + (flat > 0.5).astype(jnp.int32)
    self.num_tasks += 1
    return self.num_tasks - 1

  def unpack_rows(self, rows: jax.Array) -> jax.Array:
    """Rows ``[k, bytes_per_task]`` -> float32 0/1 ``[k, num_bits]``."""
    if self.packed:
      bits = jnp.unpackbits(rows, axis=-1, count=self.layout.num_bits)
    else:
      bits = rows
    return bits.astype(jnp.float32)

  def get(self, task_id: int) -> dict:
    """One task's masks tree (float32 0/1)."""
    t = self._check_task(task_id)
    return self.layout.unflatten(self.unpack_rows(self._rows[t:t + 1])[0])

  def stacked(self, task_ids: Sequence[int] | None = None) -> dict:
    """Masks of several tasks as one tree with a leading task axis [k, ...]."""
    if task_ids is None:
      rows = self.rows
    else:
      ids = [self._check_task(t) for t in task_ids]
      rows = self._rows[jnp.asarray(ids, jnp.int32)]
    return self.layout.unflatten(self.unpack_rows(rows))

  def mean_masks(self) -> dict:
    """The mean of all stored masks (uniform superposition), as a tree."""
    if not self.num_tasks:
      raise ValueError("the mask bank is empty: no mean mask")
    return self.layout.unflatten(self._counts.astype(jnp.float32) / self.num_tasks)

  # -- persistence -----------------------------------------------------------
  def state_dict(self) -> dict:
    # At least one row: checkpoint formats cannot store empty arrays.
    rows = self._rows[:max(1, self.num_tasks)]
    return {"rows": np.asarray(rows), "counts": np.asarray(self._counts),
            "num_tasks": np.int64(self.num_tasks)}

  def load_state_dict(self, state: Mapping) -> "MaskBank":
    rows = np.asarray(state["rows"])
    n = int(state["num_tasks"])
    if rows.shape[1:] != self._rows.shape[1:]:
      raise ValueError(f"mask bank rows have shape {rows.shape[1:]}, expected "
                       f"{self._rows.shape[1:]} for this model")
    full = np.zeros((_capacity(n), rows.shape[1]), rows.dtype)
    full[:n] = rows[:n]
    self._rows = jnp.asarray(full, self._rows.dtype)
    self._counts = jnp.asarray(state["counts"], jnp.int32)
    self.num_tasks = n
    return self
