"""A whole dataset as one task, normalised with its own statistics.

The single-task studies (subnetworks, PAC-Net, Meta-ticket, uncertainty) all
read a dataset this way; one function so the normalisation and the class
selection are written once.
"""
from __future__ import annotations

from typing import Sequence

from supsup_jax.data.sources import load_dataset
from supsup_jax.data.streams import InMemoryStream
from supsup_jax.data.transforms import NORM

# Datasets the single-task studies can read by name (in-memory, with NORM).
DATASETS = tuple(name for name in ("mnist", "fashion_mnist", "cifar10", "cifar100")
                 if name in NORM)


def check_dataset(name: str, key: str = "config.dataset") -> None:
  if name not in DATASETS:
    raise ValueError(f"{key} {name!r} unknown; allowed: {', '.join(DATASETS)}")


def single_task_stream(dataset: str, seed: int, data_dir: str | None = None,
                       download: bool = False, classes: Sequence[int] | None = None,
                       num_orders: int = 1, data: dict | None = None) -> InMemoryStream:
  """The whole ``dataset`` as one task (labels unchanged), or only ``classes``
  relabelled 0..len-1.

  ``num_orders`` > 1 gives that many "tasks" over the same data, each with its
  own batch order (ensemble members trained on their own shuffles).
  ``data``: the already loaded :func:`load_dataset` dict, to avoid a reload.
  """
  check_dataset(dataset)
  if data is None:
    data = load_dataset(dataset, data_dir, download)
  mean, std = NORM[dataset]
  task_classes = None if not classes else [list(classes)] * int(num_orders)
  return InMemoryStream(name=dataset, data=data, num_tasks=int(num_orders), seed=int(seed),
                        mean=mean, std=std, task_classes=task_classes, shared_labels=False)
