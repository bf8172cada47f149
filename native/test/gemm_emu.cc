// Tests the AVX-512 GEMM flavour (native/src/gemm_avx512.h: kernels, packing, blocking, threads) on any
// x86 or non-x86 machine, by compiling it against native/test/avx512_emu.h, a scalar emulation of the
// intrinsics it uses. Built and run by test/native-avx512-emu.test.ts:
//   g++ -O1 -std=c++17 -pthread native/test/gemm_emu.cc -o gemm_emu && ./gemm_emu
// (add -fsanitize=address,undefined to also catch reads past the operands: about 3x slower, so not in CI).
// Paths: f32 (B f32), widen (B bf16 widened to f32 while packing), dot (AVX512_BF16: A rounded to bf16,
// vdpbf16ps), each solved directly and transposed (C^T = op(B)^T op(A)^T written with C's columns ldc
// apart, as gemm.cc does for skinny shapes). Each result is compared with a double-precision reference
// (for dot, computed from A rounded to bf16 by an implementation independent of the emulation's), the
// memory around and between C's rows is checked untouched, and some results are recomputed with other
// thread splits and must be bitwise identical. Prints one JSON line; exits 1 on any failure.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "avx512_emu.h"

#include "../src/gemm_common.h"
#include "../src/threads.h"

namespace ajuste_gemm {
namespace avx512 {
#define AJ_GEMM_NO_UNROLL
#define AJ_T512
#define AJ_T512BF
#include "../src/gemm_avx512.h"
#undef AJ_T512
#undef AJ_T512BF
}  // namespace avx512
}  // namespace ajuste_gemm

using ajuste_gemm::Mat;
namespace k512 = ajuste_gemm::avx512;

namespace {

int failures = 0, cases = 0;
std::string first_errors;

void fail(const std::string& msg) {
  failures++;
  if (failures <= 20) first_errors += msg + "\n";
}

uint64_t rng_state = 0x9E3779B97F4A7C15ull;
float rnd() {  // uniform in [-1, 1), with a few values of other magnitudes
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  const float u = (float)((rng_state >> 40) * (1.0 / (1ull << 24))) * 2.f - 1.f;
  return (rng_state & 0xF) == 0 ? u * 37.f : u;
}

float f32_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float widen16(uint16_t h) { return f32_of((uint32_t)h << 16); }

// bf16 rounding to nearest, ties to even, for finite normal x: chooses between the two bf16 neighbours
// by comparing distances in double (independent of the integer trick the emulation and hardware use).
float bf16_rne_ref(float x) {
  if (x == 0.f || std::fpclassify(x) == FP_SUBNORMAL) return std::copysign(0.f, x);
  const uint32_t u = bits_of(x);
  const float lo = f32_of(u & 0xFFFF0000u), hi = f32_of((u & 0xFFFF0000u) + 0x10000u);  // toward 0, away
  const double dl = std::fabs((double)x - lo), dh = std::fabs((double)hi - x);
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return ((u >> 16) & 1) ? hi : lo;  // tie: the even one
}

enum Path { F32, WIDEN, DOT };
const char* path_name(Path p) { return p == F32 ? "f32" : p == WIDEN ? "widen" : "dot"; }
double worst[3] = {0, 0, 0};
int path_cases[3][2] = {};

struct Case {
  int M, N, K;
  bool tA, tB;
  float alpha = 1.f, beta = 0.f;
  int padA = 0, padB = 0, padC = 0;
};

std::string describe(const Case& c, Path p, bool transposed) {
  char s[256];
  std::snprintf(s, sizeof s, "%s%s M=%d N=%d K=%d tA=%d tB=%d alpha=%g beta=%g pads=%d,%d,%d", path_name(p),
                transposed ? " (transposed solve)" : "", c.M, c.N, c.K, c.tA, c.tB, c.alpha, c.beta, c.padA, c.padB,
                c.padC);
  return s;
}

// Calls the flavour like gemm.cc does: directly on C (rsc = ldc, csc = 1) or transposed on C^T.
template <typename TB>
void call(Path p, bool transposed, const Case& c, const float* A, long lda, const TB* B, long ldb, float* C, long ldc) {
  const Mat<float> a{A, c.tA ? 1 : lda, c.tA ? lda : 1};
  const Mat<TB> b{B, c.tB ? 1 : ldb, c.tB ? ldb : 1};
  if (!transposed) {
    if constexpr (sizeof(TB) == 2) {
      if (p == DOT) return k512::run_bf16dot(c.M, c.N, c.K, c.alpha, a, b, c.beta, C, ldc, 1);
    }
    return k512::run(c.M, c.N, c.K, c.alpha, a, b, c.beta, C, ldc, 1);
  }
  const Mat<TB> bt{B, b.cs, b.rs};
  const Mat<float> at{A, a.cs, a.rs};
  if constexpr (sizeof(TB) == 2) {
    if (p == DOT) return k512::run_bf16dot(c.N, c.M, c.K, c.alpha, bt, at, c.beta, C, 1, ldc);
  }
  k512::run(c.N, c.M, c.K, c.alpha, bt, at, c.beta, C, 1, ldc);
}

constexpr int GUARD = 40;      // floats of sentinel before and after C
const float SENT = -12345.5f;  // sentinel value

// Runs one case on one path and checks it. Matrices live in exactly sized vectors (so a sanitizer sees
// any read past them); C sits between guard zones; padding columns of C hold their own values.
void run_case(const Case& c, Path p, bool transposed) {
  cases++;
  path_cases[p][transposed]++;
  const int ar = c.tA ? c.K : c.M, ac = c.tA ? c.M : c.K;
  const int br = c.tB ? c.N : c.K, bc = c.tB ? c.K : c.N;
  const long lda = ac + c.padA, ldb = bc + c.padB, ldc = c.N + c.padC;
  const auto size = [](int r, int cols, long ld) { return r > 0 && cols > 0 ? (size_t)((r - 1) * ld + cols) : 0; };
  std::vector<float> A(size(ar, ac, lda)), Bf(size(br, bc, ldb));
  for (float& x : A) x = rnd();
  for (float& x : Bf) x = rnd();
  std::vector<uint16_t> Bh(Bf.size());
  for (size_t i = 0; i < Bf.size(); i++) Bh[i] = (uint16_t)(bits_of(Bf[i]) >> 16);  // truncated to bf16
  const size_t csize = size(c.M, c.N, ldc);
  std::vector<float> Cbuf(csize + 2 * GUARD, SENT);
  float* C = Cbuf.data() + GUARD;
  std::vector<float> C0(csize);
  for (size_t i = 0; i < csize; i++) C0[i] = rnd();
  if (c.beta == 0.f)
    for (int i = 0; i < c.M; i++)
      for (int j = 0; j < c.N; j++) C0[i * ldc + j] = NAN;  // must not be read
  std::copy(C0.begin(), C0.end(), C);

  if (p == F32) call<float>(p, transposed, c, A.data(), lda, Bf.data(), ldb, C, ldc);
  else call<uint16_t>(p, transposed, c, A.data(), lda, Bh.data(), ldb, C, ldc);

  for (int i = 0; i < GUARD; i++)
    if (bits_of(Cbuf[i]) != bits_of(SENT) || bits_of(Cbuf[GUARD + csize + i]) != bits_of(SENT))
      return fail(describe(c, p, transposed) + ": wrote outside C");
  for (int i = 0; i < c.M; i++)
    for (long j = c.N; j < ldc && (size_t)(i * ldc + j) < csize; j++)
      if (bits_of(C[i * ldc + j]) != bits_of(C0[i * ldc + j]))
        return fail(describe(c, p, transposed) + ": wrote into the padding between rows of C");

  // reference in double; error relative to what was summed: |alpha| sum |a||b| + |beta C0|
  std::vector<double> arow(c.K);
  double w = 0;
  int wi = -1, wj = -1;
  double wgot = 0, wwant = 0;
  for (int i = 0; i < c.M; i++) {
    for (int k = 0; k < c.K; k++) {
      const float x = A[c.tA ? (long)k * lda + i : (long)i * lda + k];
      arow[k] = p == DOT ? bf16_rne_ref(x) : x;
    }
    for (int j = 0; j < c.N; j++) {
      double s = 0, mag = 0;
      for (int k = 0; k < c.K; k++) {
        const long bi = c.tB ? (long)j * ldb + k : (long)k * ldb + j;
        const double bv = p == F32 ? (double)Bf[bi] : (double)widen16(Bh[bi]);
        s += arow[k] * bv;
        mag += std::fabs(arow[k] * bv);
      }
      const double c0 = c.beta == 0.f ? 0.0 : (double)C0[i * ldc + j];
      const double want = (double)c.alpha * s + (double)c.beta * c0;
      const double scale = std::fabs((double)c.alpha) * mag + std::fabs((double)c.beta * c0);
      const double got = C[i * ldc + j];
      const double e = std::fabs(got - want) / std::max(scale, 1e-30);
      if (!(e <= w)) w = e, wi = i, wj = j, wgot = got, wwant = want;
    }
  }
  worst[p] = std::max(worst[p], w);
  if (!(w <= 1e-5)) {
    char s[200];
    std::snprintf(s, sizeof s, ": relative error %.3g at (%d, %d): %.9g vs %.9g", w, wi, wj, wgot, wwant);
    fail(describe(c, p, transposed) + s);
  }
}

void run_all_paths(const Case& c) {
  for (Path p : {F32, WIDEN, DOT})
    for (bool t : {false, true}) run_case(c, p, t);
}

// The same product computed with different splits of C over "threads" (run_range on sub-ranges aligned
// to the micro-tile, the way run_threads splits it) must be bitwise identical to the unsplit one.
bool determinism_ok = true;
template <bool BH>
void check_splits(int M, int N, int K) {
  std::vector<float> A((size_t)M * K), B((size_t)K * N), C0((size_t)M * N);
  for (float& x : A) x = rnd();
  for (float& x : B) x = rnd();
  for (float& x : C0) x = rnd();
  std::vector<uint16_t> Bh(B.size());
  for (size_t i = 0; i < B.size(); i++) Bh[i] = (uint16_t)(bits_of(B[i]) >> 16);
  const Mat<float> a{A.data(), K, 1};
  const Mat<uint16_t> b{Bh.data(), N, 1};
  std::vector<float> whole = C0;
  k512::run_range<BH>(K, 0.75f, a, b, 0.5f, whole.data(), N, 1, 0, M, 0, N);
  const int cut_n[] = {0, k512::NR, 3 * k512::NR, N};
  const int cut_m[] = {0, k512::MR, 5 * k512::MR, M};
  std::vector<float> byN = C0, byM = C0, pool = C0;
  for (int s = 0; s < 3; s++) {
    k512::run_range<BH>(K, 0.75f, a, b, 0.5f, byN.data(), N, 1, 0, M, cut_n[s], cut_n[s + 1]);
    k512::run_range<BH>(K, 0.75f, a, b, 0.5f, byM.data(), N, 1, cut_m[s], cut_m[s + 1], 0, N);
  }
  k512::run_threads<BH>(M, N, K, 0.75f, a, b, 0.5f, pool.data(), N, 1);
  const size_t bytes = whole.size() * sizeof(float);
  if (std::memcmp(whole.data(), byN.data(), bytes) || std::memcmp(whole.data(), byM.data(), bytes) ||
      std::memcmp(whole.data(), pool.data(), bytes)) {
    determinism_ok = false;
    fail(std::string("results depend on the thread split (") + (BH ? "dot" : "widen") + ", M=" + std::to_string(M) +
         " N=" + std::to_string(N) + " K=" + std::to_string(K) + ")");
  }
}

// The emulation itself, on values whose results are known (a wrong emulation would make the GEMM test
// meaningless): bf16 rounding (ties to even, carries into the exponent, NaN, infinity, denormals),
// operand order of cvtne2ps_pbh and dpbf16_ps, fmadd's single rounding, masked loads and stores.
bool emu_selftest() {
  bool ok = true;
  auto expect = [&](bool cond, const char* what) {
    if (!cond) {
      ok = false;
      fail(std::string("emulation self-test: ") + what);
    }
  };
  struct {
    uint32_t in;
    uint16_t out;
  } cv[] = {
      {0x3F800000, 0x3F80},  // 1.0
      {0x3F808000, 0x3F80},  // 1 + 2^-8: tie, even is down
      {0x3F818000, 0x3F82},  // tie, even is up
      {0x3F808001, 0x3F81},  // just above the tie
      {0x3F807FFF, 0x3F80},  // just below
      {0x3FFFFFFF, 0x4000},  // carries into the exponent
      {0x7F7FFFFF, 0x7F80},  // largest float rounds to infinity
      {0xFF800000, 0xFF80},  // -infinity
      {0x7FC00001, 0x7FC0},  // quiet NaN
      {0x7F800001, 0x7FC0},  // signalling NaN: quiet bit set
      {0x00400000, 0x0000},  // denormal -> +0
      {0x80000001, 0x8000},  // negative denormal -> -0
      {0xC0490FDB, 0xC049},  // -pi
  };
  for (auto& t : cv) {
    __m512 a = _mm512_set1_ps(0.f), b = _mm512_set1_ps(0.f);
    b.f[3] = f32_of(t.in);
    a.f[5] = f32_of(t.in);
    const __m512bh r = _mm512_cvtne2ps_pbh(a, b);
    expect(r.h[3] == t.out && r.h[16 + 5] == t.out && r.h[5] == 0 && r.h[16 + 3] == 0,
           "cvtne2ps_pbh rounding or operand order");
    if (std::isfinite(f32_of(t.in)) && std::fpclassify(f32_of(t.in)) == FP_NORMAL && t.in != 0x7F7FFFFF)
      expect(bits_of(bf16_rne_ref(f32_of(t.in))) == (uint32_t)t.out << 16, "reference bf16 rounding");
  }
  {  // dpbf16: lane i gets src + a[2i] b[2i] + a[2i+1] b[2i+1]
    __m512bh a, b;
    __m512 src = _mm512_set1_ps(0.f);
    for (int i = 0; i < 32; i++) {
      a.h[i] = (uint16_t)(bits_of((float)(i + 1)) >> 16);        // exact small integers
      b.h[i] = (uint16_t)(bits_of(i % 2 ? 0.5f : 2.f) >> 16);
    }
    for (int i = 0; i < 16; i++) src.f[i] = (float)(100 * i);
    const __m512 r = _mm512_dpbf16_ps(src, a, b);
    for (int i = 0; i < 16; i++)
      expect(r.f[i] == 100.f * i + 2.f * (2 * i + 1) + 0.5f * (2 * i + 2), "dpbf16_ps lanes");
    // 1 + 2^-24 is not a float: each step rounds (1 + 2^-24 -> 1, twice); one fused sum of both would not
    __m512bh x, y;
    for (int i = 0; i < 32; i++) x.h[i] = 0x3380, y.h[i] = 0x3F80;  // 2^-24 * 1
    const __m512 one = _mm512_set1_ps(1.f);
    expect(_mm512_dpbf16_ps(one, x, y).f[0] == 1.f, "dpbf16_ps rounds after each product");
  }
  {  // fmadd rounds once: (1 + 2^-12)^2 - 1 - 2^-11 = 2^-24 exactly, lost if a*b were rounded first
    const float e = 1.f + std::ldexp(1.f, -12);
    const __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(e), _mm512_set1_ps(e), _mm512_set1_ps(-1.f - std::ldexp(1.f, -11)));
    expect(r.f[7] == std::ldexp(1.f, -24), "fmadd_ps single rounding");
  }
  {  // masks
    alignas(64) float mem[16];
    for (int i = 0; i < 16; i++) mem[i] = (float)i;
    const __m512 l = _mm512_maskz_loadu_ps((__mmask16)0x0005, mem);
    expect(l.f[0] == 0.f && l.f[2] == 2.f && l.f[1] == 0.f && l.f[15] == 0.f, "maskz_loadu_ps");
    _mm512_mask_storeu_ps(mem, (__mmask16)0x8001, _mm512_set1_ps(-1.f));
    expect(mem[0] == -1.f && mem[15] == -1.f && mem[1] == 1.f && mem[14] == 14.f, "mask_storeu_ps");
    alignas(32) uint16_t w[16];
    for (int i = 0; i < 16; i++) w[i] = (uint16_t)(0xFFF0 + i);
    const __m512i z = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)w)), 16);
    expect(z.u[0] == 0xFFF00000u && z.u[15] == 0xFFFF0000u, "cvtepu16_epi32 / slli_epi32");
  }
  return ok;
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  const bool self_ok = emu_selftest();
  const bool TF[] = {false, true};

  // shapes from the issue, every transposition, alpha/beta variants, padded leading dimensions
  const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {3, 1, 40}, {1, 37, 9}, {2, 9, 3}, {67, 71, 300}};
  for (auto& s : shapes)
    for (bool tA : TF)
      for (bool tB : TF) {
        run_all_paths({s[0], s[1], s[2], tA, tB});
        run_all_paths({s[0], s[1], s[2], tA, tB, -0.7f, 1.3f, 3, 5, 2});
        run_all_paths({s[0], s[1], s[2], tA, tB, 2.f, 1.f, 0, 1, 0});
      }
  // tails at every row count of a tile and around MC, every column count around 16 / 32 / NC
  for (int M = 1; M <= 26; M++) run_all_paths({M, 35, 7, M % 2 == 0, M % 3 == 0, 1.f, M % 4 == 0 ? 0.5f : 0.f});
  for (int M : {143, 144, 145, 289}) run_all_paths({M, 20, 9, M % 2 == 1, false});
  for (int N = 1; N <= 70; N++) run_all_paths({13, N, 5, N % 3 == 0, N % 2 == 0, 1.f, N % 5 == 0 ? 1.f : 0.f});
  for (int N : {95, 96, 97, 2047, 2048, 2049, 2081}) run_all_paths({5, N, 6, false, N % 2 == 1, 1.5f, 0.f});
  // depths around KC (192) and KC_BH (384), odd and even (bf16 pairs), several blocks
  for (int K : {1, 2, 3, 4, 31, 32, 33, 191, 192, 193, 383, 384, 385, 386, 577, 770})
    run_all_paths({25, 40, K, K % 2 == 1, K % 3 == 0, 1.f, K % 4 == 0 ? 1.f : -0.5f, 1, 2, 3});
  // a larger odd shape through the threaded driver, all transpositions, beta 0 / 1 / other
  for (bool tA : TF)
    for (bool tB : TF) {
      const float beta = tA ? (tB ? 0.25f : 1.f) : 0.f;
      for (Path p : {F32, DOT}) run_case({301, 419, 397, tA, tB, 0.5f, beta, 1, 0, 2}, p, false);
    }
  run_case({301, 419, 397, false, true, 1.f, 0.f}, WIDEN, false);
  run_case({61, 701, 257, true, false, 1.f, 0.f}, F32, false);  // the pool splits N
  run_case({61, 701, 257, false, true, 1.f, 1.f}, DOT, false);
  run_case({419, 301, 397, true, false, 1.f, 0.f}, DOT, true);

  // odd widths and heights, so that a block size that depended on the range would show; the pool splits M
  // in the first shape and N in the second
  check_splits<false>(151, 201, 400);
  check_splits<true>(151, 201, 400);
  check_splits<false>(61, 401, 300);
  check_splits<true>(61, 401, 300);

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "{\"ok\": %s, \"cases\": %d, \"failures\": %d, \"emu_selftest\": %s, \"determinism\": %s, "
      "\"worst\": {\"f32\": %.3g, \"widen\": %.3g, \"dot\": %.3g}, "
      "\"paths\": {\"f32\": [%d, %d], \"widen\": [%d, %d], \"dot\": [%d, %d]}, "
      "\"threads\": %d, \"seconds\": %.2f}\n",
      failures == 0 ? "true" : "false", cases, failures, self_ok ? "true" : "false",
      determinism_ok ? "true" : "false", worst[F32], worst[WIDEN], worst[DOT], path_cases[F32][0],
      path_cases[F32][1], path_cases[WIDEN][0], path_cases[WIDEN][1], path_cases[DOT][0], path_cases[DOT][1],
      ajuste::ThreadPool::get().size(), secs);
  if (failures) std::fprintf(stderr, "%s", first_errors.c_str());
  return failures == 0 ? 0 : 1;
}
