"""Core SupSup benchmarks: top-k masking and the GG conv train step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.registry import benchmark
from supsup_jax import conv as conv_lib
from supsup_jax.models import SmallConvNet
from supsup_jax.masks import apply_masks, init_scores, masks_from_scores, topk_mask
from supsup_jax.weights import init_weights


@benchmark("topk_mask_ms", "ms")
def topk_mask_ms():
  """supsup_jax.masks.topk_mask on 36,864 scores (a 3x3x64x64 kernel), k=0.5."""
  scores = jax.random.normal(jax.random.key(0), (3, 3, 64, 64))
  f = jax.jit(lambda s: topk_mask(s, 0.5))
  return lambda: f(scores)


def make_model(conv_general_dilated=conv_lib.conv_general_dilated):
  """The library's GG conv net: 4 3x3x64 convs, 2x2 pools, 1x1 conv to 10."""
  return SmallConvNet(channels=64, num_outputs=10,
                      conv_general_dilated=conv_general_dilated)


def make_train_step(conv_general_dilated=conv_lib.conv_general_dilated,
                    batch_size=128, k=0.5, seed=0):
  """Returns (step, scores, opt_state, batch) for the GG conv4 SupSup step.

  ``conv_general_dilated=None`` uses flax's default (``lax``'s, XLA's VJP).
  """
  model = make_model(conv_general_dilated)
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
  """SmallConvNet(64) SupSup train step, B=128 32x32x3, top-k 0.5, Adam;
  the learners' conv on the CPU (supsup_jax.conv)."""
  return _stateful(*make_train_step(conv_lib.conv_general_dilated))


@benchmark("gg_conv_train_step_ms_xla", "ms")
def gg_conv_train_step_ms_xla():
  """Same step with flax's default lax.conv_general_dilated (XLA's gradient),
  as one jitted step (inside a scan, as the run loop trains, it is far slower:
  see gg_conv_kernel_grad_3_in_scan_ms_xla)."""
  return _stateful(*make_train_step(None))


def _conv_grad_in_scan(conv_fn, num_steps=3):
  """A call runs a lax.scan of ``num_steps`` iterations, each taking dL/dW
  of a 3x3 16->16 conv, B=64 32x32 (the run loop trains in such a scan)."""
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.random.normal(jax.random.key(0), (64, 32, 32, 16))
  w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16))
  grad = jax.grad(lambda w: (conv_fn(x, w, (1, 1), "SAME", dimension_numbers=dn) ** 2).sum())
  scan = jax.jit(lambda w: jax.lax.scan(lambda c, _: (c - 1e-6 * grad(c), None), w,
                                        None, length=num_steps)[0])
  return lambda: scan(w)


@benchmark("gg_conv_kernel_grad_3_in_scan_ms_xla", "ms")
def gg_conv_kernel_grad_3_in_scan_ms_xla():
  """3 scan iterations, each XLA's kernel gradient of a 3x3 16->16 conv
  (B=64, 32x32); outside a scan one takes ~17 ms."""
  return _conv_grad_in_scan(jax.lax.conv_general_dilated)


@benchmark("gg_conv_kernel_grad_3_in_scan_ms_custom_vjp", "ms")
def gg_conv_kernel_grad_3_in_scan_ms_custom_vjp():
  """The same 3 scan iterations through supsup_jax.conv."""
  return _conv_grad_in_scan(conv_lib.conv_general_dilated)


@benchmark("gg_conv_train_step_peak_rss_mb", "MB", peak_rss=True)
def gg_conv_train_step_peak_rss_mb():
  """Peak RSS of a fresh process compiling and running one fast-conv step."""
  return _stateful(*make_train_step(conv_lib.conv_general_dilated))
