"""Fixed random weights, derived from a seed and never trained.

The weight tree is a pure function of ``(model, seed, example input shape,
init)``: each maskable leaf draws its random bits from a counter-based Philox
stream seeded by ``(seed, crc32(path))`` on the host, and turns them into
float32 with exact arithmetic. Nothing depends on the accelerator, so the same
seed gives bit-identical weights on CPU, GPU and TPU and across runs:
**storing the seed is enough** to store the network.
"""
from __future__ import annotations

import functools
import zlib
from typing import Any

import flax.linen as nn
from flax.core import meta
import jax
import numpy as np

from supsup_jax import tree as tree_lib

#: The weight initialisations ``init_weights`` and ``random_kernel`` accept.
INITS = ("signed_constant", "unsigned_constant", "kaiming_normal",
         "kaiming_uniform")


MAX_SEED = 2**63 - 1  # the largest seed jax.random.key accepts


def fan_in(shape: tuple[int, ...]) -> int:
  """Fan-in of a Flax kernel: all axes but the last (output) one."""
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"a kernel shape needs >= 2 axes of positive size, got {tuple(shape)}")
  return int(np.prod(shape[:-1]))


def check_seed(seed: Any) -> int:
  """``seed`` as a Python int in 0..MAX_SEED (Python, NumPy or JAX integer scalar)."""
  if isinstance(seed, (jax.Array, np.ndarray, np.generic)) and np.shape(seed) == () \
      and np.issubdtype(np.asarray(seed).dtype, np.integer):
    seed = int(seed)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
  if not 0 <= seed <= MAX_SEED:
    raise ValueError(f"seed {seed} out of range; allowed: 0..{MAX_SEED}")
  return seed


def _check_gain(gain: Any) -> float:
  if isinstance(gain, (bool, str)) or not isinstance(gain, (int, float, np.number)) \
      or not 0 < gain < np.inf:
    raise ValueError(f"gain must be a finite number > 0, got {gain!r}")
  return float(gain)


def _example_shape(example_input: Any) -> tuple[int, ...]:
  """Shape of an example batch; plain tuples are refused (np.shape would read
  a shape tuple as a 1-D input)."""
  if not hasattr(example_input, "shape") or isinstance(example_input, (tuple, list)):
    raise ValueError(
        "example_input must be an array or jax.ShapeDtypeStruct with a batch axis, got "
        f"{type(example_input).__name__} {example_input!r:.60}; e.g. jnp.zeros((1, 28, 28, 1))")
  shape = tuple(int(d) for d in example_input.shape)
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"example_input needs a batch axis and positive sizes, got shape {shape}; "
                     "e.g. jnp.zeros((1, 28, 28, 1))")
  return shape


def _check_model(model: Any) -> None:
  if not isinstance(model, nn.Module):
    raise ValueError(f"model must be a Flax Linen module (e.g. models.LeNet300100()), "
                     f"got {type(model).__name__}")


def _model_shapes(model, seed, shape, apply_kwargs):
  try:
    return jax.eval_shape(
        lambda x: model.init(jax.random.key(seed), x, **apply_kwargs),
        jax.ShapeDtypeStruct(shape, np.float32))
  except (TypeError, ValueError) as e:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise ValueError(f"{type(model).__name__} cannot take example_input of shape {shape}"
                     f"{' with ' + str(apply_kwargs) if apply_kwargs else ''}: {first}") from None


def _check_init(init: str) -> None:
  if init not in INITS:
    raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")


def _all_bits(seed: int, requests: dict) -> dict:
  """uint32 bits for many leaves: {path: (count, *shape)} -> arrays.

  Each leaf has its own Philox stream seeded by (seed, crc32(path)), so its
  bits depend only on the seed and its own path, never on other leaves.
  Philox's raw output is specified bit-for-bit (NumPy's BitGenerator
  contract), so it is the same on every platform and NumPy version.
  """
  out = {}
  for path, shape in requests.items():
    n = int(np.prod(shape))
    stream = np.random.Philox(np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF,
         zlib.crc32(tree_lib.path_str(path).encode())]))
    raw = stream.random_raw((n + 1) // 2).astype("<u8").view("<u4")
    out[path] = raw[:n].reshape(shape)
  return out


def _leaf_bits(seed: int, path: tree_lib.Path, shape, count: int = 1) -> np.ndarray:
  """uint32 random bits [count, *shape] for one leaf, from (seed, path)."""
  return _all_bits(seed, {path: (count, *shape)})[path]


def _bits_per_draw(init: str) -> int:
  return {"unsigned_constant": 0, "kaiming_normal": 2}.get(init, 1)


def _uniform01(bits: np.ndarray) -> np.ndarray:
  """Exact uniform floats in [0, 1) from the top 24 bits (float64)."""
  return (bits >> 8).astype(np.float64) * (1.0 / (1 << 24))


def random_kernel(seed: int, path: tree_lib.Path, shape: tuple[int, ...],
                  init: str = "signed_constant",
                  gain: float = float(np.sqrt(2.0)),
                  bits: np.ndarray | None = None) -> np.ndarray:
  """One fixed random kernel as float32 numpy, fan-in taken from ``shape``.

  ``bits`` (uint32 ``[n, *shape]``) may be passed in when drawn in bulk.
  """
  _check_init(init)
  seed, gain = check_seed(seed), _check_gain(gain)
  std = gain / np.sqrt(fan_in(shape))
  if init == "unsigned_constant":
    return np.full(shape, std, np.float32)
  if bits is None:
    bits = _leaf_bits(seed, path, shape, _bits_per_draw(init))
  if init == "signed_constant":
    signs = np.where(bits[0] & 1, 1.0, -1.0)
    return (signs * std).astype(np.float32)
  if init == "kaiming_uniform":
    bound = std * np.sqrt(3.0)
    u = _uniform01(bits[0])
    return ((2.0 * u - 1.0) * bound).astype(np.float32)
  # kaiming_normal: Box-Muller in float64, rounded to float32.
  u1 = 1.0 - _uniform01(bits[0])  # (0, 1]
  u2 = _uniform01(bits[1])
  z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
  return (z * std).astype(np.float32)


# (model, params shapes) -> the per-example input shape init_weights last built
# such weights from: only to name the expected shape in an error message.
_EXAMPLE_SHAPES: dict[tuple, tuple[int, ...]] = {}
_MAX_EXAMPLE_SHAPES = 256


def _weights_signature(model: Any, params: Any) -> tuple:
  flat = tree_lib.flatten(params)
  return (type(model).__name__, repr(model),
          tuple(sorted((p, tuple(np.shape(v))) for p, v in flat.items())))


def example_input_shape(model: Any, weights: Any) -> tuple[int, ...] | None:
  """The per-example input shape (no batch axis) :func:`init_weights` built
  weights of these shapes for this model from, in this process; None if it
  did not (weights loaded or built another way). A hint for error messages."""
  try:
    return _EXAMPLE_SHAPES.get(_weights_signature(model, weights))
  except (TypeError, ValueError):
    return None


def init_weights(model: nn.Module, seed: int, example_input: Any, *,
                 init: str = "signed_constant",
                 gain: float = float(np.sqrt(2.0)),
                 is_maskable: tree_lib.MaskablePredicate = tree_lib.default_maskable,
                 **apply_kwargs) -> dict:
  """Builds the immutable random weight tree of any Flax Linen model.

  Args:
    model: a Flax Linen module.
    seed: integer seed; the whole tree is a function of it.
    example_input: an array (or ShapeDtypeStruct) with a batch axis, e.g.
      ``jnp.zeros((1, 28, 28, 1))``; only its shape is used.
    init: one of ``INITS``; applied to the maskable leaves (kernels).
      Non-maskable leaves (biases, norm scales) keep the model's own
      initialiser, drawn from the same seed.
    gain: Kaiming gain; sqrt(2) for ReLU.
    is_maskable: predicate on (path, leaf) choosing the leaves to re-draw.
    **apply_kwargs: extra keyword arguments for ``model.init`` (e.g. train=False).

  Returns:
    The ``params`` collection as a nested dict of float32 arrays.

  Raises:
    ValueError: ``model`` is not a Flax Linen module or has no parameters,
      ``seed`` is not an integer in ``0..MAX_SEED``, ``gain`` is not a finite
      number > 0, ``init`` is unknown, or the model cannot take
      ``example_input``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import supsup_jax as ss
    >>> model = ss.models.LeNet300100(num_outputs=10)
    >>> weights = ss.init_weights(model, 0, jnp.zeros((1, 28, 28, 1)))
    >>> jax.tree.map(jnp.shape, weights)
    {'Dense_0': {'kernel': (784, 300)}, 'Dense_1': {'kernel': (300, 100)}, 'Dense_2': {'kernel': (100, 10)}}
    >>> again = ss.init_weights(model, 0, jnp.zeros((1, 28, 28, 1)))
    >>> bool((weights["Dense_0"]["kernel"] == again["Dense_0"]["kernel"]).all())
    True
  """
  _check_init(init)
  _check_model(model)
  seed, gain = check_seed(seed), _check_gain(gain)
  shape = _example_shape(example_input)
  shapes = _model_shapes(model, seed, shape, apply_kwargs)
  if "params" not in shapes:
    raise ValueError(f"{type(model).__name__} has no parameters to mask")
  params_shape = tree_lib.unbox(shapes["params"])
  flat_shapes = tree_lib.flatten(params_shape)
  maskable = set(tree_lib.maskable_paths(params_shape, is_maskable))
  if len(maskable) < len(flat_shapes):
    # The non-maskable leaves use the model's initialisers.
    variables = jax.jit(functools.partial(model.init, **apply_kwargs))(
        jax.random.key(seed), np.zeros(shape, np.float32))
    others = tree_lib.flatten(variables["params"])
  else:
    others = {}
  n_draws = _bits_per_draw(init)
  bits = _all_bits(seed, {p: (n_draws, *flat_shapes[p].shape)
                          for p in maskable}) if n_draws else {}
  flat = {}
  for path, leaf in flat_shapes.items():
    if path in maskable:
      flat[path] = jax.numpy.asarray(random_kernel(
          seed, path, tuple(leaf.shape), init, gain, bits.get(path)))
    else:
      flat[path] = jax.numpy.asarray(others[path])
  weights = tree_lib.unflatten(flat)
  if len(_EXAMPLE_SHAPES) >= _MAX_EXAMPLE_SHAPES:
    _EXAMPLE_SHAPES.pop(next(iter(_EXAMPLE_SHAPES)))
  _EXAMPLE_SHAPES[_weights_signature(model, weights)] = tuple(shape[1:])
  return weights


def init_model_state(model: nn.Module, example_input: Any, **apply_kwargs) -> dict:
  """The non-param collections (e.g. ``batch_stats``) at their initial value."""
  _check_model(model)
  shape = _example_shape(example_input)
  variables = _model_shapes(model, 0, shape, apply_kwargs)
  state = {k: v for k, v in variables.items() if k != "params"}
  if not state:
    return {}
  if set(state) == {"batch_stats"}:
    # Flax BatchNorm starts its running mean at 0 and variance at 1; filling
    # them from shapes avoids compiling the whole model once more.
    def fill(path, leaf):
      value = 1.0 if path[-1].key == "var" else 0.0
      return jax.numpy.full(leaf.shape, value, leaf.dtype)
    return {"batch_stats": jax.tree_util.tree_map_with_path(
        fill, meta.unbox(state["batch_stats"]))}
  real = jax.jit(functools.partial(model.init, **apply_kwargs))(
      jax.random.key(0), np.zeros(shape, np.float32))
  return {k: v for k, v in real.items() if k != "params"}
