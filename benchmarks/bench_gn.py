"""GN hot paths: the LeNet train step (one task and vmapped over tasks),
one-shot task inference over a bit-packed bank, and PermutedMNIST input."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.registry import Stats, benchmark
from supsup_jax import masks as masks_lib
from supsup_jax import masked_model as ss_masked
from supsup_jax import bank as bank_lib
from supsup_jax import inference
from supsup_jax import models
from supsup_jax import training
from supsup_jax import weights as weights_lib

X28 = np.zeros((1, 28, 28, 1), np.float32)


def _lenet(outputs=10):
  model = models.LeNet300100(outputs)
  weights = weights_lib.init_weights(model, 0, X28)
  masked = ss_masked.MaskedModel(model, masks_lib.MaskSpec("threshold"), 10)
  return model, weights, masked


def _batch(num_tasks=None, batch=128):
  shape = (batch, 28, 28, 1) if num_tasks is None else (num_tasks, batch, 28, 28, 1)
  x = jax.random.normal(jax.random.key(0), shape)
  y = jnp.broadcast_to(jnp.arange(batch) % 10, shape[:-3])
  return x, y


def _train_step_fn(num_tasks=None):
  _, weights, masked = _lenet()
  opt = training.make_optimizer("rmsprop", 1e-4)
  step = training.make_train_step(masked, opt)
  states = [training.init_task_state(masked, weights, opt, jax.random.key(t))
            for t in range(num_tasks or 1)]
  if num_tasks:
    step = training.make_multitask_step(step)
    state = training.stack_states(states)
  else:
    state = states[0]
  step = jax.jit(step, donate_argnums=1)
  x, y = _batch(num_tasks)
  holder = [state]

  def call():
    holder[0], metrics = step(weights, holder[0], x, y)
    return metrics

  return call


@benchmark("gnu_train_step_ms", "ms")
def gnu_train_step_ms():
  """LeNet 300-100, threshold masks, batch 128, RMSprop: one task's step."""
  return _train_step_fn()


def _per_task_step(num_tasks):
  call = _train_step_fn(num_tasks)
  jax.block_until_ready(call())  # compile
  times = []
  for _ in range(10):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append((time.perf_counter() - t0) * 1e3 / num_tasks)
  return Stats(statistics.median(times), min(times), max(times), 0.0)


@benchmark("vmap_train_task_step_ms_10", "ms")
def vmap_train_task_step_ms_10():
  """The same step for 10 tasks at once (vmap), time per task-step."""
  return _per_task_step(10)


@benchmark("vmap_train_task_step_ms_50", "ms")
def vmap_train_task_step_ms_50():
  """The same step for 50 tasks at once (vmap), time per task-step."""
  return _per_task_step(50)


def random_bank(weights, num_tasks: int, seed: int = 0) -> bank_lib.MaskBank:
  """A bank of ``num_tasks`` random ~50% masks, filled without per-task adds."""
  bank = bank_lib.MaskBank(weights)
  rng = np.random.default_rng(seed)
  rows = rng.integers(0, 256, (num_tasks, bank.bytes_per_task), dtype=np.uint8)
  counts = np.zeros(bank.layout.num_bits, np.int64)
  for start in range(0, num_tasks, 100):
    counts += np.unpackbits(rows[start:start + 100], axis=1,
                            count=bank.layout.num_bits).sum(0, dtype=np.int64)
  return bank.load_state_dict({"rows": rows, "counts": counts.astype(np.int32),
                               "num_tasks": num_tasks})


def _oneshot(num_tasks, outputs=500):
  _, weights, masked = _lenet(outputs)
  bank = random_bank(weights, num_tasks)
  x, _ = _batch()
  return lambda: inference.alpha_grad(masked, weights, bank, x)


@benchmark("oneshot_ms_k250", "ms")
def oneshot_ms_k250():
  """One-shot inference (gradient + argmin) over 250 LeNet (out 500) masks, batch 128."""
  return _oneshot(250)


@benchmark("oneshot_ms_k2500", "ms")
def oneshot_ms_k2500():
  """One-shot inference over 2500 LeNet (out 500) masks from the packed bank, batch 128."""
  return _oneshot(2500)


@functools.partial(jax.jit, static_argnames=("masked", "layout"))
def _alpha_grad_lut(masked, layout, weights, rows, counts, num_tasks, images):
  """inference.alpha_grad with the XLA lookup-table bank pass (before bitdot)."""
  mean = layout.unflatten(counts.astype(jnp.float32) / num_tasks)
  g = inference.effective_weight_grad(masked, weights, mean, images, "entropy")
  return bank_lib._rows_dot_xla(rows, layout.flatten(g), num_tasks.astype(jnp.int32),
                                packed=True, block=64)


@benchmark("oneshot_ms_k2500_lut", "ms")
def oneshot_ms_k2500_lut():
  """oneshot_ms_k2500 with the XLA per-byte lookup table instead of the kernel."""
  _, weights, masked = _lenet(500)
  state = random_bank(weights, 2500).state
  x, _ = _batch()
  n = state.num_tasks.astype(jnp.float32)
  return lambda: _alpha_grad_lut(masked, state.layout, weights, state.rows,
                                 state.counts, n, x)


@benchmark("oneshot_grad_only_ms", "ms")
def oneshot_grad_only_ms():
  """Limit part 1: the backward pass of one-shot alone (LeNet out 500, batch
  128, at a 2500-task mean mask), no bank pass."""
  _, weights, masked = _lenet(500)
  state = random_bank(weights, 2500).state
  x, _ = _batch()
  f = jax.jit(lambda w, c, x: state.layout.flatten(inference.effective_weight_grad(
      masked, w, state.layout.unflatten(c.astype(jnp.float32) / 2500), x, "entropy")))
  return lambda: f(weights, state.counts, x)


@benchmark("bank_pass_ms_k2500", "ms")
def bank_pass_ms_k2500():
  """The bank pass alone: bank.rows_dot over 2500 packed LeNet (out 500) rows."""
  _, weights, _ = _lenet(500)
  state = random_bank(weights, 2500).state
  g = jax.random.normal(jax.random.key(1), (state.layout.num_bits,))
  f = jax.jit(lambda r, g, n: bank_lib.rows_dot(r, g, n))
  return lambda: f(state.rows, g, state.num_tasks)


@benchmark("limit_memcpy_ms_98mb", "ms")
def limit_memcpy_ms_98mb():
  """Limit: memcpy (numpy, one core) of 98.5 MB, the 2500-task packed bank."""
  src = np.random.default_rng(0).integers(0, 256, 2500 * 39400, dtype=np.uint8)
  dst = np.empty_like(src)
  return lambda: np.copyto(dst, src)


@benchmark("limit_matmul_ms_665m", "ms")
def limit_matmul_ms_665m():
  """Limit: a float32 matmul with the bank pass's multiply-adds (2500 x 266,200
  = 665.5 M), in cache: [1024, 1040] @ [1040, 625], XLA on all cores."""
  a = jax.random.normal(jax.random.key(0), (1024, 1040))
  b = jax.random.normal(jax.random.key(1), (1040, 625))
  f = jax.jit(jnp.dot)
  return lambda: f(a, b)


@benchmark("binary_ms_k2500", "ms")
def binary_ms_k2500():
  """Binary task inference (halving rounds) over 2500 LeNet (out 500) masks, one batch of 128."""
  _, weights, masked = _lenet(500)
  bank = random_bank(weights, 2500)
  x, _ = _batch()
  return lambda: inference.binary_many(masked, weights, bank, x[None], num_tasks=2500)


@benchmark("per_example_ms_k2500", "ms")
def per_example_ms_k2500():
  """Per-example one-shot inference over 2500 masks: 128 images, each its own unit."""
  _, weights, masked = _lenet(500)
  bank = random_bank(weights, 2500)
  x, _ = _batch()
  return lambda: inference.alpha_grads_many(masked, weights, bank, x[:, None],
                                            num_tasks=2500)


@benchmark("oneshot_peak_rss_mb_k2500", "MB", peak_rss=True)
def oneshot_peak_rss_mb_k2500():
  """Peak RSS of a fresh process: build a 2500-task bank, run one-shot inference."""
  return _oneshot(2500)


@benchmark("mask_bank_mb_k2500", "MB")
def mask_bank_mb_k2500():
  """Bytes of the packed bank holding 2500 LeNet 300-100 (out 500) masks."""
  _, weights, _ = _lenet(500)
  bank = random_bank(weights, 2500)
  mb = bank.nbytes / 1e6
  return Stats(mb, mb, mb, 0.0)


def _train_with_bank(num_tasks):
  """Train-chunk time (100 steps) + adding the mask, with a bank of k tasks."""
  _, weights, masked = _lenet(500)
  bank = random_bank(weights, num_tasks)
  opt = training.make_optimizer("rmsprop", 1e-4)
  step = jax.jit(training.make_train_step(masked, opt), donate_argnums=1)
  x, y = _batch()
  state = training.init_task_state(masked, weights, opt, jax.random.key(0))
  holder = [state]

  def call():
    for _ in range(100):
      holder[0], _ = step(weights, holder[0], x, y)
    bank.add(masked.mask_spec(holder[0].scores))
    return bank.counts

  return call


@benchmark("gnu_train_100_steps_ms_bank10", "ms")
def gnu_train_100_steps_ms_bank10():
  """100 train steps + storing the mask, with 10 tasks already in the bank."""
  return _train_with_bank(10)


@benchmark("gnu_train_100_steps_ms_bank1000", "ms")
def gnu_train_100_steps_ms_bank1000():
  """100 train steps + storing the mask, with 1000 tasks already in the bank."""
  return _train_with_bank(1000)


@benchmark("permuted_mnist_batches_per_s", "batches/s")
def permuted_mnist_batches_per_s():
  """Input throughput of PermutedMNIST (batch 128, task 1234 of 2500)."""
  from supsup_jax import data  # pylint: disable=import-outside-toplevel
  stream = data.make_stream("permuted_mnist", num_tasks=2500, seed=0)
  rates = [data.measure_throughput(stream, batch_size=128, num_batches=500,
                                   task_id=1234) for _ in range(3)]
  return Stats(statistics.median(rates), min(rates), max(rates), 0.0)


def _config_2500(overrides: dict):
  from launch.configs import gnu_permuted_mnist_2500  # pylint: disable=import-outside-toplevel
  config = gnu_permuted_mnist_2500.get_config()
  config.update(overrides)
  return config


def _on_config_devices(fn_name: str, overrides: dict):
  """Runs ``fn_name(overrides)`` (a function of this module returning Stats)
  on the devices the run would use: in this process if its CPU is split as
  the config asks (or off the CPU: the split only applies to the host), else
  in a subprocess whose CPU is (XLA fixes its device count when it starts).
  None: run it here."""
  from supsup_jax import xla_flags  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "cpu":
    return None
  config = _config_2500(overrides)
  want = xla_flags.cpu_device_count(config.cpu_devices, config.tasks_in_parallel)
  if want == jax.local_device_count("cpu"):
    return None
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(  # this process's split, if any, is not the child's
      f for f in env.get("XLA_FLAGS", "").split()
      if f.split("=", 1)[0] not in (xla_flags.DEVICE_COUNT_FLAG, xla_flags.EIGEN_THREADS_FLAG))
  xla_flags.apply_cpu_defaults(env)
  xla_flags.split_cpu(want, env)
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.bench_gn", fn_name, json.dumps(overrides)],
      capture_output=True, text=True, env=env, timeout=3600,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if out.returncode != 0:
    raise RuntimeError(f"{fn_name} on {want} CPU devices failed:\n{out.stderr[-4000:]}")
  return Stats(**json.loads(out.stdout.strip().splitlines()[-1]))


def _placed(config, learner, memory, data, state):
  """Memory, data and stacked task states on the config's mesh, as the run
  places them (unchanged on one device)."""
  from supsup_jax import distributed  # pylint: disable=import-outside-toplevel
  mesh = distributed.mesh_from_config(config)
  if mesh.size == 1:
    return None, memory, data, state
  memory = (learner.place_memory(memory, mesh) if learner.place_memory is not None
            else distributed.place_replicated(memory, mesh))
  return (mesh, memory, distributed.place_replicated(data, mesh),
          distributed.place_tasks(state, mesh))


def _run_chunk_per_task_step(config_overrides: dict, num_steps: int = 100):
  """ms per task-step of the run loop's own jitted chunk (data, step, scan),
  on the devices and mesh the run would use."""
  elsewhere = _on_config_devices("_run_chunk_per_task_step", config_overrides)
  if elsewhere is not None:
    return elsewhere
  from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
  config = _config_2500(config_overrides)
  setup = experiment.build(config)
  learner, parallel = setup.learner, int(config.tasks_in_parallel)
  memory = learner.init_memory()
  states = [learner.init_task(memory, t, experiment.task_key(config.seed, t))
            for t in range(parallel)]
  state = experiment.stack(states) if parallel > 1 else states[0]
  mesh, memory, data, state = _placed(config, learner, memory, setup.stream.device_arrays,
                                      state)
  chunk = experiment.make_chunk_fn(learner, setup.stream, config.batch_size,
                                   parallel=parallel > 1, mesh=mesh)
  ids = jnp.arange(parallel, dtype=jnp.int32) if parallel > 1 else jnp.int32(0)
  holder = [state, 0]

  def call():
    holder[0], mets = chunk(memory, data, holder[0], ids, jnp.int32(holder[1]), num_steps)
    holder[1] += num_steps
    return mets

  jax.block_until_ready(call())  # compile
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append((time.perf_counter() - t0) * 1e3 / (num_steps * parallel))
  return Stats(statistics.median(times), min(times), max(times), 0.0)


@benchmark("gnu2500_chunk_task_step_ms", "ms")
def gnu2500_chunk_task_step_ms():
  """The 2,500-task run's training as the loop runs it (LeNet out 500, 10
  tasks vmapped, PermutedMNIST batches made in the jitted scan): ms per
  task-step, on the devices the run uses (on a CPU: one per core, each
  training its share of the tasks; ``config.cpu_devices``). x 2.5 M
  task-steps = the run's training time."""
  return _run_chunk_per_task_step({})


@benchmark("gnu2500_chunk_task_step_ms_one_device", "ms")
def gnu2500_chunk_task_step_ms_one_device():
  """gnu2500_chunk_task_step_ms on one CPU device whose operations use all
  cores (``cpu_devices=1``, the config's default before)."""
  return _run_chunk_per_task_step({"cpu_devices": 1, "mesh": [["data", -1]]})


@benchmark("gnu2500_chunk_task_step_ms_dense_input", "ms")
def gnu2500_chunk_task_step_ms_dense_input():
  """gnu2500_chunk_task_step_ms with the first layer's plain XLA products
  (``model_options.sparse_input=False``, the config's default before)."""
  return _run_chunk_per_task_step({"model_options": {"sparse_input": False}})


def _eval_ms_per_task(config_overrides: dict):
  """ms per evaluated task of the run's evaluation at 2,500 stored (random)
  masks, on the devices and mesh the run would use, with the memory laid out
  as the run lays it out."""
  elsewhere = _on_config_devices("_eval_ms_per_task", config_overrides)
  if elsewhere is not None:
    return elsewhere
  from supsup_jax.runs import continual as experiment  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import evaluation  # pylint: disable=import-outside-toplevel
  config = _config_2500(config_overrides)
  setup = experiment.build(config)
  learner = setup.learner
  memory = learner.init_memory()
  filled = random_bank(memory["weights"], 2500).state
  memory["bank"] = memory["bank"].replace(
      rows=memory["bank"].rows.at[:2500].set(filled.rows[:2500]), counts=filled.counts,
      num_tasks=filled.num_tasks)
  _, memory, _, _ = _placed(config, learner, memory, {}, {})
  evaluator = evaluation.Evaluator(learner, setup.stream, scenario="GNu",
                                   num_tasks=2500, batch_size=config.batch_size,
                                   max_batches=config.eval_batches_per_task,
                                   inference_examples=config.inference_examples)

  def evaluate(tasks):
    # What Evaluator.evaluate does for a task whose batches all infer it
    # (the run: 99.9 %): one inference call for its batches' first images,
    # then one classification call with its own mask. (Random masks infer
    # wrong tasks, whose batches GNu would not classify.)
    for j in tasks:
      batches = evaluator.batches(j)
      units = jnp.stack([images[:config.inference_examples] for images, _ in batches])
      np.asarray(learner.infer_task(memory, 2500, units))
      evaluator.task_given_accuracy(memory, j)

  evaluate(range(40))  # compile, cache the test batches
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    evaluate(range(40))
    times.append((time.perf_counter() - t0) * 1e3 / 40)
  return Stats(statistics.median(times), min(times), max(times), 0.0)


@benchmark("gnu2500_eval_ms_per_task", "ms")
def gnu2500_eval_ms_per_task():
  """The 2,500-task run's evaluation as the loop runs it, at 2,500 stored
  (random) masks: ms per evaluated task (10 test batches, each inferring its
  task from its first image; 40 tasks per repeat), on the run's devices. The
  evaluation after 2,500 tasks is 2,500 x this."""
  return _eval_ms_per_task({})


@benchmark("gnu2500_eval_ms_per_task_one_device", "ms")
def gnu2500_eval_ms_per_task_one_device():
  """gnu2500_eval_ms_per_task on one CPU device (``cpu_devices=1``)."""
  return _eval_ms_per_task({"cpu_devices": 1, "mesh": [["data", -1]]})


@benchmark("limit_lenet500_step_matmuls_ms", "ms")
def limit_lenet500_step_matmuls_ms():
  """Limit: the plain f32 matmuls of one LeNet (out 500) score step, batch
  128 (forward, weight gradients, input gradients of layers 2-3: 91 M
  multiply-adds), XLA on all cores, nothing else."""
  shapes = [(784, 300), (300, 100), (100, 500)]
  keys = jax.random.split(jax.random.key(0), 8)
  ws = [jax.random.normal(k, s) for k, s in zip(keys, shapes)]
  x = jax.random.normal(keys[4], (128, 784))
  d = [jax.random.normal(k, (128, s[1])) for k, s in zip(keys[5:], shapes)]

  @jax.jit
  def matmuls(ws, x, d):
    h1 = x @ ws[0]
    h2 = h1 @ ws[1]
    out = h2 @ ws[2]
    grads = (x.T @ d[0], h1.T @ d[1], h2.T @ d[2])
    back = (d[2] @ ws[2].T, d[1] @ ws[1].T)
    return out, grads, back

  return lambda: matmuls(ws, x, d)


if __name__ == "__main__":
  # ``python -m benchmarks.bench_gn FN OVERRIDES_JSON``: one measurement in a
  # process whose CPU is split as the config asks (see _on_config_devices).
  _fn = globals()[sys.argv[1]]
  print(json.dumps(dataclasses.asdict(_fn(json.loads(sys.argv[2])))))
