// gemmNf4: GEMM with a 4-bit (NF4/FP4) weight, dequantized tile by tile inside the GEMM so the weight
// is never expanded in memory.
//
//   gemmNf4(transB, M, N, K, alpha, A, lda, packed, absmax, blocksize, code, beta, C, ldc)
//
// C[M,N] = alpha * A[M,K] · op(W) + beta * C, all row-major; A has row stride lda, C row stride ldc.
// W is a flat array of N*K 4-bit values: `packed` holds two per byte (element 2i in the high nibble of
// byte i, 2i+1 in the low nibble), value(i) = code[nibble(i)] * absmax[i / blocksize]  (bitsandbytes'
// layout; blocks run over the flat index, so they may straddle rows).
//   transB = true:  W is [N,K] (a Linear weight [out,in]), op(W) = W^T. Forward y = x W^T:
//                   M tokens, K = in_features, N = out_features.
//   transB = false: W is [K,N], op(W) = W. Input gradient dx = dy W: K = out_features, N = in_features.
// When beta == 0, C is overwritten (old contents, even NaN, ignored). The JS oracle is
// src/quant/nf4-gemm.ts (dequantize, then the js gemm).
//
// Blocking: the N columns are split into chunks of NC, K into chunks of KC. For each (column chunk,
// K chunk) a task dequantizes the [KC x NC] tile of op(W) into a private panel (16-column strips,
// [k][16] each) and runs a 6x16 register-blocked micro-kernel over its rows of A. The AVX2+FMA kernel is
// chosen at run time; a scalar kernel is the fallback. Tasks = column chunks x row chunks, threaded with
// ajuste::ThreadPool.
#include <napi.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "napi_util.h"
#include "threads.h"

namespace {

constexpr int MR = 6;     // rows of C per micro-kernel call
constexpr int NR = 16;    // columns of C per micro-kernel call (two 8-float AVX vectors)
constexpr int KC = 256;   // K per dequantized panel
constexpr int NC = 128;   // columns per task (8 strips)

struct Weight {
  const uint8_t* packed;
  const float* absmax;
  long blocksize;
  const float* code;  // 16 entries
};

// Dequantizes `len` consecutive flat elements starting at `flat` into dst[0], dst[stride], ...
inline void DecodeRun(const Weight& w, long flat, long len, float* dst, long stride) {
  long i = 0;
  while (i < len) {
    long idx = flat + i;
    long block = idx / w.blocksize;
    long end = std::min(len, (block + 1) * w.blocksize - flat);
    const float s = w.absmax[block];
    for (; i < end; i++) {
      long e = flat + i;
      uint8_t b = w.packed[e >> 1];
      int nib = (e & 1) ? (b & 15) : (b >> 4);
      dst[i * stride] = w.code[nib] * s;
    }
  }
}

// AVX2 version of DecodeRun for contiguous output (stride 1): 8 values per step from 4 packed bytes,
// nibbles looked up in the 16-entry table with two 8-lane permutes and a blend on bit 3.
__attribute__((target("avx2,fma"))) void DecodeRunAvx2(const Weight& w, long flat, long len, float* dst) {
  const __m256 codeLo = _mm256_loadu_ps(w.code), codeHi = _mm256_loadu_ps(w.code + 8);
  const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
  const __m256i fifteen = _mm256_set1_epi32(15);
  long i = 0;
  while (i < len) {
    const long block = (flat + i) / w.blocksize;
    const long end = std::min(len, (block + 1) * w.blocksize - flat);
    const float s = w.absmax[block];
    const __m256 vs = _mm256_set1_ps(s);
    if ((flat + i) & 1) {  // odd start: the low nibble of a byte
      dst[i] = w.code[w.packed[(flat + i) >> 1] & 15] * s;
      i++;
    }
    for (; i + 8 <= end; i += 8) {
      uint32_t word;
      std::memcpy(&word, w.packed + ((flat + i) >> 1), 4);
      const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), fifteen);
      const __m256 lo = _mm256_permutevar8x32_ps(codeLo, nib);
      const __m256 hi = _mm256_permutevar8x32_ps(codeHi, nib);
      const __m256 v = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(nib, 28)));
      _mm256_storeu_ps(dst + i, _mm256_mul_ps(v, vs));
    }
    for (; i < end; i++) {
      const long e = flat + i;
      const uint8_t b = w.packed[e >> 1];
      dst[i] = w.code[(e & 1) ? (b & 15) : (b >> 4)] * s;
    }
  }
}

// Fills the panel for columns [n0, n1) and k in [k0, k0+kc): strip s holds columns n0+16s.. as
// panel[s*KC*16 + kk*16 + j] = op(W)[k0+kk][n0+16s+j], zero past n1. `row` is scratch of KC floats.
void DecodePanel(const Weight& w, bool avx2, bool transB, long N, long K, long n0, long n1, long k0, long kc,
                 float* panel, float* row) {
  const long cols = n1 - n0;
  const long strips = (cols + NR - 1) / NR;
  const long tail = cols - (strips - 1) * NR;  // columns used in the last strip
  if (tail != NR) {
    float* last = panel + (strips - 1) * KC * NR;
    for (long kk = 0; kk < kc; kk++) std::fill(last + kk * NR + tail, last + kk * NR + NR, 0.f);
  }
  if (transB) {
    // W [N,K]: column n of op(W) is row n of W, contiguous along k.
    for (long c = 0; c < cols; c++) {
      float* dst = panel + (c / NR) * KC * NR + (c % NR);
      const long flat = (n0 + c) * K + k0;
      if (avx2) {
        DecodeRunAvx2(w, flat, kc, row);
        for (long kk = 0; kk < kc; kk++) dst[kk * NR] = row[kk];
      } else {
        DecodeRun(w, flat, kc, dst, NR);
      }
    }
  } else {
    // W [K,N]: row k of op(W) is row k of W, contiguous along n.
    for (long kk = 0; kk < kc; kk++) {
      const long flat = (k0 + kk) * N + n0;
      for (long s = 0; s < strips; s++) {
        const long len = std::min<long>(NR, cols - s * NR);
        float* dst = panel + s * KC * NR + kk * NR;
        if (avx2) DecodeRunAvx2(w, flat + s * NR, len, dst);
        else DecodeRun(w, flat + s * NR, len, dst, 1);
      }
    }
  }
}

// ---- micro-kernels: C[mr x nr] += alpha * A[mr x kc] · P[kc x 16] ----

template <int R>
void KernelScalar(long kc, const float* A, long lda, const float* P, float* C, long ldc, int nr, float alpha) {
  float acc[R][NR] = {};
  for (long k = 0; k < kc; k++) {
    const float* p = P + k * NR;
    for (int r = 0; r < R; r++) {
      float a = A[r * lda + k];
      for (int j = 0; j < NR; j++) acc[r][j] += a * p[j];
    }
  }
  for (int r = 0; r < R; r++)
    for (int j = 0; j < nr; j++) C[r * ldc + j] += alpha * acc[r][j];
}

// Accumulators are named variables (not arrays) so GCC keeps all 12 in registers across the k loop.
template <int R>
__attribute__((target("avx2,fma"))) void KernelAvx2(long kc, const float* A, long lda, const float* P, float* C,
                                                     long ldc, int nr, float alpha) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float* a0 = A;
  const float* a1 = A + (R > 1 ? lda : 0);
  const float* a2 = A + (R > 2 ? 2 * lda : 0);
  const float* a3 = A + (R > 3 ? 3 * lda : 0);
  const float* a4 = A + (R > 4 ? 4 * lda : 0);
  const float* a5 = A + (R > 5 ? 5 * lda : 0);
  for (long k = 0; k < kc; k++) {
    const __m256 b0 = _mm256_load_ps(P + k * NR);
    const __m256 b1 = _mm256_load_ps(P + k * NR + 8);
    __m256 a = _mm256_broadcast_ss(a0 + k);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    if constexpr (R > 1) {
      a = _mm256_broadcast_ss(a1 + k);
      c10 = _mm256_fmadd_ps(a, b0, c10);
      c11 = _mm256_fmadd_ps(a, b1, c11);
    }
    if constexpr (R > 2) {
      a = _mm256_broadcast_ss(a2 + k);
      c20 = _mm256_fmadd_ps(a, b0, c20);
      c21 = _mm256_fmadd_ps(a, b1, c21);
    }
    if constexpr (R > 3) {
      a = _mm256_broadcast_ss(a3 + k);
      c30 = _mm256_fmadd_ps(a, b0, c30);
      c31 = _mm256_fmadd_ps(a, b1, c31);
    }
    if constexpr (R > 4) {
      a = _mm256_broadcast_ss(a4 + k);
      c40 = _mm256_fmadd_ps(a, b0, c40);
      c41 = _mm256_fmadd_ps(a, b1, c41);
    }
    if constexpr (R > 5) {
      a = _mm256_broadcast_ss(a5 + k);
      c50 = _mm256_fmadd_ps(a, b0, c50);
      c51 = _mm256_fmadd_ps(a, b1, c51);
    }
  }
  alignas(32) float tmp[MR][NR];
  _mm256_store_ps(tmp[0], c00); _mm256_store_ps(tmp[0] + 8, c01);
  _mm256_store_ps(tmp[1], c10); _mm256_store_ps(tmp[1] + 8, c11);
  _mm256_store_ps(tmp[2], c20); _mm256_store_ps(tmp[2] + 8, c21);
  _mm256_store_ps(tmp[3], c30); _mm256_store_ps(tmp[3] + 8, c31);
  _mm256_store_ps(tmp[4], c40); _mm256_store_ps(tmp[4] + 8, c41);
  _mm256_store_ps(tmp[5], c50); _mm256_store_ps(tmp[5] + 8, c51);
  const __m256 va = _mm256_set1_ps(alpha);
  for (int r = 0; r < R; r++) {
    float* c = C + r * ldc;
    if (nr == NR) {
      _mm256_storeu_ps(c, _mm256_fmadd_ps(va, _mm256_load_ps(tmp[r]), _mm256_loadu_ps(c)));
      _mm256_storeu_ps(c + 8, _mm256_fmadd_ps(va, _mm256_load_ps(tmp[r] + 8), _mm256_loadu_ps(c + 8)));
    } else {
      for (int j = 0; j < nr; j++) c[j] += alpha * tmp[r][j];
    }
  }
}

using KernelFn = void (*)(long, const float*, long, const float*, float*, long, int, float);

struct Kernels {
  KernelFn fn[MR + 1];
};

Kernels SelectKernels(bool avx2) {
  Kernels k{};
  if (avx2) {
    k.fn[1] = KernelAvx2<1>; k.fn[2] = KernelAvx2<2>; k.fn[3] = KernelAvx2<3>;
    k.fn[4] = KernelAvx2<4>; k.fn[5] = KernelAvx2<5>; k.fn[6] = KernelAvx2<6>;
  } else {
    k.fn[1] = KernelScalar<1>; k.fn[2] = KernelScalar<2>; k.fn[3] = KernelScalar<3>;
    k.fn[4] = KernelScalar<4>; k.fn[5] = KernelScalar<5>; k.fn[6] = KernelScalar<6>;
  }
  return k;
}

std::atomic<bool> g_force_scalar{false};  // set by gemmNf4ForceScalar (tests, benchmarks)

bool CpuHasAvx2Fma() {
  if (g_force_scalar.load(std::memory_order_relaxed)) return false;
  return ajuste::cpu_avx2_fma();  // AJUSTE_ISA=scalar says no, as for every kernel
}

// Few rows (token-by-token generation): no panels; each W row is decoded once, in KC-long segments, and
// used by all M rows while it is in L1. transB: dot products along k; !transB: axpy into C along n.
constexpr long kGemvMaxRows = 4;
constexpr long kGemvCols = 512;  // C columns per task when !transB

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, long n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  s0 = _mm256_add_ps(s0, s1);
  alignas(32) float t[8];
  _mm256_store_ps(t, s0);
  float r = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; i < n; i++) r += a[i] * b[i];
  return r;
}

__attribute__((target("avx2,fma"))) void AxpyAvx2(float a, const float* x, float* y, long n) {
  const __m256 va = _mm256_set1_ps(a);
  long i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

void GemvNf4Avx2(bool transB, long M, long N, long K, float alpha, const float* A, long lda, const Weight& w,
                 float beta, float* C, long ldc) {
  if (transB) {
    // C[m,n] = beta*C + alpha * sum_k A[m,k] W[n,k]
    ajuste::ThreadPool::get().parallel_for(N, [&](long nb, long ne, int) {
      alignas(32) float row[KC];
      for (long n = nb; n < ne; n++) {
        float acc[kGemvMaxRows] = {0.f, 0.f, 0.f, 0.f};
        for (long k0 = 0; k0 < K; k0 += KC) {
          const long kc = std::min<long>(KC, K - k0);
          DecodeRunAvx2(w, n * K + k0, kc, row);
          for (long m = 0; m < M; m++) acc[m] += DotAvx2(A + m * lda + k0, row, kc);
        }
        for (long m = 0; m < M; m++) {
          float& c = C[m * ldc + n];
          c = (beta == 0.f ? 0.f : beta * c) + alpha * acc[m];
        }
      }
    }, 16);
  } else {
    // C[m,n] = beta*C + alpha * sum_k A[m,k] W[k,n]
    const long chunks = (N + kGemvCols - 1) / kGemvCols;
    ajuste::ThreadPool::get().parallel_for(chunks, [&](long cb, long ce, int) {
      alignas(32) float buf[kGemvCols];
      for (long ch = cb; ch < ce; ch++) {
        const long n0 = ch * kGemvCols, len = std::min(N - n0, kGemvCols);
        for (long m = 0; m < M; m++) {
          float* c = C + m * ldc + n0;
          if (beta == 0.f) std::fill(c, c + len, 0.f);
          else if (beta != 1.f) for (long j = 0; j < len; j++) c[j] *= beta;
        }
        for (long k = 0; k < K; k++) {
          DecodeRunAvx2(w, k * N + n0, len, buf);
          for (long m = 0; m < M; m++) AxpyAvx2(alpha * A[m * lda + k], buf, C + m * ldc + n0, len);
        }
      }
    });
  }
}

void GemmNf4Impl(bool transB, long M, long N, long K, float alpha, const float* A, long lda, const Weight& w,
                 float beta, float* C, long ldc) {
  const bool avx2 = CpuHasAvx2Fma();
  if (avx2 && M <= kGemvMaxRows && K > 0 && alpha != 0.f) {
    GemvNf4Avx2(transB, M, N, K, alpha, A, lda, w, beta, C, ldc);
    return;
  }
  const Kernels kern = SelectKernels(avx2);
  const long nChunks = (N + NC - 1) / NC;
  const int threads = ajuste::ThreadPool::get().size();
  // Split rows too when there are too few column chunks to keep every thread busy (each row chunk
  // dequantizes its own panels, so keep the split small).
  long mChunks = 1;
  const long want = 4L * threads;
  if (nChunks < want) mChunks = std::min<long>((want + nChunks - 1) / nChunks, std::max<long>(1, M / (4 * MR)));
  const long mPer = ((M + mChunks - 1) / mChunks + MR - 1) / MR * MR;
  mChunks = mPer > 0 ? (M + mPer - 1) / mPer : 1;
  const long tasks = nChunks * mChunks;

  ajuste::ThreadPool::get().parallel_for(tasks, [&](long tb, long te, int) {
    std::vector<float> buf(KC * NC + KC + 8);
    float* panel = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 31) & ~uintptr_t(31));
    float* row = panel + KC * NC;
    for (long t = tb; t < te; t++) {
      const long nc = t % nChunks, mc = t / nChunks;
      const long n0 = nc * NC, n1 = std::min(N, n0 + NC);
      const long m0 = mc * mPer, m1 = std::min(M, m0 + mPer);
      // C = beta * C on this tile
      for (long i = m0; i < m1; i++) {
        float* c = C + i * ldc;
        if (beta == 0.f) std::fill(c + n0, c + n1, 0.f);
        else if (beta != 1.f) for (long j = n0; j < n1; j++) c[j] *= beta;
      }
      if (K == 0 || alpha == 0.f) continue;
      const long strips = (n1 - n0 + NR - 1) / NR;
      for (long k0 = 0; k0 < K; k0 += KC) {
        const long kc = std::min<long>(KC, K - k0);
        DecodePanel(w, avx2, transB, N, K, n0, n1, k0, kc, panel, row);
        for (long i = m0; i < m1; i += MR) {
          const int mr = (int)std::min<long>(MR, m1 - i);
          for (long s = 0; s < strips; s++) {
            const long n = n0 + s * NR;
            const int nr = (int)std::min<long>(NR, n1 - n);
            kern.fn[mr](kc, A + i * lda + k0, lda, panel + s * KC * NR, C + i * ldc + n, ldc, nr, alpha);
          }
        }
      }
    }
  });
}

// ---- N-API binding ----

Napi::Value Throw(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, "gemmNf4: " + msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool IntArg(const Napi::CallbackInfo& info, int i, long* out) {
  if (!info[i].IsNumber()) return false;
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0) return false;
  *out = (long)d;
  return true;
}

template <typename T>
bool TypedArg(const Napi::CallbackInfo& info, int i, napi_typedarray_type type, T** ptr, size_t* len) {
  if (!info[i].IsTypedArray()) return false;
  Napi::TypedArray ta = info[i].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != type) return false;
  *ptr = reinterpret_cast<T*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
  *len = ta.ElementLength();
  return true;
}

Napi::Value GemmNf4(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* sig =
      "gemmNf4(transB: boolean, M, N, K, alpha, A: Float32Array, lda, packed: Uint8Array, absmax: Float32Array, "
      "blocksize, code: Float32Array(16), beta, C: Float32Array, ldc)";
  if (info.Length() != 14) return Throw(env, std::string("expected 14 arguments: ") + sig);
  if (!info[0].IsBoolean()) return Throw(env, "transB must be a boolean");
  const bool transB = info[0].As<Napi::Boolean>().Value();
  long M, N, K, lda, blocksize, ldc;
  if (!IntArg(info, 1, &M) || !IntArg(info, 2, &N) || !IntArg(info, 3, &K))
    return Throw(env, "M, N and K must be non-negative integers");
  if (!IntArg(info, 6, &lda) || !IntArg(info, 13, &ldc)) return Throw(env, "lda and ldc must be non-negative integers");
  if (!IntArg(info, 9, &blocksize) || blocksize < 2 || blocksize % 2)
    return Throw(env, "blocksize must be an even positive integer");
  if (!info[4].IsNumber() || !info[11].IsNumber()) return Throw(env, "alpha and beta must be numbers");
  const float alpha = (float)info[4].As<Napi::Number>().DoubleValue();
  const float beta = (float)info[11].As<Napi::Number>().DoubleValue();
  float *A, *absmax, *code, *C;
  uint8_t* packed;
  size_t nA, nAbs, nCode, nC, nPacked;
  if (!TypedArg(info, 5, napi_float32_array, &A, &nA)) return Throw(env, "A must be a Float32Array");
  if (!TypedArg(info, 7, napi_uint8_array, &packed, &nPacked)) return Throw(env, "packed must be a Uint8Array");
  if (!TypedArg(info, 8, napi_float32_array, &absmax, &nAbs)) return Throw(env, "absmax must be a Float32Array");
  if (!TypedArg(info, 10, napi_float32_array, &code, &nCode)) return Throw(env, "code must be a Float32Array");
  if (!TypedArg(info, 12, napi_float32_array, &C, &nC)) return Throw(env, "C must be a Float32Array");
  if (nCode != 16) return Throw(env, "code must have 16 entries, got " + std::to_string(nCode));
  if (M > 0 && K > 0 && (lda < K || (size_t)((M - 1) * lda + K) > nA))
    return Throw(env, "A is too small for M=" + std::to_string(M) + ", K=" + std::to_string(K) + ", lda=" +
                          std::to_string(lda) + " (" + std::to_string(nA) + " elements)");
  if (M > 0 && N > 0 && (ldc < N || (size_t)((M - 1) * ldc + N) > nC))
    return Throw(env, "C is too small for M=" + std::to_string(M) + ", N=" + std::to_string(N) + ", ldc=" +
                          std::to_string(ldc) + " (" + std::to_string(nC) + " elements)");
  const long numel = N * K;
  if ((size_t)((numel + 1) / 2) > nPacked)
    return Throw(env, "packed has " + std::to_string(nPacked) + " bytes, need " + std::to_string((numel + 1) / 2) +
                          " for N*K=" + std::to_string(numel));
  if ((size_t)((numel + blocksize - 1) / blocksize) > nAbs)
    return Throw(env, "absmax has " + std::to_string(nAbs) + " values, need " +
                          std::to_string((numel + blocksize - 1) / blocksize) + " at blocksize " +
                          std::to_string(blocksize));
  if (M == 0 || N == 0) return env.Undefined();
  Weight w{packed, absmax, blocksize, code};
  GemmNf4Impl(transB, M, N, K, alpha, A, lda, w, beta, C, ldc);
  return env.Undefined();
}

// gemmNf4Isa(): which micro-kernel gemmNf4 runs ("avx2+fma" or "scalar").
Napi::Value Nf4Isa(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), CpuHasAvx2Fma() ? "avx2+fma" : "scalar");
}

// gemmNf4ForceScalar(on: boolean): forces the scalar fallback (tests and benchmarks); false restores dispatch.
Napi::Value Nf4ForceScalar(const Napi::CallbackInfo& info) {
  g_force_scalar.store(info.Length() > 0 && info[0].ToBoolean().Value());
  return info.Env().Undefined();
}

}  // namespace

void RegisterNf4(Napi::Env env, Napi::Object exports) {
  exports.Set("gemmNf4", Napi::Function::New(env, GemmNf4));
  exports.Set("gemmNf4Isa", Napi::Function::New(env, Nf4Isa));
  exports.Set("gemmNf4ForceScalar", Napi::Function::New(env, Nf4ForceScalar));
}
