"""Run checkpoints with orbax: atomic, resumable, tied to one config.

A checkpoint holds a pytree of arrays (``state``) and a JSON dict (``meta``).
Orbax writes each step to a temporary folder and renames it when complete, so
a run killed mid-write leaves the previous checkpoint intact.

Multi-host: every process calls :meth:`RunCheckpointer.save` and
:meth:`RunCheckpointer.restore` with the same arguments (orbax's
``CheckpointManager`` coordinates them; its primary process, 0, writes
replicated arrays and the metadata); the digests are written and damaged
steps moved aside by process 0 only, the others waiting at a barrier.

Orbax does not notice a bit flipped in stored array data (it restores wrong
values), so after each save the SHA-256 of every file of the step is recorded
in ``<step>/supsup_sha256.json``. :meth:`RunCheckpointer.restore` checks it and
falls back to the previous step (two are kept) when the latest one is damaged,
moving the damaged step to ``<workdir>/checkpoints_damaged/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

_DIGESTS = "supsup_sha256.json"
_log = logging.getLogger(__name__)

# Config keys that may change between a run and its resumption.
# The mesh too: a run resumes on another number of devices (same results up to
# float summation order).
NON_SEMANTIC_KEYS = ("log_every_steps", "checkpoint_every_steps", "checkpoint_every_minutes",
                     "stop_after_steps", "data_dir",
                     "download", "progress", "mesh")

# Keys added after runs existed, whose default means "as before": at that value
# they are left out of the fingerprint and the diff, so a workdir made before
# the key existed still resumes (and a finished one is still recognised).
NEUTRAL_DEFAULTS = {"weights_from": "", "weights_from_task": -1, "weights_from_fresh": ()}


def _semantic(config: Mapping) -> dict:
  """The config's top-level items that change results."""
  return {k: v for k, v in dict(config).items()
          if k not in NON_SEMANTIC_KEYS and not (
              k in NEUTRAL_DEFAULTS and json.dumps(v, default=str)
              == json.dumps(NEUTRAL_DEFAULTS[k]))}


class ConfigMismatchError(ValueError):
  """The workdir holds a run of a different configuration."""


class CheckpointError(ValueError):
  """No checkpoint in the workdir can be read."""


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _step_digests(step_dir: str) -> dict[str, str]:
  out = {}
  for dirpath, _, filenames in os.walk(step_dir):
    for f in filenames:
      path = os.path.join(dirpath, f)
      rel = os.path.relpath(path, step_dir)
      if rel == _DIGESTS:
        continue
      h = hashlib.sha256()
      with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
          h.update(block)
      out[rel] = h.hexdigest()
  return out


def _verify(step_dir: str) -> bool:
  """Whether a step's files match its recorded digests (False: it has none).

  Raises ValueError naming the first damaged file.
  """
  try:
    with open(os.path.join(step_dir, _DIGESTS)) as f:
      want = json.load(f)
  except FileNotFoundError:
    # Written before digests existed, or interrupted between orbax's commit
    # and the digests: readable, but a flipped bit would go unnoticed.
    return False
  except ValueError:
    raise ValueError(f"{os.path.join(step_dir, _DIGESTS)} is not valid JSON") from None
  got = _step_digests(step_dir)
  for rel in sorted(set(want) | set(got)):
    if want.get(rel) != got.get(rel):
      what = "is missing" if rel not in got else (
          "is not in the record" if rel not in want else "has changed (sha256 mismatch)")
      raise ValueError(f"{os.path.join(step_dir, rel)} {what}")
  return True


def one_line(e: BaseException) -> str:
  """``Type: message`` of an exception on one line, at most ~300 characters."""
  msg = " ".join(str(e).split())
  return f"{type(e).__name__}: {msg[:300]}" + ("..." if len(msg) > 300 else "")


_one_line = one_line


def config_fingerprint(config: Mapping) -> str:
  """SHA-256 of the config, ignoring keys that do not change results."""
  items = _semantic(config)
  blob = json.dumps(items, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(config: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in dict(config).items():
    if isinstance(v, Mapping) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_diff(saved: Mapping, config: Mapping) -> list[str]:
  """The (dotted) keys whose values differ between two configs, ignoring
  :data:`NON_SEMANTIC_KEYS`."""
  a, b = _flat(_semantic(saved)), _flat(_semantic(config))
  return sorted(k for k in set(a) | set(b)
                if k.split(".")[0] not in NON_SEMANTIC_KEYS
                and json.dumps(a.get(k), sort_keys=True, default=str)
                != json.dumps(b.get(k), sort_keys=True, default=str))


def read_latest(directory: str) -> tuple[Any, dict, int]:
  """``(state, meta, step)`` of the latest step under a run's ``checkpoints``
  folder, read only (another run's, e.g. pretrained weights): its digests
  are checked and nothing is moved or cleaned.

  Raises:
    CheckpointError: no step, or the latest one is damaged or unreadable
      (no fallback: an earlier step is another state of that run).
  """
  directory = os.path.abspath(directory)
  try:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"cannot open checkpoints in {directory} ({_one_line(e)})") from None
  try:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f"no checkpoint in {directory}")
    step_dir = os.path.join(directory, str(step))
    try:
      _verify(step_dir)
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint step {step} in {directory} cannot be read "
                            f"({_one_line(e)})") from None
    meta = restored["meta"]
    if not isinstance(meta, dict):
      raise CheckpointError(f"{step_dir}/meta holds {type(meta).__name__}, not a dict")
    return restored["state"], meta, int(step)
  finally:
    manager.close()


class RunCheckpointer:
  """Saves/restores ``(state pytree, meta dict)`` under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, config: Mapping, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.fingerprint = config_fingerprint(config)
    self.config = dict(config)
    self._manager = ocp.CheckpointManager(
        self.directory,
        # Half-written steps of a killed save (orbax's tmp folders) are removed.
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True))
    # Orbax removes those folders in a background thread and joins it only at
    # the first save; a process that just restores (or fails to) could exit
    # with the thread still running and print its traceback at shutdown.
    # Joining here also means no restore races the cleanup.
    join_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if join_cleanup is not None:
      join_cleanup()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Mapping) -> None:
    meta = dict(meta, config_fingerprint=self.fingerprint)
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          force=True)
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        step_dir = self._step_dir(step)
        digests = _step_digests(step_dir)
        tmp = os.path.join(step_dir, f".{_DIGESTS}.tmp")
        with open(tmp, "w") as f:
          json.dump(digests, f, indent=0, sort_keys=True)
        os.replace(tmp, os.path.join(step_dir, _DIGESTS))
    except Exception as e:  # pylint: disable=broad-except  (a full disk, a lost mount, ...)
      latest = [s for s in self._manager.all_steps() if s != step]
      raise CheckpointError(
          f"cannot write checkpoint step {step} to {self.directory} ({_one_line(e)}); "
          "free space or fix the folder, then run the same command to resume from "
          + (f"step {max(latest)}" if latest else "the start")) from None
    _barrier(f"supsup_digests_{step}")

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _restore_step(self, step: int) -> tuple[Any, dict, bool]:
    verified = _verify(self._step_dir(step))
    meta = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict):
      raise ValueError(f"{self._step_dir(step)}/meta holds {type(meta).__name__}, not a dict")
    if meta.get("config_fingerprint") != self.fingerprint:
      diff = config_diff(meta.get("config", {}), self.config)
      raise ConfigMismatchError(
          f"workdir {os.path.dirname(self.directory)!r} holds a run of a "
          f"different config (differs in: {', '.join(diff) or 'unknown keys'}); "
          "use a new --workdir or the same config to resume")
    state = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    return state, meta, verified

  def restore(self) -> tuple[Any, dict] | None:
    """The latest readable (state, meta), or None for a fresh workdir.

    A damaged step (changed or missing file, unreadable array data or
    metadata) is reported in one line, moved to ``<workdir>/checkpoints_damaged/``
    and the previous step is tried.

    Raises:
      ConfigMismatchError: the checkpoint belongs to another configuration.
      CheckpointError: there are checkpoints, but none can be read.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    failures, damaged, unverified = [], [], []
    for step in steps:
      try:
        state, meta, verified = self._restore_step(step)
      except ConfigMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        failures.append(f"step {step}: {_one_line(e)}")
        _log.warning("checkpoint step %d in %s cannot be read (%s); %s", step,
                     self.directory, _one_line(e),
                     "trying the previous one" if step != steps[-1] else "none left")
        damaged.append(step)
        continue
      if not verified:
        # No digests: a save interrupted after orbax's commit (or an old
        # run). Trusted only when no verified step is left to fall back to.
        unverified.append((step, state, meta))
        continue
      for bad in damaged + [s for s, _, _ in unverified]:
        if bad in [s for s, _, _ in unverified]:
          _log.warning("checkpoint step %d in %s has no digests (its save was "
                       "interrupted); not trusted, using verified step %d", bad,
                       self.directory, step)
        # New saves will reuse these steps' numbers: move them out of the way.
        self._set_aside(bad)
      return state, meta
    if unverified:
      step, state, meta = unverified[0]
      _log.warning("checkpoint step %d in %s has no digests and no verified step is "
                   "left: using it unverified", step, self.directory)
      for bad in damaged:
        self._set_aside(bad)
      return state, meta
    raise CheckpointError(
        f"no readable checkpoint in {self.directory} ({'; '.join(failures)}); "
        f"delete {self.directory} to start over")

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      damaged = os.path.join(os.path.dirname(self.directory), "checkpoints_damaged")
      os.makedirs(damaged, exist_ok=True)
      shutil.move(self._step_dir(step), os.path.join(damaged, f"{step}.{int(time.time())}"))
    _barrier(f"supsup_set_aside_{step}")
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()
