// Fused causal grouped-query attention, forward and backward (flash-attention style), f32.
//
// Layouts (see src/kernels/backend.ts): q/out/dout [B,T,H,D], k/v [B,T,Hkv,D], lse [B,H,T],
// optional segIds [B,T]. Query t attends key s iff s <= t and segIds[b,s] == segIds[b,t].
//
// Work is split into tiles of BQ queries x BK keys. Each tile copies its rows into small padded
// scratch matrices (rows to a multiple of 4, columns to a multiple of 16) so every product is the
// same register-blocked GEMM micro-kernel (4 rows x 16 columns). Scores never exist beyond one tile.
//   forward : items (b, h, query block), online softmax over the key blocks.
//   backward: P = exp(S - lse), dP = dO V^T, dS = P (dP - Di), dV += P^T dO, dK += scale dS^T Q,
//             dQ += scale dS K. Either one pass over items (b, kv head) that own their dq/dk/dv rows,
//             or (when there are too few such items for the threads) two passes: (b, kv head, key
//             block) for dk/dv, then (b, h, query block) for dq.
// Items are handed out dynamically (largest first) by an atomic counter over the thread pool.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AJ_X86 1
#endif

namespace {

constexpr int BQ = 64;  // queries per tile
constexpr int BK = 64;  // keys per tile
static_assert(BQ == BK, "the backward's key-block loop assumes square tiles");
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------
// Inner loops: scalar and AVX2+FMA versions, chosen once at run time.
//   gemm: C[M,N] (+)= A[M,K] . B[K,N], row-major; M % 4 == 0, N % 16 == 0.
//   expsub: x[i] = exp(x[i] - m) for i < n (0 where x is -inf), returns the sum.
// ---------------------------------------------------------------------------------------------
struct Ops {
  void (*gemm)(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc);
  float (*expsub)(float* x, int n, float m);
  const char* isa;
};

void gemm_scalar(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc) {
  for (int i = 0; i < M; i++) {
    float* c = C + (size_t)i * ldc;
    if (!acc) std::memset(c, 0, sizeof(float) * N);
    const float* a = A + (size_t)i * lda;
    for (int k = 0; k < K; k++) {
      const float av = a[k];
      const float* b = B + (size_t)k * ldb;
      for (int j = 0; j < N; j++) c[j] += av * b[j];
    }
  }
}

float expsub_scalar(float* x, int n, float m) {
  float s = 0;
  for (int i = 0; i < n; i++) {
    const float e = x[i] == NEG_INF ? 0.f : std::exp(x[i] - m);
    x[i] = e;
    s += e;
  }
  return s;
}

#ifdef AJ_X86
__attribute__((target("avx2,fma"))) void gemm_avx2(int M, int N, int K, const float* A, int lda, const float* B,
                                                     int ldb, float* C, int ldc, bool acc) {
  for (int i = 0; i < M; i += 4) {
    const float* a0 = A + (size_t)i * lda;
    const float* a1 = a0 + lda;
    const float* a2 = a1 + lda;
    const float* a3 = a2 + lda;
    float* c0 = C + (size_t)i * ldc;
    float* c1 = c0 + ldc;
    float* c2 = c1 + ldc;
    float* c3 = c2 + ldc;
    for (int j = 0; j < N; j += 16) {
      __m256 r00, r01, r10, r11, r20, r21, r30, r31;
      if (acc) {
        r00 = _mm256_loadu_ps(c0 + j); r01 = _mm256_loadu_ps(c0 + j + 8);
        r10 = _mm256_loadu_ps(c1 + j); r11 = _mm256_loadu_ps(c1 + j + 8);
        r20 = _mm256_loadu_ps(c2 + j); r21 = _mm256_loadu_ps(c2 + j + 8);
        r30 = _mm256_loadu_ps(c3 + j); r31 = _mm256_loadu_ps(c3 + j + 8);
      } else {
        r00 = r01 = r10 = r11 = r20 = r21 = r30 = r31 = _mm256_setzero_ps();
      }
      const float* b = B + j;
      for (int k = 0; k < K; k++, b += ldb) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        __m256 a = _mm256_broadcast_ss(a0 + k);
        r00 = _mm256_fmadd_ps(a, b0, r00); r01 = _mm256_fmadd_ps(a, b1, r01);
        a = _mm256_broadcast_ss(a1 + k);
        r10 = _mm256_fmadd_ps(a, b0, r10); r11 = _mm256_fmadd_ps(a, b1, r11);
        a = _mm256_broadcast_ss(a2 + k);
        r20 = _mm256_fmadd_ps(a, b0, r20); r21 = _mm256_fmadd_ps(a, b1, r21);
        a = _mm256_broadcast_ss(a3 + k);
        r30 = _mm256_fmadd_ps(a, b0, r30); r31 = _mm256_fmadd_ps(a, b1, r31);
      }
      _mm256_storeu_ps(c0 + j, r00); _mm256_storeu_ps(c0 + j + 8, r01);
      _mm256_storeu_ps(c1 + j, r10); _mm256_storeu_ps(c1 + j + 8, r11);
      _mm256_storeu_ps(c2 + j, r20); _mm256_storeu_ps(c2 + j + 8, r21);
      _mm256_storeu_ps(c3 + j, r30); _mm256_storeu_ps(c3 + j + 8, r31);
    }
  }
}

// exp(x) for x <= 0 (Cephes-style: 2^n * p(r)); returns 0 below -87.3 (this also covers -inf).
__attribute__((target("avx2,fma"))) inline __m256 exp256_nonpos(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - fx * ln2 in two steps for accuracy
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  y = _mm256_fmadd_ps(y, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i n = _mm256_cvtps_epi32(fx);
  n = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(n));
  return _mm256_andnot_ps(under, y);
}

__attribute__((target("avx2,fma"))) float expsub_avx2(float* x, int n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    s = _mm256_add_ps(s, e);
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  float sum = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; i < n; i++) {
    const float e = x[i] == NEG_INF ? 0.f : std::exp(x[i] - m);
    x[i] = e;
    sum += e;
  }
  return sum;
}
#endif

const Ops& ops() {
  static const Ops o = [] {
    Ops r{gemm_scalar, expsub_scalar, "scalar"};
#ifdef AJ_X86
    const char* force = std::getenv("AJUSTE_ISA");
    const bool scalar = force && std::string(force) == "scalar";
    if (!scalar && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) r = {gemm_avx2, expsub_avx2, "avx2"};
#endif
    return r;
  }();
  return o;
}

// ---------------------------------------------------------------------------------------------
// Problem description and tile helpers.
// ---------------------------------------------------------------------------------------------
struct Problem {
  const float *q, *k, *v, *out, *dout, *lse;
  float *o, *lse_out, *dq, *dk, *dv;
  const int32_t* seg;
  int B, T, H, Hkv, D, G, Dp;
  float scale;
  size_t qrow(int b, int t, int h) const { return ((size_t)(b * T + t) * H + h) * D; }
  size_t kvrow(int b, int t, int g) const { return ((size_t)(b * T + t) * Hkv + g) * D; }
};

// dst [round4(n), Dp] <- alpha * rows src[r*stride .. +D] for r < n, zero padding elsewhere.
void load_rows(float* dst, int Dp, const float* src, size_t stride, int n, int D, float alpha) {
  const int np = round_up(n, 4);
  for (int r = 0; r < np; r++) {
    float* d = dst + (size_t)r * Dp;
    if (r < n) {
      const float* s = src + r * stride;
      for (int c = 0; c < D; c++) d[c] = alpha * s[c];
      for (int c = D; c < Dp; c++) d[c] = 0;
    } else {
      std::memset(d, 0, sizeof(float) * Dp);
    }
  }
}

// dst [D, BK] <- transpose of rows src (n rows of D), columns n..round16(n) zeroed.
void load_transposed(float* dst, const float* src, size_t stride, int n, int D) {
  const int np = round_up(n, 16);
  for (int c = 0; c < D; c++) {
    float* d = dst + (size_t)c * BK;
    for (int r = 0; r < n; r++) d[r] = src[r * stride + c];
    for (int r = n; r < np; r++) d[r] = 0;
  }
}

// dst [BK-ish rows, BQ] <- transpose of src [nr rows, ld] (first nc columns), padded with zeros to
// round4(nc) rows and round16... columns are only read up to nr, so no column padding needed.
void transpose_tile(float* dst, int ldd, const float* src, int lds, int nr, int nc) {
  const int ncp = round_up(nc, 4);
  for (int c = 0; c < ncp; c++) {
    float* d = dst + (size_t)c * ldd;
    if (c < nc) {
      for (int r = 0; r < nr; r++) d[r] = src[(size_t)r * lds + c];
    } else {
      std::memset(d, 0, sizeof(float) * nr);
    }
  }
}

// mask[i*BK + j] = query t0+i may attend key s0+j. Returns the number of allowed pairs.
int build_mask(const Problem& P, int b, int t0, int nq, int s0, int nk, uint8_t* mask) {
  int count = 0;
  const int32_t* seg = P.seg ? P.seg + (size_t)b * P.T : nullptr;
  for (int i = 0; i < nq; i++) {
    const int t = t0 + i;
    uint8_t* m = mask + i * BK;
    for (int j = 0; j < nk; j++) {
      const int s = s0 + j;
      const bool ok = s <= t && (!seg || seg[s] == seg[t]);
      m[j] = ok;
      count += ok;
    }
  }
  return count;
}

// True when the tile needs no mask (every key precedes every query and there are no segments).
inline bool tile_full(const Problem& P, int t0, int s0, int nk) { return !P.seg && s0 + nk - 1 <= t0; }

// S [nq rows, BK] restricted to allowed pairs (-inf elsewhere, including padding columns).
void apply_mask(float* S, int nq, int nk, int nkp, const uint8_t* mask, bool full) {
  for (int i = 0; i < nq; i++) {
    float* s = S + i * BK;
    if (!full) {
      const uint8_t* m = mask + i * BK;
      for (int j = 0; j < nk; j++)
        if (!m[j]) s[j] = NEG_INF;
    }
    for (int j = nk; j < nkp; j++) s[j] = NEG_INF;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------
struct FwdScratch {
  std::vector<float> Q, Kt, V, S, acc, m, l;
  std::vector<uint8_t> mask;
  explicit FwdScratch(int Dp)
      : Q(BQ * Dp), Kt((size_t)Dp * BK), V(BK * Dp), S(BQ * BK), acc(BQ * Dp), m(BQ), l(BQ), mask(BQ * BK) {}
};

void fwd_item(const Problem& P, FwdScratch& W, int b, int h, int qb) {
  const Ops& O = ops();
  const int D = P.D, Dp = P.Dp, g = h / P.G;
  const int t0 = qb * BQ, nq = std::min(BQ, P.T - t0), nqp = round_up(nq, 4);
  const size_t qstride = (size_t)P.H * D, kstride = (size_t)P.Hkv * D;
  load_rows(W.Q.data(), Dp, P.q + P.qrow(b, t0, h), qstride, nq, D, P.scale);
  std::fill(W.acc.begin(), W.acc.end(), 0.f);
  std::fill(W.m.begin(), W.m.end(), NEG_INF);
  std::fill(W.l.begin(), W.l.end(), 0.f);
  const int last = t0 + nq - 1;
  for (int s0 = 0; s0 <= last; s0 += BK) {
    const int nk = std::min(BK, last + 1 - s0), nkp = round_up(nk, 16);
    const bool full = tile_full(P, t0, s0, nk);
    if (!full && build_mask(P, b, t0, nq, s0, nk, W.mask.data()) == 0) continue;
    load_transposed(W.Kt.data(), P.k + P.kvrow(b, s0, g), kstride, nk, D);
    load_rows(W.V.data(), Dp, P.v + P.kvrow(b, s0, g), kstride, nk, D, 1.f);
    O.gemm(nqp, nkp, D, W.Q.data(), Dp, W.Kt.data(), BK, W.S.data(), BK, false);
    apply_mask(W.S.data(), nq, nk, nkp, W.mask.data(), full);
    for (int i = 0; i < nqp; i++) {
      float* s = W.S.data() + i * BK;
      if (i >= nq) {  // padding rows: contribute nothing
        std::memset(s, 0, sizeof(float) * nkp);
        continue;
      }
      float bm = NEG_INF;
      for (int j = 0; j < nk; j++) bm = std::max(bm, s[j]);
      if (bm == NEG_INF) {  // no allowed key in this block for this row
        std::memset(s, 0, sizeof(float) * nkp);
        continue;
      }
      const float mnew = std::max(W.m[i], bm);
      const float alpha = W.m[i] == NEG_INF ? 0.f : std::exp(W.m[i] - mnew);
      W.l[i] = W.l[i] * alpha + O.expsub(s, nkp, mnew);
      W.m[i] = mnew;
      if (alpha != 1.f) {
        float* a = W.acc.data() + (size_t)i * Dp;
        for (int d = 0; d < Dp; d++) a[d] *= alpha;
      }
    }
    O.gemm(nqp, Dp, nk, W.S.data(), BK, W.V.data(), Dp, W.acc.data(), Dp, true);
  }
  for (int i = 0; i < nq; i++) {
    const float inv = 1.f / W.l[i];
    float* o = P.o + P.qrow(b, t0 + i, h);
    const float* a = W.acc.data() + (size_t)i * Dp;
    for (int d = 0; d < D; d++) o[d] = a[d] * inv;
    P.lse_out[((size_t)b * P.H + h) * P.T + t0 + i] = W.m[i] + std::log(W.l[i]);
  }
}

// Runs fn(item, worker) for items [0, n) handed out dynamically over the pool.
template <class Scratch, class MakeScratch, class Fn>
void run_items(long n, MakeScratch make, Fn fn) {
  auto& pool = ajuste::ThreadPool::get();
  std::atomic<long> next{0};
  const long workers = std::min<long>(pool.size(), n);
  pool.parallel_for(workers, [&](long, long, int) {
    Scratch W = make();
    for (long it; (it = next.fetch_add(1)) < n;) fn(W, it);
  });
}

void attention_fwd(const Problem& P) {
  const int nqb = (P.T + BQ - 1) / BQ;
  const long bh = (long)P.B * P.H;
  run_items<FwdScratch>(bh * nqb, [&] { return FwdScratch(P.Dp); }, [&](FwdScratch& W, long it) {
    const int qb = nqb - 1 - (int)(it / bh);  // largest blocks (most keys) first
    const int r = (int)(it % bh);
    fwd_item(P, W, r / P.H, r % P.H, qb);
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------
struct BwdScratch {
  // query side: Q (scaled), dO, lse, Di; key side: Kt, K, Vt; tile: S/P, dP/dS, their transposes.
  std::vector<float> Q, dO, L, Di, Kt, K, Vt, S, dP, Pt, tmp, dKacc, dVacc;
  std::vector<uint8_t> mask;
  explicit BwdScratch(int Dp)
      : Q(BQ * Dp), dO(BQ * Dp), L(BQ), Di(BQ), Kt((size_t)Dp * BK), K(BK * Dp), Vt((size_t)Dp * BK), S(BQ * BK),
        dP(BQ * BK), Pt(BK * BQ), tmp(std::max(BQ, BK) * Dp), dKacc(BK * Dp), dVacc(BK * Dp), mask(BQ * BK) {}
};

void bwd_load_keys(const Problem& P, BwdScratch& W, int b, int g, int s0, int nk) {
  const size_t kstride = (size_t)P.Hkv * P.D;
  load_transposed(W.Kt.data(), P.k + P.kvrow(b, s0, g), kstride, nk, P.D);
  load_transposed(W.Vt.data(), P.v + P.kvrow(b, s0, g), kstride, nk, P.D);
  load_rows(W.K.data(), P.Dp, P.k + P.kvrow(b, s0, g), kstride, nk, P.D, 1.f);
}

void bwd_load_queries(const Problem& P, BwdScratch& W, int b, int h, int t0, int nq) {
  const int D = P.D;
  const size_t qstride = (size_t)P.H * D;
  load_rows(W.Q.data(), P.Dp, P.q + P.qrow(b, t0, h), qstride, nq, D, P.scale);
  load_rows(W.dO.data(), P.Dp, P.dout + P.qrow(b, t0, h), qstride, nq, D, 1.f);
  for (int i = 0; i < nq; i++) {
    const float* o = P.out + P.qrow(b, t0 + i, h);
    const float* d = P.dout + P.qrow(b, t0 + i, h);
    float s = 0;
    for (int c = 0; c < D; c++) s += o[c] * d[c];
    W.Di[i] = s;
    W.L[i] = P.lse[((size_t)b * P.H + h) * P.T + t0 + i];
  }
}

// One tile with queries (b,h,t0..t0+nq) and the loaded keys s0..s0+nk. Leaves P in W.S and dS
// (unscaled) in W.dP. Accumulates dV, dK into W.dVacc/W.dKacc when kv, and scale * dS K into
// dq rows when dq. Returns false when the tile is fully masked.
bool bwd_tile(const Problem& P, BwdScratch& W, int b, int h, int t0, int nq, int s0, int nk, bool kv, bool dq) {
  const Ops& O = ops();
  const int D = P.D, Dp = P.Dp, nqp = round_up(nq, 4), nkp = round_up(nk, 16);
  const bool full = tile_full(P, t0, s0, nk);
  if (!full && build_mask(P, b, t0, nq, s0, nk, W.mask.data()) == 0) return false;
  float* S = W.S.data();
  float* dP = W.dP.data();
  O.gemm(nqp, nkp, D, W.Q.data(), Dp, W.Kt.data(), BK, S, BK, false);
  apply_mask(S, nq, nk, nkp, W.mask.data(), full);
  O.gemm(nqp, nkp, D, W.dO.data(), Dp, W.Vt.data(), BK, dP, BK, false);
  for (int i = 0; i < nqp; i++) {
    float* s = S + i * BK;
    float* dp = dP + i * BK;
    if (i >= nq) {
      std::memset(s, 0, sizeof(float) * nkp);
      std::memset(dp, 0, sizeof(float) * nkp);
      continue;
    }
    O.expsub(s, nkp, W.L[i]);
    const float di = W.Di[i];
    for (int j = 0; j < nkp; j++) dp[j] = s[j] * (dp[j] - di);
  }
  if (kv) {
    // dV += P^T dO ; dK += dS^T (scale Q)
    transpose_tile(W.Pt.data(), BQ, S, BK, nq, nk);
    O.gemm(round_up(nk, 4), Dp, nq, W.Pt.data(), BQ, W.dO.data(), Dp, W.dVacc.data(), Dp, true);
    transpose_tile(W.Pt.data(), BQ, dP, BK, nq, nk);
    O.gemm(round_up(nk, 4), Dp, nq, W.Pt.data(), BQ, W.Q.data(), Dp, W.dKacc.data(), Dp, true);
  }
  if (dq) {
    O.gemm(nqp, Dp, nk, dP, BK, W.K.data(), Dp, W.tmp.data(), Dp, false);
    for (int i = 0; i < nq; i++) {
      float* d = P.dq + P.qrow(b, t0 + i, h);
      const float* t = W.tmp.data() + (size_t)i * Dp;
      for (int c = 0; c < D; c++) d[c] += P.scale * t[c];
    }
  }
  return true;
}

// dk/dv (and, when with_dq, dq contributions) of key block kb of kv head g, over all its query heads.
void bwd_key_block(const Problem& P, BwdScratch& W, int b, int g, int kb, bool with_dq) {
  const int Dp = P.Dp, s0 = kb * BK, nk = std::min(BK, P.T - s0);
  bwd_load_keys(P, W, b, g, s0, nk);
  std::fill(W.dKacc.begin(), W.dKacc.end(), 0.f);
  std::fill(W.dVacc.begin(), W.dVacc.end(), 0.f);
  const int qb0 = s0 / BQ;  // earlier query blocks cannot see these keys
  for (int hh = 0; hh < P.G; hh++) {
    const int h = g * P.G + hh;
    for (int t0 = qb0 * BQ; t0 < P.T; t0 += BQ) {
      const int nq = std::min(BQ, P.T - t0);
      if (P.seg && !tile_full(P, t0, s0, nk) && build_mask(P, b, t0, nq, s0, nk, W.mask.data()) == 0) continue;
      bwd_load_queries(P, W, b, h, t0, nq);
      bwd_tile(P, W, b, h, t0, nq, s0, nk, true, with_dq);
    }
  }
  const size_t kstride = (size_t)P.Hkv * P.D;
  for (int j = 0; j < nk; j++) {
    float* dk = P.dk + P.kvrow(b, s0, g) + j * kstride;
    float* dv = P.dv + P.kvrow(b, s0, g) + j * kstride;
    const float* a = W.dKacc.data() + (size_t)j * Dp;
    const float* c = W.dVacc.data() + (size_t)j * Dp;
    std::memcpy(dk, a, sizeof(float) * P.D);
    std::memcpy(dv, c, sizeof(float) * P.D);
  }
}

// dq rows of query block qb of head h (two-pass mode).
void bwd_query_block(const Problem& P, BwdScratch& W, int b, int h, int qb) {
  const int t0 = qb * BQ, nq = std::min(BQ, P.T - t0), g = h / P.G;
  for (int i = 0; i < nq; i++) std::memset(P.dq + P.qrow(b, t0 + i, h), 0, sizeof(float) * P.D);
  bwd_load_queries(P, W, b, h, t0, nq);
  const int last = t0 + nq - 1;
  for (int s0 = 0; s0 <= last; s0 += BK) {
    const int nk = std::min(BK, last + 1 - s0);
    if (P.seg && !tile_full(P, t0, s0, nk) && build_mask(P, b, t0, nq, s0, nk, W.mask.data()) == 0) continue;
    bwd_load_keys(P, W, b, g, s0, nk);
    bwd_tile(P, W, b, h, t0, nq, s0, nk, false, true);
  }
}

void attention_bwd(const Problem& P) {
  auto& pool = ajuste::ThreadPool::get();
  const long threads = pool.size();
  const long pairs = (long)P.B * P.Hkv;
  // One pass over (b, kv head) items does ~5 tile products; two passes do ~7 but split finer.
  // Use one pass when its load balance (items per thread, rounded up) is at least 75%.
  bool one_pass = pairs >= threads ? (double)pairs / (threads * ((pairs + threads - 1) / threads)) >= 0.75 : threads == 1;
  if (const char* f = std::getenv("AJUSTE_ATTN_BWD")) {
    if (std::string(f) == "1pass") one_pass = true;
    if (std::string(f) == "2pass") one_pass = false;
  }
  const int nkb = (P.T + BK - 1) / BK, nqb = (P.T + BQ - 1) / BQ;
  auto make = [&] { return BwdScratch(P.Dp); };
  if (one_pass) {
    run_items<BwdScratch>(pairs, make, [&](BwdScratch& W, long it) {
      const int b = (int)(it / P.Hkv), g = (int)(it % P.Hkv);
      for (int hh = 0; hh < P.G; hh++)
        for (int t = 0; t < P.T; t++) std::memset(P.dq + P.qrow(b, t, g * P.G + hh), 0, sizeof(float) * P.D);
      for (int kb = 0; kb < nkb; kb++) bwd_key_block(P, W, b, g, kb, true);
    });
    return;
  }
  // Pass 1: dk, dv per (b, g, key block); early key blocks see the most queries, so go first.
  run_items<BwdScratch>(pairs * nkb, make, [&](BwdScratch& W, long it) {
    const int kb = (int)(it / pairs), r = (int)(it % pairs);
    bwd_key_block(P, W, r / P.Hkv, r % P.Hkv, kb, false);
  });
  // Pass 2: dq per (b, h, query block); late query blocks see the most keys, so go first.
  const long bh = (long)P.B * P.H;
  run_items<BwdScratch>(bh * nqb, make, [&](BwdScratch& W, long it) {
    const int qb = nqb - 1 - (int)(it / bh), r = (int)(it % bh);
    bwd_query_block(P, W, r / P.H, r % P.H, qb);
  });
}

// ---------------------------------------------------------------------------------------------
// N-API bindings with argument checks.
// ---------------------------------------------------------------------------------------------
struct ArgError {
  std::string msg;
};

const float* f32_arg(const Napi::CallbackInfo& info, int i, const char* fn, const char* name, size_t need, float** mut = nullptr) {
  const Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw ArgError{std::string(fn) + ": argument " + std::to_string(i + 1) + " (" + name + ") must be a Float32Array"};
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  if (a.ElementLength() < need)
    throw ArgError{std::string(fn) + ": " + name + " has " + std::to_string(a.ElementLength()) + " elements, needs " +
                   std::to_string(need)};
  if (mut) *mut = a.Data();
  return a.Data();
}

int int_arg(const Napi::CallbackInfo& info, int i, const char* fn, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsNumber()) throw ArgError{std::string(fn) + ": " + name + " must be a number"};
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 2147483647.0) || d != std::floor(d))
    throw ArgError{std::string(fn) + ": " + name + " must be a positive integer, got " + std::to_string(d)};
  return (int)d;
}

// Reads B,T,H,Hkv,D,scale,segIds starting at argument `first` and checks them.
void shape_args(const Napi::CallbackInfo& info, int first, const char* fn, Problem& P) {
  if ((int)info.Length() < first + 7)
    throw ArgError{std::string(fn) + ": expected " + std::to_string(first + 7) + " arguments, got " +
                   std::to_string(info.Length())};
  P.B = int_arg(info, first, fn, "B");
  P.T = int_arg(info, first + 1, fn, "T");
  P.H = int_arg(info, first + 2, fn, "H");
  P.Hkv = int_arg(info, first + 3, fn, "Hkv");
  P.D = int_arg(info, first + 4, fn, "D");
  if (P.H % P.Hkv != 0)
    throw ArgError{std::string(fn) + ": H=" + std::to_string(P.H) + " is not a multiple of Hkv=" + std::to_string(P.Hkv)};
  if (P.D > 4096) throw ArgError{std::string(fn) + ": head dimension D=" + std::to_string(P.D) + " is larger than 4096"};
  const double total = (double)P.B * P.T * P.H * P.D;
  if (total > 4e9) throw ArgError{std::string(fn) + ": B*T*H*D is too large"};
  P.G = P.H / P.Hkv;
  P.Dp = round_up(P.D, 16);
  const Napi::Value sc = info[first + 5];
  if (!sc.IsNumber() || !std::isfinite(sc.As<Napi::Number>().DoubleValue()))
    throw ArgError{std::string(fn) + ": scale must be a finite number"};
  P.scale = (float)sc.As<Napi::Number>().DoubleValue();
  const Napi::Value sg = info[first + 6];
  P.seg = nullptr;
  if (!sg.IsNull() && !sg.IsUndefined()) {
    if (!sg.IsTypedArray() || sg.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw ArgError{std::string(fn) + ": segIds must be an Int32Array or null"};
    Napi::Int32Array s = sg.As<Napi::Int32Array>();
    if (s.ElementLength() < (size_t)P.B * P.T)
      throw ArgError{std::string(fn) + ": segIds has " + std::to_string(s.ElementLength()) + " elements, needs B*T=" +
                     std::to_string((size_t)P.B * P.T)};
    P.seg = s.Data();
  }
}

Napi::Value AttentionFwd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "attentionFwd";
  Problem P{};
  try {
    shape_args(info, 5, fn, P);
    const size_t nq = (size_t)P.B * P.T * P.H * P.D, nkv = (size_t)P.B * P.T * P.Hkv * P.D;
    P.q = f32_arg(info, 0, fn, "q", nq);
    P.k = f32_arg(info, 1, fn, "k", nkv);
    P.v = f32_arg(info, 2, fn, "v", nkv);
    f32_arg(info, 3, fn, "out", nq, &P.o);
    f32_arg(info, 4, fn, "lse", (size_t)P.B * P.H * P.T, &P.lse_out);
  } catch (const ArgError& e) {
    Napi::TypeError::New(env, e.msg).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  try {
    attention_fwd(P);
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string(fn) + ": " + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value AttentionBwd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "attentionBwd";
  Problem P{};
  try {
    shape_args(info, 9, fn, P);
    const size_t nq = (size_t)P.B * P.T * P.H * P.D, nkv = (size_t)P.B * P.T * P.Hkv * P.D;
    P.dout = f32_arg(info, 0, fn, "dout", nq);
    P.q = f32_arg(info, 1, fn, "q", nq);
    P.k = f32_arg(info, 2, fn, "k", nkv);
    P.v = f32_arg(info, 3, fn, "v", nkv);
    P.out = f32_arg(info, 4, fn, "out", nq);
    P.lse = f32_arg(info, 5, fn, "lse", (size_t)P.B * P.H * P.T);
    f32_arg(info, 6, fn, "dq", nq, &P.dq);
    f32_arg(info, 7, fn, "dk", nkv, &P.dk);
    f32_arg(info, 8, fn, "dv", nkv, &P.dv);
  } catch (const ArgError& e) {
    Napi::TypeError::New(env, e.msg).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  try {
    attention_bwd(P);
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string(fn) + ": " + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

}  // namespace

void RegisterAttention(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionFwd", Napi::Function::New(env, AttentionFwd, "attentionFwd"));
  exports.Set("attentionBwd", Napi::Function::New(env, AttentionBwd, "attentionBwd"));
  exports.Set("attentionIsa", Napi::String::New(env, ops().isa));
}
