// Prefix tuning: the prefix attention op (finite differences, f64, GQA and packed rows), one training step on
// llama-gqa against PyTorch with and without prefix_projection (tools/fixtures/peft_methods.py), PEFT's file
// layout (prompt_embeddings [P, L*2*Hkv*D], GQA token_dim), and a tiny model learning.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadModelFolder } from '../src/models/load.js';
import { AdamW } from '../src/optim/adamw.js';
import { applyPrefixTuning, loadPrefixTuningAdapter, prefixAttention, tanh } from '../src/peft/prefix-tuning.js';
import { backward, noGrad, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
import { expectClose, gradCheck, randTensor } from './helpers.js';

const MODEL = 'test/fixtures/models/llama-gqa';
const metaAll = JSON.parse(readFileSync('test/fixtures/peft/meta.json', 'utf8'));

function fixture(name: string) {
  const fx = readSafetensors(`test/fixtures/peft/${name}.safetensors`, { copy: true }).tensors;
  const [B, T] = fx.get('input_ids')!.shape as [number, number];
  const ids = Int32Array.from(Array.from(fx.get('input_ids')!.data as BigInt64Array, Number));
  const labels = Int32Array.from(Array.from(fx.get('labels')!.data as BigInt64Array, Number));
  return { fx, batch: { inputIds: ids, positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T), segIds: null, B, T }, labels };
}

/** Reference: softmax over [prefix ; allowed sequence keys] for every query, plain loops. */
function naivePrefixAttention(q: Tensor, k: Tensor, v: Tensor, prefix: Tensor, layer: number, B: number, T: number, H: number, Hkv: number, D: number, seg: Int32Array | null): Float64Array {
  const out = new Float64Array(q.size);
  const W = prefix.dim(1), P = prefix.dim(0);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / (H / Hkv));
        const keys: Float64Array[] = [], vals: Float64Array[] = [];
        for (let j = 0; j < P; j++) {
          keys.push(Float64Array.from({ length: D }, (_, d) => prefix.f[j * W + (2 * layer * Hkv + g) * D + d]!));
          vals.push(Float64Array.from({ length: D }, (_, d) => prefix.f[j * W + ((2 * layer + 1) * Hkv + g) * D + d]!));
        }
        for (let s = 0; s <= t; s++) {
          if (seg && seg[b * T + s] !== seg[b * T + t]) continue;
          keys.push(Float64Array.from({ length: D }, (_, d) => k.f[((b * T + s) * Hkv + g) * D + d]!));
          vals.push(Float64Array.from({ length: D }, (_, d) => v.f[((b * T + s) * Hkv + g) * D + d]!));
        }
        const qo = ((b * T + t) * H + h) * D;
        const sc = keys.map((kk) => kk.reduce((a, x, d) => a + x * q.f[qo + d]!, 0) / Math.sqrt(D));
        const m = Math.max(...sc);
        const e = sc.map((x) => Math.exp(x - m));
        const z = e.reduce((a, x) => a + x, 0);
        for (let d = 0; d < D; d++) out[qo + d] = e.reduce((a, x, i) => a + x * vals[i]![d]!, 0) / z;
      }
  return out;
}

describe('prefixAttention op', () => {
  const [B, T, H, Hkv, D, P, L] = [2, 5, 4, 2, 3, 3, 2];
  const seg = Int32Array.of(0, 0, 0, 1, 1, 0, 0, 0, 0, 0);
  for (const segIds of [null, seg]) {
    it(`matches a plain softmax over [prefix ; sequence] and finite differences (GQA${segIds ? ', packed rows' : ''})`, () => {
      const rng = new Rng(11);
      const q = randTensor(rng, [B, T, H, D]);
      const k = randTensor(rng, [B, T, Hkv, D]);
      const v = randTensor(rng, [B, T, Hkv, D]);
      const prefix = randTensor(rng, [P, L * 2 * Hkv * D]);
      const shape = { B, T, H, Hkv, D, segIds };
      const out = noGrad(() => prefixAttention(q, k, v, prefix, 1, shape));
      expectClose(out.f, naivePrefixAttention(q, k, v, prefix, 1, B, T, H, Hkv, D, segIds), 1e-12, 'forward');
      gradCheck(([qq, kk, vv, pp]) => prefixAttention(qq!, kk!, vv!, pp!, 1, shape), [q, k, v, prefix]);
    });
  }

  it('f32 (the kernels in use) agrees with the f64 reference', () => {
    const rng = new Rng(12);
    const mk = (shape: number[]) => Tensor.from(Float32Array.from(randTensor(rng, shape).f), shape, 'f32');
    const q = mk([B, T, H, D]), k = mk([B, T, Hkv, D]), v = mk([B, T, Hkv, D]), prefix = mk([P, L * 2 * Hkv * D]);
    const out = noGrad(() => prefixAttention(q, k, v, prefix, 0, { B, T, H, Hkv, D, segIds: seg }));
    expectClose(out.f, naivePrefixAttention(q, k, v, prefix, 0, B, T, H, Hkv, D, seg), 1e-5, 'f32 forward');
  });

  it('tanh: gradient matches finite differences', () => {
    gradCheck(([x]) => tanh(x!), [randTensor(new Rng(4), [3, 4])]);
  });
});

describe('prefix tuning on llama-gqa against PyTorch', () => {
  for (const variant of ['prefix_tuning', 'prefix_projection']) {
    it(`${variant}: one step — loss and gradients of every trainable tensor within 1e-5, logits`, () => {
      const meta = metaAll[variant];
      const { fx, batch, labels } = fixture(variant);
      const { model } = loadModelFolder(MODEL);
      const handle = applyPrefixTuning(model, { num_virtual_tokens: meta.num_virtual_tokens, prefix_projection: meta.prefix_projection, encoder_hidden_size: meta.encoder_hidden_size }, { rng: new Rng(0) });
      expect(handle.trainable.map(([n]) => n).sort()).toEqual([...fx.keys()].filter((k) => !k.includes('.') || /^(embedding|transform)\./.test(k)).filter((k) => k !== 'input_ids' && k !== 'labels' && k !== 'logits').sort());
      for (const [name, p] of handle.trainable) {
        expect(p.shape, name).toEqual(fx.get(name)!.shape);
        p.f.set(fx.get(name)!.data as Float32Array);
      }
      model.train(true);
      const loss = scope(() => {
        const l = model.loss(model.forwardHidden(batch), labels, batch);
        backward(l);
        return l.item();
      });
      expect(Math.abs(loss - meta.loss) / meta.loss).toBeLessThan(1e-5);
      for (const [name, p] of handle.trainable) {
        const g = fx.get(`grad.${name}`)!.data as Float32Array;
        const scale = Math.max(...Array.from(g, Math.abs));
        const err = Math.max(...Array.from(p.grad!.f, (v, i) => Math.abs(v - g[i]!))) / scale;
        expect(err, `grad ${name}`).toBeLessThan(1e-5);
      }
      const logits = noGrad(() => scope(() => Float32Array.from(model.logits(model.forwardHidden(batch)).f)));
      expectClose(logits, fx.get('logits')!.data as Float32Array, 2e-5, 'logits');

      // Saved: the single key prompt_embeddings [P, L*2*Hkv*D] (the projection's output), PREFIX_TUNING config.
      const dir = mkdtempSync(join(tmpdir(), 'ajuste-prefix-'));
      handle.save(dir, 'test/llama-gqa');
      const saved = readSafetensors(join(dir, 'adapter_model.safetensors')).tensors;
      expect([...saved.keys()]).toEqual(['prompt_embeddings']);
      expect(saved.get('prompt_embeddings')!.shape).toEqual([4, 2 * 2 * 32]);
      expectClose(saved.get('prompt_embeddings')!.data as Float32Array, fx.get('saved.prompt_embeddings')!.data as Float32Array, 1e-6, 'saved prefix');
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      expect(Object.keys(cfg)).toEqual([
        'auto_mapping', 'base_model_name_or_path', 'encoder_hidden_size', 'inference_mode', 'init_weights', 'modules_to_save',
        'num_attention_heads', 'num_layers', 'num_transformer_submodules', 'num_virtual_tokens', 'peft_type', 'peft_version',
        'prefix_projection', 'revision', 'task_type', 'token_dim',
      ]);
      // GQA: token_dim = head_dim * num_key_value_heads = 16 * 2, num_attention_heads = num_key_value_heads.
      expect(cfg).toMatchObject({ peft_type: 'PREFIX_TUNING', token_dim: 32, num_attention_heads: 2, num_layers: 2, num_virtual_tokens: 4, prefix_projection: meta.prefix_projection });
      const { model: fresh } = loadModelFolder(MODEL);
      loadPrefixTuningAdapter(dir, fresh);
      const reloaded = noGrad(() => scope(() => Float32Array.from(fresh.logits(fresh.forwardHidden(batch)).f)));
      expectClose(reloaded, logits, 1e-6, 'reloaded');
      if (meta.prefix_projection) expect(() => handle.load(dir)).toThrow(/cannot resume/);
    });
  }

  it('gradient checkpointing gives the same gradients', () => {
    const { fx, batch, labels } = fixture('prefix_projection');
    const meta = metaAll.prefix_projection;
    const { model } = loadModelFolder(MODEL);
    const handle = applyPrefixTuning(model, { num_virtual_tokens: 4, prefix_projection: true, encoder_hidden_size: meta.encoder_hidden_size }, { rng: new Rng(0) });
    for (const [name, p] of handle.trainable) p.f.set(fx.get(name)!.data as Float32Array);
    scope(() => backward(model.loss(model.forwardHidden(batch, { gradientCheckpointing: true }), labels, batch)));
    for (const [name, p] of handle.trainable) expectClose(p.grad!.f, fx.get(`grad.${name}`)!.data as Float32Array, 1e-5, `grad ${name}`);
  });

  it('a tiny model learns: loss falls when only the prefix trains', () => {
    const { batch, labels } = fixture('prefix_tuning');
    const { model } = loadModelFolder(MODEL);
    const handle = applyPrefixTuning(model, { num_virtual_tokens: 4 }, { rng: new Rng(3) });
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

describe('generation with a KV cache', () => {
  for (const folder of ['llama-gqa', 'gpt2']) {
    it(`${folder}: cached decoding (prefill, then token by token) equals the full forward`, () => {
      const { model } = loadModelFolder(`test/fixtures/models/${folder}`);
      applyPrefixTuning(model, { num_virtual_tokens: 3, prefix_projection: folder === 'gpt2' }, { rng: new Rng(9) });
      const ids = Int32Array.of(1, 17, 42, 9, 100, 3);
      const T = ids.length;
      const full = noGrad(() => scope(() => Float32Array.from(model.logits(model.forwardHidden({ inputIds: ids, positionIds: Int32Array.from({ length: T }, (_, i) => i), segIds: null, B: 1, T })).f)));
      const cache = model.newCache(T);
      const V = model.config.vocabSize;
      const first = noGrad(() => scope(() => Float32Array.from(model.logits(model.forwardCached(ids.subarray(0, 4), cache)).f)));
      expectClose(first, full.subarray(0, 4 * V), 1e-5, 'prefill');
      for (let t = 4; t < T; t++) {
        const step = noGrad(() => scope(() => Float32Array.from(model.logits(model.forwardCached(ids.subarray(t, t + 1), cache)).f)));
        expectClose(step, full.subarray(t * V, (t + 1) * V), 1e-5, `token ${t}`);
      }
    });
  }
});
