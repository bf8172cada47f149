// (IA)^3: the fused op's gradients (finite differences, f64), one training step on llama-gqa against
// PyTorch (tools/fixtures/peft_methods.py), PEFT's file layout, merging, and a tiny model learning.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadModelFolder } from '../src/models/load.js';
import { Linear } from '../src/nn/layers.js';
import { AdamW } from '../src/optim/adamw.js';
import { applyIa3, ia3Key, ia3Linear, loadIa3Adapter, mergeIa3 } from '../src/peft/ia3.js';
import { backward, noGrad, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { expectClose, gradCheck, randTensor } from './helpers.js';

const MODEL = 'test/fixtures/models/llama-gqa';
const meta = JSON.parse(readFileSync('test/fixtures/peft/meta.json', 'utf8')).ia3;
const fx = readSafetensors('test/fixtures/peft/ia3.safetensors', { copy: true }).tensors;

function fixtureBatch() {
  const [B, T] = fx.get('input_ids')!.shape as [number, number];
  const ids = Int32Array.from(Array.from(fx.get('input_ids')!.data as BigInt64Array, Number));
  const labels = Int32Array.from(Array.from(fx.get('labels')!.data as BigInt64Array, Number));
  return { batch: { inputIds: ids, positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T), segIds: null, B, T }, labels };
}

describe('ia3Linear op', () => {
  for (const feedforward of [false, true]) {
    it(`${feedforward ? 'feedforward (input scaled)' : 'output scaled'}: gradients of x, l and bias match finite differences`, () => {
      const rng = new Rng(3);
      const W = randTensor(rng, [5, 7]);
      const x = randTensor(rng, [2, 3, 7]);
      const l = randTensor(rng, feedforward ? [1, 7] : [5, 1]);
      const b = randTensor(rng, [5]);
      gradCheck(([xx, ll, bb]) => ia3Linear(xx!, new Linear(W, bb!), ll!, feedforward), [x, l, b]);
    });
  }

  it('computes (x W^T + b) * l and (x * l) W^T + b', () => {
    const W = new Linear(randTensor(new Rng(1), [2, 3]), randTensor(new Rng(2), [2]));
    const x = randTensor(new Rng(4), [1, 3]);
    const lo = randTensor(new Rng(5), [2, 1]);
    const li = randTensor(new Rng(6), [1, 3]);
    const w = W.weight.f, bb = W.bias!.f, X = x.f;
    const yo = noGrad(() => ia3Linear(x, W, lo, false)).f;
    const yi = noGrad(() => ia3Linear(x, W, li, true)).f;
    for (let j = 0; j < 2; j++) {
      let z = bb[j]!, zi = bb[j]!;
      for (let k = 0; k < 3; k++) {
        z += X[k]! * w[j * 3 + k]!;
        zi += X[k]! * li.f[k]! * w[j * 3 + k]!;
      }
      expect(yo[j]).toBeCloseTo(z * lo.f[j]!, 12);
      expect(yi[j]).toBeCloseTo(zi, 12);
    }
  });
});

describe('(IA)^3 on llama-gqa against PyTorch', () => {
  function setup() {
    const { model } = loadModelFolder(MODEL);
    const handle = applyIa3(model, {}, new Rng(0));
    for (const [name, p] of handle.trainable) p.f.set(fx.get(ia3Key(name))!.data as Float32Array);
    return { model, handle, ...fixtureBatch() };
  }

  it('targets k_proj, v_proj (l [out,1]) and down_proj (feedforward, l [1,in]) with PEFT key names; starts at ones', () => {
    const { model } = loadModelFolder(MODEL);
    const handle = applyIa3(model, {}, new Rng(0));
    const names = handle.trainable.map(([n]) => ia3Key(n)).sort();
    const expected = [...fx.keys()].filter((k) => k.startsWith('base_model.model.')).sort();
    expect(names).toEqual(expected);
    for (const [name, p] of handle.trainable) {
      expect(p.shape, name).toEqual(fx.get(ia3Key(name))!.shape);
      expect(Array.from(p.f).every((v) => v === 1)).toBe(true);
    }
    expect(handle.trainable.find(([n]) => n.endsWith('down_proj.ia3_l'))![1].shape).toEqual([1, 96]);
    expect(handle.trainable.find(([n]) => n.endsWith('k_proj.ia3_l'))![1].shape).toEqual([32, 1]);
  });

  it('one step: loss and the gradient of every ia3_l within 1e-5', () => {
    const { model, handle, batch, labels } = setup();
    model.train(true);
    const loss = scope(() => {
      const l = model.loss(model.forwardHidden(batch), labels, batch);
      backward(l);
      return l.item();
    });
    expect(Math.abs(loss - meta.loss) / meta.loss).toBeLessThan(1e-5);
    for (const [name, p] of handle.trainable) {
      const g = fx.get(`grad.${ia3Key(name)}`)!.data as Float32Array;
      const scale = Math.max(...Array.from(g, Math.abs));
      const err = Math.max(...Array.from(p.grad!.f, (v, i) => Math.abs(v - g[i]!))) / scale;
      expect(err, `grad ${name}`).toBeLessThan(1e-5);
    }
  });

  it('save -> load round trip: PEFT keys, shapes and IA3 config fields; same logits; merge equals the adapter', () => {
    const { model, handle, batch } = setup();
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-ia3-'));
    handle.save(dir, 'test/llama-gqa');
    const saved = readSafetensors(join(dir, 'adapter_model.safetensors')).tensors;
    const expectedKeys = [...fx.keys()].filter((k) => k.startsWith('base_model.model.')).sort();
    expect([...saved.keys()].sort()).toEqual(expectedKeys);
    for (const k of expectedKeys) expect(saved.get(k)!.shape).toEqual(fx.get(k)!.shape);
    const text = readFileSync(join(dir, 'adapter_config.json'), 'utf8');
    expect(text.endsWith('}')).toBe(true);
    const cfg = JSON.parse(text);
    expect(Object.keys(cfg)).toEqual([
      'auto_mapping', 'base_model_name_or_path', 'exclude_modules', 'fan_in_fan_out', 'feedforward_modules', 'inference_mode',
      'init_ia3_weights', 'modules_to_save', 'peft_type', 'peft_version', 'revision', 'target_modules', 'task_type',
    ]);
    expect(cfg).toMatchObject({ peft_type: 'IA3', task_type: 'CAUSAL_LM', inference_mode: true, init_ia3_weights: true, fan_in_fan_out: false, base_model_name_or_path: 'test/llama-gqa' });
    expect([...cfg.target_modules].sort()).toEqual([...meta.target_modules].sort());
    expect(cfg.feedforward_modules).toEqual(meta.feedforward_modules);

    const logitsOf = (m: typeof model) => noGrad(() => scope(() => Float32Array.from(m.logits(m.forwardHidden(batch)).f)));
    const adapterLogits = logitsOf(model);
    expectClose(adapterLogits, fx.get('adapter_logits')!.data as Float32Array, 1e-5, 'adapter vs PyTorch');
    const { model: fresh } = loadModelFolder(MODEL);
    loadIa3Adapter(dir, fresh);
    expectClose(logitsOf(fresh), adapterLogits, 0, 'reloaded');
    mergeIa3(fresh);
    expect(fresh.namedParameters().some(([n]) => n.includes('ia3_l'))).toBe(false);
    expectClose(logitsOf(fresh), fx.get('merged_logits')!.data as Float32Array, 1e-5, 'merged vs PyTorch merged');
  });

  it('rejects an adapter whose vectors have the wrong orientation', () => {
    const { handle } = setup();
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-ia3-bad-'));
    handle.save(dir, null);
    const { model: other } = loadModelFolder(MODEL);
    // Feedforward on k_proj too: its vector becomes [1, 64] where the file holds [32, 1].
    const h2 = applyIa3(other, { target_modules: ['k_proj', 'v_proj', 'down_proj'], feedforward_modules: ['k_proj', 'down_proj'] }, new Rng(0));
    expect(() => h2.load(dir)).toThrow(/shape \[32,1\].*expects \[1,64\]/);
  });

  it('a tiny model learns: loss falls under AdamW on the (IA)^3 vectors alone', () => {
    const { model } = loadModelFolder(MODEL);
    const handle = applyIa3(model, {}, new Rng(0));
    const { batch, labels } = fixtureBatch();
    const opt = new AdamW([{ params: handle.trainable.map(([, p]) => p), weightDecay: 0 }], { lr: 0.05 });
    model.train(true);
    const losses: number[] = [];
    for (let s = 0; s < 15; s++) {
      losses.push(scope(() => {
        const l = model.loss(model.forwardHidden(batch), labels, batch);
        backward(l);
        return l.item();
      }));
      opt.step();
      opt.zeroGrad();
    }
    expect(losses[losses.length - 1]!).toBeLessThan(losses[0]! - 0.3);
  });
});
