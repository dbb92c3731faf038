r"""Uncertainty from masks: CIFAR-10 classes 0-4 in distribution; OOD: classes 5-9
(held out) and, as the near-OOD set, CIFAR-100's test images.

MLP 3072-300-100-5 on raw pixels (LeNet-sized, CPU-friendly; accuracy is far
below a conv net's, the comparison between methods is the point). One method
per run (``--config.method=``, one uncertainty method), N = 4. CPU-sized default:
2000 steps of 128, checkpointed every ``steps_per_call``; the same command resumes.

Two OOD sets, each scored by the AUROC of predictive entropy and of mutual
information: ``ood_dataset`` / ``ood_classes`` (CIFAR-10's held-out classes 5-9,
``ood_auroc``) and ``near_ood_dataset`` / ``near_ood_classes`` (all 10,000
CIFAR-100 test images, the standard CIFAR-10 vs CIFAR-100 near-OOD pair,
``near_ood_auroc``; ``$SUPSUP_DATA_DIR/cifar100/`` offline). A workdir of a run
made before the near-OOD set: ``--config.near_ood_dataset=`` reads or resumes
it as it was (no near-OOD set).
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
  c.near_ood_dataset = "cifar100"  # '' = none (the runner's optional keys)
  c.near_ood_classes = ()          # () = all 100 classes
  return c
