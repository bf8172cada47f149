/**
 * GPT-2-style byte-level BPE training: texts are split with the GPT-2 regex, each piece becomes its UTF-8
 * bytes, and the most frequent adjacent pair is merged until the vocabulary is full. The result is a
 * standard tokenizer.json (ByteLevel pre-tokenizer / post-processor / decoder, BPE model) that
 * @huggingface/tokenizers and Python `tokenizers` load.
 *
 * Ids: the 256 byte tokens first (id = byte value), then one token per merge in the order learned (a merge
 * whose result is already a token reuses its id), then the special tokens. Ties between pairs of equal count go to the smallest (left id, right id), so the
 * result is a pure function of the input.
 */
import { bytesToToken, GPT2_SPLIT } from './byte-level.js';

export interface BpeTrainOptions {
  /** Total vocabulary size including the 256 bytes and the special tokens. */
  vocabSize: number;
  specialTokens?: string[];
  /** A pair must occur at least this often to be merged (default 2). */
  minFrequency?: number;
}

export interface TokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: {
    id: number;
    content: string;
    single_word: boolean;
    lstrip: boolean;
    rstrip: boolean;
    normalized: boolean;
    special: boolean;
  }[];
  normalizer: null;
  pre_tokenizer: Record<string, unknown>;
  post_processor: Record<string, unknown>;
  decoder: Record<string, unknown>;
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: string[];
  };
}

// Pair keys pack two ids (< 2^21 each) into one number below 2^53.
const SHIFT = 2 ** 21;

/** A max-heap of (count, pair) ordered by count desc, then pair key asc. Entries may be stale. */
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];

  get size(): number {
    return this.keys.length;
  }

  private better(i: number, j: number): boolean {
    const ci = this.counts[i]!;
    const cj = this.counts[j]!;
    return ci > cj || (ci === cj && this.keys[i]! < this.keys[j]!);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j]!, this.counts[i]!];
    [this.keys[i], this.keys[j]] = [this.keys[j]!, this.keys[i]!];
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.keys.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.better(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): [number, number] {
    const top: [number, number] = [this.counts[0]!, this.keys[0]!];
    const lastC = this.counts.pop()!;
    const lastK = this.keys.pop()!;
    if (this.keys.length > 0) {
      this.counts[0] = lastC;
      this.keys[0] = lastK;
      let i = 0;
      const n = this.keys.length;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < n && this.better(l, m)) m = l;
        if (r < n && this.better(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

/** Trains a byte-level BPE tokenizer and returns its tokenizer.json object. */
export function trainBpeTokenizer(texts: Iterable<string>, opts: BpeTrainOptions): TokenizerJson {
  const specials = opts.specialTokens ?? [];
  const minFrequency = opts.minFrequency ?? 2;
  const numMerges = opts.vocabSize - 256 - specials.length;
  if (!Number.isInteger(opts.vocabSize) || numMerges < 0) {
    throw new Error(`vocabSize ${opts.vocabSize} is too small: it must hold 256 byte tokens and ${specials.length} special tokens`);
  }
  if (opts.vocabSize >= SHIFT) throw new Error(`vocabSize ${opts.vocabSize} is too large (at most ${SHIFT - 1})`);

  // 1. Pre-tokenize and count distinct pieces.
  const pieceCounts = new Map<string, number>();
  for (const text of texts) {
    for (const m of text.matchAll(GPT2_SPLIT)) {
      const p = m[0];
      pieceCounts.set(p, (pieceCounts.get(p) ?? 0) + 1);
    }
  }
  const encoder = new TextEncoder();
  const words: number[][] = [];
  const freq: number[] = [];
  for (const [p, c] of pieceCounts) {
    const bytes = encoder.encode(p);
    if (bytes.length < 2) continue; // no pairs inside
    words.push(Array.from(bytes));
    freq.push(c);
  }

  // 2. Pair counts and, per pair, the words that contain it.
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (w: number, sign: number, touched: Set<number>): void => {
    const sym = words[w]!;
    const f = freq[w]! * sign;
    for (let i = 0; i + 1 < sym.length; i++) {
      const key = sym[i]! * SHIFT + sym[i + 1]!;
      pairCount.set(key, (pairCount.get(key) ?? 0) + f);
      touched.add(key);
      if (sign > 0) {
        let s = pairWords.get(key);
        if (!s) pairWords.set(key, (s = new Set()));
        s.add(w);
      }
    }
  };
  const initial = new Set<number>();
  for (let w = 0; w < words.length; w++) addPairs(w, 1, initial);
  const heap = new PairHeap();
  for (const [key, c] of pairCount) heap.push(c, key);

  // 3. Merge loop.
  const tokenStr: string[] = [];
  for (let b = 0; b < 256; b++) tokenStr.push(bytesToToken([b]));
  const strToId = new Map(tokenStr.map((t, id) => [t, id]));
  const merges: string[] = [];
  while (tokenStr.length < 256 + numMerges && heap.size > 0) {
    const [count, key] = heap.pop();
    const current = pairCount.get(key) ?? 0;
    if (current !== count) {
      if (current > 0) heap.push(current, key); // stale entry: requeue with its true count
      continue;
    }
    if (count < minFrequency) break;
    const left = Math.floor(key / SHIFT);
    const right = key - left * SHIFT;
    // Two different merges can spell the same token ("ab c" and "a bc"): it keeps its first id (as HF's trainer).
    const merged = tokenStr[left]! + tokenStr[right]!;
    let newId = strToId.get(merged);
    if (newId === undefined) {
      newId = tokenStr.length;
      tokenStr.push(merged);
      strToId.set(merged, newId);
    }
    merges.push(`${tokenStr[left]} ${tokenStr[right]}`);

    const touched = new Set<number>();
    for (const w of pairWords.get(key) ?? []) {
      const sym = words[w]!;
      let has = false;
      for (let i = 0; i + 1 < sym.length; i++) if (sym[i] === left && sym[i + 1] === right) has = true;
      if (!has) continue;
      addPairs(w, -1, touched);
      const out: number[] = [];
      for (let i = 0; i < sym.length; i++) {
        if (i + 1 < sym.length && sym[i] === left && sym[i + 1] === right) {
          out.push(newId);
          i++;
        } else out.push(sym[i]!);
      }
      words[w] = out;
      addPairs(w, 1, touched);
    }
    pairCount.delete(key);
    pairWords.delete(key);
    for (const k of touched) {
      const c = pairCount.get(k) ?? 0;
      if (c <= 0) {
        pairCount.delete(k);
        pairWords.delete(k);
      } else if (k !== key) heap.push(c, k);
    }
  }

  // 4. tokenizer.json
  const vocab: Record<string, number> = {};
  tokenStr.forEach((s, id) => {
    vocab[s] = id;
  });
  const added_tokens = specials.map((content, i) => ({
    id: tokenStr.length + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  for (const t of added_tokens) vocab[t.content] = t.id;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}
