/** `ajuste tokenizer train --data FILE... --vocab-size N --out DIR`: a byte-level BPE tokenizer.json. */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { trainBpeTokenizer } from '../../data/bpe-trainer.js';
import { readRecords } from '../../data/records.js';
import { UserError } from '../../errors.js';
import { contextFor } from '../context.js';

function* texts(files: string[]): Generator<string> {
  for (const f of files) {
    if (/\.(jsonl|json|csv)$/.test(f)) {
      for (const r of readRecords(f).records) {
        if (r.kind === 'text') yield r.text;
        else if (r.kind === 'prompt-completion') yield r.prompt + r.completion;
        else if (r.kind === 'messages') for (const m of r.messages) yield m.content;
      }
    } else yield readFileSync(f, 'utf8');
  }
}

export function register(program: Command): void {
  const tok = program.command('tokenizer').summary('tokenizer tools');
  tok
    .command('train')
    .description('Train a GPT-2-style byte-level BPE tokenizer and write a standard tokenizer.json (loadable by @huggingface/tokenizers and Python tokenizers).')
    .requiredOption('--data <files...>', 'text files, or JSONL/JSON/CSV datasets (text, prompt+completion, or messages)')
    .requiredOption('--vocab-size <n>', 'vocabulary size, including the 256 byte tokens and the special tokens')
    .option('--special <tokens...>', 'special tokens', ['<|endoftext|>', '<|im_start|>', '<|im_end|>'])
    .option('--min-frequency <n>', 'merge only pairs seen at least this often', '2')
    .requiredOption('--out <dir>', 'folder to write tokenizer.json into')
    .action((o: { data: string[]; vocabSize: string; special: string[]; minFrequency: string; out: string }, cmd: Command) => {
      const ctx = contextFor(cmd);
      const vocabSize = Number(o.vocabSize);
      if (!Number.isInteger(vocabSize) || vocabSize < 256 + o.special.length) throw new UserError(`--vocab-size must be an integer >= ${256 + o.special.length}, got ${o.vocabSize}`);
      const json = trainBpeTokenizer(texts(o.data), { vocabSize, specialTokens: o.special, minFrequency: Number(o.minFrequency) });
      mkdirSync(o.out, { recursive: true });
      writeFileSync(join(o.out, 'tokenizer.json'), JSON.stringify(json));
      ctx.info(`wrote ${join(o.out, 'tokenizer.json')} (${vocabSize} tokens)`);
    });
}
