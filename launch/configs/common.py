"""Defaults shared by every experiment config; each config overrides some."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = ""
  c.scenario = "GG"              # GG | GNs | GNu | NNs
  c.method = "supsup"            # the learner (supsup_jax.methods.METHODS)
  # Data.
  c.dataset = "split_mnist"
  c.dataset_options = ml_collections.ConfigDict()
  c.data_dir = ""                # "" -> $SUPSUP_DATA_DIR, else tfds download
  c.download = False
  c.num_tasks = 5
  c.seed = 0                     # weights, scores and data order
  c.data_seed = ml_collections.config_dict.placeholder(int)  # None -> seed
  # Model and masks.
  c.model = "lenet300100"
  c.model_options = ml_collections.ConfigDict()
  c.num_outputs = 0              # 0 -> classes per task; more = superfluous neurons
  c.init = "signed_constant"
  # Fixed weights from a checkpoint instead of the seed (SupSup; supsup_jax/pretrained.py):
  c.weights_from = ""            # "" = random from seed; orbax params checkpoint or
                                 # a finished upper_bound/lower_bound workdir
  c.weights_from_task = -1       # upper_bound workdir: which task's network (0-based)
  c.weights_from_fresh = ()      # leaf path prefixes kept from the seed, e.g. ("Dense_0",)
  c.mask_kind = "topk"           # topk | threshold
  c.sparsity = 0.5               # top-k keep fraction k
  c.er_sparsity = 0.0            # > 0: ER per-layer budget with this s
  c.fast_conv = True             # CPU: supsup_jax.conv's custom VJP (XLA's conv gradients are slow in scans)
  # Optimisation.
  c.optimizer = "rmsprop"        # rmsprop | adam | sgd
  c.learning_rate = 1e-4
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.schedule = "constant"        # constant | cosine
  c.warmup_steps = 0
  c.batch_size = 128
  c.iterations_per_task = 1000
  c.epochs_per_task = 0.0        # used when iterations_per_task == 0
  c.tasks_in_parallel = 1        # GG: train this many tasks at once (vmap)
  c.mesh = (("data", -1),)      # device mesh: ("tasks"|"data", size); -1 = the rest
  c.cpu_devices = 1              # CPU: split the host into this many devices (0 = one per core dividing tasks_in_parallel)
  # Evaluation.
  c.eval_after_tasks = ()        # extra evaluation points; the last task always
  c.test_batch_size = 128
  c.eval_batches_per_task = 0    # 0 = whole test split
  c.inference_algorithm = "oneshot"   # oneshot | binary
  c.inference_objective = "entropy"   # entropy (H) | g (G)
  c.inference_examples = 1       # images per batch used to infer; 0 = all
  c.per_example_inference = False
  # Each method's own options, read (and validated) by that method only.
  c.supsup = ml_collections.ConfigDict()
  c.supsup.transfer = False      # init scores from the mean of earlier tasks'
  c.supsup.keep_scores = True    # also keep each task's real scores in memory
  # Methods that train weights (baselines, PackNet).
  c.trained_net = ml_collections.ConfigDict()
  c.trained_net.init = "kaiming_normal"       # init of trained weights
  c.trained_net.weight_learning_rate = 0.0    # 0 -> learning_rate; steps that train weights
  c.trained_net.adapt_learning_rate = 1e-2    # BatchE factors / separate heads after task 1
  c.trained_net.adapt_optimizer = "adam"      # separate heads and BatchE (authors' code)
  c.abatche = ml_collections.ConfigDict()
  c.abatche.inference = "entropy"             # entropy | oneshot
  c.packnet = ml_collections.ConfigDict()
  c.packnet.prune_fraction = -1.0  # < 0: an even split of the weights over tasks
  c.packnet.prune_at = 0.7         # fraction of a task's steps before pruning
  # NNs (no task identity): detection of new data.
  c.nns = ml_collections.ConfigDict()  # read by the NNs loop (supsup_jax/runs/continual.py)
  c.nns.check_every = 100        # batches between decisions
  c.nns.max_masks = 2500         # cap on allocated masks
  c.compare_objectives = ()      # also report task inference with these objectives
  # Bookkeeping.
  c.log_every_steps = 250
  c.checkpoint_every_steps = 0   # 0 = only after each task
  c.checkpoint_every_minutes = 0.0  # > 0: at a task end only this often
                                    # (and after evaluations, at the end)
  c.stop_after_steps = 0         # > 0: checkpoint and stop after that many steps
                                 # in this process (time-limited job slots)
  return c
