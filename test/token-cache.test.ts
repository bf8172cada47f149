// The tokenized-data cache (src/data/token-cache.ts): exact round trip, used only under the same fingerprint,
// ignored when damaged, and in a run: written once, read back by the next run of the same data and options
// (same adapter), re-tokenized when the data file or max_length changes, absent with cache_tokenized false.
import { existsSync, mkdtempSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TokenizedExample } from '../src/data/dataset.js';
import { readTokenCache, tokenizationFingerprint, writeTokenCache } from '../src/data/token-cache.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { runSft } from '../src/train/sft.js';
import { baseConfig, makeTinyModelDir, TINY_TOKENIZER, writeFactsJsonl } from './e2e-helpers.js';

const ex = (ids: number[], prompt: number, truncated = false): TokenizedExample => ({
  inputIds: Int32Array.from(ids),
  labels: Int32Array.from(ids, (v, i) => (i < prompt ? -100 : v)),
  truncated,
});

describe('tokenized-data cache', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ajuste-tokcache-'));

  it('round-trips examples exactly, only under the same fingerprint, and ignores a damaged file', () => {
    const train = { examples: [ex([1, 2, 3], 1), ex([4], 0, true), ex([5, 6, 7, 8, 9], 2)], truncated: 1, dropped: 2 };
    const evalSplit = { examples: [ex([10, 11], 1)], truncated: 0, dropped: 0 };
    const file = join(dir, 'tokenized.safetensors');
    writeTokenCache(file, 'abc', train, evalSplit);
    const back = readTokenCache(file, 'abc')!;
    expect(back.train.truncated).toBe(1);
    expect(back.train.dropped).toBe(2);
    expect(back.train.examples.map((e) => [Array.from(e.inputIds), Array.from(e.labels), e.truncated])).toEqual(
      train.examples.map((e) => [Array.from(e.inputIds), Array.from(e.labels), e.truncated]),
    );
    expect(Array.from(back.eval.examples[0]!.labels)).toEqual([-100, 11]);
    expect(readTokenCache(file, 'abd')).toBeNull();
    const bytes = readFileSync(file);
    writeFileSync(file, bytes.subarray(0, bytes.length - 5));
    expect(readTokenCache(file, 'abc')).toBeNull();
    expect(readTokenCache(join(dir, 'missing.safetensors'), 'abc')).toBeNull();
  });

  it('the fingerprint follows the data file (size, mtime), the tokenizer files and the options', () => {
    const data = join(dir, 'd.jsonl');
    writeFileSync(data, '{"text": "a"}\n');
    const fp = () => tokenizationFingerprint([data, null], TINY_TOKENIZER, { maxLength: 64 });
    const a = fp();
    expect(fp()).toBe(a);
    utimesSync(data, new Date(), new Date(Date.now() + 5000));
    expect(fp()).not.toBe(a);
    expect(tokenizationFingerprint([data, null], TINY_TOKENIZER, { maxLength: 32 })).not.toBe(fp());
    expect(tokenizationFingerprint([data, null], 'test/fixtures/models/llama-gqa', { maxLength: 64 })).not.toBe(fp());
  });

  it('a run saves it, the next run of the same config reads it (same adapter), a changed config re-tokenizes', async () => {
    const modelDir = makeTinyModelDir({ seed: 5 });
    const data = writeFactsJsonl(join(dir, 'data'), 2);
    const cfg = (out: string, extra: object = {}) => ({ ...baseConfig(modelDir, data, out), max_steps: 6, save_steps: 100, ...extra });
    const run = async (out: string, extra: object = {}) => {
      const messages: string[] = [];
      await runSft(cfg(out, extra), { onInfo: (m) => messages.push(m) });
      return messages.find((m) => m.startsWith('training data:'))!;
    };
    const first = join(dir, 'first');
    expect(await run(first)).toMatch(/tokenized in/);
    const cache = join(first, 'tokenized.safetensors');
    expect(existsSync(cache)).toBe(true);
    const adapter1 = readFileSync(join(first, 'adapter_model.safetensors'));
    expect(await run(first, { overwrite_output_dir: true })).toBe(`training data: 12 examples, ${readSafetensors(cache).tensors.get('train.ids')!.shape[0]} tokens (0.0 MB in memory), read from ${cache}`);
    expect(readFileSync(join(first, 'adapter_model.safetensors')).equals(adapter1)).toBe(true);
    expect(await run(first, { overwrite_output_dir: true, max_length: 32 })).toMatch(/tokenized in/);
    const off = join(dir, 'off');
    await run(off, { cache_tokenized: false });
    expect(existsSync(join(off, 'tokenized.safetensors'))).toBe(false);
  });
});
