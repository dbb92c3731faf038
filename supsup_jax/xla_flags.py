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
