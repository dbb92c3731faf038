"""supsup_jax.bitdot and bank.rows_dot: the compiled bit-packed product equals
a float64 reference, the XLA lookup-table path, and jax.grad of the dense
product."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import bank as bank_lib
from supsup_jax import bitdot

needs_kernel = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not bitdot.available(),
    reason="the bitdot kernel is CPU-only and needs a C++ compiler")


def _case(capacity, num_bits, seed=0):
  rng = np.random.default_rng(seed)
  nbytes = (num_bits + 7) // 8
  rows = rng.integers(0, 256, (capacity, nbytes), dtype=np.uint8)
  # Bits past num_bits in the last byte are set too: they must be ignored.
  g = rng.standard_normal(num_bits).astype(np.float32)
  return rows, g


def _reference(rows, g, n):
  bits = np.unpackbits(rows[:n], axis=1, count=g.shape[0]).astype(np.float64)
  out = np.zeros(rows.shape[0])
  out[:n] = bits @ g.astype(np.float64)
  return out


def _tol(g):  # float32 round-off of a sum of ~len(g)/2 terms
  return 1e-6 * np.sqrt(g.shape[0]) * float(np.abs(g).max()) * 8


@needs_kernel
@pytest.mark.parametrize("num_bits,portable", [
    (b, p) for b in (1, 7, 8, 9, 31, 33, 64, 257, 4099) for p in (False, True)]
    + [(266200, False)])  # LeNet 300-100 with 500 outputs
def test_kernel_matches_float64(num_bits, portable):
  rows, g = _case(70, num_bits)
  for n in (0, 1, 5, 37, 70):  # single row, partial groups of 4, several threads
    for threads in (1, 3):
      out = np.asarray(jax.jit(lambda r, g, n, t=threads: bitdot.rows_dot(
          r, g, n, threads=t, portable=portable))(rows, g, jnp.int32(n)))
      np.testing.assert_allclose(out, _reference(rows, g, n), rtol=0, atol=_tol(g))
      assert not out[n:].any()
  # The split over threads does not change any row's sum order.
  a = bitdot.rows_dot(jnp.asarray(rows), jnp.asarray(g), 70, threads=1, portable=portable)
  b = bitdot.rows_dot(jnp.asarray(rows), jnp.asarray(g), 70, threads=4, portable=portable)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_kernel
def test_rows_dot_paths_agree_and_differentiate():
  rows, g = _case(128, 1000, seed=1)
  n = jnp.int32(77)
  fast = jax.jit(bank_lib.rows_dot)(rows, g, n)  # the kernel on CPU
  xla = jax.jit(lambda r, g, n: bank_lib._rows_dot_xla(r, g, n, packed=True, block=64))(
      rows, g, n)
  ref = _reference(rows, g, 77)
  np.testing.assert_allclose(np.asarray(fast), ref, rtol=0, atol=_tol(g))
  # (the XLA path reads whole 64-row blocks: rows 77..127 are not zeroed)
  np.testing.assert_allclose(np.asarray(xla)[:77], ref[:77], rtol=0, atol=_tol(g))
  # Gradient in flat_g = the dense product's (jax.grad of unpack(rows) @ g).
  w = jnp.asarray(np.random.default_rng(2).standard_normal(128), jnp.float32)
  dense = jnp.asarray(np.unpackbits(rows, axis=1, count=1000), jnp.float32)
  mask = (jnp.arange(128) < 77).astype(jnp.float32)
  g_fast = jax.grad(lambda g: jnp.sum(jnp.sin(bank_lib.rows_dot(rows, g, n)) * w))(g)
  g_ref = jax.grad(lambda g: jnp.sum(jnp.sin(dense @ g) * mask * w))(g)
  np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_ref), rtol=2e-4, atol=2e-4)
  # vmap over several gradient vectors (the sharded / per-unit callers).
  gs = jnp.stack([jnp.asarray(g), -2 * jnp.asarray(g)])
  out = jax.jit(jax.vmap(lambda gg: bank_lib.rows_dot(rows, gg, n)))(gs)
  np.testing.assert_allclose(np.asarray(out), np.stack([ref, -2 * ref]), rtol=0,
                             atol=2 * _tol(g))


def test_xla_path_still_exact_when_kernel_disabled():
  # The fallback (GPU/TPU, no compiler): the lookup table against float64.
  rows, g = _case(64, 4099, seed=3)
  out = bank_lib._rows_dot_xla(jnp.asarray(rows), jnp.asarray(g), 40, packed=True,
                               block=16)  # reads rows 0..47 (whole blocks)
  np.testing.assert_allclose(np.asarray(out)[:48], _reference(rows, g, 48)[:48],
                             rtol=0, atol=_tol(g))
  assert not np.asarray(out)[48:].any()


@needs_kernel
@pytest.mark.parametrize("num_units", [1, 5, 6, 13])
@pytest.mark.parametrize("portable", [False, True])
def test_rows_matmul_matches_float64(num_units, portable):
  rows, _ = _case(70, 8 * 700 + 5, seed=4)  # odd byte count: a half word at the end
  g = np.random.default_rng(5).standard_normal((num_units, 8 * 700 + 5)).astype(np.float32)
  bits = np.unpackbits(rows, axis=1, count=g.shape[1]).astype(np.float64)
  for n in (0, 3, 37, 70):
    for threads in (1, 2):
      out = np.asarray(jax.jit(lambda r, g, n, t=threads: bitdot.rows_matmul(
          r, g, n, threads=t, portable=portable))(rows, g, jnp.int32(n)))
      ref = np.zeros((70, num_units))
      ref[:n] = bits[:n] @ g.astype(np.float64).T
      np.testing.assert_allclose(out, ref, rtol=0, atol=_tol(g[0]))


@needs_kernel
def test_bank_rows_matmul_equals_dense_and_its_grad():
  rows, _ = _case(64, 999, seed=6)
  g = jnp.asarray(np.random.default_rng(7).standard_normal((3, 999)), jnp.float32)
  dense = jnp.asarray(np.unpackbits(rows, axis=1, count=999), jnp.float32)
  keep = (jnp.arange(64) < 50).astype(jnp.float32)[:, None]
  out = jax.jit(bank_lib.rows_matmul)(rows, g, jnp.int32(50))
  np.testing.assert_allclose(np.asarray(out), np.asarray(dense @ g.T * keep),
                             rtol=1e-5, atol=1e-4)
  xla = bank_lib._rows_matmul_xla(jnp.asarray(rows), g, 64, packed=True, block=16)
  np.testing.assert_allclose(np.asarray(xla), np.asarray(dense @ g.T), rtol=1e-5, atol=1e-4)
  w = jnp.asarray(np.random.default_rng(8).standard_normal((64, 3)), jnp.float32)
  g_fast = jax.grad(lambda g: jnp.sum(jnp.cos(bank_lib.rows_matmul(rows, g, 50)) * w))(g)
  g_ref = jax.grad(lambda g: jnp.sum(jnp.cos(dense @ g.T) * keep * w))(g)
  np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_ref), rtol=2e-4, atol=2e-4)


@needs_kernel
@pytest.mark.parametrize("num_units", [1, 3, 4, 9])
@pytest.mark.parametrize("portable", [False, True])
def test_rows_weighted_sum_matches_float64(num_units, portable):
  num_bits = 8 * 300 + 3  # a partial last chunk and a partial last byte
  rows, _ = _case(70, num_bits, seed=9)
  a = np.random.default_rng(10).random((num_units, 70)).astype(np.float32)
  a[a < 0.3] = 0  # alive / not alive, and weights
  bits = np.unpackbits(rows, axis=1, count=num_bits).astype(np.float64)
  for n in (0, 1, 37, 70):
    out = np.asarray(jax.jit(lambda r, a, n: bitdot.rows_weighted_sum(
        r, a, n, num_bits, portable=portable))(rows, a, jnp.int32(n)))
    ref = a[:, :n].astype(np.float64) @ bits[:n]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
  # bank's wrapper (the kernel on CPU) agrees with the reference too.
  out = bank_lib.rows_weighted_sum(jnp.asarray(rows), jnp.asarray(a), 70, num_bits)
  np.testing.assert_allclose(np.asarray(out), a.astype(np.float64) @ bits, rtol=0, atol=1e-4)
