// Shared by the addon's kernels (gemv.cc, skinny.cc, decode_attention.cc; the AVX2 check also by nf4.cc and
// pointwise.cc): argument checks for
// N-API entry points (a bad argument becomes a TypeError naming the function and the argument) and the
// run-time AVX2+FMA check.
#pragma once
#include <napi.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace ajuste {

struct ArgError {
  std::string msg;
};

// info[i] as an integer in [lo, 2^31).
inline long int_arg(const Napi::CallbackInfo& info, int i, const std::string& fn, const char* name, long lo) {
  if (!info[i].IsNumber()) throw ArgError{fn + ": " + name + " must be a number"};
  const double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= (double)lo && d <= 2147483647.0) || d != (double)(long)d)
    throw ArgError{fn + ": " + name + " must be an integer >= " + std::to_string(lo) + ", got " + std::to_string(d)};
  return (long)d;
}

// info[i] as a Float32Array (T = float) or a Uint16Array of bf16 (T = uint16_t) holding at least `need` elements.
template <typename T>
T* array_arg(const Napi::CallbackInfo& info, int i, const std::string& fn, const char* name, double need,
             const std::string& shape = "") {
  constexpr napi_typedarray_type want = sizeof(T) == 4 ? napi_float32_array : napi_uint16_array;
  const Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != want)
    throw ArgError{fn + ": " + name + (sizeof(T) == 4 ? " must be a Float32Array" : " must be a Uint16Array (bf16)")};
  Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
  if ((double)a.ElementLength() < need)
    throw ArgError{fn + ": " + name + " has " + std::to_string(a.ElementLength()) + " elements, " + shape + "needs " +
                   std::to_string((long long)need)};
  return a.Data();
}

// info[i] as a row-major [rows, cols] matrix with row stride ld.
template <typename T>
T* mat_arg(const Napi::CallbackInfo& info, int i, const std::string& fn, const char* name, long rows, long cols, long ld) {
  if (ld < std::max(1L, cols))
    throw ArgError{fn + ": the row stride of " + name + " (" + std::to_string(ld) + ") is smaller than its " +
                   std::to_string(cols) + " columns"};
  const double need = rows > 0 && cols > 0 ? (double)(rows - 1) * ld + cols : 0;
  return array_arg<T>(info, i, fn, name, need,
                      "[" + std::to_string(rows) + "," + std::to_string(cols) + "] with stride " + std::to_string(ld) + " ");
}

// Whether this CPU runs AVX2+FMA code; AJUSTE_ISA=scalar says no (as it does for the GEMM).
inline bool cpu_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool ok = [] {
    const char* force = std::getenv("AJUSTE_ISA");
    if (force && std::string(force) == "scalar") return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace ajuste
