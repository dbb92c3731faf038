"""Reading a method's own part of an experiment config (``config.<part>.<key>``).

Each learner reads one sub-config named after it (``config.supsup``,
``config.trained_net``, ``config.abatche``, ``config.packnet``,
``config.hopfield``) and validates it when built, so a bad value fails with a
one-line error naming the key before anything is traced. A missing part or
key takes the learner's default, so the adapters also work on hand-made
configs. The method keys used to sit at the top level of the config; a
config still setting an old name is refused with its new one rather than
silently ignored.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

# Former top-level names of the methods' keys -> their place now.
RENAMED = {
    "transfer": "supsup.transfer",
    "keep_scores": "supsup.keep_scores",
    "trained_init": "trained_net.init",
    "weight_learning_rate": "trained_net.weight_learning_rate",
    "adapt_learning_rate": "trained_net.adapt_learning_rate",
    "adapt_optimizer": "trained_net.adapt_optimizer",
    "abatche_inference": "abatche.inference",
    "packnet_prune_fraction": "packnet.prune_fraction",
    "packnet_prune_at": "packnet.prune_at",
    "hopfield_rule": "hopfield.rule",
    "recovery_gamma": "hopfield.gamma",
    "recovery_learning_rate": "hopfield.learning_rate",
    "recovery_momentum": "hopfield.momentum",
    "recovery_weight_decay": "hopfield.weight_decay",
}


def part(config: Any, name: str, defaults: Mapping[str, Any]) -> dict:
  """``config.<name>`` as a plain dict over the keys of ``defaults``.

  Args:
    config: an experiment config (``ml_collections.ConfigDict`` or mapping).
    name: the part's name, e.g. ``"packnet"``.
    defaults: every key the part may hold, with the value used when absent.

  Returns:
    ``{key: value}`` for every key of ``defaults``.

  Raises:
    ValueError (one line): the part holds a key not in ``defaults``, or the
    config still sets one of this part's keys under its former top-level name.
  """
  for old, new in RENAMED.items():
    if new.split(".")[0] == name and old in config:
      raise ValueError(f"config.{old} is now config.{new}")
  given = config.get(name) or {}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"config.{name} has no key {unknown[0]!r}; allowed: "
                     f"{', '.join(sorted(defaults))}")
  return {k: given.get(k, v) for k, v in defaults.items()}


def choice(key: str, value: Any, allowed: Sequence[str]) -> str:
  """``value`` if it is one of ``allowed``, else a one-line ValueError naming ``key``."""
  if value not in allowed:
    raise ValueError(f"{key} {value!r} unknown; allowed: {', '.join(allowed)}")
  return value


def flag(key: str, value: Any) -> bool:
  """``value`` if it is a bool, else a one-line ValueError naming ``key``."""
  if not isinstance(value, bool):
    raise ValueError(f"{key} must be True or False, got {value!r}")
  return value


def number(key: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> float:
  """``value`` as a float if it is a finite number in the given range.

  The range is ``[low, high]``, each end open when ``low_open`` /
  ``high_open``; the error names ``key`` and the range.
  """
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) \
      and math.isfinite(value)
  if ok:
    ok = (value > low if low_open else value >= low) and \
         (value < high if high_open else value <= high)
  if not ok:
    left = "(" if low_open or math.isinf(low) else "["
    right = ")" if high_open or math.isinf(high) else "]"
    raise ValueError(f"{key} must be a number in {left}{low:g}, {high:g}{right}, "
                     f"got {value!r}")
  return float(value)


def check_learner_keys(config: Any) -> None:
  """The top-level keys every learner built from a config reads (model, weight
  init, optimizer and its numbers), checked before any data is loaded."""
  # pylint: disable=import-outside-toplevel
  from supsup_jax import models
  from supsup_jax import optim
  from supsup_jax import weights as weights_lib
  # pylint: enable=import-outside-toplevel
  choice("config.model", config.get("model"), tuple(models.MODELS))
  choice("config.init", config.get("init"), tuple(weights_lib.INITS))
  number("config.learning_rate", config.get("learning_rate"), low=0, low_open=True)
  for key in ("momentum", "weight_decay"):
    number(f"config.{key}", config.get(key, 0.0), low=0)
  optim.make_optimizer(config.get("optimizer"), config.get("learning_rate"),
                       schedule=config.get("schedule", "constant"))  # validates names
