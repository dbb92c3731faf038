"""Scores and supermasks as pytrees, with straight-through gradients.

``scores`` is a nested dict holding one real array per maskable weight leaf
(see :mod:`supsup_jax.tree`). ``masks`` has the same structure, holding 0/1
float arrays. Both are plain pytrees: ``jax.tree.map`` works on them, optax
trains scores directly, and :func:`apply_masks` merges ``weights * masks`` into
any Flax model's parameter tree.

Mask functions return the binary mask in the forward pass and pass the incoming
gradient straight through to the scores (dL/dscores := dL/dmask), as in
edge-popup and SupSup.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import checks
from supsup_jax import tree as tree_lib
from supsup_jax.weights import fan_in

MASK_KINDS = ("topk", "threshold")


def _straight_through(scores: jax.Array, mask: jax.Array) -> jax.Array:
  # (s - stop(s)) is exactly 0.0, so the forward value is exactly `mask`,
  # while d/ds of the expression is the identity.
  return (scores - jax.lax.stop_gradient(scores)) + jax.lax.stop_gradient(mask)


def _check_array(x: Any, what: str) -> None:
  """Scores must be a non-empty floating array (checked on the shape only)."""
  dtype = getattr(x, "dtype", None)
  if dtype is None or not hasattr(x, "shape"):
    raise ValueError(f"{what} must be a float array, got {type(x).__name__}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{what} must be a float array, got dtype {dtype}")
  if math.prod(x.shape) == 0:
    raise ValueError(f"{what} is empty (shape {tuple(x.shape)})")


def _check_fraction_tree(k: Mapping, scores: Mapping) -> dict:
  """``k`` must give one fraction in (0, 1] per leaf of ``scores``, no more."""
  ks = tree_lib.flatten(k, "k")
  ss = tree_lib.flatten(scores, "scores")
  missing = sorted(set(ss) - set(ks))
  extra = sorted(set(ks) - set(ss))
  if missing or extra:
    raise ValueError(
        "the k tree must hold one fraction per scores leaf: "
        + (f"missing {[tree_lib.path_str(p) for p in missing]}" if missing else "")
        + ("; " if missing and extra else "")
        + (f"no scores at {[tree_lib.path_str(p) for p in extra]}" if extra else "")
        + "; build it with masks.er_fractions(scores, sparsity) or pass one float")
  for p, v in ks.items():
    check_fraction(v, f"k[{tree_lib.path_str(p)!r}]")
  return tree_lib.unflatten({p: float(v) for p, v in ks.items()})


def check_fraction(k: Any, name: str = "k") -> float:
  """Validates a keep fraction in (0, 1] before any tracing."""
  if isinstance(k, (bool, str)) or getattr(k, "shape", ()) != ():
    raise ValueError(f"{name} must be a number in (0, 1], got {k!r}")
  try:
    value = float(k)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number in (0, 1], got {k!r}") from None
  if not 0.0 < value <= 1.0 or math.isnan(value):
    raise ValueError(f"{name} must be in (0, 1], got {k!r}")
  return value


def num_kept(k: float, size: int) -> int:
  """round(k * size) with halves rounded up, and at least one entry."""
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"size must be an int >= 1, got {size!r}")
  return max(1, int(math.floor(check_fraction(k) * size + 0.5)))


def _topk_flat_mask(magnitude: jax.Array, n_keep: int) -> jax.Array:
  """0/1 mask keeping the ``n_keep`` largest entries of a flat non-negative
  float32 vector, ties broken towards the lower index. Sort-free.

  Non-negative floats order like their bit patterns read as uint32, so the
  n_keep-th largest value is found bit by bit from the top (32 counting
  passes, no sort); entries equal to it are kept in index order until exactly
  n_keep are kept. On CPU this is ~10x faster than ``lax.top_k`` for LeNet's
  235,200-entry layer.
  """
  bits = jax.lax.bitcast_convert_type(magnitude.astype(jnp.float32), jnp.uint32)

  def refine(i, threshold):
    candidate = threshold | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    enough = jnp.sum(bits >= candidate, dtype=jnp.int32) >= n_keep
    return jnp.where(enough, candidate, threshold)

  kth = jax.lax.fori_loop(0, 32, refine, jnp.uint32(0))
  above = bits > kth
  tied = bits == kth
  room = n_keep - jnp.sum(above, dtype=jnp.int32)
  return above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= room))


def topk_mask(scores: jax.Array, k: float) -> jax.Array:
  """Keeps exactly ``num_kept(k, scores.size)`` entries with largest ``|score|``.

  Ties are broken towards the lower flat index (as ``lax.top_k`` does), so
  the result is deterministic. The gradient passes straight through to the
  ranked quantity ``|scores|`` (as edge-popup does), so
  dL/dscores = dL/dmask * sign(scores): equal to dL/dmask for non-negative
  scores, and a weight that should be kept always gains rank.

  Args:
    scores: float array of any shape.
    k: keep fraction in (0, 1] (static Python float).
  Returns:
    float32 0/1 mask with ``scores.shape``.
  """
  _check_array(scores, "scores")
  n_keep = num_kept(k, int(scores.size))
  magnitude = jnp.abs(scores)
  flat = jax.lax.stop_gradient(magnitude).reshape(-1)
  if n_keep == flat.size:
    mask = jnp.ones_like(flat)
  else:
    mask = _topk_flat_mask(flat, n_keep).astype(flat.dtype)
  return _straight_through(magnitude, mask.reshape(scores.shape).astype(scores.dtype))


def threshold_mask(scores: jax.Array) -> jax.Array:
  """mask = 1[scores >= 0], straight-through (Piggyback style, no sort)."""
  _check_array(scores, "scores")
  mask = (jax.lax.stop_gradient(scores) >= 0).astype(scores.dtype)
  return _straight_through(scores, mask)


def er_fraction(shape: tuple[int, ...], sparsity: float) -> float:
  """ER budget (Wortsman et al. 2020, appendix; the authors' code) for one kernel of shape (..., c_in, c_out).

  min(0.5, s * (c_in + c_out) / (c_in * c_out * kh * kw)); larger s = denser.
  """
  if (isinstance(sparsity, (bool, str)) or not isinstance(sparsity, (int, float, np.number))
      or not 0 < sparsity < math.inf):
    raise ValueError(f"ER sparsity must be a finite number > 0, got {sparsity!r}")
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"ER budget needs a kernel shape (..., c_in, c_out) of positive "
                     f"sizes, got {tuple(shape)}")
  c_in, c_out = shape[-2], shape[-1]
  spatial = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
  return min(0.5, sparsity * (c_in + c_out) / (c_in * c_out * spatial))


def er_fractions(scores: Mapping, sparsity: float) -> dict:
  """Per-layer keep fractions (a tree of Python floats like ``scores``)."""
  tree_lib.check_tree(scores, "scores")
  return jax.tree.map(lambda s: er_fraction(tuple(np.shape(s)), sparsity),
                      dict(scores))


def init_scores(weights: Mapping, key: jax.Array, *,
                is_maskable: tree_lib.MaskablePredicate = tree_lib.default_maskable
                ) -> dict:
  """Kaiming-uniform(a=sqrt(5)) scores for the maskable leaves of ``weights``.

  With a = sqrt(5) the bound is 1/sqrt(fan_in). Each leaf gets its own key
  folded from ``key`` and its position, so scores for different tasks come
  from ``fold_in(key, task_id)``.
  """
  tree_lib.check_tree(weights, "weights")
  if not (isinstance(key, jax.Array) and (
      jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()
      or key.dtype == jnp.uint32 and key.shape == (2,))):
    what = (f"{type(key).__name__} of dtype {key.dtype} and shape {key.shape}"
            if hasattr(key, "dtype") else repr(key))
    raise ValueError(f"key must be one PRNG key (jax.random.key(seed)), got {what}")
  sub = tree_lib.maskable_subtree(weights, is_maskable)
  leaves, treedef = jax.tree.flatten(sub)
  if not leaves:
    raise ValueError(
        "weights have no maskable leaf (2-D+ arrays named 'kernel'; leaves: "
        f"{[tree_lib.path_str(p) for p in sorted(tree_lib.flatten(weights))][:8]}); "
        "pass the model's params tree or an is_maskable predicate")
  keys = jax.random.split(key, len(leaves))
  out = []
  for leaf_key, w in zip(keys, leaves):
    bound = 1.0 / math.sqrt(fan_in(w.shape))
    out.append(jax.random.uniform(leaf_key, w.shape, jnp.float32, -bound, bound))
  return jax.tree.unflatten(treedef, out)


def _check_kind(kind: str) -> None:
  if kind not in MASK_KINDS:
    raise ValueError(f"unknown mask kind {kind!r}; allowed: {', '.join(MASK_KINDS)}")


def masks_from_scores(scores: Mapping, kind: str = "topk",
                      k: float | Mapping = 0.5) -> dict:
  """Computes the masks tree from a scores tree.

  Args:
    scores: tree of score arrays.
    kind: "topk" (per-layer top-k by ``|score|``) or "threshold" (scores >= 0).
    k: for top-k, a keep fraction in (0, 1] for every layer, or a tree of
      per-layer fractions (e.g. :func:`er_fractions`).

  Concrete scores holding NaN or inf are refused (one-line ValueError): the
  straight-through mask ``(s - stop(s)) + mask`` would be NaN there. Under
  ``jit`` (traced scores) the values cannot be read: the masks then hold NaN
  where a score is NaN or inf (and a top-k ranking of such a leaf is
  meaningless); the run loop's non-finite guard reports the loss it gives.
  """
  _check_kind(kind)
  flat = tree_lib.flatten(scores, "scores")
  for p, s in flat.items():
    _check_array(s, f"scores leaf {tree_lib.path_str(p)}")
  if checks.is_concrete(scores):
    bad = checks.nonfinite_paths(scores)
    if bad:
      raise ValueError(f"scores leaves {bad} hold NaN or inf, so their masks would be NaN; "
                       "the scores diverged (lower the learning rate) or were loaded damaged")
  scores = dict(scores)
  if kind == "threshold":
    return jax.tree.map(threshold_mask, scores)
  if isinstance(k, Mapping):
    return jax.tree.map(topk_mask, scores, _check_fraction_tree(k, scores))
  check_fraction(k)
  return jax.tree.map(lambda s: topk_mask(s, k), scores)


def apply_masks(weights: Mapping, masks: Mapping) -> dict:
  """Returns the parameter tree with every masked leaf replaced by W * M.

  ``masks`` covers a subset of the leaves of ``weights`` (by path); other
  leaves pass through unchanged. Works on any Flax params tree.
  """
  flat_w = tree_lib.flatten(weights, "weights")
  flat_m = tree_lib.flatten(masks, "masks")
  unknown = sorted(set(flat_m) - set(flat_w))
  if unknown:
    hint = ("; pass variables['params'], not the whole variables dict"
            if "params" in weights else "; masks come from init_scores(weights, ...)")
    names = [tree_lib.path_str(p) for p in sorted(flat_w)]
    raise ValueError(
        "mask tree does not match the weight tree: no weight at "
        f"{[tree_lib.path_str(p) for p in unknown][:4]}; weight leaves are "
        f"{names[:6] + (['...'] if len(names) > 6 else [])}{hint}")
  out = {}
  for path, w in flat_w.items():
    if path in flat_m:
      m = flat_m[path]
      if jnp.shape(m) != jnp.shape(w):
        raise ValueError(
            f"mask {tree_lib.path_str(path)} has shape {jnp.shape(m)}, "
            f"weight has {jnp.shape(w)}")
      out[path] = w * m
    else:
      out[path] = w
  return tree_lib.unflatten(out)



@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """How scores become masks: kind "topk" with fraction(s) k, or "threshold"."""
  kind: str = "topk"
  k: float | Mapping = 0.5

  def __post_init__(self):
    _check_kind(self.kind)
    if self.kind == "topk":
      if isinstance(self.k, Mapping):
        jax.tree.map(check_fraction, dict(self.k))
      else:
        check_fraction(self.k)

  def __hash__(self):
    return hash((self.kind, str(self.k)))

  def __call__(self, scores: Mapping) -> dict:
    return masks_from_scores(scores, self.kind, self.k)
