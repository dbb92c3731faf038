"""launch/reproduce.py and supsup_jax/runs/figures.py: bad input, resume, and the
report and plot agreeing with the runs' results.json (fake runs, so fast)."""
import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from launch import configs
from supsup_jax.runs import figures

# The launcher's config loader, as launch/reproduce.py passes it.
_reproduce = functools.partial(figures.reproduce, base=configs.load)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(calls):
  """A run_fn writing a results.json whose numbers follow from the config:
  accuracy after t tasks = base - 0.002 * t, base from the output size and
  objective, so every run of a figure has its own curve."""
  def run_fn(config, subdir):
    calls.append(os.path.basename(subdir))
    os.makedirs(subdir, exist_ok=True)
    n = config.num_tasks
    points = sorted({t for t in config.eval_after_tasks if t <= n} | {n})
    base = 0.6 + config.num_outputs / 1000 + (0.05 if config.inference_objective == "g" else 0)
    rows = [[base - 0.002 * t - 0.001 * j if j < t else None for j in range(n)]
            for t in points]
    inf = [[1.0 - 0.01 * t if j < t else None for j in range(n)] for t in points]
    r = {"experiment": config.experiment, "scenario": config.scenario, "num_tasks": n,
         "eval_after_tasks": points, "accuracy_matrix": rows,
         "avg_accuracy": float(np.mean(rows[-1])),
         "task_inference_matrix": inf, "task_inference_accuracy": float(np.mean(inf[-1])),
         "accuracy_just_trained": [base] * n, "wall_time_s": 1.0,
         "config": json.loads(json.dumps(config.to_dict(), default=str))}
    with open(os.path.join(subdir, "results.json"), "w") as f:
      json.dump(r, f)
    return r
  return run_fn


def test_unknown_figure_lists_the_known_ones():
  with pytest.raises(ValueError) as e:
    figures.get_figure("figure_7")
  msg = str(e.value)
  assert "\n" not in msg and "'figure_7'" in msg
  for name in figures.FIGURES:
    assert name in msg


def test_cli_unknown_figure_one_line_exit_2():
  p = subprocess.run([sys.executable, "-m", "launch.reproduce", "--figure=nope",
                      "--workdir=/nonexistent/never_made"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 2
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: unknown figure 'nope'")
  assert all(name in lines[0] for name in figures.FIGURES)
  assert not os.path.exists("/nonexistent/never_made")


def test_workdir_of_another_figure_refused(tmp_path):
  wd = str(tmp_path / "wd")
  calls = []
  _reproduce("oneshot_vs_binary", wd, "cpu", run_fn=_fake_run(calls), log=lambda m: None)
  assert sorted(calls) == ["binary", "oneshot"]
  for other, scale in (("output_size_ablation", "cpu"), ("oneshot_vs_binary", "paper")):
    with pytest.raises(ValueError) as e:
      _reproduce(other, wd, scale, run_fn=_fake_run(calls), log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "'oneshot_vs_binary'" in msg and "another --workdir" in msg
  assert len(calls) == 2  # nothing ran
  # A non-empty directory that is not a reproduce workdir is refused too.
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "results.json").write_text("{}")
  with pytest.raises(ValueError, match="not a launch.reproduce workdir"):
    _reproduce("oneshot_vs_binary", str(tmp_path / "other"), "cpu",
                      run_fn=_fake_run(calls), log=lambda m: None)


def test_finished_runs_reused_missing_ones_run(tmp_path):
  wd = str(tmp_path / "wd")
  calls = []
  _reproduce("output_size_ablation", wd, "cpu", run_fn=_fake_run(calls),
                    log=lambda m: None)
  # CPU scale: the LeNet panel only, s in {25, 100, 200} x {H, G}.
  assert sorted(calls) == sorted(f"lenet_s{s}_{o}" for s in (25, 100, 200) for o in "hg")
  os.remove(os.path.join(wd, "lenet_s100_g", "results.json"))
  calls.clear()
  _reproduce("output_size_ablation", wd, "cpu", run_fn=_fake_run(calls),
                    log=lambda m: None)
  assert calls == ["lenet_s100_g"]
  # A run_fn that ends without results.json (stopped) is reported, not drawn.
  os.remove(os.path.join(wd, "lenet_s25_h", "results.json"))
  with pytest.raises(RuntimeError, match="lenet_s25_h.*run the same command again"):
    _reproduce("output_size_ablation", wd, "cpu", run_fn=lambda c, d: None,
                      log=lambda m: None)


def _table_rows(report: str) -> dict:
  """run name -> the cells of its row in report.md's main table."""
  rows = {}
  for line in report.splitlines():
    m = re.match(r"\|[^|]*\| `([^`]+)` \|", line)
    if m and line.count("|") == 14:
      rows[m.group(1)] = [c.strip() for c in line.strip("|").split("|")]
  return rows


def test_report_and_plot_agree_with_results(tmp_path):
  wd = str(tmp_path / "wd")
  data = _reproduce("permuted_mnist_gnu", wd, "cpu", run_fn=_fake_run([]),
                           log=lambda m: None)
  with open(os.path.join(wd, "report.md")) as f:
    report = f.read()
  rows = _table_rows(report)
  assert sorted(rows) == ["fc_g", "fc_h", "lenet_g", "lenet_h"]
  plotted = {l["run"]: l for p in data["panels"] for l in p["lines"]}
  for run, cells in rows.items():
    with open(os.path.join(wd, run, "results.json")) as f:
      r = json.load(f)
    # Table: final accuracy, task inference and task-given accuracy of results.json.
    assert cells[9] == f"{100 * r['avg_accuracy']:.2f} %"
    assert cells[10] == f"{100 * r['task_inference_accuracy']:.2f} %"
    assert cells[11] == f"{100 * np.mean(r['accuracy_just_trained']):.2f} %"
    assert cells[6] == str(r["num_tasks"]) == "6"
    # Plot: one point per evaluation point, the row averages in percent.
    assert plotted[run]["tasks_learned"] == r["eval_after_tasks"]
    want = [100 * np.mean([v for v in row if v is not None]) for row in r["accuracy_matrix"]]
    np.testing.assert_allclose(plotted[run]["avg_accuracy_pct"], want, rtol=1e-12)
  # The published number sits beside the FC G run only.
  assert "94.91 %" in rows["fc_g"][12]
  assert all(rows[r][12] == "figure only" for r in ("fc_h", "lenet_g", "lenet_h"))
  assert "Reduced scale" in report
  # The reductions are listed with both values.
  assert "| all | `num_tasks` | 250 | 6 |" in report
  assert "| all | `iterations_per_task` | 1000 | 200 |" in report
  # Honest axes, one panel per model, and the PNG and JSON were written.
  assert data["ylims"] == [(0.0, 100.0), (0.0, 100.0)]
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  img = matplotlib.image.imread(os.path.join(wd, "figure.png"))
  assert img.shape[1] > img.shape[0] > 300  # two panels side by side
  with open(os.path.join(wd, "figure_data.json")) as f:
    assert json.load(f)["panels"][1]["lines"][1]["run"] == "fc_g"


def test_paper_scale_is_the_papers_settings():
  """--scale=paper: the settings of the authors' experiment scripts
  (RMSprop 1e-4, 1000 iterations of 128 per task, 250 tasks, the whole test
  split), with the run's output size and objective."""
  fig = figures.get_figure("output_size_ablation")
  for run in fig.runs_at("paper"):
    c = figures.run_config(fig, run, "paper", configs.load)
    assert (c.num_tasks, c.iterations_per_task, c.batch_size) == (250, 1000, 128)
    assert (c.optimizer, c.learning_rate, c.eval_batches_per_task) == ("rmsprop", 1e-4, 0)
    s, o = re.match(r"(?:lenet|fc)_s(\d+)_([hg])", run.name).groups()
    assert c.num_outputs == int(s)
    assert c.inference_objective == {"h": "entropy", "g": "g"}[o]
    assert c.model == ("lenet300100" if run.name.startswith("lenet") else "fc10241024")
  assert len(fig.runs_at("paper")) == 12 and len(fig.runs_at("cpu")) == 6
  g2500 = figures.get_figure("permuted_mnist_2500")
  assert {figures.run_config(g2500, r, "paper", configs.load).num_tasks
          for r in g2500.runs_at("paper")} == {2500}
  # Every figure's configs build at both scales (keys exist).
  for f in figures.FIGURES.values():
    for scale in figures.SCALES:
      for run in f.runs_at(scale):
        figures.run_config(f, run, scale, configs.load)


def test_override_of_a_missing_key_refused():
  fig = figures.Figure("x", "Figure 0", "", (figures.Panel("p", (
      figures.Run("r", "gnu_permuted_mnist_lenet", "r", {"num_outputz": 3}),)),), {})
  with pytest.raises(ValueError, match="has no key 'num_outputz'"):
    figures.run_config(fig, fig.panels[0].runs[0], "paper", configs.load)


@pytest.mark.slow
def test_real_permuted_mnist_gnu_cpu_scale(tmp_path):
  """The CPU-scale Figure 3 on real PermutedMNIST: every line above 80 %."""
  data = _reproduce("permuted_mnist_gnu", str(tmp_path / "wd"), "cpu",
                           log=lambda m: None)
  for panel in data["panels"]:
    for line in panel["lines"]:
      assert line["final_accuracy_pct"] > 80, line
