/**
 * The supervised fine-tuning recipe (also pretraining from scratch): load a Hugging Face model and its
 * tokenizer, choose what trains (LoRA, full, BitFit, LayerNorm tuning), tokenize the data, run the trainer,
 * and save what a user expects in output_dir (a PEFT adapter, or a full model folder). The steps every recipe
 * shares are in recipe.ts.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type TokenizedExample, tokenizeDataset } from '../data/dataset.js';
import { BatchLoader } from '../data/packing.js';
import { readRecords } from '../data/records.js';
import { readTokenCache, type TokenizedSplit, tokenizationFingerprint, writeTokenCache } from '../data/token-cache.js';
import type { Tokenizer } from '../data/tokenizer.js';
import {
  finishRun, loadModelForTraining, prepareMethod, resumePath, type RunHooks, type SftConfig, type SftResult,
  splitRecords, totalSteps, trainerSettings, trainWith,
} from './recipe.js';
import { formatMB } from './memory-estimate.js';
import { runTrainer } from './trainer.js';

export type { RunHooks, SftConfig, SftResult } from './recipe.js';

/**
 * Reads, splits and tokenizes the train and eval records (tokenizeDataset). A function of its own so that the
 * parsed records (their text) can be collected once tokenized: only the examples' Int32Arrays stay.
 */
function tokenizeSplits(c: SftConfig, tok: Tokenizer, info: (m: string) => void): { train: TokenizedSplit; eval: TokenizedSplit; seconds: number } {
  const read = readRecords(c.dataset_path, { skipBadRecords: c.skip_bad_records ?? false, textField: c.dataset_text_field });
  if (read.skipped) info(`skipped ${read.skipped} bad records in ${c.dataset_path}`);
  let [trainRecords, evalRecords] = splitRecords(read.records, c.eval_split ?? 0, c.seed);
  if (c.eval_dataset_path) evalRecords = readRecords(c.eval_dataset_path, { skipBadRecords: c.skip_bad_records ?? false, textField: c.dataset_text_field }).records;
  if (c.max_train_samples) trainRecords = trainRecords.slice(0, c.max_train_samples);
  const tokOpts = { maxLength: c.max_length, completionOnlyLoss: c.completion_only_loss ?? true, assistantOnlyLoss: c.assistant_only_loss ?? false };
  const t0 = performance.now();
  if (trainRecords.length >= 10_000) info(`tokenizing ${trainRecords.length.toLocaleString('en-US')} training records ...`);
  const train = tokenizeDataset(trainRecords, tok, tokOpts);
  const seconds = (performance.now() - t0) / 1000;
  return { train, eval: evalRecords.length ? tokenizeDataset(evalRecords, tok, tokOpts) : { examples: [], truncated: 0, dropped: 0 }, seconds };
}

/**
 * The run's tokenized data: from output_dir/tokenized.safetensors when a previous run of the same data,
 * tokenizer and options saved it (data/token-cache.ts), else tokenized now (and saved, unless
 * cache_tokenized is false).
 */
function loadData(c: SftConfig, tok: Tokenizer, tokenizerDir: string, info: (m: string) => void): { loader: BatchLoader; evalTok: TokenizedExample[]; trainExamples: number; truncated: number } {
  const cache = join(c.output_dir, 'tokenized.safetensors');
  const useCache = c.cache_tokenized !== false;
  const fingerprint = useCache
    ? tokenizationFingerprint([c.dataset_path, c.eval_dataset_path], tokenizerDir, {
        text: c.dataset_text_field, skip: c.skip_bad_records ?? false, split: c.eval_split ?? 0, seed: c.seed, max: c.max_train_samples ?? null,
        maxLength: c.max_length, completionOnly: c.completion_only_loss ?? true, assistantOnly: c.assistant_only_loss ?? false,
      })
    : '';
  const cached = useCache ? readTokenCache(cache, fingerprint) : null;
  let splits: { train: TokenizedSplit; eval: TokenizedSplit };
  let how: string;
  if (cached) {
    splits = cached;
    how = `read from ${cache}`;
  } else {
    const t = tokenizeSplits(c, tok, info);
    splits = t;
    how = `tokenized in ${t.seconds.toFixed(1)} s`;
    if (useCache) {
      mkdirSync(c.output_dir, { recursive: true });
      writeTokenCache(cache, fingerprint, t.train, t.eval);
    }
  }
  const { train } = splits;
  if (train.truncated) info(`${train.truncated} of ${train.examples.length + train.dropped} training records were longer than max_length ${c.max_length} and were truncated`);
  if (train.dropped) info(`${train.dropped} training records had no tokens to train on and were dropped`);
  const tokens = train.examples.reduce((s, e) => s + e.inputIds.length, 0);
  info(`training data: ${train.examples.length.toLocaleString('en-US')} examples, ${tokens.toLocaleString('en-US')} tokens (${formatMB(tokens * 8)} MB in memory), ${how}`);
  const loader = new BatchLoader(train.examples, {
    batchSize: c.per_device_train_batch_size,
    maxLength: c.max_length,
    packing: c.packing ?? false,
    padId: tok.padId ?? tok.eosId ?? 0,
    shuffle: c.seed,
    dropLast: c.dataloader_drop_last ?? false,
  });
  return { loader, evalTok: splits.eval.examples, trainExamples: train.examples.length, truncated: train.truncated };
}

/** Fine-tunes (or pretrains) a causal LM as the config says. */
export async function runSft(c: SftConfig, hooks: RunHooks = {}): Promise<SftResult> {
  const info = hooks.onInfo ?? (() => {});
  const loaded = await loadModelForTraining(c, info);
  const { model, tok } = loaded;
  const { trainable, adapter, io, trainableParams, totalParams } = prepareMethod(loaded, c, c.per_device_train_batch_size, info);

  // Data
  const { loader, evalTok, trainExamples, truncated } = loadData(c, tok, loaded.dir, info);
  const padId = tok.padId ?? tok.eosId ?? 0;
  const evalBatches = evalTok.length
    ? () => new BatchLoader(evalTok, { batchSize: c.per_device_eval_batch_size ?? c.per_device_train_batch_size, maxLength: c.max_length, padId, shuffle: false })
    : undefined;

  const { maxSteps, perEpoch } = totalSteps(c, loader.batchesPerEpoch);
  const evalSteps = c.eval_strategy === 'no' || !evalBatches ? 0 : c.eval_strategy === 'epoch' ? perEpoch : (c.eval_steps ?? c.logging_steps);
  const resumeFrom = resumePath(c, info);
  const result = await trainWith(c, trainable, (optimizer) =>
    runTrainer({ model, trainable, optimizer, train: loader, evalBatches, io, resumeFrom, ...trainerSettings(c, maxSteps, evalSteps, hooks) }),
  );
  return finishRun(c, loaded, adapter, { ...result, outputDir: c.output_dir, trainableParameters: trainableParams, totalParameters: totalParams, trainExamples, evalExamples: evalTok.length, truncated }, info);
}
