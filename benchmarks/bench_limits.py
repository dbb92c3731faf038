"""Compute limits: a workload's multiply-adds as register-resident AVX-512 FMAs.

A row here times exactly a step's multiply-adds (float32) issued as FMAs on
independent accumulators in registers, split over all usable cores: no
memory traffic, no other instruction, so no implementation of the step can
be faster on this machine with those multiply-adds. The rows beside them
(``gg_conv_train_step_ms``, ``gnu2500_chunk_task_step_ms``) are measured
against these. CPUs without AVX-512 run the same count with AVX2 FMAs.
"""
from __future__ import annotations

import ctypes

from benchmarks.registry import benchmark
from supsup_jax import ffi_build

_SOURCE = r"""
#include <immintrin.h>
#include <cstdint>
#include <thread>
#include <vector>

// 12 independent FMA chains (latency 4 x 2 pipes < 12), all in registers.
__attribute__((target("avx512f"))) static float run512(int64_t iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(0.001f * i);
  const __m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(0.0001f);
  for (int64_t k = 0; k < iters; ++k)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  float s = 0.f;
  for (int i = 0; i < 12; ++i) s += _mm512_reduce_add_ps(a[i]);
  return s;
}

__attribute__((target("avx2,fma"))) static float run256(int64_t iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(0.001f * i);
  const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.0001f);
  for (int64_t k = 0; k < iters; ++k)
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  float s = 0.f, t[8];
  for (int i = 0; i < 12; ++i) {
    _mm256_storeu_ps(t, a[i]);
    for (int j = 0; j < 8; ++j) s += t[j];
  }
  return s;
}

// Issues `fmas` float32 multiply-adds as vector FMAs over `threads` threads.
extern "C" float supsup_fma_limit(int64_t fmas, int64_t threads) {
  const bool wide = __builtin_cpu_supports("avx512f");
  const int64_t iters = fmas / ((wide ? 16 : 8) * 12 * threads);
  std::vector<float> out(threads);
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] { out[t] = wide ? run512(iters) : run256(iters); });
  for (auto& th : pool) th.join();
  float s = 0.f;
  for (float v : out) s += v;
  return s;
}
"""
_lib = []

# Multiply-adds per call of the rows measured against these limits.
# SmallConvNet(64), B=128, 32x32x3: forward + kernel gradient of the 3->64
# layer (32x32, 2 x 226.5 M), forward + input + kernel gradient of the
# 64->64 layers (32x32: 3 x 4,831.8 M; 16x16 twice: 6 x 1,208.0 M).
GG_CONV_STEP_DIRECT = 2 * 226_492_416 + 3 * 4_831_838_208 + 6 * 1_207_959_552
# The same with Winograd F(2x2, 3x3)'s count (2.25x fewer) for the 64->64
# layers, as supsup_jax.conv trains them.
GG_CONV_STEP_WINOGRAD = 2 * 226_492_416 + round((3 * 4_831_838_208 + 6 * 1_207_959_552) / 2.25)
# LeNet 784-300-100-500, batch 128: forward, weight gradients, input
# gradients of layers 2-3.
LENET500_STEP = 128 * (2 * (784 * 300 + 300 * 100 + 100 * 500) + 300 * 100 + 100 * 500)


def _fma_call(fmas: int):
  if not _lib:
    _lib.append(ctypes.cdll.LoadLibrary(ffi_build.build("fma_limit", _SOURCE)))
  fn = _lib[0].supsup_fma_limit
  fn.restype = ctypes.c_float
  fn.argtypes = [ctypes.c_int64, ctypes.c_int64]
  threads = ffi_build.usable_cores()
  return lambda: fn(fmas, threads)


@benchmark("limit_gg_conv_step_direct_fma_ms", "ms")
def limit_gg_conv_step_direct_fma_ms():
  """Limit: the GG conv step's 22.2 G direct-convolution multiply-adds as
  register-resident FMAs on all cores (the FMA peak)."""
  return _fma_call(GG_CONV_STEP_DIRECT)


@benchmark("limit_gg_conv_step_winograd_fma_ms", "ms")
def limit_gg_conv_step_winograd_fma_ms():
  """Limit: the GG conv step's 10.1 G multiply-adds at Winograd F(2x2, 3x3)'s
  count for the 64->64 layers, as FMAs at the peak (transforms not counted)."""
  return _fma_call(GG_CONV_STEP_WINOGRAD)


@benchmark("limit_lenet500_step_fma_ms", "ms")
def limit_lenet500_step_fma_ms():
  """Limit: one LeNet (out 500) score step's 91 M multiply-adds (batch 128)
  as FMAs at the peak; the 2,500-task run's per task-step floor."""
  return _fma_call(LENET500_STEP)
