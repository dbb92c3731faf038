"""PAC-Net: Prune, Allocate, Calibrate transfer (Myung et al. 2022, arXiv 2206.05703).

1. Train the network on the source task (θ_s).
2. Prune: the ``pac_net.keep_fraction`` largest-``|θ_s|`` weights of each layer are
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

Config: ``config.pac_net.{source, target, keep_fraction, allocate_iterations}``
(step 3 trains ``allocate_iterations`` steps); source training, calibration,
fine-tuning and training from scratch take ``config.iterations`` steps each
with the top-level weight-training keys. Runs as a study of the
``subnetwork`` runner, resumable after each stage.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import plotting
from supsup_jax import models
from supsup_jax import optim
from supsup_jax import weights as weights_lib
from supsup_jax.subnetwork import fit
from supsup_jax.subnetwork import options
from supsup_jax.subnetwork import pruning

# name -> (dataset, classes or None, input shape)
PAIRS = {
    "mnist": ("mnist", None, (28, 28, 1)),
    "fashion_mnist": ("fashion_mnist", None, (28, 28, 1)),
    "cifar10_0_4": ("cifar10", (0, 1, 2, 3, 4), (32, 32, 3)),
    "cifar10_5_9": ("cifar10", (5, 6, 7, 8, 9), (32, 32, 3)),
    "cifar10": ("cifar10", None, (32, 32, 3)),
}

# Top-level keys the study reads (the runner refuses others); its own keys
# live in config.pac_net.
KEYS = ("data_dir", "download", "model", "model_options", "seed", "init", "optimizer",
        "learning_rate", "momentum", "weight_decay", "batch_size", "iterations", "pac_net")
SUBCONFIG_KEYS = ("source", "target", "keep_fraction", "allocate_iterations")
MOVED = {"source": "pac_net.source", "target": "pac_net.target",
         "pac_keep_fraction": "pac_net.keep_fraction",
         "pac_allocate_iterations": "pac_net.allocate_iterations"}


def check_pair(source: str, target: str) -> None:
  for role, name in (("source", source), ("target", target)):
    if name not in PAIRS:
      raise ValueError(f"config.pac_net.{role} {name!r} unknown; allowed: {', '.join(PAIRS)}")
  if PAIRS[source][2] != PAIRS[target][2]:
    raise ValueError(f"config.pac_net: source {source!r} has input shape {PAIRS[source][2]} "
                     f"but target {target!r} has {PAIRS[target][2]}; pick a pair with the "
                     "same shape")


def _masked(params, mask, key):
  del key
  return jax.tree.map(lambda w, m: w * m, params, mask)


def _calibrated(free, frozen, key):
  del key
  important, mask = frozen
  return jax.tree.map(lambda w_i, w_f, m: w_i * m + w_f * (1 - m), important, free, mask)


def validate(config) -> None:
  """Checks the study's keys (one-line errors) before anything is loaded."""
  options.refuse_moved(config, MOVED)
  pc = options.section(config, "pac_net", MOVED)
  options.known_keys(pc, "pac_net", SUBCONFIG_KEYS)
  check_pair(options.choice(pc, "source", PAIRS, "pac_net"),
             options.choice(pc, "target", PAIRS, "pac_net"))
  options.number(pc, "keep_fraction", "pac_net", low=0.0, high=1.0, low_open=True,
                 high_open=True)
  options.integer(pc, "allocate_iterations", "pac_net", low=0)
  options.integer(config, "iterations", low=1)
  options.weight_training(config)


def planned_steps(config) -> int:
  return 4 * int(config.iterations) + int(config.pac_net.allocate_iterations)


def run(config, session: fit.Session | None = None) -> dict:
  """The PAC-Net study of ``config``; returns its results (resumable through
  ``session`` after each stage)."""
  from supsup_jax.data.single_task import single_task_stream  # pylint: disable=import-outside-toplevel
  session = session or fit.Session()
  pc = config.pac_net
  keep = float(pc.keep_fraction)
  steps = int(config.iterations)
  data_dir = config.get("data_dir") or None
  streams = {}
  for role in ("source", "target"):
    ds, classes, _ = PAIRS[pc[role]]
    streams[role] = single_task_stream(ds, config.seed, data_dir,
                                       bool(config.get("download", False)), classes)
  if streams["source"].input_shape != streams["target"].input_shape:
    raise ValueError(f"source and target input shapes differ: "
                     f"{streams['source'].input_shape} vs {streams['target'].input_shape}")
  n_out = max(streams["source"].num_classes, streams["target"].num_classes)
  model = models.make_model(config.model, n_out, **dict(config.get("model_options") or {}))
  example = np.zeros((1, *streams["source"].input_shape), np.float32)
  theta0 = weights_lib.init_weights(model, int(config.seed), example, init=config.init)
  opt = optim.make_optimizer(config.optimizer, config.learning_rate, momentum=config.momentum,
                             weight_decay=config.weight_decay)
  bs = int(config.batch_size)
  train_src = fit.make_trainer(model, _masked, opt, streams["source"], bs)
  train_tgt = fit.make_trainer(model, _masked, opt, streams["target"], bs)
  train_cal = fit.make_trainer(model, _calibrated, opt, streams["target"], bs)
  accuracy = fit.make_accuracy(model)
  test = {r: s.test_arrays(0) for r, s in streams.items()}

  def acc(params, role):
    return accuracy(params, *test[role])

  session.plan(planned_steps(config))
  key = jax.random.key(int(config.seed))
  ones = pruning.ones_like(theta0)
  saved = session.get("pac_net")
  tree, out, info, done = {}, {}, {}, []
  if saved is not None:
    tree, meta = dict(saved[0] or {}), saved[1]
    out, info, done = dict(meta["out"]), dict(meta["info"]), list(meta["stages"])

  def stage_done(name: str, keep_arrays) -> None:
    done.append(name)
    session.put("pac_net", {k: tree[k] for k in keep_arrays},
                {"out": out, "info": info, "stages": done},
                where=f"the end of PAC-Net's {name} stage")

  if "source" not in done:
    tree["theta_s"], _, _ = session.train(train_src, "PAC-Net source training", theta0, ones,
                                          jax.random.fold_in(key, 1), 0, steps)
    out["source_dense"] = acc(tree["theta_s"], "source")
    stage_done("source", ["theta_s"])
  if "allocate" not in done:
    # Prune: important = largest |θ_s| per layer.
    theta_s = tree["theta_s"]
    mask = pruning.top_fraction_mask(theta_s, keep)
    out["source_pruned_before_allocate"] = acc(_masked(theta_s, mask, None), "source")
    # Allocate: retrain the important weights alone on the source.
    alloc, _, _ = session.train(train_src, "PAC-Net allocate", _masked(theta_s, mask, None),
                                mask, jax.random.fold_in(key, 2), steps,
                                int(pc.allocate_iterations))
    tree["mask"], tree["important"] = mask, _masked(alloc, mask, None)
    out["source_after_allocate"] = acc(tree["important"], "source")
    info["kept_fraction_important"] = pruning.kept_fraction(mask)
    stage_done("allocate", ["theta_s", "mask", "important"])
  if "calibrate" not in done:
    # Calibrate: the other weights learn the target, the important ones frozen.
    mask, important = tree["mask"], tree["important"]
    free0 = _masked(theta0, jax.tree.map(lambda m: 1 - m, mask), None)
    free, _, _ = session.train(train_cal, "PAC-Net calibrate", free0, (important, mask),
                               jax.random.fold_in(key, 3), 0, steps)
    target_model = _calibrated(free, (important, mask), None)
    source_model = _masked(target_model, mask, None)  # the important weights alone
    same = all(bool(jnp.array_equal(a, b)) for a, b in
               zip(jax.tree.leaves(source_model), jax.tree.leaves(important)))
    out["source_after_calibrate"] = acc(source_model, "source")
    out["target_pac_net"] = acc(target_model, "target")
    out["important_weights_unchanged"] = same
    stage_done("calibrate", ["theta_s"])
  if "finetune" not in done:
    # Baseline: plain fine-tuning of θ_s on the target.
    ft, _, _ = session.train(train_tgt, "fine-tuning on the target", tree["theta_s"], ones,
                             jax.random.fold_in(key, 4), 0, steps)
    out["target_finetune"] = acc(ft, "target")
    out["source_after_finetune"] = acc(ft, "source")
    stage_done("finetune", [])
  if "scratch" not in done:
    scratch, _, _ = session.train(train_tgt, "target from scratch", theta0, ones,
                                  jax.random.fold_in(key, 5), 0, steps)
    out["target_from_scratch"] = acc(scratch, "target")
    stage_done("scratch", [])
  return {"experiment": config.get("experiment") or "pac_net", "method": "pac_net",
          "source": pc.source, "target": pc.target, "model": config.model,
          "kept_fraction_important": info["kept_fraction_important"], "accuracy": out}


def write_outputs(workdir: str, results: dict) -> None:
  _plot(os.path.join(workdir, "pac_net.png"), results["accuracy"], results["config"])


def summary(results: dict) -> str:
  return "\n".join(f"{k}: {v if isinstance(v, bool) else f'{100 * v:.2f}%'}"
                   for k, v in results["accuracy"].items())


def _plot(path, out, config):
  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  names = ["PAC-Net", "fine-tuning"]
  src = [out["source_after_calibrate"], out["source_after_finetune"]]
  tgt = [out["target_pac_net"], out["target_finetune"]]
  x = np.arange(2)
  ax.bar(x - 0.2, [100 * v for v in src], 0.4, label=f"source ({config['pac_net']['source']})")
  ax.bar(x + 0.2, [100 * v for v in tgt], 0.4, label=f"target ({config['pac_net']['target']})")
  ax.set_xticks(x, names)
  ax.set_ylim(0, 100)
  ax.set_ylabel("test accuracy (%)")
  ax.legend()
  fig.tight_layout()
  plotting.save_atomic(fig, path)
