r"""Finding one subnetwork: LeNet 300-100 on MNIST (10 classes, one task).

  python -m launch.main --config=launch/configs/subnetwork_mnist.py \
      --workdir=/tmp/subnetwork_mnist [--config.method=lottery_ticket]

Curves of accuracy vs fraction of weights kept for dense, lottery tickets
(Frankle & Carbin 2019; rewound to θ0, and without rewinding), Zhou et al.
2019 supermasks and edge-popup (Ramanujan et al. 2020). Weight training
follows Frankle & Carbin's LeNet setting (Adam 1.2e-3) for fewer iterations
(`iterations`; the paper trains 50k iterations of batch 60).

`method`: a comma list of subnetwork methods (the curves), or one study name
(see supsup_jax/runs/subnetwork.py). Each method reads its own sub-config:
`lottery_ticket.*`, `supermask.*` (zhou_supermask, edge_popup), `zhou.*`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "subnetwork_mnist"
  c.runner = "subnetwork"
  c.method = "dense,lottery_ticket,zhou_supermask,edge_popup"
  c.dataset = "mnist"            # mnist | fashion_mnist | cifar10 (all classes, one task)
  c.data_dir = ""
  c.download = False
  c.model = "lenet300100"
  c.model_options = ml_collections.ConfigDict()
  c.seed = 0
  c.kept_fractions = (1.0, 0.5, 0.2, 0.1, 0.05)
  # Weight training (dense, lottery ticket).
  c.init = "kaiming_normal"
  c.optimizer = "adam"
  c.learning_rate = 1.2e-3
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.batch_size = 128
  c.iterations = 3000            # per training run (each lottery-ticket round retrains)
  c.epochs = 0.0                 # used when iterations == 0: ceil(epochs * train size / batch)
  # Run: training chunks (progress, non-finite guard), checkpoints inside
  # trainings (0: only after each round / fraction / method), stop early.
  c.log_every_steps = 500
  c.checkpoint_every_steps = 0
  c.stop_after_steps = 0
  # Lottery ticket (also: rewind_iteration is kept by the shared dense training).
  c.lottery_ticket = ml_collections.ConfigDict(dict(
      rewind="init,none",        # comma list of init | iteration | none | reinit
      rewind_iteration=0,        # k for rewind=iteration (late rewinding)
      scope="layer",             # layer | global
      output_rate_factor=0.5,    # output layer pruned at half the rate
      rounds=0,                  # 0: one round per kept fraction; > 0: geometric
      prune_rate=0.2,            # per round when rounds > 0
  ))
  # Supermasks (Zhou, edge-popup): scores trained over fixed weights.
  c.supermask = ml_collections.ConfigDict(dict(
      init="signed_constant",
      scale_fan=True,            # weights / sqrt(k): Kaiming std over the kept fan-in
      optimizer="adam",
      learning_rate=1e-2,        # edge-popup's scores
  ))
  c.zhou = ml_collections.ConfigDict(dict(
      learning_rate=0.1,         # Zhou's scores (Bernoulli-noisy gradients)
      samples=5,                 # sampled masks per test
  ))
  # Strong lottery tickets (method "strong_ticket"; Malach et al. 2020, arXiv
  # 2002.00585; Pensia et al. 2020, arXiv 2006.07990): a trained target MLP,
  # and per width factor m a random network (two uniform[-1, 1] layers per
  # target layer, m random units per target input) pruned to reproduce it,
  # by the subset-sum construction and by edge-popup.
  # See supsup_jax/subnetwork/strong_ticket.py.
  c.strong_ticket = ml_collections.ConfigDict(dict(
      target="mlp",                  # mlp (target_hidden) | lenet300100 | fc10241024
      target_hidden=(100,),          # one hidden layer: 784-100-10, bias-free ReLU
      target_steps=2000,             # Adam, batch batch_size
      target_learning_rate=1e-3,
      batch_size=128,
      width_factors=(1, 2, 4, 8, 16, 32, 64),
      distribution="uniform",        # Pensia et al.: uniform[-1, 1]
      subset_sum="exact",            # exact (meet in the middle) | greedy
      max_subset=16,                 # exact over <= this many products per weight (2^(n/2) work)
      edge_popup_losses=("logits", "ce"),  # distance to target logits; labels
      edge_popup_steps=300,
      # Adam on scores drawn uniform[-1, 1] (not fan-scaled: see
      # strong_ticket.edge_popup). Over unscaled uniform[-1, 1] weights a
      # faster rate reorders the masks so fast that the network dies
      # (all-zero logits); a slower one leaves its logits 10-100x too large.
      edge_popup_learning_rate=3e-3,
      edge_popup_max_width_factor=32,  # edge-popup skipped above this (0: never)
      edge_popup_first_layer="block",  # block (diagonal blocks) | dense (papers' layer)
      eval_chunk=500,
      memory_budget_gib=24.0,
  ))
  return c
