// Fused causal grouped-query attention, forward and backward (flash-attention style), f32.
//
// Layouts (see src/kernels/backend.ts): q/out/dout [B,T,H,D], k/v [B,T,Hkv,D], lse [B,H,T],
// optional segIds [B,T]. Query t attends key s iff s <= t and segIds[b,s] == segIds[b,t].
//
// Work is split into tiles of BQ queries x BK keys. Queries are transposed once per query block
// into padded scratch; key/value rows are read in place (or copied and padded when D % 16 != 0),
// so every product is one register-blocked GEMM micro-kernel (6 or 4 rows x 16 columns), plain or with
// A transposed. Scores never exist beyond one tile.
//   forward : items (b, h, query block), online softmax over the key blocks.
//   backward: P = exp(S - lse), dP = dO V^T, dS = P (dP - Di), dV += P^T dO, dK += scale dS^T Q,
//             dQ += scale dS K (scores, P and dS are held transposed: keys as rows). Either one
//             pass over items (b, kv head) that own their dq/dk/dv rows, or (when there are too
//             few such items for the threads) two passes: (b, kv head, key block) for dk/dv, then
//             (b, h, query block) for dq. AJUSTE_ATTN_BWD=1pass|2pass forces one (tests use it).
// AJUSTE_ISA=scalar forces the scalar loops.
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

#include "avx2_transpose.h"
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
// Scores are kept transposed, St[key j][query i] (row stride BQ), so the softmax runs down the
// columns (vectorised across queries) and P^T, dS^T feed the dK/dV products without transposes.
//   gemm:    C[M,N] (+)= A[M,K] . B[K,N], all row-major.            M % 4 == 0, N % 16 == 0.
//   gemm_tn: C[M,N] (+)= A^T . B with A stored [K,M] (row stride lda). M % 4 == 0, N % 16 == 0.
//   softmax: online-softmax step over a tile St [rows, cols]: per column i, m/l/alpha updated and
//            St replaced by exp(St - m_new) (0 where St is -inf).                 cols % 8 == 0.
//   p_ds:    St <- P = exp(St - L[i]); dPt <- P * (dPt - Di[i]).                  cols % 8 == 0.
//   Both take the tile's diagonal (diag below) and write the rows a causal tile masks for a whole
//   group of 8 columns as zeros without computing them.
// ---------------------------------------------------------------------------------------------
// The causal band of a tile, as hints a gemm may use to skip work that is exactly zero (the scalar loops
// ignore them): with i the first row of an R-row block (R = 6 or 4),
//   dead: the block's columns j..j+15 are all masked when i > j + 15 + dead (C rows are keys, columns
//         queries: key s0 + r is after query t0 + c). Such blocks are written as zeros (acc == false) or
//         left alone (acc == true); the caller masks them anyway.
//   klo/khi: only k in [i + klo, i + R + khi) can contribute to the block (P or dS is zero elsewhere).
// NONE disables a hint. Skipping only ever drops additions of exact zeros, so results do not change.
constexpr int NONE = 1 << 29;
struct Band {
  int dead = NONE, klo = -NONE, khi = NONE;
};
const Band NO_BAND{};

struct Ops {
  void (*gemm)(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc,
               const Band& band);
  // rs (optional, acc only): C row r is first multiplied by rs[r] (the online softmax's rescale).
  void (*gemm_tn)(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc,
                  const Band& band, const float* rs);
  // diag (NONE or t0 - s0 of a causal tile): entries of rows j > i + diag (query i) are masked.
  void (*softmax)(float* S, int ld, int rows, int cols, float* m, float* l, float* alpha, int diag);
  void (*p_ds)(float* S, float* dP, int ld, int rows, int cols, const float* L, const float* Di, int diag);
  void (*transpose8)(float* dst, const float* src, size_t stride, int n8, int D8, float alpha);  // may be null
  void (*rowdot8)(float* out, const float* a, const float* b, size_t stride, int n8, int D8);     // may be null
  const char* isa;
};

inline float exp_or_zero(float x) { return x < -87.3f ? 0.f : std::exp(x); }

void gemm_scalar(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc,
                 const Band&) {
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

void gemm_tn_scalar(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc,
                    const Band&, const float* rs) {
  for (int i = 0; i < M; i++) {
    float* c = C + (size_t)i * ldc;
    if (!acc) std::memset(c, 0, sizeof(float) * N);
    else if (rs)
      for (int j = 0; j < N; j++) c[j] *= rs[i];
    for (int k = 0; k < K; k++) {
      const float av = A[(size_t)k * lda + i];
      const float* b = B + (size_t)k * ldb;
      for (int j = 0; j < N; j++) c[j] += av * b[j];
    }
  }
}

void softmax_scalar(float* S, int ld, int rows, int cols, float* m, float* l, float* alpha, int) {
  for (int i = 0; i < cols; i++) {
    float bm = NEG_INF;
    for (int j = 0; j < rows; j++) bm = std::max(bm, S[j * ld + i]);
    const float mnew = std::max(m[i], bm);
    const float ms = mnew == NEG_INF ? 0.f : mnew;
    alpha[i] = exp_or_zero(m[i] - ms);
    float sum = 0;
    for (int j = 0; j < rows; j++) {
      const float e = exp_or_zero(S[j * ld + i] - ms);
      S[j * ld + i] = e;
      sum += e;
    }
    l[i] = l[i] * alpha[i] + sum;
    m[i] = mnew;
  }
}

void p_ds_scalar(float* S, float* dP, int ld, int rows, int cols, const float* L, const float* Di, int) {
  for (int j = 0; j < rows; j++)
    for (int i = 0; i < cols; i++) {
      const float p = exp_or_zero(S[j * ld + i] - L[i]);
      S[j * ld + i] = p;
      dP[j * ld + i] = p * (dP[j * ld + i] - Di[i]);
    }
}

#ifdef AJ_X86
#define AJ_AVX2 __attribute__((target("avx2,fma")))

// Register blocks of R rows x 16 columns (R = 6: 12 accumulators, enough independent FMA chains
// for two pipes of latency 4; R = 4 finishes a row count that is not a multiple of 6). Each
// element of C still sums its products in k order, so the blocking does not change any result.
// TN: A is stored transposed ([K, M]). rs (optional): C rows are multiplied by rs[row] when
// loaded (acc only), the online softmax's rescale of the output accumulator.
template <int R, bool TN>
AJ_AVX2 inline __attribute__((always_inline)) void gemm_block(int i, int N, int K, const float* A, int lda,
                                                             const float* B, int ldb, float* C, int ldc, bool acc,
                                                             const Band& band, const float* rs) {
  float* c[R];
  for (int r = 0; r < R; r++) c[r] = C + (size_t)(i + r) * ldc;
  const int kb = std::max(0, std::min(K, i + band.klo));
  const int ke = std::max(kb, std::min(K, i + R + band.khi));
  __m256 sc[R];
  if (acc && rs)
    for (int r = 0; r < R; r++) sc[r] = _mm256_broadcast_ss(rs + i + r);
  for (int j = 0; j < N; j += 16) {
    __m256 r0[R], r1[R];
    if (i > j + 15 + band.dead) {  // all masked
      if (!acc) {
        const __m256 z = _mm256_setzero_ps();
        for (int r = 0; r < R; r++) {
          _mm256_storeu_ps(c[r] + j, z);
          _mm256_storeu_ps(c[r] + j + 8, z);
        }
      }
      continue;
    }
    if (acc) {
      for (int r = 0; r < R; r++) {
        r0[r] = _mm256_loadu_ps(c[r] + j);
        r1[r] = _mm256_loadu_ps(c[r] + j + 8);
      }
      if (rs)
        for (int r = 0; r < R; r++) {
          r0[r] = _mm256_mul_ps(r0[r], sc[r]);
          r1[r] = _mm256_mul_ps(r1[r], sc[r]);
        }
    } else {
      for (int r = 0; r < R; r++) r0[r] = r1[r] = _mm256_setzero_ps();
    }
    const float* b = B + j + (size_t)kb * ldb;
    const float* a = TN ? A + (size_t)kb * lda + i : A + (size_t)i * lda + kb;
    for (int k = kb; k < ke; k++, b += ldb, a += TN ? lda : 1) {
      const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
      for (int r = 0; r < R; r++) {
        const __m256 av = _mm256_broadcast_ss(TN ? a + r : a + (size_t)r * lda);
        r0[r] = _mm256_fmadd_ps(av, b0, r0[r]);
        r1[r] = _mm256_fmadd_ps(av, b1, r1[r]);
      }
    }
    for (int r = 0; r < R; r++) {
      _mm256_storeu_ps(c[r] + j, r0[r]);
      _mm256_storeu_ps(c[r] + j + 8, r1[r]);
    }
  }
}

template <bool TN>
AJ_AVX2 inline __attribute__((always_inline)) void gemm_rows(int M, int N, int K, const float* A, int lda,
                                                            const float* B, int ldb, float* C, int ldc, bool acc,
                                                            const Band& band, const float* rs) {
  const int m6 = M - 4 * ((M % 12) / 4);  // rows in blocks of 6; the rest (0, 4 or 8) in blocks of 4
  int i = 0;
  for (; i < m6; i += 6) gemm_block<6, TN>(i, N, K, A, lda, B, ldb, C, ldc, acc, band, rs);
  for (; i < M; i += 4) gemm_block<4, TN>(i, N, K, A, lda, B, ldb, C, ldc, acc, band, rs);
}

AJ_AVX2 void gemm_avx2(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc,
                       const Band& band) {
  gemm_rows<false>(M, N, K, A, lda, B, ldb, C, ldc, acc, band, nullptr);
}

AJ_AVX2 void gemm_tn_avx2(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc,
                          const Band& band, const float* rs) {
  gemm_rows<true>(M, N, K, A, lda, B, ldb, C, ldc, acc, band, rs);
}

// exp(x) for x <= ~88 (Cephes-style: 2^n * p(r)); 0 below -87.3, which also covers -inf.
AJ_AVX2 inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);  // x - n ln2, in two parts
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(n)));
}

// Column groups of 8 queries, one at a time. diag (see Band; NONE: no hint): rows j >= i0 + 8 + diag
// are masked for all of group i0's columns, so they are only written as the zeros exp would give.
AJ_AVX2 void softmax_avx2(float* S, int ld, int rows, int cols, float* m, float* l, float* alpha, int diag) {
  const __m256 ninf = _mm256_set1_ps(NEG_INF), zero = _mm256_setzero_ps();
  for (int i = 0; i < cols; i += 8) {
    const int jmax = std::max(0, std::min(rows, i + 8 + diag));
    float* s = S + i;
    __m256 bm = ninf;
    for (int j = 0; j < jmax; j++) bm = _mm256_max_ps(bm, _mm256_loadu_ps(s + j * ld));
    const __m256 mo = _mm256_loadu_ps(m + i);
    const __m256 mnew = _mm256_max_ps(mo, bm);
    _mm256_storeu_ps(m + i, mnew);
    const __m256 safe = _mm256_andnot_ps(_mm256_cmp_ps(mnew, ninf, _CMP_EQ_OQ), mnew);  // -inf -> 0
    const __m256 al = exp256(_mm256_sub_ps(mo, safe));
    _mm256_storeu_ps(alpha + i, al);
    __m256 sum = zero;
    for (int j = 0; j < jmax; j++) {
      const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j * ld), safe));
      _mm256_storeu_ps(s + j * ld, e);
      sum = _mm256_add_ps(sum, e);
    }
    for (int j = jmax; j < rows; j++) _mm256_storeu_ps(s + j * ld, zero);
    _mm256_storeu_ps(l + i, _mm256_fmadd_ps(_mm256_loadu_ps(l + i), al, sum));
  }
}

AJ_AVX2 void p_ds_avx2(float* S, float* dP, int ld, int rows, int cols, const float* L, const float* Di, int diag) {
  const __m256 zero = _mm256_setzero_ps();
  for (int i = 0; i < cols; i += 8) {
    const int jmax = std::max(0, std::min(rows, i + 8 + diag));
    const __m256 Li = _mm256_loadu_ps(L + i), Dii = _mm256_loadu_ps(Di + i);
    float* s = S + i;
    float* d = dP + i;
    for (int j = 0; j < jmax; j++) {
      const __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j * ld), Li));
      _mm256_storeu_ps(s + j * ld, p);
      _mm256_storeu_ps(d + j * ld, _mm256_mul_ps(p, _mm256_sub_ps(_mm256_loadu_ps(d + j * ld), Dii)));
    }
    for (int j = jmax; j < rows; j++) {
      _mm256_storeu_ps(s + j * ld, zero);
      _mm256_storeu_ps(d + j * ld, zero);
    }
  }
}

// dst[c * BQ + r] = alpha * src[r * stride + c] for r < n8, c < D8 (multiples of 8), by 8x8 blocks.
AJ_AVX2 void transpose8_avx2(float* dst, const float* src, size_t stride, int n8, int D8, float alpha) {
  const __m256 al = _mm256_set1_ps(alpha);
  for (int r = 0; r < n8; r += 8)
    for (int c = 0; c < D8; c += 8) {
      __m256 x[8];
      for (int k = 0; k < 8; k++) x[k] = _mm256_loadu_ps(src + (r + k) * stride + c);
      ajuste::transpose8x8(x);
      float* d = dst + (size_t)c * BQ + r;
      for (int k = 0; k < 8; k++) _mm256_storeu_ps(d + k * BQ, _mm256_mul_ps(al, x[k]));
    }
}

// out[r] = sum over c < D8 of a[r * stride + c] * b[r * stride + c], summed in c order, for r < n8.
AJ_AVX2 void rowdot8_avx2(float* out, const float* a, const float* b, size_t stride, int n8, int D8) {
  for (int r = 0; r < n8; r += 8) {
    __m256 sum = _mm256_setzero_ps();
    for (int c = 0; c < D8; c += 8) {
      __m256 x[8];
      for (int k = 0; k < 8; k++) {
        const size_t o = (r + k) * stride + c;
        x[k] = _mm256_mul_ps(_mm256_loadu_ps(a + o), _mm256_loadu_ps(b + o));
      }
      ajuste::transpose8x8(x);
      for (int k = 0; k < 8; k++) sum = _mm256_add_ps(sum, x[k]);
    }
    _mm256_storeu_ps(out + r, sum);
  }
}
#endif

const Ops& ops() {
  static const Ops o = [] {
    Ops r{gemm_scalar, gemm_tn_scalar, softmax_scalar, p_ds_scalar, nullptr, nullptr, "scalar"};
#ifdef AJ_X86
    const char* force = std::getenv("AJUSTE_ISA");
    const bool scalar = force && std::string(force) == "scalar";
    if (!scalar && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      r = {gemm_avx2, gemm_tn_avx2, softmax_avx2, p_ds_avx2, transpose8_avx2, rowdot8_avx2, "avx2"};
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
  size_t qrow(int b, int t, int h) const { return (((size_t)b * T + t) * H + h) * D; }
  size_t kvrow(int b, int t, int g) const { return (((size_t)b * T + t) * Hkv + g) * D; }
};

// dst [round4(n), Dp] <- rows src[r*stride .. +D] for r < n, zero padding elsewhere.
void load_rows(float* dst, int Dp, const float* src, size_t stride, int n, int D) {
  const int np = round_up(n, 4);
  for (int r = 0; r < np; r++) {
    float* d = dst + (size_t)r * Dp;
    if (r < n) {
      const float* s = src + r * stride;
      std::memcpy(d, s, sizeof(float) * D);
      for (int c = D; c < Dp; c++) d[c] = 0;
    } else {
      std::memset(d, 0, sizeof(float) * Dp);
    }
  }
}

// A block of n rows of D floats as a gemm operand: straight from the tensor when that is safe
// (D is a multiple of 16 and n of 4, so no padding is read), else copied into padded scratch.
struct Rows {
  const float* p;
  int ld;
};
Rows rows_view(float* scratch, int Dp, const float* src, size_t stride, int n, int D) {
  if (D == Dp && n % 4 == 0) return {src, (int)stride};
  load_rows(scratch, Dp, src, stride, n, D);
  return {scratch, Dp};
}

// dst [D, BQ] <- alpha * transpose of n rows of src (D each); columns n..round16(n) zeroed.
void load_transposed(float* dst, const float* src, size_t stride, int n, int D, float alpha) {
  const Ops& O = ops();
  const int n8 = O.transpose8 ? n / 8 * 8 : 0, D8 = O.transpose8 ? D / 8 * 8 : 0;
  if (n8 && D8) O.transpose8(dst, src, stride, n8, D8, alpha);
  for (int r = 0; r < n; r++) {
    const float* s = src + r * stride;
    for (int c = (r < n8 ? D8 : 0); c < D; c++) dst[(size_t)c * BQ + r] = alpha * s[c];
  }
  const int np = round_up(n, 16);
  for (int c = 0; c < D; c++)
    for (int r = n; r < np; r++) dst[(size_t)c * BQ + r] = 0;
}

// How tile (queries t0..t0+nq, keys s0..s0+nk) is masked: SKIP (no pair allowed), FULL (every pair
// allowed), CAUSAL (only s <= t; all of the tile's keys and queries in one segment) or BYTES
// (mask[j * BQ + i] filled here).
enum MaskKind { SKIP, FULL, CAUSAL, BYTES };

MaskKind tile_mask(const Problem& P, int b, int t0, int nq, int s0, int nk, uint8_t* mask) {
  if (s0 > t0 + nq - 1) return SKIP;
  const int32_t* seg = P.seg ? P.seg + (size_t)b * P.T : nullptr;
  bool uniform = true;
  if (seg) {
    const int32_t id = seg[s0];
    for (int j = 0; j < nk; j++) uniform &= seg[s0 + j] == id;
    for (int i = 0; i < nq; i++) uniform &= seg[t0 + i] == id;
  }
  if (uniform) return s0 + nk - 1 <= t0 ? FULL : CAUSAL;
  int count = 0;
  for (int j = 0; j < nk; j++) {
    const int s = s0 + j;
    const int32_t sid = seg[s];
    uint8_t* m = mask + j * BQ;
    for (int i = 0; i < nq; i++) {
      const uint8_t ok = (s <= t0 + i) & (seg[t0 + i] == sid);
      m[i] = ok;
      count += ok;
    }
  }
  return count > 0 ? BYTES : SKIP;
}

// St [rows j, cols i]: -inf where a pair is not allowed and in padding rows nk..round4(nk).
void apply_mask(float* S, int t0, int nq, int s0, int nk, const uint8_t* mask, MaskKind kind) {
  if (kind == CAUSAL) {
    for (int j = 0; j < nk; j++) {  // key s0 + j is after queries t0 .. s0 + j - 1
      const int n = std::min(nq, std::max(0, s0 + j - t0));
      std::fill(S + j * BQ, S + j * BQ + n, NEG_INF);
    }
  } else if (kind == BYTES) {
    for (int j = 0; j < nk; j++) {
      float* s = S + j * BQ;
      const uint8_t* m = mask + j * BQ;
      for (int i = 0; i < nq; i++) s[i] = m[i] ? s[i] : NEG_INF;
    }
  }
  for (int j = nk; j < round_up(nk, 4); j++)
    for (int i = 0; i < BQ; i++) S[j * BQ + i] = NEG_INF;
}

// Runs fn(scratch, item) for items [0, n) handed out dynamically over the pool. Scratch is
// allocated here, on the calling thread, so running out of memory is a catchable exception.
template <class Scratch, class MakeScratch, class Fn>
void run_items(long n, MakeScratch make, Fn fn) {
  auto& pool = ajuste::ThreadPool::get();
  std::atomic<long> next{0};
  const long workers = std::max<long>(1, std::min<long>(pool.size(), n));
  std::vector<Scratch> scratch;
  scratch.reserve(workers);
  for (long w = 0; w < workers; w++) scratch.push_back(make());
  // One chunk per worker: chunk `begin` is that worker's scratch (0 when run inline).
  pool.parallel_for(workers, [&](long begin, long, int) {
    Scratch& W = scratch[begin];
    for (long it; (it = next.fetch_add(1)) < n;) fn(W, it);
  });
}

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------
struct FwdScratch {
  std::vector<float> Qt, K, V, S, acc, m, l, alpha;
  std::vector<uint8_t> mask;
  explicit FwdScratch(int Dp)
      : Qt((size_t)Dp * BQ), K(BK * Dp), V(BK * Dp), S(BK * BQ), acc(BQ * Dp), m(BQ), l(BQ), alpha(BQ),
        mask(BK * BQ) {}
};

void fwd_item(const Problem& P, FwdScratch& W, int b, int h, int qb) {
  const Ops& O = ops();
  const int D = P.D, Dp = P.Dp, g = h / P.G;
  const int t0 = qb * BQ, nq = std::min(BQ, P.T - t0), nqr = round_up(nq, 4), nqc = round_up(nq, 16);
  const size_t qstride = (size_t)P.H * D, kstride = (size_t)P.Hkv * D;
  load_transposed(W.Qt.data(), P.q + P.qrow(b, t0, h), qstride, nq, D, P.scale);
  std::fill(W.m.begin(), W.m.end(), NEG_INF);
  std::fill(W.l.begin(), W.l.end(), 0.f);
  const int last = t0 + nq - 1;
  bool started = false;
  for (int s0 = 0; s0 <= last; s0 += BK) {
    const int nk = std::min(BK, last + 1 - s0), nkr = round_up(nk, 4);
    const MaskKind kind = tile_mask(P, b, t0, nq, s0, nk, W.mask.data());
    if (kind == SKIP) continue;
    const bool full = kind == FULL;
    const Rows K = rows_view(W.K.data(), Dp, P.k + P.kvrow(b, s0, g), kstride, nk, D);
    const Rows V = rows_view(W.V.data(), Dp, P.v + P.kvrow(b, s0, g), kstride, nk, D);
    // Keys after the queries: S blocks all masked (st), and P zero past the diagonal (pv).
    const Band st = full ? NO_BAND : Band{t0 - s0, -NONE, NONE};
    const Band pv = full ? NO_BAND : Band{NONE, -NONE, t0 - s0};
    O.gemm(nkr, nqc, D, K.p, K.ld, W.Qt.data(), BQ, W.S.data(), BQ, false, st);
    apply_mask(W.S.data(), t0, nq, s0, nk, W.mask.data(), kind);
    O.softmax(W.S.data(), BQ, nkr, nqc, W.m.data(), W.l.data(), W.alpha.data(), full ? NONE : t0 - s0);
    // acc row i *= alpha[i], then += P^T V (the first tile run writes acc; the diagonal one always runs)
    O.gemm_tn(nqr, Dp, nk, W.S.data(), BQ, V.p, V.ld, W.acc.data(), Dp, started, pv, W.alpha.data());
    started = true;
  }
  for (int i = 0; i < nq; i++) {
    const float inv = 1.f / W.l[i];
    float* o = P.o + P.qrow(b, t0 + i, h);
    const float* a = W.acc.data() + (size_t)i * Dp;
    for (int d = 0; d < D; d++) o[d] = a[d] * inv;
    P.lse_out[((size_t)b * P.H + h) * P.T + t0 + i] = W.m[i] + std::log(W.l[i]);
  }
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
  // query side: Qt (scaled, transposed), dOt, Q and dO rows, L (lse, +inf padding), Di;
  // key side: K, V rows; tile: St (P^T), dPt (dS^T); accumulators dQ [BQ], dK/dV [kv_rows].
  // Row operands point into the tensors when no padding is needed (see rows_view).
  std::vector<float> Qt, dOt, Qr, dOr, L, Di, K, V, S, dP, dQ, dK, dV;
  Rows q{nullptr, 0}, dout{nullptr, 0}, k{nullptr, 0}, v{nullptr, 0};
  std::vector<uint8_t> mask;
  BwdScratch(int Dp, int kv_rows)
      : Qt((size_t)Dp * BQ), dOt((size_t)Dp * BQ), Qr(BQ * Dp), dOr(BQ * Dp), L(BQ), Di(BQ), K(BK * Dp),
        V(BK * Dp), S(BK * BQ), dP(BK * BQ), dQ(BQ * Dp), dK((size_t)kv_rows * Dp), dV((size_t)kv_rows * Dp),
        mask(BK * BQ) {}
};

void bwd_load_keys(const Problem& P, BwdScratch& W, int b, int g, int s0, int nk) {
  const size_t kstride = (size_t)P.Hkv * P.D;
  W.k = rows_view(W.K.data(), P.Dp, P.k + P.kvrow(b, s0, g), kstride, nk, P.D);
  W.v = rows_view(W.V.data(), P.Dp, P.v + P.kvrow(b, s0, g), kstride, nk, P.D);
}

void bwd_load_queries(const Problem& P, BwdScratch& W, int b, int h, int t0, int nq) {
  const int D = P.D;
  const size_t qstride = (size_t)P.H * D;
  const float* q = P.q + P.qrow(b, t0, h);
  const float* dout = P.dout + P.qrow(b, t0, h);
  load_transposed(W.Qt.data(), q, qstride, nq, D, P.scale);
  load_transposed(W.dOt.data(), dout, qstride, nq, D, 1.f);
  W.q = rows_view(W.Qr.data(), P.Dp, q, qstride, nq, D);
  W.dout = rows_view(W.dOr.data(), P.Dp, dout, qstride, nq, D);
  // Di[i] = sum_c out[i][c] dout[i][c], summed in c order (8 queries at a time where possible).
  const Ops& O = ops();
  const float* out = P.out + P.qrow(b, t0, h);
  const int n8 = O.rowdot8 ? nq / 8 * 8 : 0, D8 = O.rowdot8 ? D / 8 * 8 : 0;
  if (n8 && D8) O.rowdot8(W.Di.data(), out, dout, qstride, n8, D8);
  for (int i = 0; i < BQ; i++) {
    if (i < nq) {
      const float* o = out + i * qstride;
      const float* d = dout + i * qstride;
      float s = i < n8 ? W.Di[i] : 0.f;
      for (int c = (i < n8 ? D8 : 0); c < D; c++) s += o[c] * d[c];
      W.Di[i] = s;
      W.L[i] = P.lse[((size_t)b * P.H + h) * P.T + t0 + i];
    } else {
      W.Di[i] = 0;
      W.L[i] = std::numeric_limits<float>::infinity();  // padding queries: P = 0
    }
  }
}

// One tile, queries and keys already loaded (keys s0..s0+nk). Accumulates P^T dO into dV,
// dS^T Q into dK and dS K into dQ (each when non-null; dS is unscaled, so dK and dQ get the
// scale when written out). dK/dV point at the accumulator row of key s0.
// diag = t0 - s0 (first query minus first key) gives the causal band (see Band).
void bwd_tile(const Problem& P, BwdScratch& W, int nq, int nk, MaskKind kind, int diag, float* dK, float* dV, float* dQ) {
  const bool full = kind == FULL;
  const Ops& O = ops();
  const int D = P.D, Dp = P.Dp, nqr = round_up(nq, 4), nqc = round_up(nq, 16), nkr = round_up(nk, 4);
  float* S = W.S.data();
  float* dP = W.dP.data();
  const Band st = full ? NO_BAND : Band{diag, -NONE, NONE};   // S, dP: blocks of keys after all queries
  const Band kq = full ? NO_BAND : Band{NONE, -diag, NONE};   // dV, dK: key row j sees queries from j - diag
  const Band qk = full ? NO_BAND : Band{NONE, -NONE, diag};   // dQ: query row i sees keys up to i + diag
  O.gemm(nkr, nqc, D, W.k.p, W.k.ld, W.Qt.data(), BQ, S, BQ, false, st);
  apply_mask(S, diag, nq, 0, nk, W.mask.data(), kind);
  O.gemm(nkr, nqc, D, W.v.p, W.v.ld, W.dOt.data(), BQ, dP, BQ, false, st);
  O.p_ds(S, dP, BQ, nkr, nqc, W.L.data(), W.Di.data(), full ? NONE : diag);
  if (dV) O.gemm(nkr, Dp, nq, S, BQ, W.dout.p, W.dout.ld, dV, Dp, true, kq);
  if (dK) O.gemm(nkr, Dp, nq, dP, BQ, W.q.p, W.q.ld, dK, Dp, true, kq);
  if (dQ) O.gemm_tn(nqr, Dp, nk, dP, BQ, W.k.p, W.k.ld, dQ, Dp, true, qk, nullptr);
}

void write_rows(float* dst, size_t stride, const float* src, int Dp, int n, int D, float alpha) {
  for (int r = 0; r < n; r++) {
    float* d = dst + r * stride;
    const float* s = src + (size_t)r * Dp;
    for (int c = 0; c < D; c++) d[c] = alpha * s[c];
  }
}

// One pass for kv head g of batch row b: all its query heads, dq/dk/dv all written here.
void bwd_one_pass(const Problem& P, BwdScratch& W, int b, int g) {
  const int Dp = P.Dp;
  std::fill(W.dK.begin(), W.dK.end(), 0.f);
  std::fill(W.dV.begin(), W.dV.end(), 0.f);
  for (int hh = 0; hh < P.G; hh++) {
    const int h = g * P.G + hh;
    for (int t0 = 0; t0 < P.T; t0 += BQ) {
      const int nq = std::min(BQ, P.T - t0), last = t0 + nq - 1;
      bwd_load_queries(P, W, b, h, t0, nq);
      std::fill(W.dQ.begin(), W.dQ.end(), 0.f);
      for (int s0 = 0; s0 <= last; s0 += BK) {
        const int nk = std::min(BK, last + 1 - s0);
        const MaskKind kind = tile_mask(P, b, t0, nq, s0, nk, W.mask.data());
        if (kind == SKIP) continue;
        bwd_load_keys(P, W, b, g, s0, nk);
        bwd_tile(P, W, nq, nk, kind, t0 - s0, W.dK.data() + (size_t)s0 * Dp, W.dV.data() + (size_t)s0 * Dp, W.dQ.data());
      }
      write_rows(P.dq + P.qrow(b, t0, h), (size_t)P.H * P.D, W.dQ.data(), Dp, nq, P.D, P.scale);
    }
  }
  const size_t kstride = (size_t)P.Hkv * P.D;
  write_rows(P.dk + P.kvrow(b, 0, g), kstride, W.dK.data(), Dp, P.T, P.D, P.scale);
  write_rows(P.dv + P.kvrow(b, 0, g), kstride, W.dV.data(), Dp, P.T, P.D, 1.f);
}

// Two-pass mode, pass 1: dk/dv of key block kb of kv head g, over all its query heads.
void bwd_key_block(const Problem& P, BwdScratch& W, int b, int g, int kb) {
  const int s0 = kb * BK, nk = std::min(BK, P.T - s0);
  bwd_load_keys(P, W, b, g, s0, nk);
  std::fill(W.dK.begin(), W.dK.end(), 0.f);
  std::fill(W.dV.begin(), W.dV.end(), 0.f);
  for (int hh = 0; hh < P.G; hh++) {
    const int h = g * P.G + hh;
    for (int t0 = kb * BQ; t0 < P.T; t0 += BQ) {  // earlier query blocks cannot see these keys
      const int nq = std::min(BQ, P.T - t0);
      const MaskKind kind = tile_mask(P, b, t0, nq, s0, nk, W.mask.data());
      if (kind == SKIP) continue;
      bwd_load_queries(P, W, b, h, t0, nq);
      bwd_tile(P, W, nq, nk, kind, t0 - s0, W.dK.data(), W.dV.data(), nullptr);
    }
  }
  const size_t kstride = (size_t)P.Hkv * P.D;
  write_rows(P.dk + P.kvrow(b, s0, g), kstride, W.dK.data(), P.Dp, nk, P.D, P.scale);
  write_rows(P.dv + P.kvrow(b, s0, g), kstride, W.dV.data(), P.Dp, nk, P.D, 1.f);
}

// Two-pass mode, pass 2: dq of query block qb of head h.
void bwd_query_block(const Problem& P, BwdScratch& W, int b, int h, int qb) {
  const int t0 = qb * BQ, nq = std::min(BQ, P.T - t0), g = h / P.G, last = t0 + nq - 1;
  bwd_load_queries(P, W, b, h, t0, nq);
  std::fill(W.dQ.begin(), W.dQ.end(), 0.f);
  for (int s0 = 0; s0 <= last; s0 += BK) {
    const int nk = std::min(BK, last + 1 - s0);
    const MaskKind kind = tile_mask(P, b, t0, nq, s0, nk, W.mask.data());
    if (kind == SKIP) continue;
    bwd_load_keys(P, W, b, g, s0, nk);
    bwd_tile(P, W, nq, nk, kind, t0 - s0, nullptr, nullptr, W.dQ.data());
  }
  write_rows(P.dq + P.qrow(b, t0, h), (size_t)P.H * P.D, W.dQ.data(), P.Dp, nq, P.D, P.scale);
}

void attention_bwd(const Problem& P) {
  auto& pool = ajuste::ThreadPool::get();
  const long threads = pool.size();
  const long pairs = (long)P.B * P.Hkv;
  // One pass over (b, kv head) items does 5 tile products and no query reloads per tile; two passes
  // do 7 (and reload queries per tile) but split finer. Use one pass when its load balance (items
  // per thread, rounded up) is at least 75%.
  bool one_pass = (double)pairs / (threads * ((pairs + threads - 1) / threads)) >= 0.75;
  if (const char* f = std::getenv("AJUSTE_ATTN_BWD")) {
    if (std::string(f) == "1pass") one_pass = true;
    if (std::string(f) == "2pass") one_pass = false;
  }
  const int nkb = (P.T + BK - 1) / BK, nqb = (P.T + BQ - 1) / BQ;
  if (one_pass) {
    run_items<BwdScratch>(pairs, [&] { return BwdScratch(P.Dp, nkb * BK); }, [&](BwdScratch& W, long it) {
      bwd_one_pass(P, W, (int)(it / P.Hkv), (int)(it % P.Hkv));
    });
    return;
  }
  auto make = [&] { return BwdScratch(P.Dp, BK); };
  // Pass 1: dk, dv per (b, g, key block); early key blocks see the most queries, so go first.
  run_items<BwdScratch>(pairs * nkb, make, [&](BwdScratch& W, long it) {
    const int kb = (int)(it / pairs), r = (int)(it % pairs);
    bwd_key_block(P, W, r / P.Hkv, r % P.Hkv, kb);
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
  if ((double)P.H * P.D > 1e9) throw ArgError{std::string(fn) + ": H*D is too large"};
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
