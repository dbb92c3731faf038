"""Builds and caches the library's C++ XLA FFI kernels (``bitdot``, ``winograd_kernel``).

Each kernel module embeds its C++ source; :func:`build` compiles it on first
use with the system C++ compiler (``$CXX``, else ``c++``/``g++``) into
``$SUPSUP_CACHE_DIR/<name>`` (default ``~/.cache/supsup_jax/<name>``), keyed
by the source's, jaxlib's and the FFI headers' hashes, and
:func:`load` registers its handlers with XLA.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Mapping

import jax

from supsup_jax import xla_flags


def cache_dir(name: str) -> str:
  root = os.environ.get("SUPSUP_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "supsup_jax")
  return os.path.join(root, name)


def build(name: str, source: str) -> str:
  """Path of the compiled shared library (built once per source and jaxlib)."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  include = jax.ffi.include_dir()
  key = hashlib.sha256((source + jaxlib.__version__ + include).encode()).hexdigest()[:16]
  out_dir = cache_dir(name)
  lib = os.path.join(out_dir, f"{name}-{key}.so")
  if os.path.exists(lib):
    return lib
  cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not cxx:
    raise RuntimeError("no C++ compiler found (set $CXX)")
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    src = os.path.join(tmp, f"{name}.cc")
    with open(src, "w") as f:
      f.write(source)
    tmp_lib = os.path.join(tmp, f"{name}.so")
    proc = subprocess.run(
        [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", f"-I{include}",
         src, "-o", tmp_lib], capture_output=True, text=True, timeout=600)
    if proc.returncode:
      raise RuntimeError(f"building the {name} kernel failed: {proc.stderr[-2000:]}")
    os.replace(tmp_lib, lib)  # atomic: concurrent builders race harmlessly
  return lib


def load(name: str, source: str, targets: Mapping[str, str],
         state: dict) -> bool:
  """Builds ``source``, registers ``{xla_target: exported symbol}`` on the CPU.

  ``state`` (the caller's module dict, guarded by the caller's lock) records
  the outcome once: True, or False with ``state["error"]`` and one line on
  stderr naming the fallback. Returns the outcome.
  """
  if "ok" in state:
    return state["ok"]
  state["ok"] = False
  try:
    lib = ctypes.cdll.LoadLibrary(build(name, source))
    state["lib"] = lib
    for target, symbol in targets.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
    state["ok"] = True
  except Exception as e:  # pylint: disable=broad-except
    state["error"] = f"{type(e).__name__}: {e}"
    print(f"supsup_jax.{name}: kernel unavailable, using the XLA path "
          f"({state['error'][:300]})", file=sys.stderr)
  return state["ok"]


usable_cores = xla_flags.usable_cores  # the cores this process may run on


def threads_per_call() -> int:
  """Threads one kernel call may use: the usable cores shared among the
  process's CPU devices. A CPU split into devices (``config.cpu_devices``)
  runs one program per device at once, so a kernel spawning a thread per
  core on each of them would oversubscribe the cores."""
  try:
    devices = jax.local_device_count("cpu")
  except RuntimeError:  # no CPU backend
    devices = 1
  return max(1, usable_cores() // max(1, devices))
