r"""Meta-ticket (Chijiwa et al. 2022) vs MAML, 5-way k-shot, LeNet 300-100.

  python -m launch.main --config=launch/configs/meta_ticket_mnist.py \
      --workdir=/tmp/meta_ticket_mnist

Meta-trains on Fashion-MNIST episodes, meta-tests on MNIST episodes (both
datasets have 10 classes; see supsup_jax/subnetwork/meta_ticket.py).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "meta_ticket_mnist"
  c.runner = "subnetwork"
  c.method = "meta_ticket"
  c.meta_train_dataset = "fashion_mnist"
  c.meta_test_dataset = "mnist"
  c.data_dir = ""
  c.model = "lenet300100"
  c.model_options = ml_collections.ConfigDict()
  c.seed = 0
  c.init = "kaiming_normal"      # the random network φ (also MAML's starting point)
  c.ways = 5
  c.shots = 5
  c.queries = 15
  c.inner_lr = 0.1
  c.inner_steps = 5
  c.inner_steps_test = 10
  c.meta_batch = 4
  c.meta_iterations = 500
  c.maml_outer_lr = 1e-3
  c.meta_ticket_outer_lr = 1e-2
  c.meta_ticket_k = 0.5          # fraction of weights the mask keeps
  c.eval_episodes = 200
  return c
