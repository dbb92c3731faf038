"""Core SupSup benchmarks: top-k masking and the GG conv train step."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.registry import benchmark
from supsup_jax import conv as conv_lib
from supsup_jax.masks import apply_masks, init_scores, masks_from_scores, topk_mask
from supsup_jax.weights import init_weights


@benchmark("topk_mask_ms", "ms")
def topk_mask_ms():
  """supsup_jax.masks.topk_mask on 36,864 scores (a 3x3x64x64 kernel), k=0.5."""
  scores = jax.random.normal(jax.random.key(0), (3, 3, 64, 64))
  f = jax.jit(lambda s: topk_mask(s, 0.5))
  return lambda: f(scores)


def max_pool_2x2(x):
  """2x2/2 max pool (NHWC, even H and W) as a reshape + max.

  Same forward as ``nn.max_pool(x, (2, 2), (2, 2))``. Its gradient goes
  through reduce-max's VJP (elementwise, fused) instead of XLA's
  select-and-scatter, which is ~2.5x slower on XLA:CPU (64ch 32x32 B=128:
  ~80 vs ~210 ms). Gradients differ only on exact ties inside a window
  (split evenly instead of to the first max); after ReLU such ties are
  zeros whose ReLU gradient is 0 anyway.
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def nn_max_pool_2x2(x):
  return nn.max_pool(x, (2, 2), (2, 2))


class GGConv4(nn.Module):
  """4 bias-free 3x3x64 convs (pool after 2 and 4), global pool, 1x1 conv to 10."""
  conv: type = nn.Conv
  pool: object = max_pool_2x2
  width: int = 64
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    for i in range(4):
      x = nn.relu(self.conv(self.width, (3, 3), use_bias=False)(x))
      if i % 2 == 1:
        x = self.pool(x)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = self.conv(self.num_classes, (1, 1), use_bias=False)(x)
    return x.reshape(x.shape[0], -1)


def make_train_step(conv=conv_lib.Conv, batch_size=128, k=0.5, seed=0,
                    pool=max_pool_2x2):
  """Returns (step, scores, opt_state, batch) for the GG conv4 SupSup step."""
  model = GGConv4(conv=conv, pool=pool)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch_size, 32, 32, 3), np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch_size))
  weights = init_weights(model, seed, x)
  scores = init_scores(weights, jax.random.key(seed))
  opt = optax.adam(1e-3)
  opt_state = opt.init(scores)

  def loss_fn(scores, batch):
    params = apply_masks(weights, masks_from_scores(scores, "topk", k))
    logits = model.apply({"params": params}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  @jax.jit
  def step(scores, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(scores, batch)
    updates, opt_state = opt.update(grads, opt_state, scores)
    return optax.apply_updates(scores, updates), opt_state, loss

  return step, scores, opt_state, (x, y)


def _stateful(step, scores, opt_state, batch):
  state = [scores, opt_state]

  def call():
    state[0], state[1], loss = step(state[0], state[1], batch)
    return loss
  return call


@benchmark("gg_conv_train_step_ms", "ms")
def gg_conv_train_step_ms():
  """GG conv4 SupSup train step, B=128 32x32x3, top-k 0.5, Adam; fast conv VJP."""
  return _stateful(*make_train_step(conv_lib.Conv))


@benchmark("gg_conv_train_step_ms_xla", "ms")
def gg_conv_train_step_ms_xla():
  """Same step with flax's default lax.conv_general_dilated (XLA's gradient)."""
  return _stateful(*make_train_step(nn.Conv))


@benchmark("gg_conv_train_step_ms_nnpool", "ms")
def gg_conv_train_step_ms_nnpool():
  """Fast conv VJP but flax nn.max_pool (select-and-scatter gradient)."""
  return _stateful(*make_train_step(conv_lib.Conv, pool=nn_max_pool_2x2))


@benchmark("gg_conv_train_step_peak_rss_mb", "MB", peak_rss=True)
def gg_conv_train_step_peak_rss_mb():
  """Peak RSS of a fresh process compiling and running one fast-conv step."""
  return _stateful(*make_train_step(conv_lib.Conv))
