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
