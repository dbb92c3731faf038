"""supsup_jax.conv: forward and both gradients equal plain lax conv."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from supsup_jax import conv as conv_lib
from supsup_jax import winograd_kernel
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


def _check(x, k, options=conv_lib.DEFAULT_OPTIONS, **kw):
  ref = _loss(lax.conv_general_dilated, **kw)
  new = _loss(conv_lib.conv_general_dilated, options=options, **kw)
  y_ref = lax.conv_general_dilated(x, k, **kw)
  y_new = conv_lib.conv_general_dilated(x, k, options=options, **kw)
  assert y_new.shape == y_ref.shape and y_new.dtype == y_ref.dtype
  # Exact (same lax op) off the Winograd path; Winograd: float round-off.
  np.testing.assert_allclose(np.asarray(y_new), np.asarray(y_ref), rtol=RTOL,
                             atol=ATOL * float(jnp.max(jnp.abs(y_ref))))
  # The forward as computed under differentiation (Winograd where eligible).
  y_vjp = jax.jit(lambda x, k: jax.vjp(
      lambda x, k: conv_lib.conv_general_dilated(x, k, options=options, **kw),
      x, k)[0])(x, k)
  assert y_vjp.shape == y_ref.shape and y_vjp.dtype == y_ref.dtype
  np.testing.assert_allclose(np.asarray(y_vjp), np.asarray(y_ref), rtol=RTOL,
                             atol=ATOL * float(jnp.max(jnp.abs(y_ref))))
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


def test_chunked_scan_path():
  # Force several batch chunks, including a batch that needs zero padding.
  options = conv_lib.ConvOptions(target_rows=40)
  for n in (8, 7):
    x, k = _data((n, 6, 6, 3), (3, 3, 3, 4))
    _check(x, k, options, window_strides=(1, 1), padding="SAME",
           dimension_numbers=NHWC)
    _check(x, k, options, window_strides=(2, 2), padding="VALID",
           dimension_numbers=NHWC)


def test_options_are_explicit_and_checked():
  x, k = _data((2, 6, 6, 8), (3, 3, 8, 8))
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
  # make_conv binds options; the bound function keeps lax's signature.
  conv = conv_lib.make_conv(conv_lib.ConvOptions(winograd_forward=False))
  f = jax.jit(lambda x, k: jax.vjp(lambda k: conv(x, k, **kw), k)[0])
  y_ref = lax.conv_general_dilated(x, k, **kw)
  # Without the Winograd forward, the differentiated forward is lax's, exactly.
  np.testing.assert_array_equal(np.asarray(f(x, k)), np.asarray(y_ref))
  for bad in (dict(target_rows=0), dict(winograd_tiles=1.5),
              dict(winograd_min_channels=True)):
    with pytest.raises(ValueError, match="ConvOptions"):
      conv_lib.ConvOptions(**bad)
  with pytest.raises(ValueError, match="ConvOptions"):
    conv_lib.conv_general_dilated(x, k, options={"target_rows": 4}, **kw)


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


@pytest.mark.parametrize("stride,rdil", [((1, 1), (1, 1)), ((2, 1), (1, 2)),
                                         ((1, 3), (2, 1))])
def test_channels_first_patch_slicing(stride, rdil):
  # Strides / dilation in both the concatenated (last) and the looped (first)
  # spatial dim, several batch chunks, and negative padding.
  options = conv_lib.ConvOptions(target_rows=30)
  x, k = _data((5, 12, 11, 3), (3, 2, 3, 4))
  for padding in ["SAME", "VALID", ((2, 1), (-1, 2))]:
    _check(x, k, options, window_strides=stride, padding=padding,
           rhs_dilation=rdil, dimension_numbers=NHWC)


def test_kernel_grad_direct():
  x, k = _data((6, 9, 9, 8), (3, 3, 8, 5))
  dn = lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
  dy = jnp.asarray(np.random.default_rng(3).standard_normal((6, 9, 9, 5)),
                   jnp.float32)
  ref = jax.vjp(lambda k: lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=NHWC), k)[1](dy)[0]
  for rows in (None, 81, 200):
    g = jax.jit(lambda x, dy, r=rows: conv_lib.kernel_grad(
        x, dy, k.shape, (1, 1), ((1, 1), (1, 1)), (1, 1), dn, target_rows=r))(x, dy)
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=RTOL,
                               atol=ATOL * float(jnp.max(jnp.abs(ref))))


def _small_convnet_loss(conv_fn):
  from supsup_jax.models import SmallConvNet
  model = SmallConvNet(channels=8, num_outputs=5, conv_general_dilated=conv_fn)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((6, 12, 12, 3)),
                  jnp.float32)
  labels = jnp.array([0, 1, 2, 3, 4, 0])
  weights = init_weights(SmallConvNet(channels=8, num_outputs=5), 0, x)

  def loss(scores):
    params = apply_masks(weights, masks_from_scores(scores, "topk", 0.5))
    logits = model.apply({"params": params}, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         labels[:, None], 1))
  return loss, weights


def test_small_convnet_vmap_over_tasks():
  # Several tasks' scores trained at once: vmap over a leading task axis.
  loss_fast, weights = _small_convnet_loss(conv_lib.conv_general_dilated)
  loss_ref, _ = _small_convnet_loss(None)
  assert sorted(weights) == [f"Conv_{i}" for i in range(5)]
  scores = jax.vmap(lambda key: init_scores(weights, key))(
      jax.random.split(jax.random.key(0), 3))
  l_new, g_new = jax.jit(jax.vmap(jax.value_and_grad(loss_fast)))(scores)
  l_ref, g_ref = jax.vmap(jax.value_and_grad(loss_ref))(scores)
  np.testing.assert_allclose(np.asarray(l_new), np.asarray(l_ref), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
    assert a.shape == b.shape and a.shape[0] == 3
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                               atol=ATOL * float(jnp.max(jnp.abs(b))))


def test_small_convnet_max_pool_matches_nn_max_pool():
  from supsup_jax.models import max_pool_2x2
  rng = np.random.default_rng(4)
  # Distinct values: no ties inside any window.
  x = jnp.asarray(rng.permutation(2 * 8 * 6 * 3).reshape(2, 8, 6, 3), jnp.float32)
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), np.asarray(ref(x)))
  ct = jnp.asarray(rng.standard_normal((2, 4, 3, 3)), jnp.float32)
  g_new = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * ct))(x)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * ct))(x)
  np.testing.assert_array_equal(np.asarray(g_new), np.asarray(g_ref))
  # Leading (task) axes via vmap, and odd sizes (fallback) agree too.
  xs = jnp.stack([x, -x])
  np.testing.assert_array_equal(np.asarray(jax.vmap(max_pool_2x2)(xs)),
                                np.asarray(jax.vmap(ref)(xs)))
  xo = x[:, :7, :5]
  np.testing.assert_array_equal(np.asarray(max_pool_2x2(xo)), np.asarray(ref(xo)))


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 2), (0, 1)), "SAME_LOWER",
                                     ((3, -1), (2, 2))])
@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_winograd_path(padding, hw):
  x, k = _data((3, *hw, 8), (3, 3, 8, 9))
  kw = dict(window_strides=(1, 1), padding=padding, dimension_numbers=NHWC)
  dn = lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
  pads = conv_lib._canonical_pads(hw, (3, 3), (1, 1), padding)
  assert conv_lib._use_winograd(x, k, (1, 1), pads, (1, 1), dn)
  _check(x, k, **kw)


@pytest.mark.parametrize("kernel_grad_winograd", [True, False])
def test_winograd_chunks_and_layout(kernel_grad_winograd):
  options = conv_lib.ConvOptions(winograd_tiles=6,  # several chunks
                                 winograd_kernel_grad=kernel_grad_winograd)
  for n in (4, 7):  # 7: the batch is zero-padded to whole chunks
    x, k = _data((n, 6, 5, 10), (3, 3, 10, 8))
    _check(x, k, options, window_strides=(1, 1), padding="SAME",
           dimension_numbers=NHWC)
  x, k = _data((3, 10, 7, 6), (12, 10, 3, 3))  # NCHW / OIHW
  _check(x, k, options, window_strides=(1, 1), padding=((1, 1), (0, 2)))


def test_winograd_gating():
  dn = lax.conv_dimension_numbers((2, 8, 8, 8), (3, 3, 8, 8), NHWC)
  x, k = _data((2, 8, 8, 8), (3, 3, 8, 8))
  p = ((1, 1), (1, 1))
  assert conv_lib._use_winograd(x, k, (1, 1), p, (1, 1), dn)
  assert not conv_lib._use_winograd(x, k, (2, 1), p, (1, 1), dn)   # strided
  assert not conv_lib._use_winograd(x, k, (1, 1), p, (1, 2), dn)   # dilated
  assert not conv_lib._use_winograd(x[..., :3], k[:, :, :3], (1, 1), p, (1, 1),
                                    dn)                              # few channels
  assert not conv_lib._use_winograd(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                    (1, 1), p, (1, 1), dn)          # low precision
  x5, k5 = _data((2, 8, 8, 8), (5, 5, 8, 8))
  assert not conv_lib._use_winograd(x5, k5, (1, 1), p, (1, 1), dn)  # not 3x3


def test_winograd_vmap_over_kernels():
  # A shared input and a leading task axis on the kernel, as in multi-task
  # SupSup training; and both vmapped.
  x, k = _data((4, 2, 8, 8, 8), (3, 3, 3, 8, 8))
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
  f_ref = jax.grad(_loss(lax.conv_general_dilated, **kw), (0, 1))
  f_new = jax.grad(_loss(conv_lib.conv_general_dilated, **kw), (0, 1))
  for axes, xx in (((None, 0), x[0]), ((0, 0), x[:3])):
    g_ref = jax.vmap(f_ref, axes)(xx, k)
    g_new = jax.jit(jax.vmap(f_new, axes))(xx, k)
    for a, b in zip(g_new, g_ref):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                                 atol=ATOL * float(jnp.max(jnp.abs(b))))
    y_ref = jax.vmap(lambda x, k: lax.conv_general_dilated(x, k, **kw), axes)(xx, k)
    y_new = jax.vmap(lambda x, k: conv_lib.conv_general_dilated(x, k, **kw), axes)(xx, k)
    np.testing.assert_allclose(np.asarray(y_new), np.asarray(y_ref), rtol=RTOL,
                               atol=ATOL * float(jnp.max(jnp.abs(y_ref))))


needs_native = pytest.mark.skipif(
    not winograd_kernel.supports(jnp.float32),
    reason="the compiled Winograd kernel needs the CPU backend, AVX-512 and a C++ compiler")


@needs_native
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((3, -1), (2, 0))])
@pytest.mark.parametrize("hw,cin,cout", [((8, 8), 16, 32), ((9, 7), 20, 40)])
def test_native_winograd_matches_lax(padding, hw, cin, cout):
  x, k = _data((3, *hw, cin), (3, 3, cin, cout))
  assert conv_lib._native(x.dtype, conv_lib.DEFAULT_OPTIONS)
  _check(x, k, window_strides=(1, 1), padding=padding, dimension_numbers=NHWC)
  # NCHW / OIHW layouts go through the same kernel (transposed to canonical).
  xt, kt = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(k, (3, 2, 0, 1))
  _check(xt, kt, window_strides=(1, 1), padding=padding)


@needs_native
def test_native_kernel_equals_xla_winograd_over_many_blocks():
  # tile_block=6: 2 x 5 x 4 = 40 tiles in 7 blocks (a short last one); with
  # 18 images, > 16 blocks per thread (the grouped sum of the kernel gradient).
  for n in (2, 18):
    x, k = _data((n, 10, 7, 24), (3, 3, 24, 72))  # 16-channel vectors and tails
    pads = ((1, 1), (1, 1))
    dy = jnp.asarray(np.random.default_rng(2).standard_normal((n, 10, 7, 72)), jnp.float32)
    y_ref = conv_lib.winograd_conv(x, k, pads)
    y = winograd_kernel.conv(x, conv_lib._transformed_kernel(k), pads, tile_block=6)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(y_ref))))
    g_ref = conv_lib.winograd_kernel_grad(x, dy, pads)
    g = conv_lib._kernel_from_transformed(
        winograd_kernel.kernel_grad(x, dy, pads, tile_block=6))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(g_ref))))


@needs_native
def test_native_kernel_in_scan_and_vmap_and_off_switch():
  x, k = _data((2, 3, 6, 6, 16), (2, 3, 3, 16, 16))
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
  ref = jax.grad(_loss(lax.conv_general_dilated, **kw), 1)
  for options in (conv_lib.DEFAULT_OPTIONS, conv_lib.ConvOptions(native_kernel=False)):
    new = jax.grad(_loss(functools.partial(conv_lib.conv_general_dilated,
                                           options=options), **kw), 1)
    # vmapped over tasks (kernel and batch), inside a scan as the run loop trains
    g_new = jax.jit(lambda x, k: lax.scan(
        lambda c, _: (c, jax.vmap(new)(x, k)), 0, None, length=2)[1][-1])(x, k)
    g_ref = jax.vmap(ref)(x, k)
    np.testing.assert_allclose(np.asarray(g_new), np.asarray(g_ref), rtol=RTOL,
                               atol=ATOL * float(jnp.max(jnp.abs(g_ref))))
  assert not conv_lib._native(x.dtype, conv_lib.ConvOptions(native_kernel=False))
  assert not conv_lib._native(jnp.float64, conv_lib.DEFAULT_OPTIONS)
