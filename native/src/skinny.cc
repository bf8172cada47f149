// gemmAtB: C[M,N] = alpha * A^T B + beta * C with A [K,M], B [K,N] row-major and a small M: the weight
// gradients of LoRA (gA = gu^T x, gB^T = u^T g), a reduction over K = tokens into M = r rows. Contract:
// src/kernels/backend.ts; reference: src/kernels/js/gemm.ts.
//
// gemm (gemm.cc) packs all of B for this shape and runs 6-row tiles with M = 8 (a third empty): about 30-35
// GFLOP/s here. This kernel reads B once, in place: threads split N into 24-column blocks; B is swept KB rows
// at a time (8 for wide column ranges, 32 for narrow ones), and for each 24 x KB block 4 rows of C at a time
// are accumulated in 12 ymm registers (3 loads of B and 4 broadcasts of A per 12 FMAs), the first pass
// prefetching the same rows PF_BLOCKS blocks to the right. KB is small because the rows of B are far apart
// (one page each for LoRA's shapes): on 8x4096x4096 from DRAM, 8 rows measured 1.7x faster than 16 or 32.
// Each element of C sums over k in order whatever KB and the column split: bitwise the same for any
// number of threads. Rows of C past M % 4 are computed on zero padding of A; columns past N % 24 take
// masked loads/stores.
// AJUSTE_ISA=scalar forces the scalar loop; skinnyForceScalar(on) switches it (tests).
#include <napi.h>

#include <algorithm>
#include <new>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "napi_util.h"
#include "threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AJ_SK_X86 1
#endif

namespace ajuste_sk {
// A growable 32-byte aligned scratch of floats, one per thread (the accumulators of at_b_avx2).
struct AccBuf {
  float* p = nullptr;
  size_t n = 0;
  float* get(size_t need) {
    if (need > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(32, ((need * sizeof(float) + 31) / 32) * 32));
      n = p ? need : 0;
      if (!p) throw std::bad_alloc();
    }
    return p;
  }
  ~AccBuf() { std::free(p); }
};
}  // namespace ajuste_sk

namespace {
using ajuste::ArgError;
using ajuste::int_arg;
using ajuste::mat_arg;

bool use_avx2() { return ajuste::cpu_avx2_fma(); }

constexpr int NB = 24;   // columns per block (3 ymm)
constexpr int MQ = 4;    // rows of C per register block

// Columns [j0, j1) of C, all M rows, scalar (also the reference order for nothing: plain f32 sums).
void at_b_scalar(int M, int K, float alpha, const float* A, long lda, const float* B, long ldb, float beta, float* C,
                 long ldc, int j0, int j1) {
  std::vector<float> acc((size_t)(j1 - j0));
  for (int q = 0; q < M; q++) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int k = 0; k < K; k++) {
      const float a = A[(long)k * lda + q];
      const float* b = B + (long)k * ldb;
      for (int j = j0; j < j1; j++) acc[(size_t)(j - j0)] += a * b[j];
    }
    float* c = C + (long)q * ldc;
    for (int j = j0; j < j1; j++) c[j] = alpha * acc[(size_t)(j - j0)] + (beta == 0.f ? 0.f : beta * c[j]);
  }
}

#ifdef AJ_SK_X86
#define AJ_AVX2 __attribute__((target("avx2,fma")))

AJ_AVX2 inline __m256i lane_mask(int n) {  // lanes < n
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Columns [j0, j1) of C (j0 a multiple of NB). Ap is A padded to Mp = round4(M) columns, [K, Mp]; acc holds
// the sums of every block, [blocks][Mp][NB]. Rows of B are taken KB at a time and swept block by block, so
// B streams row-wise through L2 and each 24 x KB block stays in L1 for the Mp / 4 passes over it; each pass
// keeps 4 rows x 24 columns of C in 12 ymm registers (12 independent FMA chains: 3 loads of B and 4
// broadcasts of A per 12 FMAs). The first pass over a block prefetches the same rows PF_BLOCKS blocks ahead.
constexpr int PF_BLOCKS = 16;
AJ_AVX2 void at_b_avx2(int M, int Mp, int K, float alpha, const float* Ap, const float* B, long ldb, float beta,
                        float* C, long ldc, int j0, int j1, float* acc) {
  const int nblocks = (j1 - j0 + NB - 1) / NB;
  // Rows per sweep (blocking only: each sum still runs over k in order). Few rows for wide ranges, whose
  // sweep streams from memory or L3 (8 rows measured 1.7x faster than 16 or 32 on 8x4096x4096 from DRAM);
  // more for narrow ones, to spread the loads and stores of the accumulators over more rows.
  const int KB = j1 - j0 <= 1024 ? 32 : 8;
  std::memset(acc, 0, sizeof(float) * (size_t)nblocks * Mp * NB);
  for (int k0 = 0; k0 < K; k0 += KB) {
    const int k1 = std::min(K, k0 + KB);
    for (int blk = 0; blk < nblocks; blk++) {
      const int jb = j0 + blk * NB, n = std::min(NB, j1 - jb);
      const __m256i m0 = lane_mask(n), m1 = lane_mask(n - 8), m2 = lane_mask(n - 16);
      // prefetch PF_BLOCKS blocks ahead while they are still within this thread's columns
      const bool pf = blk + PF_BLOCKS < nblocks;
      for (int q = 0; q < Mp; q += MQ) {
        float* ac = acc + ((size_t)blk * Mp + q) * NB;
        __m256 r00 = _mm256_load_ps(ac), r01 = _mm256_load_ps(ac + 8), r02 = _mm256_load_ps(ac + 16);
        __m256 r10 = _mm256_load_ps(ac + 24), r11 = _mm256_load_ps(ac + 32), r12 = _mm256_load_ps(ac + 40);
        __m256 r20 = _mm256_load_ps(ac + 48), r21 = _mm256_load_ps(ac + 56), r22 = _mm256_load_ps(ac + 64);
        __m256 r30 = _mm256_load_ps(ac + 72), r31 = _mm256_load_ps(ac + 80), r32 = _mm256_load_ps(ac + 88);
        const float* a = Ap + (long)k0 * Mp + q;
        const float* b = B + (long)k0 * ldb + jb;
#define AJ_SK_STEP(LOAD0, LOAD1, LOAD2)                                                                  \
  {                                                                                                      \
    const __m256 b0 = LOAD0, b1 = LOAD1, b2 = LOAD2;                                                     \
    __m256 x = _mm256_broadcast_ss(a);                                                                   \
    r00 = _mm256_fmadd_ps(x, b0, r00); r01 = _mm256_fmadd_ps(x, b1, r01); r02 = _mm256_fmadd_ps(x, b2, r02); \
    x = _mm256_broadcast_ss(a + 1);                                                                      \
    r10 = _mm256_fmadd_ps(x, b0, r10); r11 = _mm256_fmadd_ps(x, b1, r11); r12 = _mm256_fmadd_ps(x, b2, r12); \
    x = _mm256_broadcast_ss(a + 2);                                                                      \
    r20 = _mm256_fmadd_ps(x, b0, r20); r21 = _mm256_fmadd_ps(x, b1, r21); r22 = _mm256_fmadd_ps(x, b2, r22); \
    x = _mm256_broadcast_ss(a + 3);                                                                      \
    r30 = _mm256_fmadd_ps(x, b0, r30); r31 = _mm256_fmadd_ps(x, b1, r31); r32 = _mm256_fmadd_ps(x, b2, r32); \
  }
        if (n == NB) {
          if (pf && q == 0) {
            for (int k = k0; k < k1; k++, a += Mp, b += ldb) {
              _mm_prefetch((const char*)(b + PF_BLOCKS * NB), _MM_HINT_T0);
              _mm_prefetch((const char*)(b + PF_BLOCKS * NB + NB - 1), _MM_HINT_T0);
              AJ_SK_STEP(_mm256_loadu_ps(b), _mm256_loadu_ps(b + 8), _mm256_loadu_ps(b + 16))
            }
          } else {
            for (int k = k0; k < k1; k++, a += Mp, b += ldb)
              AJ_SK_STEP(_mm256_loadu_ps(b), _mm256_loadu_ps(b + 8), _mm256_loadu_ps(b + 16))
          }
        } else {
          for (int k = k0; k < k1; k++, a += Mp, b += ldb)
            AJ_SK_STEP(_mm256_maskload_ps(b, m0), _mm256_maskload_ps(b + 8, m1), _mm256_maskload_ps(b + 16, m2))
        }
#undef AJ_SK_STEP
        _mm256_store_ps(ac, r00); _mm256_store_ps(ac + 8, r01); _mm256_store_ps(ac + 16, r02);
        _mm256_store_ps(ac + 24, r10); _mm256_store_ps(ac + 32, r11); _mm256_store_ps(ac + 40, r12);
        _mm256_store_ps(ac + 48, r20); _mm256_store_ps(ac + 56, r21); _mm256_store_ps(ac + 64, r22);
        _mm256_store_ps(ac + 72, r30); _mm256_store_ps(ac + 80, r31); _mm256_store_ps(ac + 88, r32);
      }
    }
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  for (int blk = 0; blk < nblocks; blk++) {
    const int jb = j0 + blk * NB, n = std::min(NB, j1 - jb);
    const __m256i m[3] = {lane_mask(n), lane_mask(n - 8), lane_mask(n - 16)};
    for (int q = 0; q < M; q++) {
      float* c = C + (long)q * ldc + jb;
      const float* ac = acc + ((size_t)blk * Mp + q) * NB;
      for (int v = 0; v < NB / 8; v++) {
        __m256 y = _mm256_mul_ps(va, _mm256_load_ps(ac + 8 * v));
        if (beta != 0.f) y = _mm256_fmadd_ps(vb, _mm256_maskload_ps(c + 8 * v, m[v]), y);
        _mm256_maskstore_ps(c + 8 * v, m[v], y);
      }
    }
  }
}
#endif

bool force_scalar = false;

void at_b(int M, int N, int K, float alpha, const float* A, long lda, const float* B, long ldb, float beta, float* C,
          long ldc) {
  if (M == 0 || N == 0) return;
  const long nb = (N + NB - 1) / NB;
  auto& pool = ajuste::ThreadPool::get();
  const bool par = 2.0 * M * N * K >= 1e6;
#ifdef AJ_SK_X86
  if (use_avx2() && !force_scalar) {
    const int Mp = (M + MQ - 1) / MQ * MQ;
    std::vector<float> pad;  // A with M padded to Mp columns, unless it already is (LoRA: M = lda = r = 8)
    const float* Ap = A;
    if (M != Mp || lda != Mp) {
      pad.assign((size_t)K * Mp, 0.f);
      for (int k = 0; k < K; k++) std::memcpy(pad.data() + (size_t)k * Mp, A + (long)k * lda, sizeof(float) * M);
      Ap = pad.data();
    }
    auto range = [&](long b, long e, int) {
      static thread_local ajuste_sk::AccBuf buf;
      float* acc = buf.get((size_t)(e - b) * Mp * NB);
      at_b_avx2(M, Mp, K, alpha, Ap, B, ldb, beta, C, ldc, (int)(b * NB), (int)std::min<long>(N, e * NB), acc);
    };
    if (par) pool.parallel_for(nb, range);
    else range(0, nb, 0);
    return;
  }
#endif
  auto range = [&](long b, long e, int) {
    at_b_scalar(M, K, alpha, A, lda, B, ldb, beta, C, ldc, (int)(b * NB), (int)std::min<long>(N, e * NB));
  };
  if (par) pool.parallel_for(nb, range);
  else range(0, nb, 0);
}

// ---------------------------------------------------------------------------------------------
// N-API: gemmAtB(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
// ---------------------------------------------------------------------------------------------
Napi::Value GemmAtB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "gemmAtB";
  try {
    if (info.Length() < 11)
      throw ArgError{"gemmAtB: expected 11 arguments (M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), got " +
                     std::to_string(info.Length())};
    const long M = int_arg(info, 0, fn, "M", 0), N = int_arg(info, 1, fn, "N", 0), K = int_arg(info, 2, fn, "K", 0);
    if (!info[3].IsNumber() || !info[8].IsNumber()) throw ArgError{"gemmAtB: alpha and beta must be numbers"};
    const float alpha = (float)info[3].As<Napi::Number>().DoubleValue();
    const float beta = (float)info[8].As<Napi::Number>().DoubleValue();
    const long lda = int_arg(info, 5, fn, "lda", 1), ldb = int_arg(info, 7, fn, "ldb", 1), ldc = int_arg(info, 10, fn, "ldc", 1);
    const float* A = mat_arg<float>(info, 4, fn, "A", K, M, lda);
    const float* B = mat_arg<float>(info, 6, fn, "B", K, N, ldb);
    float* C = mat_arg<float>(info, 9, fn, "C", M, N, ldc);
    at_b((int)M, (int)N, (int)K, alpha, A, lda, B, ldb, beta, C, ldc);
  } catch (const ArgError& e) {
    Napi::TypeError::New(env, e.msg).ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string("gemmAtB: ") + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value ForceScalar(const Napi::CallbackInfo& info) {
  force_scalar = info.Length() > 0 && info[0].ToBoolean().Value();
  return Napi::String::New(info.Env(), use_avx2() && !force_scalar ? "avx2" : "scalar");
}

}  // namespace

void RegisterSkinny(Napi::Env env, Napi::Object exports) {
  exports.Set("gemmAtB", Napi::Function::New(env, GemmAtB, "gemmAtB"));
  exports.Set("skinnyForceScalar", Napi::Function::New(env, ForceScalar, "skinnyForceScalar"));
}
