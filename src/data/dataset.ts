/**
 * Records -> token ids and labels, as TRL's SFTTrainer prepares them (huggingface/trl sft_trainer.py
 * `_prepare_dataset`):
 * - text: ids = tok(text + eos) (eos appended when the text does not already end with it); every token trained.
 * - prompt-completion: ids = tok(prompt + completion + eos); with completionOnlyLoss (default on) the
 *   len(tok(prompt)) first tokens get label -100.
 * - messages: ids = tok(render(messages)) with the chat template (special tokens come from the template);
 *   with assistantOnlyLoss only the assistant turns are trained: each one's content and its end-of-turn
 *   token (what TRL's {% generation %} blocks mark), never the role header.
 * - conversational prompt-completion: prompt = render(prompt, add_generation_prompt), full =
 *   render(prompt + completion); the completion part is trained (completionOnlyLoss).
 * Labels are the input ids (unshifted; the model shifts) with -100 where not trained, so an EOS that
 * shares its id with the pad token is still trained (labels never come from comparing ids to pad).
 */
import { UserError } from '../errors.js';
import type { ConversationalPromptCompletionRecord, DataRecord, MessagesRecord, PreferenceRecord } from './records.js';
import type { ChatMessage, ChatTemplateOptions, Tokenizer } from './tokenizer.js';

export { IGNORE_INDEX } from '../nn/ops/loss.js';
import { IGNORE_INDEX } from '../nn/ops/loss.js';

export interface TokenizeOptions {
  /** Keep the first maxLength tokens (TRL truncation_mode="keep_start"); default 1024 as TRL; null = no limit. */
  maxLength?: number | null;
  /** Train only on the completion of prompt-completion records (default true, as TRL's completion_only_loss=None). */
  completionOnlyLoss?: boolean;
  /** Train only on assistant turns of conversational records (default false, as TRL). */
  assistantOnlyLoss?: boolean;
  /** Append EOS to text and completions that do not end with it (default true, as TRL). */
  addEos?: boolean;
}

/** Token ids and labels as Int32Array: 8 bytes a token (a number[] of small integers takes 8 bytes an element). */
export interface TokenizedExample {
  inputIds: Int32Array;
  /** Same length as inputIds; IGNORE_INDEX (-100) where the token is not trained. */
  labels: Int32Array;
  truncated: boolean;
}

export function tokenizeExample(record: DataRecord, tok: Tokenizer, opts: TokenizeOptions = {}): TokenizedExample {
  const maxLength = opts.maxLength === undefined ? 1024 : opts.maxLength;
  let ids: number[];
  let mask: boolean[];
  switch (record.kind) {
    case 'text': {
      ids = tok.encode(withEos(record.text, tok, opts));
      mask = ids.map(() => true);
      break;
    }
    case 'prompt-completion': {
      ({ ids, mask } = promptCompletion(record.prompt, record.completion, tok, opts));
      break;
    }
    case 'messages': {
      ({ ids, mask } = opts.assistantOnlyLoss ? assistantTokens(record, tok) : plainChat(record, tok));
      if (opts.assistantOnlyLoss && !mask.some(Boolean)) {
        throw new UserError(`${record.source.file}:${record.source.line}: assistantOnlyLoss is on but this conversation has no assistant turn`);
      }
      break;
    }
    case 'conversational-prompt-completion': {
      ({ ids, mask } = conversationalPromptCompletion(record, tok, opts));
      break;
    }
    case 'preference':
      throw new UserError(
        `${record.source.file}:${record.source.line}: a preference record {prompt, chosen, rejected} is for reward/DPO training`,
        'use tokenizePreference, or SFT data ({text}, {prompt, completion}, {messages})',
      );
  }
  const truncated = maxLength !== null && ids.length > maxLength;
  if (truncated) {
    ids = ids.slice(0, maxLength);
    mask = mask.slice(0, maxLength);
  }
  const inputIds = Int32Array.from(ids);
  const labels = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) labels[i] = mask[i] ? ids[i]! : IGNORE_INDEX;
  return { inputIds, labels, truncated };
}

export interface TokenizedPreference {
  chosen: TokenizedExample;
  rejected: TokenizedExample;
  /** The record's margin (reward modelling), when it has one. */
  margin?: number;
}

/** Preference pairs: prompt+chosen and prompt+rejected, each trained on its completion only (TRL DPO / reward). */
export function tokenizePreference(record: PreferenceRecord, tok: Tokenizer, opts: TokenizeOptions = {}): TokenizedPreference {
  const one = (completion: string | ChatMessage[]): TokenizedExample => {
    const r: DataRecord = record.conversational
      ? {
          kind: 'conversational-prompt-completion',
          source: record.source,
          tools: record.tools,
          chatTemplateKwargs: record.chatTemplateKwargs,
          prompt: (record.prompt as ChatMessage[] | null) ?? [],
          completion: completion as ChatMessage[],
        }
      : { kind: 'prompt-completion', source: record.source, prompt: (record.prompt as string | null) ?? '', completion: completion as string };
    return tokenizeExample(r, tok, { ...opts, completionOnlyLoss: opts.completionOnlyLoss ?? true, assistantOnlyLoss: false });
  };
  const pair: TokenizedPreference = { chosen: one(record.chosen), rejected: one(record.rejected) };
  if (record.margin !== undefined) pair.margin = record.margin;
  return pair;
}

export interface TokenizeDatasetResult {
  examples: TokenizedExample[];
  /** Examples cut to maxLength. */
  truncated: number;
  /** Examples dropped because no token was left to train (all labels -100), as TRL drops them. */
  dropped: number;
}

/** Tokenizes SFT records, counting truncations and dropping examples with nothing to train. */
export function tokenizeDataset(records: Iterable<DataRecord>, tok: Tokenizer, opts: TokenizeOptions = {}): TokenizeDatasetResult {
  const examples: TokenizedExample[] = [];
  let truncated = 0;
  let dropped = 0;
  for (const r of records) {
    const ex = tokenizeExample(r, tok, opts);
    if (ex.truncated) truncated++;
    if (!ex.labels.some((l) => l !== IGNORE_INDEX)) {
      dropped++;
      continue;
    }
    examples.push(ex);
  }
  return { examples, truncated, dropped };
}

// ---------------------------------------------------------------------------------------------

function withEos(text: string, tok: Tokenizer, opts: TokenizeOptions): string {
  if (opts.addEos === false || tok.eosToken === null || text.endsWith(tok.eosToken)) return text;
  if (tok.eosId !== null && tok.suffixIds.includes(tok.eosId)) return text; // add_eos_token already appends it
  return text + tok.eosToken;
}

function promptCompletion(prompt: string, completion: string, tok: Tokenizer, opts: TokenizeOptions): { ids: number[]; mask: boolean[] } {
  const ids = tok.encode(prompt + withEos(completion, tok, opts));
  // len(tok(prompt)), not counting a suffix the post-processor adds (an add_eos_token EOS is not part of the prefix).
  const promptLen = tok.prefixIds.length + tok.encode(prompt, { addSpecialTokens: false }).length;
  const completionOnly = opts.completionOnlyLoss ?? true;
  return { ids, mask: ids.map((_, i) => !completionOnly || i >= promptLen) };
}

function templateOpts(r: { tools?: unknown[]; chatTemplateKwargs?: Record<string, unknown> }, addGenerationPrompt: boolean): ChatTemplateOptions {
  return { ...(r.chatTemplateKwargs ?? {}), tools: r.tools ?? null, addGenerationPrompt };
}

function plainChat(r: MessagesRecord, tok: Tokenizer): { ids: number[]; mask: boolean[] } {
  const ids = tok.encode(tok.applyChatTemplate(r.messages, templateOpts(r, false)), { addSpecialTokens: false });
  return { ids, mask: ids.map(() => true) };
}

function conversationalPromptCompletion(
  r: ConversationalPromptCompletionRecord,
  tok: Tokenizer,
  opts: TokenizeOptions,
): { ids: number[]; mask: boolean[] } {
  const promptIds = tok.encode(tok.applyChatTemplate(r.prompt, templateOpts(r, true)), { addSpecialTokens: false });
  const all: MessagesRecord = { ...r, kind: 'messages', messages: [...r.prompt, ...r.completion] };
  const { ids, mask } = opts.assistantOnlyLoss ? assistantTokens(all, tok) : plainChat(all, tok);
  const completionOnly = opts.completionOnlyLoss ?? true;
  return { ids, mask: mask.map((m, i) => m && (!completionOnly || i >= promptIds.length)) };
}

// ---------------------------------------------------------------------------------------------
// Assistant-only masks

/** The text a template puts after an assistant message's content to close the turn, e.g. "<|im_end|>". */
const endOfTurnCache = new WeakMap<Tokenizer, string>();

function endOfTurnMarker(tok: Tokenizer): string {
  const cached = endOfTurnCache.get(tok);
  if (cached !== undefined) return cached;
  const sentinel = 'Zq7xAssistantSentinel';
  const user: ChatMessage = { role: 'user', content: 'Hi' };
  const full = tok.applyChatTemplate([user, { role: 'assistant', content: sentinel }]);
  const at = full.lastIndexOf(sentinel);
  if (at < 0) throw new UserError('the chat template does not show the assistant message content; assistantOnlyLoss cannot find assistant turns');
  const marker = full.slice(at + sentinel.length).replace(/\s+$/u, '');
  endOfTurnCache.set(tok, marker);
  return marker;
}

/** The content a template shows for an assistant message (Qwen3-style templates drop a <think> block from earlier turns). */
function visibleContent(content: string): string {
  const c = content.includes('</think>') ? content.slice(content.lastIndexOf('</think>') + '</think>'.length) : content;
  return c.trim();
}

/**
 * Character spans [start, end) of the assistant turns in the rendered conversation: from the end of the
 * render of the messages before it with add_generation_prompt (so the role header is excluded), to the end
 * of the end-of-turn marker after its content.
 */
export function assistantSpans(messages: ChatMessage[], tok: Tokenizer, opts: ChatTemplateOptions = {}): { text: string; spans: [number, number][] } {
  const text = tok.applyChatTemplate(messages, { ...opts, addGenerationPrompt: false });
  const marker = endOfTurnMarker(tok);
  const spans: [number, number][] = [];
  let floor = 0;
  for (let i = 0; i < messages.length; i++) {
    if (messages[i]!.role !== 'assistant') continue;
    let start = 0;
    if (i === 0) {
      // A conversation opening with the assistant: skip whatever the template puts first, if it renders no messages.
      try {
        const before = tok.applyChatTemplate([], { ...opts, addGenerationPrompt: true });
        if (text.startsWith(before)) start = before.length;
      } catch {
        start = 0;
      }
    } else {
      const before = tok.applyChatTemplate(messages.slice(0, i), { ...opts, addGenerationPrompt: true });
      if (!text.startsWith(before)) {
        throw new UserError(
          `the chat template renders messages[0..${i}) differently inside the whole conversation, so assistant turns cannot be located`,
          'assistantOnlyLoss needs a template whose render of a conversation starts with the render of its prefix',
        );
      }
      start = before.length;
    }
    start = Math.max(start, floor);
    const visible = visibleContent(messages[i]!.content);
    let contentEnd = start;
    if (visible) {
      const at = text.indexOf(visible, start);
      if (at < 0) throw new UserError(`assistant message ${i} does not appear in the rendered conversation`);
      contentEnd = at + visible.length;
    }
    let end = contentEnd;
    if (marker) {
      const m = text.indexOf(marker, contentEnd);
      if (m < 0) throw new UserError(`assistant message ${i} is not closed by ${JSON.stringify(marker)} in the rendered conversation`);
      end = m + marker.length;
    }
    spans.push([start, end]);
    floor = end;
  }
  return { text, spans };
}

function assistantTokens(r: MessagesRecord, tok: Tokenizer): { ids: number[]; mask: boolean[] } {
  const { text, spans } = assistantSpans(r.messages, tok, templateOpts(r, false));
  const ids = tok.encode(text, { addSpecialTokens: false });
  const enc = new TextEncoder();
  // Byte offsets of each token (byte-level tokenizers): exact, like TRL's offset mapping.
  const tokenEnds: number[] = [];
  let pos = 0;
  let exact = true;
  for (const id of ids) {
    const b = tok.tokenBytes(id);
    if (!b) {
      exact = false;
      break;
    }
    pos += b.length;
    tokenEnds.push(pos);
  }
  const byteSpans = spans.map(([s, e]) => [enc.encode(text.slice(0, s)).length, enc.encode(text.slice(0, e)).length] as const);
  if (exact && pos === enc.encode(text).length) {
    const mask = ids.map((_, t) => {
      const b0 = t === 0 ? 0 : tokenEnds[t - 1]!;
      const b1 = tokenEnds[t]!;
      return byteSpans.some(([s, e]) => b0 < e && b1 > s);
    });
    return { ids, mask };
  }
  // Otherwise tokenize the pieces between span boundaries separately (can differ from whole-text ids at a boundary).
  const outIds: number[] = [];
  const mask: boolean[] = [];
  let at = 0;
  for (const [s, e] of [...spans, [text.length, text.length] as [number, number]]) {
    for (const [a, b, m] of [
      [at, s, false],
      [s, e, true],
    ] as const) {
      if (b <= a) continue;
      const piece = tok.encode(text.slice(a, b), { addSpecialTokens: false });
      outIds.push(...piece);
      for (let k = 0; k < piece.length; k++) mask.push(m);
    }
    at = e;
  }
  return { ids: outIds, mask };
}
