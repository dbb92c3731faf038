"""Optimizers with PyTorch's conventions, and learning-rate schedules."""
from __future__ import annotations

import optax

OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "cosine")


def make_schedule(learning_rate: float, schedule: str = "constant", *,
                  total_steps: int = 1, warmup_steps: int = 0) -> optax.Schedule:
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
  if schedule == "constant":
    if warmup_steps:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, learning_rate, warmup_steps),
           optax.constant_schedule(learning_rate)], [warmup_steps])
    return optax.constant_schedule(learning_rate)
  if not warmup_steps:
    # The same values as the warm-up form with 0 warm-up steps, without its
    # zero-length linear segment (optax logs a "constant schedule" warning
    # for it that reads as if the cosine were lost).
    return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1), 0.0)
  return optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)


def make_optimizer(name: str = "rmsprop", learning_rate: float = 1e-4, *,
                   momentum: float = 0.9, weight_decay: float = 0.0,
                   schedule: str = "constant", total_steps: int = 1,
                   warmup_steps: int = 0) -> optax.GradientTransformation:
  """Optimizer over the scores, with PyTorch's conventions.

  Weight decay is L2 added to the gradient before the update (PyTorch's
  ``weight_decay``); RMSprop uses decay 0.99 and eps 1e-8 outside the sqrt.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
  lr = make_schedule(learning_rate, schedule, total_steps=total_steps,
                     warmup_steps=warmup_steps)
  if name == "rmsprop":
    base = optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)
  elif name == "adam":
    base = optax.adam(lr)
  else:
    base = optax.sgd(lr, momentum=momentum or None)
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), base)
  return base


