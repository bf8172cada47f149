import { describe, expect, it } from 'vitest';
import { Linear } from '../src/nn/layers.js';
import { doraWeightNorm, loraLinear } from '../src/peft/lora-op.js';
import { add, linear, matmul, mul, scale, sum } from '../src/tensor/ops.js';
import { backward, noGrad, parameter } from '../src/tensor/autograd.js';
import { Tensor } from '../src/tensor/tensor.js';
import { Rng } from '../src/tensor/rng.js';
import { expectClose, gradCheck, randTensor } from './helpers.js';
import { dropout } from '../src/nn/ops/activations.js';

const rng = new Rng(3);
const r = (...shape: number[]) => randTensor(rng, shape);

describe('fused LoRA op', () => {
  it('forward equals x W^T + b + s (x A^T) B^T', () => {
    const [x, W, b, A, B] = [r(2, 3, 6), r(5, 6), r(5), r(4, 6), r(5, 4)];
    const y = noGrad(() => loraLinear(x, { base: new Linear(W), bias: b, A, B, scaling: 0.7, dropout: 0, rng: null, magnitude: null }));
    const ref = noGrad(() => add(linear(x, W, b), scale(matmul(matmul(x, A, { transB: true }), B, { transB: true }), 0.7)));
    expectClose(y.f, ref.f, 1e-12, 'lora forward');
  });
  it('gradients of x, A, B and a trainable bias (finite differences)', () => {
    const W = r(5, 6);
    gradCheck(([x, A, B, b]) => loraLinear(x!, { base: new Linear(W), bias: b!, A: A!, B: B!, scaling: 1.3, dropout: 0, rng: null, magnitude: null }), [r(2, 3, 6), r(4, 6), r(5, 4), r(5)]);
  });
  it('dropout applies to the LoRA branch input only, and gradients match with the same mask', () => {
    const W = r(5, 6);
    const seed = 11;
    const fn = ([x, A, B]: import('../src/tensor/tensor.js').Tensor[]) =>
      loraLinear(x!, { base: new Linear(W), bias: null, A: A!, B: B!, scaling: 2, dropout: 0.3, rng: new Rng(seed), magnitude: null });
    gradCheck(fn, [r(3, 6), r(2, 6), r(5, 2)]);
    const [x, A, B] = [r(3, 6), r(2, 6), r(5, 2)];
    const y = noGrad(() => fn([x, A, B]));
    const ref = noGrad(() => add(linear(x, W), scale(matmul(matmul(dropout(x, 0.3, new Rng(seed)), A, { transB: true }), B, { transB: true }), 2)));
    expectClose(y.f, ref.f, 1e-12, 'dropout forward');
  });
  it('DoRA gradients of x and the magnitude (finite differences)', () => {
    const [W, A, B] = [r(5, 6), r(2, 6), r(5, 2)];
    gradCheck(([x, m]) => loraLinear(x!, { base: new Linear(W), bias: null, A, B, scaling: 0.5, dropout: 0, rng: null, magnitude: m! }), [r(3, 6), r(5)]);
    gradCheck(([x, m]) => loraLinear(x!, { base: new Linear(W), bias: null, A, B, scaling: 0.5, dropout: 0.4, rng: new Rng(5), magnitude: m! }), [r(3, 6), r(5)]);
  });
  it('DoRA gradients of A and B treat the weight norm as a constant (detached, as PEFT)', () => {
    const [W, x, R] = [r(5, 6), r(3, 6), r(3, 5)];
    const A = parameter(r(2, 6), 'A'), B = parameter(r(5, 2), 'B'), m = parameter(r(5), 'm');
    const A2 = parameter(A.clone(), 'A2'), B2 = parameter(B.clone(), 'B2');
    const s = 0.5;
    backward(sum(mul(loraLinear(x, { base: new Linear(W), bias: null, A, B, scaling: s, dropout: 0, rng: null, magnitude: m }), R)));
    // Reference: y = c ⊙ (x W^T + s (x A^T) B^T) with c = m / ||W + s B A|| as a constant.
    const norms = doraWeightNorm(W.f, A, B, s);
    const c = Tensor.from(Float64Array.from(norms, (n, j) => m.f[j]! / n), [5]);
    const y2 = mul(add(linear(x, W), scale(matmul(matmul(x, A2, { transB: true }), B2, { transB: true }), s)), c);
    backward(sum(mul(y2, R)));
    expectClose(A.grad!.f, A2.grad!.f, 1e-12, 'dA');
    expectClose(B.grad!.f, B2.grad!.f, 1e-12, 'dB');
  });
  it('DoRA with zero B and magnitude = ||W|| reproduces the base layer', () => {
    const [x, W, A] = [r(3, 6), r(5, 6), r(2, 6)];
    const B = randTensor(rng, [5, 2]);
    B.f.fill(0);
    const m = randTensor(rng, [5]);
    for (let j = 0; j < 5; j++) {
      let s = 0;
      for (let k = 0; k < 6; k++) s += W.f[j * 6 + k]! ** 2;
      m.f[j] = Math.sqrt(s);
    }
    const y = noGrad(() => loraLinear(x, { base: new Linear(W), bias: null, A, B, scaling: 1, dropout: 0, rng: null, magnitude: m }));
    expectClose(y.f, noGrad(() => linear(x, W)).f, 1e-12, 'dora identity');
    expect(y.size).toBe(15);
  });
});
