r"""GG SplitMNIST: 5 tasks of 2 digits, task given at train and test.

Reproduce:
  python -m launch.main --config=launch/configs/gg_split_mnist.py \
      --workdir=runs/gg_split_mnist
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "gg_split_mnist"
  c.scenario = "GG"
  c.dataset = "split_mnist"
  c.dataset_options.shared_labels = False   # relabelled 0/1 per task
  c.num_tasks = 5
  c.model = "lenet300100"
  c.mask_kind = "topk"
  c.sparsity = 0.5
  c.optimizer = "rmsprop"
  c.learning_rate = 1e-4
  c.batch_size = 128
  c.iterations_per_task = 1000
  c.eval_after_tasks = (1, 2, 3, 4, 5)
  return c
