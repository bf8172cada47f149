/**
 * A Hugging Face byte-level BPE tokenizer (GPT-2, Llama 3, Qwen, SmolLM, ajuste's own) as llama.cpp's GGUF
 * metadata, as convert_hf_to_gguf.py writes it (TextModel._set_vocab_gpt2 = get_vocab_base +
 * get_vocab_base_pre + gguf.SpecialVocab(load_merges=True)):
 *
 *   tokenizer.ggml.model "gpt2", tokenizer.ggml.pre, tokenizer.ggml.tokens (the byte-level strings, "Ġthe"),
 *   tokenizer.ggml.token_type (i32: 1 normal, 3 control, 4 user-defined, 5 unused), tokenizer.ggml.merges,
 *   the special token ids (u32) and add_bos/add_eos flags found in tokenizer_config.json, tokenizer.json's
 *   post-processor and config.json, and tokenizer.chat_template.
 *
 * SentencePiece tokenizers (Llama 2, TinyLlama, Mistral 7B v0.1-v0.3, Code Llama) become a "llama" vocabulary:
 * tokenizer.ggml.model "llama", tokenizer.ggml.pre "default", tokens, tokenizer.ggml.scores (f32) and token types
 * with byte tokens (<0x00>..<0xFF>, type 6), no merges. LlamaModel.set_vocab tries, in this order:
 * - _set_vocab_sentencepiece, when the folder has a tokenizer.model (read here by io/sentencepiece.ts): the pieces,
 *   their scores and types, then added_tokens.json and tokenizer_config.json's added_tokens_decoder on top;
 * - _set_vocab_llama_hf (gguf.LlamaHfVocab), when tokenizer.json is a BPE with byte_fallback and a Sequence decoder:
 *   the tokens and types as LlamaHfVocab gives them. Its scores are a placeholder (-1000 for every token), with which
 *   llama.cpp's SPM tokenizer (it merges the adjacent pair whose result scores highest) merges left to right instead
 *   of in the BPE's order; ajuste writes scores from the merges instead (see llamaHfScores);
 * - _set_vocab_gpt2 otherwise (the byte-level path above).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { type GgufValue, gv } from '../io/gguf.js';
import { readSentencePieceModel, SP_TYPE } from '../io/sentencepiece.js';
import { Tokenizer } from './tokenizer.js';

type Json = Record<string, unknown>;

/** llama.cpp's token types (llama_token_type / gguf.TokenType). */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** The text convert_hf_to_gguf.py tokenizes to identify a pre-tokenizer (get_vocab_base_pre's chktxt). */
export const CHKTXT =
  '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL';

/**
 * sha256 of str(ids) of CHKTXT -> tokenizer.ggml.pre, copied from convert_hf_to_gguf.py's get_vocab_base_pre for
 * the tokenizers of the architectures ajuste exports (llama, mistral, qwen2, gpt2).
 */
const KNOWN_PRE_HASHES: Record<string, string> = {
  '0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5': 'llama-bpe', // meta-llama/Meta-Llama-3-8B
  c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d: 'smaug-bpe', // abacusai/Smaug-Llama-3-70B-Instruct
  '855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249': 'smollm', // HuggingFaceTB/SmolLM-135M
  e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea: 'qwen2', // Qwen/Qwen1.5-7B (Qwen2, 2.5, 3 too)
  d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c: 'qwen2', // Qwen/Qwen3-Embedding-0.6B
  b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5: 'deepseek-r1-qwen', // deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
  '3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454': 'gpt-2', // openai-community/gpt2
  '63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e': 'tekken', // mistralai/Mistral-Nemo-Base-2407
};

/** The Split regexes of Llama 3's and Qwen2's tokenizer.json (llama-vocab.cpp quotes them next to its own). */
const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** sha256 of the ids of CHKTXT, formatted as Python's str(list) (the converter's chkhsh). */
export function preTokenizerHash(tok: Tokenizer): string {
  return createHash('sha256').update(`[${tok.encode(CHKTXT).join(', ')}]`).digest('hex');
}

/**
 * tokenizer.ggml.pre names the split llama.cpp applies before BPE merges (llama-vocab.cpp maps each name to its
 * regexes). The converter identifies a tokenizer by the hash of CHKTXT's ids and refuses unknown hashes; a
 * tokenizer trained here (ajuste-base-2m, `ajuste tokenizer train`) has a new vocabulary, so a new hash. When
 * the hash is unknown the pre-tokenizer of tokenizer.json decides, and only when it is exactly the split llama.cpp
 * does for a name:
 * - ByteLevel with use_regex (GPT-2's regex, no prefix space), alone -> "gpt-2": llama.cpp's GPT2 pre-type uses
 *   that same regex ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)) and adds no BOS.
 *   This is ajuste-base-2m's pre-tokenizer. (llama.cpp's gpt-2 also cleans up spaces before punctuation when
 *   detokenizing, as clean_up_tokenization_spaces=true would; the ids are the same.)
 * - Digits(individual) then ByteLevel with use_regex -> "smollm"
 * - Split(Llama 3's regex) then ByteLevel without regex -> "llama-bpe"
 * - Split(Qwen2's regex) then ByteLevel without regex -> "qwen2" (Qwen3's tokenizer; its hash is also known)
 */
export function choosePre(tj: Json, tok: Tokenizer): { pre: string; reason: string } {
  const hash = preTokenizerHash(tok);
  const known = KNOWN_PRE_HASHES[hash];
  if (known) return { pre: known, reason: `the tokenizer's check hash ${hash.slice(0, 12)}... is convert_hf_to_gguf.py's '${known}'` };
  const pt = tj.pre_tokenizer as Json | null | undefined;
  const steps = (pt?.type === 'Sequence' ? (pt.pretokenizers as Json[]) : pt ? [pt] : []) ?? [];
  const isByteLevel = (s: Json | undefined, regex: boolean) => s?.type === 'ByteLevel' && s.add_prefix_space === false && (s.use_regex ?? true) === regex;
  const isSplit = (s: Json | undefined, re: string) => s?.type === 'Split' && (s.pattern as Json | undefined)?.Regex === re && s.behavior === 'Isolated' && s.invert === false;
  const why = `the check hash ${hash.slice(0, 12)}... is not one convert_hf_to_gguf.py knows, and tokenizer.json's pre-tokenizer is`;
  if (steps.length === 1 && isByteLevel(steps[0], true)) return { pre: 'gpt-2', reason: `${why} GPT-2's ByteLevel regex` };
  if (steps.length === 2 && steps[0]?.type === 'Digits' && steps[0].individual_digits === true && isByteLevel(steps[1], true)) return { pre: 'smollm', reason: `${why} Digits + ByteLevel (SmolLM's)` };
  if (steps.length === 2 && isSplit(steps[0], LLAMA3_SPLIT) && isByteLevel(steps[1], false)) return { pre: 'llama-bpe', reason: `${why} Llama 3's Split` };
  if (steps.length === 2 && isSplit(steps[0], QWEN2_SPLIT) && isByteLevel(steps[1], false)) return { pre: 'qwen2', reason: `${why} Qwen2's Split` };
  throw new UserError(
    `cannot tell which llama.cpp pre-tokenizer matches this tokenizer: its check hash ${hash} is not one convert_hf_to_gguf.py knows, and its pre-tokenizer (${JSON.stringify(pt).slice(0, 160)}) is none of GPT-2's, SmolLM's, Llama 3's or Qwen2's`,
    "if you know it, pass --tokenizer-pre NAME (a name llama.cpp's llama-vocab.cpp accepts, e.g. 'gpt-2', 'llama-bpe', 'qwen2')",
  );
}

/** TextModel.does_token_look_special: added tokens some models forget to mark special. */
function looksSpecial(t: string): boolean {
  return (
    ['<pad>', '<mask>', '<2mass>', '[@BOS@]'].includes(t) ||
    (t.startsWith('<|') && t.endsWith('|>')) ||
    (t.startsWith('<｜') && t.endsWith('｜>')) ||
    (t.startsWith('<unused') && t.endsWith('>'))
  );
}

function readJson(path: string, what: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new UserError(`${path}: cannot read ${what}: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new UserError(`${path}: ${what} is not a JSON object`);
  return v as Json;
}

interface AddedToken {
  id: number;
  content: string;
  special?: boolean;
  normalized?: boolean;
}

/** The special-token keys llama.cpp reads, per gguf.SpecialVocab type (cls has no GGUF key and is skipped, as there). */
const ID_KEYS: Record<string, string> = {
  bos: 'tokenizer.ggml.bos_token_id',
  eos: 'tokenizer.ggml.eos_token_id',
  unk: 'tokenizer.ggml.unknown_token_id',
  sep: 'tokenizer.ggml.seperator_token_id',
  pad: 'tokenizer.ggml.padding_token_id',
  mask: 'tokenizer.ggml.mask_token_id',
  eot: 'tokenizer.ggml.eot_token_id',
  eom: 'tokenizer.ggml.eom_token_id',
};
const ADD_KEYS: Record<string, string> = { bos: 'tokenizer.ggml.add_bos_token', eos: 'tokenizer.ggml.add_eos_token', sep: 'tokenizer.ggml.add_sep_token' };

/**
 * gguf.SpecialVocab(dir, load_merges=True) minus the merges: special token ids (tokenizer_config.json's
 * `<type>_token` looked up among tokenizer.json's added tokens, then config.json's `<type>_token_id`), add_bos /
 * add_eos (tokenizer_config.json, or read off a TemplateProcessing / RobertaProcessing post-processor) and the chat
 * template.
 */
function specialVocab(dir: string, tj: Json, tcIn: Json | null, config: Json, nVocab?: number): { ids: Map<string, number>; add: Map<string, boolean>; chatTemplate: unknown } {
  const types = ['bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask'];
  const ids = new Map<string, number>();
  const add = new Map<string, boolean>();
  const set = (typ: string, id: unknown) => {
    if (typeof id !== 'number' || !Number.isInteger(id)) return;
    if (id < 0) throw new UserError(`${dir}: invalid id ${id} for the ${typ} token`);
    // SpecialVocab(n_vocab=...) skips ids past the vocabulary (with a warning)
    if (nVocab !== undefined && id >= nVocab) return;
    if (!ids.has(typ)) ids.set(typ, id);
  };
  const added = (tj.added_tokens as AddedToken[] | undefined) ?? [];
  // Python's `if tokenizer_config:` is false for a missing or empty file
  const tc = tcIn && Object.keys(tcIn).length > 0 ? { ...tcIn } : null;
  let bos = tc?.bos_token;
  let eos = tc?.eos_token;
  let cls = tc?.cls_token;
  let sep = tc?.sep_token;
  if (!bos && cls && tc) tc.bos_token = bos = cls;
  if (!eos && sep && tc) tc.eos_token = eos = sep;
  const pp = tj.post_processor as Json | null | undefined;
  for (const proc of pp ? ((pp.processors as Json[] | undefined) ?? [pp]) : []) {
    if (proc.type === 'RobertaProcessing') {
      add.set('bos', true).set('eos', true).set('sep', true);
      if (!cls && tc) tc.cls_token = cls = ((proc.cls as unknown[]) ?? [bos])[0];
      if (!sep && tc) tc.sep_token = sep = ((proc.sep as unknown[]) ?? [eos])[0];
      continue;
    }
    if (proc.type !== 'TemplateProcessing') continue;
    const single = (proc.single as Json[] | undefined) ?? [];
    const idOf = (x: Json | undefined) => (x?.SpecialToken as Json | undefined)?.id as string | undefined;
    let first: string | undefined;
    let last: string | undefined;
    if (single.length > 1) {
      first = idOf(single[0]);
      if (first) {
        if (!tc) bos = first;
        add.set('bos', first === bos || first === cls);
      }
      last = idOf(single[single.length - 1]);
      if (last) {
        if (!tc) eos = last;
        else if (last !== eos) {
          // the post-processor ends with another token than eos_token: the old eos becomes eot (or eom)
          if (!types.includes('eot')) {
            types.push('eot');
            tc.eot_token = eos;
          } else if (!types.includes('eom')) {
            types.push('eom');
            tc.eom_token = eos;
          }
          tc.eos_token = eos = last;
        }
        add.set('eos', last === eos);
      }
    }
    // the pair template, "A [sep] [eos] B" between the single template's first and last tokens: add_sep
    let pair = (proc.pair as Json[] | undefined) ?? [];
    if (pair.length === 0) continue;
    pair = pair.slice(first && idOf(pair[0]) === first ? 1 : 0, last && idOf(pair[pair.length - 1]) === last ? -1 : undefined);
    if (pair.length === 0) continue;
    const seqOf = (x: Json | undefined) => (x?.Sequence as Json | undefined)?.id;
    if (seqOf(pair[0]) !== 'A' || seqOf(pair[pair.length - 1]) !== 'B') continue;
    pair = pair.slice(1, -1);
    if (pair.length === 0) continue;
    let addSep = false;
    const e0 = idOf(pair[0]);
    if (e0 && (e0 === sep || e0 === eos) && !last) addSep = true;
    if (pair.length === 2) {
      const e1 = idOf(pair[1]);
      if (e1 && (e1 === sep || e1 === eos)) addSep = true;
    }
    add.set('sep', addSep);
    if (addSep && !sep && tc) tc.sep_token = sep = eos;
  }
  let chatTemplate: unknown = null;
  if (tc) {
    let alt: unknown = null;
    if (existsSync(join(dir, 'chat_template.jinja'))) alt = readFileSync(join(dir, 'chat_template.jinja'), 'utf8');
    else if (existsSync(join(dir, 'chat_template.json'))) alt = readJson(join(dir, 'chat_template.json'), 'the chat template').chat_template ?? null;
    chatTemplate = 'chat_template' in tc ? tc.chat_template : alt;
    for (const typ of types) {
      const flag = tc[`add_${typ}_token`];
      if (typeof flag === 'boolean') add.set(typ, flag);
      const entry = tc[`${typ}_token`];
      const content = typeof entry === 'string' ? entry : entry && typeof entry === 'object' ? (entry as Json).content : undefined;
      if (typeof content !== 'string') continue;
      set(typ, added.find((a) => a.content === content)?.id);
    }
  }
  const text = (config.text_config ?? {}) as Json;
  for (const typ of types) set(typ, config[`${typ}_token_id`] ?? text[`${typ}_token_id`]);
  return { ids, add, chatTemplate };
}

export interface GgufVocabOptions {
  /** config.json's vocab_size: ids without a token become "[PAD<id>]" (type unused), as the converter writes them. */
  vocabSize: number;
  /** The raw config.json (special token ids it names are used when tokenizer_config.json names none). */
  config: Json;
  /** Write tokenizer.ggml.add_space_prefix from tokenizer_config's add_prefix_space (LlamaModel.set_vocab does). */
  addSpacePrefix?: boolean;
  /** A tokenizer.ggml.pre to use instead of the one chosen. */
  pre?: string;
  /**
   * The GGUF architecture: 'llama' (default) reads SentencePiece vocabularies as LlamaModel.set_vocab does; for the
   * others a tokenizer.model or a byte_fallback BPE is refused (ajuste writes their byte-level BPE only).
   */
  arch?: 'llama' | 'qwen2' | 'gpt2';
}

export interface GgufVocab {
  kv: [string, GgufValue][];
  pre: string;
  /** Why that pre-tokenizer name. */
  preReason: string;
  tokens: number;
  merges: number;
  /** tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece). */
  model: 'gpt2' | 'llama';
}

/** The tokenizer metadata of the model folder `dir` (tokenizer.model, tokenizer.json, tokenizer_config.json, chat_template.*). */
export function ggufVocab(dir: string, opts: GgufVocabOptions): GgufVocab {
  const tjPath = join(dir, 'tokenizer.json');
  const arch = opts.arch ?? 'llama';
  if (existsSync(join(dir, 'tokenizer.model'))) {
    if (arch === 'llama') return sentencePieceVocab(dir, opts);
    throw new UserError(
      `${dir} has a SentencePiece tokenizer.model, on a ${arch} model: ajuste writes SentencePiece vocabularies for llama models only`,
      'pass --no-tokenizer to export the weights alone, or convert this model\'s vocabulary with llama.cpp\'s convert_hf_to_gguf.py',
    );
  }
  if (!existsSync(tjPath)) throw new UserError(`${dir} has no tokenizer.json, so the GGUF file would have no vocabulary`, 'export from the folder the model was saved to with its tokenizer, or pass --no-tokenizer to write the weights alone');
  const tj = readJson(tjPath, 'the tokenizer');
  const model = (tj.model ?? {}) as Json;
  if (model.type !== 'BPE') throw new UserError(`${tjPath}: a ${String(model.type)} tokenizer; ajuste exports BPE vocabularies only (byte-level, or SentencePiece-style with byte_fallback)`, 'pass --no-tokenizer to export the weights alone');
  if (model.byte_fallback === true) {
    const decoder = tj.decoder as Json | null | undefined;
    if (arch === 'llama' && decoder?.type === 'Sequence') return llamaHfVocab(dir, tj, opts);
    throw new UserError(
      arch === 'llama'
        ? `${tjPath}: a BPE with byte_fallback whose decoder is not a Sequence; convert_hf_to_gguf.py (gguf.LlamaHfVocab) reads only the Llama 2 layout, and ajuste does the same`
        : `${tjPath}: a BPE with byte_fallback (SentencePiece style) on a ${arch} model; ajuste writes SentencePiece vocabularies for llama models only`,
      'pass --no-tokenizer to export the weights alone',
    );
  }
  const tcPath = join(dir, 'tokenizer_config.json');
  const tc = existsSync(tcPath) ? readJson(tcPath, 'the tokenizer config') : null;
  const tok = Tokenizer.fromFolder(dir);
  const { pre, reason } = opts.pre ? { pre: opts.pre, reason: 'given with --tokenizer-pre' } : choosePre(tj, tok);

  // get_vocab_base: the vocabulary with the added tokens, by id; holes become [PAD<id>].
  const byToken = new Map<string, number>(Object.entries((model.vocab ?? {}) as Record<string, number>));
  const added = (tj.added_tokens as AddedToken[] | undefined) ?? [];
  const addedByContent = new Map<string, AddedToken>();
  for (const a of added) {
    byToken.set(a.content, a.id);
    addedByContent.set(a.content, a);
  }
  const byId = new Map<number, string>();
  let maxId = -1;
  for (const [t, id] of byToken) {
    byId.set(id, t);
    maxId = Math.max(maxId, id);
  }
  if (maxId >= opts.vocabSize) {
    throw new UserError(`${tjPath} has token id ${maxId}, but config.json's vocab_size is ${opts.vocabSize}`, 'is the tokenizer from the same model as config.json?');
  }
  const tokens: string[] = new Array(opts.vocabSize);
  const types = new Int32Array(opts.vocabSize);
  for (let i = 0; i < opts.vocabSize; i++) {
    let t = byId.get(i);
    if (t === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = TOKEN_TYPE.UNUSED;
      continue;
    }
    const a = addedByContent.get(t);
    if (!a) types[i] = TOKEN_TYPE.NORMAL;
    else {
      // llama.cpp takes control and user-defined tokens as already normalized: round-trip the raw ones
      if (a.normalized === false) t = tok.decode(tok.encode(t, { addSpecialTokens: false }));
      if (a.special === true || looksSpecial(t)) types[i] = TOKEN_TYPE.CONTROL;
      else {
        t = t.replaceAll('\u2581', ' ');
        types[i] = TOKEN_TYPE.USER_DEFINED;
      }
    }
    tokens[i] = t;
  }
  const kv: [string, GgufValue][] = [
    ['tokenizer.ggml.model', gv.str('gpt2')],
    ['tokenizer.ggml.pre', gv.str(pre)],
    ['tokenizer.ggml.tokens', gv.array('string', tokens)],
    ['tokenizer.ggml.token_type', gv.array('i32', types)],
  ];
  // merges: "a b" strings; the list-of-pairs form (tokenizers >= 0.20) joined the way SpecialVocab does, a space
  // inside a part written as U+0120 so the pair still splits at the one real space
  const rawMerges = (model.merges as unknown[] | undefined) ?? [];
  const merges = rawMerges.map((m, i) => {
    if (typeof m === 'string') return m;
    if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') return m.map((p: string) => p.replaceAll(' ', '\u0120')).join(' ');
    throw new UserError(`${tjPath}: model.merges[${i}] is neither "a b" nor ["a", "b"]`);
  });
  if (merges.length === 0) throw new UserError(`${tjPath} has no merges; llama.cpp cannot load a BPE vocabulary without them`);
  kv.push(['tokenizer.ggml.merges', gv.array('string', merges)]);
  kv.push(...specialKv(specialVocab(dir, tj, tc, opts.config)));
  if (opts.addSpacePrefix && tc && typeof tc.add_prefix_space === 'boolean') kv.push(['tokenizer.ggml.add_space_prefix', gv.bool(tc.add_prefix_space)]);
  return { kv, pre, preReason: reason, tokens: tokens.length, merges: merges.length, model: 'gpt2' };
}

/** SpecialVocab.add_to_gguf: the special token ids, the add_* flags and the chat template(s). */
function specialKv(sv: ReturnType<typeof specialVocab>): [string, GgufValue][] {
  const kv: [string, GgufValue][] = [];
  for (const [typ, id] of sv.ids) if (ID_KEYS[typ]) kv.push([ID_KEYS[typ]!, gv.u32(id)]);
  for (const [typ, flag] of sv.add) if (ADD_KEYS[typ]) kv.push([ADD_KEYS[typ]!, gv.bool(flag)]);
  const ct = sv.chatTemplate;
  if (typeof ct === 'string' && ct) kv.push(['tokenizer.chat_template', gv.str(ct)]);
  else if (Array.isArray(ct)) {
    // named templates: tokenizer.chat_template.<name> (name reduced to [A-Za-z0-9_]), their names, and the default
    let fallback: string | null = null;
    const names: string[] = [];
    for (const c of ct as Json[]) {
      const name = String(c.name ?? '').replace(/[^A-Za-z0-9]/g, '_');
      if (!name || typeof c.template !== 'string') continue;
      if (name === 'default') fallback = c.template;
      else {
        names.push(name);
        kv.push([`tokenizer.chat_template.${name}`, gv.str(c.template)]);
      }
    }
    if (names.length) kv.push(['tokenizer.chat_templates', gv.array('string', names)]);
    if (fallback) kv.push(['tokenizer.chat_template', gv.str(fallback)]);
  }
  return kv;
}

/** The "llama" vocabulary's keys in _set_vocab_sentencepiece's order, then SpecialVocab(n_vocab) and add_space_prefix. */
function llamaVocabKv(dir: string, tj: Json, tc: Json | null, tokens: string[], scores: Float32Array, types: Int32Array, opts: GgufVocabOptions): [string, GgufValue][] {
  const kv: [string, GgufValue][] = [
    ['tokenizer.ggml.model', gv.str('llama')],
    ['tokenizer.ggml.pre', gv.str(opts.pre ?? 'default')],
    ['tokenizer.ggml.tokens', gv.array('string', tokens)],
    ['tokenizer.ggml.scores', gv.array('f32', scores)],
    ['tokenizer.ggml.token_type', gv.array('i32', types)],
    ...specialKv(specialVocab(dir, tj, tc, opts.config, tokens.length)),
  ];
  if (opts.addSpacePrefix && tc && typeof tc.add_prefix_space === 'boolean') kv.push(['tokenizer.ggml.add_space_prefix', gv.bool(tc.add_prefix_space)]);
  return kv;
}

const PRE_DEFAULT_REASON = 'SentencePiece vocabularies have no pre-tokenizer (convert_hf_to_gguf.py writes "default")';

/**
 * TextModel._create_vocab_sentencepiece + _set_vocab_sentencepiece: vocab_size ids (config.json's vocab_size, else
 * the model's piece count), all "[PAD<id>]" with score -10000 and type unused at first; then each piece of
 * tokenizer.model with its score and type (unknown, control, unused, byte; anything else, user-defined pieces
 * included, normal); then added_tokens.json's tokens (score -1000, user-defined) and tokenizer_config.json's
 * added_tokens_decoder (score -1000; control when special or looking special, else user-defined with "▁" written
 * as a space). Pieces and added tokens past vocab_size are left out, as the converter does.
 */
function sentencePieceVocab(dir: string, opts: GgufVocabOptions): GgufVocab {
  const sp = readSentencePieceModel(join(dir, 'tokenizer.model'));
  const n = opts.vocabSize || sp.pieces.length;
  const tokens = Array.from({ length: n }, (_, i) => `[PAD${i}]`);
  const scores = new Float32Array(n).fill(-10000);
  const types = new Int32Array(n).fill(TOKEN_TYPE.UNUSED);
  const spType: Record<number, number> = { [SP_TYPE.UNKNOWN]: TOKEN_TYPE.UNKNOWN, [SP_TYPE.CONTROL]: TOKEN_TYPE.CONTROL, [SP_TYPE.UNUSED]: TOKEN_TYPE.UNUSED, [SP_TYPE.BYTE]: TOKEN_TYPE.BYTE };
  for (let i = 0; i < Math.min(n, sp.pieces.length); i++) {
    const p = sp.pieces[i]!;
    tokens[i] = p.piece;
    scores[i] = p.score;
    types[i] = spType[p.type] ?? TOKEN_TYPE.NORMAL;
  }
  const atPath = join(dir, 'added_tokens.json');
  if (existsSync(atPath)) {
    for (const [content, id] of Object.entries(readJson(atPath, 'the added tokens'))) {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= n) continue;
      tokens[id] = content;
      scores[id] = -1000;
      types[id] = TOKEN_TYPE.USER_DEFINED;
    }
  }
  const tcPath = join(dir, 'tokenizer_config.json');
  const tc = existsSync(tcPath) ? readJson(tcPath, 'the tokenizer config') : null;
  for (const [key, data] of Object.entries((tc?.added_tokens_decoder ?? {}) as Record<string, Json>)) {
    const id = Number.parseInt(key, 10);
    if (!Number.isInteger(id) || id < 0 || id >= n || typeof data.content !== 'string') continue;
    let content = data.content;
    if (data.special === true || looksSpecial(content)) types[id] = TOKEN_TYPE.CONTROL;
    else {
      content = content.replaceAll('\u2581', ' ');
      types[id] = TOKEN_TYPE.USER_DEFINED;
    }
    scores[id] = -1000;
    tokens[id] = content;
  }
  // SpecialVocab reads tokenizer.json's added tokens and post-processor when the folder has one
  const tjPath = join(dir, 'tokenizer.json');
  const tj = existsSync(tjPath) ? readJson(tjPath, 'the tokenizer') : {};
  const kv = llamaVocabKv(dir, tj, tc, tokens, scores, types, opts);
  const reason = opts.pre ? 'given with --tokenizer-pre' : `${PRE_DEFAULT_REASON}; vocabulary read from tokenizer.model (a ${sp.modelType} SentencePiece model of ${sp.pieces.length} pieces)`;
  return { kv, pre: opts.pre ?? 'default', preReason: reason, tokens: n, merges: 0, model: 'llama' };
}

/** transformers' all_special_tokens: the tokens tokenizer_config.json (or special_tokens_map.json) names. */
function configSpecialTokens(dir: string, tc: Json | null): Set<string> {
  const cfg: Json = { ...(tc ?? {}) };
  const stmPath = join(dir, 'special_tokens_map.json');
  if (existsSync(stmPath)) for (const [k, v] of Object.entries(readJson(stmPath, 'the special tokens map'))) if (cfg[k] === undefined || cfg[k] === null) cfg[k] = v;
  const content = (v: unknown) => (typeof v === 'string' ? v : v && typeof v === 'object' && typeof (v as Json).content === 'string' ? ((v as Json).content as string) : null);
  const out = new Set<string>();
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token']) {
    const c = content(cfg[k]);
    if (c !== null) out.add(c);
  }
  for (const v of (cfg.additional_special_tokens as unknown[] | undefined) ?? []) {
    const c = content(v);
    if (c !== null) out.add(c);
  }
  return out;
}

/**
 * Scores for a byte_fallback BPE, in place of LlamaHfVocab's placeholder -1000: llama.cpp's SPM tokenizer merges,
 * among adjacent symbols whose concatenation is a token, the pair whose token scores highest (leftmost on ties), so a
 * token made by merge number r scores -r (the first merge that makes it) and every other token (single characters,
 * byte tokens, special and added tokens) scores below all merges. For a tokenizer.json converted from a SentencePiece
 * BPE (transformers orders its merges by piece score) this gives the order of tokenizer.model's own scores.
 */
export function llamaHfScores(tokens: string[], merges: [string, string][]): Float32Array {
  const rank = new Map<string, number>();
  merges.forEach(([a, b], r) => {
    const t = a + b;
    if (!rank.has(t)) rank.set(t, r);
  });
  const low = -(merges.length + 1);
  return Float32Array.from(tokens, (t) => {
    const r = rank.get(t);
    return r === undefined ? low : 0 - r;
  });
}

/**
 * TextModel._set_vocab_llama_hf (gguf.LlamaHfVocab) for a tokenizer.json without tokenizer.model: the BPE's vocab
 * by id (a byte token "<0xXX>" typed byte, a token tokenizer_config.json names as special typed control, the rest
 * normal), then the added tokens past it by id (control when tokenizer_config names them, else user-defined, text
 * as it is). Scores from the merges (llamaHfScores) instead of the converter's -1000. Where config.json's
 * vocab_size is larger, the rest are "[PAD<id>]" (unused), which the converter does not write (llama.cpp would then
 * refuse its file: token_embd has more rows than the vocabulary).
 */
function llamaHfVocab(dir: string, tj: Json, opts: GgufVocabOptions): GgufVocab {
  const tjPath = join(dir, 'tokenizer.json');
  const model = tj.model as Json;
  const tcPath = join(dir, 'tokenizer_config.json');
  const tc = existsSync(tcPath) ? readJson(tcPath, 'the tokenizer config') : null;
  const vocab = Object.entries((model.vocab ?? {}) as Record<string, number>);
  const base = vocab.length;
  const byId = new Map<number, string>();
  for (const [t, id] of vocab) byId.set(id, t);
  for (let i = 0; i < base; i++) if (!byId.has(i)) throw new UserError(`${tjPath}: the BPE vocabulary of ${base} tokens has no id ${i}`, 'pass --no-tokenizer to export the weights alone');
  const added = ((tj.added_tokens as AddedToken[] | undefined) ?? []).filter((a) => a.id >= base).sort((a, b) => a.id - b.id);
  added.forEach((a, k) => {
    if (a.id !== base + k) throw new UserError(`${tjPath}: added token ${JSON.stringify(a.content)} has id ${a.id}, but the ids after the vocabulary are not consecutive from ${base}`, 'pass --no-tokenizer to export the weights alone');
  });
  const specials = configSpecialTokens(dir, tc);
  const specialIds = new Set<number>();
  const tokenId = (t: string) => ((tj.added_tokens as AddedToken[] | undefined) ?? []).find((a) => a.content === t)?.id ?? (model.vocab as Record<string, number>)[t];
  for (const t of specials) {
    const id = tokenId(t);
    if (id !== undefined) specialIds.add(id);
  }
  const n = Math.max(base + added.length, opts.vocabSize);
  if (base + added.length > opts.vocabSize) {
    throw new UserError(`${tjPath} has ${base + added.length} tokens, but config.json's vocab_size is ${opts.vocabSize}`, 'is the tokenizer from the same model as config.json?');
  }
  const tokens: string[] = new Array(n);
  const types = new Int32Array(n);
  for (let i = 0; i < base; i++) {
    const t = byId.get(i)!;
    tokens[i] = t;
    types[i] = /^<0x[0-9A-Fa-f]{2}>$/.test(t) ? TOKEN_TYPE.BYTE : specialIds.has(i) ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.NORMAL;
  }
  for (const a of added) {
    tokens[a.id] = a.content;
    types[a.id] = specials.has(a.content) ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED;
  }
  for (let i = base + added.length; i < n; i++) {
    tokens[i] = `[PAD${i}]`;
    types[i] = TOKEN_TYPE.UNUSED;
  }
  const merges = ((model.merges as unknown[] | undefined) ?? []).map((m, i): [string, string] => {
    if (typeof m === 'string') {
      const k = m.indexOf(' ', 1);
      if (k > 0) return [m.slice(0, k), m.slice(k + 1)];
    } else if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') return [m[0], m[1]];
    throw new UserError(`${tjPath}: model.merges[${i}] is neither "a b" nor ["a", "b"]`);
  });
  const scores = llamaHfScores(tokens, merges);
  const kv = llamaVocabKv(dir, tj, tc, tokens, scores, types, opts);
  const reason = opts.pre ? 'given with --tokenizer-pre' : `${PRE_DEFAULT_REASON}; vocabulary read from tokenizer.json (a BPE with byte_fallback, as LlamaHfVocab reads it; scores from its ${merges.length} merges)`;
  return { kv, pre: opts.pre ?? 'default', preReason: reason, tokens: n, merges: 0, model: 'llama' };
}
