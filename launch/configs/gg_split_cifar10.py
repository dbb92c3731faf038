r"""GG SplitCIFAR10 (5 x 2 classes) from the CIFAR-10 image folder.

Small conv net (4 conv 3x3 layers of 64 channels) with per-task non-affine
batch norm, top-k masks at k = 0.5, Adam 1e-3 with a cosine schedule. The
default budget is CPU-sized (300 iterations per task); for a longer run:
  python -m launch.main --config=launch/configs/gg_split_cifar10.py \
      --workdir=runs/gg_split_cifar10 --config.iterations_per_task=0 \
      --config.epochs_per_task=50
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "gg_split_cifar10"
  c.scenario = "GG"
  c.dataset = "split_cifar10"
  c.dataset_options.augment = True
  c.num_tasks = 5
  c.model = "small_conv"
  c.model_options.channels = 64
  c.model_options.batch_norm = True
  c.mask_kind = "topk"
  c.sparsity = 0.5
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4
  c.schedule = "cosine"
  c.batch_size = 128
  c.iterations_per_task = 300
  c.test_batch_size = 500
  c.eval_after_tasks = (1, 2, 3, 4, 5)
  c.log_every_steps = 50
  return c
