"""End-to-end runs on the real MNIST in $SUPSUP_DATA_DIR: accuracy floors,
task-parallel training, per-task batch norm, resume after SIGKILL."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from launch.configs import gg_permuted_mnist
from launch.configs import gg_split_mnist
from launch.configs import gnu_permuted_mnist_lenet
from launch.configs import gns_split_mnist
from supsup_jax.runs import evaluation
from supsup_jax.runs import continual as experiment
from supsup_jax import checkpoint
from supsup_jax import state_io
from supsup_jax.checkpoint import ConfigMismatchError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _permuted_config(num_tasks=3, iterations=150):
  c = gg_permuted_mnist.get_config()
  c.num_tasks = num_tasks
  c.iterations_per_task = iterations
  c.eval_after_tasks = ()
  c.log_every_steps = 50
  return c


class GGRunTest(absltest.TestCase):

  def test_split_mnist_accuracy_floor_and_outputs(self):
    c = gg_split_mnist.get_config()
    c.iterations_per_task = 200
    workdir = self.create_tempdir().full_path
    results = experiment.run(c, workdir)
    self.assertGreaterEqual(results["avg_accuracy"], 0.98)
    for name in ("results.json", "accuracy.csv", "accuracy.png"):
      self.assertTrue(os.path.getsize(os.path.join(workdir, name)) > 0, name)
    with open(os.path.join(workdir, "results.json")) as f:
      saved = json.load(f)
    for key in ("experiment", "scenario", "num_tasks", "avg_accuracy",
                "accuracy_matrix", "bytes_per_task", "wall_time_s", "config"):
      self.assertIn(key, saved)
    self.assertEqual(saved["eval_after_tasks"], [1, 2, 3, 4, 5])
    matrix = saved["accuracy_matrix"]
    # Masks are stored exactly: a task's accuracy never changes later.
    for i, row in enumerate(matrix):
      for j in range(i + 1):
        self.assertEqual(row[j], matrix[j][j])
      self.assertTrue(all(v is None for v in row[i + 1:]))
    self.assertEqual(saved["bytes_per_task"], (784 * 300 + 300 * 100 + 100 * 2 + 7) // 8)
    self.assertAlmostEqual(saved["forgetting"], 0.0)

  def test_workdir_of_other_config_refused(self):
    c = _permuted_config(num_tasks=1, iterations=20)
    workdir = self.create_tempdir().full_path
    experiment.run(c, workdir)
    c.learning_rate = 1e-3
    with self.assertRaisesRegex(ConfigMismatchError, "differs in: learning_rate"):
      experiment.run(c, workdir)

  def test_bad_config_values(self):
    c = _permuted_config()
    c.scenario = "XX"
    with self.assertRaisesRegex(ValueError, "scenario 'XX' unknown"):
      experiment.run(c, self.create_tempdir().full_path)
    c = _permuted_config()
    c.sparsity = 2.0
    c.mask_kind = "topk"
    with self.assertRaisesRegex(ValueError, r"k must be in \(0, 1\]"):
      experiment.run(c, self.create_tempdir().full_path)


class TransferTest(absltest.TestCase):

  def test_transfer_starts_from_mean_of_earlier_scores(self):
    c = _permuted_config(num_tasks=3, iterations=30)
    c.supsup.transfer = True
    c.supsup.keep_scores = True
    workdir = self.create_tempdir().full_path
    experiment.run(c, workdir)
    setup = experiment.build(c)
    template = setup.learner.init_memory()
    tree, _ = checkpoint.RunCheckpointer(workdir, c.to_dict()).restore()
    kept = np.asarray(state_io.from_saveable(tree["memory"], template)
                      ["kept_scores"]["Dense_0"]["kernel"])
    # Task 2's scores moved at most 30 RMSprop steps (<= ~10 * lr each) away
    # from the mean of tasks 0 and 1, far closer than a fresh random init.
    mean01 = (kept[0] + kept[1]) / 2
    fresh = setup.learner.init_task(template, 2, experiment.task_key(c.seed, 2)).scores
    dist_transfer = np.abs(kept[2] - mean01).mean()
    dist_fresh = np.abs(np.asarray(fresh["Dense_0"]["kernel"]) - mean01).mean()
    self.assertLess(dist_transfer, 0.2 * dist_fresh)


class TaskParallelTest(absltest.TestCase):

  def test_vmap_training_matches_sequential(self):
    c = _permuted_config(num_tasks=3, iterations=30)
    setup = experiment.build(c)
    learner = setup.learner
    memory = learner.init_memory()
    data = setup.stream.device_arrays
    states = [learner.init_task(memory, t, experiment.task_key(c.seed, t))
              for t in range(3)]
    single = experiment.make_chunk_fn(learner, setup.stream, c.batch_size, parallel=False)
    multi = experiment.make_chunk_fn(learner, setup.stream, c.batch_size, parallel=True)
    stacked, _ = multi(memory, data, experiment.stack(states),
                       jnp.arange(3, dtype=jnp.int32), jnp.int32(0), 30)
    for t in range(3):
      one, _ = single(memory, data, states[t], jnp.int32(t), jnp.int32(0), 30)
      par = experiment.unstack(stacked, t)
      for a, b in zip(jax.tree.leaves(one.scores), jax.tree.leaves(par.scores)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
      # The mask bits the learner stores.
      mask_of = lambda s: np.unpackbits(np.asarray(
          learner.end_task(memory, s, 0)["bank"].rows[0]))
      for a, b in [(mask_of(one), mask_of(par))]:
        # Identical up to scores within float rounding of zero.
        self.assertLess(float(jnp.mean(a != b)), 1e-4)

  def test_parallel_run_same_accuracy(self):
    c = _permuted_config(num_tasks=2, iterations=60)
    seq = experiment.run(c, self.create_tempdir().full_path)
    c.tasks_in_parallel = 2
    par = experiment.run(c, self.create_tempdir().full_path)
    np.testing.assert_allclose(par["accuracy_matrix"][-1], seq["accuracy_matrix"][-1],
                               atol=2e-3)


class GNuRunTest(absltest.TestCase):

  def test_task_inference_on_permuted_mnist(self):
    c = gnu_permuted_mnist_lenet.get_config()
    c.num_tasks = 4
    c.iterations_per_task = 300
    c.eval_after_tasks = (2,)
    c.eval_batches_per_task = 20
    results = experiment.run(c, self.create_tempdir().full_path)
    self.assertGreaterEqual(results["task_inference_accuracy"], 0.95)
    self.assertGreaterEqual(results["avg_accuracy"], 0.85)
    self.assertEqual(results["eval_after_tasks"], [2, 4])
    self.assertLen(results["task_inference_matrix"], 2)

  def test_per_example_inference_and_objective_comparison(self):
    c = gnu_permuted_mnist_lenet.get_config()
    c.num_tasks = 3
    c.iterations_per_task = 200
    c.eval_after_tasks = ()
    c.eval_batches_per_task = 2
    c.per_example_inference = True
    c.inference_objective = "g"
    c.compare_objectives = ("entropy",)
    results = experiment.run(c, self.create_tempdir().full_path)
    # One image per inference: weaker than a batch, far above chance (1/3).
    self.assertGreater(results["task_inference_accuracy"], 0.8)
    other = results["task_inference_accuracy_other_objectives"][-1]["entropy"]
    self.assertGreater(other, 0.8)

  def test_gns_scores_wrongly_inferred_batches_as_they_fall(self):
    """A batch inferred as the wrong task: GNs classifies it with that task's
    mask, GNu counts it as all wrong."""
    c = gns_split_mnist.get_config()
    c.num_tasks = 2
    setup = experiment.build(c)
    learner = setup.learner
    memory = learner.init_memory()
    state = learner.init_task(memory, 0, jax.random.key(0))
    chunk = experiment.make_chunk_fn(learner, setup.stream, c.batch_size, parallel=False)
    state, _ = chunk(memory, setup.stream.device_arrays, state, jnp.int32(0),
                     jnp.int32(0), 150)
    memory = learner.end_task(memory, state, 0)
    memory = learner.end_task(memory, state, 1)  # task 1 holds the same mask
    accuracy = {}
    for scenario in ("GNs", "GNu"):
      always_one = dataclasses.replace(
          learner, infer_task=lambda memory, n, units: np.ones(len(units), int))
      evaluator = evaluation.Evaluator(always_one, setup.stream, scenario=scenario,
                                       num_tasks=2, batch_size=128, max_batches=3)
      ev = evaluator.evaluate(memory, [0], 2)
      accuracy[scenario], inference_accuracy = ev.row[0], ev.inference_row[0]
      self.assertEqual(inference_accuracy, 0.0)
      # Past the cache budget the batches are made again: same result.
      uncached = evaluation.Evaluator(always_one, setup.stream, scenario=scenario,
                                      num_tasks=2, batch_size=128, max_batches=3,
                                      cache_bytes=0)
      self.assertEqual(uncached.evaluate(memory, [0], 2).row[0], accuracy[scenario])
      self.assertEqual((len(evaluator._cache), len(uncached._cache)), (1, 0))
    self.assertGreater(accuracy["GNs"], 0.95)
    self.assertEqual(accuracy["GNu"], 0.0)
    # Batches are classified stacked (one call per shape): the same counts as
    # one call per batch, a short last batch included.
    whole = evaluation.Evaluator(learner, setup.stream, scenario="GG", num_tasks=2,
                                 batch_size=300)
    batches = whole.batches(1)
    self.assertGreater(len({b[0].shape for b in batches}), 1)
    per_batch = [whole._correct(memory, 0, x, y) for x, y in batches]
    np.testing.assert_array_equal(whole._correct_per_batch(memory, 0, batches), per_batch)
    self.assertEqual(whole.task_given_accuracy(memory, 1, slot=0),
                     sum(per_batch) / sum(len(y) for _, y in batches))


class ResumeTest(absltest.TestCase):

  def test_sigkill_mid_task_then_resume_gives_same_matrix(self):
    overrides = ["--config.num_tasks=3", "--config.iterations_per_task=400",
                 "--config.checkpoint_every_steps=100", "--config.log_every_steps=50",
                 "--config.eval_after_tasks=(1,2,3)"]
    config_path = os.path.join(REPO, "launch", "configs", "gg_permuted_mnist.py")
    killed_dir = self.create_tempdir().full_path
    cmd = [sys.executable, "-m", "launch.main", f"--config={config_path}",
           f"--workdir={killed_dir}", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # Kill it in the middle of task 2 (after its first mid-task checkpoint).
    deadline = time.time() + 300
    for line in proc.stdout:
      if "task 2/3 step 150/400" in line or "task 2/3 step 200/400" in line:
        break
      self.assertLess(time.time(), deadline, "run did not reach task 2")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    self.assertFalse(os.path.exists(os.path.join(killed_dir, "results.json")))
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    self.assertEqual(resumed.returncode, 0, resumed.stdout[-3000:] + resumed.stderr[-3000:])
    self.assertIn("Resuming", resumed.stdout + resumed.stderr)
    with open(os.path.join(killed_dir, "results.json")) as f:
      after_kill = json.load(f)

    c = _permuted_config(num_tasks=3, iterations=400)
    c.checkpoint_every_steps = 100
    c.log_every_steps = 50
    c.eval_after_tasks = (1, 2, 3)
    clean = experiment.run(c, self.create_tempdir().full_path)
    self.assertEqual(after_kill["accuracy_matrix"], clean["accuracy_matrix"])
    self.assertGreater(clean["avg_accuracy"], 0.85)


if __name__ == "__main__":
  absltest.main()
