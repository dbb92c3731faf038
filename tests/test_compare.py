"""supsup_jax.runs.compare (launch/compare.py): table and plot from results dirs, what runs, bad input."""
import csv
import json
import os

import pytest

from supsup_jax.runs import compare
from launch.configs import gg_permuted_mnist
from launch.configs import gnu_permuted_mnist_lenet


class _FakeStream:
  num_classes = 10
  input_shape = (8, 8, 1)
  num_tasks = 3

  def train_size(self, task_id):
    del task_id
    return 1000


def _write_results(d, method, rows, eval_after, bytes_per_task, shared=0,
                   forgetting=0.0, walls=(2.0, 4.0), config=None):
  os.makedirs(d, exist_ok=True)
  final = [v for v in rows[-1] if v is not None]
  r = {"experiment": "fake", "scenario": "GG", "method": method,
       "num_tasks": len(rows[-1]), "avg_accuracy": sum(final) / len(final),
       "accuracy_matrix": rows, "eval_after_tasks": eval_after,
       "forgetting": forgetting, "bytes_per_task": bytes_per_task,
       "bytes_shared": shared, "wall_time_per_task_s": list(walls),
       "config": config or {}}
  with open(os.path.join(d, "results.json"), "w") as f:
    json.dump(r, f)


def test_table_from_finished_runs(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  _write_results(a, "supsup", [[0.9, None], [0.9, 0.8]], [1, 2], 33000)
  _write_results(b, "lower_bound", [[0.95, None], [0.5, 0.9]], [1, 2], 0,
                 shared=1_000_000, forgetting=0.45, walls=(1.0, 3.0))
  out = str(tmp_path / "cmp")
  entries = compare.compare(None, [], out, runs=[a, b])
  assert [e["method"] for e in entries] == ["supsup", "lower_bound"]
  with open(os.path.join(out, "comparison.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == ["supsup", "lower_bound"]
  assert float(rows[0]["avg_accuracy"]) == pytest.approx(0.85)
  assert float(rows[1]["avg_accuracy"]) == pytest.approx(0.7)
  assert float(rows[1]["forgetting"]) == pytest.approx(0.45)
  assert float(rows[1]["wall_time_per_task_s"]) == pytest.approx(2.0)
  # Storage per task spreads the shared network over the tasks.
  assert float(rows[0]["storage_per_task"]) == pytest.approx(33000)
  assert float(rows[1]["storage_per_task"]) == pytest.approx(500_000)
  with open(os.path.join(out, "comparison.json")) as f:
    js = json.load(f)
  curve = js["methods"][1]["curve"]
  assert curve["tasks_learned"] == [1, 2]
  assert curve["avg_accuracy"] == pytest.approx([0.95, 0.7])
  assert os.path.getsize(os.path.join(out, "comparison.png")) > 10_000
  assert "lower_bound" in compare.format_table(entries)


def test_runs_missing_methods_and_reuses_finished(tmp_path):
  config = gg_permuted_mnist.get_config()
  config.num_tasks = 2
  calls = []

  def fake_run(cfg, sub):
    calls.append((cfg.method, sub))
    _write_results(sub, cfg.method, [[0.9, None], [0.9, 0.9]], [1, 2], 10,
                   config=json.loads(json.dumps(cfg.to_dict(), default=str)))

  out = str(tmp_path / "cmp")
  compare.compare(config, ["supsup", "batche"], out, run_fn=fake_run,
                  stream_fn=_FakeStream)
  assert [c[0] for c in calls] == ["supsup", "batche"]
  assert calls[1][1] == os.path.join(out, "batche")
  # Finished runs of the same config are reused; a changed config runs again.
  calls.clear()
  compare.compare(config, ["supsup", "batche"], out, run_fn=fake_run,
                  stream_fn=_FakeStream)
  assert not calls
  config.iterations_per_task = 7
  compare.compare(config, ["batche"], out, run_fn=fake_run, stream_fn=_FakeStream)
  assert [c[0] for c in calls] == ["batche"]
  # A run recorded before the weights_from keys existed (absent = their
  # neutral default) is the same config, as the run scaffold judges it.
  calls.clear()
  path = os.path.join(out, "batche", "results.json")
  with open(path) as f:
    r = json.load(f)
  for key in ("weights_from", "weights_from_task", "weights_from_fresh"):
    assert key in r["config"]
    del r["config"][key]
  with open(path, "w") as f:
    json.dump(r, f)
  compare.compare(config, ["batche"], out, run_fn=fake_run, stream_fn=_FakeStream)
  assert not calls


def test_unknown_method_lists_all(tmp_path):
  config = gg_permuted_mnist.get_config()
  with pytest.raises(ValueError, match=r"unknown method 'nope'; allowed: .*abatche.*psp.*supsup"):
    compare.compare(config, ["supsup", "nope"], str(tmp_path), run_fn=None,
                    stream_fn=_FakeStream)


def test_method_that_cannot_serve_scenario_names_those_that_can(tmp_path):
  config = gnu_permuted_mnist_lenet.get_config()
  config.num_tasks = 3
  with pytest.raises(ValueError) as e:
    compare.compare(config, ["psp"], str(tmp_path), run_fn=None, stream_fn=_FakeStream)
  msg = str(e.value)
  assert "\n" not in msg
  assert "'psp' cannot serve scenario GNu" in msg
  assert "abatche" in msg.split("methods that can:")[1]
  assert "lower_bound" not in msg.split("methods that can:")[1]


def test_missing_results_dir_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no results.json"):
    compare.compare(None, [], str(tmp_path / "out"), runs=[str(tmp_path)])


def test_variant_is_an_entry_of_its_own_and_reuses_a_launch_main_run(tmp_path):
  """supsup_transfer runs supsup with config.supsup.transfer=True in
  <workdir>/supsup_transfer, is labelled so, and a finished run of the config
  launch.main runs with --config.supsup.transfer=True is reused."""
  config = gg_permuted_mnist.get_config()
  config.num_tasks = 2
  calls = []

  def fake_run(cfg, sub):
    calls.append((cfg.method, cfg.supsup.transfer, os.path.basename(sub)))
    acc = 0.95 if cfg.supsup.transfer else 0.9
    _write_results(sub, cfg.method, [[acc, None], [acc, acc]], [1, 2], 10,
                   config=json.loads(json.dumps(cfg.to_dict(), default=str)))

  out = str(tmp_path / "cmp")
  entries = compare.compare(config, ["supsup", "supsup_transfer"], out, run_fn=fake_run,
                            stream_fn=_FakeStream)
  assert calls == [("supsup", False, "supsup"), ("supsup", True, "supsup_transfer")]
  assert [e["method"] for e in entries] == ["supsup", "supsup_transfer"]
  assert [e["base_method"] for e in entries] == ["supsup", "supsup"]
  with open(os.path.join(out, "comparison.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == ["supsup", "supsup_transfer"]
  assert float(rows[1]["avg_accuracy"]) == pytest.approx(0.95)
  assert float(rows[1]["total_bytes"]) == pytest.approx(20)  # 10 bytes x 2 tasks
  # launch.main --config.supsup.transfer=True sets that one key of the same
  # config; its finished run, moved into a comparison, is reused and labelled.
  main_config = gg_permuted_mnist.get_config()
  main_config.num_tasks = 2
  main_config.supsup.transfer = True
  fake_run(main_config, str(tmp_path / "main_run"))
  out2 = str(tmp_path / "cmp2")
  os.makedirs(out2)
  os.rename(str(tmp_path / "main_run"), os.path.join(out2, "supsup_transfer"))
  calls.clear()
  entries = compare.compare(config, ["supsup_transfer"], out2, run_fn=fake_run,
                            stream_fn=_FakeStream)
  assert not calls and entries[0]["method"] == "supsup_transfer"
  # --runs labels a run by the variant its recorded config is.
  entries = compare.compare(None, [], str(tmp_path / "cmp3"),
                            runs=[os.path.join(out, "supsup"),
                                  os.path.join(out2, "supsup_transfer")])
  assert [e["method"] for e in entries] == ["supsup", "supsup_transfer"]
  # A variant serves the scenarios its method serves.
  gnu = gnu_permuted_mnist_lenet.get_config()
  gnu.num_tasks = 3
  compare.check_methods(["supsup_transfer"], gnu, _FakeStream)


def test_variant_override_the_config_lacks_is_one_line(tmp_path, monkeypatch):
  from supsup_jax import methods  # pylint: disable=import-outside-toplevel
  # A variant is not a config.method: the message gives the flags of one run of it.
  with pytest.raises(ValueError, match=r"--config.method=supsup --config.supsup.transfer=True"):
    methods.check_method("supsup_transfer")
  monkeypatch.setitem(methods.VARIANTS, "supsup_bad",
                      methods.Variant("supsup", {"supsup.transfr": True}))
  with pytest.raises(ValueError) as e:
    compare.compare(gg_permuted_mnist.get_config(), ["supsup_bad"], str(tmp_path),
                    run_fn=None, stream_fn=_FakeStream)
  msg = str(e.value)
  assert "\n" not in msg and "'supsup_bad'" in msg and "no key 'supsup.transfr'" in msg
