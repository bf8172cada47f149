/**
 * `ajuste train` and `import { train } from 'ajuste'`: a validated training config -> the recipe.
 * Every method runs the SFT recipe (src/train/sft.ts) with what it trains chosen by `method`.
 */
import type { TrainConfig } from './config.js';
import { type RunHooks, runSft, type SftResult } from './sft.js';

export async function runTraining(config: TrainConfig, hooks: RunHooks = {}): Promise<SftResult> {
  return runSft(config, hooks);
}
