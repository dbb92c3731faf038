"""The HopSupSup runner on the run scaffold: exact resume after SIGKILL and a
stop, one run per workdir, every key checked, a diverging run stopped."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from supsup_jax import workdir as workdir_lib
from supsup_jax.checkpoint import ConfigMismatchError
from supsup_jax.runs import hopsupsup as hop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "launch/configs/hopsupsup_split_mnist.py"
# The smallest run that shows the properties: 2 tasks of 8 steps on a 64-64
# net, chunks of 4 steps, recovery on 3 test batches.
TINY = {"num_tasks": 2, "iterations_per_task": 8, "log_every_steps": 4,
        "model_options.hidden": (64, 64), "study.recovery_batches": 3}


def _config(overrides=None):
  from launch.configs import hopsupsup_split_mnist  # pylint: disable=import-outside-toplevel
  c = hopsupsup_split_mnist.get_config()
  for k, v in {**TINY, **(overrides or {})}.items():
    *parents, name = k.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[name] = v
  return c


def _flags(overrides=None):
  out = []
  for k, v in {**TINY, **(overrides or {})}.items():
    out.append(f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}")
  return out


def _launch(workdir, overrides=None, **kw):
  env = dict(os.environ, SUPSUP_DATA_DIR=os.environ["SUPSUP_DATA_DIR"])
  return subprocess.Popen(
      [sys.executable, "-m", "launch.main", f"--config={CONFIG}", f"--workdir={workdir}",
       *_flags(overrides)], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, **kw)


def _numbers(r):
  return (r["avg_accuracy"], r["avg_accuracy_task_given"],
          [t["recovery_steps"] for t in r["tasks"]],
          [t["recovery_hamming"] for t in r["tasks"]],
          [t["accuracy_recovered"] for t in r["tasks"]], r["train"], r["steps_per_task"])


def test_kill_stop_and_sigterm_resume_exactly(tmp_path):
  """SIGKILL after the first checkpoint (task 1's end), a resume stopped
  mid-task by stop_after_steps (a task-state checkpoint), a resume stopped by
  SIGTERM (a checkpoint at the next boundary, exit 130, one line), then a
  resume to the end: the same numbers as an uninterrupted run; results.json
  written once, at the end."""
  ref = hop.run(_config(), str(tmp_path / "ref"))
  work = tmp_path / "work"
  proc = _launch(work)
  ckpts = work / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpts.is_dir() and any((ckpts / d / "supsup_sha256.json").exists()
                              for d in os.listdir(ckpts)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, proc.communicate()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (work / "results.json").exists()
  stopped = hop.run(_config({"stop_after_steps": 4}), str(work))
  assert stopped["complete"] is False
  assert not (work / "results.json").exists()
  proc = _launch(work)
  for line in proc.stdout:  # SIGTERM once it has resumed
    if "Resuming" in line:
      break
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 130, err
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: interrupted (stopped by SIGTERM after saving a "
                         "checkpoint at "), err
  assert not (work / "results.json").exists()
  resumed = hop.run(_config(), str(work))
  assert _numbers(resumed) == _numbers(ref)
  with open(work / "results.json") as f:
    assert _numbers(json.load(f)) == _numbers(ref)
  assert (work / "stored_masks.npz").exists() and (work / "recovery.csv").exists()
  # Finished: the same command returns the results without recomputing.
  assert hop.run(_config(), str(work))["wall_time_s"] == resumed["wall_time_s"]


def test_busy_workdir_refused_by_second_launcher(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    out, err = _launch(tmp_path).communicate(timeout=240)
  lines = err.strip().splitlines()
  assert lines[-1].startswith("error: workdir") and "in use by pid" in lines[-1], err
  assert "Traceback" not in err
  assert not os.path.exists(tmp_path / "run.json"), out


def test_learning_rate_1e38_stops_non_zero_one_line(tmp_path):
  proc = _launch(tmp_path, {"learning_rate": 1e38})
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 3, err
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: training") and "learning_rate" in last, err
  assert "Traceback" not in err
  assert not os.path.exists(tmp_path / "results.json")


def test_workdir_of_another_kind_refused_not_overwritten(tmp_path):
  results = {"runner": "continual", "experiment": "gg_split_mnist", "avg_accuracy": 0.9,
             "config": {"experiment": "gg_split_mnist", "num_tasks": 5}}
  identity = {"runner": "continual", "experiment": "gg_split_mnist",
              "config_fingerprint": "0" * 16, "config": results["config"]}
  for name, obj in (("results.json", results), ("run.json", identity)):
    with open(tmp_path / name, "w") as f:
      json.dump(obj, f)
  before = {n: open(tmp_path / n).read() for n in ("results.json", "run.json")}
  with pytest.raises(ConfigMismatchError, match="holds a 'continual' run") as e:
    hop.run(_config(), str(tmp_path))
  assert "\n" not in str(e.value)
  assert {n: open(tmp_path / n).read() for n in before} == before
  assert sorted(os.listdir(tmp_path)) == ["results.json", "run.json"]


@pytest.mark.parametrize("key,value,match", [
    ("mask_kind", "topk", "mask_kind='topk' would be ignored"),
    ("sparsity", 0.1, "sparsity=0.1 would be ignored"),
    ("tasks_in_parallel", 2, "tasks_in_parallel=2 would be ignored"),
    ("mesh", (("data", 1), ("tasks", 2)), "runs on one device"),
    ("method", "supsup", "trains the HopSupSup learner only"),
    ("epochs_per_task", -1.0, "epochs_per_task must be a finite number >= 0"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number > 0"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number > 0"),
    ("iterations_per_task", -3, "iterations_per_task must be an int >= 0"),
    ("study.recovery_batch_size", 1, "recovery_batch_size must be an int >= 2"),
    ("study.extra_datasets", ("nope",), "extra_datasets entry 'nope' unknown"),
    ("study.capacity_sweep", (0,), "capacity_sweep entries must be ints >= 1"),
    ("model_options.hidden", (0,), "hidden must be a tuple of ints >= 1"),
])
def test_bad_or_ignored_keys_refused_in_one_line(tmp_path, key, value, match):
  with pytest.raises(ValueError, match=match) as e:
    hop.run(_config({key: value, "epochs_per_task": 1.0} if key == "iterations_per_task"
                    else {key: value, "iterations_per_task": 0} if key == "epochs_per_task"
                    else {key: value}), str(tmp_path))
  assert "\n" not in str(e.value)
  assert os.listdir(tmp_path) == []  # refused before the workdir is claimed


def test_shipped_config_validates_and_steps_are_ceil():
  c = _config({"iterations_per_task": 0, "epochs_per_task": 1.0})
  assert hop.validate(c)["recovery_batch_size"] == 64

  class Stream:
    def train_size(self, t):
      return (12665, 12800)[t]
  assert hop.task_steps(c, Stream(), 0) == 99   # ceil(12665 / 128), not 98
  assert hop.task_steps(c, Stream(), 1) == 100
  c.epochs_per_task = 0.5
  assert hop.task_steps(c, Stream(), 0) == 50
