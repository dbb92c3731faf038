r"""Finding one subnetwork: small conv net (no batch norm) on CIFAR-10.

  python -m launch.main --config=launch/configs/subnetwork_cifar10.py \
      --workdir=/tmp/subnetwork_cifar10

Same methods and keys as subnetwork_mnist.py. On 2 CPU cores one training
run of 2000 steps takes a few minutes; reduce `kept_fractions` or `method`
for a quick look.
"""
from launch.configs import subnetwork_mnist


def get_config():
  c = subnetwork_mnist.get_config()
  c.experiment = "subnetwork_cifar10"
  c.dataset = "cifar10"
  c.model = "small_conv"
  c.model_options.channels = 32
  c.learning_rate = 3e-4
  c.iterations = 2000
  c.checkpoint_every_steps = 500  # trainings take minutes: checkpoint inside them too
  return c
