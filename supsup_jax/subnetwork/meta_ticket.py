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
class). Meta-training uses ``meta_ticket.train_dataset`` (default
Fashion-MNIST), meta-testing ``meta_ticket.test_dataset`` (default MNIST: a
cross-domain test; both have only 10 classes, so the same-domain test would
reuse the meta-training classes). Both methods see the same episodes (same
keys).

Config: ``config.meta_ticket.{train_dataset, test_dataset, ways, shots,
queries, inner_lr, inner_steps, inner_steps_test, meta_batch,
meta_iterations, maml_outer_lr, outer_lr, keep_fraction, eval_episodes}``;
top level: ``model``, ``init`` (φ), ``seed``. Runs as a study of the
``subnetwork`` runner: meta-training in chunks (non-finite guard), resumable
after each method and, with ``checkpoint_every_steps``, inside
meta-training.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import state_io
from supsup_jax import weights as weights_lib
from supsup_jax.data import NORM, load_dataset
from supsup_jax.data import transforms
from supsup_jax.subnetwork import fit
from supsup_jax.subnetwork import options
from supsup_jax import losses

# Top-level keys the study reads (the runner refuses others); its own keys
# live in config.meta_ticket.
KEYS = ("data_dir", "download", "model", "model_options", "seed", "init", "meta_ticket")
SUBCONFIG_KEYS = ("train_dataset", "test_dataset", "ways", "shots", "queries", "inner_lr",
                  "inner_steps", "inner_steps_test", "meta_batch", "meta_iterations",
                  "maml_outer_lr", "outer_lr", "keep_fraction", "eval_episodes")
MOVED = {"meta_train_dataset": "meta_ticket.train_dataset",
         "meta_test_dataset": "meta_ticket.test_dataset",
         "meta_ticket_k": "meta_ticket.keep_fraction",
         "meta_ticket_outer_lr": "meta_ticket.outer_lr",
         "maml_outer_lr": "meta_ticket.maml_outer_lr",
         **{k: f"meta_ticket.{k}" for k in ("ways", "shots", "queries", "inner_lr",
                                            "inner_steps", "inner_steps_test", "meta_batch",
                                            "meta_iterations", "eval_episodes")}}
# Image shape and classes of the datasets episodes can come from (checked
# before anything is loaded; the loaded data is checked again).
DATASETS = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10),
            "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100)}
# The last meta-training steps whose mean query loss is reported.
FINAL_LOSS_STEPS = 50


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


_ce = losses.cross_entropy


def make_adapt(model, inner_lr: float):
  """``adapt(params, xs, ys, steps) -> params`` (plain SGD, differentiable)."""
  def adapt(params, xs, ys, steps):
    def body(p, _):
      g = jax.grad(lambda q: _ce(model.apply({"params": q}, xs), ys))(p)
      return jax.tree.map(lambda a, b: a - inner_lr * b, p, g), None
    return jax.lax.scan(body, params, None, length=steps)[0]
  return adapt


def validate(config) -> None:
  """Checks the study's keys (one-line errors) before anything is loaded."""
  options.refuse_moved(config, MOVED)
  mt = options.section(config, "meta_ticket", MOVED)
  options.known_keys(mt, "meta_ticket", SUBCONFIG_KEYS)
  train = options.choice(mt, "train_dataset", DATASETS, "meta_ticket")
  test = options.choice(mt, "test_dataset", DATASETS, "meta_ticket")
  if DATASETS[train][0] != DATASETS[test][0]:
    raise ValueError(f"config.meta_ticket: train_dataset {train!r} has images of shape "
                     f"{DATASETS[train][0]} but test_dataset {test!r} {DATASETS[test][0]}; "
                     "pick two of the same shape")
  options.integer(mt, "ways", "meta_ticket", low=2,
                  high=min(DATASETS[train][1], DATASETS[test][1]),
                  why=" (classes of the episodes' datasets)")
  for key in ("shots", "queries", "meta_batch", "meta_iterations", "eval_episodes"):
    options.integer(mt, key, "meta_ticket", low=1)
  for key in ("inner_steps", "inner_steps_test"):
    options.integer(mt, key, "meta_ticket", low=0)
  for key in ("inner_lr", "maml_outer_lr", "outer_lr"):
    options.number(mt, key, "meta_ticket", low=0.0, low_open=True)
  masks_lib.check_fraction(mt.get("keep_fraction"), "config.meta_ticket.keep_fraction")
  options.model_and_seed(config)
  options.choice(config, "init", weights_lib.INITS)


def run(config, session: fit.Session | None = None) -> dict:
  """MAML and Meta-ticket on the episodes of ``config``; returns the results
  (resumable through ``session`` after each method and inside meta-training)."""
  session = session or fit.Session()
  mt = config.meta_ticket
  ways, shots, queries = int(mt.ways), int(mt.shots), int(mt.queries)
  k = masks_lib.check_fraction(mt.keep_fraction, "config.meta_ticket.keep_fraction")
  data_dir = config.get("data_dir") or None
  download = bool(config.get("download", False))
  tr = class_table(mt.train_dataset, "train", data_dir, download)
  te = class_table(mt.test_dataset, "test", data_dir, download)
  if tr[0].shape[2:] != te[0].shape[2:]:
    raise ValueError(f"meta-train images {tuple(tr[0].shape[2:])} and meta-test images "
                     f"{tuple(te[0].shape[2:])} differ in shape")
  sample_tr = make_sampler(*tr, ways, shots, queries)
  sample_te = make_sampler(*te, ways, shots, queries)
  model = models.make_model(config.model, ways, **dict(config.get("model_options") or {}))
  example = np.zeros((1, *tr[0].shape[2:]), np.float32)
  phi = weights_lib.init_weights(model, int(config.seed), example, init=config.init)
  adapt = make_adapt(model, float(mt.inner_lr))
  inner, inner_test = int(mt.inner_steps), int(mt.inner_steps_test)
  batch, iterations = int(mt.meta_batch), int(mt.meta_iterations)
  key = jax.random.key(int(config.seed))

  def masked(scores):
    return jax.tree.map(lambda w, m: w * m, phi,
                        masks_lib.masks_from_scores(scores, "topk", k))

  def query_loss(start, xs, ys, xq, yq):
    adapted = adapt(start, xs, ys, inner)
    return _ce(model.apply({"params": adapted}, xq), yq)

  methods = {
      # MAML: the outer loop learns the initial weights.
      "maml": (lambda theta: theta, phi, float(mt.maml_outer_lr)),
      # Meta-ticket: the outer loop learns the scores of a mask over fixed φ.
      "meta_ticket": (masked, masks_lib.init_scores(phi, jax.random.fold_in(key, 7)),
                      float(mt.outer_lr)),
  }

  def evaluate(start_fn, meta_params):
    @jax.jit
    def one(ek):
      xs, ys, xq, yq = sample_te(ek)
      adapted = adapt(start_fn(meta_params), xs, ys, inner_test)
      return jnp.mean(jnp.argmax(model.apply({"params": adapted}, xq), -1) == yq)
    keys = jax.random.split(jax.random.fold_in(key, 99), int(mt.eval_episodes))
    accs = np.asarray(jax.lax.map(one, keys))
    return float(accs.mean()), float(1.96 * accs.std() / np.sqrt(len(accs)))

  session.plan(len(methods) * iterations)
  saved = session.get("meta_ticket")
  out = dict(saved[1]["out"]) if saved is not None else {}
  # Same meta-training episodes for both methods: keys from the run seed only.
  episode_keys = jax.random.split(jax.random.fold_in(key, 1), iterations)
  for name, (start_fn, meta0, outer_lr) in methods.items():
    if name in out:
      continue
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
      return mp, opt_state, losses, fit.all_finite(losses) & fit.all_finite(mp)

    before = evaluate(start_fn, meta0)
    unit = f"{name} meta-training"
    mp, opt_state, losses, done = meta0, opt.init(meta0), [], 0
    partial = session.get(unit + "#train")
    if partial is not None:  # resumed inside this meta-training
      mp = state_io.from_saveable(partial[0]["meta_params"], meta0)
      opt_state = state_io.from_saveable(partial[0]["opt_state"], opt_state)
      losses, done = list(partial[1]["losses"]), int(partial[1]["done"])
    while done < iterations:
      n = session.chunk(done, iterations)
      mp, opt_state, chunk_losses, finite = train(mp, opt_state, episode_keys[done:done + n])
      session.check_finite(finite, f"{unit}, steps {done}..{done + n}")
      losses.extend(float(x) for x in np.asarray(chunk_losses))
      done += n
      if session.advance(unit, n, done, iterations, float(np.mean(losses[-n:]))) \
          and done < iterations:
        session.put(unit + "#train", {"meta_params": state_io.to_saveable(mp),
                                      "opt_state": state_io.to_saveable(opt_state)},
                    {"losses": losses, "done": done}, where=f"{unit} step {done}")
    after = evaluate(start_fn, mp)
    out[name] = {"accuracy": after[0], "ci95": after[1],
                 "accuracy_before_meta_training": before[0],
                 "final_meta_loss": float(np.mean(
                     np.asarray(losses, np.float32)[-FINAL_LOSS_STEPS:]))}
    print(f"{name}: {100 * after[0]:.2f} +- {100 * after[1]:.2f}% "
          f"(before meta-training {100 * before[0]:.2f}%)", flush=True)
    session.drop(unit + "#train")
    session.put("meta_ticket", None, {"out": out}, where=f"the end of {unit}")
  return {"experiment": config.get("experiment") or "meta_ticket", "method": "meta_ticket",
          "episodes": f"{ways}-way {shots}-shot, {queries} queries per class; meta-train "
                      f"{mt.train_dataset} (train split), meta-test "
                      f"{mt.test_dataset} (test split)",
          "accuracy": out}
