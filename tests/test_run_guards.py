"""Guards of the run loop against silent failure: a damaged latest checkpoint
resumes from the previous one to the same numbers, a second process on a
workdir is refused, results.json comes last, bad inference inputs and
configs are refused before anything is trained."""
import os
import shutil
import subprocess
import sys
import time

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from launch.configs import gg_permuted_mnist
from launch.configs import gnu_permuted_mnist_lenet
from supsup_jax import bank as bank_lib
from supsup_jax.runs import continual as experiment
from supsup_jax import inference
from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import weights as weights_lib
from supsup_jax.masked_model import MaskedModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = gg_permuted_mnist.get_config()
  c.num_tasks, c.iterations_per_task = 2, 40
  c.checkpoint_every_steps, c.log_every_steps = 20, 20
  c.eval_after_tasks, c.eval_batches_per_task = (1, 2), 4
  return c


def _flip_a_bit_of_the_biggest_array_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs
           if f"{os.sep}d{os.sep}" in os.path.join(d, f)]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(path, "wb").write(bytes(data))


class RunGuardsTest(absltest.TestCase):

  def test_damaged_latest_checkpoint_resumes_from_previous_to_same_numbers(self):
    workdir = self.create_tempdir().full_path
    stopped = _config()
    stopped.stop_after_steps = 60  # checkpoints: end of task 1, task 2 step 20
    self.assertFalse(experiment.run(stopped, workdir)["complete"])
    ckdir = os.path.join(workdir, "checkpoints")
    latest = max(int(s) for s in os.listdir(ckdir) if s.isdigit())
    _flip_a_bit_of_the_biggest_array_file(os.path.join(ckdir, str(latest)))
    resumed = experiment.run(_config(), workdir)
    self.assertTrue(os.listdir(os.path.join(workdir, "checkpoints_damaged")))
    clean = experiment.run(_config(), self.create_tempdir().full_path)
    self.assertEqual(resumed["accuracy_matrix"], clean["accuracy_matrix"])
    # results.json is written last: a run with one is complete.
    outputs = [f for f in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, f))]
    newest = max(outputs, key=lambda f: os.stat(os.path.join(workdir, f)).st_mtime_ns)
    self.assertEqual(newest, "results.json")

  def test_checkpoint_every_minutes_saves_at_evaluations_and_end_and_resumes_exactly(self):
    c = _config()
    c.num_tasks, c.iterations_per_task, c.checkpoint_every_steps = 4, 20, 0
    c.eval_after_tasks, c.checkpoint_every_minutes = (2, 4), 1e6
    workdir = self.create_tempdir().full_path
    full = experiment.run(c, workdir)
    ckdir = os.path.join(workdir, "checkpoints")
    # Only the evaluation after task 2 and the end saved (not tasks 1 and 3).
    self.assertEqual(sorted(int(s) for s in os.listdir(ckdir) if s.isdigit()),
                     [2 * 21, 4 * 21])
    # A crash after task 3 (unsaved): the run redoes tasks 3-4 from task 2's
    # checkpoint to the same numbers.
    shutil.rmtree(os.path.join(ckdir, str(4 * 21)))
    os.remove(os.path.join(workdir, "results.json"))
    resumed = experiment.run(c, workdir)
    self.assertEqual(resumed["accuracy_matrix"], full["accuracy_matrix"])

  def test_negative_checkpoint_every_minutes_is_refused_in_one_line(self):
    c = _config()
    c.checkpoint_every_minutes = -1.0
    with self.assertRaisesRegex(ValueError, r"config.checkpoint_every_minutes must be "
                                            r"a finite number >= 0, got -1.0"):
      experiment.run(c, self.create_tempdir().full_path)

  def test_second_launcher_on_a_busy_workdir_is_refused(self):
    workdir = self.create_tempdir().full_path
    config = os.path.join(REPO, "launch", "configs", "gg_permuted_mnist.py")
    cmd = [sys.executable, "-m", "launch.main", f"--config={config}",
           f"--workdir={workdir}", "--config.num_tasks=2",
           "--config.iterations_per_task=100000", "--config.log_every_steps=50"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
      deadline = time.time() + 300
      for line in first.stdout:
        if "task 1/2 step" in line:
          break
        self.assertLess(time.time(), deadline, "first run did not start training")
      second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
      first.kill()
      first.wait()
    out = (second.stdout + second.stderr).strip()
    self.assertNotEqual(second.returncode, 0)
    self.assertNotIn("Traceback", out)
    self.assertIn(f"is in use by pid {first.pid}", out.splitlines()[-1])

  def test_inference_refuses_empty_or_non_finite_images(self):
    model = models.LeNet300100(10)
    weights = weights_lib.init_weights(model, 0, np.zeros((1, 28, 28, 1), np.float32))
    masked = MaskedModel(model, masks_lib.MaskSpec("threshold"), 10)
    bank = bank_lib.MaskBank(weights)
    bank.add(masks_lib.masks_from_scores(
        masks_lib.init_scores(weights, jax.random.key(0)), "threshold"))
    x = jnp.zeros((4, 28, 28, 1))
    with self.assertRaisesRegex(ValueError, "non-finite images"):
      inference.alpha_grad(masked, weights, bank, x.at[0, 0, 0, 0].set(jnp.nan))
    with self.assertRaisesRegex(ValueError, "at least one image"):
      inference.alpha_grad(masked, weights, bank, x[:0])
    with self.assertRaisesRegex(ValueError, "at least one mask"):
      inference.alpha_grad(masked, weights, bank_lib.MaskBank(weights), x)

  def test_objective_g_without_superfluous_neurons_refused_before_training(self):
    c = gnu_permuted_mnist_lenet.get_config()
    c.num_outputs, c.inference_objective = 0, "g"
    start = time.time()
    with self.assertRaisesRegex(ValueError, "objective 'g' needs superfluous neurons"):
      experiment.run(c, self.create_tempdir().full_path)
    self.assertLess(time.time() - start, 30)  # refused before any training


if __name__ == "__main__":
  absltest.main()
