"""The run applications: what ``python -m launch.main`` runs, on one scaffold.

Each run kind is ``run(config, workdir) -> results`` on
:mod:`supsup_jax.runs.scaffold` (workdir lock and identity, checkpoints,
exact resume, progress, ``results.json`` last), chosen by ``config.runner``:

=============== ======================================= ==========================================
runner          module                                  ``config.method`` means
=============== ======================================= ==========================================
``continual``   :mod:`supsup_jax.runs.continual`        the continual learner
                (default; GG/GNs/GNu/NNs)               (:data:`supsup_jax.methods.METHODS`, or
                                                        ``package.module:function``)
``hopsupsup``   :mod:`supsup_jax.runs.hopsupsup`        ``hopsupsup`` (the learner stored in
                                                        Hopfield nets)
``subnetwork``  :mod:`supsup_jax.runs.subnetwork`       a comma list of subnetwork methods
                                                        (dense, lottery_ticket, ...) or one study
``uncertainty`` :mod:`supsup_jax.runs.uncertainty`      one uncertainty method (single,
                                                        mc_dropout, ...)
=============== ======================================= ==========================================

:mod:`~supsup_jax.runs.compare` (several learners side by side) and
:mod:`~supsup_jax.runs.figures` (the paper's figures) drive the continual
runner over many workdirs. Nothing outside this package imports it, and it
imports no launcher: ``launch/`` only parses flags and maps errors to exit codes.
Modules are imported only when chosen, so ``--help`` and flag errors stay fast.
"""
from __future__ import annotations

import importlib
from typing import Callable

RUNNERS: dict[str, str] = {
    "continual": "supsup_jax.runs.continual:run",
    "hopsupsup": "supsup_jax.runs.hopsupsup:run",
    "subnetwork": "supsup_jax.runs.subnetwork:run",
    "uncertainty": "supsup_jax.runs.uncertainty:run",
}


def get_runner(name: str) -> Callable:
  """The ``run(config, workdir) -> results`` function of runner ``name``."""
  if name not in RUNNERS:
    raise ValueError(f"config.runner {name!r} unknown; allowed: {', '.join(sorted(RUNNERS))}")
  module, fn = RUNNERS[name].split(":")
  return getattr(importlib.import_module(module), fn)
