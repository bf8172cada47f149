/**
 * Text generation with a KV cache: greedy, temperature, top-k, top-p (nucleus), repetition penalty,
 * max_new_tokens, stop at EOS ids or stop strings. Defaults as transformers' GenerationConfig.
 */
import type { CausalLM } from '../models/causal-lm.js';
import { noGrad, scope } from '../tensor/autograd.js';
import { Rng } from '../tensor/rng.js';

export interface GenerateOptions {
  maxNewTokens?: number;
  /** Sample (true) or take the most likely token (false, greedy). */
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  eosTokenIds?: number[];
  /** Generation stops when the decoded text ends with one of these. */
  stopStrings?: string[];
  decode?: (ids: number[]) => string;
  seed?: number;
  /** The sampling stream to draw from (default: a new one from seed); PPO keeps one across rollouts and checkpoints it. */
  rng?: Rng;
  /** Called with each new token id as it is produced. */
  onToken?: (id: number) => void;
  /** Use the KV cache (default). Without it, every step re-runs the whole sequence (for tests). */
  useCache?: boolean;
}

export interface GenerateResult {
  tokens: number[];
  finishReason: 'eos' | 'stop_string' | 'length';
}

/** Applies repetition penalty, temperature, top-k and top-p to logits, then picks a token. */
export function pickToken(logits: Float32Array, previous: number[], o: GenerateOptions, rng: Rng): number {
  const l = Float64Array.from(logits);
  const pen = o.repetitionPenalty ?? 1;
  if (pen !== 1) for (const id of new Set(previous)) l[id] = l[id]! > 0 ? l[id]! / pen : l[id]! * pen;
  if (!o.doSample) {
    let best = 0;
    for (let i = 1; i < l.length; i++) if (l[i]! > l[best]!) best = i;
    return best;
  }
  const temp = o.temperature ?? 1;
  if (temp <= 0) throw new Error('temperature must be > 0 when sampling (use greedy decoding instead)');
  let idx = [...l.keys()].sort((a, b) => l[b]! - l[a]!);
  if (o.topK && o.topK > 0) idx = idx.slice(0, o.topK);
  const m = l[idx[0]!]!;
  let probs = idx.map((i) => Math.exp((l[i]! - m) / temp));
  let total = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / total);
  const topP = o.topP ?? 1;
  if (topP < 1) {
    let cum = 0, keep = 0;
    while (keep < probs.length && cum < topP) cum += probs[keep++]!;
    idx = idx.slice(0, Math.max(1, keep));
    probs = probs.slice(0, Math.max(1, keep));
    total = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / total);
  }
  let u = rng.uniform();
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i]!;
    if (u <= 0) return idx[i]!;
  }
  return idx[idx.length - 1]!;
}

/** Last-position logits of the full sequence, computed without a cache. */
function logitsNoCache(model: CausalLM, ids: number[]): Float32Array {
  return scope(() => {
    const T = ids.length;
    const h = model.forwardHidden({ inputIds: Int32Array.from(ids), positionIds: Int32Array.from({ length: T }, (_, i) => i), segIds: null, B: 1, T });
    const last = h.reshape([T, model.config.hidden]).narrow0(T - 1, 1);
    return Float32Array.from(model.logits(last).f);
  });
}

export function generate(model: CausalLM, prompt: number[], o: GenerateOptions = {}): GenerateResult {
  if (prompt.length === 0) throw new Error('generate: the prompt is empty (at least one token, e.g. BOS, is needed)');
  const maxNew = o.maxNewTokens ?? 20;
  const rng = o.rng ?? new Rng(o.seed ?? 0);
  const eos = new Set(o.eosTokenIds ?? []);
  const out: number[] = [];
  const useCache = o.useCache ?? true;
  const cache = useCache ? model.newCache(prompt.length + maxNew) : null;
  const was = model.training;
  model.train(false);
  try {
    return noGrad(() => {
      let logits = cache
        ? scope(() => {
            const h = model.forwardCached(Int32Array.from(prompt), cache);
            const last = h.reshape([prompt.length, model.config.hidden]).narrow0(prompt.length - 1, 1);
            return Float32Array.from(model.logits(last).f);
          })
        : logitsNoCache(model, prompt);
      for (let i = 0; i < maxNew; i++) {
        const next = pickToken(logits, [...prompt, ...out], o, rng);
        out.push(next);
        o.onToken?.(next);
        if (eos.has(next)) return { tokens: out, finishReason: 'eos' as const };
        if (o.stopStrings?.length && o.decode) {
          const text = o.decode(out);
          if (o.stopStrings.some((s) => text.endsWith(s))) return { tokens: out, finishReason: 'stop_string' as const };
        }
        if (i + 1 === maxNew) break;
        logits = cache
          ? scope(() => Float32Array.from(model.logits(model.forwardCached(Int32Array.of(next), cache)).f))
          : logitsNoCache(model, [...prompt, ...out]);
      }
      return { tokens: out, finishReason: 'length' as const };
    });
  } finally {
    model.train(was);
  }
}
