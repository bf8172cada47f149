/**
 * npm run bench -- train [--shape tiny|smollm2|all] [--steps N (5)]
 * LoRA training tokens/s and peak RSS (batch 4 x 256, r=8, alpha=16 on all linear layers, AdamW), each shape
 * measured in a fresh child process, next to PyTorch's plain LoRA loop (bench/torch_llama.py) when available.
 * Also prints the model FLOP utilisation against the FMA peak measured by the addon, when it can, and the speed
 * ratio of the best steps next to that of the medians (torch's best is over its ~30 s of steps, ours over N).
 */
import { spawnSync } from 'node:child_process';
import { loadAddon } from '../src/kernels/native/index.js';
import { buildModel, randomWeights } from '../src/models/build.js';
import { parseModelConfig } from '../src/models/config.js';
import { Rng } from '../src/tensor/rng.js';
import { BENCH_B, BENCH_T, loraTrainStep, timeSteps, peakRssMb } from './lora-step.js';
import { SHAPES } from './shapes.js';
import { runTorch } from './torch.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
}

/** Runs in the child: trains `steps` steps and prints one JSON line. */
function child(shape: string, steps: number, dtype: string): void {
  const config = parseModelConfig(SHAPES[shape]!);
  const model = buildModel(config, randomWeights(config, 0), { dtype: dtype === 'bf16' ? 'bfloat16' : 'float32' });
  const { step, params } = loraTrainStep(model, config.vocabSize, new Rng(0));
  const { median, best } = timeSteps(step, steps);
  const total = model.parameters().reduce((s, p) => s + p.size, 0);
  console.log(JSON.stringify({ shape, dtype, tokens_per_second: (BENCH_B * BENCH_T) / median, best_tokens_per_second: (BENCH_B * BENCH_T) / best, peak_rss_mb: peakRssMb(), params_total: total, params_trainable: params.reduce((s, p) => s + p.size, 0) }));
}

export default async function main(): Promise<void> {
  if (process.argv.includes('--child')) {
    child(arg('shape', 'tiny'), Number(arg('steps', '5')), arg('dtype', 'f32'));
    return;
  }
  const which = arg('shape', 'all');
  const shapes = which === 'all' ? ['tiny', 'smollm2'] : [which];
  const steps = arg('steps', '5');
  const addon = loadAddon();
  const peak = addon && typeof addon.fmaPeak === 'function' ? (addon.fmaPeak as (s: number) => number)(0.5) : null;
  for (const shape of shapes) {
    for (const dtype of shape === 'smollm2' ? ['f32', 'bf16'] : ['f32']) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', 'train', '--child', '--shape', shape, '--steps', steps, '--dtype', dtype], { encoding: 'utf8' });
      const ours = JSON.parse(r.stdout.trim().split('\n').pop() || '{}');
      const torch = dtype === 'f32' ? runTorch(['train', '--shape', shape]) : null;
      // LoRA training FLOPs per token: forward 2*N, backward through frozen weights 2*N (input grads only).
      const flopsPerToken = 4 * ours.params_total;
      const mfu = peak ? ((ours.tokens_per_second * flopsPerToken) / 1e9 / peak) * 100 : null;
      console.log(
        `${shape.padEnd(8)} base ${dtype.padEnd(4)}  ajuste ${ours.tokens_per_second?.toFixed(1)} tok/s, peak ${ours.peak_rss_mb?.toFixed(0)} MB` +
          (mfu !== null ? `, MFU ${mfu.toFixed(1)}% of ${peak!.toFixed(0)} GFLOP/s` : '') +
          (torch ? `   | torch ${Number(torch.tokens_per_second).toFixed(1)} tok/s, peak ${Number(torch.peak_rss_mb).toFixed(0)} MB   | speed x${(ours.tokens_per_second / Number(torch.tokens_per_second)).toFixed(2)} (best steps x${(ours.best_tokens_per_second / Number(torch.best_tokens_per_second)).toFixed(2)}), memory x${(ours.peak_rss_mb / Number(torch.peak_rss_mb)).toFixed(2)}` : ''),
      );
    }
  }
}
