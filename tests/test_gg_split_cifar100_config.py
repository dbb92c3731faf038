"""The two scales of launch/configs/gg_split_cifar100.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.configs import gg_split_cifar100

REPO = Path(__file__).resolve().parents[1]


def test_default_is_the_paper_scale():
  c = gg_split_cifar100.get_config()
  assert c.to_dict() == gg_split_cifar100.get_config("paper").to_dict()
  assert (c.model, c.epochs_per_task, c.iterations_per_task) == ("gem_resnet18", 250.0, 0)
  assert (c.optimizer, c.learning_rate, c.weight_decay, c.schedule, c.batch_size) == (
      "adam", 1e-3, 1e-4, "cosine", 128)
  assert c.er_sparsity > 0 and c.num_tasks == 20 and c.dataset_options.augment


def test_cpu_scale_changes_only_the_steps():
  paper = gg_split_cifar100.get_config().to_dict()
  cpu = gg_split_cifar100.get_config("cpu").to_dict()
  changed = {k for k in paper if paper[k] != cpu[k]}
  # What the docstring says it reduces, and nothing else.
  assert changed == {"iterations_per_task", "log_every_steps"}
  assert cpu["iterations_per_task"] == gg_split_cifar100.CPU_ITERATIONS_PER_TASK > 0


def test_unknown_scale_is_one_line_listing_the_known():
  with pytest.raises(ValueError, match=r"unknown scale 'gpu'.*known: paper, cpu"):
    gg_split_cifar100.get_config("gpu")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "launch.main",
       "--config=launch/configs/gg_split_cifar100.py:gpu", "--workdir=/tmp/unused"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
  assert "unknown scale 'gpu'" in lines[0] and "known: paper, cpu" in lines[0]
