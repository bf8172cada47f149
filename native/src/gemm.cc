// Row-major SGEMM for the addon: gemm (f32 B) and gemmBf16 (bf16 B), with exactly the signatures of
// src/kernels/backend.ts, plus fmaPeak(seconds) (the bench's measure of this CPU's FMA throughput over the
// thread pool) and gemmIsa / gemmForceScalar (tests).
//
// The build has no -march flag: one generic binary holds every flavour of the engine and picks one at run
// time (pick_isa(), from cpuid and the OS's saved register state):
//   - avx512bf16: gemm as avx512f; gemmBf16 through AVX512_BF16 (vdpbf16ps), which rounds A to bf16
//     (nearest even) as PyTorch's autocast does; AJUSTE_BF16_DOT=0 turns that off (then: avx512f).
//   - avx512f:    native/src/gemm_avx512.h, 12x32 zmm kernels; bf16 B widened to f32 while packing.
//   - avx2+fma:   native/src/gemm_impl.h with AVX2+FMA intrinsics, 6x16 and 12x8 ymm kernels.
//   - scalar:     native/src/gemm_impl.h in portable C++.
// AJUSTE_ISA=scalar|avx2|avx512f|avx512 caps the choice (for a machine where a path misbehaves). Each
// flavour's functions carry __attribute__((target(...))), so no instruction runs on a CPU without it.
// The AVX-512 paths are tested on AVX2-only machines (this project's and CI's) by compiling gemm_avx512.h
// against a scalar emulation of its intrinsics (native/test/avx512_emu.h, test/native-avx512-emu.test.ts);
// they have not been run or measured on AVX-512 hardware here.
//
// Shapes: M*N*K < 32768 takes a plain loop (no packing, no threads). Some skinny shapes are solved
// transposed (see gemm() below). N <= 8 (LoRA's rank-r shapes) takes the AVX2 flavour on AVX-512 machines
// too (a 16-lane zmm would carry half empty lanes): when the rows of A are contiguous, dot products of
// each row of A with the 8 rows of op(B)^T, reading A once and unpacked (run_direct); else the 12x8
// kernel. The other shapes take the wide kernel of the chosen flavour.
#include <napi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gemm_common.h"
#include "threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

#include "avx2_transpose.h"
#define AJ_GEMM_X86 1
#endif

namespace ajuste_gemm {
namespace {  // internal linkage: direct calls, no PLT, free to inline

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

namespace avx512 {
#define AJ_T512 __attribute__((target("avx512f,avx2,fma")))
#define AJ_T512BF __attribute__((target("avx512f,avx512bf16,avx2,fma")))
// gcc 12 warns that _mm512_undefined_epi32() in its own avx512fintrin.h "may be used uninitialized" (a
// false positive on that header's self-initialisation idiom, fixed in gcc 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "gemm_avx512.h"
#pragma GCC diagnostic pop

// Peak FMA throughput of one thread with zmm registers (see avx2::fma_loop): 24 independent chains in
// named variables (an array would live in memory across the empty asm statements that keep them alive).
AJ_T512 double fma_loop(double seconds) {
  const __m512 m = _mm512_set1_ps(0.999999f), d = _mm512_set1_ps(1e-6f);
#define AJ_X(i) __m512 x##i = _mm512_set1_ps(1.0f + 0.05f * i);
  AJ_X(0) AJ_X(1) AJ_X(2) AJ_X(3) AJ_X(4) AJ_X(5) AJ_X(6) AJ_X(7) AJ_X(8) AJ_X(9) AJ_X(10) AJ_X(11)
  AJ_X(12) AJ_X(13) AJ_X(14) AJ_X(15) AJ_X(16) AJ_X(17) AJ_X(18) AJ_X(19) AJ_X(20) AJ_X(21) AJ_X(22) AJ_X(23)
#undef AJ_X
#define AJ_F(i) x##i = _mm512_fmadd_ps(x##i, m, d);
  using clk = std::chrono::steady_clock;
  const auto start = clk::now();
  double best = 0;
  for (;;) {
    const auto t0 = clk::now();
    for (int it = 0; it < 4096; it++) {
      AJ_F(0) AJ_F(1) AJ_F(2) AJ_F(3) AJ_F(4) AJ_F(5) AJ_F(6) AJ_F(7) AJ_F(8) AJ_F(9) AJ_F(10) AJ_F(11)
      AJ_F(12) AJ_F(13) AJ_F(14) AJ_F(15) AJ_F(16) AJ_F(17) AJ_F(18) AJ_F(19) AJ_F(20) AJ_F(21) AJ_F(22) AJ_F(23)
      __asm__ volatile("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(x4), "+v"(x5), "+v"(x6), "+v"(x7),
                       "+v"(x8), "+v"(x9), "+v"(x10), "+v"(x11));
      __asm__ volatile("" : "+v"(x12), "+v"(x13), "+v"(x14), "+v"(x15), "+v"(x16), "+v"(x17), "+v"(x18),
                       "+v"(x19), "+v"(x20), "+v"(x21), "+v"(x22), "+v"(x23));
    }
    const auto t1 = clk::now();
    const double dt = std::chrono::duration<double>(t1 - t0).count();
    if (dt > 0) best = std::max(best, 2.0 * 4096 * 24 * 16 / dt / 1e9);
    if (std::chrono::duration<double>(t1 - start).count() >= seconds) break;
  }
#undef AJ_F
  return best;
}
#undef AJ_T512
#undef AJ_T512BF
}  // namespace avx512
#endif

// Ordered: a cap keeps the lower of the detected and the asked-for flavour.
enum class Isa { Scalar, Avx2, Avx512, Avx512Bf16 };

const char* isa_name(Isa i) {
  switch (i) {
    case Isa::Avx512Bf16: return "avx512bf16";
    case Isa::Avx512: return "avx512f";
    case Isa::Avx2: return "avx2+fma";
    default: return "scalar";
  }
}

#ifdef AJ_GEMM_X86
// The OS saves (and so lets programs use) the SSE, AVX and AVX-512 registers: XCR0 bits 1-2 (xmm, ymm
// upper halves) and 5-7 (opmask k0-k7, zmm upper halves, zmm16-31). A CPU can have AVX-512 that the
// kernel (or a hypervisor) has left off; using it then faults.
bool os_saves_zmm() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE: xgetbv usable
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xE6u) == 0xE6u;
}

// AVX512_BF16: cpuid leaf 7 subleaf 1, EAX bit 5. (gcc 12 also knows __builtin_cpu_supports("avx512bf16");
// asking cpuid directly keeps the check independent of the compiler's version.)
bool cpu_has_avx512bf16() {
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  if (a < 1) return false;  // leaf 7 has no subleaf 1
  __cpuid_count(7, 1, a, b, c, d);
  return (a >> 5) & 1u;
}
#endif

Isa detect_isa() {
#ifdef AJ_GEMM_X86
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return Isa::Scalar;
  if (!(__builtin_cpu_supports("avx512f") && os_saves_zmm())) return Isa::Avx2;
  return cpu_has_avx512bf16() ? Isa::Avx512Bf16 : Isa::Avx512;
#else
  return Isa::Scalar;
#endif
}

// The detected flavour, capped by AJUSTE_ISA and with AJUSTE_BF16_DOT=0 turning off the bf16 dot products.
Isa choose_isa() {
  Isa isa = detect_isa();
  if (const char* s = std::getenv("AJUSTE_ISA"); s && *s) {
    const std::string v(s);
    Isa cap = Isa::Avx512Bf16;
    if (v == "scalar") cap = Isa::Scalar;
    else if (v == "avx2" || v == "avx2+fma") cap = Isa::Avx2;
    else if (v == "avx512f") cap = Isa::Avx512;
    else if (v == "avx512" || v == "avx512bf16") cap = Isa::Avx512Bf16;
    else
      std::fprintf(stderr, "ajuste: AJUSTE_ISA=%s is not one of scalar, avx2, avx512f, avx512; ignored\n", s);
    isa = std::min(isa, cap);
  }
  if (const char* s = std::getenv("AJUSTE_BF16_DOT"); s && std::strcmp(s, "0") == 0 && isa == Isa::Avx512Bf16)
    isa = Isa::Avx512;
  return isa;
}

bool force_scalar = false;

Isa pick_isa() {
  static const Isa best = choose_isa();
  return force_scalar ? Isa::Scalar : best;
}

constexpr double SMALL = 32768;  // M*N*K below this: plain loop

// C (rsc, csc) = alpha * op(A) op(B) + beta * C on the packed engines, M, N, K > 0. The AVX-512 flavours
// take N > 8; N <= 8 stays on the AVX2 flavour's skinny kernels (every AVX-512 CPU has AVX2 and FMA).
template <typename TA, typename TB>
void run_isa(Isa isa, int M, int N, int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C,
             long rsc, long csc) {
#ifdef AJ_GEMM_X86
  if (isa >= Isa::Avx512 && N > 8) {
    if constexpr (sizeof(TA) == 2 || sizeof(TB) == 2) {  // gemmBf16 (B, or A' = B^T in the transposed solve)
      if (isa == Isa::Avx512Bf16) return avx512::run_bf16dot(M, N, K, alpha, A, B, beta, C, rsc, csc);
    }
    return avx512::run(M, N, K, alpha, A, B, beta, C, rsc, csc);
  }
  if (isa >= Isa::Avx2) return avx2::run(M, N, K, alpha, A, B, beta, C, rsc, csc);
#else
  (void)isa;
#endif
  scalar::run(M, N, K, alpha, A, B, beta, C, rsc, csc);
}

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
    if (isa >= Isa::Avx2) return avx2::small_gemm(M, N, K, alpha, a, b, beta, C, ldc, acc.data());
#endif
    return scalar::small_gemm(M, N, K, alpha, a, b, beta, C, ldc, acc.data());
  }
  // Solve C^T [N,M] = op(B)^T op(A)^T (C^T stored with rows 1 apart, columns ldc apart) when that turns a
  // skinny shape into one whose big operand streams in long contiguous runs: M <= 8 with B stored [N,K]
  // becomes N' <= 8 with A' rows contiguous (the unpacked 12x8 kernel); N <= 8 with A stored [K,M] becomes
  // M' <= 8 with B' rows contiguous (packed in long rows for the wide kernel).
  if ((M <= 8 && N > 8 && transB) || (N <= 8 && M > 8 && transA)) {
    const Mat<TB> bt{B, b.cs, b.rs};
    const Mat<float> at{A, a.cs, a.rs};
    return run_isa(isa, N, M, K, alpha, bt, at, beta, C, 1, ldc);
  }
  run_isa(isa, M, N, K, alpha, a, b, beta, C, ldc, 1);
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
      if (isa >= Isa::Avx512) { g[i] = avx512::fma_loop(s); continue; }
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
