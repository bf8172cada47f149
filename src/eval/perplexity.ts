/**
 * Mean token cross-entropy and perplexity of a model on a dataset file: {text} records score every
 * next token after the first, {prompt, completion} records only the completion tokens; special tokens
 * (BOS/EOS) as the tokenizer config adds them.
 */
import { tokenizeDataset } from '../data/dataset.js';
import { readRecords } from '../data/records.js';
import type { Tokenizer } from '../data/tokenizer.js';
import type { CausalLM } from '../models/causal-lm.js';
import { collateRows, exampleRow } from '../data/packing.js';
import { evaluate } from '../train/trainer.js';

export interface EvalResult {
  loss: number;
  perplexity: number;
  tokens: number;
  examples: number;
  truncated: number;
}

export function evaluateFile(model: CausalLM, tok: Tokenizer, file: string, o: { maxLength?: number; batchSize?: number } = {}): EvalResult {
  const { records } = readRecords(file);
  const { examples, truncated } = tokenizeDataset(records, tok, { maxLength: o.maxLength ?? 1024, completionOnlyLoss: true, addEos: false });
  const bs = o.batchSize ?? 4;
  const padId = tok.padId ?? tok.eosId ?? 0;
  const batches = function* () {
    for (let i = 0; i < examples.length; i += bs) {
      yield collateRows(examples.slice(i, i + bs).map((e) => exampleRow(e)), padId);
    }
  };
  const r = evaluate(model, batches());
  return { ...r, examples: examples.length, truncated };
}
