"""A CPU kernel for Winograd F(2x2, 3x3) convolutions and their kernel gradient.

:mod:`supsup_jax.conv` trains 3x3 stride-1 convs by Winograd F(2x2, 3x3)
(Lavin & Gray 2016, arXiv:1509.09308): 16 ``(tiles, C) @ (C, O)`` products
between an input transform and an output transform. Written in XLA, each
transform is a separate pass over a tensor 4x the activations', and the
products run at XLA's matmul rate; for the GG conv net's 32x32 64->64 layer
(batch 128) the forward took ~70 ms and the kernel gradient ~80 ms, while
its 2.15 G multiply-adds take ~19 ms at the two cores' FMA peak.

This module compiles one C++ loop per product as an XLA FFI custom call:
the output tiles are cut into blocks of ~50 tiles; per block the 16
transformed inputs and the 16 products stay in the core's L2 cache, the
products run in a register-blocked AVX-512 microkernel (6 tiles x 64
channels of accumulators), and the output transform writes the result.
Measured (2-core AMD EPYC Zen 4, idle; 32x32 64->64, B=128): forward 37 ms
(XLA Winograd 68), kernel gradient 36 ms (XLA Winograd 78).

* :func:`conv`: ``y = conv(x, k)`` given ``u = G k G^T`` (``[16, C, O]``);
  any padding (the tiles read zeros outside the image).
* :func:`kernel_grad`: ``du = sum_tiles V^T (A dY A^T)`` (``[16, C, O]``),
  the gradient of ``u``; :mod:`supsup_jax.conv` applies ``G^T du G``.

Float32, NHWC/HWIO, any channel counts (16 per vector; the scratch rows are
padded to whole vectors), a CPU with AVX-512F; the caller checks
:func:`supports` and keeps XLA's Winograd otherwise. The sums
run in another order than XLA's (float round-off, ~1e-6 of the output's
max; ``tests/test_conv.py`` checks both against ``lax.conv`` and its
``jax.grad``). Built on first use like :mod:`supsup_jax.bitdot`
(:mod:`supsup_jax.ffi_build`); ``SUPSUP_WINOGRAD_KERNEL=0`` turns it off.
The functions are not differentiable themselves: :mod:`supsup_jax.conv`
calls them inside its ``custom_vjp``.
"""
from __future__ import annotations

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import ffi_build

TARGET_FWD = "supsup_winograd_fwd"
TARGET_KERNEL_GRAD = "supsup_winograd_kernel_grad"

_SOURCE = r"""
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <immintrin.h>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Winograd F(2x2, 3x3) for NHWC float32, 16 channels per 16-lane vector (the
// last one masked; the scratch rows are padded to whole vectors). A flat list of output 2x2 tiles (image, tile row,
// tile column) is cut into blocks of TB tiles; per block the 16 transformed
// 4x4 inputs V[16][TB][C] and the 16 products M[16][TB][O] stay in the core's
// L2 cache, so every pass after the first read of x runs out of cache.

namespace {

struct Geo {
  int64_t n, h, w, c;      // input
  int64_t oh, ow, o;       // output
  int64_t cp, op;          // c, o rounded up to whole vectors
  int64_t lo_h, lo_w;      // top / left padding (may be negative)
  int64_t th, tw;          // tiles per column / row
};

struct Buf {  // 64-byte aligned float scratch
  float* p = nullptr;
  explicit Buf(size_t n) { p = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64)); }
  ~Buf() { std::free(p); }
};

// V[xi][t][c0:c0+16] for tile t at (n, i, j): B^T d B with d the 4x4 patch at
// input (2i - lo_h, 2j - lo_w), zero outside the image.
static inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

__attribute__((target("avx512f")))
static void input_transform(const float* x, const Geo& g, int64_t t0, int64_t nt,
                            int64_t ldv, float* v) {
  const int64_t per_img = g.th * g.tw;
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t tt = t0 + t, img = tt / per_img, r = tt % per_img;
    const int64_t y0 = 2 * (r / g.tw) - g.lo_h, x0 = 2 * (r % g.tw) - g.lo_w;
    const float* row[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) {
        const int64_t yy = y0 + a, xx = x0 + b;
        row[a][b] = (yy >= 0 && yy < g.h && xx >= 0 && xx < g.w)
                        ? x + ((img * g.h + yy) * g.w + xx) * g.c : nullptr;
      }
    for (int64_t c = 0; c < g.c; c += 16) {
      const __mmask16 mk = tail_mask(g.c - c);
      __m512 d[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b)
          d[a][b] = row[a][b] ? _mm512_maskz_loadu_ps(mk, row[a][b] + c) : _mm512_setzero_ps();
      __m512 e[4][4];  // B^T along rows (a)
      for (int b = 0; b < 4; ++b) {
        e[0][b] = _mm512_sub_ps(d[0][b], d[2][b]);
        e[1][b] = _mm512_add_ps(d[1][b], d[2][b]);
        e[2][b] = _mm512_sub_ps(d[2][b], d[1][b]);
        e[3][b] = _mm512_sub_ps(d[1][b], d[3][b]);
      }
      for (int a = 0; a < 4; ++a) {  // ... then along columns (b)
        float* base = v + (int64_t)(4 * a) * ldv + t * g.cp + c;
        _mm512_store_ps(base, _mm512_sub_ps(e[a][0], e[a][2]));
        _mm512_store_ps(base + ldv, _mm512_add_ps(e[a][1], e[a][2]));
        _mm512_store_ps(base + 2 * ldv, _mm512_sub_ps(e[a][2], e[a][1]));
        _mm512_store_ps(base + 3 * ldv, _mm512_sub_ps(e[a][1], e[a][3]));
      }
    }
  }
}

// out[r][0:16 NV] (+)= sum_k a[r * lda + k] * b[k * ldb + 0:16 NV], r < R.
template <int R, int NV, bool ACC>
__attribute__((target("avx512f")))
static inline void micro(const float* a, int64_t lda, const float* b, int64_t ldb,
                         int64_t k, float* out, int64_t ldo) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = ACC ? _mm512_loadu_ps(out + r * ldo + 16 * v) : _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + kk * ldb + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + kk]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r][v]);
}

// out (rows x ncols) (+)= A (rows x k, row stride lda, column stride 1) @ B (k x ncols),
// ncols a multiple of 16 (B's and out's rows are padded to whole vectors:
// masked loads here measured 2x slower).
template <bool ACC, int R>
static void gemm_rows(const float* a, int64_t lda, const float* b, int64_t ldb,
                      int64_t rows, int64_t k, int64_t ncols, float* out, int64_t ldo);

template <bool ACC, int R>
__attribute__((target("avx512f")))
static void gemm_fixed_rows(const float* a, int64_t lda, const float* b, int64_t ldb,
                            int64_t k, int64_t ncols, float* out, int64_t ldo) {
  int64_t col = 0;
  for (; col + 64 <= ncols; col += 64) micro<R, 4, ACC>(a, lda, b + col, ldb, k, out + col, ldo);
  switch ((ncols - col) / 16) {
    case 3: micro<R, 3, ACC>(a, lda, b + col, ldb, k, out + col, ldo); break;
    case 2: micro<R, 2, ACC>(a, lda, b + col, ldb, k, out + col, ldo); break;
    case 1: micro<R, 1, ACC>(a, lda, b + col, ldb, k, out + col, ldo); break;
    default: break;
  }
}

template <bool ACC, int R>
static void gemm_rows(const float* a, int64_t lda, const float* b, int64_t ldb,
                      int64_t rows, int64_t k, int64_t ncols, float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    gemm_fixed_rows<ACC, R>(a + r * lda, lda, b, ldb, k, ncols, out + r * ldo, ldo);
  switch (rows - r) {
    case 5: gemm_fixed_rows<ACC, 5>(a + r * lda, lda, b, ldb, k, ncols, out + r * ldo, ldo); break;
    case 4: gemm_fixed_rows<ACC, 4>(a + r * lda, lda, b, ldb, k, ncols, out + r * ldo, ldo); break;
    case 3: gemm_fixed_rows<ACC, 3>(a + r * lda, lda, b, ldb, k, ncols, out + r * ldo, ldo); break;
    case 2: gemm_fixed_rows<ACC, 2>(a + r * lda, lda, b, ldb, k, ncols, out + r * ldo, ldo); break;
    case 1: gemm_fixed_rows<ACC, 1>(a + r * lda, lda, b, ldb, k, ncols, out + r * ldo, ldo); break;
    default: break;
  }
}

// Y tiles from M[16][TB][O]: A^T m A, written where inside the output.
__attribute__((target("avx512f")))
static void output_transform(const float* m, int64_t ldm, const Geo& g, int64_t t0,
                             int64_t nt, float* y) {
  const int64_t per_img = g.th * g.tw;
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t tt = t0 + t, img = tt / per_img, r = tt % per_img;
    const int64_t y0 = 2 * (r / g.tw), x0 = 2 * (r % g.tw);
    float* dst[2][2];
    for (int p = 0; p < 2; ++p)
      for (int q = 0; q < 2; ++q)
        dst[p][q] = (y0 + p < g.oh && x0 + q < g.ow)
                        ? y + ((img * g.oh + y0 + p) * g.ow + x0 + q) * g.o : nullptr;
    for (int64_t o = 0; o < g.o; o += 16) {
      const __mmask16 mk = tail_mask(g.o - o);
      __m512 s[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) s[a][b] = _mm512_load_ps(m + (4 * a + b) * ldm + t * g.op + o);
      __m512 e[2][4];  // A^T along rows: [m0 + m1 + m2, m1 - m2 - m3]
      for (int b = 0; b < 4; ++b) {
        e[0][b] = _mm512_add_ps(_mm512_add_ps(s[0][b], s[1][b]), s[2][b]);
        e[1][b] = _mm512_sub_ps(_mm512_sub_ps(s[1][b], s[2][b]), s[3][b]);
      }
      for (int p = 0; p < 2; ++p) {
        const __m512 y0v = _mm512_add_ps(_mm512_add_ps(e[p][0], e[p][1]), e[p][2]);
        const __m512 y1v = _mm512_sub_ps(_mm512_sub_ps(e[p][1], e[p][2]), e[p][3]);
        if (dst[p][0]) _mm512_mask_storeu_ps(dst[p][0] + o, mk, y0v);
        if (dst[p][1]) _mm512_mask_storeu_ps(dst[p][1] + o, mk, y1v);
      }
    }
  }
}

// dM[xi][t][o0:o0+16] = A dY A^T for the 2x2 dY tile (zero outside dY).
__attribute__((target("avx512f")))
static void grad_output_transform(const float* dy, const Geo& g, int64_t t0, int64_t nt,
                                  int64_t ldm, float* dm) {
  const int64_t per_img = g.th * g.tw;
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t tt = t0 + t, img = tt / per_img, r = tt % per_img;
    const int64_t y0 = 2 * (r / g.tw), x0 = 2 * (r % g.tw);
    const float* src[2][2];
    for (int p = 0; p < 2; ++p)
      for (int q = 0; q < 2; ++q)
        src[p][q] = (y0 + p < g.oh && x0 + q < g.ow)
                        ? dy + ((img * g.oh + y0 + p) * g.ow + x0 + q) * g.o : nullptr;
    for (int64_t o = 0; o < g.o; o += 16) {
      const __mmask16 mk = tail_mask(g.o - o);
      __m512 d[2][2];
      for (int p = 0; p < 2; ++p)
        for (int q = 0; q < 2; ++q)
          d[p][q] = src[p][q] ? _mm512_maskz_loadu_ps(mk, src[p][q] + o) : _mm512_setzero_ps();
      __m512 e[4][2];  // A along rows: [y0, y0 + y1, y0 - y1, -y1]
      const __m512 zero = _mm512_setzero_ps();
      for (int q = 0; q < 2; ++q) {
        e[0][q] = d[0][q];
        e[1][q] = _mm512_add_ps(d[0][q], d[1][q]);
        e[2][q] = _mm512_sub_ps(d[0][q], d[1][q]);
        e[3][q] = _mm512_sub_ps(zero, d[1][q]);
      }
      for (int a = 0; a < 4; ++a) {
        float* base = dm + (4 * a) * ldm + t * g.op + o;
        _mm512_store_ps(base, e[a][0]);
        _mm512_store_ps(base + ldm, _mm512_add_ps(e[a][0], e[a][1]));
        _mm512_store_ps(base + 2 * ldm, _mm512_sub_ps(e[a][0], e[a][1]));
        _mm512_store_ps(base + 3 * ldm, _mm512_sub_ps(zero, e[a][1]));
      }
    }
  }
}

static int64_t block_tiles(const Geo& g, int64_t tile_block) {
  if (tile_block > 0) return tile_block;
  // ~384 KB of V and M per block (a Zen 4 / Sapphire Rapids core has 1-2 MB of L2).
  const int64_t tb = 384 * 1024 / (16 * 4 * (g.cp + g.op));
  return std::max<int64_t>(6, tb / 6 * 6);
}

template <typename F>
static void parallel_blocks(int64_t nblocks, int64_t threads, F&& f) {
  const int64_t t = std::max<int64_t>(1, std::min(threads, nblocks));
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < t; ++i) pool.emplace_back(f, i, t);
  f(0, t);
  for (auto& th : pool) th.join();
}

static Geo make_geo(ffi::Span<const int64_t> xd, int64_t o, int64_t oh, int64_t ow,
                    int64_t lo_h, int64_t lo_w) {
  Geo g{xd[0], xd[1], xd[2], xd[3], oh, ow, o, (xd[3] + 15) / 16 * 16, (o + 15) / 16 * 16,
        lo_h, lo_w, (oh + 1) / 2, (ow + 1) / 2};
  return g;
}

static bool cpu_ok() { return __builtin_cpu_supports("avx512f"); }

}  // namespace

extern "C" int supsup_winograd_cpu_ok() { return cpu_ok() ? 1 : 0; }

// Both handlers: two float32 buffers, the top / left padding, threads and
// tiles per block (0: sized for the cache), one float32 result.
#define BIND_TWO_F32_ARGS                                      \
  ffi::Ffi::Bind()                                             \
      .Arg<ffi::Buffer<ffi::F32>>()                            \
      .Arg<ffi::Buffer<ffi::F32>>()                            \
      .Attr<int64_t>("lo_h")                                   \
      .Attr<int64_t>("lo_w")                                   \
      .Attr<int64_t>("threads")                                \
      .Attr<int64_t>("tile_block")                             \
      .Ret<ffi::Buffer<ffi::F32>>()

// y[N, OH, OW, O] = conv(x[N, H, W, C], kernel) given u = G k G^T as [16, C, O].
static ffi::Error WinogradFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> u,
                                  int64_t lo_h, int64_t lo_w, int64_t threads,
                                  int64_t tile_block, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions(), ud = u.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || ud.size() != 3 || yd.size() != 4 || ud[0] != 16 ||
      ud[1] != xd[3] || yd[3] != ud[2] || yd[0] != xd[0])
    return ffi::Error::InvalidArgument("x [N,H,W,C], u [16,C,O], y [N,OH,OW,O] expected");
  if (!cpu_ok()) return ffi::Error::InvalidArgument("the CPU lacks AVX-512");
  const Geo g = make_geo(xd, ud[2], yd[1], yd[2], lo_h, lo_w);
  const int64_t total = g.n * g.th * g.tw, tb = block_tiles(g, tile_block);
  const int64_t nblocks = (total + tb - 1) / tb;
  const float* xp = x.typed_data();
  // u with its rows padded to whole vectors (zeros past O).
  std::vector<float> upad;
  const float* up = u.typed_data();
  if (g.op != g.o) {
    upad.assign(16 * g.c * g.op, 0.f);
    for (int64_t r = 0; r < 16 * g.c; ++r) std::copy(up + r * g.o, up + (r + 1) * g.o, upad.data() + r * g.op);
    up = upad.data();
  }
  float* yp = y->typed_data();
  parallel_blocks(nblocks, threads, [&](int64_t id, int64_t nthreads) {
    Buf v(16 * tb * g.cp), m(16 * tb * g.op);
    const int64_t b0 = nblocks * id / nthreads, b1 = nblocks * (id + 1) / nthreads;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * tb, nt = std::min(tb, total - t0);
      input_transform(xp, g, t0, nt, tb * g.cp, v.p);
      for (int xi = 0; xi < 16; ++xi)
        gemm_rows<false, 6>(v.p + xi * tb * g.cp, g.cp, up + xi * g.c * g.op, g.op, nt, g.c,
                            g.op, m.p + xi * tb * g.op, g.op);
      output_transform(m.p, tb * g.op, g, t0, nt, yp);
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SupsupWinogradFwd, WinogradFwdImpl, BIND_TWO_F32_ARGS);

// du[16, C, O] = sum over tiles of V^T (A dY A^T): the gradient of u.
static ffi::Error WinogradKernelGradImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                         int64_t lo_h, int64_t lo_w, int64_t threads,
                                         int64_t tile_block, ffi::ResultBuffer<ffi::F32> du) {
  auto xd = x.dimensions(), dd = dy.dimensions(), ud = du->dimensions();
  if (xd.size() != 4 || dd.size() != 4 || ud.size() != 3 || ud[0] != 16 ||
      ud[1] != xd[3] || ud[2] != dd[3] || dd[0] != xd[0])
    return ffi::Error::InvalidArgument("x [N,H,W,C], dy [N,OH,OW,O], du [16,C,O] expected");
  if (!cpu_ok()) return ffi::Error::InvalidArgument("the CPU lacks AVX-512");
  const Geo g = make_geo(xd, dd[3], dd[1], dd[2], lo_h, lo_w);
  const int64_t total = g.n * g.th * g.tw, tb = block_tiles(g, tile_block);
  const int64_t nblocks = (total + tb - 1) / tb;
  const int64_t nthreads = std::max<int64_t>(1, std::min(threads, nblocks));
  const int64_t usize = 16 * g.c * g.op;  // rows padded to whole vectors
  std::vector<float> partial(usize * nthreads, 0.f);
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  parallel_blocks(nblocks, nthreads, [&](int64_t id, int64_t nt_) {
    Buf v(16 * tb * g.cp), dm(16 * tb * g.op), vt(tb * 16), group(usize);
    // Blocks are summed in groups of 16 first: shorter running sums, less
    // round-off than one accumulator over every tile.
    float* acc = group.p;
    float* sum = partial.data() + id * usize;
    const int64_t b0 = nblocks * id / nt_, b1 = nblocks * (id + 1) / nt_;
    for (int64_t b = b0; b < b1; ++b) {
      if ((b - b0) % 16 == 0) {
        if (b > b0) for (int64_t j = 0; j < usize; ++j) sum[j] += acc[j];
        std::fill(acc, acc + usize, 0.f);
      }
      const int64_t t0 = b * tb, nt = std::min(tb, total - t0);
      input_transform(xp, g, t0, nt, tb * g.cp, v.p);
      grad_output_transform(dyp, g, t0, nt, tb * g.op, dm.p);
      // du[xi] (C x O) += V[xi]^T (C x nt) @ dM[xi] (nt x O): A rows are
      // channels, with row stride 1 and reduction stride C.
      for (int xi = 0; xi < 16; ++xi) {
        const float* vx = v.p + xi * tb * g.cp;
        float* ax = acc + xi * g.c * g.op;
        const float* dmx = dm.p + xi * tb * g.op;
        for (int64_t c0 = 0; c0 < g.c; c0 += 16) {
          // transpose a 16-channel slab of V (nt x 16) to (16 x nt) so the
          // microkernel reads each channel's row contiguously
          const int64_t nc = std::min<int64_t>(16, g.c - c0);
          for (int64_t t = 0; t < nt; ++t)
            for (int cc = 0; cc < nc; ++cc) vt.p[cc * tb + t] = vx[t * g.cp + c0 + cc];
          gemm_rows<true, 6>(vt.p, tb, dmx, g.op, nc, nt, g.op, ax + c0 * g.op, g.op);
        }
      }
    }
    if (b1 > b0) for (int64_t j = 0; j < usize; ++j) sum[j] += acc[j];
  });
  for (int64_t i = 1; i < nthreads; ++i)
    for (int64_t j = 0; j < usize; ++j) partial[j] += partial[i * usize + j];
  float* out = du->typed_data();
  for (int64_t r = 0; r < 16 * g.c; ++r)
    std::copy(partial.begin() + r * g.op, partial.begin() + r * g.op + g.o, out + r * g.o);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SupsupWinogradKernelGrad, WinogradKernelGradImpl,
                              BIND_TWO_F32_ARGS);
"""

_lock = threading.Lock()
_state: dict = {}


def available() -> bool:
  """Whether the kernel is built, registered and the CPU has AVX-512F."""
  with _lock:
    if os.environ.get("SUPSUP_WINOGRAD_KERNEL", "1") == "0":
      return False
    if "cpu_ok" not in _state:
      ok = ffi_build.load("winograd", _SOURCE, {TARGET_FWD: "SupsupWinogradFwd",
                                                TARGET_KERNEL_GRAD: "SupsupWinogradKernelGrad"},
                          _state)
      _state["cpu_ok"] = bool(ok and _state["lib"].supsup_winograd_cpu_ok())
    return _state["cpu_ok"]


def supports(x_dtype) -> bool:
  """Whether a conv of ``x_dtype`` inputs can use this kernel here."""
  return (jnp.dtype(x_dtype) == jnp.float32 and jax.default_backend() == "cpu"
          and available())


def _attrs(pads, tile_block):
  (lo_h, _), (lo_w, _) = pads
  return dict(lo_h=np.int64(lo_h), lo_w=np.int64(lo_w),
              threads=np.int64(ffi_build.threads_per_call()),
              tile_block=np.int64(tile_block))


def conv(x: jax.Array, u: jax.Array, pads, *, tile_block: int = 0) -> jax.Array:
  """Stride-1 3x3 conv by Winograd F(2x2, 3x3).

  Args:
    x: (N, H, W, C) float32.
    u: (16, C, O) float32, the transformed kernel ``G k G^T`` (index 4a + b,
      ``a`` along H).
    pads: ((lo, hi), (lo, hi)) explicit spatial padding (may be negative).
    tile_block: output tiles per cache block (0: sized for ~384 KB).
  Returns:
    (N, H + lo + hi - 2, W + lo + hi - 2, O) float32.
  """
  n, h, w, _ = x.shape
  (lh, hh), (lw, hw) = pads
  shape = (n, h + lh + hh - 2, w + lw + hw - 2, u.shape[2])
  call = jax.ffi.ffi_call(TARGET_FWD, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="sequential")
  return call(x, u, **_attrs(pads, tile_block))


def kernel_grad(x: jax.Array, dy: jax.Array, pads, *, tile_block: int = 0) -> jax.Array:
  """The gradient of the transformed kernel ``u`` of :func:`conv`.

  Args:
    x: (N, H, W, C) float32 conv input.
    dy: (N, OH, OW, O) float32 output cotangent.
    pads: the forward's ((lo, hi), (lo, hi)).
  Returns:
    (16, C, O) float32.
  """
  call = jax.ffi.ffi_call(TARGET_KERNEL_GRAD,
                          jax.ShapeDtypeStruct((16, x.shape[3], dy.shape[3]), jnp.float32),
                          vmap_method="sequential")
  return call(x, dy, **_attrs(pads, tile_block))
