"""Continual learners, one module each, chosen by ``config.method``.

Each entry maps a method name to ``"module:function"`` where
``function(config, stream) -> supsup_jax.learner.Learner`` builds the learner
for an experiment config and its data stream. Modules are imported only when
chosen.
"""
from __future__ import annotations

import importlib
from typing import Any

METHODS: dict[str, str] = {
    "supsup": "supsup_jax.methods.supsup:from_config",
    "hopsupsup": "supsup_jax.methods.hopsupsup:from_config",
    "packnet": "supsup_jax.methods.packnet:from_config",
}


def make_learner(method: str, config: Any, stream: Any):
  """The learner ``method`` for ``config`` over ``stream`` (one-line errors)."""
  if method not in METHODS:
    raise ValueError(f"config.method {method!r} unknown; allowed: {', '.join(sorted(METHODS))}")
  module, fn = METHODS[method].split(":")
  return getattr(importlib.import_module(module), fn)(config, stream)
