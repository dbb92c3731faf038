"""Loading base datasets (MNIST, Fashion-MNIST, CIFAR-10/100, ImageNet) through tfds.

Resolution order for a dataset ``name`` (see docs/guide/data.md):

1. ``data_dir`` argument, else env ``SUPSUP_DATA_DIR``: a folder laid out like
   ``shared/data`` (``mnist/``, ``fashion_mnist/``, ``cifar10/`` ...). Inside
   ``<data_dir>/<name>/``:

     * ``train/<class>/*`` and ``test/<class>/*`` -> read with
       ``tfds.folder_dataset.ImageFolder``;
     * ``*_images.tar.gz`` -> unpacked once (atomically) into the cache dir, then
       read as an image folder;
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

Images come back as numpy uint8 NHWC, labels as int32. Results are cached per
process, keyed by (dataset, data_dir, source digests).
"""
from __future__ import annotations

import contextlib
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
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DataNotFoundError", "DataChecksumError", "KNOWN_DATASETS", "load_dataset",
    "resolve_data_dir", "cache_dir", "clear_cache", "load_image_folder", "file_digest",
    "folder_fingerprint",
]

KNOWN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")

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
  with _wrap_tfds_errors(name, looked):
    out = {}
    for split in ("train", "test"):
      ds = builder.as_dataset(split=split, shuffle_files=False)
      out[split] = _ds_to_numpy(tfds, ds)
    out["num_classes"] = int(builder.info.features["label"].num_classes)
    out["class_names"] = list(builder.info.features["label"].names)
  return out


def _ds_to_numpy(tfds, ds):
  ds = ds.map(lambda e: (e["image"], e["label"])).batch(4096)
  xs, ys = [], []
  for x, y in tfds.as_numpy(ds):
    xs.append(np.asarray(x, np.uint8))
    ys.append(np.asarray(y, np.int32))
  return np.concatenate(xs), np.concatenate(ys)


def _save_npz(path: Path, out: dict[str, Any], fingerprint: str) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    arrays = {f"{s}_{k}": out[s][i] for s in ("train", "test") for i, k in enumerate("xy")}
    np.savez(tmp, class_names=np.array(out["class_names"]),
             source_fingerprint=np.array(fingerprint), **arrays)
    os.replace(tmp, path)
  except OSError:
    pass


def _load_npz(path: Path, fingerprint: str) -> dict[str, Any] | None:
  """The cached arrays, or None when absent, unreadable or made from other files."""
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      if str(z["source_fingerprint"]) != fingerprint:
        return None
      out = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "test")}
      out["class_names"] = [str(c) for c in z["class_names"]]
  except Exception:  # truncated / stale cache: rebuild
    return None
  out["num_classes"] = len(out["class_names"])
  return out


def _extract_once(archive: Path, name: str) -> Path:
  """Unpacks ``archive`` into the cache dir once, atomically (tmp dir + rename)."""
  dest = cache_dir() / "image_folders" / f"{name}_{file_digest(archive)[:16]}"
  if dest.is_dir():
    return dest
  dest.parent.mkdir(parents=True, exist_ok=True)
  with _file_lock(f"extract_{name}"):
    if dest.is_dir():
      return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}_", dir=dest.parent))
    try:
      with tarfile.open(archive) as tf_:
        try:
          tf_.extractall(tmp, filter="data")
        except TypeError:  # Python without extraction filters
          tf_.extractall(tmp)
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
      os.rename(tmp, dest)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  return dest


def folder_fingerprint(root: str | os.PathLike) -> str:
  """Hash of every file's relative path, size and mtime under ``root``."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for f in sorted(filenames):
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


def _find_image_folder(sub: Path, name: str) -> tuple[Path, str] | None:
  """(image folder, fingerprint of its source) or None."""
  if (sub / "train").is_dir() and (sub / "test").is_dir():
    return sub, folder_fingerprint(sub)
  archives = sorted(sub.glob("*_images.tar.gz")) + sorted(sub.glob("*_images.tgz"))
  if archives:
    # The extraction is keyed by the archive's digest and never modified.
    return _extract_once(archives[0], name), file_digest(archives[0])[:16]
  return None


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
        key = (name, root, found[1])
        with _LOCK:
          if key in _CACHE:
            return _CACHE[key]
        out = load_image_folder(found[0], fingerprint=found[1])
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
        out = _load_npz(npz, key[2])
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
