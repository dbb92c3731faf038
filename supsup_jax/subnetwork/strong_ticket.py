r"""Strong lottery tickets: a pruned *random* network that reproduces a trained one.

Malach, Yehudai, Shalev-Shwartz & Shamir 2020 ("Proving the Lottery Ticket
Hypothesis: Pruning is All You Need", arXiv 2002.00585) prove that a random
ReLU network of twice the depth and polynomially larger width contains, with
high probability, a subnetwork within ε of any given target network on every
bounded input, found by pruning alone. Pensia, Rajput, Nagle, Vishwakarma &
Papailiopoulos 2020 ("Optimal Lottery Tickets via SubsetSum: Logarithmic
Over-Parameterization is Sufficient", arXiv 2006.07990) bring the width factor
down to O(log(d·l/ε)) with a subset-sum construction, which this module
builds explicitly.

The construction (Pensia et al.; Malach et al. pass signs the same way). A bias-free target layer
z = Wᵀ x (W: [d_in, d_out]) is replaced by two random layers::

    h_{j,i} = relu(u_{j,i} x_j)             (u: [d_in, m]; unit (j, i) of
                                             the first random layer after its
                                             off-diagonal inputs are pruned)
    ẑ_k     = Σ_{j,i} v_{j,i,k} h_{j,i}      (v: [d_in, m, d_out])

with every u, v drawn i.i.d. uniform in [-1, 1] and ``m`` the *width factor*
(the first random layer has d_in·m units, as Pensia's M_{2i-1}). Since
relu(u x) = u relu(x) for u > 0 and abs(u) relu(-x) for u < 0, and
w x = w relu(x) - w relu(-x), keeping v_{j,i,k} for i in S⁺ (units with
u > 0) and T⁻ (u < 0) gives::

    ẑ_k = Σ_j A_{jk} relu(x_j) + B_{jk} relu(-x_j),
    A_{jk} = Σ_{i∈S⁺} u_{j,i} v_{j,i,k},  B_{jk} = Σ_{i∈T⁻} |u_{j,i}| v_{j,i,k},

so choosing S⁺ (T⁻) is a subset-sum problem over the ~m/2 random products
u·v: make A_{jk} ≈ W_{jk} and B_{jk} ≈ -W_{jk}. Lueker (1998) shows
n = O(log 1/ε) uniform numbers represent every target in [-1, 1] within ε by
some subset; the best of the 2ⁿ subset sums is typically ~2⁻ⁿ away. Solved
here per weight greedily or exactly (meet in the middle, float32) when a
weight has at most ``max_subset`` candidates; with more, the extra ones are
used greedily and the first ``max_subset`` exactly on the remainder
(:func:`subset_sum`), since 2^(n/2) work per weight is the cost. The
target's ReLU follows ẑ, so the random network has depth 2l with a ReLU
after every layer but the last, as in both papers.

Hidden target layers get non-negative inputs (they follow a ReLU), so only
A matters there and the u < 0 units are pruned.

Error guarantee (exact, per input; :func:`certified_bound`): with
E⁺ = abs(A - W) and E⁻ = abs(B + W) elementwise, one block errs by at most
E⁺ᵀ relu(x) + E⁻ᵀ relu(-x); errors propagate through a later block with
gain max(abs(A), abs(B)) (ReLU is 1-Lipschitz), so
δ_1 = E⁺ᵀ relu(x) + E⁻ᵀ relu(-x), δ_ℓ = abs(A_ℓ)ᵀ δ_{ℓ-1} + E⁺_ℓᵀ a_{ℓ-1} bounds
abs(f_target(x) - f_pruned(x)) per logit (a_ℓ: the target's activations).

The optimisation route is edge-popup (Ramanujan et al., CVPR 2020, arXiv
1911.13299) over the same random weights: per-layer top-k of learned scores
(:func:`supsup_jax.masks.topk_mask`, straight-through) with the
construction's per-layer kept fractions, trained on the distance to the
target's logits (and, for comparison, cross-entropy on the labels). With
``edge_popup_first_layer="block"`` it searches the diagonal-block network
(the dense first layers' off-diagonal weights pruned from the start, as the
construction prunes them; CPU cost d_in·m·d_out per example, not
d_in²·m); ``"dense"`` searches the papers' full network. No random weight
is ever trained: the only trainable pytree is the scores.

Memory. The papers' random network is dense: its first layer of each pair has
d_in · (d_in·m) weights, of which the construction keeps at most one per unit
(the diagonal blocks u). This module stores u and v (``block``) and builds the
dense first layer only for edge-popup with ``edge_popup_first_layer="dense"``;
:func:`memory_estimate` gives both sizes and the widths that fit a budget.

API for a runner that checkpoints between widths: :func:`validate`,
:func:`train_target` (once), :func:`width_row` (one JSON-able dict per width
factor; pass the same key for every width: unit i of every width is then
the same random draw, so the random networks are nested), :func:`plot`,
:func:`format_table`, :func:`memory_estimate`.
"""
from __future__ import annotations

import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import masks as masks_lib
from supsup_jax import models

# Target names: bias-free ReLU MLPs of supsup_jax.models ("mlp": hidden widths
# from strong_ticket.target_hidden).
TARGETS = {"mlp": None, "lenet300100": (300, 100), "fc10241024": (1024, 1024)}
# dataset -> (flattened input size, classes): known before any data is read.
DATASETS = {"mnist": (784, 10), "fashion_mnist": (784, 10), "cifar10": (3072, 10)}
SUBSET_SUM = ("exact", "greedy")
DISTRIBUTIONS = ("uniform",)
EDGE_POPUP_LOSSES = ("logits", "ce")
FIRST_LAYERS = ("block", "dense")
MAX_EXACT = 26          # meet in the middle holds 2^13 sums per half at most
GIB = 1024 ** 3
_F32 = 4


# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------

def _sub(config):
  s = config.get("strong_ticket") if hasattr(config, "get") else None
  if s is None:
    raise ValueError("config.strong_ticket is missing; see launch/configs/subnetwork_mnist.py")
  return s


def _names(v) -> list[str]:
  if isinstance(v, str):
    return [p.strip() for p in v.split(",") if p.strip()]
  return [str(p).strip() for p in v]


def hidden_widths(config) -> tuple[int, ...]:
  s = _sub(config)
  hidden = TARGETS.get(str(s.target))
  return tuple(int(h) for h in (s.target_hidden if hidden is None else hidden))


def target_shapes(config) -> list[tuple[int, int]]:
  """[(d_in, d_out)] of the target's kernels, from the config alone."""
  d_in, classes = DATASETS[str(config.dataset)]
  widths = (d_in, *hidden_widths(config), classes)
  return list(zip(widths[:-1], widths[1:]))


def validate(config) -> None:
  """Raises a one-line ValueError for a config the study cannot run."""
  s = _sub(config)
  if str(config.dataset) not in DATASETS:
    raise ValueError(f"strong_ticket: dataset {config.dataset!r} unknown; allowed: "
                     f"{', '.join(DATASETS)}")
  t = str(s.target)
  if t not in TARGETS:
    kind = "is not a dense ReLU MLP" if t in models.MODELS else "is unknown"
    raise ValueError(f"strong_ticket.target {t!r} {kind}; the subset-sum construction "
                     f"replaces dense bias-free ReLU layers; allowed: {', '.join(TARGETS)}")
  if t == "mlp":
    hidden = s.target_hidden
    if (isinstance(hidden, (str, int)) or len(hidden) == 0
        or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)):
      raise ValueError(f"strong_ticket.target_hidden must be a non-empty tuple of ints >= 1, "
                       f"got {hidden!r}")
  factors = s.width_factors
  if isinstance(factors, (str, int, float)) or len(factors) == 0:
    raise ValueError(f"strong_ticket.width_factors must be a non-empty tuple, got {factors!r}")
  for f in factors:
    if isinstance(f, bool) or not isinstance(f, (int, float, np.number)) or f < 1:
      raise ValueError(f"strong_ticket.width_factors entry {f!r} is below 1: the random "
                       f"network needs at least one random unit per target input")
    if float(f) != int(f):
      raise ValueError(f"strong_ticket.width_factors entry {f!r} is not an integer (random "
                       f"units per target input)")
  if s.subset_sum not in SUBSET_SUM:
    raise ValueError(f"strong_ticket.subset_sum {s.subset_sum!r} unknown; allowed: "
                     f"{', '.join(SUBSET_SUM)}")
  if not (isinstance(s.max_subset, int) and 1 <= s.max_subset <= MAX_EXACT):
    raise ValueError(f"strong_ticket.max_subset must be an int in 1..{MAX_EXACT} (exact "
                     f"subset sum costs 2^(n/2) per weight), got {s.max_subset!r}")
  if s.distribution not in DISTRIBUTIONS:
    raise ValueError(f"strong_ticket.distribution {s.distribution!r} unknown; allowed: "
                     f"{', '.join(DISTRIBUTIONS)} (Pensia et al.'s uniform[-1, 1])")
  for loss in _names(s.edge_popup_losses):
    if loss not in EDGE_POPUP_LOSSES:
      raise ValueError(f"strong_ticket.edge_popup_losses entry {loss!r} unknown; allowed: "
                       f"{', '.join(EDGE_POPUP_LOSSES)}")
  if s.edge_popup_first_layer not in FIRST_LAYERS:
    raise ValueError(f"strong_ticket.edge_popup_first_layer {s.edge_popup_first_layer!r} "
                     f"unknown; allowed: {', '.join(FIRST_LAYERS)}")
  for name in ("target_steps", "edge_popup_steps", "edge_popup_max_width_factor"):
    if not isinstance(s[name], int) or s[name] < 0:
      raise ValueError(f"strong_ticket.{name} must be an int >= 0, got {s[name]!r}")
  for name in ("batch_size", "eval_chunk"):
    if not isinstance(s[name], int) or s[name] < 1:
      raise ValueError(f"strong_ticket.{name} must be an int >= 1, got {s[name]!r}")
  for name in ("target_learning_rate", "edge_popup_learning_rate", "memory_budget_gib"):
    if not float(s[name]) > 0:
      raise ValueError(f"strong_ticket.{name} must be > 0, got {s[name]!r}")
  # Memory: refuse a width whose stored random network (plus edge-popup's
  # scores and optimiser state) would not fit the budget.
  shapes = target_shapes(config)
  budget = float(s.memory_budget_gib) * GIB
  limit = int(s.edge_popup_max_width_factor)
  for f in factors:
    with_ep = bool(_names(s.edge_popup_losses)) and (limit <= 0 or int(f) <= limit)
    est = memory_estimate(shapes, int(f), first_layer=s.edge_popup_first_layer,
                          edge_popup=with_ep,
                          budget_gib=float(s.memory_budget_gib), eval_chunk=int(s.eval_chunk))
    if est["peak_bytes"] > budget:
      raise ValueError(f"strong_ticket: width factor {int(f)} needs "
                       f"{est['peak_bytes'] / GIB:.1f} GiB > memory_budget_gib="
                       f"{s.memory_budget_gib:g}; widest that fits: {est['max_width_factor']}")


# ----------------------------------------------------------------------------
# Target
# ----------------------------------------------------------------------------

def make_target_model(config, num_classes: int) -> models.MLP:
  return models.MLP(hidden=hidden_widths(config), num_outputs=int(num_classes))


def target_kernels(params) -> list[jax.Array]:
  """The kernels of a :class:`supsup_jax.models.MLP` params tree, input first."""
  names = sorted(params, key=lambda n: int(n.split("_")[-1]))
  return [jnp.asarray(params[n]["kernel"], jnp.float32) for n in names]


def mlp_forward(kernels: Sequence[jax.Array], x: jax.Array) -> jax.Array:
  """Bias-free ReLU MLP on flattened inputs (the target)."""
  a = x.reshape(x.shape[0], -1)
  for i, w in enumerate(kernels):
    a = a @ w
    if i < len(kernels) - 1:
      a = jax.nn.relu(a)
  return a


_target_forward = jax.jit(mlp_forward)


def train_target(config, stream, key: jax.Array) -> dict:
  """Trains the target normally (Adam on cross-entropy, ``target_steps`` batches).

  Returns the Flax params tree of the bias-free MLP (``Dense_i/kernel``).
  """
  from supsup_jax.subnetwork import fit  # pylint: disable=import-outside-toplevel
  s = _sub(config)
  model = make_target_model(config, stream.num_classes)
  params = model.init(key, jnp.zeros((1, *stream.input_shape), jnp.float32))["params"]
  params = jax.tree.map(lambda p: p.astype(jnp.float32), dict(params))
  train = fit.make_trainer(model, lambda p, frozen, k: p,
                           optax.adam(float(s.target_learning_rate)), stream,
                           int(s.batch_size))
  params, _, _ = train(params, None, jax.random.fold_in(key, 1), 0, int(s.target_steps))
  return jax.tree.map(np.asarray, params)


# ----------------------------------------------------------------------------
# Random network
# ----------------------------------------------------------------------------

def _seed_words(key: jax.Array) -> list[int]:
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return [int(w) for w in np.asarray(data).ravel()]


def _unit_uniform(key, salts: Sequence[int], m: int, shape) -> np.ndarray:
  """[m, *shape] uniform[-1, 1] float32, unit i drawn from its own stream.

  Unit i depends on (key, salts, i) only, so the first m units of a wider
  network are this network's units (nested widths: a wider network contains
  every subnetwork of a narrower one). NumPy's generator: the same numbers on
  every backend, and no XLA compile per shape (threefry under vmap took
  seconds to compile per width).
  """
  words = _seed_words(key) + [int(s) for s in salts]
  out = np.empty((m, *shape), np.float32)
  for i in range(m):
    out[i] = np.random.default_rng(words + [i]).uniform(-1.0, 1.0, shape)
  return out


def random_network(shapes: Sequence[tuple[int, int]], width_factor: int,
                   key: jax.Array) -> list[dict]:
  """Pensia et al.'s random network, two layers per target layer, stored as
  ``[{"u": [d_in, m], "v": [d_in, m, d_out]}]``, every entry uniform[-1, 1].

  ``u`` is the diagonal block of the dense first random layer (unit (j, i) is
  fed by input j); its off-diagonal weights are :func:`dense_first_layer`.
  """
  m = int(width_factor)
  net = []
  for layer, (d_in, d_out) in enumerate(shapes):
    u = _unit_uniform(key, (layer, 0), m, (d_in,)).T
    v = np.transpose(_unit_uniform(key, (layer, 1), m, (d_in, d_out)), (1, 0, 2))
    net.append({"u": jnp.asarray(u), "v": jnp.asarray(v)})
  return net


def dense_first_layer(u: jax.Array, key: jax.Array, layer: int) -> jax.Array:
  """The dense first random layer [d_in, d_in·m] (unit (j, i) is column j·m + i)
  whose diagonal blocks are ``u``; off-diagonal entries uniform[-1, 1]."""
  d_in, m = u.shape
  off = _unit_uniform(key, (layer, 2), m, (d_in, d_in))
  full = np.transpose(off, (1, 2, 0))                    # [input j', unit j, unit i]
  full[np.arange(d_in), np.arange(d_in)] = np.asarray(u)
  return jnp.asarray(full.reshape(d_in, d_in * m))


def _pruned(w, mask):
  # Pruning only: a kept weight is the random weight itself, bit for bit.
  w = np.asarray(w)
  return np.where(np.asarray(mask), w, np.zeros_like(w))


def pruned_network(net: Sequence[dict], masks: Sequence[dict]) -> list[dict]:
  return [{name: _pruned(layer[name], mask[name]) for name in layer}
          for layer, mask in zip(net, masks)]


@jax.jit
def block_forward(net: Sequence[dict], x: jax.Array) -> jax.Array:
  """The 2l-layer random network (ReLU after every layer but the last) with
  each first layer restricted to its diagonal blocks ``u``."""
  a = x.reshape(x.shape[0], -1)
  for i, layer in enumerate(net):
    h = jax.nn.relu(a[:, :, None] * layer["u"][None])        # [B, d_in, m]
    a = h.reshape(h.shape[0], -1) @ layer["v"].reshape(-1, layer["v"].shape[-1])
    if i < len(net) - 1:
      a = jax.nn.relu(a)
  return a


@jax.jit
def dense_forward(net: Sequence[dict], x: jax.Array) -> jax.Array:
  """Same network with dense first layers ``{"U": [d_in, d_in·m], "v"}``."""
  a = x.reshape(x.shape[0], -1)
  for i, layer in enumerate(net):
    h = jax.nn.relu(a @ layer["U"])
    a = h @ layer["v"].reshape(-1, layer["v"].shape[-1])
    if i < len(net) - 1:
      a = jax.nn.relu(a)
  return a


# ----------------------------------------------------------------------------
# Subset sum
# ----------------------------------------------------------------------------

def _bits(n: int) -> jax.Array:
  """[n, 2^n] float 0/1: column c is the subset whose indicator is c's binary digits."""
  c = np.arange(2 ** n)
  return jnp.asarray(((c[None, :] >> np.arange(n)[:, None]) & 1).astype(np.float32))


@jax.jit
def _exact_chunk(numbers: jax.Array, targets: jax.Array):
  """Meet in the middle: all 2^n1 sums of the first half, the sorted 2^n2
  sums of the second, and for each first sum the nearest second sum to
  target - first (binary search). Exact up to float32 rounding."""
  n = numbers.shape[1]
  n1 = n // 2
  n2 = n - n1
  b1, b2 = _bits(n1), _bits(n2)
  s1 = numbers[:, :n1] @ b1                                   # [N, 2^n1]
  s2 = numbers[:, n1:] @ b2                                   # [N, 2^n2]
  order = jnp.argsort(s2, axis=1)
  s2s = jnp.take_along_axis(s2, order, 1)
  want = targets[:, None] - s1
  pos = jax.vmap(lambda a, q: jnp.searchsorted(a, q))(s2s, want)
  lo = jnp.clip(pos - 1, 0, 2 ** n2 - 1)
  hi = jnp.clip(pos, 0, 2 ** n2 - 1)
  e_lo = jnp.abs(want - jnp.take_along_axis(s2s, lo, 1))
  e_hi = jnp.abs(want - jnp.take_along_axis(s2s, hi, 1))
  j2 = jnp.where(e_hi < e_lo, hi, lo)
  err = jnp.minimum(e_lo, e_hi)
  i1 = jnp.argmin(err, axis=1)                                # [N]
  i2 = jnp.take_along_axis(order, jnp.take_along_axis(j2, i1[:, None], 1), 1)[:, 0]
  chosen = jnp.concatenate([b1.T[i1], b2.T[i2]], axis=1) > 0.5
  return chosen


@jax.jit
def _greedy_chunk(numbers: jax.Array, targets: jax.Array):
  """Largest abs(number) first, take it when it brings the residual closer to 0."""
  order = jnp.argsort(-jnp.abs(numbers), axis=1)
  sorted_nums = jnp.take_along_axis(numbers, order, 1)

  def step(residual, a):
    take = jnp.abs(residual - a) < jnp.abs(residual)
    return jnp.where(take, residual - a, residual), take

  _, taken = jax.lax.scan(step, targets, sorted_nums.T)
  chosen = jnp.zeros_like(numbers, bool)
  return chosen.at[jnp.arange(numbers.shape[0])[:, None], order].set(taken.T)


def _solve(fn, numbers, targets, chunk, multiple: int = 1):
  """``fn`` over row chunks. Shapes are rounded (rows to a power of two up to
  ``chunk``, columns to a multiple of ``multiple`` with zero numbers, which
  change no subset sum) so that few programs are compiled."""
  N, n = numbers.shape
  pad_n = -n % multiple
  if pad_n:
    numbers = np.pad(numbers, ((0, 0), (0, pad_n)))
  chunk = min(int(chunk), 1 << max(0, (N - 1).bit_length()))
  out = []
  for s in range(0, N, chunk):
    nums, tg = numbers[s:s + chunk], targets[s:s + chunk]
    pad = chunk - nums.shape[0]
    if pad:  # one compiled shape per (chunk, n)
      nums = np.pad(nums, ((0, pad), (0, 0)))
      tg = np.pad(tg, (0, pad))
    out.append(np.asarray(fn(nums, tg))[:chunk - pad, :n])
  return np.concatenate(out)


def subset_sum(numbers, targets, method: str = "exact", max_exact: int = MAX_EXACT
               ) -> np.ndarray:
  """For each row r, a subset of ``numbers[r]`` (bool [N, n]) whose sum is
  near ``targets[r]``.

  ``greedy``: largest abs(number) first, taken when it helps. ``exact``: the
  nearest subset sum (meet in the middle, float32, 2^(n/2) work per row) when
  n <= ``max_exact``; for more numbers, exact over the first ``max_exact``
  alone, or greedy over the others followed by exact over the first
  ``max_exact`` on what remains, whichever is nearer (then no longer
  guaranteed optimal, but never worse than exact over the first ``max_exact``).
  """
  if method not in SUBSET_SUM:
    raise ValueError(f"subset_sum method {method!r} unknown; allowed: {', '.join(SUBSET_SUM)}")
  if not 1 <= int(max_exact) <= MAX_EXACT:
    raise ValueError(f"max_exact must be in 1..{MAX_EXACT}, got {max_exact!r}")
  numbers = np.asarray(numbers, np.float32)
  targets = np.asarray(targets, np.float32)
  N, n = numbers.shape
  if n == 0 or N == 0:
    return np.zeros((N, n), bool)
  if method == "greedy":
    return _solve(_greedy_chunk, numbers, targets, 1 << 16, 4)
  k = min(n, int(max_exact))
  exact_chunk = max(64, (1 << 22) // (1 << ((k + 1) // 2)))  # ~16 MiB per array of sums
  alone = _solve(_exact_chunk, numbers[:, :k], targets, exact_chunk, 2)
  if k == n:
    return alone
  coarse = _solve(_greedy_chunk, numbers[:, k:], targets, 1 << 16, 4)
  rest = targets - np.where(coarse, numbers[:, k:], np.float32(0)).sum(1, dtype=np.float32)
  fine = _solve(_exact_chunk, numbers[:, :k], rest, exact_chunk, 2)
  nums = numbers.astype(np.float64)
  tg = targets.astype(np.float64)
  both = np.concatenate([fine, coarse], axis=1)
  alone_full = np.concatenate([alone, np.zeros_like(coarse)], axis=1)
  err = lambda c: np.abs((nums * c).sum(1) - tg)
  return np.where((err(both) < err(alone_full))[:, None], both, alone_full)


# ----------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------

def _half(u, v, w_target, sign: int, max_exact: int, method: str):
  """Subset sums for the units with sign(u) = ``sign``: returns the v mask
  [d_in, m, d_out] and the number of candidates per weight. (NumPy: host-side
  bookkeeping, no XLA compile per width.)"""
  u, v, w_target = np.asarray(u), np.asarray(v), np.asarray(w_target, np.float32)
  d_in, m = u.shape
  d_out = v.shape[-1]
  sel = (sign * u) > 0
  # Units of that sign first, in unit order (stable): nested widths keep their
  # candidates, and the exact part of subset_sum sees the first max_exact.
  order = np.argsort(~sel, axis=1, kind="stable")
  count = sel.sum(axis=1)
  n = int(count.max())
  mask = np.zeros((d_in, m, d_out), bool)
  if n == 0:
    return mask, 0
  idx = order[:, :n]
  valid = np.arange(n)[None] < count[:, None]                  # [d_in, n]
  mag = np.take_along_axis(u, idx, 1) * sign                   # |u|
  vv = np.take_along_axis(v, idx[:, :, None], 1)               # [d_in, n, d_out]
  nums = np.where(valid[:, :, None], mag[:, :, None] * vv, np.float32(0))
  nums = np.ascontiguousarray(nums.transpose(0, 2, 1)).reshape(d_in * d_out, n)
  chosen = subset_sum(nums, (sign * w_target).reshape(-1), method, max_exact)
  chosen = chosen.reshape(d_in, d_out, n).transpose(0, 2, 1) & valid[:, :, None]
  mask[np.arange(d_in)[:, None], idx] = chosen          # idx rows are distinct units
  return mask, n


def construct(kernels: Sequence[jax.Array], net: Sequence[dict], method: str = "exact",
              max_subset: int = 16) -> tuple[list[dict], list[dict]]:
  """Pensia et al.'s subset-sum subnetwork of ``net`` approximating the target.

  Returns ``(masks, info)``: masks ``[{"u": bool, "v": bool}]`` like ``net``
  (u kept iff one of its v is kept), and per layer the candidates per weight
  half (``n_pos``, ``n_neg``).
  """
  masks, info = [], []
  for layer, (w, rnd) in enumerate(zip(kernels, net)):
    u, v = rnd["u"], rnd["v"]
    mv, n_pos = _half(u, v, w, +1, max_subset, method)
    n_neg = 0
    if layer == 0:  # later inputs are ReLU outputs (>= 0): the u < 0 units see 0
      mv_neg, n_neg = _half(u, v, w, -1, max_subset, method)
      mv |= mv_neg
    masks.append({"u": mv.any(axis=2), "v": mv})
    info.append({"n_pos": n_pos, "n_neg": n_neg})
  return masks, info


def effective_weights(net: Sequence[dict], masks: Sequence[dict]) -> list[tuple]:
  """Per layer (A, B) in float64: what a pruned block computes,
  Σ_j A_jk relu(x_j) + B_jk relu(-x_j) (see the module docstring)."""
  out = []
  for layer, mask in zip(net, masks):
    u = np.where(mask["u"], np.asarray(layer["u"], np.float64), 0.0)
    # One float64 copy of the kept v (the largest temporary: 8 bytes per v).
    v = np.where(mask["v"], np.asarray(layer["v"]), np.float32(0)).astype(np.float64)
    a = np.einsum("ji,jik->jk", np.maximum(u, 0.0), v)
    b = np.einsum("ji,jik->jk", np.maximum(-u, 0.0), v)
    out.append((a, b))
  return out


def certified_bound(kernels, net, masks, x, ab=None) -> np.ndarray:
  """[B, classes]: a bound on abs(f_target(x) - f_pruned(x)) for each input and
  logit that holds in exact arithmetic (module docstring; float64 here).
  ``ab``: :func:`effective_weights` of (net, masks) when already computed."""
  if ab is None:
    ab = effective_weights(net, masks)
  a_prev = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
  relu = lambda t: np.maximum(t, 0.0)
  delta = None
  for i, (w, (a, b)) in enumerate(zip(kernels, ab)):
    w = np.asarray(w, np.float64)
    e_pos, e_neg = np.abs(a - w), np.abs(b + w)
    if i == 0:
      delta = relu(a_prev) @ e_pos + relu(-a_prev) @ e_neg
    else:  # a_prev >= 0 and the pruned block's input >= 0 too: gain |A|
      delta = delta @ np.abs(a) + a_prev @ e_pos
    z = a_prev @ w
    a_prev = relu(z) if i < len(kernels) - 1 else z
  return delta


def box_bound(kernels, net, masks, radius: float) -> np.ndarray:
  """[classes]: the same bound over every input with abs(x_j) <= radius (the
  setting of the papers' theorems: bounded inputs)."""
  ab = effective_weights(net, masks)
  mag = np.full((kernels[0].shape[0],), float(radius))
  delta = None
  for i, (w, (a, b)) in enumerate(zip(kernels, ab)):
    w = np.asarray(w, np.float64)
    e_pos, e_neg = np.abs(a - w), np.abs(b + w)
    if i == 0:  # x_j of either sign: the worse half
      delta = mag @ np.maximum(e_pos, e_neg)
    else:
      delta = delta @ np.abs(a) + mag @ e_pos
    mag = mag @ np.abs(w)          # |a_i| <= |W_i|ᵀ |a_{i-1}|
  return delta


# ----------------------------------------------------------------------------
# Edge-popup over the same random weights
# ----------------------------------------------------------------------------

def _ep_weights(net, first_layer: str, key):
  if first_layer == "block":
    return [dict(layer) for layer in net]
  return [{"U": dense_first_layer(layer["u"], key, i), "v": layer["v"]}
          for i, layer in enumerate(net)]


def _ep_forward(first_layer: str):
  return block_forward if first_layer == "block" else dense_forward


def kept_fractions(masks: Sequence[dict], first_layer: str = "block") -> list[dict]:
  """Per-layer kept fractions of a mask, counted over the stored block network
  (``block``) or over the papers' dense first layers (``dense``)."""
  out = []
  for mask in masks:
    u = float(np.mean(np.asarray(mask["u"])))
    if first_layer == "dense":
      u /= mask["u"].shape[0]      # the diagonal block is 1/d_in of the dense layer
    out.append({"U" if first_layer == "dense" else "u": u,
                "v": float(np.mean(np.asarray(mask["v"])))})
  return out


def edge_popup(config, stream, kernels, net, fractions: Sequence[dict], loss: str,
               key: jax.Array, net_key: jax.Array | None = None
               ) -> tuple[list[dict], list[dict], float]:
  """Edge-popup scores over the frozen random weights ``net``.

  ``fractions``: per layer and leaf, the top-k fraction (the construction's,
  from :func:`kept_fractions`). ``loss``: "logits" (mean squared distance to
  the target's logits) or "ce" (cross-entropy on the labels). Returns
  ``(weights, masks, final loss)``: the edge-popup weight tree (``u`` or the
  dense ``U``, and ``v``; the random weights themselves, never trained) and
  its bool masks. ``net_key``: the key ``net`` was drawn with (the dense
  first layers' off-diagonal weights are drawn from it).
  """
  s = _sub(config)
  first = str(s.edge_popup_first_layer)
  if first == "dense" and net_key is None:
    raise ValueError("edge_popup with edge_popup_first_layer='dense' needs net_key")
  weights = _ep_weights(net, first, net_key)
  forward = _ep_forward(first)
  # Scores uniform[-1, 1] in every layer. Edge-popup's Kaiming-uniform bound
  # 1/sqrt(fan in) would make one Adam step reorder the v layer's ranking
  # faster the wider the network (its fan in is d_in·m); top-k ignores the
  # scores' scale, so a common scale gives every layer and width the same
  # relative speed for one learning rate.
  scores = []
  for i, layer in enumerate(weights):
    scores.append({name: jax.random.uniform(jax.random.fold_in(key, 10 * i + j), w.shape,
                                            jnp.float32, -1, 1)
                   for j, (name, w) in enumerate(sorted(layer.items()))})
  fr = [{name: masks_lib.check_fraction(max(f[name], 1e-12), f"fraction[{i}][{name}]")
         for name in weights[i]} for i, f in enumerate(fractions)]
  kernels = [jnp.asarray(w, jnp.float32) for w in kernels]
  optimizer = optax.adam(float(s.edge_popup_learning_rate))
  batch_fn, arrays = stream.train_batch_fn_args(int(s.batch_size))

  def masks_of(scores):
    return [{n: masks_lib.topk_mask(sc[n], fr[i][n]) for n in sc} for i, sc in enumerate(scores)]

  def loss_fn(scores, weights, images, labels):
    m = masks_of(scores)
    params = [{n: layer[n] * mi[n] for n in layer} for layer, mi in zip(weights, m)]
    logits = forward(params, images)
    if loss == "ce":
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    target = jax.lax.stop_gradient(mlp_forward(kernels, images))
    return jnp.mean((logits - target) ** 2)

  @jax.jit
  def run(scores, weights, arrays):
    opt_state = optimizer.init(scores)

    def step(carry, i):
      scores, opt_state = carry
      images, labels = batch_fn(arrays, 0, i)
      value, grads = jax.value_and_grad(loss_fn)(scores, weights, images, labels)
      updates, opt_state = optimizer.update(grads, opt_state, scores)
      return (optax.apply_updates(scores, updates), opt_state), value

    (scores, _), losses = jax.lax.scan(step, (scores, opt_state),
                                       jnp.arange(int(s.edge_popup_steps), dtype=jnp.int32))
    return scores, losses

  scores, losses = run(scores, weights, arrays)
  masks = [{n: np.asarray(v) > 0.5 for n, v in m.items()} for m in masks_of(scores)]
  final = float(jnp.mean(losses[-20:])) if losses.shape[0] else float("nan")
  return weights, masks, final


# ----------------------------------------------------------------------------
# Evaluation, one width
# ----------------------------------------------------------------------------

def compare(kernels, forward, params, x, y, chunk: int = 500) -> dict:
  """Target vs pruned network on (x, y): logit errors, agreement, accuracy."""
  kernels = [jnp.asarray(w, jnp.float32) for w in kernels]
  target_fn = _target_forward
  err_max, err_sum, agree, correct, target_correct = 0.0, 0.0, 0, 0, 0
  n = int(x.shape[0])
  for s in range(0, n, chunk):
    xb, yb = x[s:s + chunk], np.asarray(y[s:s + chunk])
    t = np.asarray(target_fn(kernels, xb))
    p = np.asarray(forward(params, xb))
    d = np.abs(t.astype(np.float64) - p)
    err_max = max(err_max, float(d.max()))
    err_sum += float(d.sum())
    agree += int(np.sum(t.argmax(1) == p.argmax(1)))
    correct += int(np.sum(p.argmax(1) == yb))
    target_correct += int(np.sum(t.argmax(1) == yb))
  classes = kernels[-1].shape[1]
  return {"max_error": err_max, "mean_error": err_sum / (n * classes), "agreement": agree / n,
          "accuracy": correct / n, "target_accuracy": target_correct / n}


def _count(masks, first_layer: str) -> tuple[int, int]:
  kept = total = 0
  for mask in masks:
    d_in = mask["u"].shape[0]
    kept += int(np.sum(np.asarray(mask["u"]))) + int(np.sum(np.asarray(mask["v"])))
    total += int(np.asarray(mask["v"]).size)
    total += int(np.asarray(mask["u"]).size) * (d_in if first_layer == "dense" else 1)
  return kept, total


def width_row(config, stream, target_params, width_factor: int, key: jax.Array) -> dict:
  """Everything for one width factor (a JSON-able dict).

  Construction keys: ``width_factor``, ``agreement``, ``max_error``,
  ``mean_error``, ``accuracy`` (pruned network), ``target_accuracy``,
  ``kept_fraction`` (of the papers' dense random network),
  ``kept_fraction_block`` (of the stored u, v), ``weight_error_max`` /
  ``weight_error_mean`` (abs(A - W) over the kernels' entries),
  ``bound_max`` / ``bound_mean`` (certified per-image bound on the test set),
  ``time_s``, memory (:func:`memory_estimate`). Edge-popup keys are prefixed
  ``edge_popup_<loss>_``; absent above ``edge_popup_max_width_factor`` (> 0).
  """
  s = _sub(config)
  t0 = time.time()
  m = int(width_factor)
  if m < 1:
    raise ValueError(f"width factor must be >= 1, got {width_factor!r}")
  kernels = target_kernels(target_params)
  shapes = [tuple(int(d) for d in w.shape) for w in kernels]
  net_key = jax.random.fold_in(key, 0)
  net = random_network(shapes, m, net_key)
  x, y = stream.test_arrays(0)
  chunk = int(s.eval_chunk)

  masks, info = construct(kernels, net, str(s.subset_sum), int(s.max_subset))
  t_construct = time.time() - t0
  row = {"width_factor": m}
  row.update(compare(kernels, block_forward, pruned_network(net, masks), x, y, chunk))
  ab = effective_weights(net, masks)
  werr = np.concatenate([np.abs(np.asarray(a) - np.asarray(w)).ravel()
                         for (a, _), w in zip(ab, kernels)])
  bounds = np.concatenate([np.asarray(certified_bound(kernels, net, masks, x[i:i + chunk], ab))
                           for i in range(0, int(x.shape[0]), chunk)])
  kept, total_dense = _count(masks, "dense")
  kept_b, total_block = _count(masks, "block")
  row.update({
      "kept_fraction": kept / total_dense,
      "kept_fraction_block": kept_b / total_block,
      "kept_weights": kept,
      "weight_error_max": float(werr.max()),
      "weight_error_mean": float(werr.mean()),
      "bound_max": float(bounds.max()),
      "bound_mean": float(bounds.mean()),
      "subset_sum": str(s.subset_sum),
      "candidates_per_weight": [max(i["n_pos"], i["n_neg"]) for i in info],
      "target_max_abs_weight": float(max(np.abs(np.asarray(w)).max() for w in kernels)),
      "construct_time_s": t_construct,
  })
  row["time_s"] = time.time() - t0
  limit = int(s.edge_popup_max_width_factor)
  losses = _names(s.edge_popup_losses) if limit <= 0 or m <= limit else []
  est = memory_estimate(shapes, m, first_layer=str(s.edge_popup_first_layer),
                        edge_popup=bool(losses),
                        budget_gib=float(s.memory_budget_gib), eval_chunk=chunk)
  row.update({"random_params": est["dense_params"], "random_bytes": est["dense_bytes"],
              "block_params": est["block_params"], "block_bytes": est["block_bytes"],
              "peak_bytes_estimate": est["peak_bytes"]})

  first = str(s.edge_popup_first_layer)
  fractions = kept_fractions(masks, first)
  for li, loss in enumerate(losses):
    t1 = time.time()
    weights, ep_masks, final = edge_popup(config, stream, kernels, net, fractions, loss,
                                          jax.random.fold_in(key, 1 + li), net_key)
    res = compare(kernels, _ep_forward(first), pruned_network(weights, ep_masks), x, y, chunk)
    kept_e = sum(int(np.sum(v)) for mk in ep_masks for v in mk.values())
    total_e = sum(int(np.asarray(v).size) for mk in ep_masks for v in mk.values())
    if first == "block":  # count over the papers' dense random network as above
      total_e = total_dense
    res.update({"kept_fraction": kept_e / total_e, "final_loss": final,
                "time_s": time.time() - t1})
    row.update({f"edge_popup_{loss}_{k}": v for k, v in res.items() if k != "target_accuracy"})
  row["total_time_s"] = time.time() - t0
  return row


# ----------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------

def memory_estimate(shapes: Sequence[tuple[int, int]], width_factor: int, *,
                    first_layer: str = "block", edge_popup: bool = True,
                    budget_gib: float = 24.0, eval_chunk: int = 500) -> dict:
  """Bytes of the random network at one width factor, and the widest factor
  that fits ``budget_gib``.

  ``dense_*``: the papers' network (dense first layer of each pair,
  Σ d_in·(d_in·m) + (d_in·m)·d_out float32 weights). ``block_*``: what this
  module stores (u and v; the dense first layer's off-diagonal weights, all
  pruned by the construction, are never built). ``peak_bytes``, counted from
  the code's arrays (not measured; the JAX runtime and the dataset come on
  top): the stored weights and their bool masks (5 bytes per weight); for
  the largest layer, the subset-sum candidates (~40 bytes per candidate
  number: float32 products, their float64 copies and temporaries; ~m/2 +
  2√m candidates per weight) and the float64 kept v of
  :func:`effective_weights` (12 bytes per v); evaluation activations; and
  with ``edge_popup`` the weights it masks (the dense first layers for
  ``first_layer="dense"``) with float32 scores, gradients and Adam's two
  moments and a mask (17 bytes per weight). ``max_width_factor``: the widest
  factor whose ``peak_bytes`` fits the budget.
  """
  def est(m):
    dense = sum(d_in * d_in * m + d_in * m * d_out for d_in, d_out in shapes)
    block = sum(d_in * m + d_in * m * d_out for d_in, d_out in shapes)
    cands = min(m, m // 2 + 2 * math.ceil(math.sqrt(m)) + 1)
    work = max(d_in * d_out * (40 * cands + 12 * m) for d_in, d_out in shapes)
    acts = max(eval_chunk * d_in * m for d_in, _ in shapes)
    peak = block * (_F32 + 1) + work + acts * _F32 * 2
    if edge_popup:
      ep = dense if first_layer == "dense" else block
      peak += ep * (4 * _F32 + 1) + (ep - block) * _F32 + acts * _F32 * 3
    return dense, block, peak

  m = int(width_factor)
  dense, block, peak = est(m)
  budget = float(budget_gib) * GIB
  lo, hi = 0, 1                            # peak grows with m: bisect
  while est(hi)[2] <= budget:
    lo, hi = hi, 2 * hi
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if est(mid)[2] <= budget else (lo, mid)
  widest = lo
  return {"width_factor": m, "dense_params": dense, "dense_bytes": dense * _F32,
          "block_params": block, "block_bytes": block * _F32, "peak_bytes": peak,
          "budget_gib": float(budget_gib), "max_width_factor": widest,
          "max_width_factor_dense_weights": int(budget // (_F32 * (est(1)[0]))),
          "max_width_factor_block_weights": int(budget // (_F32 * (est(1)[1])))}


# ----------------------------------------------------------------------------
# Table and plot
# ----------------------------------------------------------------------------

def _mib(b):
  return f"{b / 2 ** 20:.1f}"


def format_table(rows: Sequence[dict]) -> str:
  """Markdown table, one line per width factor."""
  losses = sorted({k[len("edge_popup_"):-len("_agreement")] for r in rows for k in r
                   if k.startswith("edge_popup_") and k.endswith("_agreement")})
  head = ["m", "agree %", "max err", "mean err", "bound max", "acc %", "kept", "time s",
          "dense MiB", "stored MiB"]
  for loss in losses:
    head += [f"EP-{loss} agree %", f"EP-{loss} mean err", f"EP-{loss} acc %", f"EP-{loss} s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in sorted(rows, key=lambda r: r["width_factor"]):
    cells = [str(r["width_factor"]), f"{100 * r['agreement']:.2f}", f"{r['max_error']:.3g}",
             f"{r['mean_error']:.3g}", f"{r['bound_max']:.3g}", f"{100 * r['accuracy']:.2f}",
             f"{r['kept_fraction']:.2e}", f"{r['time_s']:.1f}", _mib(r["random_bytes"]),
             _mib(r["block_bytes"])]
    for loss in losses:
      p = f"edge_popup_{loss}_"
      if p + "agreement" not in r:
        cells += ["-"] * 4
        continue
      cells += [f"{100 * r[p + 'agreement']:.2f}", f"{r[p + 'mean_error']:.3g}",
                f"{100 * r[p + 'accuracy']:.2f}", f"{r[p + 'time_s']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(path: str, rows: Sequence[dict], title: str = "") -> None:
  """Error vs width factor (log-log) with the papers' rates, and agreement.

  The rate lines are shapes only, anchored at the narrowest measured width:
  2^(-m/2) for subset sum over the ~m/2 random products each weight half
  sees (Lueker 1998; Pensia et al. 2020: ε falls exponentially in the width
  factor, i.e. the factor grows as log 1/ε), and m^(-1/2) (Malach et al.
  2020's polynomial rate: width ∝ 1/ε²). Written atomically (tmp + replace).
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = sorted(rows, key=lambda r: r["width_factor"])
  m = np.array([r["width_factor"] for r in rows], float)
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 6.5))
  series = [("max_error", "construction: max |Δ logit|", "o-"),
            ("mean_error", "construction: mean |Δ logit|", "s-"),
            ("bound_max", "construction: certified bound (max over test)", ":"),
            ("weight_error_mean", "construction: mean |A - W| per weight (subset sum)", "d-")]
  losses = sorted({k[len("edge_popup_"):-len("_mean_error")] for r in rows for k in r
                   if k.startswith("edge_popup_") and k.endswith("_mean_error")})
  series += [(f"edge_popup_{l}_mean_error", f"edge-popup ({l} loss): mean |Δ logit|", "^--")
             for l in losses]
  for key, label, style in series:
    vals = np.array([np.nan if r.get(key) is None else r[key] for r in rows], float)
    ax.plot(m, np.maximum(vals, 1e-12), style, label=label)
  grid = np.geomspace(m.min(), m.max(), 100)
  # The rates are about one weight's subset-sum error, so they start from the
  # measured per-weight error at the narrowest width; the papers leave the
  # constants open, so only the shapes are meaningful.
  anchor = rows[0]["weight_error_mean"]
  ax.plot(grid, anchor * 2.0 ** (-(grid - m[0]) / 2), "k-", alpha=0.35,
          label=f"shape 2^(-m/2): subset sum (Lueker; Pensia et al.), from m={m[0]:g} per weight")
  ax.plot(grid, anchor * np.sqrt(m[0] / grid), "k--", alpha=0.35,
          label="shape m^(-1/2): Malach et al.'s polynomial rate, same anchor")
  finite = [r[k] for r in rows for k, _, _ in series if r.get(k) is not None and r[k] > 0]
  ax.set_ylim(max(min(finite) / 30, 1e-9), max(finite) * 3)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("width factor m (random units per target input, log scale)")
  ax.set_ylabel("error on MNIST test logits / per weight (log scale)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
  ax2.plot(m, [100 * r["agreement"] for r in rows], "o-", label="construction")
  for l in losses:
    ax2.plot(m, [100 * r.get(f"edge_popup_{l}_agreement", np.nan) for r in rows], "^--",
             label=f"edge-popup ({l} loss)")
  ax2.axhline(95, color="gray", lw=0.8, ls=":")
  ax2.set_xscale("log", base=2)
  ax2.set_ylim(0, 100)
  ax2.set_xlabel("width factor m (log scale)")
  ax2.set_ylabel("same predicted class as the target (% of test images)")
  ax2.grid(alpha=0.3)
  ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------
# The study (``config.method=strong_ticket`` in supsup_jax.runs.subnetwork)
# ----------------------------------------------------------------------------

# The study runs from the curves' config (launch/configs/subnetwork_mnist.py)
# and reads only dataset, data_dir, download, seed and config.strong_ticket;
# the curves' other keys stay in that config, so no KEYS list (the runner then
# does not refuse top-level keys for this study).
KEYS = None


def run(config, session) -> dict:
  """The target, then one row per width factor, each a resumable point.

  ``session`` (:class:`supsup_jax.subnetwork.fit.Session`): the trained target
  and every finished width are ``put`` there, so a resumed run trains nothing
  twice and ends with the same rows. One PRNG key for every width: unit i is
  the same random draw at every width (a wider network holds the narrower).
  """
  from supsup_jax.data.single_task import single_task_stream  # pylint: disable=import-outside-toplevel
  s = _sub(config)
  stream = single_task_stream(config.dataset, int(config.seed), config.get("data_dir") or None,
                              bool(config.get("download", False)))
  key = jax.random.key(int(config.seed))
  saved = session.get("target")
  if saved is None:
    target = train_target(config, stream, jax.random.fold_in(key, 0))
    session.put("target", target, {}, where="the trained target")
  else:
    target = jax.tree.map(jnp.asarray, saved[0])
  rows = []
  for m in s.width_factors:
    name = f"width_{int(m)}"
    done = session.get(name)
    if done is None:
      row = width_row(config, stream, target, int(m), jax.random.fold_in(key, 1))
      session.put(name, None, row, where=f"width factor {int(m)}")
    else:
      row = done[1]
    rows.append(row)
  shapes = target_shapes(config)
  return {"study": "strong_ticket", "dataset": config.dataset, "target_shapes": shapes,
          "rows": rows,
          "memory": [memory_estimate(shapes, int(m),
                                     first_layer=s.edge_popup_first_layer)
                     for m in s.width_factors]}


def write_outputs(workdir: str, results: dict) -> None:
  """``error_vs_width.png`` and ``strong_ticket.md`` (the table) in ``workdir``."""
  title = f"strong ticket, {results['dataset']} " + "-".join(
      str(d) for d in [results["target_shapes"][0][0]] + [o for _, o in results["target_shapes"]])
  plot(os.path.join(workdir, "error_vs_width.png"), results["rows"], title)
  tmp = os.path.join(workdir, "strong_ticket.md.tmp")
  with open(tmp, "w") as f:
    f.write(format_table(results["rows"]) + "\n")
  os.replace(tmp, os.path.join(workdir, "strong_ticket.md"))


def summary(results: dict) -> str:
  return format_table(results["rows"])
