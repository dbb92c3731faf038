r"""The paper's accuracy-against-stored-bytes figure, drawn from a comparison.

Wortsman, Ramanujan, Liu, Kembhavi, Rastegari, Yosinski & Farhadi,
"Supermasks in Superposition", NeurIPS 2020 (arXiv:2006.14769), Figure 2
(right; "Figure 3 (right)" in the authors' code README): GG SplitCIFAR100,
20 tasks of 5 classes, GEM-ResNet18, the average accuracy over the 20 tasks
after learning all of them against the total number of bytes stored (log
axis), one point per method (SupSup at several sparsities, SupSup-Transfer,
BatchE with a trained and a random W, separate heads with a trained and a
random trunk, upper bound), mean and standard deviation over 5 seeds and
splits. The lower bound is left out of the plot; the text gives it (24.5 %).

A :class:`StorageFigure` names the experiment config, the comparison entries
drawn as points (methods or named variants, :mod:`supsup_jax.methods`), the
entries drawn as horizontal lines when a comparison holds them, and the
paper's numbers (:data:`PAPER_SPLIT_CIFAR100`), each with where it comes
from and whether it is stated in the text or read off the plot.

:func:`reproduce` either runs the comparison itself (``<workdir>/comparison``,
through :func:`supsup_jax.runs.compare.compare`: finished runs are reused,
interrupted ones resume) or only reads the finished runs of an existing
comparison workdir (``comparison=``; nothing there is written), then writes
``figure.png``, ``report.md`` (our numbers beside the paper's) and
``figure_data.json`` to ``<workdir>``. An entry without a finished run yet is
reported in one line and left out of the figure.

Total stored bytes = ``bytes_per_task x num_tasks + bytes_shared`` (the
comparison's storage per task x ``num_tasks``): every per-task part (a mask,
a head, BatchE's rank-one factors, a whole network for the upper bound) for
all tasks, plus what is stored once (a trained trunk or W; nothing for
weights given by their seed).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping

from supsup_jax import metrics
from supsup_jax import plotting
from supsup_jax import workdir as workdir_lib
from supsup_jax.runs import compare
from supsup_jax.runs import figures

PAPER = figures.PAPER
SCALES = figures.SCALES


@dataclasses.dataclass(frozen=True)
class PaperNumber:
  """One of the paper's numbers for a comparison entry.

  ``accuracy_pct`` None: the paper plots it but gives no number, and it has
  not been read off the plot. ``total_bytes`` None: no x position (drawn as a
  horizontal line when it has an accuracy). ``read_off_figure``: the values
  are approximate, read off the plot; False: stated in the text or a table
  (or not given at all)."""
  entry: str                 # comparison entry (method or variant name)
  label: str                 # the paper's legend entry
  accuracy_pct: float | None
  total_bytes: float | None
  where: str                 # short: "text, Section 4.1", "Figure 2 (right)"
  source: str                # what exactly, and where
  read_off_figure: bool = False


@dataclasses.dataclass(frozen=True)
class StorageFigure:
  name: str
  paper_figure: str
  caption: str
  config: str                               # launch/configs/<config>.py
  config_args: Mapping[str, str | None]     # scale -> get_config's argument
  points: tuple[tuple[str, str], ...]       # (entry, legend label): run and drawn as points
  lines: tuple[tuple[str, str], ...]        # (entry, label): drawn as lines if present, not run
  paper: tuple[PaperNumber, ...]
  paper_training: str                       # how long the paper trains each task
  chance_pct: float
  notes: str = ""

  def entry_names(self) -> tuple[str, ...]:
    return tuple(n for n, _ in self.points + self.lines)


# The authors' repository (github.com/RAIVNLab/supsup, README "GG Experiments")
# maps one script of experiments/GG/splitcifar100/ to each series of this plot;
# the sparsity sweep is that of rn18-supsup.py and rn18-supsup-transfer.py.
_PLOT_ONLY = ("plotted only in Figure 2 (right): the paper's text and tables and the "
              "authors' repository (README, experiments/GG/splitcifar100/) give no "
              "number; not read off the plot here")

#: The paper's numbers for GG SplitCIFAR100 (Figure 2, right), with sources.
PAPER_SPLIT_CIFAR100: tuple[PaperNumber, ...] = (
    PaperNumber("lower_bound", "Lower Bound", 24.5, None, "text, Section 4.1",
                "stated in the text, Section 4.1 'Baselines': the lower bound is left "
                "out of Figure 2 because of catastrophic forgetting, \"the SplitCIFAR100 "
                "accuracy is 24.5%\""),
    PaperNumber("supsup", "SupSup, s in {1, 2, 4, 8, 16, 32}", None, None, "Figure 2 (right)",
                _PLOT_ONLY + " (rn18-supsup.py: ER sparsities 1-32, 250 epochs, 5 seeds)"),
    PaperNumber("supsup_transfer", "SupSup Transfer, same sparsities", None, None,
                "Figure 2 (right)",
                _PLOT_ONLY + " (rn18-supsup-transfer.py: scores start from the "
                "running mean of the learned ones)"),
    PaperNumber("batche", "BatchE (GG)", None, None, "Figure 2 (right)",
                _PLOT_ONLY + " (W trained on the first task, as in Wen et al. 2020)"),
    PaperNumber("batche_randw", "BatchE (GG) - Rand W", None, None, "Figure 2 (right)",
                _PLOT_ONLY + " (rn18-batche-randw.py)"),
    PaperNumber("separate_heads", "Separate Heads", None, None, "Figure 2 (right)",
                _PLOT_ONLY + " (rn18-separate-heads.py: trunk trained on task 1)"),
    PaperNumber("separate_heads_randw", "Separate Heads - Rand W", None, None, "Figure 2 (right)",
                _PLOT_ONLY + " (rn18-separate-heads-randw.py)"),
    PaperNumber("upper_bound", "Upper Bound", None, None, "Figure 2 (right)",
                _PLOT_ONLY + " (rn18-upperbound.py: one network per task)"),
)

FIGURES: dict[str, StorageFigure] = {f.name: f for f in (
    StorageFigure(
        name="split_cifar100_bytes",
        paper_figure="Figure 2 (right)",
        caption="GG SplitCIFAR100 (20 tasks x 5 classes), GEM-ResNet18: average accuracy "
                "after 20 tasks vs total stored bytes",
        config="gg_split_cifar100",
        config_args={"cpu": "cpu", "paper": "paper"},
        points=(("supsup", "SupSup"), ("supsup_transfer", "SupSup-Transfer"),
                ("batche", "BatchE"), ("batche_randw", "BatchE - Rand W"),
                ("separate_heads", "Separate Heads"),
                ("separate_heads_randw", "Separate Heads - Rand W"),
                ("upper_bound", "Upper Bound")),
        lines=(("lower_bound", "Lower Bound"),),
        paper=PAPER_SPLIT_CIFAR100,
        paper_training="250 epochs per task, mean of 5 seeds",
        chance_pct=20.0,
        notes="Our SupSup is one sparsity (the config's `er_sparsity`, 8 by default; the "
              "paper sweeps 1-32, `--config.er_sparsity`). Our masks are bit-packed, 1 bit "
              "per weight whatever the sparsity; the paper stores its sparse masks as "
              "scipy.sparse CSC with 16-bit integers, so its SupSup bytes fall with "
              "sparsity and ours do not. `bytes_per_task` is what each method's learner "
              "reports (`summary`): SupSup's counts the mask bank's row only, the "
              "baselines' count their per-task batch-norm statistics too. One seed here; "
              "the paper plots the mean and standard deviation of 5."),
)}


# ------------------------------------------------------------------ inputs --

def get_figure(name: str) -> StorageFigure:
  if name not in FIGURES:
    raise ValueError(f"unknown figure {name!r}; known figures: {', '.join(FIGURES)}")
  return FIGURES[name]


# base(config_name, arg) -> the ConfigDict of that experiment, get_config(arg)
# (the launcher passes launch.configs.load), so this library imports no launcher.
ConfigLoader = Callable[[str, Any], Any]


def figure_config(fig: StorageFigure, scale: str, base: ConfigLoader):
  """The comparison's config (before each entry's method and overrides)."""
  figures.check_scale(scale)
  return base(fig.config, fig.config_args[scale])


def config_differences(recorded: Mapping, expected: Mapping) -> list[str]:
  """Dotted keys whose recorded value differs from the expected config's, as
  the run scaffold compares configs (keys that do not change results, and
  keys added later at their neutral default, do not count)."""
  from supsup_jax import checkpoint  # pylint: disable=import-outside-toplevel
  return checkpoint.config_diff(json.loads(json.dumps(recorded, default=str)),
                                json.loads(json.dumps(expected, default=str)))


def load_entries(fig: StorageFigure, comparison_dir: str, expected_config=None
                 ) -> tuple[dict[str, dict], list[str]]:
  """The finished runs of ``fig``'s entries in ``comparison_dir`` (read only)
  and the names of those without one. A run whose recorded config is another
  entry (e.g. SupSup without transfer in ``supsup_transfer/``) is refused in
  one line; with ``expected_config`` each entry records the keys its config
  differs in from the figure's config at the scale asked for."""
  from supsup_jax import methods as methods_lib  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(comparison_dir):
    raise FileNotFoundError(f"comparison workdir {comparison_dir!r} does not exist")
  found, missing = {}, []
  for name in fig.entry_names():
    sub = os.path.join(comparison_dir, name)
    if not os.path.exists(os.path.join(sub, "results.json")):
      missing.append(name)
      continue
    entry = compare.load_run(sub, name)
    held = methods_lib.entry_name(entry["base_method"], entry["config"])
    if held != name:
      raise ValueError(f"{sub} holds a finished run of {held!r}, not {name!r}; "
                       f"move it to {os.path.join(comparison_dir, held)}")
    if expected_config is not None:
      want = methods_lib.entry_config(name, expected_config).to_dict()
      entry["config_differences"] = config_differences(entry["config"], want)
    found[name] = entry
  return found, missing


# -------------------------------------------------------------------- main --

def reproduce(name: str, workdir: str, scale: str = "cpu", *, base: ConfigLoader,
              comparison: str | None = None,
              run_fn: Callable[[Any, str], Any] | None = None,
              stream_fn: Callable[[], Any] | None = None,
              log: Callable[[str], None] = print) -> dict:
  """Draws figure ``name`` into ``workdir``.

  Without ``comparison`` the figure's entries run in ``<workdir>/comparison``
  (:func:`supsup_jax.runs.compare.compare`, with ``run_fn``/``stream_fn``);
  with it, only the finished runs there are read. Returns the plotted data.
  """
  fig = get_figure(name)
  figures.check_scale(scale)
  config = figure_config(fig, scale, base)
  if comparison is not None:
    comparison = os.path.abspath(comparison)
    if not os.path.isdir(comparison):
      raise FileNotFoundError(f"--comparison {comparison!r} is not a directory")
    if os.path.abspath(workdir) == comparison:
      raise ValueError(f"--workdir and --comparison are both {comparison!r}; the "
                       "comparison is only read: write the figure to another --workdir")
  with workdir_lib.lock(workdir):
    figures.claim_workdir(workdir, fig, scale)
    if comparison is None:
      comparison = os.path.join(os.path.abspath(workdir), "comparison")
      log(f"running the comparison of {fig.name} in {comparison}")
      compare.compare(config, [n for n, _ in fig.points], comparison,
                      run_fn=run_fn, stream_fn=stream_fn)
    return write_outputs(workdir, fig, scale, comparison, config, log)


def write_outputs(workdir: str, fig: StorageFigure, scale: str, comparison_dir: str,
                  config, log: Callable[[str], None] = print) -> dict:
  """``figure.png``, ``report.md`` and ``figure_data.json`` from the finished
  runs in ``comparison_dir``; returns the plotted data."""
  found, missing = load_entries(fig, comparison_dir, config)
  # A line (the lower bound) is drawn when the comparison has it; it is not
  # one of the figure's runs, so its absence is no gap.
  missing = [n for n in missing if n not in dict(fig.lines)]
  if missing:
    log(f"not in {comparison_dir} yet (no results.json), left out: {', '.join(missing)}")
  labels = dict(fig.points + fig.lines)
  drawn = [n for n in fig.entry_names() if n in found]
  if not any(n in found for n, _ in fig.points):
    raise FileNotFoundError(
        f"{comparison_dir} holds no finished run of {', '.join(n for n, _ in fig.points)}; "
        "run launch.compare (or launch.reproduce without --comparison) first")
  ours = []
  for n in drawn:
    e = found[n]
    ours.append({
        "entry": n, "label": labels[n], "kind": "line" if n in dict(fig.lines) else "point",
        "accuracy_pct": 100 * e["avg_accuracy"],
        "forgetting_pct": None if e["forgetting"] is None else 100 * e["forgetting"],
        "bytes_per_task": e["bytes_per_task"], "bytes_shared": e["bytes_shared"],
        "total_bytes": e["total_bytes"], "num_tasks": e["num_tasks"],
        "steps_per_task": e["steps_per_task"],
        "wall_time_per_task_s": e["wall_time_per_task_s"],
        "config_differences": e.get("config_differences", []), "workdir": e["workdir"]})
  steps = sorted({o["steps_per_task"] for o in ours if o["steps_per_task"] is not None})
  data = {"figure": fig.name, "paper_figure": fig.paper_figure, "caption": fig.caption,
          "scale": scale, "comparison": os.path.abspath(comparison_dir),
          "ours": ours, "missing": missing, "steps_per_task": steps,
          "num_tasks": sorted({o["num_tasks"] for o in ours}),
          "paper_training": fig.paper_training, "chance_pct": fig.chance_pct,
          "paper": [dataclasses.asdict(p) for p in fig.paper]}
  png = os.path.join(workdir, "figure.png")
  data["ylim"], data["xlim"] = plot(png, data)
  report = os.path.join(workdir, "report.md")
  tmp = report + ".tmp"
  with open(tmp, "w") as f:
    f.write(report_markdown(fig, data))
  os.replace(tmp, report)
  metrics.write_json_atomic(os.path.join(workdir, "figure_data.json"), data)
  return data


# -------------------------------------------------------------------- plot --

def _ours_scale(data: Mapping) -> str:
  steps = data["steps_per_task"]
  return (f"{'/'.join(str(s) for s in steps)} training steps per task" if steps
          else "training length not recorded")


def plot(path: str, data: Mapping) -> tuple[tuple[float, float], tuple[float, float]]:
  """Accuracy (%) after the last task vs total stored bytes (log axis): our
  runs as filled points (lines for the lower bound), the paper's numbers as
  hollow points or dashed lines, on a fixed 0-100 % axis. Returns the y and
  x limits."""
  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(10.5, 6.4), dpi=100)
  colors = {}
  for o in data["ours"] + [p for p in data["paper"]]:
    name = o["entry"]
    colors.setdefault(name, f"C{len(colors) % 10}")
  xs = []
  for o in data["ours"]:
    if o["kind"] == "line" or not o["total_bytes"]:
      ax.axhline(o["accuracy_pct"], color=colors[o["entry"]], linestyle=":", linewidth=1.6,
                 label=f"ours: {o['label']} {o['accuracy_pct']:.1f} %")
      continue
    xs.append(o["total_bytes"])
    ax.scatter([o["total_bytes"]], [o["accuracy_pct"]], s=70, color=colors[o["entry"]],
               edgecolor="black", linewidth=0.6, zorder=3,
               label=f"ours: {o['label']} {o['accuracy_pct']:.1f} %")
    # Two points at about the same bytes and accuracy: the lower one's label goes below it.
    below = any(abs(math.log10(o["total_bytes"] / q["total_bytes"])) < 0.05
                and 0 < q["accuracy_pct"] - o["accuracy_pct"] < 6
                for q in data["ours"] if q["kind"] == "point" and q["total_bytes"])
    ax.annotate(o["label"], (o["total_bytes"], o["accuracy_pct"]), textcoords="offset points",
                xytext=(6, -12 if below else 5), fontsize=8)
  not_read = []
  for p in data["paper"]:
    if p["accuracy_pct"] is None:
      not_read.append(p["label"])
      continue
    approx = "~" if p["read_off_figure"] else ""
    label = f"paper: {p['label']} {approx}{p['accuracy_pct']:.1f} %"
    if p["total_bytes"] is None:
      ax.axhline(p["accuracy_pct"], color=colors[p["entry"]], linestyle="--", linewidth=1.2,
                 label=label + (" (text)" if not p["read_off_figure"] else ""))
    else:
      xs.append(p["total_bytes"])
      ax.scatter([p["total_bytes"]], [p["accuracy_pct"]], s=70, facecolor="none",
                 edgecolor=colors[p["entry"]], linewidth=1.6, marker="D", zorder=3,
                 label=label)
  ax.axhline(data["chance_pct"], color="0.6", linestyle="-", linewidth=0.8,
             label=f"chance ({data['chance_pct']:.0f} %)")
  ax.set_xscale("log")
  lo, hi = (min(xs), max(xs)) if xs else (1e5, 1e8)
  ax.set_xlim(lo / 3, hi * 3)
  ax.set_ylim(0, 100)
  ax.set_yticks(range(0, 101, 10))
  ax.grid(alpha=0.3, which="both")
  tasks = "/".join(str(t) for t in data["num_tasks"])
  ax.set(xlabel=f"total stored bytes after {tasks} tasks (log scale) = bytes per task x "
                f"{tasks} + shared bytes",
         ylabel=f"average accuracy after {tasks} tasks (%)")
  ax.legend(fontsize=7.5, loc="lower right", ncol=2)
  fig.suptitle(f"{data['paper_figure']} of Wortsman et al. 2020 (arXiv:2006.14769)\n"
               f"{data['caption']}\nours (filled, dotted): {_ours_scale(data)} "
               f"(--scale={data['scale']}), one seed;   paper (hollow, dashed): "
               f"{data['paper_training']}", fontsize=9)
  foot = ("Shared bytes: a trained network stored once (BatchE's W, separate heads' "
          "trunk); 0 for weights given by their seed (SupSup, Rand W).")
  if not_read:
    foot += ("\nPaper values plotted only in its figure, not read here: "
             + "; ".join(not_read) + ".")
  if data["missing"]:
    foot += "\nNot in the comparison yet: " + ", ".join(data["missing"]) + "."
  fig.text(0.01, 0.01, foot, fontsize=7, va="bottom", ha="left", wrap=True)
  fig.tight_layout(rect=(0, 0.02 + 0.025 * foot.count("\n"), 1, 1))
  ylim, xlim = tuple(ax.get_ylim()), tuple(ax.get_xlim())
  plotting.save_atomic(fig, path)
  return ylim, xlim


# ------------------------------------------------------------------ report --

def _pct(v) -> str:
  return "–" if v is None else f"{v:.2f} %"


def _int(v) -> str:
  return "–" if v is None else f"{int(round(v)):,}"


def report_markdown(fig: StorageFigure, data: Mapping) -> str:
  """Our numbers beside the paper's, where each paper number comes from, and
  what the x axis counts."""
  paper = {p["entry"]: p for p in data["paper"]}
  ours = {o["entry"]: o for o in data["ours"]}
  labels = dict(fig.points + fig.lines)
  out = [f"# {fig.paper_figure}: `{fig.name}` (scale `{data['scale']}`)", "",
         f"{PAPER}. {fig.caption}.", "",
         f"Ours: {_ours_scale(data)}, one seed, from the comparison in "
         f"`{data['comparison']}`. Paper: {fig.paper_training}.", ""]
  if data["scale"] == "cpu":
    out += ["**Reduced scale**: our numbers come from far shorter training than the "
            "paper's and are not comparable with its values; `--scale=paper` runs the "
            "paper's settings.", ""]
  out += ["| entry | ours: accuracy after the last task | forgetting | bytes per task | "
          "shared bytes | total bytes | paper | paper's source |",
          "|---|---|---|---|---|---|---|---|"]
  for name in fig.entry_names():
    o, p = ours.get(name), paper.get(name)
    if p is None:
      pv, src = "–", "not in the paper's figure"
    elif p["accuracy_pct"] is None:
      pv, src = "plot only", p["where"]
    else:
      pv = ("~" if p["read_off_figure"] else "") + _pct(p["accuracy_pct"])
      src = p["where"] + (", read off the plot (approximate)" if p["read_off_figure"]
                          else ", stated")
    if o is None:
      mine = ["not run yet" if name in data["missing"] else
              "not in the comparison (add it to --methods to draw it)"] + ["–"] * 4
    else:
      mine = [_pct(o["accuracy_pct"]), _pct(o["forgetting_pct"]), _int(o["bytes_per_task"]),
              _int(o["bytes_shared"]), _int(o["total_bytes"]) if o["kind"] == "point"
              else f"{_int(o['total_bytes'])} (drawn as a line)"]
    out.append(f"| `{name}` ({labels[name]}) | " + " | ".join(mine) + f" | {pv} | {src} |")
  out += ["", "Accuracy: the average over all tasks of each task's test accuracy after the "
          "last task, the task given (GG). Total bytes = bytes per task x number of tasks + "
          "shared bytes (`launch.compare`'s storage per task x tasks).", ""]
  if data["missing"]:
    out += [f"Not in the comparison yet (no `results.json`), left out of the figure: "
            f"{', '.join(f'`{m}`' for m in data['missing'])}.", ""]
  diffs = {o["entry"]: o["config_differences"] for o in data["ours"] if o["config_differences"]}
  if diffs:
    out += [f"Runs whose config differs from `launch/configs/{fig.config}.py` at scale "
            f"`{data['scale']}`: " + "; ".join(f"`{n}` in {', '.join(d)}"
                                               for n, d in diffs.items()) + ".", ""]
  out += ["## The paper's numbers", "",
          "Stated in the text or a table are exact; read off a figure are approximate; "
          "'plot only' means the paper gives the value only as a plotted point, not read "
          "here.", ""]
  for p in data["paper"]:
    what = ("plot only" if p["accuracy_pct"] is None else
            f"{'~' if p['read_off_figure'] else ''}{p['accuracy_pct']:.2f} % "
            f"({'read off the figure' if p['read_off_figure'] else 'stated'})")
    out.append(f"- {p['label']} (`{p['entry']}`): {what}; {p['source']}.")
  out += ["", fig.notes, ""]
  return "\n".join(out)
