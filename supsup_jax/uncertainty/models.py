"""A LeNet-sized MLP with the two stochastic layers the uncertainty methods need.

``UncertaintyMLP`` is the LeNet 300-100 of LeCun et al. (1998) with biases and
two optional layers on each hidden activation (after the ReLU):

- dropout (Srivastava et al. 2014), kept on at test time for MC-dropout;
- Masksembles group masks (Durasov et al. 2021, arXiv 2012.08334): the batch is
  split into N contiguous groups and group i is multiplied by fixed mask i.

The masks are an argument of ``__call__``, not parameters or constants of the
module, so they are never trained and the same module serves every method.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


def apply_group_masks(x: jax.Array, masks: jax.Array) -> jax.Array:
  """x ``[B, C]``, masks ``[N, C]`` -> x with rows of group i times mask i.

  Groups are contiguous: rows ``i*B/N .. (i+1)*B/N - 1`` form group i, so B
  must be a multiple of N.
  """
  n = masks.shape[0]
  b, c = x.shape
  if b % n:
    raise ValueError(f"batch of {b} cannot be split into {n} Masksembles groups; "
                     f"use a multiple of {n}")
  return (x.reshape(n, b // n, c) * masks[:, None, :].astype(x.dtype)).reshape(b, c)


class UncertaintyMLP(nn.Module):
  """ReLU MLP on flattened NHWC inputs -> logits ``[B, num_outputs]``."""
  hidden: Sequence[int] = (300, 100)
  num_outputs: int = 10
  dropout_rate: float = 0.0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, stochastic: bool = False,
               masks: Sequence[jax.Array] | None = None) -> jax.Array:
    """Args:
      x: ``[B, H, W, C]`` (or any ``[B, ...]``).
      stochastic: dropout on (needs a ``dropout`` PRNG stream); off = identity.
      masks: None, or one ``[N, width]`` 0/1 array per hidden layer (Masksembles).
    """
    x = x.reshape((x.shape[0], -1))
    if masks is not None and len(masks) != len(self.hidden):
      raise ValueError(f"need one mask set per hidden layer ({len(self.hidden)}), got {len(masks)}")
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, use_bias=self.use_bias)(x))
      if masks is not None:
        x = apply_group_masks(x, masks[i])
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not stochastic)(x)
    return nn.Dense(self.num_outputs, use_bias=self.use_bias)(x)
