// The CLI end to end: train with a YAML config, generate with the adapter, eval (loss parity with PyTorch
// fixtures), merge, and the exit codes of a user mistake.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { FACTS, makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';

function ajuste(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { encoding: 'utf8', timeout: 240_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('ajuste CLI end to end', () => {
  it('train (YAML + overrides) -> generate with the adapter -> merge -> generate with the merged model', () => {
    const modelDir = makeTinyModelDir({ seed: 5 });
    const work = mkdtempSync(join(tmpdir(), 'ajuste-cli-'));
    const data = writeFactsJsonl(work);
    const out = join(work, 'out');
    const cfg = join(work, 'train.yaml');
    writeFileSync(
      cfg,
      [
        `model_name_or_path: ${modelDir}`,
        `dataset_path: ${data}`,
        `output_dir: ${out}`,
        'max_steps: 60',
        'per_device_train_batch_size: 6',
        'learning_rate: 1.0e-2',
        'lr_scheduler_type: constant',
        'logging_steps: 10',
        'save_steps: 30',
        'max_length: 64',
        'lora:',
        '  r: 8',
        '  lora_alpha: 16',
        '  target_modules: all-linear',
      ].join('\n'),
    );
    const t = ajuste(['train', cfg, '--lora.r', '16', '--lora.lora_alpha', '32', '--seed', '1']);
    expect(t.code, t.stderr).toBe(0);
    const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const losses = rows.filter((r) => r.loss !== undefined).map((r) => r.loss);
    expect(losses[losses.length - 1]).toBeLessThan(0.1);
    expect(losses[0]).toBeGreaterThan(1);
    expect(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')).r).toBe(16);

    const [q, a] = FACTS[2]!;
    const g = ajuste(['generate', '--model', modelDir, '--adapter', out, '--prompt', `Q: ${q}\nA:`, '--max-new-tokens', '8', '--json']);
    expect(g.code, g.stderr).toBe(0);
    expect(JSON.parse(g.stdout).text).toBe(a);

    const merged = join(work, 'merged');
    const m = ajuste(['merge', '--model', modelDir, '--adapter', out, '--out', merged]);
    expect(m.code, m.stderr).toBe(0);
    expect(existsSync(join(merged, 'tokenizer.json'))).toBe(true);
    const keys = [...readSafetensors(join(merged, 'model.safetensors')).tensors.keys()];
    expect(keys).toContain('model.layers.0.self_attn.q_proj.weight');
    expect(keys.some((k) => k.includes('lora') || k.includes('base_layer'))).toBe(false);
    const g2 = ajuste(['generate', '--model', merged, '--prompt', `Q: ${q}\nA:`, '--max-new-tokens', '8', '--json']);
    expect(JSON.parse(g2.stdout).text).toBe(a);
  });

  it('eval --json reproduces the PyTorch loss of each fixture model (1e-5 relative)', () => {
    for (const name of ['llama-gqa', 'qwen2', 'gpt2']) {
      const dir = mkdtempSync(join(tmpdir(), 'ajuste-eval-'));
      cpSync(`test/fixtures/models/${name}`, dir, { recursive: true });
      // A word-level tokenizer whose token "tN" is id N, so a text record reproduces the fixture's input_ids exactly.
      const vocab = Object.fromEntries(Array.from({ length: 128 }, (_, i) => [`t${i}`, i]));
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: { type: 'WhitespaceSplit' }, post_processor: null, decoder: null, model: { type: 'WordLevel', vocab, unk_token: 't0' } }));
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ add_bos_token: false, add_eos_token: false }));
      const exp = readSafetensors(join(dir, 'expected.safetensors'), { copy: true }).tensors.get('input_ids')!;
      const ids = Array.from(exp.data as BigInt64Array, Number);
      const T = exp.shape[1]!;
      const lines = [0, 1].map((b) => JSON.stringify({ text: ids.slice(b * T, (b + 1) * T).map((i) => `t${i}`).join(' ') }));
      writeFileSync(join(dir, 'data.jsonl'), lines.join('\n'));
      const r = ajuste(['eval', '--model', dir, '--data', join(dir, 'data.jsonl'), '--json']);
      expect(r.code, r.stderr).toBe(0);
      const got = JSON.parse(r.stdout);
      const want = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8'));
      expect(got.tokens).toBe(30);
      expect(Math.abs(got.loss - want.loss) / want.loss, name).toBeLessThan(1e-5);
      expect(got.perplexity).toBeCloseTo(Math.exp(got.loss), 10);
    }
  });

  it('a user mistake exits 1 with a one-line cause and a hint', () => {
    const r = ajuste(['eval', '--model', '/nonexistent/model-dir', '--data', 'x.jsonl']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error:/);
  });
});
