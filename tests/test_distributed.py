"""Beyond one device: task- and data-parallel training, sharded task inference
(directly, and in GNu and NNs runs whose bank rows are split over the
devices), two processes on localhost.

Every check runs in a subprocess (this file is also the worker: ``python
tests/test_distributed.py <case> <json args>``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (or 1 device per
process for the two-process run), so the rest of the suite keeps its single
CPU device.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the worker (runs in the subprocess) -------------------------------------

def _gg_config(**over):
  from launch.configs import gg_permuted_mnist  # pylint: disable=import-outside-toplevel
  c = gg_permuted_mnist.get_config()
  c.num_tasks, c.iterations_per_task, c.batch_size = 4, 10, 16
  c.log_every_steps, c.eval_batches_per_task, c.test_batch_size = 10, 2, 100
  c.eval_after_tasks = ()
  # SGD, not RMSprop: RMSprop scales a near-zero gradient to a full step, so
  # float noise (a different summation order on another mesh) would flip
  # masks; SGD keeps noise at noise level.
  c.optimizer, c.learning_rate, c.momentum = "sgd", 0.1, 0.9
  c.mask_kind, c.sparsity = "topk", 0.5
  for k, v in over.items():
    setattr(c, k, tuple(map(tuple, v)) if k == "mesh" else v)
  return c


def _bank_rows(workdir, config):
  """Final memory leaves of a run, from its last checkpoint."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from supsup_jax import checkpoint  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  ck = checkpoint.RunCheckpointer(workdir, config.to_dict())
  tree, _ = ck.restore()
  ck.close()
  # Leaves are saved under their tree paths: one entry per path.
  return {jax.tree_util.keystr(path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree["memory"])[0]}


def case_task_parallel(args):
  """GG, 4 tasks at once: over the 'tasks' axis of 4 devices vs one device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from supsup_jax import distributed; from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
  out = {"devices": jax.device_count()}
  results, memories = {}, {}
  for name, mesh in (("one", (("data", 1),)), ("tasks", (("tasks", 4),))):
    config = _gg_config(tasks_in_parallel=4, mesh=mesh)
    workdir = os.path.join(args["tmp"], name)
    results[name] = experiment.run(config, workdir)
    memories[name] = _bank_rows(workdir, config)
  out["acc"] = {k: r["accuracy_matrix"] for k, r in results.items()}
  out["mesh"] = results["tasks"]["mesh"]
  out["device_count"] = results["tasks"]["device_count"]
  diffs = []
  for k in memories["one"]:
    a, b = memories["one"][k], memories["tasks"][k]
    if a.dtype == np.uint8:  # packed mask bits
      diffs.append(float(np.mean(np.unpackbits(a) != np.unpackbits(b))))
    else:
      diffs.append(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
  out["memory_diffs"] = diffs
  # The stacked task states of a chunk really are split over the devices.
  setup = experiment.build(_gg_config(tasks_in_parallel=4))
  mesh = distributed.make_mesh([("tasks", 4), ("data", 2)])
  chunk = experiment.make_chunk_fn(setup.learner, setup.stream, 16, parallel=True, mesh=mesh)
  memory = distributed.place_replicated(setup.learner.init_memory(), mesh)
  states = experiment.stack([setup.learner.init_task(memory, t, experiment.task_key(0, t))
                             for t in range(4)])
  states = distributed.place_tasks(states, mesh)
  data = distributed.place_replicated(setup.stream.device_arrays, mesh)
  states, mets = chunk(memory, data, states, jnp.arange(4, dtype=jnp.int32), jnp.int32(0), 2)
  leaf = jax.tree.leaves(states.scores)[0]
  out["scores_spec"] = str(leaf.sharding.spec)
  out["scores_shard_shapes"] = sorted({tuple(s.data.shape) for s in leaf.addressable_shards})
  out["scores_shape"] = list(leaf.shape)
  out["data_x_shards"] = len(data["x"].addressable_shards)
  out["loss_finite"] = bool(np.all(np.isfinite(np.asarray(mets["loss"]))))
  return out


def case_data_parallel(args):
  """Small conv net with per-task BN: batch over 8 devices vs one device."""
  del args
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from supsup_jax import distributed; from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
  from supsup_jax.data.streams import InMemoryStream  # pylint: disable=import-outside-toplevel
  from supsup_jax.methods import supsup  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (256, 16, 16, 3), dtype=np.uint8)
  y = (x[..., 0].mean((1, 2)) > 127).astype(np.int32) + 2 * (x[..., 1].mean((1, 2)) > 127)
  data = {"train": (x, y), "test": (x[:64], y[:64]), "num_classes": 4}
  stream = InMemoryStream(name="synthetic", data=data, num_tasks=2, seed=0,
                          mean=(127.5,) * 3, std=(64.0,) * 3)
  config = _gg_config(model="small_conv", dataset="synthetic", num_tasks=2, batch_size=32,
                      model_options={"batch_norm": True})
  learner = supsup.from_config(config, stream)
  curves, stats = {}, {}
  for name, mesh in (("one", None), ("data", distributed.make_mesh([("data", 8)]))):
    chunk = experiment.make_chunk_fn(learner, stream, 32, parallel=False, mesh=mesh)
    memory, arrays = learner.init_memory(), stream.device_arrays
    state = learner.init_task(memory, 1, experiment.task_key(0, 1))
    if mesh is not None:
      memory = distributed.place_replicated(memory, mesh)
      arrays = distributed.place_replicated(arrays, mesh)
      state = distributed.place_replicated(state, mesh)
    losses = []
    for step in range(8):
      state, mets = chunk(memory, arrays, state, jnp.int32(1), jnp.int32(step), 1)
      losses.append(float(mets["loss"]))
    curves[name] = losses
    stats[name] = [np.asarray(v).tolist() for v in jax.tree.leaves(state.batch_stats)][:2]
    if mesh is not None:
      hlo = chunk.lower(memory, arrays, state, jnp.int32(1), jnp.int32(0), 1).compile().as_text()
      all_reduce = "all-reduce" in hlo
  bn_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(stats["one"], stats["data"]))
  return {"curves": curves, "bn_diff": bn_diff, "all_reduce": all_reduce,
          "num_bn_leaves": len(stats["one"])}


def case_inference(args):
  """Sharded bank vs the unsharded one: alpha-gradients, one-shot and binary."""
  del args
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import supsup_jax as ss  # pylint: disable=import-outside-toplevel
  from supsup_jax import bank as bank_lib  # pylint: disable=import-outside-toplevel
  from supsup_jax import distributed, inference  # pylint: disable=import-outside-toplevel
  from supsup_jax import masks as masks_lib  # pylint: disable=import-outside-toplevel
  from supsup_jax import sharded_inference as si  # pylint: disable=import-outside-toplevel
  from supsup_jax.masked_model import MaskedModel  # pylint: disable=import-outside-toplevel
  model = ss.models.LeNet300100(num_outputs=10)
  weights = ss.init_weights(model, seed=0, example_input=jnp.zeros((1, 28, 28, 1)))
  masked = MaskedModel(model, masks_lib.MaskSpec("topk", 0.5), 10)
  template = masks_lib.init_scores(weights, jax.random.key(0))
  k = 21  # not a multiple of the 8 devices: the last shards hold no task
  bank = bank_lib.init(template, k)
  mesh = distributed.make_mesh([("tasks", 4), ("data", 2)])
  sharded = si.init(template, k, mesh)
  for t in range(k):
    masks = masked.mask_spec(masks_lib.init_scores(weights, jax.random.key(t + 1)))
    bank = bank_lib.put(bank, t, masks)
    sharded = si.put(sharded, t, masks, mesh)
  # Images a few tasks' masks are confident on: real task structure is not
  # needed for an identity test, only distinct gradients.
  images = jax.random.normal(jax.random.key(7), (6, 3, 28, 28, 1))
  ref = np.asarray(inference.alpha_grads_many(masked, weights, bank, images))
  got = si.alpha_grads_many(masked, weights, sharded, images, mesh)
  lowered = si._sharded_grads.lower(  # pylint: disable=protected-access
      masked, sharded.layout, weights, sharded.rows, sharded.counts, sharded.num_tasks,
      jnp.zeros((6, sharded.capacity), bool), images, None, "entropy", True, mesh,
      True, 8)
  hlo = lowered.compile().as_text()
  return {
      "max_abs_diff": float(np.max(np.abs(np.asarray(got) - ref))),
      "scale": float(np.max(np.abs(ref))),
      "rows_equal": bool(np.array_equal(np.asarray(sharded.rows)[:bank.capacity],
                                        np.asarray(bank.rows))),
      "counts_equal": bool(np.array_equal(np.asarray(sharded.counts), np.asarray(bank.counts))),
      "row_shard_shapes": sorted({tuple(s.data.shape) for s in sharded.rows.addressable_shards}),
      "capacity": sharded.capacity,
      "oneshot_ref": np.argmin(ref, -1).tolist(),
      "oneshot": si.oneshot_many(masked, weights, sharded, images, mesh).tolist(),
      "binary_ref": inference.binary_many(masked, weights, bank, images).tolist(),
      "binary": si.binary_many(masked, weights, sharded, images, mesh).tolist(),
      "all_gather_in_bank_pass": "all-gather" in hlo,
      **_units_checks(masked, weights, bank, images, mesh, ref),
  }


def _units_checks(masked, weights, bank, images, mesh, ref):
  """The bank copied on all 8 devices, the 6 units split over them (padded
  to 8): the same gradients; and SupSup laid out that way
  (``bank_split="units"``) infers the same tasks as on one device."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from supsup_jax import distributed  # pylint: disable=import-outside-toplevel
  from supsup_jax import sharded_inference as si  # pylint: disable=import-outside-toplevel
  from supsup_jax.methods import supsup  # pylint: disable=import-outside-toplevel
  copied = distributed.place_replicated(bank, mesh)
  got = si.alpha_grads_by_units(masked, weights, copied, images, mesh)
  learner = supsup.make(masked, weights, optax.sgd(0.1), capacity=bank.capacity,
                        bank_split="units")
  memory = learner.init_memory()
  memory["bank"] = bank
  placed = learner.place_memory(memory, mesh)
  return {
      "units_mesh": si.units_mesh(copied) is not None and si.rows_mesh(copied) is None,
      "units_mesh_one": si.units_mesh(bank) is None,
      "units_shape": list(np.shape(got)),
      "units_max_abs_diff": float(np.max(np.abs(np.asarray(got) - ref))),
      "units_jit_diff": float(np.max(np.abs(np.asarray(jax.jit(
          lambda w, b, x: si.alpha_grads_by_units(masked, w, b, x, mesh, num_tasks=21))(
              weights, copied, images)) - np.asarray(got)))),
      "units_placed_copied": bool(placed["bank"].rows.sharding.is_fully_replicated),
      "units_learner": np.asarray(learner.infer_task(placed, bank.num_tasks, images)).tolist(),
      "units_learner_one": np.asarray(learner.infer_task(memory, bank.num_tasks, images)).tolist(),
      "units_rejects_bad_split": _raises(lambda: supsup.make(
          masked, weights, optax.sgd(0.1), capacity=2, bank_split="cols")),
  }


def _raises(fn) -> str:
  try:
    fn()
  except ValueError as e:
    return str(e)
  return ""


def _sharded_learner_checks():
  """SupSup's functions on a memory laid out by its ``place_memory`` (rows
  over 8 devices) vs the single-device memory: same bank, logits, inferred
  tasks (one-shot, binary), detection and reopened scores; end_task and
  logits never gather the bank."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import supsup_jax as ss  # pylint: disable=import-outside-toplevel
  from supsup_jax import distributed  # pylint: disable=import-outside-toplevel
  from supsup_jax import masks as masks_lib  # pylint: disable=import-outside-toplevel
  from supsup_jax import sharded_inference as si  # pylint: disable=import-outside-toplevel
  from supsup_jax.masked_model import MaskedModel  # pylint: disable=import-outside-toplevel
  from supsup_jax.methods import supsup  # pylint: disable=import-outside-toplevel
  model = ss.models.LeNet300100(num_outputs=10)
  weights = ss.init_weights(model, seed=0, example_input=jnp.zeros((1, 28, 28, 1)))
  masked = MaskedModel(model, masks_lib.MaskSpec("topk", 0.5), 10)
  learners = {a: supsup.make(masked, weights, optax.sgd(0.1), capacity=11,
                             inference_algorithm=a) for a in ("oneshot", "binary")}
  learner = learners["oneshot"]
  mesh = distributed.make_mesh([("tasks", 4), ("data", 2)])
  one = learner.init_memory()
  sharded = learner.place_memory(learner.init_memory(), mesh)
  end_one = jax.jit(learner.end_task)
  end_sharded = distributed.jit_like(learner.end_task, mesh, sharded, donate_argnums=0)
  state0 = learner.init_task(one, 0, jax.random.key(100))
  end_hlo = end_sharded.lower(sharded, state0, jnp.int32(0)).compile().as_text()
  logits_hlo = jax.jit(learner.logits).lower(sharded, jnp.int32(3), jnp.zeros(
      (4, 28, 28, 1))).compile().as_text()
  out = {"detect_one": [], "detect_sharded": []}
  images = jax.random.normal(jax.random.key(7), (6, 3, 28, 28, 1))
  for t in range(11):
    state = learner.init_task(one, t, jax.random.key(100 + t))
    one = end_one(one, state, jnp.int32(t))
    sharded = end_sharded(sharded, state, jnp.int32(t))
    if t in (2, 10):  # detection with untrained candidates (n < 5), and without
      out["detect_one"].append(list(learner.detect_task(one, t + 1, images[0])))
      out["detect_sharded"].append(list(learner.detect_task(sharded, t + 1, images[0])))
  rows = sharded["bank"].rows
  out["row_spec"] = str(rows.sharding.spec)
  out["row_shard_shapes"] = sorted({tuple(s.data.shape) for s in rows.addressable_shards})
  out["rows_mesh"] = si.rows_mesh(sharded["bank"]) is not None
  out["rows_mesh_one"] = si.rows_mesh(one["bank"]) is not None
  out["rows_equal"] = bool(np.array_equal(np.asarray(rows), np.asarray(one["bank"].rows)))
  out["counts_equal"] = bool(np.array_equal(np.asarray(sharded["bank"].counts),
                                            np.asarray(one["bank"].counts)))
  x = images[1]
  out["logits_diff"] = max(float(jnp.max(jnp.abs(
      learner.logits(one, t, x) - learner.logits(sharded, t, x)))) for t in (0, 5, 10))
  for a, lr in learners.items():
    out[f"{a}_one"] = np.asarray(lr.infer_task(one, 11, images)).tolist()
    out[f"{a}_sharded"] = np.asarray(lr.infer_task(sharded, 11, images)).tolist()
  re_one = learner.reopen_task(one, 4, jax.random.key(1))
  re_sharded = learner.reopen_task(sharded, 4, jax.random.key(1))
  out["reopen_equal"] = all(bool(jnp.array_equal(a, b)) for a, b in zip(
      jax.tree.leaves(re_one.scores), jax.tree.leaves(re_sharded.scores)))
  out["all_gather_end_task"] = "all-gather" in end_hlo
  out["all_gather_logits"] = "all-gather" in logits_hlo
  return out


def _count_calls(calls, module, *names):
  """Wraps ``module.<name>`` so that ``calls[name]`` counts its calls and
  ``calls[name + '_rows']`` holds the row shard shapes of the first bank it
  got; returns a function that puts the originals back."""
  originals = {n: getattr(module, n) for n in names}
  for name, fn in originals.items():
    def counted(*a, _fn=fn, _name=name, **kw):
      calls[_name] = calls.get(_name, 0) + 1
      rows = getattr(a[2], "rows", None) if len(a) > 2 else None
      if rows is not None:
        calls.setdefault(_name + "_rows", sorted(
            {tuple(s.data.shape) for s in rows.addressable_shards}))
      return _fn(*a, **kw)
    setattr(module, name, counted)
  return lambda: [setattr(module, n, f) for n, f in originals.items()]


def case_gn_sharded(args):
  """GNu on a (tasks 4, data 2) mesh, the bank's rows split over the 8
  devices, vs one device: accuracy and task-inference matrices, and which
  inference path ran; then the learner-level checks."""
  from launch.configs import gnu_permuted_mnist_lenet  # pylint: disable=import-outside-toplevel
  from supsup_jax import inference  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
  from supsup_jax import sharded_inference as si  # pylint: disable=import-outside-toplevel
  out = {}
  for name, mesh in (("one", (("data", 1),)), ("mesh", (("tasks", 4), ("data", 2)))):
    c = gnu_permuted_mnist_lenet.get_config()
    c.num_tasks, c.iterations_per_task, c.batch_size = 8, 10, 16
    c.log_every_steps, c.eval_batches_per_task, c.test_batch_size = 10, 6, 20
    c.eval_after_tasks, c.tasks_in_parallel, c.mesh = (4,), 4, mesh
    c.optimizer, c.learning_rate, c.momentum = "sgd", 0.1, 0.9  # see _gg_config
    c.mask_kind, c.sparsity = "topk", 0.5
    calls = {}
    undo = [_count_calls(calls, si, "oneshot_many", "binary_many"),
            _count_calls(calls, inference, "alpha_grads_many", "binary_many")]
    r = experiment.run(c, os.path.join(args["tmp"], name))
    for u in undo:
      u()
    out[name] = {"acc": r["accuracy_matrix"], "inf": r["task_inference_matrix"],
                 "calls": calls}
  out["learner"] = _sharded_learner_checks()
  return out


def case_nns_sharded(args):
  """NNs on a ('data', 8) mesh (batch split, bank rows over the 8 devices) vs
  one device; and the one-line refusal of a 'tasks' axis."""
  from launch.configs import nns_permuted_mnist  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
  from supsup_jax import sharded_inference as si  # pylint: disable=import-outside-toplevel
  out = {}
  for name, mesh in (("one", (("data", 1),)), ("mesh", (("data", 8),))):
    c = nns_permuted_mnist.get_config()
    c.num_tasks, c.iterations_per_task, c.nns.check_every = 3, args["iterations"], 50
    c.nns.max_masks, c.eval_after_tasks, c.eval_batches_per_task = 16, (), 4
    c.log_every_steps, c.mesh = 50, mesh
    calls = {}
    undo = _count_calls(calls, si, "oneshot_many", "dot")
    r = experiment.run(c, os.path.join(args["tmp"], name))
    undo()
    out[name] = {k: r[k] for k in ("accuracy_matrix", "task_inference_matrix",
                                   "masks_allocated", "mask_trained_on_task")}
    out[name]["calls"] = calls
  c.mesh = (("tasks", 2), ("data", 4))
  try:
    experiment.run(c, os.path.join(args["tmp"], "refused"))
  except ValueError as e:
    out["refusal"] = str(e)
  return out


def case_multihost(args):
  """One process of a two-process GG run; process ``crash_after_saves`` > 0
  dies (SIGKILL) right after that many checkpoints."""
  from supsup_jax import distributed  # pylint: disable=import-outside-toplevel
  distributed.maybe_initialize(args["spec"])
  from supsup_jax import checkpoint; from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
  crash = int(args.get("crash_after_saves", 0))
  if crash:
    save, count = checkpoint.RunCheckpointer.save, [0]

    def dying_save(self, *a, **kw):
      save(self, *a, **kw)
      count[0] += 1
      if count[0] >= crash:
        os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.RunCheckpointer.save = dying_save
  config = _gg_config(**args["config"])
  results = experiment.run(config, args["workdir"])
  return {"acc": results.get("accuracy_matrix"), "process": args["spec"]}


def _worker_main():
  case, args = sys.argv[1], json.loads(sys.argv[2])
  sys.path.insert(0, ROOT)
  out = globals()[f"case_{case}"](args)
  with open(args["out"], "w") as f:
    json.dump(out, f)


# -- the tests ---------------------------------------------------------------

def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("SUPSUP_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
  return env


def _run_case(case: str, tmp_path, devices: int = 8, timeout: int = 600, **args) -> dict:
  out = str(tmp_path / f"{case}.json")
  args = dict(args, out=out, tmp=str(tmp_path))
  proc = subprocess.run([sys.executable, __file__, case, json.dumps(args)],
                        env=_env(devices), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out) as f:
    return json.load(f)


def _needs_mnist():
  data = os.environ.get("SUPSUP_DATA_DIR", "")
  if not os.path.isdir(os.path.join(data, "mnist")):
    pytest.skip(f"MNIST not found under SUPSUP_DATA_DIR={data!r}")


def test_task_parallel_matches_one_device_and_is_sharded(tmp_path):
  _needs_mnist()
  out = _run_case("task_parallel", tmp_path)
  assert out["devices"] == 8
  assert out["device_count"] == 8 and out["mesh"]["axes"] == [["tasks", 4]]
  one, tasks = out["acc"]["one"], out["acc"]["tasks"]
  assert len(one[-1]) == 4
  for a, b in zip(one[-1], tasks[-1]):
    assert abs(a - b) <= 0.01, (one, tasks)
  assert min(one[-1]) > 0.25  # 10 steps: well above chance (0.1)
  # Packed mask bits: at most a few in 10^4 flip on float noise at the top-k edge.
  assert max(out["memory_diffs"]) < 1e-3, out["memory_diffs"]
  # [4 tasks, ...] over a (tasks 4, data 2) mesh: one task per device pair.
  assert out["scores_spec"].startswith(("P('tasks'", "PartitionSpec('tasks'"))
  assert all(s[0] == 1 for s in out["scores_shard_shapes"]), out["scores_shard_shapes"]
  assert out["scores_shape"][0] == 4
  assert out["data_x_shards"] == 8 and out["loss_finite"]


def test_data_parallel_small_conv_same_loss_curve(tmp_path):
  out = _run_case("data_parallel", tmp_path)
  one, data = out["curves"]["one"], out["curves"]["data"]
  assert len(one) == 8
  for a, b in zip(one, data):
    assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (one, data)
  assert one[-1] < one[0]  # it trains
  assert out["num_bn_leaves"] >= 1 and out["bn_diff"] < 1e-4  # global-batch BN stats
  assert out["all_reduce"]  # gradients/statistics reduced across devices


def test_sharded_inference_matches_unsharded(tmp_path):
  out = _run_case("inference", tmp_path)
  assert out["rows_equal"] and out["counts_equal"]
  assert out["capacity"] % 8 == 0
  assert out["row_shard_shapes"] == [[out["capacity"] // 8, 33275]]
  assert out["max_abs_diff"] <= 1e-5 * out["scale"] + 1e-7, out
  assert out["oneshot"] == out["oneshot_ref"]
  assert out["binary"] == out["binary_ref"]
  assert len(set(out["oneshot"])) > 1  # distinct answers: the identity is not vacuous
  assert not out["all_gather_in_bank_pass"]  # the rows never leave their device
  # bank_split="units": whole bank per device, units split over the devices.
  assert out["units_mesh"] and out["units_mesh_one"] and out["units_placed_copied"]
  assert out["units_shape"] == [6, 21]  # the padding units dropped
  assert out["units_max_abs_diff"] <= 1e-5 * out["scale"] + 1e-7, out
  assert out["units_jit_diff"] <= 1e-6 * out["scale"], out  # jit-safe
  assert out["units_learner"] == out["units_learner_one"] == out["oneshot_ref"]
  assert out["units_rejects_bad_split"] == "bank_split 'cols' unknown; allowed: rows, units"


def test_gn_on_a_mesh_infers_where_the_bank_rows_are(tmp_path):
  _needs_mnist()
  out = _run_case("gn_sharded", tmp_path)
  one, mesh = out["one"], out["mesh"]
  # The same numbers: inference sums the bank pass per shard (float order
  # only), training splits each batch over 'data' (float order only).
  assert mesh["acc"] == one["acc"], (one, mesh)
  assert mesh["inf"] == one["inf"], (one, mesh)
  assert len(one["inf"]) == 2 and len(set(one["inf"][-1])) > 1  # not vacuous
  # Which path ran: one device, inference.*; the mesh, sharded_inference.*
  # on a bank whose 64 rows are split 8 per device (kept so by end_task).
  assert one["calls"].get("alpha_grads_many", 0) > 0 and "oneshot_many" not in one["calls"]
  assert mesh["calls"].get("oneshot_many", 0) > 0, mesh["calls"]
  assert "alpha_grads_many" not in mesh["calls"], mesh["calls"]
  assert mesh["calls"]["oneshot_many_rows"] == [[8, 34400]]
  lr = out["learner"]
  assert lr["row_spec"] == "P(('tasks', 'data'), None)" and lr["row_shard_shapes"] == [
      [8, 33275]]
  assert lr["rows_mesh"] and not lr["rows_mesh_one"]
  assert lr["rows_equal"] and lr["counts_equal"] and lr["reopen_equal"]
  assert lr["logits_diff"] <= 1e-5
  assert lr["oneshot_sharded"] == lr["oneshot_one"] and len(set(lr["oneshot_one"])) > 1
  assert lr["binary_sharded"] == lr["binary_one"] and len(set(lr["binary_one"])) > 1
  assert lr["detect_sharded"] == lr["detect_one"]
  assert not lr["all_gather_end_task"] and not lr["all_gather_logits"]


def test_nns_on_a_data_mesh_matches_one_device(tmp_path):
  _needs_mnist()
  out = _run_case("nns_sharded", tmp_path, iterations=150)
  one, mesh = out["one"], out["mesh"]
  assert one["masks_allocated"] == mesh["masks_allocated"] == 3
  assert one["mask_trained_on_task"] == mesh["mask_trained_on_task"] == [0, 1, 2]
  assert one["task_inference_matrix"] == mesh["task_inference_matrix"]
  # Data-parallel training sums each batch's loss in another order; RMSprop
  # (the NNs config) carries that noise a little further than SGD.
  for a, b in zip(one["accuracy_matrix"][-1], mesh["accuracy_matrix"][-1]):
    assert abs(a - b) <= 0.03, (one, mesh)
  assert min(one["accuracy_matrix"][-1]) > 0.8
  # Detection and evaluation went through the sharded bank (8 rows per device).
  assert mesh["calls"].get("dot", 0) > 0 and mesh["calls"].get("oneshot_many", 0) > 0
  assert mesh["calls"]["oneshot_many_rows"] == [[8, 39400]] and not one["calls"]
  assert out["refusal"].startswith("NNs trains one mask at a time") and "\n" not in out["refusal"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_pair(tmp_path, workdir, tag, crash_after_saves=0, via_launcher=False):
  port = _free_port()
  procs = []
  for pid in range(2):
    spec = f"localhost:{port},2,{pid}"
    if via_launcher:
      cmd = [sys.executable, "-m", "launch.main",
             "--config=launch/configs/gg_permuted_mnist.py", f"--workdir={workdir}",
             f"--distributed={spec}"] + [f"--config.{k}={v}" for k, v in _PAIR_FLAGS.items()]
    else:
      args = {"spec": spec, "workdir": workdir, "config": _PAIR_CONFIG,
              "out": str(tmp_path / f"{tag}_{pid}.json"),
              "crash_after_saves": crash_after_saves if pid == 1 else 0}
      cmd = [sys.executable, __file__, "multihost", json.dumps(args)]
    env = _env(1)
    env["SUPSUP_DISTRIBUTED_OPTIONS"] = "heartbeat"
    procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


_PAIR_CONFIG = {"tasks_in_parallel": 2, "mesh": [["tasks", 2]], "checkpoint_every_steps": 5}
_PAIR_FLAGS = {"num_tasks": 4, "iterations_per_task": 10, "batch_size": 16,
               "log_every_steps": 10, "eval_batches_per_task": 2, "test_batch_size": 100,
               "eval_after_tasks": "()", "optimizer": "sgd", "learning_rate": 0.1,
               "momentum": 0.9, "mask_kind": "topk",
               "sparsity": 0.5, "tasks_in_parallel": 2, "mesh": "[('tasks', 2)]",
               "checkpoint_every_steps": 5}


def test_two_processes_match_one_and_resume_after_a_kill(tmp_path):
  _needs_mnist()
  ref = _run_case("multihost", tmp_path, devices=1, spec="", workdir=str(tmp_path / "ref"),
                  config={"tasks_in_parallel": 2, "mesh": [["data", 1]]})
  workdir = str(tmp_path / "pair")
  # Run 1: process 1 is killed after its second checkpoint (mid-group), so
  # process 0 loses its peer; whatever it does, it is stopped.
  procs = _start_pair(tmp_path, workdir, "crash", crash_after_saves=2)
  assert procs[1].wait(timeout=400) == -signal.SIGKILL, procs[1].stdout.read()[-3000:]
  try:
    procs[0].wait(timeout=60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    procs[0].wait()
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  steps = os.listdir(os.path.join(workdir, "checkpoints"))
  assert steps, "no checkpoint before the kill"
  # Run 2: both processes, through the launcher, resume from the checkpoint.
  procs = _start_pair(tmp_path, workdir, "resume", via_launcher=True)
  logs = [p.communicate(timeout=400)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-3000:] for l in logs)
  assert "Resuming" in logs[0], logs[0][-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["device_count"] == 2 and results["mesh"]["process_count"] == 2
  for a, b in zip(ref["acc"][-1], results["accuracy_matrix"][-1]):
    assert abs(a - b) <= 0.01, (ref["acc"], results["accuracy_matrix"])


def test_bad_meshes_are_refused_in_one_line():
  from supsup_jax import distributed  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"3 devices, which does not divide the 8 devices"):
    distributed.resolve_mesh_shape([("tasks", 3)], 8)
  with pytest.raises(ValueError, match=r"fixed axes \(3 devices\) do not divide the 8"):
    distributed.resolve_mesh_shape([("tasks", 3), ("data", -1)], 8)
  assert distributed.resolve_mesh_shape([("tasks", 2), ("data", -1)], 8) == (
      ("tasks", 2), ("data", 4))
  assert distributed.resolve_mesh_shape(None, 1) == (("data", 1),)
  assert distributed.parse_mesh("[('tasks', 8)]") == (("tasks", 8),)
  for bad, msg in (([("model", 2)], "axis 'model' unknown"), ([("data", 0)], "size 0"),
                   ("[('tasks', 8", "not a list"), ([("data", -1), ("tasks", -1)], "more than one -1"),
                   ([("data", 2), ("data", 2)], "distinct")):
    with pytest.raises(ValueError, match=msg):
      distributed.parse_mesh(bad)


def test_bad_parallel_widths_are_refused_before_compiling():
  import jax  # pylint: disable=import-outside-toplevel
  from supsup_jax import distributed  # pylint: disable=import-outside-toplevel
  mesh = distributed.make_mesh([("data", 1)])
  distributed.check_parallel(mesh, tasks_in_parallel=3, batch_size=7)  # one device: any
  fake = type("FakeMesh", (), {"shape": {"tasks": 4, "data": 2}})()
  with pytest.raises(ValueError, match=r"tasks_in_parallel=6 is not divisible by .* \(4 "
                     r"devices\); .* --config.tasks_in_parallel=4"):
    distributed.check_parallel(fake, tasks_in_parallel=6, batch_size=8)
  with pytest.raises(ValueError, match=r"batch_size=33 is not divisible by .* \(2 devices\)"
                     r"; .* --config.batch_size=32"):
    distributed.check_parallel(fake, tasks_in_parallel=4, batch_size=33)
  assert jax.device_count() >= 1


if __name__ == "__main__":
  _worker_main()
