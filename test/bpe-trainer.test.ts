import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { beforeAll, describe, expect, it } from 'vitest';
import { bytesToToken, GPT2_SPLIT } from '../src/data/byte-level.js';
import { type TokenizerJson, trainBpeTokenizer } from '../src/data/bpe-trainer.js';
import { loadBrownText, stripBrownTags } from '../src/data/brown.js';
import { Tokenizer } from '../src/data/tokenizer.js';

/** Obviously-right BPE training: recount every pair of every word before each merge. */
function naiveMerges(texts: string[], numMerges: number, minFrequency: number): string[] {
  const counts = new Map<string, number>();
  for (const t of texts) for (const m of t.matchAll(GPT2_SPLIT)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1);
  const words = [...counts].map(([w, c]) => ({ sym: [...new TextEncoder().encode(w)].map((b) => bytesToToken([b])), c }));
  const ids = new Map<string, number>();
  for (let b = 0; b < 256; b++) ids.set(bytesToToken([b]), b);
  const merges: string[] = [];
  while (merges.length < numMerges) {
    const pairs = new Map<string, number>();
    for (const w of words) for (let i = 0; i + 1 < w.sym.length; i++) pairs.set(`${w.sym[i]} ${w.sym[i + 1]}`, (pairs.get(`${w.sym[i]} ${w.sym[i + 1]}`) ?? 0) + w.c);
    let best: string | null = null;
    let bestCount = 0;
    for (const [p, c] of pairs) {
      if (c < bestCount) continue;
      if (c === bestCount && best !== null) {
        const [a, b] = p.split(' ') as [string, string];
        const [x, y] = best.split(' ') as [string, string];
        const ka = ids.get(a)!;
        const kx = ids.get(x)!;
        if (ka > kx || (ka === kx && ids.get(b)! > ids.get(y)!)) continue;
      }
      best = p;
      bestCount = c;
    }
    if (best === null || bestCount < minFrequency) break;
    merges.push(best);
    const [a, b] = best.split(' ') as [string, string];
    if (!ids.has(a + b)) ids.set(a + b, ids.size);
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.sym.length; i++) {
        if (i + 1 < w.sym.length && w.sym[i] === a && w.sym[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(w.sym[i]!);
      }
      w.sym = out;
    }
  }
  return merges;
}

describe('byte-level BPE trainer', () => {
  let brown: string;
  let tj: TokenizerJson;
  beforeAll(() => {
    brown = loadBrownText(260_000);
    tj = trainBpeTokenizer(brown.slice(0, 200_000).split('\n'), { vocabSize: 1024, specialTokens: ['<|endoftext|>', '<|pad|>'] });
  });

  it('loads Brown text without the POS tags', () => {
    expect(stripBrownTags('The/at jury/nn said/vbd ``/`` no/at ./.')).toBe('The jury said " no .');
    expect(brown.length).toBeLessThanOrEqual(260_000);
    expect(brown.length).toBeGreaterThan(250_000);
    expect(brown.startsWith('The Fulton County Grand Jury said Friday')).toBe(true);
    expect(brown).not.toMatch(/\/(at|nn|vbd)\b/);
  });

  it('writes a tokenizer.json of exactly vocabSize ids: 256 bytes, the merges, then the specials', () => {
    const vocab = tj.model.vocab;
    expect(Object.keys(vocab).length).toBe(1024);
    expect(new Set(Object.values(vocab)).size).toBe(1024);
    expect(vocab[bytesToToken([0x20])]).toBe(0x20);
    expect(vocab.Ġ).toBe(32);
    expect(tj.added_tokens.map((t) => [t.id, t.content])).toEqual([
      [1022, '<|endoftext|>'],
      [1023, '<|pad|>'],
    ]);
    for (const m of tj.model.merges) {
      const [a, b] = m.split(' ') as [string, string];
      expect(vocab[a]).toBeDefined();
      expect(vocab[b]).toBeDefined();
      expect(vocab[a + b]).toBeDefined();
    }
  });

  it('learns the same merges as a naive recount-everything trainer', () => {
    const texts = brown.slice(0, 20_000).split('\n');
    const fast = trainBpeTokenizer(texts, { vocabSize: 256 + 120, minFrequency: 2 });
    expect(fast.model.merges).toEqual(naiveMerges(texts, 120, 2));
  });

  it('breaks ties by the smaller pair of ids, and stops at minFrequency', () => {
    // Pairs: a b x5; then (ab ab) x2 and (Ġ ab) x2 tie -> (Ġ=32, ab=256) < (256, 256).
    const t = trainBpeTokenizer(['abab abab ab'], { vocabSize: 256 + 3, minFrequency: 2 });
    expect(t.model.merges.slice(0, 2)).toEqual(['a b', 'Ġ ab']);
    expect(trainBpeTokenizer(['abab abab ab'], { vocabSize: 300, minFrequency: 3 }).model.merges).toEqual(['a b']);
    expect(() => trainBpeTokenizer(['x'], { vocabSize: 100 })).toThrow(/too small/);
  });

  it('is deterministic', () => {
    const texts = brown.slice(0, 30_000).split('\n');
    expect(JSON.stringify(trainBpeTokenizer(texts, { vocabSize: 400 }))).toBe(JSON.stringify(trainBpeTokenizer(texts, { vocabSize: 400 })));
  });

  it('loads in @huggingface/tokenizers, round-trips any text exactly, and compresses held-out text', () => {
    const hf = new HfTokenizer(tj, {});
    const tok = Tokenizer.fromJSON(tj as unknown as Record<string, unknown>, { eos_token: '<|endoftext|>' });
    const samples = [
      'Hello, World! It\'s 1961: "quotes" and   spaces\n\n\ttabs.',
      'naïve façade Ångström — 日本語のテキスト 🎉👩‍💻 \u0000\u007f',
      'code: for (let i = 0; i < n; i++) { x[i] = y[i] ** 2; }',
      'ends with special<|endoftext|>',
    ];
    for (const s of samples) {
      const ids = tok.encode(s);
      expect(tok.decode(ids)).toBe(s);
      expect(hf.encode(s).ids).toEqual(ids);
      expect(ids.every((id) => id >= 0 && id < 1024)).toBe(true);
    }
    expect(tok.encode('<|endoftext|>')).toEqual([1022]);
    const heldOut = brown.slice(200_000);
    const ids = tok.encode(heldOut);
    expect(tok.decode(ids)).toBe(heldOut);
    const bytes = Buffer.byteLength(heldOut);
    expect(ids.length / bytes).toBeLessThan(0.5);
  });

  it('trains on 2 MB of text in well under a minute', () => {
    const big = loadBrownText(2_000_000);
    const t0 = performance.now();
    const t = trainBpeTokenizer(big.split('\n'), { vocabSize: 2048, specialTokens: ['<|endoftext|>'] });
    const ms = performance.now() - t0;
    expect(Object.keys(t.model.vocab).length).toBe(2048);
    expect(ms).toBeLessThan(60_000);
  }, 90_000);
});
