"""A Hopfield network as a fixed-size store of binary masks (HopSupSup).

HopSupSup (Wortsman, Ramanujan et al., "Supermasks in Superposition", NeurIPS
2020, arXiv:2006.14769, section 4.4 / appendix) keeps the masks of all tasks
in one d x d matrix instead of a bank that grows by a mask per task. A mask
m in {0, 1}^d is stored as the pattern x = 2m - 1 in {-1, 1}^d:

* Hebbian rule (the paper's text): ``W += (x x^T - I) / d``.
* Storkey rule (the authors' code, default; Storkey 1997, "Increasing the
  capacity of a Hopfield network without sacrificing functionality"):
  ``h = W x``, ``W += (x x^T - I - x h^T - h x^T) / d``.

A stored pattern is a local minimum of the energy ``E(s) = -1/2 s^T W s``
(and a fixed point of ``s -> sign(W s)``) while the store is under capacity.
Storage is d^2 float32 whatever the number of tasks; the bit bank needs
``ceil(d / 8)`` bytes per task, so the store only pays off past ``32 d`` tasks
(it is a fixed budget, not a compression of a handful of masks).

The store is a pytree (:class:`HopfieldStore`); every function is pure and
jittable. It also keeps the running sum of the stored patterns and their
count: recovery starts from their mean.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

RULES = ("storkey", "hebbian")


class HopfieldStore(NamedTuple):
  """W float32 [d, d]; x_sum float32 [d] (sum of stored x); count int32 []."""
  W: jax.Array
  x_sum: jax.Array
  count: jax.Array

  @property
  def d(self) -> int:
    return int(self.W.shape[-1])


def init_store(d: int) -> HopfieldStore:
  """An empty store for masks of length ``d``."""
  if not isinstance(d, int) or d < 1:
    raise ValueError(f"Hopfield store size d must be an int >= 1, got {d!r}")
  return HopfieldStore(jnp.zeros((d, d), jnp.float32), jnp.zeros((d,), jnp.float32),
                       jnp.zeros((), jnp.int32))


def _check_rule(rule: str) -> None:
  if rule not in RULES:
    raise ValueError(f"Hopfield rule {rule!r} unknown; allowed: {', '.join(RULES)}")


def pattern(mask: jax.Array) -> jax.Array:
  """{0,1} (or bool) mask [..., d] -> float32 pattern x = 2m - 1 in {-1, 1}."""
  return 2.0 * jnp.asarray(mask, jnp.float32) - 1.0


def store_mask(store: HopfieldStore, mask: jax.Array, rule: str = "storkey") -> HopfieldStore:
  """Adds one mask [d] ({0,1} or bool) to the store with ``rule``."""
  _check_rule(rule)
  if mask.shape != (store.d,):
    raise ValueError(f"mask shape {tuple(mask.shape)} does not fit a store of d={store.d}; "
                     f"pass a mask of shape ({store.d},)")
  d = store.d
  x = pattern(mask)
  outer = jnp.outer(x, x) - jnp.eye(d, dtype=jnp.float32)
  if rule == "storkey":
    h = store.W @ x
    xh = jnp.outer(x, h)
    outer = outer - xh - xh.T
  return HopfieldStore(store.W + outer / d, store.x_sum + x, store.count + 1)


def store_masks(store: HopfieldStore, masks: jax.Array, rule: str = "storkey") -> HopfieldStore:
  """Adds masks [k, d] in order (a ``fori_loop``; jit it for many masks)."""
  _check_rule(rule)
  if masks.ndim != 2 or masks.shape[1] != store.d:
    raise ValueError(f"masks shape {tuple(masks.shape)} does not fit a store of d={store.d}; "
                     f"pass masks of shape (k, {store.d})")
  return jax.lax.fori_loop(0, masks.shape[0],
                           lambda i, st: store_mask(st, masks[i], rule), store)


def energy(W: jax.Array, s: jax.Array) -> jax.Array:
  """E(s) = -1/2 s^T W s for s [d] (any reals; patterns are +-1)."""
  return -0.5 * s @ (W @ s)


def start_state(store: HopfieldStore) -> jax.Array:
  """Recovery start: the mean of the stored patterns, float32 [d].

  Raises a ValueError when the store is known (not traced) to be empty.
  """
  if not isinstance(store.count, jax.core.Tracer) and int(store.count) == 0:
    raise ValueError("Hopfield store is empty (count=0): store at least one mask "
                     "before recovering")
  return store.x_sum / jnp.maximum(store.count, 1).astype(jnp.float32)


def recall_sign(W: jax.Array, s: jax.Array) -> jax.Array:
  """One synchronous update ``sign(W s)`` (ties -> +1), float32 [d]."""
  return jnp.where(W @ s >= 0, 1.0, -1.0).astype(jnp.float32)


def store_bytes(store: HopfieldStore) -> int:
  """Bytes of the store: W is d^2 float32 (x_sum and count are bookkeeping)."""
  return int(store.W.size * store.W.dtype.itemsize)


def bit_bank_bytes(d: int, num_masks: int) -> int:
  """Bytes the bit-packed bank needs for ``num_masks`` masks of length d."""
  return int(num_masks * math.ceil(d / 8))
