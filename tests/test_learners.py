"""The run loop knows nothing learner-specific: a toy learner defined here
plugs into GG, checkpoints and resumes exactly (after SIGKILL, and after a
planned stop); scenario checks; NNs on real PermutedMNIST."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from launch.configs import gg_permuted_mnist
from launch.configs import nns_permuted_mnist
from supsup_jax.runs import continual as experiment
from supsup_jax import learner as learner_lib
from supsup_jax import methods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = "tests.test_learners:toy_from_config"


def toy_from_config(config, stream):
  """A per-task softmax regression on raw pixels (trains its own weights)."""
  num_tasks, classes = config.num_tasks, stream.num_classes
  dim = int(np.prod(stream.input_shape))
  opt = optax.sgd(config.learning_rate, momentum=0.9)

  def init_memory():
    return {"w": jnp.zeros((num_tasks, dim, classes)), "seen": jnp.zeros((), jnp.int32)}

  def init_task(memory, task_id, key):
    del memory, task_id
    w = 0.01 * jax.random.normal(key, (dim, classes))
    return {"w": w, "opt": opt.init(w)}

  def train_step(memory, state, images, labels):
    del memory
    def loss_fn(w):
      logits = images.reshape(images.shape[0], -1) @ w
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
    (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(state["w"])
    updates, opt_state = opt.update(g, state["opt"])
    return ({"w": optax.apply_updates(state["w"], updates), "opt": opt_state},
            {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)})

  def end_task(memory, state, task_id):
    return {"w": memory["w"].at[task_id].set(state["w"]), "seen": memory["seen"] + 1}

  def logits(memory, task_id, images):
    return images.reshape(images.shape[0], -1) @ memory["w"][task_id]

  return learner_lib.Learner(
      name="toy", num_classes=classes, init_memory=init_memory, init_task=init_task,
      train_step=train_step, end_task=end_task, logits=logits, trains_weights=True,
      summary=lambda memory, n: {"bytes_per_task": dim * classes * 4})


def _toy_config(num_tasks=3, iterations=120):
  c = gg_permuted_mnist.get_config()
  c.method = TOY
  c.num_tasks = num_tasks
  c.iterations_per_task = iterations
  c.learning_rate = 0.01
  c.eval_after_tasks = (1, 2, 3)
  c.eval_batches_per_task = 10
  c.log_every_steps = 20
  c.checkpoint_every_steps = 40
  return c


class ToyLearnerTest(absltest.TestCase):

  def test_sigkill_mid_task_then_resume_is_exact(self):
    config_path = os.path.join(REPO, "launch", "configs", "gg_permuted_mnist.py")
    overrides = [f"--config.method={TOY}", "--config.num_tasks=3",
                 "--config.iterations_per_task=120", "--config.learning_rate=0.01",
                 "--config.eval_after_tasks=(1,2,3)", "--config.eval_batches_per_task=10",
                 "--config.log_every_steps=20", "--config.checkpoint_every_steps=40"]
    killed = self.create_tempdir().full_path
    cmd = [sys.executable, "-m", "launch.main", f"--config={config_path}",
           f"--workdir={killed}", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:
      if "task 2/3 step 60/120" in line:  # after the checkpoint at step 40
        break
      self.assertLess(time.time(), deadline, "run did not reach task 2")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    self.assertFalse(os.path.exists(os.path.join(killed, "results.json")))
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    self.assertEqual(resumed.returncode, 0, resumed.stdout[-3000:] + resumed.stderr[-3000:])
    self.assertIn("Resuming", resumed.stdout + resumed.stderr)
    with open(os.path.join(killed, "results.json")) as f:
      after_kill = json.load(f)
    clean = experiment.run(_toy_config(), self.create_tempdir().full_path)
    self.assertEqual(after_kill["accuracy_matrix"], clean["accuracy_matrix"])
    self.assertEqual(clean["method"], "toy")
    self.assertTrue(clean["trains_weights"])
    self.assertGreater(clean["avg_accuracy"], 0.8)  # linear model on MNIST

  def test_learner_without_infer_task_refused_in_gn_and_nn(self):
    c = _toy_config()
    for scenario in ("GNu", "GNs", "NNs"):
      c.scenario = scenario
      with self.assertRaisesRegex(ValueError, f"learner 'toy' cannot serve scenario "
                                  f"{scenario}: it lacks infer_task"):
        experiment.run(c, self.create_tempdir().full_path)

  def test_unknown_method_lists_the_registered_ones(self):
    c = _toy_config()
    c.method = "nope"
    with self.assertRaisesRegex(ValueError, "config.method 'nope' unknown; allowed: .*supsup"):
      experiment.run(c, self.create_tempdir().full_path)


class PlannedStopTest(parameterized.TestCase):
  """Every registered learner resumes exactly after stopping mid-task."""

  @parameterized.parameters(*sorted(methods.METHODS))
  def test_method_resumes_exactly(self, method):
    config = gg_permuted_mnist.get_config()
    config.method = method
    config.num_tasks = 2
    config.iterations_per_task = 20
    config.eval_after_tasks = (1, 2)
    config.eval_batches_per_task = 2
    config.log_every_steps = 10
    workdir = self.create_tempdir().full_path
    stopped = config.copy_and_resolve_references()
    stopped.stop_after_steps = 30  # mid-task 2 (20 steps per task)
    first = experiment.run(stopped, workdir)
    self.assertFalse(first["complete"])
    self.assertFalse(os.path.exists(os.path.join(workdir, "results.json")))
    resumed = experiment.run(config, workdir)
    clean = experiment.run(config, self.create_tempdir().full_path)
    self.assertEqual(resumed["accuracy_matrix"], clean["accuracy_matrix"])
    self.assertEqual(resumed["accuracy_just_trained"], clean["accuracy_just_trained"])


def _nns_config(num_tasks, iterations=300):
  c = nns_permuted_mnist.get_config()
  c.num_tasks = num_tasks
  c.iterations_per_task = iterations
  c.nns.max_masks = 16
  c.eval_after_tasks = ()
  c.eval_batches_per_task = 5
  c.log_every_steps = 100
  return c


class RepeatedTaskStream:
  """PermutedMNIST whose every task is task 0 (new steps of the same data)."""

  def __init__(self, stream, iterations_per_task):
    self._s, self._its = stream, iterations_per_task
    self.name, self.num_tasks = stream.name, stream.num_tasks
    self.num_classes, self.input_shape = stream.num_classes, stream.input_shape

  @property
  def device_arrays(self):
    return self._s.device_arrays

  def train_batch_fn_args(self, batch_size):
    fn, arrays = self._s.train_batch_fn_args(batch_size)
    return (lambda arrs, task, step: fn(arrs, 0, task * self._its + step)), arrays

  def train_size(self, task_id):
    return self._s.train_size(0)

  def test_batches(self, task_id, batch_size):
    return self._s.test_batches(0, batch_size)


class NNsTest(absltest.TestCase):

  def test_five_tasks_give_five_pure_masks(self):
    results = experiment.run(_nns_config(5), self.create_tempdir().full_path)
    self.assertEqual(results["masks_allocated"], 5)
    self.assertEqual(results["mask_trained_on_task"], [0, 1, 2, 3, 4])
    self.assertEqual(results["mask_task_purity"], [1.0] * 5)
    self.assertGreaterEqual(results["task_inference_accuracy"], 0.9)
    self.assertGreater(results["avg_accuracy"], 0.85)

  def test_repeated_task_allocates_one_mask(self):
    c = _nns_config(3)
    setup = experiment.build(c)
    setup = dataclasses.replace(setup, stream=RepeatedTaskStream(setup.stream, 300))
    results = experiment.run(c, self.create_tempdir().full_path, setup=setup)
    self.assertEqual(results["masks_allocated"], 1)

  def test_bad_nns_settings(self):
    for key, value in (("max_masks", 0), ("check_every", 0)):
      c = _nns_config(2)
      c.nns[key] = value
      with self.assertRaisesRegex(ValueError, f"config.nns.{key} must be an int >= 1, got 0"):
        experiment.run(c, self.create_tempdir().full_path)


if __name__ == "__main__":
  absltest.main()
