// attentionDecode (native/src/decode_attention.cc): attention of n new rows over a KV cache, against the js
// reference, in both native flavours (avx2 where the CPU has it, and scalar): GQA and plain heads, odd head
// dims (SIMD tails), prefill (n > 1 at start > 0), caches with spare capacity, big enough to be threaded.
// The js reference itself is checked against attentionFwd (the causal attention of the whole sequence).
import { afterAll, describe, expect, it } from 'vitest';
import { attentionDecode as decodeJs, attentionFwd as fwdJs } from '../src/kernels/js/attention.js';
import { loadAddon, nativeKernels } from '../src/kernels/native/index.js';
import { Rng } from '../src/tensor/rng.js';

interface DecodeAddon {
  attentionDecodeForceScalar(on: boolean): string;
}

function addon(): DecodeAddon {
  const a = loadAddon();
  expect(a, 'the native addon did not load: run `npm run build:native`').not.toBeNull();
  expect(typeof a?.attentionDecode, 'the addon exports attentionDecode (native/src/decode_attention.cc)').toBe('function');
  return a as unknown as DecodeAddon;
}

function randn(n: number, rng: Rng): Float32Array {
  const a = new Float32Array(n);
  rng.fillNormal(a, 0, 1);
  return a;
}

afterAll(() => {
  (loadAddon() as unknown as DecodeAddon | null)?.attentionDecodeForceScalar(false);
});

// [start, n, H, Hkv, D, spare capacity]
const cases: [number, number, number, number, number, number][] = [
  [0, 1, 1, 1, 1, 0], [5, 1, 9, 3, 64, 7], [31, 1, 4, 4, 13, 0], [0, 6, 6, 2, 17, 3], [10, 3, 8, 1, 8, 1],
  [95, 1, 9, 3, 64, 0], [200, 4, 12, 4, 67, 5], [0, 33, 9, 3, 64, 0], [3, 0, 2, 1, 4, 2],
];

describe('attentionDecode', () => {
  it('js: n rows after a prefix of start equal the last rows of the causal attention of the whole sequence', () => {
    const rng = new Rng(2);
    for (const [start, n, H, Hkv, D] of cases) {
      if (n === 0) continue;
      const T = start + n;
      const q = randn(T * H * D, rng), k = randn(T * Hkv * D, rng), v = randn(T * Hkv * D, rng);
      const full = new Float32Array(T * H * D);
      fwdJs(q, k, v, full, new Float32Array(H * T), 1, T, H, Hkv, D, 0.3, null);
      const out = new Float32Array(n * H * D);
      decodeJs(q.subarray(start * H * D), k, v, out, start, n, H, Hkv, D, 0.3);
      for (let i = 0; i < out.length; i++) expect(out[i]).toBeCloseTo(full[start * H * D + i]!, 5);
    }
  });

  for (const scalar of [false, true]) {
    it(`native matches js (${scalar ? 'scalar' : 'best'} flavour)`, () => {
      expect(addon().attentionDecodeForceScalar(scalar)).toBe(scalar || process.env.AJUSTE_ISA === 'scalar' ? 'scalar' : 'avx2');
      const k = nativeKernels()!;
      const rng = new Rng(7);
      for (const [start, n, H, Hkv, D, spare] of cases) {
        const cap = start + n + spare;
        const q = randn(n * H * D, rng), keys = randn(cap * Hkv * D, rng), values = randn(cap * Hkv * D, rng);
        const scale = 1 / Math.sqrt(D);
        const ref = new Float32Array(n * H * D), got = new Float32Array(n * H * D).fill(Number.NaN);
        decodeJs(q, keys, values, ref, start, n, H, Hkv, D, scale);
        k.attentionDecode(q, keys, values, got, start, n, H, Hkv, D, scale);
        for (let i = 0; i < ref.length; i++) {
          expect(Math.abs(got[i]! - ref[i]!), `start=${start} n=${n} H=${H} Hkv=${Hkv} D=${D} at ${i}: ${got[i]} vs ${ref[i]}`).toBeLessThanOrEqual(1e-5);
        }
      }
    });
  }

  it('checks its arguments', () => {
    const k = nativeKernels()!;
    addon();
    const f = (n: number) => new Float32Array(n);
    expect(() => k.attentionDecode(f(8), f(15), f(16), f(8), 1, 1, 2, 2, 4, 0.5)).toThrow(/keys has 15 elements/);
    expect(() => k.attentionDecode(f(12), f(96), f(96), f(12), 1, 1, 3, 2, 4, 0.5)).toThrow(/not a multiple/);
    expect(() => k.attentionDecode(f(8), f(32), f(32), f(7), 1, 1, 2, 2, 4, 0.5)).toThrow(/out has 7 elements/);
    expect(() => decodeJs(f(8), f(15), f(16), f(8), 1, 1, 2, 2, 4, 0.5)).toThrow(/keys has 15 elements/);
  });
});
