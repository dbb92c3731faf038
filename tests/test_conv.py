"""supsup_jax.conv: forward and both gradients equal plain lax conv."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from supsup_jax import conv as conv_lib
from supsup_jax.masks import apply_masks, init_scores, masks_from_scores
from supsup_jax.weights import init_weights

NHWC = ("NHWC", "HWIO", "NHWC")
RTOL, ATOL = 2e-5, 2e-5


def _data(shape_x, shape_k, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal(shape_x), jnp.float32),
          jnp.asarray(rng.standard_normal(shape_k), jnp.float32))


def _loss(conv_fn, **kw):
  def f(x, k):
    y = conv_fn(x, k, **kw)
    # A non-trivial cotangent: d/dy of sum(sin(y) * y) is not constant.
    return jnp.sum(jnp.sin(y) * y)
  return f


def _check(x, k, **kw):
  ref = _loss(lax.conv_general_dilated, **kw)
  new = _loss(conv_lib.conv_general_dilated, **kw)
  y_ref = lax.conv_general_dilated(x, k, **kw)
  y_new = conv_lib.conv_general_dilated(x, k, **kw)
  np.testing.assert_array_equal(np.asarray(y_new), np.asarray(y_ref))
  g_ref = jax.jit(jax.grad(ref, (0, 1)))(x, k)
  g_new = jax.jit(jax.grad(new, (0, 1)))(x, k)
  for a, b in zip(g_new, g_ref):
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                               atol=ATOL * scale)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 2), (0, 1)), "SAME_LOWER"])
@pytest.mark.parametrize("cin,cout", [(1, 4), (16, 5)])
def test_matches_lax_nhwc(stride, padding, cin, cout):
  x, k = _data((3, 9, 8, cin), (3, 3, cin, cout))
  _check(x, k, window_strides=(stride, stride), padding=padding,
         dimension_numbers=NHWC)


@pytest.mark.parametrize("ksize", [(1, 1), (2, 3), (5, 5)])
def test_kernel_sizes(ksize):
  x, k = _data((2, 11, 10, 4), (*ksize, 4, 6))
  for stride in [(1, 1), (2, 1), (3, 2)]:
    _check(x, k, window_strides=stride, padding="SAME", dimension_numbers=NHWC)


def test_default_nchw_layout_and_rhs_dilation():
  x, k = _data((2, 3, 10, 9), (4, 3, 3, 3))  # NCHW / OIHW
  _check(x, k, window_strides=(1, 2), padding="SAME", rhs_dilation=(2, 1))
  _check(x, k, window_strides=(2, 2), padding="VALID")


def test_1d_and_3d():
  x, k = _data((2, 13, 3), (3, 3, 5))
  _check(x, k, window_strides=(2,), padding="SAME",
         dimension_numbers=("NWC", "WIO", "NWC"))
  x, k = _data((2, 5, 6, 4, 2), (3, 2, 3, 2, 3))
  _check(x, k, window_strides=(1, 2, 1), padding="SAME",
         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def test_chunked_scan_path(monkeypatch):
  # Force several batch chunks, including a batch that needs zero padding.
  monkeypatch.setattr(conv_lib, "TARGET_ROWS", 40)
  for n in (8, 7):
    x, k = _data((n, 6, 6, 3), (3, 3, 3, 4))
    _check(x, k, window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
    _check(x, k, window_strides=(2, 2), padding="VALID", dimension_numbers=NHWC)


def test_chunking_helper():
  assert conv_lib._chunking(128, 1024, 8192) == (8, 16, 128)
  assert conv_lib._chunking(128, 1024, 4096) == (4, 32, 128)
  assert conv_lib._chunking(4, 1024, 8192) == (4, 1, 4)
  b, c, n = conv_lib._chunking(127, 1024, 8192)
  assert b * c == n >= 127 and b <= 8


def test_vmap():
  x, k = _data((4, 2, 7, 7, 3), (4, 3, 3, 3, 5))
  kw = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=NHWC)
  g_ref = jax.vmap(jax.grad(_loss(lax.conv_general_dilated, **kw), (0, 1)))(x, k)
  g_new = jax.jit(jax.vmap(jax.grad(_loss(conv_lib.conv_general_dilated, **kw),
                                    (0, 1))))(x, k)
  for a, b in zip(g_new, g_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                               atol=ATOL * float(jnp.max(jnp.abs(b))))
  # vmap over the kernel only (one input shared by several kernels).
  g_ref = jax.vmap(jax.grad(_loss(lax.conv_general_dilated, **kw), 1),
                   (None, 0))(x[0], k)
  g_new = jax.vmap(jax.grad(_loss(conv_lib.conv_general_dilated, **kw), 1),
                   (None, 0))(x[0], k)
  np.testing.assert_allclose(np.asarray(g_new), np.asarray(g_ref), rtol=RTOL,
                             atol=ATOL * float(jnp.max(jnp.abs(g_ref))))


def test_fallbacks():
  x, k = _data((2, 8, 8, 4), (3, 3, 2, 6))
  assert not conv_lib.is_fast_path(x, k, feature_group_count=2)
  _check(x, k, window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC,
         feature_group_count=2)
  x, k = _data((2, 8, 8, 4), (3, 3, 4, 6))
  assert not conv_lib.is_fast_path(x, k, lhs_dilation=(2, 2))
  _check(x, k, window_strides=(1, 1), padding=((1, 1), (2, 1)),
         dimension_numbers=NHWC, lhs_dilation=(2, 2))
  xi = jnp.ones((1, 4, 4, 1), jnp.int32)
  ki = jnp.ones((3, 3, 1, 1), jnp.int32)
  y = conv_lib.conv_general_dilated(xi, ki, (1, 1), "SAME", dimension_numbers=NHWC)
  assert y.dtype == jnp.int32 and int(y[0, 1, 1, 0]) == 9


def test_bfloat16():
  x, k = _data((2, 6, 6, 3), (3, 3, 3, 4))
  x, k = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
  f = lambda x, k: jnp.sum(conv_lib.conv_general_dilated(x, k, **kw).astype(jnp.float32))
  g = jax.grad(f, 1)(x, k)
  assert g.dtype == jnp.bfloat16
  ref = jax.grad(lambda k: jnp.sum(lax.conv_general_dilated(
      x.astype(jnp.float32), k, **kw)))(k.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(ref),
                             rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(ref))))


class _Net(nn.Module):
  conv: type = nn.Conv

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.conv(8, (3, 3), use_bias=False)(x))
    x = nn.relu(self.conv(8, (3, 3), strides=(2, 2), use_bias=False)(x))
    x = self.conv(3, (1, 1), padding="VALID")(x)
    return jnp.mean(x, axis=(1, 2))


def test_flax_masked_model_matches_plain_conv():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 3)),
                  jnp.float32)
  labels = jnp.array([0, 1, 2, 1])
  fast, plain = _Net(conv_lib.Conv), _Net(nn.Conv)
  weights = init_weights(plain, 0, x)
  assert jax.tree.map(jnp.shape, init_weights(fast, 0, x)) == jax.tree.map(
      jnp.shape, weights)
  scores = init_scores(weights, jax.random.key(0))

  def loss(scores, model):
    params = apply_masks(weights, masks_from_scores(scores, "topk", 0.5))
    logits = model.apply({"params": params}, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         labels[:, None], 1))

  l_fast, g_fast = jax.jit(jax.value_and_grad(lambda s: loss(s, fast)))(scores)
  l_ref, g_ref = jax.value_and_grad(lambda s: loss(s, plain))(scores)
  np.testing.assert_allclose(float(l_fast), float(l_ref), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                               atol=ATOL * float(jnp.max(jnp.abs(b))))
