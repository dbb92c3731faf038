"""Input checks that cost nothing under ``jit``.

The library's functions check their inputs where the values can be read on
the host: Python and NumPy scalars and arrays, and *concrete* JAX arrays
(anything that is not a tracer). Inside ``jax.jit``, ``grad``, ``vmap`` or
``make_jaxpr`` a value is a :class:`jax.core.Tracer` and cannot be read
without a device round trip, so value checks are skipped there; only what is
static under tracing (dtypes, shapes, tree structure) is still checked. Each
function's docstring says what it returns for a bad value it cannot see.

(Why not ``jax.experimental.checkify``: a ``checkify.check`` under a plain
``jax.jit`` fails to trace unless every caller wraps the function in
``checkify.checkify`` and handles the returned error, which would change the
API of every jitted call site, and its runtime checks cost a reduction and a
host transfer inside hot loops. Checking concrete values before tracing keeps
the jitted programs exactly as they were.)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np



def is_concrete(*trees: Any) -> bool:
  """True when no leaf of ``trees`` is a tracer (every value can be read)."""
  return not any(isinstance(leaf, jax.core.Tracer)
                 for t in trees for leaf in jax.tree.leaves(t))


@jax.jit
def _finite_flags(leaves):
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def host_flags(fn, leaves) -> np.ndarray:
  """``fn(leaves)`` (a jitted reduction to one flag per leaf) as NumPy, run
  on the concrete ``leaves`` at once, also when called while an enclosing
  function is being traced (then the leaves are closed-over constants)."""
  with jax.ensure_compile_time_eval():
    return np.asarray(fn([jnp.asarray(x) for x in leaves]))


def _path_str(path) -> str:
  parts = []
  for k in path:
    key = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    parts.append(str(key))
  return "/".join(parts)


def nonfinite_paths(tree: Any) -> list[str]:
  """Paths (``Dense_0/kernel``) of the floating leaves of a concrete ``tree``
  that hold NaN or inf ("value" for a bare array); one device round trip for
  the whole tree."""
  items = [(path, x) for path, x in jax.tree_util.tree_leaves_with_path(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and np.size(x)]
  if not items:
    return []
  ok = host_flags(_finite_flags, [x for _, x in items])
  return [_path_str(p) or "value" for (p, _), good in zip(items, ok) if not good]


def all_finite(x) -> bool:
  """Whether a concrete array holds no NaN or inf (one reduction, one sync)."""
  return bool(host_flags(_finite_flags, [x])[0])
