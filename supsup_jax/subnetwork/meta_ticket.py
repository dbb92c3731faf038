"""Meta-ticket vs MAML on few-shot episodes (small scale).

Meta-ticket (Chijiwa, Yamaguchi, Kumagai & Ida, NeurIPS 2022, arXiv
2205.15619): instead of meta-learning the initial weights (MAML; Finn, Abbeel
& Levine 2017, arXiv 1703.03400), keep the randomly initialised weights φ and
meta-learn a binary mask m over them (top-k of real scores s, straight-through
as in edge-popup). Per episode the *inner loop* adapts the weights of the
subnetwork, φ' = φ⊙m - α ∇ L_support (a few SGD steps, starting from the
masked random weights every episode); the *outer loop* updates only the scores
s with the query loss of the adapted subnetwork, differentiated through the
inner loop. MAML's outer loop updates the initial weights instead.

Episodes: N-way k-shot tasks drawn in JAX from a dataset's classes (a random
class subset, labels in random order, k support and q query images per
class). Meta-training uses ``meta_train_dataset`` (default Fashion-MNIST),
meta-testing ``meta_test_dataset`` (default MNIST: a cross-domain test; both
have only 10 classes, so the same-domain test would reuse the meta-training
classes). Both methods see the same episodes (same keys).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import masks as masks_lib
from supsup_jax import metrics
from supsup_jax import models
from supsup_jax import weights as weights_lib
from supsup_jax.data import NORM, load_dataset
from supsup_jax.data import transforms


def class_table(dataset: str, split: str, data_dir=None, download=False):
  """(uint8 images [C, n, H, W, ch], mean, std): n images of each class (the
  smallest class size), classes in label order."""
  data = load_dataset(dataset, data_dir, download)
  x, y = data[split]
  y = np.asarray(y)
  n = min(int(np.sum(y == c)) for c in range(int(data["num_classes"])))
  table = np.stack([x[np.flatnonzero(y == c)[:n]] for c in range(int(data["num_classes"]))])
  mean, std = NORM[dataset]
  return jnp.asarray(table), mean, std


def make_sampler(table, mean, std, ways: int, shots: int, queries: int):
  """``sample(key) -> (xs [ways*shots, ...], ys, xq [ways*queries, ...], yq)``."""
  num_classes, per_class = table.shape[0], table.shape[1]
  if ways > num_classes:
    raise ValueError(f"ways={ways} exceeds the {num_classes} classes of the dataset")

  def sample(key):
    kc, ki = jax.random.split(key)
    classes = jax.random.permutation(kc, num_classes)[:ways]
    idx = jax.vmap(lambda k: jax.random.permutation(k, per_class)[:shots + queries])(
        jax.random.split(ki, ways))
    imgs = transforms.normalize(table[classes[:, None], idx], mean, std)  # [ways, s+q, H, W, ch]
    labels = jnp.broadcast_to(jnp.arange(ways)[:, None], (ways, shots + queries))
    xs = imgs[:, :shots].reshape(ways * shots, *imgs.shape[2:])
    xq = imgs[:, shots:].reshape(ways * queries, *imgs.shape[2:])
    return xs, labels[:, :shots].reshape(-1), xq, labels[:, shots:].reshape(-1)

  return sample


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_adapt(model, inner_lr: float):
  """``adapt(params, xs, ys, steps) -> params`` (plain SGD, differentiable)."""
  def adapt(params, xs, ys, steps):
    def body(p, _):
      g = jax.grad(lambda q: _ce(model.apply({"params": q}, xs), ys))(p)
      return jax.tree.map(lambda a, b: a - inner_lr * b, p, g), None
    return jax.lax.scan(body, params, None, length=steps)[0]
  return adapt


def run(config, workdir: str) -> dict:
  t0 = time.time()
  ways, shots, queries = int(config.ways), int(config.shots), int(config.queries)
  k = masks_lib.check_fraction(config.meta_ticket_k, "meta_ticket_k")
  data_dir = config.get("data_dir") or None
  tr = class_table(config.meta_train_dataset, "train", data_dir)
  te = class_table(config.meta_test_dataset, "test", data_dir)
  if tr[0].shape[2:] != te[0].shape[2:]:
    raise ValueError(f"meta-train images {tuple(tr[0].shape[2:])} and meta-test images "
                     f"{tuple(te[0].shape[2:])} differ in shape")
  sample_tr = make_sampler(*tr, ways, shots, queries)
  sample_te = make_sampler(*te, ways, shots, queries)
  model = models.make_model(config.model, ways, **dict(config.get("model_options") or {}))
  example = np.zeros((1, *tr[0].shape[2:]), np.float32)
  phi = weights_lib.init_weights(model, int(config.seed), example, init=config.init)
  adapt = make_adapt(model, float(config.inner_lr))
  inner, inner_test = int(config.inner_steps), int(config.inner_steps_test)
  batch = int(config.meta_batch)
  key = jax.random.key(int(config.seed))

  def masked(scores):
    return jax.tree.map(lambda w, m: w * m, phi,
                        masks_lib.masks_from_scores(scores, "topk", k))

  def query_loss(start, xs, ys, xq, yq):
    adapted = adapt(start, xs, ys, inner)
    return _ce(model.apply({"params": adapted}, xq), yq)

  methods = {
      # MAML: the outer loop learns the initial weights.
      "maml": (lambda theta: theta, phi, float(config.maml_outer_lr)),
      # Meta-ticket: the outer loop learns the scores of a mask over fixed φ.
      "meta_ticket": (masked, masks_lib.init_scores(phi, jax.random.fold_in(key, 7)),
                      float(config.meta_ticket_outer_lr)),
  }

  def evaluate(start_fn, meta_params):
    @jax.jit
    def one(ek):
      xs, ys, xq, yq = sample_te(ek)
      adapted = adapt(start_fn(meta_params), xs, ys, inner_test)
      return jnp.mean(jnp.argmax(model.apply({"params": adapted}, xq), -1) == yq)
    keys = jax.random.split(jax.random.fold_in(key, 99), int(config.eval_episodes))
    accs = np.asarray(jax.lax.map(one, keys))
    return float(accs.mean()), float(1.96 * accs.std() / np.sqrt(len(accs)))

  out = {}
  for name, (start_fn, meta0, outer_lr) in methods.items():
    opt = optax.adam(outer_lr)

    def meta_loss(mp, ek, start_fn=start_fn):
      eps = jax.vmap(sample_tr)(jax.random.split(ek, batch))
      start = start_fn(mp)
      return jnp.mean(jax.vmap(lambda xs, ys, xq, yq: query_loss(start, xs, ys, xq, yq))(*eps))

    @jax.jit
    def train(mp, opt_state, keys, meta_loss=meta_loss, opt=opt):
      def body(c, ek):
        mp, s = c
        loss, g = jax.value_and_grad(meta_loss)(mp, ek)
        u, s = opt.update(g, s, mp)
        return (optax.apply_updates(mp, u), s), loss
      (mp, opt_state), losses = jax.lax.scan(body, (mp, opt_state), keys)
      return mp, opt_state, losses

    before = evaluate(start_fn, meta0)
    # Same meta-training episodes for both methods: keys from the run seed only.
    keys = jax.random.split(jax.random.fold_in(key, 1), int(config.meta_iterations))
    mp, _, losses = train(meta0, opt.init(meta0), keys)
    after = evaluate(start_fn, mp)
    out[name] = {"accuracy": after[0], "ci95": after[1],
                 "accuracy_before_meta_training": before[0],
                 "final_meta_loss": float(np.mean(np.asarray(losses)[-50:]))}
    print(f"{name}: {100 * after[0]:.2f} +- {100 * after[1]:.2f}% "
          f"(before meta-training {100 * before[0]:.2f}%)", flush=True)
  results = {"experiment": config.get("experiment") or "meta_ticket", "runner": "subnetwork",
             "method": "meta_ticket",
             "episodes": f"{ways}-way {shots}-shot, {queries} queries per class; meta-train "
                         f"{config.meta_train_dataset} (train split), meta-test "
                         f"{config.meta_test_dataset} (test split)",
             "accuracy": out, "wall_time_s": time.time() - t0, "config": config.to_dict()}
  metrics.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results
