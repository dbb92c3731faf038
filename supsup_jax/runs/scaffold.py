"""What every run kind shares: one workdir, one identity, checkpoints, progress, results last.

Every runner (the continual loop, HopSupSup, subnetwork and uncertainty
studies) opens its workdir with :func:`open_run`::

  with scaffold.open_run(workdir, config, kind="hopsupsup") as run:
    if run.finished is not None:       # this very run finished before
      return run.finished
    restored = run.restore()           # (tree, meta) of the last checkpoint, or None
    ...                                # work, calling run.save(step, tree, meta)
    return run.finish(results, write_outputs)

and so inherits:

* **one run per workdir**: the workdir is locked (``supsup_jax.workdir``) for
  the whole run; a second launcher on it is refused in one line;
* **one identity per workdir**: ``<workdir>/run.json`` records the run kind and
  the config (its fingerprint ignores keys that do not change results, e.g.
  ``log_every_steps``). A workdir holding another kind of run, another config,
  or a ``results.json`` / checkpoints of a run it cannot identify is refused in
  one line naming the differing keys, before any data is loaded: a finished
  run is never overwritten by a command of another run;
* **checkpoints** (orbax, atomic, SHA-256 digests, fallback to the previous
  step; :class:`supsup_jax.checkpoint.RunCheckpointer`) of any pytree saved
  under its leaves' tree paths (:mod:`supsup_jax.state_io`), so the same
  command resumes exactly where a killed run stopped;
* **progress** with an ETA, TensorBoard scalars (``<workdir>/tensorboard``,
  events of a killed process after its last checkpoint hidden on resume);
* **results last**: the run's own outputs (CSV, PNG) first, then
  ``results.json`` atomically: a ``results.json`` means the run is complete.
  Running the same command on a finished workdir returns its results without
  recomputing anything.

It also holds the pieces of a run every kind builds from a config the same
way: its data stream (:func:`stream_from_config`), its steps
(:func:`supsup_jax.learner.train_steps`, one formula) and its non-finite guard
(:func:`check_finite`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import jax

from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import distributed
from supsup_jax import metrics
from supsup_jax import scalars
from supsup_jax import workdir as workdir_lib

IDENTITY = "run.json"     # the kind and config a workdir belongs to
RESULTS = "results.json"  # written last: the run is complete


def stream_from_config(config, dataset: str | None = None, num_tasks: int | None = None):
  """The task stream of ``config`` (``dataset``/``num_tasks`` override the
  config's; ``data_seed`` defaults to ``seed``)."""
  from supsup_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  data_seed = config.get("data_seed")
  return data_lib.make_stream(
      dataset or config.dataset,
      num_tasks=int(config.num_tasks if num_tasks is None else num_tasks),
      seed=int(config.seed if data_seed is None else data_seed),
      data_dir=config.get("data_dir") or None,
      download=bool(config.get("download", False)),
      **dict(config.get("dataset_options") or {}))


def check_finite(finite, where: str, last_good: str) -> None:
  """Raises ``FloatingPointError`` (one line) unless ``finite`` is true."""
  if not bool(finite):
    raise FloatingPointError(
        f"training became non-finite (NaN or inf loss or state) in {where}; "
        f"stopped, {last_good}; lower config.learning_rate or check the data")


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """Logs ``label step i/n loss .. | elapsed .. ETA ..`` from the rate so far."""

  def __init__(self, total: int, done: int = 0):
    self.start = time.time()
    self.total, self.done0, self.done = int(total), int(done), int(done)

  def eta(self) -> tuple[float, float]:
    """(elapsed seconds in this process, estimated seconds left)."""
    elapsed = time.time() - self.start
    rate = (self.done - self.done0) / max(elapsed, 1e-9)
    return elapsed, (self.total - self.done) / rate if rate > 0 else float("nan")

  def report(self, label: str, step: int, steps: int, mets: Mapping) -> None:
    """One line: ``label step i/n`` and ``loss``/``acc`` where ``mets`` has them."""
    elapsed, eta = self.eta()
    shown = "".join(f" {name} {float(mets[key]):.{digits}f}"
                    for key, name, digits in (("loss", "loss", 4), ("accuracy", "acc", 3))
                    if key in mets)
    logging.info("%s step %d/%d%s | elapsed %s ETA %s", label, step, steps, shown,
                 _fmt(elapsed), _fmt(eta))


class _DropLibraryInfo:
  """absl-logging filter: keeps orbax's chatter out of the progress log."""

  def filter(self, record) -> bool:  # pylint: disable=g-bare-generic
    # Orbax's failures reach the runner as exceptions, which it reports in one
    # line; its own log of them (hundreds of lines on a full disk) is dropped.
    return "/orbax/" not in record.pathname or record.levelno >= 50


def quiet_libraries() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())


def _jsonable(x):
  return json.loads(json.dumps(x, default=str))


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      value = json.load(f)
  except FileNotFoundError:
    return None
  except ValueError:
    raise ValueError(f"{path} is not valid JSON (damaged?); move it away or use "
                     "another --workdir") from None
  return value if isinstance(value, dict) else None


def _identity(kind: str, config: Mapping) -> dict:
  return {"runner": kind, "experiment": config.get("experiment"),
          "config_fingerprint": ckpt_lib.config_fingerprint(config),
          "config": _jsonable(config)}


def claim(workdir: str, kind: str, config: Mapping) -> dict | None:
  """Checks that ``workdir`` is free for run ``kind`` of ``config`` and records it.

  Returns the stored results when this very run (same kind and config) is
  already finished there, else None. The identity is written by
  :meth:`Run.restore`, once the checkpoints (which record their config too)
  have been read.

  Raises:
    ckpt_lib.ConfigMismatchError: the workdir holds another kind of run,
      another config, or results / checkpoints of an unidentified run.
  """
  held = _read_json(os.path.join(workdir, IDENTITY))
  results = _read_json(os.path.join(workdir, RESULTS))
  here = os.path.abspath(workdir)
  if held is None:
    # A workdir from before run.json, or another tool's: identify it by its
    # results.json; refuse checkpoints or results that say nothing of their run.
    saved_cfg = (results or {}).get("config")
    if results is not None and not isinstance(saved_cfg, dict):
      raise ckpt_lib.ConfigMismatchError(
          f"workdir {here!r} holds a results.json of an unidentified run; use "
          "another --workdir")
    if results is not None:
      held = {"runner": results.get("runner", kind), "config": saved_cfg,
              "config_fingerprint": ckpt_lib.config_fingerprint(saved_cfg)}
    elif os.path.isdir(os.path.join(workdir, "checkpoints")):
      held = None  # the checkpoints' own config check decides (they record it)
  if held is not None:
    if held.get("runner", kind) != kind:
      raise ckpt_lib.ConfigMismatchError(
          f"workdir {here!r} holds a {held.get('runner')!r} run"
          f" ({held.get('experiment') or (held.get('config') or {}).get('experiment')}),"
          f" not a {kind!r} run; use another --workdir")
    if held.get("config_fingerprint") != ckpt_lib.config_fingerprint(config):
      diff = ckpt_lib.config_diff(held.get("config") or {}, config)
      raise ckpt_lib.ConfigMismatchError(
          f"workdir {here!r} holds a run of a different config (differs in: "
          f"{', '.join(diff) or 'unknown keys'}); use a new --workdir or the same "
          "config to resume")
  return results


class Run:
  """One claimed, locked workdir: checkpoints, scalars, results (see module doc)."""

  def __init__(self, workdir: str, config: Mapping, kind: str, finished: dict | None):
    self.workdir, self.kind, self.config = workdir, kind, dict(config)
    self.finished = finished
    self.ckpt = ckpt_lib.RunCheckpointer(workdir, self.config)
    self.writer: Any = None
    self.run_start = time.time()
    self.last_save = time.time()
    # The signal (SIGINT, SIGTERM) that asked the run to stop, if any: runners
    # that check it save a checkpoint at their next step boundary and raise
    # :meth:`interruption` (see :func:`open_run`).
    self.stop_signal: str | None = None

  def interruption(self, where: str) -> KeyboardInterrupt:
    """The exception a runner raises after saving its checkpoint at ``where``."""
    return KeyboardInterrupt(f"stopped by {self.stop_signal} after saving a checkpoint at "
                             f"{where}")

  def restore(self) -> tuple[Any, dict] | None:
    """The last readable checkpoint's (tree, meta), or None for a fresh run.

    Opens the TensorBoard writer too: on resume, events a killed process wrote
    after that checkpoint (``meta["global_step"]``) are hidden.
    """
    restored = self.ckpt.restore()  # refuses checkpoints of another config
    if distributed.is_writer():
      metrics.write_json_atomic(os.path.join(self.workdir, IDENTITY),
                                _identity(self.kind, self.config))
    purge = None
    if restored is not None:
      meta = restored[1]
      self.run_start = time.time() - float(meta.get("elapsed_s", 0.0))
      purge = int(meta.get("global_step", 0))
    self.writer = (scalars.ScalarWriter(os.path.join(self.workdir, "tensorboard"),
                                        purge_step=purge)
                   if distributed.is_writer() else distributed.NullWriter())
    return restored

  def release_if_empty(self) -> None:
    """Removes the identity :meth:`restore` wrote while nothing is saved
    under it (no checkpoint, no results): a fresh run that failed before its
    first step, on a config or data error found while building it, leaves
    the workdir free for the corrected command."""
    if self.finished is None and self.ckpt.latest_step() is None \
        and distributed.is_writer():
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(self.workdir, IDENTITY))

  def elapsed(self) -> float:
    """Seconds this run has taken so far, over all its processes' lives."""
    return time.time() - self.run_start

  def save(self, step: int, tree: Any, meta: Mapping) -> None:
    """Checkpoints ``tree`` (a pytree of arrays) with the JSON ``meta``."""
    if self.writer is not None:
      self.writer.flush()
    self.ckpt.save(step, tree, {**meta, "elapsed_s": self.elapsed(), "config": self.config})
    self.last_save = time.time()

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    if self.writer is not None:
      self.writer.write(step, values)

  def finish(self, results: dict, write_outputs: Callable[[dict], None] | None = None
             ) -> dict:
    """Writes the run's outputs, then ``results.json`` (atomically, last)."""
    results = {"runner": self.kind, **results}
    results.setdefault("wall_time_s", self.elapsed())
    results.setdefault("config", self.config)
    if distributed.is_writer():  # multi-host: process 0 writes
      if write_outputs is not None:
        write_outputs(results)
      metrics.write_json_atomic(os.path.join(self.workdir, RESULTS), results)
    return results

  def close(self) -> None:
    self.ckpt.close()  # joins orbax's writer threads, also on errors
    if self.writer is not None:
      self.writer.close()


@contextlib.contextmanager
def _stop_at_boundary(run: Run) -> Iterator[None]:
  """SIGINT / SIGTERM set ``run.stop_signal`` instead of raising mid-step (in
  the middle of an orbax commit, say); a second Ctrl-C raises at once."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    del frame
    if run.stop_signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt("stopped at once (second Ctrl-C)")
    run.stop_signal = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint at the next step boundary, then "
                    "stopping (Ctrl-C again to stop at once)", run.stop_signal)

  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


@contextlib.contextmanager
def open_run(workdir: str, config, *, kind: str,
             stops_at_boundaries: bool = False) -> Iterator[Run]:
  """Claims and locks ``workdir`` for run ``kind`` of ``config`` (see module doc).

  ``stops_at_boundaries``: the runner checks ``run.stop_signal`` at its step
  boundaries (saves, then raises ``run.interruption(where)``), so SIGINT and
  SIGTERM only set it. Otherwise they raise ``KeyboardInterrupt`` where the
  run is, and it resumes from its last checkpoint.
  """
  quiet_libraries()
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  workdir_lib.check_workdir(workdir)
  # One run per workdir (the other processes of a multi-host run share it).
  with (workdir_lib.lock(workdir) if jax.process_index() == 0
        else contextlib.nullcontext()):
    finished = claim(workdir, kind, config)
    run = Run(workdir, config, kind, finished)
    try:
      with (_stop_at_boundary(run) if stops_at_boundaries else contextlib.nullcontext()):
        yield run
    finally:
      run.close()
