/**
 * `ajuste eval --model M [--adapter A] --data FILE [--max-length N] [--json]`: loss and perplexity of a causal LM;
 * for a reward model (a folder with a score head, or an adapter with task_type SEQ_CLS) the accuracy, margin and
 * Bradley–Terry loss on preference pairs.
 */
import type { Command } from 'commander';
import { Tokenizer } from '../../data/tokenizer.js';
import { evaluateFile } from '../../eval/perplexity.js';
import { resolveModel } from '../../io/hub.js';
import { loadModelFolder } from '../../models/load.js';
import { RewardModel, rewardPadId } from '../../models/reward.js';
import { loadAdapter, loadRewardAdapter, readAdapterConfig } from '../../peft/adapter-io.js';
import { isBottleneckAdapter, loadBottleneckAdapter } from '../../peft/bottleneck.js';
import { evaluateRewardFile } from '../../train/reward.js';
import { contextFor } from '../context.js';

export function register(program: Command): void {
  program
    .command('eval')
    .summary('perplexity on a dataset, or a reward model\'s accuracy on preference pairs')
    .description(
      'Mean token cross-entropy and perplexity of a model (and adapter) on a JSONL/JSON/CSV file. {"text"} records score every next token after the first; {"prompt","completion"} records only the completion.\n' +
        'A reward model (trainer: reward; a model folder with a score head, or an adapter with task_type SEQ_CLS) scores {prompt?, chosen, rejected} pairs instead: accuracy (chosen scored above rejected), margin (mean reward difference) and loss (Bradley-Terry, with the records\' margin if they have one).',
    )
    .requiredOption('--model <path|org/name>', 'model folder or Hugging Face id')
    .option('--adapter <dir>', 'PEFT LoRA adapter folder')
    .requiredOption('--data <file>', 'dataset file (.jsonl, .json or .csv)')
    .option('--max-length <n>', 'truncate records to this many tokens (a reward model leaves longer pairs out)', '1024')
    .option('--batch-size <n>', 'records (pairs) per forward pass', '4')
    .option('--json', 'print one JSON object: {"loss", "perplexity", "tokens"}, or {"accuracy", "margin", "loss", "pairs"} for a reward model')
    .action(async (o: { model: string; adapter?: string; data: string; maxLength: string; batchSize: string; json?: boolean }, cmd: Command) => {
      const ctx = contextFor(cmd);
      const dir = await resolveModel(o.model);
      const { model, scoreWeight } = loadModelFolder(dir);
      const tok = Tokenizer.fromFolder(dir);
      const opts = { maxLength: Number(o.maxLength), batchSize: Number(o.batchSize) };
      let reward: RewardModel | null = null;
      if (o.adapter && isBottleneckAdapter(o.adapter)) loadBottleneckAdapter(o.adapter, model);
      else if (o.adapter && readAdapterConfig(o.adapter).task_type === 'SEQ_CLS') reward = loadRewardAdapter(o.adapter, model, rewardPadId(tok)).reward;
      else {
        if (scoreWeight) reward = RewardModel.attach(model, { padId: rewardPadId(tok), weight: scoreWeight, source: dir });
        if (o.adapter) loadAdapter(o.adapter, model);
      }
      if (reward) {
        const r = evaluateRewardFile(reward, tok, o.data, opts);
        if (o.json) ctx.print(JSON.stringify({ accuracy: r.accuracy, margin: r.margin, loss: r.loss, pairs: r.pairs }));
        else ctx.print(`accuracy ${(100 * r.accuracy).toFixed(1)}%  margin ${r.margin.toFixed(4)}  loss ${r.loss.toFixed(4)}  (${r.pairs} pairs${r.filtered ? `, ${r.filtered} longer than ${opts.maxLength} tokens left out` : ''})`);
        return;
      }
      const r = evaluateFile(model, tok, o.data, opts);
      if (o.json) ctx.print(JSON.stringify({ loss: r.loss, perplexity: r.perplexity, tokens: r.tokens }));
      else ctx.print(`loss ${r.loss.toFixed(4)}  perplexity ${r.perplexity.toFixed(2)}  (${r.tokens} tokens in ${r.examples} records${r.truncated ? `, ${r.truncated} truncated` : ''})`);
    });
}
