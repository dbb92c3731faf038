r"""GNu RotatedMNIST: 36 tasks 10 degrees apart, FC 1024-1024 with 200 outputs.

Binary task inference on the whole batch of 128.
  python -m launch.main --config=launch/configs/gnu_rotated_mnist.py \
      --workdir=runs/gnu_rotated_mnist
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "gnu_rotated_mnist"
  c.scenario = "GNu"
  c.dataset = "rotated_mnist"
  c.dataset_options.rotation_step_deg = 10.0
  c.num_tasks = 36
  c.model = "fc10241024"
  c.num_outputs = 200
  c.mask_kind = "threshold"
  c.optimizer = "rmsprop"
  c.learning_rate = 1e-4
  c.batch_size = 128
  c.iterations_per_task = 1000
  c.inference_algorithm = "binary"
  c.inference_objective = "entropy"
  c.inference_examples = 0
  c.eval_after_tasks = (10, 20, 36)
  # Binary inference re-runs the superposed FC 1024-1024 per round and batch;
  # 20 test batches (2,560 images) per task keep the evaluation to minutes.
  c.eval_batches_per_task = 20
  c.supsup.keep_scores = False
  c.log_every_steps = 500
  return c
