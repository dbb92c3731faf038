"""Supermasks over pretrained weights (config.weights_from, supsup_jax/pretrained.py).

Tiny MLPs on mock 8x8 images: an upper_bound run pretrains a 4-way network,
SupSup then masks its weights for 2-way tasks (the head kept from the seed)
in GG, GNu and NNs. The weights it masks are the checkpoint's bit for bit and
stay so through the run; every mismatch is one line naming the leaf; a resume
over a changed checkpoint is refused; without weights_from nothing changes.
"""
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from launch.configs import common
from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import models
from supsup_jax import pretrained
from supsup_jax import tree as tree_lib
from supsup_jax import weights as weights_lib
from supsup_jax.data.streams import InMemoryStream
from supsup_jax.runs import continual
from supsup_jax.runs import scaffold

HEAD = ("Dense_2", "kernel")  # LeNet300100's classifier


def _mock_stream(dataset: str, num_tasks: int) -> InMemoryStream:
  """8x8 grey images; class k has a bright quadrant k. ``mock_pretrain``: every
  task is the whole 4-way data; ``mock_split``: tasks of 2 classes."""
  rng = np.random.default_rng(0)
  y = np.arange(192) % 4
  x = rng.integers(0, 100, (192, 8, 8, 1)).astype(np.uint8)
  for k in range(4):
    r, c = divmod(k, 2)
    x[y == k, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 150
  data = {"train": (x, y.astype(np.int32)), "test": (x[:64], y[:64].astype(np.int32)),
          "num_classes": 4}
  classes = None if dataset == "mock_pretrain" else [[0, 1], [2, 3]][:num_tasks]
  return InMemoryStream(name=dataset, data=data, num_tasks=num_tasks, seed=0,
                        mean=(127.5,), std=(64.0,), task_classes=classes,
                        shared_labels=False)


@pytest.fixture(autouse=True)
def mock_data(monkeypatch):
  monkeypatch.setattr(scaffold, "stream_from_config",
                      lambda config, **kw: _mock_stream(config.dataset, config.num_tasks))


def _config(**overrides):
  c = common.base_config()
  c.experiment = "pretrained_test"
  c.dataset, c.num_tasks, c.model = "mock_split", 2, "lenet300100"
  c.optimizer, c.learning_rate = "adam", 1e-2
  c.batch_size, c.iterations_per_task, c.log_every_steps = 16, 6, 6
  c.test_batch_size, c.inference_examples = 32, 4
  c.nns.check_every, c.nns.max_masks = 3, 4
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
  """A finished upper_bound run: two 4-way networks (task 0, task 1)."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(scaffold, "stream_from_config",
               lambda config, **kw: _mock_stream(config.dataset, config.num_tasks))
    continual.run(_config(method="upper_bound", dataset="mock_pretrain"), workdir)
  return workdir


def _final_memory(workdir):
  state, _, _ = ckpt_lib.read_latest(os.path.join(workdir, "checkpoints"))
  return state["memory"]


def _seed_weights(num_outputs=2):
  return weights_lib.init_weights(models.make_model("lenet300100", num_outputs), 0,
                                  np.zeros((1, 8, 8, 1), np.float32))


@pytest.mark.parametrize("scenario", ["GG", "GNu", "NNs"])
def test_masks_select_from_the_checkpoint_weights_which_never_change(
    pretrain_dir, tmp_path, scenario):
  config = _config(scenario=scenario, weights_from=pretrain_dir, weights_from_task=1,
                   weights_from_fresh=("Dense_2",))
  if scenario == "GG":
    # The 4-way head does not fit 2-way tasks: refused in one line naming the
    # leaf, and the corrected command may then use the same workdir.
    msg = _error(lambda: continual.run(_config(weights_from=pretrain_dir,
                                               weights_from_task=1), str(tmp_path)))
    assert msg.startswith(f"leaf Dense_2/kernel is (100, 4) in weights_from {pretrain_dir!r}"
                          " (a lenet300100 run), (100, 2) in lenet300100"), msg
  results = continual.run(config, str(tmp_path))
  pretrained_net = tree_lib.flatten(_final_memory(pretrain_dir)["params"])
  used = tree_lib.flatten(_final_memory(str(tmp_path))["weights"])
  seed = tree_lib.flatten(_seed_weights())
  assert sorted(used) == sorted(seed)
  for path, value in used.items():
    # After the whole run the masked weights are still task 1's network bit
    # for bit (the head: the seed's), in the model's dtype.
    want = seed[path] if path == HEAD else pretrained_net[path][1]
    assert value.dtype == np.float32 and np.array_equal(value, want), path
  expected = {p: pretrained_net[p][1] for p in used if p != HEAD}
  assert results["provenance"] == {
      "weights_from": pretrain_dir, "kind": "upper_bound run", "task": 1,
      "step": results["provenance"]["step"], "sha256": pretrained.tree_sha256(expected),
      "fresh_leaves": ["Dense_2/kernel"]}
  # One bit per weight and task, as over random weights: the checkpoint is
  # stored once, like the seed.
  num_weights = sum(int(np.prod(v.shape)) for v in seed.values())
  assert results["bytes_per_task"] == math.ceil(num_weights / 8)
  assert 0.0 <= results["avg_accuracy"] <= 1.0
  if scenario != "GG":
    assert "task_inference_accuracy" in results
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert json.load(f)["provenance"]["sha256"] == results["provenance"]["sha256"]


def _save_params(path, tree):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree)
  return path


def test_an_orbax_params_checkpoint_is_read_bit_for_bit(tmp_path):
  trained = weights_lib.init_weights(models.make_model("lenet300100", 2), 5,
                                     np.zeros((1, 8, 8, 1), np.float32),
                                     init="kaiming_normal")
  # A variables dict, and a CheckpointManager's latest step holding one.
  direct = _save_params(str(tmp_path / "vars"), {"params": trained})
  with ocp.CheckpointManager(str(tmp_path / "managed")) as manager:
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(
        {"params": trained, "step": 3})))
    manager.wait_until_finished()
  for path, step in ((direct, None), (str(tmp_path / "managed"), 3)):
    p = pretrained.load(_seed_weights(), path)
    assert (p.kind, p.step, p.fresh_leaves) == ("checkpoint", step, ())
    for leaf, value in tree_lib.flatten(p.weights).items():
      assert np.array_equal(value, tree_lib.flatten(trained)[leaf])
    assert p.sha256 == pretrained.tree_sha256(tree_lib.flatten(trained))


def _error(fn):
  with pytest.raises(ValueError) as e:
    fn()
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_another_model_is_one_line_naming_the_leaf(pretrain_dir, tmp_path):
  # FC 1024-1024 over LeNet 300-100's weights: the first layer differs.
  msg = _error(lambda: continual.run(_config(
      model="fc10241024", weights_from=pretrain_dir, weights_from_task=0,
      weights_from_fresh=("Dense_2",)), str(tmp_path)))
  assert "leaf Dense_0/kernel is (64, 300)" in msg and "(64, 1024) in fc10241024" in msg
  assert "config.model" in msg


@pytest.mark.parametrize("tree, fresh, fragments", [
    # The 4-way pretrained head over 2-way tasks, without weights_from_fresh.
    ("head4", (), ["leaf Dense_2/kernel is (100, 4)", "(100, 2)",
                   "--config.weights_from_fresh='(\"Dense_2\",)'"]),
    ("missing", (), ["lacks leaf Dense_1/kernel of lenet300100"]),
    ("extra", ("Dense_2",), ["holds leaf Dense_9/kernel, which lenet300100 has not"]),
    ("float16", ("Dense_2",), ["leaf Dense_0/kernel is float16", "save the checkpoint as float32"]),
    ("head4", ("Dense_7",), ["weights_from_fresh names 'Dense_7', which is no leaf"]),
])
def test_leaf_mismatches_are_one_line_with_the_fix(tmp_path, tree, fresh, fragments):
  flat = tree_lib.flatten(_seed_weights(num_outputs=4))
  if tree == "missing":
    del flat[("Dense_1", "kernel")]
  if tree == "extra":
    flat[("Dense_9", "kernel")] = np.zeros((2, 2), np.float32)
  if tree == "float16":
    flat = {p: v.astype(jnp.float16) for p, v in flat.items()}
  path = _save_params(str(tmp_path / "ckpt"), tree_lib.unflatten(flat))
  msg = _error(lambda: pretrained.load(_seed_weights(), path, fresh=fresh,
                                       model_name="lenet300100"))
  for fragment in fragments:
    assert fragment in msg, msg


@pytest.mark.parametrize("overrides, fragment", [
    ({"weights_from": "/nonexistent/pretrain"}, "'/nonexistent/pretrain' does not exist"),
    ({"weights_from": "PRETRAIN", "weights_from_fresh": ("Dense_2",)},
     "upper_bound run with 2 networks (one per task): choose one with "
     "--config.weights_from_task=<0..1>"),
    ({"weights_from": "PRETRAIN", "weights_from_task": 2, "weights_from_fresh": ("Dense_2",)},
     "config.weights_from_task=2 out of range"),
    ({"weights_from": "PRETRAIN", "weights_from_task": 0, "method": "batche"},
     "method 'batche' would ignore it"),
    ({"weights_from_fresh": ("Dense_2",)}, "config.weights_from_fresh applies with "
     "config.weights_from"),
    ({"weights_from": "EMPTY"}, "holds no orbax checkpoint"),
])
def test_bad_sources_are_one_line(pretrain_dir, tmp_path, overrides, fragment):
  if overrides.get("weights_from") == "PRETRAIN":
    overrides = dict(overrides, weights_from=pretrain_dir)
  if overrides.get("weights_from") == "EMPTY":
    os.makedirs(tmp_path / "empty")
    overrides = dict(overrides, weights_from=str(tmp_path / "empty"))
  msg = _error(lambda: continual.run(_config(**overrides), str(tmp_path)))
  assert fragment in msg, msg
  assert not os.path.exists(os.path.join(tmp_path, "run.json"))  # refused before the claim


def test_a_resume_over_a_changed_checkpoint_is_refused(tmp_path):
  source = str(tmp_path / "ckpt")
  _save_params(source, _seed_weights(num_outputs=2))
  config = _config(weights_from=source, stop_after_steps=6)  # stops after task 1
  workdir = str(tmp_path / "run")
  assert continual.run(config, workdir)["complete"] is False
  changed = weights_lib.init_weights(models.make_model("lenet300100", 2), 9,
                                     np.zeros((1, 8, 8, 1), np.float32))
  _save_params(source + "_new", changed)
  os.rename(source, source + "_old")
  os.rename(source + "_new", source)
  with pytest.raises(ckpt_lib.ConfigMismatchError) as e:
    continual.run(config, workdir)
  assert "trained over other fixed weights" in str(e.value)
  assert "sha256" in str(e.value) and "\n" not in str(e.value)


def test_without_weights_from_nothing_changes():
  """The new keys at their defaults leave a config's fingerprint (so every
  existing workdir resumes) and the seed's weights as they were."""
  config = _config().to_dict()
  before = {k: v for k, v in config.items() if not k.startswith("weights_from")}
  assert ckpt_lib.config_fingerprint(config) == ckpt_lib.config_fingerprint(before)
  assert ckpt_lib.config_diff(before, config) == []
  assert pretrained.from_config(_config(), _seed_weights()) is None
  assert {k: _config()[k] for k in pretrained.DEFAULTS} == pretrained.DEFAULTS
  assert pretrained.DEFAULTS.items() <= ckpt_lib.NEUTRAL_DEFAULTS.items()
  assert ckpt_lib.config_fingerprint(_config(weights_from="x").to_dict()) != \
      ckpt_lib.config_fingerprint(config)


def test_split_streams_take_classes_per_task():
  """What the pretraining config reads: a split dataset as one task of all its classes."""
  from supsup_jax import data  # pylint: disable=import-outside-toplevel
  s = data.make_stream("split_mnist", num_tasks=1, classes_per_task=10)
  assert (s.num_tasks, s.num_classes, s.task_classes) == (1, 10, [list(range(10))])
  assert _error(lambda: data.make_stream("split_mnist", classes_per_task=11)) == (
      "classes_per_task=11 exceeds the 10 classes of 'split_mnist'; allowed: 1..10")
  assert "applies to the split streams" in _error(
      lambda: data.make_stream("permuted_mnist", classes_per_task=2))


def test_the_hopsupsup_runner_refuses_weights_from(pretrain_dir):
  from supsup_jax.runs import hopsupsup as hop_run  # pylint: disable=import-outside-toplevel
  assert "method 'hopsupsup' would ignore it" in _error(
      lambda: hop_run._check_learner_keys(_config(weights_from=pretrain_dir)))
