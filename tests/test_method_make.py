"""Every method's ``make`` (keyword arguments, no config) equals its ``from_config``.

Both learners get the same fixed inputs; their memories, task states and
traced programs (train_step, end_task, logits) must be identical. A small
batch-norm MLP on 8x8 inputs keeps it to seconds (and exercises per-task
batch-norm statistics); the learners train through ``make`` in the other
test files. Then: one bad value in each method's own sub-config fails in one
line naming the key.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from launch.configs import gg_permuted_mnist
from launch.configs import hopsupsup_split_mnist
from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import training
from supsup_jax import weights as weights_lib
from supsup_jax.masked_model import MaskedModel
from supsup_jax.methods import batche
from supsup_jax.methods import hopsupsup
from supsup_jax.methods import lower_bound
from supsup_jax.methods import make_learner
from supsup_jax.methods import packnet
from supsup_jax.methods import psp
from supsup_jax.methods import separate_heads
from supsup_jax.methods import supsup
from supsup_jax.methods import upper_bound

INPUT_SHAPE = (8, 8, 1)
HIDDEN = (16, 16)
STEPS = 2  # steps per task (PackNet prunes at round(prune_at * STEPS))


class _Stream:
  num_classes = 10
  input_shape = INPUT_SHAPE

  def train_size(self, task_id):
    del task_id
    return 1000


def _config(**overrides) -> ml_collections.ConfigDict:
  c = gg_permuted_mnist.get_config()
  c.num_tasks = 2
  c.iterations_per_task = STEPS
  c.model = "bn_swish_mlp"
  c.model_options.hidden = HIDDEN
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _model():
  return models.BNSwishMLP(hidden=HIDDEN, num_outputs=10)


def _unit(name):
  """The optimizer at unit rate, as the baselines take it (rates scale it)."""
  return training.make_optimizer(name, 1.0, momentum=0.9)


_COMMON = dict(input_shape=INPUT_SHAPE, num_classes=10)
_TRAINED = dict(_COMMON, capacity=2, learning_rate=1e-4)


def _supsup_kwargs():
  model = _model()
  example = np.zeros((1, *INPUT_SHAPE), np.float32)
  weights = weights_lib.init_weights(model, 0, example, init="signed_constant")
  stats = weights_lib.init_model_state(model, example)["batch_stats"]
  masked = MaskedModel(model, masks_lib.MaskSpec("threshold", 0.5), 10)
  return supsup.make(masked, weights, training.make_optimizer("rmsprop", 1e-4, momentum=0.9),
                     capacity=2, initial_batch_stats=stats, keep_scores=True,
                     detect_seed=0)


# name -> (learner from keyword arguments, config overrides for from_config)
KWARGS = {
    "supsup": (_supsup_kwargs, {}),
    "lower_bound": (lambda: lower_bound.make(_model(), 0, _unit("rmsprop"), **_COMMON,
                                             learning_rate=1e-4), {}),
    "upper_bound": (lambda: upper_bound.make(_model(), 0, _unit("rmsprop"), **_TRAINED), {}),
    "separate_heads": (lambda: separate_heads.make(_model(), 0, _unit("adam"), **_TRAINED),
                       {}),
    "separate_heads_randw": (lambda: separate_heads.make(
        _model(), 0, _unit("adam"), **_TRAINED, random_trunk=True), {}),
    "batche": (lambda: batche.make(_model(), 0, _unit("adam"), **_TRAINED, seed=0), {}),
    "batche_randw": (lambda: batche.make(_model(), 0, _unit("adam"), **_TRAINED, seed=0,
                                         random_w=True), {}),
    "abatche": (lambda: batche.make(_model(), 0, _unit("sgd"), **_TRAINED, seed=0,
                                    adapt_learning_rate=0.05, inference="oneshot"),
                {"trained_net.adapt_optimizer": "sgd",
                 "trained_net.adapt_learning_rate": 0.05, "abatche.inference": "oneshot"}),
    "psp": (lambda: psp.make(_model(), 0, _unit("rmsprop"), **_TRAINED, seed=0), {}),
    "packnet": (lambda: packnet.make(
        _model(), 0, training.make_optimizer("rmsprop", 1e-4, momentum=0.9), **_COMMON,
        num_tasks=2, steps_per_task=STEPS, prune_fraction=0.25, prune_at=0.5),
                {"packnet.prune_fraction": 0.25, "packnet.prune_at": 0.5}),
}


def _trace(learner):
  """What the learner holds and computes on fixed inputs: its initial memory,
  a task state, its summary, and the traced programs (jaxprs and their
  constants) of train_step, end_task, logits and (ABatchE) infer_task at a
  traced task id. Equal programs on equal inputs give bit-equal results, so
  comparing them checks the arithmetic without compiling either learner."""
  x = jax.random.normal(jax.random.key(0), (16, *INPUT_SHAPE))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
  memory = learner.init_memory()
  ts = learner.init_task(memory, 1, jax.random.key(1))
  task = jnp.int32(1)
  programs = [jax.make_jaxpr(learner.train_step)(memory, ts, x, y),
              jax.make_jaxpr(learner.end_task)(memory, ts, task),
              jax.make_jaxpr(learner.logits)(memory, task, x)]
  if learner.name == "abatche":  # (SupSup's task inference has no batch-norm path)
    programs.append(jax.make_jaxpr(learner.infer_task)(memory, jnp.int32(2), x[None]))
  return ([str(p.jaxpr) for p in programs], [p.consts for p in programs],
          memory, ts, learner.summary(memory, 2))


def _assert_identical(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for u, v in zip(la, lb):
    if isinstance(u, str):
      assert u == v
    elif isinstance(u, jax.Array) and jax.dtypes.issubdtype(u.dtype, jax.dtypes.prng_key):
      np.testing.assert_array_equal(jax.random.key_data(u), jax.random.key_data(v))
    else:
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_make_from_keywords_equals_from_config(name):
  build, overrides = KWARGS[name]
  from_kwargs = build()
  from_config = make_learner(name, _config(**overrides), _Stream())
  assert from_kwargs.name == from_config.name
  _assert_identical(_trace(from_kwargs), _trace(from_config))


def test_hopsupsup_make_from_keywords_equals_from_config():
  c = hopsupsup_split_mnist.get_config()
  c.model_options.hidden = HIDDEN
  c.hopfield.rule = "hebbian"
  c.hopfield.gamma = 2e-3
  from_config = make_learner("hopsupsup", c, _Stream())
  from_kwargs = hopsupsup.make(
      hidden=HIDDEN, num_outputs=10, num_classes=10, input_shape=INPUT_SHAPE, rule="hebbian",
      recovery=hopsupsup.RecoveryConfig(gamma=2e-3))
  _assert_identical(_trace(from_kwargs), _trace(from_config))


# One bad value in each method's own part: (method, key, value, message).
BAD = [
    ("supsup", "supsup.transfer", "yes", "config.supsup.transfer must be True or False, got 'yes'"),
    ("lower_bound", "trained_net.weight_learning_rate", -1.0,
     "config.trained_net.weight_learning_rate must be a number in (0, inf), got -1.0"),
    ("upper_bound", "trained_net.init", "zeros",
     "config.trained_net.init 'zeros' unknown; allowed: " + ", ".join(weights_lib.INITS)),
    ("separate_heads", "trained_net.adapt_optimizer", "lion",
     "config.trained_net.adapt_optimizer 'lion' unknown; allowed: rmsprop, adam, sgd"),
    ("batche", "trained_net.adapt_learning_rate", float("nan"),
     "config.trained_net.adapt_learning_rate must be a number in (0, inf), got nan"),
    ("abatche", "abatche.inference", "nope",
     "config.abatche.inference 'nope' unknown; allowed: entropy, oneshot"),
    ("psp", "trained_net.weight_learning_rate", float("inf"),
     "config.trained_net.weight_learning_rate must be a number in (0, inf), got inf"),
    ("packnet", "packnet.prune_at", 1.5,
     "config.packnet.prune_at must be a number in (0, 1], got 1.5"),
    ("hopsupsup", "hopfield.rule", "oja",
     "config.hopfield.rule 'oja' unknown; allowed: storkey, hebbian"),
]


@pytest.mark.parametrize("method,key,value,message", BAD, ids=[b[0] for b in BAD])
def test_bad_sub_config_value_one_line(method, key, value, message):
  c = hopsupsup_split_mnist.get_config() if method == "hopsupsup" else _config()
  part, leaf = key.split(".")
  values = c[part].to_dict()
  values[leaf] = value
  c[part] = ml_collections.ConfigDict(values)  # bypasses the field's type check
  with pytest.raises(ValueError) as e:
    make_learner(method, c, _Stream())
  assert str(e.value) == message


def test_old_top_level_name_is_refused():
  c = _config()
  c.packnet_prune_at = 0.5
  with pytest.raises(ValueError, match=r"^config.packnet_prune_at is now config.packnet.prune_at$"):
    make_learner("packnet", c, _Stream())
  c = _config()
  c.packnet.prune_fractoin = 0.5
  with pytest.raises(ValueError, match="^config.packnet has no key 'prune_fractoin'; "
                     "allowed: prune_at, prune_fraction$"):
    make_learner("packnet", c, _Stream())
