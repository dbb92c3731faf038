"""Probe: a register-blocked AVX-512 GEMM on the LeNet-500 step's largest
matmuls, against the FMA peak (is a hand-written matmul worth it there?).

python -m tools.probes.probe_gemm_lenet

Builds the C++ below with the system compiler (c++ -O3 -march=x86-64-v4)
into a temporary directory and runs it: best of 200 calls of
[128, 784] @ [784, 300] (forward of layer 1) and [784, 128] @ [128, 300]
(its weight gradient), 6 rows x 64 columns of accumulators, operands not
packed, on 1 and 2 threads. On the 2-core AMD EPYC (Zen 4) of benchmark run
F, idle: 43.5 / 43.8 G multiply-adds/s on one core (75 % of its ~58 G peak),
73 / 80 G on two (thread start included): no better than XLA's own matmuls
(``limit_lenet500_step_matmuls_ms``: ~75 G/s on two cores), so the
2,500-task run's step keeps XLA's.
"""
import os
import subprocess
import sys
import tempfile

SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
#include <algorithm>
// out[r][0:16NV] = sum_k a[r*ars + k*aks] * b[k*ldb + ...]; last vector masked by m
template <int R, int NV>
__attribute__((target("avx512f"))) static inline void micro(const float* a, long ars, long aks, const float* b, long ldb,
  long k, float* out, long ldo, __mmask16 m) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (long kk = 0; kk < k; ++kk) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(m, b + kk * ldb + 16 * v) : _mm512_loadu_ps(b + kk * ldb + 16 * v);
    for (int r = 0; r < R; ++r) { const __m512 av = _mm512_set1_ps(a[r * ars + kk * aks]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]); }
  }
  for (int r = 0; r < R; ++r) for (int v = 0; v < NV; ++v)
    if (v == NV - 1) _mm512_mask_storeu_ps(out + r * ldo + 16 * v, m, acc[r][v]); else _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r][v]);
}
template <int R>
__attribute__((target("avx512f"))) static void cols(const float* a, long ars, long aks, const float* b, long ldb, long k, long n, float* out, long ldo) {
  long c = 0;
  for (; c + 64 <= n; c += 64) micro<R, 4>(a, ars, aks, b + c, ldb, k, out + c, ldo, 0xFFFF);
  long rem = n - c; if (!rem) return;
  long nv = (rem + 15) / 16; __mmask16 m = (rem % 16) ? (__mmask16)((1u << (rem % 16)) - 1) : 0xFFFF;
  switch (nv) { case 4: micro<R,4>(a,ars,aks,b+c,ldb,k,out+c,ldo,m); break; case 3: micro<R,3>(a,ars,aks,b+c,ldb,k,out+c,ldo,m); break;
    case 2: micro<R,2>(a,ars,aks,b+c,ldb,k,out+c,ldo,m); break; case 1: micro<R,1>(a,ars,aks,b+c,ldb,k,out+c,ldo,m); break; }
}
// C[M,N] = A @ B with A element (r,k) at a[r*ars+k*aks]
static void gemm(const float* a, long ars, long aks, const float* b, long ldb, long m, long k, long n, float* out, long r0, long r1) {
  long r = r0;
  for (; r + 6 <= r1; r += 6) cols<6>(a + r * ars, ars, aks, b, ldb, k, n, out + r * n, n);
  for (; r < r1; ++r) cols<1>(a + r * ars, ars, aks, b, ldb, k, n, out + r * n, n);
}
int main() {
  const long M=128,K=784,N=300;
  std::vector<float> A(M*K), B(K*N), C(M*N), X(K*M), D(M*N), G(K*N);
  for (auto& v: A) v = rand()/(float)RAND_MAX; for (auto& v: B) v = rand()/(float)RAND_MAX; D=C; for (auto&v:D) v=rand()/(float)RAND_MAX;
  for (int th = 1; th <= 2; ++th) for (int which = 0; which < 2; ++which) {
    double best = 1e9;
    for (int rep = 0; rep < 200; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      std::vector<std::thread> ts;
      for (int i = 0; i < th; ++i) ts.emplace_back([&, i] {
        if (which == 0) { long r0 = M*i/th/6*6, r1 = i==th-1 ? M : M*(i+1)/th/6*6; gemm(A.data(), K, 1, B.data(), N, M, K, N, C.data(), r0, r1); }
        else { long r0 = K*i/th/6*6, r1 = i==th-1 ? K : K*(i+1)/th/6*6; gemm(A.data(), 1, K, D.data(), N, K, M, N, G.data(), r0, r1); } });
      for (auto& t : ts) t.join();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    printf("%s threads %d: %.3f ms, %.1f GFMA/s\n", which ? "X^T dY (784x128x300)" : "X W (128x784x300)", th, best * 1e3, M*K*N / best / 1e9);
  }
}
"""


def main():
  with tempfile.TemporaryDirectory() as tmp:
    src, exe = os.path.join(tmp, "g.cc"), os.path.join(tmp, "g")
    with open(src, "w") as f:
      f.write(SOURCE)
    cxx = os.environ.get("CXX", "c++")
    subprocess.run([cxx, "-O3", "-march=x86-64-v4", "-pthread", src, "-o", exe], check=True)
    sys.stdout.write(subprocess.run([exe], check=True, capture_output=True,
                                    text=True).stdout)


if __name__ == "__main__":
  main()
