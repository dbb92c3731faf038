"""Tests of the mask family beyond SupSup: pruning, rewinding, Zhou supermasks,
edge-popup, PackNet, PAC-Net, Meta-ticket."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax.subnetwork import methods, pruning

HAVE_DATA = os.path.isdir(os.path.join(os.environ.get("SUPSUP_DATA_DIR", ""), "mnist"))
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="needs offline MNIST")


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  return {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32)},
          "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(20, 12)), jnp.float32)},
          "Dense_2": {"kernel": jnp.asarray(rng.normal(size=(12, 10)), jnp.float32)}}


def test_magnitude_prune_exact_counts_per_layer_and_largest_kept():
  values = _tree()
  mask = pruning.ones_like(values)
  rates = pruning.layer_rates(values, 0.6, output_rate_factor=0.5)
  assert rates[("Dense_2", "kernel")] == pytest.approx(0.3)
  for _ in range(3):  # iterative: counts compound
    alive = {k: int(np.sum(np.asarray(mask[k]["kernel"]))) for k in values}
    mask = pruning.magnitude_prune(values, mask, rates)
    for k, v in values.items():
      m = np.asarray(mask[k]["kernel"])
      want = alive[k] - int(math.floor(rates[(k, "kernel")] * alive[k] + 0.5))
      assert int(m.sum()) == want, k
      a = np.abs(np.asarray(v["kernel"]))
      # every kept weight is at least as large as every pruned one
      assert a[m > 0].min() >= a[m == 0].max()


def test_global_prune_count_and_threshold():
  values = _tree(1)
  mask = pruning.magnitude_prune(values, pruning.ones_like(values), 0.75, scope="global")
  ms = np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(mask)])
  vs = np.concatenate([np.abs(np.asarray(v)).ravel() for v in jax.tree.leaves(values)])
  assert int(ms.sum()) == vs.size - int(math.floor(0.75 * vs.size + 0.5))
  assert vs[ms > 0].min() >= vs[ms == 0].max()


def test_rewind_restores_initial_values_of_survivors_exactly():
  init, trained = _tree(2), _tree(3)
  mask = pruning.magnitude_prune(trained, pruning.ones_like(trained), 0.8)
  out = pruning.rewind(init, mask)
  for k in init:
    m = np.asarray(mask[k]["kernel"]) > 0
    np.testing.assert_array_equal(np.asarray(out[k]["kernel"])[m],
                                  np.asarray(init[k]["kernel"])[m])
    assert np.all(np.asarray(out[k]["kernel"])[~m] == 0)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan"), "x"])
def test_bad_prune_rate(rate):
  with pytest.raises(ValueError, match="prune rate"):
    pruning.check_rate(rate)


def test_zhou_sampled_density_and_straight_through_gradient():
  scores = jnp.linspace(-3.0, 3.0, 4000).reshape(40, 100)
  p = jax.nn.sigmoid(scores)
  dens = [float(jnp.mean(methods.bernoulli_st(scores, jax.random.key(i)))) for i in range(50)]
  # mean of 50 x 4000 Bernoulli draws: std ~ 0.5 / sqrt(2e5) ~ 1e-3
  assert abs(np.mean(dens) - float(jnp.mean(p))) < 5e-3
  # per-entry frequency tracks sigmoid(s)
  freq = np.mean([np.asarray(methods.bernoulli_st(scores, jax.random.key(100 + i)))
                  for i in range(200)], 0)
  assert np.abs(freq - np.asarray(p)).max() < 0.15
  g = jax.grad(lambda s: jnp.sum(methods.bernoulli_st(s, jax.random.key(0)) * 3.0))(scores)
  np.testing.assert_allclose(np.asarray(g), 3.0 * np.asarray(p * (1 - p)), rtol=1e-5, atol=1e-7)


def _config(**kw):
  from launch.configs import subnetwork_mnist  # pylint: disable=import-outside-toplevel
  c = subnetwork_mnist.get_config()
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_rewind_iteration_beyond_training_is_refused(tmp_path):
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="beyond the training length"):
    run.run(_config(iterations=100, lt_rewind_iteration=101), str(tmp_path))
  with pytest.raises(ValueError, match="lt_prune_rate"):
    run.run(_config(lt_prune_rate=1.0), str(tmp_path))


@needs_data
def test_short_mnist_floors(tmp_path):
  """150 steps each: a trained LeNet and its rewound 20 % ticket pass 90 %,
  a 20 % edge-popup supermask over random signed weights passes 80 % (a mask
  that ignored its scores is a random network, ~10-60 %)."""
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  c = _config(iterations=150, kept_fractions=(1.0, 0.2), method="lottery_ticket,edge_popup",
              lt_rewind="init")
  res = run.run(c, str(tmp_path))
  lt = res["curves"]["lottery_ticket(rewind=init)"]
  assert lt[0]["accuracy"] > 0.90
  assert lt[1]["kept_fraction"] == pytest.approx(0.2, abs=0.005)
  assert lt[1]["accuracy"] > 0.90
  ep = {round(p["kept_fraction"], 2): p["accuracy"] for p in res["curves"]["edge_popup"]}
  assert ep[0.2] > 0.80 and ep[1.0] < 0.5
  assert os.path.exists(tmp_path / "accuracy_vs_kept.png")


# ------------------------------------------------------------------ PackNet --

def _packnet_run(steps=100, num_tasks=3):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from launch.configs import common  # pylint: disable=import-outside-toplevel
  from supsup_jax.data import make_stream  # pylint: disable=import-outside-toplevel
  from supsup_jax.methods import make_learner  # pylint: disable=import-outside-toplevel
  c = common.base_config()
  c.update(ml_collections.ConfigDict({
      "method": "packnet", "num_tasks": num_tasks, "iterations_per_task": steps,
      "optimizer": "adam", "learning_rate": 1e-3, "batch_size": 64}))
  stream = make_stream("split_mnist", num_tasks=num_tasks, seed=0)
  learner = make_learner("packnet", c, stream)
  fn, arrays = stream.train_batch_fn_args(64)

  @jax.jit
  def train(memory, ts, task_id):
    def body(ts, i):
      x, y = fn(arrays, task_id, i)
      return learner.train_step(memory, ts, x, y)
    return jax.lax.scan(body, ts, jnp.arange(steps))

  logits = jax.jit(learner.logits)
  tests = [stream.test_arrays(t) for t in range(num_tasks)]

  def acc(memory, t):
    x, y = tests[t]
    return float(jnp.mean(jnp.argmax(logits(memory, t, x)[:, :2], -1) == y))

  memory = learner.init_memory()
  history = []
  for t in range(num_tasks):
    ts = learner.init_task(memory, t, jax.random.key(t))
    ts, _ = train(memory, ts, t)
    memory = jax.jit(learner.end_task)(memory, ts, t)
    history.append((jax.tree.map(np.asarray, memory), [acc(memory, j) for j in range(t + 1)]))
  return learner, memory, history


@needs_data
def test_packnet_frozen_weights_bit_identical_and_no_forgetting():
  learner, memory, history = _packnet_run()
  assert learner.trains_weights
  final_w = jax.tree.map(np.asarray, memory["weights"])
  final_o = jax.tree.map(np.asarray, memory["owner"])
  for t, (mem_t, accs_t) in enumerate(history):
    for path in [("Dense_0", "kernel"), ("Dense_1", "kernel"), ("Dense_2", "kernel")]:
      o_t = mem_t["owner"][path[0]][path[1]]
      owned = (o_t >= 1) & (o_t <= t + 1)
      assert owned.sum() > 0
      # frozen weights and their owners never change afterwards, bit for bit
      np.testing.assert_array_equal(final_w[path[0]][path[1]][owned],
                                    mem_t["weights"][path[0]][path[1]][owned])
      np.testing.assert_array_equal(final_o[path[0]][path[1]][owned], o_t[owned])
    # accuracy of every task is exactly what it was just after training it
    assert history[-1][1][t] == accs_t[t]
    assert accs_t[t] > 0.95  # SplitMNIST pairs after 100 steps
  # even split: task 0 kept 1/3 of the weights, task 1 half the rest, task 2 the rest
  s = learner.summary(memory, 3)
  n = sum(s["weights_owned_per_task"])
  assert s["weights_owned_per_task"][0] == pytest.approx(n / 3, rel=0.01)
  assert s["fraction_free"] == 0.0


def test_packnet_bad_prune_fraction():
  from supsup_jax.methods import packnet  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"^config.packnet.prune_fraction must be in \[0, 1\)"):
    packnet.check_options(1.0, 0.7, 3, prefix="config.packnet.")


# ------------------------------------------------------------------ PAC-Net --

def test_pac_net_pair_with_different_shapes_is_refused():
  from supsup_jax.subnetwork import pac_net  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="same shape"):
    pac_net.check_pair("mnist", "cifar10_5_9")


@needs_data
def test_pac_net_short_keeps_source_and_learns_target(tmp_path):
  from launch.configs import pac_net_mnist  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  c = pac_net_mnist.get_config()
  c.iterations, c.pac_allocate_iterations = 150, 100
  acc = run.run(c, str(tmp_path))["accuracy"]
  assert acc["important_weights_unchanged"]
  assert acc["source_after_calibrate"] == acc["source_after_allocate"] > 0.9
  assert acc["target_pac_net"] > 0.7          # Fashion-MNIST after 150 steps
  assert acc["source_after_finetune"] < acc["source_after_calibrate"] - 0.2  # forgetting


# -------------------------------------------------------------- Meta-ticket --

@needs_data
def test_meta_ticket_episodes_are_well_formed():
  from supsup_jax.subnetwork import meta_ticket  # pylint: disable=import-outside-toplevel
  table, mean, std = meta_ticket.class_table("mnist", "test")
  sample = meta_ticket.make_sampler(table, mean, std, ways=5, shots=3, queries=4)
  xs, ys, xq, yq = jax.jit(sample)(jax.random.key(0))
  assert xs.shape == (15, 28, 28, 1) and xq.shape == (20, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(np.asarray(ys)), [3] * 5)
  np.testing.assert_array_equal(np.bincount(np.asarray(yq)), [4] * 5)
  with pytest.raises(ValueError, match="ways=11"):
    meta_ticket.make_sampler(table, mean, std, ways=11, shots=1, queries=1)
