// 8-bit AdamW (bitsandbytes blockwise states) and the paged AdamW variants: state quantization as the spec
// says, the update formula, paging equal to the in-memory optimizers, memory budget, resume, and training.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AdamW, type Optimizer } from '../src/optim/adamw.js';
import { AdamW8bit, OPTIM_BLOCKSIZE } from '../src/optim/adamw8bit.js';
import { PagedAdamW } from '../src/optim/paged.js';
import { dequantizeBlockwise8, quantizeBlockwise8 } from '../src/quant/blockwise8.js';
import { dynamicMap } from '../src/quant/dynamic-map.js';
import { parameter } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
import { loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { runSft } from '../src/train/sft.js';
import { baseConfig, makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';

const SIGNED = dynamicMap(true);
const UNSIGNED = dynamicMap(false);

/** Parameters of the given sizes with deterministic values and per-block-scaled gradients. */
function makeParams(sizes: number[], seed: number): Tensor[] {
  const rng = new Rng(seed);
  return sizes.map((n, k) => {
    const p = parameter(Tensor.from(Float32Array.from({ length: n }, () => rng.normal()), [n]), `p${k}`);
    p.grad = Tensor.zeros([n]).keep();
    return p;
  });
}

function setGrads(params: Tensor[], rng: Rng): void {
  for (const p of params) {
    const g = p.grad!.f;
    for (let i = 0; i < g.length; i++) g[i] = rng.normal() * 10 ** ((Math.floor(i / OPTIM_BLOCKSIZE) % 5) - 3);
  }
}

function snapshot(params: Tensor[]): Float32Array[] {
  return params.map((p) => Float32Array.from(p.f));
}

function run(opt: Optimizer, params: Tensor[], steps: number, seed: number): void {
  const rng = new Rng(seed);
  for (let s = 0; s < steps; s++) {
    setGrads(params, rng);
    opt.step();
  }
}

const bytesEqual = (a: ArrayBufferView, b: ArrayBufferView) =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe('adamw_8bit', () => {
  const [lr, b1, b2, eps, wd] = [1e-2, 0.9, 0.999, 1e-8, 0.1];

  it('step 1: states are the blockwise 8-bit codes of m and v (signed / unsigned dynamic maps, 256-value blocks), the update uses the f32 moments', () => {
    const n = 256 * 17 + 77; // a partial last block
    const [p] = makeParams([n], 1);
    const p0 = Float32Array.from(p!.f);
    setGrads([p!], new Rng(5));
    const g = Float32Array.from(p!.grad!.f);
    const opt = new AdamW8bit([{ params: [p!], weightDecay: wd }], { lr, betas: [b1, b2], eps });
    opt.step();
    const sd = opt.stateDict().tensors;
    const m = Float32Array.from(g, (x) => (1 - b1) * x);
    const v = Float32Array.from(g, (x) => (1 - b2) * x * x);
    const qm = quantizeBlockwise8(m, SIGNED, 256);
    const qv = quantizeBlockwise8(v, UNSIGNED, 256);
    // sign rule: a code whose value has the other sign moves one step toward m's sign
    for (let i = 0; i < n; i++) {
      const q = SIGNED[qm.codes[i]!]!;
      if (m[i]! > 0 && q < 0) qm.codes[i]! += 1;
      else if (m[i]! < 0 && q >= 0) qm.codes[i]! -= 1;
    }
    expect(bytesEqual(sd.get('p0.state1')!, qm.codes)).toBe(true);
    expect(bytesEqual(sd.get('p0.state2')!, qv.codes)).toBe(true);
    expect(bytesEqual(sd.get('p0.absmax1')!, qm.absmax)).toBe(true);
    expect(bytesEqual(sd.get('p0.absmax2')!, qv.absmax)).toBe(true);
    expect(sd.get('p0.absmax1')!.length).toBe(18);
    expect(bytesEqual(sd.get('qmap1')!, SIGNED) && bytesEqual(sd.get('qmap2')!, UNSIGNED)).toBe(true);
    // The decoded moments are within half a map gap of the true ones (relative to the block absmax).
    const dm = dequantizeBlockwise8({ codes: sd.get('p0.state1') as Uint8Array, absmax: sd.get('p0.absmax1') as Float32Array, blocksize: 256, numel: n, code: SIGNED });
    const dv = dequantizeBlockwise8({ codes: sd.get('p0.state2') as Uint8Array, absmax: sd.get('p0.absmax2') as Float32Array, blocksize: 256, numel: n, code: UNSIGNED });
    for (let i = 0; i < n; i++) {
      const b = Math.floor(i / 256);
      expect(Math.abs(dm[i]! - m[i]!)).toBeLessThanOrEqual(0.0071 * qm.absmax[b]!);
      expect(Math.abs(dv[i]! - v[i]!)).toBeLessThanOrEqual(0.0036 * qv.absmax[b]!);
    }
    // p = (p0 - lr·m̂/(√v̂ + eps)) · (1 - lr·wd), with the unquantized step-1 moments
    for (let i = 0; i < n; i++) {
      const expected = (p0[i]! - (lr * (m[i]! / (1 - b1))) / (Math.sqrt(v[i]! / (1 - b2)) + eps)) * (1 - lr * wd);
      expect(Math.abs(p!.f[i]! - expected)).toBeLessThan(1e-6 * Math.max(1, Math.abs(expected)));
    }
    expect(opt.stateBytes()).toBe(2 * n + 8 * 18);
  });

  it('step 2 starts from the dequantized 8-bit moments; parameters under 4096 values keep f32 states', () => {
    const n = 256 * 20;
    const [p, small] = makeParams([n, 1000], 2);
    const opt = new AdamW8bit([{ params: [p!, small!], weightDecay: 0 }], { lr, betas: [b1, b2], eps });
    const rng = new Rng(9);
    setGrads([p!, small!], rng);
    opt.step();
    const sd1 = opt.stateDict().tensors;
    const m1 = dequantizeBlockwise8({ codes: Uint8Array.from(sd1.get('p0.state1')!), absmax: Float32Array.from(sd1.get('p0.absmax1') as Float32Array), blocksize: 256, numel: n, code: SIGNED });
    const v1 = dequantizeBlockwise8({ codes: Uint8Array.from(sd1.get('p0.state2')!), absmax: Float32Array.from(sd1.get('p0.absmax2') as Float32Array), blocksize: 256, numel: n, code: UNSIGNED });
    const sm1 = Float32Array.from(sd1.get('p1.state1') as Float32Array);
    const sv1 = Float32Array.from(sd1.get('p1.state2') as Float32Array);
    expect(sd1.get('p1.state1')).toBeInstanceOf(Float32Array);
    expect(sd1.has('p1.absmax1')).toBe(false);
    const before = snapshot([p!, small!]);
    setGrads([p!, small!], rng);
    const g = snapshot([p!, small!].map((t) => t.grad!));
    opt.step();
    const c1 = 1 - b1 ** 2, c2 = 1 - b2 ** 2;
    const check = (w0: Float32Array, w: ArrayLike<number>, gg: Float32Array, mm: Float32Array, vv: Float32Array) => {
      for (let i = 0; i < w0.length; i++) {
        const mi = Math.fround(b1 * mm[i]! + (1 - b1) * gg[i]!);
        const vi = Math.fround(b2 * vv[i]! + (1 - b2) * gg[i]! * gg[i]!);
        const expected = w0[i]! - (lr * (mi / c1)) / (Math.sqrt(vi / c2) + eps);
        expect(Math.abs(w[i]! - expected)).toBeLessThan(2e-6 * Math.max(1, Math.abs(expected)));
      }
    };
    check(before[0]!, p!.f, g[0]!, m1, v1);
    check(before[1]!, small!.f, g[1]!, sm1, sv1);
  });

  it('tracks fp32 AdamW closely on a least-squares problem', () => {
    // minimise |X w - y|^2 / N from w = 0 with both optimizers
    const [N, D] = [64, 4096];
    const rng = new Rng(4);
    const X = Float32Array.from({ length: N * D }, () => rng.normal() / Math.sqrt(D));
    const wTrue = Float32Array.from({ length: D }, () => rng.normal());
    const y = new Float32Array(N);
    for (let r = 0; r < N; r++) for (let c = 0; c < D; c++) y[r]! += X[r * D + c]! * wTrue[c]!;
    const lossAndGrad = (w: Tensor): number => {
      const g = w.grad!.f;
      g.fill(0);
      let loss = 0;
      for (let r = 0; r < N; r++) {
        let e = -y[r]!;
        for (let c = 0; c < D; c++) e += X[r * D + c]! * w.f[c]!;
        loss += (e * e) / N;
        for (let c = 0; c < D; c++) g[c]! += (2 * e * X[r * D + c]!) / N;
      }
      return loss;
    };
    const train = (make: (p: Tensor) => Optimizer): number[] => {
      const w = parameter(Tensor.zeros([D]), 'w');
      w.grad = Tensor.zeros([D]).keep();
      const opt = make(w);
      const losses: number[] = [];
      for (let s = 0; s < 60; s++) {
        losses.push(lossAndGrad(w));
        opt.step();
      }
      losses.push(lossAndGrad(w));
      return losses;
    };
    const ref = train((w) => new AdamW([{ params: [w], weightDecay: 0 }], { lr: 0.02 }));
    const q8 = train((w) => new AdamW8bit([{ params: [w], weightDecay: 0 }], { lr: 0.02 }));
    expect(ref[60]!).toBeLessThan(ref[0]! * 0.2);
    expect(Math.abs(q8[60]! - ref[60]!) / ref[60]!).toBeLessThan(0.05);
    expect(q8[60]).not.toBe(ref[60]);
  });
});

describe('paged AdamW', () => {
  const sizes = [5000, 256 * 9 + 13, 700, 12000, 3];
  const dir = mkdtempSync(join(tmpdir(), 'ajuste-paged-'));

  it('paged_adamw_32bit equals adamw_torch bit for bit, with pages split inside parameters, and stays under its memory budget', () => {
    const a = makeParams(sizes, 7), b = makeParams(sizes, 7);
    const ref = new AdamW([{ params: a.slice(0, 3), weightDecay: 0.1 }, { params: a.slice(3), weightDecay: 0 }], { lr: 3e-3 });
    const budget = 20_000; // < 12000 values x 8 bytes: that parameter spans several pages
    const paged = new PagedAdamW([{ params: b.slice(0, 3), weightDecay: 0.1 }, { params: b.slice(3), weightDecay: 0 }], { lr: 3e-3, bits: 32, memoryBudget: budget, dir });
    run(ref, a, 5, 11);
    run(paged, b, 5, 11);
    for (let k = 0; k < sizes.length; k++) expect(bytesEqual(a[k]!.f, b[k]!.f), `param ${k}`).toBe(true);
    expect(paged.residentBytes()).toBeLessThanOrEqual(budget);
    expect(paged.stateBytes()).toBeLessThanOrEqual(budget);
    expect(paged.pagedBytes()).toBe(8 * sizes.reduce((s, n) => s + n, 0));
    expect(paged.pageIns).toBeGreaterThanOrEqual(5 * Math.ceil(paged.pagedBytes() / budget));
    // Same checkpoint keys as adamw_torch.
    const sdA = ref.stateDict().tensors, sdB = paged.stateDict().tensors;
    expect([...sdB.keys()].sort()).toEqual([...sdA.keys()].sort());
    for (const [k, v] of sdA) expect(bytesEqual(v, sdB.get(k)!), k).toBe(true);
    paged.close();
    expect(() => paged.step()).toThrow(/after close/);
  });

  it('paged_adamw_8bit equals adamw_8bit bit for bit; the default budget is one parameter at a time; too small a budget is refused', () => {
    const a = makeParams(sizes, 8), b = makeParams(sizes, 8), c = makeParams(sizes, 8);
    const ref = new AdamW8bit([{ params: a, weightDecay: 0.01 }], { lr: 1e-3 });
    const paged = new PagedAdamW([{ params: b, weightDecay: 0.01 }], { lr: 1e-3, bits: 8, memoryBudget: 4000, dir });
    const pagedDefault = new PagedAdamW([{ params: c, weightDecay: 0.01 }], { lr: 1e-3, bits: 8, dir });
    run(ref, a, 4, 12);
    run(paged, b, 4, 12);
    run(pagedDefault, c, 4, 12);
    for (let k = 0; k < sizes.length; k++) {
      expect(bytesEqual(a[k]!.f, b[k]!.f), `param ${k}`).toBe(true);
      expect(bytesEqual(a[k]!.f, c[k]!.f), `param ${k} (default budget)`).toBe(true);
    }
    expect(paged.residentBytes()).toBeLessThanOrEqual(4000);
    // default: the biggest parameter's 8-bit states (12000 values: 2 bytes each + 2 absmax per 256 block)
    expect(pagedDefault.residentBytes()).toBe(2 * 12000 + 8 * Math.ceil(12000 / 256));
    const sdA = ref.stateDict().tensors, sdB = paged.stateDict().tensors;
    expect([...sdB.keys()].sort()).toEqual([...sdA.keys()].sort());
    for (const [k, v] of sdA) expect(bytesEqual(v, sdB.get(k)!), k).toBe(true);
    expect(() => new PagedAdamW([{ params: b, weightDecay: 0 }], { lr: 1e-3, bits: 8, memoryBudget: 100, dir })).toThrow(/too small/);
    for (const o of [paged, pagedDefault]) o.close();
  });

  for (const kind of ['adamw_8bit', 'paged_adamw_8bit', 'paged_adamw_32bit'] as const) {
    it(`${kind}: a checkpoint (optimizer.safetensors) restores the exact state (resume equality)`, () => {
      const make = (ps: Tensor[]): Optimizer & { close?: () => void } =>
        kind === 'adamw_8bit' ? new AdamW8bit([{ params: ps, weightDecay: 0.01 }], { lr: 2e-3 }) : new PagedAdamW([{ params: ps, weightDecay: 0.01 }], { lr: 2e-3, bits: kind === 'paged_adamw_8bit' ? 8 : 32, memoryBudget: 9000, dir });
      const a = makeParams(sizes, 3);
      const opt = make(a);
      run(opt, a, 3, 21);
      const out = mkdtempSync(join(tmpdir(), 'ajuste-optck-'));
      const io = { save: () => {}, load: () => {}, state: () => ({}), restore: () => {} };
      const ck = saveCheckpoint(out, 3, { optimizer: opt, io, dataPosition: { epoch: 0, offset: 0 } as never, logHistory: [], saveTotalLimit: null });
      const saved = snapshot(a);
      run(opt, a, 3, 22);
      const b = makeParams(sizes, 3);
      for (const [k, p] of b.entries()) p.f.set(saved[k]!);
      const restored = make(b);
      loadCheckpoint(ck, restored, io);
      run(restored, b, 3, 22);
      for (let k = 0; k < sizes.length; k++) expect(bytesEqual(a[k]!.f, b[k]!.f), `param ${k}`).toBe(true);
      opt.close?.();
      restored.close?.();
    });
  }
});

describe('training a tiny model with 8-bit and paged optimizers', () => {
  it('adamw_8bit and paged_adamw_8bit reach the final loss of adamw_torch within 2% (20 steps, lr 1e-3: loss 7.9 -> ~0.73)', async () => {
    // hidden 128, r 32: the LoRA A/B of q/o/gate/up/down have >= 4096 values, so they get 8-bit states.
    const modelDir = makeTinyModelDir({ hidden: 128 });
    const work = mkdtempSync(join(tmpdir(), 'ajuste-8bit-'));
    const data = writeFactsJsonl(work);
    const final: Record<string, number> = {};
    let first = 0;
    for (const optim of ['adamw_torch', 'adamw_8bit', 'paged_adamw_8bit']) {
      const rows: Record<string, number>[] = [];
      const r = await runSft(
        { ...baseConfig(modelDir, data, join(work, optim)), lora: { r: 32, lora_alpha: 32, target_modules: 'all-linear' }, optim, max_steps: 20, learning_rate: 1e-3, save_steps: 0, logging_steps: 1 },
        { onLog: (x) => rows.push(x) },
      );
      first = rows[0]!.loss!;
      final[optim] = r.finalLoss;
    }
    const ref = final.adamw_torch!;
    expect(ref).toBeLessThan(first / 4);
    for (const k of ['adamw_8bit', 'paged_adamw_8bit']) expect(Math.abs(final[k]! - ref) / ref, k).toBeLessThan(0.02);
    expect(final.adamw_8bit).not.toBe(ref); // the 8-bit states really were used
    expect(final.paged_adamw_8bit).toBe(final.adamw_8bit);
  });
});
