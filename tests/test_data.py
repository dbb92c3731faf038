"""Real-data tests of supsup_jax.data on the shared offline data folder."""
import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import data as D
from supsup_jax.data import transforms as T

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("SUPSUP_DATA_DIR", str(REPO.parent / "shared" / "data"))
HAVE_MNIST = (Path(DATA_DIR) / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"no MNIST under {DATA_DIR}")

MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


@pytest.fixture(scope="module")
def mnist():
  return D.load_dataset("mnist", DATA_DIR)


@pytest.fixture(scope="module")
def permuted(mnist):
  return D.make_stream("permuted_mnist", num_tasks=2500, seed=0, data_dir=DATA_DIR)


# ---------------------------------------------------------------- pure pieces
def test_shuffled_index_is_bijection_any_n():
  key = jax.random.key(3)
  for n in (1, 2, 7, 100, 1000, 12665):
    out = np.asarray(T.shuffled_index(key, jnp.arange(n), n))
    assert sorted(out.tolist()) == list(range(n))
  a = np.asarray(T.shuffled_index(jax.random.key(1), jnp.arange(1000), 1000))
  b = np.asarray(T.shuffled_index(jax.random.key(2), jnp.arange(1000), 1000))
  assert (a != b).mean() > 0.9 and (a != np.arange(1000)).mean() > 0.9


def test_rotate_90_matches_rot90():
  img = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 2)).astype(np.float32)
  for k in (1, 2, 3, 4):
    got = np.asarray(D.rotate(jnp.asarray(img), 90.0 * k))
    np.testing.assert_array_equal(got, np.rot90(img, k=k, axes=(1, 2)))
  got = np.asarray(D.rotate(jnp.asarray(img), 0.0))
  np.testing.assert_array_equal(got, img)


# ---------------------------------------------------------------- offline loads
@needs_mnist
def test_mnist_offline_counts(mnist):
  xtr, ytr = mnist["train"]
  xte, yte = mnist["test"]
  assert xtr.shape == (60000, 28, 28, 1) and xte.shape == (10000, 28, 28, 1)
  assert xtr.dtype == np.uint8 and len(ytr) == 60000
  assert tuple(np.bincount(yte, minlength=10)) == MNIST_TEST_COUNTS


@needs_mnist
def test_fashion_mnist_offline_is_not_mnist(mnist):
  fm = D.load_dataset("fashion_mnist", DATA_DIR)
  xte, yte = fm["test"]
  assert xte.shape == (10000, 28, 28, 1) and fm["train"][0].shape == (60000, 28, 28, 1)
  assert tuple(np.bincount(yte, minlength=10)) == (1000,) * 10
  assert not np.array_equal(xte[:100], mnist["test"][0][:100])
  assert abs(xte.mean() / 255 - 0.2860) < 0.01  # Fashion-MNIST statistics
  assert fm["class_names"][0].lower().startswith("t-shirt")


@pytest.mark.skipif(not (Path(DATA_DIR) / "cifar10").is_dir(), reason="no cifar10")
def test_cifar10_image_folder():
  s = D.make_stream("split_cifar10", data_dir=DATA_DIR, augment=True)
  d = D.load_dataset("cifar10", DATA_DIR)
  assert d["train"][0].shape == (50000, 32, 32, 3)
  assert tuple(np.bincount(d["test"][1], minlength=10)) == (1000,) * 10
  assert d["class_names"][:2] == ["airplane", "automobile"]
  assert s.num_tasks == 5 and s.num_classes == 2 and s.input_shape == (32, 32, 3)
  x, y = s.train_batch(4, 0, 64)
  assert x.shape == (64, 32, 32, 3) and set(np.asarray(y).tolist()) <= {0, 1}
  xt, yt = s.test_arrays(1)
  assert xt.shape[0] == 2000 and abs(float(xt.mean())) < 0.3


CIFAR100 = Path(DATA_DIR) / "cifar100"
needs_cifar100 = pytest.mark.skipif(not (CIFAR100 / "cifar100_images.tar.gz").exists(),
                                    reason=f"no CIFAR-100 archive under {DATA_DIR}")


@needs_cifar100
def test_cifar100_real_data():
  d = D.load_dataset("cifar100", DATA_DIR)
  (xtr, ytr), (xte, yte) = d["train"], d["test"]
  assert xtr.shape == (50000, 32, 32, 3) and xte.shape == (10000, 32, 32, 3)
  assert set(np.bincount(ytr, minlength=100)) == {500}
  assert set(np.bincount(yte, minlength=100)) == {100}
  # Fine ids = the official order (the README's fine_label_names.txt); coarse
  # labels from fine_to_coarse.json, 2,500 / 500 images per superclass.
  assert d["class_names"] == (CIFAR100 / "fine_label_names.txt").read_text().split()
  assert d["coarse_class_names"] == (CIFAR100 / "coarse_label_names.txt").read_text().split()
  table = json.loads((CIFAR100 / "fine_to_coarse.json").read_text())
  assert d["fine_to_coarse"].tolist() == table["fine_to_coarse"]
  np.testing.assert_array_equal(d["coarse"]["train"], d["fine_to_coarse"][ytr])
  assert set(np.bincount(d["coarse"]["test"], minlength=20)) == {500}
  # The pixels give the official statistics that NORM holds.
  n = xtr[..., 0].size  # exact integer sums, one channel at a time (memory)
  s1 = np.array([xtr[..., k].sum(dtype=np.int64) for k in range(3)])
  s2 = np.array([np.square(xtr[..., k], dtype=np.uint16).sum(dtype=np.int64) for k in range(3)])
  mean = s1 / n / 255
  np.testing.assert_allclose(mean, T.NORM["cifar100"][0], atol=1e-9)
  np.testing.assert_allclose(np.sqrt(s2 / n / 255**2 - mean**2), T.NORM["cifar100"][1], atol=1e-9)
  # The archive's SHA-256 is recorded with the decoded arrays.
  sha = hashlib.sha256((CIFAR100 / "cifar100_images.tar.gz").read_bytes()).hexdigest()
  npz = D.sources.cache_dir() / "image_folders" / f"cifar100_{sha[:16]}.arrays.npz"
  with np.load(npz) as z:
    assert json.loads(str(z["source_fingerprint"]))["cifar100_images.tar.gz"] == sha


@needs_cifar100
def test_split_cifar100_real_is_the_authors_split():
  d = D.load_dataset("cifar100", DATA_DIR)
  yte = d["test"][1]
  s = D.make_stream("split_cifar100", seed=1, data_dir=DATA_DIR, augment=True)
  np.random.seed(1)  # RandSplitCIFAR100 in RAIVNLab/supsup data/partitioncifar.py
  perm = np.random.permutation(100).tolist()
  assert s.task_classes == [perm[5 * t:5 * t + 5] for t in range(20)]
  for t in (0, 7, 19):
    _, yt = s.test_arrays(t)
    fine = yte[np.isin(yte, perm[5 * t:5 * t + 5])]
    np.testing.assert_array_equal(np.asarray(yt), [perm[5 * t:5 * t + 5].index(f) for f in fine])
    assert s.train_size(t) == 2500
  x, y = s.train_batch(19, 0, 128)
  assert x.shape == (128, 32, 32, 3) and set(np.asarray(y).tolist()) <= set(range(5))


@needs_cifar100
def test_cifar100_as_one_task_dataset():
  # How the single-task studies (uncertainty, subnetworks) read a dataset by name.
  assert "cifar100" in D.IN_MEMORY_DATASETS
  d = D.load_dataset("cifar100", DATA_DIR)
  mean, std = D.NORM["cifar100"]
  s = D.InMemoryStream(name="cifar100", data=d, num_tasks=1, seed=0, mean=mean, std=std)
  assert s.num_classes == 100 and s.test_size(0) == 10000
  x, _ = s.test_arrays(0)
  assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


# ---------------------------------------------------------------- permuted
@needs_mnist
def test_permutations(permuted):
  p0 = np.asarray(permuted.pixel_permutation(0))
  assert sorted(p0.tolist()) == list(range(784))
  np.testing.assert_array_equal(p0, np.asarray(permuted.pixel_permutation(0)))
  p_last = np.asarray(permuted.pixel_permutation(2499))
  assert sorted(p_last.tolist()) == list(range(784)) and (p0 != p_last).mean() > 0.9
  assert (p0 != np.asarray(permuted.pixel_permutation(1))).mean() > 0.9
  other = D.make_stream("permuted_mnist", num_tasks=1, seed=1, data_dir=DATA_DIR)
  assert (p0 != np.asarray(other.pixel_permutation(0))).mean() > 0.9
  # The test images are the permuted originals.
  xt, yt = permuted.test_arrays(5)
  raw = (mnist_raw := permuted._x_test_np[:20].reshape(20, -1).astype(np.float32))
  want = ((raw[:, np.asarray(permuted.pixel_permutation(5))] / 255 - 0.1307) / 0.3081)
  np.testing.assert_allclose(np.asarray(xt[:20]).reshape(20, -1), want, atol=1e-5)
  assert tuple(np.bincount(np.asarray(yt))) == MNIST_TEST_COUNTS


@needs_mnist
def test_fused_permuted_gather_is_the_row_then_pixel_gather(permuted):
  # Train batches take (image, permuted pixel) bytes in one gather; they must
  # equal the definition (rows, then the task's pixel permutation) bit for bit.
  class TwoGathers(D.PermutedStream):
    _take_images = D.InMemoryStream._take_images

  reference = copy.copy(permuted)
  reference.__class__ = TwoGathers
  fn, arrs = permuted.train_batch_fn_args(64)
  ref_fn, _ = reference.train_batch_fn_args(64)
  ids = jnp.array([0, 4, 2499], jnp.int32)
  got = jax.jit(jax.vmap(fn, in_axes=(None, 0, None)))(arrs, ids, 123)
  want = jax.jit(jax.vmap(ref_fn, in_axes=(None, 0, None)))(arrs, ids, 123)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  assert not np.array_equal(np.asarray(got[0][0]), np.asarray(got[0][1]))


@needs_mnist
def test_train_batch_deterministic_and_epochwise(permuted):
  B = 1000
  a = permuted.train_batch(7, 3, B)
  b = permuted.train_batch(7, 3, B)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  # A fresh stream object (resume) reproduces it.
  s2 = D.make_stream("permuted_mnist", num_tasks=10, seed=0, data_dir=DATA_DIR)
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(s2.train_batch(7, 3, B)[1]))
  # One epoch (60 batches of 1000) covers every training example exactly once.
  fn, arrs = permuted.train_batch_fn_args(B)
  _, labels = jax.jit(jax.vmap(fn, in_axes=(None, None, 0)))(arrs, 0, jnp.arange(60))
  assert tuple(np.bincount(np.asarray(labels).ravel())) == tuple(
      np.bincount(np.asarray(permuted._y_train)))
  # Different epochs and seeds give different orders; stats look normalised.
  e0, e1 = permuted.train_batch(0, 0, B), permuted.train_batch(0, 60, B)
  assert not np.array_equal(np.asarray(e0[1]), np.asarray(e1[1]))
  assert abs(float(a[0].mean())) < 0.1 and abs(float(a[0].std()) - 1) < 0.1


@needs_mnist
def test_vmap_over_tasks_matches_single(permuted):
  fn, arrs = permuted.train_batch_fn_args(32)
  xs, ys = jax.jit(jax.vmap(fn, in_axes=(None, 0, None)))(arrs, jnp.array([0, 1, 2499]), 11)
  x1, y1 = permuted.train_batch(2499, 11, 32)
  np.testing.assert_array_equal(np.asarray(xs[2]), np.asarray(x1))
  np.testing.assert_array_equal(np.asarray(ys[2]), np.asarray(y1))


@needs_mnist
def test_permuted_throughput(permuted):
  bps = D.measure_throughput(permuted, batch_size=128, num_batches=200)
  assert bps > 400, bps


# ---------------------------------------------------------------- rotated
@needs_mnist
def test_rotated(mnist):
  s = D.make_stream("rotated_mnist", num_tasks=10, data_dir=DATA_DIR, rotation_step_deg=30.0)
  xt, _ = s.test_arrays(3)  # 90 degrees
  raw = (mnist["test"][0].astype(np.float32) / 255 - 0.1307) / 0.3081
  np.testing.assert_allclose(np.asarray(xt), np.rot90(raw, k=1, axes=(1, 2)), atol=1e-5)
  x0, _ = s.test_arrays(0)
  np.testing.assert_allclose(np.asarray(x0), raw, atol=1e-5)
  x, y = s.train_batch(1, 0, 16)
  assert x.shape == (16, 28, 28, 1)
  assert D.make_stream("rotated_mnist", data_dir=DATA_DIR).num_tasks == 36


# ---------------------------------------------------------------- split
@needs_mnist
@pytest.mark.parametrize("shared", [False, True])
def test_split_mnist(mnist, shared):
  s = D.make_stream("split_mnist", data_dir=DATA_DIR, shared_labels=shared)
  assert s.num_tasks == 5 and s.num_classes == (10 if shared else 2)
  ytr, yte = mnist["train"][1], mnist["test"][1]
  seen = []
  for t in range(5):
    assert s.task_classes[t] == [2 * t, 2 * t + 1]
    seen += s.task_classes[t]
    assert s.train_size(t) == int(np.isin(ytr, s.task_classes[t]).sum())
    _, yt = s.test_arrays(t)
    want = yte[np.isin(yte, s.task_classes[t])]
    want = want if shared else want - 2 * t
    np.testing.assert_array_equal(np.asarray(yt), want)
    _, yb = s.train_batch(t, 5, 256)
    yb = np.asarray(yb)
    assert set(yb.tolist()) == (set(s.task_classes[t]) if shared else {0, 1})
  assert sorted(seen) == list(range(10))
  if shared:
    return
  # One epoch of task 2 through the jitted fn = exactly its examples.
  n, B = s.train_size(2), 100
  fn, arrs = s.train_batch_fn_args(B)
  _, labels = jax.jit(jax.vmap(fn, in_axes=(None, None, 0)))(arrs, 2, jnp.arange(n // B))
  got = np.bincount(np.asarray(labels).ravel(), minlength=2)
  want_counts = np.bincount(ytr[np.isin(ytr, [4, 5])], minlength=10)[[4, 5]]
  # drop_remainder: at most B-1 examples left out
  assert (want_counts - got).min() >= 0 and (want_counts - got).sum() == n % B


@needs_mnist
def test_test_batches_cover_split(mnist):
  s = D.make_stream("split_mnist", data_dir=DATA_DIR)
  batches = list(s.test_batches(1, 500))
  assert sum(b[0].shape[0] for b in batches) == 1032 + 1010
  assert batches[-1][0].shape[0] == (1032 + 1010) % 500


# ---------------------------------------------------------------- errors
def test_unknown_names():
  with pytest.raises(ValueError, match="Unknown stream 'split_foo'.*permuted_mnist"):
    D.make_stream("split_foo")
  with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
    D.load_dataset("svhn")
  with pytest.raises(ValueError, match="num_tasks=6.*1..5"):
    D.make_stream("split_mnist", num_tasks=6, data_dir=DATA_DIR)
  with pytest.raises(ValueError, match="bogus"):
    D.make_stream("split_mnist", bogus=1)


@needs_mnist
def test_task_out_of_range(permuted):
  with pytest.raises(ValueError, match="task_id 2500 out of range.*0..2499"):
    permuted.train_batch(2500, 0, 8)
  with pytest.raises(ValueError, match="task_id -1"):
    next(permuted.test_batches(-1, 8))


def test_data_not_found(tmp_path):
  with pytest.raises(D.DataNotFoundError) as e:
    D.load_dataset("mnist", str(tmp_path))
  msg = str(e.value)
  assert str(tmp_path / "mnist") in msg and "SUPSUP_DATA_DIR" in msg and "download" in msg
  assert isinstance(e.value, FileNotFoundError)
  (tmp_path / "mnist").mkdir()
  (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
  with pytest.raises(D.DataNotFoundError, match="Missing files: train-images"):
    D.load_dataset("mnist", str(tmp_path))


@needs_mnist
def test_corrupt_file_checksum(tmp_path, monkeypatch):
  bad = tmp_path / "data" / "mnist"
  shutil.copytree(Path(DATA_DIR) / "mnist", bad)
  p = bad / "t10k-labels-idx1-ubyte.gz"
  p.chmod(0o644)
  p.write_bytes(p.read_bytes()[:-10])
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.setenv("SUPSUP_CACHE_DIR", str(tmp_path / "cache"))
  with pytest.raises(D.DataChecksumError, match="t10k-labels-idx1-ubyte.gz"):
    D.load_dataset("mnist", str(tmp_path / "data"))
