"""Predictive uncertainty from masks: MC-dropout, Masksembles, deep ensembles and
supermask ensembles over one random network, with calibration and OOD metrics.

Modules: ``calibration`` (NLL, Brier, ECE, entropy, mutual information, AUROC),
``masksembles`` (mask generation), ``models`` (MLP with dropout / group masks),
``members`` (the methods and their vmapped trainer). The study's runner (one
method per run, resumable) is :mod:`supsup_jax.runs.uncertainty`.
"""
