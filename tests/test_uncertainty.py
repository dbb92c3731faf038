"""Uncertainty from masks: metrics against direct references, Masksembles masks,
vmap ensemble training against per-member training, bad input, and a short
real-data run (MNIST in distribution, Fashion-MNIST out), and the near-OOD set
(CIFAR-100 beside CIFAR-10's held-out classes) on mock image folders."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from launch.configs import uncertainty_cifar10, uncertainty_mnist
from supsup_jax import runs as runners
from supsup_jax.uncertainty import calibration as cal
from supsup_jax.uncertainty import masksembles as ms
from supsup_jax.uncertainty import members
from supsup_jax.runs import uncertainty as run_lib
from supsup_jax.uncertainty.models import UncertaintyMLP

# ----------------------------------------------------------------- metrics


def _brute_auroc(neg, pos):
  wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_pairwise_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  neg = rng.integers(0, 6, size=37).astype(float)   # many ties on purpose
  pos = rng.integers(2, 9, size=23).astype(float)
  assert cal.auroc(neg, pos) == pytest.approx(_brute_auroc(neg, pos), abs=1e-12)
  neg, pos = rng.normal(size=50), rng.normal(0.5, 1, size=41)
  assert cal.auroc(neg, pos) == pytest.approx(_brute_auroc(neg, pos), abs=1e-12)


def test_auroc_extremes():
  assert cal.auroc([0, 1, 2], [3, 4]) == 1.0
  assert cal.auroc([3, 4], [0, 1, 2]) == 0.0
  assert cal.auroc([1, 1], [1, 1, 1]) == 0.5
  with pytest.raises(ValueError, match="both classes"):
    cal.auroc([], [1.0])


def test_nll_brier_ece_by_hand():
  p = np.array([[0.70, 0.30],    # correct, conf .70 -> bin (10/15, 11/15]
                [0.38, 0.62],    # wrong,   conf .62 -> bin (9/15, 10/15]
                [0.90, 0.10],    # wrong,   conf .90 -> bin (13/15, 14/15]
                [0.28, 0.72]])   # wrong,   conf .72 -> same bin as the first
  y = np.array([0, 0, 1, 0])
  lp = np.log(p)[None]  # one member
  s = cal.summarize(lp, y)
  assert s["accuracy"] == pytest.approx(0.25)
  assert s["nll"] == pytest.approx(-(math.log(.7) + math.log(.38) + math.log(.1) + math.log(.28)) / 4)
  brier = ((.3 ** 2 + .3 ** 2) + (.62 ** 2 + .62 ** 2) + (.9 ** 2 + .9 ** 2)
           + (.72 ** 2 + .72 ** 2)) / 4
  assert s["brier"] == pytest.approx(brier)
  # bin of .70/.72: accuracy 1/2, confidence .71; the others: accuracy 0.
  ece = 2 / 4 * abs(0.5 - 0.71) + 1 / 4 * 0.62 + 1 / 4 * 0.90
  assert s["ece"] == pytest.approx(ece)
  bins = cal.reliability_bins(p, y)
  assert bins["count"].tolist() == [0] * 9 + [1, 2, 0, 0, 1, 0]


def test_member_mean_entropy_and_mutual_information():
  eps = 1e-9
  a = np.log(np.array([[1 - eps, eps], [0.5, 0.5]]))
  b = np.log(np.array([[eps, 1 - eps], [0.5, 0.5]]))
  lp = np.stack([a, b])
  np.testing.assert_allclose(np.exp(cal.mean_log_probs(lp)), 0.5, atol=1e-12)
  h = cal.entropy_from_log_probs(cal.mean_log_probs(lp))
  np.testing.assert_allclose(h, [math.log(2), math.log(2)], atol=1e-6)
  # Disagreeing certain members: MI = log 2; agreeing uncertain members: MI = 0.
  np.testing.assert_allclose(cal.mutual_information(lp), [math.log(2), 0.0], atol=1e-6)
  # A single member has no epistemic term at all.
  assert np.all(cal.mutual_information(a[None]) == 0.0)


# ------------------------------------------------------------ Masksembles


@pytest.mark.parametrize("channels,n,scale", [(300, 4, 2.0), (100, 5, 3.0), (64, 4, 1.5),
                                              (100, 4, 6.0)])
def test_masksembles_count_width_ones_overlap(channels, n, scale):
  m = ms.generate_masks(channels, n, scale, seed=3)
  assert m.shape == (n, channels)
  assert set(np.unique(m)) <= {0.0, 1.0}
  ones = m.sum(1)
  assert np.all(ones == ones[0])                 # same number of ones in each mask
  assert ones[0] == ms.active_features(channels, n, scale)
  assert np.all(m.any(0))                        # every channel used by some mask
  # Each mask picks m of ~m*scale positions: pairwise IoU ~ 1 / (2 scale - 1).
  assert ms.mean_pairwise_iou(m) == pytest.approx(1 / (2 * scale - 1), abs=0.06)
  np.testing.assert_array_equal(m, ms.generate_masks(channels, n, scale, seed=3))


def test_masksembles_scale_controls_overlap():
  ious = [ms.mean_pairwise_iou(ms.generate_masks(300, 4, s)) for s in (1.0, 1.5, 2.0, 3.0, 6.0)]
  assert ious[0] == 1.0                          # scale 1: identical all-ones masks
  assert np.all(ms.generate_masks(300, 4, 1.0) == 1.0)
  assert all(a > b for a, b in zip(ious, ious[1:]))
  assert ious[-1] < 0.15                         # large scale: nearly disjoint


@pytest.mark.parametrize("args,match", [
    ((100, 4, 7.0), r"feasible range: 1.0 <= scale <= 6.0"),
    ((100, 4, 0.5), r"feasible range: 1.0 <= scale <= 6.0"),
    ((100, 0, 2.0), r"num_masks must be an int >= 1"),
    ((8, 4, 2.0), r">= 10 channels"),
    ((10, 2, 6.0), r"could not produce 2 masks of width 10.*feasible range"),
])
def test_masksembles_infeasible(args, match):
  with pytest.raises(ValueError, match=match):
    ms.generate_masks(*args)


# ------------------------------------------------------------ methods

_SHAPE, _CLASSES, _HIDDEN = (6, 6, 1), 3, (24, 12)


def _method(name, **kw):
  kw.setdefault("hidden", _HIDDEN)
  kw.setdefault("num_members", 3)
  return members.make_method(name, input_shape=_SHAPE, num_classes=_CLASSES, **kw)


_BUILT = {}


def _built(name, **kw):
  """(method, params) shared by the tests: each compiles its init/predictor once."""
  key = (name, tuple(sorted(kw.items())))
  if key not in _BUILT:
    method = _method(name, mc_samples=4, **kw)
    _BUILT[key] = method, members.init_members(method, jax.random.key(0))
  return _BUILT[key]


def _batch_fn(arrays, member, step):
  """Synthetic, learnable batches that differ per member and step (no RNG:
  threefry programs are slow to compile)."""
  i = jnp.arange(12 * 36, dtype=jnp.float32).reshape(12, *_SHAPE)
  x = jnp.sin(i * (0.37 + 0.11 * member) + 1.3 * step) + arrays["shift"]
  y = (jnp.sum(x, axis=(1, 2, 3)) > 0).astype(jnp.int32) + (x[:, 0, 0, 0] > 0.5)
  return x, y


@pytest.mark.parametrize("bad", [dict(num_members=0), dict(mc_samples=0),
                                 dict(num_members=2.5), dict(dropout_rate=1.0)])
def test_bad_counts_raise(bad):
  with pytest.raises(ValueError, match="num_members|mc_samples|dropout_rate"):
    _method("mc_dropout", **bad)


def test_unknown_method_raises():
  with pytest.raises(ValueError, match="allowed: single, mc_dropout"):
    _method("bayes")


@pytest.mark.parametrize("name,kw", [("deep_ensemble", {}),
                                     ("supermask_ensemble", dict(mask_kind="threshold"))])
def test_vmap_training_equals_each_member_alone(name, kw):
  method, params = _built(name, **kw)
  # Plain SGD: a binary mask flips when a score crosses the threshold, and with
  # Adam's sign-like steps a crossing can hinge on the last bit of a batched vs
  # unbatched matmul; SGD steps scale with the gradient, so rounding stays small.
  opt = optax.sgd(0.1)
  key = jax.random.key(0)
  # Different initialisations of every kernel (biases start at 0 in all members;
  # the supermask ensemble's scores are all kernel-shaped).
  kernels = [v for path, v in jax.tree_util.tree_leaves_with_path(params)
             if "kernel" in jax.tree_util.keystr(path)]
  assert kernels and all(not np.allclose(v[0], v[1]) for v in kernels)
  opt_state = jax.vmap(opt.init)(params)
  arrays = {"shift": jnp.float32(0.1)}
  trainer = members.make_trainer(method, opt, _batch_fn)
  steps = 5
  vp, _, losses = trainer(jax.tree.map(jnp.copy, params), opt_state, method.frozen, arrays,
                          key, jnp.int32(0), num_steps=steps)
  assert losses.shape == (steps, method.num_members)

  member_step = jax.jit(members.make_member_step(method, opt))
  for k in range(method.num_members):
    p = jax.tree.map(lambda x, k=k: x[k], params)
    s = opt.init(p)
    for t in range(steps):
      x, y = _batch_fn(arrays, k, t)
      p, s, _ = member_step(p, s, method.frozen, x, y, members.member_key(key, k, t))
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(vp)):
      np.testing.assert_allclose(a, b[k], rtol=1e-5, atol=1e-6)
  # The supermask ensemble trains scores only; its weights never change.
  assert jax.tree.structure(vp) == jax.tree.structure(params)


def test_predictions_per_method():
  x = jax.random.normal(jax.random.key(1), (5, *_SHAPE))
  key = jax.random.key(2)
  for name, k_times_s in [("single", 1), ("mc_dropout", 4), ("masksembles", 3),
                          ("deep_ensemble", 3), ("supermask_ensemble", 3)]:
    method, params = _built(name, **({"mask_kind": "threshold"}
                                      if name == "supermask_ensemble" else {}))
    lp = members.make_predictor(method)(params, method.frozen, x, key)
    assert lp.shape == (k_times_s, 5, _CLASSES), name
    np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
    if k_times_s > 1:  # the predictions differ between members / samples
      assert not np.allclose(lp[0], lp[1]), name


def test_masksembles_member_i_is_the_network_with_mask_i():
  method, params = _built("masksembles")
  x = jax.random.normal(jax.random.key(1), (4, *_SHAPE))
  lp = members.make_predictor(method)(params, method.frozen, x, jax.random.key(2))
  net = UncertaintyMLP(hidden=_HIDDEN, num_outputs=_CLASSES)
  p0 = jax.tree.map(lambda a: a[0], params)
  for i in range(3):
    only_i = tuple(m[i:i + 1] for m in method.frozen)   # one group: every row gets mask i
    ref = jax.nn.log_softmax(net.apply({"params": p0}, x, masks=only_i))
    np.testing.assert_allclose(lp[i], ref, rtol=1e-5, atol=1e-6)


def test_bytes_stored_supermask_is_one_bit_per_weight_per_member():
  method, params = _built("supermask_ensemble", mask_kind="threshold")
  n_weights = sum(int(np.size(w)) for w in jax.tree.leaves(method.frozen))
  assert members.bytes_stored(method, params) == math.ceil(3 * n_weights / 8)
  dense, dp = _built("deep_ensemble")
  n_params = sum(int(np.size(w[0])) for w in jax.tree.leaves(dp))
  assert members.bytes_stored(dense, dp) == 3 * 4 * n_params


# ------------------------------------------------------------ runner


def test_runner_is_registered():
  assert runners.get_runner("uncertainty") is run_lib.run
  assert uncertainty_mnist.get_config().runner == "uncertainty"
  assert uncertainty_cifar10.get_config().ood_classes == (5, 6, 7, 8, 9)


@pytest.mark.parametrize("method,key,value,match", [
    ("bayes", "seed", 0, "allowed: single"),
    ("masksembles", "num_members", 0, "num_members must be an int >= 1"),
    ("mc_dropout", "mc_dropout.samples", 0, "config.mc_dropout.samples must be an int >= 1"),
    ("mc_dropout", "mc_dropout.rate", 1.0, r"config.mc_dropout.rate must be a number in \(0, 1\)"),
    ("masksembles", "masksembles.scale", 9.0,
     "config.masksembles.scale: .*feasible range: 1.0 <= scale <= 6.0"),
    ("masksembles", "masksembles.scale", float("inf"), "config.masksembles.scale must be a finite"),
    ("masksembles", "batch_size", 126, "multiple of config.num_members=4"),
    ("single", "learning_rate", float("nan"), "config.learning_rate must be a finite number > 0"),
    ("single", "learning_rate", float("inf"), "config.learning_rate must be a finite number > 0"),
    ("supermask_ensemble", "supermask_ensemble.learning_rate", -1.0,
     "config.supermask_ensemble.learning_rate must be a finite number > 0"),
    ("supermask_ensemble", "supermask_ensemble.topk_fraction", float("nan"),
     "config.supermask_ensemble.topk_fraction must be in"),
    ("supermask_ensemble", "supermask_ensemble.mask_kind", "soft",
     "config.supermask_ensemble.mask_kind 'soft' unknown"),
    ("supermask_ensemble", "supermask_ensemble.optimizer", "lion", "allowed: "),
    # Keys the method would ignore.
    ("single", "masksembles.scale", 3.0,
     r"config.masksembles.scale=3.0 is not used by method 'single'"),
    ("single", "num_members", 8, r"config.num_members=8 is not used by method 'single'"),
    ("supermask_ensemble", "learning_rate", 1e-2,
     r"config.learning_rate=0.01 is not used by method 'supermask_ensemble'.*"
     r"config.supermask_ensemble.learning_rate"),
    ("deep_ensemble", "mc_dropout.rate", 0.2, "is read by method 'mc_dropout' only"),
    # Ranges and unknown keys.
    ("single", "id_classes", (0, 10), r"class ids of mnist are ints in \[0, 10\)"),
    ("single", "train_steps", -1, "config.train_steps must be an int >= 1"),
    ("single", "seed", -1, r"config.seed must be an int in \[0, 2147483648\)"),
    ("single", "hidden", (300, 0), "config.hidden must be a non-empty tuple of ints >= 1"),
    ("single", "stop_after_steps", -5, "config.stop_after_steps must be an int >= 0"),
    ("single", "mask_kind", "topk", "config.mask_kind is now config.supermask_ensemble.mask_kind"),
    ("single", "num_member", 4, "config key config.num_member is not read by the uncertainty "
     "runner; did you mean config.num_members"),
    ("single", "masksembles.scal", 2.0, "did you mean config.masksembles.scale"),
    # The optional near-OOD set (absent from this config; set here as a dict key).
    ("single", "near_ood_dataset", "svhn", "config.near_ood_dataset 'svhn' unknown; allowed: "
     "mnist, fashion_mnist, cifar10, cifar100, or '' for no near-OOD set"),
    ("single", "near_ood_dataset", "cifar100", r"config.near_ood_dataset 'cifar100' has "
     r"\(32, 32, 3\) images, config.dataset 'mnist' \(28, 28, 1\): the near-OOD set must"),
    ("single", "near_ood_dataset", "fashion_mnist",
     "repeat the OOD set fashion_mnist \\(all classes\\)"),
    ("single", "near_ood_classes", (3,), r"config.near_ood_classes=\(3,\) needs "
     "config.near_ood_dataset"),
    ("single", "near_ood", "cifar100", "did you mean config.near_ood_dataset"),
])
def test_bad_config_raises_before_loading_data(tmp_path, method, key, value, match):
  c = uncertainty_mnist.get_config().to_dict()
  c["method"] = method
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  c["data_dir"] = str(tmp_path / "no_data_here")  # loading would raise DataNotFoundError
  with pytest.raises(ValueError, match=match) as e:
    run_lib.run(c, str(tmp_path / "w"))
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "w")  # refused before the workdir is touched


def test_config_defaults_are_the_runners():
  """A key the method ignores must stay at the runner's default: the config
  file's values are those defaults, and every method accepts the file."""
  c = uncertainty_mnist.get_config()
  for key, default in run_lib.DEFAULTS.items():
    got = c[key].to_dict() if isinstance(default, dict) else c[key]
    assert got == default, key
  for method in members.METHODS:
    c.method = method
    run_lib.validate(c)
  assert sorted(c.keys()) == sorted(run_lib.KEYS)
  run_lib.validate(uncertainty_cifar10.get_config())


def test_near_ood_set_is_optional_and_keeps_run_identities():
  """The MNIST config has no near-OOD set and its run identity is what it was;
  the CIFAR-10 config adds CIFAR-100 (the standard near pair) and its identity
  differs from before only in that key; '' for none gives the old identity."""
  from supsup_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  mnist = uncertainty_mnist.get_config()
  assert run_lib.identity_config(mnist).to_dict() == mnist.to_dict()
  assert "near_ood_dataset" not in mnist
  c10 = uncertainty_cifar10.get_config()
  assert (c10.near_ood_dataset, tuple(c10.near_ood_classes)) == ("cifar100", ())
  before = {k: v for k, v in c10.to_dict().items() if k not in run_lib.OPTIONAL}
  assert ckpt_lib.config_diff(before, run_lib.identity_config(c10).to_dict()) == [
      "near_ood_dataset"]
  c10.near_ood_dataset = ""
  assert ckpt_lib.config_fingerprint(run_lib.identity_config(c10).to_dict()) == (
      ckpt_lib.config_fingerprint(before))
  assert run_lib.set_labels(uncertainty_cifar10.get_config()) == {
      "in": "cifar10 classes 0-4", "ood": "cifar10 classes 5-9",
      "near_ood": "cifar100 (all classes)"}


# Mock CIFAR-10 / CIFAR-100 image folders: pixel (0, 0) codes the class (red),
# the dataset (green) and the split (blue), so a test can tell every image's origin.
_CODE = {"cifar10": 10, "cifar100": 100}
_SPLIT = {"train": 1, "test": 2}


def _mock_folder(root, dataset, per_class):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  n = 10 if dataset == "cifar10" else 100
  names = [f"k{c:02d}" for c in range(n)]  # alphabetical = class id
  for split, count in per_class.items():
    for c, name in enumerate(names):
      d = root / dataset / split / name
      d.mkdir(parents=True)
      for i in range(count):
        img = np.full((32, 32, 3), 40 * i, np.uint8)
        img[0, 0] = (c, _CODE[dataset], _SPLIT[split])
        Image.fromarray(img).save(d / f"{i}.png")
  if dataset == "cifar100":
    (root / dataset / "fine_to_coarse.json").write_text(json.dumps(
        {"fine_label_names": names, "coarse_label_names": [f"s{i}" for i in range(20)],
         "fine_to_coarse": [c // 5 for c in range(100)]}))


@pytest.fixture
def mock_cifar(tmp_path, monkeypatch):
  """A data dir with tiny CIFAR-10 (4 train / 3 test images per class) and
  CIFAR-100 (1 / 1 per class) image folders."""
  from supsup_jax import data as D  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("SUPSUP_CACHE_DIR", str(tmp_path / "cache"))
  _mock_folder(tmp_path / "data", "cifar10", {"train": 4, "test": 3})
  _mock_folder(tmp_path / "data", "cifar100", {"train": 1, "test": 1})
  D.clear_cache()
  yield str(tmp_path / "data")
  D.clear_cache()


def _tiny_cifar10(data_dir, **kw):
  c = uncertainty_cifar10.get_config()
  c.method = "single"
  c.hidden = (8,)
  c.batch_size = 8
  c.train_steps = 2
  c.steps_per_call = 2
  c.eval_batch_size = 128
  c.num_bins = 5
  c.data_dir = data_dir
  for k, v in kw.items():
    c[k] = v
  return c


def test_near_ood_set_is_cifar100_test_images_with_the_id_normalisation(mock_cifar):
  _, x_test, y_test, ood, _ = run_lib.load_data(_tiny_cifar10(mock_cifar), 1)
  mean, std = (np.asarray(v, np.float32) for v in run_lib.transforms.NORM["cifar10"])

  def corner(x):  # back to the stored pixel (0, 0): (class, dataset code, split code)
    return np.rint((np.asarray(x)[:, 0, 0] * std + mean) * 255).astype(int)

  near, far, ident = corner(ood["near_ood"]), corner(ood["ood"]), corner(x_test)
  # All 100 CIFAR-100 test images (one per class), not CIFAR-10's.
  assert ood["near_ood"].shape == (100, 32, 32, 3) and ood["near_ood"].dtype == np.float32
  assert sorted(near[:, 0]) == list(range(100))
  assert (near[:, 1] == _CODE["cifar100"]).all() and (near[:, 2] == _SPLIT["test"]).all()
  # The OOD set stays CIFAR-10's held-out test classes 5-9, in distribution 0-4.
  assert sorted(far[:, 0]) == sorted(list(range(5, 10)) * 3)
  assert (far[:, 1] == _CODE["cifar10"]).all() and (far[:, 2] == _SPLIT["test"]).all()
  assert sorted(ident[:, 0]) == sorted(list(range(5)) * 3) and set(np.asarray(y_test)) == set(
      range(5))


def test_run_reports_near_and_ood_sets_apart(mock_cifar, tmp_path):
  wd = str(tmp_path / "w")
  r = run_lib.run(_tiny_cifar10(mock_cifar), wd)
  assert (r["num_test"], r["num_ood"], r["num_near_ood"]) == (15, 15, 100)
  assert (r["in_set"], r["ood_set"], r["near_ood_set"]) == (
      "cifar10 classes 0-4", "cifar10 classes 5-9", "cifar100 (all classes)")
  for k in ("ood_auroc", "ood_auroc_mi", "near_ood_auroc", "near_ood_auroc_mi"):
    assert 0.0 <= r[k] <= 1.0, k
  assert r["config"]["near_ood_dataset"] == "cifar100"
  with open(os.path.join(wd, "metrics.csv")) as f:
    head, row = [line.strip().split(",") for line in f]
  assert head[5:9] == ["ood_auroc", "ood_auroc_mi", "near_ood_auroc", "near_ood_auroc_mi"]
  assert float(row[7]) == r["near_ood_auroc"]
  assert os.path.getsize(os.path.join(wd, "entropy_hist.png")) > 0
  # The table: a near column pair, "-" for a run without a near-OOD set, the sets named.
  old = str(tmp_path / "old")
  r_old = run_lib.run(_tiny_cifar10(mock_cifar, near_ood_dataset=""), old)
  assert "near_ood_auroc" not in r_old and "near_ood_dataset" not in r_old["config"]
  assert r_old["ood_auroc"] == r["ood_auroc"]  # same network, same OOD set
  lines = run_lib.table([wd, old]).splitlines()
  assert "| AUROC H | AUROC MI | near AUROC H | near AUROC MI |" in lines[0]
  assert f"| {r['near_ood_auroc']:.4f} | {r['near_ood_auroc_mi']:.4f} |" in lines[2]
  assert "| - | - |" in lines[3]
  assert ("uncertainty_cifar10: in = cifar10 classes 0-4; AUROC vs OOD = cifar10 classes 5-9; "
          "near AUROC vs near-OOD = cifar100 (all classes)") in lines
  # A workdir of the run without the near-OOD set: the flag that reads it is named.
  with pytest.raises(run_lib.ckpt_lib.ConfigMismatchError,
                     match="holds this run without a near-OOD set .*--config.near_ood_dataset= "
                     "to read or resume it as it was") as e:
    run_lib.run(_tiny_cifar10(mock_cifar), old)
  assert "\n" not in str(e.value)
  again = run_lib.run(_tiny_cifar10(mock_cifar, near_ood_dataset=""), old)
  assert {k: again[k] for k in _METRICS} == {k: r_old[k] for k in _METRICS}


def test_short_mnist_run_accuracy_floor_and_outputs(tmp_path):
  """Masksembles, 300 steps: well above chance, and detects Fashion-MNIST."""
  c = uncertainty_mnist.get_config()
  c.method = "masksembles"
  c.train_steps = 300
  c.steps_per_call = 150
  wd = str(tmp_path / "w")
  r = run_lib.run(c, wd)
  assert r["accuracy"] > 0.92
  assert r["ood_auroc"] > 0.8 and r["ood_auroc_mi"] > 0.7
  assert 0 <= r["ece"] < 0.1 and r["nll"] < 0.35
  for f in ("results.json", "metrics.csv", "reliability.csv", "reliability.png",
            "entropy_hist.png"):
    assert os.path.exists(os.path.join(wd, f)), f
  with open(os.path.join(wd, "results.json")) as f:
    saved = json.load(f)
  assert saved["method"] == "masksembles" and saved["num_test"] == 10000
  assert saved["peak_rss_mb"] > 0 and saved["bytes_stored"] > 0
  assert saved["runner"] == "uncertainty" and len(saved["train_loss_per_call"]) == 2
  # The same command on the finished workdir returns its results, recomputing nothing.
  mtime = os.path.getmtime(os.path.join(wd, "results.json"))
  assert run_lib.run(c, wd)["accuracy"] == r["accuracy"]
  assert os.path.getmtime(os.path.join(wd, "results.json")) == mtime


# ------------------------------------------------------- resume, identity, guards

_METRICS = ("accuracy", "nll", "brier", "ece", "ood_auroc", "ood_auroc_mi",
            "train_loss_per_call", "bytes_stored", "num_test", "num_ood")


def _tiny(**kw):
  """A deep ensemble of 2 small MLPs, 3 chunks of 10 steps."""
  c = uncertainty_mnist.get_config()
  c.method = "deep_ensemble"
  c.hidden = (32,)
  c.batch_size = 32
  c.train_steps = 30
  c.steps_per_call = 10
  c.eval_batch_size = 5000
  c.num_bins = 5
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
  """An uninterrupted tiny run, and one stopped after its first checkpoint
  (config.stop_after_steps: the checkpoint a SIGKILL would leave) and resumed."""
  root = tmp_path_factory.mktemp("tiny")
  whole = run_lib.run(_tiny(), str(root / "whole"))
  wd = str(root / "resumed")
  stopped = run_lib.run(_tiny(stop_after_steps=10), wd)
  assert stopped["complete"] is False and stopped["global_step"] == 10
  assert not os.path.exists(os.path.join(wd, "results.json"))
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["10"]
  resumed = run_lib.run(_tiny(), wd)  # stop_after_steps does not change the run's identity
  return root, whole, resumed


def test_resume_after_stop_gives_identical_metrics(tiny_runs):
  _, whole, resumed = tiny_runs
  assert len(whole["train_loss_per_call"]) == 3
  for k in _METRICS:
    assert resumed[k] == whole[k], k
  assert all(math.isfinite(v) for v in whole["train_loss_per_call"])


def test_finished_run_of_another_seed_or_kind_is_refused_and_kept(tiny_runs, tmp_path):
  from supsup_jax.checkpoint import ConfigMismatchError  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import scaffold  # pylint: disable=import-outside-toplevel
  root, _, _ = tiny_runs
  wd = str(root / "whole")
  before = open(os.path.join(wd, "results.json"), "rb").read()
  with pytest.raises(ConfigMismatchError, match=r"different config \(differs in: seed\)"):
    run_lib.run(_tiny(seed=1), wd)
  assert open(os.path.join(wd, "results.json"), "rb").read() == before
  # A finished run of another kind (the continual loop's identity and results).
  other = str(tmp_path / "gg")
  with scaffold.open_run(other, {"experiment": "gg_split_mnist", "seed": 0},
                         kind="continual") as sc:
    sc.restore()
    sc.finish({"avg_accuracy": 0.9})
  before = open(os.path.join(other, "results.json"), "rb").read()
  with pytest.raises(ConfigMismatchError, match="holds a 'continual' run"):
    run_lib.run(_tiny(), other)
  assert open(os.path.join(other, "results.json"), "rb").read() == before


def test_non_finite_training_stops_before_its_checkpoint(tmp_path):
  c = _tiny(optimizer="sgd", learning_rate=1e38)
  wd = str(tmp_path / "w")
  with pytest.raises(FloatingPointError, match="non-finite .* deep_ensemble between steps 0 "
                     "and 10; "
                     "stopped, no checkpoint yet") as e:
    run_lib.run(c, wd)
  assert "\n" not in str(e.value)
  assert not os.path.exists(os.path.join(wd, "results.json"))
  assert not os.listdir(os.path.join(wd, "checkpoints"))


def _launch(*args):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, "-m", "launch.main",
                         "--config=launch/configs/uncertainty_mnist.py", *args],
                        cwd=repo, capture_output=True, text=True, timeout=300)


def _one_error_line(result, code, fragment):
  assert result.returncode == code, result.stdout + result.stderr
  assert "Traceback" not in result.stdout + result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_launcher_refuses_nan_learning_rate_and_a_busy_workdir(tmp_path):
  from supsup_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  wd = str(tmp_path / "w")
  _one_error_line(_launch(f"--workdir={wd}", "--config.learning_rate=nan"), 2,
                  "config.learning_rate must be a finite number > 0, got nan")
  with workdir_lib.lock(wd):  # another launcher holds the workdir
    _one_error_line(_launch(f"--workdir={wd}", "--config.method=deep_ensemble"), 2,
                    "is in use by pid")


@pytest.mark.slow
@pytest.mark.parametrize("method", members.METHODS)
def test_full_mnist_table_floors(tmp_path, method):
  """The default (table) runs: measured 96.6-98.3 % and entropy AUROC 0.87-0.93."""
  c = uncertainty_mnist.get_config()
  c.method = method
  r = run_lib.run(c, str(tmp_path / method))
  assert r["accuracy"] > 0.955
  assert r["ood_auroc"] > 0.83


@pytest.mark.slow
def test_cifar10_real_data_near_ood_is_all_of_cifar100(tmp_path):
  """The documented short CIFAR-10 run (single, 500 steps): measured accuracy
  63.6 %, AUROC 0.562 against classes 5-9 and 0.582 against CIFAR-100."""
  c = uncertainty_cifar10.get_config()
  c.train_steps = 500
  r = run_lib.run(c, str(tmp_path / "single"))
  assert (r["num_test"], r["num_ood"], r["num_near_ood"]) == (5000, 5000, 10000)
  assert r["near_ood_set"] == "cifar100 (all classes)"
  assert r["accuracy"] > 0.58
  assert r["ood_auroc"] > 0.53 and r["near_ood_auroc"] > 0.55
