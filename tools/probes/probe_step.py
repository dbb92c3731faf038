"""Probe: where the GG conv4 train step spends its time (python -m tools.probes.probe_step)."""
import sys
import time
import jax, jax.numpy as jnp, numpy as np
from benchmarks import bench_supsup as bs
from supsup_jax import conv as conv_lib
from supsup_jax.masks import apply_masks, masks_from_scores


def t(f, *a, n=5):
  jax.block_until_ready(f(*a))
  ts = []
  for _ in range(n):
    t0 = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t0)
  return f"median {np.median(ts)*1e3:7.1f} min {min(ts)*1e3:7.1f} ms"


def main():
  for name, conv in [("fast", conv_lib.conv_general_dilated), ("xla", None)]:
    step, scores, opt_state, batch = bs.make_train_step(conv)
    model = bs.make_model(conv)
    from supsup_jax.weights import init_weights
    weights = init_weights(model, 0, batch[0])
    params = apply_masks(weights, masks_from_scores(scores, "topk", 0.5))
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
    gradp = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply({"params": p}, x))))
    masks = jax.jit(lambda s: masks_from_scores(s, "topk", 0.5))
    print(name, "full step      ", t(step, scores, opt_state, batch))
    print(name, "forward        ", t(fwd, params, batch[0]))
    print(name, "grad wrt params", t(gradp, params, batch[0]))
    print(name, "masks only     ", t(masks, scores))
    sys.stdout.flush()


if __name__ == "__main__":
  main()
