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
  """subnetwork_mnist with overrides; "a.b" keys reach into sub-configs."""
  from launch.configs import subnetwork_mnist  # pylint: disable=import-outside-toplevel
  c = subnetwork_mnist.get_config()
  for k, v in kw.items():
    *parents, leaf = k.split(".")
    node = c
    for p in parents:
      node = node[p]
    setattr(node, leaf, v)
  return c


@pytest.mark.parametrize("name", ["subnetwork_mnist", "subnetwork_cifar10", "pac_net_mnist",
                                  "meta_ticket_mnist"])
def test_study_configs_are_valid(name):
  import importlib  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  run.validate(importlib.import_module(f"launch.configs.{name}").get_config())


def test_bad_settings_refused_in_one_line_before_anything_runs(tmp_path):
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  cases = [
      ({"iterations": 100, "lottery_ticket.rewind_iteration": 101}, "beyond the training length"),
      ({"lottery_ticket.prune_rate": 1.0}, r"config.lottery_ticket.prune_rate .*\[0, 1\)"),
      ({"learning_rate": float("nan")}, "config.learning_rate must be a finite number > 0"),
      ({"zhou.samples": 0}, "config.zhou.samples must be an int >= 1"),
      ({"epochs": 2.0}, "set exactly one of config.iterations and config.epochs"),
      ({"method": "dense,pac_net"}, "config.method 'pac_net' unknown"),
  ]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message) as e:
      run.run(_config(**overrides), str(tmp_path / "w"))
    assert "\n" not in str(e.value)
  moved = _config()
  moved.lt_rewind = "init"  # a flat key of earlier configs
  with pytest.raises(ValueError, match="config.lt_rewind -> config.lottery_ticket.rewind"):
    run.run(moved, str(tmp_path / "w"))
  ignored = _config()
  ignored.source = "mnist"  # PAC-Net's key: the curves would ignore it
  with pytest.raises(ValueError, match="config.source is not read"):
    run.run(ignored, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # refused before the workdir was touched


def _tiny_lottery(**kw):
  # Every training runs in chunks of 5 steps: one compile per trainer.
  return _config(**{"method": "lottery_ticket", "iterations": 10, "kept_fractions": (1.0, 0.5),
                    "lottery_ticket.rewind": "init,iteration",
                    "lottery_ticket.rewind_iteration": 5, "log_every_steps": 5, **kw})


@needs_data
def test_lottery_ticket_stopped_mid_training_resumes_to_the_same_curves(tmp_path):
  """Stopped (with a checkpoint) inside round 1's retraining, then rerun: the
  same curves as an uninterrupted run; then the finished workdir is refused
  to another config and never overwritten."""
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  from supsup_jax.checkpoint import ConfigMismatchError  # pylint: disable=import-outside-toplevel
  full = run.run(_tiny_lottery(), str(tmp_path / "full"))
  # dense: 10 steps; then round 1 of rewind=init stops after 5 of its 10 steps.
  stopped = run.run(_tiny_lottery(stop_after_steps=15), str(tmp_path / "resumed"))
  assert stopped == {"complete": False, "steps_this_process": 15}
  assert not (tmp_path / "resumed" / "results.json").exists()
  resumed = run.run(_tiny_lottery(), str(tmp_path / "resumed"))
  assert resumed["curves"] == full["curves"]
  assert [p["kept_fraction"] for p in full["curves"]["lottery_ticket(rewind=init)"]] == \
      pytest.approx([1.0, 0.5], abs=0.01)
  # The same command on the finished workdir returns its results.
  assert run.run(_tiny_lottery(), str(tmp_path / "full"))["curves"] == full["curves"]
  before = (tmp_path / "full" / "results.json").read_bytes()
  with pytest.raises(ConfigMismatchError, match=r"different config \(differs in: iterations\)"):
    run.run(_tiny_lottery(iterations=20), str(tmp_path / "full"))
  assert (tmp_path / "full" / "results.json").read_bytes() == before
  # Steps from epochs (ceil(0.01 * 60000 / 128) = 5): checked before the workdir is claimed.
  with pytest.raises(ValueError, match=r"rewind_iteration=6 is beyond .* 0\.\.5"):
    run.run(_tiny_lottery(iterations=0, epochs=0.01, **{"lottery_ticket.rewind_iteration": 6}),
            str(tmp_path / "epochs"))
  assert not (tmp_path / "epochs").exists()


def test_workdir_of_another_run_kind_or_busy_is_refused_in_one_line(tmp_path):
  import fcntl  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  from supsup_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from supsup_jax.checkpoint import ConfigMismatchError  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  other = tmp_path / "continual_run"
  other.mkdir()
  (other / "run.json").write_text(json.dumps({"runner": "continual", "experiment": "gg",
                                              "config": {"method": "supsup"}}))
  (other / "results.json").write_text(json.dumps({"runner": "continual", "avg_accuracy": 0.9}))
  with pytest.raises(ConfigMismatchError, match="holds a 'continual' run.*not a 'subnetwork'"):
    run.run(_tiny_lottery(), str(other))
  assert json.loads((other / "results.json").read_text())["avg_accuracy"] == 0.9
  # A workdir another process holds (its lock taken here with a bare flock).
  busy = tmp_path / "busy"
  busy.mkdir()
  fd = os.open(busy / workdir_lib.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": 4242, "host": "elsewhere"}).encode())
    with pytest.raises(workdir_lib.WorkdirLockedError, match="is in use by pid 4242") as e:
      run.run(_tiny_lottery(), str(busy))
    assert "\n" not in str(e.value)
  finally:
    os.close(fd)


@needs_data
def test_diverging_training_stops_with_one_line_and_no_results(tmp_path):
  """SGD at lr 1e38 on a dense LeNet (it used to end at 9.8 % with exit 0):
  the non-finite guard stops the first chunk with one FloatingPointError
  line, which launch.main prints as ``error: ...`` with exit code 3
  (tests/test_errors.py)."""
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  c = _config(method="dense", optimizer="sgd", learning_rate=1e38, iterations=20,
              log_every_steps=10)
  with pytest.raises(FloatingPointError, match=r"non-finite .* in dense, steps 0\.\.10") as e:
    run.run(c, str(tmp_path))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "results.json").exists()


@needs_data
def test_short_mnist_floors(tmp_path):
  """150 steps each: a trained LeNet and its rewound 20 % ticket pass 90 %,
  a 20 % edge-popup supermask over random signed weights passes 80 % (a mask
  that ignored its scores is a random network, ~10-60 %)."""
  from supsup_jax.runs import subnetwork as run  # pylint: disable=import-outside-toplevel
  c = _config(**{"iterations": 150, "kept_fractions": (1.0, 0.2),
                 "method": "lottery_ticket,edge_popup", "lottery_ticket.rewind": "init"})
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
  c.iterations, c.pac_net.allocate_iterations = 150, 100
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
