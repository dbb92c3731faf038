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

:data:`VARIANTS` names a registered method with config overrides (e.g.
``supsup_transfer`` = ``supsup`` with ``config.supsup.transfer=True``), so that
a comparison can run and label it as an entry of its own
(``launch.compare --methods=supsup,supsup_transfer``); the config a variant
runs is exactly the one ``launch.main`` runs with the same overrides given as
``--config.<key>=<value>`` flags.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Mapping

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


@dataclasses.dataclass(frozen=True)
class Variant:
  """A registered method run with config overrides (dotted keys, e.g.
  ``"supsup.transfer"``); what makes it a variant must differ from the
  method's defaults."""
  method: str
  overrides: Mapping[str, Any]
  description: str = ""


#: Named variants of registered methods, each a method plus config overrides.
VARIANTS: dict[str, Variant] = {
    # Wortsman et al. 2020, Section 4.1: a new task's scores start from the
    # running mean of the learned ones ("Transfer"; the authors' trainers/reinit.py).
    "supsup_transfer": Variant("supsup", {"supsup.transfer": True},
                               "SupSup-Transfer: scores start from the mean of the "
                               "finished tasks' scores"),
}


def entry_names() -> list[str]:
  """Every name a comparison accepts: the registered methods and variants."""
  return sorted({*METHODS, *VARIANTS})


def _set_dotted(config, key: str, value, what: str) -> None:
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    if part not in node:
      raise ValueError(f"{what}: the config has no key {key!r} (no {part!r})")
    node = node[part]
  if leaf not in node:
    raise ValueError(f"{what}: the config has no key {key!r}")
  node[leaf] = value


def _get_dotted(tree: Mapping, key: str, missing=None):
  node = tree
  for part in key.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return missing
    node = node[part]
  return node


def entry_config(name: str, config):
  """The config entry ``name`` (a method or a variant) runs: a copy of
  ``config`` with ``method`` set and the variant's overrides applied (the
  variant's values win over the caller's); one-line ValueError for an
  unknown name or an override key the config lacks."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  if name in VARIANTS:
    variant = VARIANTS[name]
    method, overrides = variant.method, variant.overrides
  elif name in METHODS:
    method, overrides = name, {}
  else:
    raise ValueError(f"unknown method {name!r}; allowed: {', '.join(entry_names())}")
  out = ml_collections.ConfigDict(config.to_dict())
  out.method = method
  for key, value in overrides.items():
    _set_dotted(out, key, value, f"method variant {name!r} (= {method} with {key}={value!r})")
  return out


def entry_name(method: str, config: Mapping) -> str:
  """The name of the entry a run of ``method`` with (recorded) ``config`` is:
  the variant of ``method`` whose overrides the config holds (the one with
  most overrides if several do), else ``method``."""
  unset = object()
  held = [(len(v.overrides), n) for n, v in VARIANTS.items()
          if v.method == method and v.overrides
          and all(_get_dotted(config or {}, k, unset) == val for k, val in v.overrides.items())]
  return max(held)[1] if held else method


def check_method(method: str) -> None:
  """One-line ValueError unless ``method`` is registered or "module:function"."""
  if method in METHODS or (isinstance(method, str) and method.count(":") == 1):
    return
  if method in VARIANTS:
    v = VARIANTS[method]
    flags = " ".join(f"--config.{k}={val}" for k, val in v.overrides.items())
    raise ValueError(f"config.method {method!r} is a named variant (for launch.compare "
                     f"--methods); one run of it is --config.method={v.method} {flags}")
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
