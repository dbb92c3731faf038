r"""PAC-Net transfer (Myung et al. 2022): MNIST -> Fashion-MNIST, LeNet 300-100.

  python -m launch.main --config=launch/configs/pac_net_mnist.py \
      --workdir=/tmp/pac_net_mnist

Reports source accuracy kept (important weights alone) and target accuracy,
against plain fine-tuning and training the target from scratch.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "pac_net_mnist"
  c.runner = "subnetwork"
  c.method = "pac_net"
  c.data_dir = ""
  c.download = False
  c.model = "lenet300100"
  c.model_options = ml_collections.ConfigDict()
  c.seed = 0
  c.init = "kaiming_normal"
  c.optimizer = "adam"
  c.learning_rate = 1.2e-3
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.batch_size = 128
  c.iterations = 2000            # source training, calibration and fine-tuning each
  c.log_every_steps = 500        # training chunks (progress, non-finite guard)
  c.checkpoint_every_steps = 0   # also checkpoint inside trainings (0: after each stage)
  c.stop_after_steps = 0
  c.pac_net = ml_collections.ConfigDict(dict(
      source="mnist",            # mnist | fashion_mnist | cifar10 | cifar10_0_4 | cifar10_5_9
      target="fashion_mnist",
      keep_fraction=0.5,         # important weights per layer
      allocate_iterations=1000,  # retraining of the important weights alone
  ))
  return c
