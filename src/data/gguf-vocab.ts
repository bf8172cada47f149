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
 * SentencePiece-style tokenizers (a tokenizer.model, or a BPE with byte_fallback: Llama 2, TinyLlama, Mistral
 * 7B) become a different GGUF vocabulary ("llama", with scores and byte tokens) that this module does not write.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { type GgufValue, gv } from '../io/gguf.js';
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
 * template. (The pair-template parse that only sets add_sep for encoders is left out.)
 */
function specialVocab(dir: string, tj: Json, tcIn: Json | null, config: Json): { ids: Map<string, number>; add: Map<string, boolean>; chatTemplate: unknown } {
  const types = ['bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask'];
  const ids = new Map<string, number>();
  const add = new Map<string, boolean>();
  const set = (typ: string, id: unknown) => {
    if (typeof id !== 'number' || !Number.isInteger(id)) return;
    if (id < 0) throw new UserError(`${dir}: invalid id ${id} for the ${typ} token`);
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
    if (single.length <= 1) continue;
    const idOf = (x: Json | undefined) => (x?.SpecialToken as Json | undefined)?.id as string | undefined;
    const first = idOf(single[0]);
    if (first) {
      if (!tc) bos = first;
      add.set('bos', first === bos || first === cls);
    }
    const last = idOf(single[single.length - 1]);
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
}

export interface GgufVocab {
  kv: [string, GgufValue][];
  pre: string;
  /** Why that pre-tokenizer name. */
  preReason: string;
  tokens: number;
  merges: number;
}

/** The tokenizer metadata of the model folder `dir` (tokenizer.json, tokenizer_config.json, chat_template.*). */
export function ggufVocab(dir: string, opts: GgufVocabOptions): GgufVocab {
  const tjPath = join(dir, 'tokenizer.json');
  if (existsSync(join(dir, 'tokenizer.model'))) {
    throw new UserError(
      `${dir} has a SentencePiece tokenizer.model: convert_hf_to_gguf.py exports it as a SentencePiece ("llama") vocabulary, which ajuste does not write`,
      "ajuste writes byte-level BPE vocabularies (GPT-2, Llama 3, Qwen, SmolLM); pass --no-tokenizer to export the weights alone, or convert this model's vocabulary with llama.cpp's convert_hf_to_gguf.py",
    );
  }
  if (!existsSync(tjPath)) throw new UserError(`${dir} has no tokenizer.json, so the GGUF file would have no vocabulary`, 'export from the folder the model was saved to with its tokenizer, or pass --no-tokenizer to write the weights alone');
  const tj = readJson(tjPath, 'the tokenizer');
  const model = (tj.model ?? {}) as Json;
  if (model.type !== 'BPE') throw new UserError(`${tjPath}: a ${String(model.type)} tokenizer; ajuste exports byte-level BPE vocabularies only`, 'pass --no-tokenizer to export the weights alone');
  if (model.byte_fallback === true) {
    throw new UserError(
      `${tjPath}: a BPE with byte_fallback (SentencePiece style: Llama 2, TinyLlama, Mistral 7B); llama.cpp reads those as a "llama" vocabulary with scores and byte tokens, which ajuste does not write`,
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
  const sv = specialVocab(dir, tj, tc, opts.config);
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
  if (opts.addSpacePrefix && tc && typeof tc.add_prefix_space === 'boolean') kv.push(['tokenizer.ggml.add_space_prefix', gv.bool(tc.add_prefix_space)]);
  return { kv, pre, preReason: reason, tokens: tokens.length, merges: merges.length };
}
