"""Pipeline tests of the tfds-backed streams with tfds.testing.mock_data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import data as D
from supsup_jax.data import sources


@pytest.fixture
def mock_tfds(monkeypatch):
  monkeypatch.delenv("SUPSUP_DATA_DIR", raising=False)
  tfds = sources.import_tfds()
  D.clear_cache()
  yield tfds
  D.clear_cache()


def test_split_cifar100_mock(mock_tfds):
  with mock_tfds.testing.mock_data(num_examples=400):
    s = D.make_stream("split_cifar100", seed=3, augment=True)
  assert s.num_tasks == 20 and s.num_classes == 5 and s.input_shape == (32, 32, 3)
  # Class split drawn from the seed: disjoint, complete, seed dependent.
  flat = sum(s.task_classes, [])
  assert sorted(flat) == list(range(100)) and flat != list(range(100))
  with mock_tfds.testing.mock_data(num_examples=400):
    s2 = D.make_stream("split_cifar100", seed=4)
  assert s2.task_classes != s.task_classes
  t = next(t for t in range(20) if s.train_size(t) > 0)
  x, y = s.train_batch(t, 0, 8)
  assert x.shape == (8, 32, 32, 3) and x.dtype == jnp.float32
  assert set(np.asarray(y).tolist()) <= set(range(5))
  np.testing.assert_array_equal(np.asarray(s.train_batch(t, 0, 8)[0]), np.asarray(x))
  # jit + vmap over tasks
  fn = jax.jit(jax.vmap(s.train_batch_fn(4), in_axes=(0, None)))
  xs, ys = fn(jnp.arange(3), 2)
  assert xs.shape == (3, 4, 32, 32, 3) and ys.shape == (3, 4)
  ntest = sum(s.test_size(t) for t in range(20))
  assert ntest == 400


def test_split_imagenet_mock(mock_tfds):
  with mock_tfds.testing.mock_data(num_examples=60):
    s = D.make_stream("split_imagenet", num_tasks=3, image_size=32, shuffle_buffer=100)
    assert s.num_tasks == 3 and s.num_classes == 10 and s.input_shape == (32, 32, 3)
    # fixed split (class_order_seed default 0), independent of the run seed
    s_other = D.make_stream("split_imagenet", num_tasks=3, seed=5, image_size=32)
    assert s_other.task_classes == s.task_classes
    sizes = [s.train_size(t) for t in range(3)]
    t = int(np.argmax(sizes))
    if sizes[t] == 0:
      pytest.skip("mock produced no example of these classes")
    x, y = s.train_batch(t, 0, 1)
    assert x.shape == (1, 32, 32, 3) and 0 <= int(y[0]) < 10
    # Resume: a fresh stream reproduces the batch at the same step.
    s2 = D.make_stream("split_imagenet", num_tasks=3, image_size=32, shuffle_buffer=100)
    x2, y2 = s2.train_batch(t, 0, 1)
    np.testing.assert_allclose(np.asarray(x), np.asarray(x2))
    with pytest.raises(ValueError, match="task_id 3 out of range"):
      s.train_batch(3, 0, 1)
    n_test = sum(b[0].shape[0] for t2 in range(3) for b in s.test_batches(t2, 4))
    assert n_test >= 0
