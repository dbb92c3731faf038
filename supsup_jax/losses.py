"""The losses and batch statistics every learner and study shares, written once.

Shapes: ``logits`` float ``[..., B, C]``, ``labels`` int ``[..., B]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer ``labels`` (all leading axes) -> []."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def entropy(logits: jax.Array) -> jax.Array:
  """Shannon entropy (nats) of the softmax of each row: ``[..., C] -> [...]``."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def batch_entropy(logits: jax.Array) -> jax.Array:
  """Softmax entropy averaged over the batch axis: ``[..., B, C] -> [...]``
  (SupSup's H objective, ABatchE's and HopSupSup's task score)."""
  return jnp.mean(entropy(logits), axis=-1)
