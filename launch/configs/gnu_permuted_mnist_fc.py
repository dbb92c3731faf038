r"""GNu PermutedMNIST, FC 1024-1024 with 500 outputs, one-shot G inference.

  python -m launch.main --config=launch/configs/gnu_permuted_mnist_fc.py \
      --workdir=runs/gnu_permuted_mnist_fc
Task inference with H on the same masks is reported next to G.
"""
from launch.configs import gnu_permuted_mnist_lenet


def get_config():
  c = gnu_permuted_mnist_lenet.get_config()
  c.experiment = "gnu_permuted_mnist_fc"
  c.model = "fc10241024"
  c.num_outputs = 500
  c.inference_objective = "g"
  c.compare_objectives = ("entropy",)  # G vs H on the same masks
  return c
