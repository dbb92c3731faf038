"""The background-skipping first layer (supsup_jax.sparse_input) against dense products."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import models
from supsup_jax import sparse_input

needs_kernel = pytest.mark.skipif(not sparse_input.supports(jnp.float32),
                                  reason="no AVX-512 CPU or no C++ compiler")
BG = np.float32(-0.1307 / 0.3081)  # a normalised MNIST zero pixel


def _images(rng, shape, density=0.2):
  x = np.full(shape, BG, np.float32)
  keep = rng.random(shape) < density
  x[keep] = rng.random(int(keep.sum())).astype(np.float32) * 3
  return x


def _rel_err(got, want):
  want = np.asarray(want, np.float64)
  return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


@needs_kernel
@pytest.mark.parametrize("rows,cols,n", [(128, 784, 300), (5, 33, 17), (1, 784, 300),
                                         (7, 20, 1), (3, 40, 260), (64, 100, 500)])
def test_combine_equals_the_dense_product(rows, cols, n):
  rng = np.random.default_rng(rows * 1000 + n)
  a = _images(rng, (rows, cols))
  a[0] = rng.normal(size=cols)  # a row with no background at all
  if rows > 2:
    a[1] = BG  # a row that is all background
  m = rng.normal(size=(cols, n)).astype(np.float32)
  got = sparse_input.combine(jnp.asarray(a), jnp.asarray(m))
  assert got.shape == (rows, n)
  assert _rel_err(got, a.astype(np.float64) @ m) < 1e-5


@needs_kernel
def test_nan_in_the_input_reaches_the_output():
  rng = np.random.default_rng(0)
  a = _images(rng, (4, 50))
  a[2, 7] = np.nan
  out = np.asarray(sparse_input.combine(jnp.asarray(a), jnp.ones((50, 20), jnp.float32)))
  assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


@needs_kernel
def test_gradients_equal_jax_grad_of_the_dense_product():
  rng = np.random.default_rng(1)
  x = jnp.asarray(_images(rng, (32, 784)))
  w = jnp.asarray(rng.normal(size=(784, 300)).astype(np.float32))
  dy = jnp.asarray(rng.normal(size=(32, 300)).astype(np.float32))
  fast = jax.grad(lambda x, w: jnp.sum(sparse_input.matmul(x, w) * dy), (0, 1))(x, w)
  ref = jax.grad(lambda x, w: jnp.sum(jnp.dot(x, w, precision="highest") * dy), (0, 1))(x, w)
  assert _rel_err(fast[1], ref[1]) < 1e-5  # the weight gradient goes through the kernel
  assert _rel_err(fast[0], ref[0]) < 1e-5


@needs_kernel
def test_vmap_with_and_without_a_batched_weight_and_inside_scan():
  rng = np.random.default_rng(2)
  xs = jnp.asarray(_images(rng, (3, 16, 64)))
  ws = jnp.asarray(rng.normal(size=(3, 64, 40)).astype(np.float32))
  both = jax.jit(jax.vmap(sparse_input.matmul))(xs, ws)
  assert _rel_err(both, np.einsum("tbk,tkn->tbn", np.asarray(xs, np.float64), ws)) < 1e-5
  one_w = jax.jit(jax.vmap(sparse_input.matmul, in_axes=(0, None)))(xs, ws[1])
  assert _rel_err(one_w, np.einsum("tbk,kn->tbn", np.asarray(xs, np.float64), ws[1])) < 1e-5
  one_x = jax.vmap(sparse_input.matmul, in_axes=(None, 0))(xs[0], ws)
  assert _rel_err(one_x, np.einsum("bk,tkn->tbn", np.asarray(xs[0], np.float64), ws)) < 1e-5
  nested = jax.vmap(jax.vmap(sparse_input.matmul, in_axes=(0, None)), in_axes=(None, 0))(xs, ws)
  assert nested.shape == (3, 3, 16, 40)
  assert _rel_err(nested[2, 1], np.asarray(xs[1], np.float64) @ np.asarray(ws[2])) < 1e-5

  def body(w, x):  # a step of gradient descent on the weights, as in a scan of steps
    g = jax.grad(lambda w: jnp.sum(jnp.tanh(sparse_input.matmul(x, w))))(w)
    return w - 0.1 * g, None

  def body_ref(w, x):
    g = jax.grad(lambda w: jnp.sum(jnp.tanh(jnp.dot(x, w, precision="highest"))))(w)
    return w - 0.1 * g, None

  got, _ = jax.jit(lambda w: jax.lax.scan(body, w, xs))(ws[0])
  want, _ = jax.jit(lambda w: jax.lax.scan(body_ref, w, xs))(ws[0])
  assert _rel_err(got, want) < 1e-5


def test_mlp_option_keeps_parameters_and_logits():
  rng = np.random.default_rng(3)
  x = jnp.asarray(_images(rng, (8, 28, 28, 1)))
  plain = models.LeNet300100(num_outputs=10)
  sparse = models.LeNet300100(num_outputs=10, sparse_input=True)
  params = plain.init(jax.random.key(0), x)
  assert (jax.tree.structure(sparse.init(jax.random.key(0), x))
          == jax.tree.structure(params))
  want = plain.apply(params, x)
  assert _rel_err(sparse.apply(params, x), want) < 1e-5
  g_sparse = jax.grad(lambda p: jnp.sum(sparse.apply(p, x) ** 2))(params)
  g_plain = jax.grad(lambda p: jnp.sum(plain.apply(p, x) ** 2))(params)
  for a, b in zip(jax.tree.leaves(g_sparse), jax.tree.leaves(g_plain)):
    assert _rel_err(a, b) < 1e-5


def test_off_switch_is_the_plain_product(monkeypatch):
  monkeypatch.setenv("SUPSUP_SPARSE_INPUT_KERNEL", "0")
  assert not sparse_input.supports(jnp.float32)
  x = jnp.asarray(_images(np.random.default_rng(4), (4, 30)))
  w = jnp.ones((30, 5), jnp.float32)
  np.testing.assert_array_equal(sparse_input.matmul(x, w), jnp.dot(x, w))
  # Other contractions than a dense layer's always take lax.dot_general.
  dn = (((0,), (0,)), ((), ()))
  np.testing.assert_array_equal(sparse_input.dot_general(x, x, dn),
                                jax.lax.dot_general(x, x, dn))
