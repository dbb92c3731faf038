"""Uncertainty metrics of a predictive distribution made of several members.

Everything here is NumPy on the host (the predictions are computed on the
device, the metrics are cheap). Inputs are member *log*-probabilities
``[M, N, C]`` (M members or stochastic samples, N examples, C classes); the
predictive distribution is their mean, p̄ = mean_m softmax_m, computed as
``logsumexp_m - log M`` so NLL stays finite when a member is certain.

- NLL = -mean_n log p̄[y_n]
- Brier = mean_n sum_c (p̄_c - 1[c = y_n])^2
- ECE (Naeini et al. 2015; Guo et al. 2017, arXiv 1706.04599) over 15
  equal-width confidence bins (lo, hi]: sum_b (n_b / n) ``|acc_b - conf_b|``
- OOD detection: AUROC of a score separating in-distribution inputs
  (negatives) from out-of-distribution inputs (positives), with the score the
  predictive entropy H[p̄] or the mutual information H[p̄] - mean_m H[p_m]
  (the "BALD" epistemic term; Houlsby et al. 2011, arXiv 1112.5745).
  AUROC is the Mann-Whitney U statistic over average ranks, so ties count 1/2.
"""
from __future__ import annotations

import numpy as np
import scipy.special
import scipy.stats

NUM_BINS = 15


def _check_log_probs(member_log_probs: np.ndarray) -> np.ndarray:
  lp = np.asarray(member_log_probs, np.float64)
  if lp.ndim != 3:
    raise ValueError(f"member log-probs must be [members, examples, classes], got shape {lp.shape}")
  return lp


def mean_log_probs(member_log_probs: np.ndarray) -> np.ndarray:
  """log p̄ ``[N, C]`` from member log-probs ``[M, N, C]``."""
  lp = _check_log_probs(member_log_probs)
  return scipy.special.logsumexp(lp, axis=0) - np.log(lp.shape[0])


def entropy_from_log_probs(log_probs: np.ndarray) -> np.ndarray:
  """H[p] = -sum_c p_c log p_c over the last axis (0 log 0 = 0)."""
  lp = np.asarray(log_probs, np.float64)
  p = np.exp(lp)
  return -np.sum(np.where(p > 0, p * lp, 0.0), axis=-1)


def mutual_information(member_log_probs: np.ndarray) -> np.ndarray:
  """H[p̄] - mean_m H[p_m] per example ``[N]`` (0 for a single member)."""
  lp = _check_log_probs(member_log_probs)
  return entropy_from_log_probs(mean_log_probs(lp)) - entropy_from_log_probs(lp).mean(0)


def accuracy(log_probs: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(log_probs, -1) == np.asarray(labels)))


def nll(log_probs: np.ndarray, labels: np.ndarray) -> float:
  labels = np.asarray(labels)
  return float(-np.mean(np.asarray(log_probs, np.float64)[np.arange(len(labels)), labels]))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
  probs = np.asarray(probs, np.float64)
  onehot = np.eye(probs.shape[-1])[np.asarray(labels)]
  return float(np.mean(np.sum((probs - onehot) ** 2, axis=-1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
                     ) -> dict[str, np.ndarray]:
  """Per confidence bin (lo, hi]: ``count``, mean ``accuracy``, mean ``confidence``.

  Empty bins have count 0 and NaN accuracy/confidence. ``edges`` has
  ``num_bins + 1`` entries from 0 to 1.
  """
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")
  probs = np.asarray(probs, np.float64)
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == np.asarray(labels)).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # right=True: bin b holds edges[b] < conf <= edges[b + 1].
  idx = np.digitize(conf, edges[1:-1], right=True)
  count = np.bincount(idx, minlength=num_bins).astype(np.int64)
  with np.errstate(invalid="ignore", divide="ignore"):
    acc = np.bincount(idx, correct, minlength=num_bins) / count
    mean_conf = np.bincount(idx, conf, minlength=num_bins) / count
  return {"edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf}


def ece(probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> float:
  b = reliability_bins(probs, labels, num_bins)
  n = b["count"].sum()
  full = b["count"] > 0
  return float(np.sum(b["count"][full] / n * np.abs(b["accuracy"][full] - b["confidence"][full])))


def auroc(negative_scores: np.ndarray, positive_scores: np.ndarray) -> float:
  """P(score_pos > score_neg) + P(tie) / 2, from the Mann-Whitney U statistic.

  O((n + m) log(n + m)) via average ranks (ties share their mean rank).
  """
  neg = np.asarray(negative_scores, np.float64).ravel()
  pos = np.asarray(positive_scores, np.float64).ravel()
  if neg.size == 0 or pos.size == 0:
    raise ValueError(f"AUROC needs both classes; got {neg.size} negatives, {pos.size} positives")
  ranks = scipy.stats.rankdata(np.concatenate([neg, pos]))  # 1-based, ties averaged
  u = ranks[neg.size:].sum() - pos.size * (pos.size + 1) / 2.0
  return float(u / (pos.size * neg.size))


def summarize(member_log_probs: np.ndarray, labels: np.ndarray,
              ood_member_log_probs: np.ndarray | None = None,
              num_bins: int = NUM_BINS) -> dict[str, float]:
  """All scalar metrics of one method: accuracy, nll, brier, ece, and (with OOD
  inputs) ood_auroc (entropy) and ood_auroc_mi (mutual information)."""
  log_p = mean_log_probs(member_log_probs)
  p = np.exp(log_p)
  out = {"accuracy": accuracy(log_p, labels), "nll": nll(log_p, labels),
         "brier": brier(p, labels), "ece": ece(p, labels, num_bins)}
  if ood_member_log_probs is not None:
    scores = ood_detection(member_log_probs, ood_member_log_probs)
    out["ood_auroc"], out["ood_auroc_mi"] = scores["auroc"], scores["auroc_mi"]
    out["mean_entropy_in"] = scores["mean_entropy_in"]
    out["mean_entropy_ood"] = scores["mean_entropy_ood"]
  return out


def ood_detection(member_log_probs: np.ndarray, ood_member_log_probs: np.ndarray
                  ) -> dict[str, float]:
  """How well one OOD set ``[M, N_ood, C]`` is told apart from the in-distribution
  inputs ``[M, N, C]``: ``auroc`` of the predictive entropy, ``auroc_mi`` of the
  mutual information, and the mean entropy of each side. A study with several
  OOD sets (e.g. near and far) calls it once per set."""
  h_in = entropy_from_log_probs(mean_log_probs(member_log_probs))
  h_out = entropy_from_log_probs(mean_log_probs(ood_member_log_probs))
  return {"auroc": auroc(h_in, h_out),
          "auroc_mi": auroc(mutual_information(member_log_probs),
                            mutual_information(ood_member_log_probs)),
          "mean_entropy_in": float(h_in.mean()), "mean_entropy_ood": float(h_out.mean())}
