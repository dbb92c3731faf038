"""The CPU XLA defaults: added when unset, never over the user's own flags,
off with SUPSUP_XLA_DEFAULTS=0, and in force in a launcher process."""
import os
import subprocess
import sys

from supsup_jax import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_added_to_unset_flags_only():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_prefer_vector_width=256"}
  out = xla_flags.apply_cpu_defaults(env).split()
  assert "--xla_force_host_platform_device_count=8" in out
  assert "--xla_cpu_prefer_vector_width=256" in out  # the user's value wins
  assert "--xla_cpu_prefer_vector_width=512" not in out
  assert "--xla_cpu_experimental_ynn_fusion_type=" in out
  assert xla_flags.apply_cpu_defaults(env).split() == out  # idempotent


def test_opt_out_leaves_flags_alone():
  env = {"SUPSUP_XLA_DEFAULTS": "0"}
  assert xla_flags.apply_cpu_defaults(env) == ""
  assert "XLA_FLAGS" not in env


def test_flags_are_known_to_this_xla_and_reach_the_backend():
  # XLA aborts on an unknown flag; a child process that starts its backend
  # with the defaults and computes proves they parse.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  code = ("from supsup_jax import xla_flags; f = xla_flags.apply_cpu_defaults(); "
          "import jax.numpy as jnp; assert float(jnp.ones(3).sum()) == 3.0; print(f)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  for flag in xla_flags.CPU_DEFAULTS:
    assert flag in out.stdout.split()



def test_cpu_device_count_rule_and_bad_values():
  import pytest  # pylint: disable=import-outside-toplevel
  # 0: one device per core, at most tasks_in_parallel and dividing it.
  assert xla_flags.cpu_device_count(0, 10, cores=2) == 2
  assert xla_flags.cpu_device_count(0, 10, cores=4) == 2   # 4 and 3 do not divide 10
  assert xla_flags.cpu_device_count(0, 10, cores=16) == 10
  assert xla_flags.cpu_device_count(0, 3, cores=2) == 1
  assert xla_flags.cpu_device_count(0, 1, cores=8) == 1
  assert xla_flags.cpu_device_count(3, 10, cores=2) == 3   # asked for: as asked
  for bad in (-1, 1.5, True, "2"):
    with pytest.raises(ValueError, match=r"config.cpu_devices=.* must be an int >= 1, or 0"):
      xla_flags.cpu_device_count(bad, 10)


def test_split_cpu_adds_the_count_once_and_never_over_the_user():
  env = {}
  out = xla_flags.split_cpu(2, env, cores=2).split()
  assert out == ["--xla_force_host_platform_device_count=2",
                 "--xla_cpu_multi_thread_eigen=false"]  # a device per core
  assert xla_flags.split_cpu(2, env, cores=2).split() == out  # idempotent
  # Fewer devices than cores: XLA's matmuls keep their threads.
  assert xla_flags.split_cpu(2, {}, cores=8) == "--xla_force_host_platform_device_count=2"
  user = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.split_cpu(2, user, cores=2) == "--xla_force_host_platform_device_count=8"
  none = {}
  assert xla_flags.split_cpu(1, none, cores=2) == "" and "XLA_FLAGS" not in none


def test_fast_conv_rule():
  import pytest  # pylint: disable=import-outside-toplevel
  from supsup_jax import conv  # pylint: disable=import-outside-toplevel
  assert conv.use_fast_conv(True, "small_conv")        # on this CPU backend
  assert conv.use_fast_conv("True", "gem_resnet18")    # as a command line gives it
  assert not conv.use_fast_conv("false", "small_conv")
  assert not conv.use_fast_conv(True, "lenet300100")   # no convolutions
  with pytest.raises(ValueError, match="config.fast_conv must be True or False, got 'auto'"):
    conv.use_fast_conv("auto", "lenet300100")


def test_learners_reject_a_bad_fast_conv_in_one_line():
  import ml_collections  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  from launch.configs import gg_split_cifar10  # pylint: disable=import-outside-toplevel
  from supsup_jax.data.streams import InMemoryStream  # pylint: disable=import-outside-toplevel
  from supsup_jax.methods import supsup  # pylint: disable=import-outside-toplevel
  from supsup_jax.methods import upper_bound  # pylint: disable=import-outside-toplevel
  x = np.zeros((8, 8, 8, 3), np.uint8)
  y = np.arange(8, dtype=np.int32) % 2
  stream = InMemoryStream(name="synthetic", data={"train": (x, y), "test": (x, y), "num_classes": 2},
                          num_tasks=2, seed=0, mean=(0.0,) * 3, std=(1.0,) * 3)
  config = gg_split_cifar10.get_config()
  config.num_tasks = 2
  assert config.fast_conv is True
  supsup.from_config(config, stream)  # builds with the default
  # (a bool field refuses a string; a config built from a dict need not)
  config = ml_collections.ConfigDict({**config.to_dict(), "fast_conv": "yes"})
  for method in (supsup, upper_bound):
    with pytest.raises(ValueError, match="config.fast_conv must be True or False"):
      method.from_config(config, stream)
