r"""GG SplitFashionMNIST: 5 tasks of 2 classes, task given.

Reproduce:
  python -m launch.main --config=launch/configs/gg_split_fashion_mnist.py \
      --workdir=runs/gg_split_fashion_mnist
"""
from launch.configs import gg_split_mnist


def get_config():
  c = gg_split_mnist.get_config()
  c.experiment = "gg_split_fashion_mnist"
  c.dataset = "split_fashion_mnist"
  return c
