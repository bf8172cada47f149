// Native pointwise / row-wise kernels (native/src/pointwise.cc) against the js reference
// (src/kernels/js/pointwise.ts), in both native flavours (avx2 where the CPU has it, and scalar):
// cross-entropy rows, SwiGLU, SiLU, GELU (tanh), RMSNorm, RoPE, AdamW, the elementwise sum and the
// vectorised exp.
import { afterAll, describe, expect, it } from 'vitest';
import type { Kernels } from '../src/kernels/backend.js';
import { jsKernels } from '../src/kernels/js/index.js';
import { loadAddon, nativeKernels } from '../src/kernels/native/index.js';
import { Rng } from '../src/tensor/rng.js';

interface PointwiseAddon {
  pointwiseIsa: string;
  pointwiseForceScalar(on: boolean): string;
  pointwiseExp(x: Float32Array, out: Float32Array): void;
}

function addon(): PointwiseAddon {
  const a = loadAddon();
  expect(a, 'the native addon did not load: run `npm run build:native`').not.toBeNull();
  expect(typeof a?.crossEntropyRows, 'the addon exports crossEntropyRows (native/src/pointwise.cc)').toBe('function');
  return a as unknown as PointwiseAddon;
}

function native(): Kernels {
  addon();
  const k = nativeKernels()!;
  expect(k.crossEntropyRows).not.toBe(jsKernels.crossEntropyRows);
  return k;
}

function randn(n: number, rng: Rng, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * scale;
  return a;
}

/** max |a - b| / (atol + rtol |b|) over all elements; <= 1 passes. */
function worst(a: Float32Array | Float64Array, b: Float32Array | Float64Array, atol: number, rtol: number): number {
  expect(a.length).toBe(b.length);
  let w = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!, y = b[i]!;
    if (Number.isNaN(y) || Number.isNaN(x)) {
      if (!(Number.isNaN(x) && Number.isNaN(y))) return Number.POSITIVE_INFINITY;
      continue;
    }
    if (x === y) continue;
    w = Math.max(w, Math.abs(x - y) / (atol + rtol * Math.abs(y)));
  }
  return w;
}

function close(a: Float32Array | Float64Array, b: Float32Array | Float64Array, atol = 1e-6, rtol = 2e-6, what = ''): void {
  const w = worst(a, b, atol, rtol);
  expect(w, `${what}: worst error ${w} x tolerance`).toBeLessThanOrEqual(1);
}

const SIZES = [1, 7, 8, 9, 31, 1000, 1031, 70001];
const flavours: [string, boolean][] = [['best', false], ['scalar', true]];

afterAll(() => {
  const a = loadAddon() as unknown as PointwiseAddon | null;
  a?.pointwiseForceScalar(false);
});

describe('native pointwise kernels', () => {
  it('reports its flavour; avx2 on this CPU', () => {
    const a = addon();
    expect(['avx2', 'scalar']).toContain(a.pointwiseIsa);
    if (process.env.AJUSTE_ISA !== 'scalar') expect(a.pointwiseIsa).toBe('avx2');
    expect(a.pointwiseForceScalar(true)).toBe('scalar');
    expect(a.pointwiseForceScalar(false)).toBe(a.pointwiseIsa);
  });

  it('vectorised exp is within 2 ulp of exp over the whole float range', () => {
    const a = addon();
    const rng = new Rng(1);
    const xs: number[] = [0, -0, 1, -1, 1e-30, -1e-30, 88.72, 88.7228, 88.73, 89, 1000, -87.3, -87.34, -88, -100, -103.9, -104, -200, -1000];
    for (let i = 0; i < 20000; i++) xs.push((rng.uniform() * 2 - 1) * 110);
    for (let i = 0; i < 20000; i++) xs.push((rng.uniform() * 2 - 1) * 2);
    for (let i = -80; i <= 80; i += 0.125) xs.push(i);
    xs.push(Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, Number.NaN);
    const x = Float32Array.from(xs);
    const out = new Float32Array(x.length);
    a.pointwiseExp(x, out);
    const ref = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) ref[i] = Math.exp(x[i]!);
    const u = new Uint32Array(1), f = new Float32Array(u.buffer);
    const bits = (v: number): number => {
      f[0] = v;
      return u[0]!;
    };
    let maxUlp = 0;
    for (let i = 0; i < x.length; i++) {
      const r = ref[i]!, o = out[i]!;
      if (Number.isNaN(r)) {
        expect(o, `exp(${x[i]})`).toBeNaN();
        continue;
      }
      if (r === Number.POSITIVE_INFINITY || r === 0) {
        expect(o, `exp(${x[i]})`).toBe(r);
        continue;
      }
      if (r < 1.2e-38) {
        // subnormal results: absolute error of a few subnormal steps
        expect(Math.abs(o - r), `exp(${x[i]})`).toBeLessThan(1e-44 * 8);
        continue;
      }
      maxUlp = Math.max(maxUlp, Math.abs(bits(o) - bits(r)));
    }
    expect(maxUlp).toBeLessThanOrEqual(2);
  });

  it('addVec: bit-identical to the js sum, also in place (out = a or b), odd sizes', () => {
    const k = native();
    const rng = new Rng(11);
    for (const n of SIZES) {
      const a = randn(n, rng), b = randn(n, rng, 3);
      const ref = new Float32Array(n);
      jsKernels.addVec(a, b, ref, n);
      const out = new Float32Array(n).fill(Number.NaN);
      k.addVec(a, b, out, n);
      expect(out, `n=${n}`).toEqual(ref);
      const a2 = a.slice(), b2 = b.slice();
      k.addVec(a2, b, a2, n);
      k.addVec(a, b2, b2, n);
      expect(a2).toEqual(ref);
      expect(b2).toEqual(ref);
      // a prefix only
      const part = a.slice();
      k.addVec(part, b, part, n >> 1);
      expect(part.subarray(n >> 1)).toEqual(a.subarray(n >> 1));
    }
    expect(() => k.addVec(new Float32Array(3), new Float32Array(2), new Float32Array(3), 3)).toThrow(/b has 2 elements/);
  });

  for (const [flavour, scalar] of flavours) {
    describe(`flavour ${flavour}`, () => {
      const set = (): Kernels => {
        const k = native();
        addon().pointwiseForceScalar(scalar);
        return k;
      };

      it('crossEntropyRows: loss and gradient (also in place), odd vocab sizes, ignored rows, extreme logits', () => {
        const k = set();
        const rng = new Rng(2);
        for (const V of [1, 7, 9, 1000, 4099]) {
          for (const rows of [1, 5, 13]) {
            const logits = randn(rows * V, rng, 3);
            // extreme logits in some rows
            for (let j = 0; j < V; j += 3) logits[j] = 80;
            if (rows > 1) for (let j = 0; j < V; j++) logits[V + j] = j % 2 ? -80 : 80 * rng.uniform();
            const labels = new Int32Array(rows + 3).fill(-7);
            for (let r = 0; r < rows; r++) labels[3 + r] = r % 4 === 2 ? -100 : Math.floor(rng.uniform() * V);
            const gN = new Float32Array(rows * V), gJ = new Float32Array(rows * V).fill(Number.NaN);
            gN.fill(Number.NaN);
            const lN = k.crossEntropyRows(logits, labels, 3, rows, V, gN);
            const lJ = jsKernels.crossEntropyRows(logits, labels, 3, rows, V, gJ);
            expect(Math.abs(lN - lJ), `V=${V} rows=${rows}: ${lN} vs ${lJ}`).toBeLessThan(1e-5 * (1 + Math.abs(lJ)));
            close(gN, gJ, 1e-6, 1e-5, `grad V=${V} rows=${rows}`);
            for (let r = 0; r < rows; r++) if (labels[3 + r] === -100) expect(gN.subarray(r * V, (r + 1) * V).every((v) => v === 0)).toBe(true);
            // without grad: same loss
            expect(k.crossEntropyRows(logits, labels, 3, rows, V, null)).toBe(lN);
            // per-row losses (DPO's sequence log-probabilities): they sum to the total; 0 on ignored rows
            const rN = new Float64Array(rows).fill(Number.NaN), rJ = new Float64Array(rows).fill(Number.NaN);
            expect(k.crossEntropyRows(logits, labels, 3, rows, V, null, rN)).toBe(lN);
            jsKernels.crossEntropyRows(logits, labels, 3, rows, V, null, rJ);
            expect(rN.reduce((a, b) => a + b, 0)).toBeCloseTo(lN, 9);
            for (let r = 0; r < rows; r++) {
              if (labels[3 + r] === -100) expect(rN[r]).toBe(0);
              expect(Math.abs(rN[r]! - rJ[r]!), `row ${r}`).toBeLessThan(1e-5 * (1 + Math.abs(rJ[r]!)));
            }
            expect(() => k.crossEntropyRows(logits, labels, 3, rows, V, null, new Float64Array(rows - 1))).toThrow(/rowLoss has/);
            expect(() => k.crossEntropyRows(logits, labels, 3, rows, V, null, new Float32Array(rows) as unknown as Float64Array)).toThrow(/Float64Array/);
            // in place (grad === logits), as linearCrossEntropy calls it
            const inPlace = logits.slice();
            expect(k.crossEntropyRows(inPlace, labels, 3, rows, V, inPlace)).toBe(lN);
            expect(worst(inPlace, gN, 0, 0)).toBe(0);
          }
        }
      });

      it('crossEntropyRows: a chunk whose labels are all ignored, threads (big chunk), NaN rows, bad labels', () => {
        const k = set();
        const rng = new Rng(3);
        const V = 4096, rows = 64;
        const logits = randn(rows * V, rng, 2);
        const ignored = new Int32Array(rows).fill(-100);
        const g = new Float32Array(rows * V).fill(5);
        expect(k.crossEntropyRows(logits, ignored, 0, rows, V, g)).toBe(0);
        expect(g.every((v) => v === 0)).toBe(true);
        const labels = new Int32Array(rows);
        for (let r = 0; r < rows; r++) labels[r] = Math.floor(rng.uniform() * V);
        const gN = new Float32Array(rows * V), gJ = new Float32Array(rows * V);
        const lN = k.crossEntropyRows(logits, labels, 0, rows, V, gN);
        const lJ = jsKernels.crossEntropyRows(logits, labels, 0, rows, V, gJ);
        expect(Math.abs(lN - lJ)).toBeLessThan(1e-5 * lJ);
        close(gN, gJ, 1e-7, 1e-5, 'grad 64x4096');
        // a NaN logit makes the loss NaN, as in js
        const bad = logits.slice(0, 2 * V);
        bad[V + 17] = Number.NaN;
        expect(k.crossEntropyRows(bad, labels, 0, 2, V, null)).toBeNaN();
        expect(jsKernels.crossEntropyRows(bad, labels, 0, 2, V, null)).toBeNaN();
        bad[V + 17] = Number.POSITIVE_INFINITY;
        expect(k.crossEntropyRows(bad, labels, 0, 2, V, null)).toBeNaN();
        // labels outside the vocabulary
        for (const y of [V, -1, -101]) {
          const l = Int32Array.from([0, y]);
          expect(() => k.crossEntropyRows(logits, l, 0, 2, V, null)).toThrow(/label .* at position 1 is outside the vocabulary \(size 4096\)/);
          expect(() => jsKernels.crossEntropyRows(logits, l, 0, 2, V, null)).toThrow(/outside the vocabulary/);
        }
        // sizes and types
        expect(() => k.crossEntropyRows(logits.subarray(0, 10), labels, 0, 2, V, null)).toThrow(/logits has 10 elements/);
        expect(() => k.crossEntropyRows(logits, labels, 60, 5, V, null)).toThrow(/labels has 64 elements, needs 65/);
        expect(() => k.crossEntropyRows(new Float64Array(V) as unknown as Float32Array, labels, 0, 1, V, null)).toThrow(/Float32Array/);
        expect(() => k.crossEntropyRows(logits, labels, 0, 1.5, V, null)).toThrow(/rows must be a non-negative integer/);
      });

      it('swiglu / silu / geluTanh forward and backward match js on odd sizes and extreme inputs', () => {
        const k = set();
        const rng = new Rng(4);
        for (const n of SIZES) {
          const gate = randn(n, rng, 4), up = randn(n, rng), dout = randn(n, rng);
          if (n > 8) {
            gate[0] = 100;
            gate[1] = -100;
            gate[2] = 1e-30;
            gate[3] = -20;
            gate[4] = 89;
            gate[5] = -89;
          }
          const oN = new Float32Array(n), oJ = new Float32Array(n);
          k.swigluFwd(gate, up, oN, n);
          jsKernels.swigluFwd(gate, up, oJ, n);
          close(oN, oJ, 1e-6, 4e-6, `swigluFwd n=${n}`);
          const dgN = new Float32Array(n), duN = new Float32Array(n), dgJ = new Float32Array(n), duJ = new Float32Array(n);
          k.swigluBwd(gate, up, dout, dgN, duN, n);
          jsKernels.swigluBwd(gate, up, dout, dgJ, duJ, n);
          close(dgN, dgJ, 1e-6, 4e-6, `swigluBwd dgate n=${n}`);
          close(duN, duJ, 1e-6, 4e-6, `swigluBwd dup n=${n}`);
          const du2 = new Float32Array(n);
          k.swigluBwd(gate, up, dout, null, du2, n);
          expect(worst(du2, duN, 0, 0)).toBe(0);
          for (const [name, fwd, bwd] of [
            ['silu', 'siluFwd', 'siluBwd'],
            ['geluTanh', 'geluTanhFwd', 'geluTanhBwd'],
          ] as const) {
            const yN = new Float32Array(n), yJ = new Float32Array(n);
            k[fwd](gate, yN, n);
            jsKernels[fwd](gate, yJ, n);
            close(yN, yJ, 1e-6, 4e-6, `${name} fwd n=${n}`);
            k[bwd](gate, dout, yN, n);
            jsKernels[bwd](gate, dout, yJ, n);
            close(yN, yJ, 1e-6, 4e-6, `${name} bwd n=${n}`);
          }
        }
        // only the first n elements are written
        const out = new Float32Array(12).fill(7);
        k.swigluFwd(new Float32Array(12).fill(1), new Float32Array(12).fill(1), out, 9);
        expect(Array.from(out.subarray(9))).toEqual([7, 7, 7]);
        expect(() => k.swigluFwd(new Float32Array(3), new Float32Array(2), new Float32Array(3), 3)).toThrow(/up has 2 elements, needs 3/);
      });

      it('rmsNorm forward and backward (dw over rows, threads for big inputs) match js', () => {
        const k = set();
        const rng = new Rng(5);
        for (const [rows, D] of [[1, 1], [3, 7], [5, 9], [17, 256], [300, 257], [2, 1031], [512, 256]] as const) {
          const x = randn(rows * D, rng, 2), w = randn(D, rng), dout = randn(rows * D, rng);
          const yN = new Float32Array(rows * D), yJ = new Float32Array(rows * D);
          const sN = new Float32Array(rows), sJ = new Float32Array(rows);
          k.rmsNormFwd(x, w, yN, sN, rows, D, 1e-6);
          jsKernels.rmsNormFwd(x, w, yJ, sJ, rows, D, 1e-6);
          close(sN, sJ, 0, 2e-6, `rstd ${rows}x${D}`);
          close(yN, yJ, 1e-6, 4e-6, `rms fwd ${rows}x${D}`);
          const dxN = new Float32Array(rows * D), dxJ = new Float32Array(rows * D);
          const dwN = new Float32Array(D).fill(9), dwJ = new Float32Array(D).fill(9);
          k.rmsNormBwd(dout, x, w, sJ, dxN, dwN, rows, D);
          jsKernels.rmsNormBwd(dout, x, w, sJ, dxJ, dwJ, rows, D);
          close(dxN, dxJ, 1e-5, 1e-4, `rms dx ${rows}x${D}`);
          close(dwN, dwJ, 1e-4, 1e-4, `rms dw ${rows}x${D}`);
          const dw2 = new Float32Array(D);
          k.rmsNormBwd(dout, x, w, sJ, null, dw2, rows, D);
          expect(worst(dw2, dwN, 0, 0)).toBe(0);
        }
        expect(() => k.rmsNormFwd(new Float32Array(8), new Float32Array(3), new Float32Array(8), new Float32Array(2), 2, 4, 1e-5)).toThrow(/w has 3 elements, needs 4/);
      });

      it('ropeApply forward and inverse (partial rotary, in place) match js', () => {
        const k = set();
        const rng = new Rng(6);
        for (const [tokens, heads, D, half] of [[1, 1, 2, 1], [5, 3, 10, 5], [7, 2, 12, 3], [33, 4, 64, 32], [300, 8, 32, 16]] as const) {
          const maxPos = 50;
          const cos = randn(maxPos * half, rng), sin = randn(maxPos * half, rng);
          const pos = new Int32Array(tokens);
          for (let t = 0; t < tokens; t++) pos[t] = Math.floor(rng.uniform() * maxPos);
          const x = randn(tokens * heads * D, rng);
          for (const sign of [1, -1]) {
            const yN = new Float32Array(x.length), yJ = new Float32Array(x.length);
            k.ropeApply(x, yN, pos, cos, sin, tokens, heads, D, half, sign);
            jsKernels.ropeApply(x, yJ, pos, cos, sin, tokens, heads, D, half, sign);
            close(yN, yJ, 1e-6, 4e-6, `rope ${tokens}x${heads}x${D}/${half} sign ${sign}`);
            const inPlace = x.slice();
            k.ropeApply(inPlace, inPlace, pos, cos, sin, tokens, heads, D, half, sign);
            expect(worst(inPlace, yN, 0, 0)).toBe(0);
          }
        }
        const bad = Int32Array.from([3]);
        expect(() => k.ropeApply(new Float32Array(4), new Float32Array(4), bad, new Float32Array(6), new Float32Array(6), 1, 1, 4, 2, 1)).toThrow(/position 3 is outside the table \(max 2\)/);
        expect(() => k.ropeApply(new Float32Array(4), new Float32Array(4), Int32Array.from([0]), new Float32Array(6), new Float32Array(6), 1, 1, 4, 3, 1)).toThrow(/rotary dim 6 exceeds head dim 4/);
      });

      it('adamwStep is bit-identical to js', () => {
        const k = set();
        const rng = new Rng(7);
        for (const n of SIZES) {
          const w = randn(n, rng), g = randn(n, rng, 0.1);
          const m = randn(n, rng, 0.01), v = new Float32Array(n);
          for (let i = 0; i < n; i++) v[i] = Math.abs(rng.normal()) * 1e-3;
          const [wN, mN, vN] = [w.slice(), m.slice(), v.slice()];
          const [wJ, mJ, vJ] = [w.slice(), m.slice(), v.slice()];
          for (let t = 1; t <= 3; t++) {
            const bc1 = 1 - 0.9 ** t, bc2 = Math.sqrt(1 - 0.999 ** t);
            k.adamwStep(wN, g, mN, vN, n, 1e-3, 0.9, 0.999, 1e-8, 0.01, bc1, bc2);
            jsKernels.adamwStep(wJ, g, mJ, vJ, n, 1e-3, 0.9, 0.999, 1e-8, 0.01, bc1, bc2);
          }
          expect(worst(wN, wJ, 0, 0), `w n=${n}`).toBe(0);
          expect(worst(mN, mJ, 0, 0), `m n=${n}`).toBe(0);
          expect(worst(vN, vJ, 0, 0), `v n=${n}`).toBe(0);
          expect(worst(wN, w, 0, 0), 'the weights moved').toBeGreaterThan(0);
        }
        expect(() => k.adamwStep(new Float32Array(4), new Float32Array(4), new Float32Array(3), new Float32Array(4), 4, 1, 0.9, 0.9, 1e-8, 0, 1, 1)).toThrow(/m has 3 elements, needs 4/);
      });
    });
  }
});
