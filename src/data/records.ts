/**
 * Training records: readers for JSONL, JSON and CSV files, and TRL's record shapes, checked field by field.
 * Every record remembers its file and line, and every error names them.
 *
 * Shapes (detected by keys, as TRL does):
 *   {text}                                   language modelling (the key name is `textField`, default "text")
 *   {messages: [{role, content}, ...]}       conversational language modelling ("conversations" in ShareGPT
 *                                            form {from, value} is converted, as TRL does)
 *   {prompt, completion}                     prompt-completion; both strings, or both message lists (conversational)
 *   {instruction, input?, output}            Alpaca, rendered to prompt-completion with the Stanford Alpaca prompt
 *                                            (ALPACA_PROMPT / ALPACA_PROMPT_NO_INPUT below; `output` is the completion)
 *   {prompt?, chosen, rejected}              preference pairs (standard or conversational; prompt may be implicit),
 *                                            with an optional numeric `margin` (TRL's reward-modelling column)
 * Optional columns kept: `tools` (list or JSON string) and `chat_template_kwargs` (object). Other keys are ignored.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { extname } from 'node:path';
import { UserError } from '../errors.js';
import type { ChatMessage } from './tokenizer.js';

export interface SourceRef {
  file: string;
  /** 1-based line where the record starts. */
  line: number;
}

interface Common {
  source: SourceRef;
  tools?: unknown[];
  chatTemplateKwargs?: Record<string, unknown>;
}

export interface TextRecord extends Common {
  kind: 'text';
  text: string;
}
export interface PromptCompletionRecord extends Common {
  kind: 'prompt-completion';
  prompt: string;
  completion: string;
}
export interface MessagesRecord extends Common {
  kind: 'messages';
  messages: ChatMessage[];
}
export interface ConversationalPromptCompletionRecord extends Common {
  kind: 'conversational-prompt-completion';
  prompt: ChatMessage[];
  completion: ChatMessage[];
}
export interface PreferenceRecord extends Common {
  kind: 'preference';
  /** null when the prompt is implicit (TRL's {chosen, rejected} form). */
  prompt: string | ChatMessage[] | null;
  chosen: string | ChatMessage[];
  rejected: string | ChatMessage[];
  conversational: boolean;
  /** TRL's optional `margin` column: a reward model is trained on −log σ(r_chosen − r_rejected − margin). */
  margin?: number;
}

export type DataRecord =
  | TextRecord
  | PromptCompletionRecord
  | MessagesRecord
  | ConversationalPromptCompletionRecord
  | PreferenceRecord;

/** Stanford Alpaca's prompt (tatsu-lab/stanford_alpaca train.py PROMPT_DICT), used for {instruction, input, output}. */
export const ALPACA_PROMPT =
  'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n';
export const ALPACA_PROMPT_NO_INPUT =
  'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:\n';

export function renderAlpacaPrompt(instruction: string, input?: string | null): string {
  const fill = (t: string): string => t.replace('{instruction}', () => instruction).replace('{input}', () => input ?? '');
  return input ? fill(ALPACA_PROMPT) : fill(ALPACA_PROMPT_NO_INPUT);
}

export interface ReadOptions {
  /** Count and skip malformed records instead of failing on the first one. */
  skipBadRecords?: boolean;
  /** File format; by default from the extension (.jsonl/.ndjson, .json, .csv). */
  format?: 'jsonl' | 'json' | 'csv';
  /** The text column of language-modelling records (TRL dataset_text_field, default "text"). */
  textField?: string;
  /** JSONL files are read this many bytes at a time (default 16 MiB; small values are for tests). */
  chunkBytes?: number;
}

export interface ReadResult {
  records: DataRecord[];
  /** Records skipped as malformed (only with skipBadRecords). */
  skipped: number;
  /** The messages of the skipped records ("file:line: what"), at most 20. */
  problems: string[];
}

/** A malformed record: the message starts with file:line. */
export class RecordError extends UserError {
  constructor(
    readonly source: SourceRef,
    readonly reason: string,
  ) {
    super(`${source.file}:${source.line}: ${reason}`, 'fix the record, or pass skipBadRecords to skip malformed records');
    this.name = 'RecordError';
  }
}

interface RawRecord {
  value: unknown;
  source: SourceRef;
  /** A parse error for this record, if it could not even be parsed. */
  error?: string;
}

/** Reads a data file and parses every record into one of the shapes above. */
export function readRecords(path: string, opts: ReadOptions = {}): ReadResult {
  const format = opts.format ?? formatOf(path);
  if (format === 'jsonl') return readJsonl(path, opts);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UserError(`cannot read data file ${path}: ${(e as Error).message}`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const raws = format === 'json' ? splitJson(text, path) : splitCsv(text, path);
  return parseRawRecords(raws, opts);
}

/** Parses records given in memory (e.g. from a generator); `file` names them in errors. */
export function parseRecords(values: unknown[], file = '<memory>', opts: ReadOptions = {}): ReadResult {
  return parseRawRecords(
    values.map((value, i) => ({ value, source: { file, line: i + 1 } })),
    opts,
  );
}

function parseRawRecords(raws: Iterable<RawRecord>, opts: ReadOptions): ReadResult {
  const records: DataRecord[] = [];
  const problems: string[] = [];
  let skipped = 0;
  for (const raw of raws) {
    try {
      if (raw.error !== undefined) throw new RecordError(raw.source, raw.error);
      records.push(parseRecord(raw.value, raw.source, opts));
    } catch (e) {
      if (!(e instanceof RecordError) || !opts.skipBadRecords) throw e;
      skipped++;
      if (problems.length < 20) problems.push(e.message);
    }
  }
  return { records, skipped, problems };
}

/**
 * JSONL read in 16 MiB chunks, each line parsed as it is found: the file is never one string (V8's
 * limit is 2^29 - 24 characters, about 512 MB) and only the parsed records stay in memory.
 */
function readJsonl(path: string, opts: ReadOptions): ReadResult {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new UserError(`cannot read data file ${path}: ${(e as Error).message}`);
  }
  try {
    return parseRawRecords(jsonlRecords(fd, path, opts.chunkBytes), opts);
  } finally {
    closeSync(fd);
  }
}

function* jsonlRecords(fd: number, file: string, chunkBytes = 16 << 20): Generator<RawRecord> {
  const chunk = Buffer.allocUnsafe(chunkBytes);
  let carry: Buffer = Buffer.alloc(0);
  let lineNo = 0;
  const parse = (bytes: Buffer): RawRecord | null => {
    lineNo++;
    let line = bytes.toString('utf8');
    if (lineNo === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1);
    line = line.trim();
    if (line === '') return null;
    const source = { file, line: lineNo };
    try {
      return { value: JSON.parse(line), source };
    } catch (e) {
      return { value: null, source, error: `bad JSON: ${(e as Error).message}` };
    }
  };
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, chunk, 0, chunkBytes, null);
    } catch (e) {
      throw new UserError(`cannot read data file ${file}: ${(e as Error).message}`);
    }
    if (n === 0) break;
    const data = carry.length ? Buffer.concat([carry, chunk.subarray(0, n)]) : chunk.subarray(0, n);
    let start = 0;
    for (let nl = data.indexOf(10, start); nl >= 0; nl = data.indexOf(10, start)) {
      const r = parse(data.subarray(start, nl));
      if (r) yield r;
      start = nl + 1;
    }
    carry = Buffer.from(data.subarray(start)); // a copy: `chunk` is overwritten by the next read
  }
  if (carry.length) {
    const r = parse(carry);
    if (r) yield r;
  }
}

function formatOf(path: string): 'jsonl' | 'json' | 'csv' {
  const ext = extname(path).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  if (ext === '.json') return 'json';
  if (ext === '.csv') return 'csv';
  throw new UserError(`cannot tell the format of ${path} from its extension`, 'use .jsonl, .json or .csv, or pass format');
}

// ---------------------------------------------------------------------------------------------
// File splitting

function lineAt(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** A JSON array, or an object whose "data" key is an array; each element keeps the line it starts on. */
function splitJson(text: string, file: string): RawRecord[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    // Find the bad element(s): parse the elements one by one, so the error names their line
    // (and skipBadRecords can skip them).
    const elements = scanElements(text, !text.trimStart().startsWith('['));
    const raws = elements.map(({ line, start, end }): RawRecord => {
      const source = { file, line };
      try {
        return { value: JSON.parse(text.slice(start, end)), source };
      } catch (err) {
        return { value: null, source, error: `bad JSON: ${(err as Error).message}` };
      }
    });
    if (raws.some((r) => r.error !== undefined)) return raws;
    const msg = (e as Error).message;
    const pos = /position (\d+)/.exec(msg);
    throw new UserError(`${file}:${pos ? lineAt(text, Number(pos[1])) : 1}: bad JSON: ${msg}`);
  }
  let items: unknown[];
  if (Array.isArray(doc)) items = doc;
  else if (doc && typeof doc === 'object' && Array.isArray((doc as Record<string, unknown>).data)) {
    items = (doc as Record<string, unknown>).data as unknown[];
  } else {
    throw new UserError(`${file}:1: a JSON data file must be an array of records or an object {"data": [...]}`);
  }
  const elements = scanElements(text, !Array.isArray(doc));
  return items.map((value, i) => ({ value, source: { file, line: elements[i]?.line ?? 1 } }));
}

/**
 * The elements of the top-level array (or of the top-level "data" array): start line and [start, end)
 * offsets. A small scanner that tracks nesting and strings; it does not validate values.
 */
function scanElements(text: string, inData: boolean): { line: number; start: number; end: number }[] {
  const out: { line: number; start: number; end: number }[] = [];
  let depth = 0;
  let line = 1;
  let arrayDepth = inData ? -1 : 1; // depth inside the records array
  let expectValue = false; // inside the array: the next non-space char starts an element
  let lastKey: string | null = null;
  const close = (i: number): void => {
    const last = out[out.length - 1];
    if (last && last.end < 0) last.end = i;
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\n') {
      line++;
      continue;
    }
    if (c === ' ' || c === '\t' || c === '\r') continue;
    if (depth === arrayDepth && expectValue && c !== ']') {
      out.push({ line, start: i, end: -1 });
      expectValue = false;
    }
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"' && text[j] !== '\n') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && arrayDepth === -1) lastKey = text.slice(i + 1, j);
      i = j;
      continue;
    }
    if (c === '[' || c === '{') {
      depth++;
      if (c === '[' && depth === 2 && arrayDepth === -1 && lastKey === 'data') arrayDepth = 2;
      if (depth === arrayDepth && c === '[') expectValue = true;
    } else if (c === ']' || c === '}') {
      if (depth === arrayDepth) close(i);
      depth--;
    } else if (c === ',' && depth === arrayDepth) {
      close(i);
      expectValue = true;
    } else if (c === ',' && depth === 1 && arrayDepth === -1) {
      lastKey = null;
    }
  }
  close(text.length);
  return out;
}

/** RFC 4180 CSV: a header row, fields separated by commas, quoted with "..." ("" inside is a quote; quoted fields may span lines). */
function splitCsv(text: string, file: string): RawRecord[] {
  const rows: { fields: string[]; line: number; error?: string }[] = [];
  let i = 0;
  let line = 1;
  const n = text.length;
  while (i < n) {
    const startLine = line;
    const fields: string[] = [];
    let error: string | undefined;
    for (;;) {
      let field = '';
      if (text[i] === '"') {
        i++;
        let closed = false;
        while (i < n) {
          const c = text[i]!;
          if (c === '"') {
            if (text[i + 1] === '"') {
              field += '"';
              i += 2;
              continue;
            }
            i++;
            closed = true;
            break;
          }
          if (c === '\n') line++;
          field += c;
          i++;
        }
        if (!closed) error = 'unterminated quoted field';
        else if (i < n && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          error = `unexpected character ${JSON.stringify(text[i])} after a closing quote`;
          while (i < n && text[i] !== ',' && text[i] !== '\n') i++;
        }
      } else {
        while (i < n && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          if (text[i] === '"' && !error) error = 'a quote inside an unquoted field (quote the whole field and double the quote)';
          field += text[i];
          i++;
        }
      }
      fields.push(field);
      if (i < n && text[i] === ',') {
        i++;
        continue;
      }
      if (i < n && text[i] === '\r') i++;
      if (i < n && text[i] === '\n') {
        i++;
        line++;
      }
      break;
    }
    if (fields.length === 1 && fields[0] === '' && !error) continue; // blank line
    rows.push({ fields, line: startLine, error });
  }
  if (rows.length === 0) return [];
  const header = rows[0]!;
  if (header.error) throw new UserError(`${file}:${header.line}: bad CSV header: ${header.error}`);
  const names = header.fields.map((h) => h.trim());
  return rows.slice(1).map((r) => {
    const source = { file, line: r.line };
    if (r.error) return { value: null, source, error: `bad CSV: ${r.error}` };
    if (r.fields.length !== names.length) {
      return { value: null, source, error: `bad CSV: ${r.fields.length} fields, but the header has ${names.length}` };
    }
    const obj: Record<string, unknown> = {};
    names.forEach((name, k) => {
      obj[name] = r.fields[k];
    });
    // A CSV cell can hold a JSON list of messages for the conversational columns.
    for (const key of ['messages', 'conversations', 'tools']) {
      const v = obj[key];
      if (typeof v === 'string' && v.trim().startsWith('[')) {
        try {
          obj[key] = JSON.parse(v);
        } catch {
          return { value: null, source, error: `column "${key}" is not valid JSON` };
        }
      }
    }
    return { value: obj, source };
  });
}

// ---------------------------------------------------------------------------------------------
// Shapes

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

const SHAREGPT_ROLES: Record<string, string> = { human: 'user', user: 'user', gpt: 'assistant', assistant: 'assistant', system: 'system', tool: 'tool' };

function parseMessages(v: unknown, field: string, source: SourceRef): ChatMessage[] {
  if (!Array.isArray(v)) throw new RecordError(source, `"${field}" must be a list of {role, content} messages, got ${describe(v)}`);
  if (v.length === 0) throw new RecordError(source, `"${field}" is an empty list of messages`);
  return v.map((m, i) => {
    if (!m || typeof m !== 'object' || Array.isArray(m)) {
      throw new RecordError(source, `${field}[${i}] must be an object {role, content}, got ${describe(m)}`);
    }
    const msg = m as Record<string, unknown>;
    if (field === 'conversations' && 'from' in msg) {
      const role = SHAREGPT_ROLES[String(msg.from)];
      if (!role) throw new RecordError(source, `${field}[${i}].from is ${JSON.stringify(msg.from)}; expected human, gpt, system or tool`);
      if (typeof msg.value !== 'string') throw new RecordError(source, `${field}[${i}].value must be a string, got ${describe(msg.value)}`);
      return { role, content: msg.value };
    }
    if (typeof msg.role !== 'string') throw new RecordError(source, `${field}[${i}].role must be a string, got ${describe(msg.role)}`);
    let content = msg.content;
    if ((content === null || content === undefined) && msg.tool_calls !== undefined) content = '';
    if (typeof content !== 'string') {
      throw new RecordError(source, `${field}[${i}].content must be a string, got ${describe(content)}`);
    }
    return { ...msg, role: msg.role, content } as ChatMessage;
  });
}

function isMessageList(v: unknown): boolean {
  return Array.isArray(v) && v.length > 0 && v.every((m) => m && typeof m === 'object' && !Array.isArray(m) && 'role' in m);
}

function requireString(obj: Record<string, unknown>, key: string, source: SourceRef): string {
  const v = obj[key];
  if (typeof v !== 'string') throw new RecordError(source, `"${key}" must be a string, got ${describe(v)}`);
  return v;
}

/** Parses one record (an already-decoded JSON value) into its shape; throws RecordError naming file:line. */
export function parseRecord(value: unknown, source: SourceRef, opts: ReadOptions = {}): DataRecord {
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    throw new RecordError(source, `a record must be a JSON object, got ${describe(value)}`);
  }
  const obj = value as Record<string, unknown>;
  const common: Common = { source };
  if (obj.tools !== undefined && obj.tools !== null) {
    let tools = obj.tools;
    if (typeof tools === 'string') {
      try {
        tools = JSON.parse(tools);
      } catch {
        throw new RecordError(source, '"tools" is a string but not valid JSON');
      }
    }
    if (!Array.isArray(tools)) throw new RecordError(source, `"tools" must be a list, got ${describe(tools)}`);
    common.tools = tools;
  }
  if (obj.chat_template_kwargs !== undefined && obj.chat_template_kwargs !== null) {
    const k = obj.chat_template_kwargs;
    if (typeof k !== 'object' || Array.isArray(k)) throw new RecordError(source, '"chat_template_kwargs" must be an object');
    common.chatTemplateKwargs = k as Record<string, unknown>;
  }
  const has = (k: string): boolean => obj[k] !== undefined && obj[k] !== null;
  const textField = opts.textField ?? 'text';

  if (has('chosen') || has('rejected')) {
    if (!has('chosen') || !has('rejected')) {
      throw new RecordError(source, `a preference record needs both "chosen" and "rejected" (only "${has('chosen') ? 'chosen' : 'rejected'}" is there)`);
    }
    const conversational = isMessageList(obj.chosen) || Array.isArray(obj.chosen);
    const side = (k: string): string | ChatMessage[] => (conversational ? parseMessages(obj[k], k, source) : requireString(obj, k, source));
    let prompt: string | ChatMessage[] | null = null;
    if (has('prompt')) prompt = conversational ? parseMessages(obj.prompt, 'prompt', source) : requireString(obj, 'prompt', source);
    const record: PreferenceRecord = { ...common, kind: 'preference', prompt, chosen: side('chosen'), rejected: side('rejected'), conversational };
    if (has('margin')) {
      // A CSV cell is a string: a number written in it is read as that number.
      const v = typeof obj.margin === 'string' && obj.margin.trim() !== '' ? Number(obj.margin) : obj.margin;
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new RecordError(source, `"margin" must be a finite number, got ${typeof obj.margin === 'string' ? JSON.stringify(obj.margin) : describe(obj.margin)}`);
      record.margin = v;
    }
    return record;
  }
  if (has('messages') || has('conversations')) {
    const field = has('messages') ? 'messages' : 'conversations';
    return { ...common, kind: 'messages', messages: parseMessages(obj[field], field, source) };
  }
  if (has('prompt') || has('completion')) {
    if (!has('prompt') || !has('completion')) {
      throw new RecordError(source, `a prompt-completion record needs both "prompt" and "completion" (only "${has('prompt') ? 'prompt' : 'completion'}" is there)`);
    }
    if (Array.isArray(obj.prompt) || Array.isArray(obj.completion)) {
      return {
        ...common,
        kind: 'conversational-prompt-completion',
        prompt: parseMessages(obj.prompt, 'prompt', source),
        completion: parseMessages(obj.completion, 'completion', source),
      };
    }
    return { ...common, kind: 'prompt-completion', prompt: requireString(obj, 'prompt', source), completion: requireString(obj, 'completion', source) };
  }
  if (has('instruction') || has('output')) {
    const instruction = requireString(obj, 'instruction', source);
    const output = requireString(obj, 'output', source);
    const input = has('input') ? requireString(obj, 'input', source) : '';
    return { ...common, kind: 'prompt-completion', prompt: renderAlpacaPrompt(instruction, input), completion: output };
  }
  if (has(textField)) return { ...common, kind: 'text', text: requireString(obj, textField, source) };
  const keys = Object.keys(obj);
  throw new RecordError(
    source,
    `unknown record shape with keys [${keys.join(', ')}]; expected {${textField}}, {messages}, {prompt, completion}, ` +
      '{instruction, input, output} or {prompt, chosen, rejected}',
  );
}
