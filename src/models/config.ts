/**
 * A model's config.json, normalised to the fields ajuste's architectures use. Unknown architectures
 * and options that would silently change the maths (unsupported rope types, activations) are errors.
 */
import { UserError } from '../errors.js';

export type Arch = 'llama' | 'gpt2';

export interface RopeScaling {
  rope_type: 'default' | 'llama3' | 'linear';
  factor?: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
}

export interface ModelConfig {
  /** config.json's model_type (llama, mistral, qwen2, gpt2, ...). */
  modelType: string;
  arch: Arch;
  vocabSize: number;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  normEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  partialRotaryFactor: number;
  maxPositions: number;
  tieEmbeddings: boolean;
  /** q/k/v projections have biases (qwen2, attention_bias). */
  qkvBias: boolean;
  /** o_proj has a bias (attention_bias). */
  oBias: boolean;
  mlpBias: boolean;
  activation: 'silu' | 'gelu_tanh' | 'gelu';
  torchDtype: 'float32' | 'bfloat16' | 'float16';
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  padTokenId: number | null;
  /** The raw config.json, written back unchanged when saving a merged model. */
  raw: Record<string, unknown>;
}

const LLAMA_FAMILY = new Set(['llama', 'mistral', 'qwen2', 'smollm', 'smollm2']);

function num(raw: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new UserError(`${file}: missing required key '${key}'`, 'is this a Hugging Face config.json of a causal language model?');
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new UserError(`${file}: key '${key}' must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function activationOf(name: unknown, file: string): ModelConfig['activation'] {
  switch (name) {
    case 'silu':
    case 'swish':
      return 'silu';
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
    case 'gelu_fast':
      return 'gelu_tanh';
    case 'gelu':
      return 'gelu';
    default:
      throw new UserError(`${file}: activation '${String(name)}' is not supported (supported: silu, gelu, gelu_new, gelu_pytorch_tanh)`);
  }
}

function dtypeOf(v: unknown): ModelConfig['torchDtype'] {
  if (v === 'bfloat16') return 'bfloat16';
  if (v === 'float16') return 'float16';
  return 'float32';
}

export function parseModelConfig(raw: Record<string, unknown>, file = 'config.json'): ModelConfig {
  const modelType = String(raw.model_type ?? '');
  const common = {
    modelType,
    raw,
    torchDtype: dtypeOf(raw.torch_dtype ?? raw.dtype),
    bosTokenId: (raw.bos_token_id as number | undefined) ?? null,
    eosTokenId: (raw.eos_token_id as number | number[] | undefined) ?? null,
    padTokenId: (raw.pad_token_id as number | undefined) ?? null,
  };
  if (LLAMA_FAMILY.has(modelType)) {
    const hidden = num(raw, 'hidden_size', file);
    const heads = num(raw, 'num_attention_heads', file);
    const rs = (raw.rope_scaling ?? null) as Record<string, unknown> | null;
    let ropeScaling: RopeScaling | null = null;
    if (rs) {
      const type = String(rs.rope_type ?? rs.type ?? 'default');
      if (type !== 'llama3' && type !== 'linear' && type !== 'default') {
        throw new UserError(`${file}: rope_scaling type '${type}' is not supported (supported: llama3, linear)`);
      }
      ropeScaling = { ...(rs as object), rope_type: type } as RopeScaling;
    }
    const attentionBias = raw.attention_bias === true;
    if (raw.use_sliding_window === true) throw new UserError(`${file}: sliding-window attention is not supported`);
    if (modelType === 'mistral' && typeof raw.sliding_window === 'number' && raw.sliding_window < num(raw, 'max_position_embeddings', file, 4096)) {
      throw new UserError(`${file}: mistral sliding_window ${raw.sliding_window} is smaller than the context; sliding-window attention is not supported`);
    }
    return {
      ...common,
      arch: 'llama',
      vocabSize: num(raw, 'vocab_size', file),
      hidden,
      intermediate: num(raw, 'intermediate_size', file),
      layers: num(raw, 'num_hidden_layers', file),
      heads,
      kvHeads: num(raw, 'num_key_value_heads', file, heads),
      headDim: num(raw, 'head_dim', file, hidden / heads),
      normEps: num(raw, 'rms_norm_eps', file, 1e-6),
      ropeTheta: num(raw, 'rope_theta', file, 10000),
      ropeScaling,
      partialRotaryFactor: num(raw, 'partial_rotary_factor', file, 1),
      maxPositions: num(raw, 'max_position_embeddings', file, 2048),
      // LlamaConfig, MistralConfig and Qwen2Config default tie_word_embeddings to false.
      tieEmbeddings: raw.tie_word_embeddings === true,
      qkvBias: modelType === 'qwen2' || attentionBias,
      oBias: attentionBias,
      mlpBias: raw.mlp_bias === true,
      activation: activationOf(raw.hidden_act ?? 'silu', file),
    };
  }
  if (modelType === 'gpt2') {
    const hidden = num(raw, 'n_embd', file);
    const heads = num(raw, 'n_head', file);
    return {
      ...common,
      arch: 'gpt2',
      vocabSize: num(raw, 'vocab_size', file),
      hidden,
      intermediate: num(raw, 'n_inner', file, 4 * hidden),
      layers: num(raw, 'n_layer', file),
      heads,
      kvHeads: heads,
      headDim: hidden / heads,
      normEps: num(raw, 'layer_norm_epsilon', file, 1e-5),
      ropeTheta: 0,
      ropeScaling: null,
      partialRotaryFactor: 0,
      maxPositions: num(raw, 'n_positions', file, 1024),
      tieEmbeddings: raw.tie_word_embeddings !== false,
      qkvBias: true,
      oBias: true,
      mlpBias: true,
      activation: activationOf(raw.activation_function ?? 'gelu_new', file),
    };
  }
  throw new UserError(
    `${file}: model_type '${modelType}' is not supported`,
    'supported: llama (Llama 2/3, TinyLlama, SmolLM), mistral, qwen2, gpt2',
  );
}

/** Inverse frequencies of the rotary embedding, with llama3 / linear scaling as transformers computes them. */
export function ropeInvFreq(c: ModelConfig): Float64Array {
  const rotary = Math.floor(c.headDim * c.partialRotaryFactor);
  const half = Math.floor(rotary / 2);
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = Math.fround(1 / c.ropeTheta ** ((2 * i) / rotary));
  const s = c.ropeScaling;
  if (!s || s.rope_type === 'default') return inv;
  if (s.rope_type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / (s.factor ?? 1);
    return inv;
  }
  // llama3
  const factor = s.factor ?? 8, low = s.low_freq_factor ?? 1, high = s.high_freq_factor ?? 4;
  const oldCtx = s.original_max_position_embeddings ?? 8192;
  const lowWavelen = oldCtx / low, highWavelen = oldCtx / high;
  for (let i = 0; i < half; i++) {
    const f = inv[i]!;
    const wavelen = (2 * Math.PI) / f;
    let out = wavelen > lowWavelen ? f / factor : f;
    const smooth = (oldCtx / wavelen - low) / (high - low);
    const smoothed = (1 - smooth) * (out / factor) + smooth * out;
    const isMedium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
    if (isMedium) out = smoothed;
    inv[i] = Math.fround(out);
  }
  return inv;
}
