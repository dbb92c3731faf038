r"""GG SplitCIFAR100 (20 x 5 classes), GEM-ResNet18, paper settings.

Adam 1e-3, weight decay 1e-4, cosine schedule, batch 128, 250 epochs per
task, ER sparsity budget, per-task non-affine batch norm. Needs the cifar100
tfds dataset and a GPU:
  python -m launch.main --config=launch/configs/gg_split_cifar100.py \
      --workdir=runs/gg_split_cifar100_s8 --config.er_sparsity=8
The sparsity sweep {1, 2, 4, 8, 16, 32} is --config.er_sparsity=<s>; SupSup
Transfer is --config.supsup.transfer=True.
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "gg_split_cifar100"
  c.scenario = "GG"
  c.dataset = "split_cifar100"
  c.dataset_options.augment = True
  c.num_tasks = 20
  c.model = "gem_resnet18"
  c.mask_kind = "topk"
  c.er_sparsity = 8.0
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4
  c.schedule = "cosine"
  c.batch_size = 128
  c.iterations_per_task = 0
  c.epochs_per_task = 250.0
  c.test_batch_size = 500
  c.eval_after_tasks = (1, 5, 10, 15, 20)
  c.log_every_steps = 100
  c.supsup.keep_scores = False
  return c
