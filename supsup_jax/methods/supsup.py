"""SupSup: one supermask per task over fixed random weights.

Wortsman, Ramanujan et al., "Supermasks in Superposition", NeurIPS 2020
(arXiv 2006.14769). The weights are drawn from a seed and never trained
(``trains_weights=False``); each task trains real-valued scores whose top-k
or threshold mask selects a subnetwork, and stores only the mask (1 bit per
weight) in a bit-packed bank. Variants by option: ER per-layer top-k budget,
SupSup-Transfer (a new task's scores start from the mean of the finished
tasks' scores), task inference by the one-shot or binary alpha-gradient
(H or G objective), and detection of new tasks for training without task
identity (NNs).

memory (fixed shapes, ``capacity`` task slots)::

  {"weights": frozen weight tree,
   "bank": BankState,                      # the masks, 1 bit per weight
   "batch_stats": per-task BN stats [capacity, ...] (or {}),
   "score_sum": sum of finished tasks' scores (transfer),
   "kept_scores": [capacity, ...] scores (only with keep_scores)}

On a mesh of several devices (``place_memory``) the bank's rows are split
over all of them and the rest is replicated; task inference and new-task
detection then run where the rows are (:mod:`supsup_jax.sharded_inference`,
chosen at call time from the rows' sharding), and ``end_task``/``logits``
touch only the owner's row. With ``bank_split="units"`` every device holds
the whole bank instead and one-shot inference splits the test units over
the devices (:func:`supsup_jax.sharded_inference.alpha_grads_by_units`).

task_state: :class:`supsup_jax.training.TaskState`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import conv
from supsup_jax import distributed
from supsup_jax import inference
from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import optim
from supsup_jax import pretrained
from supsup_jax import sharded_inference
from supsup_jax import training
from supsup_jax import weights as weights_lib
from supsup_jax import learner as learner_lib
from supsup_jax.learner import Learner
from supsup_jax.masked_model import MaskedModel
from supsup_jax.methods import options

# NNs (the authors' code): alpha = 1/K over K = max(masks so far, MIN_CANDIDATES)
# candidates; the data is new when max softmax(-dH/dalpha) < (1 + 2^-3) / K.
MIN_CANDIDATES = 5
NEW_TASK_EPSILON = 2.0 ** -3


def _stack_zeros(tree, capacity: int):
  return jax.tree.map(lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.result_type(x)),
                      tree)


def make(masked: MaskedModel, weights, optimizer, *, capacity: int,
         initial_batch_stats=None, transfer: bool = False, keep_scores: bool = False,
         inference_algorithm: str = "oneshot", inference_objective: str = "entropy",
         detect_seed: int = 0, provenance=None, bank_split: str = "rows") -> Learner:
  """The SupSup learner over ``masked`` and its frozen ``weights``.

  Args:
    masked: the model and how scores become masks.
    weights: the fixed weight tree, never changed: random from a seed
      (:func:`supsup_jax.weights.init_weights`) or pretrained
      (:mod:`supsup_jax.pretrained`).
    optimizer: optax transformation over the scores.
    capacity: task slots in memory (the bank's rows).
    initial_batch_stats: every task's starting BN statistics ({} if no BN).
    transfer: start a task's scores from the mean of the finished tasks'.
    keep_scores: also keep every task's real-valued scores in memory.
    inference_algorithm: task inference (GN/NN): ``"oneshot"`` (one
      alpha-gradient) or ``"binary"`` (halve the candidates).
    inference_objective: the objective of task inference: ``"entropy"``
      (H) or ``"g"`` (G); see :mod:`supsup_jax.inference`.
    detect_seed: seeds the untrained candidate masks of new-task detection.
    provenance: where ``weights`` come from when not from the seed
      (:attr:`supsup_jax.pretrained.Pretrained.provenance`), for results.json
      and the resume check.
    bank_split: how ``place_memory`` lays the bank out on a mesh of several
      devices: ``"rows"`` (its rows split over the devices, each bank pass
      where the rows are: a bank larger than one device's memory works) or
      ``"units"`` (a whole copy on every device; one-shot inference splits
      the test units over the devices instead, each reading the whole bank:
      every device busy however full the bank is; for devices that share
      memory, a CPU split into one device per core).

  Returns:
    The learner; memory as in the module docstring (bank rows and per-task
    statistics ``[capacity, ...]``); ``infer_task``, ``detect_task`` and
    ``reopen_task`` set. Its ``train_step`` takes images
    ``[B, *input_shape]`` and int32 labels ``[B]``; its task state is a
    :class:`supsup_jax.training.TaskState`.

  Raises:
    ValueError: an unknown ``inference_algorithm`` or ``inference_objective``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import supsup_jax as ss
    >>> from supsup_jax.methods import supsup
    >>> model = ss.models.LeNet300100(num_outputs=10)
    >>> weights = ss.init_weights(model, 0, jnp.zeros((1, 28, 28, 1)))
    >>> masked = ss.MaskedModel(model, ss.MaskSpec("topk", 0.5), num_classes=10)
    >>> learner = supsup.make(masked, weights, optax.rmsprop(1e-3), capacity=4)
    >>> learner.name, learner.trains_weights
    ('supsup', False)
  """
  if inference_algorithm not in inference.ALGORITHMS:
    raise ValueError(f"inference_algorithm {inference_algorithm!r} unknown; allowed: "
                     f"{', '.join(inference.ALGORITHMS)}")
  inference.check_objective(inference_objective)
  if bank_split not in BANK_SPLITS:
    raise ValueError(f"bank_split {bank_split!r} unknown; allowed: {', '.join(BANK_SPLITS)}")
  initial_batch_stats = dict(initial_batch_stats or {})
  template = masks_lib.init_scores(weights, jax.random.key(0))
  layout = bank_lib.Layout.from_tree(template)
  step_fn = training.make_train_step(masked, optimizer)

  def init_memory():
    memory = {"weights": weights,
              "bank": bank_lib.init(template, capacity, packed=True),
              "batch_stats": _stack_zeros(initial_batch_stats, capacity),
              "score_sum": jax.tree.map(jnp.zeros_like, template)}
    if keep_scores:
      memory["kept_scores"] = _stack_zeros(template, capacity)
    return memory

  def init_task(memory, task_id, key):
    del task_id  # the key already depends on it
    scores = None
    finished = int(memory["bank"].num_tasks)
    if transfer and finished:
      scores = jax.tree.map(lambda s: s / finished, memory["score_sum"])
    return training.init_task_state(masked, memory["weights"], optimizer, key,
                                    batch_stats=initial_batch_stats, scores=scores)

  def train_step(memory, state, images, labels):
    return step_fn(memory["weights"], state, images, labels)

  def end_task(memory, state, task_id):
    task_id = jnp.asarray(task_id, jnp.int32)
    bank = memory["bank"]
    is_new = task_id >= bank.num_tasks
    out = dict(memory)
    out["bank"] = bank_lib.put(bank, task_id, masked.mask_spec(state.scores))
    out["batch_stats"] = jax.tree.map(lambda s, x: s.at[task_id].set(x),
                                      memory["batch_stats"], dict(state.batch_stats))
    out["score_sum"] = jax.tree.map(lambda acc, s: jnp.where(is_new, acc + s, acc),
                                    memory["score_sum"], state.scores)
    if keep_scores:
      out["kept_scores"] = jax.tree.map(lambda k, s: k.at[task_id].set(s),
                                        memory["kept_scores"], state.scores)
    return out

  def task_stats(memory, task_id):
    return jax.tree.map(lambda s: s[task_id], memory["batch_stats"])

  def logits(memory, task_id, images):
    masks = bank_lib.get(memory["bank"], task_id)
    out, _ = masked.logits_with_masks(memory["weights"], masks,
                                      task_stats(memory, task_id), images, False)
    return out

  def place_memory(memory, mesh):
    """On a mesh of several devices the bank's rows are split over all of
    them (each device holds capacity / devices rows; inference runs where
    the rows are), unless ``bank_split="units"``; everything else is
    replicated."""
    out = distributed.place_replicated(
        {k: v for k, v in memory.items() if k != "bank"}, mesh)
    out["bank"] = (sharded_inference.shard(memory["bank"], mesh)
                   if mesh.size > 1 and bank_split == "rows"
                   else distributed.place_replicated(memory["bank"], mesh))
    return out

  def infer_task_with(objective: str):
    """Task inference with ``objective`` (the learner's own, or another one
    to compare against, e.g. the G objective beside H)."""
    inference.check_objective(objective)

    def infer(memory, num_learned, images_many):
      mesh = sharded_inference.rows_mesh(memory["bank"])
      if mesh is not None:  # rows split over devices: the pass runs where they are
        fn = (sharded_inference.oneshot_many if inference_algorithm == "oneshot"
              else sharded_inference.binary_many)
        return fn(masked, memory["weights"], memory["bank"], images_many, mesh,
                  objective=objective, num_tasks=num_learned)
      mesh = sharded_inference.units_mesh(memory["bank"])
      if mesh is not None and inference_algorithm == "oneshot":
        # A whole bank on every device: the units are split over them.
        grads = sharded_inference.alpha_grads_by_units(
            masked, memory["weights"], memory["bank"], images_many, mesh,
            objective=objective, num_tasks=num_learned)
        return np.asarray(jnp.argmin(grads, axis=-1))
      if inference_algorithm == "oneshot":
        grads = inference.alpha_grads_many(masked, memory["weights"], memory["bank"],
                                           images_many, objective=objective,
                                           num_tasks=num_learned)
        return np.asarray(jnp.argmin(grads, axis=-1))
      return inference.binary_many(masked, memory["weights"], memory["bank"], images_many,
                                   objective=objective, num_tasks=num_learned)
    return infer

  infer_task = infer_task_with(inference_objective)

  def _mixed_grad(memory, n_fresh, denom, images):
    weights_ = memory["weights"]
    bank = memory["bank"]
    keys = jax.random.split(jax.random.key(detect_seed), MIN_CANDIDATES)
    fresh = jax.vmap(lambda k: layout.flatten(masked.mask_spec(
        masks_lib.init_scores(weights_, k))))(keys)             # [5, num_bits]
    use = (jnp.arange(MIN_CANDIDATES) < n_fresh).astype(jnp.float32)
    mixed = (bank.counts.astype(jnp.float32) + use @ fresh) / denom
    g = layout.flatten(inference.effective_weight_grad(
        masked, weights_, layout.unflatten(mixed), images, "entropy"))
    return g, fresh

  @jax.jit
  def _detect_grads(memory, n_fresh, denom, images):
    g, fresh = _mixed_grad(memory, n_fresh, denom, images)
    return bank_lib.dot(memory["bank"], g), fresh @ g

  @jax.jit
  def _detect_grad_sharded(memory, n_fresh, denom, images):
    g, fresh = _mixed_grad(memory, n_fresh, denom, images)
    return g, fresh @ g

  def detect_task(memory, num_learned, images):
    """(is_new, best): the NNs rule of the authors' code. The superposition
    holds K = max(n, 5) candidates at alpha = 1/K each: the n learned masks
    and, while n < 5, K - n untrained (random) masks."""
    n = int(num_learned)
    if n == 0:
      return True, 0
    k = max(n, MIN_CANDIDATES)
    mesh = sharded_inference.rows_mesh(memory["bank"])
    if mesh is None:
      learned, fresh = _detect_grads(memory, jnp.int32(k - n), jnp.float32(k), images)
    else:  # the bank's products where its rows are; n scalars gathered
      g, fresh = _detect_grad_sharded(memory, jnp.int32(k - n), jnp.float32(k), images)
      learned = distributed.gathered(sharded_inference.dot(memory["bank"], g, mesh))
    g = np.concatenate([np.asarray(learned)[:n], np.asarray(fresh)[:k - n]])
    nu = np.exp(-(g - g.min()))
    nu /= nu.sum()
    best = int(np.argmax(nu))
    is_new = bool(nu[best] < (1 + NEW_TASK_EPSILON) / k) or best >= n
    return is_new, min(best, n - 1)

  def reopen_task(memory, task_id, key):
    """Resumes training a stored task from its mask (scores are not kept, so
    they restart at +-c, c the mean |initial score| of the layer, with the
    signs (threshold) or the ranking (top-k) of the stored mask)."""
    state = training.init_task_state(masked, memory["weights"], optimizer, key,
                                     batch_stats=task_stats(memory, task_id))
    stored = bank_lib.get(memory["bank"], task_id)
    if masked.mask_spec.kind == "threshold":
      scores = jax.tree.map(lambda s, m: jnp.mean(jnp.abs(s)) * (2 * m - 1),
                            state.scores, stored)
    else:
      scores = jax.tree.map(lambda s, m: jnp.mean(jnp.abs(s)) * (1 + m),
                            state.scores, stored)
    return state.replace(scores=scores, opt_state=optimizer.init(scores))

  def summary(memory, num_learned):
    per_task = memory["bank"].bytes_per_task
    return {"bytes_per_task": per_task, "mask_bank_bytes": per_task * int(num_learned)}

  return Learner(name="supsup", num_classes=masked.num_classes,
                 init_memory=init_memory, init_task=init_task, train_step=train_step,
                 end_task=end_task, logits=logits, summary=summary,
                 trains_weights=False, infer_task=infer_task,
                 infer_task_with=infer_task_with,
                 detect_task=detect_task, reopen_task=reopen_task,
                 place_memory=place_memory,
                 provenance=None if provenance is None else dict(provenance))


SUPSUP_DEFAULTS = {
    "transfer": False,    # a task's scores start from the mean of the finished tasks'
    "keep_scores": None,  # None -> only when num_tasks <= 20 (memory)
    "bank_split": "rows",  # on a mesh: "rows" (rows over the devices) | "units" (see make)
}
BANK_SPLITS = ("rows", "units")


def read_config(config) -> dict:
  """``config.supsup`` validated: ``{"transfer": bool, "keep_scores": bool,
  "bank_split": "rows" | "units"}`` (``keep_scores`` None ->
  ``config.num_tasks <= 20``)."""
  part = options.part(config, "supsup", SUPSUP_DEFAULTS)
  options.flag("config.supsup.transfer", part["transfer"])
  if part["keep_scores"] is None:
    part["keep_scores"] = bool(config.num_tasks <= 20)
  options.flag("config.supsup.keep_scores", part["keep_scores"])
  options.choice("config.supsup.bank_split", part["bank_split"], BANK_SPLITS)
  return part


def check_config(config) -> None:
  """Everything SupSup reads from a config, checked before any data is loaded:
  the learner keys, ``config.supsup``, the mask (``mask_kind``, ``sparsity``,
  ``er_sparsity``) and, outside GG, task inference (``inference_algorithm``,
  ``inference_objective``, ``compare_objectives``)."""
  options.check_learner_keys(config)
  read_config(config)
  options.number("config.sparsity", config.get("sparsity"))
  masks_lib.MaskSpec(config.mask_kind, config.sparsity)  # validates kind and k
  if config.get("er_sparsity"):
    options.number("config.er_sparsity", config.er_sparsity, low=0)  # ER's s, e.g. 8
  if config.get("scenario", "GG") != "GG":
    options.choice("config.inference_algorithm", config.inference_algorithm,
                   inference.ALGORITHMS)
    for objective in (config.inference_objective, *(config.get("compare_objectives") or ())):
      inference.check_objective(objective)


def from_config(config, stream) -> Learner:
  """SupSup for an experiment config: the common keys of
  ``launch/configs/common.py`` and ``config.supsup`` (``transfer``,
  ``keep_scores``); ``config.weights_from`` (with ``weights_from_task``,
  ``weights_from_fresh``) masks pretrained weights instead of the seed's
  (:mod:`supsup_jax.pretrained`)."""
  part = read_config(config)
  num_outputs = config.get("num_outputs") or stream.num_classes
  if num_outputs < stream.num_classes:
    raise ValueError(f"config.num_outputs={num_outputs} is smaller than the "
                     f"{stream.num_classes} classes per task of {config.dataset}")
  model_kwargs = dict(config.get("model_options") or {})
  if conv.use_fast_conv(config.get("fast_conv", True), config.model):
    model_kwargs["conv_general_dilated"] = conv.conv_general_dilated
  model = models.make_model(config.model, num_outputs, **model_kwargs)
  example = np.zeros((1, *stream.input_shape), np.float32)
  weights = weights_lib.init_weights(model, config.seed, example, init=config.init)
  # config.weights_from: the fixed weights from a checkpoint (Piggyback), any
  # leaves named by config.weights_from_fresh kept from the seed.
  loaded = pretrained.from_config(config, weights)
  if loaded is not None:
    weights = loaded.weights
  batch_stats = weights_lib.init_model_state(model, example).get("batch_stats", {})
  if config.mask_kind == "topk" and config.get("er_sparsity"):
    k = masks_lib.er_fractions(masks_lib.init_scores(weights, jax.random.key(0)),
                               float(config.er_sparsity))
  else:
    k = float(config.sparsity)
  masked = MaskedModel(model, masks_lib.MaskSpec(config.mask_kind, k), stream.num_classes)
  optimizer = optim.make_optimizer(
      config.optimizer, config.learning_rate, momentum=config.momentum,
      weight_decay=config.weight_decay, schedule=config.schedule,
      total_steps=learner_lib.steps_per_task(config, stream),
      warmup_steps=int(config.get("warmup_steps") or 0))
  # NNs allocates masks as it detects new data, up to the loop's cap.
  capacity = (int((config.get("nns") or {}).get("max_masks", 2500))
              if config.scenario == "NNs" else int(config.num_tasks))
  return make(masked, weights, optimizer, capacity=capacity,
              initial_batch_stats=batch_stats, transfer=part["transfer"],
              keep_scores=part["keep_scores"],
              inference_algorithm=config.inference_algorithm,
              inference_objective=config.inference_objective, detect_seed=config.seed,
              provenance=None if loaded is None else loaded.provenance,
              bank_split=part["bank_split"])

