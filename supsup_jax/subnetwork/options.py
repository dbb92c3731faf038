"""Checks of the studies' config values, each failing with one line that names
the key (``config.lottery_ticket.prune_rate``), the bad value and what is allowed.

A study validates its whole part of the config with these before any data is
loaded or anything is trained.
"""
from __future__ import annotations

import difflib
import math
from typing import Iterable, Mapping

from supsup_jax import learner as learner_lib


def _name(prefix: str, key: str) -> str:
  return f"config.{prefix + '.' if prefix else ''}{key}"


def _get(cfg, key: str, prefix: str):
  if key not in cfg:
    raise ValueError(f"{_name(prefix, key)} is missing; this study needs it")
  return cfg.get(key)


def section(config, name: str, moved: Mapping[str, str] | None = None):
  """``config.<name>`` (a sub-config); one line when it is missing, naming the
  flat keys it replaced when the config still has them (``moved``: old -> new)."""
  value = config.get(name)
  if value is None or not hasattr(value, "get"):
    old = [k for k in (moved or {}) if k in config]
    hint = (f"; this config has the old flat keys {', '.join(old)}: "
            + ", ".join(f"{k} -> config.{moved[k]}" for k in old) if old else "")
    raise ValueError(f"config.{name} (a sub-config) is missing{hint}")
  return value


def refuse_moved(config, moved: Mapping[str, str]) -> None:
  """One line for a flat key that moved into a sub-config (a hand-built config)."""
  old = [k for k in moved if k in config]
  if old:
    raise ValueError("config keys moved into sub-configs: " + ", ".join(
        f"config.{k} -> config.{moved[k]}" for k in old))


def known_keys(cfg, prefix: str, allowed: Iterable[str]) -> None:
  """Refuses keys of ``cfg`` nothing reads (did-you-mean from ``allowed``)."""
  allowed = list(allowed)
  for key in cfg.keys():
    if key not in allowed:
      near = difflib.get_close_matches(key, allowed, n=1)
      raise ValueError(f"{_name(prefix, key)} is not read by this study"
                       + (f"; did you mean {_name(prefix, near[0])}?" if near
                          else f"; it reads: {', '.join(sorted(allowed))}"))


def number(cfg, key: str, prefix: str = "", *, low: float | None = None,
           high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> float:
  """A finite real in [low, high] (``*_open``: the bound itself excluded)."""
  value = _get(cfg, key, prefix)
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value))
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    if low is not None and high is not None:
      rng = (f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
    elif low is not None:
      rng = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
      rng = f" {'<' if high_open else '<='} {high:g}"
    else:
      rng = ""
    raise ValueError(f"{_name(prefix, key)} must be a finite number{rng}, got {value!r}")
  return float(value)


def integer(cfg, key: str, prefix: str = "", *, low: int | None = None,
            high: int | None = None, why: str = "") -> int:
  """An int in [low, high]."""
  value = _get(cfg, key, prefix)
  ok = isinstance(value, int) and not isinstance(value, bool)
  if ok and low is not None:
    ok = value >= low
  if ok and high is not None:
    ok = value <= high
  if not ok:
    rng = (f" in {low}..{high}" if low is not None and high is not None
           else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
    raise ValueError(f"{_name(prefix, key)} must be an int{rng}{why}, got {value!r}")
  return value


def choice(cfg, key: str, allowed: Iterable[str], prefix: str = "") -> str:
  allowed = tuple(allowed)
  value = _get(cfg, key, prefix)
  if value not in allowed:
    raise ValueError(f"{_name(prefix, key)} {value!r} unknown; allowed: {', '.join(allowed)}")
  return value


def comma_list(cfg, key: str, allowed: Iterable[str], prefix: str = "") -> list[str]:
  """A non-empty comma-separated list of distinct names from ``allowed``."""
  allowed = tuple(allowed)
  value = _get(cfg, key, prefix)
  items = [v.strip() for v in str(value).split(",") if v.strip()] if isinstance(value, str) else []
  if not items:
    raise ValueError(f"{_name(prefix, key)} must be a comma list of {', '.join(allowed)}, "
                     f"got {value!r}")
  for v in items:
    if v not in allowed:
      raise ValueError(f"{_name(prefix, key)} entry {v!r} unknown; allowed: {', '.join(allowed)}")
  dup = sorted({v for v in items if items.count(v) > 1})
  if dup:
    raise ValueError(f"{_name(prefix, key)} lists {', '.join(dup)} twice")
  return items


def boolean(cfg, key: str, prefix: str = "") -> bool:
  value = _get(cfg, key, prefix)
  if not isinstance(value, bool):
    raise ValueError(f"{_name(prefix, key)} must be True or False, got {value!r}")
  return value


def fractions(cfg, key: str, prefix: str = "") -> tuple[float, ...]:
  """A non-empty sequence of numbers in (0, 1]."""
  value = _get(cfg, key, prefix)
  if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not len(value):
    raise ValueError(f"{_name(prefix, key)} must be a non-empty list of numbers in (0, 1], "
                     f"got {value!r}")
  out = []
  for f in value:
    ok = isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f)
    if not ok or not 0.0 < f <= 1.0:
      raise ValueError(f"{_name(prefix, key)} entries must be in (0, 1], got {f!r}")
    out.append(float(f))
  return tuple(out)


# Steps of one training: the one formula of every run.
train_steps = learner_lib.train_steps


def iterations_or_epochs(config) -> None:
  """``config.iterations`` (int >= 0) and ``config.epochs`` (>= 0): exactly one positive."""
  its = integer(config, "iterations", low=0)
  eps = number(config, "epochs", low=0) if "epochs" in config else 0.0
  if (its > 0) == (eps > 0):
    raise ValueError("set exactly one of config.iterations and config.epochs to a positive "
                     f"number (steps per training), got iterations={its!r}, epochs={eps!r}")


def weight_training(config) -> None:
  """The top-level keys of a weight training: model, init, seed, optimizer,
  learning_rate, momentum, weight_decay, batch_size."""
  from supsup_jax import optim  # pylint: disable=import-outside-toplevel
  from supsup_jax import weights as weights_lib  # pylint: disable=import-outside-toplevel
  model_and_seed(config)
  choice(config, "init", weights_lib.INITS)
  choice(config, "optimizer", optim.OPTIMIZERS)
  number(config, "learning_rate", low=0.0, low_open=True)
  number(config, "momentum", low=0.0, high=1.0)
  number(config, "weight_decay", low=0.0)
  integer(config, "batch_size", low=1)


def model_and_seed(config) -> None:
  from supsup_jax import models  # pylint: disable=import-outside-toplevel
  choice(config, "model", tuple(models.MODELS))
  opts = config.get("model_options")
  if opts is not None and not hasattr(opts, "keys"):
    raise ValueError(f"config.model_options must be a dict of the model's options, got {opts!r}")
  integer(config, "seed", low=0)
