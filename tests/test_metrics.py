"""Run outputs (CSV, heatmap), continual-learning metrics, TensorBoard scalars."""
import csv
import json
import os

import numpy as np
import pytest

from supsup_jax import metrics
from supsup_jax.scalars import ScalarWriter


def _results(num_tasks=6, eval_after=(1, 2, 4, 6), scenario="GNu", seed=0):
  """A run's results with distinct accuracies spread over [0, 1]."""
  rng = np.random.default_rng(seed)
  just = [round(float(v), 4) for v in rng.uniform(0.5, 1.0, num_tasks)]
  rows, inf = [], []
  for after in eval_after:
    rows.append([round(float(rng.uniform(0.0, 1.0)), 4) if j < after else None
                 for j in range(num_tasks)])
    inf.append([round(float(rng.uniform(0.5, 1.0)), 4) if j < after else None
                for j in range(num_tasks)])
  res = {"experiment": "toy", "scenario": scenario, "num_tasks": num_tasks,
         "accuracy_matrix": rows, "eval_after_tasks": list(eval_after),
         "accuracy_just_trained": just}
  if scenario != "GG":
    res["task_inference_matrix"] = inf
  return res


def _write_and_reload(tmp_path, results):
  metrics.write_json_atomic(str(tmp_path / "results.json"), results)
  metrics.write_run_outputs(str(tmp_path), results)
  with open(tmp_path / "results.json") as f:
    return json.load(f)


def test_csv_agrees_with_results_json(tmp_path):
  saved = _write_and_reload(tmp_path, _results())
  with open(tmp_path / "accuracy.csv", newline="") as f:
    lines = list(csv.DictReader(f))
  got = {(int(l["after_tasks"]), int(l["task"])): l for l in lines}
  expected = {}
  for after, row, inf_row in zip(saved["eval_after_tasks"], saved["accuracy_matrix"],
                                 saved["task_inference_matrix"]):
    for j, (acc, inf) in enumerate(zip(row, inf_row)):
      if acc is not None:
        expected[(after, j)] = (acc, inf)
  assert set(got) == set(expected)  # unlearned tasks have no line
  assert len(lines) == len(expected)
  for key, (acc, inf) in expected.items():
    assert float(got[key]["accuracy"]) == pytest.approx(acc, abs=1e-6)
    assert float(got[key]["task_inference_accuracy"]) == pytest.approx(inf, abs=1e-6)
  for name in ("accuracy.png", "accuracy_matrix.png", "task_inference_accuracy.png"):
    assert (tmp_path / name).stat().st_size > 1000
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_gg_run_writes_no_task_inference_plot(tmp_path):
  metrics.write_run_outputs(str(tmp_path), _results(scenario="GG"))
  assert sorted(os.listdir(tmp_path)) == [
      "accuracy.csv", "accuracy.png", "accuracy_matrix.png"]


def _nearest_cmap_value(rgb, cmap):
  """Accuracy (%) whose colour on the 0-100 scale is closest to ``rgb``."""
  levels = np.linspace(0.0, 1.0, 1001)
  table = cmap(levels)[:, :3]
  i = int(np.argmin(np.sum((table - rgb[None, :3]) ** 2, axis=1)))
  return 100.0 * levels[i], float(np.sqrt(np.sum((table[i] - rgb[:3]) ** 2)))


def test_heatmap_pixels_agree_with_results_json(tmp_path):
  """Reads the colour of every cell of accuracy_matrix.png back to a value."""
  import matplotlib.image as mpimg  # pylint: disable=import-outside-toplevel
  saved = _write_and_reload(tmp_path, _results())
  # Same arguments as write_run_outputs, so the same layout: gives the pixel
  # inside each cell and the array drawn.
  info = metrics.plot_accuracy_matrix(
      str(tmp_path / "layout.png"), saved["eval_after_tasks"],
      saved["accuracy_matrix"], "toy (GNu): accuracy matrix")
  image = mpimg.imread(str(tmp_path / "accuracy_matrix.png"))
  rows = saved["accuracy_matrix"]
  data = info["data"]
  assert data.shape == (saved["num_tasks"], len(rows))  # task x tasks learned
  # Task 0 at the top, tasks learned growing to the right.
  corners = [info["cell_pixel"](j, r) for j, r in [(0, 0), (1, 0), (0, 1)]]
  assert corners[1][0] > corners[0][0] and corners[1][1] == corners[0][1]
  assert corners[2][1] > corners[0][1] and corners[2][0] == corners[0][0]
  bad = np.asarray(info["cmap"].get_bad()[:3])
  for r, row in enumerate(rows):
    for j, acc in enumerate(row):
      pix = image[info["cell_pixel"](j, r)][:3]
      if acc is None:
        assert np.isnan(data[j, r])
        np.testing.assert_allclose(pix, bad, atol=0.02)
      else:
        assert data[j, r] == pytest.approx(100 * acc)
        value, dist = _nearest_cmap_value(pix, info["cmap"])
        assert dist < 0.02, (j, r, pix)
        # 256 colour levels over 0-100 %: 0.4 % per level.
        assert value == pytest.approx(100 * acc, abs=0.6), (j, r)


def test_accuracy_plot_axis_is_not_zoomed(tmp_path):
  info = metrics.plot_accuracy(str(tmp_path / "a.png"), [1, 2],
                               [[0.9424, None], [0.9415, 0.9420]], "toy")
  assert info["ylims"] == [(0.0, 100.0), (0.0, 100.0)]


# --- forgetting and backward transfer ----------------------------------------

def test_forgetting_and_bwt_hand_computed():
  res = {"eval_after_tasks": [1, 2, 3],
         "accuracy_just_trained": [0.9, 0.8, 0.7],
         "accuracy_matrix": [[0.9, None, None],
                             [0.95, 0.8, None],
                             [0.6, 0.85, 0.7]]}
  m = metrics.continual_metrics(res)
  # tasks 0 and 1 (the last task is not counted):
  assert m["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.85)) / 2)  # 0.125
  assert m["bwt"] == pytest.approx(-0.125)
  # max over time: task 0 peaked at 0.95, task 1 at 0.8.
  assert m["forgetting_max"] == pytest.approx(((0.95 - 0.6) + (0.8 - 0.85)) / 2)
  # Without the middle evaluation point the peak of task 0 is not seen.
  sparse = dict(res, eval_after_tasks=[3], accuracy_matrix=[res["accuracy_matrix"][-1]])
  assert metrics.continual_metrics(sparse)["forgetting_max"] == pytest.approx(0.125)


def test_bwt_equals_gem_formula_on_full_matrix():
  """Lopez-Paz & Ranzato 2017: BWT = 1/(T-1) sum_{i<T} R[T,i] - R[i,i]."""
  rng = np.random.default_rng(3)
  t = 7
  full = np.tril(rng.uniform(0.3, 1.0, (t, t)))  # R[after i+1 tasks, task j]
  rows = [[float(full[i, j]) if j <= i else None for j in range(t)] for i in range(t)]
  res = {"eval_after_tasks": list(range(1, t + 1)),
         "accuracy_just_trained": [float(full[i, i]) for i in range(t)],
         "accuracy_matrix": rows}
  m = metrics.continual_metrics(res)
  ref_bwt = np.mean([full[t - 1, i] - full[i, i] for i in range(t - 1)])
  ref_fmax = np.mean([full[i:t - 1, i].max() - full[t - 1, i] for i in range(t - 1)])
  assert m["bwt"] == pytest.approx(ref_bwt, abs=1e-12)
  assert m["forgetting"] == pytest.approx(-ref_bwt, abs=1e-12)
  assert m["forgetting_max"] == pytest.approx(ref_fmax, abs=1e-12)
  assert m["forgetting_max"] >= m["forgetting"] - 1e-12


def test_one_task_has_no_forgetting():
  m = metrics.continual_metrics({"eval_after_tasks": [1], "accuracy_just_trained": [0.9],
                                 "accuracy_matrix": [[0.9, None]]})
  assert m == {"forgetting": None, "forgetting_max": None, "bwt": None}
  json.dumps(m)  # valid JSON (null, not NaN)


@pytest.mark.parametrize("change, match", [
    ({"eval_after_tasks": [1, 2]}, "rows but eval_after_tasks"),
    ({"accuracy_matrix": [[94.2, None, None]]}, r"not an accuracy in \[0, 1\]"),
    ({"accuracy_matrix": []}, "empty"),
])
def test_bad_results_raise(tmp_path, change, match):
  res = dict(_results(num_tasks=3, eval_after=(1,), scenario="GG"), **change)
  with pytest.raises(ValueError, match=match):
    metrics.write_run_outputs(str(tmp_path), res)
  assert os.listdir(tmp_path) == []  # nothing written before the check


# --- TensorBoard scalars -------------------------------------------------------

def _read_events(logdir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for name in sorted(os.listdir(logdir)):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_tensorboard_events_hold_the_logged_values(tmp_path):
  logged = {}
  with ScalarWriter(str(tmp_path)) as writer:
    for step in range(0, 500, 50):
      scalars = {"train/task_003/loss": 2.0 / (step + 1),
                 "train/task_003/accuracy": np.float32(step / 500)}
      if step % 200 == 0:
        scalars["eval/avg_accuracy"] = 0.9 + step / 10_000
      writer.write(step, scalars)
      for tag, v in scalars.items():
        logged.setdefault(tag, []).append((step, float(np.float32(v))))
    writer.flush()
  assert _read_events(str(tmp_path)) == logged


def test_scalar_writer_bad_input(tmp_path):
  writer = ScalarWriter(str(tmp_path))
  with pytest.raises(ValueError, match="step must be an integer >= 0"):
    writer.write(-1, {"a": 1.0})
  with pytest.raises(ValueError, match="must be a real number"):
    writer.write(0, {"a": "high"})
  writer.close()
  with pytest.raises(ValueError, match="closed"):
    writer.write(0, {"a": 1.0})
