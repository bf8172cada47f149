import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommanderError } from 'commander';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { formatError } from '../src/cli/errors.js';
import { formatDuration, formatMetric, ProgressBar } from '../src/cli/progress.js';
import { colorEnabled, createStyle, stripAnsi } from '../src/cli/style.js';
import { UserError } from '../src/errors.js';
import { loadTrainConfig, SCHEMA_DOCS } from '../src/train/config.js';
import { Tokenizer } from '../src/data/tokenizer.js';
import { evaluateFile } from '../src/eval/perplexity.js';
import { loadModelFolder } from '../src/models/load.js';
import { applyBottleneck, loadBottleneckAdapter } from '../src/peft/bottleneck.js';
import { Rng } from '../src/tensor/rng.js';
import { makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'ajuste-cli-'));
const CONFIG = join(dir, 'train.yaml');
writeFileSync(CONFIG, 'model_name_or_path: HuggingFaceTB/SmolLM2-135M\ndataset_path: data/train.jsonl\noutput_dir: out\nlora_r: 16\n');

/** Runs the CLI as a child process (stdout/stderr are pipes, so not TTYs). */
function ajuste(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const base = { ...process.env };
  delete base.FORCE_COLOR;
  delete base.NO_COLOR;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...base, ...env }, timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

// The child processes start concurrently: each is ~1 s of CPU to boot node + tsx.
describe.concurrent('ajuste CLI (child process)', { timeout: 60_000 }, () => {
  it('--version prints the package version', async () => {
    const r = await ajuste(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(readFileSync('package.json', 'utf8')).version);
  });

  it('--help lists the commands and global options', async () => {
    const r = await ajuste(['--help']);
    expect(r.code).toBe(0);
    for (const s of ['train', 'config', '--verbose', '--quiet', '--no-color', '--version']) expect(r.stdout).toContain(s);
  });

  it('train --help lists every config key with its default', async () => {
    const r = await ajuste(['train', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/--learning_rate\s+number >= 0\s+\(default: 2e-5\)/);
    expect(r.stdout).toMatch(/--lora\.r\s+integer >= 1\s+\(default: 8\)/);
    expect(r.stdout).toMatch(/--output_dir\s+string\s+\(required\)/);
    for (const d of SCHEMA_DOCS) expect(r.stdout).toContain(`--${d.key} `);
  });

  it('an unknown command exits 1 with an error line and a did-you-mean hint', async () => {
    const r = await ajuste(['trian']);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines[0]).toBe("error: unknown command 'trian'");
    expect(lines[1]).toMatch(/^hint: did you mean train\?/);
    expect(lines).toHaveLength(2);
  });

  it('a UserError exits 1 with one error line (plus its hint), no stack', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'model_name_or_path: m\ndataset_path: d.jsonl\noutput_dir: o\nlearnig_rate: 1e-4\n');
    const r = await ajuste(['train', bad]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines[0]).toBe(`error: unknown key 'learnig_rate' in ${bad} line 4 (did you mean 'learning_rate'?)`);
    expect(lines.slice(1).every((l) => l.startsWith('hint: '))).toBe(true);
    expect(lines).toHaveLength(2);
    expect(r.stderr).not.toContain('\x1b['); // not a TTY: no colours
  });

  it('config --print prints the resolved config as YAML, with overrides', async () => {
    const r = await ajuste(['config', '--print', CONFIG, '--learning_rate', '1e-4', '--lora.lora_alpha', '32']);
    expect(r.code).toBe(0);
    const printed = parse(r.stdout);
    expect(printed).toEqual(loadTrainConfig(CONFIG, ['--learning_rate', '1e-4', '--lora.lora_alpha', '32']));
    expect(printed.lora).toMatchObject({ r: 16, lora_alpha: 32, lora_dropout: 0 });
    expect(printed.learning_rate).toBe(1e-4);
  });

  it('config --docs prints the markdown reference table', async () => {
    const r = await ajuste(['config', '--docs']);
    expect(r.code).toBe(0);
    const rows = r.stdout.split('\n').filter((l) => l.startsWith('| `'));
    expect(r.stdout.startsWith('| key | type | default | description |\n|---|---|---|---|\n')).toBe(true);
    expect(rows).toHaveLength(SCHEMA_DOCS.length);
    expect(rows.find((l) => l.startsWith('| `lora.r` |'))).toContain('`8`');
  });

  it('colours only when forced (not a TTY here), and --no-color wins', async () => {
    const [forced, off] = await Promise.all([ajuste(['nope'], { FORCE_COLOR: '1' }), ajuste(['--no-color', 'nope'], { FORCE_COLOR: '1' })]);
    expect(forced.stderr).toContain('\x1b[31merror:');
    expect(off.stderr).not.toContain('\x1b[');
  });
});

describe('error formatting', () => {
  const style = createStyle(false);
  it('user errors: exit 1, message and hint', () => {
    expect(formatError(new UserError('bad key', 'fix it'), { verbose: false, style })).toEqual({ text: 'error: bad key\nhint: fix it\n', exitCode: 1 });
    const c = formatError(new CommanderError(1, 'commander.unknownOption', "error: unknown option '--x'"), { verbose: false, style });
    expect(c.exitCode).toBe(1);
    expect(c.text.split('\n')[0]).toBe("error: unknown option '--x'");
  });

  it('internal errors: exit 2, stack only with --verbose', () => {
    const e = new Error('boom');
    const quiet = formatError(e, { verbose: false, style });
    expect(quiet.exitCode).toBe(2);
    expect(quiet.text).toBe('error: internal error: boom\nhint: run with --verbose for the stack trace\n');
    const loud = formatError(e, { verbose: true, style });
    expect(loud.text).toContain('at ');
    expect(loud.exitCode).toBe(2);
  });

  it('help and version exits are silent', () => {
    expect(formatError(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)'), { verbose: false, style })).toEqual({ text: '', exitCode: 0 });
  });

  it('colour decisions', () => {
    expect(colorEnabled({ isTTY: true }, true, {})).toBe(true);
    expect(colorEnabled({ isTTY: false }, true, {})).toBe(false);
    expect(colorEnabled({ isTTY: true }, true, { NO_COLOR: '1' })).toBe(false);
    expect(colorEnabled({ isTTY: true }, false, {})).toBe(false);
    expect(stripAnsi(createStyle(true).red('x'))).toBe('x');
    expect(createStyle(true).red('x')).not.toBe('x');
  });
});

describe('progress', () => {
  const sink = (isTTY: boolean) => {
    const chunks: string[] = [];
    return { chunks, stream: { isTTY, columns: 200, write: (s: string) => chunks.push(s) } };
  };

  it('non-TTY: a plain line every N updates, the last state at the end', () => {
    const { chunks, stream } = sink(false);
    let t = 0;
    const bar = new ProgressBar(100, { stream, every: 2, now: () => t });
    for (let step = 10; step <= 50; step += 10) {
      t += 1000;
      bar.update(step, { loss: 2.3456, lr: 2e-4, 'tok/s': 1234.5 });
    }
    bar.done();
    expect(chunks).toEqual([
      'step 10/100 (10%) loss=2.346 lr=2.0e-4 tok/s=1,235\n',
      'step 30/100 (30%) eta 7s loss=2.346 lr=2.0e-4 tok/s=1,235\n',
      'step 50/100 (50%) eta 5s loss=2.346 lr=2.0e-4 tok/s=1,235\n',
    ]);
    // 4 updates printed at every=2 -> the last one would be missing; done() adds it.
    const s2 = sink(false);
    const b2 = new ProgressBar(null, { stream: s2.stream, every: 3 });
    b2.update(1);
    b2.update(2);
    b2.done();
    expect(s2.chunks).toEqual(['step 1\n', 'step 2\n']);
  });

  it('TTY: redraws one line in place; log() prints above it', () => {
    const { chunks, stream } = sink(true);
    const bar = new ProgressBar(4, { stream, now: () => 0 });
    bar.update(1, { loss: 1 });
    bar.update(2, { loss: 0.5 });
    bar.log('eval_loss=0.7');
    bar.done();
    const out = chunks.join('');
    expect(out).not.toMatch(/\n.*\n.*\n.*\n/); // no line per update
    expect(out).toContain('\r\x1b[2K[#####---------------] 1/4 25% loss=1');
    expect(out).toContain('[##########----------] 2/4 50%');
    expect(out).toContain('eval_loss=0.7\n');
    expect(out.endsWith('\n')).toBe(true);
  });

  it('formats durations and metrics', () => {
    expect(formatDuration(9)).toBe('9s');
    expect(formatDuration(75)).toBe('1m15s');
    expect(formatDuration(3725)).toBe('1h02m');
    expect(formatMetric(0.000123)).toBe('1.2e-4');
    expect(formatMetric(2.34567)).toBe('2.346');
    expect(formatMetric(12345.6)).toBe('12,346');
    expect(formatMetric(3)).toBe('3');
  });
});

describe.concurrent('ajuste CLI with a bottleneck adapter (child process)', { timeout: 60_000 }, () => {
  // A Houlsby adapter on a tiny model, its weights drawn large enough to move the loss away from the base's.
  const modelDir = makeTinyModelDir({ seed: 9 });
  const bnDir = join(dir, 'bn-adapter');
  const data = writeFactsJsonl(join(dir, 'bn-data'));
  const { model } = loadModelFolder(modelDir);
  const handle = applyBottleneck(model, { config: 'double_seq_bn', name: 'bn' }, new Rng(3));
  const rng = new Rng(4);
  for (const [, p] of handle.trainable) for (let i = 0; i < p.size; i++) p.f[i] = 0.3 * rng.normal();
  handle.save(bnDir, modelDir);
  const tok = Tokenizer.fromFolder(modelDir);
  const opts = { maxLength: 1024, batchSize: 4 }; // the CLI's defaults
  const fresh = loadModelFolder(modelDir).model;
  const baseLoss = evaluateFile(fresh, tok, data, opts).loss;
  loadBottleneckAdapter(bnDir, fresh);
  const want = evaluateFile(fresh, tok, data, opts);

  it('eval --adapter <bottleneck folder> --json prints the loss with the adapter applied', async () => {
    const r = await ajuste(['eval', '--model', modelDir, '--adapter', bnDir, '--data', data, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout);
    expect(Object.keys(got)).toEqual(['loss', 'perplexity', 'tokens']);
    expect(got.tokens).toBe(want.tokens);
    expect(got.loss).toBeCloseTo(want.loss, 10);
    expect(got.perplexity).toBeCloseTo(Math.exp(got.loss), 8);
    expect(Math.abs(got.loss - baseLoss)).toBeGreaterThan(1e-3); // the adapter was applied, not skipped
  });

  it('merge refuses a bottleneck adapter: exit 1, the reason and a hint, nothing written', async () => {
    const out = join(dir, 'bn-merged');
    const r = await ajuste(['merge', '--model', modelDir, '--adapter', bnDir, '--out', out]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines[0]).toBe(
      `error: ${bnDir} holds bottleneck adapters: they add a non-linear block (up(act(down(x)))) to each layer, which no weight of the base model can absorb, so they cannot be merged`,
    );
    expect(lines[1]).toBe('hint: use the adapter as it is: ajuste generate / eval --adapter DIR, or model.load_adapter(DIR) in Python (AdapterHub adapters)');
    expect(lines).toHaveLength(2);
    expect(existsSync(out)).toBe(false);
  });
});
