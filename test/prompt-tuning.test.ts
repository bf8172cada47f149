// Prompt tuning: the prepend/drop ops (finite differences, f64), one training step on llama-gqa against
// PyTorch (tools/fixtures/peft_methods.py), PEFT's file layout and config, inits, and a tiny model learning.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadModelFolder } from '../src/models/load.js';
import { AdamW } from '../src/optim/adamw.js';
import { applyPromptTuning, batchWithVirtualTokens, dropLeading, loadPromptTuningAdapter, prependPrompt, textInitIds } from '../src/peft/prompt-tuning.js';
import { backward, noGrad, scope } from '../src/tensor/autograd.js';
import { mul } from '../src/tensor/ops.js';
import { Rng } from '../src/tensor/rng.js';
import { expectClose, gradCheck, randTensor } from './helpers.js';

const MODEL = 'test/fixtures/models/llama-gqa';
const meta = JSON.parse(readFileSync('test/fixtures/peft/meta.json', 'utf8')).prompt_tuning;
const fx = readSafetensors('test/fixtures/peft/prompt_tuning.safetensors', { copy: true }).tensors;

function fixtureBatch() {
  const [B, T] = fx.get('input_ids')!.shape as [number, number];
  const ids = Int32Array.from(Array.from(fx.get('input_ids')!.data as BigInt64Array, Number));
  const labels = Int32Array.from(Array.from(fx.get('labels')!.data as BigInt64Array, Number));
  return { batch: { inputIds: ids, positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T), segIds: null, B, T }, labels };
}

describe('prompt ops', () => {
  it('prependPrompt and dropLeading: gradients match finite differences', () => {
    const rng = new Rng(8);
    const p = randTensor(rng, [3, 4]);
    const h = randTensor(rng, [2, 5, 4]);
    const w = randTensor(rng, [2, 8, 4]);
    gradCheck(([pp, hh]) => prependPrompt(pp!, hh!), [p, h]);
    // Through both: drop(prepend(p, h) * w, 2) depends on p's last row and on h.
    gradCheck(([pp, hh]) => dropLeading(mul(prependPrompt(pp!, hh!), w), 2), [p, h]);
  });

  it('virtual tokens take positions 0..n-1, real tokens shift by n; pads keep their segment', () => {
    const b = batchWithVirtualTokens({ inputIds: Int32Array.of(7, 8, 9), positionIds: Int32Array.of(0, 1, 0), segIds: Int32Array.of(0, 0, 1), B: 1, T: 3 }, 2);
    expect(Array.from(b.positionIds)).toEqual([0, 1, 2, 3, 2]);
    expect(Array.from(b.segIds!)).toEqual([0, 0, 0, 0, 1]);
    expect(b.T).toBe(5);
  });

  it("TEXT init ids are cut or repeated as PEFT's PromptEmbedding does", () => {
    expect(textInitIds([5, 9, 7], 4)).toEqual([5, 9, 7, 5]);
    expect(textInitIds([5, 9, 7], 2)).toEqual([5, 9]);
    expect(textInitIds([5, 9, 7], 7)).toEqual([5, 9, 7, 5, 9, 7, 5]);
  });
});

describe('prompt tuning on llama-gqa against PyTorch', () => {
  function setup() {
    const { model } = loadModelFolder(MODEL);
    const handle = applyPromptTuning(model, { num_virtual_tokens: meta.num_virtual_tokens }, { rng: new Rng(0) });
    handle.trainable[0]![1].f.set(fx.get('prompt_embeddings')!.data as Float32Array);
    return { model, handle, ...fixtureBatch() };
  }

  it('one step: loss and the gradient of prompt_embeddings within 1e-5; logits of the real tokens', () => {
    const { model, handle, batch, labels } = setup();
    expect(model.parameters().some((p) => p.requiresGrad)).toBe(false); // the base is frozen; only the prompt trains
    model.train(true);
    const loss = scope(() => {
      const h = model.forwardHidden(batch);
      expect(h.shape).toEqual([batch.B, batch.T, 64]);
      const l = model.loss(h, labels, batch);
      backward(l);
      return l.item();
    });
    expect(Math.abs(loss - meta.loss) / meta.loss).toBeLessThan(1e-5);
    const [, p] = handle.trainable[0]!;
    const g = fx.get('grad.prompt_embeddings')!.data as Float32Array;
    const scale = Math.max(...Array.from(g, Math.abs));
    const err = Math.max(...Array.from(p.grad!.f, (v, i) => Math.abs(v - g[i]!))) / scale;
    expect(err).toBeLessThan(1e-5);
    const logits = noGrad(() => scope(() => Float32Array.from(model.logits(model.forwardHidden(batch)).f)));
    // f32 summation order (native kernels) vs PyTorch: up to ~1.2e-5 on this fixture.
    expectClose(logits, fx.get('logits')!.data as Float32Array, 2e-5, 'logits');
  });

  it('save -> load round trip: single key prompt_embeddings [n, hidden], PROMPT_TUNING config fields filled from the model', () => {
    const { model, handle, batch } = setup();
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-pt-'));
    handle.save(dir, 'test/llama-gqa');
    const saved = readSafetensors(join(dir, 'adapter_model.safetensors')).tensors;
    expect([...saved.keys()]).toEqual(['prompt_embeddings']);
    expect(saved.get('prompt_embeddings')!.shape).toEqual([4, 64]);
    expect(saved.get('prompt_embeddings')!.dtype).toBe('F32');
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    expect(Object.keys(cfg)).toEqual([
      'auto_mapping', 'base_model_name_or_path', 'inference_mode', 'modules_to_save', 'num_attention_heads', 'num_layers',
      'num_transformer_submodules', 'num_virtual_tokens', 'peft_type', 'peft_version', 'prompt_tuning_init', 'prompt_tuning_init_text',
      'revision', 'task_type', 'token_dim', 'tokenizer_kwargs', 'tokenizer_name_or_path',
    ]);
    expect(cfg).toMatchObject({ peft_type: 'PROMPT_TUNING', task_type: 'CAUSAL_LM', num_virtual_tokens: 4, token_dim: 64, num_layers: 2, num_attention_heads: 4, num_transformer_submodules: 1, prompt_tuning_init: 'RANDOM' });
    const logitsOf = (m: typeof model) => noGrad(() => scope(() => Float32Array.from(m.logits(m.forwardHidden(batch)).f)));
    const { model: fresh } = loadModelFolder(MODEL);
    loadPromptTuningAdapter(dir, fresh);
    expectClose(logitsOf(fresh), logitsOf(model), 0, 'reloaded');
    const { model: other } = loadModelFolder(MODEL);
    const h5 = applyPromptTuning(other, { num_virtual_tokens: 5 }, { rng: new Rng(1) });
    expect(() => h5.load(dir)).toThrow(/num_virtual_tokens is 4/);
  });

  it('TEXT init takes the embedding rows of the tokenized text (repeated); SAMPLE_VOCAB takes vocabulary rows', () => {
    const { model } = loadModelFolder(MODEL);
    const h = applyPromptTuning(model, { num_virtual_tokens: 4, prompt_tuning_init: 'TEXT', prompt_tuning_init_text: 'hi' }, { rng: new Rng(0), encode: () => meta.text_ids });
    expectClose(h.trainable[0]![1].f, fx.get('text_init')!.data as Float32Array, 0, 'TEXT init');
    const { model: m2 } = loadModelFolder(MODEL);
    const s = applyPromptTuning(m2, { num_virtual_tokens: 3, prompt_tuning_init: 'SAMPLE_VOCAB' }, { rng: new Rng(5) });
    const E = m2.namedParameters().find(([n]) => n === 'model.embed_tokens.weight')![1].f;
    const P = s.trainable[0]![1].f;
    for (let r = 0; r < 3; r++) {
      const row = P.subarray(r * 64, (r + 1) * 64);
      let found = false;
      for (let v = 0; v < 128 && !found; v++) found = row.every((x, i) => x === E[v * 64 + i]);
      expect(found, `row ${r} is a vocabulary row`).toBe(true);
    }
  });

  it('refuses packed rows (a second sequence in a row) but accepts trailing padding', () => {
    const { model } = setup();
    const pad = { inputIds: Int32Array.of(1, 5, 6, 0), positionIds: Int32Array.of(0, 1, 2, 0), segIds: Int32Array.of(0, 0, 0, 1), B: 1, T: 4 };
    expect(noGrad(() => scope(() => model.forwardHidden(pad).shape))).toEqual([1, 4, 64]);
    const packed = { inputIds: Int32Array.of(1, 5, 1, 6), positionIds: Int32Array.of(0, 1, 0, 1), segIds: Int32Array.of(0, 0, 1, 1), B: 1, T: 4 };
    expect(() => noGrad(() => scope(() => model.forwardHidden(packed)))).toThrow(/packed rows/);
  });

  it('a tiny model learns: loss falls when only the soft prompt trains', () => {
    const { model } = loadModelFolder(MODEL);
    const handle = applyPromptTuning(model, { num_virtual_tokens: 4, prompt_tuning_init: 'SAMPLE_VOCAB' }, { rng: new Rng(2) });
    const { batch, labels } = fixtureBatch();
    const opt = new AdamW([{ params: [handle.trainable[0]![1]], weightDecay: 0 }], { lr: 0.1 });
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
    expect(losses[losses.length - 1]!).toBeLessThan(losses[0]! - 0.2);
  });
});

describe('generation with a KV cache', () => {
  for (const folder of ['llama-gqa', 'gpt2']) {
    it(`${folder}: cached decoding (prefill, then token by token) equals the full forward`, () => {
      const { model } = loadModelFolder(`test/fixtures/models/${folder}`);
      applyPromptTuning(model, { num_virtual_tokens: 3 }, { rng: new Rng(9) });
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
