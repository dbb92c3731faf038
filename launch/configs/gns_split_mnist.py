r"""GNs SplitMNIST: 5 tasks of 2 digits with shared labels 0-9, task inferred.

A batch whose task is inferred wrongly is still scored by its predictions.
  python -m launch.main --config=launch/configs/gns_split_mnist.py \
      --workdir=runs/gns_split_mnist
"""
from launch.configs import gg_split_mnist


def get_config():
  c = gg_split_mnist.get_config()
  c.experiment = "gns_split_mnist"
  c.scenario = "GNs"
  c.dataset_options.shared_labels = True
  c.num_outputs = 10
  c.mask_kind = "threshold"
  c.inference_algorithm = "oneshot"
  c.inference_objective = "entropy"
  c.inference_examples = 0
  return c
