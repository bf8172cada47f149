/**
 * A tokenized dataset saved next to a run (output_dir/tokenized.safetensors), so a resumed or repeated run
 * skips reading and tokenizing the data (0.5-1 MB of text a second in plain JavaScript). Each split is stored
 * as its concatenated ids and labels (I32), the examples' lengths (I32) and truncation flags (U8); reading it
 * back gives subarray views of one buffer, so the examples take no more memory than tokenizing them did.
 *
 * The file is used only when its fingerprint matches: a hash of everything the tokens depend on (ajuste's
 * version, the data files' paths, sizes and modification times, the tokenizer files' bytes, and the options), so
 * editing the data, the tokenizer or max_length, or upgrading ajuste, re-tokenizes. Written atomically; an
 * unreadable file is ignored.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readSafetensors, type TensorToWrite, writeSafetensors } from '../io/safetensors.js';
import type { TokenizedExample } from './dataset.js';

export interface TokenizedSplit {
  examples: TokenizedExample[];
  truncated: number;
  dropped: number;
}

/** ajuste's version (src/data/ and dist/data/ are both two levels below package.json). */
export function ajusteVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja', 'chat_template.json'];

/** The fingerprint of a tokenization: data files (path, size, mtime), tokenizer files (bytes) and options. */
export function tokenizationFingerprint(dataFiles: (string | null | undefined)[], tokenizerDir: string, options: Record<string, unknown>): string {
  const h = createHash('sha256');
  h.update(`ajuste-tokenized-v1 ${ajusteVersion()}\n`);
  for (const f of dataFiles) {
    if (!f) {
      h.update('-\n');
      continue;
    }
    const st = statSync(f);
    h.update(`${resolve(f)}\t${st.size}\t${st.mtimeMs}\n`);
  }
  for (const name of TOKENIZER_FILES) {
    const p = join(tokenizerDir, name);
    h.update(`${name}\n`);
    if (existsSync(p)) h.update(readFileSync(p));
  }
  h.update(JSON.stringify(options));
  return h.digest('hex');
}

function splitTensors(prefix: string, s: TokenizedSplit, out: Record<string, TensorToWrite>): void {
  const n = s.examples.reduce((a, e) => a + e.inputIds.length, 0);
  const ids = new Int32Array(n), labels = new Int32Array(n);
  const lengths = new Int32Array(s.examples.length), truncated = new Uint8Array(s.examples.length);
  let o = 0;
  s.examples.forEach((e, i) => {
    ids.set(e.inputIds, o);
    labels.set(e.labels, o);
    o += e.inputIds.length;
    lengths[i] = e.inputIds.length;
    truncated[i] = e.truncated ? 1 : 0;
  });
  out[`${prefix}.ids`] = { dtype: 'I32', shape: [n], data: ids };
  out[`${prefix}.labels`] = { dtype: 'I32', shape: [n], data: labels };
  out[`${prefix}.lengths`] = { dtype: 'I32', shape: [lengths.length], data: lengths };
  out[`${prefix}.truncated`] = { dtype: 'U8', shape: [truncated.length], data: truncated };
}

/** Saves the train and eval splits under the fingerprint (atomically). */
export function writeTokenCache(path: string, fingerprint: string, train: TokenizedSplit, evalSplit: TokenizedSplit): void {
  const tensors: Record<string, TensorToWrite> = {};
  splitTensors('train', train, tensors);
  splitTensors('eval', evalSplit, tensors);
  writeSafetensors(path, tensors, { fingerprint, counts: JSON.stringify({ train: [train.truncated, train.dropped], eval: [evalSplit.truncated, evalSplit.dropped] }) });
}

/** The cached splits when the file exists, is readable and has this fingerprint; else null. */
export function readTokenCache(path: string, fingerprint: string): { train: TokenizedSplit; eval: TokenizedSplit } | null {
  if (!existsSync(path)) return null;
  try {
    const f = readSafetensors(path, { copy: true });
    if (f.metadata?.fingerprint !== fingerprint) return null;
    const counts = JSON.parse(f.metadata.counts ?? '{}') as Record<string, [number, number]>;
    const split = (prefix: string): TokenizedSplit => {
      const get = (k: string) => f.tensors.get(`${prefix}.${k}`)?.data;
      const ids = get('ids'), labels = get('labels'), lengths = get('lengths'), truncated = get('truncated');
      if (!(ids instanceof Int32Array && labels instanceof Int32Array && lengths instanceof Int32Array && truncated instanceof Uint8Array)) throw new Error('bad cache');
      if (ids.length !== labels.length || lengths.length !== truncated.length) throw new Error('bad cache');
      const examples: TokenizedExample[] = [];
      let o = 0;
      for (let i = 0; i < lengths.length; i++) {
        const n = lengths[i]!;
        if (n < 0 || o + n > ids.length) throw new Error('bad cache');
        examples.push({ inputIds: ids.subarray(o, o + n), labels: labels.subarray(o, o + n), truncated: truncated[i] === 1 });
        o += n;
      }
      if (o !== ids.length) throw new Error('bad cache');
      const [t, d] = counts[prefix] ?? [0, 0];
      return { examples, truncated: t, dropped: d };
    };
    return { train: split('train'), eval: split('eval') };
  } catch {
    return null;  // unreadable or inconsistent: tokenize again (and overwrite it)
  }
}
