"""Experiment runners the launcher can dispatch to, by ``config.runner``.

Each entry is ``"module:function"`` with ``function(config, workdir) -> dict``
(the results). Modules are imported only when chosen, so ``--help`` and flag
errors stay fast. ``continual`` (the default) is the continual-learning run
loop; single-task studies (uncertainty, subnetworks, ...) have their own.
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
  if name not in RUNNERS:
    raise ValueError(f"config.runner {name!r} unknown; allowed: {', '.join(sorted(RUNNERS))}")
  module, fn = RUNNERS[name].split(":")
  return getattr(importlib.import_module(module), fn)
