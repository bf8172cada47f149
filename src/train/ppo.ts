/**
 * RLHF with PPO, as TRL's PPOTrainer (huggingface/trl trl/experimental/ppo/ppo_trainer.py, the "PPOv2" trainer;
 * shared/reference/peft-spec.md §3.4). One training step ("update") is one rollout batch:
 *
 *   prompts (per_device_train_batch_size × gradient_accumulation_steps, shuffled, drop_last)
 *   → sample response_length tokens each (temperature, top_k 0, top_p 1, stop at EOS, pad after)
 *   → score with the reward model; − missing_eos_penalty for responses without EOS
 *   → old log-probabilities (policy), reference log-probabilities, values (value model)
 *   → rewards, advantages, returns (ppo-loss.ts)
 *   → num_ppo_epochs × num_mini_batches shuffled mini-batches: one optimizer step each, over micro-batches of
 *     per_device_train_batch_size rows (gradients averaged), loss = pg_loss + vf_coef · vf_loss
 *
 * Models (dropout off in all, as TRL's disable_dropout_in_model):
 * - policy: the model as loaded with LoRA / QLoRA applied (what trains and is saved, as a PEFT adapter);
 * - reference: the same model with its adapters switched off (every LoraLinear's scaling set to 0 for the
 *   reference pass, then restored): TRL's null_ref_context (`disable_adapter()`) for PEFT policies, with no
 *   second copy of the weights. It is one extra forward pass per rollout, no extra memory;
 * - reward model: reward_model_path, a reward model folder (…ForSequenceClassification, score.weight) or a
 *   SEQ_CLS adapter saved by trainer reward (loaded on its base); frozen;
 * - value model: initialised from the reward model as TRL's examples do (a second copy), and trained with it:
 *   its score head in full and LoRA adapters on its body (the run's lora settings; a SEQ_CLS adapter's own
 *   LoRA weights when the reward model is one). TRL trains the whole value model; adapters are the
 *   affordable equivalent here. The value model is checkpointed (value_model.safetensors) but not exported.
 *
 * The LR schedule steps once per update (TRL creates it with num_training_steps = number of updates). A
 * checkpoint holds the policy adapter, the value model's trainable weights, the optimizer, the prompt
 * loader's position and the sampling and mini-batch RNG streams, so a resumed run continues identically.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate } from '../eval/generate.js';
import type { ChatMessage, Tokenizer } from '../data/tokenizer.js';
import { UserError } from '../errors.js';
import { resolveModel } from '../io/hub.js';
import { readSafetensors, readSafetensorsFolder, writeSafetensors } from '../io/safetensors.js';
import { buildModel } from '../models/build.js';
import type { Batch, CausalLM } from '../models/causal-lm.js';
import { readModelConfig } from '../models/load.js';
import { RewardModel, rewardPadId, SCORE_WEIGHT } from '../models/reward.js';
import { linearSequenceLogProbs } from '../nn/ops/loss.js';
import { clipGradNorm } from '../optim/adamw.js';
import { learningRate, warmupSteps } from '../optim/schedule.js';
import { loadRewardAdapter } from '../peft/adapter-io.js';
import { loraConfig } from '../peft/config.js';
import { applyLora, LoraLinear } from '../peft/lora.js';
import { backward, noGrad, scope } from '../tensor/autograd.js';
import { gatherRows, linear, scale } from '../tensor/ops.js';
import { Rng } from '../tensor/rng.js';
import type { Tensor } from '../tensor/tensor.js';
import { type CheckpointIO, latestCheckpoint, loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { MetricsLog } from './metrics.js';
import { type KlEstimator, microBatch, ppoLoss, type PpoLossResult, rolloutTargets } from './ppo-loss.js';
import { finishRun, loadModelForTraining, prepareMethod, resumePath, type RunHooks, type SftConfig, type SftResult, trainWith } from './recipe.js';
import { NonFiniteLossError, peakRssMb, type TrainResult } from './trainer.js';

/** The keys of the training config PPO reads on top of the SFT ones (TRL PPOConfig names). */
export interface PpoConfig extends SftConfig {
  reward_model_path: string | null;
  kl_coef: number;
  kl_estimator: KlEstimator;
  cliprange: number;
  vf_coef: number;
  cliprange_value: number;
  gamma: number;
  lam: number;
  num_ppo_epochs: number;
  num_mini_batches: number;
  whiten_rewards: boolean;
  response_length: number;
  temperature: number;
  missing_eos_penalty: number | null;
  total_episodes?: number | null;
}

/** TRL's prompt-only records: {"prompt": "..."} or {"prompt": [messages]}; other keys (completion, chosen, ...) are ignored. */
export function readPrompts(path: string, tok: Tokenizer): number[][] {
  const out: number[][] = [];
  readFileSync(path, 'utf8').split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      throw new UserError(`${path}:${i + 1}: not valid JSON`);
    }
    const prompt = (obj as { prompt?: unknown } | null)?.prompt;
    let ids: number[];
    if (typeof prompt === 'string') ids = tok.encode(prompt);
    else if (Array.isArray(prompt)) ids = tok.encode(tok.applyChatTemplate(prompt as ChatMessage[], { addGenerationPrompt: true }), { addSpecialTokens: false });
    else throw new UserError(`${path}:${i + 1}: trainer ppo needs prompt records {"prompt": ...} (a string, or a list of messages)`, 'give dataset_path a prompt-only dataset (prompt-completion and preference files work too: their prompt is used)');
    if (ids.length === 0) throw new UserError(`${path}:${i + 1}: the prompt is empty`);
    out.push(ids);
  });
  if (out.length === 0) throw new UserError(`${path} has no prompts`);
  return out;
}

/** A reward model from a folder: a full reward model, or a SEQ_CLS adapter on its base. `train` makes a value model of it. */
export async function loadRewardModelFrom(path: string, padId: number, o: { train?: { lora: SftConfig['lora']; seed: number } } = {}): Promise<{ rm: RewardModel; trainable: [string, Tensor][] }> {
  const adapterConfig = join(path, 'adapter_config.json');
  if (existsSync(adapterConfig)) {
    const base = (JSON.parse(readFileSync(adapterConfig, 'utf8')) as { base_model_name_or_path?: string }).base_model_name_or_path;
    if (!base) throw new UserError(`${adapterConfig} names no base_model_name_or_path`);
    const dir = await resolveModel(base);
    const model = buildModel(readModelConfig(dir), readSafetensorsFolder(dir).tensors, {});
    const { applied, reward } = loadRewardAdapter(path, model, padId);
    if (!o.train) for (const [, p] of applied.trainable) p.requiresGrad = false;
    model.train(false);
    return { rm: reward, trainable: o.train ? applied.trainable : [] };
  }
  const dir = await resolveModel(path);
  const weights = readSafetensorsFolder(dir).tensors;
  const score = weights.get(SCORE_WEIGHT);
  if (!score) throw new UserError(`${dir} is not a reward model: it has no ${SCORE_WEIGHT}`, 'train one with trainer: reward (a folder with score.weight, or its SEQ_CLS adapter)');
  const model = buildModel(readModelConfig(dir), weights, {});
  const rm = RewardModel.attach(model, { padId, weight: score, source: dir });
  model.train(false);
  if (!o.train) return { rm, trainable: [] };
  const rng = new Rng(o.train.seed);
  const applied = applyLora(model, loraConfig({ ...(o.train.lora ?? {}), task_type: 'SEQ_CLS', lora_dropout: 0 }), rng, rng);
  return { rm, trainable: applied.trainable };
}

/** A rollout batch as rows [prompt, response (padded to R), right padding] of length T. */
interface RolloutRows {
  batch: Batch;
  promptLens: Int32Array;
  responses: Int32Array;
  seqLens: Int32Array;
}

function buildRows(prompts: number[][], responses: number[][], R: number, padId: number): RolloutRows {
  const B = prompts.length;
  const T = Math.max(...prompts.map((p) => p.length)) + R;
  const inputIds = new Int32Array(B * T).fill(padId);
  const positionIds = new Int32Array(B * T);
  const resp = new Int32Array(B * R).fill(padId);
  const seqLens = new Int32Array(B);
  for (let b = 0; b < B; b++) {
    const row = [...prompts[b]!, ...responses[b]!];
    inputIds.set(row, b * T);
    for (let t = 0; t < T; t++) positionIds[b * T + t] = t;
    resp.set(responses[b]!, b * R);
    // TRL: first_true_indices(response == pad) − 1 (the last token before padding; R − 1 with no padding).
    const firstPad = responses[b]!.indexOf(padId);
    seqLens[b] = (firstPad === -1 ? Math.min(responses[b]!.length, R) : firstPad) - 1;
  }
  return { batch: { inputIds, positionIds, segIds: null, B, T }, promptLens: Int32Array.from(prompts, (p) => p.length), responses: resp, seqLens };
}

/** The rows `idx` of a rollout as their own batch. */
function subRows(r: RolloutRows, idx: readonly number[], R: number): RolloutRows {
  const T = r.batch.T;
  const take = (a: Int32Array, w: number) => {
    const out = new Int32Array(idx.length * w);
    idx.forEach((i, k) => {
      out.set(a.subarray(i * w, (i + 1) * w), k * w);
    });
    return out;
  };
  return {
    batch: { inputIds: take(r.batch.inputIds, T), positionIds: take(r.batch.positionIds, T), segIds: null, B: idx.length, T },
    promptLens: Int32Array.from(idx, (i) => r.promptLens[i]!), responses: take(r.responses, R), seqLens: Int32Array.from(idx, (i) => r.seqLens[i]!),
  };
}

/** [B * R] log-probabilities of the response tokens at temperature T (0 past each response's end). */
export function responseLogProbs(lm: CausalLM, hidden: Tensor, r: RolloutRows, R: number, temperature: number): Tensor {
  const { B, T } = r.batch;
  const N = B * T;
  const labels = new Int32Array(N).fill(-100), seq = new Int32Array(N);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t <= r.seqLens[b]! && t < R; t++) {
      const pos = b * T + r.promptLens[b]! - 1 + t;
      labels[pos] = r.responses[b * R + t]!;
      seq[pos] = b * R + t;
    }
  }
  const h = scale(hidden.reshape([N, lm.config.hidden]), 1 / (temperature + 1e-7));
  return linearSequenceLogProbs(h, lm.lmHead(), labels, seq, B * R);
}

/** [B * R] value predictions before each response token (TRL: full_value[:, context_length − 1 : −1]). */
export function responseValues(vm: RewardModel, hidden: Tensor, r: RolloutRows, R: number): Tensor {
  const { B, T } = r.batch;
  const pos = new Int32Array(B * R);
  for (let b = 0; b < B; b++) for (let t = 0; t < R; t++) pos[b * R + t] = b * T + r.promptLens[b]! - 1 + t;
  const picked = gatherRows(hidden.reshape([B * T, vm.lm.config.hidden]), pos);
  return linear(picked, vm.score.weight).reshape([B * R]);
}

/** Runs fn with every LoRA adapter of the model switched off (the reference model). */
function withAdaptersOff<T>(model: CausalLM, fn: () => T): T {
  const loras = model.namedModules().filter(([, m]) => m instanceof LoraLinear).map(([, m]) => m as LoraLinear);
  const saved = loras.map((l) => l.scaling);
  for (const l of loras) l.scaling = 0;
  try {
    return fn();
  } finally {
    loras.forEach((l, i) => {
      l.scaling = saved[i]!;
    });
  }
}

/** Shuffled prompt batches, drop_last, endless; the order of epoch e depends on (seed, e) only. */
class PromptLoader {
  epoch = 0;
  offset = 0;
  constructor(
    readonly size: number,
    readonly batchSize: number,
    readonly seed: number,
  ) {}
  get batchesPerEpoch(): number {
    return Math.floor(this.size / this.batchSize);
  }
  next(): number[] {
    if (this.offset >= this.batchesPerEpoch) {
      this.epoch++;
      this.offset = 0;
    }
    const order = new Rng(this.seed * 1000003 + this.epoch).shuffle([...Array(this.size).keys()]);
    const idx = order.slice(this.offset * this.batchSize, (this.offset + 1) * this.batchSize);
    this.offset++;
    return idx;
  }
  get position() {
    return { epoch: this.epoch, offset: this.offset, seed: this.seed };
  }
}

export async function runPpo(c: PpoConfig, hooks: RunHooks = {}): Promise<SftResult> {
  const info = hooks.onInfo ?? (() => {});
  if (c.method !== 'lora' && c.method !== 'qlora') throw new UserError(`method ${c.method} is not available with trainer ppo`, 'use lora or qlora (the reference model is the base with the adapters switched off)');
  if (c.lora?.use_dora) throw new UserError('lora.use_dora is not available with trainer ppo', 'the reference switches the adapters off by their scaling, which DoRA does not follow');
  if (!c.reward_model_path) throw new UserError('trainer ppo needs reward_model_path', 'train a reward model with trainer: reward and give its output_dir');
  const loaded = await loadModelForTraining(c, info);
  const { model: policy, tok } = loaded;
  const padId = rewardPadId(tok);
  const eosId = tok.eosId;
  let prompts = readPrompts(c.dataset_path, tok);
  if (c.max_train_samples) prompts = prompts.slice(0, c.max_train_samples);
  const micro = c.per_device_train_batch_size;
  const localBs = micro * c.gradient_accumulation_steps;
  if (localBs % c.num_mini_batches !== 0) throw new UserError(`per_device_train_batch_size × gradient_accumulation_steps (${localBs}) must be a multiple of num_mini_batches (${c.num_mini_batches})`);
  const miniBs = localBs / c.num_mini_batches;
  if (miniBs % micro !== 0) throw new UserError(`a mini-batch (${miniBs} rows) must be a whole number of micro-batches of per_device_train_batch_size ${micro}`);
  if (c.whiten_rewards && miniBs < 8) throw new UserError(`whiten_rewards needs mini-batches of at least 8 rows (TRL's check), got ${miniBs}`);
  if (prompts.length < localBs) throw new UserError(`${prompts.length} prompts are fewer than one rollout batch (${localBs} = per_device_train_batch_size × gradient_accumulation_steps)`);
  const loader = new PromptLoader(prompts.length, localBs, c.seed);
  const totalEpisodes = c.total_episodes ?? Math.floor(c.num_train_epochs * prompts.length);
  const maxSteps = c.max_steps > 0 ? c.max_steps : Math.max(1, Math.ceil(totalEpisodes / localBs));

  info(`reward model and value model from ${c.reward_model_path}`);
  const reward = (await loadRewardModelFrom(c.reward_model_path, padId)).rm;
  const value = await loadRewardModelFrom(c.reward_model_path, padId, { train: { lora: c.lora, seed: c.seed + 3 } });
  // Rows are padded to the longest prompt of their batch + response_length: the longest prompt bounds them.
  const ppoShape = { rewardConfig: reward.lm.config, rollout: localBs, seqLength: prompts.reduce((m, p) => Math.max(m, p.length), 0) + c.response_length, responseLength: c.response_length };
  const { trainable: policyTrainable, adapter, io: policyIo, trainableParams, totalParams } = prepareMethod(loaded, c, micro, info, [], ppoShape);
  // The value model's parameters share the policy's names (the same LoRA targets): prefix them, as the optimizer
  // keys its state by parameter name.
  for (const [n, p] of value.trainable) p.name = `value_model.${n}`;
  const trainable: [string, Tensor][] = [...policyTrainable, ...value.trainable.map(([n, p]) => [`value_model.${n}`, p] as [string, Tensor])];
  info(`value model: ${value.trainable.reduce((s, [, p]) => s + p.size, 0).toLocaleString('en-US')} trainable parameters (score head + LoRA)`);
  policy.train(false);
  value.rm.lm.train(false);

  const sampleRng = new Rng(c.seed + 7);
  const shuffleRng = new Rng(c.seed + 11);
  const io: CheckpointIO = {
    save: (d) => {
      policyIo.save(d);
      const tensors: Record<string, { dtype: string; shape: number[]; data: Float32Array }> = {};
      for (const [n, p] of value.trainable) tensors[n] = { dtype: 'F32', shape: [...p.shape], data: p.f as Float32Array };
      writeSafetensors(join(d, 'value_model.safetensors'), tensors);
    },
    load: (d) => {
      policyIo.load(d);
      const f = readSafetensors(join(d, 'value_model.safetensors'), { copy: true });
      for (const [n, p] of value.trainable) {
        const t = f.tensors.get(n);
        if (!t || t.data.length !== p.size) throw new UserError(`checkpoint ${d} has no value model tensor '${n}' of the right size`);
        p.f.set(t.data as Float32Array);
      }
    },
    state: () => ({ ...policyIo.state(), sample_rng: sampleRng.getState(), shuffle_rng: shuffleRng.getState() }),
    restore: (s) => {
      policyIo.restore(s);
      if (s.sample_rng) sampleRng.setState(s.sample_rng as number[]);
      if (s.shuffle_rng) shuffleRng.setState(s.shuffle_rng as number[]);
    },
  };
  const R = c.response_length;
  const lossOpts = { cliprange: c.cliprange, cliprangeValue: c.cliprange_value, vfCoef: c.vf_coef };
  const rewardOpts = { klCoef: c.kl_coef, klEstimator: c.kl_estimator, gamma: c.gamma, lam: c.lam, whitenRewards: c.whiten_rewards };
  const warmup = warmupSteps(maxSteps, c.warmup_steps, c.warmup_ratio);
  const resumeFrom = resumePath(c, info);

  const result = await trainWith(c, trainable, async (optimizer): Promise<TrainResult> => {
    const params = trainable.map(([, p]) => p);
    const log = new MetricsLog(c.output_dir, hooks.onLog);
    let step = 0;
    if (resumeFrom) {
      const state = loadCheckpoint(resumeFrom, optimizer, io);
      step = state.globalStep;
      loader.epoch = state.dataPosition.epoch;
      loader.offset = state.dataPosition.offset;
      log.restore(state.logHistory);
    }
    const t0 = performance.now();
    let tokens = 0, lastLoss = Number.NaN;
    let stopped: TrainResult['stoppedEarly'] = null;
    const save = () => saveCheckpoint(c.output_dir, step, { optimizer, io, dataPosition: loader.position, logHistory: log.history, saveTotalLimit: c.save_total_limit ?? null });
    while (step < maxSteps) {
      if (hooks.signal?.aborted) {
        stopped = 'interrupted';
        break;
      }
      const lr = learningRate(c.lr_scheduler_type, c.learning_rate, step, maxSteps, warmup);
      optimizer.lr = lr;
      // 1. Rollout.
      const idx = loader.next();
      const qs = idx.map((i) => prompts[i]!);
      const responses = qs.map((q) => {
        const g = generate(policy, q, { maxNewTokens: R, doSample: true, temperature: c.temperature + 1e-7, topK: 0, topP: 1, eosTokenIds: eosId === null ? [] : [eosId], rng: sampleRng });
        return g.tokens;
      });
      const rows = buildRows(qs, responses, R, padId);
      const B = rows.batch.B;
      tokens += B * rows.batch.T;
      // Each forward in its own scope: its activations are freed before the next one runs.
      const { logprobs, refLogprobs, values, scores } = noGrad(() => ({
        logprobs: scope(() => Float64Array.from(responseLogProbs(policy, policy.forwardHidden(rows.batch), rows, R, c.temperature).f)),
        refLogprobs: scope(() => Float64Array.from(withAdaptersOff(policy, () => responseLogProbs(policy, policy.forwardHidden(rows.batch), rows, R, c.temperature).f))),
        values: scope(() => Float64Array.from(responseValues(value.rm, value.rm.lm.forwardHidden(rows.batch), rows, R).f)),
        scores: scope(() => Float64Array.from(reward.rewards(rows.batch).f)),
      }));
      let eosTokens = 0;
      for (let b = 0; b < B; b++) {
        const resp = rows.responses.subarray(b * R, (b + 1) * R);
        const n = eosId === null ? 0 : resp.filter((t) => t === eosId).length;
        eosTokens += n;
        if (n === 0 && c.missing_eos_penalty !== null) scores[b]! -= c.missing_eos_penalty;
      }
      const targets = rolloutTargets({ B, R, logprobs, refLogprobs, values, scores, seqLens: rows.seqLens }, rewardOpts);

      // 2. PPO epochs over shuffled mini-batches.
      const stats: PpoLossResult[] = [];
      let gradNorm = 0;
      for (let e = 0; e < c.num_ppo_epochs; e++) {
        const perm = shuffleRng.shuffle([...Array(B).keys()]);
        for (let m0 = 0; m0 < B; m0 += miniBs) {
          const mini = perm.slice(m0, m0 + miniBs);
          const nMicro = Math.ceil(mini.length / micro);
          for (let k = 0; k < mini.length; k += micro) {
            const mb = mini.slice(k, k + micro);
            const sub = subRows(rows, mb, R);
            const r = scope(() => {
              const lp = responseLogProbs(policy, policy.forwardHidden(sub.batch, { gradientCheckpointing: c.gradient_checkpointing ?? false }), sub, R, c.temperature);
              const v = responseValues(value.rm, value.rm.lm.forwardHidden(sub.batch, { gradientCheckpointing: c.gradient_checkpointing ?? false }), sub, R);
              const { loss, metrics } = ppoLoss(lp, v, microBatch(targets, mb), lossOpts);
              if (!Number.isFinite(metrics.loss)) {
                optimizer.zeroGrad();
                throw new NonFiniteLossError(`the PPO loss became ${metrics.loss} at step ${step + 1}`, 'lower the learning rate (or max_grad_norm), check the reward model, then resume with --resume_from_checkpoint true');
              }
              backward(loss, Float32Array.of(1 / nMicro));
              return metrics;
            });
            stats.push(r);
          }
          gradNorm = clipGradNorm(params, c.max_grad_norm);
          optimizer.step();
          optimizer.zeroGrad();
        }
      }
      step++;
      const mean = (f: (s: PpoLossResult) => number) => stats.reduce((a, s) => a + f(s), 0) / stats.length;
      const ratioMean = mean((s) => s.ratio);
      const ratioVar = stats.length > 1 ? stats.reduce((a, s) => a + (s.ratio - ratioMean) ** 2, 0) / (stats.length - 1) : 0;
      const rowSum = (a: Float64Array) => {
        let s = 0;
        for (const x of a) s += x;
        return s / B;
      };
      const scoreMean = rowSum(targets.scores);
      const nonScore = rowSum(targets.nonScoreReward);
      lastLoss = mean((s) => s.loss);
      if (step % c.logging_steps === 0 || step === maxSteps) {
        log.write({
          step,
          loss: lastLoss,
          learning_rate: lr,
          grad_norm: gradNorm,
          episode: step * localBs,
          epoch: (step * localBs) / prompts.length,
          'objective/kl': rowSum(targets.kl),
          'objective/entropy': rowSum(targets.logprobs.map((x) => -x)),
          'objective/non_score_reward': nonScore,
          'objective/rlhf_reward': nonScore + scoreMean,
          'objective/scores': scoreMean,
          'policy/approxkl_avg': mean((s) => s.approxkl),
          'policy/clipfrac_avg': mean((s) => s.pgClipfrac),
          'loss/policy_avg': mean((s) => s.pgLoss),
          'loss/value_avg': mean((s) => s.vfLoss),
          'val/clipfrac_avg': mean((s) => s.vfClipfrac),
          'val/ratio': ratioMean,
          'val/ratio_var': ratioVar,
          'val/num_eos_tokens': eosTokens,
          peak_rss_mb: peakRssMb(),
        });
      }
      if ((c.save_steps > 0 && step % c.save_steps === 0) || step === maxSteps) save();
      await new Promise((r) => setImmediate(r));
    }
    if (stopped === 'interrupted' && !latestCheckpoint(c.output_dir)?.endsWith(`checkpoint-${step}`)) save();
    const seconds = (performance.now() - t0) / 1000;
    return { globalStep: step, stoppedEarly: stopped, finalLoss: lastLoss, peakRssMb: peakRssMb(), tokensPerSecond: tokens / Math.max(seconds, 1e-9), seconds, history: log.history };
  });
  return finishRun(c, loaded, adapter, { ...result, outputDir: c.output_dir, trainableParameters: trainableParams, totalParameters: totalParams, trainExamples: prompts.length, evalExamples: 0, truncated: 0 }, info);
}
