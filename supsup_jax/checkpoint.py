"""Run checkpoints with orbax: atomic, resumable, tied to one config.

A checkpoint holds a pytree of arrays (``state``) and a JSON dict (``meta``).
Orbax writes each step to a temporary folder and renames it when complete, so
a run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import orbax.checkpoint as ocp

# Config keys that may change between a run and its resumption.
NON_SEMANTIC_KEYS = ("log_every_steps", "checkpoint_every_steps", "data_dir",
                     "download", "progress")


class ConfigMismatchError(ValueError):
  """The workdir holds a run of a different configuration."""


def config_fingerprint(config: Mapping) -> str:
  """SHA-256 of the config, ignoring keys that do not change results."""
  items = {k: v for k, v in dict(config).items() if k not in NON_SEMANTIC_KEYS}
  blob = json.dumps(items, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunCheckpointer:
  """Saves/restores ``(state pytree, meta dict)`` under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, config: Mapping, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.fingerprint = config_fingerprint(config)
    self.config = dict(config)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Mapping) -> None:
    meta = dict(meta, config_fingerprint=self.fingerprint)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)
    self._manager.wait_until_finished()

  def restore(self) -> tuple[Any, dict] | None:
    """The latest (state, meta), or None for a fresh workdir.

    Raises:
      ConfigMismatchError: the checkpoint belongs to another configuration.
    """
    step = self.latest_step()
    if step is None:
      return None
    meta = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("config_fingerprint") != self.fingerprint:
      saved = meta.get("config", {})
      diff = sorted(k for k in set(saved) | set(self.config)
                    if k not in NON_SEMANTIC_KEYS
                    and json.dumps(saved.get(k), sort_keys=True, default=str)
                    != json.dumps(self.config.get(k), sort_keys=True, default=str))
      raise ConfigMismatchError(
          f"workdir {os.path.dirname(self.directory)!r} holds a run of a "
          f"different config (differs in: {', '.join(diff) or 'unknown keys'}); "
          "use a new --workdir or the same config to resume")
    state = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    return state, meta

  def close(self) -> None:
    self._manager.close()
