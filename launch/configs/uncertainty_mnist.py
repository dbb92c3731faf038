r"""Uncertainty from masks: MNIST in distribution, Fashion-MNIST out of distribution.

LeNet-sized MLP 784-300-100-10; one method per run: ``config.method`` is the
one uncertainty method this run trains (single | mc_dropout | masksembles |
deep_ensemble | supermask_ensemble), N = 4 members / masks / samples. Each
method's own options are in the sub-config named after it
(``config.mc_dropout``, ``config.masksembles``, ``config.supermask_ensemble``);
the run refuses another method's options set away from these defaults (they
would be ignored). CPU-sized default: 2000 steps of batch 128 (about 4 epochs;
1.5-3 minutes per method on a busy 2-core CPU, ensembles the longest),
checkpointed every ``steps_per_call`` steps: the same command resumes a killed
run. The five-method table (list the workdirs in this order):
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
  c.method = "single"        # the one method of this run (see above)
  c.dataset = "mnist"
  c.id_classes = ()          # () = all classes
  c.ood_dataset = "fashion_mnist"
  c.ood_classes = ()
  c.hidden = (300, 100)
  c.num_members = 4          # N: deep_ensemble / supermask_ensemble members, Masksembles masks
  c.optimizer = "adam"       # the dense networks (all methods but supermask_ensemble)
  c.learning_rate = 1e-3
  # Each method's own options (read by that method only).
  c.mc_dropout = ml_collections.ConfigDict()
  c.mc_dropout.samples = 4   # T: test passes (= N: same test cost)
  c.mc_dropout.rate = 0.5    # Gal & Ghahramani's rate
  c.masksembles = ml_collections.ConfigDict()
  c.masksembles.scale = 2.0  # mask overlap: feasible 1 <= scale <= 6
  c.supermask_ensemble = ml_collections.ConfigDict()
  c.supermask_ensemble.mask_kind = "threshold"  # "threshold" (SupSup LeNet) or "topk"
  c.supermask_ensemble.topk_fraction = 0.5      # kept fraction for "topk"
  c.supermask_ensemble.weights_seed = 0         # its fixed random network
  c.supermask_ensemble.optimizer = "adam"       # of the scores
  c.supermask_ensemble.learning_rate = 1e-3
  c.batch_size = 128
  c.train_steps = 2000
  c.steps_per_call = 250     # steps per compiled lax.scan call; progress and a checkpoint each
  c.eval_batch_size = 1000
  c.num_bins = 15
  c.seed = 0
  c.data_dir = ""
  c.download = False
  c.stop_after_steps = 0     # > 0: checkpoint and stop after that many steps (resume later)
  return c
