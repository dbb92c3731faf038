"""The run loop: any learner, any scenario, resumable, evaluated, recorded.

:func:`run` is what ``launch/main.py`` calls with a config and a workdir. It
builds the data stream and the learner named by ``config.method`` (see
:mod:`supsup_jax.methods`) and drives it through the scenario:

* GG, GNs, GNu: tasks one after another (or ``tasks_in_parallel`` at a time
  with ``vmap``), the task id given to training; evaluation at the configured
  points with the task given (GG) or inferred (GN).
* NNs: one stream of batches with no task id; every ``nns.check_every``
  batches the learner's ``detect_task`` decides whether the data is new
  (allocate a new slot) or which slot to keep training.

The loop knows nothing about any learner: it checkpoints the learner's
``memory`` and ``task_state`` pytrees (after each task, or at the first task
end ``checkpoint_every_minutes`` after the last save, and every
``checkpoint_every_steps`` steps), so the same command on the same workdir
resumes exactly where it stopped, and it writes ``results.json`` (last),
``accuracy.csv`` and plots to the workdir. Training is checked for
non-finite values once per logged chunk (inside the jitted chunk, no extra
host sync); a non-finite run stops with ``FloatingPointError`` and leaves
the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import distributed
from supsup_jax.runs import evaluation
from supsup_jax.runs import scaffold
from supsup_jax import learner as learner_lib
from supsup_jax import methods
from supsup_jax import metrics
from supsup_jax import state_io
from supsup_jax.data.task_free import TaskFreeStream

SCENARIOS = learner_lib.SCENARIOS


def _finite_number(config, key, *, low=None, low_inclusive=True):
  value = config.get(key)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if ok and low is not None:
    ok = value >= low if low_inclusive else value > low
  if not ok:
    bound = "" if low is None else f" {'>=' if low_inclusive else '>'} {low}"
    raise ValueError(f"config.{key} must be a finite number{bound}, got {value!r}")


NNS_DEFAULTS = {"check_every": 100, "max_masks": 2500}


def nns_part(config) -> dict:
  """``config.nns`` (the NNs loop's own keys), validated."""
  for old, new in (("nns_check_every", "check_every"), ("max_masks", "max_masks")):
    if old in config:
      raise ValueError(f"config.{old} is now config.nns.{new}")
  part = dict(NNS_DEFAULTS, **dict(config.get("nns") or {}))
  unknown = sorted(set(part) - set(NNS_DEFAULTS))
  if unknown:
    raise ValueError(f"config.nns has no key {unknown[0]!r}; allowed: "
                     f"{', '.join(sorted(NNS_DEFAULTS))}")
  for key in NNS_DEFAULTS:
    if not isinstance(part[key], int) or isinstance(part[key], bool) or part[key] < 1:
      raise ValueError(f"config.nns.{key} must be an int >= 1, got {part[key]!r}")
  return part


def _validate(config: ml_collections.ConfigDict) -> None:
  """The loop's own keys, then the learner's check of its part (both before
  any data is loaded or anything is traced)."""
  def need(cond, msg):
    if not cond:
      raise ValueError(msg)
  need(config.scenario in SCENARIOS,
       f"config.scenario {config.scenario!r} unknown; allowed: {', '.join(SCENARIOS)}")
  need(isinstance(config.num_tasks, int) and config.num_tasks >= 1,
       f"config.num_tasks must be a positive int, got {config.num_tasks!r}")
  need(isinstance(config.batch_size, int) and config.batch_size >= 1,
       f"config.batch_size must be a positive int, got {config.batch_size!r}")
  its, eps = config.get("iterations_per_task"), config.get("epochs_per_task")
  need((its or 0) > 0 or (eps or 0) > 0,
       "set config.iterations_per_task or config.epochs_per_task to a positive number")
  if config.get("checkpoint_every_minutes") is not None:
    _finite_number(config, "checkpoint_every_minutes", low=0)
  distributed.parse_mesh(config.get("mesh"))  # syntax; sizes vs devices in run()
  need(isinstance(config.tasks_in_parallel, int) and config.tasks_in_parallel >= 1,
       f"config.tasks_in_parallel must be an int >= 1, got {config.tasks_in_parallel!r}")
  if config.scenario != "GG":  # the evaluator's inference keys
    need(isinstance(config.inference_examples, int) and config.inference_examples >= 0,
         "config.inference_examples must be an int >= 0 (0 = whole batch), got "
         f"{config.inference_examples!r}")
  if config.scenario == "NNs":
    nns_part(config)
    need((its or 0) > 0, "NNs needs config.iterations_per_task > 0 (tasks switch "
         "every that many batches)")
    need(config.tasks_in_parallel == 1, "NNs trains one mask at a time: set "
         "config.tasks_in_parallel=1")
  # Points beyond num_tasks are dropped, so a config's paper checkpoints
  # (10, 50, ...) still work with a smaller --config.num_tasks.
  for t in config.get("eval_after_tasks") or ():
    need(isinstance(t, int) and t >= 1,
         f"config.eval_after_tasks entries must be ints >= 1, got {t!r}")
  methods.check_config(config.get("method", "supsup"), config)


def _eval_points(config) -> list[int]:
  return sorted(set(int(t) for t in (config.get("eval_after_tasks") or ())
                    if t <= config.num_tasks) | {config.num_tasks})


@dataclasses.dataclass
class Setup:
  """What a run is made of."""
  stream: Any
  learner: learner_lib.Learner
  steps_per_task: int
  extra_inferrers: dict[str, Callable]


def build(config: ml_collections.ConfigDict, *, validated: bool = False) -> Setup:
  """The data stream and the learner of a config (checked first, unless the
  caller just did)."""
  if not validated:
    _validate(config)
  stream = scaffold.stream_from_config(config)
  if config.scenario != "GG":
    objectives = {config.inference_objective, *(config.get("compare_objectives") or ())}
    outputs = int(config.get("num_outputs") or 0) or stream.num_classes
    if "g" in objectives and outputs <= stream.num_classes:
      raise ValueError(
          f"objective 'g' needs superfluous neurons: config.num_outputs={outputs} for "
          f"{stream.num_classes} classes per task; set it higher (e.g. "
          "--config.num_outputs=500)")
  method = config.get("method", "supsup")
  learner = methods.make_learner(method, config, stream)
  learner_lib.check_serves(learner, config.scenario)
  extra = {}
  others = [o for o in (config.get("compare_objectives") or ())
            if o != config.inference_objective]
  if config.scenario != "GG" and others:
    if learner.infer_task_with is None:
      raise ValueError(f"learner {learner.name!r} cannot infer the task with another "
                       f"objective; remove config.compare_objectives ({', '.join(others)})")
    extra = {o: learner.infer_task_with(o) for o in others}
  return Setup(stream, learner, learner_lib.steps_per_task(config, stream), extra)


def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def _chunk_metrics(mets, state):
  out = jax.tree.map(jnp.mean, mets)
  out["finite"] = jnp.all(jnp.isfinite(mets["loss"])) & _all_finite(state)
  return out


def make_chunk_fn(learner: learner_lib.Learner, stream, batch_size: int,
                  parallel: bool, mesh=None) -> Callable:
  """Jitted ``(memory, data, state, task_id, step0, n) -> (state, metrics)``
  running train steps ``step0 .. step0 + n - 1`` of a task in one call
  (static n); vmapped over tasks (``state``, ``task_id``) if ``parallel``.
  metrics: chunk means of the learner's metrics and ``finite`` (bool: loss
  and state stayed finite). ``mesh`` (see :mod:`supsup_jax.distributed`):
  states sharded over its "tasks" axis, batches over "data"; None: one device.
  """
  if not hasattr(stream, "train_batch_fn_args"):
    # Streams that are not jittable (SplitImageNet through tf.data): one
    # jitted step per batch, batches fetched on the host.
    if parallel:
      raise ValueError(f"{stream.name} cannot train tasks in parallel "
                       "(its batches are not jittable); set tasks_in_parallel=1")
    jstep = jax.jit(learner.train_step, donate_argnums=1)

    def host_loop(memory, data, state, task_id, step0, num_steps):
      del data
      mets = []
      for i in range(num_steps):
        images, labels = stream.train_batch(int(task_id), int(step0) + i, batch_size)
        if mesh is not None:  # each process contributes its rows of the batch
          images, labels = distributed.host_batch(mesh, images, labels)
        state, m = jstep(memory, state, images, labels)
        mets.append(m)
      return state, _chunk_metrics(jax.tree.map(lambda *xs: jnp.stack(xs), *mets), state)
    return host_loop
  batch_fn, _ = stream.train_batch_fn_args(batch_size)

  def one_task(memory, data, state, task_id, step0, num_steps):
    def body(state, i):
      images, labels = batch_fn(data, task_id, step0 + i)
      images, labels = distributed.constrain_batch(mesh, images, labels)
      return learner.train_step(memory, state, images, labels)
    state, mets = jax.lax.scan(body, state, jnp.arange(num_steps, dtype=jnp.int32))
    return state, _chunk_metrics(mets, state)

  return distributed.jit_chunk(one_task, mesh, parallel=parallel, num_args=6)


def make_task_free_chunk_fn(learner: learner_lib.Learner, stream: TaskFreeStream,
                            batch_size: int, mesh=None) -> Callable:
  """Jitted ``(memory, data, state, b0, n) -> (state, metrics)`` training on
  stream batches ``b0 .. b0 + n - 1`` (no task id anywhere)."""
  batch_fn = stream.batch_fn_args(batch_size)

  def chunk(memory, data, state, b0, num_steps):
    def body(state, i):
      images, labels = batch_fn(data, b0 + i)
      images, labels = distributed.constrain_batch(mesh, images, labels)
      return learner.train_step(memory, state, images, labels)
    state, mets = jax.lax.scan(body, state, jnp.arange(num_steps, dtype=jnp.int32))
    return state, _chunk_metrics(mets, state)

  return distributed.jit_chunk(chunk, mesh, parallel=False, num_args=5)


def task_key(seed: int, task_id: int) -> jax.Array:
  """The PRNG key of task ``task_id``'s training (scores init, dropout)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x5C0E), task_id)


def _own(tree) -> Any:
  """A private copy of a learner's fresh memory or task state: the loop donates
  them to its jitted steps, and a learner may hand out arrays it keeps (the
  frozen weights, an initial value) again later."""
  return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def stack(states: list) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(states, index: int) -> Any:
  return jax.tree.map(lambda x: x[index], states)


class _Run:
  """State and plumbing shared by the scenario loops of one run."""

  def __init__(self, config, sc: scaffold.Run, setup: Setup, mesh=None):
    self.config, self.sc, self.setup = config, sc, setup
    # The device mesh (None on one device: today's single-device programs).
    self.mesh = mesh if mesh is not None and mesh.size > 1 else None
    self.learner = setup.learner
    self.evaluator = evaluation.Evaluator(
        self.learner, setup.stream, scenario=config.scenario, num_tasks=config.num_tasks,
        batch_size=int(config.get("test_batch_size") or config.batch_size),
        max_batches=int(config.get("eval_batches_per_task") or 0),
        inference_examples=int(config.get("inference_examples") or 0),
        per_example_inference=bool(config.get("per_example_inference")),
        extra_inferrers=setup.extra_inferrers)
    self.log_every = max(1, int(config.log_every_steps))
    self.ckpt_every = int(config.get("checkpoint_every_steps") or 0)
    # Saving the whole bank after every task costs ~1 s once it holds
    # thousands of masks; runs of short tasks save at a task end only every
    # so many minutes (a resume then redoes at most that much, exactly).
    self.ckpt_seconds = 60.0 * float(config.get("checkpoint_every_minutes") or 0.0)
    self.memory = self.place(_own(self.learner.init_memory()))
    # end_task's memory keeps the learner's layout (a sharded bank stays sharded).
    self.end_task = distributed.jit_like(self.learner.end_task, self.mesh, self.memory,
                                         donate_argnums=0)
    self.rec: dict[str, Any] = {"eval_after": [], "rows": [], "inference_rows": [],
                                "other_inference": [], "just_trained": [],
                                "task_wall_s": []}
    self.meta: dict[str, Any] = {}
    self.partial = None
    self.stop_after = int(config.get("stop_after_steps") or 0)
    self.meta_where = "?"  # where the last checkpoint of this process was taken
    self.steps_this_process = 0

  def place(self, memory):
    """Memory on the mesh: as the learner lays it out (``place_memory``), else
    replicated once per device."""
    if self.mesh is None:
      return memory
    if self.learner.place_memory is not None:
      return self.learner.place_memory(memory, self.mesh)
    return distributed.place_replicated(memory, self.mesh)

  def local_memory(self):
    """The memory for evaluation and ``init_task``: on one device of this
    process, unless the learner laid it out itself (``place_memory``: its
    functions take the mesh's arrays, e.g. a bank's rows where they are)."""
    if self.mesh is None or self.learner.place_memory is not None:
      return self.memory
    return distributed.local(self.memory)

  def out_of_budget(self, steps: int) -> bool:
    """Counts ``steps`` trained; True once ``stop_after_steps`` are done or a
    signal asked the run to stop (the caller checkpoints and stops: a
    time-limited job slot or a preemption, resumed later)."""
    self.steps_this_process += steps
    return self.stopping()

  def stopping(self) -> bool:
    return (self.sc.stop_signal is not None
            or bool(self.stop_after) and self.steps_this_process >= self.stop_after)

  def restore(self, restored) -> None:
    """Takes over a checkpoint's ``(tree, meta)`` (None: a fresh run)."""
    if restored is None:
      return
    tree, meta = restored
    self.check_provenance(meta.get("provenance"))
    self.memory = self.place(state_io.from_saveable(tree["memory"], self.memory))
    self.partial = tree.get("task_state")
    self.rec, self.meta = meta["record"], meta["loop"]
    logging.info("Resuming %s (%s) from %s (workdir %s)", self.config.experiment,
                 self.learner.name, self.meta.get("where", "?"), self.sc.workdir)

  def provenance(self) -> dict | None:
    """The learner's provenance as JSON reads it back (None: none)."""
    p = self.learner.provenance
    return None if p is None else json.loads(json.dumps(dict(p), default=str))

  def check_provenance(self, saved) -> None:
    """Refuses to resume when the learner's fixed inputs (e.g. the weights of
    ``config.weights_from``) are not those the checkpoint was trained over:
    the config is the same, the file it names changed."""
    now = self.provenance()
    if (saved or None) == now:
      return
    saved, now = saved or {}, now or {}
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]
    raise ckpt_lib.ConfigMismatchError(
        f"workdir {self.sc.workdir!r} was trained over other fixed weights than "
        f"config.weights_from gives now ({'; '.join(diff)}); put the original "
        "checkpoint back, or use a new --workdir")

  def log_train(self, global_step: int, mets: Mapping, **extra) -> None:
    self.sc.scalars(global_step, {"train/loss": float(mets["loss"]),
                                    "train/accuracy": float(mets["accuracy"]),
                                    **{f"train/{k}": v for k, v in extra.items()}})

  def save(self, step: int, loop: Mapping, task_state=None) -> None:
    # Sharded task states are gathered first: every process saves the same
    # (small) arrays and orbax's primary process writes them.
    tree = {"memory": state_io.to_saveable(distributed.gathered(self.memory))}
    if task_state is not None:
      tree["task_state"] = state_io.to_saveable(distributed.gathered(task_state))
    meta = {"loop": dict(loop), "record": self.rec,
            "global_step": int(loop.get("global_step", 0))}
    if self.learner.provenance is not None:
      meta["provenance"] = self.provenance()
    self.sc.save(step, tree, meta)
    self.meta_where = str(loop.get("where", "?"))

  def task_end_save_due(self, finished: bool, evaluated: bool) -> bool:
    """Whether to checkpoint at this task end: always without
    ``checkpoint_every_minutes``; with it, after an evaluation, at the end of
    the run, when stopping, or once that many minutes passed since the last
    save."""
    stopping = self.stopping()
    return (not self.ckpt_seconds or finished or evaluated or stopping
            or time.time() - self.sc.last_save >= self.ckpt_seconds)

  def evaluate(self, point: int, tasks, num_learned: int, slot_task=None) -> None:
    ev = self.evaluator.evaluate(self.local_memory(), tasks, num_learned, slot_task)
    self.rec["eval_after"].append(point)
    self.rec["rows"].append(ev.row)
    self.rec["inference_rows"].append(ev.inference_row)
    self.rec["other_inference"].append(ev.other_inference)
    tb = {"eval/avg_accuracy": metrics.average_accuracy(ev.row)}
    msg = f"after {point} tasks: average accuracy {tb['eval/avg_accuracy']:.4f}"
    if ev.inference_row is not None:
      tb["eval/task_inference_accuracy"] = metrics.average_accuracy(ev.inference_row)
      msg += f", task-inference accuracy {tb['eval/task_inference_accuracy']:.4f}"
    self.sc.scalars(point, tb)
    logging.info(msg)


def _run_tasks(run: _Run) -> dict:
  """GG / GNs / GNu: tasks in order (groups of ``tasks_in_parallel``)."""
  config, learner, stream = run.config, run.learner, run.setup.stream
  num_tasks, steps = config.num_tasks, run.setup.steps_per_task
  parallel = int(config.tasks_in_parallel)
  mesh = run.mesh
  chunk_single = make_chunk_fn(learner, stream, config.batch_size, parallel=False, mesh=mesh)
  chunk_multi = (make_chunk_fn(learner, stream, config.batch_size, parallel=True, mesh=mesh)
                 if parallel > 1 else None)
  data = getattr(stream, "device_arrays", None)
  if mesh is not None and data is not None:
    data = distributed.place_replicated(data, mesh)  # one copy per device, not per task
  eval_points = _eval_points(config)
  task = int(run.meta.get("next_task", 0))
  progress = scaffold.Progress(num_tasks * steps, task * steps + int(run.meta.get("step", 0)))
  last_good = "no checkpoint yet"
  while task < num_tasks:
    group = list(range(task, min(task + parallel, num_tasks)))
    t_task = time.time()
    # With a "tasks" mesh axis a short last group is padded to the full width.
    ids = distributed.pad_group(group, mesh, parallel)
    memory = run.local_memory()
    states = [learner.init_task(memory, t, task_key(config.seed, t)) for t in ids]
    state = stack(states) if len(ids) > 1 else _own(states[0])
    done = 0
    if run.partial is not None:
      state = state_io.from_saveable(run.partial, state)
      done = int(run.meta["step"])
      run.partial = None
    if mesh is not None:
      state = (distributed.place_tasks(state, mesh) if len(ids) > 1
               else distributed.place_replicated(state, mesh))
    task_ids = jnp.asarray(ids, jnp.int32)
    label = (f"tasks {group[0] + 1}-{group[-1] + 1}/{num_tasks}" if len(group) > 1
             else f"task {group[0] + 1}/{num_tasks}")
    while done < steps:
      n = min(run.log_every, steps - done)
      if run.ckpt_every:
        n = min(n, run.ckpt_every - done % run.ckpt_every)
      if len(ids) > 1:
        state, mets = chunk_multi(run.memory, data, state, task_ids, jnp.int32(done), n)
        mets = jax.tree.map(jnp.mean, mets) | {"finite": jnp.all(mets["finite"])}
      else:
        state, mets = chunk_single(run.memory, data, state, task_ids[0], jnp.int32(done), n)
      scaffold.check_finite(mets["finite"], f"{label} between steps {done} and {done + n}", last_good)
      done += n
      progress.done += n * len(group)
      progress.report(label, done, steps, mets)
      run.log_train(group[0] * steps + done, mets, task=group[0])
      stop = run.out_of_budget(n * len(group)) and done < steps
      if stop or (run.ckpt_every and done % run.ckpt_every == 0 and done < steps):
        where = f"{label} step {done}"
        run.save(group[0] * (steps + 1) + done,
                 {"next_task": group[0], "step": done, "where": where,
                  "global_step": group[0] * steps + done}, state)
        last_good = f"resumable from the checkpoint at {where}"
        if stop:
          return None
    wall = (time.time() - t_task) / len(group)
    evaluated = False
    for i, t in enumerate(group):
      run.memory = run.end_task(run.memory, unstack(state, i) if len(ids) > 1 else state,
                                jnp.int32(t))
      run.rec["just_trained"].append(
          run.evaluator.task_given_accuracy(run.local_memory(), t))
      run.rec["task_wall_s"].append(wall)
      # An evaluation after t + 1 tasks sees exactly their masks, also when
      # the group trained later tasks alongside (their end_task comes after).
      if t + 1 in eval_points and t + 1 not in run.rec["eval_after"]:
        run.evaluate(t + 1, range(t + 1), t + 1)
        evaluated = True
    task = group[-1] + 1
    if run.task_end_save_due(task >= num_tasks, evaluated):
      where = f"the end of task {task}/{num_tasks}"
      run.save(task * (steps + 1), {"next_task": task, "step": 0, "where": where,
                                    "global_step": task * steps})
      last_good = f"resumable from the checkpoint at {where}"
    if run.stopping() and task < num_tasks:
      return None
  return {}


def _run_nns(run: _Run) -> dict:
  """NNs: one task-free stream; the learner detects new tasks itself."""
  config, learner = run.config, run.learner
  stream = TaskFreeStream(run.setup.stream, config.iterations_per_task)
  chunk = make_task_free_chunk_fn(learner, stream, config.batch_size, mesh=run.mesh)
  detect_batch = jax.jit(stream.batch_fn_args(config.batch_size))
  data = stream.device_arrays
  if run.mesh is not None:  # the batch split over "data"; state and data replicated
    data = distributed.place_replicated(data, run.mesh)

  def placed(state):
    state = _own(state)
    return state if run.mesh is None else distributed.place_replicated(state, run.mesh)
  nns = nns_part(config)
  its, check_every = stream.iterations_per_task, nns["check_every"]
  max_masks = nns["max_masks"]
  eval_points = _eval_points(config)
  m = run.meta
  b = int(m.get("b", 0))
  current = m.get("current")            # slot being trained (None before the start)
  num_masks = int(m.get("num_masks", 0))
  # slot_batches[s][t]: batches of true task t that trained slot s (bookkeeping).
  slot_batches = [list(r) for r in m.get("slot_batches", [])]
  state = None
  if run.partial is not None:
    state = placed(state_io.from_saveable(
        run.partial, learner.init_task(run.memory, current, task_key(config.seed, current))))
    run.partial = None
  progress = scaffold.Progress(stream.num_batches, b)
  last_good = "no checkpoint yet"

  def slot_task():
    return [int(np.argmax(r)) for r in slot_batches]

  def loop_meta(where):
    return {"b": b, "current": current, "num_masks": num_masks,
            "slot_batches": slot_batches, "where": where, "global_step": b}

  t_task = time.time()
  while b < stream.num_batches:
    if b % check_every == 0:
      images, _ = detect_batch(data, jnp.int32(b))
      if current is not None:  # the slot in training takes part in the decision
        run.memory = run.end_task(run.memory, state, jnp.int32(current))
      is_new, best = learner.detect_task(run.memory, num_masks, images)
      if is_new and num_masks < max_masks:
        current, num_masks = num_masks, num_masks + 1
        slot_batches.append([0] * config.num_tasks)
        state = placed(learner.init_task(run.memory, current, task_key(config.seed, current)))
        logging.info("batch %d: new data, allocated mask %d", b, current)
      elif best != current:
        current = best
        state = placed(learner.reopen_task(run.memory, current, task_key(config.seed, current)))
        logging.info("batch %d: data of mask %d, training it again", b, current)
    n = min(check_every - b % check_every, its - b % its, run.log_every,
            stream.num_batches - b)
    true_task = stream.true_task(b)
    state, mets = chunk(run.memory, data, state, jnp.int32(b), n)
    scaffold.check_finite(mets["finite"], f"stream batches {b}..{b + n - 1} (mask {current})", last_good)
    slot_batches[current][true_task] += n
    b += n
    stop = run.out_of_budget(n) and b < stream.num_batches
    progress.done = b
    progress.report(f"batch {b}/{stream.num_batches} mask {current + 1}/{num_masks}",
                    b % its or its, its, mets)
    run.log_train(b, mets, mask=current, masks_allocated=num_masks)
    if b % its == 0:  # a task's data ended (the learner is not told)
      finished = b // its
      run.memory = run.end_task(run.memory, state, jnp.int32(current))
      owners = slot_task()
      own = [s for s, t in enumerate(owners) if t == finished - 1]
      slot = own[0] if own else current
      run.rec["just_trained"].append(
          run.evaluator.task_given_accuracy(run.memory, finished - 1, slot))
      run.rec["task_wall_s"].append(time.time() - t_task)
      t_task = time.time()
      evaluated = finished in eval_points and finished not in run.rec["eval_after"]
      if evaluated:
        run.evaluate(finished, range(finished), num_masks, owners)
      if run.task_end_save_due(b >= stream.num_batches, evaluated):
        where = f"the end of task {finished}/{config.num_tasks}'s data"
        run.save(b, loop_meta(where), state)
        last_good = f"resumable from the checkpoint at {where}"
      elif stop:
        run.save(b, loop_meta(f"stream batch {b}"), state)
    elif stop:
      run.save(b, loop_meta(f"stream batch {b}"), state)
    if stop:
      return None
  purity = [max(r) / max(1, sum(r)) for r in slot_batches]
  return {"masks_allocated": num_masks, "mask_trained_on_task": slot_task(),
          "mask_task_purity": purity, "mask_task_batches": slot_batches}


def run(config: ml_collections.ConfigDict, workdir: str,
        setup: Setup | None = None) -> dict:
  """Runs (or resumes) the experiment of ``config``; returns the results dict.

  ``setup`` (default: :func:`build` of the config) lets a library user run
  their own learner or stream through the same loop.
  """
  t_start = time.time()
  config = ml_collections.ConfigDict(config)
  _validate(config)
  mesh = distributed.mesh_from_config(config)  # sizes checked against the devices
  if config.scenario == "NNs" and distributed.axis_size(mesh, distributed.TASKS) > 1:
    raise ValueError("NNs trains one mask at a time, so its mesh can only split the "
                     "batch; set --config.mesh=\"[('data', -1)]\" (no 'tasks' axis)")
  distributed.check_parallel(mesh, tasks_in_parallel=int(config.tasks_in_parallel),
                             batch_size=int(config.batch_size))
  with scaffold.open_run(workdir, config, kind="continual", stops_at_boundaries=True) as sc:
    if sc.finished is not None:
      logging.info("%s: finished before; results in %s", config.experiment, workdir)
      return sc.finished
    restored = sc.restore()  # refuses a workdir of another config, before any data
    if setup is None:
      try:
        setup = build(config, validated=True)
      except Exception:
        if restored is None:  # nothing trained yet: the fixed command may reuse the workdir
          sc.release_if_empty()
        raise
    else:
      learner_lib.check_serves(setup.learner, config.scenario)
    state = _Run(config, sc, setup, mesh)
    state.restore(restored)
    extra = _run_nns(state) if config.scenario == "NNs" else _run_tasks(state)
    if extra is None:
      if sc.stop_signal is not None:
        raise sc.interruption(state.meta_where)
      logging.info("Stopped after %d steps (config.stop_after_steps); the same "
                   "command resumes", state.steps_this_process)
      return {"complete": False, "steps_this_process": state.steps_this_process}
    results = _finish(state, extra)
  logging.info("Done in %.1fs (this process %.1fs); results in %s",
               results["wall_time_s"], time.time() - t_start, workdir)
  return results


def _finish(run: _Run, extra: Mapping) -> dict:
  config, rec = run.config, run.rec
  final_row = rec["rows"][-1]
  gn = config.scenario != "GG"
  num_learned = extra.get("masks_allocated", config.num_tasks)
  results = {
      "experiment": config.experiment,
      "scenario": config.scenario,
      "method": run.learner.name,
      "trains_weights": run.learner.trains_weights,
      "num_tasks": config.num_tasks,
      "avg_accuracy": metrics.average_accuracy(final_row),
      "accuracy_matrix": rec["rows"],
      "eval_after_tasks": rec["eval_after"],
      "accuracy_just_trained": rec["just_trained"],
      **run.learner.summary(run.memory, num_learned),
      "steps_per_task": run.setup.steps_per_task,
      "wall_time_s": run.sc.elapsed(),
      "wall_time_per_task_s": rec["task_wall_s"],
      "device": str(jax.devices()[0].device_kind),
      "device_count": jax.device_count(),
      "mesh": distributed.describe(run.mesh or distributed.make_mesh(
          config.get("mesh"))),
      "config": config.to_dict(),
      **extra,
  }
  if run.learner.provenance is not None:  # e.g. the pretrained weights' path and digest
    results["provenance"] = run.provenance()
  if gn:
    inf_rows = rec["inference_rows"]
    results["task_inference_accuracy"] = metrics.average_accuracy(inf_rows[-1])
    results["task_inference_matrix"] = inf_rows
    results["avg_accuracy_by_eval"] = [metrics.average_accuracy(r) for r in rec["rows"]]
    results["task_inference_accuracy_by_eval"] = [
        metrics.average_accuracy(r) for r in inf_rows]
    if any(rec["other_inference"]):
      # Task-inference accuracy of the other objectives at each evaluation point.
      results["task_inference_accuracy_other_objectives"] = rec["other_inference"]
  results.update(metrics.continual_metrics(results))
  return run.sc.finish(results, lambda r: metrics.write_run_outputs(run.sc.workdir, r))
