"""A compact bank of many tasks' binary masks, as a pytree.

Each task's masks tree is flattened (leaves in sorted path order) into one
0/1 vector of length ``num_bits`` (= number of maskable weights) and stored as
one row of a device array: bit-packed (``packed=True``, 1 bit per weight,
``ceil(num_bits / 8)`` bytes per task) or as bool (1 byte per weight).

:class:`BankState` is an immutable pytree (rows, per-weight counts, number of
tasks) with a static :class:`Layout`; :func:`put`, :func:`get`,
:func:`mean_masks` and :func:`dot` are pure and work under ``jit`` (the task
id may be traced), and the rows can be sharded along the task axis
(:func:`put` and :func:`get` then touch only the owner's row; products over
the bank are :mod:`supsup_jax.sharded_inference`'s).

Task ids are checked where they are concrete (Python, NumPy, or JAX arrays
outside a trace; see :mod:`supsup_jax.checks`): a float or bool id, a
negative one, one never stored (:func:`get`, :func:`stacked`) or one that
would leave a gap (:func:`put`) is a one-line ValueError. Under ``jit`` with
a traced id nothing can be read, and the functions never mix tasks up: an
invalid id reads all-zero masks and writes nothing (the bank is returned
unchanged). Integer dtypes, shapes and tree structure are checked under
``jit`` too; the checks add nothing to the compiled programs' work but a
select on one row. The
running per-weight count of ones across tasks is kept up to date as tasks are
put, so the mean mask (the uniform superposition used by task inference)
never has to be recomputed from the whole bank. :class:`MaskBank` is a small
mutable convenience wrapper (grows by doubling) for interactive use.

LeNet 300-100 with 10 outputs has 266,200 maskable weights: 33,275 bytes per
task packed, so 2,500 tasks take 83 MB (98.5 MB with 500 outputs).
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import checks
from supsup_jax import tree as tree_lib

ROW_ALIGN = 64  # capacity is a multiple of this: inference reads 64-row blocks


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each mask leaf lives in the flat vector (hashable: a static field)."""
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

  def check_tree(self, masks: Mapping, what: str = "mask tree") -> None:
    """One-line ValueError unless ``masks`` has exactly this layout's leaves."""
    reference = tree_lib.unflatten(
        {p: np.zeros(s, bool) for p, s in zip(self.paths, self.shapes)})
    tree_lib.check_same_paths(reference, masks, what)


@flax.struct.dataclass
class BankState:
  """Masks of up to ``capacity`` tasks (a pytree; layout and packing static).

  Attributes:
    rows: ``[capacity, bytes_per_task]`` uint8 (packed) or
      ``[capacity, num_bits]`` bool; rows past ``num_tasks`` are zero.
    counts: ``[num_bits]`` int32, per weight the number of stored masks keeping it.
    num_tasks: int32 scalar, tasks stored (rows ``0 .. num_tasks - 1``).
    layout: static :class:`Layout` of one task's masks tree: its leaf paths
      (in sorted order), shapes and offsets in the flat ``[num_bits]``
      vector a row encodes.
    packed: static; True: rows hold 8 mask bits per uint8 byte (NumPy's bit
      order, most significant bit first); False: one bool per weight.

  Build one with :func:`init` and change it with the pure :func:`put` /
  :func:`add` (each returns a new state); read it with :func:`get`,
  :func:`stacked`, :func:`mean_masks` and :func:`dot`. ``layout`` and
  ``packed`` are part of the tree structure, not leaves, so a state passes
  through ``jax.jit`` and ``jax.lax.scan`` like any pytree.

  Example:
    >>> import jax.numpy as jnp
    >>> from supsup_jax import bank
    >>> masks = {"Dense_0": {"kernel": jnp.ones((4, 3))}}
    >>> state = bank.init(masks, capacity=10)
    >>> state = bank.put(state, 0, masks)
    >>> state.rows.shape, state.rows.dtype, int(state.num_tasks)
    ((64, 2), dtype('uint8'), 1)
    >>> bank.get(state, 0)["Dense_0"]["kernel"].shape
    (4, 3)
  """
  rows: jax.Array
  counts: jax.Array
  num_tasks: jax.Array
  layout: Layout = flax.struct.field(pytree_node=False)
  packed: bool = flax.struct.field(pytree_node=False, default=True)

  @property
  def capacity(self) -> int:
    """Rows allocated (a multiple of ``ROW_ALIGN``); :func:`grow` adds more."""
    return int(self.rows.shape[0])

  @property
  def bytes_per_task(self) -> int:
    """Bytes one task's masks occupy in the bank."""
    return int(self.rows.shape[1] * self.rows.dtype.itemsize)


def capacity_for(n: int) -> int:
  """Rows to allocate for ``n`` tasks: a multiple of ``ROW_ALIGN``."""
  return max(ROW_ALIGN, -(-int(n) // ROW_ALIGN) * ROW_ALIGN)


def init(template: Mapping, capacity: int, *, packed: bool = True) -> BankState:
  """An empty bank for masks shaped like ``template`` (masks, scores or
  maskable weights), with room for ``capacity`` tasks (rounded up to a
  multiple of ``ROW_ALIGN``)."""
  if not isinstance(capacity, (int, np.integer)) or capacity < 1:
    raise ValueError(f"bank capacity must be a positive int, got {capacity!r}")
  layout = Layout.from_tree(template)
  width = layout.packed_bytes if packed else layout.num_bits
  dtype = jnp.uint8 if packed else jnp.bool_
  return BankState(rows=jnp.zeros((capacity_for(capacity), width), dtype),
                   counts=jnp.zeros((layout.num_bits,), jnp.int32),
                   num_tasks=jnp.zeros((), jnp.int32), layout=layout, packed=packed)


def _encode(bank: BankState, masks: Mapping) -> tuple[jax.Array, jax.Array]:
  """(row to store, its 0/1 bits as int32 [num_bits])."""
  flat = bank.layout.flatten(jax.tree.map(jax.lax.stop_gradient, dict(masks)))
  bits = flat > 0.5
  return (jnp.packbits(bits) if bank.packed else bits), bits.astype(jnp.int32)


def unpack_rows(bank: BankState, rows: jax.Array) -> jax.Array:
  """Rows ``[k, bytes_per_task]`` -> float32 0/1 ``[k, num_bits]``."""
  if bank.packed:
    bits = jnp.unpackbits(rows, axis=-1, count=bank.layout.num_bits)
  else:
    bits = rows
  return bits.astype(jnp.float32)


def _row(rows: jax.Array, task_id) -> jax.Array:
  """``rows[task_id]`` as ``[1, width]`` (the id clamped into range, as a
  dynamic slice would). A one-row gather rather than a dynamic slice: when
  the rows are sharded along the task axis (:mod:`supsup_jax.
  sharded_inference`) the compiler reads the row on the device that holds it
  and all-reduces that one row, where a dynamic slice gathers the whole bank
  onto every device first. The same bytes either way."""
  return rows.at[jnp.reshape(task_id, (1,))].get(mode="clip")


def _describe(x) -> str:
  dtype = getattr(x, "dtype", None)
  if dtype is None or isinstance(x, np.generic):
    return f"{x!r} ({type(x).__name__})"
  if isinstance(x, jax.core.Tracer):
    return f"a traced array of dtype {dtype} and shape {tuple(np.shape(x))}"
  return f"an array of dtype {dtype} and shape {tuple(np.shape(x))}" + (
      f" ({np.asarray(x).item()!r})" if np.ndim(x) == 0 else "")


def _id_error(task_id, what: str) -> ValueError:
  return ValueError(f"{what} must be an integer scalar (Python, NumPy or JAX int), got "
                    f"{_describe(task_id)}; pass e.g. 3 or jnp.int32(3)")


def _static_id(task_id, what: str = "task id") -> int | None:
  """Checks what is known even under ``jit`` (an integer scalar, not a bool);
  returns the id as a Python int when it is concrete, else None (traced)."""
  if isinstance(task_id, bool) or isinstance(task_id, (float, complex, str)):
    raise _id_error(task_id, what)
  if isinstance(task_id, (int, np.integer)):
    return operator.index(task_id)
  dtype = getattr(task_id, "dtype", None)
  if dtype is None or np.ndim(task_id) != 0 or not jnp.issubdtype(dtype, jnp.integer):
    raise _id_error(task_id, what)
  if isinstance(task_id, jax.core.Tracer):
    return None
  return int(task_id)


def _stored(bank: BankState) -> int | None:
  """The number of stored tasks as a Python int, or None under tracing."""
  return None if isinstance(bank.num_tasks, jax.core.Tracer) else int(bank.num_tasks)


@jax.jit
def _binary_flags(leaves):
  return jnp.stack([jnp.all((x == 0) | (x == 1)) for x in leaves])


def check_masks(layout: Layout, masks: Mapping) -> None:
  """One-line ValueError unless ``masks`` has the layout's leaves and, where
  its values are concrete, every value is exactly 0 or 1 (NaN refused). Under
  tracing only the structure and shapes are checked."""
  layout.check_tree(masks)
  if not checks.is_concrete(masks):
    return
  flat = tree_lib.flatten(masks)
  paths = sorted(flat)
  ok = checks.host_flags(_binary_flags, [flat[p] for p in paths])
  bad = [tree_lib.path_str(p) for p, good in zip(paths, ok) if not good]
  if bad:
    raise ValueError(f"masks must be exactly 0 or 1, but mask leaves {bad} hold other or "
                     "non-finite values; store masks_from_scores(...) output, not scores")


def check_put_id(bank: BankState, task_id) -> int | None:
  """The id :func:`put` may write as a Python int (None when traced): an
  integer in ``0..min(num_tasks, capacity - 1)`` (append or replace, no gap).
  ``num_tasks`` is only compared when the bank itself is concrete."""
  t = _static_id(task_id)
  if t is None:
    return None
  if t < 0:
    raise ValueError(f"task id {t} is negative; task ids count from 0")
  if t >= bank.capacity:
    raise ValueError(f"task id {t} is outside the bank's capacity 0..{bank.capacity - 1}; "
                     f"make room first: bank.grow(state, {t + 1})")
  n = _stored(bank)
  if n is not None and t > n:
    raise ValueError(f"task id {t} would leave a gap: the bank holds tasks 0..{n - 1}; "
                     f"put task {n} next or replace a stored one" if n else
                     f"task id {t} would leave a gap: the bank is empty; put task 0 first")
  return t


def put(bank: BankState, task_id, masks: Mapping) -> BankState:
  """Stores ``masks`` as task ``task_id``: appends task ``num_tasks`` or
  replaces a stored one (the counts follow). Pure and jittable.

  Where ``task_id``, the bank and ``masks`` are concrete, refuses (one-line
  ValueError) a float or bool id, a negative id, one past the capacity, one
  that would leave a gap (``> num_tasks``), and masks that are not exactly
  0/1. Under ``jit`` with a traced id (or bank) those values cannot be read:
  an id outside ``0..min(num_tasks, capacity - 1)`` then returns the bank
  **unchanged** (rows, counts and ``num_tasks`` as they were), and masks are
  stored as ``masks > 0.5`` (a NaN entry stored as 0). Integer dtype, shape
  and tree structure are checked under ``jit`` too.
  """
  check_put_id(bank, task_id)
  check_masks(bank.layout, masks)
  return _put(bank, task_id, masks)


def _put(bank: BankState, task_id, masks: Mapping) -> BankState:
  row, bits = _encode(bank, masks)
  task_id = jnp.asarray(task_id, jnp.int32)
  valid = (task_id >= 0) & (task_id <= bank.num_tasks) & (task_id < bank.capacity)
  at = jnp.clip(task_id, 0, bank.capacity - 1)
  old_row = _row(bank.rows, at)
  old_bits = unpack_rows(bank, old_row)[0].astype(jnp.int32)
  return bank.replace(
      rows=jax.lax.dynamic_update_slice_in_dim(
          bank.rows, jnp.where(valid, row[None], old_row), at, 0),
      counts=bank.counts + jnp.where(valid, bits - old_bits, 0),
      num_tasks=jnp.where(valid, jnp.maximum(bank.num_tasks, task_id + 1),
                          bank.num_tasks).astype(bank.num_tasks.dtype))


def add(bank: BankState, masks: Mapping) -> BankState:
  """Appends ``masks`` as task ``num_tasks`` (:func:`put`; under ``jit`` a
  full bank is returned unchanged)."""
  return put(bank, bank.num_tasks, masks)


def _check_stored_id(bank: BankState, t: int, n: int | None) -> None:
  """``t`` must be stored (``n`` tasks; None: traced, then within capacity)."""
  if n is not None:
    check_task_id(t, n)
  elif not 0 <= t < bank.capacity:
    raise ValueError(f"task id {t} is outside the bank's capacity 0..{bank.capacity - 1}")


def get(bank: BankState, task_id) -> dict:
  """One stored task's masks tree (float32 0/1); ``task_id`` may be traced.

  A concrete id must be an integer in ``0..num_tasks - 1`` (one-line
  ValueError otherwise: float, bool, negative, never added). Under ``jit``
  with a traced id (or bank) an id outside ``0..num_tasks - 1`` returns
  all-zero masks, never another task's.
  """
  t = _static_id(task_id)
  if t is not None:
    _check_stored_id(bank, t, _stored(bank))
  task_id = jnp.asarray(task_id, jnp.int32)
  valid = (task_id >= 0) & (task_id < bank.num_tasks)
  row = _row(bank.rows, jnp.clip(task_id, 0, bank.capacity - 1))
  row = jnp.where(valid, row, jnp.zeros_like(row))
  return bank.layout.unflatten(unpack_rows(bank, row)[0])


def _static_ids(task_ids) -> tuple[jax.Array, list[int] | None]:
  """(ids as int32 [k], their Python ints or None when traced)."""
  if isinstance(task_ids, (list, tuple, range)):
    ints = [_static_id(t, "every task id") for t in task_ids]
    if any(t is None for t in ints):  # a list holding tracers
      return jnp.stack([jnp.asarray(t, jnp.int32) for t in task_ids]), None
    return jnp.asarray(np.asarray(ints, np.int64).astype(np.int32)), ints
  dtype = getattr(task_ids, "dtype", None)
  if dtype is None or np.ndim(task_ids) != 1 or not jnp.issubdtype(dtype, jnp.integer):
    what = (f"dtype {dtype} and shape {np.shape(task_ids)}" if dtype is not None
            else f"{task_ids!r} ({type(task_ids).__name__})")
    raise ValueError(f"task ids must be a 1-D sequence of integers, got {what}; "
                     "e.g. [0, 2] or jnp.array([0, 2]) (one task: get)")
  if isinstance(task_ids, jax.core.Tracer):
    return task_ids.astype(jnp.int32), None
  ints = [int(t) for t in np.asarray(task_ids)]
  return jnp.asarray(task_ids, jnp.int32), ints


def stacked(bank: BankState, task_ids) -> dict:
  """Masks of several stored tasks as one tree with a leading task axis [k, ...].

  Concrete ids are checked as in :func:`get`; under ``jit`` a traced id
  outside ``0..num_tasks - 1`` gives all-zero masks at its position.
  """
  ids, ints = _static_ids(task_ids)
  if ints is not None:
    n = _stored(bank)
    for t in ints:
      _check_stored_id(bank, t, n)
  valid = (ids >= 0) & (ids < bank.num_tasks)
  rows = bank.rows[jnp.clip(ids, 0, bank.capacity - 1)]
  rows = jnp.where(valid[:, None], rows, jnp.zeros_like(rows))
  return bank.layout.unflatten(unpack_rows(bank, rows))


def mean_masks(bank: BankState, scale=None) -> dict:
  """The mean of all stored masks (uniform superposition alpha = 1/num_tasks),
  or ``counts / scale`` (alpha = 1/scale for every stored mask).

  Refuses an empty bank (no ``scale``) and a ``scale`` that is not a finite
  number > 0 where they are concrete; under ``jit`` an empty bank gives NaN
  masks (0 / 0).
  """
  if scale is None:
    if _stored(bank) == 0:
      raise ValueError("the mask bank is empty: no mean mask; put a task first")
    denom = bank.num_tasks
  else:
    if isinstance(scale, (bool, str)) or np.ndim(scale) != 0:
      raise ValueError(f"scale must be a number > 0, got {scale!r}")
    if checks.is_concrete(scale) and not 0 < float(scale) < np.inf:
      raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    denom = scale
  return bank.layout.unflatten(bank.counts.astype(jnp.float32)
                               / jnp.asarray(denom, jnp.float32))


def _byte_lut(flat_g: jax.Array, num_bytes: int) -> jax.Array:
  """lut[j, v] = sum_b bit_b(v) * g[8j + b] (numpy bit order: MSB first)."""
  g = jnp.pad(flat_g, (0, num_bytes * 8 - flat_g.shape[0])).reshape(num_bytes, 8)
  values = jnp.arange(256, dtype=jnp.uint8)
  shifts = (7 - jnp.arange(8)).astype(jnp.uint8)
  bits = ((values[:, None] >> shifts[None, :]) & 1).astype(g.dtype)  # [256, 8]
  return g @ bits.T  # [num_bytes, 256]


def rows_dot(rows: jax.Array, flat_g: jax.Array, num_rows=None, *,
             packed: bool = True, block: int = 64) -> jax.Array:
  """``unpack(rows[:num_rows]) @ flat_g`` without unpacking to floats.

  Args:
    rows: ``[capacity, bytes]`` uint8 (packed) or ``[capacity, num_bits]`` bool.
      Passed whole (no slicing copy).
    flat_g: ``[num_bits]`` float32.
    num_rows: rows in use (may be traced); only those rows are read, so one
      compiled program serves a growing bank.
    block: rows per block of the XLA path (bounds temporaries to block x bytes).
  Returns:
    ``[capacity]`` float32; entries past ``num_rows`` are 0.

  Packed float32 rows on the CPU backend go through the compiled kernel of
  :mod:`supsup_jax.bitdot` (16 bits of a row are a 16-lane AVX-512 write mask
  over ``flat_g``; ~10x faster than XLA's gather). Elsewhere, or when the
  kernel cannot be built, packed rows use a per-byte lookup table: for byte
  position j, ``lut[j, v] = sum_b bit_b(v) * g[8j + b]``, so a row's product
  is ``sum_j lut[j, rows[i, j]]``. Both sum in a different order than a
  dense matmul (float round-off only); differentiable in ``flat_g``.
  """
  num_rows = rows.shape[0] if num_rows is None else num_rows
  if (packed and rows.ndim == 2 and rows.dtype == jnp.uint8 and flat_g.ndim == 1
      and flat_g.dtype == jnp.float32 and jax.default_backend() == "cpu"):
    from supsup_jax import bitdot  # pylint: disable=import-outside-toplevel
    if bitdot.available():
      return _rows_dot_kernel(block, rows, flat_g, jnp.asarray(num_rows, jnp.int32))
  return _rows_dot_xla(rows, flat_g, num_rows, packed=packed, block=block)


def _rows_dot_xla(rows, flat_g, num_rows, *, packed: bool, block: int):
  """:func:`rows_dot` in XLA ops (lookup table for packed rows)."""
  capacity = rows.shape[0]
  if capacity % block:
    pad = block - capacity % block
    rows = jnp.pad(rows, ((0, pad), (0, 0)))
  if packed:
    lut = _byte_lut(flat_g, rows.shape[1])

    def one(rb):
      return jnp.take_along_axis(lut, rb.T.astype(jnp.int32), axis=1).sum(0)
  else:
    def one(rb):
      return rb.astype(flat_g.dtype) @ flat_g

  def body(i, out):
    rb = jax.lax.dynamic_slice_in_dim(rows, i * block, block)
    return jax.lax.dynamic_update_slice_in_dim(out, one(rb), i * block, 0)

  n_blocks = (num_rows + block - 1) // block
  out = jax.lax.fori_loop(0, n_blocks, body, jnp.zeros((rows.shape[0],), flat_g.dtype))
  return out[:capacity]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rows_dot_kernel(block, rows, flat_g, num_rows):
  from supsup_jax import bitdot  # pylint: disable=import-outside-toplevel
  return bitdot.rows_dot(rows, flat_g, num_rows)


def _rows_dot_kernel_fwd(block, rows, flat_g, num_rows):
  return _rows_dot_kernel(block, rows, flat_g, num_rows), (rows, flat_g, num_rows)


def _rows_dot_kernel_bwd(block, res, ct):
  # The kernel has no transpose: the cotangent of flat_g is the XLA path's.
  rows, flat_g, num_rows = res
  # Rows past num_rows are 0 in the kernel's output whatever they hold; the
  # XLA path reads whole blocks, so their cotangent is dropped first.
  ct = jnp.where(jnp.arange(ct.shape[0]) < num_rows, ct, 0)
  _, vjp = jax.vjp(lambda g: _rows_dot_xla(rows, g, num_rows, packed=True,
                                           block=block), flat_g)
  (g_ct,) = vjp(ct)
  return (np.zeros(rows.shape, jax.dtypes.float0), g_ct,
          np.zeros((), jax.dtypes.float0))


_rows_dot_kernel.defvjp(_rows_dot_kernel_fwd, _rows_dot_kernel_bwd)


def rows_matmul(rows: jax.Array, g: jax.Array, num_rows=None, *,
                packed: bool = True, block: int = 64) -> jax.Array:
  """``unpack(rows[:num_rows]) @ g.T`` for N vectors ``g [N, num_bits]``:
  ``[capacity, N]`` float32, zero past ``num_rows`` (the XLA path: past
  whole blocks of ``block`` rows, which are zero in a bank).

  Packed float32 rows on CPU use :func:`supsup_jax.bitdot.rows_matmul`
  (masked adds, no unpacking; ~15x the XLA path); elsewhere ``block`` rows
  at a time are unpacked to float32 and multiplied. Differentiable in ``g``.
  """
  num_rows = rows.shape[0] if num_rows is None else num_rows
  if (packed and rows.ndim == 2 and rows.dtype == jnp.uint8 and g.ndim == 2
      and g.dtype == jnp.float32 and jax.default_backend() == "cpu"):
    from supsup_jax import bitdot  # pylint: disable=import-outside-toplevel
    if bitdot.available():
      return _rows_matmul_kernel(block, rows, g, jnp.asarray(num_rows, jnp.int32))
  return _rows_matmul_xla(rows, g, num_rows, packed=packed, block=block)


def _rows_matmul_xla(rows, g, num_rows, *, packed: bool, block: int):
  capacity, num_bits = rows.shape[0], g.shape[1]
  if capacity % block:
    rows = jnp.pad(rows, ((0, block - capacity % block), (0, 0)))

  def body(i, out):
    rb = jax.lax.dynamic_slice_in_dim(rows, i * block, block)
    bits = jnp.unpackbits(rb, axis=-1, count=num_bits) if packed else rb
    return jax.lax.dynamic_update_slice_in_dim(
        out, bits.astype(g.dtype) @ g.T, i * block, 0)

  n_blocks = (num_rows + block - 1) // block
  out = jax.lax.fori_loop(0, n_blocks, body,
                          jnp.zeros((rows.shape[0], g.shape[0]), g.dtype))
  return out[:capacity]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rows_matmul_kernel(block, rows, g, num_rows):
  from supsup_jax import bitdot  # pylint: disable=import-outside-toplevel
  return bitdot.rows_matmul(rows, g, num_rows)


def _rows_matmul_kernel_fwd(block, rows, g, num_rows):
  return _rows_matmul_kernel(block, rows, g, num_rows), (rows, g, num_rows)


def _rows_matmul_kernel_bwd(block, res, ct):
  rows, g, num_rows = res  # as _rows_dot_kernel_bwd
  ct = jnp.where((jnp.arange(ct.shape[0]) < num_rows)[:, None], ct, 0)
  _, vjp = jax.vjp(lambda g: _rows_matmul_xla(rows, g, num_rows, packed=True,
                                              block=block), g)
  (g_ct,) = vjp(ct)
  return (np.zeros(rows.shape, jax.dtypes.float0), g_ct,
          np.zeros((), jax.dtypes.float0))


_rows_matmul_kernel.defvjp(_rows_matmul_kernel_fwd, _rows_matmul_kernel_bwd)


def rows_weighted_sum(rows: jax.Array, a: jax.Array, num_rows, num_bits: int, *,
                      packed: bool = True, block: int = 64) -> jax.Array:
  """``a[:, :num_rows] @ unpack(rows[:num_rows])``: ``[N, num_bits]`` float32
  for per-row weights ``a [N, capacity]`` (binary inference: each unit's
  alive tasks). On CPU the compiled kernel (:func:`supsup_jax.bitdot.rows_weighted_sum`); elsewhere ``block`` rows at a time unpacked and
  multiplied. Not differentiable on the kernel path."""
  if (packed and rows.ndim == 2 and rows.dtype == jnp.uint8 and a.ndim == 2
      and jax.default_backend() == "cpu"):
    from supsup_jax import bitdot  # pylint: disable=import-outside-toplevel
    if bitdot.available():
      return bitdot.rows_weighted_sum(rows, a.astype(jnp.float32), num_rows, num_bits)
  capacity = rows.shape[0]
  a = a.astype(jnp.float32)
  if capacity % block:
    rows = jnp.pad(rows, ((0, block - capacity % block), (0, 0)))
    a = jnp.pad(a, ((0, 0), (0, block - capacity % block)))

  def add_block(i, acc):
    ab = jax.lax.dynamic_slice_in_dim(a, i * block, block, axis=1)
    rb = jax.lax.dynamic_slice_in_dim(rows, i * block, block)
    bits = jnp.unpackbits(rb, axis=-1, count=num_bits) if packed else rb
    return acc + ab @ bits.astype(jnp.float32)

  n_blocks = (num_rows + block - 1) // block
  return jax.lax.fori_loop(0, n_blocks, add_block,
                           jnp.zeros((a.shape[0], num_bits), jnp.float32))


def dot(bank: BankState, flat_g: jax.Array, *, block: int = 64) -> jax.Array:
  """``[capacity]``: the product of every stored mask with ``flat_g``
  (``[num_bits]``); zero past ``num_tasks``. Pure and jittable."""
  if np.shape(flat_g) != (bank.layout.num_bits,):
    raise ValueError(f"flat_g must have shape ({bank.layout.num_bits},) (one value per "
                     f"maskable weight, bank.layout.flatten(tree)), got {np.shape(flat_g)}")
  return rows_dot(bank.rows, flat_g, bank.num_tasks, packed=bank.packed, block=block)


def grow(bank: BankState, capacity: int) -> BankState:
  """The same bank with room for ``capacity`` tasks (host-side copy)."""
  capacity = capacity_for(capacity)
  if capacity <= bank.capacity:
    return bank
  rows = jnp.zeros((capacity, bank.rows.shape[1]), bank.rows.dtype)
  return bank.replace(rows=rows.at[:bank.capacity].set(bank.rows))


_put_jit = jax.jit(put, donate_argnums=0)


def check_task_id(task_id, num_tasks: int) -> int:
  """A stored task id as a Python int: accepts Python, NumPy and JAX integer
  scalars (concrete), refuses floats, bools and ids not in ``0..num_tasks - 1``."""
  t = _static_id(task_id)
  if t is None:
    raise ValueError(f"task id {task_id!r} is traced: check_task_id needs a concrete id "
                     "(call it outside jit)")
  if not 0 <= t < num_tasks:
    raise ValueError(
        f"task id {t} was never added to the mask bank; stored task ids are "
        f"0..{num_tasks - 1}" if num_tasks else
        f"task id {t} was never added: the mask bank is empty")
  return t


class MaskBank:
  """A mutable wrapper around a :class:`BankState` that grows by doubling.

  Convenient outside ``jit`` (``bank.add(masks)``, ``bank.get(3)``); the
  pure state is ``bank.state``, which every inference function also accepts.

  Args:
    template: a tree with exactly the leaves (paths and shapes) of one
      task's masks: a masks or scores tree, or the maskable subtree of the
      weights (every leaf of ``template`` gets bits in a row).
    packed: store 1 bit per weight (True: uint8 rows of
      ``ceil(num_bits / 8)`` bytes) or 1 bool byte per weight (False).
    capacity: initial number of rows (rounded up to a multiple of
      ``ROW_ALIGN``); :meth:`add` doubles it when full.

  Attributes:
    num_tasks: number of tasks stored (a Python int); their ids are
      ``0 .. num_tasks - 1``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import supsup_jax as ss
    >>> scores = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (784, 300))}}
    >>> bank = ss.MaskBank(scores)
    >>> bank.add(ss.masks_from_scores(scores, "topk", k=0.5))
    0
    >>> bank.num_tasks, bank.bytes_per_task
    (1, 29400)
    >>> bank.get(0)["Dense_0"]["kernel"].mean()
    Array(0.5, dtype=float32)
  """

  def __init__(self, template: Mapping, *, packed: bool = True, capacity: int = 16):
    """Args:
      template: a masks (or scores/weights) tree giving the leaf shapes.
      packed: store 1 bit per weight (True) or 1 bool byte per weight.
      capacity: initial number of rows; grows by doubling.
    """
    self._state = init(template, capacity, packed=packed)
    self.num_tasks = 0

  @property
  def state(self) -> BankState:
    """The current pure :class:`BankState` (replaced, not mutated, by :meth:`add`)."""
    return self._state

  @property
  def layout(self) -> Layout:
    """The :class:`Layout` of one task's masks tree."""
    return self._state.layout

  @property
  def packed(self) -> bool:
    """Whether rows are bit-packed (uint8) rather than bool."""
    return self._state.packed

  @property
  def bytes_per_task(self) -> int:
    """Bytes one task's masks occupy: ``ceil(num_bits / 8)`` packed, else ``num_bits``."""
    return self._state.bytes_per_task

  @property
  def nbytes(self) -> int:
    """Bytes used by the stored tasks (not the spare capacity)."""
    return self.bytes_per_task * self.num_tasks

  @property
  def rows(self) -> jax.Array:
    """The stored rows, ``[num_tasks, bytes_per_task]``; a copy."""
    return self._state.rows[:self.num_tasks]

  @property
  def storage(self) -> jax.Array:
    """All ``[capacity, bytes_per_task]`` rows (no copy)."""
    return self._state.rows

  @property
  def counts(self) -> jax.Array:
    """``[num_bits]`` int32: per weight, the number of stored masks keeping it."""
    return self._state.counts

  def add(self, masks: Mapping) -> int:
    """Stores one task's 0/1 masks tree; returns its id. Refuses masks that
    are not exactly 0/1 (NaN included) or do not match the layout.

    Args:
      masks: one task's masks, with the template's leaves and shapes and
        values exactly 0 or 1 (e.g. :func:`~supsup_jax.masks.masks_from_scores`).

    Returns:
      The new task's id, ``num_tasks`` before the call (Python int).

    Raises:
      ValueError: ``masks`` does not match the layout or holds values other
        than 0 and 1.
    """
    check_masks(self.layout, masks)
    if self.num_tasks == self._state.capacity:
      self._state = grow(self._state, 2 * self._state.capacity)
    self._state = _put_jit(self._state, jnp.int32(self.num_tasks), masks)
    self.num_tasks += 1
    return self.num_tasks - 1

  def unpack_rows(self, rows: jax.Array) -> jax.Array:
    """Rows ``[k, bytes_per_task]`` of this bank -> float32 0/1 ``[k, num_bits]``."""
    return unpack_rows(self._state, rows)

  def get(self, task_id) -> dict:
    """One task's masks tree (float32 0/1).

    Args:
      task_id: integer scalar (Python, NumPy or JAX); a concrete id must be
        in ``0 .. num_tasks - 1``. A traced id is read as :func:`get` does
        (all-zero masks when out of range).

    Returns:
      A nested dict with the template's structure and leaf shapes, float32
      0/1 values.

    Raises:
      ValueError: a concrete id that is not an integer or was never added.
    """
    if checks.is_concrete(task_id):
      task_id = check_task_id(task_id, self.num_tasks)
    return get(self._state, task_id)

  def stacked(self, task_ids: Sequence[int] | None = None) -> dict:
    """Masks of several tasks as one tree with a leading task axis [k, ...].

    Args:
      task_ids: stored task ids (concrete integers), or None for all
        ``num_tasks`` tasks in order.

    Returns:
      A nested dict with the template's structure whose leaves are float32
      0/1 ``[k, *leaf_shape]``, entry i the masks of ``task_ids[i]``.

    Raises:
      ValueError: an id that is not an integer or was never added.
    """
    if task_ids is None:
      task_ids = range(self.num_tasks)
    return stacked(self._state, [check_task_id(t, self.num_tasks) for t in task_ids])

  def mean_masks(self) -> dict:
    """The mean of the stored masks (uniform superposition, alpha =
    1/num_tasks): a float32 tree with the template's structure, per weight
    the fraction of tasks keeping it. ValueError when the bank is empty."""
    if not self.num_tasks:
      raise ValueError("the mask bank is empty: no mean mask")
    return mean_masks(self._state)

  def state_dict(self) -> dict:
    """The stored tasks as NumPy arrays, for checkpoints.

    Returns:
      ``{"rows": [max(1, num_tasks), bytes_per_task] uint8 (bool if not packed),
      "counts": [num_bits] int32, "num_tasks": int64 scalar}``; the spare
      capacity is not saved. :meth:`load_state_dict` reads it back.
    """
    rows = self._state.rows[:max(1, self.num_tasks)]
    return {"rows": np.asarray(rows), "counts": np.asarray(self._state.counts),
            "num_tasks": np.int64(self.num_tasks)}

  def load_state_dict(self, state: Mapping) -> "MaskBank":
    """Replaces the stored tasks with those of a :meth:`state_dict`.

    Args:
      state: ``{"rows", "counts", "num_tasks"}`` as :meth:`state_dict` gives
        them, from a bank of the same layout and packing.

    Returns:
      This bank (loaded in place), with capacity ``num_tasks`` rounded up to
      a multiple of ``ROW_ALIGN``.

    Raises:
      ValueError: the rows' width does not match this bank's (another model
        or packing).
    """
    rows = np.asarray(state["rows"])
    n = int(state["num_tasks"])
    if rows.shape[1:] != self._state.rows.shape[1:]:
      raise ValueError(f"mask bank rows have shape {rows.shape[1:]}, expected "
                       f"{self._state.rows.shape[1:]} for this model")
    full = np.zeros((capacity_for(n), rows.shape[1]), rows.dtype)
    full[:n] = rows[:n]
    self._state = self._state.replace(
        rows=jnp.asarray(full, self._state.rows.dtype),
        counts=jnp.asarray(state["counts"], jnp.int32), num_tasks=jnp.int32(n))
    self.num_tasks = n
    return self


def as_state(bank) -> BankState:
  """A :class:`BankState` from a state or a :class:`MaskBank`."""
  return bank.state if isinstance(bank, MaskBank) else bank
