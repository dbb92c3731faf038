"""Probe: kernel-gradient-only timings for one 3x3 64->64 conv, B=128, 32x32.

python -m tools.probes.probe_conv_grad [method ...]
"""
import sys, time
import numpy as np
import jax, jax.numpy as jnp
from jax import lax

B, H, W, C, O = 128, 32, 32, 64, 64
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)


def m_xla(x, k, dy):
  return jax.vjp(lambda k: conv(x, k), k)[1](dy)[0]


def m_taps(x, k, dy):  # nine shifted slices, flattened matmuls
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  d = dy.reshape(-1, O)
  rows = []
  for i in range(3):
    cols = []
    for j in range(3):
      s = xp[:, i:i + H, j:j + W, :].reshape(-1, C)
      cols.append(s.T @ d)
    rows.append(jnp.stack(cols))
  return jnp.stack(rows)


def m_patches(x, k, dy):  # im2col via conv_general_dilated_patches + matmul
  p = lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME",
                                       dimension_numbers=DN)  # (B,H,W,C*9) c-major
  g = p.reshape(-1, C * 9).T @ dy.reshape(-1, O)  # (C*9, O)
  return g.reshape(C, 3, 3, O).transpose(1, 2, 0, 3)


def m_concat(x, k, dy):  # im2col via concat of shifted slices (tap-major)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  p = jnp.concatenate([xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)], -1)
  g = p.reshape(-1, 9 * C).T @ dy.reshape(-1, O)
  return g.reshape(3, 3, C, O)


def m_flatshift(x, k, dy):
  # Flatten padded grid; dY zero-padded to same grid; taps are row offsets.
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  Hp, Wp = H + 2, W + 2
  xa = xp.reshape(-1, C)
  dp = jnp.pad(dy, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, O)
  n = xa.shape[0] - (2 * Wp + 2)
  d = dp[:n]
  out = [lax.dynamic_slice_in_dim(xa, i * Wp + j, n, 0).T @ d
         for i in range(3) for j in range(3)]
  return jnp.stack(out).reshape(3, 3, C, O)


def m_flatshift_cat(x, k, dy):
  # Same, but dY shifted 9 ways and concatenated: X^T (C x N) @ (N x 9O).
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  Hp, Wp = H + 2, W + 2
  xa = xp.reshape(-1, C)
  dp = jnp.pad(dy, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, O)
  N = xa.shape[0]
  # dK[t] = sum_p xa[p+off_t] d[p] = sum_q xa[q] d[q-off_t]
  dpp = jnp.pad(dp, ((2 * Wp + 2, 0), (0, 0)))
  cat = jnp.concatenate([dpp[2 * Wp + 2 - (i * Wp + j):][:N] for i in range(3) for j in range(3)], -1)
  g = xa.T @ cat  # (C, 9*O)
  return g.reshape(C, 3, 3, O).transpose(1, 2, 0, 3)


def m_taps_chunked(x, k, dy, nchunk=8):
  # per-tap matmul as batched over chunks of the batch axis, then summed.
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  d = dy.reshape(nchunk, -1, O)
  out = []
  for i in range(3):
    for j in range(3):
      s = xp[:, i:i + H, j:j + W, :].reshape(nchunk, -1, C)
      out.append(jnp.einsum("znc,zno->co", s, d))
  return jnp.stack(out).reshape(3, 3, C, O)


def m_patches_scan(x, k, dy, nchunk=8):
  xs = x.reshape(nchunk, B // nchunk, H, W, C)
  ds = dy.reshape(nchunk, B // nchunk, H, W, O)
  def body(acc, xd):
    return acc + m_concat(xd[0], k, xd[1]), None
  acc, _ = lax.scan(body, jnp.zeros((3, 3, C, O)), (xs, ds))
  return acc


def m_dot_general_T(x, k, dy):
  # im2col (tap-major) then dot_general contracting over rows, output (9C,O)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  p = jnp.stack([xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)], 3)
  g = lax.dot_general(p.reshape(-1, 9 * C), dy.reshape(-1, O), (((0,), (0,)), ((), ())))
  return g.reshape(3, 3, C, O)


METHODS = {k[2:]: v for k, v in globals().items() if k.startswith("m_")}


def timeit(f, *args, reps=7):
  t0 = time.perf_counter(); jax.block_until_ready(f(*args)); comp = time.perf_counter() - t0
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter(); jax.block_until_ready(f(*args)); ts.append(time.perf_counter() - t0)
  return np.median(ts) * 1e3, min(ts) * 1e3, comp


def m_fwd(x, k, dy):  # forward only, for scale
  return conv(x, k)


def m_dx_xla(x, k, dy):  # XLA input gradient, for scale
  return jax.vjp(lambda x: conv(x, k), x)[1](dy)[0]


def main_rounds(names, rounds=3):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, H, W, C), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, C, O), np.float32))
  dy = jnp.asarray(rng.standard_normal((B, H, W, O), np.float32))
  fs = {n: jax.jit(METHODS[n]) for n in names}
  res = {n: [] for n in names}
  for n, f in fs.items():
    jax.block_until_ready(f(x, k, dy))
  for _ in range(rounds):
    for n, f in fs.items():
      for _ in range(3):
        t0 = time.perf_counter(); jax.block_until_ready(f(x, k, dy)); res[n].append(time.perf_counter() - t0)
  for n in names:
    print(f"{n:18s} median {np.median(res[n])*1e3:8.1f} ms  min {min(res[n])*1e3:8.1f} ms", flush=True)


def main(names):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, H, W, C), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, C, O), np.float32))
  dy = jnp.asarray(rng.standard_normal((B, H, W, O), np.float32))
  ref = None
  for name in names or METHODS:
    f = jax.jit(METHODS[name])
    g = f(x, k, dy)
    if ref is None:
      ref = jax.jit(m_xla)(x, k, dy)
    err = float(jnp.max(jnp.abs(g - ref)) / jnp.max(jnp.abs(ref)))
    med, mn, comp = timeit(f, x, k, dy)
    print(f"{name:18s} median {med:8.1f} ms  min {mn:8.1f} ms  relerr {err:.1e}", flush=True)



def m_floor_matmul(x, k, dy):  # one plain (BHW x 9C)^T (BHW x O) matmul, no im2col
  a = jnp.tile(x.reshape(-1, C), (1, 9))
  return (a.T @ dy.reshape(-1, O)).reshape(3, 3, C, O)


def _scan(inner, nchunk):
  def f(x, k, dy):
    xs = x.reshape(nchunk, B // nchunk, H, W, C)
    ds = dy.reshape(nchunk, B // nchunk, H, W, O)
    def body(acc, xd):
      return acc + inner(xd[0], xd[1]), None
    acc, _ = lax.scan(body, jnp.zeros((3, 3, C, O)), (xs, ds))
    return acc
  return f


def _taps_inner(x, dy):
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  d = dy.reshape(-1, O)
  return jnp.stack([xp[:, i:i + h, j:j + w, :].reshape(-1, C).T @ d
                    for i in range(3) for j in range(3)]).reshape(3, 3, C, O)


def _concat_inner(x, dy):
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  p = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], -1)
  return (p.reshape(-1, 9 * C).T @ dy.reshape(-1, O)).reshape(3, 3, C, O)


def _patches_inner(x, dy):
  p = lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME", dimension_numbers=DN)
  g = p.reshape(-1, C * 9).T @ dy.reshape(-1, O)
  return g.reshape(C, 3, 3, O).transpose(1, 2, 0, 3)


for _n in (2, 4, 16, 32, 64):
  METHODS[f"scan_concat{_n}"] = _scan(_concat_inner, _n)
for _n in (4, 8, 16, 32):
  METHODS[f"scan_taps{_n}"] = _scan(_taps_inner, _n)
  METHODS[f"scan_patches{_n}"] = _scan(_patches_inner, _n)
METHODS["floor_matmul"] = m_floor_matmul


def m_lib(x, k, dy):  # supsup_jax.conv.kernel_grad (what the custom VJP uses)
  from supsup_jax import conv as conv_lib
  dn = lax.conv_dimension_numbers(x.shape, k.shape, DN)
  return conv_lib.kernel_grad(x, dy, k.shape, (1, 1), ((1, 1), (1, 1)), (1, 1), dn)


METHODS["lib"] = m_lib
METHODS["fwd"] = m_fwd
METHODS["dx_xla"] = m_dx_xla


if __name__ == "__main__":
  if sys.argv[1:2] == ["--rounds"]:
    main_rounds(sys.argv[2:])
  else:
    main(sys.argv[1:])
