"""Nothing lost, nothing silent: run identity, signals, unverified or unwritable
checkpoints, intermediate evaluations of parallel groups, launcher errors."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from launch.configs import gg_permuted_mnist
from launch.configs import gns_split_mnist
from launch.configs import gnu_permuted_mnist_lenet
from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import workdir as workdir_lib
from supsup_jax.runs import continual
from supsup_jax.runs import scaffold

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_gg():
  c = gg_permuted_mnist.get_config()
  c.num_tasks, c.iterations_per_task = 2, 40
  c.log_every_steps, c.eval_batches_per_task = 10, 2
  return c


def _launch(module, *args):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _errors(stderr: str) -> list:
  return [l for l in stderr.splitlines() if l.startswith("error: ")]


# ----------------------------------------------------------------- identity
def test_a_workdir_of_another_run_kind_is_refused_and_kept(tmp_path):
  kept = {"runner": "uncertainty", "experiment": "uncertainty_mnist", "accuracy": 0.97,
          "config": {"seed": 1}}
  (tmp_path / "results.json").write_text(json.dumps(kept))
  (tmp_path / "run.json").write_text(json.dumps(
      {"runner": "uncertainty", "experiment": "uncertainty_mnist",
       "config_fingerprint": ckpt_lib.config_fingerprint({"seed": 1}), "config": {"seed": 1}}))
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="holds a 'uncertainty' run"):
    continual.run(_tiny_gg(), str(tmp_path))
  assert json.loads((tmp_path / "results.json").read_text()) == kept
  assert not (tmp_path / "checkpoints").exists()


def test_results_of_an_unidentified_run_are_refused(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps({"avg_accuracy": 0.5}))
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="unidentified run"):
    scaffold.claim(str(tmp_path), "continual", {"seed": 0})


def test_another_config_names_the_nested_keys_that_differ(tmp_path):
  with scaffold.open_run(str(tmp_path), {"seed": 0, "packnet": {"prune_at": 0.7}},
                         kind="continual") as run:
    run.restore()
  with pytest.raises(ckpt_lib.ConfigMismatchError, match=r"differs in: packnet\.prune_at"):
    with scaffold.open_run(str(tmp_path), {"seed": 0, "packnet": {"prune_at": 0.5}},
                           kind="continual"):
      pass


# ------------------------------------------------------------ checkpoints
def _save_two_steps(workdir):
  c = ckpt_lib.RunCheckpointer(str(workdir), {"seed": 0})
  for step in (1, 2):
    c.save(step, {"w": np.full((64,), step, np.float32)}, {"next_task": step})
  c.close()
  return workdir / "checkpoints"


def test_a_step_without_digests_is_not_trusted_over_a_verified_one(tmp_path, caplog):
  ckdir = _save_two_steps(tmp_path)
  (ckdir / "2" / "supsup_sha256.json").unlink()  # a save interrupted after orbax's commit
  c = ckpt_lib.RunCheckpointer(str(tmp_path), {"seed": 0})
  with caplog.at_level(logging.WARNING, logger="supsup_jax.checkpoint"):
    state, meta = c.restore()
  c.close()
  assert meta["next_task"] == 1 and float(np.asarray(state["w"])[0]) == 1.0
  assert "no digests" in caplog.text and not (ckdir / "2").exists()


def test_a_failed_save_is_one_line_naming_where_to_resume(tmp_path, monkeypatch):
  c = ckpt_lib.RunCheckpointer(str(tmp_path), {"seed": 0})
  c.save(1, {"w": np.zeros(4, np.float32)}, {})

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(c._manager, "save", full_disk)  # pylint: disable=protected-access
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    c.save(2, {"w": np.ones(4, np.float32)}, {})
  c.close()
  msg = str(e.value)
  assert "\n" not in msg and "No space left on device" in msg and "from step 1" in msg


# ---------------------------------------------------------------- signals
def test_sigterm_saves_at_a_step_boundary_and_the_same_command_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  args = ["--config=launch/configs/gg_permuted_mnist.py", f"--workdir={workdir}",
          "--config.num_tasks=2", "--config.iterations_per_task=40",
          "--config.log_every_steps=10", "--config.eval_batches_per_task=2"]
  proc = _launch("launch.main", *args)
  deadline = time.time() + 240
  for line in proc.stdout:  # wait until training runs (a progress line)
    if "step 10/40" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 130, err
  assert "Traceback" not in err
  [line] = _errors(err)
  assert "stopped by SIGTERM after saving a checkpoint at task" in line
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  done = subprocess.run([sys.executable, "-m", "launch.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    resumed = json.load(f)
  clean = continual.run(_tiny_gg(), str(tmp_path / "clean"))
  assert resumed["accuracy_matrix"] == clean["accuracy_matrix"]
  # The finished run again: its results, nothing recomputed or rewritten.
  mtime = os.stat(os.path.join(workdir, "results.json")).st_mtime_ns
  assert continual.run(_tiny_gg(), workdir)["accuracy_matrix"] == clean["accuracy_matrix"]
  assert os.stat(os.path.join(workdir, "results.json")).st_mtime_ns == mtime


# ------------------------------------------------------------ evaluation
def test_an_evaluation_inside_a_parallel_group_sees_only_the_tasks_learned(tmp_path):
  def config(parallel):
    c = gns_split_mnist.get_config()
    c.num_tasks, c.iterations_per_task, c.tasks_in_parallel = 3, 20, parallel
    c.eval_after_tasks, c.eval_batches_per_task = (2,), 2
    return c
  grouped = continual.run(config(3), str(tmp_path / "grouped"))
  sequential = continual.run(config(1), str(tmp_path / "sequential"))
  assert grouped["eval_after_tasks"] == [2, 3]
  # After 2 tasks only masks 1-2 exist: inference must not pick task 3's.
  assert grouped["task_inference_matrix"][0] == sequential["task_inference_matrix"][0]
  np.testing.assert_allclose(np.asarray(grouped["accuracy_matrix"][0][:2], float),
                             np.asarray(sequential["accuracy_matrix"][0][:2], float),
                             atol=0.02)


def test_objective_g_without_superfluous_neurons_is_refused_before_training(tmp_path):
  c = gnu_permuted_mnist_lenet.get_config()
  c.num_tasks, c.inference_objective, c.num_outputs = 2, "g", 10
  with pytest.raises(ValueError, match="objective 'g' needs superfluous neurons"):
    continual.run(c, str(tmp_path))
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


# --------------------------------------------------------------- compare
@pytest.mark.parametrize("args,fragment", [
    (["--config=launch/configs/nope.py", "--methods=supsup"], "config file"),
    (["--config=launch/configs/gg_permuted_mnist.py", "--methods=supsup",
      "--config.num_taks=2"], "unknown config key"),
    (["--config=launch/configs/gg_permuted_mnist.py", "--methods=nope"], "unknown method"),
])
def test_compare_bad_input_is_one_line_exit_2(tmp_path, args, fragment):
  out = subprocess.run([sys.executable, "-m", "launch.compare", *args,
                        f"--workdir={tmp_path}"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr
  [line] = _errors(out.stderr)
  assert fragment in line


def test_compare_on_a_busy_workdir_is_one_line(tmp_path):
  lock = workdir_lib.acquire(tmp_path)
  try:
    out = subprocess.run([sys.executable, "-m", "launch.compare",
                          "--config=launch/configs/gg_permuted_mnist.py",
                          "--methods=supsup", f"--workdir={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
  finally:
    workdir_lib.release(lock)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  [line] = _errors(out.stderr)
  assert "is in use by pid" in line


# ---------------------------------------------------------- learner factory
def returns_a_dict(config, stream):
  del config, stream
  return {}


@pytest.mark.parametrize("method,fragment", [
    ("os:getcwd", "os:getcwd does not take (config, stream)"),
    ("tests.test_nothing_lost:returns_a_dict", "returned dict, not a Learner"),
])
def test_a_callable_that_is_not_a_learner_factory_is_one_line(method, fragment):
  from supsup_jax import methods  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError) as e:
    methods.make_learner(method, _tiny_gg(), stream=None)
  assert fragment in str(e.value) and "function(config, stream) -> " in str(e.value)
  assert "\n" not in str(e.value)
