/**
 * npm run bench -- forward [--shape smollm2|tiny] [--iters N (7)]
 * Forward tokens/s (batch 4 x 256, no grad, logits through the chunked lm_head + loss) and greedy generation
 * tokens/s with the KV cache (f32, and ajuste with bf16 weights), for ajuste and (when python3-torch is installed)
 * PyTorch in the same run. The forward rows give the median step and the best step of each side: on a shared
 * machine the best step is the steadier figure of what each can do.
 */
import { generate } from '../src/eval/generate.js';
import { buildModel, randomWeights } from '../src/models/build.js';
import { parseModelConfig } from '../src/models/config.js';
import { noGrad, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { kernels } from '../src/kernels/index.js';
import { SHAPES } from './shapes.js';
import { runTorch } from './torch.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
}

export default async function main(): Promise<void> {
  const shape = arg('shape', 'smollm2');
  const iters = Number(arg('iters', '7'));
  const config = parseModelConfig(SHAPES[shape]!);
  const model = buildModel(config, randomWeights(config, 0));
  const [B, T] = [4, 256];
  const rng = new Rng(1);
  const ids = Int32Array.from({ length: B * T }, () => rng.int(config.vocabSize));
  const batch = { inputIds: ids, positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T), segIds: null, B, T };
  const labels = ids;
  const run = () => noGrad(() => scope(() => model.loss(model.forwardHidden(batch), labels, batch).item()));
  run();
  const times: number[] = [];
  for (let i = 0; i < iters; i++) {
    const t = performance.now();
    run();
    times.push((performance.now() - t) / 1000);
  }
  times.sort((a, b) => a - b);
  const fwd = (B * T) / times[Math.floor(times.length / 2)]!;
  const fwdBest = (B * T) / times[0]!;
  const prompt = Array.from({ length: 32 }, () => rng.int(config.vocabSize));
  const t0 = performance.now();
  generate(model, prompt, { maxNewTokens: 64 });
  const gen = 64 / ((performance.now() - t0) / 1000);
  // The same with the weights in bf16 (half the bytes streamed per token; torch's generate mode is f32 only).
  const model16 = buildModel(config, randomWeights(config, 0), { dtype: 'bfloat16' });
  const t1 = performance.now();
  generate(model16, prompt, { maxNewTokens: 64 });
  const gen16 = 64 / ((performance.now() - t1) / 1000);
  console.log(`ajuste forward bench, shape ${shape}, batch ${B}x${T}, kernels: ${kernels().name}`);
  const torchF = runTorch(['forward', '--shape', shape]);
  const torchG = runTorch(['generate', '--shape', shape]);
  const row = (what: string, ours: number, theirs: number | undefined) =>
    console.log(`${what.padEnd(22)} ajuste ${ours.toFixed(1).padStart(9)} tok/s   torch ${theirs ? theirs.toFixed(1).padStart(9) : '      n/a'} tok/s   ratio ${theirs ? (ours / theirs).toFixed(2) : 'n/a'}`);
  row('forward (4x256)', fwd, torchF?.tokens_per_second as number | undefined);
  row('forward, best step', fwdBest, torchF?.best_tokens_per_second as number | undefined);
  row('generate (greedy, KV)', gen, torchG?.tokens_per_second as number | undefined);
  row('generate bf16 weights', gen16, undefined);
}
