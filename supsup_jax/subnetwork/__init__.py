"""Finding one subnetwork: lottery tickets, Zhou supermasks, edge-popup, PAC-Net,
Meta-ticket (single-task and transfer studies; runner ``subnetwork``).

Modules, one idea each:

* :mod:`pruning`: magnitude pruning (per layer or global, exact counts) and
  rewinding;
* :mod:`fit`: a jitted single-task training loop over any "trainable ->
  effective parameters" map, test accuracy, and the ``Session`` a study
  trains and checkpoints through;
* :mod:`options`: one-line checks of the studies' config values;
* :mod:`methods`: dense, lottery ticket, Zhou supermask, edge-popup; each
  returns accuracy-vs-kept-fraction points;
* :mod:`pac_net`: Prune, Allocate, Calibrate transfer;
* :mod:`meta_ticket`: a meta-learned supermask for few-shot learning vs MAML.

The runner (workdir, checkpoints, results.json, CSV, PNG) is
:mod:`supsup_jax.runs.subnetwork`; nothing here imports it.
"""
