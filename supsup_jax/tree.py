"""Path-based views of Flax parameter trees.

Scores and masks cover only the *maskable* leaves of a parameter tree (kernels
of dense and conv layers). They are nested dicts with exactly the structure of
those leaves, so ``jax.tree.map`` works on them directly and they can be merged
back into a full parameter tree by path.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
from flax import traverse_util
from flax.core import meta

Params = Mapping[str, Any]
Path = tuple[str, ...]
# predicate(path, leaf) -> bool
MaskablePredicate = Callable[[Path, Any], bool]


def default_maskable(path: Path, leaf: Any) -> bool:
  """Kernels of dense and conv layers (2-D or more); never biases or norms."""
  return path[-1] == "kernel" and getattr(leaf, "ndim", 0) >= 2


def unbox(params: Params) -> Params:
  """Strips Flax partitioning boxes, if any."""
  return meta.unbox(params)


def check_tree(tree: Any, what: str = "tree") -> None:
  """One-line ValueError unless ``tree`` is a params-like nested mapping."""
  if not isinstance(tree, Mapping):
    raise ValueError(f"{what} must be a params tree (nested dict of arrays, e.g. "
                     f"variables['params']), got {type(tree).__name__}")


def flatten(tree: Params, what: str = "tree") -> dict[Path, Any]:
  """{path tuple: leaf} of a nested mapping (ValueError if it is not one).
  A Flax NNX ``State`` (from ``nnx.split``) is read as its pure dict."""
  if hasattr(tree, "to_pure_dict") and not isinstance(tree, dict):
    tree = tree.to_pure_dict()
  check_tree(tree, what)
  return traverse_util.flatten_dict(unbox(dict(tree)))


def unflatten(flat: Mapping[Path, Any]) -> dict:
  return traverse_util.unflatten_dict(dict(flat))


def maskable_paths(params: Params,
                   is_maskable: MaskablePredicate = default_maskable) -> list[Path]:
  """Sorted paths of the maskable leaves of ``params``."""
  return sorted(p for p, v in flatten(params).items() if is_maskable(p, v))


def maskable_subtree(params: Params,
                     is_maskable: MaskablePredicate = default_maskable) -> dict:
  """The nested dict of only the maskable leaves (the shape of scores/masks)."""
  flat = flatten(params)
  return unflatten({p: flat[p] for p in maskable_paths(params, is_maskable)})


def path_str(path: Path) -> str:
  return "/".join(str(k) for k in path)


def check_same_paths(reference: Params, other: Params, what: str) -> None:
  """Raises ValueError unless ``other`` covers exactly the leaves of ``reference``
  with the same shapes. Runs on shapes only (no tracing)."""
  ref = flatten(reference)
  got = flatten(other, what)
  missing = sorted(set(ref) - set(got))
  extra = sorted(set(got) - set(ref))
  if missing or extra:
    raise ValueError(
        f"{what} does not match the maskable weights: missing "
        f"{[path_str(p) for p in missing]}, unexpected "
        f"{[path_str(p) for p in extra]}")
  for p in ref:
    if jax.numpy.shape(ref[p]) != jax.numpy.shape(got[p]):
      raise ValueError(
          f"{what} leaf {path_str(p)} has shape {jax.numpy.shape(got[p])}, "
          f"expected {jax.numpy.shape(ref[p])}")
