"""Beyond one device: the device mesh of a run, where arrays live, multi-host set-up.

A run's devices form a :class:`jax.sharding.Mesh` given by ``config.mesh``, a
sequence of ``(axis name, size)`` pairs (``-1``: all remaining devices):

* ``"tasks"``: task parallelism. ``tasks_in_parallel`` tasks' states are
  stacked on a leading axis sharded over it, so each device trains its own
  tasks' masks; the frozen weights, the learner's memory and the in-memory
  datasets are replicated once per device (not once per task), except what
  the learner lays out itself (``Learner.place_memory``: SupSup splits its
  mask bank's rows over all devices, :mod:`supsup_jax.sharded_inference`).
* ``"data"``: data parallelism. Each task's batch is sharded over it; the
  compiler (GSPMD) turns every reduction over the batch into a cross-device
  all-reduce: the loss mean and hence the score gradients, and the batch-norm
  mean/variance of each task, which are therefore those of the global batch
  (exactly as on one device, up to float summation order).

The default ``(("data", -1),)`` puts all devices on "data"; on one device it
is the single-device run. Bad meshes are refused in one line before anything
is compiled (:func:`make_mesh`, :func:`check_parallel`).

Multi-host (one process per host, all running the same program): call
:func:`maybe_initialize` first (``jax.distributed.initialize`` when asked by a
spec or the usual environment); the mesh then spans the devices of all
processes, only process 0 writes results, plots and TensorBoard events
(:func:`is_writer`), and host-fed batches are split by process
(:func:`host_batch`).
"""
from __future__ import annotations

import ast
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

TASKS, DATA = "tasks", "data"
DEFAULT_MESH = ((DATA, -1),)


# -- multi-host --------------------------------------------------------------

def maybe_initialize(spec: str | None = None) -> bool:
  """Calls ``jax.distributed.initialize`` when asked; True if it did.

  spec: ``""``/None: read ``$SUPSUP_DISTRIBUTED``; then
    * ``"auto"``: JAX's cluster auto-detection (Cloud TPU pods, SLURM, Open MPI,
      Kubernetes/GKE);
    * ``"host:port,num_processes,process_id"``: an explicit coordinator;
    * empty: initialize only if ``$JAX_COORDINATOR_ADDRESS``,
      ``$JAX_NUM_PROCESSES`` and ``$JAX_PROCESS_ID`` are all set (the usual
      environment of a hand-started multi-process job), else do nothing.

  Must run before any JAX computation. On CPU the processes exchange
  collectives through gloo (``jax_cpu_collectives_implementation``).
  """
  spec = (spec if spec is not None else os.environ.get("SUPSUP_DISTRIBUTED", "")).strip()
  if jax.distributed.is_initialized():
    return False
  kwargs: dict[str, Any] = {}
  if spec == "auto":
    pass
  elif spec:
    parts = spec.split(",")
    try:
      address, num, pid = parts[0], int(parts[1]), int(parts[2])
      ok = ":" in address and num >= 1 and 0 <= pid < num and len(parts) == 3
    except (IndexError, ValueError):
      ok = False
    if not ok:
      raise ValueError(f"distributed spec {spec!r} must be 'auto' or "
                       "'host:port,num_processes,process_id' (e.g. 'localhost:1234,2,0')")
    kwargs = dict(coordinator_address=address, num_processes=num, process_id=pid)
  else:
    env = [os.environ.get(k) for k in
           ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")]
    if not all(env):
      return False
    kwargs = dict(coordinator_address=env[0], num_processes=int(env[1]),
                  process_id=int(env[2]))
  if "heartbeat" in os.environ.get("SUPSUP_DISTRIBUTED_OPTIONS", ""):
    kwargs["heartbeat_timeout_seconds"] = 10  # tests: notice a killed peer fast
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  return True


def is_writer() -> bool:
  """True in the process that writes results, plots and TensorBoard (process 0)."""
  return jax.process_index() == 0


class NullWriter:
  """A scalars writer that writes nothing (processes other than 0)."""

  def write(self, *args, **kwargs) -> None:
    del args, kwargs

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def barrier(name: str) -> None:
  """All processes wait here (no-op in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


# -- the mesh ----------------------------------------------------------------

def parse_mesh(spec) -> tuple[tuple[str, int], ...]:
  """``config.mesh`` (pairs, or their Python literal as a string) -> pairs."""
  if spec is None or spec == "" or spec == ():
    return DEFAULT_MESH
  if isinstance(spec, str):
    try:
      spec = ast.literal_eval(spec)
    except (ValueError, SyntaxError):
      raise ValueError(f"config.mesh {spec!r} is not a list of (axis name, size) "
                       "pairs, e.g. \"[('tasks', 4), ('data', 2)]\"") from None
  try:
    pairs = tuple((str(name), size) for name, size in spec)
  except (TypeError, ValueError):
    raise ValueError(f"config.mesh {spec!r} is not a list of (axis name, size) "
                     "pairs, e.g. [('tasks', 4), ('data', 2)]") from None
  names = [n for n, _ in pairs]
  if not pairs or len(set(names)) != len(names):
    raise ValueError(f"config.mesh {spec!r} needs at least one axis and distinct "
                     "axis names, e.g. [('tasks', 4), ('data', 2)]")
  for name, size in pairs:
    if name not in (TASKS, DATA):
      raise ValueError(f"config.mesh axis {name!r} unknown; allowed: {TASKS!r} "
                       f"(tasks in parallel), {DATA!r} (the batch)")
    if (not isinstance(size, (int, np.integer)) or isinstance(size, bool)
        or (size < 1 and size != -1)):
      raise ValueError(f"config.mesh axis {name!r} has size {size!r}; sizes are "
                       "ints >= 1, or -1 for all remaining devices")
  if sum(size == -1 for _, size in pairs) > 1:
    raise ValueError(f"config.mesh {spec!r} has more than one -1 axis; at most one "
                     "axis takes the remaining devices")
  return tuple((n, int(s)) for n, s in pairs)


def resolve_mesh_shape(spec, num_devices: int) -> tuple[tuple[str, int], ...]:
  """Pairs with ``-1`` resolved; one-line error unless their product divides
  ``num_devices``."""
  pairs = parse_mesh(spec)
  fixed = math.prod(s for _, s in pairs if s != -1)
  if any(s == -1 for _, s in pairs):
    if num_devices % fixed:
      raise ValueError(
          f"config.mesh {list(pairs)}: the fixed axes ({fixed} devices) do not divide "
          f"the {num_devices} devices; use sizes whose product divides {num_devices}, "
          f"e.g. [('data', {num_devices})]")
    pairs = tuple((n, num_devices // fixed if s == -1 else s) for n, s in pairs)
  size = math.prod(s for _, s in pairs)
  if num_devices % size:
    raise ValueError(
        f"config.mesh {list(pairs)} has {size} devices, which does not divide the "
        f"{num_devices} devices; use sizes whose product divides {num_devices}, "
        f"e.g. [('data', -1)] or [('tasks', {num_devices})]")
  return pairs


def make_mesh(spec=None, devices: Sequence | None = None) -> Mesh:
  """The :class:`Mesh` of ``config.mesh`` over ``devices`` (default: all
  devices of all processes). A mesh smaller than the device count uses the
  first devices. Axes are ``Auto`` (the compiler propagates shardings)."""
  devices = list(jax.devices() if devices is None else devices)
  pairs = resolve_mesh_shape(spec, len(devices))
  size = math.prod(s for _, s in pairs)
  return jax.make_mesh(tuple(s for _, s in pairs), tuple(n for n, _ in pairs),
                       axis_types=(AxisType.Auto,) * len(pairs), devices=devices[:size])


def mesh_from_config(config) -> Mesh:
  return make_mesh(config.get("mesh"))


def axis_size(mesh: Mesh, name: str) -> int:
  return int(mesh.shape.get(name, 1))


def describe(mesh: Mesh) -> dict:
  """JSON-able description for results.json."""
  return {"axes": [[n, int(s)] for n, s in mesh.shape.items()],
          "device_count": int(mesh.size), "process_count": jax.process_count(),
          "platform": mesh.devices.flat[0].platform}


def check_parallel(mesh: Mesh, *, tasks_in_parallel: int, batch_size: int) -> None:
  """One-line errors for a task group or batch the mesh cannot split."""
  t, d = axis_size(mesh, TASKS), axis_size(mesh, DATA)
  if tasks_in_parallel % t:
    ok = t * max(1, tasks_in_parallel // t)
    raise ValueError(
        f"config.tasks_in_parallel={tasks_in_parallel} is not divisible by the mesh's "
        f"'tasks' axis ({t} devices); use a multiple of {t}, e.g. "
        f"--config.tasks_in_parallel={ok}")
  if batch_size % d:
    ok = d * max(1, batch_size // d)
    raise ValueError(
        f"config.batch_size={batch_size} is not divisible by the mesh's 'data' axis "
        f"({d} devices); use a multiple of {d}, e.g. --config.batch_size={ok}")


# -- where arrays live -------------------------------------------------------

def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def task_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (task) axis over "tasks" (replicated if the mesh has none)."""
  return NamedSharding(mesh, P(TASKS) if TASKS in mesh.shape else P())


def batch_spec(mesh: Mesh) -> P:
  return P(DATA) if axis_size(mesh, DATA) > 1 else P()


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put(x, sharding: NamedSharding):
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.jit(lambda y: y, out_shardings=sharding)(x)
  # Every process holds the same host value; each device takes its slice.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place(tree, sharding: NamedSharding):
  """``tree`` with every array leaf on ``sharding`` (typed PRNG keys too).
  In several processes every process must pass the same values."""
  def one(x):
    if _is_key(x):
      data = _put(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      return _put(x, sharding)
    return x
  return jax.tree.map(one, tree)


def place_replicated(tree, mesh: Mesh):
  """Weights, memory, datasets: one copy per device."""
  return place(tree, replicated(mesh))


def place_tasks(tree, mesh: Mesh):
  """Stacked task states ``[T, ...]``: task axis over "tasks"."""
  return place(tree, task_sharding(mesh))


def gathered(tree):
  """Arrays readable by every process (non-addressable ones all-gathered;
  a no-op in one process): for checkpoints and host-side bookkeeping."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      mesh = x.sharding.mesh
      return jax.jit(lambda y: y, out_shardings=NamedSharding(mesh, P()))(x)
    return x
  return jax.tree.map(one, tree)


def local(tree):
  """The same values on this process's first device (from replicated or
  gathered global arrays): what single-device code (evaluation) can take."""
  if jax.process_count() == 1:
    return tree
  dev = jax.local_devices()[0]

  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if _is_key(x):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    x = gathered(x)
    return jax.device_put(x.addressable_shards[0].data, dev)
  return jax.tree.map(one, tree)


def host_batch(mesh: Mesh, images, labels):
  """A host-made global batch as arrays sharded over "data", each process
  contributing only its own rows (the batch is split by process)."""
  spec = batch_spec(mesh)
  if jax.process_count() == 1:
    sh = NamedSharding(mesh, spec)
    return jax.device_put(images, sh), jax.device_put(labels, sh)
  n, p, i = int(np.shape(labels)[0]), jax.process_count(), jax.process_index()
  if spec == P():  # no data axis: every process holds the whole batch
    return place((images, labels), replicated(mesh))
  rows = slice(i * n // p, (i + 1) * n // p)
  sh = NamedSharding(mesh, spec)
  return tuple(jax.make_array_from_process_local_data(sh, np.asarray(a)[rows], np.shape(a))
               for a in (images, labels))


# -- the jitted training chunks ----------------------------------------------

def constrain_batch(mesh: Mesh | None, *arrays):
  """Each task's batch sharded over "data" (inside jit; under the task-axis
  vmap the "tasks" axis is added to the vmapped dimension)."""
  if mesh is None or axis_size(mesh, DATA) == 1:
    return arrays
  return tuple(jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P(DATA)))
               for a in arrays)


def jit_chunk(fn, mesh: Mesh | None, *, parallel: bool, num_args: int):
  """jit of a training chunk ``fn(memory, data, state, task_id, *rest, n)``
  (n static, last; ``state`` donated), vmapped over the task axis of
  ``state`` and ``task_id`` if ``parallel``.

  With a mesh: data replicated, memory as placed (replicated, or as the
  learner laid it out: ``Learner.place_memory``; an uncommitted memory is
  replicated), the stacked task states (and task ids) sharded over "tasks"
  (``spmd_axis_name``), metrics replicated; without one, plain jit (today's
  single-device program). A mesh that splits only "tasks" runs one program
  per device instead (:func:`_task_parallel_chunk`).
  """
  static = num_args - 1
  if parallel and mesh is not None and axis_size(mesh, TASKS) > 1 and axis_size(mesh, DATA) == 1:
    return _task_parallel_chunk(fn, mesh, num_args)
  if parallel:
    spmd = TASKS if mesh is not None and TASKS in mesh.shape else None
    in_axes = (None, None, 0, 0) + (None,) * (num_args - 4)
    fn = jax.vmap(fn, in_axes=in_axes, spmd_axis_name=spmd)
  if mesh is None:
    return jax.jit(fn, static_argnums=static, donate_argnums=2)
  rep, ts = replicated(mesh), task_sharding(mesh)
  shardings: list = [rep] * static
  shardings[0] = None  # memory: the committed argument's own sharding
  if parallel:
    shardings[2] = shardings[3] = ts
  return jax.jit(fn, static_argnums=static, donate_argnums=2,
                 in_shardings=tuple(shardings),
                 out_shardings=(ts if parallel else rep, rep))


def _task_parallel_chunk(fn, mesh: Mesh, num_args: int):
  """A chunk over a mesh whose only split axis is "tasks": every device runs
  the vmapped chunk on its own tasks (``shard_map``), not one program that the
  partitioner splits. Tasks never exchange anything, so the programs are
  independent; and the library's CPU kernels (``sparse_input``,
  ``byte_gather``: custom calls without a sharding rule, which the
  partitioner would run on whole gathered operands) see only their device's
  tasks. On a CPU split into one device per core (``config.cpu_devices``)
  this is what makes ten tasks' score steps ~25 % faster than one two-thread
  device (docs/guide/benchmarks.md).

  Memory enters replicated (``P()``): a leaf the learner split over the
  devices (SupSup's bank rows) is gathered for the call, so a train step
  reads the same memory as on one device.
  """
  static = num_args - 1

  def chunk(memory, data, state, task_id, *rest):
    *rest, n = rest

    def local(memory, data, state, task_id, *rest):
      return jax.vmap(lambda s, t: fn(memory, data, s, t, *rest, n))(state, task_id)

    # check_vma off: the custom VJPs of the CPU kernels return cotangents
    # whose varying-axis types JAX cannot infer; nothing inside communicates.
    return jax.shard_map(
        local, mesh=mesh, check_vma=False,
        in_specs=(P(), P(), P(TASKS), P(TASKS)) + (P(),) * len(rest),
        out_specs=P(TASKS))(memory, data, state, task_id, *rest)

  # Metrics replicated, as on the partitioned path: every process reads them.
  return jax.jit(chunk, static_argnums=static, donate_argnums=2,
                 out_shardings=(task_sharding(mesh), replicated(mesh)))


def jit_like(fn, mesh: Mesh | None, like, **kwargs):
  """jit whose outputs are laid out as the arrays of ``like`` (``end_task``'s
  memory keeps the layout the learner placed it in: replicated, or a mask
  bank's rows left split over the devices, never gathered); plain jit
  without a mesh."""
  if mesh is None:
    return jax.jit(fn, **kwargs)
  rep = replicated(mesh)
  out = jax.tree.map(lambda x: x.sharding if isinstance(x, jax.Array) else rep, like)
  return jax.jit(fn, out_shardings=out, **kwargs)


def pad_group(group: list[int], mesh: Mesh | None, parallel: int) -> list[int]:
  """Task ids of a group, padded to ``parallel`` (repeating the last) when
  the mesh shards tasks: the last group of a run then keeps the sharded shape
  (its extra states are trained and dropped)."""
  if mesh is None or axis_size(mesh, TASKS) == 1 or parallel == 1:
    return list(group)
  return list(group) + [group[-1]] * (parallel - len(group))
