"""Loading base datasets (MNIST, Fashion-MNIST, CIFAR-10/100, ImageNet) through tfds.

Resolution order for a dataset ``name`` (see docs/guide/data.md):

1. ``data_dir`` argument, else env ``SUPSUP_DATA_DIR``: a folder laid out like
   ``shared/data`` (``mnist/``, ``fashion_mnist/``, ``cifar10/`` ...). Inside
   ``<data_dir>/<name>/``:

     * ``train/<class>/*`` and ``test/<class>/*`` -> read with
       ``tfds.folder_dataset.ImageFolder``;
     * ``*_images.tar.gz`` -> unpacked once (atomically) into the cache dir, then
       read as an image folder (``cifar100``: plus ``fine_to_coarse.json``, in
       the archive or beside it, for the coarse labels);
     * otherwise the raw files of the official tfds builder (e.g. the four MNIST
       ``.gz`` idx files) -> given to the builder as ``manual_dir`` (each dataset
       with its own ``extract_dir``), no network access.

2. Neither set (or ``download=True``): the official tfds builder with its default
   download (online).

Provenance: every prepared or cached copy is tied to the exact source files.
The SHA-256 of each manual file is checked against tfds's registered checksum
and recorded next to the prepared tfds data (``supsup_sources.json`` in the
builder's data dir); the decoded ``.npz`` cache and the extraction dirs are
keyed by those digests. A changed, corrupt or wrong file is therefore noticed
on every load, not only on the first (see :func:`file_digest`).

Image-folder archives get the same treatment: the archive's SHA-256 is recorded
in the extracted copy (``supsup_sources.json``, with the list of the files
extracted) and in the decoded ``.npz`` cache. A changed archive misses both and
is extracted and decoded again; an extracted copy whose record disagrees with
the archive, or whose files changed since, is extracted again. An archive under
a name registered in ``_REGISTERED_ARCHIVES`` (the ``shared/data`` archives)
whose digest is not the registered one is refused with one line.

CIFAR-100 (``cifar100``) carries fine labels (``y``, 100 classes) and coarse
labels (``out["coarse"]``, 20 superclasses), from tfds's ``coarse_label`` or,
for an image folder, from ``fine_to_coarse.json``.

Images come back as numpy uint8 NHWC, labels as int32. Results are cached per
process, keyed by (dataset, data_dir, source digests).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DataNotFoundError", "DataChecksumError", "DataLayoutError", "KNOWN_DATASETS",
    "IN_MEMORY_DATASETS", "load_dataset",
    "resolve_data_dir", "cache_dir", "clear_cache", "load_image_folder", "file_digest",
    "folder_fingerprint",
]

KNOWN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")
# Small enough to hold in memory: load_dataset returns their arrays (imagenet2012
# is read through resolve_builder). Each has a NORM entry in transforms.py.
IN_MEMORY_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")

# Files that the official builders look for in their manual_dir.
_MANUAL_FILES = {
    "mnist": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    "fashion_mnist": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    "cifar10": ("cifar-10-binary.tar.gz",),
    "cifar100": ("cifar-100-binary.tar.gz",),
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}


class DataNotFoundError(FileNotFoundError):
  """No usable local data and download not enabled (or it failed)."""


class DataChecksumError(ValueError):
  """A data file is corrupt or is the wrong file (checksum mismatch)."""


class DataLayoutError(ValueError):
  """A data folder or archive does not hold the dataset's layout (e.g. a class
  folder is missing, or a label file is malformed)."""


# Image-folder archives whose content this library knows: the SHA-256 of the
# archives in shared/data (their README.txt says where they come from and what
# was checked). As with tfds's registered checksums for the official files, a
# file of one of these names with other content is refused: it is damaged or
# not the dataset. Any other ``*_images.tar.gz`` is read and its digest recorded.
_REGISTERED_ARCHIVES = {
    "cifar10_images.tar.gz": "58c58e3af3ec7ed2054f439f35ad3c83dc1ab019f4af6037f60612ea098c8fa1",
    "cifar100_images.tar.gz": "43f3ac6c7160863a47419c8852fa241cd437f4ce7122fa1da57b83ac657e998e",
}
# CIFAR-100 image folders: {"fine_label_names": [100], "coarse_label_names": [20],
# "fine_to_coarse": [100 ints]}, inside the archive or beside it.
CIFAR100_LABELS_FILE = "fine_to_coarse.json"
_CIFAR100_SIZES = (100, 20)


_CACHE: dict[tuple[str, str | None, str], dict[str, Any]] = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
  """Forget the in-process dataset cache (e.g. between mock-data tests)."""
  with _LOCK:
    _CACHE.clear()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
  """``data_dir`` if given, else env ``SUPSUP_DATA_DIR``, else None (online)."""
  d = data_dir if data_dir else os.environ.get("SUPSUP_DATA_DIR") or None
  return str(Path(d).expanduser()) if d else None


def cache_dir() -> Path:
  """Where extracted archives and decoded arrays live (env SUPSUP_CACHE_DIR)."""
  d = os.environ.get("SUPSUP_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "supsup_jax")
  p = Path(d).expanduser()
  p.mkdir(parents=True, exist_ok=True)
  return p


def _tfds_data_dir() -> str | None:
  return os.environ.get("TFDS_DATA_DIR") or None


def _patch_importlib_resources() -> None:
  # tfds/etils reference the `importlib_resources` backport; the stdlib module
  # offers the same API on Python >= 3.10 when the backport is not installed.
  try:
    importlib.import_module("importlib_resources")
  except ImportError:
    ir = importlib.import_module("importlib.resources")
    importlib.import_module("importlib.resources.abc")
    sys.modules.setdefault("importlib_resources", ir)


def import_tf():
  """Imports TensorFlow lazily and hides any GPU from it (JAX owns devices)."""
  _patch_importlib_resources()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised
    pass
  return tf


def import_tfds():
  import_tf()
  import tensorflow_datasets as tfds
  return tfds


@contextlib.contextmanager
def _file_lock(name: str):
  """Inter-process lock (pytest-xdist workers may prepare the same dataset)."""
  lock_path = cache_dir() / f".{name}.lock"
  try:
    import fcntl
  except ImportError:  # pragma: no cover - non-POSIX
    yield
    return
  with open(lock_path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


# Files above this size get a partial digest (size + first and last chunk):
# hashing ImageNet's 144 GB on every cache miss would take many minutes.
_FULL_HASH_LIMIT = 1 << 30
_PARTIAL_CHUNK = 16 << 20
_SOURCES_RECORD = "supsup_sources.json"
_log = logging.getLogger(__name__)


def _stat_key(path: Path) -> list[int]:
  # ctime changes on every write and cannot be set back by the user (unlike
  # mtime), so an unchanged key means unchanged content.
  st = path.stat()
  return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _hash_file(path: Path, size: int) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    if size <= _FULL_HASH_LIMIT:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
      return h.hexdigest()
    h.update(str(size).encode())
    h.update(f.read(_PARTIAL_CHUNK))
    f.seek(size - _PARTIAL_CHUNK)
    h.update(f.read(_PARTIAL_CHUNK))
  return "partial:" + h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
  """SHA-256 (hex) of a file's content.

  Memoised in ``<cache>/sha256_memo.json`` by (size, mtime, ctime, inode), so a
  file is read once until it changes. Files over 1 GiB get a ``partial:``
  digest of their size and first and last 16 MiB.
  """
  path = Path(path).resolve()
  key = _stat_key(path)
  memo_path = cache_dir() / "sha256_memo.json"
  try:
    memo = json.loads(memo_path.read_text())
  except (OSError, ValueError):
    memo = {}
  hit = memo.get(str(path))
  if isinstance(hit, list) and hit[:-1] == key:
    return hit[-1]
  digest = _hash_file(path, key[0])
  memo[str(path)] = key + [digest]
  try:  # a lost memo entry only costs a re-hash
    tmp = memo_path.with_name(f"{memo_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(memo))
    os.replace(tmp, memo_path)
  except OSError:
    pass
  return digest


def _source_digests(name: str, sub: Path) -> dict[str, str]:
  """{file name: sha256} of the manual files of ``name`` present in ``sub``."""
  return {f: file_digest(sub / f) for f in _MANUAL_FILES.get(name, ()) if (sub / f).is_file()}


def _digests_key(digests: dict[str, str]) -> str:
  return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def _check_registered(name: str, builder, sub: Path, digests: dict[str, str]) -> None:
  """Each manual file must match tfds's registered checksum for it (if any)."""
  for info in (builder.url_infos or {}).values():
    fname = getattr(info, "filename", None)
    got = digests.get(fname)
    if got is None or got.startswith("partial:") or not info.checksum:
      continue
    if got != info.checksum:
      raise DataChecksumError(
          f"{sub / fname} is not the {name} file tfds expects (sha256 {got[:16]}..., "
          f"registered {info.checksum[:16]}...); replace it with the original download")


def _check_record(name: str, builder, sub: Path, digests: dict[str, str]) -> bool:
  """True when the prepared data in the builder's dir came from these files.

  False when it must be (re-)prepared: nothing prepared, or prepared from other
  files (the files named in the log line changed since).
  """
  data_dir = Path(builder.data_dir)
  if not builder.is_prepared():
    return False
  try:
    recorded = json.loads((data_dir / _SOURCES_RECORD).read_text())["sha256"]
  except (OSError, ValueError, KeyError, TypeError):
    recorded = None
  if recorded == digests:
    return True
  if recorded is None and any(getattr(i, "filename", None) in digests and i.checksum
                              for i in (builder.url_infos or {}).values()):
    # Prepared by tfds (online or before records existed) from files with the
    # registered checksums that the current files were just checked against.
    _write_record(data_dir, sub, digests)
    return True
  changed = sorted(f for f in set(digests) | set(recorded or {})
                   if (recorded or {}).get(f) != digests.get(f))
  _log.warning("%s: prepared data in %s %s; re-preparing from %s", name, data_dir,
               f"came from other files (changed: {', '.join(changed)})" if recorded
               else "has no record of its source files", sub)
  return False


def _write_record(data_dir: Path, sub: Path, digests: dict[str, str]) -> None:
  tmp = data_dir / f".{_SOURCES_RECORD}.tmp{os.getpid()}"
  tmp.write_text(json.dumps({"manual_dir": str(sub), "sha256": digests}, indent=1))
  os.replace(tmp, data_dir / _SOURCES_RECORD)


def _not_found(name: str, looked: list[str], extra: str = "") -> DataNotFoundError:
  files = ", ".join(_MANUAL_FILES.get(name, ()))
  return DataNotFoundError(
      f"No data for dataset '{name}' found; looked in: {', '.join(looked) or '(nowhere)'}. "
      f"Point at local files with env SUPSUP_DATA_DIR=<dir> or config key data_dir=<dir> "
      f"(<dir>/{name}/ holding the original files [{files}] or an image folder "
      f"train/<class>/*, test/<class>/*), or enable download (download=True, needs internet)."
      + (f" {extra}" if extra else ""))


def _checksum_error_cls():
  from tensorflow_datasets.core.download import download_manager
  return download_manager.NonMatchingChecksumError


def _wrap_tfds_errors(name: str, looked: list[str]):
  """Context manager translating tfds failures into our error types."""
  @contextlib.contextmanager
  def cm():
    tfds = import_tfds()
    try:
      yield
    except _checksum_error_cls() as e:
      raise DataChecksumError(f"Checksum mismatch for dataset '{name}': {e}") from e
    except (DataNotFoundError, DataChecksumError):
      raise
    except Exception as e:  # network failures, missing manual files, ...
      msg = str(e)
      if "checksum" in msg.lower():
        raise DataChecksumError(f"Checksum error for dataset '{name}': {msg}") from e
      if isinstance(e, (OSError, ConnectionError, AssertionError)) or any(
          s in msg for s in ("Failed to", "ConnectionError", "Max retries", "manual",
                             "Manual", "resolve", "Name or service")):
        raise _not_found(name, looked, f"(tfds said: {type(e).__name__}: {msg[:500]})") from e
      raise
  return cm()


def prepare_builder(name: str, manual_dir: str | None, download: bool,
                    looked: list[str]):
  """The official tfds builder, downloaded/prepared (offline from manual_dir)."""
  tfds = import_tfds()
  with _wrap_tfds_errors(name, looked):
    builder = tfds.builder(name, data_dir=_tfds_data_dir())
    if manual_dir is None:
      dl_config = tfds.download.DownloadConfig(try_download_gcs=download or None)
      with _file_lock(f"tfds_{name}"):
        builder.download_and_prepare(download_config=dl_config)
      return builder
    sub = Path(manual_dir)
    digests = _source_digests(name, sub)
    _check_registered(name, builder, sub, digests)
    with _file_lock(f"tfds_{name}"):
      if _check_record(name, builder, sub, digests):
        return builder
      if builder.is_prepared():
        shutil.rmtree(builder.data_dir)
        builder = tfds.builder(name, data_dir=_tfds_data_dir())
      # tfds reuses any extraction it finds by file name, so the extraction
      # dir is keyed by the files' content and dropped after preparing.
      extract_dir = cache_dir() / "extract" / f"{name}_{_digests_key(digests)}"
      dl_config = tfds.download.DownloadConfig(
          manual_dir=manual_dir, extract_dir=str(extract_dir), try_download_gcs=False)
      builder.download_and_prepare(download_config=dl_config)
      _write_record(Path(builder.data_dir), sub, digests)
      shutil.rmtree(extract_dir, ignore_errors=True)
  return builder


def _builder_arrays(name: str, manual_dir: str | None, download: bool,
                    looked: list[str]) -> dict[str, Any]:
  """Builds the official tfds builder and reads train/test fully as numpy."""
  tfds = import_tfds()
  builder = prepare_builder(name, manual_dir, download, looked)
  features = builder.info.features
  coarse = name == "cifar100" and "coarse_label" in features
  with _wrap_tfds_errors(name, looked):
    out = {}
    coarse_y = {}
    for split in ("train", "test"):
      ds = builder.as_dataset(split=split, shuffle_files=False)
      if coarse:
        x, y, coarse_y[split] = _ds_to_numpy(tfds, ds, extra="coarse_label")
        out[split] = (x, y)
      else:
        out[split] = _ds_to_numpy(tfds, ds)
    out["num_classes"] = int(features["label"].num_classes)
    out["class_names"] = list(features["label"].names)
  if coarse:
    _attach_coarse(out, coarse_y, list(features["coarse_label"].names))
  return out


def _ds_to_numpy(tfds, ds, extra: str | None = None):
  """(images uint8, labels int32[, int32 labels of feature ``extra``])."""
  if extra is None:
    ds = ds.map(lambda e: (e["image"], e["label"]))
  else:
    ds = ds.map(lambda e: (e["image"], e["label"], e[extra]))
  cols = None
  for batch in tfds.as_numpy(ds.batch(4096)):
    if cols is None:
      cols = [[] for _ in batch]
    for i, v in enumerate(batch):
      cols[i].append(np.asarray(v, np.uint8 if i == 0 else np.int32))
  return tuple(np.concatenate(c) for c in cols)


def _attach_coarse(out: dict[str, Any], coarse_y: dict[str, np.ndarray],
                   coarse_names: list[str]) -> None:
  """Adds ``coarse`` ({split: int32 labels}), ``coarse_class_names`` and, when
  every fine class has one coarse class (always so for the real CIFAR-100;
  not for tfds's random mock data), ``fine_to_coarse`` (int32 [num_classes])."""
  out["coarse"] = {s: np.asarray(coarse_y[s], np.int32) for s in ("train", "test")}
  out["coarse_class_names"] = list(coarse_names)
  f2c = np.full(out["num_classes"], -1, np.int64)
  pairs = np.unique(np.stack([np.concatenate([out[s][1] for s in ("train", "test")]),
                              np.concatenate([coarse_y[s] for s in ("train", "test")])]),
                    axis=1)
  fine, counts = np.unique(pairs[0], return_counts=True)
  if len(fine) == out["num_classes"] and (counts == 1).all():
    f2c[pairs[0]] = pairs[1]
    out["fine_to_coarse"] = f2c.astype(np.int32)


def _save_npz(path: Path, out: dict[str, Any], fingerprint: str) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    arrays = {f"{s}_{k}": out[s][i] for s in ("train", "test") for i, k in enumerate("xy")}
    if "coarse" in out:
      arrays.update({f"{s}_coarse": out["coarse"][s] for s in ("train", "test")})
      arrays["coarse_class_names"] = np.array(out["coarse_class_names"])
    np.savez(tmp, class_names=np.array(out["class_names"]),
             source_fingerprint=np.array(fingerprint), **arrays)
    os.replace(tmp, path)
  except OSError:
    pass


def _load_npz(path: Path, fingerprint: str, coarse: bool = False) -> dict[str, Any] | None:
  """The cached arrays, or None when absent, unreadable, made from other files
  or (``coarse``) without the coarse labels (a cache of an older version)."""
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      if str(z["source_fingerprint"]) != fingerprint or (
          coarse and "coarse_class_names" not in z.files):
        return None
      out = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "test")}
      out["class_names"] = [str(c) for c in z["class_names"]]
      out["num_classes"] = len(out["class_names"])
      if "coarse_class_names" in z.files:
        _attach_coarse(out, {s: z[f"{s}_coarse"] for s in ("train", "test")},
                       [str(c) for c in z["coarse_class_names"]])
  except Exception:  # truncated / stale cache: rebuild
    return None
  return out


def _extraction_problem(dest: Path, archive: Path, digest: str) -> str | None:
  """Why the extracted copy ``dest`` cannot be used for ``archive``, or None."""
  try:
    record = json.loads((dest / _SOURCES_RECORD).read_text())
    sha, files = record["sha256"], record["files"]
  except (OSError, ValueError, KeyError, TypeError):
    return "has no readable record of its archive (extracted by an older version?)"
  if sha != {archive.name: digest}:
    return f"came from other content (recorded {sha}, now {archive.name} {digest[:16]}...)"
  if files != folder_fingerprint(dest, ignore=(_SOURCES_RECORD,)):
    return "was changed since it was extracted (a file added, removed or modified)"
  return None


def _extract_once(archive: Path, name: str, digest: str) -> Path:
  """Unpacks ``archive`` (SHA-256 ``digest``) into the cache dir once,
  atomically (tmp dir + rename), with a record of the archive's digest and of
  the files extracted. An existing copy whose record does not match is
  extracted again (one log line says why)."""
  dest = cache_dir() / "image_folders" / f"{name}_{digest[:16]}"
  dest.parent.mkdir(parents=True, exist_ok=True)
  with _file_lock(f"extract_{name}"):
    if dest.is_dir():
      problem = _extraction_problem(dest, archive, digest)
      if problem is None:
        return dest
      _log.warning("%s: the extracted copy %s %s; extracting %s again", name, dest, problem,
                   archive)
      shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}_", dir=dest.parent))
    try:
      try:
        with tarfile.open(archive) as tf_:
          try:
            tf_.extractall(tmp, filter="data")
          except TypeError:  # Python without extraction filters
            tf_.extractall(tmp)
      except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataLayoutError(f"{archive} cannot be unpacked ({type(e).__name__}: "
                              f"{_first_line(e)}); replace it with a complete copy") from None
      root = tmp
      # Accept an archive with a single top-level folder around train/ test/.
      entries = [p for p in tmp.iterdir()]
      if not (tmp / "train").is_dir() and len(entries) == 1 and entries[0].is_dir():
        root = entries[0]
      if root is not tmp:
        final_tmp = Path(tempfile.mkdtemp(prefix=f".{name}_r_", dir=dest.parent))
        os.rmdir(final_tmp)
        os.rename(root, final_tmp)
        shutil.rmtree(tmp)
        tmp = final_tmp
      record = {"archive": str(archive), "sha256": {archive.name: digest},
                "files": folder_fingerprint(tmp, ignore=(_SOURCES_RECORD,))}
      (tmp / _SOURCES_RECORD).write_text(json.dumps(record, indent=1))
      os.rename(tmp, dest)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  return dest


def folder_fingerprint(root: str | os.PathLike, ignore: tuple[str, ...] = ()) -> str:
  """Hash of every file's relative path, size and mtime under ``root``
  (files directly in ``root`` named in ``ignore`` left out)."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for f in sorted(filenames):
      if f in ignore and dirpath == os.fspath(root):
        continue
      p = os.path.join(dirpath, f)
      st = os.stat(p)
      h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


def load_image_folder(root: str | os.PathLike, *, splits=("train", "test"),
                      use_cache: bool = True, fingerprint: str | None = None
                      ) -> dict[str, Any]:
  """Reads ``root/<split>/<class>/<image>`` with ``tfds.folder_dataset.ImageFolder``.

  Class ids are the alphabetical order of the class folder names. All images of
  one folder must have the same shape. Decoded arrays are cached as ``.npz`` next
  to the folder (when writable), so the second load is fast; the cache records
  ``fingerprint`` (default: :func:`folder_fingerprint`) and is rebuilt when
  any image is added, removed or changed.
  """
  root = Path(root)
  npz = root.parent / f"{root.name}.arrays.npz"
  use_cache = use_cache and tuple(splits) == ("train", "test")
  if use_cache and fingerprint is None:
    fingerprint = folder_fingerprint(root)
  if use_cache and (cached := _load_npz(npz, fingerprint)) is not None:
    return cached
  tfds = import_tfds()
  builder = tfds.folder_dataset.ImageFolder(str(root))
  out = {}
  for split in splits:
    if split not in builder.info.splits:
      raise _not_found(root.name, [str(root / split)])
    ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=None)
    out[split] = _ds_to_numpy(tfds, ds)
  out["class_names"] = list(builder.info.features["label"].names)
  out["num_classes"] = len(out["class_names"])
  if use_cache:
    _save_npz(npz, out, fingerprint)
  return out


@dataclasses.dataclass(frozen=True)
class _FolderSource:
  """An image folder: unpacked (``folder``) or an archive extracted on use."""
  name: str               # the dataset
  folder: Path | None
  archive: Path | None
  sha256: dict[str, str]  # of the archive (and a CIFAR-100 label file beside it)
  fingerprint: str        # what the decoded arrays are keyed by

  @property
  def npz(self) -> Path:
    """The decoded arrays' cache: beside the folder, or beside its extraction."""
    if self.archive is None:
      return self.folder.parent / f"{self.folder.name}.arrays.npz"
    digest = self.sha256[self.archive.name]
    return cache_dir() / "image_folders" / f"{self.name}_{digest[:16]}.arrays.npz"


def _first_line(e: BaseException) -> str:
  return next((l.strip() for l in str(e).splitlines() if l.strip()), type(e).__name__)[:300]


def _check_registered_archive(name: str, archive: Path, digest: str) -> None:
  want = _REGISTERED_ARCHIVES.get(archive.name)
  if want and not digest.startswith("partial:") and digest != want:
    raise DataChecksumError(
        f"{archive} is not the {name} image archive this library knows (sha256 "
        f"{digest[:16]}..., registered {want[:16]}...); restore the original file, or give "
        f"your own archive another name (any other *_images.tar.gz is read and its digest "
        f"recorded)")


def _find_image_folder(sub: Path, name: str) -> _FolderSource | None:
  """The image folder in ``sub`` (cheap: archives by their memoised digest)."""
  if (sub / "train").is_dir() and (sub / "test").is_dir():
    return _FolderSource(name, sub, None, {}, folder_fingerprint(sub))
  archives = sorted(sub.glob("*_images.tar.gz")) + sorted(sub.glob("*_images.tgz"))
  if not archives:
    return None
  archive = archives[0]
  digest = file_digest(archive)
  _check_registered_archive(name, archive, digest)
  sha = {archive.name: digest}
  if name == "cifar100" and (sub / CIFAR100_LABELS_FILE).is_file():
    sha[CIFAR100_LABELS_FILE] = file_digest(sub / CIFAR100_LABELS_FILE)
  # The decoded arrays record the digests of what they were made from.
  return _FolderSource(name, None, archive, sha, json.dumps(sha, sort_keys=True))


def _cifar100_labels(folder: Path, sub: Path, origin: str
                    ) -> tuple[list[str], list[str], np.ndarray]:
  """(fine names, coarse names, fine_to_coarse) of a CIFAR-100 image folder,
  whose class folders are checked against them (one-line DataLayoutError
  naming ``origin``, the archive or folder the user gave)."""
  inside, beside = folder / CIFAR100_LABELS_FILE, sub / CIFAR100_LABELS_FILE
  found = [p for p in dict.fromkeys((inside, beside)) if p.is_file()]
  if not found:
    raise DataLayoutError(
        f"{origin} has no {CIFAR100_LABELS_FILE} (neither inside nor in {sub}); it gives the "
        f"coarse labels: put the dataset's label file there")
  if len(found) == 2 and inside.read_bytes() != beside.read_bytes():
    raise DataLayoutError(
        f"{beside} differs from the {CIFAR100_LABELS_FILE} inside the archive; remove it or "
        f"restore the original")
  path = found[0]
  n_fine, n_coarse = _CIFAR100_SIZES
  try:
    table = json.loads(path.read_text())
    fine, coarse = list(table["fine_label_names"]), list(table["coarse_label_names"])
    f2c = np.asarray(table["fine_to_coarse"])
    ok = (len(fine) == len(set(fine)) == n_fine and len(coarse) == n_coarse
          and f2c.shape == (n_fine,) and f2c.dtype.kind in "iu"
          and sorted(set(f2c.tolist())) == list(range(n_coarse)))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataLayoutError(f"{path} is not a CIFAR-100 label file ({type(e).__name__}: {e}); "
                          f"restore the dataset's original") from None
  if not ok:
    raise DataLayoutError(
        f"{path} must list {n_fine} distinct fine_label_names, {n_coarse} coarse_label_names "
        f"and fine_to_coarse as {n_fine} ints covering 0..{n_coarse - 1}; got {len(fine)} "
        f"fine, {len(coarse)} coarse, fine_to_coarse of shape {f2c.shape}; restore the original")
  for split in ("train", "test"):
    d = folder / split
    have = {p.name for p in d.iterdir() if p.is_dir() and any(
        q.is_file() for q in p.iterdir())} if d.is_dir() else set()
    missing, unknown = sorted(set(fine) - have), sorted(have - set(fine))
    if missing or unknown:
      what = []
      if missing:
        what.append(f"lacks {len(missing)} class folder(s) with images: "
                    f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
      if unknown:
        what.append(f"has {len(unknown)} class folder(s) not in {path.name}: "
                    f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
      raise DataLayoutError(f"{origin}: {split}/ {'; '.join(what)}; it needs the {n_fine} "
                            f"fine classes of {path.name}: restore the full dataset")
  return fine, coarse, f2c.astype(np.int64)


def _read_image_folder(name: str, sub: Path, src: _FolderSource) -> dict[str, Any]:
  """Decoded arrays of an image folder (from its ``.npz`` cache when that was
  made from the same source), checked (CIFAR-100: classes, coarse labels)."""
  cifar100 = name == "cifar100"
  cached = _load_npz(src.npz, src.fingerprint, coarse=cifar100)
  if cached is not None:
    return cached
  folder = src.folder if src.archive is None else _extract_once(
      src.archive, name, src.sha256[src.archive.name])
  origin = (f"cifar100 archive {src.archive}" if src.archive else
            f"cifar100 image folder {folder}")
  labels = _cifar100_labels(folder, sub, origin) if cifar100 else None
  try:
    out = load_image_folder(folder, use_cache=False)
  except (DataNotFoundError, DataLayoutError):
    raise
  except Exception as e:  # tf's decode errors: a damaged or non-image file
    raise DataLayoutError(
        f"cannot decode the images of {folder} ({type(e).__name__}: {_first_line(e)}); "
        f"replace the damaged file(s)" + (f" (from {src.archive})" if src.archive else "")
    ) from None
  if labels is not None:
    fine, coarse, f2c = labels
    # ImageFolder numbers classes alphabetically (= the official CIFAR-100
    # ids); the coarse label follows the class name.
    by_id = f2c[[fine.index(c) for c in out["class_names"]]]
    _attach_coarse(out, {s: by_id[out[s][1]] for s in ("train", "test")}, coarse)
  _save_npz(src.npz, out, src.fingerprint)
  return out


def resolve_builder(name: str, data_dir: str | None = None, download: bool = False):
  """Prepared tfds builder for datasets too large for memory (imagenet2012)."""
  root = resolve_data_dir(data_dir)
  looked: list[str] = []
  if root is not None:
    sub = Path(root) / name
    looked.append(str(sub))
    if sub.is_dir() and any(sub.iterdir()):
      return prepare_builder(name, str(sub), download, looked)
    if not download:
      raise _not_found(name, looked)
  looked.append(f"tfds data dir {_tfds_data_dir() or '(tfds default)'} / download")
  return prepare_builder(name, None, True, looked)


def load_dataset(name: str, data_dir: str | None = None, download: bool = False,
                 ) -> dict[str, Any]:
  """Returns ``{'train': (x, y), 'test': (x, y), 'num_classes', 'class_names'}``.

  ``x`` is uint8 ``[N, H, W, C]``, ``y`` int32 ``[N]``. Cached per process.
  ``cifar100`` adds ``coarse`` (``{'train', 'test'}``: int32 superclass of each
  example), ``coarse_class_names`` (20) and ``fine_to_coarse`` (int32 [100]).
  """
  if name not in KNOWN_DATASETS:
    raise ValueError(f"Unknown dataset '{name}'; allowed: {', '.join(KNOWN_DATASETS)}")
  root = resolve_data_dir(data_dir)
  looked: list[str] = []
  out = None
  key: tuple[str, str | None, str] = (name, root, "")
  if root is not None:
    sub = Path(root) / name
    looked.append(str(sub))
    if sub.is_dir():
      found = _find_image_folder(sub, name)
      if found is not None:
        key = (name, root, found.fingerprint)
        with _LOCK:
          if key in _CACHE:
            return _CACHE[key]
        out = _read_image_folder(name, sub, found)
      elif any(p.name in _MANUAL_FILES.get(name, ()) for p in sub.iterdir()):
        missing = [f for f in _MANUAL_FILES[name] if not (sub / f).exists()]
        if missing and not download:
          raise _not_found(name, looked, f"Missing files: {', '.join(missing)}.")
        # Both caches are keyed by the files' content: a changed file misses
        # them and goes through the checks in prepare_builder.
        key = (name, root, _digests_key(_source_digests(name, sub)))
        with _LOCK:
          if key in _CACHE:
            return _CACHE[key]
        npz = cache_dir() / "arrays" / f"{name}_{key[2]}.npz"
        out = _load_npz(npz, key[2], coarse=name == "cifar100")
        if out is None:
          out = _builder_arrays(name, str(sub), download, looked)
          _save_npz(npz, out, key[2])
    if out is None and not download:
      raise _not_found(name, looked)
  if out is None:
    with _LOCK:
      if key in _CACHE:
        return _CACHE[key]
    looked.append(f"tfds data dir {_tfds_data_dir() or '(tfds default)'} / download")
    out = _builder_arrays(name, None, True, looked)
  with _LOCK:
    _CACHE[key] = out
  return out
