"""The five predictive-uncertainty methods as one interface, trained with vmap.

A :class:`Method` says how to initialise one member's trainable pytree, its
training loss, and its test-time log-probabilities ``[S, B, C]`` (S stochastic
passes per member). K members are trained side by side: their parameters and
optimizer states carry a leading member axis and one jitted ``lax.scan`` of
vmapped steps trains them all (one compiled program). Member k reads its own
batch order (the stream's task k) and its own PRNG stream ``fold_in(key, k)``.

=====================  ====  =======  ==============================================
method                 K     S        what varies between the S x K predictions
=====================  ====  =======  ==============================================
single                 1     1        nothing (reference)
mc_dropout             1     T        dropout masks kept on at test
                                      (Gal & Ghahramani 2016, arXiv 1506.02142)
masksembles            1     N        N fixed channel masks (Durasov et al. 2021,
                                      arXiv 2012.08334)
deep_ensemble          N     1        independent initialisations and batch orders
                                      (Lakshminarayanan et al. 2017, arXiv 1612.01474)
supermask_ensemble     N     1        N supermasks over ONE fixed random network
                                      (edge-popup / SupSup masks: Ramanujan et al.
                                      2020, arXiv 1911.13299; Wortsman et al. 2020,
                                      arXiv 2006.14769); 1 bit per weight per member
=====================  ====  =======  ==============================================

``frozen`` holds what all members share and nobody trains (Masksembles masks,
the supermask ensemble's random weights); it is an argument of the compiled
step, never a constant closed over by it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import masks as masks_lib
from supsup_jax import models as ss_models
from supsup_jax.uncertainty import masksembles as masksembles_lib
from supsup_jax.uncertainty.models import UncertaintyMLP
from supsup_jax.weights import init_weights
from supsup_jax import losses

METHODS = ("single", "mc_dropout", "masksembles", "deep_ensemble", "supermask_ensemble")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: caches compiled fns
class Method:
  """One uncertainty method (see the module docstring for K and S)."""
  name: str
  num_members: int       # K, trained at once with vmap
  samples_per_member: int  # S, stochastic test passes per member
  init: Callable[[jax.Array], Any]                  # key -> one member's params
  loss: Callable[..., jax.Array]                    # (params, frozen, x, y, key) -> scalar
  log_probs: Callable[..., jax.Array]               # (params, frozen, x, key) -> [S, B, C]
  frozen: Any
  bits_per_member: Callable[[Any], int]             # params of one member -> bits stored

  @property
  def num_predictions(self) -> int:
    return self.num_members * self.samples_per_member


def _check_count(name: str, value: Any) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  return int(value)


def check_mc_dropout(samples: Any, rate: Any,
                     names: tuple[str, str] = ("mc_samples", "dropout_rate")) -> None:
  """MC-dropout's options: ``samples`` (T) an int >= 1, ``rate`` in (0, 1).

  ``names`` are the options' names in the messages (the runner passes its
  config keys, ``config.mc_dropout.samples`` / ``.rate``).
  """
  _check_count(names[0], samples)
  if isinstance(rate, (bool, str)) or not isinstance(rate, (int, float, np.number)) or not (
      0.0 < float(rate) < 1.0):
    raise ValueError(f"{names[1]} must be a number in (0, 1) for mc_dropout, got {rate!r}")


def masksembles_masks(hidden: Sequence[int], num_members: int, scale: Any,
                      seed: int = 0, name: str = "masksembles_scale") -> tuple[np.ndarray, ...]:
  """Masksembles' fixed masks, one ``[N, width]`` set per hidden layer (layer
  i from seed ``seed * 1000 + i``); a one-line ``ValueError`` naming ``name``
  when ``scale`` cannot make them (also the runner's check, before any data)."""
  if isinstance(scale, (bool, str)) or not isinstance(scale, (int, float, np.number)) or not (
      math.isfinite(float(scale))):
    raise ValueError(f"{name} must be a finite number, got {scale!r}")
  out = []
  for i, width in enumerate(hidden):
    try:
      out.append(masksembles_lib.generate_masks(int(width), num_members, float(scale),
                                                seed=int(seed) * 1000 + i))
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None
  return tuple(out)


def check_supermask(mask_kind: Any, topk_fraction: Any, weights_seed: Any,
                    names: tuple[str, str, str] = ("mask_kind", "topk_fraction",
                                                   "weights_seed")) -> float:
  """The supermask ensemble's mask options; returns the keep fraction."""
  if mask_kind not in masks_lib.MASK_KINDS:
    raise ValueError(f"{names[0]} {mask_kind!r} unknown; allowed: "
                     f"{', '.join(masks_lib.MASK_KINDS)}")
  k = masks_lib.check_fraction(topk_fraction, names[1])
  if (not isinstance(weights_seed, (int, np.integer)) or isinstance(weights_seed, bool)
      or not 0 <= weights_seed < 2 ** 31):
    raise ValueError(f"{names[2]} must be an int in [0, 2**31), got {weights_seed!r}")
  return k


_cross_entropy = losses.cross_entropy


def _float_bits(params) -> int:
  return 32 * sum(int(np.size(x)) for x in jax.tree.leaves(params))


def make_method(name: str, *, input_shape: Sequence[int], num_classes: int,
                hidden: Sequence[int] = (300, 100), num_members: int = 4,
                mc_samples: int = 4, dropout_rate: float = 0.5,
                masksembles_scale: float = 2.0, mask_kind: str = "topk",
                topk_fraction: float = 0.5, weights_seed: int = 0,
                masks_seed: int = 0) -> Method:
  """Builds a method; validates every argument (one-line ``ValueError``).

  Args:
    name: one of ``METHODS``.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_classes: output width.
    hidden: hidden widths of the MLP.
    num_members: N for masksembles / deep_ensemble / supermask_ensemble.
    mc_samples: T for mc_dropout.
    dropout_rate: mc_dropout's drop probability, in (0, 1).
    masksembles_scale: Masksembles overlap scale (see ``masksembles``).
    mask_kind, topk_fraction: supermask_ensemble's masks ("topk" or "threshold").
    weights_seed: seed of supermask_ensemble's fixed random weights.
    masks_seed: seed of the Masksembles mask generator.
  """
  if name not in METHODS:
    raise ValueError(f"unknown uncertainty method {name!r}; allowed: {', '.join(METHODS)}")
  num_members = _check_count("num_members (N)", num_members)
  mc_samples = _check_count("mc_samples (T)", mc_samples)
  hidden = tuple(int(h) for h in hidden)
  example = jnp.zeros((1, *input_shape), jnp.float32)

  if name == "supermask_ensemble":
    k = check_supermask(mask_kind, topk_fraction, weights_seed)
    net = ss_models.MLP(hidden=hidden, num_outputs=num_classes)  # bias-free, like SupSup
    weights = init_weights(net, int(weights_seed), example)

    def sm_logits(scores, weights, x):
      m = masks_lib.masks_from_scores(scores, mask_kind, k)
      return net.apply({"params": masks_lib.apply_masks(weights, m)}, x)

    return Method(
        name=name, num_members=num_members, samples_per_member=1,
        init=lambda key: masks_lib.init_scores(weights, key),
        loss=lambda s, w, x, y, key: _cross_entropy(sm_logits(s, w, x), y),
        log_probs=lambda s, w, x, key: jax.nn.log_softmax(sm_logits(s, w, x))[None],
        frozen=weights,
        # 1 bit per masked weight; the weights themselves are the seed.
        bits_per_member=lambda s: sum(int(np.size(x)) for x in jax.tree.leaves(s)))

  if name == "mc_dropout":
    check_mc_dropout(mc_samples, dropout_rate)
    net = UncertaintyMLP(hidden=hidden, num_outputs=num_classes, dropout_rate=float(dropout_rate))
  else:
    net = UncertaintyMLP(hidden=hidden, num_outputs=num_classes)

  def init(key):
    return net.init(key, example)["params"]

  def plain_logits(p, x):
    return net.apply({"params": p}, x)

  if name in ("single", "deep_ensemble"):
    return Method(
        name=name, num_members=num_members if name == "deep_ensemble" else 1,
        samples_per_member=1, init=init,
        loss=lambda p, f, x, y, key: _cross_entropy(plain_logits(p, x), y),
        log_probs=lambda p, f, x, key: jax.nn.log_softmax(plain_logits(p, x))[None],
        frozen=(), bits_per_member=_float_bits)

  if name == "mc_dropout":
    def drop_logits(p, x, key):
      return net.apply({"params": p}, x, stochastic=True, rngs={"dropout": key})

    def mc_log_probs(p, f, x, key):
      keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(mc_samples))
      return jax.vmap(lambda kk: jax.nn.log_softmax(drop_logits(p, x, kk)))(keys)

    return Method(
        name=name, num_members=1, samples_per_member=mc_samples, init=init,
        loss=lambda p, f, x, y, key: _cross_entropy(drop_logits(p, x, key), y),
        log_probs=mc_log_probs, frozen=(), bits_per_member=_float_bits)

  # masksembles: one mask set per hidden layer, generated once (validated here).
  mask_sets = tuple(jnp.asarray(m) for m in masksembles_masks(
      hidden, num_members, masksembles_scale, seed=masks_seed))

  def ms_log_probs(p, masks, x, key):
    b = x.shape[0]
    tiled = jnp.tile(x, (num_members,) + (1,) * (x.ndim - 1))  # group i = copy i
    logits = net.apply({"params": p}, tiled, masks=masks)
    return jax.nn.log_softmax(logits).reshape(num_members, b, -1)

  return Method(
      name=name, num_members=1, samples_per_member=num_members, init=init,
      loss=lambda p, masks, x, y, key: _cross_entropy(
          net.apply({"params": p}, x, masks=masks), y),
      log_probs=ms_log_probs, frozen=mask_sets, bits_per_member=_float_bits)


@functools.lru_cache(maxsize=None)
def _jitted_init(method: Method) -> Callable:
  # Jitted (Flax's init run eagerly compiles op by op) and not vmapped: a
  # vmapped threefry/truncated-normal program takes ~2x longer to compile
  # than one member's init run K times.
  return jax.jit(method.init)


def init_members(method: Method, key: jax.Array) -> Any:
  """Params with a leading member axis; member k from ``fold_in(key, k)``."""
  init = _jitted_init(method)
  one = [init(jax.random.fold_in(key, k)) for k in range(method.num_members)]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *one)


def member_key(key: jax.Array, member, step) -> jax.Array:
  """The PRNG key of one member at one step (never reused across either)."""
  return jax.random.fold_in(jax.random.fold_in(key, member), step)


def make_member_step(method: Method, optimizer: optax.GradientTransformation) -> Callable:
  """(params, opt_state, frozen, x, y, key) -> (params, opt_state, loss), one member."""

  def step(params, opt_state, frozen, x, y, key):
    loss, grads = jax.value_and_grad(method.loss)(params, frozen, x, y, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def make_trainer(method: Method, optimizer: optax.GradientTransformation,
                 batch_fn: Callable) -> Callable:
  """Jitted ``train(params, opt_state, frozen, arrays, key, start, num_steps)``.

  Runs steps ``start .. start + num_steps - 1`` (``num_steps`` static) for all
  K members at once and returns ``(params, opt_state, losses [num_steps, K])``.
  ``batch_fn(arrays, member, step) -> (x [B, ...], y [B])`` is the stream's
  ``train_batch_fn_args`` function (member = the stream's task id).
  """
  member_step = make_member_step(method, optimizer)
  members = jnp.arange(method.num_members)

  @functools.partial(jax.jit, static_argnames=("num_steps",), donate_argnums=(0, 1))
  def train(params, opt_state, frozen, arrays, key, start, num_steps: int):
    def body(carry, step):
      params, opt_state = carry
      xs, ys = jax.vmap(batch_fn, in_axes=(None, 0, None))(arrays, members, step)
      keys = jax.vmap(lambda m: member_key(key, m, step))(members)
      params, opt_state, loss = jax.vmap(member_step, in_axes=(0, 0, None, 0, 0, 0))(
          params, opt_state, frozen, xs, ys, keys)
      return (params, opt_state), loss

    steps = start + jnp.arange(num_steps, dtype=jnp.int32)
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), steps)
    return params, opt_state, losses

  return train


@functools.lru_cache(maxsize=None)
def make_predictor(method: Method) -> Callable:
  """Jitted ``(params, frozen, x [B, ...], key) -> log-probs [K * S, B, C]``."""

  @jax.jit
  def predict(params, frozen, x, key):
    keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(method.num_members))
    lp = jax.vmap(method.log_probs, in_axes=(0, None, None, 0))(params, frozen, x, keys)
    return lp.reshape((-1,) + lp.shape[2:])

  return predict


def predict_dataset(method: Method, params, images: np.ndarray, key: jax.Array,
                    batch_size: int = 1000) -> np.ndarray:
  """float32 member log-probs ``[K * S, N, C]`` over ``images [N, ...]``."""
  predict = make_predictor(method)
  out = []
  for i, start in enumerate(range(0, len(images), batch_size)):
    x = jnp.asarray(images[start:start + batch_size])
    out.append(np.asarray(predict(params, method.frozen, x, jax.random.fold_in(key, i))))
  return np.concatenate(out, axis=1)


def bytes_stored(method: Method, params) -> int:
  """Bytes to store the trained method (all members; seeds are free)."""
  one = jax.tree.map(lambda x: x[0], params)
  return int(math.ceil(method.num_members * method.bits_per_member(one) / 8))

