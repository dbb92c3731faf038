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
    "lower_bound": "supsup_jax.methods.lower_bound:from_config",
    "upper_bound": "supsup_jax.methods.upper_bound:from_config",
    "separate_heads": "supsup_jax.methods.separate_heads:from_config",
    "separate_heads_randw": "supsup_jax.methods.separate_heads:from_config_randw",
    "batche": "supsup_jax.methods.batche:from_config",
    "batche_randw": "supsup_jax.methods.batche:from_config_randw",
    "abatche": "supsup_jax.methods.batche:from_config_abatche",
    "psp": "supsup_jax.methods.psp:from_config",
    "packnet": "supsup_jax.methods.packnet:from_config",
}


def make_learner(method: str, config: Any, stream: Any):
  """The learner ``method`` for ``config`` over ``stream`` (one-line errors)."""
  if method not in METHODS:
    raise ValueError(f"config.method {method!r} unknown; allowed: {', '.join(sorted(METHODS))}")
  module, fn = METHODS[method].split(":")
  return getattr(importlib.import_module(module), fn)(config, stream)
