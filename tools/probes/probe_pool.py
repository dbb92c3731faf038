"""Probe: relu + 2x2 max pool, value and gradient, 64ch B=128 32x32 (interleaved).

python -m tools.probes.probe_pool [rounds]
"""
import sys, time
import numpy as np
import flax.linen as nn
import jax, jax.numpy as jnp
from jax import lax


def p_reshape(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def p_slices(x):  # pairs of rows, then (w-pair, channel) halves
  b, h, w, c = x.shape
  y = x.reshape(b, h // 2, 2, w // 2, 2 * c)
  m = jnp.maximum(y[:, :, 0], y[:, :, 1])
  return jnp.maximum(m[..., :c], m[..., c:])


def p_two_reduce(x):
  b, h, w, c = x.shape
  m = x.reshape(b, h // 2, 2, w * c).max(axis=2)
  return m.reshape(b, h // 2, w // 2, 2, c).max(axis=3)


def p_nn(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


@jax.custom_vjp
def p_custom(x):
  return p_reshape(x)


def _pc_fwd(x):
  y = p_reshape(x)
  return y, (x, y)


def _pc_bwd(res, g):
  # Gradient to every window position equal to the max, split evenly (= the
  # reduce-max VJP), written as one elementwise pass over x.
  x, y = res
  b, h, w, c = x.shape
  x6 = x.reshape(b, h // 2, 2, w // 2, 2, c)
  hit = (x6 == y[:, :, None, :, None, :]).astype(x.dtype)
  cnt = hit.sum(axis=(2, 4), keepdims=True)
  return ((hit * (g[:, :, None, :, None, :] / cnt[:, :, 0:1, :, 0:1, :])).reshape(x.shape),)


p_custom.defvjp(_pc_fwd, _pc_bwd)

POOLS = {"reshape": p_reshape, "slices": p_slices, "two_reduce": p_two_reduce,
         "nn": p_nn, "custom": p_custom}


def main():
  rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((128, 32, 32, 64), np.float32))
  ct = jnp.asarray(rng.standard_normal((128, 16, 16, 64), np.float32))
  fs = {}
  for n, p in POOLS.items():
    fs[n] = jax.jit(jax.value_and_grad(lambda x, p=p: jnp.sum(p(jax.nn.relu(x)) * ct)))
  fs["reshape, relu after pool"] = jax.jit(jax.value_and_grad(
      lambda x: jnp.sum(jax.nn.relu(p_reshape(x)) * ct)))
  ref = fs["nn"](x)
  for n, f in fs.items():
    v, g = f(x)
    print(f"{n:26s} value diff {float(abs(v - ref[0])):.2e} grad maxdiff "
          f"{float(jnp.max(jnp.abs(g - ref[1]))):.2e}", flush=True)
  ts = {n: [] for n in fs}
  for _ in range(rounds):
    for n, f in fs.items():
      t0 = time.perf_counter(); jax.block_until_ready(f(x)); ts[n].append(time.perf_counter() - t0)
  for n, v in ts.items():
    print(f"{n:26s} median {np.median(v)*1e3:7.1f} min {min(v)*1e3:7.1f} ms", flush=True)


if __name__ == "__main__":
  main()
