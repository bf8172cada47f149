import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runSft } from '../src/train/sft.js';
import { baseConfig, makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';

describe('checkpoints and resume', () => {
  it('a run killed (SIGKILL) after checkpoint 10 and resumed ends with the same adapter as an uninterrupted run', async () => {
    const modelDir = makeTinyModelDir({ seed: 3 });
    const work = mkdtempSync(join(tmpdir(), 'ajuste-resume-'));
    const data = writeFactsJsonl(work, 3);
    const cfg = (out: string) => ({
      ...baseConfig(modelDir, data, out),
      max_steps: 20, save_steps: 10, logging_steps: 1, per_device_train_batch_size: 4, learning_rate: 3e-3,
      lr_scheduler_type: 'cosine' as const, warmup_steps: 3, lora: { r: 4, lora_alpha: 8, lora_dropout: 0.1, target_modules: ['q_proj', 'v_proj', 'down_proj'] },
    });

    const straight = join(work, 'straight');
    await runSft(cfg(straight));

    const killed = join(work, 'killed');
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/scripts/sft-child.ts', JSON.stringify(cfg(killed))], { stdio: 'ignore' });
    const exited = new Promise<number | null>((res) => child.on('exit', (code, sig) => res(sig ? null : code)));
    await new Promise<void>((res, rej) => {
      const poll = setInterval(() => {
        if (existsSync(join(killed, 'checkpoint-10', 'trainer_state.json'))) {
          clearInterval(poll);
          child.kill('SIGKILL');
          res();
        }
      }, 5);
      child.on('exit', () => {
        clearInterval(poll);
        rej(new Error('the child finished before it could be killed'));
      });
    });
    expect(await exited).toBe(null);
    expect(existsSync(join(killed, 'checkpoint-20'))).toBe(false);

    const rows: Record<string, number>[] = [];
    await runSft({ ...cfg(killed), resume_from_checkpoint: true }, { onLog: (r) => rows.push(r) });
    expect(rows[0]!.step).toBe(11);
    const a = readFileSync(join(straight, 'adapter_model.safetensors'));
    const b = readFileSync(join(killed, 'adapter_model.safetensors'));
    expect(b.equals(a)).toBe(true);
    const lossesA = readFileSync(join(straight, 'metrics.jsonl'), 'utf8');
    const lossesB = readFileSync(join(killed, 'metrics.jsonl'), 'utf8');
    const strip = (s: string) => s.trim().split('\n').map((l) => { const { loss, step, grad_norm } = JSON.parse(l); return { loss, step, grad_norm }; });
    expect(strip(lossesB)).toEqual(strip(lossesA));
  });
});
