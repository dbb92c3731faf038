"""Jittable pieces: index shuffling, rotation, augmentation, normalisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Normalisation constants (MNIST as in the SupSup authors' code; the usual per-channel values otherwise).
NORM = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # The official CIFAR-100 train-set per-channel mean and (population) std of
    # x/255; shared/data/cifar100's PNGs reproduce them to ~1e-11. (The SupSup
    # authors' RandSplitCIFAR100 normalised with CIFAR-10's statistics instead.)
    "cifar100": ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                 (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

SHUFFLE_ROUNDS = 24


def _mix32(x):
  """murmur3 finaliser on uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def shuffled_index(key, positions, n, rounds: int = SHUFFLE_ROUNDS):
  """Image of ``positions`` under a pseudorandom permutation of ``range(n)``.

  "Swap-or-not" shuffle (Hoang, Morris & Rogaway 2012): every round is an
  involution on Z_n, so the composition is an exact bijection of [0, n) for any
  n (n may be a traced int). Only the requested positions are computed, so a
  batch costs O(batch * rounds) instead of sorting the whole epoch.
  """
  n = jnp.asarray(n, jnp.int32)
  k1, k2 = jax.random.split(key)
  offs = jax.random.randint(k1, (rounds,), 0, jnp.maximum(n, 1), dtype=jnp.int32)
  seeds = jax.random.bits(k2, (rounds,), jnp.uint32)
  x = jnp.asarray(positions, jnp.int32)

  def body(i, x):
    partner = jnp.mod(offs[i] - x, n)
    hi = jnp.maximum(x, partner).astype(jnp.uint32)
    bit = _mix32(hi * jnp.uint32(0x9E3779B1) ^ seeds[i]) >> 31
    return jnp.where(bit == 1, partner, x)

  return jax.lax.fori_loop(0, rounds, body, x)


def normalize(x, mean, std):
  """``(x / 255 - mean) / std`` as float32; ``x`` in pixel units (uint8 or float),
  ``mean``/``std`` scalars or one value per channel (the last axis)."""
  x = jnp.asarray(x).astype(jnp.float32) * (1.0 / 255.0)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def rotate(images, angle_deg):
  """Rotates ``[B, H, W, C]`` images counter-clockwise by ``angle_deg`` (as displayed
  with row 0 at the top, i.e. 90 deg == ``np.rot90(img, k=1, axes=(0, 1))``) about
  the image centre. Bilinear interpolation, zero fill outside; sampling
  coordinates that are (numerically) integers are snapped, so multiples of 90 deg
  are exact. Works on float images; ``angle_deg`` may be traced.
  """
  b, h, w, c = images.shape
  theta = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                            jnp.arange(w, dtype=jnp.float32), indexing="ij")
  # output (x right, y up) -> input: rotate by -theta.
  x = cols - cx
  y = cy - rows
  x_in = cos * x + sin * y
  y_in = -sin * x + cos * y
  r_in = cy - y_in
  c_in = cx + x_in
  snap = lambda v: jnp.where(jnp.abs(v - jnp.round(v)) < 1e-3, jnp.round(v), v)
  r_in, c_in = snap(r_in), snap(c_in)

  def one(img2d):
    return jax.scipy.ndimage.map_coordinates(img2d, [r_in, c_in], order=1,
                                             mode="constant", cval=0.0)

  # [B, H, W, C] -> map over B and C.
  f = jax.vmap(jax.vmap(one, in_axes=2, out_axes=2), in_axes=0, out_axes=0)
  return f(images.astype(jnp.float32))


def random_crop_flip(key, images, pad: int = 4):
  """Random crop with ``pad`` px zero padding + random horizontal flip, per example."""
  b, h, w, c = images.shape
  k1, k2, k3 = jax.random.split(key, 3)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oy = jax.random.randint(k1, (b,), 0, 2 * pad + 1)
  ox = jax.random.randint(k2, (b,), 0, 2 * pad + 1)
  flip = jax.random.bernoulli(k3, 0.5, (b,))

  def crop(img, y, x, f):
    out = jax.lax.dynamic_slice(img, (y, x, 0), (h, w, c))
    return jnp.where(f, out[:, ::-1, :], out)

  return jax.vmap(crop)(padded, oy, ox, flip)
