// attentionDecode(q, keys, values, out, start, n, H, Hkv, D, scale): attention of n new query rows over a KV
// cache (incremental decoding, batch 1), grouped-query. Contract in src/kernels/backend.ts, reference in
// src/kernels/js/attention.ts. q and out are [n, H, D]; keys and values [capacity, Hkv, D] hold the
// start + n tokens so far (the new ones included); query row i sits at position start + i and sees keys
// 0 .. start + i. Head h reads kv head floor(h / (H / Hkv)).
//
// One (row, head) pair is a dot product per key, a softmax and a weighted sum of values: a few hundred
// kilobytes of cache at most, so pairs are split over the threads only when there is enough work to pay
// for waking them. Scores are f32 (max subtracted before exp), the sums f32.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "napi_util.h"
#include "threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AJ_DA_X86 1
#endif

namespace {
using ajuste::array_arg;
using ajuste::ArgError;
using ajuste::int_arg;

bool use_avx2() { return ajuste::cpu_avx2_fma(); }

struct Shape {
  long start, n, H, Hkv, D;
  float scale;
};

float dot_scalar(const float* a, const float* b, long D) {
  float s = 0.f;
  for (long d = 0; d < D; d++) s += a[d] * b[d];
  return s;
}
void axpy_scalar(float p, const float* x, float* y, long D) {
  for (long d = 0; d < D; d++) y[d] += p * x[d];
}

#ifdef AJ_DA_X86
#define AJ_AVX2 __attribute__((target("avx2,fma")))
AJ_AVX2 float dot_avx2(const float* a, const float* b, long D) {
  __m256 acc = _mm256_setzero_ps();
  long d = 0;
  for (; d + 8 <= D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; d < D; d++) r += a[d] * b[d];
  return r;
}
AJ_AVX2 void axpy_avx2(float p, const float* x, float* y, long D) {
  const __m256 vp = _mm256_set1_ps(p);
  long d = 0;
  for (; d + 8 <= D; d += 8) _mm256_storeu_ps(y + d, _mm256_fmadd_ps(vp, _mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d)));
  for (; d < D; d++) y[d] += p * x[d];
}
#endif

bool force_scalar = false;

// Pairs [p0, p1) of (row i, head h), p = i * H + h; scores is scratch of start + n floats.
void decode_pairs(const Shape& s, const float* q, const float* K, const float* V, float* out, long p0, long p1,
                  float* scores) {
  const bool simd = use_avx2() && !force_scalar;
  auto dot = [&](const float* a, const float* b) {
#ifdef AJ_DA_X86
    if (simd) return dot_avx2(a, b, s.D);
#endif
    return dot_scalar(a, b, s.D);
  };
  auto axpy = [&](float p, const float* x, float* y) {
#ifdef AJ_DA_X86
    if (simd) return axpy_avx2(p, x, y, s.D);
#endif
    axpy_scalar(p, x, y, s.D);
  };
  const long group = s.H / s.Hkv, kvStride = s.Hkv * s.D;
  for (long p = p0; p < p1; p++) {
    const long i = p / s.H, h = p % s.H, kh = h / group, len = s.start + i + 1;
    const float* qr = q + p * s.D;
    const float* k = K + kh * s.D;
    const float* v = V + kh * s.D;
    float m = -INFINITY;
    for (long t = 0; t < len; t++) {
      scores[t] = dot(qr, k + t * kvStride) * s.scale;
      m = std::max(m, scores[t]);
    }
    float sum = 0.f;
    for (long t = 0; t < len; t++) sum += scores[t] = std::exp(scores[t] - m);
    float* o = out + p * s.D;
    std::fill(o, o + s.D, 0.f);
    for (long t = 0; t < len; t++) axpy(scores[t], v + t * kvStride, o);
    const float inv = 1.f / sum;
    for (long d = 0; d < s.D; d++) o[d] *= inv;
  }
}

// Below this many multiply-adds (over all pairs) one thread does everything.
constexpr double kParallelMacs = 1 << 18;

void decode(const Shape& s, const float* q, const float* K, const float* V, float* out) {
  const long pairs = s.n * s.H, keys = s.start + s.n;
  auto range = [&](long b, long e, int) {
    std::vector<float> scores((size_t)keys);
    decode_pairs(s, q, K, V, out, b, e, scores.data());
  };
  if (2.0 * pairs * keys * s.D >= kParallelMacs) ajuste::ThreadPool::get().parallel_for(pairs, range);
  else range(0, pairs, 0);
}

// ---------------------------------------------------------------------------------------------
// N-API: attentionDecode(q, keys, values, out, start, n, H, Hkv, D, scale)
// ---------------------------------------------------------------------------------------------
Napi::Value AttentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "attentionDecode";
  try {
    if (info.Length() < 10)
      throw ArgError{"attentionDecode: expected 10 arguments (q, keys, values, out, start, n, H, Hkv, D, scale), got " +
                     std::to_string(info.Length())};
    Shape s{};
    s.start = int_arg(info, 4, fn, "start", 0);
    s.n = int_arg(info, 5, fn, "n", 0);
    s.H = int_arg(info, 6, fn, "H", 1);
    s.Hkv = int_arg(info, 7, fn, "Hkv", 1);
    s.D = int_arg(info, 8, fn, "D", 1);
    if (s.H % s.Hkv != 0)
      throw ArgError{"attentionDecode: H=" + std::to_string(s.H) + " is not a multiple of Hkv=" + std::to_string(s.Hkv)};
    if (!info[9].IsNumber()) throw ArgError{"attentionDecode: scale must be a number"};
    const double scale = info[9].As<Napi::Number>().DoubleValue();
    if (!std::isfinite(scale)) throw ArgError{"attentionDecode: scale must be finite"};
    s.scale = (float)scale;
    const double nq = (double)s.n * s.H * s.D, nkv = (double)(s.start + s.n) * s.Hkv * s.D;
    const float* q = array_arg<float>(info, 0, fn, "q", nq);
    const float* K = array_arg<float>(info, 1, fn, "keys", nkv);
    const float* V = array_arg<float>(info, 2, fn, "values", nkv);
    float* out = array_arg<float>(info, 3, fn, "out", nq);
    decode(s, q, K, V, out);
  } catch (const ArgError& e) {
    Napi::TypeError::New(env, e.msg).ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string("attentionDecode: ") + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value ForceScalar(const Napi::CallbackInfo& info) {
  force_scalar = info.Length() > 0 && info[0].ToBoolean().Value();
  return Napi::String::New(info.Env(), use_avx2() && !force_scalar ? "avx2" : "scalar");
}

}  // namespace

void RegisterDecodeAttention(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionDecode", Napi::Function::New(env, AttentionDecode, "attentionDecode"));
  exports.Set("attentionDecodeForceScalar", Napi::Function::New(env, ForceScalar, "attentionDecodeForceScalar"));
}
