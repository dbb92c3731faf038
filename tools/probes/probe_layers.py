"""Probe: per-layer fwd / input-grad / kernel-grad times of the GG conv net.

python -m tools.probes.probe_layers [rounds]   (interleaved; median/min ms)
"""
import sys, time
import numpy as np
import jax, jax.numpy as jnp
from jax import lax
from supsup_jax import conv as cl

DN = ("NHWC", "HWIO", "NHWC")
LAYERS = {"L1 32x32 3->64": (32, 3), "L2 32x32 64->64": (32, 64),
          "L3 16x16 64->64": (16, 64)}


def fwd(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)


def dx_xla(dy, k):
  return jax.linear_transpose(lambda x: fwd(x, k), jax.ShapeDtypeStruct(
      dy.shape[:-1] + (k.shape[2],), dy.dtype))(dy)[0]


def mapped(f, per):
  def g(a, k):
    n = a.shape[0]
    out = lax.map(lambda ac: f(ac, k), a.reshape(n // per, per, *a.shape[1:]))
    return out.reshape(n, *out.shape[2:])
  return g


def kg(x, dy):
  dn = lax.conv_dimension_numbers(x.shape, (3, 3, x.shape[-1], dy.shape[-1]), DN)
  return cl.kernel_grad(x, dy, (3, 3, x.shape[-1], dy.shape[-1]), (1, 1),
                        ((1, 1), (1, 1)), (1, 1), dn)


def kg_wino_rows(x, dy, per=4):
  """Winograd kernel grad with rows-major V (no transpose; contracts rows)."""
  from supsup_jax.conv import _bt, _a_col, _WG
  n, h, w, c = x.shape
  o = dy.shape[-1]
  th, tw = h // 2, w // 2
  per = max(1, 1024 // (th * tw))

  def chunk(xc, dyc):
    b = xc.shape[0]
    xp = jnp.pad(xc, ((0, 0), (1, 1), (1, 1), (0, 0)))
    v = []
    for r in _bt(*[lax.slice_in_dim(xp, i, i + 2 * th - 1, 2, axis=1) for i in range(4)]):
      v += _bt(*[lax.slice_in_dim(r, j, j + 2 * tw - 1, 2, axis=2) for j in range(4)])
    v = jnp.stack(v).reshape(16, b * th * tw, c)
    dm = []
    for r in _a_col(*[lax.slice_in_dim(dyc, p, p + 2 * th - 1, 2, axis=1) for p in range(2)]):
      dm += _a_col(*[lax.slice_in_dim(r, q, q + 2 * tw - 1, 2, axis=2) for q in range(2)])
    dm = jnp.stack(dm).reshape(16, b * th * tw, o)
    return lax.dot_general(dm, v, (((1,), (1,)), ((0,), (0,))))  # (16, O, C)

  xs = x.reshape(n // per, per, *x.shape[1:]); ds = dy.reshape(n // per, per, *dy.shape[1:])
  du, _ = lax.scan(lambda a, xd: (a + chunk(*xd), None), jnp.zeros((16, o, c)), (xs, ds))
  wg = jnp.asarray(_WG, jnp.float32)
  return jnp.einsum("ai,aboc,bj->ijco", wg, du.reshape(4, 4, o, c), wg)


P1 = ((1, 1), (1, 1))


def bwd_separate(x, dy, k):
  kf = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
  return cl.winograd_conv(dy, kf, P1), cl.winograd_kernel_grad(x, dy, P1)


def bwd_fused(x, dy, k):
  """dX and dK of the Winograd conv in one scan over batch chunks."""
  kf = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
  n, h, w, _ = x.shape
  per = max(1, cl.DEFAULT_OPTIONS.winograd_tiles // ((h // 2) * (w // 2)))
  big = 1 << 30
  xs = x.reshape(n // per, per, *x.shape[1:]); ds = dy.reshape(n // per, per, *dy.shape[1:])

  def body(acc, xd):
    xc, dc = xd
    return acc + cl.winograd_kernel_grad(xc, dc, P1, target_tiles=big), \
        cl.winograd_conv(dc, kf, P1, target_tiles=big)
  dk, dx = lax.scan(body, jnp.zeros(k.shape), (xs, ds))
  return dx.reshape(x.shape), dk


def main():
  rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
  rng = np.random.default_rng(0)
  fs = {}
  for name, (hw, c) in LAYERS.items():
    x = jnp.asarray(rng.standard_normal((128, hw, hw, c), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, c, 64), np.float32))
    dy = jnp.asarray(rng.standard_normal((128, hw, hw, 64), np.float32))
    fs[name + " fwd"] = (jax.jit(fwd), x, k)
    fs[name + " fwd wino"] = (jax.jit(lambda x, k: cl.winograd_conv(x, k, ((1, 1), (1, 1)))), x, k)
    fs[name + " dx"] = (jax.jit(dx_xla), dy, k)
    fs[name + " dx wino"] = (jax.jit(lambda dy, k: cl.winograd_conv(
        dy, jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2), ((1, 1), (1, 1)))), dy, k)
    fs[name + " kg"] = (jax.jit(kg), x, dy)
    fs[name + " kg wino_rows"] = (jax.jit(kg_wino_rows), x, dy)
    if c == 64:
      for nm, fb in (("separate", bwd_separate), ("fused", bwd_fused)):
        fs[name + f" bwd {nm}"] = (jax.jit(lambda x, dy, k=k, fb=fb: fb(x, dy, k)), x, dy)
    for t in (1024,):
      fs[name + f" kg wino{t}"] = (jax.jit(lambda x, dy, t=t: cl.winograd_kernel_grad(
          x, dy, ((1, 1), (1, 1)), target_tiles=t)), x, dy)
    if c == 64:
      fs[name + " relu+pool bwd"] = (jax.jit(jax.grad(lambda x, k, hw=hw: jnp.sum(
          jax.nn.relu(x).reshape(128, hw // 2, 2, hw // 2, 2, 64).max((2, 4)) * 1.5))), x, k)
  for f, a, b in fs.values():
    jax.block_until_ready(f(a, b))
  ts = {n: [] for n in fs}
  for _ in range(rounds):
    for n, (f, a, b) in fs.items():
      t0 = time.perf_counter(); jax.block_until_ready(f(a, b)); ts[n].append(time.perf_counter() - t0)
  for n, v in ts.items():
    print(f"{n:28s} median {np.median(v)*1e3:7.1f} min {min(v)*1e3:7.1f} ms", flush=True)


if __name__ == "__main__":
  main()
