// The AVX-512 flavour of the GEMM engine: f32 (B f32, or bf16 widened to f32 while packing) with
// AVX-512F, and the AVX512_BF16 path (both operands packed as bf16 pairs, vdpbf16ps, f32 accumulators).
//
// This file includes no intrinsics header and names no instruction set itself, so that one source can be
// compiled two ways:
//   - in the addon (gemm.cc): after <immintrin.h>, with AJ_T512 = target("avx512f,avx2,fma") and
//     AJ_T512BF = target("avx512f,avx512bf16,avx2,fma"), inside namespace ajuste_gemm::{anon}::avx512;
//   - in native/test/gemm_emu.cc: after native/test/avx512_emu.h (a scalar emulation of exactly the
//     intrinsics used here), with both macros empty, so the kernels, packing and driver below are tested
//     on machines without AVX-512 (this project's own machine and CI are AVX2-only).
// Any intrinsic added here must be added to avx512_emu.h too (the emulation test then fails to compile
// until it is). The includer provides <algorithm>, <array>, <cstdint>, <cstring>, <utility>, gemm_common.h
// (Mat, widen, BufOf, ceil_div, round_up) and threads.h (ajuste::ThreadPool), before the namespace this
// file goes in.
//
// Same algorithm as gemm_impl.h (GotoBLAS / BLIS blocking; see there). Kernel shape, for 32 zmm registers:
// 12 rows x 32 columns = 24 zmm accumulators + 2 zmm of B per k; A values are broadcast from memory into
// the FMAs (vfmadd231ps zmm, zmm, m32{1to16} / vpbroadcastd), so 26 registers are live. Per k: 2 loads +
// 12 broadcasts for 24 FMAs, so two load ports keep up with two FMA ports, and 24 independent chains
// cover the FMA latency (4 cycles x 2 ports needs 8). 14x32 (28 accumulators) would save a little load
// bandwidth but MC (144) would not be a multiple of MR; 6x32 reuses each B load over half the rows.
// The row count m and column count n of a tile select a kernel instantiation (1..12 rows, 16 or 32
// columns), so edge tiles (and the skinny M' <= 8 shapes of the transposed solve) do no wasted FMAs;
// columns past n are masked off in the stores (masked loads/stores for tails, nothing beyond C touched).
//
// AVX512_BF16 (vdpbf16ps: per f32 lane, acc += a[2i] b[2i] + a[2i+1] b[2i+1] over bf16 pairs): B is packed
// as bf16 pairs along k (k, k+1 in one 32-bit lane), and so is A, after rounding its f32 values to bf16
// (round to nearest even, _mm512_cvtne2ps_pbh). That rounding of the activations is what PyTorch's bf16
// autocast does; it keeps 8 significant bits of A (relative error <= 2^-8 per element, so a dot product is
// off by at most 2^-8 sum |a||b| more than in f32) in exchange for twice the multiply throughput and half
// the packed-A bytes. The sums stay in f32. The user turns it
// off with AJUSTE_BF16_DOT=0 (gemm.cc), which takes the widening f32 path instead.
//
// Results are bitwise independent of the number of threads: block sizes depend on K only, threads own
// whole micro-tile ranges, and every element of C sees the same sequence of operations.

constexpr int MR = 12, NR = 32;  // micro-tile: 12 rows x 32 columns (two zmm)
constexpr int KC = 192;          // f32 depth: a 32 x 192 B micro-panel is 24 KiB (L1d is 32-48 KiB)
constexpr int KC_BH = 384;       // bf16 depth (even): the same 24 KiB, pairs of 2-byte values
constexpr int MC = 144;          // rows of A per packed block: 144 x 192 x 4 = 108 KiB (L2 is 1-2 MiB)
constexpr int NC = 2048;         // columns of B per packed block: 192 x 2048 x 4 = 1.5 MiB (L3)
static_assert(MC % MR == 0 && NR == 32 && KC_BH % 2 == 0, "blocking constants");

// Loops over rows and zmm columns of a tile are unrolled whole, so that the accumulators are registers.
// (The emulation test defines AJ_GEMM_NO_UNROLL: same results, a third of the compile time.)
#ifdef AJ_GEMM_NO_UNROLL
#define AJ_UNROLL_R
#define AJ_UNROLL_V
#else
#define AJ_UNROLL_R _Pragma("GCC unroll 12")
#define AJ_UNROLL_V _Pragma("GCC unroll 2")
#endif

// ------------------------------------------------------------------------------------------------
// Packing, with both operands seen as "lanes" x k: element (l, k) = x[l * ls + k * ks]. For A the lanes
// are rows (ls = A.rs, ks = A.cs); for B they are columns (ls = B.cs, ks = B.rs). Lanes are grouped in
// panels of R (MR for A, NR for B); lanes past `count` are zero.
// ------------------------------------------------------------------------------------------------

// f32 panels: panel q holds out[q * kc * R + k * R + l] (bf16 sources are widened exactly).
template <int R, typename T>
AJ_T512 void pack_f32(const T* x, long ls, long ks, int count, int kc, float* __restrict out) {
  if (ls == 1) {  // lanes contiguous: read `count` values per k, deal them to the panels
    for (int k = 0; k < kc; k++) {
      const T* row = x + k * ks;
      int l0 = 0;
      for (; l0 + R <= count; l0 += R) {
        float* o = out + (long)l0 * kc + (long)k * R;
        if constexpr (R % 16 == 0) {
          for (int j = 0; j < R; j += 16) {
            if constexpr (sizeof(T) == 2)
              _mm512_store_ps(o + j, _mm512_castsi512_ps(_mm512_slli_epi32(
                                         _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(row + l0 + j))), 16)));
            else
              _mm512_store_ps(o + j, _mm512_loadu_ps((const float*)(row + l0 + j)));
          }
        } else {
          for (int l = 0; l < R; l++) o[l] = widen(row[l0 + l]);
        }
      }
      if (l0 < count) {
        float* o = out + (long)l0 * kc + (long)k * R;
        const int n = count - l0;
        for (int l = 0; l < n; l++) o[l] = widen(row[l0 + l]);
        for (int l = n; l < R; l++) o[l] = 0.f;
      }
    }
    return;
  }
  for (int l0 = 0; l0 < count; l0 += R, out += (long)R * kc) {
    const int n = std::min(R, count - l0);
    const T* base = x + l0 * ls;
    if (ks == 1 && n == R) {  // each lane's k contiguous: R read streams, one write stream
      const T* ln[R];
      for (int l = 0; l < R; l++) ln[l] = base + l * ls;
      for (int k = 0; k < kc; k++) {
        float* o = out + (long)k * R;
        for (int l = 0; l < R; l++) o[l] = widen(ln[l][k]);
      }
    } else {
      for (int k = 0; k < kc; k++) {
        float* o = out + (long)k * R;
        for (int l = 0; l < R; l++) o[l] = l < n ? widen(base[l * ls + k * ks]) : 0.f;
      }
    }
  }
}

// bf16 pair panels (np = ceil(kc / 2) pairs): panel q holds, at out[q * np * R + p * R + l], the 32-bit
// lane bf16(x(l, 2p)) | bf16(x(l, 2p + 1)) << 16, as vdpbf16ps reads it; k >= kc is zero. bf16 sources
// are copied; f32 sources are first laid out in that order as f32 in tmp (2 * R * np floats) and then
// rounded to bf16 by _mm512_cvtne2ps_pbh (round to nearest even; NaN stays NaN, denormals become 0).
template <int R>
AJ_T512BF void cvt_pairs(const float* __restrict tmp, int words, uint16_t* __restrict out) {
  int i = 0;
  for (; i + 32 <= words; i += 32)  // cvtne2ps_pbh(hi, lo): words 0-15 from lo, 16-31 from hi
    _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(tmp + i + 16), _mm512_loadu_ps(tmp + i)));
  if (i < words) {
    alignas(64) float t[32] = {};
    alignas(64) uint16_t w[32];
    std::memcpy(t, tmp + i, sizeof(float) * (words - i));
    _mm512_store_si512(w, (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(t + 16), _mm512_load_ps(t)));
    std::memcpy(out + i, w, sizeof(uint16_t) * (words - i));
  }
}

template <int R, typename T>
AJ_T512BF void pack_pairs(const T* x, long ls, long ks, int count, int kc, uint32_t* __restrict out,
                          float* __restrict tmp) {
  const int np = (kc + 1) / 2;
  for (int l0 = 0; l0 < count; l0 += R, out += (long)R * np) {
    const int n = std::min(R, count - l0);
    const T* base = x + l0 * ls;
    if constexpr (sizeof(T) == 2) {
      if (ls == 1 && n == R && R % 16 == 0) {  // lanes contiguous (B not transposed): two rows -> pairs
        for (int p = 0; p < np; p++) {
          const T* r0 = base + 2L * p * ks;
          const bool has_hi = 2 * p + 1 < kc;
          for (int j = 0; j < R; j += 16) {
            const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(r0 + j)));
            const __m512i hi = has_hi ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(r0 + ks + j)))
                                   : _mm512_setzero_si512();
            _mm512_store_si512(out + (long)p * R + j, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
          }
        }
      } else {  // lane by lane (for ks == 1, the transposed weight [N, K]: each pair is one 32-bit read)
        for (int l = 0; l < R; l++) {
          uint32_t* o = out + l;
          if (l >= n) {
            for (int p = 0; p < np; p++) o[(long)p * R] = 0;
            continue;
          }
          const T* s = base + l * ls;
          int p = 0;
          if (ks == 1) {  // the pair is one little-endian 32-bit word in memory
            for (; 2 * p + 1 < kc; p++) std::memcpy(o + (long)p * R, s + 2 * p, 4);
          } else {
            for (; 2 * p + 1 < kc; p++) o[(long)p * R] = (uint32_t)s[2L * p * ks] | (uint32_t)s[(2L * p + 1) * ks] << 16;
          }
          if (p < np) o[(long)p * R] = s[2L * p * ks];
        }
      }
    } else {
      const int words = 2 * R * np;
      if (n < R || (kc & 1)) std::memset(tmp, 0, sizeof(float) * words);
      if (ls == 1) {
        for (int k = 0; k < kc; k++) {
          float* t = tmp + (long)(k >> 1) * 2 * R + (k & 1);
          const T* row = base + k * ks;
          for (int l = 0; l < n; l++) t[2 * l] = row[l];
        }
      } else {
        for (int l = 0; l < n; l++) {
          float* t = tmp + 2 * l;
          const T* s = base + l * ls;
          for (int k = 0; k < kc; k++) t[(long)(k >> 1) * 2 * R + (k & 1)] = s[k * ks];
        }
      }
      cvt_pairs<R>(tmp, words, reinterpret_cast<uint16_t*>(out));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Micro-kernels: acc[M_ x 16 V_] over the packed panels, then C[r*rsc + j*csc] = alpha * acc + beta * C
// for r < M_, j < n (beta == 0: C is not read). M_ in 1..MR rows; V_ = 1 (n <= 16) or 2 zmm columns.
// ------------------------------------------------------------------------------------------------
template <int M_, int V_>
AJ_T512 __attribute__((always_inline)) inline void store_acc(const __m512 (&acc)[M_][V_], float* c, long rsc, long csc,
                                                             int n, float alpha, float beta) {
  const __m512 va = _mm512_set1_ps(alpha);
  if (csc == 1) {
    __mmask16 mk[V_];
    AJ_UNROLL_V
    for (int v = 0; v < V_; v++) {
      const int w = n - 16 * v;
      mk[v] = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1);
    }
    const __m512 vb = _mm512_set1_ps(beta);
    AJ_UNROLL_R
    for (int r = 0; r < M_; r++) {
      AJ_UNROLL_V
      for (int v = 0; v < V_; v++) {
        float* p = c + r * rsc + 16 * v;
        __m512 x;
        if (beta == 0.f) x = _mm512_mul_ps(va, acc[r][v]);
        else if (beta == 1.f) x = _mm512_fmadd_ps(va, acc[r][v], _mm512_maskz_loadu_ps(mk[v], p));
        else x = _mm512_fmadd_ps(va, acc[r][v], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mk[v], p)));
        _mm512_mask_storeu_ps(p, mk[v], x);
      }
    }
    return;
  }
  // C columns not contiguous (the transposed solve writes C^T): through a tile in memory
  alignas(64) float t[M_ * 16 * V_];
  AJ_UNROLL_R
  for (int r = 0; r < M_; r++) {
    AJ_UNROLL_V
    for (int v = 0; v < V_; v++) _mm512_store_ps(t + (r * V_ + v) * 16, acc[r][v]);
  }
  for (int r = 0; r < M_; r++)
    for (int j = 0; j < n; j++) {
      float* p = c + r * rsc + j * csc;
      const float x = alpha * t[r * 16 * V_ + j];
      *p = beta == 0.f ? x : x + beta * *p;
    }
}

template <int M_, int V_>
AJ_T512 void ukr_f32(int kc, const float* __restrict a, const float* __restrict b, float* c, long rsc, long csc,
                     int n, float alpha, float beta) {
  __m512 acc[M_][V_];
  AJ_UNROLL_R
  for (int r = 0; r < M_; r++) {
    AJ_UNROLL_V
    for (int v = 0; v < V_; v++) acc[r][v] = _mm512_setzero_ps();
    _mm_prefetch((const char*)(c + r * rsc), _MM_HINT_T0);  // C's tile arrives while the k loop runs
  }
  for (int k = 0; k < kc; k++, a += MR, b += NR) {
    __m512 bv[V_];
    AJ_UNROLL_V
    for (int v = 0; v < V_; v++) bv[v] = _mm512_load_ps(b + 16 * v);
    AJ_UNROLL_R
    for (int r = 0; r < M_; r++) {
      const __m512 av = _mm512_set1_ps(a[r]);
      AJ_UNROLL_V
      for (int v = 0; v < V_; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  store_acc<M_, V_>(acc, c, rsc, csc, n, alpha, beta);
}

template <int M_, int V_>
AJ_T512BF void ukr_bh(int np, const uint32_t* __restrict a, const uint32_t* __restrict b, float* c, long rsc, long csc,
                      int n, float alpha, float beta) {
  __m512 acc[M_][V_];
  AJ_UNROLL_R
  for (int r = 0; r < M_; r++) {
    AJ_UNROLL_V
    for (int v = 0; v < V_; v++) acc[r][v] = _mm512_setzero_ps();
    _mm_prefetch((const char*)(c + r * rsc), _MM_HINT_T0);
  }
  for (int p = 0; p < np; p++, a += MR, b += NR) {
    __m512bh bv[V_];
    AJ_UNROLL_V
    for (int v = 0; v < V_; v++) bv[v] = (__m512bh)_mm512_load_si512(b + 16 * v);
    AJ_UNROLL_R
    for (int r = 0; r < M_; r++) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r]);  // A(r, 2p) | A(r, 2p+1) << 16
      AJ_UNROLL_V
      for (int v = 0; v < V_; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  store_acc<M_, V_>(acc, c, rsc, csc, n, alpha, beta);
}

// Kernel tables indexed [n > 16][m - 1].
using UkrF32 = void (*)(int, const float*, const float*, float*, long, long, int, float, float);
using UkrBh = void (*)(int, const uint32_t*, const uint32_t*, float*, long, long, int, float, float);

template <int V_, int... I>
constexpr std::array<UkrF32, MR> f32_row(std::integer_sequence<int, I...>) { return {{&ukr_f32<I + 1, V_>...}}; }
template <int V_, int... I>
constexpr std::array<UkrBh, MR> bh_row(std::integer_sequence<int, I...>) { return {{&ukr_bh<I + 1, V_>...}}; }

inline UkrF32 f32_kernel(int m, int n) {
  static const std::array<UkrF32, MR> t1 = f32_row<1>(std::make_integer_sequence<int, MR>{});
  static const std::array<UkrF32, MR> t2 = f32_row<2>(std::make_integer_sequence<int, MR>{});
  return n > 16 ? t2[m - 1] : t1[m - 1];
}
inline UkrBh bh_kernel(int m, int n) {
  static const std::array<UkrBh, MR> t1 = bh_row<1>(std::make_integer_sequence<int, MR>{});
  static const std::array<UkrBh, MR> t2 = bh_row<2>(std::make_integer_sequence<int, MR>{});
  return n > 16 ? t2[m - 1] : t1[m - 1];
}

// ------------------------------------------------------------------------------------------------
// Driver. BH: the AVX512_BF16 path (bf16 pairs, depth counted in k, blocks of an even depth).
// ------------------------------------------------------------------------------------------------
template <bool BH, typename TA, typename TB>
void run_range(int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C, long rsc, long csc,
               int m0, int m1, int n0, int n1) {
  static thread_local BufOf<float> abuf, bbuf, tbuf;
  const int kb = ceil_div(K, BH ? KC_BH : KC);
  const int kc_step = BH ? round_up(ceil_div(K, kb), 2) : ceil_div(K, kb);  // depends on K only
  const int mb = ceil_div(m1 - m0, MC);
  const int mc_step = round_up(ceil_div(m1 - m0, mb), MR);
  const int depth = BH ? kc_step / 2 : kc_step;  // 32-bit slots per lane of a packed panel
  float* Bp = bbuf.get((size_t)depth * round_up(std::min(NC, n1 - n0), NR));
  float* Ap = abuf.get((size_t)depth * mc_step);
  float* tmp = BH ? tbuf.get((size_t)2 * NR * depth) : nullptr;
  for (int jc = n0; jc < n1; jc += NC) {
    const int nc = std::min(NC, n1 - jc);
    for (int pc = 0; pc < K; pc += kc_step) {
      const int kc = std::min(kc_step, K - pc);
      const int d = BH ? (kc + 1) / 2 : kc;
      const float be = pc == 0 ? beta : 1.f;
      const TB* bsrc = B.p + pc * B.rs + jc * B.cs;
      if constexpr (BH) pack_pairs<NR, TB>(bsrc, B.cs, B.rs, nc, kc, reinterpret_cast<uint32_t*>(Bp), tmp);
      else pack_f32<NR, TB>(bsrc, B.cs, B.rs, nc, kc, Bp);
      for (int ic = m0; ic < m1; ic += mc_step) {
        const int mc = std::min(mc_step, m1 - ic);
        const TA* asrc = A.p + ic * A.rs + pc * A.cs;
        if constexpr (BH) pack_pairs<MR, TA>(asrc, A.rs, A.cs, mc, kc, reinterpret_cast<uint32_t*>(Ap), tmp);
        else pack_f32<MR, TA>(asrc, A.rs, A.cs, mc, kc, Ap);
        auto tile = [&](int ir, int jr) {
          const int m = std::min(MR, mc - ir), n = std::min(NR, nc - jr);
          float* cc = C + (long)(ic + ir) * rsc + (long)(jc + jr) * csc;
          if constexpr (BH)
            bh_kernel(m, n)(d, reinterpret_cast<const uint32_t*>(Ap) + (long)ir * d,
                            reinterpret_cast<const uint32_t*>(Bp) + (long)jr * d, cc, rsc, csc, n, alpha, be);
          else
            f32_kernel(m, n)(d, Ap + (long)ir * d, Bp + (long)jr * d, cc, rsc, csc, n, alpha, be);
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
  }
}

// Splits the work over the pool: M or N ranges aligned to the micro-tile, whichever has more tiles.
template <bool BH, typename TA, typename TB>
void run_threads(int M, int N, int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C,
                 long rsc, long csc) {
  auto& pool = ajuste::ThreadPool::get();
  const double flops = 2.0 * M * N * K;
  const long mu = ceil_div(M, MR), nu = ceil_div(N, NR);
  if (pool.size() <= 1 || flops < 4e6 || std::max(mu, nu) < 2) {
    run_range<BH>(K, alpha, A, B, beta, C, rsc, csc, 0, M, 0, N);
    return;
  }
  if (nu >= mu) {
    pool.parallel_for(nu, [&](long b, long e, int) {
      run_range<BH>(K, alpha, A, B, beta, C, rsc, csc, 0, M, (int)(b * NR), (int)std::min<long>(N, e * NR));
    });
  } else {
    pool.parallel_for(mu, [&](long b, long e, int) {
      run_range<BH>(K, alpha, A, B, beta, C, rsc, csc, (int)(b * MR), (int)std::min<long>(M, e * MR), 0, N);
    });
  }
}

// C (rsc, csc) = alpha * op(A) op(B) + beta * C with M, N, K > 0, in f32 (bf16 operands widened exactly).
template <typename TA, typename TB>
void run(int M, int N, int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C, long rsc,
         long csc) {
  run_threads<false>(M, N, K, alpha, A, B, beta, C, rsc, csc);
}

// The same through AVX512_BF16: f32 operands rounded to bf16 (nearest even), products summed in f32.
template <typename TA, typename TB>
void run_bf16dot(int M, int N, int K, float alpha, const Mat<TA>& A, const Mat<TB>& B, float beta, float* C,
                 long rsc, long csc) {
  run_threads<true>(M, N, K, alpha, A, B, beta, C, rsc, csc);
}

#undef AJ_UNROLL_R
#undef AJ_UNROLL_V
