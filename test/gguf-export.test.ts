// GGUF export against llama.cpp's converters (test/fixtures/gguf/exports.json, made by tools/fixtures/gguf.py with
// gguf-py) and against the HF weights it came from: names, metadata, Q/K permutation, tied embeddings, rope_freqs,
// types, merged adapters, LoRA adapters, tokenizers.
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { type GgufExportCase, ggufExportCases, prepareGgufInputs, runGgufExportCase } from '../tools/fixtures/gguf-export.js';
import { ggufVocab, preTokenizerHash, TOKEN_TYPE } from '../src/data/gguf-vocab.js';
import { Tokenizer } from '../src/data/tokenizer.js';
import { bf16ToF32 } from '../src/io/dtypes.js';
import { type GgufFile, type GgufValue, ggufTensorBytes, ggufTensorF32, readGguf } from '../src/io/gguf.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { ropeInvFreq } from '../src/models/config.js';
import { loadModelFolder, readModelConfig } from '../src/models/load.js';
import { loadAdapter } from '../src/peft/adapter-io.js';
import { adapterConfigJson, loraConfig } from '../src/peft/config.js';
import { exportGguf, exportLoraGguf, ggufTensorName, permuteQK, unpermuteQK } from '../src/peft/gguf-export.js';
import { mergedStateDict } from '../src/peft/merge.js';

interface View {
  kv: [string, Record<string, unknown>][];
  tensors: { name: string; type: string; ne: number[]; offset: number; nbytes: number; sha256: string }[];
}
interface GoldenCase {
  kind: string;
  outtype: string;
  ajuste: View;
  converter: View | null;
  differences: string[];
  notes: Record<string, unknown>;
}
const golden = JSON.parse(readFileSync('test/fixtures/gguf/exports.json', 'utf8')) as { cases: Record<string, GoldenCase> };

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** tools/fixtures/gguf.py's items_sha: strings as u32 length + UTF-8, floats as f64, bools as u8, ints as i64. */
function itemsSha(itemType: string, items: unknown[]): string {
  const h = createHash('sha256');
  for (const v of items) {
    if (itemType === 'string') {
      const b = Buffer.from(v as string, 'utf8');
      const n = Buffer.alloc(4);
      n.writeUInt32LE(b.length);
      h.update(n).update(b);
    } else if (itemType === 'f32' || itemType === 'f64') {
      const b = Buffer.alloc(8);
      b.writeDoubleLE(v as number);
      h.update(b);
    } else if (itemType === 'bool') h.update(Buffer.from([v ? 1 : 0]));
    else {
      const b = Buffer.alloc(8);
      b.writeBigInt64LE(BigInt(v as number | bigint));
      h.update(b);
    }
  }
  return h.digest('hex');
}

/** What tools/fixtures/gguf.py's reader_view records, from ajuste's reader. */
function viewOf(f: GgufFile): View {
  const one = (x: unknown) => (typeof x === 'bigint' ? x.toString() : x);
  const kv: View['kv'] = [...f.kv].map(([k, v]: [string, GgufValue]) => {
    if (v.type !== 'array') return [k, { type: v.type, value: one(v.value) }];
    const items = Array.from(v.value as ArrayLike<unknown>, one);
    const base = { type: 'array', itemType: v.itemType, count: items.length };
    return [k, items.length > 64 ? { ...base, sha256: itemsSha(v.itemType, items), head: items.slice(0, 8) } : { ...base, value: items }];
  });
  const tensors = f.tensors.map((t) => ({ name: t.name, type: t.type.name, ne: t.ne, offset: t.fileOffset, nbytes: t.nbytes, sha256: sha(ggufTensorBytes(f, t)) }));
  return { kv, tensors };
}

/** JSON with sorted keys, to compare values that went through Python's json.dumps(sort_keys=True). */
function canon(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x));
}

/** Where ajuste's file and the converter's differ: "key K" / "tensor T" entries (tensors compared by name). */
function differences(a: View, b: View): string[] {
  const out: string[] = [];
  const ka = new Map(a.kv);
  const kb = new Map(b.kv);
  for (const k of new Set([...ka.keys(), ...kb.keys()])) if (canon(ka.get(k)) !== canon(kb.get(k))) out.push(`key ${k}`);
  const common = (x: View['kv'], other: Map<string, unknown>) => x.map(([k]) => k).filter((k) => other.has(k));
  if (common(a.kv, kb).join() !== common(b.kv, ka).join()) out.push('key order');
  const ta = new Map(a.tensors.map((t) => [t.name, t]));
  const tb = new Map(b.tensors.map((t) => [t.name, t]));
  for (const n of new Set([...ta.keys(), ...tb.keys()])) {
    const x = ta.get(n);
    const y = tb.get(n);
    if (!x || !y || x.type !== y.type || x.ne.join() !== y.ne.join() || x.sha256 !== y.sha256) out.push(`tensor ${n}`);
  }
  return out.sort();
}

/**
 * Where ajuste deliberately differs from what the converters would write:
 * - qwen2 / gpt2 without a tokenizer: `{arch}.vocab_size`, which llama.cpp needs to size a "none" vocabulary and only
 *   LlamaModel writes (the converter itself cannot run on these folders: they have no tokenizer);
 * - ajuste-base-2m: tokenizer.ggml.pre. Its check hash is unknown to the converter, which stops; ajuste reads the
 *   pre-tokenizer (GPT-2's ByteLevel regex) and writes "gpt-2" (src/data/gguf-vocab.ts).
 * - spm-hf-vocab (a byte_fallback tokenizer.json without tokenizer.model): tokenizer.ggml.scores, see below.
 */
const ALLOWED: Record<string, string[]> = {
  'qwen2-f16': ['key qwen2.vocab_size'],
  'qwen2-q8_0': ['key qwen2.vocab_size'],
  'gpt2-f32': ['key gpt2.vocab_size'],
  'gpt2-q8_0': ['key gpt2.vocab_size'],
  'ajuste-base-2m-q8_0': ['key tokenizer.ggml.pre'],
  // LlamaHfVocab's scores are a placeholder (-1000 for every token); ajuste's come from the merges (llamaHfScores)
  'spm-hf-vocab': ['key tokenizer.ggml.scores'],
};

const tmpRoot = mkdtempSync(join(tmpdir(), 'ajuste-gguf-export-'));
const inputs = prepareGgufInputs(tmpRoot);
const cases = ggufExportCases(inputs);
const files = new Map<string, GgufFile>();
beforeAll(() => {
  for (const c of cases) files.set(c.name, readGguf(runGgufExportCase(c, tmpRoot)));
});

describe('exports match gguf-py’s view of them and llama.cpp’s converters', () => {
  it('the fixture covers every case', () => {
    expect(Object.keys(golden.cases).sort()).toEqual(cases.map((c) => c.name).sort());
  });
  for (const c of cases) {
    it(c.name, () => {
      const g = golden.cases[c.name]!;
      const view = viewOf(files.get(c.name)!);
      // what gguf-py read from the file ajuste wrote when the fixture was made is what ajuste writes now
      expect(view).toEqual(g.ajuste);
      if (g.converter) expect(differences(view, g.converter)).toEqual(ALLOWED[c.name] ?? []);
    });
  }
});

interface Hf {
  w: Map<string, Float32Array>;
  shape: Map<string, number[]>;
}
function hfWeights(dir: string): Hf {
  const st = readSafetensors(`${dir}/model.safetensors`, { copy: true });
  const w = new Map<string, Float32Array>();
  const shape = new Map<string, number[]>();
  for (const [k, t] of st.tensors) {
    w.set(k, t.dtype === 'BF16' ? bf16ToF32(t.data as Uint16Array) : (t.data as Float32Array));
    shape.set(k, t.shape);
  }
  return { w, shape };
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c]!;
  return out;
}

/** An exported tensor in HF's layout again: Q/K rows un-permuted (llama), Conv1D transposed back (gpt2). */
function backToHf(f: GgufFile, arch: string, hfName: string, heads: number, kvHeads: number, hfShape: number[]): Float32Array {
  const name = ggufTensorName(arch as 'llama', hfName);
  let v = ggufTensorF32(f, name);
  const t = f.tensors.find((x) => x.name === name)!;
  if (arch === 'llama' && /\.(q|k)_proj\./.test(hfName)) {
    const n = /\.q_proj\./.test(hfName) ? heads : kvHeads;
    v = unpermuteQK(v, t.shape[0]!, t.shape[1] ?? 1, n);
  }
  if (arch === 'gpt2' && /\.(c_attn|c_proj|c_fc)\.weight$/.test(hfName)) {
    expect(t.shape).toEqual([hfShape[1], hfShape[0]]); // stored [out, in]
    v = transpose(v, t.shape[0]!, t.shape[1]!);
  } else expect(t.shape, name).toEqual(hfShape);
  return v;
}

/** An HF weight in the exported layout: Q/K rows permuted (llama), Conv1D transposed to [out, in] (gpt2). */
function toGgufLayout(arch: string, hfName: string, w: Float32Array, shape: number[], heads: number, kvHeads: number): Float32Array {
  if (arch === 'llama' && /\.(q|k)_proj\./.test(hfName)) return permuteQK(w, shape[0]!, shape[1] ?? 1, /\.q_proj\./.test(hfName) ? heads : kvHeads);
  if (arch === 'gpt2' && /\.(c_attn|c_proj|c_fc)\.weight$/.test(hfName)) return transpose(w, shape[0]!, shape[1]!);
  return w;
}

/** |got - want| within the rounding of the tensor's type (blocks of 32 along the stored rows for Q8_0). */
function expectWithinRounding(type: string, got: Float32Array, want: Float32Array, what: string): void {
  expect(got.length, what).toBe(want.length);
  if (type === 'F32') {
    const i = got.findIndex((g, k) => g !== want[k]);
    expect(i, `${what}: first difference at ${i}`).toBe(-1);
    return;
  }
  for (let b = 0; b < want.length; b += 32) {
    let amax = 0;
    for (let k = b; k < Math.min(b + 32, want.length); k++) amax = Math.max(amax, Math.abs(want[k]!));
    for (let k = b; k < Math.min(b + 32, want.length); k++) {
      const w = want[k]!;
      // f16: half an ulp (2^-11 relative); bf16: 2^-8; q8_0: half a step d = amax/127 plus the f16 rounding of d
      const tol = type === 'F16' ? Math.abs(w) * 2 ** -11 + 2 ** -25 : type === 'BF16' ? Math.abs(w) * 2 ** -8 : (amax / 127) * 0.5 + amax * 2 ** -11;
      if (!(Math.abs(got[k]! - w) <= tol)) expect.fail(`${what}[${k}]: ${got[k]} vs ${w} (${type}, tolerance ${tol})`);
    }
  }
}

const u = (f: GgufFile, k: string) => {
  const v = f.kv.get(k);
  return v && v.type !== 'array' ? v.value : undefined;
};

describe('every exported tensor is the HF weight (un-permuted), within its type’s rounding', () => {
  const modelCases = () => cases.filter((c) => c.kind === 'model' && !c.adapter);
  it('llama-gqa, llama-tied-rope3, qwen2, gpt2, ajuste-base-2m in every outtype', () => {
    let checked = 0;
    for (const c of modelCases()) {
      const f = files.get(c.name)!;
      const cfg = readModelConfig(c.model);
      const arch = u(f, 'general.architecture') as string;
      const hf = hfWeights(c.model);
      for (const [name, w] of hf.w) {
        const shape = hf.shape.get(name)!;
        const back = backToHf(f, arch, name, cfg.heads, cfg.kvHeads, shape);
        const type = f.tensors.find((t) => t.name === ggufTensorName(arch as 'llama', name))!.type.name;
        const is1d = shape.length === 1 || name === 'transformer.wpe.weight';
        expect(type, `${c.name} ${name}`).toBe(is1d ? 'F32' : { f32: 'F32', f16: 'F16', bf16: 'BF16', q8_0: 'Q8_0' }[c.outtype]);
        if (type === 'F32') expectWithinRounding(type, back, w, `${c.name} ${name}`);
        else expectWithinRounding(type, ggufTensorF32(f, ggufTensorName(arch as 'llama', name)), toGgufLayout(arch, name, w, shape, cfg.heads, cfg.kvHeads), `${c.name} ${name}`);
        checked++;
      }
      // nothing else but rope_freqs
      const extra = f.tensors.length - hf.w.size;
      expect(extra, c.name).toBe(f.tensors.some((t) => t.name === 'rope_freqs.weight') ? 1 : 0);
    }
    expect(checked).toBeGreaterThan(150);
  });
  it('the permutation puts each head’s rotary pairs side by side (and permuteQK/unpermuteQK are inverses)', () => {
    // one head of 4 dims: HF rows [x0, x1, y0, y1] (rotate_half pairs x_i with y_i) -> llama.cpp [x0, y0, x1, y1]
    expect(Array.from(permuteQK(Float32Array.from([0, 1, 2, 3]), 4, 1, 1))).toEqual([0, 2, 1, 3]);
    const w = Float32Array.from({ length: 8 * 3 }, (_, i) => i);
    expect(Array.from(permuteQK(w, 8, 3, 2)).slice(0, 12)).toEqual([0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]);
    expect(Array.from(unpermuteQK(permuteQK(w, 8, 3, 2), 8, 3, 2))).toEqual(Array.from(w));
  });
  it('tied embeddings: no output.weight; untied: output.weight is lm_head', () => {
    const tied = files.get('llama-tied-rope3-f32')!;
    expect(tied.tensors.some((t) => t.name === 'output.weight')).toBe(false);
    const untied = files.get('llama-gqa-f32')!;
    expect(Array.from(ggufTensorF32(untied, 'output.weight'))).toEqual(Array.from(hfWeights('test/fixtures/models/llama-gqa').w.get('lm_head.weight')!));
    expect(files.get('ajuste-base-2m-q8_0')!.tensors.some((t) => t.name === 'output.weight')).toBe(false);
  });
  it('llama3 rope scaling: rope_freqs.weight are the divisors that turn llama.cpp’s frequencies into transformers’', () => {
    const f = files.get('llama-tied-rope3-f32')!;
    const freqs = ggufTensorF32(f, 'rope_freqs.weight');
    expect(Array.from(freqs)).toEqual((golden.cases['llama-tied-rope3-f32']!.notes.rope_freqs as number[]).map(Math.fround));
    const c = readModelConfig('test/fixtures/models/llama-tied-rope3');
    const scaled = ropeInvFreq(c);
    const plain = ropeInvFreq({ ...c, ropeScaling: null });
    for (let i = 0; i < freqs.length; i++) expect(Math.abs(plain[i]! / freqs[i]! - scaled[i]!) / scaled[i]!).toBeLessThan(1e-6);
    expect(files.get('llama-gqa-f32')!.tensors.some((t) => t.name === 'rope_freqs.weight')).toBe(false);
  });
  it('rows that are not whole Q8_0 blocks fall back to F16, as the converter does', () => {
    const f = files.get('lora-q8_0')!;
    for (const t of f.tensors) expect(t.type.name, t.name).toBe(t.name.endsWith('.lora_a') ? 'Q8_0' : 'F16'); // lora_b rows are r = 4 wide
  });
});

describe('metadata', () => {
  it('llama: hyperparameters, file type, quantization version, no tokenizer', () => {
    for (const [name, ft] of [['llama-gqa-f32', 0], ['llama-gqa-f16', 1], ['llama-gqa-q8_0', 7], ['llama-gqa-bf16', 32]] as const) {
      const f = files.get(name)!;
      expect(u(f, 'general.file_type'), name).toBe(ft);
      expect(u(f, 'general.quantization_version')).toBe(2);
    }
    const f = files.get('llama-gqa-f32')!;
    const want: Record<string, unknown> = {
      'general.architecture': 'llama',
      'general.type': 'model',
      'general.name': 'llama-gqa',
      'llama.block_count': 2,
      'llama.context_length': 2048,
      'llama.embedding_length': 64,
      'llama.feed_forward_length': 96,
      'llama.attention.head_count': 4,
      'llama.attention.head_count_kv': 2,
      'llama.rope.freq_base': 10000,
      'llama.attention.layer_norm_rms_epsilon': Math.fround(1e-6),
      'llama.attention.key_length': 16,
      'llama.attention.value_length': 16,
      'llama.vocab_size': 128,
      'llama.rope.dimension_count': 16,
      'tokenizer.ggml.model': 'none',
    };
    for (const [k, v] of Object.entries(want)) expect(u(f, k), k).toBe(v);
    const r3 = files.get('llama-tied-rope3-f32')!;
    expect(u(r3, 'llama.rope.freq_base')).toBe(500000);
    expect(u(r3, 'llama.context_length')).toBe(131072);
  });
  it('qwen2 (biases kept F32, not permuted) and gpt2', () => {
    const q = files.get('qwen2-q8_0')!;
    expect(u(q, 'general.architecture')).toBe('qwen2');
    expect(u(q, 'qwen2.rope.freq_base')).toBe(1e6);
    expect(q.kv.has('qwen2.attention.key_length')).toBe(false); // Qwen2Config has no head_dim
    expect(q.tensors.find((t) => t.name === 'blk.0.attn_q.bias')!.type.name).toBe('F32');
    const g = files.get('gpt2-f32')!;
    expect(u(g, 'gpt2.attention.layer_norm_epsilon')).toBe(Math.fround(1e-5));
    expect(u(g, 'gpt2.context_length')).toBe(64);
    expect(u(g, 'gpt2.feed_forward_length')).toBe(256);
    expect(g.tensors.find((t) => t.name === 'position_embd.weight')!.type.name).toBe('F32');
    expect(files.get('gpt2-q8_0')!.tensors.find((t) => t.name === 'position_embd.weight')!.type.name).toBe('F32');
  });
});

describe('tokenizers', () => {
  const arr = (f: GgufFile, k: string) => {
    const v = f.kv.get(k);
    if (v?.type !== 'array') throw new Error(`${k} is not an array`);
    return Array.from(v.value as ArrayLike<unknown>);
  };
  it('ajuste-base-2m: every token, its type, the merges, special ids, the chat template', () => {
    const f = files.get('ajuste-base-2m-q8_0')!;
    const tj = JSON.parse(readFileSync('models/ajuste-base-2m/tokenizer.json', 'utf8'));
    const tokens = arr(f, 'tokenizer.ggml.tokens') as string[];
    expect(tokens.length).toBe(4096);
    for (const [t, id] of Object.entries(tj.model.vocab as Record<string, number>)) expect(tokens[id]).toBe(t);
    const types = arr(f, 'tokenizer.ggml.token_type');
    expect(types.slice(4093)).toEqual([TOKEN_TYPE.CONTROL, TOKEN_TYPE.CONTROL, TOKEN_TYPE.CONTROL]);
    expect(types.slice(0, 4093).every((t) => t === TOKEN_TYPE.NORMAL)).toBe(true);
    expect(arr(f, 'tokenizer.ggml.merges')).toEqual(tj.model.merges);
    expect(u(f, 'tokenizer.ggml.eos_token_id')).toBe(4093);
    expect(u(f, 'tokenizer.ggml.padding_token_id')).toBe(4093);
    expect(f.kv.has('tokenizer.ggml.bos_token_id')).toBe(false);
    expect(f.kv.has('tokenizer.ggml.add_bos_token')).toBe(false); // llama.cpp's gpt-2 adds no BOS by default
    expect(u(f, 'tokenizer.chat_template')).toBe(JSON.parse(readFileSync('models/ajuste-base-2m/tokenizer_config.json', 'utf8')).chat_template);
    expect(u(f, 'tokenizer.ggml.pre')).toBe('gpt-2');
  });
  it('the check hash of CHKTXT agrees with an independent encoder (tools/fixtures/gguf.py) for both tokenizers', () => {
    expect(preTokenizerHash(Tokenizer.fromFolder('models/ajuste-base-2m'))).toBe(golden.cases['ajuste-base-2m-q8_0']!.notes.chkhsh);
    expect(preTokenizerHash(Tokenizer.fromFolder(inputs.qwen3))).toBe(golden.cases['qwen3-vocab']!.notes.chkhsh);
  });
  it('Qwen3: control and user-defined added tokens, padding to vocab_size, ids from config.json, pre qwen2', () => {
    const f = files.get('qwen3-vocab')!;
    expect(f.tensors.length).toBe(0);
    const tokens = arr(f, 'tokenizer.ggml.tokens') as string[];
    const types = arr(f, 'tokenizer.ggml.token_type') as number[];
    expect(tokens.length).toBe(151936);
    expect([tokens[151644], types[151644]]).toEqual(['<|im_start|>', TOKEN_TYPE.CONTROL]);
    expect([tokens[151659], types[151659]]).toEqual(['<|fim_prefix|>', TOKEN_TYPE.CONTROL]); // not special, but looks it
    expect([tokens[151667], types[151667]]).toEqual(['<think>', TOKEN_TYPE.USER_DEFINED]);
    expect([tokens[151669], types[151669]]).toEqual(['[PAD151669]', TOKEN_TYPE.UNUSED]);
    expect([tokens[151935], types[151935]]).toEqual(['[PAD151935]', TOKEN_TYPE.UNUSED]);
    expect(u(f, 'tokenizer.ggml.pre')).toBe('qwen2');
    expect([u(f, 'tokenizer.ggml.bos_token_id'), u(f, 'tokenizer.ggml.eos_token_id'), u(f, 'tokenizer.ggml.padding_token_id')]).toEqual([151643, 151645, 151643]);
    expect(u(f, 'tokenizer.ggml.add_bos_token')).toBe(false);
    expect((arr(f, 'tokenizer.ggml.merges') as string[]).slice(0, 2)).toEqual(['Ġ Ġ', 'ĠĠ ĠĠ']);
  });
  it('refuses what it cannot write, saying what to do', () => {
    const dir = join(tmpRoot, 'spm');
    mkdirSync(dir, { recursive: true });
    const tj = JSON.parse(readFileSync('models/ajuste-base-2m/tokenizer.json', 'utf8'));
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ ...tj, model: { ...tj.model, byte_fallback: true } }));
    expect(() => ggufVocab(dir, { vocabSize: 4096, config: {} })).toThrow(/byte_fallback whose decoder is not a Sequence/);
    expect(() => ggufVocab(dir, { vocabSize: 4096, config: {}, arch: 'qwen2' })).toThrow(/byte_fallback \(SentencePiece style\) on a qwen2 model/);
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ ...tj, pre_tokenizer: { type: 'Whitespace' } }));
    expect(() => ggufVocab(dir, { vocabSize: 4096, config: {} })).toThrow(/cannot tell which llama.cpp pre-tokenizer/);
    expect(ggufVocab(dir, { vocabSize: 4096, config: {}, pre: 'gpt-2' }).pre).toBe('gpt-2');
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
    expect(() => ggufVocab(dir, { vocabSize: 4000, config: {} })).toThrow(/token id 4095, but config.json's vocab_size is 4000/);
    writeFileSync(join(dir, 'tokenizer.model'), '');
    expect(() => ggufVocab(dir, { vocabSize: 4096, config: {} })).toThrow(/has no pieces: not a SentencePiece model/);
    expect(() => ggufVocab(dir, { vocabSize: 4096, config: {}, arch: 'gpt2' })).toThrow(/SentencePiece tokenizer.model, on a gpt2 model/);
    const { model } = loadModelFolder('test/fixtures/models/llama-gqa');
    expect(() => exportGguf(model, join(tmpRoot, 'x.gguf'), { modelDir: 'test/fixtures/models/llama-gqa' })).toThrow(/has no tokenizer.json.*/);
  });
  it('a reward model (score head, no lm_head) is refused', () => {
    const dir = join(tmpRoot, 'reward');
    mkdirSync(dir, { recursive: true });
    copyFileSync('test/fixtures/models/llama-gqa/config.json', join(dir, 'config.json'));
    const st = readSafetensors('test/fixtures/models/llama-gqa/model.safetensors', { copy: true });
    const t: Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> = { 'score.weight': { dtype: 'F32', shape: [1, 64], data: new Float32Array(64) } };
    for (const [k, v] of st.tensors) if (k !== 'lm_head.weight') t[k] = v;
    writeSafetensors(join(dir, 'model.safetensors'), t, { format: 'pt' });
    const { model } = loadModelFolder(dir);
    expect(() => exportGguf(model, join(tmpRoot, 'r.gguf'), { modelDir: dir, tokenizer: false })).toThrow(/is a reward model \(a score head and no lm_head\)/);
  });
});

describe('adapters', () => {
  const loraCase = cases.find((c) => c.name === 'lora-f32') as GgufExportCase;
  /** s·B·A in f64, per module, from the PEFT file. */
  function peftDelta(adapterDir: string, mod: string, s: number): { delta: Float64Array; out: number; inF: number } {
    const st = readSafetensors(join(adapterDir, 'adapter_model.safetensors'), { copy: true });
    const A = st.tensors.get(`base_model.model.${mod}.lora_A.weight`)!;
    const B = st.tensors.get(`base_model.model.${mod}.lora_B.weight`)!;
    const [r, inF] = A.shape as [number, number];
    const out = B.shape[0]!;
    const a = A.data as Float32Array;
    const b = B.data as Float32Array;
    const delta = new Float64Array(out * inF);
    for (let o = 0; o < out; o++) for (let q = 0; q < r; q++) for (let i = 0; i < inF; i++) delta[o * inF + i]! += s * b[o * r + q]! * a[q * inF + i]!;
    return { delta, out, inF };
  }
  /** (alpha / r) · lora_b · lora_a from the GGUF file, rows un-permuted for q/k. */
  function ggufDelta(f: GgufFile, mod: string, heads: number): Float64Array {
    const base = ggufTensorName('llama', `${mod}.weight`);
    const ta = f.tensors.find((t) => t.name === `${base}.lora_a`)!;
    const tb = f.tensors.find((t) => t.name === `${base}.lora_b`)!;
    const [r, inF] = ta.shape as [number, number];
    const out = tb.shape[0]!;
    expect(tb.shape[1]).toBe(r);
    const a = ggufTensorF32(f, ta.name);
    let b = ggufTensorF32(f, tb.name);
    if (heads) b = unpermuteQK(b, out, r, heads);
    const s = (u(f, 'adapter.lora.alpha') as number) / r;
    const delta = new Float64Array(out * inF);
    for (let o = 0; o < out; o++) for (let q = 0; q < r; q++) for (let i = 0; i < inF; i++) delta[o * inF + i]! += s * b[o * r + q]! * a[q * inF + i]!;
    return delta;
  }
  const MODS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
  const modPath = (layer: number, m: string) => `model.layers.${layer}.${m.endsWith('_proj') && ['gate_proj', 'up_proj', 'down_proj'].includes(m) ? 'mlp' : 'self_attn'}.${m}`;

  it('LoRA: names, shapes (ne [in, r] and [r, out]), alpha, general.type adapter', () => {
    const f = files.get('lora-f32')!;
    expect(u(f, 'general.type')).toBe('adapter');
    expect(u(f, 'adapter.type')).toBe('lora');
    expect(u(f, 'adapter.lora.alpha')).toBe(8);
    expect(u(f, 'general.architecture')).toBe('llama');
    expect(f.tensors.length).toBe(2 * 7 * 2);
    const a = f.tensors.find((t) => t.name === 'blk.1.ffn_down.weight.lora_a')!;
    const b = f.tensors.find((t) => t.name === 'blk.1.ffn_down.weight.lora_b')!;
    expect([a.ne, b.ne, a.type.name]).toEqual([[96, 4], [4, 64], 'F32']);
  });
  it('LoRA: (alpha/r)·lora_b·lora_a, un-permuted, is PEFT’s s·B·A for every module', () => {
    const f = files.get('lora-f32')!;
    for (const layer of [0, 1]) {
      for (const m of MODS) {
        const mod = modPath(layer, m);
        const heads = m === 'q_proj' ? 4 : m === 'k_proj' ? 2 : 0;
        const want = peftDelta(loraCase.adapter!, mod, 2);
        const got = ggufDelta(f, mod, heads);
        for (let i = 0; i < got.length; i++) if (Math.abs(got[i]! - want.delta[i]!) > 1e-6) expect.fail(`${mod}[${i}]: ${got[i]} vs ${want.delta[i]}`);
      }
    }
  });
  it('rsLoRA: alpha/√r is folded into lora_b (llama.cpp scales by alpha/r)', () => {
    const { model } = loadModelFolder('test/fixtures/models/llama-gqa');
    const a = loadAdapter(inputs.loraRs, model);
    const out = join(tmpRoot, 'rs.gguf');
    const r = exportLoraGguf(model, a, out, { adapterDir: inputs.loraRs });
    expect(r.rescaled.length).toBe(14);
    const f = readGguf(out);
    expect(u(f, 'adapter.lora.alpha')).toBe(8);
    const mod = modPath(0, 'q_proj');
    const want = peftDelta(inputs.loraRs, mod, 8 / Math.sqrt(4));
    const got = ggufDelta(f, mod, 4);
    for (let i = 0; i < got.length; i++) expect(Math.abs(got[i]! - want.delta[i]!)).toBeLessThan(1e-6);
  });
  it('DoRA and extra trained tensors are refused with what to do instead', () => {
    const dir = join(tmpRoot, 'dora');
    mkdirSync(dir, { recursive: true });
    const st = readSafetensors('test/fixtures/lora/dora.safetensors', { copy: true });
    const t: Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> = {};
    for (const [k, v] of st.tensors) if (/^base_model\.model\..*(lora_[AB]\.weight|lora_magnitude_vector)$/.test(k)) t[k] = v;
    writeSafetensors(join(dir, 'adapter_model.safetensors'), t, { format: 'pt' });
    writeFileSync(join(dir, 'adapter_config.json'), adapterConfigJson(loraConfig({ r: 4, lora_alpha: 8, use_dora: true, target_modules: MODS }), { baseModel: null, targetModules: MODS }));
    const { model } = loadModelFolder('test/fixtures/models/llama-gqa');
    const a = loadAdapter(dir, model);
    expect(() => exportLoraGguf(model, a, join(tmpRoot, 'dora.gguf'), { adapterDir: dir })).toThrow(/DoRA.*\n?/);
  });
  it('a merged export is the merged HF model, tensor for tensor', () => {
    const f = files.get('llama-gqa-merged-f32')!;
    const { model } = loadModelFolder('test/fixtures/models/llama-gqa');
    loadAdapter(inputs.loraPlain, model);
    const merged = mergedStateDict(model, 'F32');
    const base = hfWeights('test/fixtures/models/llama-gqa');
    let changed = 0;
    for (const [name, t] of Object.entries(merged)) {
      const got = backToHf(f, 'llama', name, 4, 2, t.shape);
      expectWithinRounding('F32', got, t.data as Float32Array, name);
      if (got.some((v, i) => v !== base.w.get(name)![i])) changed++;
    }
    expect(changed).toBe(14); // the 14 adapted projections differ from the base
  });
});
