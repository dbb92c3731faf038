"""Probe: Winograd F(2x2,3x3) forward for a 3x3 64->64 SAME conv, B=128, 32x32.

python -m tools.probes.probe_winograd [rounds]   (interleaved vs lax; median/min ms)
"""
import sys, time
import numpy as np
import jax, jax.numpy as jnp
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)


def lax_fwd(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)


def _bt(r0, r1, r2, r3):  # B^T applied along one axis
  return [r0 - r2, r1 + r2, r2 - r1, r1 - r3]


def wino(x, k):
  b, h, w, c = x.shape
  o = k.shape[-1]
  th, tw = h // 2, w // 2
  u = jnp.einsum("ai,ijco,bj->abco", G, k, G).reshape(16, c, o)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = _bt(*[lax.slice_in_dim(xp, i, i + 2 * th - 1, 2, axis=1) for i in range(4)])
  v = []
  for r in rows:
    v += _bt(*[lax.slice_in_dim(r, j, j + 2 * tw - 1, 2, axis=2) for j in range(4)])
  v = jnp.stack(v).reshape(16, b * th * tw, c)
  m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # (16, n, o)
  m = m.reshape(4, 4, b, th, tw, o)
  r = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]  # A^T along first index
  y = [[ri[0] + ri[1] + ri[2], ri[1] - ri[2] - ri[3]] for ri in r]
  y = jnp.stack([jnp.stack(yy, axis=3) for yy in y], axis=2)  # (b, th, 2, tw, 2, o)
  return y.reshape(b, h, w, o)


BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float32)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float32)


def _lin(mat, xs):
  out = []
  for row in mat:
    acc = None
    for coef, x in zip(row, xs):
      if coef == 0:
        continue
      t = x if coef == 1 else -x if coef == -1 else x * coef
      acc = t if acc is None else acc + t
    out.append(acc)
  return out


def wino4(x, k):
  b, h, w, c = x.shape
  o = k.shape[-1]
  th, tw = h // 4, w // 4
  g = jnp.asarray(G4, jnp.float32)
  u = jnp.einsum("ai,ijco,bj->abco", g, k, g, precision="highest").reshape(36, c, o)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = _lin(BT4, [lax.slice_in_dim(xp, i, i + 4 * th - 3, 4, axis=1) for i in range(6)])
  v = []
  for r in rows:
    v += _lin(BT4, [lax.slice_in_dim(r, j, j + 4 * tw - 3, 4, axis=2) for j in range(6)])
  v = jnp.stack(v).reshape(36, b * th * tw, c)
  m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))
  m = m.reshape(6, 6, b, th, tw, o)
  ys = [_lin(AT4, list(mi)) for mi in _lin(AT4, list(m))]  # ys[p][q]
  y = jnp.stack([jnp.stack(yp, axis=3) for yp in ys], axis=2)  # (b, th, 4, tw, 4, o)
  return y.reshape(b, h, w, o)


def mapped(f, per):
  def g(x, k):
    n = x.shape[0]
    out = lax.map(lambda xc: f(xc, k), x.reshape(n // per, per, *x.shape[1:]))
    return out.reshape(n, *out.shape[2:])
  return g


def main():
  rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
  rng = np.random.default_rng(0)
  fs = {}
  for hw in (32, 16):
    x = jnp.asarray(rng.standard_normal((128, hw, hw, 64), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 64, 64), np.float32)) * 0.05
    fs[f"{hw} lax"] = (jax.jit(lax_fwd), x, k)
    fs[f"{hw} wino map16"] = (jax.jit(mapped(wino, 16)), x, k)
    from supsup_jax.conv import winograd_conv
    fs[f"{hw} lib wino"] = (jax.jit(lambda x, k: winograd_conv(x, k, ((1, 1), (1, 1)))), x, k)
    for per in (4, 8, 16):
      fs[f"{hw} wino4 map{per}"] = (jax.jit(mapped(wino4, per)), x, k)
  for n, (f, x, k) in fs.items():
    ref = lax_fwd(x, k)
    d = jnp.abs(f(x, k) - ref)
    err = float(jnp.max(d) / jnp.max(jnp.abs(ref)))
    err2 = float(jnp.max(d / (jnp.abs(ref) + 1e-3 * jnp.max(jnp.abs(ref)))))
    print(f"{n:16s} relerr(max) {err:.1e} elementwise(floor 1e-3 max) {err2:.1e}", flush=True)
  ts = {n: [] for n in fs}
  for _ in range(rounds):
    for n, (f, x, k) in fs.items():
      t0 = time.perf_counter(); jax.block_until_ready(f(x, k)); ts[n].append(time.perf_counter() - t0)
  for n, v in ts.items():
    print(f"{n:16s} median {np.median(v)*1e3:7.1f} min {min(v)*1e3:7.1f} ms", flush=True)


if __name__ == "__main__":
  main()
