/**
 * `ajuste train` and `import { train } from 'ajuste'`: a validated training config -> the recipe.
 * `trainer` picks the recipe: sft (src/train/sft.ts) or dpo (src/train/dpo.ts); `method` picks what trains.
 */
import type { TrainConfig } from './config.js';
import { runDpo } from './dpo.js';
import { type RunHooks, runSft, type SftResult } from './sft.js';

export async function runTraining(config: TrainConfig, hooks: RunHooks = {}): Promise<SftResult> {
  return config.trainer === 'dpo' ? runDpo(config, hooks) : runSft(config, hooks);
}
