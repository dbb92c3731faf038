"""Any pytree of arrays to and from a flat dict that checkpoints can hold.

Checkpoint formats want plain arrays under string keys; learners' memory and
task state are arbitrary pytrees (dicts, flax dataclasses, optax states,
typed PRNG keys). :func:`to_saveable` flattens a tree into ``{"00000": array,
...}`` in ``jax.tree`` order (typed keys as their raw key data) and
:func:`from_saveable` rebuilds it on the structure of a template made the
same way (e.g. by ``learner.init_memory()``): shapes may differ from the
template's (a bank that grew), the structure may not.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree: Any) -> dict[str, np.ndarray]:
  """``{"00000": leaf, ...}`` as NumPy arrays (typed keys as key data)."""
  leaves = jax.tree.leaves(tree)
  return {f"{i:05d}": np.asarray(jax.random.key_data(x) if _is_key(x) else x)
          for i, x in enumerate(leaves)}


def from_saveable(saved: Mapping[str, Any], template: Any) -> Any:
  """The tree of ``template``'s structure holding the ``saved`` leaves (with
  the template leaves' dtypes; typed keys rewrapped)."""
  leaves, treedef = jax.tree.flatten(template)
  if len(saved) != len(leaves):
    raise ValueError(f"checkpoint holds {len(saved)} arrays where this run's state has "
                     f"{len(leaves)}: it was written by another version or config; "
                     "delete the checkpoints folder to start over")
  out = []
  for i, t in enumerate(leaves):
    value = saved[f"{i:05d}"]
    if _is_key(t):
      out.append(jax.random.wrap_key_data(jnp.asarray(value),
                                          impl=jax.random.key_impl(t)))
    else:
      out.append(jnp.asarray(value, dtype=jnp.result_type(t)))
  return jax.tree.unflatten(treedef, out)
