/**
 * Prompt tuning (Lester et al. 2021) as Hugging Face PEFT does it for causal LMs
 * (peft/tuners/prompt_tuning/model.py PromptEmbedding; peft_model.py PeftModelForCausalLM.forward):
 * `num_virtual_tokens` trained embeddings P [n, hidden] are put in front of every row's token embeddings,
 * the model runs on n + T positions with the virtual tokens at positions 0..n-1 and the real tokens at
 * n..n+T-1 (PEFT drops position_ids, so transformers counts from 0 over the whole input), causal mask over
 * all of them. Only the real tokens' hidden states are returned, so logits and loss keep the caller's B x T.
 *
 * Difference from PEFT: PEFT also scores the first real token as predicted by the last virtual token when
 * labels[0] is not -100 (it pads labels with n x -100); ajuste does not (SFT masks the prompt anyway).
 * Packed rows (several sequences in one row) are not supported: only the row's first sequence would see the
 * prompt, so applyPromptTuning's hook throws for them; pads (a trailing segment) are fine.
 *
 * Saved key: `prompt_embeddings` [n, hidden] (f32); init RANDOM N(0,1), SAMPLE_VOCAB rows of the embedding
 * matrix for random ids, TEXT rows for the tokenized init text repeated / cut to n.
 */
import { UserError } from '../errors.js';
import { bf16ToF32 } from '../io/dtypes.js';
import type { Batch, CausalLM, PromptHook } from '../models/causal-lm.js';
import { addGradOwned, needsGrad, parameter, record } from '../tensor/autograd.js';
import { Rng } from '../tensor/rng.js';
import { floatLike, Tensor } from '../tensor/tensor.js';
import { type PeftMethodHandle, promptTuningConfigJson, readAdapterConfigJson, readAdapterTensors, writeAdapterFolder } from './adapter-formats.js';

/** PEFT's PromptTuningConfig keys (the `prompt_tuning` section of a train config). */
export interface PromptTuningConfig {
  num_virtual_tokens: number | null;
  prompt_tuning_init: 'RANDOM' | 'TEXT' | 'SAMPLE_VOCAB';
  prompt_tuning_init_text: string | null;
}

/** [n, C] prompt and [B, T, C] embeddings -> [B, n + T, C] (the prompt repeated over the batch). */
export function prependPrompt(prompt: Tensor, h: Tensor): Tensor {
  const [n, C] = [prompt.dim(0), prompt.dim(1)];
  const [B, T] = [h.dim(0), h.dim(1)];
  if (h.dim(2) !== C) throw new Error(`prependPrompt: prompt ${prompt.describe()} and embeddings ${h.describe()} differ in width`);
  const S = n + T;
  const out = Tensor.empty([B, S, C], h.dtype);
  const O = out.f, P = prompt.f, H = h.f;
  for (let b = 0; b < B; b++) {
    O.set(P.subarray(0, n * C), b * S * C);
    O.set(H.subarray(b * T * C, (b + 1) * T * C), (b * S + n) * C);
  }
  if (needsGrad(prompt, h)) {
    record('prependPrompt', [prompt, h], out, (g) => {
      if (prompt.requiresGrad) {
        const gp = floatLike(g, n * C);
        for (let b = 0; b < B; b++) for (let i = 0; i < n * C; i++) gp[i]! += g[b * S * C + i]!;
        addGradOwned(prompt, gp);
      }
      if (h.requiresGrad) {
        const gh = floatLike(g, B * T * C, false);
        for (let b = 0; b < B; b++) gh.set(g.subarray((b * S + n) * C, (b + 1) * S * C), b * T * C);
        addGradOwned(h, gh);
      }
    });
  }
  return out;
}

/** [B, n + T, C] -> [B, T, C]: drops the first n positions of every row. */
export function dropLeading(h: Tensor, n: number): Tensor {
  const [B, S, C] = [h.dim(0), h.dim(1), h.dim(2)];
  const T = S - n;
  if (T < 0) throw new Error(`dropLeading: cannot drop ${n} of ${S} positions`);
  const out = Tensor.empty([B, T, C], h.dtype);
  const O = out.f, H = h.f;
  for (let b = 0; b < B; b++) O.set(H.subarray((b * S + n) * C, (b + 1) * S * C), b * T * C);
  if (needsGrad(h)) {
    record('dropLeading', [h], out, (g) => {
      const gh = floatLike(g, B * S * C);
      for (let b = 0; b < B; b++) gh.set(g.subarray(b * T * C, (b + 1) * T * C), (b * S + n) * C);
      addGradOwned(h, gh);
    });
  }
  return out;
}

/** The batch the layers see: n virtual tokens in front of each row, real positions shifted by n. */
export function batchWithVirtualTokens(batch: Batch, n: number): Batch {
  const { B, T } = batch;
  const S = n + T;
  const inputIds = new Int32Array(B * S);
  const positionIds = new Int32Array(B * S);
  const segIds = batch.segIds ? new Int32Array(B * S) : null;
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < n; i++) {
      positionIds[b * S + i] = i;
      if (segIds) segIds[b * S + i] = batch.segIds![b * T]!;
    }
    for (let t = 0; t < T; t++) {
      inputIds[b * S + n + t] = batch.inputIds[b * T + t]!;
      positionIds[b * S + n + t] = batch.positionIds[b * T + t]! + n;
      if (segIds) segIds[b * S + n + t] = batch.segIds![b * T + t]!;
    }
  }
  return { inputIds, positionIds, segIds, B, T: S };
}

/**
 * Throws when a row holds more than one sequence: a segment after the first whose position ids are not
 * all 0 (collateRows gives pads position 0 and a segment of their own; a packed sequence counts 0, 1, 2...).
 */
function checkNotPacked(batch: Batch): void {
  if (!batch.segIds) return;
  const { B, T, segIds, positionIds } = batch;
  for (let b = 0; b < B; b++) {
    for (let t = 1; t < T; t++) {
      if (segIds[b * T + t] !== segIds[b * T] && positionIds[b * T + t] !== 0) {
        throw new UserError('prompt tuning cannot train on packed rows (only the first sequence of a row would see the soft prompt)', 'set packing: false');
      }
    }
  }
}

export class PromptTuningHook implements PromptHook {
  constructor(readonly prompt: Tensor) {}
  get numVirtualTokens(): number {
    return this.prompt.dim(0);
  }
  begin(h: Tensor, batch: Batch): { h: Tensor; batch: Batch } {
    checkNotPacked(batch);
    return { h: prependPrompt(this.prompt, h), batch: batchWithVirtualTokens(batch, this.numVirtualTokens) };
  }
  end(h: Tensor): Tensor {
    return dropLeading(h, this.numVirtualTokens);
  }
  get cacheTokens(): number {
    return this.numVirtualTokens;
  }
  /** Generation: the virtual tokens run first (positions 0..n-1), as in PEFT's generate. */
  prefill(): Tensor {
    return this.prompt.reshape([1, this.numVirtualTokens, this.prompt.dim(1)]);
  }
}

/** Embedding-matrix rows as f32 (the embedding may be bf16). */
function embeddingRows(model: CausalLM, ids: number[]): Float32Array {
  const W = model.namedParameters().find(([n]) => n === 'model.embed_tokens.weight' || n === 'transformer.wte.weight')?.[1];
  if (!W) throw new Error('prompt tuning: the model has no model.embed_tokens / transformer.wte embedding');
  const C = W.dim(1), V = W.dim(0);
  const out = new Float32Array(ids.length * C);
  ids.forEach((id, r) => {
    if (!(id >= 0 && id < V)) throw new UserError(`prompt tuning init: token id ${id} is outside the vocabulary (${V})`);
    const row = W.dtype === 'bf16' ? bf16ToF32((W.data as Uint16Array).subarray(id * C, (id + 1) * C)) : W.f.subarray(id * C, (id + 1) * C);
    out.set(row, r * C);
  });
  return out;
}

/** PEFT's TEXT init ids: the tokenized text, cut to n or repeated ceil(n / len) times then cut. */
export function textInitIds(ids: number[], n: number): number[] {
  if (ids.length === 0) throw new UserError('prompt_tuning.prompt_tuning_init_text tokenizes to no tokens');
  const reps = Math.ceil(n / ids.length);
  return Array.from({ length: reps }, () => ids).flat().slice(0, n);
}

export interface PromptTuningOptions {
  rng: Rng;
  /** tokenizer(text).input_ids with special tokens, as PEFT uses (needed for prompt_tuning_init TEXT). */
  encode?: (text: string) => number[];
  /** Written as tokenizer_name_or_path (PEFT requires it for TEXT); defaults to the base model name. */
  tokenizerNameOrPath?: string | null;
}

/**
 * Applies prompt tuning to `model`: freezes every model parameter, installs the soft prompt as
 * model.promptHook. trainable = [['prompt_embeddings', P [n, hidden]]].
 */
export function applyPromptTuning(model: CausalLM, cfg: Partial<PromptTuningConfig>, opts: PromptTuningOptions): PeftMethodHandle & { hook: PromptTuningHook; remove(): void } {
  const c: PromptTuningConfig = { num_virtual_tokens: null, prompt_tuning_init: 'RANDOM', prompt_tuning_init_text: null, ...cfg };
  const n = c.num_virtual_tokens;
  if (n === null || !Number.isInteger(n) || n < 1) throw new UserError(`prompt_tuning.num_virtual_tokens must be a positive integer, got ${n}`);
  const C = model.config.hidden;
  for (const p of model.parameters()) p.requiresGrad = false;
  const prompt = Tensor.zeros([n, C]);
  if (c.prompt_tuning_init === 'RANDOM') opts.rng.fillNormal(prompt.f as Float32Array, 0, 1);
  else if (c.prompt_tuning_init === 'SAMPLE_VOCAB') {
    prompt.f.set(embeddingRows(model, Array.from({ length: n }, () => opts.rng.int(model.config.vocabSize))));
  } else {
    if (!c.prompt_tuning_init_text) throw new UserError("prompt_tuning_init 'TEXT' needs prompt_tuning.prompt_tuning_init_text");
    if (!opts.encode) throw new Error("applyPromptTuning: prompt_tuning_init 'TEXT' needs opts.encode (the tokenizer)");
    prompt.f.set(embeddingRows(model, textInitIds(opts.encode(c.prompt_tuning_init_text), n)));
  }
  parameter(prompt, 'prompt_embeddings');
  const hook = new PromptTuningHook(prompt);
  model.promptHook = hook;
  return {
    hook,
    trainable: [['prompt_embeddings', prompt]],
    save(dir, baseModelName) {
      const json = promptTuningConfigJson({ ...c, num_virtual_tokens: n, tokenizer_name_or_path: opts.tokenizerNameOrPath }, model.config, baseModelName);
      writeAdapterFolder(dir, new Map([['prompt_embeddings', prompt]]), json);
    },
    load(dir) {
      const json = readAdapterConfigJson(dir, 'PROMPT_TUNING');
      if (json.num_virtual_tokens !== n) throw new UserError(`${dir}/adapter_config.json: num_virtual_tokens is ${json.num_virtual_tokens}, this run uses ${n}`);
      readAdapterTensors(dir, new Map([['prompt_embeddings', prompt]]));
    },
    remove() {
      if (model.promptHook === hook) model.promptHook = null;
    },
  };
}

/** Reads a prompt-tuning adapter folder (PEFT or ajuste) and installs it on a loaded base model. */
export function loadPromptTuningAdapter(dir: string, model: CausalLM): ReturnType<typeof applyPromptTuning> {
  const json = readAdapterConfigJson(dir, 'PROMPT_TUNING');
  if (json.token_dim !== undefined && json.token_dim !== model.config.hidden) {
    throw new UserError(`${dir}/adapter_config.json: token_dim ${json.token_dim} does not match the model's hidden size ${model.config.hidden}`, 'was this adapter trained on a different base model?');
  }
  if (json.num_transformer_submodules !== undefined && json.num_transformer_submodules !== null && json.num_transformer_submodules !== 1) {
    throw new UserError(`${dir}/adapter_config.json: num_transformer_submodules ${json.num_transformer_submodules}; only causal LMs (1) are supported`);
  }
  const handle = applyPromptTuning(model, { num_virtual_tokens: json.num_virtual_tokens as number, prompt_tuning_init: 'RANDOM' }, { rng: new Rng(0) });
  handle.load(dir);
  return handle;
}
