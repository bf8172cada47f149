/**
 * The supervised fine-tuning recipe (also pretraining from scratch): load a Hugging Face model and its
 * tokenizer, choose what trains (LoRA, full, BitFit, LayerNorm tuning), tokenize the data, run the trainer,
 * and save what a user expects in output_dir (a PEFT adapter, or a full model folder). The steps every recipe
 * shares are in recipe.ts.
 */
import { type TokenizedExample, tokenizeDataset } from '../data/dataset.js';
import { BatchLoader } from '../data/packing.js';
import { readRecords } from '../data/records.js';
import type { Tokenizer } from '../data/tokenizer.js';
import {
  finishRun, loadModelForTraining, prepareMethod, resumePath, type RunHooks, type SftConfig, type SftResult,
  splitRecords, totalSteps, trainerSettings, trainWith,
} from './recipe.js';
import { formatMB } from './memory-estimate.js';
import { runTrainer } from './trainer.js';

export type { RunHooks, SftConfig, SftResult } from './recipe.js';

/**
 * Reads, splits and tokenizes the train (and eval) records. A function of its own so that the parsed
 * records (their text) can be collected once tokenized: only the examples' Int32Arrays stay.
 */
function loadData(c: SftConfig, tok: Tokenizer, info: (m: string) => void): { loader: BatchLoader; evalTok: TokenizedExample[]; trainExamples: number; truncated: number } {
  const read = readRecords(c.dataset_path, { skipBadRecords: c.skip_bad_records ?? false, textField: c.dataset_text_field });
  if (read.skipped) info(`skipped ${read.skipped} bad records in ${c.dataset_path}`);
  let [trainRecords, evalRecords] = splitRecords(read.records, c.eval_split ?? 0, c.seed);
  if (c.eval_dataset_path) evalRecords = readRecords(c.eval_dataset_path, { skipBadRecords: c.skip_bad_records ?? false, textField: c.dataset_text_field }).records;
  if (c.max_train_samples) trainRecords = trainRecords.slice(0, c.max_train_samples);
  const tokOpts = { maxLength: c.max_length, completionOnlyLoss: c.completion_only_loss ?? true, assistantOnlyLoss: c.assistant_only_loss ?? false };
  const t0 = performance.now();
  if (trainRecords.length >= 10_000) info(`tokenizing ${trainRecords.length.toLocaleString('en-US')} training records ...`);
  const trainTok = tokenizeDataset(trainRecords, tok, tokOpts);
  const tokenizeSeconds = (performance.now() - t0) / 1000;
  if (trainTok.truncated) info(`${trainTok.truncated} of ${trainRecords.length} training records were longer than max_length ${c.max_length} and were truncated`);
  if (trainTok.dropped) info(`${trainTok.dropped} training records had no tokens to train on and were dropped`);
  const tokens = trainTok.examples.reduce((s, e) => s + e.inputIds.length, 0);
  info(`training data: ${trainTok.examples.length.toLocaleString('en-US')} examples, ${tokens.toLocaleString('en-US')} tokens (${formatMB(tokens * 8)} MB in memory), tokenized in ${tokenizeSeconds.toFixed(1)} s`);
  const loader = new BatchLoader(trainTok.examples, {
    batchSize: c.per_device_train_batch_size,
    maxLength: c.max_length,
    packing: c.packing ?? false,
    padId: tok.padId ?? tok.eosId ?? 0,
    shuffle: c.seed,
    dropLast: c.dataloader_drop_last ?? false,
  });
  const evalTok = evalRecords.length ? tokenizeDataset(evalRecords, tok, tokOpts).examples : [];
  return { loader, evalTok, trainExamples: trainTok.examples.length, truncated: trainTok.truncated };
}

/** Fine-tunes (or pretrains) a causal LM as the config says. */
export async function runSft(c: SftConfig, hooks: RunHooks = {}): Promise<SftResult> {
  const info = hooks.onInfo ?? (() => {});
  const loaded = await loadModelForTraining(c, info);
  const { model, tok } = loaded;
  const { trainable, adapter, io, trainableParams, totalParams } = prepareMethod(loaded, c, c.per_device_train_batch_size, info);

  // Data
  const { loader, evalTok, trainExamples, truncated } = loadData(c, tok, info);
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
