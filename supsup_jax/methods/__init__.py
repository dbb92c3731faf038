"""Continual learners, one module each, chosen by ``config.method``.

Each entry maps a method name to ``"module:function"`` where
``function(config, stream) -> supsup_jax.learner.Learner`` builds the learner
for an experiment config and its data stream. Modules are imported only when
chosen.

Each module's ``make(...)`` builds its learner from keyword arguments alone (a
Flax model, initial weights or a seed, an optax optimizer, sizes and the
method's options), e.g. in a notebook; ``from_config`` only reads the config's
common keys and the method's own sub-config (``config.supsup``,
``config.trained_net``, ``config.abatche``, ``config.packnet``,
``config.hopfield``) and calls ``make``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from supsup_jax.learner import Learner

#: Method names (``config.method``) and their ``module:function`` builders.
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


def check_method(method: str) -> None:
  """One-line ValueError unless ``method`` is registered or "module:function"."""
  if method in METHODS or (isinstance(method, str) and method.count(":") == 1):
    return
  raise ValueError(f"config.method {method!r} unknown; allowed: {', '.join(sorted(METHODS))}, "
                   "or 'package.module:function' for your own learner")


def _module(method: str):
  module = METHODS.get(method, method).split(":")[0]
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ValueError(f"config.method {method!r}: cannot import {module} ({e})") from None


def check_config(method: str, config: Any) -> None:
  """The method's own check of its config part (its module's
  ``check_config(config)``, if it has one), before any data is loaded."""
  check_method(method)
  from supsup_jax import pretrained  # pylint: disable=import-outside-toplevel
  pretrained.check_config(config, method)  # config.weights_from*: only mask learners
  check = getattr(_module(method), "check_config", None)
  if check is not None:
    check(config)


def make_learner(method: str, config: Any, stream: Any):
  """The learner ``method`` for ``config`` over ``stream``.

  ``method`` is a registered name or ``"package.module:function"`` naming
  your own ``function(config, stream) -> Learner`` (no registration needed).
  """
  check_method(method)
  module, fn = METHODS.get(method, method).split(":")
  try:
    factory = getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"config.method {method!r}: cannot load {module}:{fn} ({e})") from None
  what = ("a learner factory must be a function(config, stream) -> "
          "supsup_jax.learner.Learner")
  try:
    inspect.signature(factory).bind(config, stream)
  except (TypeError, ValueError):
    raise ValueError(f"config.method {method!r}: {module}:{fn} does not take (config, "
                     f"stream); {what}") from None
  learner = factory(config, stream)
  if not isinstance(learner, Learner):
    raise ValueError(f"config.method {method!r}: {module}:{fn} returned "
                     f"{type(learner).__name__}, not a Learner; {what}")
  return learner
