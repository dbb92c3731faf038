"""Convolution with a fast, exact kernel gradient on XLA:CPU.

XLA:CPU's kernel (weight) gradient of a convolution is several times slower
than its forward pass and input gradient (``benchmarks/probe_conv_grad.py``:
~0.8-1.9 s for one 3x3 64->64 layer at batch 128, 32x32, against ~0.2 s for
the forward). SupSup trains scores through ``W * M``, so every step needs
dL/dW of every conv, and that single op dominated the train step.

:func:`conv_general_dilated` is a drop-in for :func:`jax.lax.conv_general_dilated`
(same signature) with a :func:`jax.custom_vjp`:

* forward: plain ``lax.conv_general_dilated``;
* input gradient: XLA's own (the transpose of the conv in its input);
* kernel gradient: im2col + one matmul per chunk of the batch. For each batch
  chunk, the ``kh*kw`` shifted (and strided) slices of the padded input are
  concatenated along channels into a ``(b*Ho*Wo, kh*kw*C)`` patch matrix,
  and ``dK = patches^T @ dY`` (a ``(kh*kw*C, O)`` matmul that XLA threads
  well). Chunks are summed in a ``lax.scan`` so the patch matrix stays small
  (~8k rows). This is the same sum as the reference gradient, only in a
  different order, so it matches ``jax.grad`` of ``lax.conv`` to float
  round-off.

Supported fast path: any number of spatial dims, any ``dimension_numbers``,
any window strides, ``'SAME'``/``'VALID'``/``'SAME_LOWER'``/explicit padding
(negative too), any ``rhs_dilation``, floating dtypes. Everything else
(``lhs_dilation`` != 1, feature/batch groups, ``preferred_element_type``,
non-float inputs) falls back to ``lax.conv_general_dilated`` unchanged.

Note: a ``custom_vjp`` function supports reverse mode (``grad``/``vjp``) but
not forward mode (``jvp``/``jacfwd``); use plain lax conv for those.

Use it in Flax via ``supsup_jax.conv.Conv`` (= ``nn.Conv`` with this conv)::

  from supsup_jax.conv import Conv
  y = Conv(64, (3, 3), use_bias=False)(x)
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["conv_general_dilated", "kernel_grad", "is_fast_path", "Conv",
           "TARGET_ROWS"]

# Rows (output pixels) of the im2col matrix per batch chunk. Measured on a
# 2-core AVX2 EPYC (3x3x64->64, B=128, 32x32), same load for all rows:
# 1k rows 305 ms, 2k 274, 4k 270, 8k 302, 16k 338; unchunked (131k rows) 500+.
TARGET_ROWS = 4096


def _canonical_pads(in_spatial, window, strides, padding):
  if isinstance(padding, str):
    return tuple(tuple(p) for p in lax.padtype_to_pads(in_spatial, window,
                                                      strides, padding))
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if len(pads) != len(in_spatial):
    raise ValueError(f"padding {padding!r} does not match {len(in_spatial)} "
                     "spatial dimensions")
  return pads


def _dims_ok(dil) -> bool:
  return dil is None or all(int(d) == 1 for d in dil)


def is_fast_path(lhs, rhs, lhs_dilation=None, feature_group_count=1,
                 batch_group_count=1, preferred_element_type=None) -> bool:
  """Whether :func:`conv_general_dilated` uses the custom kernel gradient."""
  return (_dims_ok(lhs_dilation) and feature_group_count == 1
          and batch_group_count == 1 and preferred_element_type is None
          and jnp.issubdtype(jnp.result_type(lhs), jnp.floating)
          and jnp.issubdtype(jnp.result_type(rhs), jnp.floating)
          and jnp.result_type(lhs) == jnp.result_type(rhs))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Same as :func:`jax.lax.conv_general_dilated`, with a faster exact VJP."""
  if not is_fast_path(lhs, rhs, lhs_dilation, feature_group_count,
                      batch_group_count, preferred_element_type):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  lhs = jnp.asarray(lhs)
  rhs = jnp.asarray(rhs)
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  nsp = lhs.ndim - 2
  strides = tuple(int(s) for s in window_strides)
  rdil = (1,) * nsp if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
  in_spatial = [lhs.shape[d] for d in dn.lhs_spec[2:]]
  ksize = [rhs.shape[d] for d in dn.rhs_spec[2:]]
  window = [(k - 1) * d + 1 for k, d in zip(ksize, rdil)]
  pads = _canonical_pads(in_spatial, window, strides, padding)
  if isinstance(precision, list):
    precision = tuple(precision)
  return _conv(lhs, rhs, strides, pads, rdil, dn, precision)


def _plain(lhs, rhs, strides, pads, rdil, dn, precision):
  return lax.conv_general_dilated(lhs, rhs, strides, pads, rhs_dilation=rdil,
                                  dimension_numbers=dn, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(lhs, rhs, strides, pads, rdil, dn, precision):
  return _plain(lhs, rhs, strides, pads, rdil, dn, precision)


def _conv_fwd(lhs, rhs, strides, pads, rdil, dn, precision):
  return _plain(lhs, rhs, strides, pads, rdil, dn, precision), (lhs, rhs)


def _conv_bwd(strides, pads, rdil, dn, precision, res, g):
  lhs, rhs = res
  f = lambda l: _plain(l, rhs, strides, pads, rdil, dn, precision)
  (dlhs,) = jax.linear_transpose(f, jax.ShapeDtypeStruct(lhs.shape, lhs.dtype))(g)
  drhs = kernel_grad(lhs, g, rhs.shape, strides, pads, rdil, dn, precision)
  return dlhs, drhs.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _chunking(n: int, rows_per_image: int, target_rows: int):
  """(images per chunk, number of chunks, padded batch)."""
  per = max(1, min(n, target_rows // max(1, rows_per_image)))
  if per >= n:
    return n, 1, n
  for b in range(per, max(1, per // 2) - 1, -1):  # a divisor close to `per`
    if n % b == 0:
      return b, n // b, n
  chunks = -(-n // per)
  return per, chunks, per * chunks


def kernel_grad(lhs, dout, rhs_shape: Sequence[int], strides, pads, rdil,
                dimension_numbers, precision=None, target_rows: int | None = None):
  """dL/dK of ``lax.conv_general_dilated`` by chunked im2col matmuls.

  Args:
    lhs: conv input, laid out as ``dimension_numbers.lhs_spec`` says.
    dout: cotangent of the conv output (``out_spec`` layout).
    rhs_shape: shape of the kernel (``rhs_spec`` layout).
    strides, pads, rdil: window strides, explicit ((lo, hi), ...) padding and
      kernel dilation, one per spatial dim.
    dimension_numbers: a ``lax.ConvDimensionNumbers``.
    precision: passed to the matmul.
    target_rows: output pixels per im2col chunk (default :data:`TARGET_ROWS`).
  Returns:
    The kernel gradient with ``rhs_shape``; float32 accumulation for
    low-precision inputs, cast back by the caller.
  """
  dn = dimension_numbers
  nsp = lhs.ndim - 2
  # Canonical channels-last layouts: x (N, *S, C), dy (N, *So, O).
  x = jnp.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
  dy = jnp.transpose(dout, (dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1]))
  ksize = tuple(rhs_shape[d] for d in dn.rhs_spec[2:])
  c_in, c_out = x.shape[-1], dy.shape[-1]
  out_spatial = dy.shape[1:-1]
  zero = jnp.zeros((), x.dtype)
  x = lax.pad(x, zero, [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
  n = x.shape[0]
  rows_per_image = int(np.prod(out_spatial))
  per, chunks, n_pad = _chunking(n, rows_per_image, target_rows or TARGET_ROWS)
  if n_pad != n:  # zero images add nothing to the sum
    x = jnp.pad(x, [(0, n_pad - n)] + [(0, 0)] * (nsp + 1))
    dy = jnp.pad(dy, [(0, n_pad - n)] + [(0, 0)] * (nsp + 1))
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  taps = list(np.ndindex(*ksize))

  def chunk_grad(xc, dyc):
    b = xc.shape[0]
    cols = []
    for tap in taps:
      start = [0] + [t * d for t, d in zip(tap, rdil)] + [0]
      limit = ([b] + [t * d + (o - 1) * s + 1
                      for t, d, o, s in zip(tap, rdil, out_spatial, strides)]
               + [c_in])
      cols.append(lax.slice(xc, start, limit, [1, *strides, 1]))
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    patches = patches.reshape(b * rows_per_image, len(taps) * c_in)
    # (O, T*C) = dY^T @ patches: measured ~20% faster on XLA:CPU than
    # patches^T @ dY (the transposed result is tiny).
    return lax.dot_general(dyc.reshape(b * rows_per_image, c_out), patches,
                           (((0,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=acc_dtype)

  if chunks == 1:
    g = chunk_grad(x, dy)
  else:
    xs = x.reshape(chunks, per, *x.shape[1:])
    dys = dy.reshape(chunks, per, *dy.shape[1:])

    def body(acc, xd):
      return acc + chunk_grad(*xd), None

    g, _ = lax.scan(body, jnp.zeros((c_out, len(taps) * c_in), acc_dtype),
                    (xs, dys))
  g = g.T.reshape(*ksize, c_in, c_out)  # canonical (*K, I, O)
  src = [0] * (nsp + 2)
  src[dn.rhs_spec[0]] = nsp + 1
  src[dn.rhs_spec[1]] = nsp
  for k, d in enumerate(dn.rhs_spec[2:]):
    src[d] = k
  return jnp.transpose(g, src)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
Conv.__doc__ = "``flax.linen.Conv`` using :func:`conv_general_dilated`."
