import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Kernels } from '../src/kernels/backend.js';
import { attentionBwd, attentionFwd } from '../src/kernels/js/attention.js';
import { loadAddon, nativeKernels } from '../src/kernels/native/index.js';
import { Rng } from '../src/tensor/rng.js';
import { expectClose } from './helpers.js';

type Floats = Float32Array | Float64Array;
interface Shape {
  B: number;
  T: number;
  H: number;
  Hkv: number;
  D: number;
}

function randn(rng: Rng, n: number, f64 = true): Floats {
  const a = f64 ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal();
  return a;
}

/** segIds [B,T]: each row cut into `parts` contiguous segments at random points (ids not ordered). */
function randomSegments(rng: Rng, B: number, T: number, parts: number): Int32Array {
  const seg = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    const cuts = new Set<number>();
    while (cuts.size < parts - 1) cuts.add(1 + rng.int(T - 1));
    let id = 10 * b + 3;
    for (let t = 0; t < T; t++) {
      if (cuts.has(t)) id = (id * 7 + 5) % 97;
      seg[b * T + t] = id;
    }
  }
  return seg;
}

// The js kernels take f32 or f64 buffers; the Kernels interface names f32 only.
const fwd = attentionFwd as (
  q: Floats, k: Floats, v: Floats, out: Floats, lse: Floats,
  B: number, T: number, H: number, Hkv: number, D: number, scale: number, seg: Int32Array | null,
) => void;
const bwd = attentionBwd as (
  dout: Floats, q: Floats, k: Floats, v: Floats, out: Floats, lse: Floats, dq: Floats, dk: Floats, dv: Floats,
  B: number, T: number, H: number, Hkv: number, D: number, scale: number, seg: Int32Array | null,
) => void;

function runFwd(s: Shape, q: Floats, k: Floats, v: Floats, scale: number, seg: Int32Array | null) {
  const out = new Float64Array(s.B * s.T * s.H * s.D);
  const lse = new Float64Array(s.B * s.H * s.T);
  fwd(q, k, v, out, lse, s.B, s.T, s.H, s.Hkv, s.D, scale, seg);
  return { out, lse };
}

/** Masked softmax materialised straight from the definition (tiny sizes only). */
function naiveFwd(s: Shape, q: Floats, k: Floats, v: Floats, scale: number, seg: Int32Array | null) {
  const { B, T, H, Hkv, D } = s;
  const out = new Float64Array(B * T * H * D);
  const lse = new Float64Array(B * H * T);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const g = Math.floor((h * Hkv) / H);
      const S: number[][] = [];
      for (let t = 0; t < T; t++) {
        S.push([]);
        for (let u = 0; u < T; u++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[((b * T + t) * H + h) * D + d]! * k[((b * T + u) * Hkv + g) * D + d]!;
          const ok = u <= t && (!seg || seg[b * T + u] === seg[b * T + t]);
          S[t]!.push(ok ? dot * scale : Number.NEGATIVE_INFINITY);
        }
      }
      for (let t = 0; t < T; t++) {
        const row = S[t]!;
        const m = Math.max(...row);
        const e = row.map((x) => Math.exp(x - m));
        const z = e.reduce((a, x) => a + x, 0);
        lse[(b * H + h) * T + t] = m + Math.log(z);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let u = 0; u < T; u++) acc += (e[u]! / z) * v[((b * T + u) * Hkv + g) * D + d]!;
          out[((b * T + t) * H + h) * D + d] = acc;
        }
      }
    }
  return { out, lse };
}

/** Central-difference check of dq, dk, dv for loss = sum(out * R), f64, js kernels. */
function gradCheck(s: Shape, seg: Int32Array | null, seed: number): void {
  const { B, T, H, Hkv, D } = s;
  const rng = new Rng(seed);
  const q = randn(rng, B * T * H * D), k = randn(rng, B * T * Hkv * D), v = randn(rng, B * T * Hkv * D);
  const R = randn(rng, B * T * H * D);
  const scale = 0.7 / Math.sqrt(D);
  const loss = (): number => {
    const { out } = runFwd(s, q, k, v, scale, seg);
    let l = 0;
    for (let i = 0; i < out.length; i++) l += out[i]! * R[i]!;
    return l;
  };
  const { out, lse } = runFwd(s, q, k, v, scale, seg);
  const dq = new Float64Array(q.length).fill(Number.NaN);
  const dk = new Float64Array(k.length).fill(Number.NaN);
  const dv = new Float64Array(v.length).fill(Number.NaN);
  bwd(R, q, k, v, out, lse, dq, dk, dv, B, T, H, Hkv, D, scale, seg);
  const eps = 1e-5;
  for (const [name, x, g] of [['dq', q, dq], ['dk', k, dk], ['dv', v, dv]] as const) {
    const numeric = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const x0 = x[i]!;
      x[i] = x0 + eps;
      const up = loss();
      x[i] = x0 - eps;
      const down = loss();
      x[i] = x0;
      numeric[i] = (up - down) / (2 * eps);
    }
    expectClose(g, numeric, 1e-7, name);
  }
}

describe('js attention kernels (f64)', () => {
  it('forward matches a naive masked softmax, with and without segments, and lse is the log-sum-exp', () => {
    const rng = new Rng(5);
    for (const s of [{ B: 2, T: 6, H: 4, Hkv: 2, D: 3 }, { B: 1, T: 9, H: 3, Hkv: 1, D: 4 }]) {
      const q = randn(rng, s.B * s.T * s.H * s.D), k = randn(rng, s.B * s.T * s.Hkv * s.D), v = randn(rng, s.B * s.T * s.Hkv * s.D);
      for (const seg of [null, randomSegments(rng, s.B, s.T, 3)]) {
        const got = runFwd(s, q, k, v, 0.5, seg);
        const want = naiveFwd(s, q, k, v, 0.5, seg);
        expectClose(got.out, want.out, 1e-12, 'out');
        expectClose(got.lse, want.lse, 1e-12, 'lse');
      }
    }
    // The first query sees only itself: out = v[0] and lse = its own scaled score.
    const s = { B: 1, T: 3, H: 1, Hkv: 1, D: 2 };
    const q = Float64Array.from([1, 2, 0, 0, 0, 0]), k = Float64Array.from([3, -1, 0, 0, 0, 0]), v = Float64Array.from([7, 8, 0, 0, 0, 0]);
    const { out, lse } = runFwd(s, q, k, v, 0.25, null);
    expect([out[0], out[1], lse[0]]).toEqual([7, 8, 0.25 * (3 - 2)]);
  });

  it('gradients match central differences: MHA', () => gradCheck({ B: 2, T: 5, H: 2, Hkv: 2, D: 4 }, null, 11));
  it('gradients match central differences: GQA H=4 Hkv=2', () => gradCheck({ B: 1, T: 6, H: 4, Hkv: 2, D: 3 }, null, 12));
  it('gradients match central differences: GQA H=6 Hkv=2', () => gradCheck({ B: 1, T: 5, H: 6, Hkv: 2, D: 3 }, null, 13));
  it('gradients match central differences: packed segments, batch 2', () => {
    const rng = new Rng(14);
    gradCheck({ B: 2, T: 8, H: 4, Hkv: 2, D: 3 }, randomSegments(rng, 2, 8, 3), 14);
    gradCheck({ B: 2, T: 6, H: 2, Hkv: 1, D: 2 }, Int32Array.from([1, 1, 1, 2, 2, 2, 0, 0, 4, 4, 4, 4]), 15);
  });
  it('gradients match central differences: odd sizes T=7 D=5', () => gradCheck({ B: 1, T: 7, H: 3, Hkv: 1, D: 5 }, null, 16));

  it('attention over a packed row equals attention over each segment alone (forward and backward)', () => {
    const rng = new Rng(21);
    const lengths = [3, 5, 1, 4];
    const T = lengths.reduce((a, b) => a + b, 0);
    const H = 4, Hkv = 2, D = 3, scale = 0.6;
    const seg = new Int32Array(T);
    for (let i = 0, start = 0; i < lengths.length; start += lengths[i]!, i++) seg.fill(i, start, start + lengths[i]!);
    const q = randn(rng, T * H * D), k = randn(rng, T * Hkv * D), v = randn(rng, T * Hkv * D), R = randn(rng, T * H * D);
    const all = { B: 1, T, H, Hkv, D };
    const packed = runFwd(all, q, k, v, scale, seg);
    const pdq = new Float64Array(q.length), pdk = new Float64Array(k.length), pdv = new Float64Array(v.length);
    bwd(R, q, k, v, packed.out, packed.lse, pdq, pdk, pdv, 1, T, H, Hkv, D, scale, seg);
    let start = 0;
    for (const len of lengths) {
      const sl = (a: Floats, w: number) => a.slice(start * w, (start + len) * w);
      const one = { B: 1, T: len, H, Hkv, D };
      const alone = runFwd(one, sl(q, H * D), sl(k, Hkv * D), sl(v, Hkv * D), scale, null);
      expectClose(sl(packed.out, H * D), alone.out, 1e-13, 'out');
      for (let h = 0; h < H; h++) expectClose(packed.lse.slice(h * T + start, h * T + start + len), alone.lse.slice(h * len, (h + 1) * len), 1e-13, 'lse');
      const dq = new Float64Array(len * H * D), dk = new Float64Array(len * Hkv * D), dv = new Float64Array(len * Hkv * D);
      bwd(sl(R, H * D), sl(q, H * D), sl(k, Hkv * D), sl(v, Hkv * D), alone.out, alone.lse, dq, dk, dv, 1, len, H, Hkv, D, scale, null);
      expectClose(sl(pdq, H * D), dq, 1e-13, 'dq');
      expectClose(sl(pdk, Hkv * D), dk, 1e-13, 'dk');
      expectClose(sl(pdv, Hkv * D), dv, 1e-13, 'dv');
      start += len;
    }
  });

  it('rejects bad shapes with a clear error', () => {
    const a = new Float32Array(10);
    expect(() => attentionFwd(a, a, a, a, a, 1, 2, 3, 2, 1, 1, null)).toThrow(/H=3 is not a multiple of Hkv=2/);
    expect(() => attentionFwd(a, a, a, a, a, 1, 4, 2, 1, 2, 1, null)).toThrow(/q has 10 elements, needs 16/);
  });
});

interface Golden extends Shape {
  scale: number;
  segIds: number[] | null;
  q: number[]; k: number[]; v: number[]; R: number[];
  out: number[]; lse: number[]; dq: number[]; dk: number[]; dv: number[];
}

function loadGolden(name: string): Golden {
  return JSON.parse(readFileSync(new URL(`./fixtures/attention/${name}.json`, import.meta.url), 'utf8')) as Golden;
}

function native(): Kernels {
  const k = nativeKernels();
  expect(k, 'the native addon did not load: run `npm run build:native`').not.toBeNull();
  expect(typeof loadAddon()?.attentionFwd, 'the addon exports attentionFwd').toBe('function');
  return k!;
}

describe('attention vs PyTorch golden values', () => {
  for (const name of ['plain', 'packed']) {
    it(`${name}: js (f64) to 1e-10 and native (f32) to 1e-5`, () => {
      const g = loadGolden(name);
      const { B, T, H, Hkv, D, scale } = g;
      const seg = g.segIds ? Int32Array.from(g.segIds) : null;
      for (const [kind, f64, tol] of [['js', true, 1e-10], ['native', false, 1e-5]] as const) {
        const K = kind === 'js' ? { attentionFwd: fwd, attentionBwd: bwd } : (native() as unknown as { attentionFwd: typeof fwd; attentionBwd: typeof bwd });
        const arr = (x: number[]): Floats => (f64 ? Float64Array.from(x) : Float32Array.from(x));
        const q = arr(g.q), k = arr(g.k), v = arr(g.v), R = arr(g.R);
        const out = arr(g.out).fill(0), lse = arr(g.lse).fill(0);
        K.attentionFwd(q, k, v, out, lse, B, T, H, Hkv, D, scale, seg);
        expectClose(out, g.out, tol, `${kind} out`);
        expectClose(lse, g.lse, tol, `${kind} lse`);
        const dq = arr(g.dq).fill(Number.NaN), dk = arr(g.dk).fill(Number.NaN), dv = arr(g.dv).fill(Number.NaN);
        K.attentionBwd(R, q, k, v, out, lse, dq, dk, dv, B, T, H, Hkv, D, scale, seg);
        expectClose(dq, g.dq, tol, `${kind} dq`);
        expectClose(dk, g.dk, tol, `${kind} dk`);
        expectClose(dv, g.dv, tol, `${kind} dv`);
      }
    });
  }
});

describe('native attention vs js (f32)', () => {
  // scaleMul > 1 spreads the scores over a wide range (exercises the online softmax rescaling).
  const cases: (Shape & { parts: number; scaleMul?: number })[] = [
    { B: 2, T: 37, H: 6, Hkv: 2, D: 13, parts: 0 },
    { B: 2, T: 37, H: 6, Hkv: 2, D: 13, parts: 3 },
    { B: 1, T: 300, H: 4, Hkv: 4, D: 64, parts: 0 },
    { B: 1, T: 300, H: 4, Hkv: 4, D: 64, parts: 4 },
    { B: 3, T: 129, H: 3, Hkv: 1, D: 20, parts: 2 },
    { B: 1, T: 200, H: 2, Hkv: 1, D: 32, parts: 0, scaleMul: 6 },
    { B: 1, T: 1, H: 2, Hkv: 1, D: 1, parts: 0 },
  ];
  for (const c of cases) {
    for (const mode of ['auto', '1pass', '2pass']) {
      it(`B=${c.B} T=${c.T} H=${c.H} Hkv=${c.Hkv} D=${c.D} ${c.parts ? `${c.parts} segments` : 'no segments'}${c.scaleMul ? ` scale x${c.scaleMul}` : ''}, backward ${mode}`, () => {
        const K = native();
        const { B, T, H, Hkv, D } = c;
        const rng = new Rng(1000 + T * 7 + D + c.parts);
        const q = randn(rng, B * T * H * D, false) as Float32Array;
        const k = randn(rng, B * T * Hkv * D, false) as Float32Array;
        const v = randn(rng, B * T * Hkv * D, false) as Float32Array;
        const dout = randn(rng, B * T * H * D, false) as Float32Array;
        const seg = c.parts ? randomSegments(rng, B, T, Math.min(c.parts, T)) : null;
        const scale = (c.scaleMul ?? 1) / Math.sqrt(D);
        const nq = B * T * H * D, nkv = B * T * Hkv * D;
        // Sharper softmax amplifies f32 rounding of the scores (the scalar build shows the same).
        const tol = c.scaleMul ? 5e-5 : 1e-5;
        const mk = (n: number) => new Float32Array(n).fill(Number.NaN);
        const js = { out: mk(nq), lse: mk(B * H * T), dq: mk(nq), dk: mk(nkv), dv: mk(nkv) };
        const nat = { out: mk(nq), lse: mk(B * H * T), dq: mk(nq), dk: mk(nkv), dv: mk(nkv) };
        attentionFwd(q, k, v, js.out, js.lse, B, T, H, Hkv, D, scale, seg);
        K.attentionFwd(q, k, v, nat.out, nat.lse, B, T, H, Hkv, D, scale, seg);
        expectClose(nat.out, js.out, tol, 'out');
        expectClose(nat.lse, js.lse, tol, 'lse');
        attentionBwd(dout, q, k, v, js.out, js.lse, js.dq, js.dk, js.dv, B, T, H, Hkv, D, scale, seg);
        const prev = process.env.AJUSTE_ATTN_BWD;
        process.env.AJUSTE_ATTN_BWD = mode;
        try {
          K.attentionBwd(dout, q, k, v, js.out, js.lse, nat.dq, nat.dk, nat.dv, B, T, H, Hkv, D, scale, seg);
        } finally {
          if (prev === undefined) delete process.env.AJUSTE_ATTN_BWD;
          else process.env.AJUSTE_ATTN_BWD = prev;
        }
        expectClose(nat.dq, js.dq, tol, 'dq');
        expectClose(nat.dk, js.dk, tol, 'dk');
        expectClose(nat.dv, js.dv, tol, 'dv');
      });
    }
  }

  it('rejects wrong argument types and sizes with JS errors', () => {
    const K = native();
    const a = new Float32Array(16);
    expect(() => K.attentionFwd(a, a, a, a, a, 1, 4, 2, 1, 2, 1, null)).not.toThrow();
    expect(() => K.attentionFwd(a, a, a, a, a, 1, 4, 3, 2, 2, 1, null)).toThrow(/not a multiple/);
    expect(() => K.attentionFwd(a, a, a, a, new Float32Array(3), 1, 4, 2, 1, 2, 1, null)).toThrow(/lse has 3 elements, needs 8/);
    expect(() => K.attentionFwd(new Float64Array(16) as unknown as Float32Array, a, a, a, a, 1, 4, 2, 1, 2, 1, null)).toThrow(/Float32Array/);
    expect(() => K.attentionFwd(a, a, a, a, a, 1, 4, 2, 1, 2, 1, new Int32Array(2))).toThrow(/segIds/);
    expect(() => K.attentionFwd(a, a, a, a, a, 1, 0, 2, 1, 2, 1, null)).toThrow(/T must be a positive integer/);
    expect(() => K.attentionBwd(a, a, a, a, a, a, a, a, a, 1, 4, 2, 1, 2, 1, null)).not.toThrow();
    expect(() => K.attentionBwd(a, a, a, a, a, a, a, new Float32Array(4), a, 1, 4, 2, 1, 2, 1, null)).toThrow(/dk has 4 elements/);
    expect(() => (K.attentionBwd as unknown as (...x: unknown[]) => void)(a, a, a)).toThrow(/expected 16 arguments/);
  });
});
