"""Any pytree of arrays to and from a nested dict that checkpoints can hold.

Checkpoint formats want plain arrays under string keys; learners' memory and
task state are arbitrary pytrees (dicts, flax dataclasses, optax states,
typed PRNG keys). :func:`to_saveable` turns a tree into nested dicts keyed by
the leaves' tree paths (``{"bank": {"rows": array, ...}, "weights":
{"params": {"Dense_0": {"kernel": array}}}}``; sequence items and dataclass
fields by index and name; typed keys as their raw key data), so a checkpoint
can be read by name. :func:`from_saveable` rebuilds the tree on the structure
of a template made the same way (e.g. by ``learner.init_memory()``): shapes
may differ from the template's (a bank that grew), the leaves' paths may not.
Checkpoints written before names (flat ``{"00000": leaf, ...}`` in
``jax.tree`` order) are still read.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

ROOT = "value"  # the name of a tree that is a single array


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _entry_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def leaf_names(path) -> tuple[str, ...]:
  """The names of a ``jax.tree_util`` key path (``(ROOT,)`` for the root)."""
  return tuple(_entry_name(e) for e in path) or (ROOT,)


def to_saveable(tree: Any) -> dict[str, Any]:
  """Nested dicts of NumPy arrays keyed by the leaves' tree paths."""
  out: dict[str, Any] = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    *parents, name = leaf_names(path)
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = np.asarray(jax.random.key_data(x) if _is_key(x) else x)
  return out


def _is_positional(saved: Mapping) -> bool:
  return bool(saved) and all(isinstance(k, str) and len(k) == 5 and k.isdigit()
                             and not isinstance(v, Mapping) for k, v in saved.items())


def _restore_leaf(value, template_leaf):
  if _is_key(template_leaf):
    return jax.random.wrap_key_data(jnp.asarray(value), impl=jax.random.key_impl(template_leaf))
  return jnp.asarray(value, dtype=jnp.result_type(template_leaf))


def _count(saved: Mapping) -> int:
  return sum(_count(v) if isinstance(v, Mapping) else 1 for v in saved.values())


def from_saveable(saved: Mapping[str, Any], template: Any) -> Any:
  """The tree of ``template``'s structure holding the ``saved`` leaves (with
  the template leaves' dtypes; typed keys rewrapped)."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
  start_over = ("it was written by another version or config; delete the "
                "checkpoints folder to start over")
  if _is_positional(saved):  # written before leaves were named
    if len(saved) != len(with_path):
      raise ValueError(f"checkpoint holds {len(saved)} arrays where this run's state has "
                       f"{len(with_path)}: {start_over}")
    return jax.tree.unflatten(treedef, [_restore_leaf(saved[f"{i:05d}"], t)
                                        for i, (_, t) in enumerate(with_path)])
  out = []
  for path, t in with_path:
    node: Any = saved
    names = leaf_names(path)
    for name in names:
      if not isinstance(node, Mapping) or name not in node:
        raise ValueError(f"checkpoint has no array {'/'.join(names)!r}: {start_over}")
      node = node[name]
    if isinstance(node, Mapping):
      raise ValueError(f"checkpoint holds a subtree at {'/'.join(names)!r} where this run "
                       f"has an array: {start_over}")
    out.append(_restore_leaf(node, t))
  if _count(saved) != len(out):
    raise ValueError(f"checkpoint holds {_count(saved)} arrays where this run's state has "
                     f"{len(out)}: {start_over}")
  return jax.tree.unflatten(treedef, out)
