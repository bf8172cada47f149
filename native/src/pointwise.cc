// Row-wise and pointwise kernels of a training step, f32: cross-entropy rows, SwiGLU, SiLU, GELU
// (tanh), RMSNorm, RoPE, the AdamW update and the elementwise sum (residuals, gradient accumulation). Contracts: src/kernels/backend.ts; the reference is
// src/kernels/js/pointwise.ts.
//
// Two flavours, chosen at run time: `scalar` (portable C++, std::exp) and, on x86, `avx2` (AVX2+FMA
// intrinsics in functions marked target("avx2,fma"); the build has no -march flag). The avx2 exp is a
// Cephes-style polynomial after a Cody-Waite range reduction (about 1 ulp; see vexp below). Tails
// (n % 8) go through masked loads/stores, so every element of an array takes the same code path.
// Big inputs are split over the thread pool (rows or chunks); small ones run inline.
// AJUSTE_ISA=scalar forces the scalar flavour; pointwiseForceScalar(on) switches it (tests).
//
// AdamW is computed in f64 exactly as the js reference (same operations, same order, no fused
// multiply-adds), so both backends give bit-identical weights and states. This file is compiled with
// floating-point contraction off, so every FMA below is an explicit intrinsic.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "napi_util.h"
#include "threads.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AJ_PW_X86 1
#endif

namespace {

constexpr int IGNORE_INDEX = -100;
constexpr long PAR_MIN = 1L << 15;  // elements below which a kernel runs inline
constexpr float NAN_F = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// Kernel signatures (raw pointers, sizes already checked).
// ---------------------------------------------------------------------------------------------
struct Ops {
  // Cross-entropy of one row; writes softmax - onehot into g when g != nullptr (g may equal x).
  double (*ce_row)(const float* x, int V, int y, float* g);
  void (*swiglu_fwd)(const float* gate, const float* up, float* out, long n);
  void (*swiglu_bwd)(const float* gate, const float* up, const float* dout, float* dg, float* du, long n);
  void (*silu_fwd)(const float* x, float* out, long n);
  void (*silu_bwd)(const float* x, const float* dout, float* dx, long n);
  void (*gelu_fwd)(const float* x, float* out, long n);
  void (*gelu_bwd)(const float* x, const float* dout, float* dx, long n);
  // One row of RMSNorm.
  void (*rms_fwd)(const float* x, const float* w, float* out, float* rstd, int D, float eps);
  // One row of the RMSNorm backward: dx (may be null) and dw += (may be null).
  void (*rms_bwd)(const float* g, const float* x, const float* w, float s, float* dx, float* dw, int D);
  // One head of RoPE.
  void (*rope_head)(const float* x, float* out, const float* c, const float* s, float sign, int D, int half);
  void (*adamw)(float* w, const float* g, float* m, float* v, long n, double b1, double b2, double eps,
                double decay, double stepSize, double bc2);
  void (*exp)(const float* x, float* out, long n);  // test hook
  const char* isa;
};

// ---------------------------------------------------------------------------------------------
// Scalar flavour.
// ---------------------------------------------------------------------------------------------
double ce_row_scalar(const float* x, int V, int y, float* g) {
  float m = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int j = 0; j < V; j++) {
    if (x[j] != x[j]) nan = true;
    m = std::max(m, x[j]);
  }
  const double xy = x[y];
  if (nan || !std::isfinite(m)) {
    if (g) for (int j = 0; j < V; j++) g[j] = NAN_F;
    return std::numeric_limits<double>::quiet_NaN();
  }
  double s = 0;
  if (g) {
    for (int j = 0; j < V; j++) {
      const float e = std::exp(x[j] - m);
      g[j] = e;
      s += e;
    }
    const float inv = (float)(1.0 / s);
    for (int j = 0; j < V; j++) g[j] *= inv;
    g[y] -= 1.f;
  } else {
    for (int j = 0; j < V; j++) s += std::exp(x[j] - m);
  }
  return (double)m + std::log(s) - xy;
}

inline float sigmoid_s(float v) { return 1.f / (1.f + std::exp(-v)); }

void swiglu_fwd_scalar(const float* gate, const float* up, float* out, long n) {
  for (long i = 0; i < n; i++) out[i] = gate[i] * sigmoid_s(gate[i]) * up[i];
}

void swiglu_bwd_scalar(const float* gate, const float* up, const float* dout, float* dg, float* du, long n) {
  for (long i = 0; i < n; i++) {
    const float v = gate[i], s = sigmoid_s(v);
    if (dg) dg[i] = dout[i] * up[i] * (s * (1.f + v * (1.f - s)));
    if (du) du[i] = dout[i] * v * s;
  }
}

void silu_fwd_scalar(const float* x, float* out, long n) {
  for (long i = 0; i < n; i++) out[i] = x[i] * sigmoid_s(x[i]);
}

void silu_bwd_scalar(const float* x, const float* dout, float* dx, long n) {
  for (long i = 0; i < n; i++) {
    const float v = x[i], s = sigmoid_s(v);
    dx[i] = dout[i] * (s * (1.f + v * (1.f - s)));
  }
}

constexpr float GELU_C = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float GELU_A = 0.044715f;

// gelu(v) = 0.5 v (1 + tanh u) = v * sigmoid(2u), which has no cancellation for negative v.
void gelu_fwd_scalar(const float* x, float* out, long n) {
  for (long i = 0; i < n; i++) {
    const float v = x[i], u = GELU_C * (v + GELU_A * v * v * v);
    out[i] = v * sigmoid_s(2.f * u);
  }
}

// gelu'(v) = 0.5 (1 + t) + 0.5 v (1 - t^2) c (1 + 3a v^2), with 1 + t = 2 sg, 1 - t^2 = 4 sg (1 - sg).
void gelu_bwd_scalar(const float* x, const float* dout, float* dx, long n) {
  for (long i = 0; i < n; i++) {
    const float v = x[i], u = GELU_C * (v + GELU_A * v * v * v);
    const float sg = sigmoid_s(2.f * u);
    dx[i] = dout[i] * (sg + 2.f * v * sg * (1.f - sg) * GELU_C * (1.f + 3.f * GELU_A * v * v));
  }
}

void rms_fwd_scalar(const float* x, const float* w, float* out, float* rstd, int D, float eps) {
  double ss = 0;
  for (int j = 0; j < D; j++) ss += (double)x[j] * x[j];
  const float s = (float)(1.0 / std::sqrt(ss / D + eps));
  *rstd = s;
  for (int j = 0; j < D; j++) out[j] = x[j] * s * w[j];
}

void rms_bwd_scalar(const float* g, const float* x, const float* w, float s, float* dx, float* dw, int D) {
  double dot = 0;
  for (int j = 0; j < D; j++) dot += (double)g[j] * w[j] * x[j];
  const float k = (float)(dot * s / D);
  for (int j = 0; j < D; j++) {
    const float xhat = x[j] * s;
    if (dx) dx[j] = s * (g[j] * w[j] - xhat * k);
    if (dw) dw[j] += g[j] * xhat;
  }
}

void rope_head_scalar(const float* x, float* out, const float* c, const float* s, float sign, int D, int half) {
  for (int i = 0; i < half; i++) {
    const float ci = c[i], si = sign * s[i], a = x[i], b = x[i + half];
    out[i] = a * ci - b * si;
    out[i + half] = b * ci + a * si;
  }
  if (out != x)
    for (int j = 2 * half; j < D; j++) out[j] = x[j];
}

// noinline: keeps it out of the avx2 function that finishes its tail with it (same f64 operations).
__attribute__((noinline)) void adamw_scalar(float* w, const float* g, float* m, float* v, long n, double b1, double b2,
                                            double eps, double decay, double stepSize, double bc2) {
  const double c1 = 1 - b1, c2 = 1 - b2;
  for (long i = 0; i < n; i++) {
    const double gi = g[i];
    const double mi = b1 * (double)m[i] + c1 * gi;
    const double vi = b2 * (double)v[i] + c2 * gi * gi;
    m[i] = (float)mi;
    v[i] = (float)vi;
    w[i] = (float)((double)w[i] * decay - (stepSize * mi) / (std::sqrt(vi) / bc2 + eps));
  }
}

void exp_scalar(const float* x, float* out, long n) {
  for (long i = 0; i < n; i++) out[i] = std::exp(x[i]);
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA flavour.
// ---------------------------------------------------------------------------------------------
#ifdef AJ_PW_X86
#define AJ_AVX2 __attribute__((target("avx2,fma")))

// exp(x) for 8 floats, about 1 ulp over the normal range. x = n ln2 + r with |r| <= ln2/2 (Cody-Waite,
// ln2 split in a 9-bit head and a tail), exp(r) by the Cephes degree-6 polynomial, and 2^n applied as
// two factors 2^(n>>1) * 2^(n - (n>>1)) so that n in [-150, 128] needs no special case (results down
// to the subnormals, up to FLT_MAX). x > 88.7228 gives +inf, x < -103.98 gives 0, NaN stays NaN.
AJ_AVX2 inline __m256 vexp(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.72283935546875f), lo = _mm256_set1_ps(-103.972076416015625f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(std::numeric_limits<float>::infinity()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

AJ_AVX2 inline __m256 vsigmoid(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.f);
  return _mm256_div_ps(one, _mm256_add_ps(one, vexp(_mm256_sub_ps(_mm256_setzero_ps(), v))));
}

// Lane mask for the last n % 8 elements.
AJ_AVX2 inline __m256i tail_mask(long rem) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), idx);
}

AJ_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AJ_AVX2 inline double hsum_pd(__m256 v) {
  const __m256d a = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

AJ_AVX2 inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 8 lanes at p[i..i+8) of an array of n elements: plain loads/stores, or masked ones (zeros read
// beyond the end, nothing written there) for the last n % 8 elements.
struct Lanes {
  __m256i mk;
  bool full;
  AJ_AVX2 explicit Lanes(long rem) : mk(tail_mask(rem)), full(rem >= 8) {}
  AJ_AVX2 __m256 ld(const float* p) const { return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mk); }
  AJ_AVX2 void st(float* p, __m256 v) const {
    if (full) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, mk, v);
  }
};

AJ_AVX2 double ce_row_avx2(const float* x, int V, int y, float* g) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 mx = ninf, bad = _mm256_setzero_ps();
  long j = 0;
  for (; j + 8 <= V; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    mx = _mm256_max_ps(mx, v);
  }
  if (j < V) {
    const __m256i mk = tail_mask(V - j);
    const __m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + j, mk), _mm256_castsi256_ps(mk));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    mx = _mm256_max_ps(mx, v);
  }
  const float m = hmax(mx);
  const double xy = x[y];
  if (_mm256_movemask_ps(bad) || !std::isfinite(m)) {
    if (g) for (int k = 0; k < V; k++) g[k] = NAN_F;
    return std::numeric_limits<double>::quiet_NaN();
  }
  const __m256 mv = _mm256_set1_ps(m);
  // exp(x - m), summed in f32 lanes folded into f64 every 64 elements.
  double s = 0;
  __m256 acc = _mm256_setzero_ps();
  int fold = 0;
  j = 0;
  for (; j + 8 <= V; j += 8) {
    const __m256 e = vexp(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    if (g) _mm256_storeu_ps(g + j, e);
    acc = _mm256_add_ps(acc, e);
    if (++fold == 8) {
      s += hsum_pd(acc);
      acc = _mm256_setzero_ps();
      fold = 0;
    }
  }
  if (j < V) {
    const __m256i mk = tail_mask(V - j);
    __m256 e = vexp(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), mv));
    e = _mm256_and_ps(e, _mm256_castsi256_ps(mk));
    if (g) _mm256_maskstore_ps(g + j, mk, e);
    acc = _mm256_add_ps(acc, e);
  }
  s += hsum_pd(acc);
  if (g) {
    const __m256 inv = _mm256_set1_ps((float)(1.0 / s));
    j = 0;
    for (; j + 8 <= V; j += 8) _mm256_storeu_ps(g + j, _mm256_mul_ps(_mm256_loadu_ps(g + j), inv));
    if (j < V) {
      const __m256i mk = tail_mask(V - j);
      _mm256_maskstore_ps(g + j, mk, _mm256_mul_ps(_mm256_maskload_ps(g + j, mk), inv));
    }
    g[y] -= 1.f;
  }
  return (double)m + std::log(s) - xy;
}

AJ_AVX2 void swiglu_fwd_avx2(const float* gate, const float* up, float* out, long n) {
  for (long i = 0; i < n; i += 8) {
    const Lanes L(n - i);
    const __m256 v = L.ld(gate + i);
    L.st(out + i, _mm256_mul_ps(_mm256_mul_ps(v, vsigmoid(v)), L.ld(up + i)));
  }
}

// silu'(v) = s (1 + v (1 - s))
AJ_AVX2 inline __m256 dsilu(__m256 v, __m256 s) {
  const __m256 one = _mm256_set1_ps(1.f);
  return _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
}

AJ_AVX2 void swiglu_bwd_avx2(const float* gate, const float* up, const float* dout, float* dg, float* du, long n) {
  for (long i = 0; i < n; i += 8) {
    const Lanes L(n - i);
    const __m256 v = L.ld(gate + i), s = vsigmoid(v), d = L.ld(dout + i);
    if (dg) L.st(dg + i, _mm256_mul_ps(_mm256_mul_ps(d, L.ld(up + i)), dsilu(v, s)));
    if (du) L.st(du + i, _mm256_mul_ps(_mm256_mul_ps(d, v), s));
  }
}

AJ_AVX2 void silu_fwd_avx2(const float* x, float* out, long n) {
  for (long i = 0; i < n; i += 8) {
    const Lanes L(n - i);
    const __m256 v = L.ld(x + i);
    L.st(out + i, _mm256_mul_ps(v, vsigmoid(v)));
  }
}

AJ_AVX2 void silu_bwd_avx2(const float* x, const float* dout, float* dx, long n) {
  for (long i = 0; i < n; i += 8) {
    const Lanes L(n - i);
    const __m256 v = L.ld(x + i);
    L.st(dx + i, _mm256_mul_ps(L.ld(dout + i), dsilu(v, vsigmoid(v))));
  }
}

// sigmoid(2u), u = c (v + a v^3)
AJ_AVX2 inline __m256 gelu_sg(__m256 v) {
  const __m256 v2 = _mm256_mul_ps(v, v);
  const __m256 u = _mm256_mul_ps(_mm256_set1_ps(GELU_C), _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_A), v2), v, v));
  return vsigmoid(_mm256_add_ps(u, u));
}

AJ_AVX2 inline __m256 dgelu(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 sg = gelu_sg(v);
  const __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(3.f * GELU_A), _mm256_mul_ps(v, v), one);
  const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(v, v), sg), _mm256_sub_ps(one, sg)),
                                 _mm256_mul_ps(_mm256_set1_ps(GELU_C), poly));
  return _mm256_add_ps(sg, t);
}

AJ_AVX2 void gelu_fwd_avx2(const float* x, float* out, long n) {
  for (long i = 0; i < n; i += 8) {
    const Lanes L(n - i);
    const __m256 v = L.ld(x + i);
    L.st(out + i, _mm256_mul_ps(v, gelu_sg(v)));
  }
}

AJ_AVX2 void gelu_bwd_avx2(const float* x, const float* dout, float* dx, long n) {
  for (long i = 0; i < n; i += 8) {
    const Lanes L(n - i);
    L.st(dx + i, _mm256_mul_ps(L.ld(dout + i), dgelu(L.ld(x + i))));
  }
}

AJ_AVX2 void rms_fwd_avx2(const float* x, const float* w, float* out, float* rstd, int D, float eps) {
  __m256 acc = _mm256_setzero_ps();
  double ss = 0;
  int fold = 0;
  for (long i = 0; i < D; i += 8) {
    const Lanes L(D - i);
    const __m256 v = L.ld(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
    if (++fold == 16) {
      ss += hsum_pd(acc);
      acc = _mm256_setzero_ps();
      fold = 0;
    }
  }
  ss += hsum_pd(acc);
  const float s = (float)(1.0 / std::sqrt(ss / D + eps));
  *rstd = s;
  const __m256 sv = _mm256_set1_ps(s);
  for (long i = 0; i < D; i += 8) {
    const Lanes L(D - i);
    L.st(out + i, _mm256_mul_ps(_mm256_mul_ps(L.ld(x + i), sv), L.ld(w + i)));
  }
}

AJ_AVX2 void rms_bwd_avx2(const float* g, const float* x, const float* w, float s, float* dx, float* dw, int D) {
  __m256 acc = _mm256_setzero_ps();
  double dot = 0;
  int fold = 0;
  for (long i = 0; i < D; i += 8) {
    const Lanes L(D - i);
    acc = _mm256_fmadd_ps(_mm256_mul_ps(L.ld(g + i), L.ld(w + i)), L.ld(x + i), acc);
    if (++fold == 16) {
      dot += hsum_pd(acc);
      acc = _mm256_setzero_ps();
      fold = 0;
    }
  }
  dot += hsum_pd(acc);
  const __m256 sv = _mm256_set1_ps(s), kv = _mm256_set1_ps((float)(dot * s / D));
  for (long i = 0; i < D; i += 8) {
    const Lanes L(D - i);
    const __m256 gv = L.ld(g + i), xh = _mm256_mul_ps(L.ld(x + i), sv);
    if (dx) L.st(dx + i, _mm256_mul_ps(sv, _mm256_fnmadd_ps(xh, kv, _mm256_mul_ps(gv, L.ld(w + i)))));
    if (dw) L.st(dw + i, _mm256_fmadd_ps(gv, xh, L.ld(dw + i)));
  }
}

AJ_AVX2 void rope_head_avx2(const float* x, float* out, const float* c, const float* s, float sign, int D, int half) {
  const __m256 sg = _mm256_set1_ps(sign);
  for (long i = 0; i < half; i += 8) {
    const Lanes L(half - i);
    const __m256 cv = L.ld(c + i), sv = _mm256_mul_ps(sg, L.ld(s + i));
    const __m256 a = L.ld(x + i), b = L.ld(x + i + half);
    L.st(out + i, _mm256_fmsub_ps(a, cv, _mm256_mul_ps(b, sv)));
    L.st(out + i + half, _mm256_fmadd_ps(b, cv, _mm256_mul_ps(a, sv)));
  }
  if (out != x && D > 2 * half) std::memcpy(out + 2 * half, x + 2 * half, sizeof(float) * (D - 2 * half));
}

// f64 lanes, the same operations in the same order as adamw_scalar (no FMAs), so the results are identical.
AJ_AVX2 void adamw_avx2(float* w, const float* g, float* m, float* v, long n, double b1, double b2, double eps,
                        double decay, double stepSize, double bc2) {
  const __m256d B1 = _mm256_set1_pd(b1), B2 = _mm256_set1_pd(b2), C1 = _mm256_set1_pd(1 - b1), C2 = _mm256_set1_pd(1 - b2);
  const __m256d E = _mm256_set1_pd(eps), DEC = _mm256_set1_pd(decay), SS = _mm256_set1_pd(stepSize), BC2 = _mm256_set1_pd(bc2);
  long i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d gi = _mm256_cvtps_pd(_mm_loadu_ps(g + i));
    const __m256d mi = _mm256_add_pd(_mm256_mul_pd(B1, _mm256_cvtps_pd(_mm_loadu_ps(m + i))), _mm256_mul_pd(C1, gi));
    const __m256d vi = _mm256_add_pd(_mm256_mul_pd(B2, _mm256_cvtps_pd(_mm_loadu_ps(v + i))), _mm256_mul_pd(_mm256_mul_pd(C2, gi), gi));
    _mm_storeu_ps(m + i, _mm256_cvtpd_ps(mi));
    _mm_storeu_ps(v + i, _mm256_cvtpd_ps(vi));
    const __m256d den = _mm256_add_pd(_mm256_div_pd(_mm256_sqrt_pd(vi), BC2), E);
    const __m256d wi = _mm256_sub_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(w + i)), DEC), _mm256_div_pd(_mm256_mul_pd(SS, mi), den));
    _mm_storeu_ps(w + i, _mm256_cvtpd_ps(wi));
  }
  if (i < n) adamw_scalar(w + i, g + i, m + i, v + i, n - i, b1, b2, eps, decay, stepSize, bc2);
}

AJ_AVX2 void exp_avx2(const float* x, float* out, long n) {
  for (long i = 0; i < n; i += 8) {
    const Lanes L(n - i);
    L.st(out + i, vexp(L.ld(x + i)));
  }
}
#endif

const Ops SCALAR{ce_row_scalar, swiglu_fwd_scalar, swiglu_bwd_scalar, silu_fwd_scalar, silu_bwd_scalar, gelu_fwd_scalar,
                 gelu_bwd_scalar, rms_fwd_scalar, rms_bwd_scalar, rope_head_scalar, adamw_scalar, exp_scalar, "scalar"};

const Ops& best_ops() {
  static const Ops o = [] {
    Ops r = SCALAR;
#ifdef AJ_PW_X86
    if (ajuste::cpu_avx2_fma())
      r = {ce_row_avx2, swiglu_fwd_avx2, swiglu_bwd_avx2, silu_fwd_avx2, silu_bwd_avx2, gelu_fwd_avx2,
           gelu_bwd_avx2, rms_fwd_avx2, rms_bwd_avx2, rope_head_avx2, adamw_avx2, exp_avx2, "avx2"};
#endif
    return r;
  }();
  return o;
}

bool force_scalar = false;
const Ops& ops() { return force_scalar ? SCALAR : best_ops(); }

// Runs fn(begin, end) over [0, n) on the pool when work (elements touched) is big enough.
template <class F>
void split(long n, long work, long grain, F&& fn) {
  if (work < PAR_MIN || n <= grain) {
    fn(0L, n, 0);
    return;
  }
  ajuste::ThreadPool::get().parallel_for(n, [&](long b, long e, int t) { fn(b, e, t); }, grain);
}

// ---------------------------------------------------------------------------------------------
// N-API bindings with argument checks.
// ---------------------------------------------------------------------------------------------
struct ArgError {
  std::string msg;
};

std::string S(double d) {
  if (d == std::floor(d) && std::fabs(d) < 1e15) return std::to_string((long long)d);
  return std::to_string(d);
}

void arity(const Napi::CallbackInfo& info, const char* fn, size_t n) {
  if (info.Length() < n)
    throw ArgError{std::string(fn) + ": expected " + std::to_string(n) + " arguments, got " + std::to_string(info.Length())};
}

// A Float32Array with at least `need` elements; nullptr for null/undefined when nullable.
float* f32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, size_t need, bool nullable = false) {
  const Napi::Value v = info[i];
  if (nullable && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw ArgError{std::string(fn) + ": argument " + std::to_string(i + 1) + " (" + name + ") must be a Float32Array" +
                   (nullable ? " or null" : "")};
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  if (a.ElementLength() < need)
    throw ArgError{std::string(fn) + ": " + name + " has " + std::to_string(a.ElementLength()) + " elements, needs " +
                   std::to_string(need)};
  return a.Data();
}

const int32_t* i32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, size_t need) {
  const Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw ArgError{std::string(fn) + ": argument " + std::to_string(i + 1) + " (" + name + ") must be an Int32Array"};
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  if (a.ElementLength() < need)
    throw ArgError{std::string(fn) + ": " + name + " has " + std::to_string(a.ElementLength()) + " elements, needs " +
                   std::to_string(need)};
  return a.Data();
}

double num(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsNumber()) throw ArgError{std::string(fn) + ": " + name + " must be a number"};
  return v.As<Napi::Number>().DoubleValue();
}

// A non-negative integer (<= max).
long count(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, double max = 9007199254740991.0) {
  const double d = num(info, i, fn, name);
  if (!(d >= 0 && d <= max) || d != std::floor(d))
    throw ArgError{std::string(fn) + ": " + name + " must be a non-negative integer" +
                   (max < 1e15 ? " up to " + S(max) : std::string()) + ", got " + S(d)};
  return (long)d;
}

constexpr double INT_MAX_D = 2147483647.0;

// The product of sizes as size_t, refusing overflow past 2^53.
size_t prod(const char* fn, std::initializer_list<long> xs) {
  double p = 1;
  size_t r = 1;
  for (long x : xs) {
    p *= (double)x;
    r *= (size_t)x;
  }
  if (p > 9007199254740991.0) throw ArgError{std::string(fn) + ": sizes are too large"};
  return r;
}

template <class F>
Napi::Value guarded(const Napi::CallbackInfo& info, const char* fn, F&& body) {
  Napi::Env env = info.Env();
  try {
    return body(env);
  } catch (const ArgError& e) {
    Napi::TypeError::New(env, e.msg).ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string(fn) + ": " + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value CrossEntropyRows(const Napi::CallbackInfo& info) {
  const char* fn = "crossEntropyRows";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 6);
    const long off = count(info, 2, fn, "labelOffset");
    const long rows = count(info, 3, fn, "rows");
    const long V = count(info, 4, fn, "V", INT_MAX_D);
    if (V < 1) throw ArgError{std::string(fn) + ": V must be a positive integer, got 0"};
    const size_t n = prod(fn, {rows, V});
    const float* x = f32(info, 0, fn, "logits", n);
    const int32_t* labels = i32(info, 1, fn, "labels", (size_t)(off + rows));
    float* g = f32(info, 5, fn, "grad", n, true);
    double* row_loss = nullptr;  // optional 7th argument: each row's loss (0 for ignored rows)
    if (info.Length() > 6 && !info[6].IsNull() && !info[6].IsUndefined()) {
      const Napi::Value v = info[6];
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
        throw ArgError{std::string(fn) + ": argument 7 (rowLoss) must be a Float64Array, null or absent"};
      Napi::Float64Array a = v.As<Napi::Float64Array>();
      if (a.ElementLength() < (size_t)rows)
        throw ArgError{std::string(fn) + ": rowLoss has " + std::to_string(a.ElementLength()) + " elements, needs " +
                       std::to_string(rows)};
      row_loss = a.Data();
    }
    for (long r = 0; r < rows; r++) {
      const int32_t y = labels[off + r];
      if (y != IGNORE_INDEX && (y < 0 || y >= V)) {
        Napi::Error::New(env, "cross-entropy: label " + std::to_string(y) + " at position " + std::to_string(off + r) +
                                  " is outside the vocabulary (size " + std::to_string(V) + ")")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    const Ops& o = ops();
    std::vector<double> loss((size_t)rows, 0.0);
    split(rows, (long)n, 1, [&](long b, long e, int) {
      for (long r = b; r < e; r++) {
        const int32_t y = labels[off + r];
        float* gr = g ? g + (size_t)r * V : nullptr;
        if (y == IGNORE_INDEX) {
          if (gr) std::memset(gr, 0, sizeof(float) * V);
          continue;
        }
        loss[(size_t)r] = o.ce_row(x + (size_t)r * V, (int)V, y, gr);
      }
    });
    double total = 0;
    for (double l : loss) total += l;
    if (row_loss) std::memcpy(row_loss, loss.data(), sizeof(double) * rows);
    return Napi::Number::New(env, total);
  });
}

// Elementwise kernels: chunks of 1024 elements over the pool.
template <class F>
void chunked(long n, F&& fn) {
  split(n, n, 1024, [&](long b, long e, int) { fn(b, e - b); });
}

Napi::Value SwigluFwd(const Napi::CallbackInfo& info) {
  const char* fn = "swigluFwd";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 4);
    const long n = count(info, 3, fn, "n");
    const float* gate = f32(info, 0, fn, "gate", n);
    const float* up = f32(info, 1, fn, "up", n);
    float* out = f32(info, 2, fn, "out", n);
    const Ops& o = ops();
    chunked(n, [&](long b, long k) { o.swiglu_fwd(gate + b, up + b, out + b, k); });
    return env.Undefined();
  });
}

Napi::Value SwigluBwd(const Napi::CallbackInfo& info) {
  const char* fn = "swigluBwd";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 6);
    const long n = count(info, 5, fn, "n");
    const float* gate = f32(info, 0, fn, "gate", n);
    const float* up = f32(info, 1, fn, "up", n);
    const float* dout = f32(info, 2, fn, "dout", n);
    float* dg = f32(info, 3, fn, "dgate", n, true);
    float* du = f32(info, 4, fn, "dup", n, true);
    if (!dg && !du) return env.Undefined();
    const Ops& o = ops();
    chunked(n, [&](long b, long k) { o.swiglu_bwd(gate + b, up + b, dout + b, dg ? dg + b : nullptr, du ? du + b : nullptr, k); });
    return env.Undefined();
  });
}

template <bool Silu>
Napi::Value ActFwd(const Napi::CallbackInfo& info) {
  const char* fn = Silu ? "siluFwd" : "geluTanhFwd";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 3);
    const long n = count(info, 2, fn, "n");
    const float* x = f32(info, 0, fn, "x", n);
    float* out = f32(info, 1, fn, "out", n);
    const Ops& o = ops();
    chunked(n, [&](long b, long k) { (Silu ? o.silu_fwd : o.gelu_fwd)(x + b, out + b, k); });
    return env.Undefined();
  });
}

template <bool Silu>
Napi::Value ActBwd(const Napi::CallbackInfo& info) {
  const char* fn = Silu ? "siluBwd" : "geluTanhBwd";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 4);
    const long n = count(info, 3, fn, "n");
    const float* x = f32(info, 0, fn, "x", n);
    const float* dout = f32(info, 1, fn, "dout", n);
    float* dx = f32(info, 2, fn, "dx", n);
    const Ops& o = ops();
    chunked(n, [&](long b, long k) { (Silu ? o.silu_bwd : o.gelu_bwd)(x + b, dout + b, dx + b, k); });
    return env.Undefined();
  });
}

Napi::Value RmsNormFwd(const Napi::CallbackInfo& info) {
  const char* fn = "rmsNormFwd";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 7);
    const long rows = count(info, 4, fn, "rows");
    const long D = count(info, 5, fn, "D", INT_MAX_D);
    const double eps = num(info, 6, fn, "eps");
    const size_t n = prod(fn, {rows, D});
    const float* x = f32(info, 0, fn, "x", n);
    const float* w = f32(info, 1, fn, "w", D);
    float* out = f32(info, 2, fn, "out", n);
    float* rstd = f32(info, 3, fn, "rstd", rows);
    const Ops& o = ops();
    split(rows, (long)n, 1, [&](long b, long e, int) {
      for (long r = b; r < e; r++) o.rms_fwd(x + (size_t)r * D, w, out + (size_t)r * D, rstd + r, (int)D, (float)eps);
    });
    return env.Undefined();
  });
}

Napi::Value RmsNormBwd(const Napi::CallbackInfo& info) {
  const char* fn = "rmsNormBwd";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 8);
    const long rows = count(info, 6, fn, "rows");
    const long D = count(info, 7, fn, "D", INT_MAX_D);
    const size_t n = prod(fn, {rows, D});
    const float* g = f32(info, 0, fn, "dout", n);
    const float* x = f32(info, 1, fn, "x", n);
    const float* w = f32(info, 2, fn, "w", D);
    const float* rstd = f32(info, 3, fn, "rstd", rows);
    float* dx = f32(info, 4, fn, "dx", n, true);
    float* dw = f32(info, 5, fn, "dw", D, true);
    if (dw) std::memset(dw, 0, sizeof(float) * D);
    if (!dx && !dw) return env.Undefined();
    const Ops& o = ops();
    // Each worker sums its rows' dw into its own partial; the partials are added in worker order.
    const int workers = ajuste::ThreadPool::get().size();
    std::vector<float> part(dw ? (size_t)workers * D : 0, 0.f);
    std::vector<char> used((size_t)workers, 0);
    split(rows, (long)n, 1, [&](long b, long e, int t) {
      float* pw = dw ? part.data() + (size_t)t * D : nullptr;
      used[(size_t)t] = 1;
      for (long r = b; r < e; r++)
        o.rms_bwd(g + (size_t)r * D, x + (size_t)r * D, w, rstd[r], dx ? dx + (size_t)r * D : nullptr, pw, (int)D);
    });
    if (dw)
      for (int t = 0; t < workers; t++)
        if (used[(size_t)t])
          for (long j = 0; j < D; j++) dw[j] += part[(size_t)t * D + j];
    return env.Undefined();
  });
}

Napi::Value RopeApply(const Napi::CallbackInfo& info) {
  const char* fn = "ropeApply";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 10);
    const long tokens = count(info, 5, fn, "tokens");
    const long heads = count(info, 6, fn, "heads", INT_MAX_D);
    const long D = count(info, 7, fn, "D", INT_MAX_D);
    const long half = count(info, 8, fn, "half", INT_MAX_D);
    const double sign = num(info, 9, fn, "sign");
    if (2 * half > D) throw ArgError{"rope: rotary dim " + std::to_string(2 * half) + " exceeds head dim " + std::to_string(D)};
    const size_t n = prod(fn, {tokens, heads, D});
    const float* x = f32(info, 0, fn, "x", n);
    float* out = f32(info, 1, fn, "out", n);
    const int32_t* pos = i32(info, 2, fn, "positions", tokens);
    const float* cs = f32(info, 3, fn, "cos", 0);
    const float* sn = f32(info, 4, fn, "sin", 0);
    const size_t tl = info[3].As<Napi::Float32Array>().ElementLength();
    if (info[4].As<Napi::Float32Array>().ElementLength() != tl)
      throw ArgError{std::string(fn) + ": cos has " + std::to_string(tl) + " elements but sin has " +
                     std::to_string(info[4].As<Napi::Float32Array>().ElementLength())};
    const long maxPos = half > 0 ? (long)(tl / half) : std::numeric_limits<long>::max();
    for (long t = 0; t < tokens; t++) {
      if (pos[t] < 0 || pos[t] >= maxPos) {
        Napi::Error::New(env, "rope: position " + std::to_string(pos[t]) + " is outside the table (max " +
                                  std::to_string(maxPos - 1) + ")")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    const Ops& o = ops();
    split(tokens, (long)n, 1, [&](long b, long e, int) {
      for (long t = b; t < e; t++) {
        const size_t c0 = (size_t)pos[t] * half;
        for (long h = 0; h < heads; h++) {
          const size_t off = ((size_t)t * heads + h) * D;
          o.rope_head(x + off, out + off, cs + c0, sn + c0, (float)sign, (int)D, (int)half);
        }
      }
    });
    return env.Undefined();
  });
}

Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  const char* fn = "adamwStep";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 12);
    const long n = count(info, 4, fn, "n");
    float* w = f32(info, 0, fn, "w", n);
    const float* g = f32(info, 1, fn, "g", n);
    float* m = f32(info, 2, fn, "m", n);
    float* v = f32(info, 3, fn, "v", n);
    const double lr = num(info, 5, fn, "lr"), b1 = num(info, 6, fn, "beta1"), b2 = num(info, 7, fn, "beta2");
    const double eps = num(info, 8, fn, "eps"), wd = num(info, 9, fn, "weightDecay");
    const double bc1 = num(info, 10, fn, "bc1"), bc2 = num(info, 11, fn, "bc2");
    const double decay = 1 - lr * wd, stepSize = lr / bc1;
    const Ops& o = ops();
    split(n, n, 4096, [&](long b, long e, int) { o.adamw(w + b, g + b, m + b, v + b, e - b, b1, b2, eps, decay, stepSize, bc2); });
    return env.Undefined();
  });
}

// out = a + b (out may alias a or b). A plain loop: the compiler vectorises it, and it is memory-bound.
Napi::Value AddVec(const Napi::CallbackInfo& info) {
  const char* fn = "addVec";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 4);
    const long n = count(info, 3, fn, "n");
    const float* a = f32(info, 0, fn, "a", n);
    const float* b = f32(info, 1, fn, "b", n);
    float* out = f32(info, 2, fn, "out", n);
    chunked(n, [&](long s, long k) {
      for (long i = s; i < s + k; i++) out[i] = a[i] + b[i];
    });
    return env.Undefined();
  });
}

// Test hook: out[i] = exp(x[i]) through the active flavour's exp.
Napi::Value PointwiseExp(const Napi::CallbackInfo& info) {
  const char* fn = "pointwiseExp";
  return guarded(info, fn, [&](Napi::Env env) -> Napi::Value {
    arity(info, fn, 2);
    const float* x = f32(info, 0, fn, "x", 0);
    const size_t n = info[0].As<Napi::Float32Array>().ElementLength();
    float* out = f32(info, 1, fn, "out", n);
    ops().exp(x, out, (long)n);
    return env.Undefined();
  });
}

Napi::Value ForceScalar(const Napi::CallbackInfo& info) {
  force_scalar = info.Length() > 0 && info[0].ToBoolean().Value();
  return Napi::String::New(info.Env(), ops().isa);
}

}  // namespace

void RegisterPointwise(Napi::Env env, Napi::Object exports) {
  exports.Set("crossEntropyRows", Napi::Function::New(env, CrossEntropyRows, "crossEntropyRows"));
  exports.Set("swigluFwd", Napi::Function::New(env, SwigluFwd, "swigluFwd"));
  exports.Set("swigluBwd", Napi::Function::New(env, SwigluBwd, "swigluBwd"));
  exports.Set("siluFwd", Napi::Function::New(env, ActFwd<true>, "siluFwd"));
  exports.Set("siluBwd", Napi::Function::New(env, ActBwd<true>, "siluBwd"));
  exports.Set("geluTanhFwd", Napi::Function::New(env, ActFwd<false>, "geluTanhFwd"));
  exports.Set("geluTanhBwd", Napi::Function::New(env, ActBwd<false>, "geluTanhBwd"));
  exports.Set("rmsNormFwd", Napi::Function::New(env, RmsNormFwd, "rmsNormFwd"));
  exports.Set("rmsNormBwd", Napi::Function::New(env, RmsNormBwd, "rmsNormBwd"));
  exports.Set("ropeApply", Napi::Function::New(env, RopeApply, "ropeApply"));
  exports.Set("adamwStep", Napi::Function::New(env, AdamwStep, "adamwStep"));
  exports.Set("addVec", Napi::Function::New(env, AddVec, "addVec"));
  exports.Set("pointwiseExp", Napi::Function::New(env, PointwiseExp, "pointwiseExp"));
  exports.Set("pointwiseForceScalar", Napi::Function::New(env, ForceScalar, "pointwiseForceScalar"));
  exports.Set("pointwiseIsa", Napi::String::New(env, best_ops().isa));
}
