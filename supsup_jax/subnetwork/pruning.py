"""Magnitude pruning and rewinding over kernel trees (Frankle & Carbin 2019).

Trees here are nested dicts of kernels (the maskable leaves of a Flax params
tree, :func:`supsup_jax.tree.maskable_subtree`). Masks are float32 0/1 arrays
of the same structure. Pruning runs on the host in NumPy: it happens once per
round, must keep an exact count, and breaks ties deterministically (lower flat
index first, as :func:`supsup_jax.masks.topk_mask` does).

Lottery ticket hypothesis: Frankle & Carbin, ICLR 2019, arXiv 1803.03635.
Late rewinding: Frankle, Dziugaite, Roy & Carbin 2019, arXiv 1903.01611.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import tree as tree_lib


def check_rate(rate, name: str = "prune rate") -> float:
  """A pruning rate (fraction of the remaining weights removed) in [0, 1)."""
  try:
    value = float(rate)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}") from None
  if math.isnan(value) or not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
  return value


def _natural_key(path: tree_lib.Path):
  # "Dense_10" after "Dense_2": split digits out so layer order is numeric.
  return [int(t) if t.isdigit() else t
          for t in re.split(r"(\d+)", tree_lib.path_str(path))]


def layer_order(kernels: Mapping) -> list[tree_lib.Path]:
  """Kernel paths in layer order (Flax names layers ``Dense_0, Dense_1, ...``)."""
  return sorted(tree_lib.flatten(kernels), key=_natural_key)


def output_layer(kernels: Mapping) -> tree_lib.Path:
  """The last layer in layer order (the classifier)."""
  return layer_order(kernels)[-1]


def layer_rates(kernels: Mapping, rate: float, output_rate_factor: float = 0.5) -> dict:
  """Per-layer pruning rates: ``rate`` everywhere, ``rate * output_rate_factor``
  for the output layer (Frankle & Carbin prune LeNet's output layer at half
  the rate). Returns {path: rate}."""
  rate = check_rate(rate)
  out = output_layer(kernels)
  return {p: check_rate(rate * output_rate_factor if p == out else rate)
          for p in layer_order(kernels)}


def ones_like(kernels: Mapping) -> dict:
  return jax.tree.map(lambda w: jnp.ones(jnp.shape(w), jnp.float32), dict(kernels))


def _keep_top(magnitude: np.ndarray, alive: np.ndarray, n_keep: int) -> np.ndarray:
  """Bool mask keeping the n_keep largest ``magnitude`` among ``alive``
  (ties: lower flat index first)."""
  flat = np.where(alive.reshape(-1), magnitude.reshape(-1).astype(np.float64), -np.inf)
  order = np.argsort(-flat, kind="stable")
  keep = np.zeros(flat.size, bool)
  keep[order[:n_keep]] = True
  return keep.reshape(magnitude.shape)


def n_after_prune(n_alive: int, rate: float) -> int:
  """Survivors of pruning ``rate`` of ``n_alive`` weights: n - round(rate * n)
  (halves rounded up), at least one."""
  return max(1, n_alive - int(math.floor(rate * n_alive + 0.5)))


def magnitude_prune(values: Mapping, mask: Mapping, rates, *, scope: str = "layer"
                    ) -> dict:
  """Prunes the smallest-``|value|`` weights still in ``mask``.

  Args:
    values: kernel tree (e.g. trained weights), any float dtype.
    mask: 0/1 tree of the same structure: the weights still alive.
    rates: {path: rate} (see :func:`layer_rates`) or one float for all layers.
    scope: "layer": each layer loses ``n_alive - n_after_prune(n_alive, rate)``
      weights; "global": one threshold over all layers (with one float rate),
      the layers' sizes then follow the magnitudes.
  Returns:
    The new 0/1 float32 mask tree (a subset of ``mask``).
  """
  if scope not in ("layer", "global"):
    raise ValueError(f"prune scope must be 'layer' or 'global', got {scope!r}")
  flat_v = {p: np.asarray(v) for p, v in tree_lib.flatten(values).items()}
  flat_m = {p: np.asarray(m) > 0 for p, m in tree_lib.flatten(mask).items()}
  if set(flat_v) != set(flat_m):
    raise ValueError("values and mask trees have different leaves")
  if scope == "global":
    if isinstance(rates, Mapping):
      raise ValueError("global pruning takes one rate, not per-layer rates")
    rate = check_rate(rates)
    paths = layer_order(values)
    mags = np.concatenate([np.abs(flat_v[p]).reshape(-1) for p in paths])
    alive = np.concatenate([flat_m[p].reshape(-1) for p in paths])
    keep = _keep_top(mags, alive, n_after_prune(int(alive.sum()), rate))
    out, start = {}, 0
    for p in paths:
      n = flat_v[p].size
      out[p] = keep[start:start + n].reshape(flat_v[p].shape).astype(np.float32)
      start += n
    return jax.tree.map(jnp.asarray, tree_lib.unflatten(out))
  if not isinstance(rates, Mapping):
    rates = {p: check_rate(rates) for p in flat_v}
  out = {}
  for p, v in flat_v.items():
    n_alive = int(flat_m[p].sum())
    keep = _keep_top(np.abs(v), flat_m[p], n_after_prune(n_alive, check_rate(rates[p])))
    out[p] = keep.astype(np.float32)
  return jax.tree.map(jnp.asarray, tree_lib.unflatten(out))


def top_fraction_mask(values: Mapping, kept_fraction: Mapping | float) -> dict:
  """One-shot mask keeping ``kept_fraction`` of each layer by ``|value|``
  (``num_kept``: round half up, at least one)."""
  flat_v = tree_lib.flatten(values)
  out = {}
  for p, v in flat_v.items():
    f = kept_fraction[p] if isinstance(kept_fraction, Mapping) else kept_fraction
    n_keep = max(1, int(math.floor(float(f) * np.size(v) + 0.5)))
    out[p] = _keep_top(np.abs(np.asarray(v)), np.ones(np.shape(v), bool),
                       n_keep).astype(np.float32)
  return jax.tree.map(jnp.asarray, tree_lib.unflatten(out))


def rewind(initial: Mapping, mask: Mapping) -> dict:
  """Survivors take their values from ``initial`` (θ0, or θ_k for late
  rewinding) exactly; pruned weights are zero."""
  return jax.tree.map(lambda w0, m: jnp.where(m > 0, w0, jnp.zeros_like(w0)),
                      dict(initial), dict(mask))


def kept_fraction(mask: Mapping) -> float:
  """Overall fraction of ones over all layers (count-weighted)."""
  leaves = jax.tree.leaves(dict(mask))
  return float(sum(float(jnp.sum(m > 0)) for m in leaves) /
               sum(int(np.size(m)) for m in leaves))


def hidden_schedule(kept_fractions, rounds: int = 0, prune_rate: float = 0.2) -> list[float]:
  """Kept fraction of the hidden layers after each round, starting at 1.

  ``rounds == 0``: one round per requested kept fraction below 1 (the run
  reports accuracy exactly at the requested sparsities). ``rounds > 0``: the
  paper's geometric schedule, (1 - prune_rate) ** r for r = 0..rounds.
  """
  if rounds:
    check_rate(prune_rate)
    return [(1.0 - prune_rate) ** r for r in range(int(rounds) + 1)]
  fr = sorted({float(f) for f in kept_fractions if float(f) < 1.0}, reverse=True)
  return [1.0] + fr
