// Ctrl-C during `ajuste train`: the run stops after the current step, saves a checkpoint and exits 130;
// --resume_from_checkpoint true then finishes the run.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';

describe('interrupting ajuste train', () => {
  it('SIGINT saves a checkpoint and exits 130; resume completes the run', async () => {
    const modelDir = makeTinyModelDir({ seed: 9 });
    const work = mkdtempSync(join(tmpdir(), 'ajuste-int-'));
    const data = writeFactsJsonl(work, 4);
    const out = join(work, 'out');
    const args = ['--import', 'tsx', 'src/cli/main.ts', 'train', '--model_name_or_path', modelDir, '--dataset_path', data, '--output_dir', out,
      '--max_steps', '400', '--save_steps', '1000', '--logging_steps', '1', '--per_device_train_batch_size', '2', '--max_length', '64'];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => {
      const poll = setInterval(() => {
        const f = join(out, 'metrics.jsonl');
        if (existsSync(f) && readFileSync(f, 'utf8').split('\n').length > 3) {
          clearInterval(poll);
          child.kill('SIGINT');
        }
      }, 20);
      child.on('exit', (c) => {
        clearInterval(poll);
        resolve(c);
      });
    });
    expect(code, stderr).toBe(130);
    const ckpts = readdirSync(out).filter((n) => /^checkpoint-\d+$/.test(n));
    expect(ckpts.length).toBe(1);
    const step = Number(ckpts[0]!.split('-')[1]);
    expect(step).toBeGreaterThan(2);
    expect(step).toBeLessThan(400);
    expect(JSON.parse(readFileSync(join(out, ckpts[0]!, 'trainer_state.json'), 'utf8')).global_step).toBe(step);
    const r = spawnSync(process.execPath, [...args.slice(0, 6), '--dataset_path', data, '--output_dir', out, '--max_steps', String(step + 3), '--save_steps', '1000', '--logging_steps', '1', '--per_device_train_batch_size', '2', '--max_length', '64', '--resume_from_checkpoint', 'true'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(existsSync(join(out, 'adapter_model.safetensors'))).toBe(true);
    const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(rows.map((x) => x.step)).toEqual(Array.from({ length: step + 3 }, (_, i) => i + 1));
  });
});
