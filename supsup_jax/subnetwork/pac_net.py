"""PAC-Net: Prune, Allocate, Calibrate transfer (Myung et al. 2022, arXiv 2206.05703).

1. Train the network on the source task (θ_s).
2. Prune: the ``pac_keep_fraction`` largest-``|θ_s|`` weights of each layer are
   the *important* ones (mask M).
3. Allocate: retrain the source task with only the important weights
   (θ_s * M), so they alone hold the source knowledge.
4. Calibrate: on the target task, train only the other weights (1 - M),
   starting from their initial values θ0, with the important ones frozen.

The source model afterwards is the important weights alone (bit-identical to
the end of step 3, so its accuracy is kept exactly); the target model is all
weights. Baseline: plain fine-tuning of θ_s on the target (all weights),
whose source accuracy is then measured with the same network.

The head (output layer) is shared: source and target both have 10 classes
(MNIST -> Fashion-MNIST, or CIFAR-10 0-4 -> 5-9 relabelled 0..4 each).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import metrics
from supsup_jax import models
from supsup_jax import weights as weights_lib
from supsup_jax.subnetwork import fit
from supsup_jax.subnetwork import pruning

# name -> (dataset, classes or None, input shape)
PAIRS = {
    "mnist": ("mnist", None, (28, 28, 1)),
    "fashion_mnist": ("fashion_mnist", None, (28, 28, 1)),
    "cifar10_0_4": ("cifar10", (0, 1, 2, 3, 4), (32, 32, 3)),
    "cifar10_5_9": ("cifar10", (5, 6, 7, 8, 9), (32, 32, 3)),
    "cifar10": ("cifar10", None, (32, 32, 3)),
}


def check_pair(source: str, target: str) -> None:
  for role, name in (("source", source), ("target", target)):
    if name not in PAIRS:
      raise ValueError(f"config.{role} {name!r} unknown; allowed: {', '.join(PAIRS)}")
  if PAIRS[source][2] != PAIRS[target][2]:
    raise ValueError(f"source {source!r} has input shape {PAIRS[source][2]} but target "
                     f"{target!r} has {PAIRS[target][2]}; pick a pair with the same shape")


def _masked(params, mask, key):
  del key
  return jax.tree.map(lambda w, m: w * m, params, mask)


def _calibrated(free, frozen, key):
  del key
  important, mask = frozen
  return jax.tree.map(lambda w_i, w_f, m: w_i * m + w_f * (1 - m), important, free, mask)


def run(config, workdir: str) -> dict:
  from supsup_jax.data.single_task import single_task_stream  # pylint: disable=import-outside-toplevel
  from supsup_jax.training import make_optimizer  # pylint: disable=import-outside-toplevel
  check_pair(config.source, config.target)
  keep = float(config.pac_keep_fraction)
  if not 0.0 < keep < 1.0:
    raise ValueError(f"pac_keep_fraction must be in (0, 1), got {keep!r}")
  steps = int(config.iterations)
  if steps <= 0 or int(config.pac_allocate_iterations) < 0:
    raise ValueError("iterations must be >= 1 and pac_allocate_iterations >= 0")
  t0 = time.time()
  data_dir = config.get("data_dir") or None
  streams = {}
  for role in ("source", "target"):
    ds, classes, _ = PAIRS[config[role]]
    streams[role] = single_task_stream(ds, config.seed, data_dir,
                                       bool(config.get("download", False)), classes)
  if streams["source"].input_shape != streams["target"].input_shape:
    raise ValueError(f"source and target input shapes differ: "
                     f"{streams['source'].input_shape} vs {streams['target'].input_shape}")
  n_out = max(streams["source"].num_classes, streams["target"].num_classes)
  model = models.make_model(config.model, n_out, **dict(config.get("model_options") or {}))
  example = np.zeros((1, *streams["source"].input_shape), np.float32)
  theta0 = weights_lib.init_weights(model, int(config.seed), example, init=config.init)
  opt = make_optimizer(config.optimizer, config.learning_rate, momentum=config.momentum,
                       weight_decay=config.weight_decay)
  bs = int(config.batch_size)
  train_src = fit.make_trainer(model, _masked, opt, streams["source"], bs)
  train_tgt = fit.make_trainer(model, _masked, opt, streams["target"], bs)
  train_cal = fit.make_trainer(model, _calibrated, opt, streams["target"], bs)
  accuracy = fit.make_accuracy(model)
  test = {r: s.test_arrays(0) for r, s in streams.items()}

  def acc(params, role):
    return accuracy(params, *test[role])

  key = jax.random.key(int(config.seed))
  ones = pruning.ones_like(theta0)
  theta_s, _, _ = train_src(theta0, ones, jax.random.fold_in(key, 1), 0, steps)
  out = {"source_dense": acc(theta_s, "source")}
  # Prune: important = largest |θ_s| per layer.
  mask = pruning.top_fraction_mask(theta_s, keep)
  out["source_pruned_before_allocate"] = acc(_masked(theta_s, mask, None), "source")
  # Allocate: retrain the important weights alone on the source.
  alloc, _, _ = train_src(_masked(theta_s, mask, None), mask, jax.random.fold_in(key, 2),
                          steps, int(config.pac_allocate_iterations))
  important = _masked(alloc, mask, None)
  out["source_after_allocate"] = acc(important, "source")
  # Calibrate: the other weights learn the target, the important ones frozen.
  free0 = _masked(theta0, jax.tree.map(lambda m: 1 - m, mask), None)
  free, _, _ = train_cal(free0, (important, mask), jax.random.fold_in(key, 3), 0, steps)
  target_model = _calibrated(free, (important, mask), None)
  source_model = _masked(target_model, mask, None)  # the important weights alone
  same = all(bool(jnp.array_equal(a, b)) for a, b in
             zip(jax.tree.leaves(source_model), jax.tree.leaves(important)))
  out["source_after_calibrate"] = acc(source_model, "source")
  out["target_pac_net"] = acc(target_model, "target")
  out["important_weights_unchanged"] = same
  # Baseline: plain fine-tuning of θ_s on the target.
  ft, _, _ = train_tgt(theta_s, ones, jax.random.fold_in(key, 4), 0, steps)
  out["target_finetune"] = acc(ft, "target")
  out["source_after_finetune"] = acc(ft, "source")
  scratch, _, _ = train_tgt(theta0, ones, jax.random.fold_in(key, 5), 0, steps)
  out["target_from_scratch"] = acc(scratch, "target")
  results = {"experiment": config.get("experiment") or "pac_net", "runner": "subnetwork",
             "method": "pac_net", "source": config.source, "target": config.target,
             "model": config.model, "kept_fraction_important": pruning.kept_fraction(mask),
             "accuracy": out, "wall_time_s": time.time() - t0, "config": config.to_dict()}
  metrics.write_json_atomic(os.path.join(workdir, "results.json"), results)
  _plot(os.path.join(workdir, "pac_net.png"), out, config)
  for k, v in out.items():
    print(f"{k}: {v if isinstance(v, bool) else f'{100 * v:.2f}%'}")
  return results


def _plot(path, out, config):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4))
  names = ["PAC-Net", "fine-tuning"]
  src = [out["source_after_calibrate"], out["source_after_finetune"]]
  tgt = [out["target_pac_net"], out["target_finetune"]]
  x = np.arange(2)
  ax.bar(x - 0.2, [100 * v for v in src], 0.4, label=f"source ({config.source})")
  ax.bar(x + 0.2, [100 * v for v in tgt], 0.4, label=f"target ({config.target})")
  ax.set_xticks(x, names)
  ax.set_ylim(0, 100)
  ax.set_ylabel("test accuracy (%)")
  ax.legend()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)
