r"""GG SplitImageNet (100 x 10 classes), ResNet-50, paper settings.

Adam 1e-3, cosine with 5 warm-up epochs, 100 epochs per task, batch 256, ER
sparsity, per-task non-affine batch norm. Needs imagenet2012 prepared for
tfds (manual download) and accelerators:
  python -m launch.main --config=launch/configs/gg_split_imagenet.py \
      --workdir=runs/gg_split_imagenet --config.er_sparsity=8
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "gg_split_imagenet"
  c.scenario = "GG"
  c.dataset = "split_imagenet"
  c.dataset_options.augment = True
  c.num_tasks = 100
  c.model = "resnet50"
  c.mask_kind = "topk"
  c.er_sparsity = 8.0
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.schedule = "cosine"
  c.batch_size = 256
  c.iterations_per_task = 0
  c.epochs_per_task = 100.0
  # 5 warm-up epochs of ~1300 images per class x 10 classes / 256.
  c.warmup_steps = 5 * 13000 // 256
  c.test_batch_size = 250
  c.eval_after_tasks = (1, 25, 50, 75, 100)
  c.log_every_steps = 100
  c.supsup.keep_scores = False
  return c
