"""A Flax model whose maskable weights are multiplied by a supermask.

The weights are an argument of every call, never state: the same
:class:`MaskedModel` serves every task, and the scores (or masks) are the
only thing a task owns.
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from supsup_jax import masks as masks_lib
from supsup_jax.masks import MaskSpec


class MaskedModel:
  """A Flax model whose maskable weights are multiplied by a supermask.

  Attributes:
    model: the Flax module; ``model.apply(variables, x, train=...)``.
    mask_spec: how scores turn into masks.
    num_classes: real classes per task; logits beyond them are superfluous
      neurons (trained down by the cross-entropy, ignored by accuracy).
  """

  def __init__(self, model: nn.Module, mask_spec: MaskSpec, num_classes: int):
    self.model = model
    self.mask_spec = mask_spec
    self.num_classes = num_classes

  def logits_with_masks(self, weights, masks, batch_stats, images, train: bool,
                        key: jax.Array | None = None):
    """Logits [B, num_outputs] and updated batch_stats, given masks."""
    params = masks_lib.apply_masks(weights, masks)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    rngs = {"dropout": key} if key is not None else None
    if train and batch_stats:
      logits, updates = self.model.apply(variables, images, train=True,
                                         mutable=["batch_stats"], rngs=rngs)
      return logits, updates["batch_stats"]
    return self.model.apply(variables, images, train=train, rngs=rngs), batch_stats

  def logits(self, weights, scores, batch_stats, images, train: bool,
             key: jax.Array | None = None):
    return self.logits_with_masks(weights, self.mask_spec(scores), batch_stats,
                                  images, train, key)


def accuracy(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Accuracy with the prediction restricted to the real classes."""
  return jnp.mean(jnp.argmax(logits[:, :num_classes], -1) == labels)



