import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Tokenizer } from '../src/data/tokenizer.js';
import { generate } from '../src/eval/generate.js';
import { loadModelFolder } from '../src/models/load.js';
import { loadAdapter } from '../src/peft/adapter-io.js';
import { runSft, type SftConfig } from '../src/train/sft.js';
import { baseConfig, FACTS, makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';

describe('LoRA instruction fine-tuning end to end (library API)', () => {
  it('a tiny model learns a small instruction set and answers a training prompt', async () => {
    const modelDir = makeTinyModelDir();
    const work = mkdtempSync(join(tmpdir(), 'ajuste-sft-'));
    const data = writeFactsJsonl(work);
    const out = join(work, 'out');
    const rows: Record<string, number>[] = [];
    const r = await runSft(baseConfig(modelDir, data, out), { onLog: (row) => rows.push(row) });
    const losses = rows.filter((x) => x.loss !== undefined).map((x) => x.loss!);
    expect(losses[0]).toBeGreaterThan(1);
    expect(losses[losses.length - 1]!).toBeLessThan(0.1);
    expect(existsSync(join(out, 'adapter_model.safetensors'))).toBe(true);
    expect(existsSync(join(out, 'checkpoint-30', 'optimizer.safetensors'))).toBe(true);
    const metrics = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(Object.keys(metrics[0])).toEqual(expect.arrayContaining(['step', 'loss', 'learning_rate', 'grad_norm', 'tokens_per_second', 'peak_rss_mb']));
    expect(r.globalStep).toBe(60);

    // A fresh process would load base + adapter: do the same here and generate.
    const { model } = loadModelFolder(modelDir);
    loadAdapter(out, model);
    const tok = Tokenizer.fromFolder(modelDir);
    const [q, a] = FACTS[1]!;
    const prompt = tok.encode(`Q: ${q}\nA:`);
    const g = generate(model, prompt, { maxNewTokens: 8, eosTokenIds: [tok.eosId!] });
    expect(tok.decode(g.tokens, { skipSpecialTokens: true })).toBe(a);
  });
});

describe('other PEFT methods through the recipe', () => {
  for (const [method, extra] of [
    ['ia3', { ia3: { target_modules: ['k_proj', 'v_proj', 'down_proj'], feedforward_modules: ['down_proj'] } }],
    ['prompt_tuning', { prompt_tuning: { num_virtual_tokens: 4 } }],
    ['prefix_tuning', { prefix_tuning: { num_virtual_tokens: 4 } }],
    ['ln_tuning', {}],
  ] as const) {
    it(`${method}: the loss falls and the adapter (or model) is saved`, async () => {
      const modelDir = makeTinyModelDir({ seed: 2 });
      const work = mkdtempSync(join(tmpdir(), `ajuste-${method}-`));
      const out = join(work, 'out');
      const rows: Record<string, number>[] = [];
      await runSft({ ...baseConfig(modelDir, writeFactsJsonl(work), out), method, ...extra, max_steps: 20, logging_steps: 5, save_steps: 10, learning_rate: 2e-2 } as SftConfig, { onLog: (r) => rows.push(r) });
      const losses = rows.filter((r) => r.loss !== undefined).map((r) => r.loss!);
      expect(losses[losses.length - 1]!).toBeLessThan(losses[0]!);
      const saved = method === 'ln_tuning' ? 'model.safetensors' : 'adapter_model.safetensors';
      expect(existsSync(join(out, saved))).toBe(true);
      if (method !== 'ln_tuning') expect(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')).peft_type).toBe(method.toUpperCase());
    });
  }
});
