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

// In-register 8 x 8 transpose: r[i][j] becomes r[j][i].
AJ_TARGET inline void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Loads 8 values from each of the 8 rows src[0..7] at offset k, transposes the 8 x 8 block and stores
// it as 8 rows of 8 floats `ld` apart (32-byte aligned): out[i * ld + j] = src[j][k + i].
template <typename T>
AJ_TARGET inline void transpose8_store(const T* const* src, long k, float* out, long ld) {
  __m256 r[8];
  for (int j = 0; j < 8; j++) r[j] = load8(src[j] + k);
  transpose8(r);
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
          transpose8(v);
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

// The N <= 8 kernel reading op(A) straight from its rows (A.cs == 1, no packing: with N <= 8 each
// element of A is used once, so a copy would only add traffic). Row r of the tile is a + r * lda;
// rows past m repeat row m-1 (read, never stored). Prefetches each row 1 KiB ahead.
AJ_TARGET void ukr_direct(int kc, const float* a, long lda, const float* __restrict b, float* c, long rsc, long csc,
                          int m, int n, float alpha, float beta) {
  const float* ar[MR_S];
  for (int r = 0; r < MR_S; r++) ar[r] = a + (r < m ? r : m - 1) * lda;
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  __m256 c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
#define AJ_FMAD(r) c##r = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[r] + k), b0, c##r);
  for (int k0 = 0; k0 < kc; k0 += 16) {
    for (int r = 0; r < MR_S; r++) _mm_prefetch((const char*)(ar[r] + k0 + 256), _MM_HINT_T0);
    const int k1 = std::min(kc, k0 + 16);
    for (int k = k0; k < k1; k++) {
      const __m256 b0 = _mm256_load_ps(b + (long)k * NR_S);
      AJ_FMAD(0) AJ_FMAD(1) AJ_FMAD(2) AJ_FMAD(3) AJ_FMAD(4) AJ_FMAD(5)
      AJ_FMAD(6) AJ_FMAD(7) AJ_FMAD(8) AJ_FMAD(9) AJ_FMAD(10) AJ_FMAD(11)
    }
  }
#undef AJ_FMAD
  const __m256 acc[MR_S] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
  store_s(acc, c, rsc, csc, m, n, alpha, beta);
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
// N <= 8 with op(A) rows contiguous: only B is packed (kc x 8, kc up to 4096: it stays in L2), A is
// streamed once, row by row, by ukr_direct. Threads split M.
constexpr int KC_DIRECT = 4096;

void run_direct_range(int K, float alpha, const Mat<float>& A, const float* Bp, int kc_step, float beta, float* C,
                      long rsc, long csc, int N, int m0, int m1) {
  for (int pc = 0; pc < K; pc += kc_step) {
    const int kc = std::min(kc_step, K - pc);
    const float be = pc == 0 ? beta : 1.f;
    const float* bp = Bp + (long)pc * NR_S;
    for (int i = m0; i < m1; i += MR_S)
      ukr_direct(kc, A.p + i * A.rs + pc, A.rs, bp, C + i * rsc, rsc, csc, std::min(MR_S, m1 - i), N, alpha, be);
  }
}

template <typename TB>
void run_direct(int M, int N, int K, float alpha, const Mat<float>& A, const Mat<TB>& B, float beta, float* C,
                long rsc, long csc) {
  static thread_local Buf bbuf;
  const int kc_step = ceil_div(K, ceil_div(K, KC_DIRECT));
  // B packed whole as consecutive kc x 8 panels (panel pc starts at pc * 8): K x 8 floats.
  float* Bp = bbuf.get((size_t)K * NR_S);
  for (int pc = 0; pc < K; pc += kc_step) pack_b<NR_S, TB>(B, pc, std::min(kc_step, K - pc), 0, N, Bp + (long)pc * NR_S);
  auto& pool = ajuste::ThreadPool::get();
  const long mu = ceil_div(M, MR_S);
  if (pool.size() <= 1 || 2.0 * M * N * K < 4e6 || mu < 2) {
    run_direct_range(K, alpha, A, Bp, kc_step, beta, C, rsc, csc, N, 0, M);
    return;
  }
  pool.parallel_for(mu, [&](long b, long e, int) {
    run_direct_range(K, alpha, A, Bp, kc_step, beta, C, rsc, csc, N, (int)(b * MR_S), (int)std::min<long>(M, e * MR_S));
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
