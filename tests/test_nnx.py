"""Supermasks over Flax NNX modules: same weights/scores/masks API as Linen."""
import os
import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import supsup_jax as ss
from supsup_jax import data as data_lib
from supsup_jax import models
from supsup_jax import nnx_masks


class LeNetNamed(nnx.Module):
  """Bias-free LeNet 300-100 whose parameter paths equal the Linen model's."""

  def __init__(self, rngs: nnx.Rngs, num_outputs: int = 10):
    self.Dense_0 = nnx.Linear(784, 300, use_bias=False, rngs=rngs)  # pylint: disable=invalid-name
    self.Dense_1 = nnx.Linear(300, 100, use_bias=False, rngs=rngs)  # pylint: disable=invalid-name
    self.Dense_2 = nnx.Linear(100, num_outputs, use_bias=False, rngs=rngs)  # pylint: disable=invalid-name

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nnx.relu(self.Dense_0(x))
    x = nnx.relu(self.Dense_1(x))
    return self.Dense_2(x)


class LeNetList(nnx.Module):
  """The same network written the NNX way (paths layers/0/kernel, ...)."""

  def __init__(self, rngs: nnx.Rngs, num_outputs: int = 10):
    self.layers = nnx.List([nnx.Linear(784, 300, use_bias=False, rngs=rngs),
                            nnx.Linear(300, 100, use_bias=False, rngs=rngs),
                            nnx.Linear(100, num_outputs, use_bias=False, rngs=rngs)])

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


def _to_linen(weights_list):
  """layers/i/kernel -> Dense_i/kernel (copy into the Linen tree)."""
  return {f"Dense_{i}": {"kernel": w["kernel"]}
          for i, w in sorted(weights_list["layers"].items())}


X0 = jnp.zeros((1, 28, 28, 1))


@pytest.mark.parametrize("init", ["signed_constant", "kaiming_normal"])
def test_seeded_weights_equal_linen(init):
  _, params, _ = nnx.split(LeNetNamed(nnx.Rngs(0)), nnx.Param, ...)
  got = nnx_masks.init_weights(params, seed=7, init=init)
  want = ss.init_weights(models.LeNet300100(), seed=7, example_input=X0, init=init)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  # Abstract params (nnx.eval_shape) are enough.
  abstract = nnx.eval_shape(lambda: LeNetNamed(nnx.Rngs(0)))
  again = nnx_masks.init_weights(nnx.split(abstract, nnx.Param, ...)[1], seed=7, init=init)
  for g, w in zip(jax.tree.leaves(again), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_bad_input():
  params = nnx.state(LeNetList(nnx.Rngs(0)), nnx.Param)
  with pytest.raises(ValueError, match="unknown init 'xavier'"):
    nnx_masks.init_weights(params, seed=0, init="xavier")
  with pytest.raises(ValueError, match="seed must be an int"):
    nnx_masks.init_weights(params, seed=0.5)
  with pytest.raises(ValueError, match="expected an nnx.Module, nnx.State or dict"):
    nnx_masks.params_tree([1, 2])
  graphdef, _, rest = nnx.split(LeNetList(nnx.Rngs(0)), nnx.Param, ...)
  weights = nnx_masks.init_weights(params, seed=0)
  wrong = {"layers": {0: {"bias": jnp.ones((300,))}}}
  with pytest.raises(ValueError, match="no weight at"):
    nnx_masks.masked_call(graphdef, weights, wrong, rest, jnp.zeros((1, 28, 28, 1)))


def test_nnx_trained_with_masks_keeps_weights_and_matches_linen():
  """Train LeNet masks (NNX) on PermutedMNIST task 0: weights bit-identical,
  masked forward = Linen LeNet 300-100 with the same weights and masks."""
  stream = data_lib.make_stream("permuted_mnist", num_tasks=1, seed=0)
  model = LeNetList(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  weights = nnx_masks.init_weights(params, seed=0)
  before = jax.tree.map(lambda w: np.array(w, copy=True), weights)
  module_before = jax.tree.map(lambda w: np.array(w, copy=True),
                               nnx_masks.params_tree(model))
  scores = ss.init_scores(weights, jax.random.key(1))
  opt = optax.adam(1e-2)
  opt_state = opt.init(scores)

  def loss_fn(scores, x, y):
    masks = ss.masks_from_scores(scores, kind="topk", k=0.5)
    logits = nnx_masks.masked_call(graphdef, weights, masks, rest, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(scores, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(scores, x, y)
    updates, opt_state = opt.update(grads, opt_state, scores)
    return optax.apply_updates(scores, updates), opt_state, loss

  first = None
  for i in range(150):
    x, y = stream.train_batch(0, i, 128)
    scores, opt_state, loss = step(scores, opt_state, x, y)
    first = float(loss) if first is None else first
  assert float(loss) < 0.5 * first

  # The weights never changed, neither the tree nor the module's own params.
  for b, w in zip(jax.tree.leaves(before), jax.tree.leaves(weights)):
    np.testing.assert_array_equal(b, np.asarray(w))
  for b, w in zip(jax.tree.leaves(module_before),
                  jax.tree.leaves(nnx_masks.params_tree(model))):
    np.testing.assert_array_equal(b, np.asarray(w))

  masks = ss.masks_from_scores(scores, kind="topk", k=0.5)
  linen = models.LeNet300100()
  linen_params = ss.apply_masks(_to_linen(weights), _to_linen(masks))
  both = jax.jit(lambda x: (nnx_masks.masked_call(graphdef, weights, masks, rest, x),
                            linen.apply({"params": linen_params}, x)))
  correct = total = 0
  for i, (x, y) in enumerate(stream.test_batches(0, 1000)):
    if i == 3:
      break
    out_nnx, out_linen = both(x)
    np.testing.assert_allclose(np.asarray(out_nnx), np.asarray(out_linen),
                               rtol=1e-6, atol=1e-6)
    correct += int(jnp.sum(jnp.argmax(out_nnx, -1) == y))
    total += int(y.shape[0])
  # 150 Adam steps on a random LeNet's top-50 % mask: measured 0.886 on
  # the first 3000 test images.
  assert correct / total > 0.8, correct / total


def test_masked_call_returns_updated_batch_stats():
  """Other state (NNX BatchNorm statistics) goes in and comes back out."""

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.lin = nnx.Linear(4, 3, use_bias=False, rngs=rngs)
      self.bn = nnx.BatchNorm(3, use_scale=False, use_bias=False, rngs=rngs)

    def __call__(self, x):
      return self.bn(self.lin(x))

  graphdef, params, rest = nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)
  weights = nnx_masks.init_weights(params, seed=3)
  masks = ss.masks_from_scores(ss.init_scores(weights, jax.random.key(0)), "threshold")
  x = jax.random.normal(jax.random.key(2), (16, 4))
  out, new_rest = nnx_masks.masked_call(graphdef, weights, masks, rest, x,
                                        return_state=True)
  h = x @ (weights["lin"]["kernel"] * masks["lin"]["kernel"])
  mean = nnx.to_pure_dict(new_rest)["bn"]["mean"]
  # NNX BatchNorm: momentum 0.99 from a zero running mean.
  np.testing.assert_allclose(mean, 0.01 * h.mean(0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out, (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5),
                             rtol=1e-4, atol=1e-4)


def test_docs_nnx_example_runs():
  page = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "docs", "guide", "library.md")
  section = open(page).read().split("## Flax NNX models", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, "docs/guide/library.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["task_id"] == 0
  weights, params = namespace["weights"], namespace["params"]
  # The weights are the seeded ones and not the module's initial values.
  w0 = np.asarray(weights["layers"][0]["kernel"])
  assert set(np.unique(np.abs(w0))) == {np.float32(np.sqrt(2.0) / np.sqrt(784))}
  assert not np.array_equal(w0, np.asarray(nnx_masks.params_tree(params)["layers"][0]["kernel"]))
  assert namespace["bank"].bytes_per_task == (784 * 300 + 300 * 100 + 100 * 10 + 7) // 8
