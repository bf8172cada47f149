#!/usr/bin/env node
/**
 * The `ajuste` command line. Each command lives in commands/<name>.ts and exports register(program);
 * add it to COMMANDS below. Exit codes: 0 success, 1 a user mistake (UserError, bad arguments),
 * 2 an internal error, 130 interrupted by Ctrl-C.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import * as configCommand from './commands/config.js';
import * as demoCommand from './commands/demo.js';
import * as evalCommand from './commands/eval.js';
import * as exportCommand from './commands/export.js';
import * as generateCommand from './commands/generate.js';
import * as mergeCommand from './commands/merge.js';
import * as tokenizerCommand from './commands/tokenizer.js';
import * as memoryCommand from './commands/memory.js';
import * as quantizeCommand from './commands/quantize.js';
import * as trainCommand from './commands/train.js';
import { resetAbortController } from './context.js';
import { EXIT_INTERRUPTED, formatError } from './errors.js';
import { colorEnabled, createStyle } from './style.js';

const COMMANDS: { register(program: Command): void }[] = [
  demoCommand,
  trainCommand,
  generateCommand,
  evalCommand,
  mergeCommand,
  exportCommand,
  quantizeCommand,
  memoryCommand,
  tokenizerCommand,
  configCommand,
];

function packageVersion(): string {
  // src/cli/main.ts and dist/cli/main.js are both two levels below package.json.
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function buildProgram(): Command {
  const program = new Command('ajuste');
  program
    .description('Fine-tune large language models on the CPU: LoRA, QLoRA, full fine-tuning, PEFT-compatible adapters.')
    .version(packageVersion(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .option('--verbose', 'more detail, and stack traces for internal errors')
    .option('-q, --quiet', 'only errors and results')
    .option('--no-color', 'no colours (also: NO_COLOR=1)')
    .exitOverride()
    .configureOutput({ outputError: () => {} })
    .showSuggestionAfterError(true);
  for (const c of COMMANDS) c.register(program);
  return program;
}

async function main(argv: string[]): Promise<number> {
  const controller = resetAbortController();
  let interrupts = 0;
  const onSigint = () => {
    interrupts++;
    if (interrupts === 1) {
      controller.abort();
      process.stderr.write('\nstopping after the current step (a checkpoint is saved); press Ctrl-C again to quit now\n');
    } else process.exit(EXIT_INTERRUPTED);
  };
  process.on('SIGINT', onSigint);
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0); // e.g. `ajuste config --docs | head`
    throw e;
  });
  const verbose = argv.includes('--verbose');
  const color = colorEnabled(process.stderr, !argv.includes('--no-color'));
  try {
    await buildProgram().parseAsync(argv, { from: 'user' });
    return controller.signal.aborted ? EXIT_INTERRUPTED : typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const report = formatError(err, { verbose, style: createStyle(color) });
    process.stderr.write(report.text);
    return report.exitCode;
  } finally {
    process.off('SIGINT', onSigint);
  }
}

process.exitCode = await main(process.argv.slice(2));
