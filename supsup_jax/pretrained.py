"""Supermasks over pretrained weights: the fixed weights read from a checkpoint.

Piggyback (Mallya, Davis & Lazebnik, "Piggyback: Adapting a Single Network
to Multiple Tasks by Learning to Mask Weights", ECCV 2018, arXiv 1801.06519)
learns one binary mask per task over the weights of a pretrained network;
SupSup (Wortsman, Ramanujan et al., NeurIPS 2020, arXiv 2006.14769) extends
it to many tasks over random weights drawn from a seed. With
``config.weights_from`` SupSup's fixed weights come from a checkpoint
instead: they stay immutable, each task still stores only its mask (1 bit
per weight, ``bytes_per_task`` unchanged) and the checkpoint is stored once,
as the seed is.

Config keys (read by the ``supsup`` learner; any other learner refuses them):

* ``config.weights_from``: ``""`` (default) draws the weights from
  ``config.seed`` as always; otherwise a path to

  (a) an orbax checkpoint of a Flax ``params`` tree of the same model: an
      item directory written by ``orbax.checkpoint.StandardCheckpointer`` /
      ``PyTreeCheckpointer`` (or Flax's ``checkpoints``), holding the
      ``params`` tree itself or a mapping with a ``"params"`` entry (a
      variables dict, a train state); or a ``CheckpointManager`` directory
      (its latest step; the item named ``params``, ``state`` or
      ``default``, or its only item);
  (b) the workdir of a finished ``upper_bound`` or ``lower_bound`` run of
      the continual runner: the trained network of its final checkpoint
      (its batch-norm statistics are not read; each task's masks learn
      their own, as over random weights).

* ``config.weights_from_task``: an ``upper_bound`` run keeps one network per
  task; this picks one by task id (0-based; ``num_tasks - 1`` is the last,
  fine-tuned through every task). Default ``-1``: not chosen, which only a
  one-task run allows (its only network); other sources refuse a choice.
* ``config.weights_from_fresh``: leaf path prefixes (``"Dense_0"`` or
  ``"Dense_0/kernel"``) kept from the seed instead, e.g. a classifier of
  another width (pretrained 10-way on CIFAR-10, 5-way tasks here): a new
  head per task, as in Piggyback. Default ``()``.

Every other leaf must match the model's path, shape and dtype exactly; the
first one that does not is named in one line with the fix (another model, a
missing or extra leaf, another width or dtype). Nothing is re-initialised
silently. The run records the source and a SHA-256 of the leaves read
(:attr:`Pretrained.provenance`) in ``results.json`` and in every checkpoint,
and a resume over a checkpoint whose weights changed since is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import tree as tree_lib

#: The config keys this module reads, with their defaults (= random weights).
DEFAULTS = {"weights_from": "", "weights_from_task": -1, "weights_from_fresh": ()}
#: The learners that mask fixed weights and so can take pretrained ones.
LEARNERS = ("supsup",)
#: Continual-runner methods whose finished workdirs hold trained weights.
RUN_METHODS = ("upper_bound", "lower_bound")
#: Item names tried in a CheckpointManager step holding several items.
ITEM_NAMES = ("params", "state", "default")
_ORBAX_ITEM = "_METADATA"   # a file in every orbax pytree item directory


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Fixed weights read from a checkpoint.

  Attributes:
    weights: the params tree the masks select from (the checkpoint's leaves,
      plus the ``fresh`` leaves from the seed), float arrays as the model's.
    source: absolute path read.
    kind: ``"checkpoint"``, ``"upper_bound run"`` or ``"lower_bound run"``.
    task: the upper_bound network read (task id), else None.
    step: the checkpoint step read (None when it has none).
    sha256: digest of the leaves taken from the checkpoint (paths, dtypes,
      shapes, bytes), independent of the seed.
    fresh_leaves: leaf paths kept from the seed.
  """
  weights: dict
  source: str
  kind: str
  task: int | None
  step: int | None
  sha256: str
  fresh_leaves: tuple[str, ...]

  @property
  def provenance(self) -> dict:
    """JSON-able record for results.json and the run's checkpoints."""
    return {"weights_from": self.source, "kind": self.kind, "task": self.task,
            "step": self.step, "sha256": self.sha256,
            "fresh_leaves": list(self.fresh_leaves)}


# ------------------------------------------------------------------- config --

def read_config(config: Any) -> dict:
  """``{"path", "task", "fresh"}`` from ``config.weights_from*`` (absent keys
  take :data:`DEFAULTS`), each checked in one line."""
  path = config.get("weights_from", "") or ""
  task = config.get("weights_from_task", -1)
  fresh = config.get("weights_from_fresh", ()) or ()
  if not isinstance(path, str):
    raise ValueError(f"config.weights_from must be a path (or '' for random weights), "
                     f"got {path!r}")
  if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or task < -1:
    raise ValueError(f"config.weights_from_task must be a task id >= 0 (or -1: not "
                     f"chosen), got {task!r}")
  if isinstance(fresh, str) or not all(isinstance(p, str) and p.strip("/") for p in fresh):
    raise ValueError("config.weights_from_fresh must be a tuple of leaf path prefixes, "
                     f"e.g. '(\"Dense_0\",)', got {fresh!r}")
  if not path and (task != -1 or fresh):
    key = "weights_from_task" if task != -1 else "weights_from_fresh"
    raise ValueError(f"config.{key} applies with config.weights_from (pretrained "
                     "weights); set config.weights_from or remove it")
  return {"path": path, "task": int(task), "fresh": tuple(p.strip("/") for p in fresh)}


def check_config(config: Any, method: str) -> None:
  """Before the workdir is claimed or any data loaded: the keys of
  ``read_config``, that ``method`` can take pretrained weights, and what can
  be checked of the source without the model (it exists; a run's workdir is
  a finished upper/lower_bound run and the task choice fits it)."""
  part = read_config(config)
  if not part["path"]:
    return
  if method not in LEARNERS:
    raise ValueError(f"config.weights_from is read by the mask learners "
                     f"({', '.join(LEARNERS)}); method {method!r} would ignore it: remove "
                     "it or use --config.method=supsup")
  if not os.path.exists(part["path"]):
    raise ValueError(f"config.weights_from {part['path']!r} does not exist; point it at "
                     "an orbax checkpoint of the model's params or the workdir of a "
                     "finished upper_bound/lower_bound run")
  describe_source(part["path"], part["task"])


# ------------------------------------------------------------------ reading --

def _as_numpy(tree) -> dict:
  return {p: np.asarray(v) for p, v in tree_lib.flatten(tree).items()}


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      value = json.load(f)
  except FileNotFoundError:
    return None
  except ValueError:
    raise ValueError(f"{path} is not valid JSON (damaged?)") from None
  return value if isinstance(value, dict) else None


def _is_run_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints")) and any(
      os.path.exists(os.path.join(path, f)) for f in ("run.json", "results.json"))


def describe_source(path: str, task: int = -1) -> dict:
  """``{"source", "kind", "task", "model"}`` of a ``weights_from`` path,
  from its files' names and a run's results.json only (no arrays read);
  one-line ValueErrors for a path that is neither source, an unfinished run
  or a run of another method, and a task choice that does not fit."""
  source = os.path.abspath(path)
  if not os.path.isdir(source):
    raise ValueError(f"config.weights_from {path!r} is not a directory; point it at an "
                     "orbax checkpoint of the model's params or the workdir of a finished "
                     "upper_bound/lower_bound run")
  if not _is_run_workdir(source):
    if task != -1:
      raise ValueError(f"config.weights_from_task={task}: {path!r} is a checkpoint of one "
                       "network, not an upper_bound run; remove config.weights_from_task")
    _orbax_item(source)  # names what it holds unless it is one
    return {"source": source, "kind": "checkpoint", "task": None, "model": None}
  results = _read_json(os.path.join(source, "results.json"))
  if results is None:
    raise ValueError(f"config.weights_from {path!r} holds an unfinished run (no "
                     "results.json): finish it with its own command first")
  config = results.get("config") or {}
  method = config.get("method", results.get("method"))
  runner = results.get("runner", config.get("runner", "continual"))
  if runner != "continual" or method not in RUN_METHODS:
    raise ValueError(f"config.weights_from {path!r} holds a {runner!r} run of method "
                     f"{method!r}; it reads the trained weights of "
                     f"{' or '.join(RUN_METHODS)} runs (or an orbax params checkpoint)")
  num_tasks = int(config.get("num_tasks") or 0)
  if method == "lower_bound" and task != -1:
    raise ValueError(f"config.weights_from_task={task}: {path!r} is a lower_bound run "
                     "(one network for every task); remove config.weights_from_task")
  info = {"source": source, "kind": f"{method} run", "task": None,
          "model": config.get("model"), "num_tasks": num_tasks}
  if method == "upper_bound":
    if task == -1 and num_tasks != 1:
      raise ValueError(
          f"config.weights_from {path!r} is an upper_bound run with {num_tasks} networks "
          f"(one per task): choose one with --config.weights_from_task=<0..{num_tasks - 1}>"
          f" ({num_tasks - 1}: the last, fine-tuned through every task)")
    task = max(task, 0)
    if task >= num_tasks:
      raise ValueError(f"config.weights_from_task={task} out of range: {path!r} holds "
                       f"{num_tasks} task networks; allowed: 0..{num_tasks - 1}")
    info["task"] = task
  return info


def _read_run(path: str, info: dict) -> tuple[dict, int]:
  """(flat params, step) of the finished upper/lower_bound workdir ``info`` describes."""
  num_tasks, method = info["num_tasks"], info["kind"].split()[0]
  state, meta, step = ckpt_lib.read_latest(os.path.join(path, "checkpoints"))
  if int((meta.get("loop") or {}).get("next_task", -1)) != num_tasks:
    raise ValueError(f"the latest checkpoint of {path!r} ({(meta.get('loop') or {}).get('where')})"
                     " is not the end of its run; run its command again to finish it")
  params = (state.get("memory") or {}).get("params")
  if not isinstance(params, Mapping):
    raise ValueError(f"the final checkpoint of {path!r} holds no memory/params tree; "
                     f"is it a {method} run of this version?")
  flat = _as_numpy(params)
  if method == "upper_bound":
    flat = {p: v[info["task"]] for p, v in flat.items()}
  return flat, step


def _orbax_item(path: str) -> tuple[str, int | None]:
  """(the item directory, its step) an orbax checkpoint path names."""
  if os.path.exists(os.path.join(path, _ORBAX_ITEM)):
    return path, None
  step = None
  steps = [int(d) for d in os.listdir(path)
           if d.isdigit() and os.path.isdir(os.path.join(path, d))]
  if steps:  # a CheckpointManager's directory: its latest step
    step = max(steps)
    path = os.path.join(path, str(step))
  items = sorted(d for d in os.listdir(path)
                 if os.path.exists(os.path.join(path, d, _ORBAX_ITEM)))
  chosen = next((i for i in ITEM_NAMES if i in items), items[0] if len(items) == 1 else None)
  if chosen is None:
    what = (f"items {', '.join(items)} (none named {'/'.join(ITEM_NAMES)})" if items
            else "no orbax checkpoint")
    raise ValueError(f"config.weights_from {path!r} holds {what}; point it at the orbax "
                     "item directory of the params tree")
  return os.path.join(path, chosen), step


def _read_checkpoint(path: str) -> tuple[dict, int | None]:
  item, step = _orbax_item(path)
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  try:
    tree = ocp.StandardCheckpointer().restore(item)
  except Exception as e:  # pylint: disable=broad-except  (orbax's many failure types)
    raise ValueError(f"config.weights_from {item!r} cannot be read as an orbax "
                     f"checkpoint ({ckpt_lib.one_line(e)})") from None
  if isinstance(tree, Mapping) and isinstance(tree.get("params"), Mapping):
    tree = tree["params"]
  if not isinstance(tree, Mapping) or not tree:
    raise ValueError(f"config.weights_from {item!r} holds no params tree (a nested dict "
                     "of arrays, or a mapping with a 'params' entry)")
  return _as_numpy(tree), step


def read_params(path: str, task: int = -1) -> tuple[dict, dict]:
  """The flat params ``{path tuple: np.ndarray}`` of a checkpoint or a run's
  workdir (see the module docstring), and :func:`describe_source`'s dict
  with the ``"step"`` read. One-line ValueErrors for anything unreadable."""
  info = describe_source(path, task)
  if info["kind"] == "checkpoint":
    flat, step = _read_checkpoint(info["source"])
  else:
    flat, step = _read_run(info["source"], info)
  return flat, dict(info, step=step)


# ---------------------------------------------------------------- combining --

def tree_sha256(flat: Mapping[tuple, Any]) -> str:
  """SHA-256 of a flat tree: each leaf's path, dtype, shape and bytes, in path order."""
  h = hashlib.sha256()
  for path in sorted(flat):
    x = np.ascontiguousarray(np.asarray(flat[path]))
    h.update(f"{tree_lib.path_str(path)}|{x.dtype.str}|{x.shape}|".encode())
    h.update(x.tobytes())
  return h.hexdigest()


def _under(path: tuple, prefixes: Sequence[tuple]) -> bool:
  return any(path[:len(p)] == p for p in prefixes)


def combine(seed_weights: Any, loaded: Mapping[tuple, Any], *, fresh: Sequence[str] = (),
            source: str = "the checkpoint", model_name: str = "the model"
            ) -> tuple[dict, dict, tuple[str, ...]]:
  """The weights to mask: ``loaded`` leaf by leaf, the ``fresh`` ones from
  ``seed_weights``.

  Args:
    seed_weights: the model's params tree from its seed
      (:func:`supsup_jax.weights.init_weights`): the reference of paths,
      shapes and dtypes, and the source of the fresh leaves.
    loaded: flat ``{path tuple: array}`` read from the checkpoint.
    fresh: leaf path prefixes (``"Dense_0"``, ``"Dense_0/kernel"``) kept from
      the seed; each must name at least one leaf of the model.
    source, model_name: for the messages.

  Returns:
    ``(weights, used, fresh_leaves)``: the params tree, the flat leaves taken
    from ``loaded``, and the paths kept from the seed.

  Raises:
    ValueError (one line): a fresh prefix names no leaf, or a leaf outside
    ``fresh`` is missing from ``loaded``, extra there, or of another shape or
    dtype. The first such leaf (in path order) is named, with how to fix it.
  """
  reference = tree_lib.flatten(seed_weights)
  prefixes = [tuple(p.strip("/").split("/")) for p in fresh]
  for text, prefix in zip(fresh, prefixes):
    if not any(path[:len(prefix)] == prefix for path in reference):
      raise ValueError(f"config.weights_from_fresh names {text!r}, which is no leaf of "
                       f"{model_name}'s params; its leaves: "
                       f"{', '.join(tree_lib.path_str(p) for p in sorted(reference))}")
  problems = []
  for path in sorted(set(reference) | set(loaded)):
    if _under(path, prefixes):
      continue
    name = tree_lib.path_str(path)
    module = tree_lib.path_str(path[:-1]) or name
    if path not in loaded:
      problems.append(
          f"{source} lacks leaf {name} of {model_name}: a checkpoint of another model? "
          "config.model and config.model_options must be those it was trained with; "
          f"or keep that leaf from the seed with --config.weights_from_fresh='(\"{module}\",)'")
    elif path not in reference:
      problems.append(
          f"{source} holds leaf {name}, which {model_name} has not: a checkpoint of "
          "another model; config.model and config.model_options must be those it was "
          "trained with")
    else:
      want, got = reference[path], np.asarray(loaded[path])
      if tuple(got.shape) != tuple(np.shape(want)):
        problems.append(
            f"leaf {name} is {tuple(got.shape)} in {source}, {tuple(np.shape(want))} in "
            f"{model_name}: another model or output width (check config.model, "
            "config.model_options, config.num_outputs); a head of another width is kept "
            f"from the seed with --config.weights_from_fresh='(\"{module}\",)'")
      elif got.dtype != jnp.result_type(want):
        problems.append(
            f"leaf {name} is {got.dtype} in {source}, {jnp.result_type(want)} in "
            f"{model_name}; save the checkpoint as {jnp.result_type(want)}")
  if problems:
    more = f" ({len(problems) - 1} more leaves differ)" if len(problems) > 1 else ""
    raise ValueError(problems[0] + more)
  used = {p: np.asarray(v) for p, v in loaded.items() if p in reference
          and not _under(p, prefixes)}
  fresh_leaves = tuple(tree_lib.path_str(p) for p in sorted(reference)
                       if _under(p, prefixes))
  flat = {p: (jnp.asarray(used[p]) if p in used else reference[p]) for p in reference}
  return tree_lib.unflatten(flat), used, fresh_leaves


def load(seed_weights: Any, path: str, *, task: int = -1, fresh: Sequence[str] = (),
         model_name: str = "the model") -> Pretrained:
  """The :class:`Pretrained` weights of ``path`` over the model whose seed
  tree is ``seed_weights`` (see :func:`read_params`, :func:`combine`).

  Example:
    >>> import tempfile, jax.numpy as jnp, orbax.checkpoint as ocp
    >>> import supsup_jax as ss
    >>> from supsup_jax import pretrained
    >>> model = ss.models.LeNet300100(num_outputs=10)
    >>> trained = ss.init_weights(model, 7, jnp.zeros((1, 28, 28, 1)), init="kaiming_normal")
    >>> path = tempfile.mkdtemp() + "/params"
    >>> with ocp.StandardCheckpointer() as checkpointer:
    ...   checkpointer.save(path, trained)
    >>> seed = ss.init_weights(model, 0, jnp.zeros((1, 28, 28, 1)))
    >>> p = pretrained.load(seed, path, fresh=("Dense_2",))
    >>> bool((p.weights["Dense_0"]["kernel"] == trained["Dense_0"]["kernel"]).all())
    True
    >>> p.fresh_leaves
    ('Dense_2/kernel',)
  """
  loaded, info = read_params(path, task)
  source = f"weights_from {path!r}"
  if info["model"]:
    source += f" (a {info['model']} run)"
  weights, used, fresh_leaves = combine(seed_weights, loaded, fresh=fresh, source=source,
                                        model_name=model_name)
  return Pretrained(weights=weights, source=info["source"], kind=info["kind"],
                    task=info["task"], step=info["step"], sha256=tree_sha256(used),
                    fresh_leaves=fresh_leaves)


def from_config(config: Any, seed_weights: Any) -> Pretrained | None:
  """The pretrained weights ``config.weights_from*`` name over the model's
  seed tree, or None when ``config.weights_from`` is empty (random weights)."""
  part = read_config(config)
  if not part["path"]:
    return None
  return load(seed_weights, part["path"], task=part["task"], fresh=part["fresh"],
              model_name=str(config.get("model") or "the model"))
