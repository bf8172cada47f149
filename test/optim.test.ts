import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AdamW, clipGradNorm, decayGroups, Sgd } from '../src/optim/adamw.js';
import { learningRate, warmupSteps } from '../src/optim/schedule.js';
import { parameter } from '../src/tensor/autograd.js';
import { Tensor } from '../src/tensor/tensor.js';
import { expectClose } from './helpers.js';

const fx = JSON.parse(readFileSync('test/fixtures/optim/adamw.json', 'utf8'));

describe('optimizers match torch.optim (fixture from tools/fixtures/adamw.py)', () => {
  for (const c of fx.cases) {
    it(c.name, () => {
      const p = parameter(Tensor.from(Float32Array.from(fx.p0), [7]), 'p');
      p.grad = Tensor.zeros([7]);
      const groups = [{ params: [p], weightDecay: c.weight_decay }];
      const opt = c.name.startsWith('sgd') ? new Sgd(groups, { lr: c.lr, momentum: c.momentum }) : new AdamW(groups, { lr: c.lr });
      for (const g of fx.grads) {
        p.grad.f.set(g);
        opt.step();
      }
      expectClose(p.f, c.final, 1e-6, c.name);
    });
  }
});

describe('schedules and clipping', () => {
  it('linear and cosine schedules with warmup follow transformers', () => {
    expect(learningRate('linear', 1, 0, 10, 2)).toBe(0);
    expect(learningRate('linear', 1, 1, 10, 2)).toBe(0.5);
    expect(learningRate('linear', 1, 2, 10, 2)).toBe(1);
    expect(learningRate('linear', 1, 6, 10, 2)).toBe(0.5);
    expect(learningRate('cosine', 1, 6, 10, 2)).toBeCloseTo(0.5, 12);
    expect(learningRate('cosine', 1, 10, 10, 2)).toBeCloseTo(0, 12);
    expect(learningRate('constant_with_warmup', 2, 1, 10, 4)).toBe(0.5);
    expect(learningRate('constant', 2, 0, 10, 4)).toBe(2);
    expect(warmupSteps(100, 0, 0.03)).toBe(3);
    expect(warmupSteps(100, 7, 0.03)).toBe(7);
  });
  it('clipGradNorm scales to the max norm and reports the norm before clipping', () => {
    const p = parameter(Tensor.zeros([2]), 'p');
    p.grad = Tensor.from([3, 4], [2]);
    expect(clipGradNorm([p], 1)).toBeCloseTo(5, 12);
    expectClose(p.grad.f, [0.6, 0.8], 1e-6, 'clipped');
  });
  it('decayGroups excludes biases and norms from weight decay', () => {
    const t = () => Tensor.zeros([1]);
    const g = decayGroups([['a.q_proj.lora_A.weight', t()], ['a.bias', t()], ['model.norm.weight', t()], ['h.0.ln_1.weight', t()]], 0.1);
    expect(g[0]!.params.length).toBe(1);
    expect(g[1]!.params.length).toBe(3);
  });
});
