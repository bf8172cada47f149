// `ajuste export` as a user runs it: a model with its tokenizer, a merged adapter, a LoRA-only adapter, --inspect,
// and the mistakes (exit 1, one error line and a hint).
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { prepareGgufInputs } from '../tools/fixtures/gguf-export.js';
import { readGguf } from '../src/io/gguf.js';

const dir = mkdtempSync(join(tmpdir(), 'ajuste-cli-export-'));
const inputs = prepareGgufInputs(dir);

function ajuste(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('ajuste export', () => {
  it('the bundled model with its tokenizer, then --inspect', () => {
    const out = join(dir, 'base.gguf');
    const r = ajuste(['export', '--model', 'models/ajuste-base-2m', '--out', out, '--outtype', 'q8_0']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/base\.gguf: llama model, q8_0, 38 tensors \(Q8_0 x 29, F32 x 9\)/);
    expect(r.stderr).toMatch(/tokenizer\.ggml\.pre = gpt-2/);
    const f = readGguf(out);
    expect(f.kv.get('tokenizer.ggml.pre')).toEqual({ type: 'string', value: 'gpt-2' });
    const i = ajuste(['export', '--inspect', out]);
    expect(i.code, i.stderr).toBe(0);
    expect(i.stdout).toMatch(/tokenizer\.ggml\.tokens +\[string x 4096\]/);
    expect(i.stdout).toMatch(/token_embd\.weight +Q8_0 +ne=\[192, 4096\]/);
  });
  it('a merged adapter and a LoRA-only file', () => {
    const merged = ajuste(['export', '--model', 'test/fixtures/models/llama-gqa', '--adapter', inputs.loraPlain, '--no-tokenizer', '--out', join(dir, 'merged.gguf')]);
    expect(merged.code, merged.stderr).toBe(0);
    expect(merged.stderr).toMatch(/merging 14 LoRA modules/);
    expect(merged.stdout).toMatch(/llama model, f16, 21 tensors \(F16 x 16, F32 x 5\)/);
    const lora = ajuste(['export', '--model', 'test/fixtures/models/llama-gqa', '--adapter', inputs.loraPlain, '--lora-only', '--out', join(dir, 'lora.gguf')]);
    expect(lora.code, lora.stderr).toBe(0);
    expect(lora.stdout).toMatch(/llama LoRA adapter, 28 tensors \(F32 x 28\)/);
    expect(readGguf(join(dir, 'lora.gguf')).kv.get('general.type')).toEqual({ type: 'string', value: 'adapter' });
  });
  it('mistakes exit 1 with what, where and what to do', () => {
    const cases: [string[], RegExp][] = [
      [['export', '--model', 'models/ajuste-base-2m'], /--out is required/],
      [['export', '--model', 'models/ajuste-base-2m', '--out', dir], /is a folder; GGUF is a single file/],
      [['export', '--model', 'models/ajuste-base-2m', '--lora-only', '--out', join(dir, 'x.gguf')], /--lora-only exports an adapter: pass it with --adapter DIR/],
      [['export', '--model', 'test/fixtures/models/qwen2', '--out', join(dir, 'x.gguf')], /has no tokenizer\.json[^\n]*\nhint: [^\n]*--no-tokenizer/],
      [['export', '--model', 'models/ajuste-base-2m', '--out', join(dir, 'x.gguf'), '--outtype', 'q4_0'], /'q4_0' is invalid/],
      [['export', '--inspect', 'models/ajuste-base-2m/model.safetensors'], /not the magic 'GGUF'/],
    ];
    for (const [args, re] of cases) {
      const r = ajuste(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(re);
      expect(r.stderr).not.toMatch(/at .*\.ts:\d+/); // no stack
    }
  });
});
