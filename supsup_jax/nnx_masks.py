"""Supermasks over Flax NNX modules.

NNX keeps parameters inside the module object; ``nnx.split`` separates them
into a static ``graphdef`` and state pytrees. This module turns the ``nnx.Param``
state into the plain nested dict that the rest of the library works on, so
``init_scores``, ``masks_from_scores``, ``apply_masks`` and ``MaskBank`` are used
exactly as with Linen, and runs the module with masked weights::

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  weights = nnx_masks.init_weights(params, seed=0)     # plain dict, fixed
  scores = ss.init_scores(weights, jax.random.key(1))
  masks = ss.masks_from_scores(scores, kind="topk", k=0.5)
  logits = nnx_masks.masked_call(graphdef, weights, masks, rest, x)

The weights stay an argument (never inside the module that gradients or the
optimizer see), so training scores cannot change them. A kernel at the same
path as in a Linen model (e.g. attributes named ``Dense_0``) gets the same
bits from the same seed as :func:`supsup_jax.weights.init_weights`.
"""
from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import masks as masks_lib
from supsup_jax import tree as tree_lib
from supsup_jax import weights as weights_lib


def params_tree(params: Any) -> dict:
  """Nested dict of arrays from an ``nnx.State`` (or a module's params).

  Accepts an ``nnx.Module`` (its ``nnx.Param`` state is taken), an
  ``nnx.State`` or an already plain dict (returned as a dict). Integer keys
  (``nnx.List`` entries) stay integers; paths print as ``layers/0/kernel``.
  """
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  if isinstance(params, nnx.State):
    return nnx.to_pure_dict(params)
  if isinstance(params, Mapping):
    return dict(params)
  raise ValueError(f"expected an nnx.Module, nnx.State or dict of params, "
                   f"got {type(params).__name__}")


def init_weights(params: Any, seed: int, *, init: str = "signed_constant",
                 gain: float = float(np.sqrt(2.0)),
                 is_maskable: tree_lib.MaskablePredicate = tree_lib.default_maskable
                 ) -> dict:
  """Fixed random weights for an NNX module's parameters, from a seed.

  Args:
    params: the ``nnx.Param`` state of the module (``nnx.split(model,
      nnx.Param, ...)[1]``), the module itself, or a plain dict. Maskable
      leaves may be abstract (``nnx.eval_shape``); only their shapes are read.
    seed: integer; each maskable kernel is ``weights.random_kernel(seed,
      path, shape, init, gain)``, bit-identical on every platform.
    init, gain, is_maskable: as :func:`supsup_jax.weights.init_weights`.

  Returns:
    Plain nested dict of float32 arrays. Non-maskable leaves (biases, norm
    scales) keep the module's own values (build the module with
    ``nnx.Rngs(seed)`` to make them a function of the seed too).
  """
  if init not in weights_lib.INITS:
    raise ValueError(f"unknown init {init!r}; allowed: {', '.join(weights_lib.INITS)}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ValueError(f"seed must be an int, got {seed!r}")
  flat = tree_lib.flatten(params_tree(params))
  out = {}
  for path, leaf in flat.items():
    if is_maskable(path, leaf):
      out[path] = jnp.asarray(weights_lib.random_kernel(
          int(seed), path, tuple(leaf.shape), init, gain))
    elif isinstance(leaf, jax.ShapeDtypeStruct):
      raise ValueError(f"non-maskable leaf {tree_lib.path_str(path)} is abstract; "
                       "pass the params of a real module (not nnx.eval_shape)")
    else:
      out[path] = jnp.asarray(leaf)
  return tree_lib.unflatten(out)


def _as_state(values: Mapping) -> nnx.State:
  """A ``nnx.Param`` state holding ``values`` (a plain nested dict)."""
  return nnx.from_flat_state(
      [(path, nnx.Param(v)) for path, v in tree_lib.flatten(values).items()])


def masked_call(graphdef: nnx.GraphDef, weights: Any, masks: Mapping,
                other_state: Any, *args, return_state: bool = False, **kwargs):
  """Runs the NNX module with parameters ``weights * masks``.

  Args:
    graphdef: from ``nnx.split(model, nnx.Param, ...)`` (static; close over it
      or mark it static under ``jax.jit``).
    weights: the fixed weights: a plain dict (:func:`init_weights`) or the
      ``nnx.Param`` state.
    masks: masks tree over the maskable leaves (``masks_from_scores``); it
      carries the straight-through gradient to the scores.
    other_state: the rest of ``nnx.split`` (batch statistics, RNG counters;
      an empty ``nnx.State`` for a parameter-only model).
    *args: passed to the module's ``__call__`` (e.g. the input).
    **kwargs: passed to the module's ``__call__``.
    return_state: also return the updated ``other_state`` (e.g. batch-norm
      statistics after a call in training mode).

  Returns:
    The module's output, or ``(output, other_state)`` with ``return_state``.
  """
  masked = masks_lib.apply_masks(params_tree(weights), masks)
  module = nnx.merge(graphdef, _as_state(masked), other_state)
  out = module(*args, **kwargs)
  if not return_state:
    return out
  _, _, new_state = nnx.split(module, nnx.Param, ...)
  return out, new_state
