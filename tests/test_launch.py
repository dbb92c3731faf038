"""The absl launcher: every config loads; bad values give one clear line."""
import glob
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
from ml_collections import config_flags

from supsup_jax.runs import continual as experiment
from supsup_jax import runs as runners

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "launch", "configs", "*.py"))
                 if not os.path.basename(p).startswith(("_", "common")))


def _launch(*args):
  return subprocess.run([sys.executable, "-m", "launch.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


class ConfigsTest(parameterized.TestCase):

  @parameterized.parameters(*CONFIGS)
  def test_config_is_valid(self, path):
    config = config_flags.config_flags._LoadConfigModule("c", path).get_config()
    runner = config.get("runner", "continual")
    runners.get_runner(runner)  # registered and importable
    if runner == "continual":  # the other runners check their own keys
      experiment._validate(config)
      for key in ("num_tasks", "seed", "iterations_per_task", "epochs_per_task"):
        self.assertIn(key, config)
    doc = open(path).read()
    self.assertIn("python -m launch.main --config=launch/configs/", doc)
    self.assertEqual(config.experiment, os.path.basename(path)[:-3])

  def test_all_paper_experiments_have_configs(self):
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    self.assertContainsSubset(
        {"gg_split_mnist", "gg_permuted_mnist", "gg_split_fashion_mnist",
         "gg_split_cifar10", "gg_split_cifar100", "gg_split_imagenet",
         "gnu_permuted_mnist_lenet", "gnu_permuted_mnist_fc",
         "gnu_permuted_mnist_2500", "gnu_rotated_mnist", "gns_split_mnist"}, names)


class LauncherErrorsTest(absltest.TestCase):

  def test_bad_value_is_one_line_error(self):
    workdir = self.create_tempdir().full_path
    result = _launch("--config=launch/configs/gg_split_mnist.py", f"--workdir={workdir}",
                     "--config.mask_kind=random")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("error: unknown mask kind 'random'; allowed: topk, threshold",
                  result.stderr)
    self.assertNotIn("Traceback", result.stderr)

  def test_unknown_key_and_missing_workdir(self):
    result = _launch("--config=launch/configs/gg_split_mnist.py", "--workdir=/tmp/x",
                     "--config.not_a_key=3")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("not_a_key", result.stderr)
    result = _launch("--config=launch/configs/gg_split_mnist.py")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("--workdir", result.stderr)

  def test_missing_data_dir_message(self):
    workdir = self.create_tempdir().full_path
    missing = os.path.join(workdir, "no_data_here")
    result = _launch("--config=launch/configs/gg_split_mnist.py", f"--workdir={workdir}",
                     f"--config.data_dir={missing}")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn(missing, result.stderr)
    self.assertNotIn("Traceback", result.stderr)

  def test_bad_cpu_devices_is_one_line_error(self):
    result = _launch("--config=launch/configs/gnu_permuted_mnist_2500.py",
                     f"--workdir={self.create_tempdir().full_path}",
                     "--config.cpu_devices=-1")
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    self.assertIn("error: config.cpu_devices=-1 must be an int >= 1, or 0 for one device "
                  "per core", result.stderr)
    self.assertNotIn("Traceback", result.stderr)


class SplitCpuTest(absltest.TestCase):

  def test_split_cpu_run_equals_one_device_run(self):
    """The 2,500-task config's CPU split (two devices, a "tasks" mesh, each
    device training its own task): the same accuracy matrix, bit for bit, as
    one device running both tasks."""
    import json  # pylint: disable=import-outside-toplevel
    data = os.environ.get("SUPSUP_DATA_DIR", "")
    if not os.path.isdir(os.path.join(data, "mnist")):
      self.skipTest(f"MNIST not found under SUPSUP_DATA_DIR={data!r}")
    common = ["--config=launch/configs/gnu_permuted_mnist_2500.py", "--config.num_tasks=2",
              "--config.tasks_in_parallel=2", "--config.iterations_per_task=40",
              "--config.eval_batches_per_task=2"]
    results = {}
    for name, extra in (("split", ["--config.cpu_devices=2"]),
                        ("one", ["--config.cpu_devices=1", "--config.mesh=[('data', -1)]"])):
      workdir = self.create_tempdir().full_path
      out = _launch(*common, f"--workdir={workdir}", *extra)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      with open(os.path.join(workdir, "results.json")) as f:
        results[name] = json.load(f)
    self.assertEqual(results["split"]["device_count"], 2)
    self.assertEqual(results["split"]["mesh"]["axes"], [["tasks", 2]])
    self.assertEqual(results["one"]["device_count"], 1)
    self.assertEqual(results["split"]["accuracy_matrix"], results["one"]["accuracy_matrix"])
    self.assertGreater(min(results["one"]["accuracy_matrix"][-1]), 0.2)  # chance: 0.1


if __name__ == "__main__":
  absltest.main()


class LayersTest(absltest.TestCase):
  """Imports flow one way: launch -> supsup_jax.runs -> the library floors."""

  def test_library_floors_import_neither_runs_nor_launch(self):
    import ast  # pylint: disable=import-outside-toplevel
    pkg = os.path.join(REPO, "supsup_jax")
    offenders = []
    for dirpath, _, files in os.walk(pkg):
      for f in files:
        if not f.endswith(".py"):
          continue
        path = os.path.join(dirpath, f)
        in_runs = os.path.relpath(path, pkg).startswith("runs" + os.sep)
        for node in ast.walk(ast.parse(open(path).read())):
          names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                   if isinstance(node, ast.ImportFrom) else [])
          for name in names:
            if name.split(".")[0] == "launch" or (
                not in_runs and name.startswith("supsup_jax.runs")):
              offenders.append(f"{os.path.relpath(path, REPO)}: {name}")
    self.assertEqual(offenders, [])
