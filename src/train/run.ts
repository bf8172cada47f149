/**
 * `ajuste train` and `import { train } from 'ajuste'`: a validated training config -> the recipe.
 * `trainer` picks the recipe: sft (src/train/sft.ts), dpo (src/train/dpo.ts) or reward (src/train/reward.ts);
 * `method` picks what trains.
 */
import type { TrainConfig } from './config.js';
import { runDpo } from './dpo.js';
import { runReward } from './reward.js';
import { type RunHooks, runSft, type SftResult } from './sft.js';

export async function runTraining(config: TrainConfig, hooks: RunHooks = {}): Promise<SftResult> {
  switch (config.trainer) {
    case 'dpo':
      return runDpo(config, hooks);
    case 'reward':
      return runReward(config, hooks);
    default:
      return runSft(config, hooks);
  }
}
