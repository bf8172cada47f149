/**
 * What every training recipe (sft.ts, dpo.ts, reward.ts) shares: the run's config keys, loading the model (4-bit
 * where asked), applying the method (LoRA, full, IA3, ...) and printing its parameter counts and memory estimate,
 * the optimizer, checkpoint I/O, resume, the trainer settings taken from the config, and the final artefacts in
 * output_dir (a PEFT adapter or a full model folder, the tokenizer files, train_results.json).
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DataRecord } from '../data/records.js';
import { Tokenizer } from '../data/tokenizer.js';
import { UserError } from '../errors.js';
import { resolveModel } from '../io/hub.js';
import { readSafetensors, readSafetensorsFolder, writeSafetensors as writeSafetensorsFile } from '../io/safetensors.js';
import { buildModel, randomWeights, type RawTensor } from '../models/build.js';
import type { CausalLM } from '../models/causal-lm.js';
import { readModelConfig } from '../models/load.js';
import { SCORE_WEIGHT } from '../models/reward.js';
import { AdamW, decayGroups, type Optimizer, Sgd } from '../optim/adamw.js';
import { AdamW8bit } from '../optim/adamw8bit.js';
import { PagedAdamW } from '../optim/paged.js';
import { Linear4bit, logicalParameterCount, type Quant4Options } from '../quant/linear4bit.js';
import { warmupSteps } from '../optim/schedule.js';
import { loadAdapterWeights, saveAdapter } from '../peft/adapter-io.js';
import { type LoraConfig, loraConfig } from '../peft/config.js';
import { applyLora } from '../peft/lora.js';
import { applyIa3, type Ia3Config } from '../peft/ia3.js';
import { applyBottleneck, type BottleneckConfig } from '../peft/bottleneck.js';
import { applyPrefixTuning, type PrefixTuningConfig } from '../peft/prefix-tuning.js';
import { applyPromptTuning, type PromptTuningConfig } from '../peft/prompt-tuning.js';
import { type SaveMergedOptions, saveMergedModel } from '../peft/merge.js';
import { parameter } from '../tensor/autograd.js';
import { Rng } from '../tensor/rng.js';
import type { Tensor } from '../tensor/tensor.js';
import { type CheckpointIO, latestCheckpoint } from './checkpoint.js';
import { estimateMemory, estimatePpoMemory, formatMB, type MemoryOptions } from './memory-estimate.js';
import type { TrainResult } from './trainer.js';


/** The keys of the training config this recipe reads (snake_case, as TRL / transformers / PEFT name them). */
export interface SftConfig {
  model_name_or_path: string;
  revision?: string | null;
  torch_dtype?: 'auto' | 'float32' | 'bfloat16';
  method: 'lora' | 'qlora' | 'full' | 'bitfit' | 'ln_tuning' | string;
  init_from_scratch?: boolean;
  lora?: Partial<LoraConfig>;
  ia3?: Partial<Ia3Config>;
  bottleneck?: Partial<BottleneckConfig>;
  prompt_tuning?: Partial<PromptTuningConfig>;
  prefix_tuning?: Partial<PrefixTuningConfig>;
  dataset_path: string;
  eval_dataset_path?: string | null;
  eval_split?: number;
  dataset_text_field?: string;
  max_length: number;
  packing?: boolean;
  completion_only_loss?: boolean | null;
  assistant_only_loss?: boolean;
  skip_bad_records?: boolean;
  max_train_samples?: number | null;
  /** Save / reuse output_dir/tokenized.safetensors (SFT; default true). */
  cache_tokenized?: boolean;
  output_dir: string;
  num_train_epochs: number;
  max_steps: number;
  per_device_train_batch_size: number;
  per_device_eval_batch_size?: number;
  gradient_accumulation_steps: number;
  learning_rate: number;
  weight_decay: number;
  adam_beta1?: number;
  adam_beta2?: number;
  adam_epsilon?: number;
  max_grad_norm: number;
  lr_scheduler_type: 'linear' | 'cosine' | 'constant' | 'constant_with_warmup';
  warmup_ratio: number;
  warmup_steps: number;
  optim: string;
  logging_steps: number;
  eval_strategy?: 'no' | 'steps' | 'epoch';
  eval_steps?: number | null;
  save_steps: number;
  save_total_limit?: number | null;
  seed: number;
  gradient_checkpointing?: boolean;
  resume_from_checkpoint?: boolean | string | null;
  dataloader_drop_last?: boolean;
  /** transformers' BitsAndBytesConfig: quantize the decoder Linear layers to 4 bits while loading (QLoRA). */
  load_in_4bit?: boolean;
  /** 'nf4' | 'fp4'; default nf4 for method qlora, fp4 (transformers' default) for method lora + load_in_4bit. */
  bnb_4bit_quant_type?: 'nf4' | 'fp4';
  /** Default true for method qlora, false (transformers' default) for lora + load_in_4bit. */
  bnb_4bit_use_double_quant?: boolean;
  /** Accepted and recorded; ajuste computes the 4-bit products in float32 whatever it says. */
  bnb_4bit_compute_dtype?: 'float32' | 'bfloat16' | 'float16' | null;
  /** Bytes of optimizer state kept in memory by paged_adamw_*; default: one parameter's states at a time. */
  optim_memory_budget?: number | null;
}

export interface RunHooks {
  onLog?: (row: Record<string, number>) => void;
  onInfo?: (message: string) => void;
  signal?: AbortSignal;
}

export interface SftResult extends TrainResult {
  outputDir: string;
  trainableParameters: number;
  totalParameters: number;
  trainExamples: number;
  evalExamples: number;
  truncated: number;
}

/** Splits records into train/eval with a seeded shuffle (eval_split is a fraction). */
export function splitRecords(records: DataRecord[], fraction: number, seed: number): [DataRecord[], DataRecord[]] {
  if (!(fraction > 0)) return [records, []];
  if (fraction >= 1) throw new UserError(`eval_split must be a fraction below 1, got ${fraction}`);
  const idx = new Rng(seed).shuffle([...records.keys()]);
  const n = Math.max(1, Math.round(records.length * fraction));
  const evalSet = new Set(idx.slice(0, n));
  return [records.filter((_, i) => !evalSet.has(i)), records.filter((_, i) => evalSet.has(i))];
}

/** What a method trains, and how its trainable state is saved and restored (adapter files, or raw weights). */
export interface Trainable {
  trainable: [string, Tensor][];
  /** A PEFT adapter (LoRA, IA3, prompt/prefix tuning): written to output_dir at the end instead of a full model. */
  adapter: { save(dir: string): void; load(dir: string): void } | null;
}

/**
 * Marks the parameters a method trains; returns them with their names. `heads` (module names, e.g. a reward
 * model's score) train in full with every method that saves a full model (full, bitfit, ln_tuning); PEFT
 * methods train them through their own modules_to_save.
 */
export function selectTrainable(model: CausalLM, c: SftConfig, method: string, lora: LoraConfig, tok: Tokenizer, dropoutRng: Rng, heads: readonly string[] = []): Trainable {
  const seed = c.seed;
  const base = c.model_name_or_path;
  if (method === 'lora' || method === 'qlora') {
    const applied = applyLora(model, lora, new Rng(seed), dropoutRng);
    return { trainable: applied.trainable, adapter: { save: (d) => saveAdapter(d, lora, applied, base), load: (d) => loadAdapterWeights(d, model, applied) } };
  }
  const handle =
    method === 'ia3'
      ? applyIa3(model, c.ia3 ?? {}, new Rng(seed))
      : method === 'prompt_tuning'
        ? applyPromptTuning(model, c.prompt_tuning ?? {}, { rng: new Rng(seed), encode: (t) => tok.encode(t), tokenizerNameOrPath: base })
        : method === 'prefix_tuning'
          ? applyPrefixTuning(model, c.prefix_tuning ?? {}, { rng: new Rng(seed) })
          : method === 'bottleneck'
            ? applyBottleneck(model, c.bottleneck ?? {}, new Rng(seed))
            : null;
  if (handle) {
    if (method === 'prompt_tuning' && c.packing) throw new UserError('packing is not supported with prompt_tuning (the virtual tokens go in front of each row)', 'set packing: false');
    return { trainable: handle.trainable, adapter: { save: (d) => handle.save(d, base), load: (d) => handle.load(d) } };
  }
  const pick: Record<string, (name: string) => boolean> = {
    full: () => true,
    bitfit: (n) => n.endsWith('.bias'),
    ln_tuning: (n) => /norm|ln_\d|ln_f/.test(n),
  };
  const want = pick[method];
  if (!want) throw new UserError(`method '${method}' is not available`, 'use one of: lora, qlora, full, bitfit, ln_tuning, ia3, prompt_tuning, prefix_tuning, bottleneck');
  const trainable: [string, Tensor][] = [];
  for (const [name, p] of model.namedParameters()) {
    p.requiresGrad = false;
    if (want(name) || heads.some((h) => name.startsWith(`${h}.`))) trainable.push([name, parameter(p, name)]);
  }
  if (trainable.length === 0) throw new UserError(`method '${method}' found nothing to train in this model (e.g. bitfit on a model without biases)`);
  return { trainable, adapter: null };
}

export function makeOptimizer(c: SftConfig, trainable: [string, Tensor][]): Optimizer {
  const groups = decayGroups(trainable, c.weight_decay);
  const adam = { lr: c.learning_rate, betas: [c.adam_beta1 ?? 0.9, c.adam_beta2 ?? 0.999] as [number, number], eps: c.adam_epsilon ?? 1e-8 };
  switch (c.optim) {
    case 'adamw_torch':
    case 'adamw_torch_fused':
    case 'adamw':
      return new AdamW(groups, adam);
    case 'adamw_8bit':
    case 'adamw_bnb_8bit':
      return new AdamW8bit(groups, adam);
    case 'paged_adamw_32bit':
    case 'paged_adamw_8bit': {
      const budget = c.optim_memory_budget ?? undefined;
      if (budget !== undefined && !(Number.isInteger(budget) && budget > 0)) throw new UserError(`optim_memory_budget must be a positive number of bytes, got ${budget}`);
      mkdirSync(c.output_dir, { recursive: true });
      try {
        return new PagedAdamW(groups, { ...adam, bits: c.optim === 'paged_adamw_8bit' ? 8 : 32, memoryBudget: budget, dir: c.output_dir });
      } catch (e) {
        throw new UserError((e as Error).message, 'raise optim_memory_budget, or leave it unset (one parameter at a time)');
      }
    }
    case 'sgd':
      return new Sgd(groups, { lr: c.learning_rate });
    default:
      throw new UserError(`optim '${c.optim}' is not available in this version`, 'use adamw_torch, adamw_8bit, paged_adamw_32bit, paged_adamw_8bit or sgd');
  }
}

/** The 4-bit loading options a config asks for (null: load as stored). */
function quantOptions(c: SftConfig, method: string, info: (m: string) => void): Quant4Options | null {
  if (method !== 'qlora' && c.load_in_4bit !== true) return null;
  if (method !== 'qlora' && method !== 'lora') throw new UserError(`load_in_4bit works with method lora or qlora, not '${method}'`, '4-bit base weights are frozen; train adapters on them');
  const qlora = method === 'qlora';
  const quantType = c.bnb_4bit_quant_type ?? (qlora ? 'nf4' : 'fp4');
  if (quantType !== 'nf4' && quantType !== 'fp4') throw new UserError(`bnb_4bit_quant_type must be nf4 or fp4, got ${JSON.stringify(quantType)}`);
  const computeDtype = c.bnb_4bit_compute_dtype ?? (qlora ? 'bfloat16' : 'float32');
  if (computeDtype !== 'float32' && computeDtype !== 'bfloat16' && computeDtype !== 'float16') {
    throw new UserError(`bnb_4bit_compute_dtype must be float32, bfloat16 or float16, got ${JSON.stringify(computeDtype)}`);
  }
  const doubleQuant = c.bnb_4bit_use_double_quant ?? qlora;
  if (computeDtype !== 'float32') info(`bnb_4bit_compute_dtype ${computeDtype}: the 4-bit products are computed in float32 on the CPU (more precise than a ${computeDtype} matmul)`);
  return { quantType, doubleQuant, computeDtype, blocksize: 64 };
}


/** A model loaded for training: its folder, config, tokenizer, and the built model (4-bit where asked). */
export interface LoadedModel {
  dir: string;
  modelConfig: ReturnType<typeof readModelConfig>;
  tok: Tokenizer;
  model: CausalLM;
  load4bit: Quant4Options | null;
  /** `score.weight` of a reward model's checkpoint (transformers' *ForSequenceClassification), else null. */
  scoreWeight: RawTensor | null;
}

export async function loadModelForTraining(c: SftConfig, info: (m: string) => void): Promise<LoadedModel> {
  const method = c.method;
  const dir = await resolveModel(c.model_name_or_path, { revision: c.revision ?? undefined });
  const modelConfig = readModelConfig(dir);
  const load4bit = quantOptions(c, method, info);
  const qc = modelConfig.raw.quantization_config as Record<string, unknown> | undefined;
  const savedIn4bit = qc?.quant_method === 'bitsandbytes' && qc.load_in_4bit === true;
  if (savedIn4bit && method !== 'lora' && method !== 'qlora') throw new UserError(`${dir} holds a 4-bit (bitsandbytes) model; method '${method}' cannot train it`, 'use method: qlora (LoRA adapters over the frozen 4-bit base)');
  const tok = Tokenizer.fromFolder(dir);
  const full = method === 'full';
  const weights: Map<string, RawTensor> = c.init_from_scratch ? randomWeights(modelConfig, c.seed) : readSafetensorsFolder(dir, { copy: full }).tensors;
  const dtype = full ? 'float32' : (c.torch_dtype ?? 'auto');
  const model = buildModel(modelConfig, weights, { dtype, writable: full, load4bit });
  const q4 = model.namedModules().filter(([, m]) => m instanceof Linear4bit).map(([, m]) => m as Linear4bit);
  if (q4.length) {
    const numel = q4.reduce((s, m) => s + m.state.numel, 0);
    const bytes = q4.reduce((s, m) => s + m.weightBytes(false), 0);
    const tables = q4.reduce((s, m) => s + m.weightBytes() - m.weightBytes(false), 0);
    const st = q4[0]!.state;
    info(
      `${savedIn4bit ? 'loaded' : 'quantized'} ${q4.length} linear layers to ${st.quantType}${st.dq ? ' with double quantization' : ''} (blocksize ${st.blocksize}): ` +
        `${(bytes / numel).toFixed(4)} bytes/param for ${numel.toLocaleString('en-US')} base weights (+ ${(tables / 1024).toFixed(1)} KiB of code tables)`,
    );
  }
  return { dir, modelConfig, tok, model, load4bit, scoreWeight: weights.get(SCORE_WEIGHT) ?? null };
}

/** What a method trains in a loaded model, how it is checkpointed, and the parameter counts (printed). */
export interface PreparedMethod {
  trainable: [string, Tensor][];
  adapter: Trainable['adapter'];
  io: CheckpointIO;
  trainableParams: number;
  totalParams: number;
}

/** What trainer ppo adds to the memory estimate: its other models and its batch shapes. */
export interface PpoMemoryShape {
  /** The reward model's architecture (the value model is a second copy of it). */
  rewardConfig: ReturnType<typeof readModelConfig>;
  /** Rows of one rollout batch (per_device_train_batch_size × gradient_accumulation_steps). */
  rollout: number;
  /** Row length: the longest prompt + response_length. */
  seqLength: number;
  responseLength: number;
}

/**
 * Applies the method (LoRA, full, ...) to the loaded model and prints its parameter counts and the memory
 * the run should need, before it starts (the same arithmetic as `ajuste memory`) for `rows` rows a micro-batch
 * of max_length tokens (for trainer ppo, `ppo` gives the rows' length and the reward and value models).
 */
export function prepareMethod(m: LoadedModel, c: SftConfig, rows: number, info: (m: string) => void, heads: readonly string[] = [], ppo: PpoMemoryShape | null = null): PreparedMethod {
  const { model, tok } = m;
  const method = c.method;
  const dropoutRng = new Rng(c.seed + 1);
  const lora = loraConfig(c.lora ?? {});
  const { trainable, adapter } = selectTrainable(model, c, method, lora, tok, dropoutRng, heads);
  const totalParams = logicalParameterCount(model);
  const trainableParams = trainable.reduce((s, [, p]) => s + p.size, 0);
  info(`trainable params: ${trainableParams.toLocaleString('en-US')} || all params: ${totalParams.toLocaleString('en-US')} || trainable%: ${((100 * trainableParams) / totalParams).toFixed(4)}`);
  try {
    const line = memoryEstimateLine(m, c, method, lora, rows, trainable, ppo);
    if (line) info(line);
  } catch (e) {
    info(`memory estimate unavailable: ${(e as Error).message}`);
  }
  const io: CheckpointIO = {
    save: (d) => (adapter ? adapter.save(d) : saveTrainableWeights(d, trainable)),
    load: (d) => (adapter ? adapter.load(d) : loadTrainableWeights(d, trainable)),
    state: () => ({ dropout_rng: dropoutRng.getState() }),
    restore: (s) => s.dropout_rng && dropoutRng.setState(s.dropout_rng as number[]),
  };
  return { trainable, adapter, io, trainableParams, totalParams };
}

/**
 * The line prepareMethod prints: the estimate of the whole run (estimateMemory; estimatePpoMemory for trainer
 * ppo), or null for the methods it does not model (ia3, prompt/prefix tuning, ln_tuning, bitfit).
 */
export function memoryEstimateLine(m: LoadedModel, c: SftConfig, method: string, lora: LoraConfig, rows: number, trainable: [string, Tensor][], ppo: PpoMemoryShape | null): string | null {
  const { modelConfig, load4bit } = m;
  const targets = lora.target_modules === 'all-linear' ? 'all-linear' : Array.isArray(lora.target_modules) ? lora.target_modules : undefined;
  const optim = c.optim as MemoryOptions['optim'];
  const gradientCheckpointing = c.gradient_checkpointing ?? false;
  if (ppo) {
    if (method !== 'lora' && method !== 'qlora') return null;
    const e = estimatePpoMemory(modelConfig, ppo.rewardConfig, {
      method, r: lora.r, targets, loraDropout: lora.lora_dropout, micro: rows, rollout: ppo.rollout, seqLength: ppo.seqLength, responseLength: ppo.responseLength,
      optim, gradientCheckpointing, doubleQuant: load4bit?.doubleQuant,
    });
    return (
      `memory estimate (ppo: policy + reward model + value model): ${formatMB(e.total)} MB (weights ${formatMB(e.weights)} = policy ${formatMB(e.policy.weights)} + reward ${formatMB(e.rewardWeights)} + value ${formatMB(e.valueWeights)}, ` +
      `gradients ${formatMB(e.gradients)}, optimizer ${formatMB(e.optimizer.resident)} (policy LoRA + value LoRA and score head), ` +
      `activations ${formatMB(e.activations.peak)} MB: rollout ${formatMB(e.activations.rollout)} at ${ppo.rollout} x ${ppo.seqLength}, update ${formatMB(e.activations.update)} at ${rows} x ${ppo.seqLength}; ` +
      'not counted: the sampling KV cache and rollout buffers)'
    );
  }
  let o: MemoryOptions;
  let label = '';
  if (method === 'full' || method === 'lora' || method === 'qlora') {
    const lc = method === 'full' ? null : lora;
    o = { method, r: lc?.r, targets: lc ? targets : undefined, loraDropout: lc?.lora_dropout };
  } else if (method === 'bottleneck') {
    o = { method: load4bit ? 'qlora' : 'lora', bottleneck: trainable.map(([, p]) => p.size) };
    label = " (bottleneck: adapter activations not counted)";
  } else return null;
  const est = estimateMemory(modelConfig, { ...o, batch: rows, maxLength: c.max_length, optim, gradientCheckpointing, doubleQuant: load4bit?.doubleQuant });
  return `memory estimate${label}: ${formatMB(est.total)} MB (weights ${formatMB(est.weights)}, gradients ${formatMB(est.gradients)}, optimizer ${formatMB(est.optimizer.resident)}, activations ${formatMB(est.activations?.peak ?? 0)} MB at batch ${rows} x ${c.max_length})`;
}

/** The checkpoint to resume from (resume_from_checkpoint true: the newest in output_dir), or null. */
export function resumePath(c: SftConfig, info: (m: string) => void): string | null {
  let resumeFrom: string | null = null;
  if (c.resume_from_checkpoint === true) {
    resumeFrom = latestCheckpoint(c.output_dir);
    if (!resumeFrom) throw new UserError(`resume_from_checkpoint is true but ${c.output_dir} has no checkpoint-N folder`);
  } else if (typeof c.resume_from_checkpoint === 'string') resumeFrom = c.resume_from_checkpoint;
  if (resumeFrom) info(`resuming from ${resumeFrom}`);
  return resumeFrom;
}

/** The trainer settings every recipe takes from the config as they are. */
export function trainerSettings(c: SftConfig, maxSteps: number, evalSteps: number, hooks: RunHooks) {
  return {
    outputDir: c.output_dir,
    maxSteps,
    learningRate: c.learning_rate,
    scheduler: c.lr_scheduler_type,
    warmupSteps: warmupSteps(maxSteps, c.warmup_steps, c.warmup_ratio),
    gradientAccumulationSteps: c.gradient_accumulation_steps,
    maxGradNorm: c.max_grad_norm,
    gradientCheckpointing: c.gradient_checkpointing ?? false,
    loggingSteps: c.logging_steps,
    evalSteps,
    saveSteps: c.save_steps,
    saveTotalLimit: c.save_total_limit ?? null,
    signal: hooks.signal,
    onLog: hooks.onLog,
  };
}

/** Optimizer steps of the run (max_steps, or num_train_epochs over batchesPerEpoch micro-batches). */
export function totalSteps(c: SftConfig, batchesPerEpoch: number): { maxSteps: number; perEpoch: number } {
  const perEpoch = Math.ceil(batchesPerEpoch / c.gradient_accumulation_steps);
  return { perEpoch, maxSteps: c.max_steps > 0 ? c.max_steps : Math.max(1, Math.ceil(c.num_train_epochs * perEpoch)) };
}

/** Runs the trainer with the run's optimizer (closed afterwards: paged optimizers hold a file). */
export async function trainWith(c: SftConfig, trainable: [string, Tensor][], run: (optimizer: Optimizer) => Promise<TrainResult>): Promise<TrainResult> {
  const optimizer = makeOptimizer(c, trainable);
  try {
    return await run(optimizer);
  } finally {
    if (optimizer instanceof PagedAdamW) optimizer.close();
  }
}

/**
 * The final artefacts in output_dir itself, as trainer.save_model() does: the adapter or the full model, the
 * tokenizer files, and train_results.json. `saveOptions` say how a full model is written (a reward model).
 */
export function finishRun<T extends TrainResult>(c: SftConfig, m: LoadedModel, adapter: Trainable['adapter'], summary: T, info: (m: string) => void, saveOptions: SaveMergedOptions = {}): T {
  if (!summary.stoppedEarly) {
    mkdirSync(c.output_dir, { recursive: true });
    if (adapter) adapter.save(c.output_dir);
    else saveMergedModel(m.model, m.dir, c.output_dir, saveOptions);
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja', 'tokenizer.model', 'added_tokens.json']) {
      if (existsSync(join(m.dir, f))) copyFileSync(join(m.dir, f), join(c.output_dir, f));
    }
  }
  info(`measured peak memory (RSS): ${summary.peakRssMb.toFixed(0)} MB`);
  const { history: _h, ...json } = summary;
  writeFileSync(join(c.output_dir, 'train_results.json'), JSON.stringify(json, null, 2) + '\n');
  return summary;
}


function saveTrainableWeights(dir: string, trainable: [string, Tensor][]): void {
  const tensors: Record<string, RawTensor> = {};
  for (const [name, p] of trainable) tensors[name] = { dtype: 'F32', shape: [...p.shape], data: p.f as Float32Array };
  writeSafetensorsFile(join(dir, 'trainable.safetensors'), tensors);
}

function loadTrainableWeights(dir: string, trainable: [string, Tensor][]): void {
  const f = readSafetensors(join(dir, 'trainable.safetensors'), { copy: true });
  for (const [name, p] of trainable) {
    const t = f.tensors.get(name);
    if (!t || t.data.length !== p.size) throw new UserError(`checkpoint ${dir} has no tensor '${name}' of the right size`);
    p.f.set(t.data as Float32Array);
  }
}

