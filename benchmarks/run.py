"""Runs registered benchmarks, prints a table and optionally writes JSON.

  python -m benchmarks.run [--only NAME[,PREFIX...]] [--json PATH] [--repeats N]
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

from benchmarks import registry

_ONLY = flags.DEFINE_string("only", None,
                            "Comma list of benchmark names or name prefixes.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats after warm-up.")
_LIST = flags.DEFINE_bool("list", False, "List the benchmarks and exit.")


def _fmt(v):
  return "-" if v is None else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"


def main(argv):
  del argv
  from supsup_jax import xla_flags  # pylint: disable=import-outside-toplevel
  xla_flags.apply_cpu_defaults()  # before JAX starts its backend
  registry.load_all()
  benches = registry.select(_ONLY.value)
  if _LIST.value:
    for b in benches:
      print(f"{b.name:32s} {b.unit:4s} {b.doc.splitlines()[0] if b.doc else ''}")
    return
  device = registry.device_name()
  print(f"device: {device}", flush=True)
  header = f"{'name':32s} {'unit':>5s} {'median':>10s} {'min':>10s} {'max':>10s} {'compile_s':>10s}"
  print(header)
  print("-" * len(header), flush=True)
  rows = []
  for b in benches:
    try:
      st = registry.run_benchmark(b, _REPEATS.value)
    except Exception as e:  # keep going; report the failure
      print(f"{b.name:32s} FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
      continue
    print(f"{b.name:32s} {b.unit:>5s} {_fmt(st.median):>10s} {_fmt(st.min):>10s} "
          f"{_fmt(st.max):>10s} {_fmt(st.compile_s):>10s}", flush=True)
    rows.append({"name": b.name, "value": st.median, "unit": b.unit,
                 "median": st.median, "min": st.min, "max": st.max,
                 "compile_s": st.compile_s, "repeats": st.repeats,
                 "device": device})
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=2)
    print(f"wrote {_JSON.value}")
  if len(rows) < len(benches):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
