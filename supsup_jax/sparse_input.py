"""A first dense layer for inputs that are mostly background (MNIST-like).

A normalised MNIST image is ~81 % background: every zero pixel becomes the
same value (``-mean / std``). The first layer of an MLP on it spends most of
the network's multiply-adds on those entries: in LeNet 300-100 (500 outputs)
the forward ``x @ W`` and the weight gradient ``x^T dY`` of the 784 -> 300
layer are 60 of the score step's 91 M multiply-adds. Both products have an
exact rewrite that skips them. For a row ``a`` of the left operand and any
value ``b``:

    sum_c a[c] m[c, :] = b * sum_c m[c, :] + sum_{c: a[c] != b} (a[c] - b) m[c, :]

With ``b`` the row's minimum (the background of an image; for the weight
gradient, a pixel's minimum over the batch), the second sum visits only the
foreground entries. :func:`combine` computes that for every row as a
compiled C++ XLA FFI kernel (built on first use like
:mod:`supsup_jax.bitdot`): per row the kept entries are found with vector
compares and compress-stores, and each output row's columns are accumulated
in AVX-512 registers, 16 vectors (256 columns) at a time. The result equals
the dense product up to float round-off (a different summation order).

:func:`dot_general` plugs it into a Flax ``nn.Dense`` (``dot_general=``);
``models.MLP(sparse_input=True)`` does that for its first layer. It is a
``custom_vjp``: forward ``combine(x, W)``, weight gradient
``combine(x^T, dY)``; the input gradient is the dense ``dY W^T`` (XLA drops
it when, as for data, nothing uses it). Off the CPU, for other dtypes,
without AVX-512, or with ``SUPSUP_SPARSE_INPUT_KERNEL=0``, it is the plain
``lax.dot_general``: the option never changes which function is computed,
only how.

Leading (``vmap``) dimensions are passed to the kernel whole
(``vmap_method="expand_dims"``; an unbatched operand is not copied per
batch entry): ten tasks trained at once are one call whose rows are split
over the cores. The call has no sharding rule: on a device mesh XLA runs it
on whole operands (correct, but slower than the plain product there).
"""
from __future__ import annotations

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import ffi_build

TARGET = "supsup_sparse_input_combine"
# Output columns per cache block, in vectors of 16: 4 keeps a 784-row slice
# of the weights (200 KB) in L2; 2, 6, 8 and 16 measured no faster on Zen 4.
_VECS_PER_BLOCK = 4

_SOURCE = r"""
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>
#include <immintrin.h>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" int supsup_sparse_input_cpu_ok() {
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

// One column block of one output row: out[0 : 16 NV] (the last vector
// masked by `tail`) = bg * colsum + sum_t val[t] * m[idx[t], :].
template <int NV>
__attribute__((target("avx512f")))
static void block(const int32_t* idx, const float* val, int64_t nnz, const float* m,
                  int64_t ldm, float bg, const float* colsum, __mmask16 tail, float* out) {
  __m512 acc[NV];
  const __m512 b = _mm512_set1_ps(bg);
  for (int q = 0; q < NV - 1; ++q) acc[q] = _mm512_mul_ps(b, _mm512_loadu_ps(colsum + 16 * q));
  acc[NV - 1] = _mm512_mul_ps(b, _mm512_maskz_loadu_ps(tail, colsum + 16 * (NV - 1)));
  for (int64_t t = 0; t < nnz; ++t) {
    const __m512 v = _mm512_set1_ps(val[t]);
    const float* row = m + idx[t] * ldm;
    for (int q = 0; q < NV - 1; ++q)
      acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(row + 16 * q), acc[q]);
    acc[NV - 1] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(tail, row + 16 * (NV - 1)),
                                  acc[NV - 1]);
  }
  for (int q = 0; q < NV - 1; ++q) _mm512_storeu_ps(out + 16 * q, acc[q]);
  _mm512_mask_storeu_ps(out + 16 * (NV - 1), tail, acc[NV - 1]);
}

typedef void (*BlockFn)(const int32_t*, const float*, int64_t, const float*, int64_t, float,
                        const float*, __mmask16, float*);

static const BlockFn kBlocks[17] = {
    nullptr,    block<1>,  block<2>,  block<3>,  block<4>,  block<5>,
    block<6>,   block<7>,  block<8>,  block<9>,  block<10>, block<11>,
    block<12>,  block<13>, block<14>, block<15>, block<16>};

// colsum[j] = sum_k m[k, j] (colsum padded to whole vectors).
__attribute__((target("avx512f")))
static void colsum_avx512(const float* m, int64_t c, int64_t n, float* colsum) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 in = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 2 <= c; k += 2) {
      s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(in, m + k * n + j));
      s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(in, m + (k + 1) * n + j));
    }
    if (k < c) s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(in, m + k * n + j));
    _mm512_storeu_ps(colsum + j, _mm512_add_ps(s0, s1));
  }
}

// The row's minimum and its other entries, as (column, a[c] - min).
__attribute__((target("avx512f")))
static int64_t kept_avx512(const float* a, int64_t c, float* bg, int32_t* idx, float* val) {
  __m512 mn = _mm512_set1_ps(a[0]);
  int64_t k = 0;
  for (; k + 16 <= c; k += 16) mn = _mm512_min_ps(mn, _mm512_loadu_ps(a + k));
  float lo = _mm512_reduce_min_ps(mn);
  for (; k < c; ++k) lo = std::min(lo, a[k]);
  *bg = lo;
  const __m512 b = _mm512_set1_ps(lo);
  __m512i col = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  int64_t n = 0;
  for (k = 0; k < c; k += 16) {
    const __mmask16 in = c - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (c - k)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(in, a + k);
    // NaN != anything: a NaN entry is kept, so it reaches the output.
    const __mmask16 keep = _mm512_mask_cmp_ps_mask(in, x, b, _CMP_NEQ_UQ);
    // Register compress + full store (the buffers have 16 spare entries):
    // the compress-to-memory form is microcoded and ~10x slower on AMD Zen 4.
    _mm512_storeu_si512(idx + n, _mm512_maskz_compress_epi32(keep, col));
    _mm512_storeu_ps(val + n, _mm512_maskz_compress_ps(keep, _mm512_sub_ps(x, b)));
    n += __builtin_popcount((unsigned)keep);
    col = _mm512_add_epi32(col, step);
  }
  return n;
}

static int64_t kept_generic(const float* a, int64_t c, float* bg, int32_t* idx, float* val) {
  float lo = a[0];
  for (int64_t k = 1; k < c; ++k) lo = std::min(lo, a[k]);
  *bg = lo;
  int64_t n = 0;
  for (int64_t k = 0; k < c; ++k)
    if (!(a[k] == lo)) { idx[n] = (int32_t)k; val[n] = a[k] - lo; ++n; }
  return n;
}

// out[l, r, :] = sum_c a[l, r, c] m[l, c, :] for every leading index l.
static ffi::Error CombineImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> m,
                              int64_t threads, int64_t vecs_per_block,
                              ffi::ResultBuffer<ffi::F32> out) {
  auto ad = a.dimensions();
  auto md = m.dimensions();
  auto od = out->dimensions();
  if (ad.size() < 2 || ad.size() != md.size() || od.size() != ad.size())
    return ffi::Error::InvalidArgument("a, m and the output must have the same rank >= 2");
  // Leading (vmap) dimensions broadcast: each is the output's in `a` and `m`,
  // or 1 (an unbatched operand, vmap_method="expand_dims").
  const size_t nlead = ad.size() - 2;
  int64_t lead = 1;
  for (size_t i = 0; i < nlead; ++i) {
    if ((ad[i] != od[i] && ad[i] != 1) || (md[i] != od[i] && md[i] != 1))
      return ffi::Error::InvalidArgument("leading dimensions do not broadcast");
    lead *= od[i];
  }
  std::vector<int64_t> aoff(lead), moff(lead);  // a's and m's matrix index per output one
  for (int64_t l = 0; l < lead; ++l) {
    int64_t rest = l, ai = 0, mi = 0, astride = 1, mstride = 1;
    for (size_t i = nlead; i-- > 0;) {
      const int64_t k = rest % od[i];
      rest /= od[i];
      if (ad[i] != 1) ai += k * astride;
      if (md[i] != 1) mi += k * mstride;
      astride *= ad[i];
      mstride *= md[i];
    }
    aoff[l] = ai;
    moff[l] = mi;
  }
  const int64_t rows = ad[ad.size() - 2], c = ad[ad.size() - 1];
  const int64_t n = md[md.size() - 1];
  if (md[md.size() - 2] != c) return ffi::Error::InvalidArgument("a's columns != m's rows");
  const float* ap = a.typed_data();
  const float* mp = m.typed_data();
  float* op = out->typed_data();
  if (lead * rows == 0 || n == 0) return ffi::Error::Success();
  if (c == 0) { std::fill(op, op + lead * rows * n, 0.f); return ffi::Error::Success(); }
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const int64_t nvec = (n + 15) / 16;

  // Per leading index: the kept entries of every row first, then the output
  // in column blocks of kVB vectors, all rows per block, so the block's slice
  // of m (c x 64 floats: 200 KB for c = 784) stays in L2 across the rows.
  const int64_t kVB = std::clamp<int64_t>(vecs_per_block, 1, 16);
  const int64_t total = lead * rows;
  int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, std::min<int64_t>(
      total, (total * c + lead * c * n) / 200000)));  // tiny calls on this thread
  const int64_t per = (total + t - 1) / t;
  // Scratch kept by the calling thread across calls (fresh allocations of this
  // size cost more in page faults than the work of a call).
  thread_local std::vector<int32_t> idx_buf;
  thread_local std::vector<float> val_buf;
  const size_t need = (size_t)t * (per * c + 16);
  if (idx_buf.size() < need) { idx_buf.resize(need); val_buf.resize(need); }
  // Plain pointers: inside `run` on a worker thread the names would be that
  // thread's own (empty) thread_local vectors.
  int32_t* const idx_all = idx_buf.data();
  float* const val_all = val_buf.data();
  auto run = [&](int64_t r0, int64_t r1) {  // global rows l * rows + r
    const int64_t slot = r0 / per;
    int32_t* idx = idx_all + slot * (per * c + 16);
    float* val = val_all + slot * (per * c + 16);
    std::vector<float> bgs(r1 - r0), colsum(16 * nvec, 0.f);
    std::vector<int64_t> start(r1 - r0 + 1);
    int64_t have = -1;
    for (int64_t g0 = r0; g0 < r1;) {
      const int64_t l = g0 / rows, g1 = std::min(r1, (l + 1) * rows);
      const float* ml = mp + moff[l] * c * n;
      const float* al = ap + aoff[l] * rows * c;  // al + (g - l * rows) * c: row g
      if (moff[l] != have) {  // column sums of this m (once while m is the same)
        if (avx512) colsum_avx512(ml, c, n, colsum.data());
        else {
          std::fill(colsum.begin(), colsum.end(), 0.f);
          for (int64_t k = 0; k < c; ++k)
            for (int64_t j = 0; j < n; ++j) colsum[j] += ml[k * n + j];
        }
        have = moff[l];
      }
      int64_t at = 0;
      for (int64_t g = g0; g < g1; ++g) {
        start[g - g0] = at;
        at += avx512 ? kept_avx512(al + (g - l * rows) * c, c, &bgs[g - g0], idx + at, val + at)
                     : kept_generic(al + (g - l * rows) * c, c, &bgs[g - g0], idx + at, val + at);
      }
      start[g1 - g0] = at;
      if (!avx512) {
        for (int64_t g = g0; g < g1; ++g) {
          float* o = op + g * n;
          for (int64_t j = 0; j < n; ++j) o[j] = bgs[g - g0] * colsum[j];
          for (int64_t t = start[g - g0]; t < start[g - g0 + 1]; ++t)
            for (int64_t j = 0; j < n; ++j) o[j] += val[t] * ml[idx[t] * n + j];
        }
      } else {
        for (int64_t v0 = 0; v0 < nvec; v0 += kVB) {
          const int nv = (int)std::min<int64_t>(kVB, nvec - v0);
          const int64_t left = n - 16 * (v0 + nv - 1);  // columns in the last vector
          const __mmask16 tail = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
          for (int64_t g = g0; g < g1; ++g) {
            const int64_t s0 = start[g - g0];
            kBlocks[nv](idx + s0, val + s0, start[g - g0 + 1] - s0,
                        ml + 16 * v0, n, bgs[g - g0], colsum.data() + 16 * v0, tail,
                        op + g * n + 16 * v0);
          }
        }
      }
      g0 = g1;
    }
  };
  if (t == 1) { run(0, total); return ffi::Error::Success(); }
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < t; ++i) {
    const int64_t r0 = i * per, r1 = std::min(total, r0 + per);
    if (r0 < r1) pool.emplace_back(run, r0, r1);
  }
  run(0, std::min(total, per));
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SupsupSparseInputCombine, CombineImpl,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Attr<int64_t>("threads")
        .Attr<int64_t>("vecs_per_block")
        .Ret<ffi::Buffer<ffi::F32>>());
"""

_lock = threading.Lock()
_state: dict = {}


def available() -> bool:
  """Whether the kernel is built, registered and the CPU has AVX-512F."""
  with _lock:
    if os.environ.get("SUPSUP_SPARSE_INPUT_KERNEL", "1") == "0":
      return False
    if "cpu_ok" not in _state:
      ok = ffi_build.load("sparse_input", _SOURCE, {TARGET: "SupsupSparseInputCombine"},
                          _state)
      _state["cpu_ok"] = bool(ok and _state["lib"].supsup_sparse_input_cpu_ok())
    return _state["cpu_ok"]


def supports(dtype) -> bool:
  """Whether products of ``dtype`` operands use the kernel here."""
  return (jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu"
          and available())


def combine(a: jax.Array, m: jax.Array) -> jax.Array:
  """``a @ m`` skipping each row's entries equal to its minimum (see module doc).

  Args:
    a: ``[..., R, C]`` float32.
    m: ``[..., C, N]`` float32 (the same leading dimensions).
  Returns:
    ``[..., R, N]`` float32. Call only when :func:`available`.
  """
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((*a.shape[:-1], m.shape[-1]),
                                                       jnp.float32),
                          vmap_method="expand_dims")
  return call(a, m, threads=np.int64(ffi_build.threads_per_call()),
              vecs_per_block=np.int64(_VECS_PER_BLOCK))


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x @ w`` for ``x [B, K]`` mostly at its rows' minimum, ``w [K, N]``;
  the kernel when :func:`supports` float32 here, else ``jnp.dot``."""
  if supports(x.dtype) and w.dtype == x.dtype:
    return combine(x, w)
  return jnp.dot(x, w)


def _matmul_fwd(x, w):
  return matmul(x, w), (x, w)


def _matmul_bwd(res, dy):
  x, w = res
  if supports(x.dtype) and w.dtype == x.dtype and dy.dtype == x.dtype:
    dw = combine(jnp.swapaxes(x, -1, -2), dy)  # x^T dY; pixel rows mostly background
  else:
    dw = jnp.dot(x.T, dy)
  return jnp.dot(dy, w.T), dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """A ``lax.dot_general`` for ``nn.Dense(dot_general=...)``: the 2-D
  ``[B, K] x [K, N]`` contraction of a dense layer through :func:`matmul`;
  any other contraction is the plain ``lax.dot_general``."""
  (lc, rc), (lb, rb) = dimension_numbers
  if (lhs.ndim == 2 and rhs.ndim == 2 and tuple(lc) == (1,) and tuple(rc) == (0,)
      and not lb and not rb and preferred_element_type in (None, lhs.dtype)):
    return matmul(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)
