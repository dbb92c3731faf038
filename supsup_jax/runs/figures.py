r"""The paper's figures as experiments: which runs, at which scale, drawn how.

Wortsman, Ramanujan, Liu, Kembhavi, Rastegari, Yosinski & Farhadi,
"Supermasks in Superposition", NeurIPS 2020, arXiv:2006.14769. Each
:class:`Figure` names the experiment configs (``launch/configs/<name>.py``)
whose runs make one of the paper's plots, with overrides per line (objective,
output size, inference algorithm). ``scale="paper"`` runs the configs at the
paper's settings; ``scale="cpu"`` applies the figure's ``cpu_overrides``
(fewer tasks, iterations and test batches; sometimes fewer panels) so that the
figure finishes in minutes on two CPU cores. The report lists every key the
CPU scale changes, with both values, so a reduced figure is never mistaken for
the paper's.

:func:`reproduce` runs what is missing (a finished sub-run, one whose
``results.json`` holds the same config, is reused; an interrupted one resumes
from its checkpoints) and :func:`write_outputs` draws ``figure.png`` (the
paper's layout: one panel per model, accuracy vs tasks learned, on a fixed
0-100 % axis) and writes ``report.md`` (our numbers beside the published ones)
and ``figure_data.json`` (the plotted series). A workdir belongs to one figure
and scale, recorded in ``<workdir>/reproduce.json``.

Figure numbers follow the NeurIPS 2020 version of the paper; the authors'
code README numbers the same GNu/NNs plots one higher (4, 5, 6).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import ml_collections

from supsup_jax import metrics
from supsup_jax import workdir as workdir_lib
from supsup_jax import plotting

PAPER = "Wortsman et al. 2020, Supermasks in Superposition (arXiv:2006.14769)"
SCALES = ("cpu", "paper")
MARKER = "reproduce.json"   # the figure and scale a workdir belongs to


@dataclasses.dataclass(frozen=True)
class Run:
  """One line of a figure: a config plus overrides, run in ``<workdir>/<name>``."""
  name: str
  config: str                               # module name in launch/configs
  label: str                                # legend entry
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  color: int | None = None                  # matplotlib "C<n>"; None = by position
  dashed: bool = False                      # e.g. H dashed, G solid (both visible when equal)


@dataclasses.dataclass(frozen=True)
class Panel:
  title: str
  runs: tuple[Run, ...]
  at_cpu: bool = True                       # also run and drawn at scale "cpu"


@dataclasses.dataclass(frozen=True)
class Published:
  """A published number (percent) to put beside one of our runs."""
  run: str                                  # Run.name it is compared with
  what: str
  value_pct: float


@dataclasses.dataclass(frozen=True)
class Figure:
  name: str
  paper_figure: str                         # e.g. "Figure 3"
  caption: str                              # what the paper plots
  panels: tuple[Panel, ...]
  cpu_overrides: Mapping[str, Any]          # every run, at scale "cpu"
  published: tuple[Published, ...] = ()     # empty: the paper gives a figure only
  notes: str = ""

  def panels_at(self, scale: str) -> tuple[Panel, ...]:
    return tuple(p for p in self.panels if scale == "paper" or p.at_cpu)

  def runs_at(self, scale: str) -> tuple[Run, ...]:
    return tuple(r for p in self.panels_at(scale) for r in p.runs)


def _h_g(prefix: str, config: str, out: int, color: int = 0) -> tuple[Run, ...]:
  """The H (entropy, dashed) and G (superfluous neurons, solid) lines of one
  model, in one colour. Same seed, so both train the same masks and differ
  only in how the task is inferred."""
  return (Run(f"{prefix}_h", config, f"SupSup GNu, H (s={out})",
              {"num_outputs": out, "inference_objective": "entropy",
               "compare_objectives": ()}, color=color, dashed=True),
          Run(f"{prefix}_g", config, f"SupSup GNu, G (s={out})",
              {"num_outputs": out, "inference_objective": "g",
               "compare_objectives": ()}, color=color))


# CPU scales: sized so that one figure takes a few minutes on 2 idle cores
# (LeNet: ~2.5 ms per step; FC 1024-1024: ~7x that).
_CPU_PERMUTED = {"num_tasks": 6, "iterations_per_task": 200, "eval_batches_per_task": 4,
                 "eval_after_tasks": (1, 2, 3, 4, 5, 6)}

# Task-inference errors need many tasks: 30 short tasks rather than 6 long ones.
_CPU_MANY_TASKS = {"num_tasks": 30, "iterations_per_task": 60, "eval_batches_per_task": 4,
                   "eval_after_tasks": (5, 10, 20, 30)}

FIGURES: dict[str, Figure] = {f.name: f for f in (
    Figure(
        name="permuted_mnist_gnu",
        paper_figure="Figure 3",
        caption="PermutedMNIST, GNu, One-Shot task inference from one image per batch: "
                "accuracy vs tasks learned, LeNet 300-100 (left) and FC 1024-1024 (right)",
        panels=(Panel("LeNet 300-100, output 100",
                      _h_g("lenet", "gnu_permuted_mnist_lenet", 100)),
                Panel("FC 1024-1024, output 500",
                      _h_g("fc", "gnu_permuted_mnist_fc", 500))),
        cpu_overrides=_CPU_PERMUTED,
        published=(Published("fc_g", "average accuracy after 250 tasks (paper text; "
                             "fits the FC 1024-1024 model, output 500)", 94.91),),
        notes="The paper's panels also draw BatchE (GG), PSP (GG) and upper/lower bounds; "
              "those baselines are not drawn here (`launch.compare` runs them)."),
    Figure(
        name="permuted_mnist_2500",
        paper_figure="Figure 4",
        caption="PermutedMNIST with 2500 tasks, LeNet 300-100 with output 500, One-Shot: "
                "GNu (task given at training) and NNs (never given)",
        panels=(Panel("LeNet 300-100, output 500",
                      (Run("gnu_g", "gnu_permuted_mnist_2500", "SupSup GNu, G"),
                       Run("gnu_h", "gnu_permuted_mnist_2500", "SupSup GNu, H",
                           {"inference_objective": "entropy"}, dashed=True),
                       Run("nns", "nns_permuted_mnist", "SupSup NNs, H",
                           {"num_tasks": 2500}))),),
        cpu_overrides={"num_tasks": 6, "iterations_per_task": 200,
                       "eval_batches_per_task": 4, "eval_after_tasks": (1, 2, 4, 6)},
        notes="The paper gives this experiment as a figure only (no number in the text)."),
    Figure(
        name="rotated_mnist",
        paper_figure="Figure 5 (left)",
        caption="RotatedMNIST, 36 tasks 10 degrees apart, FC 1024-1024 with output 200, "
                "Binary task inference on the whole batch of 128",
        panels=(Panel("FC 1024-1024, output 200",
                      (Run("fc_binary", "gnu_rotated_mnist", "SupSup GNu, Binary, H"),)),),
        cpu_overrides={"num_tasks": 6, "iterations_per_task": 200,
                       "eval_batches_per_task": 2, "eval_after_tasks": (1, 2, 4, 6)},
        notes="The paper gives this experiment as a figure only (no number in the text). "
              "The CPU scale keeps the first 6 rotations (0-50 degrees)."),
    Figure(
        name="output_size_ablation",
        paper_figure="Figure 6",
        caption="Effect of the output size s (superfluous neurons) and of the objective "
                "(H: entropy, G) on One-Shot GNu PermutedMNIST, LeNet 300-100 (left) and "
                "FC 1024-1024 (right)",
        panels=(Panel("LeNet 300-100", tuple(
                    r for i, s in enumerate((25, 100, 200))
                    for r in _h_g(f"lenet_s{s}", "gnu_permuted_mnist_lenet", s, i))),
                Panel("FC 1024-1024", tuple(
                    r for i, s in enumerate((25, 100, 200))
                    for r in _h_g(f"fc_s{s}", "gnu_permuted_mnist_fc", s, i)), at_cpu=False)),
        cpu_overrides=_CPU_MANY_TASKS,
        notes="The paper gives this experiment as a figure only (no number in the text). "
              "The CPU scale draws the LeNet panel only (the FC panel runs at "
              "`--scale=paper`) and trains 30 tasks of 60 iterations, because task-"
              "inference errors, which the output size and objective act on, only appear "
              "with many tasks."),
    Figure(
        name="oneshot_vs_binary",
        paper_figure="One-Shot vs Binary (no numbered figure)",
        caption="Task-inference algorithms on GNu PermutedMNIST, LeNet 300-100 with output "
                "100, H objective, one image per test batch",
        panels=(Panel("LeNet 300-100, output 100",
                      (Run("oneshot", "gnu_permuted_mnist_lenet", "SupSup GNu, One-Shot",
                           {"inference_algorithm": "oneshot"}),
                       Run("binary", "gnu_permuted_mnist_lenet", "SupSup GNu, Binary",
                           {"inference_algorithm": "binary"}, dashed=True))),),
        cpu_overrides=_CPU_MANY_TASKS,
        notes="No published number to compare with. The CPU scale trains 30 tasks of 60 "
              "iterations so that task inference can fail."),
)}


# ------------------------------------------------------------------ inputs --

def get_figure(name: str) -> Figure:
  if name not in FIGURES:
    raise ValueError(f"unknown figure {name!r}; known figures: {', '.join(FIGURES)}")
  return FIGURES[name]


def check_scale(scale: str) -> None:
  """One-line ValueError for a scale not in :data:`SCALES`."""
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; allowed: {', '.join(SCALES)}")


# base(config_name) -> the ConfigDict of that experiment: the caller's config
# loader (launch/configs for the launcher), so this library imports no launcher.
ConfigLoader = Callable[[str], ml_collections.ConfigDict]


def run_config(fig: Figure, run: Run, scale: str, base: ConfigLoader
               ) -> ml_collections.ConfigDict:
  """The config of one run at one scale (the base config is not modified)."""
  check_scale(scale)
  c = ml_collections.ConfigDict(base(run.config).to_dict())
  for key, value in {**run.overrides, **(fig.cpu_overrides if scale == "cpu" else {})}.items():
    if key not in c:
      raise ValueError(f"figure {fig.name!r}, run {run.name!r}: config "
                       f"{run.config!r} has no key {key!r}")
    c[key] = value
  c.experiment = f"{fig.name}/{run.name}"
  return c


def scale_changes(fig: Figure, run: Run, base: ConfigLoader
                  ) -> list[tuple[str, Any, Any]]:
  """(key, paper value, cpu value) for every key the CPU scale changes."""
  paper = run_config(fig, run, "paper", base).to_dict()
  cpu = run_config(fig, run, "cpu", base).to_dict()
  return [(k, paper[k], cpu[k]) for k in sorted(paper)
          if k != "experiment" and _jsonable(paper[k]) != _jsonable(cpu[k])]


def _jsonable(x):
  return json.loads(json.dumps(x, default=str))


# ----------------------------------------------------------------- workdir --

def claim_workdir(workdir: str, fig: Figure, scale: str) -> None:
  """Records the figure and scale in ``workdir``; refuses another figure's."""
  marker = os.path.join(workdir, MARKER)
  if os.path.isfile(marker):
    with open(marker) as f:
      held = json.load(f)
    if held.get("figure") != fig.name or held.get("scale") != scale:
      raise ValueError(
          f"workdir {workdir!r} holds the runs of figure {held.get('figure')!r} at scale "
          f"{held.get('scale')!r}, not {fig.name!r} at {scale!r}; use another --workdir")
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} is a file; give a directory")
  if os.path.isdir(workdir) and set(os.listdir(workdir)) - {workdir_lib.LOCK_NAME}:
    raise ValueError(f"workdir {workdir!r} is not empty and holds no {MARKER} "
                     "(not a launch.reproduce workdir); use an empty or new --workdir")
  os.makedirs(workdir, exist_ok=True)
  metrics.write_json_atomic(marker, {"figure": fig.name, "scale": scale})


def _load_results(subdir: str) -> dict | None:
  path = os.path.join(subdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_finished(subdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether ``subdir`` holds a finished run of exactly ``config``."""
  r = _load_results(subdir)
  return (r is not None and "avg_accuracy" in r
          and r.get("config") == _jsonable(config.to_dict()))


# -------------------------------------------------------------------- main --

def reproduce(name: str, workdir: str, scale: str = "cpu", *, base: ConfigLoader,
              run_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
              log: Callable[[str], None] = print) -> dict:
  """Runs the missing runs of figure ``name`` and writes its outputs.

  ``run_fn(config, subdir)`` defaults to :func:`supsup_jax.runs.continual.run`
  (which resumes an interrupted run and refuses a subdir of another config).
  Returns :func:`write_outputs`'s summary.
  """
  fig = get_figure(name)
  check_scale(scale)
  configs = {r.name: run_config(fig, r, scale, base) for r in fig.runs_at(scale)}
  with workdir_lib.lock(workdir):
    claim_workdir(workdir, fig, scale)
    return _reproduce_locked(fig, name, workdir, scale, configs, base, run_fn, log)


def _reproduce_locked(fig, name, workdir, scale, configs, base, run_fn, log) -> dict:
  if run_fn is None:
    from supsup_jax.runs import continual  # pylint: disable=import-outside-toplevel
    run_fn = continual.run
  for i, run in enumerate(fig.runs_at(scale)):
    sub, cfg = os.path.join(workdir, run.name), configs[run.name]
    if is_finished(sub, cfg):
      log(f"[{i + 1}/{len(configs)}] {run.name}: finished run found in {sub}")
      continue
    log(f"[{i + 1}/{len(configs)}] {run.name}: running {run.config} in {sub}")
    run_fn(cfg, sub)
    if not is_finished(sub, cfg):
      raise RuntimeError(f"{run.name}: the run in {sub} stopped before writing its "
                         "results.json; run the same command again to resume")
  return write_outputs(workdir, name, scale, base)


def _series(results: Mapping) -> tuple[list[int], list[float], list[float] | None]:
  """(tasks learned, average accuracy %, task-inference accuracy % or None)."""
  xs = [int(t) for t in results["eval_after_tasks"]]
  acc = [100 * metrics.average_accuracy(r) for r in results["accuracy_matrix"]]
  inf = results.get("task_inference_matrix")
  inf = None if inf is None else [100 * metrics.average_accuracy(r) for r in inf]
  return xs, acc, inf


def _mean_pct(values) -> float | None:
  vals = [v for v in values or () if v is not None]
  return 100 * sum(vals) / len(vals) if vals else None


def write_outputs(workdir: str, name: str, scale: str,
                  base: ConfigLoader) -> dict:
  """Draws ``figure.png`` and writes ``report.md`` and ``figure_data.json``
  from the runs' ``results.json``; returns the plotted data."""
  fig = get_figure(name)
  check_scale(scale)
  panels = []
  for panel in fig.panels_at(scale):
    lines = []
    for run in panel.runs:
      r = _load_results(os.path.join(workdir, run.name))
      if r is None:
        raise FileNotFoundError(f"{os.path.join(workdir, run.name)} has no results.json "
                                "(run launch.reproduce first)")
      xs, acc, inf = _series(r)
      cfg = r.get("config") or {}
      lines.append({
          "run": run.name, "label": run.label, "config": run.config,
          "color": f"C{(len(lines) if run.color is None else run.color) % 10}",
          "dashed": run.dashed,
          "tasks_learned": xs, "avg_accuracy_pct": acc, "task_inference_pct": inf,
          "final_accuracy_pct": 100 * float(r["avg_accuracy"]),
          "final_task_inference_pct": (None if r.get("task_inference_accuracy") is None
                                       else 100 * float(r["task_inference_accuracy"])),
          "task_given_pct": _mean_pct(r.get("accuracy_just_trained")),
          "num_tasks": int(r.get("num_tasks") or xs[-1]),
          "settings": {k: cfg.get(k) for k in (
              "model", "num_outputs", "inference_objective", "inference_algorithm",
              "inference_examples", "iterations_per_task", "eval_batches_per_task",
              "test_batch_size")},
          "masks_allocated": r.get("masks_allocated"),
          "wall_time_s": r.get("wall_time_s"),
      })
    panels.append({"title": panel.title, "lines": lines})
  data = {"figure": fig.name, "paper_figure": fig.paper_figure, "scale": scale,
          "caption": fig.caption, "panels": panels}
  png = os.path.join(workdir, "figure.png")
  data["ylims"] = plot(png, data)
  report = os.path.join(workdir, "report.md")
  tmp = report + ".tmp"
  with open(tmp, "w") as f:
    f.write(report_markdown(fig, scale, data, base))
  os.replace(tmp, report)
  metrics.write_json_atomic(os.path.join(workdir, "figure_data.json"), data)
  return data


# -------------------------------------------------------------------- plot --

def plot(path: str, data: Mapping) -> list[tuple[float, float]]:
  """One panel per model: average accuracy (%) vs tasks learned, one line per
  run, the final value in the legend; the accuracy axis is 0-100 % and the
  task axis starts at 0, so nothing is zoomed. Returns each panel's y limits."""
  plt = plotting.pyplot()
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  panels = data["panels"]
  fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), dpi=100,
                           squeeze=False)
  ylims = []
  for ax, panel in zip(axes[0], panels):
    last = 1
    for line in panel["lines"]:
      xs, ys = line["tasks_learned"], line["avg_accuracy_pct"]
      last = max(last, max(xs))
      ax.plot(xs, ys, ("s" if line["dashed"] else "o") if len(xs) <= 40 else "",
              linestyle="--" if line["dashed"] else "-", color=line["color"],
              markersize=6 if line["dashed"] else 3.5, clip_on=False,
              label=f"{line['label']} ({ys[-1]:.2f} % after {xs[-1]})")
    ax.set_xlim(0, last + max(1.0, 0.03 * last))
    ax.xaxis.set_major_locator(ticker.MaxNLocator(10, integer=True, steps=[1, 2, 2.5, 5, 10]))
    ax.set_ylim(0, 100)
    ax.set_yticks(range(0, 101, 10))
    ax.set(xlabel="tasks learned", ylabel="average accuracy (%)", title=panel["title"])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ylims.append(tuple(ax.get_ylim()))
  fig.suptitle(f"{data['paper_figure']}, Wortsman et al. 2020 (arXiv:2006.14769)\n"
               f"launch.reproduce --figure={data['figure']} --scale={data['scale']}",
               fontsize=9)
  fig.tight_layout()
  plotting.save_atomic(fig, path)
  return ylims


# ------------------------------------------------------------------ report --

def _pct(v) -> str:
  return "–" if v is None else f"{v:.2f} %"


def report_markdown(fig: Figure, scale: str, data: Mapping,
                    base: ConfigLoader) -> str:
  """The report: what was run, our numbers beside the published ones, and
  exactly what the CPU scale reduces."""
  published = {p.run: p for p in fig.published}
  out = [f"# {fig.paper_figure}: `{fig.name}` (scale `{scale}`)", "",
         f"{PAPER}. {fig.caption}.", "",
         f"Command: `python -m launch.reproduce --figure={fig.name} --scale={scale} "
         f"--workdir=<dir>`. Plot: `figure.png` (accuracy axis 0-100 %); plotted "
         "series: `figure_data.json`; each run's own outputs in `<dir>/<run>/`.", ""]
  if scale == "cpu":
    out += ["**Reduced scale**: these numbers are from a shortened run and are not "
            "comparable with the paper's; `--scale=paper` runs the paper's settings.", ""]
  out += ["| panel | run | model | s | objective | algorithm | tasks | it/task | "
          "test imgs/task | accuracy (ours) | task inference (ours) | task given (ours) | "
          "paper |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for panel in data["panels"]:
    for line in panel["lines"]:
      s = line["settings"]
      imgs = ("all" if not s.get("eval_batches_per_task")
              else (s["eval_batches_per_task"] or 0) * (s.get("test_batch_size") or 0))
      p = published.get(line["run"])
      paper = f"{p.value_pct:.2f} % ({p.what})" if p else "figure only"
      out.append(
          f"| {panel['title']} | `{line['run']}` | {s.get('model')} | {s.get('num_outputs')} "
          f"| {s.get('inference_objective')} | {s.get('inference_algorithm')} | "
          f"{line['num_tasks']} | {s.get('iterations_per_task')} | {imgs} | "
          f"{_pct(line['final_accuracy_pct'])} | {_pct(line['final_task_inference_pct'])} "
          f"| {_pct(line['task_given_pct'])} | {paper} |")
  out += ["", "accuracy: average over the tasks learned after the last task, the task "
          "inferred (GNu/NNs: a wrongly inferred batch counts as all wrong); task "
          "inference: fraction of test batches whose task was inferred right; task given: "
          "mean accuracy of each task right after training it.", ""]
  nns = [l for p in data["panels"] for l in p["lines"] if l.get("masks_allocated")]
  for l in nns:
    out.append(f"`{l['run']}` allocated {l['masks_allocated']} masks for "
               f"{l['num_tasks']} tasks.")
  if nns:
    out.append("")
  if fig.notes:
    out += [fig.notes, ""]
  dropped = [p.title for p in fig.panels if p not in fig.panels_at(scale)]
  if dropped:
    out += [f"Panels not run at this scale: {', '.join(dropped)}.", ""]
  if scale == "cpu":
    out += ["## What `--scale=cpu` reduces", "",
            "| runs | key | paper | cpu |", "|---|---|---|---|"]
    # Runs with the same changes share rows.
    groups: dict[str, list[str]] = {}
    for run in fig.runs_at(scale):
      changes = json.dumps(_jsonable(scale_changes(fig, run, base)))
      groups.setdefault(changes, []).append(run.name)
    for changes, names in groups.items():
      who = ("all" if len(groups) == 1 else ", ".join(f"`{n}`" for n in names))
      for key, paper_v, cpu_v in json.loads(changes):
        out.append(f"| {who} | `{key}` | {paper_v} | {cpu_v} |")
    out += ["", "(`eval_batches_per_task` 0 = the whole test split, 10,000 images per "
            "task; `eval_after_tasks` are the evaluation points besides the last task.)", ""]
  return "\n".join(out)
