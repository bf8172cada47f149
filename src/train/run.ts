/**
 * `ajuste train` and `import { train } from 'ajuste'`: a validated training config -> the recipe.
 * `trainer` picks the recipe: sft (src/train/sft.ts), dpo (src/train/dpo.ts), reward (src/train/reward.ts) or ppo
 * (src/train/ppo.ts);
 * `method` picks what trains.
 */
import type { TrainConfig } from './config.js';
import { runDpo } from './dpo.js';
import { runPpo } from './ppo.js';
import { runReward } from './reward.js';
import { type RunHooks, runSft, type SftResult } from './sft.js';

export async function runTraining(config: TrainConfig, hooks: RunHooks = {}): Promise<SftResult> {
  switch (config.trainer) {
    case 'dpo':
      return runDpo(config, hooks);
    case 'reward':
      return runReward(config, hooks);
    case 'ppo':
      return runPpo(config as typeof config & { reward_model_path: string }, hooks);
    default:
      return runSft(config, hooks);
  }
}
