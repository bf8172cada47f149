/**
 * A reward model, as TRL's RewardTrainer builds it: transformers' *ForSequenceClassification with num_labels 1,
 * i.e. any causal LM body plus a `score` head, Linear(hidden, 1, bias=False), read at one token of each sequence.
 * The causal LM's lm_head is not used.
 *
 * The token is transformers' (modeling_layers.py, GenericForSequenceClassification.forward):
 *
 *   last = argmax_t( t * (input_ids[t] != pad_token_id) )
 *
 * the rightmost token that is not the pad id, wherever the padding is. So when the pad id is also the EOS id (a
 * common tokenizer setting, and the bundled model's), an EOS that ends the sequence counts as padding and the
 * reward is read at the token before it; a row of nothing but pad ids is read at position 0. With no pad id at
 * all transformers reads the last position, and refuses batches of more than one row.
 *
 * The pad id is TRL's: the tokenizer's pad_token, else its eos_token (RewardTrainer sets config.pad_token_id
 * to it; a full reward model saved by ajuste writes it there too).
 */
import { UserError } from '../errors.js';
import { bf16ToF32, f16ToF32 } from '../io/dtypes.js';
import { Linear } from '../nn/layers.js';
import { gatherRows, linear } from '../tensor/ops.js';
import { Rng } from '../tensor/rng.js';
import { Tensor } from '../tensor/tensor.js';
import type { RawTensor } from './build.js';
import type { Batch, CausalLM, ForwardOptions } from './causal-lm.js';
import type { ModelConfig } from './config.js';

/** The head's module name and its weight's name (transformers' `self.score`). */
export const SCORE = 'score';
export const SCORE_WEIGHT = 'score.weight';

/** For each of the B rows of [B, T] ids, the flat index b*T + t of the token its reward is read at. */
export function pooledRows(inputIds: Int32Array, B: number, T: number, padId: number | null): Int32Array {
  if (padId === null && B > 1) throw new UserError('a reward model cannot score a batch of several rows without a pad token id', 'give the tokenizer a pad_token or an eos_token');
  const out = new Int32Array(B);
  for (let b = 0; b < B; b++) {
    let last = padId === null ? T - 1 : 0;
    if (padId !== null) {
      for (let t = T - 1; t > 0; t--) {
        if (inputIds[b * T + t] !== padId) {
          last = t;
          break;
        }
      }
    }
    out[b] = b * T + last;
  }
  return out;
}

/** The pad id pooling uses and batches are padded with (TRL: tokenizer pad_token, else eos_token). */
export function rewardPadId(tok: { padId: number | null; eosId: number | null }): number {
  const id = tok.padId ?? tok.eosId;
  if (id === null) throw new UserError('a reward model needs a pad token to find the last token of each sequence, and the tokenizer has neither pad_token nor eos_token', 'set pad_token (or eos_token) in tokenizer_config.json');
  return id;
}

export interface ScoreHeadOptions {
  /** The pad id of the batches (rewardPadId). */
  padId: number | null;
  /** A saved head (`score.weight` of a reward model's checkpoint or adapter); else a new one. */
  weight?: RawTensor | null;
  /** Seeds a new head: normal(0, initializer_range), as transformers' _init_weights. */
  seed?: number;
  /** Where a saved weight came from, for errors. */
  source?: string;
}

/** A causal LM body with a score head: one scalar reward per sequence. */
export class RewardModel {
  private constructor(
    readonly lm: CausalLM,
    readonly padId: number | null,
  ) {}

  /** Adds the `score` head to lm (read from a saved weight, or newly initialised) and returns the reward model. */
  static attach(lm: CausalLM, o: ScoreHeadOptions): RewardModel {
    const C = lm.config.hidden;
    const w = Tensor.zeros([1, C]);
    if (o.weight) {
      const s = o.weight.shape;
      if (s.length !== 2 || s[1] !== C) throw new UserError(`${o.source ?? 'the checkpoint'}: score.weight has shape [${s}], a reward head over this model is [1, ${C}]`);
      if (s[0] !== 1) {
        throw new UserError(`${o.source ?? 'the checkpoint'}: score.weight has ${s[0]} rows: a classifier with ${s[0]} labels, not a reward model (num_labels 1)`, 'train a reward model from the causal LM, or from a checkpoint with num_labels 1');
      }
      w.f.set(widen(o.weight, o.source ?? 'the checkpoint'));
    } else {
      const std = typeof lm.config.raw.initializer_range === 'number' ? lm.config.raw.initializer_range : 0.02;
      new Rng(o.seed ?? 0).fillNormal(w.f as Float32Array, 0, std);
    }
    w.persistent = true;
    lm.addHead(SCORE, new Linear(w));
    return new RewardModel(lm, o.padId);
  }

  get score(): Linear {
    return this.lm.getModule(SCORE) as Linear;
  }

  /** Rewards [B] of a batch of B padded rows, one sequence a row (not packed). */
  rewards(batch: Batch, opts: ForwardOptions = {}): Tensor {
    const hidden = this.lm.forwardHidden(batch, opts);
    const pooled = gatherRows(hidden, pooledRows(batch.inputIds, batch.B, batch.T, this.padId));
    return linear(pooled, this.score.weight).reshape([batch.B]);
  }
}

function widen(raw: RawTensor, source: string): Float32Array {
  const n = raw.shape.reduce((a, b) => a * b, 1);
  const v = raw.data;
  switch (raw.dtype) {
    case 'F32':
      return new Float32Array(v.buffer, v.byteOffset, n);
    case 'BF16':
      return bf16ToF32(new Uint16Array(v.buffer, v.byteOffset, n));
    case 'F16':
      return f16ToF32(new Uint16Array(v.buffer, v.byteOffset, n));
    default:
      throw new UserError(`${source}: score.weight has dtype ${raw.dtype}; expected F32, BF16 or F16`);
  }
}

/** transformers' sequence-classification class for a model (LlamaForCausalLM -> LlamaForSequenceClassification). */
export function sequenceClassificationClass(config: ModelConfig): string {
  const archs = config.raw.architectures;
  const first = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : null;
  if (first?.endsWith('ForSequenceClassification')) return first;
  if (first && /(ForCausalLM|LMHeadModel)$/.test(first)) return first.replace(/(ForCausalLM|LMHeadModel)$/, 'ForSequenceClassification');
  const byType: Record<string, string> = { llama: 'Llama', mistral: 'Mistral', qwen2: 'Qwen2', gpt2: 'GPT2' };
  return `${byType[config.modelType] ?? 'Llama'}ForSequenceClassification`;
}

/**
 * config.json of a reward model as transformers writes it after TRL's RewardTrainer: the base config with the
 * sequence-classification architecture, the one label (num_labels is not stored: transformers derives it from
 * id2label) and the pad token id pooling uses.
 */
export function rewardModelConfig(config: ModelConfig, padTokenId: number): Record<string, unknown> {
  const { num_labels: _n, ...raw } = config.raw;
  return { ...raw, architectures: [sequenceClassificationClass(config)], id2label: { '0': 'LABEL_0' }, label2id: { LABEL_0: 0 }, pad_token_id: padTokenId };
}
