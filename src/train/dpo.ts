/**
 * Direct Preference Optimization, as TRL's DPOTrainer: trains the policy (LoRA, QLoRA, full, any method) on
 * preference pairs {prompt, chosen, rejected} so that it raises the chosen completion's log-probability
 * relative to the reference model more than the rejected one's (the losses are in dpo-loss.ts).
 *
 * The reference is the model as loaded, before the method is applied: what TRL uses with a PEFT config (the
 * same model with its adapters disabled) or for full fine-tuning (a frozen copy of the starting weights). Its
 * log-probabilities are computed once, before the first step (TRL's precompute_ref_log_probs; the same
 * numbers, as the reference is frozen and dropout is off), so a second model is never held in memory.
 * They are saved in output_dir/ref_logps.safetensors with a fingerprint of the model and the tokenized pairs,
 * so a resumed run reads them back instead of scoring the dataset again.
 * Dropout is off while training, as TRL's disable_dropout (default true).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type TokenizedPreference, tokenizePreference } from '../data/dataset.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { PairLoader, type PairBatch } from '../data/pairs.js';
import { ajusteVersion } from '../data/token-cache.js';
import { type DataRecord, type PreferenceRecord, readRecords } from '../data/records.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { UserError } from '../errors.js';
import { type CausalLM, shiftLabels } from '../models/causal-lm.js';
import { linearSequenceLogProbs } from '../nn/ops/loss.js';
import { backward, noGrad, scope } from '../tensor/autograd.js';
import type { Tensor } from '../tensor/tensor.js';
import { type DpoLossType, type DpoOptions, dpoLoss } from './dpo-loss.js';
import {
  finishRun, loadModelForTraining, prepareMethod, resumePath, type RunHooks, type SftConfig, type SftResult,
  splitRecords, totalSteps, trainerSettings, trainWith,
} from './recipe.js';
import { type Objective, runTrainer } from './trainer.js';

/** The keys of the training config DPO reads on top of the SFT ones (TRL DPOConfig names). */
export interface DpoConfig extends SftConfig {
  beta: number;
  loss_type: DpoLossType;
  label_smoothing: number;
  disable_dropout?: boolean;
}

/** [2P] summed log-probabilities of the completion tokens of each row of a pair batch. */
export function sequenceLogProbs(model: CausalLM, hidden: Tensor, b: PairBatch): Tensor {
  const N = b.B * b.T;
  const seq = new Int32Array(N);
  for (let i = 0; i < N; i++) seq[i] = Math.floor(i / b.T);
  return linearSequenceLogProbs(hidden.reshape([N, model.config.hidden]), model.lmHead(), shiftLabels(b.labels, b), seq, b.B);
}

export function dpoObjective(model: CausalLM, o: DpoOptions, dropout = false): Objective<PairBatch> {
  return {
    units: (b) => b.pairs,
    dropout,
    step(b, total, opts) {
      return scope(() => {
        const logps = sequenceLogProbs(model, model.forwardHidden(b, opts), b);
        const { loss, metrics } = dpoLoss(logps, b.ref, b.completionTokens, o);
        const value = loss.item();
        if (total > 0) backward(loss, Float32Array.of(1 / total));
        return { loss: value, metrics: { ...metrics } };
      });
    },
    evaluate(batches) {
      let pairs = 0, loss = 0;
      const sums: Record<string, number> = {};
      noGrad(() => {
        for (const b of batches) {
          scope(() => {
            const r = dpoLoss(sequenceLogProbs(model, model.forwardHidden(b), b), b.ref, b.completionTokens, o);
            loss += r.loss.item();
            for (const [k, v] of Object.entries(r.metrics)) sums[k] = (sums[k] ?? 0) + v;
          });
          pairs += b.pairs;
        }
      });
      const n = Math.max(pairs, 1);
      return { loss: loss / n, ...Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / n])), pairs };
    },
  };
}

/** The reference log-probabilities of every pair with the model as it is now: [2 * pairs], chosen_i at 2i. */
export function referenceLogProbs(model: CausalLM, loader: PairLoader, batchSize: number): Float64Array {
  const ref = new Float64Array(2 * loader.size);
  const was = model.training;
  model.train(false);
  noGrad(() => {
    for (let i0 = 0; i0 < loader.size; i0 += batchSize) {
      const idx = Array.from({ length: Math.min(batchSize, loader.size - i0) }, (_, k) => i0 + k);
      const b = loader.batch(idx);
      scope(() => {
        const lp = sequenceLogProbs(model, model.forwardHidden(b), b).f;
        idx.forEach((i, p) => {
          ref[2 * i] = lp[p]!;
          ref[2 * i + 1] = lp[b.pairs + p]!;
        });
      });
    }
  });
  model.train(was);
  return ref;
}

function preferenceRecords(records: DataRecord[], path: string): PreferenceRecord[] {
  for (const r of records) {
    if (r.kind !== 'preference') {
      throw new UserError(
        `${r.source.file}:${r.source.line}: trainer dpo needs preference records {prompt, chosen, rejected}, this one is a ${r.kind} record`,
        `give dataset_path a preference dataset, or train it with trainer: sft (${path})`,
      );
    }
  }
  return records as PreferenceRecord[];
}

function tokenizePairs(records: PreferenceRecord[], tok: Tokenizer, maxLength: number): { pairs: TokenizedPreference[]; truncated: number } {
  const pairs = records.map((r) => tokenizePreference(r, tok, { maxLength, completionOnlyLoss: true }));
  return { pairs, truncated: pairs.filter((p) => p.chosen.truncated || p.rejected.truncated).length };
}

/** What the reference values depend on: the model (folder, method's base dtype), the scored tokens. */
function referenceFingerprint(modelDir: string, c: DpoConfig, train: readonly TokenizedPreference[], evalPairs: readonly TokenizedPreference[]): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ ajuste: ajusteVersion(), modelDir, method: c.method, torch_dtype: c.torch_dtype, load_in_4bit: c.load_in_4bit, quant: c.bnb_4bit_quant_type, dq: c.bnb_4bit_use_double_quant, max_length: c.max_length }));
  for (const set of [train, evalPairs]) {
    h.update(`|${set.length}|`);
    for (const p of set) for (const e of [p.chosen, p.rejected]) {
      h.update(new Uint8Array(e.inputIds.buffer, e.inputIds.byteOffset, e.inputIds.byteLength));
      h.update(new Uint8Array(e.labels.buffer, e.labels.byteOffset, e.labels.byteLength));
    }
  }
  return h.digest('hex');
}

function readReferenceCache(path: string, fingerprint: string, nTrain: number, nEval: number): { train: Float64Array; eval: Float64Array } | null {
  if (!existsSync(path)) return null;
  try {
    const f = readSafetensors(path, { copy: true });
    const train = f.tensors.get('train')?.data, ev = f.tensors.get('eval')?.data;
    if (f.metadata?.fingerprint !== fingerprint || !(train instanceof Float64Array) || !(ev instanceof Float64Array)) return null;
    return train.length === nTrain && ev.length === nEval ? { train, eval: ev } : null;
  } catch {
    return null;  // unreadable: score again (and overwrite it)
  }
}

export async function runDpo(c: DpoConfig, hooks: RunHooks = {}): Promise<SftResult> {
  const info = hooks.onInfo ?? (() => {});
  const loaded = await loadModelForTraining(c, info);
  const { model, tok } = loaded;
  const padId = tok.padId ?? tok.eosId ?? 0;
  const read = (path: string) => preferenceRecords(readRecords(path, { skipBadRecords: c.skip_bad_records ?? false }).records, path);
  let [trainRecords, evalRecords] = splitRecords(read(c.dataset_path), c.eval_split ?? 0, c.seed) as [PreferenceRecord[], PreferenceRecord[]];
  if (c.eval_dataset_path) evalRecords = read(c.eval_dataset_path);
  if (c.max_train_samples) trainRecords = trainRecords.slice(0, c.max_train_samples);
  const train = tokenizePairs(trainRecords, tok, c.max_length);
  if (train.truncated) info(`${train.truncated} of ${train.pairs.length} training pairs were longer than max_length ${c.max_length} and were truncated (keeping the start)`);
  const loader = new PairLoader(train.pairs, { batchSize: c.per_device_train_batch_size, maxLength: c.max_length, padId, shuffle: c.seed, dropLast: c.dataloader_drop_last ?? false });
  const evalBs = c.per_device_eval_batch_size ?? c.per_device_train_batch_size;
  const evalPairs = evalRecords.length ? tokenizePairs(evalRecords, tok, c.max_length).pairs : [];
  const evalLoader = evalPairs.length ? new PairLoader(evalPairs, { batchSize: evalBs, maxLength: c.max_length, padId, shuffle: false }) : null;

  // The reference: the model before the method is applied (or the values a previous run of this config saved).
  const cache = join(c.output_dir, 'ref_logps.safetensors');
  const fingerprint = referenceFingerprint(loaded.dir, c, train.pairs, evalPairs);
  const cached = readReferenceCache(cache, fingerprint, 2 * loader.size, 2 * (evalLoader?.size ?? 0));
  if (cached) {
    info(`reference log-probabilities read from ${cache}`);
    loader.setReference(cached.train);
    evalLoader?.setReference(cached.eval);
  } else {
    const t0 = performance.now();
    info(`reference log-probabilities of ${(loader.size + (evalLoader?.size ?? 0)).toLocaleString('en-US')} pairs (the model as loaded) ...`);
    const trainRef = referenceLogProbs(model, loader, evalBs);
    const evalRef = evalLoader ? referenceLogProbs(model, evalLoader, evalBs) : new Float64Array(0);
    loader.setReference(trainRef);
    evalLoader?.setReference(evalRef);
    mkdirSync(c.output_dir, { recursive: true });
    writeSafetensors(cache, { train: { dtype: 'F64', shape: [trainRef.length], data: trainRef }, eval: { dtype: 'F64', shape: [evalRef.length], data: evalRef } }, { fingerprint });
    info(`reference done in ${((performance.now() - t0) / 1000).toFixed(1)} s (saved in ${cache})`);
  }

  const { trainable, adapter, io, trainableParams, totalParams } = prepareMethod(loaded, c, 2 * c.per_device_train_batch_size, info);
  const { maxSteps, perEpoch } = totalSteps(c, loader.batchesPerEpoch);
  const evalBatches = evalLoader
    ? () => Array.from({ length: Math.ceil(evalLoader.size / evalBs) }, (_, k) => evalLoader.batch(Array.from({ length: Math.min(evalBs, evalLoader.size - k * evalBs) }, (_, j) => k * evalBs + j)))
    : undefined;
  const evalSteps = c.eval_strategy === 'no' || !evalBatches ? 0 : c.eval_strategy === 'epoch' ? perEpoch : (c.eval_steps ?? c.logging_steps);
  const objective = dpoObjective(model, { beta: c.beta, lossType: c.loss_type, labelSmoothing: c.label_smoothing }, c.disable_dropout === false);
  const resumeFrom = resumePath(c, info);
  const result = await trainWith(c, trainable, (optimizer) =>
    runTrainer({ model, trainable, optimizer, train: loader, objective, evalBatches, io, resumeFrom, ...trainerSettings(c, maxSteps, evalSteps, hooks) }),
  );
  return finishRun(c, loaded, adapter, { ...result, outputDir: c.output_dir, trainableParameters: trainableParams, totalParameters: totalParams, trainExamples: loader.size, evalExamples: evalLoader?.size ?? 0, truncated: train.truncated }, info);
}
