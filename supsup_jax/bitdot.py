"""A CPU kernel for ``unpack(rows) @ g``: bit-packed masks times a float vector.

One-shot task inference over 2,500 LeNet masks spends nearly all its time in
one product: 2,500 bit-packed rows of 33,275 bytes times one float vector
(665 M bit x float multiply-adds, 98.5 MB of bits). In XLA the best form is
a per-byte lookup table (``bank._byte_lut``), but XLA:CPU's gather is a
scalar loop, ~1 ns per byte, and every elementwise unpack + reduce
formulation measured 2-5x slower than that. On AVX-512 the product has a
direct form: 16 bits of a row are a 16-lane write mask, so
``acc = mask_add(acc, bits, acc, g[16 w : 16 w + 16])`` adds exactly the
kept weights' gradients, one instruction per 16 bits (every other
accumulator as the masked FMA ``acc * 1 + g``, the same rounded sum, so
AMD Zen 4's FMA pipes share the adds: ~1.3x). This module compiles
that loop (4 rows share each load of ``g``, 8 independent accumulators, rows
split over the cores) as an XLA FFI custom call, so it runs inside ``jit``
with no copy of the bank.

The C++ source is embedded below and built on first use with the system C++
compiler into ``$SUPSUP_CACHE_DIR/bitdot`` (default
``~/.cache/supsup_jax/bitdot``; :mod:`supsup_jax.ffi_build`).
Without a compiler, with ``SUPSUP_BITDOT=0``, or off CPU, :func:`available`
is False and ``bank.rows_dot`` keeps its lookup-table path. CPUs without
AVX-512 get a portable loop (chosen at run time). The sum order differs from
the lookup table's (float round-off only; ``tests/test_bitdot.py`` checks
both against a float64 reference).
"""
from __future__ import annotations

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import ffi_build

TARGET = "supsup_bitdot_rows_dot"
TARGET_MATMUL = "supsup_bitdot_rows_matmul"
TARGET_WSUM = "supsup_bitdot_rows_weighted_sum"

_SOURCE = r"""
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <immintrin.h>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// gp[8j + k] multiplies bit k (least significant first) of byte j.

// acc + g where the mask is set, as a masked FMA acc * 1 + g: the product is
// exact, so the sum is rounded once, bit for bit the masked add's result.
// It issues on the FMA units instead of the adders: on AMD Zen 4 those are
// separate pipes, and alternating the two forms measured ~1.3x the masked
// adds alone (tools/probes/probe_bitdot_pipes.py); on Intel both forms share
// ports 0 and 5 (no loss).
__attribute__((target("avx512f")))
static inline __m512 masked_add_fma(__m512 acc, __mmask16 m, __m512 g) {
  return _mm512_mask_fmadd_ps(acc, m, _mm512_set1_ps(1.0f), g);
}

__attribute__((target("avx512f,avx512bw")))
static void rows_avx512(const uint8_t* rows, int64_t nbytes, const float* gp,
                        int64_t r0, int64_t r1, float* out) {
  const int64_t nw2 = nbytes / 4;  // pairs of 16-bit words
  int64_t r = r0;
  for (; r < r1; r += 4) {
    const int nr = (int)std::min<int64_t>(4, r1 - r);
    const uint8_t* p[4];
    for (int i = 0; i < 4; ++i) p[i] = rows + (r + std::min(i, nr - 1)) * nbytes;
    __m512 tot[4];
    for (int i = 0; i < 4; ++i) tot[i] = _mm512_setzero_ps();
    // Blocks of 64 word pairs (2,048 bits) summed separately, then added:
    // shorter running sums, ~8x less round-off than one long accumulator.
    for (int64_t w0 = 0; w0 < nw2; w0 += 64) {
      const int64_t w1 = std::min(nw2, w0 + 64);
      __m512 a[4], b[4];
      for (int i = 0; i < 4; ++i) { a[i] = _mm512_setzero_ps(); b[i] = _mm512_setzero_ps(); }
      for (int64_t w = w0; w < w1; ++w) {
        const __m512 g0 = _mm512_loadu_ps(gp + 32 * w);
        const __m512 g1 = _mm512_loadu_ps(gp + 32 * w + 16);
        for (int i = 0; i < 4; ++i) {
          uint32_t m;
          std::memcpy(&m, p[i] + 4 * w, 4);
          a[i] = _mm512_mask_add_ps(a[i], (__mmask16)(m & 0xFFFFu), a[i], g0);
          b[i] = masked_add_fma(b[i], (__mmask16)(m >> 16), g1);
        }
      }
      for (int i = 0; i < 4; ++i) tot[i] = _mm512_add_ps(tot[i], _mm512_add_ps(a[i], b[i]));
    }
    for (int i = 0; i < nr; ++i) {
      float s = _mm512_reduce_add_ps(tot[i]);
      for (int64_t j = 4 * nw2; j < nbytes; ++j) {
        const uint8_t v = p[i][j];
        for (int k = 0; k < 8; ++k) s += (v >> k & 1) ? gp[8 * j + k] : 0.f;
      }
      out[r + i] = s;
    }
  }
}

static void rows_generic(const uint8_t* rows, int64_t nbytes, const float* gp,
                         int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* p = rows + r * nbytes;
    float s = 0.f;
    for (int64_t j0 = 0; j0 < nbytes; j0 += 256) {  // blocked, as above
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t j = j0; j < std::min(nbytes, j0 + 256); ++j) {
        const uint8_t v = p[j];
        for (int k = 0; k < 8; ++k) acc[k] += (v >> k & 1) ? gp[8 * j + k] : 0.f;
      }
      for (int k = 0; k < 8; ++k) s += acc[k];
    }
    out[r] = s;
  }
}

static ffi::Error RowsDotImpl(ffi::Buffer<ffi::U8> rows, ffi::Buffer<ffi::F32> g,
                              ffi::Buffer<ffi::S32> num_rows, int64_t threads,
                              int64_t portable, ffi::ResultBuffer<ffi::F32> out) {
  auto dims = rows.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("rows must be 2-D");
  const int64_t cap = dims[0], nbytes = dims[1];
  const int64_t nbits = g.element_count();
  if (nbits > 8 * nbytes) return ffi::Error::InvalidArgument("g longer than the rows' bits");
  const int64_t n = std::clamp<int64_t>(num_rows.typed_data()[0], 0, cap);
  float* o = out->typed_data();
  std::fill(o, o + cap, 0.f);
  // Numpy's packbits is MSB first: bit k (LSB first) of byte j is weight 8j + 7 - k.
  std::vector<float> gp(8 * nbytes + 32, 0.f);
  const float* gd = g.typed_data();
  for (int64_t i = 0; i < nbits; ++i) gp[(i & ~int64_t(7)) + 7 - (i & 7)] = gd[i];
  const bool avx512 = !portable && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw");
  auto run = [&](int64_t r0, int64_t r1) {
    if (avx512) rows_avx512(rows.typed_data(), nbytes, gp.data(), r0, r1, o);
    else rows_generic(rows.typed_data(), nbytes, gp.data(), r0, r1, o);
  };
  int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, n / 32));
  if (t == 1) { run(0, n); return ffi::Error::Success(); }
  std::vector<std::thread> pool;
  const int64_t per = ((n + t - 1) / t + 3) / 4 * 4;
  for (int64_t i = 1; i < t; ++i) {
    const int64_t r0 = i * per, r1 = std::min(n, r0 + per);
    if (r0 < r1) pool.emplace_back(run, r0, r1);
  }
  run(0, std::min(n, per));
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SupsupRowsDot, RowsDotImpl,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::U8>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .Attr<int64_t>("threads")
        .Attr<int64_t>("portable")
        .Ret<ffi::Buffer<ffi::F32>>());

// Several vectors at once: out[r, u] = sum_k bit_k(row r) * gp[u][k].
// Column blocks of 256 16-bit words (4,096 bits) keep every unit's slice of
// gp in L2; per block, 4 rows x U units of accumulators stay in registers.
template <int U>
__attribute__((target("avx512f,avx512bw")))
static void block_avx512(const uint8_t* rows, int64_t nbytes, const float* gp,
                         int64_t gstride, int64_t r0, int64_t r1, int64_t u0,
                         int64_t nunits, int64_t w0, int64_t w1, float* out) {
  const int64_t full = nbytes / 2;  // whole 16-bit words
  for (int64_t r = r0; r < r1; r += 4) {
    const int nr = (int)std::min<int64_t>(4, r1 - r);
    const uint8_t* p[4];
    for (int i = 0; i < 4; ++i) p[i] = rows + (r + std::min(i, nr - 1)) * nbytes;
    __m512 acc[4][U];
    for (int i = 0; i < 4; ++i)
      for (int u = 0; u < U; ++u) acc[i][u] = _mm512_setzero_ps();
    for (int64_t w = w0; w < w1; ++w) {
      __mmask16 m[4];
      for (int i = 0; i < 4; ++i) {
        uint16_t v = 0;
        if (w < full) std::memcpy(&v, p[i] + 2 * w, 2); else v = p[i][2 * w];
        m[i] = (__mmask16)v;
      }
      for (int u = 0; u < U; ++u) {
        const __m512 g = _mm512_loadu_ps(gp + (u0 + u) * gstride + 16 * w);
        for (int i = 0; i < 4; ++i)  // half on the adders, half on the FMA units
          acc[i][u] = (u * 4 + i) & 1 ? masked_add_fma(acc[i][u], m[i], g)
                                      : _mm512_mask_add_ps(acc[i][u], m[i], acc[i][u], g);
      }
    }
    for (int i = 0; i < nr; ++i)
      for (int u = 0; u < U; ++u)
        out[(r + i) * nunits + u0 + u] += _mm512_reduce_add_ps(acc[i][u]);
  }
}

static void block_generic(const uint8_t* rows, int64_t nbytes, const float* gp,
                          int64_t gstride, int64_t r0, int64_t r1, int64_t nunits,
                          int64_t w0, int64_t w1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* p = rows + r * nbytes;
    for (int64_t u = 0; u < nunits; ++u) {
      const float* g = gp + u * gstride;
      float s = 0.f;
      for (int64_t j = 2 * w0; j < std::min(nbytes, 2 * w1); ++j) {
        const uint8_t v = p[j];
        for (int k = 0; k < 8; ++k) s += (v >> k & 1) ? g[8 * j + k] : 0.f;
      }
      out[r * nunits + u] += s;
    }
  }
}

static ffi::Error RowsMatmulImpl(ffi::Buffer<ffi::U8> rows, ffi::Buffer<ffi::F32> g,
                                 ffi::Buffer<ffi::S32> num_rows, int64_t threads,
                                 int64_t portable, ffi::ResultBuffer<ffi::F32> out) {
  auto dims = rows.dimensions();
  auto gdims = g.dimensions();
  if (dims.size() != 2 || gdims.size() != 2)
    return ffi::Error::InvalidArgument("rows and g must be 2-D");
  const int64_t cap = dims[0], nbytes = dims[1];
  const int64_t nunits = gdims[0], nbits = gdims[1];
  if (nbits > 8 * nbytes) return ffi::Error::InvalidArgument("g longer than the rows' bits");
  const int64_t n = std::clamp<int64_t>(num_rows.typed_data()[0], 0, cap);
  float* o = out->typed_data();
  std::fill(o, o + cap * nunits, 0.f);
  const int64_t nwords = (nbytes + 1) / 2;
  const int64_t gstride = 16 * nwords;
  std::vector<float> gp(gstride * nunits, 0.f);
  const float* gd = g.typed_data();
  for (int64_t u = 0; u < nunits; ++u)
    for (int64_t i = 0; i < nbits; ++i)
      gp[u * gstride + (i & ~int64_t(7)) + 7 - (i & 7)] = gd[u * nbits + i];
  const bool avx512 = !portable && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw");
  const int64_t WB = 256;
  auto run = [&](int64_t r0, int64_t r1) {
    for (int64_t w0 = 0; w0 < nwords; w0 += WB) {
      const int64_t w1 = std::min(nwords, w0 + WB);
      if (!avx512) {
        block_generic(rows.typed_data(), nbytes, gp.data(), gstride, r0, r1, nunits, w0, w1, o);
        continue;
      }
      int64_t u0 = 0;
      for (; u0 + 6 <= nunits; u0 += 6)
        block_avx512<6>(rows.typed_data(), nbytes, gp.data(), gstride, r0, r1, u0, nunits, w0, w1, o);
      switch (nunits - u0) {
        case 5: block_avx512<5>(rows.typed_data(), nbytes, gp.data(), gstride, r0, r1, u0, nunits, w0, w1, o); break;
        case 4: block_avx512<4>(rows.typed_data(), nbytes, gp.data(), gstride, r0, r1, u0, nunits, w0, w1, o); break;
        case 3: block_avx512<3>(rows.typed_data(), nbytes, gp.data(), gstride, r0, r1, u0, nunits, w0, w1, o); break;
        case 2: block_avx512<2>(rows.typed_data(), nbytes, gp.data(), gstride, r0, r1, u0, nunits, w0, w1, o); break;
        case 1: block_avx512<1>(rows.typed_data(), nbytes, gp.data(), gstride, r0, r1, u0, nunits, w0, w1, o); break;
        default: break;
      }
    }
  };
  int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, n / 32));
  if (t == 1) { run(0, n); return ffi::Error::Success(); }
  std::vector<std::thread> pool;
  const int64_t per = ((n + t - 1) / t + 3) / 4 * 4;
  for (int64_t i = 1; i < t; ++i) {
    const int64_t r0 = i * per, r1 = std::min(n, r0 + per);
    if (r0 < r1) pool.emplace_back(run, r0, r1);
  }
  run(0, std::min(n, per));
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SupsupRowsMatmul, RowsMatmulImpl,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::U8>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .Attr<int64_t>("threads")
        .Attr<int64_t>("portable")
        .Ret<ffi::Buffer<ffi::F32>>());

// Weighted sums of rows: out[u, k] = sum_{r < n} a[u, r] * bit_k(row r). Each
// thread owns a range of column chunks of Q 16-bit words; per chunk, U units
// x Q words of accumulators stay in registers while all rows stream past.
template <int U, int Q>
__attribute__((target("avx512f,avx512bw")))
static void tsum_avx512(const uint8_t* rows, int64_t nbytes, const float* a,
                        int64_t cap, int64_t n, int64_t u0, int64_t c0, int64_t c1,
                        float* outp, int64_t ostride) {
  for (int64_t c = c0; c < c1; c += Q / 4) {  // 64-bit chunks c .. c + Q/4 - 1
    __m512 acc[U][Q];
    for (int u = 0; u < U; ++u)
      for (int q = 0; q < Q; ++q) acc[u][q] = _mm512_setzero_ps();
    const int64_t nb = std::max<int64_t>(0, std::min<int64_t>(2 * Q, nbytes - 8 * c));
    for (int64_t r = 0; r < n; ++r) {
      uint16_t m[Q] = {};
      std::memcpy(m, rows + r * nbytes + 8 * c, nb);
      for (int u = 0; u < U; ++u) {
        const __m512 av = _mm512_set1_ps(a[(u0 + u) * cap + r]);
        for (int q = 0; q < Q; ++q)
          acc[u][q] = q & 1 ? masked_add_fma(acc[u][q], (__mmask16)m[q], av)
                            : _mm512_mask_add_ps(acc[u][q], (__mmask16)m[q], acc[u][q], av);
      }
    }
    for (int u = 0; u < U; ++u)
      for (int q = 0; q < Q; ++q)
        _mm512_storeu_ps(outp + (u0 + u) * ostride + 64 * c + 16 * q, acc[u][q]);
  }
}

static void tsum_generic(const uint8_t* rows, int64_t nbytes, const float* a,
                         int64_t cap, int64_t n, int64_t nunits, int64_t c0, int64_t c1,
                         float* outp, int64_t ostride) {
  for (int64_t u = 0; u < nunits; ++u) {
    float* o = outp + u * ostride;
    for (int64_t r = 0; r < n; ++r) {
      const float w = a[u * cap + r];
      const uint8_t* p = rows + r * nbytes;
      for (int64_t j = 8 * c0; j < std::min(nbytes, 8 * c1); ++j)
        for (int k = 0; k < 8; ++k) o[8 * j + k] += (p[j] >> k & 1) ? w : 0.f;
    }
  }
}

static ffi::Error RowsWeightedSumImpl(ffi::Buffer<ffi::U8> rows, ffi::Buffer<ffi::F32> a,
                                      ffi::Buffer<ffi::S32> num_rows, int64_t threads,
                                      int64_t portable, ffi::ResultBuffer<ffi::F32> out) {
  auto dims = rows.dimensions();
  auto adims = a.dimensions();
  auto odims = out->dimensions();
  if (dims.size() != 2 || adims.size() != 2 || adims[1] != dims[0])
    return ffi::Error::InvalidArgument("rows [cap, bytes] and a [N, cap] expected");
  const int64_t cap = dims[0], nbytes = dims[1], nunits = adims[0], nbits = odims[1];
  if (nbits > 8 * nbytes) return ffi::Error::InvalidArgument("more bits than the rows hold");
  const int64_t n = std::clamp<int64_t>(num_rows.typed_data()[0], 0, cap);
  // 64-bit chunks, rounded up to whole groups of 4 (the widest chunk step).
  const int64_t nchunks = (nbytes + 31) / 32 * 4;
  const int64_t ostride = 64 * nchunks;
  std::vector<float> outp(ostride * nunits, 0.f);
  const bool avx512 = !portable && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw");
  auto run = [&](int64_t c0, int64_t c1) {
    if (!avx512) {
      tsum_generic(rows.typed_data(), nbytes, a.typed_data(), cap, n, nunits, c0, c1,
                   outp.data(), ostride);
      return;
    }
    int64_t u0 = 0;
    const uint8_t* rp = rows.typed_data();
    const float* ap = a.typed_data();
    for (; u0 + 4 <= nunits; u0 += 4)
      tsum_avx512<4, 4>(rp, nbytes, ap, cap, n, u0, c0, c1, outp.data(), ostride);
    switch (nunits - u0) {  // fewer units: wider chunks, ~16 accumulators
      case 3: tsum_avx512<3, 4>(rp, nbytes, ap, cap, n, u0, c0, c1, outp.data(), ostride); break;
      case 2: tsum_avx512<2, 8>(rp, nbytes, ap, cap, n, u0, c0, c1, outp.data(), ostride); break;
      case 1: tsum_avx512<1, 16>(rp, nbytes, ap, cap, n, u0, c0, c1, outp.data(), ostride); break;
      default: break;
    }
  };
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, nchunks / 16));
  std::vector<std::thread> pool;
  const int64_t per = ((nchunks + t - 1) / t + 3) / 4 * 4;  // whole groups of 4
  for (int64_t i = 1; i < t; ++i) {
    const int64_t c0 = i * per, c1 = std::min(nchunks, c0 + per);
    if (c0 < c1) pool.emplace_back(run, c0, c1);
  }
  run(0, std::min(nchunks, per));
  for (auto& th : pool) th.join();
  float* o = out->typed_data();
  for (int64_t u = 0; u < nunits; ++u)
    for (int64_t i = 0; i < nbits; ++i)
      o[u * nbits + i] = outp[u * ostride + (i & ~int64_t(7)) + 7 - (i & 7)];
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SupsupRowsWeightedSum, RowsWeightedSumImpl,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::U8>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .Attr<int64_t>("threads")
        .Attr<int64_t>("portable")
        .Ret<ffi::Buffer<ffi::F32>>());
"""

_lock = threading.Lock()
_state: dict = {}


def available() -> bool:
  """Whether the kernel is built and registered (builds it on first call)."""
  with _lock:
    if os.environ.get("SUPSUP_BITDOT", "1") == "0":
      return False
    return ffi_build.load("bitdot", _SOURCE, {TARGET: "SupsupRowsDot",
                                              TARGET_MATMUL: "SupsupRowsMatmul",
                                              TARGET_WSUM: "SupsupRowsWeightedSum"},
                          _state)


def default_threads() -> int:
  """Threads per call: ``$SUPSUP_BITDOT_THREADS``, else the usable cores
  shared among the CPU devices (:func:`supsup_jax.ffi_build.threads_per_call`)."""
  env = os.environ.get("SUPSUP_BITDOT_THREADS")
  if env:
    return max(1, int(env))
  return ffi_build.threads_per_call()


def rows_dot(rows: jax.Array, flat_g: jax.Array, num_rows, *,
             threads: int | None = None, portable: bool = False) -> jax.Array:
  """``unpack(rows[:num_rows]) @ flat_g`` on CPU; ``[capacity]``, 0 past
  ``num_rows``. rows: ``[capacity, bytes]`` uint8 (numpy ``packbits`` order);
  flat_g: ``[num_bits]`` float32, ``num_bits <= 8 * bytes``; num_rows: int32
  scalar (may be traced); ``portable``: the plain loop even on AVX-512 (for
  tests). Call only when :func:`available`."""
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows.shape[0],), jnp.float32),
                          vmap_method="sequential")
  return call(rows, flat_g.astype(jnp.float32), jnp.asarray(num_rows, jnp.int32),
              threads=np.int64(threads or default_threads()),
              portable=np.int64(bool(portable)))


def rows_matmul(rows: jax.Array, g: jax.Array, num_rows, *,
                threads: int | None = None, portable: bool = False) -> jax.Array:
  """``unpack(rows[:num_rows]) @ g.T`` on CPU: ``[capacity, N]`` for N vectors
  ``g [N, num_bits]`` float32 (0 past ``num_rows``). The same masked adds as
  :func:`rows_dot`, N vectors per pass over the bits (as many multiply-adds
  per instruction as a float32 GEMM, without unpacking). Call only when
  :func:`available`."""
  call = jax.ffi.ffi_call(TARGET_MATMUL,
                          jax.ShapeDtypeStruct((rows.shape[0], g.shape[0]), jnp.float32),
                          vmap_method="sequential")
  return call(rows, g.astype(jnp.float32), jnp.asarray(num_rows, jnp.int32),
              threads=np.int64(threads or default_threads()),
              portable=np.int64(bool(portable)))


def rows_weighted_sum(rows: jax.Array, a: jax.Array, num_rows, num_bits: int, *,
                      threads: int | None = None, portable: bool = False) -> jax.Array:
  """``a[:, :num_rows] @ unpack(rows[:num_rows])`` on CPU: ``[N, num_bits]``
  float32 for weights ``a [N, capacity]`` (e.g. each unit's alive tasks in
  binary inference). Call only when :func:`available`."""
  call = jax.ffi.ffi_call(TARGET_WSUM,
                          jax.ShapeDtypeStruct((a.shape[0], int(num_bits)), jnp.float32),
                          vmap_method="sequential")
  return call(rows, a.astype(jnp.float32), jnp.asarray(num_rows, jnp.int32),
              threads=np.int64(threads or default_threads()),
              portable=np.int64(bool(portable)))
