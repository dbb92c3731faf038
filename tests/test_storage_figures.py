"""supsup_jax/runs/storage_figures.py (launch.reproduce --figure=split_cifar100_bytes):
the figure drawn from a comparison's finished runs (fake ones, so fast), the
paper's recorded numbers, missing entries and bad input in one line."""
import json
import os
import subprocess
import sys

import pytest

from launch import configs
from supsup_jax import methods
from supsup_jax.runs import storage_figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "split_cifar100_bytes"

# entry -> (final accuracy, bytes per task, shared bytes): made-up numbers.
FAKE = {"supsup": (0.65, 136_368, 0), "supsup_transfer": (0.70, 136_368, 0),
        "batche": (0.55, 30_000, 4_000_000), "upper_bound": (0.75, 4_400_000, 0),
        "lower_bound": (0.30, 0, 4_400_000)}


def _write_run(sub, name, acc, per_task, shared, config=None):
  """A finished run's results.json as the continual loop writes it, for
  the config the comparison entry ``name`` runs at CPU scale."""
  cfg = config or methods.entry_config(name, configs.load("gg_split_cifar100", "cpu"))
  n = cfg.num_tasks
  os.makedirs(sub, exist_ok=True)
  r = {"experiment": cfg.experiment, "scenario": "GG", "method": cfg.method,
       "num_tasks": n, "avg_accuracy": acc, "eval_after_tasks": [1, n],
       "accuracy_matrix": [[acc] + [None] * (n - 1), [acc] * n],
       "forgetting": 0.0, "bytes_per_task": per_task, "bytes_shared": shared,
       "steps_per_task": cfg.iterations_per_task, "wall_time_per_task_s": [1.0] * n,
       "config": json.loads(json.dumps(cfg.to_dict(), default=str))}
  with open(os.path.join(sub, "results.json"), "w") as f:
    json.dump(r, f)


def _fake_comparison(root, entries=FAKE):
  for name, (acc, per_task, shared) in entries.items():
    _write_run(os.path.join(root, name), name, acc, per_task, shared)
  return root


def _snapshot(root):
  return sorted((os.path.relpath(os.path.join(d, f), root),
                 os.stat(os.path.join(d, f)).st_mtime_ns)
                for d, _, fs in os.walk(root) for f in fs)


def test_figure_from_a_comparison_read_only(tmp_path):
  cmp_dir = _fake_comparison(str(tmp_path / "cmp"))
  before = _snapshot(cmp_dir)
  logs = []
  wd = str(tmp_path / "fig")
  data = storage_figures.reproduce(NAME, wd, "cpu", base=configs.load,
                                   comparison=cmp_dir, log=logs.append)
  assert _snapshot(cmp_dir) == before  # nothing written where the runs are
  ours = {o["entry"]: o for o in data["ours"]}
  assert sorted(ours) == sorted(FAKE)
  for name, (acc, per_task, shared) in FAKE.items():
    assert ours[name]["accuracy_pct"] == pytest.approx(100 * acc)
    assert ours[name]["total_bytes"] == pytest.approx(20 * per_task + shared)
    assert ours[name]["config_differences"] == []
  assert ours["lower_bound"]["kind"] == "line" and ours["supsup"]["kind"] == "point"
  # The entries without a run are named in one log line and left out.
  assert data["missing"] == ["batche_randw", "separate_heads", "separate_heads_randw"]
  assert len(logs) == 1 and all(m in logs[0] for m in data["missing"])
  # The paper's numbers are the recorded ones, with their sources.
  assert data["paper"] == [
      {"entry": p.entry, "label": p.label, "accuracy_pct": p.accuracy_pct,
       "total_bytes": p.total_bytes, "where": p.where, "source": p.source,
       "read_off_figure": p.read_off_figure} for p in storage_figures.PAPER_SPLIT_CIFAR100]
  lower = [p for p in storage_figures.PAPER_SPLIT_CIFAR100 if p.entry == "lower_bound"]
  assert [(p.accuracy_pct, p.read_off_figure) for p in lower] == [(24.5, False)]
  # Honest axes: 0-100 %, every point inside the log x range.
  assert data["ylim"] == (0.0, 100.0)
  lo, hi = data["xlim"]
  assert all(lo < o["total_bytes"] < hi for o in data["ours"] if o["kind"] == "point")
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  img = matplotlib.image.imread(os.path.join(wd, "figure.png"))
  assert img.shape[0] > 400 and img.shape[1] > 600
  with open(os.path.join(wd, "report.md")) as f:
    report = f.read()
  assert "60 training steps per task" in report and "Reduced scale" in report
  assert "| `supsup_transfer` (SupSup-Transfer) | 70.00 %" in report
  assert "24.50 % (stated)" in report and "`batche_randw` (BatchE - Rand W) | not run yet" in report
  with open(os.path.join(wd, "figure_data.json")) as f:
    assert json.load(f)["ours"][1]["entry"] == "supsup_transfer"


def test_runs_the_comparison_when_none_is_given(tmp_path):
  calls = []

  def run_fn(cfg, sub):
    name = os.path.basename(sub)
    calls.append(name)
    _write_run(sub, name, 0.5, 1000, 0, config=cfg)

  data = storage_figures.reproduce(NAME, str(tmp_path / "fig"), "cpu", base=configs.load,
                                   run_fn=run_fn, log=lambda m: None)
  fig = storage_figures.get_figure(NAME)
  assert calls == [n for n, _ in fig.points]  # the lower bound is drawn, not run
  assert os.path.exists(str(tmp_path / "fig" / "comparison" / "comparison.csv"))
  assert data["missing"] == []  # the lower bound is drawn when present, not a gap
  assert [o["entry"] for o in data["ours"]] == calls
  calls.clear()
  storage_figures.reproduce(NAME, str(tmp_path / "fig"), "cpu", base=configs.load,
                            run_fn=run_fn, log=lambda m: None)
  assert not calls  # finished runs reused


def test_bad_input_is_one_line(tmp_path):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(FileNotFoundError) as e:
    storage_figures.reproduce(NAME, str(tmp_path / "a"), "cpu", base=configs.load,
                              comparison=empty, log=lambda m: None)
  assert "\n" not in str(e.value) and "holds no finished run of supsup" in str(e.value)
  # SupSup without transfer filed as supsup_transfer is refused, not drawn.
  cmp_dir = str(tmp_path / "cmp")
  _write_run(os.path.join(cmp_dir, "supsup_transfer"), "supsup", 0.6, 10, 0)
  with pytest.raises(ValueError) as e:
    storage_figures.reproduce(NAME, str(tmp_path / "b"), "cpu", base=configs.load,
                              comparison=cmp_dir, log=lambda m: None)
  assert "\n" not in str(e.value) and "of 'supsup', not 'supsup_transfer'" in str(e.value)
  with pytest.raises(ValueError, match="only read"):
    storage_figures.reproduce(NAME, cmp_dir, "cpu", base=configs.load,
                              comparison=cmp_dir, log=lambda m: None)


def test_cli_draws_from_a_comparison_and_refuses_bad_flags(tmp_path):
  cmp_dir = _fake_comparison(str(tmp_path / "cmp"), {"supsup": FAKE["supsup"]})
  wd = str(tmp_path / "fig")
  p = subprocess.run([sys.executable, "-m", "launch.reproduce", f"--figure={NAME}",
                      f"--comparison={cmp_dir}", f"--workdir={wd}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "SupSup: 65.00 % after 20 tasks, 2,727,360 bytes stored" in p.stdout
  assert sum("left out" in l for l in p.stdout.splitlines()) == 1
  assert os.path.exists(os.path.join(wd, "figure.png"))
  p = subprocess.run([sys.executable, "-m", "launch.reproduce", "--figure=rotated_mnist",
                      f"--comparison={cmp_dir}", f"--workdir={tmp_path / 'x'}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert p.returncode == 2 and len(lines) == 1 and "--comparison is for" in lines[0]


def test_config_differences_ignore_neutral_defaults_not_real_changes():
  # A run recorded before the weights_from keys existed matches a config that
  # has them at their defaults; a changed value that changes results does not.
  expected = {"seed": 0, "iterations_per_task": 60, "weights_from": "",
              "weights_from_task": -1, "weights_from_fresh": [], "supsup": {"transfer": False}}
  recorded = {"seed": 0, "iterations_per_task": 60, "supsup": {"transfer": False}}
  assert storage_figures.config_differences(recorded, expected) == []
  recorded["supsup"] = {"transfer": True}
  recorded["weights_from"] = "/ckpt"
  assert storage_figures.config_differences(recorded, expected) == ["supsup.transfer",
                                                                     "weights_from"]
