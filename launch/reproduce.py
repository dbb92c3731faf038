r"""Reproduces one of the paper's figures: runs its experiments, draws it, reports.

  python -m launch.reproduce --figure=permuted_mnist_gnu [--scale=cpu|paper] \
      [--workdir=runs/reproduce/permuted_mnist_gnu_cpu]
  python -m launch.reproduce --figure=split_cifar100_bytes --scale=cpu \
      [--comparison=<launch.compare workdir>] --workdir=runs/reproduce/c100_bytes

Figures (Wortsman et al. 2020, arXiv:2006.14769; see supsup_jax/runs/figures.py):
``permuted_mnist_gnu`` (Figure 3), ``permuted_mnist_2500`` (Figure 4),
``rotated_mnist`` (Figure 5 left), ``output_size_ablation`` (Figure 6),
``oneshot_vs_binary``; from a comparison (see
supsup_jax/runs/storage_figures.py): ``split_cifar100_bytes`` (Figure 2
right: GG SplitCIFAR100, accuracy after 20 tasks vs total stored bytes, one
point per method, the paper's numbers beside; ``--comparison=DIR`` draws the
finished runs of an existing ``launch.compare`` workdir without writing there,
otherwise the comparison runs in ``<workdir>/comparison``).
``--scale=cpu`` (default) is a reduced version that
finishes in minutes on two CPU cores; ``--scale=paper`` runs the paper's
settings. Each run goes to ``<workdir>/<run>``; the same command resumes
interrupted runs and reuses finished ones. Writes ``figure.png``,
``report.md`` (our numbers beside the published ones, and what the CPU scale
reduces) and ``figure_data.json`` to the workdir.

Bad input (unknown figure, a workdir of another figure, missing data) ends
with one ``error: ...`` line and exit code 2; Ctrl-C with 130.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging

from launch import cli
from launch import configs
from supsup_jax.runs import figures
from supsup_jax.runs import storage_figures

KNOWN = (*figures.FIGURES, *storage_figures.FIGURES)

_FIGURE = flags.DEFINE_string("figure", None, f"Figure to reproduce: {', '.join(KNOWN)}.")
_SCALE = flags.DEFINE_string("scale", "cpu", "cpu (reduced, minutes) or paper (full settings).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory of the figure's runs (default "
                               "runs/reproduce/<figure>_<scale>).")
_COMPARISON = flags.DEFINE_string(
    "comparison", None, "For a figure drawn from a comparison "
    f"({', '.join(storage_figures.FIGURES)}): a launch.compare workdir whose finished "
    "runs to draw (only read); without it the comparison runs in <workdir>/comparison.")

def main(argv):
  from supsup_jax import xla_flags  # pylint: disable=import-outside-toplevel
  xla_flags.apply_cpu_defaults()  # before JAX starts its backend
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  name, scale = _FIGURE.value, _SCALE.value
  if not name:
    cli.fail(f"--figure is required; known figures: {', '.join(KNOWN)}")
  workdir = _WORKDIR.value or os.path.join("runs", "reproduce", f"{name}_{scale}")
  logging.get_absl_handler().python_handler.stream = sys.stdout
  logging.set_verbosity(logging.INFO)
  with cli.one_line_errors(workdir):
    if name not in KNOWN:
      raise ValueError(f"unknown figure {name!r}; known figures: {', '.join(KNOWN)}")
    if scale not in figures.SCALES:
      raise ValueError(f"unknown --scale {scale!r}; allowed: {', '.join(figures.SCALES)}")
    log = lambda m: print(m, flush=True)
    if name in storage_figures.FIGURES:
      data = storage_figures.reproduce(name, workdir, scale, base=configs.load,
                                       comparison=_COMPARISON.value, log=log)
      for o in data["ours"]:
        stored = "?" if o["total_bytes"] is None else f"{o['total_bytes']:,.0f}"
        print(f"{o['label']}: {o['accuracy_pct']:.2f} % after {o['num_tasks']} tasks, "
              f"{stored} bytes stored")
      print(f"wrote figure.png, report.md, figure_data.json to {os.path.abspath(workdir)}")
      return
    if _COMPARISON.value:
      raise ValueError(f"--comparison is for the figures drawn from a comparison "
                       f"({', '.join(storage_figures.FIGURES)}), not {name!r}")
    data = figures.reproduce(name, workdir, scale, base=configs.load, log=log)
  for panel in data["panels"]:
    for line in panel["lines"]:
      inf = line["final_task_inference_pct"]
      print(f"{panel['title']}: {line['label']}: {line['final_accuracy_pct']:.2f} % after "
            f"{line['num_tasks']} tasks"
            + ("" if inf is None else f", task inference {inf:.2f} %"))
  print(f"wrote figure.png, report.md, figure_data.json to {os.path.abspath(workdir)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
