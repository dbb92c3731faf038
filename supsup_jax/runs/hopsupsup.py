"""HopSupSup runner: train gain masks task by task, store them in Hopfield nets, recover.

``run(config, workdir) -> results`` (``config.runner = "hopsupsup"``; the
learner is always :mod:`supsup_jax.methods.hopsupsup`, so ``config.method``
must be ``"hopsupsup"``):

1. trains each task's gain masks with the learner's ``train_step`` (jitted
   ``lax.scan`` chunks of ``log_every_steps`` steps; steps per task by
   :func:`task_steps`) and ``end_task`` (which puts the masks into the Hopfield
   stores);
2. recovers every task's masks at once (``vmap`` over tasks of the jitted
   recovery scan) on that task's test stream of B batches of
   ``study.recovery_batch_size`` (shuffled with the seed, as the authors'
   shuffled test loader; the incomplete last batch is dropped);
3. evaluates each task on those batches with the recovered masks and with the
   masks it stored (the task given), batch-norm statistics per batch.

The stored masks are kept by the runner only to measure recovery (Hamming
distance, task-given accuracy); the learner itself keeps only the stores.
The runner's own keys are in ``config.study``: ``recovery_batch_size``,
``recovery_batches`` (0 = every full test batch), ``extra_datasets`` (e.g.
``("split_fashion_mnist",)``: trains and stores those streams' tasks too, on
the same fixed network, and recovers them all: a real-data load test of the
store), ``store_load_sweep`` (numbers of extra synthetic masks stored before a
full recovery) and ``capacity_sweep`` (numbers of synthetic random masks:
energy-only recovery of 10 %-corrupted copies at the real layer width). The
learner's keys are its own (``config.hopfield``, validated by the learner).

The run sits on :mod:`supsup_jax.runs.scaffold` (kind ``"hopsupsup"``): the
workdir is locked and holds one run; every key is checked before anything is
loaded, and keys the runner would ignore (another ``mask_kind``, a
``sparsity``, a multi-device ``mesh``, ``tasks_in_parallel`` > 1, ...) are
refused in one line. Checkpoints (learner memory, the reference masks so far,
the train log, the sweep rows so far) are taken after each trained task (or
every ``checkpoint_every_minutes`` at a task end), every
``checkpoint_every_steps`` steps inside a task, when ``stop_after_steps`` is
reached, after the recovery and after each sweep stage, so the same command
resumes a killed run exactly; SIGINT/SIGTERM stop the run at the next of
these boundaries, after its checkpoint. Training is checked for non-finite loss or state
once per chunk, and each trained mask for a layer with every gain off (a
diverged task): either stops the run with ``FloatingPointError`` (one line;
the last checkpoint stays).

Writes ``recovery.csv``, ``recovery_hamming.png``, ``stored_masks.npz`` (bool
[tasks, d] per layer, the reference masks) and, last, ``results.json``.
"""
from __future__ import annotations

import math
import numbers
import os
import time
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import distributed
from supsup_jax import hopfield
from supsup_jax import learner as learner_lib
from supsup_jax import optim
from supsup_jax import plotting
from supsup_jax import pretrained
from supsup_jax import state_io
from supsup_jax import weights as weights_lib
from supsup_jax.data import streams as streams_lib
from supsup_jax.methods import hopsupsup
from supsup_jax.runs import scaffold

KIND = "hopsupsup"

# config.study: the runner's own keys and their defaults.
STUDY_DEFAULTS = {
    "recovery_batch_size": 64,   # test images per recovery step (>= 2: batch norm)
    "recovery_batches": 0,       # recovery steps per task; 0 = every full test batch
    "extra_datasets": (),        # more streams whose tasks go into the same stores
    "store_load_sweep": (),      # extra synthetic masks stored before a full recovery
    "capacity_sweep": (),        # numbers of synthetic masks: energy-only recall
}

# Shared config keys this runner does not read, with the one value it accepts
# (the shared default): any other value would be silently ignored.
_UNUSED = {
    "scenario": ("GNu", "HopSupSup infers the mask (the task is not given at test time)"),
    "model": ("bn_swish_mlp", "the network is HopSupSup's own gain-masked BN-Swish MLP "
              "(widths: config.model_options.hidden)"),
    "mask_kind": ("threshold", "HopSupSup's gain masks are 1[score >= 0]"),
    "sparsity": (0.5, "HopSupSup's gain masks are 1[score >= 0], with no kept fraction"),
    "er_sparsity": (0.0, "HopSupSup masks batch-norm gains, not weights"),
    "schedule": ("constant", "HopSupSup trains the gain scores at a constant learning rate"),
    "warmup_steps": (0, "HopSupSup trains the gain scores at a constant learning rate"),
    "tasks_in_parallel": (1, "HopSupSup trains one task at a time (each task's masks "
                          "go into the stores before the next)"),
    "eval_after_tasks": ((), "HopSupSup recovers and evaluates once, after all tasks"),
    "test_batch_size": (128, "recovery and evaluation use config.study.recovery_batch_size"),
    "eval_batches_per_task": (0, "recovery and evaluation use config.study.recovery_batches"),
    "inference_algorithm": ("oneshot", "the mask is recovered by the Hopfield energy "
                            "and entropy descent (config.hopfield)"),
    "inference_objective": ("entropy", "the mask is recovered by the Hopfield energy "
                            "and entropy descent (config.hopfield)"),
    "inference_examples": (1, "recovery uses whole batches of "
                           "config.study.recovery_batch_size"),
    "per_example_inference": (False, "recovery uses whole test batches"),
    "compare_objectives": ((), "the mask is recovered by the Hopfield energy and "
                           "entropy descent (config.hopfield)"),
}


# ---------------------------------------------------------------------------
# Config checks (all before anything is loaded).


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _need(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(msg)


def _int(key: str, v, low: int) -> int:
  _need(_is_int(v) and v >= low, f"config.{key} must be an int >= {low}, got {v!r}")
  return int(v)


def _number(key: str, v, low: float, *, open_low: bool = False) -> float:
  ok = _is_number(v) and (v > low if open_low else v >= low)
  _need(ok, f"config.{key} must be a finite number {'>' if open_low else '>='} {low}, "
        f"got {v!r}")
  return float(v)


def _same(a, b) -> bool:
  if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
    return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and \
        tuple(a) == tuple(b)
  if _is_number(a) and _is_number(b):
    return float(a) == float(b)
  return type(a) is type(b) and a == b  # noqa: E721  (True is not 1 here)


def study_config(config) -> dict[str, Any]:
  """``config.study`` as a dict over :data:`STUDY_DEFAULTS`, checked (one-line errors)."""
  for key in STUDY_DEFAULTS:
    _need(key not in config, f"config.{key} is now config.study.{key}")
  given = config.get("study") or {}
  unknown = sorted(set(given) - set(STUDY_DEFAULTS))
  _need(not unknown, f"config.study has no key {unknown[0] if unknown else ''!r}; "
        f"allowed: {', '.join(sorted(STUDY_DEFAULTS))}")
  s = {k: given.get(k, v) for k, v in STUDY_DEFAULTS.items()}
  s["recovery_batch_size"] = _int("study.recovery_batch_size", s["recovery_batch_size"], 2)
  s["recovery_batches"] = _int("study.recovery_batches", s["recovery_batches"], 0)
  for key, low in (("extra_datasets", None), ("store_load_sweep", 0), ("capacity_sweep", 1)):
    v = s[key]
    if isinstance(v, str) or not isinstance(v, (list, tuple)):
      example = '("split_fashion_mnist",)' if low is None else "(10, 20)"
      raise ValueError(f"config.study.{key} must be a tuple, got {v!r} (e.g. "
                       f"--config.study.{key}='{example}')")
    if low is None:
      for name in v:
        _need(name in streams_lib.STREAMS and name != "split_imagenet",
              f"config.study.extra_datasets entry {name!r} unknown; allowed: "
              f"{', '.join(n for n in streams_lib.STREAMS if n != 'split_imagenet')}")
      s[key] = tuple(str(n) for n in v)
    else:
      for k in v:
        _need(_is_int(k) and k >= low,
              f"config.study.{key} entries must be ints >= {low}, got {k!r}")
      s[key] = tuple(int(k) for k in v)
  return s


def _check_learner_keys(config) -> None:
  """The learner's own keys (``config.hopfield``), checked by the learner
  before any data loads."""
  pretrained.check_config(config, "hopsupsup")  # refuses config.weights_from
  hopsupsup.read_config(config)


def _check_mesh(spec) -> None:
  pairs = distributed.parse_mesh(spec)  # syntax, one line
  if pairs == distributed.DEFAULT_MESH:
    return  # the default: HopSupSup runs on the first device
  explicit = math.prod(s for _, s in pairs if s != -1)
  if explicit == 1:  # an axis of size -1 takes every device
    explicit = math.prod(s for _, s in distributed.resolve_mesh_shape(spec, jax.device_count()))
  _need(explicit == 1,
        f"config.mesh {spec!r} spans {explicit} devices, but the hopsupsup runner "
        "runs on one device; leave config.mesh at its default or set "
        "--config.mesh=\"[('data', 1)]\"")


def validate(config) -> dict[str, Any]:
  """Checks every key the runner reads, and refuses keys it would ignore.

  Returns the checked ``config.study`` (see :func:`study_config`). Raises a
  one-line ``ValueError`` naming the key, the value and the fix.
  """
  _need(config.get("runner", KIND) == KIND,
        f"config.runner is {config.get('runner')!r}, not {KIND!r}")
  _need(config.get("method", KIND) == KIND,
        f"config.method {config.get('method')!r}: the hopsupsup runner trains the "
        "HopSupSup learner only (set --config.method=hopsupsup, or use "
        "config.runner='continual' for another learner)")
  for key, (accepted, why) in _UNUSED.items():
    if key in config and not _same(config.get(key), accepted):
      raise ValueError(f"config.{key}={config.get(key)!r} would be ignored by the hopsupsup "
                       f"runner ({why}); leave it at {accepted!r}")
  _int("num_tasks", config.get("num_tasks"), 1)
  streams_lib.as_int("config.seed", config.get("seed"), 0, streams_lib.MAX_SEED)
  if config.get("data_seed") is not None:
    streams_lib.as_int("config.data_seed", config.get("data_seed"), 0, streams_lib.MAX_SEED)
  dataset = config.get("dataset")
  _need(dataset in streams_lib.STREAMS and dataset != "split_imagenet",
        f"config.dataset {dataset!r} unknown for the hopsupsup runner; allowed: "
        f"{', '.join(n for n in streams_lib.STREAMS if n != 'split_imagenet')}")
  _int("batch_size", config.get("batch_size"), 2)  # batch norm needs >= 2 images
  its = _int("iterations_per_task", config.get("iterations_per_task") or 0, 0)
  eps = _number("epochs_per_task", config.get("epochs_per_task") or 0.0, 0.0)
  _need(its > 0 or eps > 0, "set config.iterations_per_task or config.epochs_per_task "
        f"to a positive number (got {config.get('iterations_per_task')!r} and "
        f"{config.get('epochs_per_task')!r})")
  lr = _number("learning_rate", config.get("learning_rate"), 0.0, open_low=True)
  momentum = _number("momentum", config.get("momentum", 0.9), 0.0)
  wd = _number("weight_decay", config.get("weight_decay", 0.0), 0.0)
  optim.make_optimizer(config.get("optimizer", "sgd"), lr, momentum=momentum,
                       weight_decay=wd)  # the optimizer's name
  _need(config.get("init", "signed_constant") in weights_lib.INITS,
        f"config.init {config.get('init')!r} unknown; allowed: {', '.join(weights_lib.INITS)}")
  _int("num_outputs", config.get("num_outputs") or 0, 0)
  opts = dict(config.get("model_options") or {})
  extra = sorted(set(opts) - {"hidden"})
  _need(not extra, f"config.model_options has key {extra[0] if extra else ''!r}, which "
        "the hopsupsup runner does not use; it takes only 'hidden' (the layer widths)")
  hidden = opts.get("hidden", (2048, 2048))
  _need(isinstance(hidden, (list, tuple)) and len(hidden) >= 1
        and all(_is_int(w) and w >= 1 for w in hidden),
        f"config.model_options.hidden must be a tuple of ints >= 1, got {hidden!r}")
  _int("log_every_steps", config.get("log_every_steps") or 1, 1)
  _int("checkpoint_every_steps", config.get("checkpoint_every_steps") or 0, 0)
  _number("checkpoint_every_minutes", config.get("checkpoint_every_minutes") or 0.0, 0.0)
  _int("stop_after_steps", config.get("stop_after_steps") or 0, 0)
  _check_mesh(config.get("mesh"))
  _check_learner_keys(config)
  return study_config(config)


# ---------------------------------------------------------------------------
# The pieces (also used by tests and notebooks).


def task_steps(config, stream, task_id: int) -> int:
  """Train steps of task ``task_id``: :func:`supsup_jax.learner.steps_per_task`'s
  formula (``iterations_per_task``, else ``ceil(epochs_per_task * n / batch_size)``)
  with n that task's own training-set size (SplitMNIST's tasks differ)."""
  class _Task:  # the stream as steps_per_task reads it: this task's split first
    def train_size(self, _):
      return stream.train_size(task_id)
  return learner_lib.steps_per_task(config, _Task())


def _tree_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_chunk_fn(learner, stream, batch_size: int):
  """Jitted ``(memory, arrays, ts, task_id, step0, n) -> (ts, metrics)``: train
  steps ``step0 .. step0 + n - 1`` of a task in one ``lax.scan`` (static n).
  metrics: per-step ``loss``/``accuracy`` [n] and ``finite`` (loss and state)."""
  fn, _ = stream.train_batch_fn_args(batch_size)

  def chunk(memory, arrays, ts, task_id, step0, num_steps):
    def body(ts, i):
      images, labels = fn(arrays, task_id, step0 + i)
      return learner.train_step(memory, ts, images, labels)
    ts, mets = jax.lax.scan(body, ts, jnp.arange(num_steps, dtype=jnp.int32))
    mets = dict(mets)
    mets["finite"] = jnp.all(jnp.isfinite(mets["loss"])) & _tree_finite(ts)
    return ts, mets

  return jax.jit(chunk, static_argnums=5)


def train_task(learner, stream, memory, task_id: int, steps: int, batch_size: int, key):
  """Trains one task in one chunk and ends it (no checkpoints: a notebook helper).

  Returns (memory, task_state, metrics {"loss", "accuracy"} [steps]).
  """
  ts = learner.init_task(memory, task_id, key)
  ts, mets = make_chunk_fn(learner, stream, batch_size)(
      memory, stream.train_batch_fn_args(batch_size)[1], ts,
      jnp.asarray(task_id, jnp.int32), jnp.int32(0), steps)
  scaffold.check_finite(mets["finite"], f"task {task_id}", "no checkpoint")
  memory = jax.jit(learner.end_task)(memory, ts, task_id)
  return memory, ts, {k: mets[k] for k in ("loss", "accuracy")}


def test_stream(stream, task_id: int, batch_size: int, key, max_batches: int = 0):
  """The task's test set as shuffled full batches: images [B, n, ...], labels [B, n]."""
  images, labels = stream.test_arrays(task_id)
  n = int(images.shape[0])
  nb = n // batch_size if not max_batches else min(n // batch_size, max_batches)
  if nb < 1:
    raise ValueError(f"task {task_id} has {n} test images, fewer than one "
                     f"recovery batch of {batch_size}; lower config.study.recovery_batch_size")
  order = jax.random.permutation(key, n)[:nb * batch_size]
  return (images[order].reshape((nb, batch_size, *images.shape[1:])),
          labels[order].reshape((nb, batch_size)))


def _pad(batches: list[jax.Array], bmax: int) -> jax.Array:
  # Repeats batches to a common length; the recovery ignores steps past B.
  return jnp.stack([jnp.concatenate([b] * math.ceil(bmax / b.shape[0]))[:bmax]
                    for b in batches])


def recover_and_evaluate(parts, memory, images, labels, num_batches, reference):
  """All tasks at once. images [T, Bmax, n, ...], labels [T, Bmax, n],
  num_batches int [T], reference tuple of bool [T, d_l].

  Returns dict of arrays: hamming [T, Bmax + 1], recovered (tuple [T, d_l]),
  acc_recovered [T], acc_given [T].
  """
  def one(imgs, labs, nb, ref):
    masks, curve = parts.recover(memory, imgs, nb, ref)
    valid = jnp.arange(imgs.shape[0]) < nb

    def acc(m):
      def per_batch(x, y):
        return jnp.mean(jnp.argmax(parts.apply(memory, m, x), -1) == y)
      a = jax.lax.map(lambda xy: per_batch(*xy), (imgs, labs))
      return jnp.sum(jnp.where(valid, a, 0.0)) / nb
    return {"hamming": curve, "recovered": masks,
            "acc_recovered": acc(masks), "acc_given": acc(ref)}

  return jax.jit(jax.vmap(one))(images, labels, num_batches, reference)


def first_zero(curve) -> int | None:
  hits = np.flatnonzero(np.asarray(curve) == 0)
  return int(hits[0]) if hits.size else None


def capacity_row(parts, d: int, k: int, *, flip: float = 0.1, steps: int = 30,
                 probes: int = 8, seed: int = 0) -> dict:
  """Energy-only recovery of corrupted synthetic masks with ``k`` stored.

  ``k`` random masks (bits 1 with probability 1/2) go into a d-unit store with
  the learner's rule; ``probes`` of them, each with a fraction ``flip`` of bits
  flipped, start ``steps`` SGD steps on the energy (the recovery's optimizer
  and gamma). Reports the fraction recovered exactly, the mean final Hamming
  distance, and how many stored patterns are fixed points of sign(W x).
  """
  key = jax.random.fold_in(jax.random.key(seed), k)
  masks = jax.random.bernoulli(jax.random.fold_in(key, 0), 0.5, (k, d))
  st = jax.jit(hopfield.store_masks, static_argnames="rule")(
      hopfield.init_store(d), masks, rule=parts.rule)
  x = hopfield.pattern(masks)
  fixed = jnp.mean(jnp.all(jnp.where(x @ st.W.T >= 0, 1.0, -1.0) == x, axis=1))
  probe = masks[:min(probes, k)]
  flips = jax.random.bernoulli(jax.random.fold_in(key, 1), flip, probe.shape)
  s0 = hopfield.pattern(jnp.logical_xor(probe, flips))
  rec = jax.jit(jax.vmap(lambda s: parts.recover_by_energy((st,), (s,), steps)[0]))(s0)
  ham = jnp.sum(rec != probe, axis=1)
  return {"num_masks": int(k), "recovered_fraction": float(jnp.mean(ham == 0)),
          "mean_final_hamming": float(jnp.mean(ham)),
          "fixed_point_fraction": float(fixed)}


def capacity_sweep(parts, d: int, counts, **kw) -> list[dict]:
  """:func:`capacity_row` for each number of stored masks in ``counts``."""
  return [capacity_row(parts, d, int(k), **kw) for k in counts]


def store_load_row(parts, memory, reference, images, labels, num_batches, ref,
                   k: int, *, seed: int = 0) -> dict:
  """Full recovery of the real tasks with ``k`` extra synthetic masks in the stores.

  The k masks (stored after the real ones, each bit on with the real masks'
  density in that layer) stand for further tasks; the real tasks are then
  recovered and evaluated as in :func:`recover_and_evaluate`.
  """
  key = jax.random.fold_in(jax.random.key(seed), 7000 + k)
  stores = []
  for l, st in enumerate(memory["stores"]):
    p = float(np.mean([r[l] for r in reference]))
    extra = jax.random.bernoulli(jax.random.fold_in(key, l), p, (k, st.d))
    stores.append(jax.jit(hopfield.store_masks, static_argnames="rule")(
        st, extra, rule=parts.rule))
  mem = {**memory, "stores": tuple(stores)}
  out = jax.device_get(recover_and_evaluate(parts, mem, images, labels, num_batches, ref))
  nbs = np.asarray(num_batches)
  steps = [first_zero(out["hamming"][i][:nbs[i] + 1]) for i in range(len(nbs))]
  return {"extra_masks": int(k), "stored_patterns": len(reference) + int(k),
          "tasks_recovered": sum(s is not None for s in steps),
          "recovery_steps": steps,
          "final_hamming": [int(out["hamming"][i][nbs[i]]) for i in range(len(nbs))],
          "avg_accuracy_recovered": float(np.mean(out["acc_recovered"])),
          "avg_accuracy_task_given": float(np.mean(out["acc_given"]))}


def _plot(path: str, names: list[str], curves: list[list[int]], d_total: int) -> None:
  fig, ax = plotting.pyplot().subplots(figsize=(6, 4), dpi=120)
  for name, c in zip(names, curves):
    ax.plot(np.arange(len(c)), c, label=name)
  ax.set_xlabel("recovery step (test batch)")
  ax.set_ylabel(f"Hamming distance to stored mask (of {d_total} bits)")
  ax.set_ylim(bottom=0)
  ax.set_title("HopSupSup mask recovery")
  ax.legend(fontsize=7)
  fig.tight_layout()
  plotting.save_atomic(fig, path)


# ---------------------------------------------------------------------------
# The run.


def _load(config, study) -> tuple[list, Any, Any]:
  """The streams (name, stream), the learner and its parts; checks what needs
  the data (sizes, shapes) in one line, before anything is trained."""
  num_tasks = int(config.num_tasks)
  streams = [(config.dataset, scaffold.stream_from_config(config, num_tasks=num_tasks))]
  for name in study["extra_datasets"]:
    streams.append((name, scaffold.stream_from_config(config, dataset=name,
                                                      num_tasks=num_tasks)))
  first = streams[0][1]
  for name, s in streams[1:]:
    _need(tuple(s.input_shape) == tuple(first.input_shape),
          f"config.study.extra_datasets: {name!r} has images of shape "
          f"{tuple(s.input_shape)}, {config.dataset!r} of {tuple(first.input_shape)}; "
          "the stores' network takes one shape")
  num_outputs = int(config.get("num_outputs") or 0)
  for name, s in streams:
    _need(num_outputs == 0 or num_outputs >= s.num_classes,
          f"config.num_outputs={num_outputs} is below {name!r}'s {s.num_classes} classes; "
          "set it to 0 (= the class count) or more")
    for t in range(num_tasks):
      n = s.test_size(t)
      _need(n >= study["recovery_batch_size"],
            f"{name} task {t} has {n} test images, fewer than one recovery batch of "
            f"{study['recovery_batch_size']}; lower config.study.recovery_batch_size")
  learner, parts = hopsupsup.build_from_config(config, first)
  for name, s in streams[1:]:
    _need(s.num_classes <= (num_outputs or first.num_classes),
          f"config.study.extra_datasets: {name!r} has {s.num_classes} classes, the "
          f"network {num_outputs or first.num_classes} outputs; raise config.num_outputs")
  return streams, learner, parts


def _reference_tree(reference: list, num_layers: int) -> dict:
  return {f"layer{l}": np.stack([r[l] for r in reference]) for l in range(num_layers)}


def _check_masks(masks, where: str, last_good: str) -> None:
  for l, m in enumerate(masks):
    if not np.any(m):
      raise FloatingPointError(
          f"training diverged in {where}: every gain of hidden layer {l} is off (the "
          f"network's output is constant); stopped, {last_good}; lower "
          "config.learning_rate")


class _Run:
  """The state of one HopSupSup run and its checkpoints."""

  def __init__(self, config, study, sc: scaffold.Run, streams, learner, parts):
    self.config, self.study, self.sc = config, study, sc
    self.streams, self.learner, self.parts = streams, learner, parts
    self.num_tasks = int(config.num_tasks)
    self.batch_size = int(config.batch_size)
    # Global task g = stream index * num_tasks + task index.
    self.tasks = [(si, name, s, t) for si, (name, s) in enumerate(streams)
                  for t in range(self.num_tasks)]
    self.steps = [task_steps(config, s, t) for _, _, s, t in self.tasks]
    self.total_steps = sum(self.steps)
    self.key = jax.random.key(int(config.seed))
    self.memory = learner.init_memory()
    self.reference: list[tuple[np.ndarray, ...]] = []
    # JSON-able record: everything results.json needs besides the arrays.
    self.rec: dict[str, Any] = {"train": [], "train_s": 0.0, "recovery": None,
                                "recovery_s": 0.0, "store_load": [], "store_load_s": 0.0,
                                "capacity": [], "capacity_s": 0.0}
    self.next_task, self.step, self.partial, self.acc_tail = 0, 0, None, []
    self.last_good = "no checkpoint yet"
    self.where = "the start"  # of the last checkpoint
    self.stop_after = int(config.get("stop_after_steps") or 0)
    self.steps_this_process = 0
    self.ckpt_every = int(config.get("checkpoint_every_steps") or 0)
    self.ckpt_seconds = 60.0 * float(config.get("checkpoint_every_minutes") or 0.0)

  # -- checkpoints ----------------------------------------------------------

  def restore(self, restored) -> None:
    if restored is None:
      return
    tree, meta = restored
    self.memory = state_io.from_saveable(tree["memory"], self.memory)
    ref = tree.get("reference") or {}
    count = int(meta["tasks_done"])
    layers = [np.asarray(ref[f"layer{l}"], bool) for l in range(len(self.parts.hidden))] \
        if count else []
    self.reference = [tuple(a[g] for a in layers) for g in range(count)]
    self.partial = tree.get("task_state")
    self.rec = meta["record"]
    self.next_task, self.step = int(meta["next_task"]), int(meta["step"])
    self.acc_tail = list(meta.get("acc_tail", []))
    self.last_good = f"resumable from the checkpoint at {meta['where']}"
    logging.info("Resuming %s from %s (workdir %s)", self.config.get("experiment", KIND),
                 meta["where"], self.sc.workdir)

  def save(self, where: str, global_step: int, task_state=None) -> None:
    """Checkpoints the memory, the reference masks, the record and (mid-task)
    the task state. ``global_step``: the next step scalars will be written at."""
    tree: dict[str, Any] = {"memory": state_io.to_saveable(self.memory)}
    if self.reference:
      tree["reference"] = _reference_tree(self.reference, len(self.parts.hidden))
    if task_state is not None:
      tree["task_state"] = state_io.to_saveable(task_state)
    self.sc.save(global_step, tree, {
        "where": where, "global_step": global_step, "tasks_done": len(self.reference),
        "next_task": self.next_task, "step": self.step, "acc_tail": self.acc_tail,
        "record": self.rec})
    self.where = where
    self.last_good = f"resumable from the checkpoint at {where}"

  def _stopping(self) -> bool:
    """SIGINT/SIGTERM received, or ``stop_after_steps`` trained in this process."""
    return (self.sc.stop_signal is not None
            or bool(self.stop_after) and self.steps_this_process >= self.stop_after)

  # -- training -------------------------------------------------------------

  def train(self) -> bool:
    """Trains the remaining tasks; False when stopped (a signal or
    ``stop_after_steps``) after saving a checkpoint."""
    learner, log_every = self.learner, max(1, int(self.config.get("log_every_steps") or 1))
    chunk_fns = [make_chunk_fn(learner, s, self.batch_size) for _, s in self.streams]
    arrays = [s.train_batch_fn_args(self.batch_size)[1] for _, s in self.streams]
    end_task = jax.jit(learner.end_task)
    done_before = sum(self.steps[:self.next_task]) + self.step
    progress = scaffold.Progress(self.total_steps, done_before)
    while self.next_task < len(self.tasks):
      g = self.next_task
      si, name, _, t = self.tasks[g]
      steps, t0 = self.steps[g], time.time()
      label = f"{name} task {t + 1}/{self.num_tasks}"
      ts = learner.init_task(self.memory, t, jax.random.fold_in(
          jax.random.fold_in(self.key, si), t))
      if self.partial is not None:
        ts = state_io.from_saveable(self.partial, ts)
        self.partial = None
      else:
        self.step, self.acc_tail = 0, []
      task_id = jnp.asarray(t, jnp.int32)
      while self.step < steps:
        n = min(log_every, steps - self.step)
        if self.ckpt_every:
          n = min(n, self.ckpt_every - self.step % self.ckpt_every)
        ts, mets = chunk_fns[si](self.memory, arrays[si], ts, task_id,
                                 jnp.int32(self.step), n)
        scaffold.check_finite(mets["finite"], f"{label} between steps {self.step} and "
                              f"{self.step + n}", self.last_good)
        self.step += n
        self.steps_this_process += n
        acc = np.asarray(mets["accuracy"])
        self.acc_tail = [float(a) for a in np.concatenate(
            [np.asarray(self.acc_tail, np.float32), acc])[-10:]]
        means = {"loss": float(np.mean(mets["loss"])), "accuracy": float(np.mean(acc))}
        progress.done += n
        progress.report(label, self.step, steps, means)
        gstep = sum(self.steps[:g]) + self.step
        self.sc.scalars(gstep, {"train/loss": means["loss"],
                                "train/accuracy": means["accuracy"], "train/task": g})
        mid = self.step < steps
        if mid and (self._stopping() or (self.ckpt_every and
                                         self.step % self.ckpt_every == 0)):
          self.rec_partial_time(t0)
          t0 = time.time()
          self.save(f"{label} step {self.step}", gstep + 1, ts)
          if self._stopping():
            return False
      masks = tuple(np.asarray(m) for m in jax.device_get(self.parts.masks_of(ts)))
      _check_masks(masks, label, self.last_good)
      self.memory = end_task(self.memory, ts, task_id)
      self.reference.append(masks)
      entry = {"task": f"{name}/{t}", "steps": steps,
               # jnp.mean, as before the port (XLA's summation order, not NumPy's)
               "final_train_accuracy": float(jnp.mean(jnp.asarray(self.acc_tail, jnp.float32))),
               "mask_density": [float(np.mean(m)) for m in masks]}
      self.rec["train"].append(entry)
      self.rec_partial_time(t0)
      gstep = sum(self.steps[:g + 1])
      self.sc.scalars(gstep, {"task/final_train_accuracy": entry["final_train_accuracy"],
                              **{f"task/mask_density_layer{l}": d
                                 for l, d in enumerate(entry["mask_density"])}})
      logging.info("trained %s: %d steps, train acc %.3f, mask density %s", label, steps,
                   entry["final_train_accuracy"], entry["mask_density"])
      self.next_task, self.step, self.acc_tail = g + 1, 0, []
      last = self.next_task == len(self.tasks)
      if (not self.ckpt_seconds or last or self._stopping()
          or time.time() - self.sc.last_save >= self.ckpt_seconds):
        self.save(f"the end of {label} ({name})" if len(self.streams) > 1
                  else f"the end of task {t + 1}/{self.num_tasks}", gstep + 1)
      if self._stopping() and (not last or self.sc.stop_signal is not None):
        return False
    return True

  def rec_partial_time(self, t0: float) -> None:
    self.rec["train_s"] += time.time() - t0

  # -- recovery and sweeps --------------------------------------------------

  def recovery_data(self):
    """Every task's recovery batches (padded to a common count), their counts
    and the stacked reference masks (deterministic: recomputed on resume)."""
    rbs, rb = self.study["recovery_batch_size"], self.study["recovery_batches"]
    data = [test_stream(s, t, rbs, jax.random.fold_in(jax.random.fold_in(self.key, 1000 + g), t),
                        rb) for g, (_, _, s, t) in enumerate(self.tasks)]
    nbs = [int(x.shape[0]) for x, _ in data]
    bmax = max(nbs)
    images = _pad([x for x, _ in data], bmax)
    labels = _pad([y for _, y in data], bmax)
    ref = tuple(jnp.asarray(np.stack([r[l] for r in self.reference]))
                for l in range(len(self.parts.hidden)))
    return images, labels, nbs, ref

  def sweeps(self) -> None:
    """Recovery, then the store-load and capacity sweeps; a checkpoint after each stage."""
    stage = self.total_steps + 1  # checkpoint steps after the last task's
    data = None
    if self.rec["recovery"] is None:
      t0 = time.time()
      images, labels, nbs, ref = data = self.recovery_data()
      out = jax.device_get(recover_and_evaluate(self.parts, self.memory, images, labels,
                                                jnp.asarray(nbs, jnp.int32), ref))
      self.rec["recovery"] = {
          "num_batches": nbs,
          "hamming": [[int(v) for v in out["hamming"][i][:nbs[i] + 1]]
                      for i in range(len(nbs))],
          "acc_recovered": [float(a) for a in out["acc_recovered"]],
          "acc_given": [float(a) for a in out["acc_given"]]}
      self.rec["recovery_s"] = time.time() - t0
      r = self.rec["recovery"]
      self.sc.scalars(stage, {"recovery/avg_accuracy_recovered": float(np.mean(out["acc_recovered"])),
                              "recovery/avg_accuracy_task_given": float(np.mean(out["acc_given"])),
                              "recovery/tasks_recovered": sum(
                                  first_zero(c) is not None for c in r["hamming"])})
      logging.info("recovered %d tasks: steps %s, accuracy recovered %.4f, task given %.4f",
                   len(nbs), [first_zero(c) for c in r["hamming"]],
                   float(np.mean(out["acc_recovered"])), float(np.mean(out["acc_given"])))
      self.save("the recovery", stage + 1)
      self._check_signal()
    for i, k in enumerate(self.study["store_load_sweep"]):
      if i < len(self.rec["store_load"]):
        continue
      if data is None:
        data = self.recovery_data()
      images, labels, nbs, ref = data
      t0 = time.time()
      row = store_load_row(self.parts, self.memory, self.reference, images, labels,
                           jnp.asarray(nbs, jnp.int32), ref, k, seed=int(self.config.seed))
      self.rec["store_load"].append(row)
      self.rec["store_load_s"] += time.time() - t0
      logging.info("store load +%d: %s", k, row)
      step = stage + 1 + len(self.rec["store_load"])
      self.sc.scalars(step - 1, {"store_load/tasks_recovered": row["tasks_recovered"],
                                 "store_load/extra_masks": k})
      self.save(f"store-load sweep +{k}", step)
      self._check_signal()
    base = stage + 1 + len(self.study["store_load_sweep"])
    d = int(self.parts.hidden[0])
    for i, k in enumerate(self.study["capacity_sweep"]):
      if i < len(self.rec["capacity"]):
        continue
      t0 = time.time()
      row = capacity_row(self.parts, d, k, seed=int(self.config.seed))
      self.rec["capacity"].append(row)
      self.rec["capacity_s"] += time.time() - t0
      logging.info("capacity: %s", row)
      step = base + len(self.rec["capacity"])
      self.sc.scalars(step - 1, {"capacity/recovered_fraction": row["recovered_fraction"],
                                 "capacity/num_masks": k})
      self.save(f"capacity sweep {k}", step)
      self._check_signal()

  def _check_signal(self) -> None:
    if self.sc.stop_signal is not None:
      raise self.sc.interruption(self.where)

  # -- results --------------------------------------------------------------

  def results(self) -> dict:
    summary = self.learner.summary(self.memory, len(self.tasks))
    rec = self.rec["recovery"]
    per_task = []
    for g, (_, name, _, t) in enumerate(self.tasks):
      curve = rec["hamming"][g]
      per_task.append({
          "task": f"{name}/{t}", "recovery_batches": rec["num_batches"][g],
          "recovery_hamming": curve, "recovery_steps": first_zero(curve),
          "final_hamming": curve[-1],
          "accuracy_recovered": rec["acc_recovered"][g],
          "accuracy_task_given": rec["acc_given"][g],
          "store_bytes": summary["store_bytes"]})
    steps_found = [p["recovery_steps"] for p in per_task]
    found = [s for s in steps_found if s is not None]
    avg_rec = float(np.mean(np.asarray(rec["acc_recovered"], np.float32)))
    results = {
        "experiment": self.config.get("experiment", KIND),
        "scenario": "GNu (mask recovered, task not given)",
        "num_tasks": len(self.tasks),
        "hopfield_rule": self.parts.rule,
        "recovery": self.parts.recovery._asdict(),
        "tasks": per_task,
        "avg_accuracy": avg_rec,
        "avg_accuracy_recovered": avg_rec,
        "avg_accuracy_task_given": float(np.mean(np.asarray(rec["acc_given"], np.float32))),
        "median_recovery_steps": (float(np.median(found))
                                  if len(found) == len(steps_found) else None),
        "tasks_recovered": len(found),
        "store_bytes": summary["store_bytes"],
        "bit_bank_bytes": summary["bit_bank_bytes"],
        "bytes_per_task": summary["bytes_per_task"],
        "steps_per_task": self.steps,
        "train": self.rec["train"],
        "wall_time_s": self.sc.elapsed(),
        "train_time_s": self.rec["train_s"],
        "recovery_time_s": self.rec["recovery_s"],
    }
    if self.study["store_load_sweep"]:
      results["store_load"] = self.rec["store_load"]
      results["store_load_time_s"] = self.rec["store_load_s"]
    if self.study["capacity_sweep"]:
      results["capacity"] = {"d": int(self.parts.hidden[0]), "flip": 0.1,
                             "rows": self.rec["capacity"]}
      results["capacity_time_s"] = self.rec["capacity_s"]
    return results

  def write_outputs(self, results: Mapping) -> None:
    workdir = self.sc.workdir
    names = [p["task"] for p in results["tasks"]]
    curves = [p["recovery_hamming"] for p in results["tasks"]]
    _plot(os.path.join(workdir, "recovery_hamming.png"), names, curves,
          sum(self.parts.hidden))
    tmp = os.path.join(workdir, "recovery.csv.tmp")
    with open(tmp, "w") as f:
      f.write("task,step,hamming\n")
      for n, c in zip(names, curves):
        f.writelines(f"{n},{k},{v}\n" for k, v in enumerate(c))
    os.replace(tmp, os.path.join(workdir, "recovery.csv"))
    tmp = os.path.join(workdir, "stored_masks.tmp.npz")
    np.savez(tmp, **_reference_tree(self.reference, len(self.parts.hidden)))
    os.replace(tmp, os.path.join(workdir, "stored_masks.npz"))


def run(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the HopSupSup study of ``config``; returns the results.

  With ``config.stop_after_steps`` the run checkpoints and returns
  ``{"complete": False, ...}`` once that many train steps were taken in this
  process (the same command resumes).
  """
  study = validate(config)
  with scaffold.open_run(workdir, config, kind=KIND, stops_at_boundaries=True) as sc:
    if sc.finished is not None:
      logging.info("%s: finished before; results in %s", config.get("experiment", KIND),
                   workdir)
      return sc.finished
    # Data-dependent checks before the run is recorded (run.json) or trained.
    streams, learner, parts = _load(config, study)
    r = _Run(config, study, sc, streams, learner, parts)
    r.restore(sc.restore())
    if not r.train():
      if sc.stop_signal is not None:
        raise sc.interruption(r.where)
      logging.info("Stopped after %d steps (config.stop_after_steps); the same command "
                   "resumes", r.steps_this_process)
      return {"complete": False, "steps_this_process": r.steps_this_process}
    r.sweeps()
    results = sc.finish(r.results(), r.write_outputs)
  steps = [p["recovery_steps"] for p in results["tasks"]]
  logging.info("avg accuracy recovered %.4f, task given %.4f, recovery steps %s, store %d B "
               "vs bit bank %d B, wall %.1f s", results["avg_accuracy_recovered"],
               results["avg_accuracy_task_given"], steps, results["store_bytes"],
               results["bit_bank_bytes"], results["wall_time_s"])
  return results
