"""The compiled PermutedMNIST batch gather (supsup_jax.data.byte_gather): the
same bytes as XLA's gather, under vmap and scan, and the same batches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import data
from supsup_jax.data import byte_gather

needs_kernel = pytest.mark.skipif(not byte_gather.available(),
                                  reason="CPU only, needs a C++ compiler")


def _reference(x, idx, perm):
  return np.asarray(x)[np.asarray(idx)][:, np.asarray(perm)]


@needs_kernel
@pytest.mark.parametrize("d", [1, 65, 100, 129, 784, 896, 897, 3072])
def test_gather_equals_numpy(d):
  """Row widths on both sides of 64-byte chunks and of the 7 register pairs
  (896 bytes; wider rows take the plain loop)."""
  rng = np.random.default_rng(d)
  x = rng.integers(0, 256, (50, d), dtype=np.uint8)
  idx = rng.integers(0, 50, 33).astype(np.int32)
  perm = rng.permutation(d).astype(np.int32)
  out = jax.jit(byte_gather.gather)(x, idx, perm)
  np.testing.assert_array_equal(out, _reference(x, idx, perm))


@needs_kernel
def test_vmap_over_tasks_nested_and_inside_scan():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (40, 784), dtype=np.uint8)
  idx = rng.integers(0, 40, (3, 2, 16)).astype(np.int32)
  perm = np.stack([rng.permutation(784) for _ in range(3)]).astype(np.int32)
  tasks = jax.vmap(byte_gather.gather, in_axes=(None, 0, 0))  # shared images
  out = jax.jit(jax.vmap(tasks, in_axes=(None, 1, None), out_axes=1))(x, idx, perm)
  for t in range(3):
    for s in range(2):
      np.testing.assert_array_equal(out[t, s], _reference(x, idx[t, s], perm[t]))

  def body(carry, i):
    return carry, byte_gather.gather(x, jnp.asarray(idx)[0, i], perm[1])
  _, scanned = jax.jit(lambda: jax.lax.scan(body, 0, jnp.arange(2)))()
  np.testing.assert_array_equal(scanned[1], _reference(x, idx[0, 1], perm[1]))


@needs_kernel
def test_bad_permutation_is_an_error_and_indices_are_clamped():
  x = np.arange(12, dtype=np.uint8).reshape(3, 4)
  out = byte_gather.gather(x, np.array([5, -1], np.int32), np.array([3, 2, 1, 0], np.int32))
  np.testing.assert_array_equal(out, [[11, 10, 9, 8], [3, 2, 1, 0]])
  with pytest.raises(Exception, match="perm entry out of range"):
    jax.block_until_ready(byte_gather.gather(x, np.array([0], np.int32),
                                             np.array([0, 1, 2, 4], np.int32)))


@needs_kernel
def test_permuted_stream_batches_are_the_same_with_the_kernel_off(monkeypatch):
  """Real MNIST: the float batches the run trains on are bit for bit those of
  XLA's gather (three tasks vmapped, as the run does)."""
  stream = data.make_stream("permuted_mnist", num_tasks=3, seed=0)
  fn, arrays = stream.train_batch_fn_args(32)
  batch = jax.jit(jax.vmap(lambda t, s: fn(arrays, t, s), in_axes=(0, None)))
  on = batch(jnp.arange(3, dtype=jnp.int32), jnp.int32(7))
  monkeypatch.setenv("SUPSUP_BYTE_GATHER_KERNEL", "0")
  assert not byte_gather.available()
  fn, arrays = stream.train_batch_fn_args(32)
  batch = jax.jit(jax.vmap(lambda t, s: fn(arrays, t, s), in_axes=(0, None)))
  off = batch(jnp.arange(3, dtype=jnp.int32), jnp.int32(7))
  for a, b in zip(on, off):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
