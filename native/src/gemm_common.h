// Helpers shared by every GEMM flavour (gemm_impl.h, gemm_avx512.h): strided matrix views, bf16
// widening, block arithmetic and the packing scratch buffers. Portable C++ with no intrinsics, so
// native/test/gemm_emu.cc can compile the AVX-512 flavour without the addon (see gemm_avx512.h).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace ajuste_gemm {

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

// A growable 64-byte aligned scratch buffer of T (one per thread and use).
template <typename T>
struct BufOf {
  T* p = nullptr;
  size_t n = 0;
  T* get(size_t need) {
    if (need > n) {
      std::free(p);
      const size_t bytes = ((need * sizeof(T) + 63) / 64) * 64;
      p = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (!p) {
        n = 0;
        throw std::bad_alloc();
      }
      n = need;
    }
    return p;
  }
  ~BufOf() { std::free(p); }
};
using Buf = BufOf<float>;

}  // namespace ajuste_gemm
