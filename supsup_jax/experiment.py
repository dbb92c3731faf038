"""One continual-learning run: train a supermask per task, evaluate, record.

:func:`run` is what ``launch/main.py`` calls with a config and a workdir. It
trains the tasks in order (or ``tasks_in_parallel`` at a time with vmap),
stores every task's mask in a bit-packed :class:`MaskBank`, evaluates at the
configured checkpoints with the task given (GG) or inferred (GNs/GNu), writes
``results.json``, ``accuracy.csv`` and ``accuracy.png`` to the workdir, and
checkpoints after each task (and every ``checkpoint_every_steps`` steps) so that
the same command on the same workdir resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import data as data_lib
from supsup_jax import evaluation
from supsup_jax import masks as masks_lib
from supsup_jax import metrics
from supsup_jax import models
from supsup_jax import training
from supsup_jax import weights as weights_lib

SCENARIOS = ("GG", "GNs", "GNu")


def _validate(config: ml_collections.ConfigDict) -> None:
  """Checks the config before any data is loaded or anything is traced."""
  def need(cond, msg):
    if not cond:
      raise ValueError(msg)
  need(config.scenario in SCENARIOS,
       f"config.scenario {config.scenario!r} unknown; allowed: {', '.join(SCENARIOS)}")
  need(isinstance(config.num_tasks, int) and config.num_tasks >= 1,
       f"config.num_tasks must be a positive int, got {config.num_tasks!r}")
  need(config.batch_size >= 1, f"config.batch_size must be >= 1, got {config.batch_size!r}")
  its, eps = config.get("iterations_per_task"), config.get("epochs_per_task")
  need((its or 0) > 0 or (eps or 0) > 0,
       "set config.iterations_per_task or config.epochs_per_task to a positive number")
  need(config.model in models.MODELS,
       f"config.model {config.model!r} unknown; allowed: {', '.join(models.MODELS)}")
  need(config.init in weights_lib.INITS,
       f"config.init {config.init!r} unknown; allowed: {', '.join(weights_lib.INITS)}")
  training.MaskSpec(config.mask_kind, config.sparsity)  # validates kind and k
  training.make_optimizer(config.optimizer, config.learning_rate,
                          schedule=config.schedule)  # validates names
  need(config.tasks_in_parallel >= 1,
       f"config.tasks_in_parallel must be >= 1, got {config.tasks_in_parallel!r}")
  if config.scenario != "GG":
    evaluation.check_inference_config(config)
  # Points beyond num_tasks are dropped, so a config's paper checkpoints
  # (10, 50, ...) still work with a smaller --config.num_tasks.
  for t in config.get("eval_after_tasks") or ():
    need(isinstance(t, int) and t >= 1,
         f"config.eval_after_tasks entries must be ints >= 1, got {t!r}")


def _eval_points(config) -> list[int]:
  points = sorted(set(int(t) for t in (config.get("eval_after_tasks") or ())
                      if t <= config.num_tasks) | {config.num_tasks})
  return points


@dataclasses.dataclass
class Setup:
  stream: Any
  model: Any
  masked: training.MaskedModel
  weights: Any
  initial_batch_stats: Any
  optimizer: Any
  steps_per_task: int
  mask_spec: training.MaskSpec


def build(config: ml_collections.ConfigDict) -> Setup:
  """Data stream, model, frozen weights, optimizer for a config."""
  _validate(config)
  data_seed = config.get("data_seed")
  stream = data_lib.make_stream(config.dataset, num_tasks=config.num_tasks,
                                seed=config.seed if data_seed is None else data_seed,
                                data_dir=config.get("data_dir") or None,
                                download=bool(config.get("download", False)),
                                **dict(config.get("dataset_options") or {}))
  num_outputs = config.get("num_outputs") or stream.num_classes
  if num_outputs < stream.num_classes:
    raise ValueError(f"config.num_outputs={num_outputs} is smaller than the "
                     f"{stream.num_classes} classes of {config.dataset}")
  model_kwargs = dict(config.get("model_options") or {})
  if config.get("fast_conv", False) and config.model not in ("lenet300100", "fc10241024", "bn_swish_mlp"):
    from supsup_jax import conv  # pylint: disable=import-outside-toplevel
    model_kwargs["conv_general_dilated"] = conv.conv_general_dilated
  model = models.make_model(config.model, num_outputs, **model_kwargs)
  example = np.zeros((1, *stream.input_shape), np.float32)
  weights = weights_lib.init_weights(model, config.seed, example, init=config.init)
  model_state = weights_lib.init_model_state(model, example)
  batch_stats = model_state.get("batch_stats", {})
  if config.mask_kind == "topk" and config.get("er_sparsity"):
    k = masks_lib.er_fractions(masks_lib.init_scores(weights, jax.random.key(0)),
                               float(config.er_sparsity))
  else:
    k = float(config.sparsity)
  mask_spec = training.MaskSpec(config.mask_kind, k)
  masked = training.MaskedModel(model, mask_spec, stream.num_classes)
  if config.get("iterations_per_task"):
    steps = int(config.iterations_per_task)
  else:
    steps = int(math.ceil(config.epochs_per_task * stream.train_size(0) / config.batch_size))
  optimizer = training.make_optimizer(
      config.optimizer, config.learning_rate, momentum=config.momentum,
      weight_decay=config.weight_decay, schedule=config.schedule,
      total_steps=steps, warmup_steps=int(config.get("warmup_steps") or 0))
  return Setup(stream, model, masked, weights, batch_stats, optimizer, steps, mask_spec)


def make_chunk_fn(setup: Setup, batch_size: int, parallel: bool) -> Callable:
  """Jitted ``(weights, data, state, task_id, n) -> (state, metrics)`` running
  ``n`` train steps in one call (static n); vmapped over tasks if ``parallel``.
  """
  step_fn = training.make_train_step(setup.masked, setup.optimizer)
  stream = setup.stream
  if not hasattr(stream, "train_batch_fn_args"):
    # Streams that are not jittable (SplitImageNet through tf.data): one
    # jitted step per batch, batches fetched on the host.
    jstep = jax.jit(step_fn, donate_argnums=1)

    def host_loop(weights, data, state, task_id, num_steps):
      del data
      if parallel:
        raise ValueError(f"{stream.name} cannot train tasks in parallel "
                         "(its batches are not jittable); set tasks_in_parallel=1")
      mets = []
      for _ in range(num_steps):
        images, labels = stream.train_batch(int(task_id), int(state.step), batch_size)
        state, m = jstep(weights, state, images, labels)
        mets.append(m)
      return state, jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *mets)
    return host_loop
  batch_fn, _ = stream.train_batch_fn_args(batch_size)

  def one_task(weights, data, state, task_id, num_steps):
    def body(state, _):
      images, labels = batch_fn(data, task_id, state.step)
      return step_fn(weights, state, images, labels)
    state, mets = jax.lax.scan(body, state, None, length=num_steps)
    return state, jax.tree.map(jnp.mean, mets)

  if parallel:
    one_task_v = jax.vmap(one_task, in_axes=(None, None, 0, 0, None))
    return jax.jit(one_task_v, static_argnums=4, donate_argnums=2)
  return jax.jit(one_task, static_argnums=4, donate_argnums=2)


def _task_key(seed: int, task_id: int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x5C0E), task_id)


class _Progress:
  def __init__(self, total_steps: int, done_steps: int, num_tasks: int):
    self.start = time.time()
    self.total, self.done0, self.done = total_steps, done_steps, done_steps
    self.num_tasks = num_tasks

  def report(self, task: int, step: int, steps: int, mets: Mapping, tasks_label=None):
    elapsed = time.time() - self.start
    rate = (self.done - self.done0) / max(elapsed, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float("nan")
    label = tasks_label or f"task {task + 1}/{self.num_tasks}"
    logging.info("%s step %d/%d loss %.4f acc %.3f | elapsed %s ETA %s", label,
                 step, steps, float(mets["loss"]), float(mets["accuracy"]),
                 _fmt(elapsed), _fmt(eta))


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _state_to_tree(state: training.TaskState) -> dict:
  return {"scores": state.scores, "opt_state": jax.tree.map(np.asarray, state.opt_state),
          "batch_stats": state.batch_stats, "step": np.asarray(state.step),
          "key": np.asarray(jax.random.key_data(state.key))}


def _tree_to_state(tree: Mapping, template: training.TaskState) -> training.TaskState:
  opt_leaves = jax.tree.leaves(tree["opt_state"])
  opt_state = jax.tree.unflatten(jax.tree.structure(template.opt_state),
                                 [jnp.asarray(x) for x in opt_leaves])
  return training.TaskState(
      scores=jax.tree.map(jnp.asarray, tree["scores"]), opt_state=opt_state,
      batch_stats=jax.tree.map(jnp.asarray, tree.get("batch_stats") or {}),
      step=jnp.asarray(tree["step"], jnp.int32),
      key=jax.random.wrap_key_data(jnp.asarray(tree["key"])))


class _DropLibraryInfo:
  """absl-logging filter: keeps orbax's INFO chatter out of the progress log."""

  def filter(self, record) -> bool:  # pylint: disable=g-bare-generic
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def _quiet_libraries() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the experiment of ``config``; returns the results dict."""
  t_start = time.time()
  _quiet_libraries()
  config = ml_collections.ConfigDict(config)
  _validate(config)
  os.makedirs(workdir, exist_ok=True)
  cfg_dict = config.to_dict()
  ckpt = ckpt_lib.RunCheckpointer(workdir, cfg_dict)
  try:
    return _run(config, workdir, ckpt, cfg_dict, t_start)
  finally:
    ckpt.close()  # joins orbax's writer threads, also on errors


def _run(config, workdir, ckpt, cfg_dict, t_start) -> dict:
  restored = ckpt.restore()  # refuses a workdir of another config early
  setup = build(config)
  stream, masked, weights = setup.stream, setup.masked, setup.weights
  num_tasks, steps = config.num_tasks, setup.steps_per_task
  template_scores = masks_lib.init_scores(weights, jax.random.key(0))
  bank = bank_lib.MaskBank(template_scores, packed=True)
  eval_points = _eval_points(config)
  keep_scores = bool(config.get("keep_scores", num_tasks <= 20))

  # Everything that survives a restart.
  task_batch_stats: dict[str, Any] = {}
  kept_scores: dict[str, Any] = {}
  score_sum = jax.tree.map(jnp.zeros_like, template_scores)
  rec = {"eval_after": [], "rows": [], "inference_rows": [], "just_trained": [],
         "task_wall_s": [], "elapsed_s": 0.0}
  next_task, partial_state = 0, None
  if restored is not None:
    tree, meta = restored
    bank.load_state_dict(tree["bank"])
    task_batch_stats = dict(tree.get("task_batch_stats") or {})
    kept_scores = dict(tree.get("kept_scores") or {})
    score_sum = jax.tree.map(jnp.asarray, tree["score_sum"])
    rec = meta["record"]
    next_task = int(meta["next_task"])
    if tree.get("partial") is not None and meta.get("partial_tasks"):
      partial_state = tree["partial"]
    logging.info("Resuming %s from task %d/%d (workdir %s)", config.experiment,
                 next_task + 1, num_tasks, workdir)

  parallel = int(config.tasks_in_parallel)
  chunk_single = make_chunk_fn(setup, config.batch_size, parallel=False)
  chunk_multi = make_chunk_fn(setup, config.batch_size, parallel=True) if parallel > 1 else None
  data_arrays = getattr(stream, "device_arrays", None)
  evaluator = evaluation.Evaluator(config, setup, bank)
  log_every = max(1, int(config.log_every_steps))
  ckpt_every = int(config.get("checkpoint_every_steps") or 0)
  progress = _Progress(num_tasks * steps, next_task * steps, num_tasks)

  def save(next_task_id, partial=None, partial_tasks=None):
    tree = {"bank": bank.state_dict(), "task_batch_stats": task_batch_stats,
            "kept_scores": kept_scores, "score_sum": score_sum}
    if partial is not None:
      tree["partial"] = partial
    ckpt.save(next_task_id * (steps + 1) + (int(partial["step"].max()) if partial else 0),
              jax.tree.map(np.asarray, tree),
              {"next_task": next_task_id, "record": rec, "config": cfg_dict,
               "partial_tasks": partial_tasks})

  run_start = time.time() - float(rec.get("elapsed_s", 0.0))
  task = next_task
  while task < num_tasks:
    group = list(range(task, min(task + parallel, num_tasks)))
    t_task = time.time()
    states = []
    for t in group:
      init_scores = None
      if config.get("transfer") and group[0] > 0:
        # SupSup-Transfer: start from the mean scores of the finished tasks.
        init_scores = jax.tree.map(lambda s: s / group[0], score_sum)
      states.append(training.init_task_state(
          masked, weights, setup.optimizer, _task_key(config.seed, t),
          batch_stats=setup.initial_batch_stats, scores=init_scores))
    if partial_state is not None and len(group) > 1:
      state = _tree_to_state(partial_state, training.stack_states(states))
    elif partial_state is not None:
      state = _tree_to_state(partial_state, states[0])
    else:
      state = training.stack_states(states) if len(group) > 1 else states[0]
    partial_state = None
    task_ids = jnp.asarray(group, jnp.int32)
    done = int(np.max(np.asarray(state.step)))
    label = (f"tasks {group[0] + 1}-{group[-1] + 1}/{num_tasks}" if len(group) > 1
             else f"task {group[0] + 1}/{num_tasks}")
    while done < steps:
      n = min(log_every, steps - done)
      if ckpt_every:
        n = min(n, ckpt_every - done % ckpt_every)
      if len(group) > 1:
        state, mets = chunk_multi(weights, data_arrays, state, task_ids, n)
        mets = jax.tree.map(jnp.mean, mets)
      else:
        state, mets = chunk_single(weights, data_arrays, state, task_ids[0], n)
      done += n
      progress.done += n * len(group)
      progress.report(group[0], done, steps, mets, label)
      if ckpt_every and done % ckpt_every == 0 and done < steps:
        rec["elapsed_s"] = time.time() - run_start
        save(group[0], _state_to_tree(state), group)
    # Task(s) finished: store masks, stats, scores.
    for i, t in enumerate(group):
      st = training.unstack_state(state, i) if len(group) > 1 else state
      bank.add(setup.mask_spec(st.scores))
      if st.batch_stats:
        task_batch_stats[str(t)] = jax.tree.map(np.asarray, st.batch_stats)
      if keep_scores:
        kept_scores[str(t)] = jax.tree.map(np.asarray, st.scores)
      score_sum = jax.tree.map(jnp.add, score_sum, st.scores)
      rec["just_trained"].append(evaluator.task_given_accuracy(
          t, weights, task_batch_stats.get(str(t))))
    wall = (time.time() - t_task) / len(group)
    rec["task_wall_s"].extend([wall] * len(group))
    task = group[-1] + 1
    for point in eval_points:
      if group[0] < point <= task and point not in rec["eval_after"]:
        row, inf_row = evaluator.evaluate_all(point, weights, task_batch_stats)
        rec["eval_after"].append(point)
        rec["rows"].append(row)
        rec["inference_rows"].append(inf_row)
        if evaluator.comparison:
          rec.setdefault("compare", []).append(
              {obj: metrics.average_accuracy(list(accs.values()))
               for obj, accs in evaluator.comparison.items()})
          evaluator.comparison.clear()
        msg = f"after {point} tasks: average accuracy {metrics.average_accuracy(row):.4f}"
        if inf_row is not None:
          msg += f", task-inference accuracy {metrics.average_accuracy(inf_row):.4f}"
        logging.info(msg)
    rec["elapsed_s"] = time.time() - run_start
    save(task)

  results = _finish(config, workdir, rec, bank, time.time() - run_start, setup)
  logging.info("Done in %.1fs (this process %.1fs); results in %s",
               results["wall_time_s"], time.time() - t_start, workdir)
  return results


def _finish(config, workdir, rec, bank, wall, setup) -> dict:
  final_row = rec["rows"][-1]
  inf_rows = rec["inference_rows"] if config.scenario != "GG" else None
  results = {
      "experiment": config.experiment,
      "scenario": config.scenario,
      "num_tasks": config.num_tasks,
      "avg_accuracy": metrics.average_accuracy(final_row),
      "accuracy_matrix": rec["rows"],
      "eval_after_tasks": rec["eval_after"],
      "accuracy_just_trained": rec["just_trained"],
      "forgetting": metrics.forgetting(rec["just_trained"], final_row),
      "bytes_per_task": bank.bytes_per_task,
      "mask_bank_bytes": bank.nbytes,
      "steps_per_task": setup.steps_per_task,
      "wall_time_s": wall,
      "wall_time_per_task_s": rec["task_wall_s"],
      "device": str(jax.devices()[0].device_kind),
      "config": config.to_dict(),
  }
  if inf_rows is not None:
    results["task_inference_accuracy"] = metrics.average_accuracy(inf_rows[-1])
    results["task_inference_matrix"] = inf_rows
    results["avg_accuracy_by_eval"] = [metrics.average_accuracy(r) for r in rec["rows"]]
    results["task_inference_accuracy_by_eval"] = [
        metrics.average_accuracy(r) for r in inf_rows]
  if rec.get("compare"):
    # Task-inference accuracy of the other objectives at each evaluation point.
    results["task_inference_accuracy_other_objectives"] = rec["compare"]
  metrics.write_json_atomic(os.path.join(workdir, "results.json"), results)
  metrics.write_accuracy_csv(os.path.join(workdir, "accuracy.csv"),
                             rec["eval_after"], rec["rows"], inf_rows)
  metrics.plot_accuracy(os.path.join(workdir, "accuracy.png"), rec["eval_after"],
                        rec["rows"], f"{config.experiment} ({config.scenario})", inf_rows)
  return results
