"""Strong lottery tickets (supsup_jax.subnetwork.strong_ticket): tiny cases, seconds."""
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.configs import subnetwork_mnist
from supsup_jax.data import InMemoryStream
from supsup_jax.subnetwork import strong_ticket as st


def _brute_force(numbers, targets):
  n = numbers.shape[1]
  subsets = np.array(list(itertools.product([0, 1], repeat=n)), np.float64)
  sums = numbers.astype(np.float64) @ subsets.T
  return np.abs(sums - targets[:, None].astype(np.float64)).min(axis=1)


def _err(numbers, targets, chosen):
  return np.abs((numbers.astype(np.float64) * chosen).sum(1) - targets.astype(np.float64))


def _products(rng, shape):
  # The construction's numbers: products of two uniform[-1, 1] weights.
  return (rng.uniform(-1, 1, shape) * rng.uniform(-1, 1, shape)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_subset_sum_exact_is_the_brute_force_optimum(n):
  rng = np.random.default_rng(n)
  numbers = _products(rng, (40, n))
  targets = rng.uniform(-1, 1, 40).astype(np.float32)
  best = _brute_force(numbers, targets)
  exact = st.subset_sum(numbers, targets, "exact")
  assert exact.shape == (40, n) and exact.dtype == bool
  np.testing.assert_allclose(_err(numbers, targets, exact), best, atol=2e-6)
  greedy = st.subset_sum(numbers, targets, "greedy")
  assert np.all(_err(numbers, targets, greedy) >= best - 1e-7)


def test_subset_sum_beyond_max_exact_never_worse_than_exact_over_the_first():
  rng = np.random.default_rng(0)
  numbers = _products(rng, (30, 13))
  targets = rng.uniform(-1, 1, 30).astype(np.float32)
  hybrid = _err(numbers, targets, st.subset_sum(numbers, targets, "exact", max_exact=7))
  first = _err(numbers[:, :7], targets, st.subset_sum(numbers[:, :7], targets, "exact"))
  assert np.all(hybrid <= first + 1e-6)
  assert np.all(hybrid >= _brute_force(numbers, targets) - 1e-7)


def _tiny_target(seed=0, shapes=((6, 4), (4, 3))):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.uniform(-0.5, 0.5, s), jnp.float32) for s in shapes]


def test_construction_error_within_its_bound_on_a_tiny_network():
  kernels = _tiny_target()
  shapes = [tuple(w.shape) for w in kernels]
  x = jax.random.uniform(jax.random.key(2), (2000, 6), jnp.float32, -1.0, 1.0)
  target = np.asarray(st.mlp_forward(kernels, x))
  worst = []
  for m in (2, 8, 48):
    net = st.random_network(shapes, m, jax.random.key(1))
    masks, _ = st.construct(kernels, net, "exact", 16)
    err = np.abs(target - np.asarray(st.block_forward(st.pruned_network(net, masks), x)))
    per_input = np.asarray(st.certified_bound(kernels, net, masks, x))
    box = st.box_bound(kernels, net, masks, 1.0)
    tol = 1e-5 * (1 + np.abs(target))        # float32 rounding; the bound is exact math
    assert np.all(err <= per_input + tol)
    assert np.all(err.max(0) <= box + 1e-5)
    worst.append(box.max())
  # Nested random networks: more candidates per weight, a smaller guarantee,
  # and at m = 48 (~24 products per weight) the guarantee itself is small.
  assert worst[0] > worst[1] > worst[2]
  assert worst[2] < 1e-2


def test_dense_first_layer_holds_the_blocks_and_gives_the_same_pruned_network():
  kernels = _tiny_target()
  shapes = [tuple(w.shape) for w in kernels]
  key = jax.random.key(3)
  net = st.random_network(shapes, 5, key)
  masks, _ = st.construct(kernels, net, "exact", 16)
  dense, dense_masks = [], []
  for i, (layer, mask) in enumerate(zip(net, masks)):
    U = np.asarray(st.dense_first_layer(layer["u"], key, i))
    d_in, m = layer["u"].shape
    blocks = U.reshape(d_in, d_in, m)[np.arange(d_in), np.arange(d_in)]
    np.testing.assert_array_equal(blocks, np.asarray(layer["u"]))
    mU = np.zeros((d_in, d_in, m), bool)
    mU[np.arange(d_in), np.arange(d_in)] = np.asarray(mask["u"])
    dense.append({"U": jnp.asarray(U), "v": layer["v"]})
    dense_masks.append({"U": mU.reshape(d_in, d_in * m), "v": mask["v"]})
  x = jax.random.normal(jax.random.key(4), (64, 6))
  np.testing.assert_array_equal(
      np.asarray(st.dense_forward(st.pruned_network(dense, dense_masks), x)),
      np.asarray(st.block_forward(st.pruned_network(net, masks), x)))


def _tiny_stream():
  rng = np.random.default_rng(0)
  data = {"train": (rng.integers(0, 256, (96, 3, 3, 1), dtype=np.uint8),
                    rng.integers(0, 10, 96)),
          "test": (rng.integers(0, 256, (40, 3, 3, 1), dtype=np.uint8),
                   rng.integers(0, 10, 40)),
          "num_classes": 10}
  return InMemoryStream(name="tiny", data=data, num_tasks=1, seed=0, mean=(127.0,),
                        std=(64.0,))


def _tiny_config(**kw):
  config = subnetwork_mnist.get_config()
  s = config.strong_ticket
  s.target_hidden = (4,)
  s.target_steps = 20
  s.batch_size = 16
  s.width_factors = (1, 4)
  s.edge_popup_steps = 5
  s.eval_chunk = 16
  s.update(kw)
  return config


def test_random_weights_are_never_trained():
  config = _tiny_config()
  stream = _tiny_stream()
  kernels = _tiny_target(shapes=((9, 4), (4, 10)))  # train_target: the next test
  shapes = [tuple(w.shape) for w in kernels]
  key = jax.random.key(1)
  net = st.random_network(shapes, 4, key)
  before = [{k: np.array(v, copy=True) for k, v in layer.items()} for layer in net]
  dense_before = [np.asarray(st.dense_first_layer(layer["u"], key, i))
                  for i, layer in enumerate(net)]
  masks, _ = st.construct(kernels, net, "exact", 16)
  for loss, first in (("logits", "block"), ("ce", "block"), ("logits", "dense")):
    config.strong_ticket.edge_popup_first_layer = first
    weights, ep_masks, _ = st.edge_popup(config, stream, kernels, net,
                                         st.kept_fractions(masks, first), loss,
                                         jax.random.key(2), key)
    for i, (w_layer, m_layer) in enumerate(zip(st.pruned_network(weights, ep_masks), ep_masks)):
      for k in w_layer:
        random = dense_before[i] if k == "U" else before[i][k]
        # Every kept weight is the random weight bit for bit; the others are 0.
        np.testing.assert_array_equal(np.asarray(w_layer[k]), np.where(m_layer[k], random, 0.0))
  for layer, b_layer in zip(net, before):
    for k in b_layer:
      np.testing.assert_array_equal(np.asarray(layer[k]), b_layer[k])
  # Drawing the same width again gives the same weights, and a wider network
  # starts with these units (nested widths).
  again = st.random_network(shapes, 4, jax.random.key(1))
  wider = st.random_network(shapes, 7, jax.random.key(1))
  for layer, a_layer, w_layer in zip(before, again, wider):
    np.testing.assert_array_equal(np.asarray(a_layer["u"]), layer["u"])
    np.testing.assert_array_equal(np.asarray(w_layer["u"])[:, :4], layer["u"])
    np.testing.assert_array_equal(np.asarray(w_layer["v"])[:, :4], layer["v"])


def test_width_rows_table_and_plot(tmp_path):
  config = _tiny_config(edge_popup_losses=("logits",))  # "ce" runs in the test above
  stream = _tiny_stream()
  target = st.train_target(config, stream, jax.random.key(0))
  rows = [st.width_row(config, stream, target, m, jax.random.key(1)) for m in (1, 4)]
  for r in rows:
    for k in ("width_factor", "agreement", "max_error", "mean_error", "accuracy",
              "kept_fraction", "time_s", "random_bytes", "edge_popup_logits_agreement",
              "edge_popup_logits_accuracy"):
      assert k in r, k
    assert 0 <= r["agreement"] <= 1 and 0 < r["kept_fraction"] < 1
    assert r["max_error"] <= r["bound_max"] * (1 + 1e-5) + 1e-5
  path = os.path.join(tmp_path, "error_vs_width.png")
  st.plot(path, rows, "tiny")
  assert os.path.getsize(path) > 0 and os.listdir(tmp_path) == ["error_vs_width.png"]
  table = st.format_table(rows)
  assert table.count("\n") == 3


@pytest.mark.parametrize("change, needle", [
    ({"width_factors": (0.5, 2)}, "below 1"),
    ({"width_factors": (1.5,)}, "not an integer"),
    ({"target": "small_conv"}, "not a dense ReLU MLP"),
    ({"subset_sum": "dp"}, "subset_sum"),
    ({"max_subset": 40}, "max_subset"),
    ({"edge_popup_losses": ("logits", "mse")}, "edge_popup_losses"),
    ({"width_factors": (4096,), "memory_budget_gib": 1.0}, "widest that fits"),
])
def test_bad_config_is_one_line(change, needle):
  config = subnetwork_mnist.get_config()
  st.validate(config)  # the defaults pass
  config.strong_ticket.update(change)
  with pytest.raises(ValueError, match=needle) as e:
    st.validate(config)
  assert "\n" not in str(e.value)


def test_memory_estimate_is_the_parameter_count():
  shapes = [(784, 100), (100, 10)]
  est = st.memory_estimate(shapes, 8)
  assert est["dense_params"] == 784 * 784 * 8 + 784 * 8 * 100 + 100 * 100 * 8 + 100 * 8 * 10
  assert est["block_params"] == 784 * 8 + 784 * 8 * 100 + 100 * 8 + 100 * 8 * 10
  assert est["dense_bytes"] == 4 * est["dense_params"]
  widest = est["max_width_factor"]
  assert st.memory_estimate(shapes, widest)["peak_bytes"] <= 24 * st.GIB
  assert st.memory_estimate(shapes, widest + 1)["peak_bytes"] > 24 * st.GIB
