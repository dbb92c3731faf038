"""HopSupSup runner: train gain masks task by task, store them in Hopfield nets, recover.

``run(config, workdir) -> results`` (``config.runner = "hopsupsup"``):

1. trains each task's gain masks with the learner's ``train_step`` (one jitted
   ``lax.scan`` per task over ``epochs_per_task`` epochs of the stream) and
   ``end_task`` (which puts the masks into the Hopfield stores);
2. recovers every task's masks at once (``vmap`` over tasks of the jitted
   recovery scan) on that task's test stream of B batches of
   ``recovery_batch_size`` (shuffled with the seed, as the authors' shuffled
   test loader; the incomplete last batch is dropped);
3. evaluates each task on those batches with the recovered masks and with the
   masks it stored (the task given), batch-norm statistics per batch.

The stored masks are kept by the runner only to measure recovery (Hamming
distance, task-given accuracy); the learner itself keeps only the stores.
Optional: ``extra_datasets`` (e.g. ``("split_fashion_mnist",)``) trains and
stores those streams' tasks too, on the same fixed network, and recovers them
all (a real-data load test of the store); ``capacity_sweep`` (numbers of
synthetic random masks) measures energy-only recovery of 10 %-corrupted
copies against the number of stored patterns at the real layer width.

Writes ``results.json``, ``recovery.csv``, ``recovery_hamming.png`` and
``stored_masks.npz`` (bool [tasks, d] per layer, the reference masks).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import hopfield
from supsup_jax.data import make_stream
from supsup_jax.methods import hopsupsup
from supsup_jax.metrics import write_json_atomic


def _stream(config, name: str, num_tasks: int):
  data_dir = config.get("data_dir", "") or None
  opts = dict(config.get("dataset_options", {}) or {})
  seed = config.get("data_seed", None)
  seed = int(config.seed if seed is None else seed)
  return make_stream(name, num_tasks=num_tasks, seed=seed, data_dir=data_dir,
                     download=bool(config.get("download", False)), **opts)


def train_task(learner, stream, memory, task_id: int, steps: int, batch_size: int, key):
  """Trains one task (a jitted scan of ``train_step``) and ends it.

  Returns (memory, task_state, metrics {"loss", "accuracy"} [steps]).
  """
  fn, arrays = stream.train_batch_fn_args(batch_size)
  ts = learner.init_task(memory, task_id, key)

  @jax.jit
  def loop(memory, ts, arrays, task_id):
    def body(ts, step):
      images, labels = fn(arrays, task_id, step)
      return learner.train_step(memory, ts, images, labels)
    return jax.lax.scan(body, ts, jnp.arange(steps))

  ts, metrics = loop(memory, ts, arrays, jnp.asarray(task_id, jnp.int32))
  memory = jax.jit(learner.end_task)(memory, ts, task_id)
  return memory, ts, metrics


def test_stream(stream, task_id: int, batch_size: int, key, max_batches: int = 0):
  """The task's test set as shuffled full batches: images [B, n, ...], labels [B, n]."""
  images, labels = stream.test_arrays(task_id)
  n = int(images.shape[0])
  nb = n // batch_size if not max_batches else min(n // batch_size, max_batches)
  if nb < 1:
    raise ValueError(f"task {task_id} has {n} test images, fewer than one "
                     f"recovery batch of {batch_size}; lower recovery_batch_size")
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


def capacity_sweep(parts, d: int, counts, *, flip: float = 0.1, steps: int = 30,
                   probes: int = 8, seed: int = 0) -> list[dict]:
  """Energy-only recovery of corrupted synthetic masks vs the number stored.

  For each K in ``counts``: K random masks (bits 1 with probability 1/2) go
  into a d-unit store with the learner's rule; ``probes`` of them, each with a
  fraction ``flip`` of bits flipped, start ``steps`` SGD steps on the energy
  (the recovery's optimizer and gamma). Reports the fraction recovered exactly,
  the mean final Hamming distance, and how many stored patterns are fixed
  points of sign(W x).
  """
  out = []
  for k in counts:
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
    out.append({"num_masks": int(k), "recovered_fraction": float(jnp.mean(ham == 0)),
                "mean_final_hamming": float(jnp.mean(ham)),
                "fixed_point_fraction": float(fixed)})
    print(f"capacity: {out[-1]}", flush=True)
  return out


def store_load_sweep(parts, memory, reference, images, labels, num_batches, ref,
                     counts, *, seed: int = 0) -> list[dict]:
  """Full recovery of the real tasks with K extra synthetic masks in the stores.

  The K masks (stored after the real ones, each bit on with the real masks'
  density in that layer) stand for further tasks; the real tasks are then
  recovered and evaluated as in :func:`recover_and_evaluate`.
  """
  rows = []
  for k in counts:
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
    rows.append({"extra_masks": int(k), "stored_patterns": len(reference) + int(k),
                 "tasks_recovered": sum(s is not None for s in steps),
                 "recovery_steps": steps,
                 "final_hamming": [int(out["hamming"][i][nbs[i]]) for i in range(len(nbs))],
                 "avg_accuracy_recovered": float(np.mean(out["acc_recovered"])),
                 "avg_accuracy_task_given": float(np.mean(out["acc_given"]))})
    print(f"store load +{k}: {rows[-1]}", flush=True)
  return rows


def _plot(path: str, names: list[str], curves: list[list[int]], d_total: int) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, c in zip(names, curves):
    ax.plot(np.arange(len(c)), c, label=name)
  ax.set_xlabel("recovery step (test batch)")
  ax.set_ylabel(f"Hamming distance to stored mask (of {d_total} bits)")
  ax.set_ylim(bottom=0)
  ax.set_title("HopSupSup mask recovery")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=120)
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def run(config, workdir: str) -> dict[str, Any]:
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  num_tasks = int(config.num_tasks)
  streams = [(config.dataset, _stream(config, config.dataset, num_tasks))]
  for name in config.get("extra_datasets", ()) or ():
    streams.append((name, _stream(config, name, num_tasks)))
  learner, parts = hopsupsup.build_from_config(config, streams[0][1])
  batch_size = int(config.batch_size)
  rbs = int(config.get("recovery_batch_size", 64))
  key = jax.random.key(int(config.seed))

  memory = learner.init_memory()
  tasks, reference, train_log = [], [], []
  t_train = time.time()
  for si, (name, stream) in enumerate(streams):
    for t in range(num_tasks):
      iters = int(config.get("iterations_per_task", 0))
      steps = iters or max(1, int(round(float(config.get("epochs_per_task", 1.0))
                                        * (stream.train_size(t) // batch_size))))
      tkey = jax.random.fold_in(jax.random.fold_in(key, si), t)
      memory, ts, metrics = train_task(learner, stream, memory, t, steps, batch_size, tkey)
      masks = jax.device_get(parts.masks_of(ts))
      reference.append(masks)
      tasks.append((name, stream, t))
      train_log.append({"task": f"{name}/{t}", "steps": steps,
                        "final_train_accuracy": float(np.mean(metrics["accuracy"][-10:])),
                        "mask_density": [float(np.mean(m)) for m in masks]})
      print(f"trained {name} task {t + 1}/{num_tasks}: {steps} steps, "
            f"train acc {train_log[-1]['final_train_accuracy']:.3f}, "
            f"mask density {train_log[-1]['mask_density']}", flush=True)
  train_s = time.time() - t_train
  # The stored masks, to measure recovery (and to redo sweeps without training).
  np.savez(os.path.join(workdir, "stored_masks.npz"),
           **{f"layer{l}": np.stack([r[l] for r in reference])
              for l in range(len(parts.hidden))})

  t_rec = time.time()
  data = [test_stream(s, t, rbs, jax.random.fold_in(jax.random.fold_in(key, 1000 + i), t),
                      int(config.get("recovery_batches", 0)))
          for i, (_, s, t) in enumerate(tasks)]
  nbs = [int(x.shape[0]) for x, _ in data]
  bmax = max(nbs)
  images = _pad([x for x, _ in data], bmax)
  labels = _pad([y for _, y in data], bmax)
  ref = tuple(jnp.asarray(np.stack([r[l] for r in reference])) for l in range(len(parts.hidden)))
  out = jax.device_get(recover_and_evaluate(parts, memory, images, labels,
                                            jnp.asarray(nbs, jnp.int32), ref))
  recovery_s = time.time() - t_rec

  summary = learner.summary(memory, len(tasks))
  d_total = sum(parts.hidden)
  per_task, names, curves = [], [], []
  for i, (name, _, t) in enumerate(tasks):
    curve = [int(v) for v in out["hamming"][i][:nbs[i] + 1]]
    names.append(f"{name}/{t}")
    curves.append(curve)
    per_task.append({
        "task": f"{name}/{t}", "recovery_batches": nbs[i],
        "recovery_hamming": curve, "recovery_steps": first_zero(curve),
        "final_hamming": curve[-1],
        "accuracy_recovered": float(out["acc_recovered"][i]),
        "accuracy_task_given": float(out["acc_given"][i]),
        "store_bytes": summary["store_bytes"]})
  steps_found = [p["recovery_steps"] for p in per_task]
  finite = [s for s in steps_found if s is not None]
  results = {
      "experiment": config.get("experiment", "hopsupsup"),
      "scenario": "GNu (mask recovered, task not given)",
      "num_tasks": len(tasks),
      "hopfield_rule": parts.rule,
      "recovery": parts.recovery._asdict(),
      "tasks": per_task,
      "avg_accuracy": float(np.mean(out["acc_recovered"])),
      "avg_accuracy_recovered": float(np.mean(out["acc_recovered"])),
      "avg_accuracy_task_given": float(np.mean(out["acc_given"])),
      "median_recovery_steps": (float(np.median(finite))
                                if len(finite) == len(steps_found) else None),
      "tasks_recovered": len(finite),
      "store_bytes": summary["store_bytes"],
      "bit_bank_bytes": summary["bit_bank_bytes"],
      "bytes_per_task": summary["bytes_per_task"],
      "train": train_log,
      "wall_time_s": None,
      "train_time_s": train_s,
      "recovery_time_s": recovery_s,
      "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
  }
  _plot(os.path.join(workdir, "recovery_hamming.png"), names, curves, d_total)
  with open(os.path.join(workdir, "recovery.csv.tmp"), "w") as f:
    f.write("task,step,hamming\n")
    for n, c in zip(names, curves):
      f.writelines(f"{n},{k},{v}\n" for k, v in enumerate(c))
  os.replace(os.path.join(workdir, "recovery.csv.tmp"), os.path.join(workdir, "recovery.csv"))
  # Written now and again after the (slow) sweeps.
  results["wall_time_s"] = time.time() - t_start
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  loads = tuple(config.get("store_load_sweep", ()) or ())
  if loads:
    t_load = time.time()
    results["store_load"] = store_load_sweep(
        parts, memory, reference, images, labels, jnp.asarray(nbs, jnp.int32), ref,
        loads, seed=int(config.seed))
    results["store_load_time_s"] = time.time() - t_load
  counts = tuple(config.get("capacity_sweep", ()) or ())
  if counts:
    t_cap = time.time()
    results["capacity"] = {
        "d": int(parts.hidden[0]), "flip": 0.1,
        "rows": capacity_sweep(parts, int(parts.hidden[0]), counts, seed=int(config.seed))}
    results["capacity_time_s"] = time.time() - t_cap
  results["wall_time_s"] = time.time() - t_start
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  print(f"avg accuracy recovered {results['avg_accuracy_recovered']:.4f}, task given "
        f"{results['avg_accuracy_task_given']:.4f}, recovery steps {steps_found}, "
        f"store {results['store_bytes']} B vs bit bank {results['bit_bank_bytes']} B, "
        f"wall {results['wall_time_s']:.1f} s", flush=True)
  return results
