"""Pipeline tests with mock data: tfds.testing.mock_data for the tfds-backed
streams, a tiny synthetic CIFAR-100 image folder for the image-folder path."""
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import data as D
from supsup_jax.data import sources
from supsup_jax.data import transforms as T


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
  # The authors' split of the seed (RandSplitCIFAR100): disjoint, complete, seed dependent.
  flat = sum(s.task_classes, [])
  assert sorted(flat) == list(range(100)) and flat != list(range(100))
  assert flat == np.random.RandomState(3).permutation(100).tolist()
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
  # The tfds path (online download; mocked) carries the coarse labels too.
  with mock_tfds.testing.mock_data(num_examples=400):
    d = D.load_dataset("cifar100")
  assert len(d["coarse_class_names"]) == 20 and d["coarse"]["test"].shape == (400,)
  assert 0 <= d["coarse"]["train"].min() and d["coarse"]["train"].max() < 20


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
    # Every test batch: at most 4 images of the stream's shape, one label each,
    # labels relabelled into the task's 10 classes.
    for t2 in range(3):
      for images, labels in s.test_batches(t2, 4):
        assert 1 <= images.shape[0] <= 4 and images.shape[1:] == (32, 32, 3)
        assert labels.shape == (images.shape[0],)
        assert np.all((np.asarray(labels) >= 0) & (np.asarray(labels) < 10))


# ------------------------------------------------ CIFAR-100 from an image folder
# A tiny synthetic CIFAR-100 (100 classes, 2 train + 1 test image each) goes
# through the same code as the real archive: archive digest, extraction with
# its record, class check, ImageFolder decoding, coarse labels, .npz cache.
# Pixels encode (class, index, split), so labels can be checked image by image.
FINE = [f"c{i:02d}" for i in range(100)]
COARSE = [f"s{i:02d}" for i in range(20)]
# Not the identity pattern, so a coarse label taken from the wrong class shows.
F2C = np.random.default_rng(7).permutation(np.repeat(np.arange(20), 5)).tolist()
SPLIT_CODE = {"train": 10, "test": 20}


def _write_tree(root, offset=0, skip=()):
  """root/{train,test}/<class>/*.png (+ fine_to_coarse.json); ``skip``: (split, class)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for split, n in (("train", 2), ("test", 1)):
    for c, name in enumerate(FINE):
      if (split, name) in skip:
        continue
      d = root / split / name
      d.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        img = np.empty((32, 32, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = c, i + offset, SPLIT_CODE[split]
        Image.fromarray(img).save(d / f"{name}_{i}.png")
  (root / sources.CIFAR100_LABELS_FILE).write_text(json.dumps(
      {"fine_label_names": FINE, "coarse_label_names": COARSE, "fine_to_coarse": F2C}))
  return root


def _pack(tree, archive):
  archive.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(archive, "w:gz") as tf_:
    for p in sorted(tree.iterdir()):
      tf_.add(p, arcname=p.name)
  return archive


@pytest.fixture
def c100(tmp_path, monkeypatch):
  """(data dir holding cifar100/synthetic_images.tar.gz, the archive, the tree)."""
  monkeypatch.setenv("SUPSUP_CACHE_DIR", str(tmp_path / "cache"))
  D.clear_cache()
  tree = _write_tree(tmp_path / "tree")
  archive = _pack(tree, tmp_path / "data" / "cifar100" / "synthetic_images.tar.gz")
  yield tmp_path / "data", archive, tree
  D.clear_cache()


def _extraction(archive):
  digest = hashlib.sha256(archive.read_bytes()).hexdigest()
  return sources.cache_dir() / "image_folders" / f"cifar100_{digest[:16]}", digest


def _one_line(e):
  lines = [l for l in str(e.value).strip().splitlines() if l.strip()]
  assert len(lines) == 1, str(e.value)
  return lines[0]


def test_cifar100_image_folder_labels_and_provenance(c100):
  data_dir, archive, _ = c100
  d = D.load_dataset("cifar100", str(data_dir))
  for split, n in (("train", 200), ("test", 100)):
    x, y = d[split]
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 0, 0, 0], y)  # each image under its own class id
    assert (x[..., 2] == SPLIT_CODE[split]).all()
    np.testing.assert_array_equal(d["coarse"][split], np.asarray(F2C)[y])
  assert d["class_names"] == FINE and d["coarse_class_names"] == COARSE
  assert d["fine_to_coarse"].tolist() == F2C
  # The archive's SHA-256 is recorded with the extraction and the decoded arrays.
  dest, digest = _extraction(archive)
  record = json.loads((dest / sources._SOURCES_RECORD).read_text())
  assert record["sha256"] == {archive.name: digest}
  with np.load(f"{dest}.arrays.npz") as z:
    assert json.loads(str(z["source_fingerprint"])) == {archive.name: digest}
  # A second process-level load comes from the .npz with the same content.
  D.clear_cache()
  again = D.load_dataset("cifar100", str(data_dir))
  np.testing.assert_array_equal(again["train"][0], d["train"][0])
  np.testing.assert_array_equal(again["coarse"]["test"], d["coarse"]["test"])


def test_split_cifar100_image_folder_is_the_authors_split(c100):
  data_dir, _, _ = c100
  for seed in (0, 3):
    s = D.make_stream("split_cifar100", seed=seed, data_dir=str(data_dir))
    np.random.seed(seed)  # what RandSplitCIFAR100 does (RAIVNLab/supsup)
    perm = np.random.permutation(100).tolist()
    assert s.task_classes == [perm[5 * t:5 * t + 5] for t in range(20)]
    assert s.num_tasks == 20 and s.num_classes == 5
    mean, std = (np.asarray(v, np.float32) for v in T.NORM["cifar100"])
    for t in (0, 19):
      x, y = (np.asarray(a) for a in s.test_arrays(t))
      raw = np.rint((x * std + mean) * 255)
      # Local label j is the j-th class of the task's slice (lperm.index).
      np.testing.assert_array_equal(np.asarray(s.task_classes[t])[y], raw[:, 0, 0, 0])
      assert sorted(y.tolist()) == [0, 1, 2, 3, 4]
      xb, yb = (np.asarray(a) for a in s.train_batch(t, 0, 8))
      rawb = np.rint((xb * std + mean) * 255)
      np.testing.assert_array_equal(np.asarray(s.task_classes[t])[yb], rawb[:, 0, 0, 0])


def test_cifar100_changed_archive_is_prepared_again(c100, tmp_path):
  data_dir, archive, _ = c100
  first = D.load_dataset("cifar100", str(data_dir))
  old_dest, _ = _extraction(archive)
  tree2 = _write_tree(tmp_path / "tree2", offset=50)
  _pack(tree2, archive)  # same name, new content; no clear_cache: noticed in-process too
  second = D.load_dataset("cifar100", str(data_dir))
  assert first["train"][0][..., 1].max() < 50 and second["train"][0][..., 1].min() >= 50
  new_dest, digest = _extraction(archive)
  assert new_dest != old_dest
  assert json.loads((new_dest / sources._SOURCES_RECORD).read_text())["sha256"] == {
      archive.name: digest}


def test_cifar100_modified_extraction_is_extracted_again(c100, caplog):
  data_dir, archive, _ = c100
  D.load_dataset("cifar100", str(data_dir))
  dest, _ = _extraction(archive)
  Path(f"{dest}.arrays.npz").unlink()  # force decoding from the extracted copy
  png = next((dest / "train" / "c05").iterdir())
  png.write_bytes(b"not a png any more")
  D.clear_cache()
  with caplog.at_level(logging.WARNING, logger=sources.__name__):
    d = D.load_dataset("cifar100", str(data_dir))
  assert "was changed since it was extracted" in caplog.text
  np.testing.assert_array_equal(d["train"][0][:, 0, 0, 0], d["train"][1])


def test_cifar100_registered_archive_name_with_other_content_is_refused(c100):
  data_dir, archive, _ = c100
  archive.rename(archive.with_name("cifar100_images.tar.gz"))
  with pytest.raises(D.DataChecksumError) as e:
    D.load_dataset("cifar100", str(data_dir))
  msg = _one_line(e)
  assert "cifar100_images.tar.gz is not the cifar100 image archive" in msg
  assert "registered 43f3ac6c" in msg and "another name" in msg


@pytest.mark.parametrize("skip, where, missing", [
    ({("test", "c42")}, "test", "c42"),
    ({("train", c) for c in FINE[:7]}, "train", "c00, c01, c02, c03, c04, ..."),
])
def test_cifar100_class_missing_is_refused(tmp_path, monkeypatch, skip, where, missing):
  monkeypatch.setenv("SUPSUP_CACHE_DIR", str(tmp_path / "cache"))
  tree = _write_tree(tmp_path / "tree", skip=skip)
  _pack(tree, tmp_path / "data" / "cifar100" / "synthetic_images.tar.gz")
  D.clear_cache()
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(tmp_path / "data"))
  msg = _one_line(e)
  assert msg.startswith(f"cifar100 archive {tmp_path / 'data' / 'cifar100'}")
  assert f": {where}/ lacks {len(skip)} class folder(s) with images: {missing};" in msg
  assert "restore the full dataset" in msg


def test_cifar100_label_file_changed_beside_the_archive_is_refused(c100):
  """The label file beside the archive (as in shared/data) is part of the
  recorded source: changed after the data were prepared, it is noticed
  (the decoded arrays were keyed by its digest) and refused in one line."""
  data_dir, archive, tree = c100
  beside = archive.parent / sources.CIFAR100_LABELS_FILE
  beside.write_bytes((tree / sources.CIFAR100_LABELS_FILE).read_bytes())  # the same file
  first = D.load_dataset("cifar100", str(data_dir))
  np.testing.assert_array_equal(first["coarse"]["test"], np.asarray(F2C)[first["test"][1]])
  changed = dict(json.loads(beside.read_text()), fine_to_coarse=F2C[1:] + F2C[:1])
  beside.write_text(json.dumps(changed))  # no clear_cache: noticed in-process too
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(data_dir))
  assert _one_line(e) == (f"{beside} differs from the {sources.CIFAR100_LABELS_FILE} inside "
                          "the archive; remove it or restore the original")


def test_cifar100_unpacked_folder_class_missing_or_image_changed(tmp_path, monkeypatch):
  """An unpacked folder (train/ test/ in data_dir/cifar100) takes the same
  class check, and a changed image is decoded again (its cache is keyed by
  every file's path, size and mtime)."""
  monkeypatch.setenv("SUPSUP_CACHE_DIR", str(tmp_path / "cache"))
  sub = _write_tree(tmp_path / "data" / "cifar100")
  D.clear_cache()
  before = D.load_dataset("cifar100", str(tmp_path / "data"))
  png = sub / "test" / "c07" / "c07_0.png"
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.full((32, 32, 3), 201, np.uint8)).save(png)
  after = D.load_dataset("cifar100", str(tmp_path / "data"))
  changed = after["test"][1] == 7
  assert (before["test"][0][changed][..., 0] == 7).all()
  assert (after["test"][0][changed] == 201).all()
  for p in (sub / "train" / "c99").iterdir():
    p.unlink()
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(tmp_path / "data"))
  assert _one_line(e) == (f"cifar100 image folder {sub}: train/ lacks 1 class folder(s) with "
                          f"images: c99; it needs the 100 fine classes of "
                          f"{sources.CIFAR100_LABELS_FILE}: restore the full dataset")
  D.clear_cache()


def test_cifar100_class_missing_through_the_launcher_is_one_line(tmp_path):
  """What a user sees: one error line, exit code 2, no traceback (the check runs
  before any image is decoded, so no TensorFlow either)."""
  _write_tree(tmp_path / "data" / "cifar100", skip={("test", "c42")})
  repo = Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", SUPSUP_CACHE_DIR=str(tmp_path / "cache"))
  result = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=launch/configs/gg_split_cifar100.py:cpu",
       f"--workdir={tmp_path / 'w'}", f"--config.data_dir={tmp_path / 'data'}"],
      cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stdout + result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert errors == [f"error: cifar100 image folder {tmp_path / 'data' / 'cifar100'}: test/ "
                    "lacks 1 class folder(s) with images: c42; it needs the 100 fine classes "
                    f"of {sources.CIFAR100_LABELS_FILE}: restore the full dataset"], result.stderr


def test_cifar100_label_file_problems_are_one_line(tmp_path, monkeypatch):
  monkeypatch.setenv("SUPSUP_CACHE_DIR", str(tmp_path / "cache"))
  # An unpacked folder (train/ test/ in data_dir/cifar100) takes the same checks.
  sub = _write_tree(tmp_path / "data" / "cifar100")
  labels = sub / sources.CIFAR100_LABELS_FILE
  labels.unlink()
  D.clear_cache()
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(tmp_path / "data"))
  assert f"has no {sources.CIFAR100_LABELS_FILE}" in _one_line(e)
  labels.write_text(json.dumps({"fine_label_names": FINE, "coarse_label_names": COARSE,
                                "fine_to_coarse": F2C[:99]}))
  D.clear_cache()
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(tmp_path / "data"))
  assert "fine_to_coarse of shape (99,)" in _one_line(e)
  labels.write_text("{not json")
  D.clear_cache()
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(tmp_path / "data"))
  assert "is not a CIFAR-100 label file" in _one_line(e)


def test_cifar100_damaged_archive_or_image_is_one_line(c100, tmp_path):
  data_dir, archive, tree = c100
  good = archive.read_bytes()
  archive.write_bytes(good[:len(good) // 2])  # truncated download
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(data_dir))
  assert f"{archive} cannot be unpacked" in _one_line(e)
  (tree / "test" / "c07" / "c07_0.png").write_bytes(b"\x89PNG but not really")
  _pack(tree, archive)
  with pytest.raises(D.DataLayoutError) as e:
    D.load_dataset("cifar100", str(data_dir))
  msg = _one_line(e)
  assert "cannot decode the images of" in msg and str(archive) in msg


def test_split_cifar100_seed_beyond_numpy_legacy_is_one_line():
  with pytest.raises(ValueError) as e:
    D.make_stream("split_cifar100", seed=2**40, data_dir="/nonexistent")
  assert "class_order_seed 1099511627776 out of range for split_cifar100" in _one_line(e)
