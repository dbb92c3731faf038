"""Nothing wrong passes silently: data provenance, task ids, the workdir lock,
checkpoint fallback, the launcher's one-line errors and bad library input."""
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import data as D
from supsup_jax import masks as M
from supsup_jax import models
from supsup_jax import tree as T
from supsup_jax import weights as W
from supsup_jax import workdir as workdir_lib
from supsup_jax.data import sources

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SUPSUP_DATA_DIR", str(REPO.parent / "shared" / "data")))
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
HAVE_BOTH = all((DATA_DIR / d / f).exists() for d in ("mnist", "fashion_mnist")
                for f in MNIST_FILES)
needs_data = pytest.mark.skipif(not HAVE_BOTH, reason=f"no MNIST/Fashion-MNIST under {DATA_DIR}")


def _one_line(text: str) -> str:
  lines = [l for l in text.strip().splitlines() if l.strip()]
  assert len(lines) == 1, text
  return lines[0]


# ------------------------------------------------------------ data provenance
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Temp TFDS_DATA_DIR and cache dir holding MNIST prepared once for the module.

  A copy of an MNIST already prepared in the default tfds dir is reused when
  there is one (without its source record, so adopting it is tested);
  otherwise MNIST is prepared here (20-40 s).
  """
  root = tmp_path_factory.mktemp("provenance")
  env = {"TFDS_DATA_DIR": str(root / "tfds"), "SUPSUP_CACHE_DIR": str(root / "cache")}
  default = Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
  have = sorted(glob.glob(str(default / "mnist" / "*" / "dataset_info.json")))
  if have:
    src = Path(have[-1]).parent
    shutil.copytree(src, root / "tfds" / "mnist" / src.name,
                    ignore=shutil.ignore_patterns(sources._SOURCES_RECORD))
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield root
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    D.clear_cache()


def _mnist_copy(path: Path) -> Path:
  (path / "mnist").mkdir(parents=True)
  for f in MNIST_FILES:
    shutil.copyfile(DATA_DIR / "mnist" / f, path / "mnist" / f)
  return path


@needs_data
def test_prepared_data_records_its_sources(prepared, tmp_path):
  data = _mnist_copy(tmp_path / "data")
  D.clear_cache()
  first = D.load_dataset("mnist", str(data))
  record, = glob.glob(str(prepared / "tfds" / "mnist" / "*" / sources._SOURCES_RECORD))
  want = {f: hashlib.sha256((data / "mnist" / f).read_bytes()).hexdigest() for f in MNIST_FILES}
  assert json.loads(Path(record).read_text())["sha256"] == want
  D.clear_cache()
  again = D.load_dataset("mnist", str(data))  # from the .npz cache keyed by content
  np.testing.assert_array_equal(first["test"][1], again["test"][1])
  assert np.bincount(again["test"][1]).tolist()[:2] == [980, 1135]


@needs_data
def test_fashion_files_under_mnist_detected_on_second_load(prepared, tmp_path):
  data = _mnist_copy(tmp_path / "data")
  D.clear_cache()
  D.load_dataset("mnist", str(data))
  for f in MNIST_FILES:
    shutil.copyfile(DATA_DIR / "fashion_mnist" / f, data / "mnist" / f)
  # Same process, no clear_cache: the in-process cache is keyed by content too.
  with pytest.raises(D.DataChecksumError) as e:
    D.load_dataset("mnist", str(data))
  msg = _one_line(str(e.value))
  assert str(data / "mnist") in msg and "idx" in msg and "original download" in msg


@needs_data
def test_corrupt_file_on_second_run_is_checksum_error(prepared, tmp_path):
  data = _mnist_copy(tmp_path / "data")
  D.clear_cache()
  D.load_dataset("mnist", str(data))
  p = data / "mnist" / "t10k-labels-idx1-ubyte.gz"
  p.write_bytes(p.read_bytes()[:-10])
  D.clear_cache()
  with pytest.raises(D.DataChecksumError, match="t10k-labels-idx1-ubyte.gz"):
    D.load_dataset("mnist", str(data))


def test_file_digest_follows_content(tmp_path, monkeypatch):
  monkeypatch.setenv("SUPSUP_CACHE_DIR", str(tmp_path / "cache"))
  p = tmp_path / "f.bin"
  p.write_bytes(b"abc")
  assert sources.file_digest(p) == hashlib.sha256(b"abc").hexdigest()
  assert sources.file_digest(p) == hashlib.sha256(b"abc").hexdigest()  # memoised
  st = p.stat()
  p.write_bytes(b"abd")  # same size; mtime even set back: ctime still changes
  os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert sources.file_digest(p) == hashlib.sha256(b"abd").hexdigest()


def test_image_folder_cache_follows_the_images(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root = tmp_path / "imgs"

  def write(value):
    for split in ("train", "test"):
      for c in ("a", "b"):
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(2):
          Image.fromarray(np.full((4, 4, 3), value + i, np.uint8)).save(
              root / split / c / f"{i}.png")

  write(10)
  first = D.load_image_folder(root)
  assert (tmp_path / "imgs.arrays.npz").exists()
  write(200)  # same names and sizes, new content
  second = D.load_image_folder(root)
  assert first["train"][0].min() < 20 and second["train"][0].min() >= 200


# ------------------------------------------------------------ task ids
@pytest.fixture(scope="module")
def stream():
  rng = np.random.default_rng(0)
  data = {"train": (rng.integers(0, 256, (64, 4, 4, 1), np.uint8), rng.integers(0, 10, 64)),
          "test": (rng.integers(0, 256, (16, 4, 4, 1), np.uint8), rng.integers(0, 10, 16)),
          "num_classes": 10}
  return D.PermutedStream(name="toy", data=data, num_tasks=3, seed=0, mean=0.5, std=0.25)


def test_numpy_and_jax_task_ids_equal_python_ones(stream):
  x, y = stream.train_batch(2, 1, 8)
  for t in (np.int64(2), np.int32(2), jnp.int32(2), np.array(2)):
    xt, yt = stream.train_batch(t, jnp.int32(1), np.int64(8))
    np.testing.assert_array_equal(np.asarray(xt), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(stream.pixel_permutation(t)),
                                  np.asarray(stream.pixel_permutation(2)))


@pytest.mark.parametrize("call, pattern", [
    (lambda s: s.train_batch(3, 0, 8), r"task_id 3 out of range for stream 'toy'; allowed: 0\.\.2"),
    (lambda s: s.train_batch(jnp.int32(3), 0, 8), r"task_id 3 out of range"),
    (lambda s: s.train_batch(np.int64(-1), 0, 8), r"task_id -1 out of range"),
    (lambda s: s.train_batch(1.0, 0, 8), r"task_id must be an integer .*got 1\.0 \(float\)"),
    (lambda s: s.train_batch(jnp.float32(1), 0, 8), r"task_id must be an integer scalar.*float32"),
    (lambda s: s.train_batch(True, 0, 8), r"task_id must be an integer .*True"),
    (lambda s: s.train_batch(jnp.arange(2), 0, 8), r"task_id must be an integer scalar.*shape \(2,\)"),
    (lambda s: s.pixel_permutation(3), r"task_id 3 out of range"),
    (lambda s: s.pixel_permutation(jnp.int32(-1)), r"task_id -1 out of range"),
    (lambda s: s.test_batches(5, 4), r"task_id 5 out of range"),
    (lambda s: s.test_arrays(0.5), r"task_id must be an integer"),
    (lambda s: s.train_size(jnp.int32(9)), r"task_id 9 out of range"),
    (lambda s: s.train_batch(0, -1, 8), r"step -1 out of range; allowed: >= 0"),
    (lambda s: s.train_batch(0, 1.5, 8), r"step must be an integer, got 1\.5"),
    (lambda s: s.train_batch(0, 0, 0), r"batch_size 0 out of range; allowed: >= 1"),
    (lambda s: s.train_batch(0, 0, -4), r"batch_size -4 out of range"),
    (lambda s: s.test_batches(0, 0), r"batch_size 0 out of range"),
    (lambda s: s.train_batch_fn_args(0), r"batch_size 0 out of range"),
    (lambda s: s.steps_per_epoch(0, 0), r"batch_size 0 out of range"),
])
def test_bad_task_id_step_batch_size(stream, call, pattern):
  with pytest.raises(ValueError, match=pattern) as e:
    call(stream)
  _one_line(str(e.value))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(seed=1.5), r"seed must be an integer, got 1\.5"),
    (dict(seed=-1), r"seed -1 out of range"),
    (dict(num_tasks=0), r"num_tasks=0 invalid"),
    (dict(rotation_step_deg=float("nan")), r"rotation_step_deg must be a finite number"),
    (dict(std=0.0), r"std must be finite and > 0"),
    (dict(mean="x"), r"mean must be"),
    (dict(image_size=0), r"image_size 0 out of range"),
    (dict(class_order_seed=2.0), r"class_order_seed must be an integer"),
])
def test_bad_stream_options(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    D.make_stream("rotated_mnist", data_dir="/nonexistent", **kwargs)


# ------------------------------------------------------------ workdir lock
_HOLD = textwrap.dedent("""
    import sys, time
    from supsup_jax import workdir
    with workdir.lock(sys.argv[1]):
      print("locked", flush=True)
      time.sleep(120)
""")


def test_second_process_on_a_workdir_is_refused(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    refused = subprocess.run(
        [sys.executable, "-c", "import sys; from supsup_jax import workdir as w; "
         "w.acquire(sys.argv[1])", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode != 0
    msg = refused.stderr.strip().splitlines()[-1]
    assert f"pid {holder.pid} on host {socket.gethostname()}" in msg
    assert str(tmp_path / ".lock") in msg
    with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {holder.pid}"):
      workdir_lib.acquire(tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The killed holder left its lock file: stale, taken over.
  assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
  with workdir_lib.lock(tmp_path) as lock_path:
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  assert not (tmp_path / ".lock").exists()


def test_lock_released_on_exception_and_not_nested(tmp_path):
  with pytest.raises(RuntimeError, match="boom"):
    with workdir_lib.lock(tmp_path):
      with pytest.raises(workdir_lib.WorkdirLockedError, match="already locked by this process"):
        workdir_lib.acquire(tmp_path)
      raise RuntimeError("boom")
  assert not (tmp_path / ".lock").exists()
  with workdir_lib.lock(tmp_path):
    pass


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "f"
  f.write_text("")
  with pytest.raises(NotADirectoryError, match="is a file"):
    workdir_lib.acquire(f)


# ------------------------------------------------------------ checkpoints
def _state(step):
  rng = np.random.default_rng(step)
  return {"w": rng.normal(size=(300,)).astype(np.float32),
          "bank": {"bits": rng.integers(0, 255, (40,), np.uint8)}}


def _two_steps(workdir):
  c = ckpt_lib.RunCheckpointer(str(workdir), {"seed": 0})
  for step in (1, 2):
    c.save(step, _state(step), {"next_task": step})
  c.close()
  return workdir / "checkpoints"


def _biggest_data_file(step_dir):
  files = [p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  p = _biggest_data_file(step_dir)
  p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  return p


def _flip(step_dir):
  p = _biggest_data_file(step_dir)
  b = bytearray(p.read_bytes())
  b[len(b) // 2] ^= 0x01
  p.write_bytes(bytes(b))
  return p


def _break_meta(step_dir):
  p = step_dir / "meta" / "metadata"
  p.write_text("{not json")
  return p


@pytest.mark.parametrize("damage", [_truncate, _flip, _break_meta])
def test_damaged_latest_checkpoint_falls_back(tmp_path, caplog, damage):
  ckdir = _two_steps(tmp_path)
  bad_file = damage(ckdir / "2")
  c = ckpt_lib.RunCheckpointer(str(tmp_path), {"seed": 0})
  with caplog.at_level(logging.WARNING, logger="supsup_jax.checkpoint"):
    state, meta = c.restore()
  assert meta["next_task"] == 1
  np.testing.assert_array_equal(np.asarray(state["w"]), _state(1)["w"])
  line = _one_line(caplog.text)
  assert "step 2" in line and str(bad_file) in line
  # The damaged step is moved aside, so the run can save step 2 again.
  assert not (ckdir / "2").exists() and list((tmp_path / "checkpoints_damaged").iterdir())
  c.save(2, _state(2), {"next_task": 2})
  assert c.restore()[1]["next_task"] == 2
  c.close()


def test_no_readable_checkpoint_is_one_line_error_with_fix(tmp_path):
  ckdir = _two_steps(tmp_path)
  _flip(ckdir / "2")
  _break_meta(ckdir / "1")
  c = ckpt_lib.RunCheckpointer(str(tmp_path), {"seed": 0})
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    c.restore()
  c.close()
  msg = _one_line(str(e.value))
  assert "step 2" in msg and "step 1" in msg and f"delete {ckdir} to start over" in msg
  assert (ckdir / "2").exists()  # nothing moved when nothing can be restored


def test_half_written_step_is_gone_when_the_checkpointer_is_built(tmp_path):
  # A killed save leaves orbax's tmp folder; it is removed before the
  # checkpointer is handed out (not by a thread still running at exit).
  _two_steps(tmp_path)
  half = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
  half.mkdir()
  (half / "partial").write_text("x")
  c = ckpt_lib.RunCheckpointer(str(tmp_path), {"seed": 0})
  try:
    assert not half.exists()
    assert c.restore()[1]["next_task"] == 2
  finally:
    c.close()


def test_corrupt_checkpoint_in_a_fresh_process_prints_no_traceback(tmp_path):
  ckdir = _two_steps(tmp_path)
  for step in ("1", "2"):
    _truncate(ckdir / step)
  code = ("import sys; from supsup_jax import checkpoint as c\n"
          "r = c.RunCheckpointer(sys.argv[1], {'seed': 0})\n"
          "try:\n  r.restore()\nexcept c.CheckpointError as e:\n  print('error:', e)\n"
          "finally:\n  r.close()\n")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert "error: no readable checkpoint" in out.stdout
  assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr


# ------------------------------------------------------------ launcher
_FAKE_RUNNERS = textwrap.dedent("""
    def nan_run(config, workdir):
      raise FloatingPointError("non-finite loss at task 2 step 140; resume point: task 2")
    def nan_results(config, workdir):
      return {"experiment": "fake", "avg_accuracy": float("nan"), "num_tasks": 1}
    def interrupted(config, workdir):
      raise KeyboardInterrupt
    def multi_line(config, workdir):
      raise ValueError("first part\\nsecond part")
    def ok(config, workdir):
      return {"experiment": "fake", "avg_accuracy": 0.5, "num_tasks": 2}
""")
_FAKE_CONFIG = textwrap.dedent('''
    """python -m launch.main --config=fake.py --workdir=/tmp/fake"""
    import ml_collections
    def get_config():
      return ml_collections.ConfigDict({"runner": "ok", "experiment": "fake", "seed": 0})
''')
_LAUNCH = ("import sys; from absl import app; from supsup_jax import runs as runners; "
           "runners.RUNNERS.update({n: 'fake_runners:' + n for n in "
           "('nan_run', 'nan_results', 'interrupted', 'multi_line', 'ok')}); "
           "from launch import cli, main; app.run(main.main, flags_parser=cli.parse_flags)")


def _launch(*args, fake_dir=None):
  env = dict(os.environ)
  if fake_dir is not None:
    env["PYTHONPATH"] = os.pathsep.join([str(fake_dir), str(REPO)])
    cmd = [sys.executable, "-c", _LAUNCH, *args]
  else:
    cmd = [sys.executable, "-m", "launch.main", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def _assert_one_line_error(result, *fragments, code=None):
  assert result.returncode != 0, result.stdout + result.stderr
  if code is not None:
    assert result.returncode == code
  assert "Traceback" not in result.stderr + result.stdout
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr
  for f in fragments:
    assert f in errors[0], errors[0]


def test_launch_unknown_config_file():
  _assert_one_line_error(_launch("--config=launch/configs/nope.py", "--workdir=/tmp/x"),
                         "config file 'launch/configs/nope.py' not found", "gg_split_mnist.py")


def test_launch_config_file_with_syntax_error(tmp_path):
  (tmp_path / "bad.py").write_text("def get_config(:\n")
  _assert_one_line_error(_launch(f"--config={tmp_path}/bad.py", "--workdir=/tmp/x"),
                         "syntax error", "bad.py")


def test_launch_unknown_key_keeps_did_you_mean():
  _assert_one_line_error(
      _launch("--config=launch/configs/gg_split_mnist.py", "--workdir=/tmp/x",
              "--config.num_taskz=3"),
      "unknown config key", "num_taskz", 'Did you mean "num_tasks"')


def test_launch_bad_key_type():
  _assert_one_line_error(
      _launch("--config=launch/configs/gg_split_mnist.py", "--workdir=/tmp/x",
              "--config.num_tasks=abc"), "--config.num_tasks=abc")


def test_launch_workdir_is_a_file(tmp_path):
  f = tmp_path / "file"
  f.write_text("")
  _assert_one_line_error(
      _launch("--config=launch/configs/gg_split_mnist.py", f"--workdir={f}"),
      f"workdir '{f}' is a file")
  _assert_one_line_error(
      _launch("--config=launch/configs/gg_split_mnist.py", f"--workdir={f}/sub"),
      f"cannot create workdir '{f}/sub'")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_launch_workdir_not_writable(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  _assert_one_line_error(
      _launch("--config=launch/configs/gg_split_mnist.py", f"--workdir={ro}"),
      f"workdir '{ro}' is not writable")


@pytest.fixture
def fake(tmp_path):
  (tmp_path / "fake_runners.py").write_text(_FAKE_RUNNERS)
  (tmp_path / "fake.py").write_text(_FAKE_CONFIG)
  return tmp_path


@pytest.mark.parametrize("runner, fragments, code", [
    ("nan_run", ["non-finite loss at task 2 step 140"], 3),
    ("nan_results", ["non-finite avg_accuracy"], 3),
    ("interrupted", ["interrupted; run the same command again to resume"], 130),
    ("multi_line", ["first part; second part"], 2),
])
def test_launch_runner_failures(fake, runner, fragments, code):
  _assert_one_line_error(
      _launch(f"--config={fake}/fake.py", f"--workdir={fake}/w", f"--config.runner={runner}",
              fake_dir=fake), *fragments, code=code)


def test_launch_dispatches_on_runner(fake):
  result = _launch(f"--config={fake}/fake.py", f"--workdir={fake}/w", fake_dir=fake)
  assert result.returncode == 0, result.stderr
  assert "fake: average accuracy 50.00% over 2 tasks" in result.stdout


# ------------------------------------------------------------ library bad input
_MODEL = models.LeNet300100(10)
_X = jnp.zeros((1, 28, 28, 1))


@pytest.fixture(scope="module")
def trees():
  w = W.init_weights(_MODEL, 0, _X)
  return w, M.init_scores(w, jax.random.key(1))


@pytest.mark.parametrize("call, pattern", [
    (lambda w, s: M.masks_from_scores(s, "topk", {"Dense_0": {"kernel": 0.5}}),
     r"k tree must hold one fraction per scores leaf: missing \['Dense_1/kernel'"),
    (lambda w, s: M.masks_from_scores(s, "topk", dict(s, extra={"kernel": 0.5})),
     r"no scores at \['extra/kernel'\]"),
    (lambda w, s: M.masks_from_scores(s, "topk", jax.tree.map(lambda _: 1.5, s)),
     r"k\['Dense_0/kernel'\] must be in \(0, 1\], got 1\.5"),
    (lambda w, s: M.masks_from_scores(s, "topk", True), r"k must be a number in \(0, 1\], got True"),
    (lambda w, s: M.masks_from_scores(s, "topk", float("nan")), r"k must be in \(0, 1\]"),
    (lambda w, s: M.masks_from_scores(s, "random"), r"unknown mask kind 'random'"),
    (lambda w, s: M.masks_from_scores(jnp.ones((3, 3))), r"scores must be a params tree"),
    (lambda w, s: M.masks_from_scores({"a": {"kernel": jnp.ones((3, 3), jnp.int32)}}),
     r"scores leaf a/kernel must be a float array, got dtype int32"),
    (lambda w, s: M.apply_masks(jnp.ones(3), s), r"weights must be a params tree.*got ArrayImpl"),
    (lambda w, s: M.apply_masks(w, [1, 2]), r"masks must be a params tree.*got list"),
    (lambda w, s: M.apply_masks({"params": w}, M.masks_from_scores(s)),
     r"pass variables\['params'\], not the whole variables dict"),
    (lambda w, s: M.apply_masks(w, {"Dense_0": {"kernel": jnp.ones((2, 2))}}),
     r"mask Dense_0/kernel has shape \(2, 2\), weight has \(784, 300\)"),
    (lambda w, s: M.topk_mask([1.0, 2.0], 0.5), r"scores must be a float array, got list"),
    (lambda w, s: M.topk_mask(jnp.ones((0, 3)), 0.5), r"scores is empty \(shape \(0, 3\)\)"),
    (lambda w, s: M.topk_mask(jnp.ones((3, 3)), 0.0), r"k must be in \(0, 1\], got 0\.0"),
    (lambda w, s: M.threshold_mask(jnp.ones(3, jnp.int32)), r"must be a float array"),
    (lambda w, s: M.er_fraction((3, 4), float("inf")), r"ER sparsity must be a finite number > 0"),
    (lambda w, s: M.er_fraction((3, 4), "1"), r"ER sparsity must be a finite number > 0"),
    (lambda w, s: M.er_fraction((3,), 1.0), r"ER budget needs a kernel shape"),
    (lambda w, s: M.er_fractions(3, 1.0), r"scores must be a params tree"),
    (lambda w, s: M.num_kept(0.5, 0), r"size must be an int >= 1, got 0"),
    (lambda w, s: M.init_scores(w, 3), r"key must be one PRNG key"),
    (lambda w, s: M.init_scores(w, jax.random.split(jax.random.key(0))), r"key must be one PRNG key"),
    (lambda w, s: M.init_scores(jnp.ones(3), jax.random.key(0)), r"weights must be a params tree"),
    (lambda w, s: M.init_scores({"a": {"bias": jnp.ones(3)}}, jax.random.key(0)),
     r"weights have no maskable leaf.*a/bias"),
    (lambda w, s: W.init_weights(_MODEL, 1.5, _X), r"seed must be an integer in 0\.\.\d+, got 1\.5"),
    (lambda w, s: W.init_weights(_MODEL, -1, _X), r"seed -1 out of range; allowed: 0\.\."),
    (lambda w, s: W.init_weights(_MODEL, 2**64, _X), r"seed 18446744073709551616 out of range"),
    (lambda w, s: W.init_weights(_MODEL, True, _X), r"seed must be an integer.*True"),
    (lambda w, s: W.init_weights(_MODEL, 0, (1, 28, 28, 1)),
     r"example_input must be an array or jax.ShapeDtypeStruct.*got tuple"),
    (lambda w, s: W.init_weights(_MODEL, 0, jnp.zeros((784,))),
     r"example_input needs a batch axis.*\(784,\)"),
    (lambda w, s: W.init_weights("lenet", 0, _X), r"model must be a Flax Linen module .*got str"),
    (lambda w, s: W.init_weights(_MODEL, 0, _X, gain=-1.0), r"gain must be a finite number > 0"),
    (lambda w, s: W.init_weights(_MODEL, 0, _X, init="xavier"), r"unknown init 'xavier'"),
    (lambda w, s: W.init_weights(models.ResNet18(), 0, jnp.zeros((1, 784))),
     r"ResNet cannot take example_input of shape \(1, 784\)"),
    (lambda w, s: W.random_kernel(0, ("a", "kernel"), (5,)), r"kernel shape needs >= 2 axes"),
    (lambda w, s: W.random_kernel(-3, ("a", "kernel"), (5, 5)), r"seed -3 out of range"),
    (lambda w, s: W.init_model_state(_MODEL, (1, 784)), r"example_input must be an array"),
    (lambda w, s: models.make_model("lenet300100", 0), r"num_outputs must be an int >= 1, got 0"),
    (lambda w, s: models.make_model("lenet300100", 10, channels=3),
     r"model 'lenet300100' does not take \['channels'\]"),
    (lambda w, s: models.make_model("vgg", 10), r"unknown model 'vgg'; allowed: lenet300100"),
    (lambda w, s: models.LeNet300100(-1), r"num_outputs must be an int >= 1, got -1"),
    (lambda w, s: models.MLP(hidden=(300, 0)), r"hidden entry must be an int >= 1, got 0"),
    (lambda w, s: models.SmallConvNet(channels=2.5), r"channels must be an int >= 1, got 2\.5"),
    (lambda w, s: models.ResNet(block="x"), r"block must be 'basic' or 'bottleneck'"),
    (lambda w, s: models.ResNet(stem="y"), r"stem must be 'cifar' or 'imagenet'"),
    (lambda w, s: T.flatten(3), r"tree must be a params tree.*got int"),
    (lambda w, s: T.check_same_paths(s, {"x": jnp.ones(3)}, "scores"),
     r"scores does not match the maskable weights: missing"),
])
def test_library_bad_input(trees, call, pattern):
  with pytest.raises(ValueError, match=pattern) as e:
    call(*trees)
  _one_line(str(e.value))


def test_numpy_and_jax_seeds_give_the_same_weights(trees):
  w, _ = trees
  for seed in (np.int64(0), jnp.int32(0)):
    got = W.init_weights(_MODEL, seed, _X)
    jax.tree.map(np.testing.assert_array_equal, got, w)
