// gemv / gemvBf16: C[M,N] = alpha * A B^T + beta * C for a small M (decode: one token, M = 1), with A [M,K]
// (row stride lda), B [N,K] (ldb) in f32 or bf16 (the weight as stored, [out, in]) and C [M,N] (ldc). The same
// result as gemm(false, true, ...); contract in src/kernels/backend.ts, reference: src/kernels/js/gemm.ts.
//
// At M = 1 a product is a matrix-vector product: 2 flops per weight element loaded, so it is bound by memory
// bandwidth, not by the FMA units. gemm (gemm.cc) turns M <= 8 into N' <= 8 and runs its 12x8 kernel with one
// live lane in eight, about 3.6 GFLOP/s on the SmolLM2 decode shapes. This kernel streams each row of B once,
// in place: threads split the rows of B (the outputs) into contiguous ranges; 4 rows at a time are dotted
// with each row of A (the 4 rows stay in L1 for the M passes) in 8 ymm accumulators, 16 columns per step.
// bf16 B is widened to f32 in registers (a 16-bit shift), so a bf16 weight moves half the bytes. Columns past
// K % 16 are summed in scalar code. AJUSTE_ISA=scalar forces the scalar loop; gemvForceScalar(on) switches
// it (tests).
#include <napi.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "napi_util.h"
#include "threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AJ_GV_X86 1
#endif

namespace {
using ajuste::ArgError;
using ajuste::int_arg;
using ajuste::mat_arg;

bool use_avx2() { return ajuste::cpu_avx2_fma(); }

inline float widen(float x) { return x; }
inline float widen(uint16_t x) {
  const uint32_t u = (uint32_t)x << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline void store(float* c, float alpha, float beta, float dot) {
  *c = alpha * dot + (beta == 0.f ? 0.f : beta * *c);
}

// Rows [n0, n1) of B, every row of A, plain loops.
template <typename W>
void gemv_scalar(int M, int K, float alpha, const float* A, long lda, const W* B, long ldb, float beta, float* C,
                 long ldc, long n0, long n1) {
  for (long n = n0; n < n1; n++) {
    const W* b = B + n * ldb;
    for (int m = 0; m < M; m++) {
      const float* a = A + (long)m * lda;
      float dot = 0.f;
      for (int k = 0; k < K; k++) dot += a[k] * widen(b[k]);
      store(C + (long)m * ldc + n, alpha, beta, dot);
    }
  }
}

#ifdef AJ_GV_X86
#define AJ_AVX2 __attribute__((target("avx2,fma")))

AJ_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
AJ_AVX2 inline __m256 load8(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

AJ_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Rows of B prefetched ahead: each row is short (576 to 1536 elements, a few KB), too short for the hardware
// prefetcher to ramp up on before the next block of rows starts; so while dotting rows r the loop asks for
// the same columns of row r + kAhead (a prefetch past the end of B is harmless: it never faults).
constexpr int kAhead = 8;

// R (1 or 4) rows of B starting at b, dotted with the row a: dots[r] = sum_k a[k] b[r][k].
template <int R, typename W>
AJ_AVX2 inline void dot_rows(int K, const float* a, const W* b, long ldb, float* dots) {
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(a + k), x1 = _mm256_loadu_ps(a + k + 8);
    for (int r = 0; r < R; r++) {
      _mm_prefetch(reinterpret_cast<const char*>(b + (r + kAhead) * ldb + k), _MM_HINT_T0);
      acc0[r] = _mm256_fmadd_ps(load8(b + r * ldb + k), x0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(load8(b + r * ldb + k + 8), x1, acc1[r]);
    }
  }
  for (int r = 0; r < R; r++) {
    float d = hsum(_mm256_add_ps(acc0[r], acc1[r]));
    for (int kk = k; kk < K; kk++) d += a[kk] * widen(b[r * ldb + kk]);
    dots[r] = d;
  }
}

template <typename W>
AJ_AVX2 void gemv_avx2(int M, int K, float alpha, const float* A, long lda, const W* B, long ldb, float beta,
                       float* C, long ldc, long n0, long n1) {
  float dots[4];
  long n = n0;
  for (; n + 4 <= n1; n += 4) {
    for (int m = 0; m < M; m++) {
      dot_rows<4>(K, A + (long)m * lda, B + n * ldb, ldb, dots);
      float* c = C + (long)m * ldc + n;
      for (int r = 0; r < 4; r++) store(c + r, alpha, beta, dots[r]);
    }
  }
  for (; n < n1; n++) {
    for (int m = 0; m < M; m++) {
      dot_rows<1>(K, A + (long)m * lda, B + n * ldb, ldb, dots);
      store(C + (long)m * ldc + n, alpha, beta, dots[0]);
    }
  }
}
#endif

bool force_scalar = false;

// Below this many weight elements (times M) one thread does the whole product. On the 2-core test machine
// (shared, ~16 GB/s from one core, no more from two) splitting the 576x576 and 192x576 decode products made
// them slower (104 vs 84 us, 15 vs 8 us), the bigger ones were level; above 2 MB of f32 a second core can
// still help where it has its own bandwidth or the weight sits in L3.
constexpr double kParallelElems = 1 << 19;

template <typename W>
void gemv(int M, int N, int K, float alpha, const float* A, long lda, const W* B, long ldb, float beta, float* C,
          long ldc) {
  if (M == 0 || N == 0) return;
  auto range = [&](long b, long e, int) {
    const long n0 = b * 4, n1 = std::min<long>(N, e * 4);
#ifdef AJ_GV_X86
    if (use_avx2() && !force_scalar) return gemv_avx2(M, K, alpha, A, lda, B, ldb, beta, C, ldc, n0, n1);
#endif
    gemv_scalar(M, K, alpha, A, lda, B, ldb, beta, C, ldc, n0, n1);
  };
  const long blocks = (N + 3) / 4;
  if ((double)M * N * K >= kParallelElems) ajuste::ThreadPool::get().parallel_for(blocks, range);
  else range(0, blocks, 0);
}

// ---------------------------------------------------------------------------------------------
// N-API: gemv(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), gemvBf16 (same, B a Uint16Array)
// ---------------------------------------------------------------------------------------------
template <typename W>
Napi::Value Gemv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = sizeof(W) == 4 ? "gemv" : "gemvBf16";
  try {
    if (info.Length() < 11)
      throw ArgError{fn + ": expected 11 arguments (M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), got " +
                     std::to_string(info.Length())};
    const long M = int_arg(info, 0, fn, "M", 0), N = int_arg(info, 1, fn, "N", 0), K = int_arg(info, 2, fn, "K", 0);
    if (!info[3].IsNumber() || !info[8].IsNumber()) throw ArgError{fn + ": alpha and beta must be numbers"};
    const float alpha = (float)info[3].As<Napi::Number>().DoubleValue();
    const float beta = (float)info[8].As<Napi::Number>().DoubleValue();
    const long lda = int_arg(info, 5, fn, "lda", 1), ldb = int_arg(info, 7, fn, "ldb", 1),
               ldc = int_arg(info, 10, fn, "ldc", 1);
    const float* A = mat_arg<float>(info, 4, fn, "A", M, K, lda);
    const W* B = mat_arg<W>(info, 6, fn, "B", N, K, ldb);
    float* C = mat_arg<float>(info, 9, fn, "C", M, N, ldc);
    gemv<W>((int)M, (int)N, (int)K, alpha, A, lda, B, ldb, beta, C, ldc);
  } catch (const ArgError& e) {
    Napi::TypeError::New(env, e.msg).ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(env, fn + ": " + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value ForceScalar(const Napi::CallbackInfo& info) {
  force_scalar = info.Length() > 0 && info[0].ToBoolean().Value();
  return Napi::String::New(info.Env(), use_avx2() && !force_scalar ? "avx2" : "scalar");
}

}  // namespace

void RegisterGemv(Napi::Env env, Napi::Object exports) {
  exports.Set("gemv", Napi::Function::New(env, Gemv<float>, "gemv"));
  exports.Set("gemvBf16", Napi::Function::New(env, Gemv<uint16_t>, "gemvBf16"));
  exports.Set("gemvForceScalar", Napi::Function::New(env, ForceScalar, "gemvForceScalar"));
}
