r"""GG PermutedMNIST, LeNet 300-100, threshold masks (paper settings).

RMSprop 1e-4, batch 128, 1000 iterations per task, no weight decay, no
schedule. The CPU-sized default is 10 tasks (about a minute on 2 cores); the
paper's runs go to 250 tasks:
  python -m launch.main --config=launch/configs/gg_permuted_mnist.py \
      --workdir=runs/gg_permuted_mnist --config.num_tasks=250
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "gg_permuted_mnist"
  c.scenario = "GG"
  c.dataset = "permuted_mnist"
  c.num_tasks = 10
  c.model = "lenet300100"
  c.mask_kind = "threshold"
  c.optimizer = "rmsprop"
  c.learning_rate = 1e-4
  c.batch_size = 128
  c.iterations_per_task = 1000
  c.eval_after_tasks = (1, 5)
  return c
