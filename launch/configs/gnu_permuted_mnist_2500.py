r"""GNu PermutedMNIST with 2500 tasks, LeNet 300-100 with 500 outputs.

The full run trains 2.5M steps; on a CPU use fewer tasks or iterations:
  python -m launch.main --config=launch/configs/gnu_permuted_mnist_2500.py \
      --workdir=runs/gnu_permuted_mnist_2500
On a CPU the launcher sets the library's XLA flags (supsup_jax/xla_flags.py:
XLA's fused matmuls measured ~20 % slower than its plain ones for this net).
Evaluation uses 10 test batches per task (the paper reports a figure only).
Ten tasks train at once (vmap) and the 2,500-row bank is saved every 10
minutes at a task end (and after each evaluation), not after every task.
The first layer skips the images' background pixels (``sparse_input``: the
same products up to float round-off, ~2x faster for that layer on a CPU).
On a CPU the host is split into one device per core (``cpu_devices=0``) and
each device trains its share of the ten tasks (mesh ``("tasks", -1)``): the
same numbers, ~25 % faster than one device using all cores. Each device
holds the whole bank and infers its share of the test batches' tasks
(``supsup.bank_split="units"``: all devices busy at every evaluation). On several
accelerators ``tasks_in_parallel`` must be a multiple of their count (or set
``--config.mesh="[('data', -1)]"``).
"""
from launch.configs import gnu_permuted_mnist_lenet


def get_config():
  c = gnu_permuted_mnist_lenet.get_config()
  c.experiment = "gnu_permuted_mnist_2500"
  c.num_tasks = 2500
  c.num_outputs = 500
  c.inference_objective = "g"
  c.eval_after_tasks = (10, 50, 100, 250, 500, 1000, 1500, 2000, 2500)
  c.eval_batches_per_task = 10
  c.log_every_steps = 1000
  c.tasks_in_parallel = 10
  c.checkpoint_every_minutes = 10.0
  c.model_options.sparse_input = True
  c.cpu_devices = 0
  c.mesh = (("tasks", -1),)
  c.supsup.bank_split = "units"
  return c
