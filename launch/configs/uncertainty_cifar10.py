r"""Uncertainty from masks: CIFAR-10 classes 0-4 in distribution, classes 5-9 OOD.

MLP 3072-300-100-5 on raw pixels (LeNet-sized, CPU-friendly; accuracy is far
below a conv net's, the comparison between methods is the point). One method
per run (``--config.method=``, one uncertainty method), N = 4. CPU-sized default:
2000 steps of 128, checkpointed every ``steps_per_call``; the same command resumes.
  for m in single mc_dropout masksembles deep_ensemble supermask_ensemble; do
    python -m launch.main --config=launch/configs/uncertainty_cifar10.py \
        --workdir=runs/uncertainty_cifar10/$m --config.method=$m
  done
  python -m supsup_jax.runs.uncertainty runs/uncertainty_cifar10/*
"""
from launch.configs import uncertainty_mnist


def get_config():
  c = uncertainty_mnist.get_config()
  c.experiment = "uncertainty_cifar10"
  c.dataset = "cifar10"
  c.id_classes = (0, 1, 2, 3, 4)
  c.ood_dataset = "cifar10"
  c.ood_classes = (5, 6, 7, 8, 9)
  return c
