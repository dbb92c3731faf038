"""A Flax model whose maskable weights are multiplied by a supermask.

The weights are an argument of every call, never state: the same
:class:`MaskedModel` serves every task, and the scores (or masks) are the
only thing a task owns.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import masks as masks_lib
from supsup_jax import weights as weights_lib
from supsup_jax.masks import MaskSpec

_SHAPE_ERROR = re.compile(r'parameter "(?P<name>[^"]*)" in "(?P<scope>[^"]*)".*?'
                          r'generate shape (?P<made>\([^)]*\)).*?'
                          r'received has shape (?P<held>\([^)]*\))', re.S)


def _fmt(shape: Sequence[int], lead: str = "B") -> str:
  return "[" + ", ".join([lead, *(str(d) for d in shape)]) + "]"


class InputShapeError(ValueError):
  """Images whose shape does not fit the model (a one-line ValueError).

  Attributes: ``expected`` (per-example shape, or None when unknown) and
  ``detail`` (which parameter did not fit), so callers that batch images
  differently (``[N, n, ...]``) can restate the message for their shape.
  """

  def __init__(self, given: tuple, expected: tuple | None, detail: str = "",
               lead: str = "B", what: str = "images"):
    self.given, self.expected, self.detail = given, expected, detail
    super().__init__(self.message(given, lead, what))

  def message(self, given: tuple, lead: str = "B", what: str = "images") -> str:
    per = len(lead.split(", "))
    if self.expected is not None:
      want = _fmt(self.expected, lead)
      hint = ("add a batch axis: images[None]" if tuple(given) == self.expected
              else f"pass {what} of shape {want}")
      return (f"{what} have shape {tuple(given)}, this model takes {want}{self.detail}; "
              f"{hint}")
    return (f"{what} of shape {tuple(given)} (per example {tuple(given)[per:]}) do not fit "
            f"this model's weights{self.detail}; pass {what} of the per-example shape the "
            "weights were built from (MaskedModel(..., input_shape=...) checks it up front)")


class MaskedModel:
  """A Flax model whose maskable weights are multiplied by a supermask.

  Attributes:
    model: the Flax module; ``model.apply(variables, x, train=...)``.
    mask_spec: how scores turn into masks.
    num_classes: real classes per task; logits beyond them are superfluous
      neurons (trained down by the cross-entropy, ignored by accuracy).
    input_shape: the per-example input shape (no batch axis), or None. When
      given, every call checks ``images.shape[1:]`` against it up front (a
      static check: free under ``jit``). Without it, images whose shape does
      not fit the weights are still refused in one line (instead of Flax's
      ``ScopeParamShapeError``), naming the shape
      :func:`~supsup_jax.weights.init_weights` built the weights from when it
      is known.

  The constructor takes the attributes in this order (``input_shape``
  optional) and raises ValueError for an ``input_shape`` with a size < 1.
  The weights, scores or masks and batch-norm statistics are arguments of
  every call, never state, so one instance serves every task.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import supsup_jax as ss
    >>> model = ss.models.LeNet300100(num_outputs=10)
    >>> weights = ss.init_weights(model, 0, jnp.zeros((1, 28, 28, 1)))
    >>> masked = ss.MaskedModel(model, ss.MaskSpec("topk", 0.5), 10,
    ...                         input_shape=(28, 28, 1))
    >>> scores = ss.init_scores(weights, jax.random.key(1))
    >>> logits, stats = masked.logits(weights, scores, {}, jnp.zeros((4, 28, 28, 1)),
    ...                               train=False)
    >>> logits.shape
    (4, 10)
  """

  def __init__(self, model: nn.Module, mask_spec: MaskSpec, num_classes: int,
               input_shape: Sequence[int] | None = None):
    self.model = model
    self.mask_spec = mask_spec
    self.num_classes = num_classes
    if input_shape is not None:
      input_shape = tuple(int(d) for d in input_shape)
      if min(input_shape, default=1) < 1:
        raise ValueError(f"input_shape must hold positive sizes (no batch axis), "
                         f"got {input_shape}; e.g. (28, 28, 1)")
    self.input_shape = input_shape

  def check_images(self, images: Any) -> None:
    """One-line ValueError unless ``images`` is a batch ``[B, *input_shape]``
    (shape only; does nothing when ``input_shape`` is not set)."""
    if self.input_shape is None:
      return
    shape = tuple(np.shape(images))
    if shape[1:] != self.input_shape:
      raise InputShapeError(shape, self.input_shape, f" (input_shape={self.input_shape})")

  def apply(self, variables, images, **kwargs):
    """``model.apply(variables, images, **kwargs)`` with the input shape
    checked: images that do not fit are an :class:`InputShapeError` (one line
    naming the given and, when known, the expected shape), not Flax's
    ``ScopeParamShapeError``."""
    self.check_images(images)
    try:
      return self.model.apply(variables, images, **kwargs)
    except flax.errors.ScopeParamShapeError as e:
      expected = weights_lib.example_input_shape(self.model, variables.get("params", {}))
      m = _SHAPE_ERROR.search(str(e))
      detail = (f" ({m['scope'].strip('/')}/{m['name']} would be {m['made']}, the weights "
                f"hold {m['held']})" if m else "")
      raise InputShapeError(tuple(np.shape(images)), expected, detail) from None

  def logits_with_masks(self, weights, masks, batch_stats, images, train: bool,
                        key: jax.Array | None = None):
    """Logits [B, num_outputs] and updated batch_stats, given masks.

    Args:
      weights: the fixed params tree.
      masks: a masks tree over (a subset of) the leaves of ``weights``
        (:func:`~supsup_jax.masks.apply_masks`); 0/1, or real values such as
        a superposition of masks.
      batch_stats: the model's ``batch_stats`` collection, or ``{}`` (or
        None) for a model without batch norm.
      images: ``[B, *input_shape]``.
      train: the model's ``train`` argument (with batch norm, True
        normalises by the batch and updates the statistics).
      key: PRNG key for dropout (None: no ``rngs`` passed).

    Returns:
      ``(logits, batch_stats)``: logits ``[B, num_outputs]`` (of which the
      first ``num_classes`` are the real classes); with ``train=True`` and
      non-empty ``batch_stats`` the updated statistics, else ``batch_stats``
      as given.

    Raises:
      InputShapeError: ``images`` do not fit the model (a ValueError).
    """
    params = masks_lib.apply_masks(weights, masks)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    rngs = {"dropout": key} if key is not None else None
    if train and batch_stats:
      logits, updates = self.apply(variables, images, train=True,
                                   mutable=["batch_stats"], rngs=rngs)
      return logits, updates["batch_stats"]
    return self.apply(variables, images, train=train, rngs=rngs), batch_stats

  def logits(self, weights, scores, batch_stats, images, train: bool,
             key: jax.Array | None = None):
    """:meth:`logits_with_masks` with the masks ``mask_spec(scores)``.

    Args:
      weights: the fixed params tree.
      scores: a scores tree (:func:`~supsup_jax.masks.init_scores`); the
        masks taken from it pass gradients straight through to it.
      batch_stats, images, train, key: as in :meth:`logits_with_masks`.

    Returns:
      ``(logits [B, num_outputs], batch_stats)`` as :meth:`logits_with_masks`.
    """
    return self.logits_with_masks(weights, self.mask_spec(scores), batch_stats,
                                  images, train, key)


def accuracy(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Accuracy with the prediction restricted to the real classes."""
  return jnp.mean(jnp.argmax(logits[:, :num_classes], -1) == labels)
