// One instruction-set flavour of the GEMM engine. gemm.cc includes this file once per flavour, each
// time inside its own namespace, with AJ_GEMM_AVX2 set to 0 (portable scalar C++) or 1 (AVX2+FMA
// intrinsics, every function that may hold SIMD code marked AJ_TARGET = target("avx2,fma")). The
// AVX-512 flavour (12x32 zmm kernels, AVX512_BF16 for bf16 B) is gemm_avx512.h, written so that it also
// compiles against a scalar emulation of its intrinsics for testing; gemm.cc picks among them at run time.
//
// Uses from gemm_common.h: Mat<T>, widen(), Buf, round_up(), ceil_div(); from threads.h: ajuste::ThreadPool.
//
// Algorithm (GotoBLAS / BLIS): C[M,N] = alpha * A[M,K] B[K,N] + beta * C, operands given by strides.
//   for jc in N by NC:                     (B block KC x NC, packed in NR-column panels, lives in L2/L3)
//     for pc in K by KC:                   (KC balanced over K so the last block is not tiny)
//       pack B[pc, jc] -> Bp
//       for ic in M by MC:                 (A block MC x KC, packed in MR-row panels, lives in L2)
//         pack A[ic, pc] -> Ap
//         for jr in NC by NR: for ir in MC by MR: micro-kernel MR x NR over kc
// The first KC block applies beta to C, the later ones add. Threads split M or N (whichever has more
// micro-tiles) into one contiguous range each; every element of C sees the same sequence of
// operations whatever the split, so results are bitwise identical for any number of threads.

#ifndef AJ_GEMM_AVX2
#error "define AJ_GEMM_AVX2 before including gemm_impl.h"
#endif

#if AJ_GEMM_AVX2
#define AJ_TARGET __attribute__((target("avx2,fma")))
#else
#define AJ_TARGET
#endif

constexpr int MR_W = 6, NR_W = 16;  // wide kernel: 6 rows x 16 columns, 12 ymm accumulators
constexpr int MR_S = 12, NR_S = 8;  // skinny kernel (N <= 8): 12 rows x 8 columns, 12 ymm accumulators
constexpr int KC = 384;             // depth of a packed block: a 16 x 384 B panel is 24 KiB (of 32 KiB L1)
constexpr int MC = 144;             // rows of A per packed block: 144 x 384 x 4 = 216 KiB (L2 is 512 KiB)
constexpr int NC = 2048;            // columns of B per packed block: 384 x 2048 x 4 = 3 MiB (L3)
static_assert(MC % MR_W == 0 && MC % MR_S == 0, "MC must be a multiple of both MR");

// ------------------------------------------------------------------------------------------------
// Packing. A panel (MR rows x kc) is stored k-major: out[k * MR + r]; rows past m are zero.
// A B panel (kc x NR columns) is stored k-major: out[k * NR + j]; columns past n are zero.
// ------------------------------------------------------------------------------------------------
#if AJ_GEMM_AVX2
// 8 consecutive values as floats (bf16 widened).
template <typename T>
AJ_TARGET inline __m256 load8(const T* p) {
  if constexpr (sizeof(T) == 2)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
  else
    return _mm256_loadu_ps((const float*)p);
}

// Loads 8 values from each of the 8 rows src[0..7] at offset k, transposes the 8 x 8 block and stores
// it as 8 rows of 8 floats `ld` apart (32-byte aligned): out[i * ld + j] = src[j][k + i].
template <typename T>
AJ_TARGET inline void transpose8_store(const T* const* src, long k, float* out, long ld) {
  __m256 r[8];
  for (int j = 0; j < 8; j++) r[j] = load8(src[j] + k);
  ajuste::transpose8x8(r);
  for (int i = 0; i < 8; i++) _mm256_store_ps(out + i * ld, r[i]);
}
#endif

template <int MR, typename T>
AJ_TARGET void pack_a(const Mat<T>& A, long i0, int mc, long p0, int kc, float* __restrict out) {
  if (A.rs == 1) {  // op(A) columns contiguous (transA): read mc values per k, deal them to the panels
    for (int k = 0; k < kc; k++) {
      const T* row = A.p + i0 + (p0 + k) * A.cs;
      for (int ir = 0; ir < mc; ir += MR) {
        float* o = out + (long)ir * kc + (long)k * MR;
        const int m = std::min(MR, mc - ir);
        if (m == MR) {
          if constexpr (sizeof(T) == 4) std::memcpy(o, row + ir, sizeof(float) * MR);
          else for (int r = 0; r < MR; r++) o[r] = widen(row[ir + r]);
        } else {
          for (int r = 0; r < m; r++) o[r] = widen(row[ir + r]);
          for (int r = m; r < MR; r++) o[r] = 0.f;
        }
      }
    }
    return;
  }
  for (int ir = 0; ir < mc; ir += MR, out += (long)MR * kc) {
    const int m = std::min(MR, mc - ir);
    const T* base = A.p + (i0 + ir) * A.rs + p0 * A.cs;
    if (A.cs == 1 && m == MR) {  // rows contiguous: MR read streams, one write stream
      const T* rows[MR];
      for (int r = 0; r < MR; r++) rows[r] = base + r * A.rs;
      int k0 = 0;
#if AJ_GEMM_AVX2
      if constexpr (MR == 6) {  // 8 k at a time: 6 rows (and 2 zero rows) transposed in registers
        for (; k0 + 8 <= kc; k0 += 8) {
          __m256 v[8];
          for (int r = 0; r < 6; r++) v[r] = load8(rows[r] + k0);
          v[6] = v[7] = _mm256_setzero_ps();
          ajuste::transpose8x8(v);
          float* o = out + (long)k0 * 6;
          for (int i = 0; i < 8; i++) {
            _mm_storeu_ps(o + i * 6, _mm256_castps256_ps128(v[i]));
            _mm_storel_pi((__m64*)(o + i * 6 + 4), _mm256_extractf128_ps(v[i], 1));
          }
        }
      }
#endif
      for (int k = k0; k < kc; k++) {
        float* o = out + (long)k * MR;
        for (int r = 0; r < MR; r++) o[r] = widen(rows[r][k]);
      }
    } else {
      for (int k = 0; k < kc; k++) {
        float* o = out + (long)k * MR;
        for (int r = 0; r < MR; r++) o[r] = r < m ? widen(base[r * A.rs + (long)k * A.cs]) : 0.f;
      }
    }
  }
}

template <int NR, typename T>
AJ_TARGET void pack_b(const Mat<T>& B, long p0, int kc, long j0, int nc, float* __restrict out) {
  if (B.cs == 1) {  // rows of op(B) contiguous (no transB): read nc values per k, deal them to the panels
    for (int k = 0; k < kc; k++) {
      const T* row = B.p + (p0 + k) * B.rs + j0;
      int jr = 0;
      for (; jr + NR <= nc; jr += NR) {
        float* o = out + (long)jr * kc + (long)k * NR;
#if AJ_GEMM_AVX2
        if constexpr (sizeof(T) == 2) {
          for (int j = 0; j < NR; j += 8) {
            const __m128i h = _mm_loadu_si128((const __m128i*)(row + jr + j));
            _mm256_store_ps(o + j, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
          }
        } else {
          for (int j = 0; j < NR; j += 8) _mm256_store_ps(o + j, _mm256_loadu_ps((const float*)(row + jr + j)));
        }
#else
        for (int j = 0; j < NR; j++) o[j] = widen(row[jr + j]);
#endif
      }
      if (jr < nc) {
        float* o = out + (long)jr * kc + (long)k * NR;
        const int n = nc - jr;
        for (int j = 0; j < n; j++) o[j] = widen(row[jr + j]);
        for (int j = n; j < NR; j++) o[j] = 0.f;
      }
    }
    return;
  }
  for (int jr = 0; jr < nc; jr += NR, out += (long)NR * kc) {
    const int n = std::min(NR, nc - jr);
    const T* base = B.p + p0 * B.rs + (j0 + jr) * B.cs;
    if (B.rs == 1) {  // columns of op(B) contiguous (transB): n read streams
      const T* cols[NR];
      for (int j = 0; j < NR; j++) cols[j] = base + (j < n ? j : 0) * B.cs;
#if AJ_GEMM_AVX2
      if (n == NR && NR % 8 == 0) {  // 8 x 8 blocks transposed in registers
        int k = 0;
        if constexpr (sizeof(T) == 2) {  // bf16 weights: prefetch the next panel's columns, a line each per 32 k
          if (jr + 2 * NR <= nc) {       // (from DRAM 1.4x faster; f32 measured no better when B sits in L3)
            for (; k + 8 <= kc; k += 8) {
              if ((k & 31) == 0)
                for (int j = 0; j < NR; j++) _mm_prefetch((const char*)(cols[j] + NR * B.cs + k), _MM_HINT_T0);
              for (int g = 0; g < NR; g += 8) transpose8_store<T>(cols + g, k, out + (long)k * NR + g, NR);
            }
          }
        }
        for (; k + 8 <= kc; k += 8)
          for (int g = 0; g < NR; g += 8) transpose8_store<T>(cols + g, k, out + (long)k * NR + g, NR);
        for (; k < kc; k++) {
          float* o = out + (long)k * NR;
          for (int j = 0; j < NR; j++) o[j] = widen(cols[j][k]);
        }
        continue;
      }
#endif
      if (n == NR) {
        for (int k = 0; k < kc; k++) {
          float* o = out + (long)k * NR;
          for (int j = 0; j < NR; j++) o[j] = widen(cols[j][k]);
        }
      } else {
        for (int k = 0; k < kc; k++) {
          float* o = out + (long)k * NR;
          for (int j = 0; j < NR; j++) o[j] = j < n ? widen(cols[j][k]) : 0.f;
        }
      }
    } else {
      for (int k = 0; k < kc; k++) {
        float* o = out + (long)k * NR;
        for (int j = 0; j < NR; j++) o[j] = j < n ? widen(base[(long)k * B.rs + j * B.cs]) : 0.f;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Micro-kernels: acc[MR x NR] = sum_k a[k*MR + r] * b[k*NR + j], then
// C[r*rsc + j*csc] = alpha * acc + beta * C for r < m, j < n (beta == 0: C is not read).
// ------------------------------------------------------------------------------------------------
template <int MR, int NR>
inline void store_tile(const float* t, float* c, long rsc, long csc, int m, int n, float alpha, float beta) {
  for (int r = 0; r < m; r++)
    for (int j = 0; j < n; j++) {
      float* p = c + r * rsc + j * csc;
      const float v = alpha * t[r * NR + j];
      *p = beta == 0.f ? v : v + beta * *p;
    }
}

#if AJ_GEMM_AVX2

#define AJ_FMA2(r)                                 \
  av = _mm256_broadcast_ss(a + r);                 \
  c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);      \
  c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);

AJ_TARGET void ukr_w(int kc, const float* __restrict a, const float* __restrict b, float* c, long rsc, long csc,
                     int m, int n, float alpha, float beta) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int r = 0; r < MR_W; r++) {  // C's tile arrives while the k loop runs
    _mm_prefetch((const char*)(c + r * rsc), _MM_HINT_T0);
    _mm_prefetch((const char*)(c + r * rsc + 15 * csc), _MM_HINT_T0);
  }
#pragma GCC unroll 4
  for (int k = 0; k < kc; k++) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 av;
    AJ_FMA2(0) AJ_FMA2(1) AJ_FMA2(2) AJ_FMA2(3) AJ_FMA2(4) AJ_FMA2(5)
    a += MR_W;
    b += NR_W;
  }
  if (m == MR_W && n == NR_W && csc == 1) {
    const __m256 va = _mm256_set1_ps(alpha);
#define AJ_ST(r)                                                                                     \
  {                                                                                                  \
    float* p = c + r * rsc;                                                                          \
    if (beta == 0.f) {                                                                               \
      _mm256_storeu_ps(p, _mm256_mul_ps(va, c##r##0));                                               \
      _mm256_storeu_ps(p + 8, _mm256_mul_ps(va, c##r##1));                                           \
    } else if (beta == 1.f) {                                                                        \
      _mm256_storeu_ps(p, _mm256_fmadd_ps(va, c##r##0, _mm256_loadu_ps(p)));                         \
      _mm256_storeu_ps(p + 8, _mm256_fmadd_ps(va, c##r##1, _mm256_loadu_ps(p + 8)));                 \
    } else {                                                                                         \
      const __m256 vb = _mm256_set1_ps(beta);                                                        \
      _mm256_storeu_ps(p, _mm256_fmadd_ps(va, c##r##0, _mm256_mul_ps(vb, _mm256_loadu_ps(p))));      \
      _mm256_storeu_ps(p + 8, _mm256_fmadd_ps(va, c##r##1, _mm256_mul_ps(vb, _mm256_loadu_ps(p + 8)))); \
    }                                                                                                \
  }
    AJ_ST(0) AJ_ST(1) AJ_ST(2) AJ_ST(3) AJ_ST(4) AJ_ST(5)
#undef AJ_ST
    return;
  }
  alignas(32) float t[MR_W * NR_W];
#define AJ_T(r) _mm256_store_ps(t + r * 16, c##r##0); _mm256_store_ps(t + r * 16 + 8, c##r##1);
  AJ_T(0) AJ_T(1) AJ_T(2) AJ_T(3) AJ_T(4) AJ_T(5)
#undef AJ_T
  store_tile<MR_W, NR_W>(t, c, rsc, csc, m, n, alpha, beta);
}
#undef AJ_FMA2

// Stores the 12 x 8 tile of the skinny kernels: C = alpha * acc + beta * C.
AJ_TARGET inline void store_s(const __m256 (&acc)[MR_S], float* c, long rsc, long csc, int m, int n, float alpha,
                              float beta) {
  if (m == MR_S && n == NR_S && csc == 1) {
    const __m256 va = _mm256_set1_ps(alpha);
    const __m256 vb = _mm256_set1_ps(beta);
    for (int r = 0; r < MR_S; r++) {
      float* p = c + r * rsc;
      if (beta == 0.f) _mm256_storeu_ps(p, _mm256_mul_ps(va, acc[r]));
      else if (beta == 1.f) _mm256_storeu_ps(p, _mm256_fmadd_ps(va, acc[r], _mm256_loadu_ps(p)));
      else _mm256_storeu_ps(p, _mm256_fmadd_ps(va, acc[r], _mm256_mul_ps(vb, _mm256_loadu_ps(p))));
    }
    return;
  }
  alignas(32) float t[MR_S * NR_S];
  for (int r = 0; r < MR_S; r++) _mm256_store_ps(t + r * NR_S, acc[r]);
  store_tile<MR_S, NR_S>(t, c, rsc, csc, m, n, alpha, beta);
}

#define AJ_FMA1(r)                      \
  av = _mm256_broadcast_ss(a + r);      \
  c##r = _mm256_fmadd_ps(av, b0, c##r);

AJ_TARGET void ukr_s(int kc, const float* __restrict a, const float* __restrict b, float* c, long rsc, long csc,
                     int m, int n, float alpha, float beta) {
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  __m256 c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  for (int r = 0; r < MR_S; r++) _mm_prefetch((const char*)(c + r * rsc), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int k = 0; k < kc; k++) {
    const __m256 b0 = _mm256_load_ps(b);
    __m256 av;
    AJ_FMA1(0) AJ_FMA1(1) AJ_FMA1(2) AJ_FMA1(3) AJ_FMA1(4) AJ_FMA1(5)
    AJ_FMA1(6) AJ_FMA1(7) AJ_FMA1(8) AJ_FMA1(9) AJ_FMA1(10) AJ_FMA1(11)
    a += MR_S;
    b += NR_S;
  }
  const __m256 acc[MR_S] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
  store_s(acc, c, rsc, csc, m, n, alpha, beta);
}

// The N <= 8 path reads op(A) straight from its rows (A.cs == 1, no packing: with N <= 8 each element of
// A is used once, so a copy would only add traffic) as dot products: row i of C is the 8 dot products of
// row i of op(A) with the 8 rows of op(B)^T. op(B)^T is packed in blocks of KD_DIRECT k (8 rows x KD floats,
// 8 KiB, stays in L1), so op(A) is read as contiguous 1 KiB runs of each row, one row after the other.
// Each lane of acc[q] sums the k = lane (mod 8) terms in k order, over all blocks; the 8 lanes are added by
// a fixed hadd tree at the end (dot_reduce8): the order depends on K only, never on the row split.
constexpr int KD_DIRECT = 256;  // k per block of packed op(B)^T (balanced: ceil(K / 256) blocks of equal size)
constexpr int RT_DIRECT = 12;   // rows swept together per k block (their accumulators live in a scratch)

// acc0[q], acc1[q], acc2[q] (q < 4) = (first ? 0 : themselves) + rows x0, x1, x2 (kl floats) . rows
// bq + q * ld of the packed block: 12 accumulators (12 independent FMA chains), 3 + 4 loads per 12 FMAs.
// The last kl % 8 of x take masked loads (the block is zero-padded to a multiple of 8). With pf0 set,
// prefetches the next run of each row (pf0..pf2, kl floats) into L1 while reading this one.
AJ_TARGET inline void dot3x4(const float* x0, const float* x1, const float* x2, const float* __restrict bq, int ld,
                             int kl, float* __restrict acc0, float* __restrict acc1, float* __restrict acc2,
                             const float* pf0, const float* pf1, const float* pf2, bool first) {
  __m256 s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23;
  if (first) {  // the first block starts the sums (no scratch to clear)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = s20 = s21 = s22 = s23 = _mm256_setzero_ps();
  } else {
    s00 = _mm256_load_ps(acc0), s01 = _mm256_load_ps(acc0 + 8), s02 = _mm256_load_ps(acc0 + 16);
    s03 = _mm256_load_ps(acc0 + 24), s10 = _mm256_load_ps(acc1), s11 = _mm256_load_ps(acc1 + 8);
    s12 = _mm256_load_ps(acc1 + 16), s13 = _mm256_load_ps(acc1 + 24), s20 = _mm256_load_ps(acc2);
    s21 = _mm256_load_ps(acc2 + 8), s22 = _mm256_load_ps(acc2 + 16), s23 = _mm256_load_ps(acc2 + 24);
  }
  const float *b0 = bq, *b1 = bq + ld, *b2 = bq + 2 * ld, *b3 = bq + 3 * ld;
#define AJ_DOT_STEP(X0, X1, X2, K)                                                                   \
  {                                                                                                  \
    const __m256 u0 = X0, u1 = X1, u2 = X2;                                                          \
    __m256 w = _mm256_load_ps(b0 + (K));                                                             \
    s00 = _mm256_fmadd_ps(u0, w, s00); s10 = _mm256_fmadd_ps(u1, w, s10); s20 = _mm256_fmadd_ps(u2, w, s20); \
    w = _mm256_load_ps(b1 + (K));                                                                    \
    s01 = _mm256_fmadd_ps(u0, w, s01); s11 = _mm256_fmadd_ps(u1, w, s11); s21 = _mm256_fmadd_ps(u2, w, s21); \
    w = _mm256_load_ps(b2 + (K));                                                                    \
    s02 = _mm256_fmadd_ps(u0, w, s02); s12 = _mm256_fmadd_ps(u1, w, s12); s22 = _mm256_fmadd_ps(u2, w, s22); \
    w = _mm256_load_ps(b3 + (K));                                                                    \
    s03 = _mm256_fmadd_ps(u0, w, s03); s13 = _mm256_fmadd_ps(u1, w, s13); s23 = _mm256_fmadd_ps(u2, w, s23); \
  }
#define AJ_DOT_LD(K) AJ_DOT_STEP(_mm256_loadu_ps(x0 + (K)), _mm256_loadu_ps(x1 + (K)), _mm256_loadu_ps(x2 + (K)), (K))
  int k = 0;
  if (pf0) {
    for (; k + 8 <= kl; k += 8) {
      _mm_prefetch((const char*)(pf0 + k), _MM_HINT_T0);
      _mm_prefetch((const char*)(pf1 + k), _MM_HINT_T0);
      _mm_prefetch((const char*)(pf2 + k), _MM_HINT_T0);
      AJ_DOT_LD(k)
    }
  }
  for (; k + 8 <= kl; k += 8) AJ_DOT_LD(k)
#undef AJ_DOT_LD
  if (k < kl) {
    const __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(kl - k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    AJ_DOT_STEP(_mm256_maskload_ps(x0 + k, mk), _mm256_maskload_ps(x1 + k, mk), _mm256_maskload_ps(x2 + k, mk), k)
  }
#undef AJ_DOT_STEP
  _mm256_store_ps(acc0, s00); _mm256_store_ps(acc0 + 8, s01); _mm256_store_ps(acc0 + 16, s02);
  _mm256_store_ps(acc0 + 24, s03); _mm256_store_ps(acc1, s10); _mm256_store_ps(acc1 + 8, s11);
  _mm256_store_ps(acc1 + 16, s12); _mm256_store_ps(acc1 + 24, s13); _mm256_store_ps(acc2, s20);
  _mm256_store_ps(acc2 + 8, s21); _mm256_store_ps(acc2 + 16, s22); _mm256_store_ps(acc2 + 24, s23);
}

// The 8 sums of the 8 lanes of acc[q] (8 vectors of 8), in a fixed order.
AJ_TARGET inline __m256 dot_reduce8(const float* acc) {
  const __m256 h01 = _mm256_hadd_ps(_mm256_load_ps(acc), _mm256_load_ps(acc + 8));
  const __m256 h23 = _mm256_hadd_ps(_mm256_load_ps(acc + 16), _mm256_load_ps(acc + 24));
  const __m256 h45 = _mm256_hadd_ps(_mm256_load_ps(acc + 32), _mm256_load_ps(acc + 40));
  const __m256 h67 = _mm256_hadd_ps(_mm256_load_ps(acc + 48), _mm256_load_ps(acc + 56));
  const __m256 lo = _mm256_hadd_ps(h01, h23), hi = _mm256_hadd_ps(h45, h67);  // [q0..3 | q0..3], [q4..7 | q4..7]
  return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}
#undef AJ_FMA1

// Peak FMA throughput of one thread: 12 independent chains of vfmadd (2 pipes x 4 cycles latency
// need 8). Runs bursts of 8192 x 12 FMAs (~15 us) for `seconds` and returns the best burst's GFLOP/s,
// so that time slices lost to other processes on a shared machine do not lower the figure.
AJ_TARGET double fma_loop(double seconds) {
  const __m256 m = _mm256_set1_ps(0.999999f), d = _mm256_set1_ps(1e-6f);
  __m256 x0 = _mm256_set1_ps(1.0f), x1 = _mm256_set1_ps(1.1f), x2 = _mm256_set1_ps(1.2f);
  __m256 x3 = _mm256_set1_ps(1.3f), x4 = _mm256_set1_ps(1.4f), x5 = _mm256_set1_ps(1.5f);
  __m256 x6 = _mm256_set1_ps(1.6f), x7 = _mm256_set1_ps(1.7f), x8 = _mm256_set1_ps(1.8f);
  __m256 x9 = _mm256_set1_ps(1.9f), x10 = _mm256_set1_ps(2.0f), x11 = _mm256_set1_ps(2.1f);
  using clk = std::chrono::steady_clock;
  const auto start = clk::now();
  double best = 0;
  for (;;) {
    const auto t0 = clk::now();
    for (int it = 0; it < 8192; it++) {
      x0 = _mm256_fmadd_ps(x0, m, d); x1 = _mm256_fmadd_ps(x1, m, d); x2 = _mm256_fmadd_ps(x2, m, d);
      x3 = _mm256_fmadd_ps(x3, m, d); x4 = _mm256_fmadd_ps(x4, m, d); x5 = _mm256_fmadd_ps(x5, m, d);
      x6 = _mm256_fmadd_ps(x6, m, d); x7 = _mm256_fmadd_ps(x7, m, d); x8 = _mm256_fmadd_ps(x8, m, d);
      x9 = _mm256_fmadd_ps(x9, m, d); x10 = _mm256_fmadd_ps(x10, m, d); x11 = _mm256_fmadd_ps(x11, m, d);
      __asm__ volatile("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4), "+x"(x5));
      __asm__ volatile("" : "+x"(x6), "+x"(x7), "+x"(x8), "+x"(x9), "+x"(x10), "+x"(x11));
    }
    const auto t1 = clk::now();
    const double dt = std::chrono::duration<double>(t1 - t0).count();
    if (dt > 0) best = std::max(best, 2.0 * 8192 * 12 * 8 / dt / 1e9);
    if (std::chrono::duration<double>(t1 - start).count() >= seconds) break;
  }
  return best;
}

#else  // portable scalar kernels

template <int MR, int NR>
void ukr_generic(int kc, const float* __restrict a, const float* __restrict b, float* c, long rsc, long csc, int m,
                 int n, float alpha, float beta) {
  float t[MR * NR] = {};
  for (int k = 0; k < kc; k++, a += MR, b += NR)
    for (int r = 0; r < MR; r++) {
      const float av = a[r];
      for (int j = 0; j < NR; j++) t[r * NR + j] += av * b[j];
    }
  store_tile<MR, NR>(t, c, rsc, csc, m, n, alpha, beta);
}
inline void ukr_w(int kc, const float* a, const float* b, float* c, long rsc, long csc, int m, int n, float alpha,
                  float beta) {
  ukr_generic<MR_W, NR_W>(kc, a, b, c, rsc, csc, m, n, alpha, beta);
}
inline void ukr_s(int kc, const float* a, const float* b, float* c, long rsc, long csc, int m, int n, float alpha,
                  float beta) {
  ukr_generic<MR_S, NR_S>(kc, a, b, c, rsc, csc, m, n, alpha, beta);
}

inline double fma_loop(double seconds) {
  volatile float sink = 0;
  float x[8] = {1, 1.1f, 1.2f, 1.3f, 1.4f, 1.5f, 1.6f, 1.7f};
  using clk = std::chrono::steady_clock;
  const auto start = clk::now();
  double best = 0;
  for (;;) {
    const auto t0 = clk::now();
    for (int it = 0; it < 4096; it++)
      for (int i = 0; i < 8; i++) x[i] = x[i] * 0.999999f + 1e-6f;
    const auto t1 = clk::now();
    const double dt = std::chrono::duration<double>(t1 - t0).count();
    if (dt > 0) best = std::max(best, 2.0 * 8 * 4096 / dt / 1e9);
    if (std::chrono::duration<double>(t1 - start).count() >= seconds) break;
  }
  for (float v : x) sink = sink + v;
  return best;
}

#endif

// ------------------------------------------------------------------------------------------------
// Small problems: no packing, no threads. Row i of C accumulates in acc[N] over k (f32).
// ------------------------------------------------------------------------------------------------
template <typename TB>
AJ_TARGET void small_gemm(int M, int N, int K, float alpha, const Mat<float>& A, const Mat<TB>& B, float beta,
                          float* C, long ldc, float* __restrict acc) {
  for (int i = 0; i < M; i++) {
    for (int j = 0; j < N; j++) acc[j] = 0.f;
    for (int k = 0; k < K; k++) {
      const float av = A.p[i * A.rs + k * A.cs];
      if (B.cs == 1) {
        const TB* row = B.p + k * B.rs;
        for (int j = 0; j < N; j++) acc[j] += av * widen(row[j]);
      } else {
        const TB* col = B.p + k * B.rs;
        for (int j = 0; j < N; j++) acc[j] += av * widen(col[j * B.cs]);
      }
    }
    float* c = C + i * ldc;
    if (beta == 0.f)
      for (int j = 0; j < N; j++) c[j] = alpha * acc[j];
    else
      for (int j = 0; j < N; j++) c[j] = alpha * acc[j] + beta * c[j];
  }
}

// ------------------------------------------------------------------------------------------------
// Driver
// ------------------------------------------------------------------------------------------------
// The ic loop of one packed B block (kc x nc at (pc, jc), in Bp): rows [m0, m1) of C in A blocks of
// mc_step rows, each packed into Ap. be: beta for this K block (beta on the first, 1 after).
template <int MR, int NR, typename TA>
void block_rows(const Mat<TA>& A, float alpha, float be, float* C, long rsc, long csc, int m0, int m1, int mc_step,
                int pc, int kc, int jc, int nc, const float* Bp, float* Ap) {
  for (int ic = m0; ic < m1; ic += mc_step) {
    const int mc = std::min(mc_step, m1 - ic);
    pack_a<MR, TA>(A, ic, mc, pc, kc, Ap);
    auto tile = [&](int ir, int jr) {
      const int m = std::min(MR, mc - ir), n = std::min(NR, nc - jr);
      float* cc = C + (long)(ic + ir) * rsc + (long)(jc + jr) * csc;
      if constexpr (MR == MR_W)
        ukr_w(kc, Ap + (long)ir * kc, Bp + (long)jr * kc, cc, rsc, csc, m, n, alpha, be);
      else
        ukr_s(kc, Ap + (long)ir * kc, Bp + (long)jr * kc, cc, rsc, csc, m, n, alpha, be);
    };
    if (kc >= 32) {  // B micro-panel stays in L1 while A micro-panels stream from L2
      for (int jr = 0; jr < nc; jr += NR)
        for (int ir = 0; ir < mc; ir += MR) tile(ir, jr);
    } else {  // tiny K: the C traffic dominates, so sweep C row by row (contiguous runs)
      for (int ir = 0; ir < mc; ir += MR)
        for (int jr = 0; jr < nc; jr += NR) tile(ir, jr);
    }
  }
}

// Rows of A per packed block for the M range [m0, m1): MC, balanced so that the last block is not tiny.
template <int MR>
int mc_for(int m0, int m1) {
  const int mb = ceil_div(m1 - m0, MC);
  return round_up(ceil_div(m1 - m0, mb), MR);
}

template <int MR, int NR, typename TA, typename TB>
void run_range(int M, int N, int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C, long rsc,
               long csc, int m0, int m1, int n0, int n1) {
  (void)M;
  (void)N;
  static thread_local Buf abuf, bbuf;
  const int kb = ceil_div(K, KC);
  const int kc_step = ceil_div(K, kb);  // depends on K only: same blocks (and sums) on every thread
  const int mc_step = mc_for<MR>(m0, m1);
  const int nc_cap = NC;  // (a smaller block for small M, to stay in L2, measured slower: shorter reads of B)
  float* Bp = bbuf.get((size_t)kc_step * round_up(std::min(nc_cap, n1 - n0), NR));
  float* Ap = abuf.get((size_t)kc_step * mc_step);
  for (int jc = n0; jc < n1; jc += nc_cap) {
    const int nc = std::min(nc_cap, n1 - jc);
    for (int pc = 0; pc < K; pc += kc_step) {
      const int kc = std::min(kc_step, K - pc);
      pack_b<NR, TB>(B, pc, kc, jc, nc, Bp);
      block_rows<MR, NR, TA>(A, alpha, pc == 0 ? beta : 1.f, C, rsc, csc, m0, m1, mc_step, pc, kc, jc, nc, Bp, Ap);
    }
  }
}

// Splits the work over the pool: M or N ranges aligned to the micro-tile, whichever has more tiles.
template <int MR, int NR, typename TA, typename TB>
void run_threads(int M, int N, int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C,
                 long rsc, long csc) {
  auto& pool = ajuste::ThreadPool::get();
  const double flops = 2.0 * M * N * K;
  const long mu = ceil_div(M, MR), nu = ceil_div(N, NR);
  if (pool.size() <= 1 || flops < 4e6 || std::max(mu, nu) < 2) {
    run_range<MR, NR>(M, N, K, alpha, A, B, beta, C, rsc, csc, 0, M, 0, N);
    return;
  }
  if (nu >= mu) {
    pool.parallel_for(nu, [&](long b, long e, int) {
      run_range<MR, NR>(M, N, K, alpha, A, B, beta, C, rsc, csc, 0, M, (int)(b * NR), (int)std::min<long>(N, e * NR));
    });
  } else {
    pool.parallel_for(mu, [&](long b, long e, int) {
      run_range<MR, NR>(M, N, K, alpha, A, B, beta, C, rsc, csc, (int)(b * MR), (int)std::min<long>(M, e * MR), 0, N);
    });
  }
}

#if AJ_GEMM_AVX2
// N <= 8 with op(A) rows contiguous: op(B)^T is packed (8 x K, zero-padded, in KD_DIRECT blocks), op(A)
// is streamed once. Rows [m0, m1) of C: RT_DIRECT rows at a time, block by block, three rows and four
// columns of C per pass (two passes per triple of rows, the second reading the rows from L1).
AJ_TARGET void run_direct_range(int K, float alpha, const Mat<float>& A, const float* Bt, float beta, float* C, long rsc,
                      long csc, int N, int m0, int m1) {
  alignas(32) float acc[RT_DIRECT + 2][64];  // [row][q * 8 + lane]; the last two take missing rows of a triple
  const long lda = A.rs;
  const int kd = round_up(ceil_div(K, ceil_div(K, KD_DIRECT)), 8);  // balanced blocks, a function of K only
  for (int i0 = m0; i0 < m1; i0 += RT_DIRECT) {
    const int rt = std::min(RT_DIRECT, m1 - i0);
    for (int k0 = 0; k0 < K; k0 += kd) {
      const int kl = std::min(kd, K - k0), ld = round_up(kl, 8);
      const float* blk = Bt + (long)k0 * NR_S;
      // Where the next run of each row slot starts: the same row's next block, or the next group's row.
      const long next = k0 + kd < K ? kd : (long)RT_DIRECT * lda - k0;
      for (int r = 0; r < rt; r += 3) {
        const float* x0 = A.p + (long)(i0 + r) * lda + k0;
        const float* x1 = r + 1 < rt ? x0 + lda : x0;
        const float* x2 = r + 2 < rt ? x0 + 2 * lda : x0;
        float* a1 = r + 1 < rt ? acc[r + 1] : acc[RT_DIRECT];
        float* a2 = r + 2 < rt ? acc[r + 2] : acc[RT_DIRECT + 1];
        dot3x4(x0, x1, x2, blk, ld, kl, acc[r], a1, a2, x0 + next, x1 + next, x2 + next, k0 == 0);
        dot3x4(x0, x1, x2, blk + 4 * ld, ld, kl, acc[r] + 32, a1 + 32, a2 + 32, nullptr, nullptr, nullptr, k0 == 0);
      }
    }
    for (int r = 0; r < rt; r++) {
      float* c = C + (long)(i0 + r) * rsc;
      const __m256 s = _mm256_mul_ps(_mm256_set1_ps(alpha), dot_reduce8(acc[r]));
      if (N == NR_S && csc == 1) {
        if (beta == 0.f) _mm256_storeu_ps(c, s);
        else _mm256_storeu_ps(c, _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(c), s));
      } else {
        alignas(32) float t[NR_S];
        _mm256_store_ps(t, s);
        for (int j = 0; j < N; j++) c[j * csc] = beta == 0.f ? t[j] : t[j] + beta * c[j * csc];
      }
    }
  }
}

// Packs op(B)^T (N <= 8 rows of K) as consecutive blocks of KD_DIRECT k: the block at k0 (kl long, padded
// to ld = round_up(kl, 8)) starts at k0 * 8 and holds row q at q * ld; rows past N and k past kl are zero.
template <typename TB>
void pack_bt_direct(int N, int K, const Mat<TB>& B, float* __restrict out) {
  const int kd = round_up(ceil_div(K, ceil_div(K, KD_DIRECT)), 8);
  for (int k0 = 0; k0 < K; k0 += kd) {
    const int kl = std::min(kd, K - k0), ld = round_up(kl, 8);
    float* blk = out + (long)k0 * NR_S;
    for (int q = 0; q < NR_S; q++) {
      float* o = blk + (long)q * ld;
      if (q < N) {
        const TB* src = B.p + (long)k0 * B.rs + (long)q * B.cs;
        if (B.rs == 1)
          for (int k = 0; k < kl; k++) o[k] = widen(src[k]);
        else
          for (int k = 0; k < kl; k++) o[k] = widen(src[(long)k * B.rs]);
        for (int k = kl; k < ld; k++) o[k] = 0.f;
      } else {
        for (int k = 0; k < ld; k++) o[k] = 0.f;
      }
    }
  }
}

template <typename TB>
void run_direct(int M, int N, int K, float alpha, const Mat<float>& A, const Mat<TB>& B, float beta, float* C,
                long rsc, long csc) {
  static thread_local Buf bbuf;
  float* Bt = bbuf.get((size_t)round_up(K, 8) * NR_S);
  pack_bt_direct<TB>(N, K, B, Bt);
  auto& pool = ajuste::ThreadPool::get();
  const long mu = ceil_div(M, RT_DIRECT);
  if (pool.size() <= 1 || 2.0 * M * N * K < 4e6 || mu < 2) {
    run_direct_range(K, alpha, A, Bt, beta, C, rsc, csc, N, 0, M);
    return;
  }
  pool.parallel_for(mu, [&](long b, long e, int) {
    run_direct_range(K, alpha, A, Bt, beta, C, rsc, csc, N, (int)(b * RT_DIRECT),
                     (int)std::min<long>(M, e * RT_DIRECT));
  });
}
#endif

// C (rsc, csc) = alpha * A B + beta * C with M, N, K > 0. N <= 8 takes the 12x8 kernels.
template <typename TA, typename TB>
void run(int M, int N, int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C, long rsc,
         long csc) {
#if AJ_GEMM_AVX2
  if constexpr (std::is_same_v<TA, float>) {
    if (N <= NR_S && A.cs == 1) return run_direct(M, N, K, alpha, A, B, beta, C, rsc, csc);
  }
#endif
  if (N <= NR_S)
    run_threads<MR_S, NR_S>(M, N, K, alpha, A, B, beta, C, rsc, csc);
  else
    run_threads<MR_W, NR_W>(M, N, K, alpha, A, B, beta, C, rsc, csc);
}

#undef AJ_TARGET
