"""Task inference over a mask bank whose rows are sharded across devices.

The alpha-gradient of SupSup's superposed model (Wortsman, Ramanujan et al.,
"Supermasks in Superposition", NeurIPS 2020, arXiv 2006.14769) factorises
into one backward pass at the mean mask (G = d obj / d W_eff * W, ``[num_bits]``
per unit) and one product of every stored mask with G (see
:mod:`supsup_jax.inference`). The second pass is the one that grows with the
number of tasks; here the bank's rows ``[capacity, bytes]`` are split along
the task axis over all devices of a mesh and the pass runs where the rows
are: ``shard_map`` over the rows, :func:`supsup_jax.bank.rows_matmul` on each
device's own block (all units of a call in one pass over it). Only per-task
scalars (4 bytes per task and unit) ever leave a device; the rows are never
gathered, so a bank larger than one device's memory works. The argmin
(one-shot) is taken over the sharded gradients by the compiler; binary
rounds keep per unit the half of the candidates with the smallest gradient,
the new mean mask of the survivors being a per-shard sum followed by a
``psum`` across shards.

Everything that is not the bank (weights, BN statistics, images, G) is
replicated: G is computed identically on every device.

In a run on a mesh of several devices, SupSup's memory holds its bank laid
out by :func:`shard` (``Learner.place_memory``), and its ``infer_task`` /
``detect_task`` call :func:`oneshot_many`, :func:`binary_many` and
:func:`dot` whenever :func:`rows_mesh` finds the rows split (decided at call
time from the concrete array).
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from supsup_jax import bank as bank_lib
from supsup_jax import checks
from supsup_jax import distributed
from supsup_jax import inference
from supsup_jax.masked_model import MaskedModel


def row_spec(mesh: Mesh) -> P:
  """Rows split over every axis of the mesh (all devices hold distinct rows)."""
  return P(tuple(mesh.axis_names), None)


def row_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, row_spec(mesh))


def rows_mesh(bank) -> Mesh | None:
  """The mesh a bank's rows are split over as :func:`row_sharding` lays them
  out (rows on more than one device), or None (one device, replicated, or
  another layout): decides at call time, from the concrete array, whether
  the sharded functions of this module apply."""
  rows = bank_lib.as_state(bank).rows
  sharding = getattr(rows, "sharding", None)
  if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
    return None
  if not sharding.is_equivalent_to(row_sharding(sharding.mesh), rows.ndim):
    return None
  return sharding.mesh


def units_mesh(bank) -> Mesh | None:
  """The mesh a bank is wholly copied on (replicated over more than one
  device), or None: decides at call time whether one-shot inference splits
  the units over the devices (:func:`alpha_grads_by_units`)."""
  rows = bank_lib.as_state(bank).rows
  sharding = getattr(rows, "sharding", None)
  if (not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1
      or not sharding.is_fully_replicated):
    return None
  return sharding.mesh


@functools.partial(jax.jit, static_argnames=("masked", "layout", "objective", "packed",
                                              "mesh", "block"))
def _grads_by_units(masked, layout, weights, rows, counts, num_tasks, images_many,
                    batch_stats, objective, packed, mesh, block):
  axes = tuple(mesh.axis_names)

  def local(weights, rows, counts, num_tasks, images, batch_stats):
    return inference._alpha_grads_units(  # pylint: disable=protected-access
        masked, layout, weights, rows, counts, num_tasks, jnp.zeros((1, 1), bool), images,
        batch_stats, objective, packed, block, True)

  return jax.shard_map(local, mesh=mesh, check_vma=False,
                       in_specs=(P(), P(), P(), P(), P(axes), P()), out_specs=P(axes))(
                           weights, rows, counts, num_tasks, images_many, batch_stats)


def alpha_grads_by_units(masked: MaskedModel, weights, bank, images_many, mesh: Mesh, *,
                         objective: str = "entropy", batch_stats=None,
                         num_tasks: int | None = None) -> jax.Array:
  """Alpha-gradients ``[N, num_tasks]`` of N units ``[N, n, ...]`` at the
  uniform superposition of a bank copied whole on every device of ``mesh``
  (:func:`units_mesh`): the units are split over the devices (padded to a
  multiple of their count with copies of the first), each device computing
  its units' gradients and their products with the whole bank. The same
  numbers as :func:`supsup_jax.inference.alpha_grads_many`.

  Where the devices share one memory (a CPU split into one device per core)
  a copy per device costs nothing extra to read, and every device is busy
  whatever the bank's fill; rows split by task index (:func:`shard`) leave
  all but the first devices idle until the bank fills past their block.
  """
  state, k = inference._check_bank(bank, objective, images_many, num_tasks)  # pylint: disable=protected-access
  inference._check_units(images_many)  # pylint: disable=protected-access
  n, d = images_many.shape[0], mesh.size
  if n % d:
    images_many = jnp.concatenate(
        [images_many, jnp.broadcast_to(images_many[:1], (d - n % d, *images_many.shape[1:]))])
  block = inference._unpack_rows_per_block(state.layout.num_bits, 64)  # pylint: disable=protected-access
  grads = _grads_by_units(masked, state.layout, weights, state.rows, state.counts,
                          state.num_tasks.astype(jnp.float32), images_many, batch_stats,
                          objective, state.packed, mesh, block)
  if not checks.is_concrete(grads):  # under jit: the caller's program lays it out
    return grads[:n, :k]
  grads = distributed.gathered(grads)[:n, :k]  # readable by every process
  if not checks.all_finite(grads):
    inference._refuse_nonfinite(weights, images_many, batch_stats)  # pylint: disable=protected-access
  return grads


def _capacity_for(capacity: int, mesh: Mesh) -> int:
  """A capacity every device gets the same whole number of rows of."""
  unit = np.lcm(bank_lib.ROW_ALIGN, mesh.size)
  return int(-(-capacity // unit) * unit)


def init(template: Mapping, capacity: int, mesh: Mesh, *, packed: bool = True
         ) -> bank_lib.BankState:
  """An empty bank created directly sharded (rows never exist on one device)."""
  if not isinstance(capacity, (int, np.integer)) or capacity < 1:
    raise ValueError(f"bank capacity must be a positive int, got {capacity!r}")
  small = bank_lib.init(template, 1, packed=packed)  # layout only; 64 rows
  cap = _capacity_for(int(capacity), mesh)
  width, dtype = small.rows.shape[1], small.rows.dtype
  rows = jax.jit(lambda: jnp.zeros((cap, width), dtype), out_shardings=row_sharding(mesh))()
  rep = distributed.replicated(mesh)
  return small.replace(rows=rows, counts=jax.device_put(small.counts, rep),
                       num_tasks=jax.device_put(small.num_tasks, rep))


def shard(bank, mesh: Mesh) -> bank_lib.BankState:
  """A bank (BankState or MaskBank) with its rows split over ``mesh`` (padded
  with empty rows to a capacity every device divides)."""
  state = bank_lib.as_state(bank)
  cap = _capacity_for(state.capacity, mesh)
  rows = state.rows
  if cap != state.capacity:
    rows = np.zeros((cap, rows.shape[1]), rows.dtype)
    rows[:state.capacity] = np.asarray(state.rows)
  rep = distributed.replicated(mesh)
  return state.replace(rows=distributed.place(rows, row_sharding(mesh)),
                       counts=distributed.place(state.counts, rep),
                       num_tasks=distributed.place(state.num_tasks, rep))


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnums=0)
def _put_rows(rows, task_id, row, mesh):
  """rows[task_id] = row, done by the device that holds that row."""
  axes = tuple(mesh.axis_names)

  def local(rows_l, task_id, row):
    n = rows_l.shape[0]
    start = jax.lax.axis_index(axes) * n
    i = task_id - start
    mine = (i >= 0) & (i < n)
    i = jnp.clip(i, 0, n - 1)
    old = jax.lax.dynamic_slice_in_dim(rows_l, i, 1)
    new = jnp.where(mine, row[None], old)
    old_mine = jnp.where(mine, old, jnp.zeros_like(old))
    # The previous content of the row, from its owner (replaced tasks' counts).
    return (jax.lax.dynamic_update_slice_in_dim(rows_l, new, i, 0),
            jax.lax.psum(old_mine.astype(jnp.int32), axes).astype(rows_l.dtype))

  return jax.shard_map(local, mesh=mesh, in_specs=(row_spec(mesh), P(), P()),
                       out_specs=(row_spec(mesh), P()), check_vma=False)(rows, task_id, row)


def put(bank: bank_lib.BankState, task_id, masks: Mapping, mesh: Mesh) -> bank_lib.BankState:
  """:func:`supsup_jax.bank.put` on a sharded bank (the row is written in place
  on its device; counts, replicated, follow)."""
  # The same refusals as the single-device put: a float or bool id, a gap,
  # an id past the capacity, masks that are not 0/1.
  t = bank_lib.check_put_id(bank, task_id)
  if t is None:
    raise ValueError("sharded_inference.put needs a concrete task id (it writes the row "
                     "where it lives, outside jit)")
  bank_lib.check_masks(bank.layout, masks)
  flat = bank.layout.flatten(jax.tree.map(jax.lax.stop_gradient, dict(masks)))
  bits = flat > 0.5
  row = jnp.packbits(bits) if bank.packed else bits
  rows, old = _put_rows(bank.rows, jnp.int32(t), row, mesh)
  old_bits = bank_lib.unpack_rows(bank, old)[0].astype(jnp.int32)
  return bank.replace(rows=rows, counts=bank.counts - old_bits + bits.astype(jnp.int32),
                      num_tasks=jnp.maximum(bank.num_tasks, jnp.int32(t + 1)))


@functools.partial(jax.jit, static_argnames=("masked", "layout", "objective", "packed",
                                              "mesh", "all_alive", "block"))
def _sharded_grads(masked, layout, weights, rows, counts, num_tasks, alive, images_many,
                   batch_stats, objective, packed, mesh, all_alive, block):
  """``[N, capacity]`` alpha-gradients (sharded along capacity like the rows)
  at alpha uniform over each unit's alive tasks (all stored ones if
  ``all_alive``: the bank's counts give the mean)."""
  axes = tuple(mesh.axis_names)
  n_units = images_many.shape[0]
  n_f = num_tasks.astype(jnp.float32)
  if all_alive:
    means = jnp.broadcast_to(counts.astype(jnp.float32) / n_f, (n_units, layout.num_bits))
  else:
    def local_sums(rows_l, alive_l):
      # Per shard: sum of the alive rows, a block at a time; then across shards.
      n_blocks = rows_l.shape[0] // block

      def add(i, acc):
        rb = jax.lax.dynamic_slice_in_dim(rows_l, i * block, block)
        a = jax.lax.dynamic_slice_in_dim(alive_l, i * block, block, axis=1)
        bits = bank_lib.unpack_rows(_Packing(layout, packed), rb)
        return acc + a.astype(jnp.float32) @ bits
      acc = jax.lax.fori_loop(0, n_blocks, add,
                              jnp.zeros((alive_l.shape[0], layout.num_bits), jnp.float32))
      return jax.lax.psum(acc, axes)

    sums = jax.shard_map(local_sums, mesh=mesh, in_specs=(row_spec(mesh), P(None, axes)),
                         out_specs=P(), check_vma=False)(rows, alive)
    means = sums / jnp.sum(alive, axis=1, keepdims=True).astype(jnp.float32)

  def unit_grad(mean, images):
    return layout.flatten(inference.effective_weight_grad(
        masked, weights, layout.unflatten(mean), images, objective, batch_stats))

  g = jax.vmap(unit_grad)(means, images_many)  # [N, num_bits], replicated

  def local_dot(rows_l, g, n):
    size = rows_l.shape[0]
    n_local = jnp.clip(n - jax.lax.axis_index(axes) * size, 0, size)
    # All units in one pass over the device's rows, as on one device
    # (``inference``): on a CPU the masked-add kernel reads each row once for
    # every unit; elsewhere ``block`` rows are unpacked at a time.
    unpack = inference._unpack_rows_per_block(layout.num_bits, block)  # pylint: disable=protected-access
    return bank_lib.rows_matmul(rows_l, g, n_local, packed=packed, block=unpack).T

  return jax.shard_map(local_dot, mesh=mesh, in_specs=(row_spec(mesh), P(), P()),
                       out_specs=P(None, axes), check_vma=False)(
                           rows, g, num_tasks.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("packed", "mesh"))
def _sharded_dot(rows, flat_g, num_tasks, packed, mesh):
  axes = tuple(mesh.axis_names)

  def local(rows_l, g, n):
    size = rows_l.shape[0]
    n_local = jnp.clip(n - jax.lax.axis_index(axes) * size, 0, size)
    return bank_lib.rows_dot(rows_l, g, n_local, packed=packed)

  return jax.shard_map(local, mesh=mesh, in_specs=(row_spec(mesh), P(), P()),
                       out_specs=P(axes), check_vma=False)(
                           rows, flat_g, num_tasks.astype(jnp.int32))


def dot(bank, flat_g, mesh: Mesh) -> jax.Array:
  """:func:`supsup_jax.bank.dot` on a bank sharded by :func:`shard`:
  ``[capacity]`` products of every stored mask with ``flat_g`` (replicated
  ``[num_bits]``), each computed where its row is; the result stays sharded
  like the rows (zero past ``num_tasks``)."""
  state = bank_lib.as_state(bank)
  if not state.rows.sharding.is_equivalent_to(row_sharding(mesh), state.rows.ndim):
    raise ValueError("the bank's rows are not sharded over this mesh; pass "
                     "sharded_inference.shard(bank, mesh)")
  return _sharded_dot(state.rows, flat_g, state.num_tasks, state.packed, mesh)


class _Packing:
  """The two static fields :func:`bank.unpack_rows` reads (inside shard_map
  there is no whole BankState)."""

  def __init__(self, layout, packed):
    self.layout, self.packed = layout, packed


def _check(bank, mesh: Mesh, objective: str, images_many, num_tasks):
  state, k = inference._check_bank(bank, objective, images_many, num_tasks)  # pylint: disable=protected-access
  want = row_sharding(mesh)
  if not state.rows.sharding.is_equivalent_to(want, state.rows.ndim):
    raise ValueError("the bank's rows are not sharded over this mesh; pass "
                     "sharded_inference.shard(bank, mesh) (or a bank made by "
                     "sharded_inference.init)")
  return state, k


def _block(state, mesh: Mesh) -> int:
  rows_per_device = state.capacity // mesh.size
  block = 64
  while rows_per_device % block:
    block //= 2
  return block


def alpha_grads_many(masked: MaskedModel, weights, bank, images_many, mesh: Mesh, *,
                     objective: str = "entropy", batch_stats=None,
                     num_tasks: int | None = None, alive=None) -> jax.Array:
  """Alpha-gradients ``[N, num_tasks]`` for N units ``[N, n, ...]`` at the
  uniform superposition (over each unit's ``alive`` tasks ``[N, num_tasks]``
  bool, if given) of a bank sharded by :func:`shard`. The same numbers as
  :func:`supsup_jax.inference.alpha_grads_many`; the result stays sharded
  along the task axis."""
  state, k = _check(bank, mesh, objective, images_many, num_tasks)
  all_alive = alive is None
  if all_alive:
    alive = jnp.zeros((images_many.shape[0], state.capacity), bool)
  else:
    alive = np.pad(np.asarray(alive, bool), ((0, 0), (0, state.capacity - k)))
  alive = distributed.place(alive, NamedSharding(mesh, P(None, tuple(mesh.axis_names))))
  grads = _sharded_grads(masked, state.layout, weights, state.rows, state.counts,
                         state.num_tasks, alive, images_many, batch_stats, objective,
                         state.packed, mesh, all_alive, _block(state, mesh))
  return grads[:, :k]


@functools.partial(jax.jit, static_argnames=("k",))
def _argmin(grads, k):
  return jnp.argmin(grads[:, :k], axis=-1)


def oneshot_many(masked: MaskedModel, weights, bank, images_many, mesh: Mesh, *,
                 objective: str = "entropy", batch_stats=None,
                 num_tasks: int | None = None, unit_chunk: int = 64) -> np.ndarray:
  """One-shot task inference for N units: ``[N]`` argmins of the alpha-gradient."""
  state, k = _check(bank, mesh, objective, images_many, num_tasks)
  out = []
  for s in range(0, images_many.shape[0], unit_chunk):
    g = alpha_grads_many(masked, weights, state, images_many[s:s + unit_chunk], mesh,
                         objective=objective, batch_stats=batch_stats, num_tasks=k)
    out.append(np.asarray(distributed.gathered(_argmin(g, k))))
  return np.concatenate(out)


def binary_many(masked: MaskedModel, weights, bank, images_many, mesh: Mesh, *,
                objective: str = "entropy", batch_stats=None,
                num_tasks: int | None = None, unit_chunk: int = 16) -> np.ndarray:
  """Binary task inference for N units (as :func:`supsup_jax.inference.binary_many`):
  each round halves every unit's candidates by the sharded alpha-gradient."""
  state, k = _check(bank, mesh, objective, images_many, num_tasks)
  picks = []
  for s in range(0, images_many.shape[0], unit_chunk):
    images = images_many[s:s + unit_chunk]
    alive = np.ones((images.shape[0], k), bool)
    n_alive = k
    while n_alive > 1:
      g = alpha_grads_many(masked, weights, state, images, mesh, objective=objective,
                           batch_stats=batch_stats, num_tasks=k,
                           alive=None if n_alive == k else alive)
      g = np.where(alive, np.asarray(distributed.gathered(g)), np.inf)
      n_alive = (n_alive + 1) // 2
      order = np.argsort(g, axis=1, kind="stable")[:, :n_alive]
      alive = np.zeros_like(alive)
      np.put_along_axis(alive, order, True, axis=1)
    picks.append(np.argmax(alive, axis=1))
  return np.concatenate(picks)
