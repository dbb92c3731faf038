"""Models, per-task batch norm, and the configs that cannot run here for real
(SplitCIFAR100, SplitImageNet) as smoke tests on tfds mock data."""
from absl.testing import absltest
from absl.testing import parameterized
import chex
import pytest
import jax
import jax.numpy as jnp
import numpy as np

from launch.configs import gg_split_cifar10
from launch.configs import gg_split_cifar100
from launch.configs import gg_split_imagenet
from supsup_jax import masks as masks_lib
from supsup_jax import masked_model as ss_masked
from supsup_jax import data as data_lib
from supsup_jax.runs import continual as experiment
from supsup_jax import models
from supsup_jax import training
from supsup_jax import weights as weights_lib
from supsup_jax.data import sources


class ModelShapesTest(parameterized.TestCase):

  @parameterized.parameters(
      ("lenet300100", (28, 28, 1), 7, 266_200 - 100 * 10 + 100 * 7),
      ("fc10241024", (28, 28, 1), 500, 784 * 1024 + 1024 * 1024 + 1024 * 500),
      ("bn_swish_mlp", (28, 28, 1), 10, 784 * 2048 + 2048 * 2048 + 2048 * 10),
      ("small_conv", (32, 32, 3), 10, 9 * 3 * 64 + 3 * 9 * 64 * 64 + 64 * 10),
      ("gem_resnet18", (32, 32, 3), 5, None),
      ("resnet18", (64, 64, 3), 10, None),
      ("resnet50", (64, 64, 3), 10, None),
  )
  def test_output_shape_and_bias_free(self, name, input_shape, outputs, num_weights):
    model = models.make_model(name, outputs)
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    self.assertTrue(all(p[-1].key == "kernel" for p, _ in leaves))  # no biases
    if num_weights is not None:
      self.assertEqual(sum(int(np.prod(l.shape)) for _, l in leaves), num_weights)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    chex.assert_shape(out, (2, outputs))
    if "batch_stats" in variables:
      # Non-affine batch norm: no scale or bias parameters anywhere.
      self.assertNotIn("scale", str(jax.tree_util.tree_structure(variables["params"])))

  def test_gem_resnet18_widths(self):
    model = models.GEMResNet18(5)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                               jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    widths = sorted({l.shape[-1] for l in jax.tree.leaves(variables["params"])})
    self.assertEqual(widths, [5, 20, 40, 80, 160])

  def test_unknown_model(self):
    with self.assertRaisesRegex(ValueError, "unknown model 'vgg'.*lenet300100"):
      models.make_model("vgg", 10)


class PerTaskBatchNormTest(absltest.TestCase):

  def test_training_task_two_leaves_task_one_statistics_untouched(self):
    model = models.SmallConvNet(channels=8, num_outputs=2, batch_norm=True)
    x0 = np.zeros((1, 16, 16, 3), np.float32)
    weights = weights_lib.init_weights(model, 0, x0)
    initial = weights_lib.init_model_state(model, x0)["batch_stats"]
    masked = ss_masked.MaskedModel(model, masks_lib.MaskSpec("topk", 0.5), 2)
    opt = training.make_optimizer("adam", 1e-2)
    step = jax.jit(training.make_train_step(masked, opt), donate_argnums=1)
    eval_step = training.make_eval_step(masked)
    # Two tasks whose inputs have very different statistics.
    data = [(jax.random.normal(jax.random.key(t), (32, 16, 16, 3)) * (1 + 4 * t) + 3 * t,
             jnp.arange(32) % 2) for t in range(2)]
    stats = {}
    states = {}
    for t in range(2):
      state = training.init_task_state(masked, weights, opt, jax.random.key(t),
                                       batch_stats=initial)
      for _ in range(3):
        state, _ = step(weights, state, *data[t])
      stats[t] = jax.tree.map(np.asarray, state.batch_stats)
      states[t] = state
      if t == 0:
        stats0_copy = jax.tree.map(np.copy, stats[0])
        acc0 = int(eval_step(weights, masked.mask_spec(state.scores), stats[0], *data[0]))
    chex.assert_trees_all_equal(stats[0], stats0_copy)
    self.assertEqual(
        int(eval_step(weights, masked.mask_spec(states[0].scores), stats[0], *data[0])),
        acc0)
    # One shared BN (task 2 continuing from task 1's statistics) would have
    # moved task 1's statistics: the bug the paper's code first had.
    shared = training.init_task_state(masked, weights, opt, jax.random.key(1),
                                      batch_stats=stats[0])
    shared, _ = step(weights, shared, *data[1])
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                         shared.batch_stats, stats0_copy))
    self.assertGreater(max(moved), 0.1)

  def test_split_cifar10_old_tasks_keep_accuracy(self):
    """GG SplitCIFAR10 with per-task BN on the real image folder: after each
    new task, every old task's accuracy is exactly what it was."""
    c = gg_split_cifar10.get_config()
    c.num_tasks = 3
    c.model_options.channels = 16
    c.iterations_per_task = 60
    c.batch_size = 64
    c.eval_after_tasks = (1, 2, 3)
    c.eval_batches_per_task = 2
    c.test_batch_size = 250
    results = experiment.run(c, self.create_tempdir().full_path)
    matrix = results["accuracy_matrix"]
    for i in range(3):
      for j in range(i + 1):
        self.assertEqual(matrix[i][j], matrix[j][j])
    self.assertGreater(results["avg_accuracy"], 0.6)  # 2-way tasks, short run


class MockDataConfigTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.enter_context(absltest.mock.patch.dict("os.environ", {"SUPSUP_DATA_DIR": ""}))
    self.tfds = sources.import_tfds()
    data_lib.clear_cache()
    self.addCleanup(data_lib.clear_cache)

  def _smoke(self, config, num_examples):
    config.num_tasks = 2
    config.iterations_per_task = 2
    config.batch_size = 8
    config.test_batch_size = 8
    config.eval_batches_per_task = 1
    config.eval_after_tasks = ()
    config.log_every_steps = 1
    with self.tfds.testing.mock_data(num_examples=num_examples):
      results = experiment.run(config, self.create_tempdir().full_path)
    self.assertEqual(results["num_tasks"], 2)
    self.assertBetween(results["avg_accuracy"], 0.0, 1.0)
    self.assertLen(results["accuracy_matrix"][-1], 2)
    return results

  def test_gg_split_cifar100_config(self):
    results = self._smoke(gg_split_cifar100.get_config(), num_examples=2000)
    self.assertEqual(results["config"]["model"], "gem_resnet18")

  @pytest.mark.slow  # ResNet-50 on CPU: minutes
  def test_gg_split_imagenet_config(self):
    c = gg_split_imagenet.get_config()
    c.dataset_options.image_size = 32
    c.dataset_options.shuffle_buffer = 64
    results = self._smoke(c, num_examples=3000)
    self.assertEqual(results["config"]["model"], "resnet50")


if __name__ == "__main__":
  absltest.main()
