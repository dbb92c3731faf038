r"""NNs PermutedMNIST: training without task identity, LeNet 300-100 out 500.

The learner sees one stream of batches; the task switches every
``iterations_per_task`` (1000) batches without a word. Every
``nns.check_every`` (100) batches it takes K = max(masks so far, 5) candidate
masks at alpha = 1/K, nu = softmax(-dH/dalpha), and allocates a new mask when
max(nu) < (1 + 2^-3) / K, else trains mask argmax(nu) (Wortsman et al. 2020,
sec. 3.6 and the authors' code). Threshold masks, RMSprop 1e-4, batch 128;
evaluation as in GNu (one-shot H from 1 image per test batch). The paper's
run has 2500 tasks (figure only); the CPU-sized default is 10:
  python -m launch.main --config=launch/configs/nns_permuted_mnist.py \
      --workdir=runs/nns_permuted_mnist --config.num_tasks=2500
"""
from launch.configs import common


def get_config():
  c = common.base_config()
  c.experiment = "nns_permuted_mnist"
  c.scenario = "NNs"
  c.dataset = "permuted_mnist"
  c.num_tasks = 10
  c.model = "lenet300100"
  c.num_outputs = 500
  c.mask_kind = "threshold"
  c.optimizer = "rmsprop"
  c.learning_rate = 1e-4
  c.batch_size = 128
  c.iterations_per_task = 1000
  c.nns.check_every = 100
  c.nns.max_masks = 2500
  c.inference_algorithm = "oneshot"
  c.inference_objective = "entropy"
  c.inference_examples = 1
  c.eval_after_tasks = (10, 50, 100, 250, 500, 1000, 1500, 2000, 2500)
  c.eval_batches_per_task = 10
  c.supsup.keep_scores = False
  c.log_every_steps = 500
  # The bank holds nns.max_masks rows (98.5 MB at 2500): save it every 10 minutes
  # at a task end (and after each evaluation), not after every task.
  c.checkpoint_every_minutes = 10.0
  return c
