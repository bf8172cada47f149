/**
 * A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) with transformers' special-token
 * rules and chat templates. Encoding and decoding are done by @huggingface/tokenizers; templates are
 * rendered by @huggingface/jinja with the variables transformers passes.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { UserError } from '../errors.js';
import { speedUpTokenizer } from './bpe-speedup.js';
import { byteLevelDecodeTable } from './byte-level.js';

/** One chat message. `content` is usually a string; other keys (tool_calls, reasoning_content...) pass through. */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean;
  tools?: unknown[] | null;
  documents?: unknown[] | null;
  /** Extra template variables (e.g. enable_thinking), as transformers' **kwargs. */
  [key: string]: unknown;
}

export interface EncodeOptions {
  /** Add the special tokens the post-processor / add_bos_token / add_eos_token ask for (default true, as transformers). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

type Json = Record<string, unknown>;

/** A special token as tokenizer_config.json writes it: a string or an AddedToken dict ({content, ...}). */
function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

function readJson(path: string, what: string): Json {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UserError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('the top level is not an object');
    return v as Json;
  } catch (e) {
    throw new UserError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

export class Tokenizer {
  private readonly hf: HfTokenizer;
  readonly config: Json;
  readonly chatTemplate: string | null;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number | null;
  readonly unkId: number | null;
  readonly vocabSize: number;
  /** Ids the post-processor (adjusted by add_bos_token / add_eos_token) puts before / after a single sequence. */
  readonly prefixIds: readonly number[];
  readonly suffixIds: readonly number[];
  private readonly specialIds: Set<number>;
  private readonly byteTable: Map<string, number> | null;
  private readonly addedTokenIds: Map<number, string>;
  private templateCache = new Map<string, Template>();

  /**
   * @param tokenizerJson the parsed tokenizer.json
   * @param tokenizerConfig the parsed tokenizer_config.json (merged with special_tokens_map.json if any)
   * @param chatTemplate overrides tokenizer_config.chat_template (e.g. from chat_template.jinja)
   */
  constructor(tokenizerJson: Json, tokenizerConfig: Json = {}, chatTemplate?: string | null) {
    if (!tokenizerJson.model || typeof tokenizerJson.model !== 'object') {
      throw new UserError('tokenizer.json has no "model" section; is it a Hugging Face tokenizers file?');
    }
    const tj: Json = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...tokenizerJson,
    };
    this.config = tokenizerConfig;
    this.hf = new HfTokenizer(tj, tokenizerConfig);
    if (process.env.AJUSTE_FAST_BPE !== '0') speedUpTokenizer(this.hf);

    // Chat template: explicit > config string > config list of {name, template} (the "default" one).
    let tpl: string | null = null;
    const ct = tokenizerConfig.chat_template;
    if (typeof ct === 'string') tpl = ct;
    else if (Array.isArray(ct)) {
      const named = ct as { name?: string; template?: string }[];
      tpl = named.find((t) => t.name === 'default')?.template ?? named[0]?.template ?? null;
    }
    this.chatTemplate = chatTemplate ?? tpl;

    this.bosToken = tokenContent(tokenizerConfig.bos_token);
    this.eosToken = tokenContent(tokenizerConfig.eos_token);
    this.padToken = tokenContent(tokenizerConfig.pad_token);
    const unk = tokenContent(tokenizerConfig.unk_token);
    this.bosId = this.bosToken === null ? null : (this.hf.token_to_id(this.bosToken) ?? null);
    this.eosId = this.eosToken === null ? null : (this.hf.token_to_id(this.eosToken) ?? null);
    this.padId = this.padToken === null ? null : (this.hf.token_to_id(this.padToken) ?? null);
    this.unkId = unk === null ? null : (this.hf.token_to_id(unk) ?? null);

    const added = (tj.added_tokens as { id: number; content: string; special?: boolean }[]) ?? [];
    this.addedTokenIds = new Map(added.map((t) => [t.id, t.content]));
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
    for (const t of [this.bosId, this.eosId, this.padId, this.unkId]) if (t !== null) this.specialIds.add(t);
    for (const s of (tokenizerConfig.additional_special_tokens as unknown[]) ?? []) {
      const id = this.hf.token_to_id(tokenContent(s) ?? '');
      if (id !== undefined) this.specialIds.add(id);
    }
    let maxId = -1;
    for (const id of this.hf.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    // What the post-processor adds around one sequence: probe once with a short text.
    const probe = 'a';
    const core = this.hf.encode(probe, { add_special_tokens: false }).ids as number[];
    const full = this.hf.encode(probe, { add_special_tokens: true }).ids as number[];
    let prefix: number[] = [];
    let suffix: number[] = [];
    for (let s = 0; s + core.length <= full.length; s++) {
      if (core.every((id, j) => full[s + j] === id)) {
        prefix = full.slice(0, s);
        suffix = full.slice(s + core.length);
        break;
      }
    }
    // transformers (LlamaTokenizerFast & co, and v5 for every fast tokenizer) rebuilds the
    // post-processor from add_bos_token / add_eos_token when the config sets them.
    if (this.bosId !== null && typeof tokenizerConfig.add_bos_token === 'boolean') {
      prefix = prefix.filter((id) => id !== this.bosId);
      if (tokenizerConfig.add_bos_token) prefix.unshift(this.bosId);
    }
    if (this.eosId !== null && typeof tokenizerConfig.add_eos_token === 'boolean') {
      suffix = suffix.filter((id) => id !== this.eosId);
      if (tokenizerConfig.add_eos_token) suffix.push(this.eosId);
    }
    this.prefixIds = prefix;
    this.suffixIds = suffix;
    this.byteTable = isByteLevel(tj) ? byteLevelDecodeTable() : null;
  }

  /** Reads tokenizer.json, tokenizer_config.json, special_tokens_map.json and chat_template.jinja/.json from a folder. */
  static fromFolder(dir: string): Tokenizer {
    const tjPath = join(dir, 'tokenizer.json');
    if (!existsSync(tjPath)) {
      throw new UserError(
        `no tokenizer.json in ${dir}`,
        'ajuste needs a "fast" tokenizer file; in Python: AutoTokenizer.from_pretrained(...).save_pretrained(dir) writes one',
      );
    }
    const tj = readJson(tjPath, 'tokenizer file');
    const cfgPath = join(dir, 'tokenizer_config.json');
    const cfg: Json = existsSync(cfgPath) ? readJson(cfgPath, 'tokenizer config') : {};
    const stmPath = join(dir, 'special_tokens_map.json');
    if (existsSync(stmPath)) {
      const stm = readJson(stmPath, 'special tokens map');
      for (const [k, v] of Object.entries(stm)) if (cfg[k] === undefined || cfg[k] === null) cfg[k] = v;
    }
    let template: string | null = null;
    const jinjaPath = join(dir, 'chat_template.jinja');
    const ctJsonPath = join(dir, 'chat_template.json');
    if (existsSync(jinjaPath)) template = readFileSync(jinjaPath, 'utf8');
    else if (existsSync(ctJsonPath)) {
      const ct = readJson(ctJsonPath, 'chat template file').chat_template;
      if (typeof ct !== 'string') throw new UserError(`${ctJsonPath} has no string "chat_template" key`);
      template = ct;
    }
    return new Tokenizer(tj, cfg, template);
  }

  static fromJSON(tokenizerJson: Json, tokenizerConfig: Json = {}): Tokenizer {
    return new Tokenizer(tokenizerJson, tokenizerConfig);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: false }).ids;
    if (opts.addSpecialTokens === false || (this.prefixIds.length === 0 && this.suffixIds.length === 0)) return ids;
    return [...this.prefixIds, ...ids, ...this.suffixIds];
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    let list = Array.from(ids);
    if (opts.skipSpecialTokens) list = list.filter((id) => !this.specialIds.has(id));
    if (list.length === 0) return '';
    return this.hf.decode(list, {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.config.clean_up_tokenization_spaces === true,
    });
  }

  tokenToId(token: string): number | null {
    return this.hf.token_to_id(token) ?? null;
  }

  idToToken(id: number): string | null {
    return this.hf.id_to_token(id) ?? null;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * The raw bytes a token stands for, for byte-level tokenizers (GPT-2, Llama 3, Qwen); null otherwise.
   * Lets callers map tokens to byte offsets (the JS tokenizer gives no offsets).
   */
  tokenBytes(id: number): Uint8Array | null {
    const added = this.addedTokenIds.get(id);
    if (added !== undefined) return new TextEncoder().encode(added);
    if (!this.byteTable) return null;
    const tok = this.hf.id_to_token(id);
    if (tok === undefined) return null;
    const out = new Uint8Array(tok.length);
    let n = 0;
    for (const ch of tok) {
      const b = this.byteTable.get(ch);
      if (b === undefined) return null;
      out[n++] = b;
    }
    return out.subarray(0, n);
  }

  /**
   * Renders messages with the chat template, as transformers' apply_chat_template(tokenize=False).
   * Variables: messages, add_generation_prompt, tools, documents, bos_token, eos_token, pad_token,
   * unk_token, plus every extra key of `opts`; raise_exception and strftime_now are @huggingface/jinja globals
   * (an exception raised by the template surfaces as a UserError with its message).
   */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    const source = this.chatTemplate;
    if (source === null) {
      throw new UserError(
        'this tokenizer has no chat template (no "chat_template" in tokenizer_config.json, no chat_template.jinja)',
        'use a model with a chat template, or pass a template file (a ChatML template works for most base models)',
      );
    }
    let template = this.templateCache.get(source);
    if (!template) {
      try {
        template = new Template(source);
      } catch (e) {
        throw new UserError(`the chat template does not parse: ${(e as Error).message}`);
      }
      this.templateCache.set(source, template);
    }
    const { addGenerationPrompt, tools, documents, ...extra } = opts;
    const vars: Record<string, unknown> = {
      ...extra,
      messages,
      add_generation_prompt: addGenerationPrompt ?? false,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      pad_token: this.padToken ?? '',
      unk_token: tokenContent(this.config.unk_token) ?? '',
    };
    if (tools) vars.tools = tools;
    if (documents) vars.documents = documents;
    try {
      return template.render(vars);
    } catch (e) {
      throw new UserError(`the chat template failed on these messages: ${(e as Error).message}`);
    }
  }

  /**
   * A streaming decoder for generation: push ids as they arrive, get back only the new text.
   * Text is held back while the tail is an incomplete UTF-8 sequence (a character split across tokens).
   */
  decodeStream(opts: DecodeOptions = {}): DecodeStream {
    return new DecodeStream(this, opts);
  }
}

/** Incremental detokenizer (the algorithm of tokenizers' DecodeStream / transformers' TextStreamer). */
export class DecodeStream {
  private ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(
    private readonly tok: Tokenizer,
    private readonly opts: DecodeOptions = {},
  ) {}

  /** Adds one token; returns the text it completes ('' when it only starts a multi-byte character). */
  push(id: number): string {
    this.ids.push(id);
    const prefixText = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.opts);
    const newText = this.tok.decode(this.ids.slice(this.prefixOffset), this.opts);
    if (newText.length > prefixText.length && !newText.endsWith('\uFFFD')) {
      const delta = newText.slice(prefixText.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return delta;
    }
    return '';
  }

  /** Generator form: yields the new text for each id that completes some. */
  *feed(ids: Iterable<number>): Generator<string> {
    for (const id of ids) {
      const s = this.push(id);
      if (s) yield s;
    }
  }

  /** Whatever is still held back (an incomplete character at the end), decoded with replacement characters. */
  flush(): string {
    const prefixText = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.opts);
    const newText = this.tok.decode(this.ids.slice(this.prefixOffset), this.opts);
    this.prefixOffset = this.readOffset = this.ids.length;
    return newText.slice(prefixText.length);
  }
}

function isByteLevel(tj: Json): boolean {
  const has = (c: unknown): boolean => {
    if (!c || typeof c !== 'object') return false;
    const o = c as Json;
    if (o.type === 'ByteLevel') return true;
    const inner = (o.decoders ?? o.pretokenizers) as unknown[] | undefined;
    return Array.isArray(inner) && inner.some(has);
  };
  return has(tj.decoder);
}
