import { describe, expect, it } from 'vitest';
import { geluErf, geluTanh, silu, softmax, swiglu } from '../src/nn/ops/activations.js';
import { crossEntropy, linearCrossEntropy, linearSequenceLogProbs } from '../src/nn/ops/loss.js';
import { layerNorm, rmsNorm } from '../src/nn/ops/norm.js';
import { rope, ropeTables } from '../src/nn/ops/rope.js';
import { add, embedding, gatherRows, linear, matmul, mean, mul, permute, scale, sub, sum } from '../src/tensor/ops.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
import { expectClose, gradCheck, randTensor } from './helpers.js';

const rng = new Rng(7);
const r = (...shape: number[]) => randTensor(rng, shape);

describe('finite-difference gradients (f64, js kernels)', () => {
  it('add / sub / mul with broadcasting, scale, sum, mean', () => {
    gradCheck(([a, b]) => add(a!, b!), [r(2, 3, 4), r(3, 1)]);
    gradCheck(([a, b]) => sub(a!, b!), [r(4), r(2, 3, 4)]);
    gradCheck(([a, b]) => mul(a!, b!), [r(2, 1, 4), r(3, 4)]);
    gradCheck(([a]) => scale(a!, -1.7), [r(5)]);
    gradCheck(([a]) => sum(a!), [r(3, 2)]);
    gradCheck(([a]) => mean(a!), [r(3, 2)]);
  });
  it('gradients passed on without a copy (same-shape add, reshape) stay right when reused', () => {
    // a feeds a sum twice and a view once: a.grad must collect all three paths.
    gradCheck(([x]) => {
      const a = scale(x!, 1.5);
      const b = add(a, a);
      return mul(add(b.reshape([6]), a.reshape([6])).reshape([2, 3]), add(a, x!));
    }, [r(2, 3)]);
    gradCheck(([x, y]) => add(add(x!, y!), add(y!, x!)), [r(4, 3), r(4, 3)]);
  });
  it('matmul in every transpose combination, batched and with a shared right operand', () => {
    for (const transA of [false, true])
      for (const transB of [false, true]) {
        const a = transA ? r(2, 5, 3) : r(2, 3, 5);
        const b = transB ? r(2, 4, 5) : r(2, 5, 4);
        gradCheck(([x, y]) => matmul(x!, y!, { transA, transB }), [a, b]);
        const shared = transB ? r(4, 5) : r(5, 4);
        gradCheck(([x, y]) => matmul(x!, y!, { transA, transB }), [a, shared]);
      }
  });
  it('permute', () => {
    gradCheck(([a]) => permute(a!, [2, 0, 1]), [r(2, 3, 4)]);
  });
  it('linear with bias', () => {
    gradCheck(([x, w, b]) => linear(x!, w!, b!), [r(2, 3, 5), r(4, 5), r(4)]);
  });
  it('embedding (scatter-add backward with repeated ids)', () => {
    const ids = Int32Array.from([1, 3, 1, 0, 3, 3]);
    gradCheck(([w]) => embedding(ids, w!, [2, 3]), [r(5, 4)]);
  });
  it('gatherRows (the pooled rows of a reward model; scatter-add backward with repeated rows)', () => {
    const rows = Int32Array.from([5, 0, 5, 3]);
    gradCheck(([x]) => gatherRows(x!, rows), [r(2, 3, 4)]);
    gradCheck(([x, w]) => linear(gatherRows(x!, Int32Array.of(2, 1)), w!), [r(3, 4), r(1, 4)]);
    const x = r(3, 2);
    expect(Array.from(gatherRows(x, Int32Array.of(2, 0)).f)).toEqual([x.f[4], x.f[5], x.f[0], x.f[1]]);
    expect(() => gatherRows(x, Int32Array.of(3))).toThrow(/row 3 at position 0 is outside \[0, 3\)/);
  });
  it('RMSNorm and LayerNorm', () => {
    gradCheck(([x, w]) => rmsNorm(x!, w!, 1e-6), [r(3, 7), r(7)]);
    gradCheck(([x, w, b]) => layerNorm(x!, w!, b!, 1e-5), [r(3, 7), r(7), r(7)]);
  });
  it('SiLU, GELU (tanh and erf), SwiGLU, softmax', () => {
    gradCheck(([x]) => silu(x!), [r(11)]);
    gradCheck(([x]) => geluTanh(x!), [r(11)]);
    gradCheck(([x]) => geluErf(x!), [r(11)]);
    gradCheck(([g, u]) => swiglu(g!, u!), [r(2, 6), r(2, 6)]);
    gradCheck(([x]) => softmax(x!), [r(3, 5)]);
  });
  it('RoPE, full and partial rotary, with restarting positions', () => {
    const inv = Float64Array.from([1, 0.1, 0.01]);
    const tables = ropeTables(inv, 16);
    const pos = Int32Array.from([0, 1, 2, 0, 1, 5]);
    gradCheck(([x]) => rope(x!, pos, tables), [r(2, 3, 2, 6)]);
    gradCheck(([x]) => rope(x!, pos, tables), [r(2, 3, 2, 8)]); // rotary dim 6 of 8
  });
  it('cross-entropy with ignored positions, mean and sum', () => {
    const labels = Int32Array.from([2, -100, 0, 4, -100]);
    gradCheck(([x]) => crossEntropy(x!, labels), [r(5, 6)]);
    gradCheck(([x]) => crossEntropy(x!, labels, { reduction: 'sum' }), [r(5, 6)]);
  });
  it('chunked linear cross-entropy equals cross-entropy of the full logits, with gradients', () => {
    const labels = Int32Array.from([2, -100, 0, 4, -100, -100, 1]);
    gradCheck(([h, w]) => linearCrossEntropy(h!, w!, labels, { chunkTokens: 2 }), [r(7, 3), r(6, 3)]);
    gradCheck(([h, w]) => crossEntropy(matmul(h!, w!, { transB: true }), labels), [r(7, 3), r(6, 3)]);
  });
  it('per-sequence log-probabilities (DPO): minus the summed cross-entropy of each sequence, with gradients', () => {
    const labels = Int32Array.from([2, -100, 0, 4, -100, 3, 1, -100]);
    const seq = Int32Array.from([0, 0, 2, 2, 1, 2, 0, -1]);
    gradCheck(([h, w]) => linearSequenceLogProbs(h!, w!, labels, seq, 3, { chunkTokens: 3 }), [r(8, 3), r(6, 3)]);
    const [h, w] = [r(8, 3), r(6, 3)];
    const got = linearSequenceLogProbs(h, w, labels, seq, 3, { chunkTokens: 3 });
    const want = [0, 0, 0];
    for (let i = 0; i < 8; i++) {
      if (labels[i] === -100) continue;
      const one = new Int32Array(8).fill(-100);
      one[i] = labels[i]!;
      want[seq[i]!]! -= crossEntropy(matmul(h, w, { transB: true }), one, { reduction: 'sum' }).item();
    }
    expectClose(got.f, want, 1e-12, 'log-probabilities');
    // sequence 1 has no scored token, so its log-probability is 0
    expect(got.f[1]).toBe(0);
    expect(() => linearSequenceLogProbs(h, w, labels, Int32Array.from([0, 0, 2, 2, 1, 3, 0, -1]), 3)).toThrow(/row 5 has sequence id 3 outside \[0, 3\)/);
  });
});

describe('views', () => {
  it('reshape and narrow0 pass gradients through', () => {
    gradCheck(([x]) => mul(x!.reshape([3, 4]), x!.reshape([3, 4])), [r(12)]);
    gradCheck(([x]) => scale(x!.narrow0(1, 2), 2), [r(4, 3)]);
  });
  it('narrow0 shares storage', () => {
    const t = Tensor.from([1, 2, 3, 4, 5, 6], [3, 2]);
    const v = t.narrow0(1, 1);
    v.data[0] = 9;
    if (t.data[2] !== 9) throw new Error('narrow0 copied');
  });
});
