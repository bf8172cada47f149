// Row-major SGEMM for the addon: gemm (f32 B) and gemmBf16 (bf16 B widened to f32 while packing),
// with exactly the signatures of src/kernels/backend.ts, plus fmaPeak(seconds) (the bench's measure
// of this CPU's FMA throughput over the thread pool) and gemmIsa / gemmForceScalar (tests).
//
// The engine (packing, micro-kernels, blocking, threads) is native/src/gemm_impl.h, compiled here
// once per instruction set: `scalar` (portable C++) and, on x86, `avx2` (AVX2+FMA intrinsics in
// functions marked __attribute__((target("avx2,fma")))). The build has no -march flag: the flavour
// is chosen at run time with __builtin_cpu_supports. An AVX-512 flavour would be one more include
// and one more line in pick_isa().
//
// Shapes: M*N*K < 32768 takes a plain loop (no packing, no threads). N <= 8 (LoRA's rank-r shapes) takes
// a 12x8 kernel, which reads A unpacked when its rows are contiguous; some skinny shapes are solved
// transposed (see gemm() below); the other shapes take a 6x16 kernel.
#include <napi.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AJ_GEMM_X86 1
#endif

namespace ajuste_gemm {
namespace {  // internal linkage: direct calls, no PLT, free to inline

// A matrix given by strides: element (r, c) is p[r * rs + c * cs].
template <typename T>
struct Mat {
  const T* p;
  long rs, cs;
};

inline float widen(float x) { return x; }
inline float widen(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline long ceil_div(long a, long b) { return (a + b - 1) / b; }
inline int round_up(int a, int b) { return ceil_div(a, b) * b; }

// A growable 64-byte aligned scratch buffer (one per thread and use).
struct Buf {
  float* p = nullptr;
  size_t n = 0;
  float* get(size_t need) {
    if (need > n) {
      std::free(p);
      const size_t bytes = ((need * sizeof(float) + 63) / 64) * 64;
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) {
        n = 0;
        throw std::bad_alloc();
      }
      n = need;
    }
    return p;
  }
  ~Buf() { std::free(p); }
};

namespace scalar {
#define AJ_GEMM_AVX2 0
#include "gemm_impl.h"
#undef AJ_GEMM_AVX2
}  // namespace scalar

#ifdef AJ_GEMM_X86
namespace avx2 {
#define AJ_GEMM_AVX2 1
#include "gemm_impl.h"
#undef AJ_GEMM_AVX2
}  // namespace avx2
#endif

enum class Isa { Scalar, Avx2 };

Isa detect_isa() {
#ifdef AJ_GEMM_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

bool force_scalar = false;

Isa pick_isa() {
  static const Isa best = detect_isa();
  return force_scalar ? Isa::Scalar : best;
}

const char* isa_name(Isa i) { return i == Isa::Avx2 ? "avx2+fma" : "scalar"; }

constexpr double SMALL = 32768;  // M*N*K below this: plain loop

template <typename TB>
void gemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, long lda, const TB* B, long ldb,
          float beta, float* C, long ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.f) {  // C = beta * C
    for (int i = 0; i < M; i++) {
      float* c = C + i * ldc;
      if (beta == 0.f) std::fill(c, c + N, 0.f);
      else if (beta != 1.f) for (int j = 0; j < N; j++) c[j] *= beta;
    }
    return;
  }
  const Isa isa = pick_isa();
  const Mat<float> a{A, transA ? 1 : lda, transA ? lda : 1};  // op(A) [M,K]
  const Mat<TB> b{B, transB ? 1 : ldb, transB ? ldb : 1};     // op(B) [K,N]
  if ((double)M * N * K < SMALL) {
    static thread_local std::vector<float> acc;
    if (acc.size() < (size_t)N) acc.resize(N);
#ifdef AJ_GEMM_X86
    if (isa == Isa::Avx2) return avx2::small_gemm(M, N, K, alpha, a, b, beta, C, ldc, acc.data());
#endif
    return scalar::small_gemm(M, N, K, alpha, a, b, beta, C, ldc, acc.data());
  }
  // Solve C^T [N,M] = op(B)^T op(A)^T (C^T stored with rows 1 apart, columns ldc apart) when that turns a
  // skinny shape into one whose big operand streams in long contiguous runs: M <= 8 with B stored [N,K]
  // becomes N' <= 8 with A' rows contiguous (the unpacked 12x8 kernel); N <= 8 with A stored [K,M] becomes
  // M' <= 8 with B' rows contiguous (packed in long rows for the 6x16 kernel).
  if ((M <= 8 && N > 8 && transB) || (N <= 8 && M > 8 && transA)) {
    const Mat<TB> bt{B, b.cs, b.rs};
    const Mat<float> at{A, a.cs, a.rs};
#ifdef AJ_GEMM_X86
    if (isa == Isa::Avx2) return avx2::run(N, M, K, alpha, bt, at, beta, C, 1, ldc);
#endif
    return scalar::run(N, M, K, alpha, bt, at, beta, C, 1, ldc);
  }
#ifdef AJ_GEMM_X86
  if (isa == Isa::Avx2) return avx2::run(M, N, K, alpha, a, b, beta, C, ldc, 1);
#endif
  scalar::run(M, N, K, alpha, a, b, beta, C, ldc, 1);
}

// ------------------------------------------------------------------------------------------------
// N-API
// ------------------------------------------------------------------------------------------------
struct ArgError {
  bool range;  // RangeError (a value out of range) or TypeError (a value of the wrong kind)
  std::string msg;
};

const char* typed_array_name(const Napi::Value& v) {
  if (!v.IsTypedArray()) {
    if (v.IsNull()) return "null";
    if (v.IsUndefined()) return "undefined";
    if (v.IsNumber()) return "a number";
    if (v.IsArray()) return "an Array";
    return "not a typed array";
  }
  switch (v.As<Napi::TypedArray>().TypedArrayType()) {
    case napi_float32_array: return "a Float32Array";
    case napi_float64_array: return "a Float64Array";
    case napi_uint16_array: return "a Uint16Array";
    case napi_int32_array: return "an Int32Array";
    case napi_uint8_array: return "a Uint8Array";
    default: return "another typed array";
  }
}

std::string where(const char* fn, int i, const char* name) {
  return std::string(fn) + ": argument " + std::to_string(i + 1) + " (" + name + ")";
}

bool bool_arg(const Napi::CallbackInfo& info, int i, const char* fn, const char* name) {
  if (!info[i].IsBoolean()) throw ArgError{false, where(fn, i, name) + " must be a boolean"};
  return info[i].As<Napi::Boolean>().Value();
}

double num_arg(const Napi::CallbackInfo& info, int i, const char* fn, const char* name) {
  if (!info[i].IsNumber()) throw ArgError{false, where(fn, i, name) + " must be a number"};
  return info[i].As<Napi::Number>().DoubleValue();
}

long int_arg(const Napi::CallbackInfo& info, int i, const char* fn, const char* name, long lo) {
  const double d = num_arg(info, i, fn, name);
  if (!(d >= (double)lo && d <= 2147483647.0) || d != std::floor(d))
    throw ArgError{true, where(fn, i, name) + " must be an integer in [" + std::to_string(lo) + ", 2^31-1], got " +
                             std::to_string(d)};
  return (long)d;
}

// A typed array of rows x cols with row stride ld (>= max(1, cols)).
template <typename T>
T* mat_arg(const Napi::CallbackInfo& info, int i, int ld_i, const char* fn, const char* name, napi_typedarray_type ty,
           const char* tyname, long rows, long cols) {
  const Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != ty)
    throw ArgError{false, where(fn, i, name) + " must be " + tyname + ", got " + typed_array_name(v)};
  const long ld = int_arg(info, ld_i, fn, (std::string("ld") + (char)std::tolower(name[0])).c_str(), 1);
  if (ld < cols)
    throw ArgError{true, where(fn, ld_i, (std::string("ld") + (char)std::tolower(name[0])).c_str()) + " = " +
                             std::to_string(ld) + " is smaller than the " + std::to_string(cols) +
                             " columns of the stored " + name + " [" + std::to_string(rows) + "," +
                             std::to_string(cols) + "]"};
  Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
  const double need = rows > 0 && cols > 0 ? (double)(rows - 1) * ld + cols : 0;
  if ((double)a.ElementLength() < need)
    throw ArgError{true, std::string(fn) + ": " + name + " has " + std::to_string(a.ElementLength()) +
                             " elements, but [" + std::to_string(rows) + "," + std::to_string(cols) + "] with ld" +
                             (char)std::tolower(name[0]) + "=" + std::to_string(ld) + " needs " +
                             std::to_string((long long)need)};
  return a.Data();  // already offset by the view's byteOffset
}

template <typename TB>
Napi::Value GemmNapi(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  constexpr bool bf16 = sizeof(TB) == 2;
  const char* fn = bf16 ? "gemmBf16" : "gemm";
  bool tA, tB;
  long M, N, K, lda, ldb, ldc;
  float alpha, beta;
  const float* A;
  const TB* B;
  float* C;
  try {
    if (info.Length() < 13)
      throw ArgError{false, std::string(fn) + ": expected 13 arguments (transA, transB, M, N, K, alpha, A, lda, B, "
                                              "ldb, beta, C, ldc), got " + std::to_string(info.Length())};
    tA = bool_arg(info, 0, fn, "transA");
    tB = bool_arg(info, 1, fn, "transB");
    M = int_arg(info, 2, fn, "M", 0);
    N = int_arg(info, 3, fn, "N", 0);
    K = int_arg(info, 4, fn, "K", 0);
    alpha = (float)num_arg(info, 5, fn, "alpha");
    beta = (float)num_arg(info, 10, fn, "beta");
    A = mat_arg<float>(info, 6, 7, fn, "A", napi_float32_array, "a Float32Array", tA ? K : M, tA ? M : K);
    lda = int_arg(info, 7, fn, "lda", 1);
    B = mat_arg<TB>(info, 8, 9, fn, "B", bf16 ? napi_uint16_array : napi_float32_array,
                    bf16 ? "a Uint16Array of bf16" : "a Float32Array", tB ? N : K, tB ? K : N);
    ldb = int_arg(info, 9, fn, "ldb", 1);
    C = mat_arg<float>(info, 11, 12, fn, "C", napi_float32_array, "a Float32Array", M, N);
    ldc = int_arg(info, 12, fn, "ldc", 1);
  } catch (const ArgError& e) {
    if (e.range) Napi::RangeError::New(env, e.msg).ThrowAsJavaScriptException();
    else Napi::TypeError::New(env, e.msg).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  try {
    gemm<TB>(tA, tB, (int)M, (int)N, (int)K, alpha, A, lda, B, ldb, beta, C, ldc);
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string(fn) + ": " + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

// fmaPeak(seconds): GFLOP/s of a register-only FMA loop run on every thread of the pool at once: the
// sum over threads of each one's best ~15 us burst (robust to time slices taken by other processes).
Napi::Value FmaPeak(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double s = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(s > 0 && s <= 60)) {
    Napi::RangeError::New(env, "fmaPeak: argument 1 (seconds) must be a number in (0, 60]").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto& pool = ajuste::ThreadPool::get();
  const int n = pool.size();
  std::vector<double> g(n, 0.0);
  const Isa isa = pick_isa();
  pool.parallel_for(n, [&](long b, long e, int) {
    for (long i = b; i < e; i++) {
#ifdef AJ_GEMM_X86
      if (isa == Isa::Avx2) { g[i] = avx2::fma_loop(s); continue; }
#endif
      g[i] = scalar::fma_loop(s);
    }
  });
  double total = 0;
  for (double x : g) total += x;
  return Napi::Number::New(env, total);
}

Napi::Value ForceScalar(const Napi::CallbackInfo& info) {
  force_scalar = info.Length() > 0 && info[0].ToBoolean().Value();
  return Napi::String::New(info.Env(), isa_name(pick_isa()));
}

Napi::Value IsaName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), isa_name(pick_isa())); }

}  // namespace
}  // namespace ajuste_gemm

// For addon.cc's info(), should it want to report the GEMM instruction set.
const char* ajuste_gemm_isa() { return ajuste_gemm::isa_name(ajuste_gemm::pick_isa()); }

void RegisterGemm(Napi::Env env, Napi::Object exports) {
  using namespace ajuste_gemm;
  exports.Set("gemm", Napi::Function::New(env, GemmNapi<float>, "gemm"));
  exports.Set("gemmBf16", Napi::Function::New(env, GemmNapi<uint16_t>, "gemmBf16"));
  exports.Set("fmaPeak", Napi::Function::New(env, FmaPeak, "fmaPeak"));
  exports.Set("gemmIsa", Napi::Function::New(env, IsaName, "gemmIsa"));
  exports.Set("gemmForceScalar", Napi::Function::New(env, ForceScalar, "gemmForceScalar"));
}
