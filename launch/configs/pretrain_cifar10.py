r"""Pretraining GEM-ResNet18 on CIFAR-10, whose weights supermasks then select from.

Supermasks over pretrained weights (Mallya et al., "Piggyback", ECCV 2018,
arXiv 1801.06519; SupSup extends it from one pretrained network to many
tasks over random weights): this run trains the weights that
``config.weights_from`` later reads. It is the ``upper_bound`` learner on one
task holding all of CIFAR-10 (``split_cifar10`` with
``dataset_options.classes_per_task=10``: one 10-way task), so its finished
workdir stores one fully trained network (``memory/params``, task slot 0).

Same network as GG SplitCIFAR100 (``gem_resnet18``, bias-free, non-affine
per-task batch norm) with a 10-way head; Kaiming-normal initial weights
trained by Adam 1e-3 with weight decay 1e-4 and a cosine schedule, batch 128,
random crop + flip. CPU scale: 300 steps (38,400 images, 0.77 epoch); the
whole 10,000-image test set is evaluated. Measured 2026-11-30 on 2 cores
shared with two other CIFAR-100 runs (load ~9, this run niced): 51.78 % test
accuracy, 979 s of wall time, 364 CPU-seconds (~6 minutes on 2 idle cores).
For better features (a GPU) raise the steps, e.g.
``--config.iterations_per_task=0 --config.epochs_per_task=30``.

  python -m launch.main --config=launch/configs/pretrain_cifar10.py \
      --workdir=runs/pretrain_cifar10
  python -m launch.main --config=launch/configs/gg_split_cifar100.py:cpu \
      --config.weights_from=runs/pretrain_cifar10 \
      --config.weights_from_fresh='("Dense_0",)' \
      --workdir=runs/gg_split_cifar100_cpu_pretrained

The second command masks these weights for the 20 five-way SplitCIFAR100
tasks; the pretrained 10-way head (``Dense_0/kernel``, 160 x 10) does not
fit a 5-way task, so ``weights_from_fresh`` keeps that leaf from the seed
(a new classifier per task, as in Piggyback). The batch-norm statistics of
this run are not read: each task's masks learn their own.
"""
from launch.configs import common

ITERATIONS = 300


def get_config():
  c = common.base_config()
  c.experiment = "pretrain_cifar10"
  c.method = "upper_bound"
  c.scenario = "GG"
  c.dataset = "split_cifar10"
  c.dataset_options.classes_per_task = 10   # one task of all ten classes
  c.dataset_options.augment = True
  c.num_tasks = 1
  c.model = "gem_resnet18"
  c.trained_net.init = "kaiming_normal"
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4
  c.schedule = "cosine"
  c.batch_size = 128
  c.iterations_per_task = ITERATIONS
  c.test_batch_size = 500
  c.eval_after_tasks = (1,)
  c.log_every_steps = 25
  return c
