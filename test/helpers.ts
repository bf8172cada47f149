import { expect } from 'vitest';
import { backward, noGrad, parameter, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';

export function randTensor(rng: Rng, shape: number[], dtype: 'f32' | 'f64' = 'f64', std = 1): Tensor {
  const t = Tensor.zeros(shape, dtype);
  for (let i = 0; i < t.size; i++) t.data[i] = rng.normal() * std;
  return t;
}

/**
 * Finite-difference check in f64: loss = sum(fn(inputs) * R) for a fixed random R; compares the
 * autograd gradient of every input against central differences.
 */
export function gradCheck(fn: (xs: Tensor[]) => Tensor, inputs: Tensor[], opts: { eps?: number; tol?: number; seed?: number } = {}): void {
  const eps = opts.eps ?? 1e-6;
  const tol = opts.tol ?? 1e-6;
  const params = inputs.map((x, i) => parameter(x, `x${i}`));
  for (const p of params) p.grad = null;
  const rng = new Rng(opts.seed ?? 99);
  let R: Float64Array | null = null;
  const lossOf = (): number =>
    noGrad(() =>
      scope(() => {
        const out = fn(params);
        if (!R) R = Float64Array.from({ length: out.size }, () => rng.normal());
        let s = 0;
        for (let i = 0; i < out.size; i++) s += (out.data[i] as number) * R[i]!;
        return s;
      }),
    );
  lossOf();
  scope(() => {
    const out = fn(params);
    backward(out, Float64Array.from(R!));
    return null;
  });
  for (const p of params) {
    const analytic = p.grad?.f ?? new Float64Array(p.size);
    const data = p.f;
    for (let i = 0; i < p.size; i++) {
      const orig = data[i]!;
      data[i] = orig + eps;
      const up = lossOf();
      data[i] = orig - eps;
      const down = lossOf();
      data[i] = orig;
      const numeric = (up - down) / (2 * eps);
      const err = Math.abs(numeric - analytic[i]!);
      const scaleRef = Math.max(1, Math.abs(numeric));
      if (err > tol * scaleRef) {
        expect.fail(`${p.name}[${i}]: analytic ${analytic[i]} vs numeric ${numeric} (err ${err})`);
      }
    }
  }
}

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = ''): void {
  expect(actual.length, `${what} length`).toBe(expected.length);
  let worst = 0, at = -1;
  for (let i = 0; i < actual.length; i++) {
    const e = Math.abs(actual[i]! - expected[i]!) / Math.max(1, Math.abs(expected[i]!));
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  if (!(worst <= tol)) expect.fail(`${what}: max error ${worst} at ${at} (${actual[at]} vs ${expected[at]}) exceeds ${tol}`);
}

/**
 * A kernel's C [M, ldc] against a reference: the first N columns of each row within
 * 1e-5 (1 + |ref|) sqrt(K + 1) (an f32 sum of K terms), the padding columns N..ldc untouched (as in C0).
 */
export function expectGemmResult(got: Float32Array, ref: Float32Array, C0: Float32Array, M: number, N: number, K: number, ldc: number, what: string): void {
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < ldc; j++) {
      const x = got[i * ldc + j]!, y = ref[i * ldc + j]!;
      if (j >= N) {
        expect(Object.is(x, C0[i * ldc + j]!), `${what}: padding (${i},${j}) changed`).toBe(true);
        continue;
      }
      expect(Math.abs(x - y), `${what} at (${i},${j}): ${x} vs ${y}`).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(y)) * Math.sqrt(K + 1));
    }
  }
}
