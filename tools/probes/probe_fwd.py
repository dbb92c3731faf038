"""Probe: forward / input-gradient variants for one 3x3 64->64 conv, B=128, 32x32.

python -m tools.probes.probe_fwd [rounds]   (variants interleaved; median/min ms)
"""
import sys, time
import numpy as np
import jax, jax.numpy as jnp
from jax import lax

B, H, W, C, O = 128, 32, 32, 64, 64
DN = ("NHWC", "HWIO", "NHWC")


def xla_fwd(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)


def xla_dx(dy, k):
  f = lambda x: xla_fwd(x, k)
  return jax.linear_transpose(f, jax.ShapeDtypeStruct((B, H, W, C), jnp.float32))(dy)[0]


def _im2col(xc, k):
  b = xc.shape[0]
  xp = jnp.pad(xc, ((0, 0), (1, 1), (1, 1), (0, 0)))
  p = jnp.concatenate([xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)], -1)
  return (p.reshape(-1, 9 * C) @ k.reshape(9 * C, O)).reshape(b, H, W, O)


def chunked(fn, per):
  def f(x, k):
    if per >= B:
      return fn(x, k)
    xs = x.reshape(B // per, per, *x.shape[1:])
    return lax.map(lambda xc: fn(xc, k), xs).reshape(B, H, W, -1)
  return f


def _flat(xc, k):  # padded grid flattened; taps = row offsets; 9 accumulating matmuls
  b = xc.shape[0]
  Hp, Wp = H + 2, W + 2
  xp = jnp.pad(xc, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, C)
  n = b * Hp * Wp
  xa = jnp.pad(xp, ((0, 2 * Wp + 2), (0, 0)))
  acc = None
  for i in range(3):
    for j in range(3):
      t = lax.dynamic_slice_in_dim(xa, i * Wp + j, n, 0) @ k[i, j]
      acc = t if acc is None else acc + t
  return acc.reshape(b, Hp, Wp, O)[:, :H, :W, :]


def _flat3(xc, k):  # concat the 3 column taps (K=192), 3 matmuls over row shifts
  b = xc.shape[0]
  Hp, Wp = H + 2, W + 2
  xp = jnp.pad(xc, ((0, 0), (1, 1), (1, 1), (0, 0)))
  xw = jnp.concatenate([xp[:, :, j:j + W, :] for j in range(3)], -1)  # (b,Hp,W,3C)
  acc = None
  for i in range(3):
    t = xw[:, i:i + H].reshape(-1, 3 * C) @ k[i].reshape(3 * C, O)
    acc = t if acc is None else acc + t
  return acc.reshape(b, H, W, O)


def _fwdT3(xc, k):  # channels-first column-tap concat; out^T = sum_i K_i^T @ xw_i
  b = xc.shape[0]
  xt = jnp.pad(jnp.transpose(xc, (3, 0, 1, 2)), ((0, 0), (0, 0), (1, 1), (1, 1)))
  xw = jnp.concatenate([xt[:, :, :, j:j + W] for j in range(3)], 0)  # (3C,b,Hp,W)
  acc = None
  for i in range(3):
    t = k[i].reshape(3 * C, -1).T @ xw[:, :, i:i + H].reshape(3 * C, -1)
    acc = t if acc is None else acc + t
  return jnp.transpose(acc.reshape(-1, b, H, W), (1, 2, 3, 0))


def dx_from(fwd):
  def f(dy, k):
    kt = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
    return fwd(dy, kt)
  return f


def kg_lib(x, dy):
  from supsup_jax import conv as cl
  dn = lax.conv_dimension_numbers(x.shape, (3, 3, C, O), DN)
  return cl.kernel_grad(x, dy, (3, 3, C, O), (1, 1), ((1, 1), (1, 1)), (1, 1), dn)


def kg_xla(x, dy):
  return jax.vjp(lambda k: xla_fwd(x, k), jnp.zeros((3, 3, C, O)))[1](dy)[0]


def _kg_flat3(xc, dyc):
  Hp = H + 2
  xp = jnp.pad(xc, ((0, 0), (1, 1), (1, 1), (0, 0)))
  xw = jnp.concatenate([xp[:, :, j:j + W, :] for j in range(3)], -1)  # (b,Hp,W,3C)
  d = dyc.reshape(-1, O)
  gs = [lax.dot_general(d, xw[:, i:i + H].reshape(-1, 3 * C), (((0,), (0,)), ((), ())))
        for i in range(3)]  # (O, 3C)
  return jnp.stack(gs)  # (3, O, 3C)


def _kg_flat9(xc, dyc):
  b = xc.shape[0]
  Hp, Wp = H + 2, W + 2
  xa = jnp.pad(xc, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, C)
  n = b * Hp * Wp
  xa = jnp.pad(xa, ((0, 2 * Wp + 2), (0, 0)))
  d = jnp.pad(dyc, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, O)
  gs = [lax.dot_general(d, lax.dynamic_slice_in_dim(xa, i * Wp + j, n, 0),
                        (((0,), (0,)), ((), ()))) for i in range(3) for j in range(3)]
  return jnp.stack(gs)


def _kg_T9(xc, dyc):  # transposed im2col (9C, rows) built channels-first, then P^T @ dY
  xt = jnp.pad(jnp.transpose(xc, (3, 0, 1, 2)), ((0, 0), (0, 0), (1, 1), (1, 1)))
  pt = jnp.concatenate([xt[:, :, i:i + H, j:j + W] for i in range(3) for j in range(3)], 0)
  return pt.reshape(9 * C, -1) @ dyc.reshape(-1, O)  # (9C, O)


def _kg_T3(xc, dyc):  # channels-first, concat 3 column taps, 3 row-shift matmuls
  xt = jnp.pad(jnp.transpose(xc, (3, 0, 1, 2)), ((0, 0), (0, 0), (1, 1), (1, 1)))
  xw = jnp.concatenate([xt[:, :, :, j:j + W] for j in range(3)], 0)  # (3C,b,Hp,W)
  d = dyc.reshape(-1, O)
  return jnp.stack([xw[:, :, i:i + H].reshape(3 * C, -1) @ d for i in range(3)])


def kg_scan(inner, per):
  def f(x, dy):
    xs = x.reshape(B // per, per, *x.shape[1:])
    ds = dy.reshape(B // per, per, *dy.shape[1:])
    def body(acc, xd):
      return acc + inner(*xd), None
    init = jax.eval_shape(inner, xs[0], ds[0])
    return lax.scan(body, jnp.zeros(init.shape, init.dtype), (xs, ds))[0]
  return f


def main():
  rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, H, W, C), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, C, O), np.float32))
  a = jnp.asarray(rng.standard_normal((B * H * W, 9 * C), np.float32)[:8192])
  bm = jnp.asarray(rng.standard_normal((9 * C, O), np.float32))
  variants = {
      "xla_fwd": xla_fwd,
      "im2col_full": _im2col,
      "im2col_c4": chunked(_im2col, 4),
      "im2col_c8": chunked(_im2col, 8),
      "im2col_c16": chunked(_im2col, 16),
      "flat9_c8": chunked(_flat, 8),
      "flat3_c8": chunked(_flat3, 8),
      "flat3_full": _flat3,
      "fwdT3_c4": chunked(_fwdT3, 4), "fwdT3_c8": chunked(_fwdT3, 8),
      "dx_fwdT3_c4": dx_from(chunked(_fwdT3, 4)),
      "xla_dx": xla_dx,
      "kg_lib": kg_lib, "kg_xla": kg_xla,
      "kg_flat3_c4": kg_scan(_kg_flat3, 4), "kg_flat3_c8": kg_scan(_kg_flat3, 8),
      "kg_T9_c4": kg_scan(_kg_T9, 4), "kg_T9_c8": kg_scan(_kg_T9, 8), "kg_T9_c2": kg_scan(_kg_T9, 2),
      "kg_T3_c1": kg_scan(_kg_T3, 1), "kg_T3_c2": kg_scan(_kg_T3, 2), "kg_T3_c4": kg_scan(_kg_T3, 4), "kg_T3_c8": kg_scan(_kg_T3, 8), "kg_T3_c16": kg_scan(_kg_T3, 16),
      "kg_flat9_c4": kg_scan(_kg_flat9, 4), "kg_flat9_c8": kg_scan(_kg_flat9, 8),
      "dx_im2col_c8": dx_from(chunked(_im2col, 8)),
      "dx_flat3_c8": dx_from(chunked(_flat3, 8)),
  }
  sel = sys.argv[2].split(",") if len(sys.argv) > 2 else list(variants)
  fs = {n: jax.jit(variants[n]) for n in sel}
  ref = xla_fwd(x, k)
  refdx = xla_dx(ref, k)
  for n, f in fs.items():
    if n.startswith("kg"):
      g1 = f(x, ref).ravel(); g0 = kg_xla(x, ref)
      print(f"{n:14s} (kg) sum relerr", float(jnp.abs(g1.sum() - g0.sum()) / jnp.abs(g0).sum()), flush=True)
      continue
    out = f(ref, k) if n.startswith(("dx", "xla_dx", "kg")) else f(x, k)
    r = refdx if n.startswith(("dx", "xla_dx", "kg")) else ref
    err = float(jnp.max(jnp.abs(out - r)) / jnp.max(jnp.abs(r)))
    print(f"{n:14s} relerr {err:.1e}", flush=True)
  mm = jax.jit(lambda a, b: a @ b)
  fs["matmul_8k"] = lambda *_: mm(a, bm)
  ts = {n: [] for n in fs}
  for _ in range(rounds):
    for n, f in fs.items():
      a1, a2 = (x, ref) if n.startswith("kg") else (ref, k) if n.startswith(("dx", "xla_dx")) else (x, k)
      t0 = time.perf_counter(); jax.block_until_ready(f(a1, a2)); ts[n].append(time.perf_counter() - t0)
  flops = 2 * B * H * W * 9 * C * O
  for n, v in ts.items():
    fl = 2 * 8192 * 9 * C * O if n == "matmul_8k" else flops
    print(f"{n:14s} median {np.median(v)*1e3:7.1f} min {min(v)*1e3:7.1f} ms  "
          f"{fl / min(v) / 1e9:6.1f} GFLOP/s(min)")


if __name__ == "__main__":
  main()
