"""XLA flags that make this library's CPU programs faster.

On the CPU, XLA 0.10 routes small matmuls through its YNNPACK fusions and
vectorises loops 256 bits wide. For the networks here both lose: measured on
a 2-core Sapphire Rapids (docs/guide/benchmarks.md), turning the fusions off and
preferring 512-bit vectors made the LeNet score step ~20 % faster, one-shot
inference over 2,500 masks ~30 % faster and the conv train step ~30 % faster.

XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend, so
:func:`apply_cpu_defaults` must run before any JAX computation. The entry
points (``launch.main``, ``launch.compare``, ``benchmarks.run``, the test
suite) call it; a library user may call it first thing, or set the flags
themselves. Flags the user already set in ``XLA_FLAGS`` win;
``SUPSUP_XLA_DEFAULTS=0`` turns the defaults off.
"""
from __future__ import annotations

import os
from typing import MutableMapping

CPU_DEFAULTS = (
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_prefer_vector_width=512",
)
# Older jaxlibs do not know these flags, and XLA aborts on an unknown flag.
_MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
    return tuple(int(p) for p in jaxlib.__version__.split(".")[:2])
  except (ImportError, ValueError):
    return (0, 0)


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None) -> str:
  """Adds :data:`CPU_DEFAULTS` that ``XLA_FLAGS`` does not already set.

  Returns the resulting ``XLA_FLAGS``. Has no effect once a JAX backend has
  started (XLA parsed the flags then), with ``SUPSUP_XLA_DEFAULTS=0``, or
  on a jaxlib older than 0.10.
  """
  env = os.environ if environ is None else environ
  current = env.get("XLA_FLAGS", "")
  if env.get("SUPSUP_XLA_DEFAULTS", "1") == "0" or _jaxlib_version() < _MIN_JAXLIB:
    return current
  set_names = {f.split("=", 1)[0] for f in current.split()}
  extra = [f for f in CPU_DEFAULTS if f.split("=", 1)[0] not in set_names]
  if extra:
    env["XLA_FLAGS"] = " ".join([current, *extra]).strip()
  return env.get("XLA_FLAGS", "")


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
EIGEN_THREADS_FLAG = "--xla_cpu_multi_thread_eigen"


def cpu_device_count(cpu_devices, tasks_in_parallel: int = 1, cores: int | None = None) -> int:
  """The CPU devices ``config.cpu_devices`` asks for: an int >= 1, or 0 for
  one per usable core, at most ``tasks_in_parallel`` and dividing it (so a
  "tasks" mesh axis over all of them splits every task group evenly).
  One-line ValueError for anything else."""
  if isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices < 0:
    raise ValueError(f"config.cpu_devices={cpu_devices!r} must be an int >= 1, or 0 for "
                     "one device per core, e.g. --config.cpu_devices=0")
  if cpu_devices:
    return cpu_devices
  cores = usable_cores() if cores is None else cores
  t = max(1, int(tasks_in_parallel))
  return max(d for d in range(1, min(max(1, cores), t) + 1) if t % d == 0)


def usable_cores() -> int:
  """The cores this process may run on."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not Linux
    return max(1, os.cpu_count() or 1)


def split_cpu(num_devices: int, environ: MutableMapping[str, str] | None = None,
              cores: int | None = None) -> str:
  """Makes JAX's CPU backend ``num_devices`` devices (XLA's
  ``--xla_force_host_platform_device_count``) unless ``XLA_FLAGS`` already
  sets the count; a no-op for 1. Like :func:`apply_cpu_defaults`, it must run
  before JAX starts its first backend.

  Why: a "tasks" mesh over such devices runs one program per device at once,
  each on its share of the cores (``supsup_jax.distributed``). For ten
  vmapped LeNet score steps on 2 cores that measured ~25 % faster than one
  device whose operations each use both cores (docs/guide/benchmarks.md):
  the per-operation thread hand-offs and the single-threaded stretches of a
  one-device program go away. Accelerators are unaffected (the flag only
  splits the host platform). With a device per core (``cores``: default the
  usable ones) XLA's matmuls also stay on their device's thread
  (``--xla_cpu_multi_thread_eigen=false``; measured ~5 % faster there, the
  same numbers)."""
  env = os.environ if environ is None else environ
  current = env.get("XLA_FLAGS", "")
  names = {f.split("=", 1)[0] for f in current.split()}
  if num_devices <= 1 or DEVICE_COUNT_FLAG in names:
    return current
  extra = [f"{DEVICE_COUNT_FLAG}={int(num_devices)}"]
  if num_devices >= (cores or usable_cores()) and EIGEN_THREADS_FLAG not in names:
    extra.append(f"{EIGEN_THREADS_FLAG}=false")
  env["XLA_FLAGS"] = " ".join([current, *extra]).strip()
  return env["XLA_FLAGS"]
