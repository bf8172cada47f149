/**
 * What every causal LM in ajuste offers: the hidden states of a batch, logits, the next-token loss
 * (labels shifted inside, as transformers does), and incremental decoding with a KV cache.
 */
import { UserError } from '../errors.js';
import { Module } from '../nn/module.js';
import type { AttentionShape } from '../nn/ops/attention.js';
import { IGNORE_INDEX, linearCrossEntropy } from '../nn/ops/loss.js';
import { linear } from '../tensor/ops.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';

/** One batch of token rows, B rows of T tokens, flattened row-major. */
export interface Batch {
  inputIds: Int32Array;
  /** Position of each token in its sequence (restarts at 0 for each packed sequence). */
  positionIds: Int32Array;
  /** [B*T] sequence id of each token in a packed row, or null (one sequence per row). */
  segIds: Int32Array | null;
  B: number;
  T: number;
}

export interface ForwardOptions {
  gradientCheckpointing?: boolean;
}

/**
 * What a prompt-learning PEFT method (prompt tuning, prefix tuning; see peft/) adds to a forward pass.
 * The model calls `begin` once per forward with the token embeddings [B,T,C] (before any position
 * embedding) and runs its layers on the returned embeddings and batch (virtual tokens in front,
 * positions shifted); `attention`, when present, replaces each layer's causal attention; `end` maps the
 * final hidden states back to the caller's B x T rows.
 */
export interface PromptHook {
  begin(h: Tensor, batch: Batch): { h: Tensor; batch: Batch };
  attention?(layer: number, q: Tensor, k: Tensor, v: Tensor, shape: AttentionShape): Tensor;
  end(h: Tensor, batch: Batch): Tensor;
  /** Cache entries the hook puts before the first real token when generating. */
  readonly cacheTokens?: number;
  /**
   * Generation: called on an empty cache. Either writes the prefix into it (and sets its length) and
   * returns null, or returns [1, n, C] token embeddings the model runs (and caches) first.
   */
  prefill?(cache: KvCache): Tensor | null;
}

/** Keys and values of past tokens, per layer, for incremental decoding (batch 1). */
export interface KvCache {
  /** [layer] -> keys [len, Hkv, D] (after RoPE), grown as tokens arrive. */
  keys: Float32Array[];
  values: Float32Array[];
  length: number;
  capacity: number;
}

export abstract class CausalLM extends Module {
  /** Set by prompt tuning / prefix tuning (peft/); null for a plain model. */
  promptHook: PromptHook | null = null;
  /**
   * Built from a sequence-classification checkpoint that has no lm_head (a reward model saved by transformers
   * or ajuste, models/build.ts): lmHeadWeight() is only a stand-in, so logits and the next-token loss refuse.
   */
  headless = false;

  constructor(readonly config: ModelConfig) {
    super();
  }

  /** Final hidden states [B, T, hidden] (after the final norm). */
  abstract forwardHidden(batch: Batch, opts?: ForwardOptions): Tensor;

  /** The output projection weight [vocab, hidden] (the embedding when tied). */
  abstract lmHeadWeight(): Tensor;

  /** Hidden states of new tokens given a cache (inference only; appends to the cache). */
  abstract forwardCached(ids: Int32Array, cache: KvCache): Tensor;

  newCache(capacity: number): KvCache {
    const c = this.config;
    capacity += this.promptHook?.cacheTokens ?? 0;
    const size = capacity * c.kvHeads * c.headDim;
    return {
      keys: Array.from({ length: c.layers }, () => new Float32Array(size)),
      values: Array.from({ length: c.layers }, () => new Float32Array(size)),
      length: 0,
      capacity,
    };
  }

  /**
   * Adds a head beside the decoder, e.g. a reward model's `score` (models/reward.ts). Its parameters are named
   * under `name` as transformers names them (score.weight), so saving, checkpoints and PEFT's modules_to_save
   * find them like any other parameter.
   */
  addHead<M extends Module>(name: string, head: M): M {
    if (this.children[name]) throw new Error(`the model already has a module '${name}'`);
    return this.addModule(name, head);
  }

  /** The output projection for logits and the next-token loss (refused for a headless reward model). */
  lmHead(): Tensor {
    if (this.headless) {
      throw new UserError('this model is a reward model (a score head and no lm_head): it scores sequences, it does not predict tokens', 'score preference pairs with ajuste eval --data pairs.jsonl, or load the causal LM it was trained from');
    }
    return this.lmHeadWeight();
  }

  logits(hidden: Tensor): Tensor {
    return linear(hidden, this.lmHead());
  }

  /**
   * Mean (or summed) cross-entropy of each token predicting the next one. `labels` are aligned with
   * the inputs (as in transformers); the shift happens here, and a token never predicts across a
   * packed-sequence boundary or a row end.
   */
  loss(hidden: Tensor, labels: Int32Array, batch: Batch, reduction: 'mean' | 'sum' = 'mean'): Tensor {
    const shifted = shiftLabels(labels, batch);
    const h = hidden.reshape([batch.B * batch.T, this.config.hidden]);
    return linearCrossEntropy(h, this.lmHead(), shifted, { reduction });
  }
}

/** target[t] = labels[t+1] within the same row and sequence, else IGNORE_INDEX. */
export function shiftLabels(labels: Int32Array, batch: Batch): Int32Array {
  const { B, T, segIds } = batch;
  const out = new Int32Array(B * T).fill(IGNORE_INDEX);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t + 1 < T; t++) {
      const i = b * T + t;
      if (segIds && segIds[i] !== segIds[i + 1]) continue;
      out[i] = labels[i + 1]!;
    }
  }
  return out;
}
