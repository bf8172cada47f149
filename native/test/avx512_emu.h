// A portable scalar emulation of exactly the AVX-512 intrinsics used by native/src/gemm_avx512.h, so that
// the AVX-512 GEMM flavour (kernels, packing, driver) can be compiled and tested on machines without
// AVX-512 (native/test/gemm_emu.cc). Include this instead of <immintrin.h>, never with it.
//
// The semantics follow the Intel SDM / Intrinsics Guide definitions, including the parts a kernel can get
// wrong: operand order (fmadd(a, b, c) = a * b + c; cvtne2ps_pbh(a, b) puts b in the low 16 words),
// masked loads that do not read masked-off lanes and masked stores that do not write them, aligned
// loads and stores that fault (abort here) on an address not 64-byte aligned, single rounding in fmadd
// (std::fma), round-to-nearest-even with the instructions' own NaN and denormal rules in the bf16
// conversion, and vdpbf16ps's two accumulations per lane. What it cannot show: speed, and whether
// real hardware rounds vdpbf16ps's two accumulation steps as documented (the GEMM test's tolerance
// does not depend on that).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

typedef unsigned short __mmask16;

// The vector types are plain arrays (no 64-byte alignment of their own: the code under test must align
// its buffers itself, and the aligned loads and stores below check that it does).

struct __m512bh;

struct __m512 {
  float f[16];
};

struct __m512i {
  uint32_t u[16];
  __m512i() = default;
  explicit __m512i(const __m512bh& x);
};

struct __m256i {
  uint16_t w[16];
};

// 32 bf16 values (bit patterns).
struct __m512bh {
  uint16_t h[32];
  __m512bh() = default;
  explicit __m512bh(const __m512i& x) { std::memcpy(h, x.u, 64); }
};

inline __m512i::__m512i(const __m512bh& x) { std::memcpy(u, x.h, 64); }

namespace aj_emu {
inline void check_aligned(const void* p, const char* what) {
  if ((reinterpret_cast<uintptr_t>(p) & 63) != 0) {
    std::fprintf(stderr, "avx512_emu: %s at %p is not 64-byte aligned (the instruction faults)\n", what, p);
    std::abort();
  }
}
inline float f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// vcvtne2ps2bf16's convert_fp32_to_bfloat16 (SDM): zero and denormal -> signed zero; infinity kept; NaN
// truncated with the quiet bit set; otherwise round to nearest even by integer addition of 0x7FFF + lsb.
inline uint16_t fp32_to_bf16(float x) {
  const uint32_t u = bits(x);
  const uint32_t exp = (u >> 23) & 0xFF, man = u & 0x7FFFFF;
  if (exp == 0) return (uint16_t)((u >> 16) & 0x8000);
  if (exp == 0xFF && man == 0) return (uint16_t)(u >> 16);
  if (exp == 0xFF) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
// make_fp32 with the instruction's DAZ: a bf16 denormal reads as a signed zero.
inline float bf16_to_fp32_daz(uint16_t h) {
  if (((h >> 7) & 0xFF) == 0) h &= 0x8000;
  return f32((uint32_t)h << 16);
}
inline float ftz(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }
}  // namespace aj_emu

#define _MM_HINT_T0 3
inline void _mm_prefetch(const char*, int) {}

// ---- f32 vectors --------------------------------------------------------------------------------
inline __m512 _mm512_setzero_ps() {
  __m512 r;
  for (int i = 0; i < 16; i++) r.f[i] = 0.f;
  return r;
}
inline __m512 _mm512_set1_ps(float x) {
  __m512 r;
  for (int i = 0; i < 16; i++) r.f[i] = x;
  return r;
}
inline __m512 _mm512_loadu_ps(const void* p) {
  __m512 r;
  std::memcpy(r.f, p, 64);
  return r;
}
inline __m512 _mm512_load_ps(const void* p) {
  aj_emu::check_aligned(p, "_mm512_load_ps");
  return _mm512_loadu_ps(p);
}
inline void _mm512_storeu_ps(void* p, __m512 a) { std::memcpy(p, a.f, 64); }
inline void _mm512_store_ps(void* p, __m512 a) {
  aj_emu::check_aligned(p, "_mm512_store_ps");
  _mm512_storeu_ps(p, a);
}
// Lanes whose mask bit is clear are zero and their memory is not read (fault suppression).
inline __m512 _mm512_maskz_loadu_ps(__mmask16 k, const void* p) {
  __m512 r;
  const float* s = static_cast<const float*>(p);
  for (int i = 0; i < 16; i++) r.f[i] = (k >> i) & 1 ? s[i] : 0.f;
  return r;
}
// Only lanes whose mask bit is set are written.
inline void _mm512_mask_storeu_ps(void* p, __mmask16 k, __m512 a) {
  float* d = static_cast<float*>(p);
  for (int i = 0; i < 16; i++)
    if ((k >> i) & 1) d[i] = a.f[i];
}
inline __m512 _mm512_mul_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int i = 0; i < 16; i++) r.f[i] = a.f[i] * b.f[i];
  return r;
}
// a * b + c with one rounding.
inline __m512 _mm512_fmadd_ps(__m512 a, __m512 b, __m512 c) {
  __m512 r;
  for (int i = 0; i < 16; i++) r.f[i] = std::fma(a.f[i], b.f[i], c.f[i]);
  return r;
}

// ---- integer vectors --------------------------------------------------------------------------
inline __m512i _mm512_setzero_si512() {
  __m512i r;
  for (int i = 0; i < 16; i++) r.u[i] = 0;
  return r;
}
inline __m512i _mm512_set1_epi32(int x) {
  __m512i r;
  for (int i = 0; i < 16; i++) r.u[i] = (uint32_t)x;
  return r;
}
inline __m512i _mm512_load_si512(const void* p) {
  aj_emu::check_aligned(p, "_mm512_load_si512");
  __m512i r;
  std::memcpy(r.u, p, 64);
  return r;
}
inline void _mm512_storeu_si512(void* p, __m512i a) { std::memcpy(p, a.u, 64); }
inline void _mm512_store_si512(void* p, __m512i a) {
  aj_emu::check_aligned(p, "_mm512_store_si512");
  _mm512_storeu_si512(p, a);
}
inline __m256i _mm256_loadu_si256(const __m256i* p) {
  __m256i r;
  std::memcpy(r.w, p, 32);
  return r;
}
// 16 unsigned 16-bit values zero-extended to 32 bits.
inline __m512i _mm512_cvtepu16_epi32(__m256i a) {
  __m512i r;
  for (int i = 0; i < 16; i++) r.u[i] = a.w[i];
  return r;
}
inline __m512i _mm512_slli_epi32(__m512i a, unsigned int imm) {
  __m512i r;
  for (int i = 0; i < 16; i++) r.u[i] = imm > 31 ? 0 : a.u[i] << imm;
  return r;
}
inline __m512i _mm512_or_si512(__m512i a, __m512i b) {
  __m512i r;
  for (int i = 0; i < 16; i++) r.u[i] = a.u[i] | b.u[i];
  return r;
}
inline __m512 _mm512_castsi512_ps(__m512i a) {
  __m512 r;
  std::memcpy(r.f, a.u, 64);
  return r;
}

// ---- AVX512_BF16 ------------------------------------------------------------------------------
// dst.bf16[i] = bf16(b[i]) for i < 16, bf16(a[i - 16]) for i >= 16.
inline __m512bh _mm512_cvtne2ps_pbh(__m512 a, __m512 b) {
  __m512bh r;
  for (int i = 0; i < 16; i++) {
    r.h[i] = aj_emu::fp32_to_bf16(b.f[i]);
    r.h[i + 16] = aj_emu::fp32_to_bf16(a.f[i]);
  }
  return r;
}
// Per f32 lane i (SDM pseudo-code order): src += a[2i+1] b[2i+1]; src += a[2i] b[2i]. Each step is one
// fused multiply-add rounded to nearest even (the product of two bf16 values is exact in f32); input
// denormals read as zero, denormal results are flushed to zero.
inline __m512 _mm512_dpbf16_ps(__m512 src, __m512bh a, __m512bh b) {
  using namespace aj_emu;
  __m512 r;
  for (int i = 0; i < 16; i++) {
    float acc = src.f[i];
    acc = ftz(std::fma(bf16_to_fp32_daz(a.h[2 * i + 1]), bf16_to_fp32_daz(b.h[2 * i + 1]), acc));
    acc = ftz(std::fma(bf16_to_fp32_daz(a.h[2 * i]), bf16_to_fp32_daz(b.h[2 * i]), acc));
    r.f[i] = acc;
  }
  return r;
}
