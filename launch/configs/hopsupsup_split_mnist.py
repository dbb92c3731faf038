r"""HopSupSup SplitMNIST: 5 tasks of 2 digits, labels kept 0-9, task not given.

Gain masks on the two batch-norm layers of a 784-2048-2048-10 Swish MLP with
fixed signed-constant weights, stored in one 2048 x 2048 Hopfield net per layer
(Storkey rule) and recovered at test time on the task's test stream (batches of
64): SGD lr 500, momentum 0.9 on (1 - b/B) H + gamma (b/B) E, gamma 1.5e-3
(Wortsman, Ramanujan et al. 2020, arXiv:2006.14769; the authors'
experiments/GNu/SplitMNIST/hopsupsup.py).
  python -m launch.main --config=launch/configs/hopsupsup_split_mnist.py \
      --workdir=runs/hopsupsup_split_mnist
Store SplitMNIST and Split Fashion-MNIST (10 masks per layer) and sweep the
number of synthetic masks for the store's capacity:
  python -m launch.main --config=launch/configs/hopsupsup_split_mnist.py \
      --workdir=runs/hopsupsup_mnist_fashion \
      --config.study.extra_datasets='("split_fashion_mnist",)' \
      --config.study.capacity_sweep='(400,800,1200,1600,2400)' \
      --config.study.store_load_sweep='(20,50,100,200,400)'
"""
import ml_collections

from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "hopsupsup_split_mnist"
  c.runner = "hopsupsup"
  c.method = "hopsupsup"
  c.scenario = "GNu"
  c.dataset = "split_mnist"
  c.dataset_options.shared_labels = True    # labels kept 0-9
  c.num_tasks = 5
  c.model = "bn_swish_mlp"
  c.model_options.hidden = (2048, 2048)
  c.num_outputs = 10
  c.init = "signed_constant"
  c.mask_kind = "threshold"                 # gain = 1[score >= 0], scores start at 0
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.batch_size = 128
  c.iterations_per_task = 0
  c.epochs_per_task = 1.0
  # Hopfield store and recovery.
  c.hopfield = ml_collections.ConfigDict()  # read by supsup_jax.methods.hopsupsup
  c.hopfield.rule = "storkey"               # storkey (authors' code) | hebbian (paper text)
  c.hopfield.gamma = 1.5e-3
  c.hopfield.learning_rate = 500.0
  c.hopfield.momentum = 0.9
  c.hopfield.weight_decay = 1e-4            # the authors' optimizer keeps args.wd
  # The runner's own keys (supsup_jax/runs/hopsupsup.py).
  c.study = ml_collections.ConfigDict()
  c.study.recovery_batch_size = 64          # test images per recovery step
  c.study.recovery_batches = 0              # 0 = every full test batch of the task
  c.study.extra_datasets = ()               # e.g. ("split_fashion_mnist",): more tasks in the store
  c.study.capacity_sweep = ()               # numbers of synthetic masks: energy-only recall
  c.study.store_load_sweep = ()             # extra synthetic masks stored before a full recovery
  return c
