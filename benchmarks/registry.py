"""Benchmark registry and shared timing helpers.

A benchmark is a function registered with :func:`benchmark`. It builds its
workload and returns one of:

* a zero-argument callable: the harness calls it once (timed separately as
  compile / warm-up time) and then ``repeats`` times, blocking on the result
  (``jax.block_until_ready``) each time;
* a ``(callable, setup)`` pair: ``setup()`` runs untimed before every call and
  its return value is passed to the callable as positional args (a tuple) or
  as the single argument;
* a :class:`Stats` (or a dict with its fields) that the function measured
  itself.

With ``peak_rss=True`` the function is instead run in a fresh Python
subprocess (once per repeat) and the row reports that process's peak resident
set size in MB, so other benchmarks in this process cannot pollute it. The
function may return a callable, which is then called once.

Benchmarks live in ``benchmarks/bench_*.py`` modules; ``benchmarks.run``
imports all of them.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import jax


@dataclasses.dataclass
class Stats:
  median: float
  min: float
  max: float
  compile_s: Optional[float] = None
  repeats: int = 0


@dataclasses.dataclass
class Benchmark:
  name: str
  unit: str
  fn: Callable[[], Any]
  peak_rss: bool = False
  doc: str = ""


REGISTRY: dict[str, Benchmark] = {}

_UNIT_SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6}


def benchmark(name: str, unit: str = "ms", *, peak_rss: bool = False):
  """Decorator registering a benchmark function under ``name``.

  Args:
    name: row name in the table / JSON (unique).
    unit: ``"ms"``, ``"s"`` or ``"us"`` for timed callables; ``"MB"`` for
      ``peak_rss`` rows; anything for functions returning their own Stats.
    peak_rss: measure the peak RSS of a fresh subprocess running ``fn``.
  """
  if peak_rss and unit != "MB":
    raise ValueError("peak_rss benchmarks report MB")

  def deco(fn):
    if name in REGISTRY:
      raise ValueError(f"benchmark {name!r} registered twice")
    REGISTRY[name] = Benchmark(name, unit, fn, peak_rss, (fn.__doc__ or "").strip())
    return fn
  return deco


def _block(x):
  return jax.block_until_ready(x)


def _call(fn, setup):
  if setup is None:
    return fn()
  args = setup()
  return fn(*args) if isinstance(args, tuple) else fn(args)


def time_fn(fn: Callable, repeats: int = 10, setup: Optional[Callable] = None,
            unit: str = "ms", warmup: int = 1) -> Stats:
  """Times ``fn`` after ``warmup`` calls; the first call is ``compile_s``."""
  scale = _UNIT_SCALE[unit]
  compile_s = None
  for i in range(max(1, warmup)):
    t0 = time.perf_counter()
    _block(_call(fn, setup))
    if i == 0:
      compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    args = setup() if setup is not None else None
    t0 = time.perf_counter()
    if setup is None:
      _block(fn())
    else:
      _block(fn(*args) if isinstance(args, tuple) else fn(args))
    times.append((time.perf_counter() - t0) * scale)
  return Stats(statistics.median(times), min(times), max(times), compile_s,
               repeats)


def peak_rss_mb() -> float:
  """Peak RSS of this process so far, in MB (Linux ru_maxrss is in KB)."""
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def peak_rss_subprocess(module: str, name: str, repeats: int = 1,
                        timeout: float = 1800) -> Stats:
  """Runs benchmark ``name`` (registered in ``module``) in fresh subprocesses.

  Returns the peak RSS (MB) over ``repeats`` separate processes.
  """
  values, wall = [], []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.registry", module, name],
        capture_output=True, text=True, timeout=timeout,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wall.append(time.perf_counter() - t0)
    if out.returncode != 0:
      raise RuntimeError(f"peak-RSS subprocess for {name} failed:\n{out.stderr[-4000:]}")
    values.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"])
  return Stats(statistics.median(values), min(values), max(values),
               compile_s=None, repeats=len(values))


def run_benchmark(bench: Benchmark, repeats: int) -> Stats:
  """Measures one registered benchmark."""
  if bench.peak_rss:
    return peak_rss_subprocess(bench.fn.__module__, bench.name,
                               repeats=min(repeats, 3))
  out = bench.fn()
  if isinstance(out, Stats):
    return out
  if isinstance(out, dict):
    return Stats(**out)
  setup = None
  if isinstance(out, tuple):
    out, setup = out
  unit = bench.unit if bench.unit in _UNIT_SCALE else "ms"
  return time_fn(out, repeats, setup, unit)


def device_name() -> str:
  """GPU/TPU kind from jax.devices(), else the CPU model and core count."""
  dev = jax.devices()[0]
  if dev.platform != "cpu":
    return f"{dev.device_kind} x{len(jax.devices())}"
  model = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{model} ({os.cpu_count()} cores)"


def load_all() -> dict[str, Benchmark]:
  """Imports every ``benchmarks/bench_*.py`` module; returns the registry."""
  import benchmarks
  for info in pkgutil.iter_modules(benchmarks.__path__):
    if info.name.startswith("bench_"):
      importlib.import_module(f"benchmarks.{info.name}")
  return REGISTRY


def select(names: str | None) -> list[Benchmark]:
  """``--only`` filter: a comma list of tokens. A token that is exactly a
  registered name selects that row only; otherwise (or with a trailing
  ``*``) it selects every row whose name starts with it."""
  if not names:
    return list(REGISTRY.values())
  chosen = set()
  for w in (w.strip() for w in names.split(",")):
    if not w:
      continue
    if not w.endswith("*") and w in REGISTRY:
      chosen.add(w)
      continue
    hits = [n for n in REGISTRY if n.startswith(w.rstrip("*"))]
    if not hits:
      raise ValueError(f"--only {w!r} matches none of {sorted(REGISTRY)}")
    chosen.update(hits)
  return [b for n, b in REGISTRY.items() if n in chosen]


def _subprocess_main(module: str, name: str) -> None:
  # Run as ``-m benchmarks.registry``, this file is ``__main__``; benchmark
  # modules register into the importable ``benchmarks.registry``.
  importlib.import_module(module)
  reg = importlib.import_module("benchmarks.registry")
  out = reg.REGISTRY[name].fn()
  if callable(out):
    _block(out())
  elif isinstance(out, tuple) and callable(out[0]):
    _block(_call(*out))
  print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
  _subprocess_main(sys.argv[1], sys.argv[2])
