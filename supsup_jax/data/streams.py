"""Task streams for continual learning: Permuted/Rotated/Split MNIST, Split CIFAR,
Split ImageNet.

Batch order contract (all streams): ``train_batch(task_id, step, B)`` is the
``step % steps_per_epoch``-th batch of epoch ``e = step // steps_per_epoch``
(``steps_per_epoch = train_size(task_id) // B``, the remainder of an epoch is
dropped). The epoch order is a pseudorandom permutation keyed by
``fold_in(fold_in(key(seed), task_id), e)``; it is a pure function of
(seed, task_id, step), so resumed runs see exactly the same batches.
"""
from __future__ import annotations

import abc
import functools
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax.data import byte_gather
from supsup_jax.data import sources
from supsup_jax.data import transforms as T

Array = jax.Array

STREAMS = ("permuted_mnist", "rotated_mnist", "split_mnist", "split_fashion_mnist",
           "split_cifar10", "split_cifar100", "split_imagenet")

MAX_SEED = 2**63 - 1  # what jax.random.key accepts
_AUG_SALT = 0x5EED_A06  # folded into the task key for augmentation randomness


def as_int(name: str, v, lo: int | None = None, hi: int | None = None, where: str = ""):
  """``v`` as a Python int: Python, NumPy or concrete JAX integer scalars.

  Floats, bools, arrays with more than one element and values outside
  ``lo..hi`` (inclusive) raise a one-line ValueError. A traced JAX value (inside
  ``jit``/``vmap``) cannot be checked and is returned unchanged.
  """
  if isinstance(v, jax.core.Tracer):
    return v
  if isinstance(v, (jax.Array, np.ndarray, np.generic)):
    if np.shape(v) != () or not np.issubdtype(np.asarray(v).dtype, np.integer):
      raise ValueError(f"{name} must be an integer scalar{where}, got "
                       f"{np.asarray(v).dtype} array of shape {np.shape(v)}: {v!r}")
    v = int(v)
  elif isinstance(v, bool) or not isinstance(v, int):
    raise ValueError(f"{name} must be an integer{where}, got {v!r} ({type(v).__name__})")
  if (lo is not None and v < lo) or (hi is not None and v > hi):
    allowed = (f"{lo}..{hi}" if lo is not None and hi is not None else
               f">= {lo}" if lo is not None else f"<= {hi}")
    raise ValueError(f"{name} {v} out of range{where}; allowed: {allowed}")
  return v


def check_batch_size(batch_size) -> int:
  return as_int("batch_size", batch_size, lo=1)


class TaskStream(abc.ABC):
  """A sequence of tasks, each with a train and a test split."""

  name: str
  num_tasks: int
  num_classes: int
  input_shape: tuple[int, ...]
  seed: int

  def _check_task(self, task_id):
    """task_id as an int (checked), or unchanged when traced."""
    return as_int("task_id", task_id, 0, self.num_tasks - 1, f" for stream '{self.name}'")

  @abc.abstractmethod
  def train_size(self, task_id: int) -> int: ...

  @abc.abstractmethod
  def train_batch(self, task_id, step, batch_size: int) -> tuple[Array, Array]: ...

  @abc.abstractmethod
  def test_batches(self, task_id: int, batch_size: int) -> Iterator[tuple[Array, Array]]: ...

  def test_arrays(self, task_id) -> tuple[Array, Array]:
    xs, ys = zip(*self.test_batches(task_id, 1024))
    return jnp.concatenate(xs), jnp.concatenate(ys)

  def steps_per_epoch(self, task_id: int, batch_size: int) -> int:
    return max(1, self.train_size(task_id) // check_batch_size(batch_size))

  def __repr__(self):
    return (f"{type(self).__name__}(name={self.name!r}, num_tasks={self.num_tasks}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape}, seed={self.seed})")


class InMemoryStream(TaskStream):
  """Base arrays on device; tasks defined by per-task index arrays and a per-task
  (jittable) transform. ``train_batch_fn(B)`` is pure and jit/vmap friendly."""

  def __init__(self, *, name, data, num_tasks, seed, mean, std,
               task_classes: Sequence[Sequence[int]] | None = None,
               shared_labels: bool = True, augment: bool = False):
    self.name = name
    self.num_tasks = int(num_tasks)
    self.seed = int(seed)
    self.augment = bool(augment)
    self._mean, self._std = mean, std
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    self.input_shape = tuple(int(s) for s in xtr.shape[1:])
    self._total_classes = int(data["num_classes"])
    self._x_train = jnp.asarray(xtr)  # uint8 on device
    self._y_train = jnp.asarray(ytr, jnp.int32)
    self._x_test_np, self._y_test_np = xte, np.asarray(yte, np.int32)
    self.task_classes = None if task_classes is None else [list(map(int, c)) for c in task_classes]
    self.shared_labels = bool(shared_labels)
    if self.task_classes is None:
      self.num_classes = self._total_classes
      self._n_train = np.full((self.num_tasks,), len(ytr), np.int32)
      self._idx_train = None
      self._test_idx = [np.arange(len(yte))] * self.num_tasks
      self._label_map = None
    else:
      ncls = {len(c) for c in self.task_classes}
      self.num_classes = self._total_classes if self.shared_labels else max(ncls)
      idx = [np.flatnonzero(np.isin(ytr, c)) for c in self.task_classes]
      self._n_train = np.array([len(i) for i in idx], np.int32)
      pad = max(1, int(self._n_train.max()))
      table = np.zeros((self.num_tasks, pad), np.int32)
      for t, i in enumerate(idx):
        table[t, :len(i)] = i
      self._idx_train = jnp.asarray(table)
      self._test_idx = [np.flatnonzero(np.isin(yte, c)) for c in self.task_classes]
      lm = np.tile(np.arange(self._total_classes, dtype=np.int32), (self.num_tasks, 1))
      if not self.shared_labels:
        for t, c in enumerate(self.task_classes):
          for j, k in enumerate(c):
            lm[t, k] = j
      self._label_map = jnp.asarray(lm)
    self._n_train_dev = jnp.asarray(self._n_train)

  # -- per-task transform (override) -------------------------------------------
  def _transform(self, task_id, x_float):
    """x: float32 [B, H, W, C] in [0, 1]-scaled-by-255 units (raw pixel values)."""
    return x_float

  def train_size(self, task_id: int) -> int:
    return int(self._n_train[self._check_task(task_id)])

  def _take_images(self, x_uint8, task_id, idx):
    """``(x_uint8[idx], transformed)``: the batch's images, and whether the
    task's transform is already applied (a transform that only moves pixels
    can ride on this gather; see :class:`PermutedStream`)."""
    del task_id
    return x_uint8[idx], False

  def _finish(self, task_id, x_uint8, y, aug_key=None, label_map=None,
              transformed: bool = False):
    x = x_uint8.astype(jnp.float32)
    if not transformed:
      x = self._transform(task_id, x)
    if aug_key is not None:
      x = T.random_crop_flip(aug_key, x)
    x = T.normalize(x, self._mean, self._std)
    if label_map is None:
      label_map = self._label_map
    if label_map is not None:
      y = label_map[task_id, y]
    return x, y.astype(jnp.int32)

  @property
  def device_arrays(self) -> dict[str, Array]:
    """The device arrays the batch function reads (pass to ``train_batch_fn_args``)."""
    d = {"x": self._x_train, "y": self._y_train, "n": self._n_train_dev}
    if self._idx_train is not None:
      d["idx"] = self._idx_train
    if self._label_map is not None:
      d["label_map"] = self._label_map
    return d

  def train_batch_fn_args(self, batch_size: int):
    """Pure ``fn(arrays, task_id, step)`` plus ``arrays`` (= ``device_arrays``).

    Preferred inside a trainer's jit: passing the arrays as arguments keeps them
    out of the compiled program (closing over 50-150 MB of constants costs seconds
    of compile time and a second copy of the data).
    """
    B = check_batch_size(batch_size)
    seed = self.seed
    augment = self.augment

    def fn(arrs, task_id, step):
      task_id = jnp.asarray(task_id, jnp.int32)
      step = jnp.asarray(step, jnp.int32)
      n = arrs["n"][task_id]
      spe = jnp.maximum(n // B, 1)
      epoch, pos = step // spe, step % spe
      tkey = jax.random.fold_in(jax.random.key(seed), task_id)
      ekey = jax.random.fold_in(tkey, epoch)
      p = pos * B + jnp.arange(B, dtype=jnp.int32)
      p = jnp.mod(p, jnp.maximum(n, 1))  # only matters if n < B
      local = T.shuffled_index(ekey, p, n)
      gidx = arrs["idx"][task_id, local] if "idx" in arrs else local
      xb, transformed = self._take_images(arrs["x"], task_id, gidx)
      yb = arrs["y"][gidx]
      akey = (jax.random.fold_in(jax.random.fold_in(tkey, _AUG_SALT), step)
              if augment else None)
      return self._finish(task_id, xb, yb, akey, arrs.get("label_map"), transformed)

    return fn, self.device_arrays

  def train_batch_fn(self, batch_size: int) -> Callable[[Any, Any], tuple[Array, Array]]:
    """Pure ``(task_id, step) -> (images, labels)`` closing over device arrays.

    Safe to ``jax.jit`` and to ``jax.vmap`` over ``task_id`` (and ``step``).
    Traced task ids are not range-checked (clamped by JAX indexing). Note: under
    ``jit`` the closed-over arrays become constants of the program (slow compile);
    ``train_batch_fn_args`` avoids that.
    """
    fn, arrs = self.train_batch_fn_args(batch_size)
    return lambda task_id, step: fn(arrs, task_id, step)

  @functools.cached_property
  def _jitted_fns(self):
    return {}

  def train_batch(self, task_id, step, batch_size: int):
    task_id = self._check_task(task_id)
    step = as_int("step", step, lo=0)
    batch_size = check_batch_size(batch_size)
    f = self._jitted_fns.get(batch_size)
    if f is None:
      fn, _ = self.train_batch_fn_args(batch_size)
      f = self._jitted_fns[batch_size] = jax.jit(fn)
    return f(self.device_arrays, task_id, step)

  @functools.cached_property
  def _jit_finish(self):
    return jax.jit(lambda t, x, y, lm: self._finish(t, x, y, None, lm))

  def test_batches(self, task_id: int, batch_size: int):
    # Checked now, not at the first next(): a generator would defer the error.
    task_id = self._check_task(task_id)
    batch_size = check_batch_size(batch_size)
    return self._test_batches(task_id, batch_size)

  def _test_batches(self, task_id: int, batch_size: int):
    idx = self._test_idx[int(task_id)]
    for s in range(0, len(idx), batch_size):
      j = idx[s:s + batch_size]
      yield self._jit_finish(int(task_id), jnp.asarray(self._x_test_np[j]),
                             jnp.asarray(self._y_test_np[j]), self._label_map)

  def test_arrays(self, task_id):
    task_id = self._check_task(task_id)
    idx = self._test_idx[task_id]
    return self._jit_finish(int(task_id), jnp.asarray(self._x_test_np[idx]),
                            jnp.asarray(self._y_test_np[idx]), self._label_map)

  def test_size(self, task_id: int) -> int:
    return int(len(self._test_idx[self._check_task(task_id)]))


class PermutedStream(InMemoryStream):
  """Task t: pixels permuted by ``jax.random.permutation(fold_in(key(seed), t), H*W*C)``
  (the same key as the task's data order key, different purpose: computed once per
  call, never stored). Nothing per-task is stored, so thousands of tasks are free."""

  _PERM_SALT = 0x9E12

  def pixel_permutation(self, task_id):
    """int32 [H*W*C] permutation of task ``task_id`` (may be traced, then unchecked)."""
    task_id = self._check_task(task_id)
    d = int(np.prod(self.input_shape))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), self._PERM_SALT),
                             jnp.asarray(task_id, jnp.int32))
    return jax.random.permutation(key, d)

  def _transform(self, task_id, x):
    b = x.shape[0]
    flat = x.reshape(b, -1)
    return flat[:, self.pixel_permutation(task_id)].reshape(x.shape)

  def _take_images(self, x_uint8, task_id, idx):
    # One gather of (image, permuted pixel) bytes instead of a row gather and
    # then a pixel gather of floats: the same values, ~2x less batch time on
    # a CPU (docs/guide/benchmarks.md). Indices are in range by construction
    # (idx < n, the permutation < H*W*C), so the gather skips its clamping.
    d = int(np.prod(x_uint8.shape[1:]))
    if byte_gather.available():  # the same bytes, 2-4x faster than XLA's gather
      pixels = byte_gather.gather(x_uint8.reshape(-1, d), idx, self.pixel_permutation(task_id))
      return pixels.reshape((idx.shape[0], *x_uint8.shape[1:])), True
    if x_uint8.size >= 2**31:  # flat int32 offsets would overflow
      return super()._take_images(x_uint8, task_id, idx)
    offsets = idx[:, None] * d + self.pixel_permutation(task_id)[None, :]
    pixels = x_uint8.reshape(-1).at[offsets].get(mode="promise_in_bounds")
    return pixels.reshape((idx.shape[0], *x_uint8.shape[1:])), True


class RotatedStream(InMemoryStream):
  """Task t: images rotated counter-clockwise by ``t * rotation_step_deg``
  (90 deg == np.rot90 with k=1 on the H, W axes)."""

  def __init__(self, *, rotation_step_deg: float = 10.0, **kw):
    super().__init__(**kw)
    self.rotation_step_deg = float(rotation_step_deg)

  def angle(self, task_id):
    task_id = self._check_task(task_id)
    return jnp.asarray(task_id, jnp.float32) * self.rotation_step_deg

  def _transform(self, task_id, x):
    return T.rotate(x, self.angle(task_id))


class TFDSTaskStream(TaskStream):
  """Split ImageNet-style stream read with tf.data (NOT jittable, host iterator).

  ``train_batch(task, step, B)`` keeps one iterator per (task, B); when the
  requested step is not the next one (e.g. on resume) it rebuilds the pipeline for
  the step's epoch and skips to the step. The epoch order is a tf.data shuffle
  (buffer ``shuffle_buffer``) whose seed is drawn from
  ``fold_in(fold_in(key(seed), task), epoch)``; with a buffer at least the task
  size it is a uniform shuffle. Files are read in a fixed order.
  """

  def __init__(self, *, name, builder, task_classes, seed, num_classes_total,
               shared_labels=False, image_size=224, augment=True,
               shuffle_buffer=16384, mean=T.NORM["imagenet2012"][0],
               std=T.NORM["imagenet2012"][1]):
    self.name = name
    self.seed = int(seed)
    self._builder = builder
    self.task_classes = [list(map(int, c)) for c in task_classes]
    self.num_tasks = len(self.task_classes)
    self.shared_labels = bool(shared_labels)
    self._total = int(num_classes_total)
    self.num_classes = self._total if shared_labels else len(self.task_classes[0])
    self.input_shape = (int(image_size), int(image_size), 3)
    self.augment = augment
    self.shuffle_buffer = int(shuffle_buffer)
    self._mean = np.asarray(mean, np.float32)
    self._std = np.asarray(std, np.float32)
    self._iters: dict[tuple[int, int], list] = {}
    self._sizes: dict[str, np.ndarray] = {}

  def _class_counts(self, split):
    if split not in self._sizes:
      tfds = sources.import_tfds()
      ds = self._builder.as_dataset(split=split, shuffle_files=False,
                                    decoders={"image": tfds.decode.SkipDecoding()})
      counts = np.zeros(self._total, np.int64)
      for lab in tfds.as_numpy(ds.map(lambda e: e["label"]).batch(4096)):
        counts += np.bincount(lab, minlength=self._total)[:self._total]
      self._sizes[split] = counts
    return self._sizes[split]

  def train_size(self, task_id):
    return int(self._class_counts("train")[self.task_classes[self._check_task(task_id)]].sum())

  def _dataset(self, task_id, split, train, epoch=0):
    tf = sources.import_tf()
    tfds = sources.import_tfds()
    classes = self.task_classes[task_id]
    table = np.arange(self._total, dtype=np.int64)
    if not self.shared_labels:
      for j, c in enumerate(classes):
        table[c] = j
    cls = tf.constant(classes, tf.int64)
    table = tf.constant(table)
    ds = self._builder.as_dataset(split=split, shuffle_files=False,
                                  decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.filter(lambda e: tf.reduce_any(tf.equal(tf.cast(e["label"], tf.int64), cls)))
    size = self.input_shape[0]
    if train:
      k = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), task_id), epoch)
      s = np.asarray(jax.random.key_data(k)).astype(np.uint32)
      seed_pair = int(s.ravel()[0]), int(s.ravel()[-1])
      ds = ds.shuffle(self.shuffle_buffer, seed=seed_pair[0], reshuffle_each_iteration=False)
      ds = ds.enumerate()

      def prep(i, e):
        img = tf.io.decode_image(e["image"], channels=3, expand_animations=False)
        img = self._resize(tf, img, size)
        if self.augment:
          sd = tf.stack([tf.cast(seed_pair[1] % (2**31), tf.int64), i])
          img = tf.image.stateless_random_flip_left_right(img, seed=sd)
        return img, tf.gather(table, tf.cast(e["label"], tf.int64))
    else:
      def prep(e):
        img = tf.io.decode_image(e["image"], channels=3, expand_animations=False)
        return self._resize(tf, img, size), tf.gather(table, tf.cast(e["label"], tf.int64))
    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  @staticmethod
  def _resize(tf, img, size):
    # Resize the shorter side to size*256/224, centre crop to size x size.
    short = int(round(size * 256 / 224))
    h = tf.cast(tf.shape(img)[0], tf.float32)
    w = tf.cast(tf.shape(img)[1], tf.float32)
    scale = short / tf.minimum(h, w)
    nh = tf.cast(tf.round(h * scale), tf.int32)
    nw = tf.cast(tf.round(w * scale), tf.int32)
    img = tf.image.resize(img, (nh, nw), antialias=True)
    img = tf.image.resize_with_crop_or_pad(img, size, size)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

  def _to_jax(self, x, y):
    return T.normalize(x, self._mean, self._std), jnp.asarray(np.asarray(y, np.int32))

  def train_batch(self, task_id, step, batch_size: int):
    task_id = self._check_task(task_id)
    if isinstance(task_id, jax.core.Tracer):
      raise ValueError(f"stream '{self.name}' is a tf.data pipeline: task_id must be "
                       "concrete (not traced under jit/vmap)")
    step, B = as_int("step", step, lo=0), check_batch_size(batch_size)
    spe = self.steps_per_epoch(task_id, B)
    epoch, pos = divmod(step, spe)
    st = self._iters.get((task_id, B))
    if st is None or st[0] != epoch or st[1] != pos:
      tfds = sources.import_tfds()
      ds = self._dataset(task_id, "train", True, epoch).batch(B, drop_remainder=True)
      it = iter(tfds.as_numpy(ds.skip(pos)))
      st = [epoch, pos, it]
      self._iters[(task_id, B)] = st
    x, y = next(st[2])
    st[1] += 1
    if st[1] >= spe:
      del self._iters[(task_id, B)]
    return self._to_jax(x, y)

  def test_batches(self, task_id: int, batch_size: int):
    task_id = self._check_task(task_id)
    batch_size = check_batch_size(batch_size)
    return self._test_batches(task_id, batch_size)

  def _test_batches(self, task_id: int, batch_size: int):
    tfds = sources.import_tfds()
    split = "validation" if "validation" in self._builder.info.splits else "test"
    ds = self._dataset(int(task_id), split, False).batch(batch_size)
    for x, y in tfds.as_numpy(ds):
      yield self._to_jax(x, y)


def _class_order(n, seed):
  return [int(c) for c in np.asarray(jax.random.permutation(jax.random.key(seed), n))]


# NumPy's legacy generator takes seeds below 2**32.
_LEGACY_SEED_MAX = 2**32 - 1


def supsup_cifar100_order(seed: int) -> list[int]:
  """The class order of the SupSup authors' SplitCIFAR100: task t is
  ``order[5t:5t+5]``, labelled 0..4 in that order.

  Source: Wortsman et al., "Supermasks in Superposition" (NeurIPS 2020), code
  github.com/RAIVNLab/supsup. All six GG SplitCIFAR100 configs
  (``experiments/GG/splitcifar100/configs/rn18-*.yaml``) use ``set:
  RandSplitCIFAR100`` (data/partitioncifar.py), which seeds NumPy's global
  legacy generator with the run's seed, draws one permutation of the 100 fine
  labels, and gives task t the classes at positions 5t..5t+4, each relabelled
  by its position there (so neither consecutive fine labels nor sorted). Their
  scripts run seeds 0..4 (``range(--seeds)``; the README: five seeds for the
  reported SplitCIFAR100 numbers), each seed with its own split. The paper
  says SplitCIFAR100 "follows Wen et al." (BatchEnsemble, ICLR 2020: 20 tasks
  of 5 classes); Wen et al.'s lifelong-learning code is not in the stored
  google/edward2 or google/uncertainty-baselines snapshots, so this is the
  SupSup authors' realisation of that split. ``RandomState(seed)`` draws the
  same numbers as the global generator after ``np.random.seed(seed)``, and
  NumPy keeps the legacy stream fixed across versions.
  """
  seed = as_int("class_order_seed", seed, 0, _LEGACY_SEED_MAX,
                " for split_cifar100 (the authors' split seeds NumPy's legacy generator; "
                "default: the stream's seed)")
  return [int(c) for c in np.random.RandomState(seed).permutation(100)]


def _chunks(order, size, num_tasks):
  return [order[i * size:(i + 1) * size] for i in range(num_tasks)]


def _classes_per_task(opts: dict, default: int, total: int, name: str) -> int:
  """The option ``classes_per_task`` (default: the stream's own), at most ``total``."""
  per = opts.get("classes_per_task", default)
  if per > total:
    raise ValueError(f"classes_per_task={per} exceeds the {total} classes of {name!r}; "
                     f"allowed: 1..{total}")
  return per


def _check_num_tasks(name, num_tasks, default, maximum=None):
  if num_tasks is None:
    return default
  if isinstance(num_tasks, (jax.Array, np.ndarray)) and np.shape(num_tasks) == () and \
      np.issubdtype(np.asarray(num_tasks).dtype, np.integer):
    num_tasks = int(num_tasks)
  if not isinstance(num_tasks, (int, np.integer)) or isinstance(num_tasks, bool) or num_tasks < 1 \
      or (maximum is not None and num_tasks > maximum):
    allowed = f"1..{maximum}" if maximum is not None else ">= 1"
    raise ValueError(f"num_tasks={num_tasks!r} invalid for stream '{name}'; allowed: {allowed}")
  return int(num_tasks)


def _check_options(opts: dict) -> None:
  """One-line errors for bad option values, before any data is loaded."""
  if "rotation_step_deg" in opts:
    v = opts["rotation_step_deg"]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
      raise ValueError(f"rotation_step_deg must be a finite number of degrees, got {v!r}")
  for name, lo in (("image_size", 1), ("shuffle_buffer", 1), ("classes_per_task", 1)):
    if name in opts:
      opts[name] = as_int(name, opts[name], lo=lo)
  if opts.get("class_order_seed") is not None:
    opts["class_order_seed"] = as_int("class_order_seed", opts["class_order_seed"], 0, MAX_SEED)
  for name in ("mean", "std"):
    if name in opts:
      try:
        v = np.asarray(opts[name], np.float64)
      except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a tuple of numbers, got "
                         f"{opts[name]!r}") from None
      if v.ndim > 1 or not np.isfinite(v).all() or (name == "std" and (v <= 0).any()):
        raise ValueError(f"{name} must be finite{' and > 0' if name == 'std' else ''} "
                         f"(one value or one per channel), got {opts[name]!r}")


def make_stream(name: str, *, num_tasks: int | None = None, seed: int = 0,
                data_dir: str | None = None, download: bool = False, **options) -> TaskStream:
  """Builds a task stream.

  Args:
    name: one of ``STREAMS``.
    num_tasks: default 10 (permuted), 36 (rotated), 5 (split MNIST/Fashion/CIFAR-10),
      20 (split CIFAR-100), 100 (split ImageNet); split streams allow fewer.
    seed: drives batch order, permutations and (CIFAR-100) the class split
      (the SupSup authors' split of that seed, :func:`supsup_cifar100_order`).
    data_dir: folder like ``shared/data``; ``None`` -> env ``SUPSUP_DATA_DIR``; if
      neither, tfds defaults (online download).
    download: also allow a tfds download when ``data_dir`` lacks the files.
    **options: ``rotation_step_deg`` (10.), ``shared_labels`` (False),
      ``augment`` (False; CIFAR train random crop 4px + flip; ImageNet flip),
      ``class_order`` (explicit class order for split streams),
      ``class_order_seed`` (CIFAR-100 default: ``seed``, 0..2**32-1; ImageNet
      default: 0),
      ``image_size`` (ImageNet, 224), ``shuffle_buffer`` (ImageNet, 16384),
      ``classes_per_task`` (split streams: 2 for MNIST/Fashion/CIFAR-10, 5
      for CIFAR-100, 10 for ImageNet; e.g. 10 with ``num_tasks=1`` makes
      ``split_cifar10`` the whole 10-way CIFAR-10 as one task).
  """
  if name not in STREAMS:
    raise ValueError(f"Unknown stream '{name}'; allowed: {', '.join(STREAMS)}")
  seed = as_int("seed", seed, 0, MAX_SEED)
  opts = dict(options)
  allowed_opts = {"rotation_step_deg", "shared_labels", "augment", "class_order",
                  "class_order_seed", "image_size", "shuffle_buffer", "mean", "std",
                  "classes_per_task"}
  bad = sorted(set(opts) - allowed_opts)
  if bad:
    raise ValueError(f"Unknown option(s) {', '.join(bad)} for make_stream; allowed: "
                     f"{', '.join(sorted(allowed_opts))}")
  shared = bool(opts.get("shared_labels", False))
  augment = bool(opts.get("augment", False))
  _check_options(opts)
  if "classes_per_task" in opts and not name.startswith("split_"):
    raise ValueError(f"classes_per_task applies to the split streams, not {name!r}")
  _check_num_tasks(name, num_tasks, 1)  # type and >= 1 now; the maximum after loading
  if name == "split_cifar100" and opts.get("class_order") is None:
    supsup_cifar100_order(opts.get("class_order_seed", seed))  # its seed range, before loading

  if name in ("permuted_mnist", "rotated_mnist"):
    data = sources.load_dataset("mnist", data_dir, download)
    mean, std = opts.get("mean", T.NORM["mnist"][0]), opts.get("std", T.NORM["mnist"][1])
    if name == "permuted_mnist":
      n = _check_num_tasks(name, num_tasks, 10)
      return PermutedStream(name=name, data=data, num_tasks=n, seed=seed, mean=mean, std=std)
    n = _check_num_tasks(name, num_tasks, 36)
    return RotatedStream(name=name, data=data, num_tasks=n, seed=seed, mean=mean, std=std,
                         rotation_step_deg=float(opts.get("rotation_step_deg", 10.0)))

  if name == "split_imagenet":
    builder = sources.resolve_builder("imagenet2012", data_dir, download)
    total = int(builder.info.features["label"].num_classes)
    order = opts.get("class_order") or _class_order(total, opts.get("class_order_seed", 0))
    per = _classes_per_task(opts, 10, len(order), name)
    n = _check_num_tasks(name, num_tasks, len(order) // per, len(order) // per)
    return TFDSTaskStream(name=name, builder=builder, task_classes=_chunks(order, per, n),
                          seed=seed, num_classes_total=total, shared_labels=shared,
                          image_size=int(opts.get("image_size", 224)), augment=augment,
                          shuffle_buffer=int(opts.get("shuffle_buffer", 16384)))

  base, per = {"split_mnist": ("mnist", 2), "split_fashion_mnist": ("fashion_mnist", 2),
               "split_cifar10": ("cifar10", 2), "split_cifar100": ("cifar100", 5)}[name]
  data = sources.load_dataset(base, data_dir, download)
  total = int(data["num_classes"])
  if opts.get("class_order") is not None:
    order = [int(c) for c in opts["class_order"]]
    if sorted(order) != list(range(len(order))) or len(order) != total:
      raise ValueError(f"class_order must be a permutation of 0..{total - 1}")
  elif base == "cifar100":
    if total != 100:
      raise ValueError(f"split_cifar100 needs the 100 CIFAR-100 classes, the data has {total}")
    order = supsup_cifar100_order(opts.get("class_order_seed", seed))
  else:
    order = list(range(total))
  per = _classes_per_task(opts, per, total, name)
  n = _check_num_tasks(name, num_tasks, total // per, total // per)
  mean, std = opts.get("mean", T.NORM[base][0]), opts.get("std", T.NORM[base][1])
  return InMemoryStream(name=name, data=data, num_tasks=n, seed=seed, mean=mean, std=std,
                        task_classes=_chunks(order, per, n), shared_labels=shared,
                        augment=augment and base.startswith("cifar"))


def measure_throughput(stream: TaskStream, batch_size: int = 128, num_batches: int = 500,
                       task_id: int = 0, warmup: int = 5) -> float:
  """Batches per second of ``stream.train_batch`` (host loop, one jitted call per
  batch, blocking on the last result), after ``warmup`` compile/warm-up batches."""
  out = None
  for s in range(warmup):
    out = stream.train_batch(task_id, s, batch_size)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for s in range(num_batches):
    out = stream.train_batch(task_id, warmup + s, batch_size)
  jax.block_until_ready(out)
  return num_batches / (time.perf_counter() - t0)
