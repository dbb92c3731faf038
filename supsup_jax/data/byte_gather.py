"""PermutedMNIST's batch gather as a CPU kernel: ``x[idx][:, perm]`` in bytes.

A PermutedMNIST training batch is ``B`` images picked by index, each with
the task's pixel permutation: ``out[b, k] = x[idx[b], perm[k]]``. XLA:CPU
emits it as a scalar gather loop with per-element index arithmetic; inside
the 2,500-task run's training chunk (random rows of a 47 MB dataset, every
step) the profile put it at ~8 % of the step. This module does the same copy
as a compiled C++ XLA FFI kernel (built on first use by
:mod:`supsup_jax.ffi_build`, like :mod:`supsup_jax.bitdot`): the source rows
are prefetched a few rows ahead, and with AVX-512 VBMI a row of up to 896
bytes sits in 14 registers while each 64-byte output chunk is 7 two-register
byte permutes (``vpermi2b`` on the index's low 7 bits) merged by its high
bits; wider rows, or CPUs without VBMI, take a plain byte loop. The bytes are
the same as XLA's (``tests/test_byte_gather.py``); measured back to back in
one process, the training chunk of ``gnu_permuted_mnist_2500`` is ~4 %
faster with it. ``PermutedStream`` (:mod:`supsup_jax.data.streams`)
uses it whenever it is available.

Leading (``vmap``) dimensions are passed whole (``vmap_method="expand_dims"``,
broadcast per dimension): the images are shared by all tasks of a vmapped
chunk, indices and permutations are per task. The call has no sharding
rule: on a device mesh XLA runs it on whole operands (correct; whether it
still pays there is unmeasured). Off the CPU, without a C++ compiler, or
with ``SUPSUP_BYTE_GATHER_KERNEL=0``, :func:`available` is False.
"""
from __future__ import annotations

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import ffi_build

TARGET = "supsup_byte_gather"

_SOURCE = r"""
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>
#include <immintrin.h>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// One row with AVX-512 VBMI: the source row (D <= 128 P bytes) sits in 2P
// registers; each 64-byte output chunk is P two-register byte permutes
// (vpermi2b, 7-bit index lo) merged by the index's high part (hi == q).
template <int P>
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static void row_vbmi(const uint8_t* s, int64_t d, const uint8_t* lo, const uint8_t* hi,
                     uint8_t* dst) {
  __m512i tab[2 * P];
  for (int q = 0; q < 2 * P; ++q) {
    const int64_t off = 64 * q;
    const int64_t len = std::max<int64_t>(0, std::min<int64_t>(64, d - off));
    const __mmask64 m = len == 64 ? ~__mmask64(0) : ((__mmask64(1) << len) - 1);
    tab[q] = len ? _mm512_maskz_loadu_epi8(m, s + off) : _mm512_setzero_si512();
  }
  for (int64_t c = 0; c < d; c += 64) {
    const int64_t len = std::min<int64_t>(64, d - c);
    const __mmask64 m = len == 64 ? ~__mmask64(0) : ((__mmask64(1) << len) - 1);
    const __m512i idx = _mm512_loadu_si512(lo + c);  // lo, hi padded to 64
    const __m512i h = _mm512_loadu_si512(hi + c);
    __m512i out = _mm512_permutex2var_epi8(tab[0], idx, tab[1]);
    for (int q = 1; q < P; ++q) {
      const __mmask64 sel = _mm512_cmpeq_epi8_mask(h, _mm512_set1_epi8((char)q));
      out = _mm512_mask_mov_epi8(out, sel, _mm512_permutex2var_epi8(tab[2 * q], idx,
                                                                    tab[2 * q + 1]));
    }
    _mm512_mask_storeu_epi8(dst + c, m, out);
  }
}

using RowFn = void (*)(const uint8_t*, int64_t, const uint8_t*, const uint8_t*, uint8_t*);

static RowFn vbmi_for(int64_t d) {
  if (!__builtin_cpu_supports("avx512vbmi") || !__builtin_cpu_supports("avx512bw")) return nullptr;
  switch ((d + 127) / 128) {
    case 1: return row_vbmi<1>;
    case 2: return row_vbmi<2>;
    case 3: return row_vbmi<3>;
    case 4: return row_vbmi<4>;
    case 5: return row_vbmi<5>;
    case 6: return row_vbmi<6>;
    case 7: return row_vbmi<7>;
    default: return nullptr;  // wider rows than 14 registers hold
  }
}

// Leading (vmap) dimensions broadcast per dimension: for each index of the
// output's leading dimensions, the matching index into each operand's (0
// along the operand's size-1 dimensions). Empty when they do not broadcast.
static std::vector<std::vector<int64_t>> lead_index(
    const std::vector<ffi::Span<const int64_t>>& dims, const std::vector<size_t>& keep,
    int64_t* count) {
  const size_t rank = dims[0].size() - keep[0];
  std::vector<int64_t> shape(rank, 1);
  for (size_t a = 0; a < dims.size(); ++a) {
    if (dims[a].size() - keep[a] != rank) return {};
    for (size_t i = 0; i < rank; ++i) {
      const int64_t n = dims[a][i];
      if (n != 1 && shape[i] != 1 && n != shape[i]) return {};
      shape[i] = std::max(shape[i], n);
    }
  }
  int64_t total = 1;
  for (int64_t n : shape) total *= n;
  *count = total;
  std::vector<std::vector<int64_t>> out(dims.size(), std::vector<int64_t>(total, 0));
  for (int64_t l = 0; l < total; ++l) {
    int64_t rest = l;
    std::vector<int64_t> mi(rank);
    for (size_t i = rank; i-- > 0;) { mi[i] = rest % shape[i]; rest /= shape[i]; }
    for (size_t a = 0; a < dims.size(); ++a) {
      int64_t off = 0;
      for (size_t i = 0; i < rank; ++i) off = off * dims[a][i] + (dims[a][i] == 1 ? 0 : mi[i]);
      out[a][l] = off;
    }
  }
  return out;
}

static ffi::Error GatherImpl(ffi::Buffer<ffi::U8> x, ffi::Buffer<ffi::S32> idx,
                             ffi::Buffer<ffi::S32> perm, int64_t threads,
                             ffi::ResultBuffer<ffi::U8> out) {
  auto xd = x.dimensions(), id = idx.dimensions(), pd = perm.dimensions();
  if (xd.size() < 2 || id.size() < 1 || pd.size() < 1)
    return ffi::Error::InvalidArgument("x [..., N, D], idx [..., B], perm [..., D] expected");
  const int64_t n = xd[xd.size() - 2], d = xd[xd.size() - 1];
  const int64_t b = id[id.size() - 1];
  if (pd[pd.size() - 1] != d) return ffi::Error::InvalidArgument("perm length != D");
  int64_t l = 0;
  const auto at = lead_index({xd, id, pd}, {2, 1, 1}, &l);
  if (at.empty()) return ffi::Error::InvalidArgument("leading dimensions do not broadcast");
  int64_t lp = 1;
  for (size_t i = 0; i + 1 < pd.size(); ++i) lp *= pd[i];
  const uint8_t* xs = x.typed_data();
  const int32_t* is = idx.typed_data();
  const int32_t* ps = perm.typed_data();
  for (int64_t k = 0; k < lp * d; ++k)
    if (ps[k] < 0 || ps[k] >= d) return ffi::Error::InvalidArgument("perm entry out of range");
  uint8_t* o = out->typed_data();
  const RowFn vbmi = vbmi_for(d);
  const int64_t dpad = (d + 63) / 64 * 64;
  std::vector<uint8_t> lo, hi;  // per permutation: index bits 0-6 and the rest
  if (vbmi) {
    lo.assign(lp * dpad, 0);
    hi.assign(lp * dpad, 0);
    for (int64_t t = 0; t < lp; ++t)
      for (int64_t k = 0; k < d; ++k) {
        lo[t * dpad + k] = (uint8_t)(ps[t * d + k] & 127);
        hi[t * dpad + k] = (uint8_t)(ps[t * d + k] >> 7);
      }
  }
  // Output row r = (task t, image j) reads source row src(r): random rows of
  // a dataset larger than the caches, so the rows PREFETCH ahead are
  // requested early (all their cache lines in flight at once) instead of
  // missing one by one inside the permuted byte loop.
  auto src = [&](int64_t r) {
    const int64_t t = r / b, j = r % b;
    const int64_t i = std::clamp<int64_t>(is[at[1][t] * b + j], 0, n - 1);
    return xs + (at[0][t] * n + i) * d;
  };
  constexpr int64_t PREFETCH = 8;
  auto run = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < std::min(r1, r0 + PREFETCH); ++r)
      for (int64_t c = 0; c < d; c += 64) __builtin_prefetch(src(r) + c);
    for (int64_t r = r0; r < r1; ++r) {
      if (r + PREFETCH < r1)
        for (int64_t c = 0; c < d; c += 64) __builtin_prefetch(src(r + PREFETCH) + c);
      const uint8_t* s = src(r);
      const int64_t pt = at[2][r / b];
      uint8_t* dst = o + r * d;
      if (vbmi) {
        vbmi(s, d, lo.data() + pt * dpad, hi.data() + pt * dpad, dst);
      } else {
        const int32_t* p = ps + pt * d;
        for (int64_t k = 0; k < d; ++k) dst[k] = s[p[k]];
      }
    }
  };
  const int64_t rows = l * b;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, rows * d / (1 << 22)));
  std::vector<std::thread> pool;
  const int64_t per = (rows + t - 1) / t;
  for (int64_t w = 1; w < t; ++w) {
    const int64_t r0 = w * per, r1 = std::min(rows, r0 + per);
    if (r0 < r1) pool.emplace_back(run, r0, r1);
  }
  run(0, std::min(rows, per));
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SupsupByteGather, GatherImpl,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::U8>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .Attr<int64_t>("threads")
        .Ret<ffi::Buffer<ffi::U8>>());
"""

_lock = threading.Lock()
_state: dict = {}


def available() -> bool:
  """Whether the kernel is built and registered, on a CPU backend."""
  if jax.default_backend() != "cpu":
    return False
  with _lock:
    if os.environ.get("SUPSUP_BYTE_GATHER_KERNEL", "1") == "0":
      return False
    return ffi_build.load("byte_gather", _SOURCE, {TARGET: "SupsupByteGather"}, _state)


def gather(x: jax.Array, idx: jax.Array, perm: jax.Array) -> jax.Array:
  """``x[idx][:, perm]``: ``[B, D]`` uint8 from images ``x [N, D]`` uint8,
  ``idx [B]`` and ``perm [D]`` int32 (a permutation of ``range(D)``; an entry
  out of range is an error, an index out of range is clamped). Call only
  when :func:`available`."""
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((idx.shape[-1], x.shape[-1]),
                                                       jnp.uint8),
                          vmap_method="expand_dims")
  return call(x, idx.astype(jnp.int32), perm.astype(jnp.int32),
              threads=np.int64(ffi_build.threads_per_call()))
