import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Kernels } from '../src/kernels/backend.js';
import { gemm as gemmJs, gemmBf16 as gemmBf16Js } from '../src/kernels/js/gemm.js';
import { loadAddon, nativeKernels } from '../src/kernels/native/index.js';
import { Rng } from '../src/tensor/rng.js';

interface GemmAddon {
  gemm: Kernels['gemm'];
  gemmBf16: Kernels['gemmBf16'];
  gemmIsa(): string;
  gemmForceScalar(on: boolean): string;
  fmaPeak(seconds: number): number;
}

function addon(): GemmAddon {
  const a = loadAddon();
  expect(a, 'the native addon did not load: run `npm run build:native`').not.toBeNull();
  expect(typeof a?.gemm, 'the addon exports gemm (native/src/gemm.cc)').toBe('function');
  return a as unknown as GemmAddon;
}

function native(): Kernels {
  const k = nativeKernels();
  expect(k, 'the native addon did not load').not.toBeNull();
  addon();
  return k!;
}

interface Case {
  M: number; N: number; K: number; tA: boolean; tB: boolean;
  alpha?: number; beta?: number;
  padA?: number; padB?: number; padC?: number; // extra leading-dimension columns
  offset?: number; // views start this many elements into a larger buffer
  bf16?: boolean;
  rows?: [number, number][]; // compare only these row ranges [start, end) of C (the js gemm is slow)
}

/** A Float32Array view `off` elements into a larger buffer, the elements before it set to `fill`. */
function view(n: number, off: number, fill: number): Float32Array {
  const buf = new Float32Array(n + off + 3).fill(fill);
  return buf.subarray(off, off + n);
}

function toBf16(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = u[i]! >>> 16;
  return out;
}

function widen(h: Uint16Array): Float32Array {
  const w = new Uint32Array(h.length);
  for (let i = 0; i < h.length; i++) w[i] = h[i]! << 16;
  return new Float32Array(w.buffer);
}

// The error allowed, relative to what was summed (|alpha| sum |a||b| + |beta c|). f32 sums: 1e-5. On an
// AVX512_BF16 machine gemmBf16's packed path rounds A to bf16 (nearest even, as PyTorch's autocast does):
// each a_k moves by at most 2^-8 |a_k| (8 significant bits), so the sum moves by at most 2^-8 sum |a||b|,
// on top of the f32 rounding. The js reference keeps A in f32, hence that much more for gemmBf16 there.
const F32_TOL = 1e-5;
const BF16_DOT_TOL = 2 ** -8 + F32_TOL;
let bf16DotIsa: boolean | undefined;
function bf16Tol(): number {
  bf16DotIsa ??= addon().gemmIsa() === 'avx512bf16';
  return bf16DotIsa ? BF16_DOT_TOL : F32_TOL;
}

/** Runs one case on native and js; returns the worst relative error and checks the untouched padding. */
function check(c: Case, seed: number, k: Kernels, tol = c.bf16 ? bf16Tol() : F32_TOL): void {
  const rng = new Rng(seed);
  const { M, N, K, tA, tB } = c;
  const alpha = c.alpha ?? 1, beta = c.beta ?? 0, off = c.offset ?? 0;
  const [ar, ac] = tA ? [K, M] : [M, K];
  const [br, bc] = tB ? [N, K] : [K, N];
  const lda = ac + (c.padA ?? 0), ldb = bc + (c.padB ?? 0), ldc = N + (c.padC ?? 0);
  const size = (r: number, cols: number, ld: number) => (r > 0 && cols > 0 ? (r - 1) * ld + cols : 0);
  const A = rng.fillNormal(view(size(ar, ac, lda), off, 0));
  const Bf = rng.fillNormal(view(size(br, bc, ldb), off, 0));
  const C0 = rng.fillNormal(view(size(M, N, ldc), off, 0));
  if (beta === 0) C0.fill(Number.NaN); // must be ignored
  const Cjs = C0.slice(), Cn = view(C0.length, off, 7);
  Cn.set(C0);
  const rows = c.rows ?? [[0, M]];
  // op(A) rows r0.. and C rows r0.. as views with the same leading dimensions
  const Arows = (X: Float32Array, r0: number) => X.subarray(tA ? r0 : r0 * lda);
  let Bwide: Float32Array;
  if (c.bf16) {
    const Bh = toBf16(Bf);
    const Bv = new Uint16Array(Bh.length + off + 1).subarray(off, off + Bh.length);
    Bv.set(Bh);
    for (const [r0, r1] of rows) gemmBf16Js(tA, tB, r1 - r0, N, K, alpha, Arows(A, r0), lda, Bh, ldb, beta, Cjs.subarray(r0 * ldc), ldc);
    k.gemmBf16(tA, tB, M, N, K, alpha, A, lda, Bv, ldb, beta, Cn, ldc);
    Bwide = widen(Bh);
  } else {
    for (const [r0, r1] of rows) gemmJs(tA, tB, r1 - r0, N, K, alpha, Arows(A, r0), lda, Bf, ldb, beta, Cjs.subarray(r0 * ldc), ldc);
    k.gemm(tA, tB, M, N, K, alpha, A, lda, Bf, ldb, beta, Cn, ldc);
    Bwide = Bf;
  }
  // the elements before the view and the padding columns between rows of C are untouched
  const whole = new Float32Array(Cn.buffer);
  for (let i = 0; i < off; i++) expect(whole[i]).toBe(7);
  for (let i = 0; i < M; i++)
    for (let j = N; j < ldc && i * ldc + j < Cn.length; j++) expect(Object.is(Cn[i * ldc + j], C0[i * ldc + j])).toBe(true);
  // relative error against what was summed: |alpha| |op(A)| |op(B)| + |beta C0|
  const scale = new Float32Array(Cn.length);
  const absA = A.map(Math.abs), absB = Bwide.map(Math.abs);
  for (const [r0, r1] of rows) gemmJs(tA, tB, r1 - r0, N, K, Math.abs(alpha), Arows(absA, r0), lda, absB, ldb, 0, scale.subarray(r0 * ldc), ldc);
  let worst = 0, at = -1;
  for (const [r0, r1] of rows)
  for (let i = r0; i < r1; i++)
    for (let j = 0; j < N; j++) {
      const o = i * ldc + j;
      const e = Math.abs(Cn[o]! - Cjs[o]!) / Math.max(1e-30, scale[o]! + (beta === 0 ? 0 : Math.abs(beta * C0[o]!)));
      if (!(e <= worst)) [worst, at] = [e, o];
    }
  if (!(worst <= tol)) expect.fail(`${c.bf16 ? 'gemmBf16' : 'gemm'} ${JSON.stringify(c)}: relative error ${worst} at ${at} (${Cn[at]} vs ${Cjs[at]})`);
}

const COMBOS: [boolean, boolean][] = [[false, false], [false, true], [true, false], [true, true]];

// Shapes that reach every path: small loop, 6x16 kernel with tails, 12x8 kernel (N <= 8), the
// transposed problem (M <= 8 < N), several KC blocks (K > 256; K > 4096 for the unpacked N <= 8 kernel),
// several MC blocks, NC blocks (N > 2048).
const SHAPES: [number, number, number][] = [
  [1, 1, 1], [7, 13, 5], [3, 1, 40], [1, 37, 9],
  [37, 45, 300], [300, 7, 200], [96, 8, 520], [5, 200, 300], [8, 333, 70], [150, 33, 17], [299, 64, 64],
  [20, 2100, 40], [61, 17, 1], [13, 5, 4500],
];

describe('native gemm vs js', () => {
  it('exports the kernels and reports its instruction set', () => {
    const a = addon();
    expect(['avx512bf16', 'avx512f', 'avx2+fma', 'scalar']).toContain(a.gemmIsa());
    expect(nativeKernels()!.gemm).toBe(a.gemm);
    expect(nativeKernels()!.gemmBf16).toBe(a.gemmBf16);
  });

  for (const [tA, tB] of COMBOS) {
    it(`f32 and bf16, transA=${tA} transB=${tB}, ${SHAPES.length} shapes, alpha/beta, padding, offsets`, () => {
      const k = native();
      let seed = 1;
      for (const [M, N, K] of SHAPES) {
        check({ M, N, K, tA, tB }, seed++, k);
        check({ M, N, K, tA, tB, alpha: -0.7, beta: 1.3, padA: 3, padB: 5, padC: 2, offset: 11 }, seed++, k);
        check({ M, N, K, tA, tB, alpha: 2, beta: 1, offset: 1 }, seed++, k);
        check({ M, N, K, tA, tB, bf16: true }, seed++, k);
        check({ M, N, K, tA, tB, alpha: 0.5, beta: -1, padB: 4, padC: 1, offset: 5, bf16: true }, seed++, k);
      }
    });
  }

  it('1000 x 1003 x 997: f32 no transpose; bf16 transA+transB with alpha, beta, padding, offset (4 row bands checked)', () => {
    const k = native();
    const rows: [number, number][] = [[0, 13], [142, 150], [499, 505], [983, 1000]];
    check({ M: 1000, N: 1003, K: 997, tA: false, tB: false, rows }, 100, k);
    check({ M: 1000, N: 1003, K: 997, tA: true, tB: true, alpha: 0.5, beta: 2, padA: 1, padC: 3, offset: 2, bf16: true, rows }, 101, k);
  });

  it('LoRA shapes (rank 8): x A^T, h B^T, dy B, dy^T h, dh A, dh^T x', () => {
    const k = native();
    const [T, d, r] = [256, 192, 8];
    check({ M: T, N: r, K: d, tA: false, tB: true }, 200, k);
    check({ M: T, N: d, K: r, tA: false, tB: true, beta: 1 }, 201, k);
    check({ M: T, N: r, K: d, tA: false, tB: false }, 202, k);
    check({ M: d, N: r, K: T, tA: true, tB: false }, 203, k);
    check({ M: T, N: d, K: r, tA: false, tB: false, beta: 1 }, 204, k);
    check({ M: r, N: d, K: T, tA: true, tB: false }, 205, k);
    check({ M: T, N: r, K: d, tA: false, tB: true, bf16: true }, 206, k);
  });

  it('N <= 8 with rows of op(A) contiguous (dot-product path): row tails, K tails and blocks, N < 8, beta', () => {
    const k = native();
    // M: 1, 2 (a triple short of two rows), 13 (one group of 12 + 1), 25, 40; K: under / at / over one
    // vector and one block (256), several balanced blocks (520, 777); N = 1..8; op(B) both layouts.
    let seed = 300;
    for (const [M, N, K] of [[1, 8, 1], [2, 3, 7], [13, 8, 8], [25, 5, 9], [40, 8, 255], [13, 1, 256], [25, 7, 257],
      [40, 8, 520], [37, 6, 777], [12, 8, 33]] as [number, number, number][])
      for (const tB of [false, true])
        for (const [alpha, beta] of [[1, 0], [1, 1], [0.5, 2]] as [number, number][]) {
          check({ M, N, K, tA: false, tB, alpha, beta, padA: M % 3, padB: 1, padC: N % 2, offset: 1 }, seed++, k);
          if (beta === 0) check({ M, N, K, tA: false, tB, bf16: true }, seed++, k);
        }
  });

  it('degenerate: K = 0 and alpha = 0 give beta * C; beta = 0 overwrites NaN; M or N = 0 is a no-op', () => {
    const { gemm } = addon();
    const C = new Float32Array([1, 2, Number.NaN, 4]);
    gemm(false, false, 2, 2, 0, 1, new Float32Array(0), 1, new Float32Array(0), 2, 2, C, 2);
    expect(Array.from(C.subarray(0, 2))).toEqual([2, 4]);
    C.fill(Number.NaN);
    gemm(false, false, 2, 2, 3, 0, new Float32Array(6), 3, new Float32Array(6), 2, 0, C, 2);
    expect(Array.from(C)).toEqual([0, 0, 0, 0]);
    C.set([1, 2, 3, 4]);
    gemm(false, false, 0, 2, 3, 1, new Float32Array(0), 3, new Float32Array(6), 2, 0, C, 2);
    expect(Array.from(C)).toEqual([1, 2, 3, 4]);
    // large enough for the packed path, C full of NaN and beta = 0
    const [M, N, K] = [64, 64, 64];
    const A = new Rng(3).fillNormal(new Float32Array(M * K));
    const B = new Rng(4).fillNormal(new Float32Array(K * N));
    const Cn = new Float32Array(M * N).fill(Number.NaN);
    gemm(false, false, M, N, K, 1, A, K, B, N, 0, Cn, N);
    expect(Cn.every(Number.isFinite)).toBe(true);
  });

  it('the portable scalar kernels agree with js too', () => {
    const a = addon();
    const k = native();
    expect(a.gemmForceScalar(true)).toBe('scalar');
    try {
      let seed = 300;
      for (const [tA, tB] of COMBOS)
        for (const [M, N, K] of [[7, 13, 5], [37, 45, 300], [300, 7, 200], [5, 200, 300]] as const) {
          check({ M, N, K, tA, tB, alpha: 1.5, beta: 0.5, padA: 1, padC: 2, offset: 3 }, seed++, k);
          check({ M, N, K, tA, tB, bf16: true }, seed++, k);
        }
    } finally {
      a.gemmForceScalar(false);
    }
    expect(a.gemmIsa()).not.toBe('');
  });

  it('fmaPeak returns a positive GFLOP/s figure', () => {
    const g = addon().fmaPeak(0.05);
    expect(g).toBeGreaterThan(0.1);
  });
});

describe('native gemm argument checks', () => {
  const f = (n: number) => new Float32Array(n);
  type Args = Parameters<Kernels['gemm']>;
  const good = (): Args => [false, false, 2, 3, 4, 1, f(8), 4, f(12), 3, 0, f(6), 3];
  const bad: [string, (a: Args) => void, ErrorConstructor][] = [
    ['transA not a boolean', (a) => { (a as unknown[])[0] = 1; }, TypeError],
    ['M not a number', (a) => { (a as unknown[])[2] = '2'; }, TypeError],
    ['negative N', (a) => { a[3] = -1; }, RangeError],
    ['fractional K', (a) => { a[4] = 2.5; }, RangeError],
    ['A a Float64Array', (a) => { (a as unknown[])[6] = new Float64Array(8); }, TypeError],
    ['B a plain array', (a) => { (a as unknown[])[8] = [1, 2, 3]; }, TypeError],
    ['C null', (a) => { (a as unknown[])[11] = null; }, TypeError],
    ['lda smaller than K', (a) => { a[7] = 3; }, RangeError],
    ['ldb zero', (a) => { a[9] = 0; }, RangeError],
    ['ldc smaller than N', (a) => { a[12] = 2; }, RangeError],
    ['A too short', (a) => { a[6] = f(7); }, RangeError],
    ['B too short for ldb', (a) => { a[9] = 4; }, RangeError],
    ['C too short (a view)', (a) => { a[11] = f(10).subarray(5); }, RangeError],
    ['A too short for transA', (a) => { a[0] = true; a[7] = 3; }, RangeError],
  ];

  it('accepts the good arguments', () => {
    const { gemm } = addon();
    expect(() => gemm(...good())).not.toThrow();
  });

  for (const [what, mutate, type] of bad) {
    it(`throws ${type.name} for ${what}`, () => {
      const { gemm } = addon();
      const a = good();
      mutate(a);
      expect(() => gemm(...a)).toThrow(type);
    });
  }

  it('gemmBf16 wants a Uint16Array B, and too few arguments throw', () => {
    const { gemm } = addon();
    const gemmBf16 = addon().gemmBf16 as unknown as (...x: unknown[]) => void;
    const a: unknown[] = good();
    expect(() => gemmBf16(...a)).toThrow(/gemmBf16: argument 9 \(B\) must be a Uint16Array/);
    a[8] = new Uint16Array(12);
    expect(() => gemmBf16(...a)).not.toThrow();
    expect(() => (gemm as unknown as (...x: unknown[]) => void)(false, false, 1)).toThrow(TypeError);
  });
});

// AJUSTE_THREADS is read once per process, so each thread count runs in a child process that hashes
// the results of gemms covering the dynamic N split, the dynamic M split (one and three K blocks), the
// static M split (op(B) too big to pack whole per thread), the N <= 8 kernels and the transposed paths.
const CHILD = `
const crypto = require('node:crypto');
const a = require(process.argv[1]);
let s = 12345;
const rnd = (n) => { const x = new Float32Array(n); for (let i = 0; i < n; i++) { s = (s * 1103515245 + 12345) >>> 0; x[i] = s / 2 ** 32 - 0.5; } return x; };
const h = crypto.createHash('sha256');
for (const [tA, tB, M, N, K] of [[false, false, 300, 301, 299], [false, true, 37, 900, 260], [true, false, 1000, 40, 300], [false, true, 700, 8, 520], [false, false, 1001, 5, 777], [true, false, 700, 8, 520], [true, false, 8, 600, 700], [false, true, 8, 600, 700], [false, false, 500, 500, 8], [false, true, 520, 100, 800], [false, false, 2000, 1000, 1600]]) {
  const A = rnd(M * K), B = rnd(K * N), C = rnd(M * N);
  a.gemm(tA, tB, M, N, K, 0.75, A, tA ? M : K, B, tB ? K : N, 0.5, C, N);
  h.update(Buffer.from(C.buffer));
  const Bh = new Uint16Array(new Uint32Array(B.buffer).map((u) => u >>> 16));
  a.gemmBf16(tA, tB, M, N, K, 1, A, tA ? M : K, Bh, tB ? K : N, 0, C, N);
  h.update(Buffer.from(C.buffer));
}
console.log(JSON.stringify({ threads: a.info().threads, hash: h.digest('hex') }));
`;

// AJUSTE_ISA caps the flavour (never raises it) and AJUSTE_BF16_DOT=0 turns off the bf16 dot products;
// both are read once per process, so each setting runs in a child process.
describe('native gemm instruction set choice', () => {
  const RANK = ['scalar', 'avx2+fma', 'avx512f', 'avx512bf16'];
  const isaWith = (env: Record<string, string>): { isa: string; stderr: string } => {
    const file = join(process.cwd(), 'build', 'Release', 'ajuste_native.node');
    const r = spawnSync(process.execPath, ['-e', 'console.log(require(process.argv[1]).gemmIsa())', file], {
      env: { ...process.env, AJUSTE_ISA: '', AJUSTE_BF16_DOT: '', ...env },
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    return { isa: r.stdout.trim(), stderr: r.stderr };
  };

  it('AJUSTE_ISA=scalar|avx2|avx512f|avx512 caps the detected flavour; AJUSTE_BF16_DOT=0 drops avx512bf16', () => {
    addon();
    const best = isaWith({}).isa;
    expect(RANK).toContain(best);
    const capped = (cap: string) => RANK[Math.min(RANK.indexOf(best), RANK.indexOf(cap))];
    expect(isaWith({ AJUSTE_ISA: 'scalar' }).isa).toBe('scalar');
    expect(isaWith({ AJUSTE_ISA: 'avx2' }).isa).toBe(capped('avx2+fma'));
    expect(isaWith({ AJUSTE_ISA: 'avx512f' }).isa).toBe(capped('avx512f'));
    expect(isaWith({ AJUSTE_ISA: 'avx512' }).isa).toBe(best);
    expect(isaWith({ AJUSTE_BF16_DOT: '0' }).isa).toBe(best === 'avx512bf16' ? 'avx512f' : best);
    const bad = isaWith({ AJUSTE_ISA: 'sse9' });
    expect(bad.isa).toBe(best);
    expect(bad.stderr).toMatch(/AJUSTE_ISA=sse9 is not one of scalar, avx2, avx512f, avx512; ignored/);
  });
});

describe('native gemm threads', () => {
  it('AJUSTE_THREADS=1, 2 and 3 give bitwise identical results', () => {
    addon();
    const file = join(process.cwd(), 'build', 'Release', 'ajuste_native.node');
    const out = ['1', '2', '3'].map((t) => {
      const r = spawnSync(process.execPath, ['-e', CHILD, file], { env: { ...process.env, AJUSTE_THREADS: t }, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout.trim()) as { threads: number; hash: string };
    });
    expect(out.map((o) => o.threads)).toEqual([1, 2, 3]);
    expect(out[1]!.hash).toBe(out[0]!.hash);
    expect(out[2]!.hash).toBe(out[0]!.hash);
  });
});
