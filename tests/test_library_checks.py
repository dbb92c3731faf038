"""The functional library API refuses bad values where it can read them, and
stays jittable: every check runs on concrete values only (issue 24, items 4-5).

A small MLP on 6x6 images keeps every compile cheap.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import checks
from supsup_jax import inference
from supsup_jax import masks as masks_lib
from supsup_jax import models
from supsup_jax import optim
from supsup_jax import weights as weights_lib
from supsup_jax.masked_model import MaskedModel
from supsup_jax.methods import supsup as supsup_method

SHAPE = (6, 6, 1)
K = 5  # stored tasks


def _model(outputs=12):
  return models.MLP(hidden=(16,), num_outputs=outputs)


def _weights(model):
  return weights_lib.init_weights(model, 0, np.zeros((1, *SHAPE), np.float32))


def _masks(weights, seed):
  return masks_lib.masks_from_scores(
      masks_lib.init_scores(weights, jax.random.key(seed)), "threshold")


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y),
                                                    equal_nan=True)
      for x, y in zip(la, lb))


def _one_line(test, e):
  text = str(e)
  test.assertNotIn("\n", text)
  test.assertNotIn("ScopeParamShape", text)


class Fixture(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = _model()
    cls.weights = _weights(cls.model)
    cls.masked = MaskedModel(cls.model, masks_lib.MaskSpec("threshold"), 10)
    cls.stored = [_masks(cls.weights, s) for s in range(K)]
    state = bank_lib.init(cls.stored[0], 8)
    for m in cls.stored:
      state = bank_lib.add(state, m)
    cls.state = state
    cls.bank = bank_lib.MaskBank(cls.weights)
    for m in cls.stored:
      cls.bank.add(m)
    cls.x = jax.random.normal(jax.random.key(9), (8, *SHAPE))
    cls.units = jax.random.normal(jax.random.key(10), (3, 4, *SHAPE))


class BankIdsTest(Fixture):
  """put/get/stacked refuse what MaskBank refuses, where the id is concrete."""

  @parameterized.named_parameters(
      ("python_float", 1.5, "must be an integer"),
      ("whole_float", 1.0, "must be an integer"),
      ("numpy_float", np.float32(1), "must be an integer"),
      ("jax_float", jnp.float32(1), "must be an integer"),
      ("bool", True, "must be an integer"),
      ("numpy_bool", np.bool_(True), "must be an integer"),
      ("vector", jnp.array([1]), "must be an integer"),
      ("string", "1", "must be an integer"),
      ("negative", -1, "never added"),
      ("never_added", K, r"never added.*stored task ids are 0\.\.4"),
      ("past_capacity", 64, "never added"),
  )
  def test_get_and_stacked_refuse(self, bad, message):
    for fn in (lambda t: bank_lib.get(self.state, t),
               lambda t: bank_lib.stacked(self.state, [0, t])):
      with self.assertRaisesRegex(ValueError, message) as cm:
        fn(bad)
      _one_line(self, cm.exception)

  @parameterized.named_parameters(
      ("python_float", 1.5, "must be an integer"),
      ("jax_float", jnp.float32(2), "must be an integer"),
      ("bool", False, "must be an integer"),
      ("negative", -1, "negative"),
      ("gap", K + 2, rf"would leave a gap.*put task {K} next"),
      ("past_capacity", 64, r"outside the bank's capacity 0\.\.63.*grow"),
  )
  def test_put_refuses(self, bad, message):
    with self.assertRaisesRegex(ValueError, message) as cm:
      bank_lib.put(self.state, bad, self.stored[0])
    _one_line(self, cm.exception)

  def test_put_refuses_a_gap_in_an_empty_bank_and_non_binary_masks(self):
    empty = bank_lib.init(self.stored[0], 4)
    with self.assertRaisesRegex(ValueError, "bank is empty; put task 0 first"):
      bank_lib.put(empty, 1, self.stored[0])
    for bad in (jax.tree.map(lambda m: m * jnp.nan, self.stored[1]),
                jax.tree.map(lambda m: m * 0.5, self.stored[1])):
      with self.assertRaisesRegex(ValueError, r"exactly 0 or 1.*Dense_0/kernel"):
        bank_lib.put(self.state, 1, bad)

  def test_stacked_refuses_float_or_bool_arrays(self):
    for bad in (np.array([0.0, 1.0]), jnp.array([True, False]), [0, 1.5], 3):
      with self.assertRaisesRegex(ValueError, "integer"):
        bank_lib.stacked(self.state, bad)

  def test_valid_ids_of_every_integer_kind(self):
    for t in (2, np.int64(2), np.uint8(2), jnp.int32(2), jnp.asarray(2, jnp.uint8)):
      self.assertTrue(_leaves_equal(bank_lib.get(self.state, t), self.stored[2]))
    got = bank_lib.stacked(self.state, np.array([4, 1]))
    self.assertTrue(_leaves_equal(jax.tree.map(lambda a: a[1], got), self.stored[1]))
    replaced = bank_lib.put(self.state, jnp.int32(K), self.stored[0])  # append
    self.assertEqual(int(replaced.num_tasks), K + 1)

  def test_mean_masks_and_dot_refuse(self):
    with self.assertRaisesRegex(ValueError, "mask bank is empty"):
      bank_lib.mean_masks(bank_lib.init(self.stored[0], 4))
    for bad in (0, -1.0, float("nan"), float("inf"), True):
      with self.assertRaisesRegex(ValueError, "scale must be"):
        bank_lib.mean_masks(self.state, bad)
    with self.assertRaisesRegex(ValueError, "flat_g must have shape"):
      bank_lib.dot(self.state, jnp.ones((3,)))

  def test_traced_ids_never_mix_tasks_up(self):
    """Under jit an invalid id reads zero masks and writes nothing."""
    get = jax.jit(bank_lib.get)
    stacked = jax.jit(bank_lib.stacked)
    put = jax.jit(bank_lib.put)
    zeros = jax.tree.map(jnp.zeros_like, self.stored[0])
    for bad in (-1, K, 7, 64, 1000):
      self.assertTrue(_leaves_equal(get(self.state, jnp.int32(bad)), zeros), bad)
      got = stacked(self.state, jnp.array([1, bad]))
      self.assertTrue(_leaves_equal(jax.tree.map(lambda a: a[1], got), zeros), bad)
      self.assertTrue(_leaves_equal(jax.tree.map(lambda a: a[0], got), self.stored[1]))
    for bad in (-1, K + 1, 8, 64):
      self.assertTrue(_leaves_equal(put(self.state, jnp.int32(bad), self.stored[0]),
                                    self.state), bad)
    # A full bank: add under jit returns it unchanged.
    full = bank_lib.init(self.stored[0], 1)
    for t in range(full.capacity):
      full = bank_lib.put(full, t, self.stored[t % K])
    self.assertTrue(_leaves_equal(jax.jit(bank_lib.add)(full, self.stored[0]), full))
    # Dtypes are static: a float id is refused under jit too.
    with self.assertRaisesRegex(ValueError, "must be an integer"):
      get(self.state, jnp.float32(1))

  def test_concrete_id_on_a_traced_bank_checks_the_capacity(self):
    with self.assertRaisesRegex(ValueError, "outside the bank's capacity"):
      jax.jit(lambda s: bank_lib.get(s, 64))(self.state)
    got = jax.jit(lambda s: bank_lib.get(s, 6))(self.state)  # not stored: zeros
    self.assertTrue(_leaves_equal(got, jax.tree.map(jnp.zeros_like, self.stored[0])))


class MasksFromScoresTest(Fixture):

  @parameterized.parameters(("topk", 0.5), ("threshold", 0.5), ("topk", None))
  def test_refuses_non_finite_scores(self, kind, k):
    scores = masks_lib.init_scores(self.weights, jax.random.key(0))
    if k is None:
      k = masks_lib.er_fractions(scores, 1.0)
    for bad in (jnp.nan, jnp.inf):
      broken = dict(scores)
      broken["Dense_1"] = {"kernel": scores["Dense_1"]["kernel"].at[0, 0].set(bad)}
      with self.assertRaisesRegex(ValueError, r"\['Dense_1/kernel'\] hold NaN or inf") as cm:
        masks_lib.masks_from_scores(broken, kind, k)
      _one_line(self, cm.exception)
      # Traced: no check, no host sync, no error (documented NaN masks).
      jax.jit(lambda s: masks_lib.masks_from_scores(s, kind, k))(broken)


class NonFiniteInferenceTest(Fixture):

  def _nan_weights(self):
    return jax.tree.map(lambda w: w.at[(0,) * w.ndim].set(jnp.nan), self.weights)

  def test_nan_weights_are_refused_not_task_0(self):
    w = self._nan_weights()
    calls = [
        lambda: inference.oneshot(self.masked, w, self.bank, self.x),
        lambda: inference.binary(self.masked, w, self.bank, self.x),
        lambda: inference.infer_task(self.masked, w, self.state, self.x),
        lambda: inference.infer_task(self.masked, w, self.state, self.x, algorithm="binary"),
        lambda: inference.alpha_grad(self.masked, w, self.bank, self.x),
        lambda: inference.alpha_grads_many(self.masked, w, self.bank, self.units),
        lambda: inference.binary_many(self.masked, w, self.bank, self.units),
    ]
    for call in calls:
      with self.assertRaisesRegex(ValueError, r"non-finite weights.*Dense_0/kernel") as cm:
        call()
      _one_line(self, cm.exception)

  def test_non_finite_images_and_gradients(self):
    with self.assertRaisesRegex(ValueError, "non-finite images"):
      inference.oneshot(self.masked, self.weights, self.bank, self.x.at[0, 0].set(jnp.inf))
    huge = jax.tree.map(lambda w: w * 1e30, self.weights)
    with self.assertRaisesRegex(ValueError, "non-finite alpha-gradients from finite inputs"):
      inference.oneshot(self.masked, huge, self.bank, self.x * 1e30)

  def test_under_jit_no_task_is_picked(self):
    w = self._nan_weights()
    oneshot = jax.jit(lambda w, s, x: inference.oneshot(self.masked, w, s, x))
    binary = jax.jit(lambda w, s, x: inference.binary(self.masked, w, s, x, num_tasks=K))
    self.assertEqual(int(oneshot(w, self.state, self.x)), -1)
    self.assertEqual(int(binary(w, self.state, self.x)), -1)
    empty = bank_lib.init(self.stored[0], 8)
    self.assertEqual(int(oneshot(self.weights, empty, self.x)), -1)


class InputShapeTest(Fixture):
  """Images of the wrong size: one line naming the given and expected shape."""

  def test_inference_entry_points(self):
    bad = jnp.zeros((4, 8, 8, 1))
    many = jnp.zeros((2, 4, 8, 8, 1))
    calls = {
        "alpha_grad": lambda: inference.alpha_grad(self.masked, self.weights, self.bank, bad),
        "oneshot": lambda: inference.oneshot(self.masked, self.weights, self.bank, bad),
        "binary": lambda: inference.binary(self.masked, self.weights, self.bank, bad),
        "infer_task": lambda: inference.infer_task(self.masked, self.weights, self.bank, bad),
        "superposed_logits": lambda: inference.superposed_logits(
            self.masked, self.weights, self.bank.stacked(), jnp.full((K,), 0.2), bad),
        "effective_weight_grad": lambda: inference.effective_weight_grad(
            self.masked, self.weights, self.stored[0], bad, "entropy"),
        "jit(alpha_grad)": lambda: jax.jit(
            lambda x: inference.alpha_grad(self.masked, self.weights, self.state, x))(bad),
        "logits": lambda: self.masked.logits(
            self.weights, masks_lib.init_scores(self.weights, jax.random.key(0)), {}, bad,
            False),
    }
    for name, call in calls.items():
      with self.assertRaisesRegex(
          ValueError, r"images have shape \(4, 8, 8, 1\), this model takes \[B, 6, 6, 1\] "
          r"\(Dense_0/kernel would be \(64, 16\), the weights hold \(36, 16\)\); "
          r"pass images of shape \[B, 6, 6, 1\]", msg=name) as cm:
        call()
      _one_line(self, cm.exception)
    for fn in (inference.alpha_grads_many, inference.binary_many):
      with self.assertRaisesRegex(
          ValueError, r"images_many have shape \(2, 4, 8, 8, 1\), this model takes "
          r"\[N, n, 6, 6, 1\]"):
        fn(self.masked, self.weights, self.bank, many)
    with self.assertRaisesRegex(ValueError, r"add a batch axis: images\[None\]"):
      inference.oneshot(self.masked, self.weights, self.bank, jnp.zeros(SHAPE))
    with self.assertRaisesRegex(ValueError, r"images_many must be \[N, n, \*input_shape\]"):
      inference.alpha_grads_many(self.masked, self.weights, self.bank, jnp.zeros((4, 36)))

  def test_learner_logits_path(self):
    learner = supsup_method.make(self.masked, self.weights, optim.make_optimizer("adam", 1e-2),
                                 capacity=4)
    memory = learner.init_memory()
    memory = learner.end_task(memory, learner.init_task(memory, 0, jax.random.key(0)), 0)
    with self.assertRaisesRegex(ValueError, r"images have shape \(3, 5, 5, 1\), this model "
                                r"takes \[B, 6, 6, 1\]") as cm:
      jax.jit(learner.logits)(memory, jnp.int32(0), jnp.zeros((3, 5, 5, 1)))
    _one_line(self, cm.exception)
    with self.assertRaisesRegex(ValueError, r"images_many have shape"):
      learner.infer_task(memory, 1, jnp.zeros((2, 3, 5, 5, 1)))

  def test_declared_input_shape_and_unknown_weights(self):
    strict = MaskedModel(self.model, masks_lib.MaskSpec("threshold"), 10, input_shape=SHAPE)
    # (4, 36) would run (the model flattens); the declared shape refuses it.
    with self.assertRaisesRegex(ValueError, r"images have shape \(4, 36\), this model takes "
                                r"\[B, 6, 6, 1\] \(input_shape=\(6, 6, 1\)\)"):
      inference.oneshot(strict, self.weights, self.bank, jnp.zeros((4, 36)))
    # Weights of a model init_weights never built here: the shape is still named.
    other = _model(11)
    loaded = jax.tree.map(np.asarray, _weights(other))
    weights_lib._EXAMPLE_SHAPES.clear()  # pylint: disable=protected-access
    try:
      masked = MaskedModel(other, masks_lib.MaskSpec("threshold"), 10)
      with self.assertRaisesRegex(ValueError, r"images of shape \(4, 8, 8, 1\) \(per example "
                                  r"\(8, 8, 1\)\) do not fit this model's weights") as cm:
        masked.logits_with_masks(loaded, _masks(loaded, 0), {}, jnp.zeros((4, 8, 8, 1)),
                                 False)
      _one_line(self, cm.exception)
    finally:
      _weights(self.model)  # re-register for the other tests


class JitEqualsEagerTest(Fixture):
  """Every public inference and bank function under jax.jit gives the eager
  result (the regression: jit(alpha_grad) raised TracerBoolConversionError)."""

  def _close(self, got, want, exact=False):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      self.assertEqual(np.shape(g), np.shape(w))
      if exact:
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
      else:
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)

  def test_jit_around_alpha_grad_itself(self):
    jitted = jax.jit(inference.alpha_grad, static_argnums=0,
                     static_argnames=("objective", "num_tasks"))
    want = inference.alpha_grad(self.masked, self.weights, self.state, self.x)
    self._close(jitted(self.masked, self.weights, self.state, self.x, num_tasks=K), want)
    padded = jitted(self.masked, self.weights, self.state, self.x)
    self._close(padded[:K], want)
    self.assertTrue(np.all(np.isinf(np.asarray(padded[K:]))))

  def test_inference_functions(self):
    m, w, x, units, st = self.masked, self.weights, self.x, self.units, self.state
    stacked = bank_lib.stacked(st, list(range(K)))
    alphas = jnp.full((K,), 1.0 / K)
    logits = inference.superposed_logits(m, w, stacked, alphas, x)
    # name: (function of the traced arguments (weights, bank, images), k-sliced)
    cases = {
        "alpha_grad": lambda w, s, x: inference.alpha_grad(m, w, s, x, num_tasks=K),
        "alpha_grad_g": lambda w, s, x: inference.alpha_grad(m, w, s, x, objective="g",
                                                             num_tasks=K),
        "alpha_grads_many": lambda w, s, x: inference.alpha_grads_many(
            m, w, s, units + x[0, 0, 0, 0], num_tasks=K),
        "oneshot": lambda w, s, x: inference.oneshot(m, w, s, x),
        "binary": lambda w, s, x: inference.binary(m, w, s, x, num_tasks=K),
        "binary_many": lambda w, s, x: inference.binary_many(
            m, w, s, units + x[0, 0, 0, 0], num_tasks=K),
        "infer_task": lambda w, s, x: inference.infer_task(m, w, s, x),
        "infer_task_binary": lambda w, s, x: inference.infer_task(
            m, w, s, x, algorithm="binary", num_tasks=K),
        "superposed_logits": lambda w, s, x: inference.superposed_logits(
            m, w, bank_lib.stacked(s, jnp.arange(K)), alphas, x),
        "superposed_objective": lambda w, s, x: inference.superposed_objective(
            m, w, bank_lib.stacked(s, jnp.arange(K)), alphas, x, "g"),
        "objective_value": lambda w, s, x: inference.objective_value(
            logits + x[0, 0, 0, 0], "entropy", 10),
        "effective_weight_grad": lambda w, s, x: inference.effective_weight_grad(
            m, w, bank_lib.mean_masks(s), x, "entropy"),
    }
    for name, fn in cases.items():
      with self.subTest(name):
        want = fn(w, st, x)
        got = jax.jit(fn)(w, st, x)
        self._close(got, want, exact=name in ("oneshot", "binary", "binary_many",
                                              "infer_task", "infer_task_binary"))
    # The MaskBank wrapper closed over (concrete) and only the images traced.
    for name, fn in {
        "oneshot": lambda x: inference.oneshot(m, w, self.bank, x),
        "binary": lambda x: inference.binary(m, w, self.bank, x),
        "alpha_grad": lambda x: inference.alpha_grad(m, w, self.bank, x),
    }.items():
      with self.subTest("closed over " + name):
        self._close(jax.jit(fn)(x), fn(x))

  def test_bank_functions(self):
    st, new = self.state, self.stored[2]
    g = jax.random.normal(jax.random.key(3), (st.layout.num_bits,))
    cases = {
        "put_replace": lambda s, t: bank_lib.put(s, t, new),
        "put_append": lambda s, t: bank_lib.put(s, t + K - 1, new),
        "add": lambda s, t: bank_lib.add(s, new),
        "get": bank_lib.get,
        "stacked": lambda s, t: bank_lib.stacked(s, jnp.stack([t, t + 3])),
        "mean_masks": lambda s, t: bank_lib.mean_masks(s),
        "mean_masks_scale": lambda s, t: bank_lib.mean_masks(s, 8.0),
        "dot": lambda s, t: bank_lib.dot(s, g),
    }
    for name, fn in cases.items():
      with self.subTest(name):
        self._close(jax.jit(fn)(st, jnp.int32(1)), fn(st, jnp.int32(1)), exact=True)

  def test_closed_over_constants_are_checked_inside_jit(self):
    nan_masks = jax.tree.map(lambda m: m * jnp.nan, self.stored[1])
    with self.assertRaisesRegex(ValueError, "exactly 0 or 1"):
      jax.jit(lambda s: bank_lib.put(s, 1, nan_masks))(self.state)
    with self.assertRaisesRegex(ValueError, "gap"):
      jax.jit(lambda m: bank_lib.put(self.state, 7, m))(self.stored[0])
    scores = jax.tree.map(lambda m: m * jnp.nan, self.stored[0])
    with self.assertRaisesRegex(ValueError, "hold NaN or inf"):
      jax.jit(lambda: masks_lib.masks_from_scores(scores, "threshold"))()
    nan_x = self.x * jnp.nan  # concrete, closed over
    with self.assertRaisesRegex(ValueError, "non-finite images"):
      jax.jit(lambda w: inference.alpha_grad(self.masked, w, self.state, nan_x))(self.weights)

  def test_checks_skip_tracers_only(self):
    self.assertTrue(checks.is_concrete(1, np.ones(2), jnp.ones(2), {"a": jnp.ones(1)}))
    seen = []
    jax.jit(lambda a: seen.append(checks.is_concrete(a, 3)))(jnp.ones(2))
    self.assertEqual(seen, [False])
    self.assertEqual(checks.nonfinite_paths({"a": {"k": jnp.ones(2)}, "b": jnp.array([np.nan]),
                                             "i": jnp.arange(3)}), ["b"])


if __name__ == "__main__":
  absltest.main()
