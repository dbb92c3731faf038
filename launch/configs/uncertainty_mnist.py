r"""Uncertainty from masks: MNIST in distribution, Fashion-MNIST out of distribution.

LeNet-sized MLP 784-300-100-10; one method per run (``--config.method=``
single | mc_dropout | masksembles | deep_ensemble | supermask_ensemble), N = 4
members / masks / samples. CPU-sized default: 2000 steps of batch 128 (about 4
epochs; 1.5-3 minutes per method on a busy 2-core CPU, ensembles the
longest). The five-method table (list the workdirs in this order):
  for m in single mc_dropout masksembles deep_ensemble supermask_ensemble; do
    python -m launch.main --config=launch/configs/uncertainty_mnist.py \
        --workdir=runs/uncertainty_mnist/$m --config.method=$m
  done
  python -m supsup_jax.runs.uncertainty runs/uncertainty_mnist/*
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.runner = "uncertainty"
  c.experiment = "uncertainty_mnist"
  c.method = "single"
  c.dataset = "mnist"
  c.id_classes = ()          # () = all classes
  c.ood_dataset = "fashion_mnist"
  c.ood_classes = ()
  c.hidden = (300, 100)
  c.num_members = 4          # N: ensemble members / Masksembles masks
  c.mc_samples = 4           # T: MC-dropout test passes (= N: same test cost)
  c.dropout_rate = 0.5       # Gal & Ghahramani's rate
  c.masksembles_scale = 2.0
  c.mask_kind = "threshold"  # supermask_ensemble: "threshold" (SupSup LeNet) or "topk"
  c.topk_fraction = 0.5
  c.weights_seed = 0         # supermask_ensemble's fixed random network
  c.optimizer = "adam"       # dense networks
  c.learning_rate = 1e-3
  c.supermask_optimizer = "adam"  # supermask scores
  c.supermask_learning_rate = 1e-3
  c.batch_size = 128
  c.train_steps = 2000
  c.steps_per_call = 250     # steps per compiled lax.scan call (progress logged per call)
  c.eval_batch_size = 1000
  c.num_bins = 15
  c.seed = 0
  c.data_dir = ""
  c.download = False
  return c
