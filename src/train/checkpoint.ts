/**
 * Checkpoints: OUTPUT_DIR/checkpoint-N/ holds what trains (written by the recipe's CheckpointIO),
 * optimizer.safetensors, and trainer_state.json (step, data position, RNG states, log history).
 * A checkpoint is written under a temporary name and renamed when complete, so a crash or kill
 * never leaves a half-written checkpoint-N; save_total_limit prunes the oldest.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { Optimizer } from '../optim/adamw.js';
import type { LoaderPosition } from '../data/packing.js';

export interface CheckpointIO {
  /** Writes the trainable state into dir (adapter files or model weights). */
  save(dir: string): void;
  /** Restores the trainable state from dir. */
  load(dir: string): void;
  /** Extra state (RNG streams) stored in trainer_state.json. */
  state(): Record<string, unknown>;
  restore(state: Record<string, unknown>): void;
}

export interface SaveArgs {
  optimizer: Optimizer;
  io: CheckpointIO;
  dataPosition: LoaderPosition;
  logHistory: Record<string, number>[];
  saveTotalLimit: number | null;
}

export function saveCheckpoint(outputDir: string, step: number, a: SaveArgs): string {
  mkdirSync(outputDir, { recursive: true });
  const final = join(outputDir, `checkpoint-${step}`);
  const tmp = join(outputDir, `.checkpoint-${step}.tmp-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  a.io.save(tmp);
  const opt = a.optimizer.stateDict();
  const tensors: Record<string, { dtype: string; shape: number[]; data: Float32Array | Uint8Array }> = {};
  for (const [k, v] of opt.tensors) tensors[k] = { dtype: v instanceof Float32Array ? 'F32' : 'U8', shape: [v.length], data: v };
  writeSafetensors(join(tmp, 'optimizer.safetensors'), tensors, { step: String(opt.step) });
  const state = { global_step: step, data_position: a.dataPosition, extra: a.io.state(), log_history: a.logHistory };
  writeFileAtomic(join(tmp, 'trainer_state.json'), JSON.stringify(state, null, 2));
  if (existsSync(final)) rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  if (a.saveTotalLimit && a.saveTotalLimit > 0) {
    const all = listCheckpoints(outputDir);
    for (const old of all.slice(0, Math.max(0, all.length - a.saveTotalLimit))) rmSync(join(outputDir, old), { recursive: true, force: true });
  }
  return final;
}

/** checkpoint-N folder names in ascending N. */
export function listCheckpoints(outputDir: string): string[] {
  if (!existsSync(outputDir)) return [];
  return readdirSync(outputDir)
    .filter((n) => /^checkpoint-\d+$/.test(n) && existsSync(join(outputDir, n, 'trainer_state.json')))
    .sort((a, b) => Number(a.split('-')[1]) - Number(b.split('-')[1]));
}

export function latestCheckpoint(outputDir: string): string | null {
  const all = listCheckpoints(outputDir);
  return all.length ? join(outputDir, all[all.length - 1]!) : null;
}

export interface LoadedState {
  globalStep: number;
  dataPosition: LoaderPosition;
  logHistory: Record<string, number>[];
}

export function loadCheckpoint(dir: string, optimizer: Optimizer, io: CheckpointIO): LoadedState {
  const statePath = join(dir, 'trainer_state.json');
  if (!existsSync(statePath)) throw new UserError(`${dir} is not an ajuste checkpoint (no trainer_state.json)`, 'pass a checkpoint-N folder, or resume_from_checkpoint: true to take the latest in output_dir');
  const state = JSON.parse(readFileSync(statePath, 'utf8'));
  io.load(dir);
  io.restore(state.extra ?? {});
  const f = readSafetensors(join(dir, 'optimizer.safetensors'), { copy: true });
  const tensors = new Map<string, Float32Array | Uint8Array>();
  for (const [k, t] of f.tensors) tensors.set(k, t.data as Float32Array | Uint8Array);
  optimizer.loadStateDict({ step: Number(f.metadata?.step ?? state.global_step), tensors });
  return { globalStep: state.global_step, dataPosition: state.data_position, logHistory: state.log_history ?? [] };
}
