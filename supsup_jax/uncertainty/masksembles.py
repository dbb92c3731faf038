"""Masksembles masks (Durasov, Bagautdinov, Baque & Fua, CVPR 2021, arXiv 2012.08334).

N fixed binary masks over a layer's C channels, generated once from (N, scale):
every mask has the same number m of ones, and the union of the masks covers all
C channels. The scale controls the overlap: each mask picks m of ``int(m *
scale)`` positions uniformly, the positions no mask picked are dropped, so two
masks share about m / scale ones (mean pairwise IoU ≈ 1 / (2 scale - 1));
scale 1 gives N identical all-ones masks (one model), a large scale nearly
disjoint masks (an ensemble of thin networks).

The generator follows the authors' reference code: m = int(C / (scale (1 -
(1 - 1/scale)^N))) inverts the expected number of used positions, and a
bisection on the scale redraws until exactly C positions are used. Here the
draws come from a seeded NumPy generator (deterministic) and the search is
bounded, so a combination that cannot be met raises instead of looping.
"""
from __future__ import annotations

import math

import numpy as np

MIN_CHANNELS = 10  # the reference implementation's limits
MAX_SCALE = 6.0
MIN_SCALE = 1.0
_MAX_BISECTION = 200
_MAX_REDRAWS = 200


def check_masksembles(channels: int, num_masks: int, scale: float) -> None:
  """One-line ``ValueError`` unless (channels, num_masks, scale) is feasible."""
  if not isinstance(num_masks, (int, np.integer)) or isinstance(num_masks, bool) or num_masks < 1:
    raise ValueError(f"Masksembles num_masks must be an int >= 1, got {num_masks!r}")
  if not isinstance(channels, (int, np.integer)) or channels < MIN_CHANNELS:
    raise ValueError(f"Masksembles needs a layer of >= {MIN_CHANNELS} channels, got {channels!r}")
  try:
    s = float(scale)
  except (TypeError, ValueError):
    s = math.nan
  if not MIN_SCALE <= s <= MAX_SCALE:
    raise ValueError(
        f"Masksembles scale={scale!r} cannot make {num_masks} masks of width {channels}; "
        f"feasible range: {MIN_SCALE} <= scale <= {MAX_SCALE}")


def active_features(channels: int, num_masks: int, scale: float) -> int:
  """Ones per mask, m = int(C / (scale (1 - (1 - 1/scale)^N)))."""
  scale = float(scale)
  return int(int(channels) / (scale * (1.0 - (1.0 - 1.0 / scale) ** num_masks)))


def _draw(rng: np.random.Generator, m: int, n: int, s: float) -> np.ndarray:
  """N masks, each m ones among int(m s) positions; unused positions dropped."""
  total = max(int(m * s), m)
  masks = np.zeros((n, total), np.float32)
  for i in range(n):
    masks[i, rng.choice(total, m, replace=False)] = 1.0
  return masks[:, masks.any(axis=0)]


def _draw_expected(rng, m, n, s):
  # Reference generate_masks: redraw until the number of used positions is
  # its expectation int(m s (1 - (1 - 1/s)^n)) (keeps the overlap typical).
  expected = int(m * s * (1.0 - (1.0 - 1.0 / s) ** n))
  masks = _draw(rng, m, n, s)
  for _ in range(_MAX_REDRAWS):
    if masks.shape[1] == expected:
      break
    masks = _draw(rng, m, n, s)
  return masks


def generate_masks(channels: int, num_masks: int, scale: float, seed: int = 0) -> np.ndarray:
  """float32 0/1 masks ``[num_masks, channels]``, same number of ones in each.

  Raises ``ValueError`` (feasible range) for a bad combination, before and
  instead of searching forever.
  """
  check_masksembles(channels, num_masks, scale)
  rng = np.random.default_rng(seed)
  m = active_features(channels, num_masks, scale)
  masks = _draw_expected(rng, m, num_masks, float(scale))
  if masks.shape[1] == channels:
    return masks
  # Bisection on the scale, as in the reference code, with the same bracket.
  down, up = max(0.2 * float(scale), 1.0), 4.0 * float(scale)
  for _ in range(_MAX_BISECTION):
    s = 0.5 * (down + up)
    masks = _draw_expected(rng, m, num_masks, s)
    width = masks.shape[1]
    if width == channels:
      return masks
    if width < channels:
      down = s
    else:
      up = s
  raise ValueError(
      f"Masksembles scale={scale!r} could not produce {num_masks} masks of width {channels} "
      f"(m={m} ones each); feasible range {MIN_SCALE} <= scale <= {MAX_SCALE}, "
      f"and narrow layers need a smaller scale")


def mean_pairwise_iou(masks: np.ndarray) -> float:
  """Mean intersection-over-union over mask pairs (1.0 for a single mask)."""
  masks = np.asarray(masks, bool)
  n = masks.shape[0]
  if n < 2:
    return 1.0
  ious = [np.sum(masks[i] & masks[j]) / np.sum(masks[i] | masks[j])
          for i in range(n) for j in range(i + 1, n)]
  return float(np.mean(ious))
