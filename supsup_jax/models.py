"""Bias-free Flax Linen models used by SupSup and its baselines.

Every model takes NHWC images and returns logits ``[B, num_outputs]``.
``num_outputs`` is the output width; superfluous neurons are simply a bigger
output than the number of classes. All layers are bias-free and batch norm is
non-affine (no scale/offset), so the only parameters are kernels and the only
other variables are the ``batch_stats`` running statistics.

Per-task batch norm: models keep one ``batch_stats`` collection; the trainer
holds a separate ``batch_stats`` tree per task (see
:mod:`supsup_jax.training`), so training task 2 never touches task 1's
statistics.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from supsup_jax import sparse_input

ConvFn = Callable[..., jax.Array]


def _check_width(name: str, v: Any) -> None:
  if isinstance(v, bool) or not isinstance(v, int) or v < 1:
    raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def _check_widths(name: str, v: Any) -> None:
  if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
    raise ValueError(f"{name} must be a sequence of ints >= 1, got {v!r}")
  for w in v:
    _check_width(f"{name} entry", w)


def _bn(train: bool, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, use_scale=False,
                      use_bias=False, momentum=0.9, epsilon=1e-5, name=name)


class MLP(nn.Module):
  """Bias-free ReLU MLP on flattened inputs (LeNet 300-100, FC 1024-1024).

  ``sparse_input=True``: the first layer's products skip each input row's
  background entries (:mod:`supsup_jax.sparse_input`; the same function up to
  float round-off, ~2x faster on zero-background images such as MNIST).
  """
  hidden: Sequence[int] = (300, 100)
  num_outputs: int = 10
  sparse_input: bool = False

  def __post_init__(self):
    _check_widths("hidden", self.hidden)
    _check_width("num_outputs", self.num_outputs)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate((*self.hidden, self.num_outputs)):
      # (dot_general left unset otherwise: the parameters and the plain
      # program stay exactly as before.)
      kw = {"dot_general": sparse_input.dot_general} if self.sparse_input and i == 0 else {}
      x = nn.Dense(width, use_bias=False, **kw)(x)
      if i < len(self.hidden):
        x = nn.relu(x)
    return x


def LeNet300100(num_outputs: int = 10, **kw: Any) -> MLP:  # pylint: disable=invalid-name
  return MLP(hidden=(300, 100), num_outputs=num_outputs, **kw)


def FC10241024(num_outputs: int = 10, **kw: Any) -> MLP:  # pylint: disable=invalid-name
  return MLP(hidden=(1024, 1024), num_outputs=num_outputs, **kw)


class BNSwishMLP(nn.Module):
  """784-2048-2048-out MLP with non-affine batch norm and Swish (HopSupSup)."""
  hidden: Sequence[int] = (2048, 2048)
  num_outputs: int = 10

  def __post_init__(self):
    _check_widths("hidden", self.hidden)
    _check_width("num_outputs", self.num_outputs)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.Dense(width, use_bias=False)(x)
      x = nn.swish(_bn(train)(x))
    return nn.Dense(self.num_outputs, use_bias=False)(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pool with stride 2 (NHWC, even H and W) as a reshape + max.

  Same forward as ``nn.max_pool(x, (2, 2), strides=(2, 2))``. Its gradient
  goes through reduce-max's VJP (elementwise, fused) instead of XLA's
  select-and-scatter, which is ~2.5x slower on XLA:CPU (64ch 32x32 B=128:
  ~80 vs ~210 ms). Gradients differ only on exact ties inside a window (split
  evenly instead of all to the first max); after ReLU such ties are mostly
  zeros, whose ReLU gradient is 0 anyway. Odd H or W falls back to
  ``nn.max_pool`` (which drops the last row/column, as here).
  """
  *lead, h, w, c = x.shape
  if h % 2 or w % 2:
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  return x.reshape(*lead, h // 2, 2, w // 2, 2, c).max(axis=(-4, -2))


class SmallConvNet(nn.Module):
  """Conv net for 28x28 / 32x32 inputs.

  conv3x3(c) x2, maxpool, conv3x3(c) x2, maxpool, global average pool, masked
  1x1 conv to ``num_outputs``. Optional non-affine batch norm after each conv.
  """
  channels: int = 64
  num_outputs: int = 10
  batch_norm: bool = False
  conv_general_dilated: ConvFn | None = None

  def __post_init__(self):
    _check_width("channels", self.channels)
    _check_width("num_outputs", self.num_outputs)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False,
                             conv_general_dilated=self.conv_general_dilated)
    for block in range(2):
      for _ in range(2):
        x = conv(self.channels, (3, 3), padding="SAME")(x)
        if self.batch_norm:
          x = _bn(train)(x)
        x = nn.relu(x)
      del block
      x = max_pool_2x2(x)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = conv(self.num_outputs, (1, 1))(x)
    return x.reshape((x.shape[0], -1))


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  conv_general_dilated: ConvFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False,
                             conv_general_dilated=self.conv_general_dilated)
    out = conv(self.planes, (3, 3), strides=self.stride, padding=1)(x)
    out = nn.relu(_bn(train)(out))
    out = conv(self.planes, (3, 3), padding=1)(out)
    out = _bn(train)(out)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, (1, 1), strides=self.stride)(x)
      x = _bn(train)(x)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  conv_general_dilated: ConvFn | None = None
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False,
                             conv_general_dilated=self.conv_general_dilated)
    out = nn.relu(_bn(train)(conv(self.planes, (1, 1))(x)))
    out = conv(self.planes, (3, 3), strides=self.stride, padding=1)(out)
    out = nn.relu(_bn(train)(out))
    out = _bn(train)(conv(self.planes * self.expansion, (1, 1))(out))
    if self.stride != 1 or x.shape[-1] != self.planes * self.expansion:
      x = conv(self.planes * self.expansion, (1, 1), strides=self.stride)(x)
      x = _bn(train)(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """ResNet with non-affine BN.

  ``stem="cifar"``: one 3x3 conv, stride 1 (GEM-ResNet18 for 32x32 inputs).
  ``stem="imagenet"``: 7x7 stride-2 conv and 3x3 max pool (ResNet-18/50).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  width: int = 64
  num_outputs: int = 1000
  stem: str = "imagenet"
  conv_general_dilated: ConvFn | None = None

  def __post_init__(self):
    _check_widths("stage_sizes", self.stage_sizes)
    _check_width("width", self.width)
    _check_width("num_outputs", self.num_outputs)
    if self.block not in ("basic", "bottleneck"):
      raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
    if self.stem not in ("cifar", "imagenet"):
      raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False,
                             conv_general_dilated=self.conv_general_dilated)
    if self.stem == "cifar":
      x = nn.relu(_bn(train)(conv(self.width, (3, 3), padding=1)(x)))
    else:
      x = conv(self.width, (7, 7), strides=2, padding=3)(x)
      x = nn.relu(_bn(train)(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = BasicBlock if self.block == "basic" else Bottleneck
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, stride,
                      conv_general_dilated=self.conv_general_dilated)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_outputs, use_bias=False)(x)


def GEMResNet18(num_outputs: int = 5, **kw: Any) -> ResNet:  # pylint: disable=invalid-name
  """The SplitCIFAR100 model of GEM/SupSup: widths 20/40/80/160."""
  return ResNet((2, 2, 2, 2), "basic", 20, num_outputs, "cifar", **kw)


def ResNet18(num_outputs: int = 1000, **kw: Any) -> ResNet:  # pylint: disable=invalid-name
  return ResNet((2, 2, 2, 2), "basic", 64, num_outputs, "imagenet", **kw)


def ResNet50(num_outputs: int = 1000, **kw: Any) -> ResNet:  # pylint: disable=invalid-name
  return ResNet((3, 4, 6, 3), "bottleneck", 64, num_outputs, "imagenet", **kw)


#: Model names (``config.model``) and their constructors.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300100": LeNet300100,
    "fc10241024": FC10241024,
    "bn_swish_mlp": lambda num_outputs=10, **kw: BNSwishMLP(num_outputs=num_outputs, **kw),
    "small_conv": lambda num_outputs=10, **kw: SmallConvNet(num_outputs=num_outputs, **kw),
    "gem_resnet18": GEMResNet18,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
}


# Models built from convolutions accept ``conv_general_dilated=`` (e.g. the
# fast CPU convolution of :mod:`supsup_jax.conv`); the MLPs have no convolution.
TAKES_CONV_FN = frozenset({"small_conv", "gem_resnet18", "resnet18", "resnet50"})


def make_model(name: str, num_outputs: int, **kwargs: Any) -> nn.Module:
  """Builds a model by name (see ``MODELS``)."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
  _check_width("num_outputs", num_outputs)
  try:
    return MODELS[name](num_outputs=num_outputs, **kwargs)
  except TypeError as e:  # an unknown keyword argument
    raise ValueError(f"model {name!r} does not take {sorted(kwargs)}: {e}") from None

