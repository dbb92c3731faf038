"""Core: seeded weights, scores/masks as pytrees, straight-through gradients."""
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import optim
from supsup_jax import masked_model as ss_masked
from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import training
from supsup_jax import tree as tree_lib
from supsup_jax import weights as weights_lib

MNIST_X = np.zeros((1, 28, 28, 1), np.float32)


class UserModel(nn.Module):
  """A model that is not part of the library: biases, a conv and a LayerNorm."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.LayerNorm()(nn.relu(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(3)(x)


def _lenet_weights(seed=0, init="signed_constant", outputs=10):
  return weights_lib.init_weights(models.LeNet300100(outputs), seed, MNIST_X, init=init)


class WeightsTest(parameterized.TestCase):

  @parameterized.parameters(*weights_lib.INITS)
  def test_same_seed_bit_identical_other_seed_different(self, init):
    a = _lenet_weights(3, init)
    b = _lenet_weights(3, init)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x).view(np.uint32),
                                    np.asarray(y).view(np.uint32))
    if init != "unsigned_constant":
      c = _lenet_weights(4, init)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)):
        self.assertFalse(np.array_equal(np.asarray(x), np.asarray(y)))

  def test_signed_constant_values(self):
    w = _lenet_weights()
    for path, leaf in tree_lib.flatten(w).items():
      std = math.sqrt(2.0) / math.sqrt(leaf.shape[0])
      np.testing.assert_allclose(np.unique(np.abs(np.asarray(leaf))), [std], rtol=1e-6)
      frac_pos = float(np.mean(np.asarray(leaf) > 0))
      self.assertBetween(frac_pos, 0.45, 0.55, msg=str(path))

  def test_kaiming_normal_statistics(self):
    w = _lenet_weights(init="kaiming_normal")["Dense_0"]["kernel"]
    self.assertAlmostEqual(float(jnp.std(w)), math.sqrt(2.0 / 784), delta=0.002)
    self.assertAlmostEqual(float(jnp.mean(w)), 0.0, delta=0.001)

  def test_kaiming_uniform_bound(self):
    w = _lenet_weights(init="kaiming_uniform")["Dense_1"]["kernel"]
    bound = math.sqrt(2.0) * math.sqrt(3.0 / 300)
    self.assertLessEqual(float(jnp.max(jnp.abs(w))), bound)
    self.assertGreater(float(jnp.max(jnp.abs(w))), 0.95 * bound)

  def test_unknown_init(self):
    with self.assertRaisesRegex(ValueError, "unknown init 'xavier'.*signed_constant"):
      weights_lib.init_weights(models.LeNet300100(), 0, MNIST_X, init="xavier")

  def test_user_model_keeps_non_maskable_leaves(self):
    w = weights_lib.init_weights(UserModel(), 0, np.zeros((1, 8, 8, 1)))
    paths = tree_lib.maskable_paths(w)
    self.assertEqual(paths, [("Conv_0", "kernel"), ("Dense_0", "kernel")])
    # Biases and LayerNorm keep Flax's own initialisers (zeros / ones).
    np.testing.assert_array_equal(w["Dense_0"]["bias"], np.zeros(3))
    np.testing.assert_array_equal(w["LayerNorm_0"]["scale"], np.ones(4))


class MaskTest(parameterized.TestCase):

  @parameterized.product(k=[0.01, 0.1, 0.3, 0.5, 0.77, 1.0],
                         shape=[(784, 300), (3, 3, 64, 64), (7, 13), (100, 10)])
  def test_topk_keeps_round_k_n(self, k, shape):
    scores = jax.random.normal(jax.random.key(0), shape)
    mask = jax.jit(masks_lib.topk_mask, static_argnums=1)(scores, k)
    n = int(np.prod(shape))
    self.assertEqual(int(mask.sum()), max(1, math.floor(k * n + 0.5)))
    chex.assert_shape(mask, shape)
    # The kept entries are the largest |score|.
    kept = np.abs(np.asarray(scores))[np.asarray(mask) > 0]
    dropped = np.abs(np.asarray(scores))[np.asarray(mask) == 0]
    if dropped.size:
      self.assertGreaterEqual(kept.min(), dropped.max())

  def test_topk_ties_deterministic_lowest_index(self):
    scores = jnp.ones((10,))
    mask = masks_lib.topk_mask(scores, 0.3)
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])

  def test_threshold_matches_scores_ge_zero(self):
    scores = jnp.array([[-1.0, 0.0, 2.0], [1e-9, -1e-9, 3.0]])
    np.testing.assert_array_equal(masks_lib.threshold_mask(scores),
                                  (scores >= 0).astype(jnp.float32))

  @parameterized.parameters("threshold", "topk")
  def test_straight_through_gradient(self, kind):
    """dL/dscores equals dL/dmask (times sign(scores) for the |score| ranking)."""
    model = models.LeNet300100(10)
    weights = _lenet_weights()
    scores = masks_lib.init_scores(weights, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (8, 28, 28, 1))
    y = jnp.arange(8) % 10

    def loss_of_masks(masks):
      logits = model.apply({"params": masks_lib.apply_masks(weights, masks)}, x)
      return training.cross_entropy(logits, y)

    masks = masks_lib.masks_from_scores(scores, kind, 0.4)
    grad_masks = jax.grad(loss_of_masks)(masks)
    grad_scores = jax.grad(
        lambda s: loss_of_masks(masks_lib.masks_from_scores(s, kind, 0.4)))(scores)
    factor = (jax.tree.map(jnp.sign, scores) if kind == "topk"
              else jax.tree.map(jnp.ones_like, scores))
    expected = jax.tree.map(jnp.multiply, grad_masks, factor)
    chex.assert_trees_all_close(grad_scores, expected, rtol=1e-6, atol=1e-9)
    self.assertGreater(float(jnp.abs(grad_scores["Dense_0"]["kernel"]).sum()), 0)

  @parameterized.parameters(0.0, -0.1, 1.5, float("nan"), "half")
  def test_bad_sparsity(self, k):
    scores = {"Dense_0": {"kernel": jnp.ones((4, 4))}}
    with self.assertRaisesRegex(ValueError, r"k must be .*\(0, 1\]"):
      masks_lib.masks_from_scores(scores, "topk", k)

  def test_unknown_mask_kind(self):
    with self.assertRaisesRegex(ValueError, "unknown mask kind 'random'.*topk, threshold"):
      masks_lib.masks_from_scores({}, "random")

  def test_mismatched_mask_tree(self):
    weights = _lenet_weights()
    bad = {"Dense_9": {"kernel": jnp.ones((784, 300))}}
    with self.assertRaisesRegex(ValueError, "mask tree does not match.*Dense_9/kernel"):
      masks_lib.apply_masks(weights, bad)
    bad_shape = {"Dense_0": {"kernel": jnp.ones((300, 784))}}
    with self.assertRaisesRegex(ValueError, "Dense_0/kernel has shape"):
      masks_lib.apply_masks(weights, bad_shape)

  def test_er_budget(self):
    shapes = {"a": {"kernel": jnp.zeros((3, 3, 64, 128))},
              "b": {"kernel": jnp.zeros((8, 4))}}
    fr = masks_lib.er_fractions(shapes, 2.0)
    self.assertAlmostEqual(fr["a"]["kernel"], 2 * (64 + 128) / (64 * 128 * 9))
    self.assertEqual(fr["b"]["kernel"], 0.5)  # capped
    masks = masks_lib.masks_from_scores(
        jax.tree.map(lambda z: jax.random.normal(jax.random.key(0), z.shape), shapes),
        "topk", fr)
    self.assertEqual(int(masks["a"]["kernel"].sum()),
                     math.floor(fr["a"]["kernel"] * 3 * 3 * 64 * 128 + 0.5))

  def test_score_init_kaiming_uniform_a_sqrt5(self):
    scores = masks_lib.init_scores(_lenet_weights(), jax.random.key(0))
    s = scores["Dense_0"]["kernel"]
    bound = 1 / math.sqrt(784)
    self.assertLessEqual(float(jnp.abs(s).max()), bound)
    self.assertAlmostEqual(float(jnp.std(s)), bound / math.sqrt(3), delta=2e-4)
    chex.assert_trees_all_equal_shapes(scores, _lenet_weights())

  def test_masks_over_user_model(self):
    """Masks work on a Flax model defined outside the library."""
    model = UserModel()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    weights = weights_lib.init_weights(model, 0, x)
    scores = masks_lib.init_scores(weights, jax.random.key(1))
    self.assertEqual(sorted(tree_lib.flatten(scores)),
                     [("Conv_0", "kernel"), ("Dense_0", "kernel")])
    masks = masks_lib.masks_from_scores(scores, "topk", 0.5)
    params = masks_lib.apply_masks(weights, masks)
    np.testing.assert_array_equal(params["Dense_0"]["bias"], weights["Dense_0"]["bias"])
    np.testing.assert_array_equal(
        params["Conv_0"]["kernel"],
        weights["Conv_0"]["kernel"] * masks["Conv_0"]["kernel"])
    all_ones = jax.tree.map(jnp.ones_like, scores)
    np.testing.assert_allclose(
        model.apply({"params": masks_lib.apply_masks(weights, all_ones)}, x),
        model.apply({"params": weights}, x), rtol=1e-6)
    self.assertFalse(np.allclose(model.apply({"params": params}, x),
                                 model.apply({"params": weights}, x)))


class TrainingInvariantsTest(absltest.TestCase):

  def test_weights_never_change_while_scores_train(self):
    model = models.LeNet300100(10)
    weights = _lenet_weights()
    snapshot = jax.tree.map(lambda w: np.array(w, copy=True), weights)
    masked = ss_masked.MaskedModel(model, masks_lib.MaskSpec("topk", 0.5), 10)
    opt = training.make_optimizer("adam", 1e-2)
    state = training.init_task_state(masked, weights, opt, jax.random.key(0))
    scores0 = jax.tree.map(np.asarray, state.scores)
    step = jax.jit(training.make_train_step(masked, opt))
    x = jax.random.normal(jax.random.key(1), (32, 28, 28, 1))
    y = jnp.arange(32) % 10
    for _ in range(5):
      state, _ = step(weights, state, x, y)
    # The optimizer state tracks exactly the scores tree (Adam's mu and nu).
    self.assertEqual(jax.tree.structure(state.opt_state[0].mu),
                     jax.tree.structure(state.scores))
    for a, b in zip(jax.tree.leaves(snapshot), jax.tree.leaves(weights)):
      np.testing.assert_array_equal(a, np.asarray(b))
    changed = [not np.array_equal(a, np.asarray(b))
               for a, b in zip(jax.tree.leaves(scores0), jax.tree.leaves(state.scores))]
    self.assertTrue(all(changed))
    self.assertEqual(int(state.step), 5)

  def test_optimizer_weight_decay_is_l2_on_scores(self):
    opt = training.make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.5)
    params = {"s": jnp.array([2.0])}
    updates, _ = opt.update({"s": jnp.array([0.0])}, opt.init(params), params)
    np.testing.assert_allclose(updates["s"], [-0.1 * 0.5 * 2.0])

  def test_bad_optimizer_and_schedule(self):
    with self.assertRaisesRegex(ValueError, "unknown optimizer 'lamb'"):
      training.make_optimizer("lamb")
    with self.assertRaisesRegex(ValueError, "unknown schedule 'step'"):
      training.make_optimizer("adam", 1e-3, schedule="step")

  def test_cosine_schedule_with_warmup(self):
    sched = optim.make_schedule(1.0, "cosine", total_steps=100, warmup_steps=10)
    self.assertAlmostEqual(float(sched(0)), 0.0)
    self.assertAlmostEqual(float(sched(10)), 1.0, places=5)
    self.assertLess(float(sched(99)), 0.01)

  def test_cosine_schedule_without_warmup(self):
    # lr * (1 + cos(pi t / T)) / 2, and no zero-length warm-up segment
    # (optax warns about one as if the schedule were constant).
    with self.assertNoLogs(level="WARNING"), self.assertNoLogs("absl", level="INFO"):
      sched = optim.make_schedule(2e-3, "cosine", total_steps=60)
    for t in (0, 1, 30, 59, 60):
      self.assertAlmostEqual(float(sched(t)), 2e-3 * (1 + np.cos(np.pi * t / 60)) / 2,
                             places=9)


if __name__ == "__main__":
  absltest.main()
