"""Finding one subnetwork: lottery tickets, Zhou supermasks, edge-popup, PAC-Net,
Meta-ticket (single-task and transfer studies; runner ``subnetwork``).

Modules, one idea each:

* :mod:`pruning`: magnitude pruning (per layer or global, exact counts) and
  rewinding;
* :mod:`fit`: a jitted single-task training loop over any "trainable ->
  effective parameters" map, and test accuracy;
* :mod:`methods`: dense, lottery ticket, Zhou supermask, edge-popup; each
  returns accuracy-vs-kept-fraction points;
* :mod:`pac_net`: Prune, Allocate, Calibrate transfer;
* :mod:`meta_ticket`: a meta-learned supermask for few-shot learning vs MAML;
* :mod:`run`: the runner (results.json, CSV, PNG).
"""
