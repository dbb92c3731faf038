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
  c.data_dir = ""
  c.download = False
  c.model = "lenet300100"
  c.model_options = ml_collections.ConfigDict()
  c.seed = 0
  c.init = "kaiming_normal"      # the random network φ (also MAML's starting point)
  c.log_every_steps = 100        # meta-training chunks (progress, non-finite guard)
  c.checkpoint_every_steps = 0   # also checkpoint inside meta-training (0: after each method)
  c.stop_after_steps = 0
  c.meta_ticket = ml_collections.ConfigDict(dict(
      train_dataset="fashion_mnist",  # meta-training episodes (train split)
      test_dataset="mnist",           # meta-test episodes (test split)
      ways=5,
      shots=5,
      queries=15,
      inner_lr=0.1,
      inner_steps=5,
      inner_steps_test=10,
      meta_batch=4,
      meta_iterations=500,
      maml_outer_lr=1e-3,
      outer_lr=1e-2,                  # Meta-ticket's scores
      keep_fraction=0.5,              # fraction of weights the mask keeps
      eval_episodes=200,
  ))
  return c
