r"""GNu PermutedMNIST, LeNet 300-100 with 100 outputs, one-shot H inference.

Paper: 94.91 % after 250 permutations. Each test batch of 128 infers its task
from its first image; a wrongly inferred batch counts as all wrong.
  python -m launch.main --config=launch/configs/gnu_permuted_mnist_lenet.py \
      --workdir=runs/gnu_permuted_mnist_lenet
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "gnu_permuted_mnist_lenet"
  c.scenario = "GNu"
  c.dataset = "permuted_mnist"
  c.num_tasks = 250
  c.model = "lenet300100"
  c.num_outputs = 100
  c.mask_kind = "threshold"
  c.optimizer = "rmsprop"
  c.learning_rate = 1e-4
  c.batch_size = 128
  c.iterations_per_task = 1000
  c.inference_algorithm = "oneshot"
  c.inference_objective = "entropy"
  c.inference_examples = 1
  c.eval_after_tasks = (10, 50, 100, 150, 200, 250)
  c.supsup.keep_scores = False
  c.log_every_steps = 500
  return c
