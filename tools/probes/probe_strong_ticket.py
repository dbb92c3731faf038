"""Measures the strong_ticket study on MNIST (not part of the package).

  nice -n 10 python tools/probes/probe_strong_ticket.py [--widths 1,2,4] [--out DIR]
      [--steps N] [--losses logits,ce] [--subset exact]

Trains the target once, then one row per width factor (as the runner will),
prints the markdown table, writes rows.json and error_vs_width.png to --out.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from supsup_jax import xla_flags  # noqa: E402
xla_flags.apply_cpu_defaults()

import jax  # noqa: E402

from launch.configs import subnetwork_mnist  # noqa: E402
from supsup_jax.subnetwork import run as run_lib  # noqa: E402
from supsup_jax.subnetwork import strong_ticket as st  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--widths", default="")
  ap.add_argument("--out", default="/tmp/strong_ticket_probe")
  ap.add_argument("--steps", type=int, default=-1)
  ap.add_argument("--losses", default=None)
  ap.add_argument("--subset", default=None)
  ap.add_argument("--first_layer", default=None)
  ap.add_argument("--replot", action="store_true", help="only redraw from --out/rows.json")
  a = ap.parse_args()
  if a.replot:
    with open(os.path.join(a.out, "rows.json")) as f:
      rows = json.load(f)
    st.plot(os.path.join(a.out, "error_vs_width.png"), rows, "strong ticket, MNIST 784-100-10")
    print(st.format_table(rows))
    return
  config = subnetwork_mnist.get_config()
  s = config.strong_ticket
  if a.widths:
    s.width_factors = tuple(int(w) for w in a.widths.split(","))
  if a.steps >= 0:
    s.edge_popup_steps = a.steps
  if a.losses is not None:
    s.edge_popup_losses = tuple(l for l in a.losses.split(",") if l)
  if a.subset:
    s.subset_sum = a.subset
  if a.first_layer:
    s.edge_popup_first_layer = a.first_layer
  st.validate(config)
  os.makedirs(a.out, exist_ok=True)
  stream = run_lib.single_task_stream(config.dataset, config.seed)
  key = jax.random.key(config.seed)
  t = time.time()
  target = st.train_target(config, stream, jax.random.fold_in(key, 0))
  print(f"target trained in {time.time() - t:.1f}s", flush=True)
  rows = []
  for m in s.width_factors:
    rows.append(st.width_row(config, stream, target, int(m), jax.random.fold_in(key, 1)))
    r = rows[-1]
    print(f"m={m}: agree {r['agreement']:.4f} max {r['max_error']:.3g} mean "
          f"{r['mean_error']:.3g} acc {r['accuracy']:.4f} (target {r['target_accuracy']:.4f}) "
          f"{r['total_time_s']:.1f}s", flush=True)
    with open(os.path.join(a.out, "rows.json"), "w") as f:
      json.dump(rows, f, indent=1)
  st.plot(os.path.join(a.out, "error_vs_width.png"), rows, "strong ticket, MNIST 784-100-10")
  print(st.format_table(rows))
  shapes = st.target_shapes(config)
  for m in s.width_factors:
    print(json.dumps(st.memory_estimate(shapes, int(m), first_layer=s.edge_popup_first_layer)))
  import resource  # pylint: disable=import-outside-toplevel
  print(f"max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
  main()
