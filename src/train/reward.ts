/**
 * Reward modelling, as TRL's RewardTrainer: a `score` head on the model (models/reward.ts: transformers'
 * *ForSequenceClassification, num_labels 1) trained on preference pairs {prompt?, chosen, rejected} so that
 * the chosen side scores higher than the rejected one, with the Bradley–Terry loss (reward-loss.ts).
 *
 * Data as TRL prepares it: the prompt is prepended to both sides, EOS appended to non-conversational sides that
 * lack it, and pairs with a side longer than max_length are left out (counted), never truncated. An optional
 * numeric `margin` per record enters the loss. Dropout is off while training (TRL's disable_dropout, default true).
 *
 * What trains: LoRA / QLoRA adapters plus the score head (saved as PEFT's SEQ_CLS adapter: the head is the
 * modules_to_save key base_model.model.score.weight), or the whole model with the head (full; bitfit and
 * ln_tuning train their parameters and the head), saved as a folder AutoModelForSequenceClassification loads.
 * The head is new (normal(0, initializer_range), seeded) unless the model already has one (score.weight).
 */
import type { TokenizedPreference } from '../data/dataset.js';
import { tokenizePreference } from '../data/dataset.js';
import { PairLoader, type PairBatch } from '../data/pairs.js';
import { type DataRecord, type PreferenceRecord, readRecords } from '../data/records.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { UserError } from '../errors.js';
import { RewardModel, rewardPadId, SCORE } from '../models/reward.js';
import { backward, noGrad, scope } from '../tensor/autograd.js';
import { rewardLoss } from './reward-loss.js';
import {
  finishRun, loadModelForTraining, prepareMethod, resumePath, type RunHooks, type SftConfig, type SftResult,
  splitRecords, totalSteps, trainerSettings, trainWith,
} from './recipe.js';
import { type Objective, runTrainer } from './trainer.js';

/** The keys of the training config reward modelling reads on top of the SFT ones (TRL RewardConfig names). */
export interface RewardConfig extends SftConfig {
  center_rewards_coefficient?: number | null;
  disable_dropout?: boolean;
}

export interface RewardOptions {
  /** TRL center_rewards_coefficient (null: off). */
  centerRewardsCoefficient?: number | null;
}

/** Sums over a batch's pairs: the loss (as rewardLoss) and the metrics. */
function batchLoss(rm: RewardModel, b: PairBatch, o: RewardOptions, grad: { total: number; gradientCheckpointing?: boolean } | null) {
  const rewards = rm.rewards(b, { gradientCheckpointing: grad?.gradientCheckpointing });
  const r = rewardLoss(rewards, { margins: b.margin ?? null, centerRewardsCoefficient: o.centerRewardsCoefficient });
  const loss = r.loss.item();
  if (grad && grad.total > 0) backward(r.loss, Float32Array.of(1 / grad.total));
  return { loss, metrics: { ...r.metrics } };
}

export function rewardObjective(rm: RewardModel, o: RewardOptions = {}, dropout = false): Objective<PairBatch> {
  return {
    units: (b) => b.pairs,
    dropout,
    step: (b, total, opts) => scope(() => batchLoss(rm, b, o, { total, gradientCheckpointing: opts.gradientCheckpointing })),
    evaluate: (batches) => evaluateRewards(rm, batches, o),
  };
}

/** Mean loss, accuracy (chosen scored above rejected), margin and mean rewards over preference batches. */
export function evaluateRewards(rm: RewardModel, batches: Iterable<PairBatch>, o: RewardOptions = {}): Record<string, number> {
  let pairs = 0, loss = 0;
  const sums: Record<string, number> = {};
  const was = rm.lm.training;
  rm.lm.train(false);
  noGrad(() => {
    for (const b of batches) {
      const r = scope(() => batchLoss(rm, b, o, null));
      loss += r.loss;
      for (const [k, v] of Object.entries(r.metrics)) sums[k] = (sums[k] ?? 0) + v;
      pairs += b.pairs;
    }
  });
  rm.lm.train(was);
  const n = Math.max(pairs, 1);
  return { loss: loss / n, ...Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / n])), pairs };
}

/** The records of a file (or split) as preference pairs; anything else is an error naming file:line. */
export function preferenceRecords(records: DataRecord[], what = 'trainer reward'): PreferenceRecord[] {
  for (const r of records) {
    if (r.kind !== 'preference') {
      throw new UserError(
        `${r.source.file}:${r.source.line}: ${what} needs preference records {prompt?, chosen, rejected}, this one is a ${r.kind} record`,
        'give it preference pairs; a reward model learns to score the chosen side above the rejected one',
      );
    }
  }
  // TRL's collator takes `margin` for the whole batch when the first example has it: all records or none.
  const withMargin = records.filter((r) => (r as PreferenceRecord).margin !== undefined);
  if (withMargin.length > 0 && withMargin.length < records.length) {
    const odd = records.find((r) => (r as PreferenceRecord).margin === undefined)!;
    throw new UserError(`${odd.source.file}:${odd.source.line}: this record has no "margin" but ${withMargin.length} of ${records.length} records have one`, 'give every record a margin, or none');
  }
  return records as PreferenceRecord[];
}

/**
 * Tokenizes pairs as TRL's RewardTrainer: prompt + side (EOS appended to non-conversational sides), no
 * truncation; pairs with a side longer than maxLength are left out and counted.
 */
export function tokenizeRewardPairs(records: PreferenceRecord[], tok: Tokenizer, maxLength: number): { pairs: TokenizedPreference[]; filtered: number } {
  const pairs: TokenizedPreference[] = [];
  let filtered = 0;
  for (const r of records) {
    const p = tokenizePreference(r, tok, { maxLength: null });
    if (p.chosen.inputIds.length > maxLength || p.rejected.inputIds.length > maxLength) filtered++;
    else pairs.push(p);
  }
  return { pairs, filtered };
}

export interface RewardFileResult {
  loss: number;
  accuracy: number;
  margin: number;
  'rewards/chosen': number;
  'rewards/rejected': number;
  pairs: number;
  /** Pairs left out for a side longer than maxLength. */
  filtered: number;
}

/** Scores the preference pairs of a data file with a reward model: TRL's loss, accuracy and margin. */
export function evaluateRewardFile(rm: RewardModel, tok: Tokenizer, file: string, o: { maxLength?: number; batchSize?: number } = {}): RewardFileResult {
  const maxLength = o.maxLength ?? 1024, bs = o.batchSize ?? 4;
  const records = preferenceRecords(readRecords(file).records, 'scoring with a reward model');
  const { pairs, filtered } = tokenizeRewardPairs(records, tok, maxLength);
  if (pairs.length === 0) throw new UserError(`no pair of ${file} fits in ${maxLength} tokens`, 'raise --max-length');
  const loader = new PairLoader(pairs, { batchSize: bs, maxLength, padId: rm.padId ?? 0, shuffle: false });
  const r = evaluateRewards(rm, pairBatches(loader, bs));
  return { loss: r.loss!, accuracy: r.accuracy!, margin: r.margin!, 'rewards/chosen': r['rewards/chosen']!, 'rewards/rejected': r['rewards/rejected']!, pairs: pairs.length, filtered };
}

/** Batches of every pair of a loader, in order (evaluation). */
export function pairBatches(loader: PairLoader, batchSize: number): PairBatch[] {
  return Array.from({ length: Math.ceil(loader.size / batchSize) }, (_, k) => loader.batch(Array.from({ length: Math.min(batchSize, loader.size - k * batchSize) }, (_, j) => k * batchSize + j)));
}

/** What a reward run reports: SFT's fields, with `filtered` (pairs left out for length) instead of truncations. */
export type RewardResult = SftResult & { filtered: number };

export async function runReward(c: RewardConfig, hooks: RunHooks = {}): Promise<RewardResult> {
  const info = hooks.onInfo ?? (() => {});
  if (c.method === 'ia3' || c.method === 'prompt_tuning' || c.method === 'prefix_tuning' || c.method === 'bottleneck') {
    throw new UserError(`method ${c.method} is not available with trainer reward`, 'use lora or qlora, or full, bitfit, ln_tuning');
  }
  if (c.packing) throw new UserError('packing does not apply to trainer reward', 'set packing: false');
  // A reward model's adapter is PEFT's SEQ_CLS (the score head is saved with it).
  c = { ...c, lora: { ...(c.lora ?? {}), task_type: 'SEQ_CLS' } };
  const loaded = await loadModelForTraining(c, info);
  const { model, tok } = loaded;
  const padId = rewardPadId(tok);

  const read = (path: string) => {
    const r = readRecords(path, { skipBadRecords: c.skip_bad_records ?? false });
    if (r.skipped) info(`skipped ${r.skipped} bad records in ${path}`);
    return preferenceRecords(r.records);
  };
  let [trainRecords, evalRecords] = splitRecords(read(c.dataset_path), c.eval_split ?? 0, c.seed) as [PreferenceRecord[], PreferenceRecord[]];
  if (c.eval_dataset_path) evalRecords = read(c.eval_dataset_path);
  if (c.max_train_samples) trainRecords = trainRecords.slice(0, c.max_train_samples);
  const train = tokenizeRewardPairs(trainRecords, tok, c.max_length);
  if (train.filtered) info(`${train.filtered} of ${trainRecords.length} training pairs have a side longer than max_length ${c.max_length} and were left out (as TRL filters them)`);
  if (train.pairs.length === 0) throw new UserError(`no training pair fits in max_length ${c.max_length} tokens (${c.dataset_path})`, 'raise max_length');
  const evalTok = evalRecords.length ? tokenizeRewardPairs(evalRecords, tok, c.max_length) : null;
  if (evalTok?.filtered) info(`${evalTok.filtered} of ${evalRecords.length} evaluation pairs are longer than max_length ${c.max_length} and were left out`);
  const loader = new PairLoader(train.pairs, { batchSize: c.per_device_train_batch_size, maxLength: c.max_length, padId, shuffle: c.seed, dropLast: c.dataloader_drop_last ?? false });
  const evalBs = c.per_device_eval_batch_size ?? c.per_device_train_batch_size;
  const evalLoader = evalTok?.pairs.length ? new PairLoader(evalTok.pairs, { batchSize: evalBs, maxLength: c.max_length, padId, shuffle: false }) : null;

  // The head, then the method (LoRA makes it trainable through SEQ_CLS's modules_to_save; the others by name).
  const rm = RewardModel.attach(model, { padId, weight: loaded.scoreWeight, seed: c.seed + 2, source: loaded.dir });
  info(loaded.scoreWeight ? `score head read from ${loaded.dir}` : `new score head [1, ${model.config.hidden}] (normal, std ${model.config.raw.initializer_range ?? 0.02})`);
  const { trainable, adapter, io, trainableParams, totalParams } = prepareMethod(loaded, c, 2 * c.per_device_train_batch_size, info, [SCORE]);
  const { maxSteps, perEpoch } = totalSteps(c, loader.batchesPerEpoch);
  const evalBatches = evalLoader ? () => pairBatches(evalLoader, evalBs) : undefined;
  const evalSteps = c.eval_strategy === 'no' || !evalBatches ? 0 : c.eval_strategy === 'epoch' ? perEpoch : (c.eval_steps ?? c.logging_steps);
  const objective = rewardObjective(rm, { centerRewardsCoefficient: c.center_rewards_coefficient ?? null }, c.disable_dropout === false);
  const resumeFrom = resumePath(c, info);
  const result = await trainWith(c, trainable, (optimizer) =>
    runTrainer({ model, trainable, optimizer, train: loader, objective, evalBatches, io, resumeFrom, ...trainerSettings(c, maxSteps, evalSteps, hooks) }),
  );
  return finishRun(
    c,
    loaded,
    adapter,
    { ...result, outputDir: c.output_dir, trainableParameters: trainableParams, totalParameters: totalParams, trainExamples: loader.size, evalExamples: evalLoader?.size ?? 0, truncated: 0, filtered: train.filtered },
    info,
    { reward: { padTokenId: padId } },
  );
}
