"""Mask bank storage and alpha-gradient task inference."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import masked_model as ss_masked
from supsup_jax import bank as bank_lib
from supsup_jax import inference
from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import training
from supsup_jax import weights as weights_lib

X28 = np.zeros((1, 28, 28, 1), np.float32)


def _setup(outputs=10, classes=10):
  model = models.LeNet300100(outputs)
  weights = weights_lib.init_weights(model, 0, X28)
  masked = ss_masked.MaskedModel(model, masks_lib.MaskSpec("threshold"), classes)
  return model, weights, masked


def _random_masks(weights, seed):
  return masks_lib.masks_from_scores(
      masks_lib.init_scores(weights, jax.random.key(seed)), "threshold")


class BankStateTest(absltest.TestCase):
  """The pure bank functions, under jit, against a direct NumPy reference."""

  def setUp(self):
    super().setUp()
    _, self.weights, _ = _setup()
    self.stored = [_random_masks(self.weights, s) for s in range(4)]
    layout = bank_lib.Layout.from_tree(self.stored[0])
    self.flat = [np.asarray(layout.flatten(m)) for m in self.stored]

  def _filled(self):
    state = bank_lib.init(self.stored[0], capacity=8)
    add = jax.jit(bank_lib.add, donate_argnums=0)
    for m in self.stored:
      state = add(state, m)
    return state

  def test_add_get_mean_bit_for_bit(self):
    state = self._filled()
    ref_rows = np.stack([np.packbits(f > 0.5) for f in self.flat])
    ref_counts = np.sum([f > 0.5 for f in self.flat], axis=0).astype(np.int32)
    self.assertEqual(int(state.num_tasks), 4)
    self.assertEqual(state.capacity, bank_lib.ROW_ALIGN)
    np.testing.assert_array_equal(np.asarray(state.rows[:4]), ref_rows)
    self.assertFalse(np.any(np.asarray(state.rows[4:])))
    np.testing.assert_array_equal(np.asarray(state.counts), ref_counts)
    get = jax.jit(bank_lib.get)
    for t, m in enumerate(self.stored):
      for a, b in zip(jax.tree.leaves(get(state, jnp.int32(t))), jax.tree.leaves(m)):
        np.testing.assert_array_equal(a, b)
    mean = jax.jit(bank_lib.mean_masks)(state)
    ref_mean = state.layout.unflatten(jnp.asarray(ref_counts, jnp.float32) / 4)
    for a, b in zip(jax.tree.leaves(mean), jax.tree.leaves(ref_mean)):
      np.testing.assert_array_equal(a, b)

  def test_put_replaces_a_task_and_its_counts(self):
    state = self._filled()
    state = jax.jit(bank_lib.put)(state, jnp.int32(1), self.stored[3])
    ref = [self.flat[0], self.flat[3], self.flat[2], self.flat[3]]
    np.testing.assert_array_equal(
        np.asarray(state.counts), np.sum([f > 0.5 for f in ref], axis=0))
    self.assertEqual(int(state.num_tasks), 4)
    with self.assertRaisesRegex(ValueError, "outside the bank's capacity"):
      bank_lib.put(state, 64, self.stored[0])

  def test_dot_matches_unpacked_product(self):
    state = self._filled()
    g = jax.random.normal(jax.random.key(5), (state.layout.num_bits,))
    fast = jax.jit(bank_lib.dot)(state, g)
    ref = np.stack(self.flat).astype(np.float64) @ np.asarray(g, np.float64)
    np.testing.assert_allclose(np.asarray(fast[:4]), ref, rtol=1e-4, atol=1e-3)
    self.assertFalse(np.any(np.asarray(fast[4:])))
    np.testing.assert_array_equal(np.asarray(bank_lib.dot(state, g)), np.asarray(fast))

  def test_wrapper_checks_task_ids_and_values(self):
    bank = bank_lib.MaskBank(self.weights)
    bank.add(self.stored[0])
    for ok in (0, np.int64(0), jnp.int32(0)):
      bank.get(ok)
    for bad, msg in ((1, "never added"), (-1, "never added"), (0.0, "must be an integer"),
                     (True, "must be an integer")):
      with self.assertRaisesRegex(ValueError, msg):
        bank.get(bad)
    nan_masks = jax.tree.map(lambda m: m * jnp.nan, self.stored[1])
    with self.assertRaisesRegex(ValueError, "exactly 0 or 1"):
      bank.add(nan_masks)
    with self.assertRaisesRegex(ValueError, "exactly 0 or 1"):
      bank.add(jax.tree.map(lambda m: m * 0.5, self.stored[1]))
    self.assertEqual(bank.num_tasks, 1)


class BankTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_round_trip_exact(self, packed):
    _, weights, _ = _setup()
    bank = bank_lib.MaskBank(weights, packed=packed, capacity=2)
    stored = [_random_masks(weights, s) for s in range(5)]  # forces growth
    for m in stored:
      bank.add(m)
    self.assertEqual(bank.num_tasks, 5)
    for t, m in enumerate(stored):
      for a, b in zip(jax.tree.leaves(bank.get(t)), jax.tree.leaves(m)):
        np.testing.assert_array_equal(a, b)
    stacked = bank.stacked([4, 1])
    np.testing.assert_array_equal(stacked["Dense_1"]["kernel"][0],
                                  stored[4]["Dense_1"]["kernel"])
    np.testing.assert_array_equal(stacked["Dense_1"]["kernel"][1],
                                  stored[1]["Dense_1"]["kernel"])

  def test_bytes_per_task(self):
    _, weights, _ = _setup()
    num_bits = 784 * 300 + 300 * 100 + 100 * 10
    packed = bank_lib.MaskBank(weights, packed=True)
    boolean = bank_lib.MaskBank(weights, packed=False)
    self.assertEqual(packed.bytes_per_task, (num_bits + 7) // 8)
    self.assertEqual(boolean.bytes_per_task, num_bits)
    packed.add(_random_masks(weights, 0))
    self.assertEqual(packed.nbytes, 33_275)
    self.assertEqual(packed.rows.dtype, jnp.uint8)

  def test_2500_lenet_masks_fit_100mb(self):
    # Without materialising 2500 tasks: the bank's row size times 2500.
    for outputs in (10, 500):
      _, weights, _ = _setup(outputs)
      bank = bank_lib.MaskBank(weights, packed=True)
      self.assertLess(bank.bytes_per_task * 2500, 100e6)

  def test_incremental_mean_equals_recomputed(self):
    _, weights, _ = _setup()
    bank = bank_lib.MaskBank(weights)
    stored = [_random_masks(weights, s) for s in range(7)]
    for m in stored:
      bank.add(m)
    expected = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *stored)
    for a, b in zip(jax.tree.leaves(bank.mean_masks()), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-6)

  def test_unknown_task_id(self):
    _, weights, _ = _setup()
    bank = bank_lib.MaskBank(weights)
    with self.assertRaisesRegex(ValueError, "never added: the mask bank is empty"):
      bank.get(0)
    bank.add(_random_masks(weights, 0))
    with self.assertRaisesRegex(ValueError, r"task id 3 was never added.*0\.\.0"):
      bank.get(3)

  def test_state_dict_round_trip(self):
    _, weights, _ = _setup()
    bank = bank_lib.MaskBank(weights)
    for s in range(3):
      bank.add(_random_masks(weights, s))
    other = bank_lib.MaskBank(weights).load_state_dict(bank.state_dict())
    np.testing.assert_array_equal(other.rows, bank.rows)
    np.testing.assert_array_equal(other.counts, bank.counts)
    other.add(_random_masks(weights, 9))
    self.assertEqual(other.num_tasks, 4)


class AlphaGradientTest(parameterized.TestCase):

  @parameterized.product(k=[1, 7, 100], objective=["entropy", "g"])
  def test_fast_gradient_equals_jax_grad(self, k, objective):
    outputs = 30 if objective == "g" else 10
    _, weights, masked = _setup(outputs)
    bank = bank_lib.MaskBank(weights)
    for s in range(k):
      bank.add(_random_masks(weights, s))
    x = jax.random.normal(jax.random.key(5), (16, 28, 28, 1))
    fast = inference.alpha_grad(masked, weights, bank, x, objective=objective)
    stacked = bank.stacked()
    reference = jax.grad(lambda a: inference.superposed_objective(
        masked, weights, stacked, a, x, objective))(jnp.full((k,), 1.0 / k))
    rel = float(jnp.max(jnp.abs(fast - reference)) / jnp.max(jnp.abs(reference)))
    self.assertLessEqual(rel, 1e-4)
    many = inference.alpha_grads_many(masked, weights, bank, jnp.stack([x, x[:16]]),
                                      objective=objective)
    np.testing.assert_allclose(many[0], reference, rtol=1e-3,
                               atol=1e-4 * float(jnp.max(jnp.abs(reference))))

  def test_superposition_of_one_mask_is_that_mask(self):
    model, weights, masked = _setup()
    m = _random_masks(weights, 3)
    stacked = jax.tree.map(lambda a: a[None], m)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    np.testing.assert_allclose(
        inference.superposed_logits(masked, weights, stacked, jnp.ones((1,)), x),
        model.apply({"params": masks_lib.apply_masks(weights, m)}, x), rtol=1e-5)

  def test_g_objective_needs_superfluous_neurons(self):
    _, weights, masked = _setup(outputs=10, classes=10)
    bank = bank_lib.MaskBank(weights)
    bank.add(_random_masks(weights, 0))
    with self.assertRaisesRegex(ValueError, "superfluous neurons"):
      inference.alpha_grad(masked, weights, bank, jnp.zeros((1, 28, 28, 1)),
                           objective="g")

  def test_g_gradient_flows_only_through_superfluous_logits(self):
    logits = jnp.array([[1.0, 2.0, 3.0, -1.0, 0.5]])
    g = jax.grad(lambda l: inference.objective_value(l, "g", 3))(logits)
    np.testing.assert_array_equal(g[0, :3], 0.0)
    self.assertTrue(bool(jnp.all(g[0, 3:] > 0)))

  def test_bad_objective_and_algorithm(self):
    _, weights, masked = _setup()
    bank = bank_lib.MaskBank(weights)
    bank.add(_random_masks(weights, 0))
    with self.assertRaisesRegex(ValueError, "unknown objective 'kl'"):
      inference.alpha_grad(masked, weights, bank, jnp.zeros((1, 28, 28, 1)),
                           objective="kl")
    with self.assertRaisesRegex(ValueError, "unknown inference algorithm 'ternary'"):
      inference.infer_task(masked, weights, bank, jnp.zeros((1, 28, 28, 1)),
                           algorithm="ternary")

  def test_inference_finds_trained_task(self):
    """Masks trained on different synthetic tasks are told apart by one-shot
    and binary inference (entropy drops for the right mask). Five tasks: the
    halving rounds of binary inference meet an odd count (5 -> 3 -> 2 -> 1)
    and the last task must survive them."""
    _, weights, masked = _setup()
    opt = training.make_optimizer("adam", 1e-2)
    step = jax.jit(training.make_train_step(masked, opt))
    bank = bank_lib.MaskBank(weights)
    centers = jax.random.normal(jax.random.key(42), (5, 10, 28, 28, 1))
    task_data = []
    for t in range(5):
      key = jax.random.key(100 + t)
      labels = jnp.arange(256) % 10
      images = centers[t][labels] + 0.3 * jax.random.normal(key, (256, 28, 28, 1))
      task_data.append(images)
      state = training.init_task_state(masked, weights, opt, jax.random.key(t))
      for _ in range(40):
        state, _ = step(weights, state, images, labels)
      bank.add(masks_lib.MaskSpec("threshold")(state.scores))
    for t in range(5):
      x = task_data[t][:32]
      self.assertEqual(inference.oneshot(masked, weights, bank, x), t)
      self.assertEqual(inference.binary(masked, weights, bank, x), t)
    units = jnp.stack([task_data[t][32:48] for t in (2, 4, 0, 3, 1)])
    np.testing.assert_array_equal(
        inference.binary_many(masked, weights, bank, units), [2, 4, 0, 3, 1])
    np.testing.assert_array_equal(
        jnp.argmin(inference.alpha_grads_many(masked, weights, bank, units), -1),
        [2, 4, 0, 3, 1])

  def test_subset_gradient_equals_jax_grad(self):
    """Binary rounds: gradient at alpha uniform over a subset of tasks."""
    _, weights, masked = _setup()
    bank = bank_lib.MaskBank(weights)
    for s in range(9):
      bank.add(_random_masks(weights, s))
    alive = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], bool)
    x = jax.random.normal(jax.random.key(3), (8, 28, 28, 1))
    fast = inference._units_call(masked, weights, bank.state, bank.num_tasks, x[None],
                                 alive[None],
                                 "entropy", None, 64)[0]
    alphas = jnp.asarray(alive, jnp.float32) / alive.sum()
    reference = jax.grad(lambda a: inference.superposed_objective(
        masked, weights, bank.stacked(), a, x, "entropy"))(alphas)
    np.testing.assert_allclose(fast, reference, rtol=1e-3,
                               atol=1e-4 * float(jnp.max(jnp.abs(reference))))


if __name__ == "__main__":
  absltest.main()
