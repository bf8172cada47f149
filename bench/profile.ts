/**
 * npm run bench -- profile [--mode forward|train|generate] [--shape smollm2|tiny] [--steps N] [--dtype f32|bf16]
 * Per-kernel time table of the forward (no grad), of LoRA training steps (r=8, alpha=16, all-linear,
 * AdamW), batch 4 x 256, or of greedy generation with the KV cache (32-token prompt, 64 new tokens; tok/s
 * counts the new tokens), after one warm-up step. Sets AJUSTE_PROFILE=1 (see src/kernels/profile.ts); the
 * "outside kernels" line is JS glue, allocation and GC. `node --cpu-prof` on this script shows which JS.
 */
process.env.AJUSTE_PROFILE = '1';
const { buildModel, randomWeights } = await import('../src/models/build.js');
const { parseModelConfig } = await import('../src/models/config.js');
const { noGrad, scope } = await import('../src/tensor/autograd.js');
const { benchBatch, loraTrainStep } = await import('./lora-step.js');
const { Rng } = await import('../src/tensor/rng.js');
const { printProfile, resetProfile } = await import('../src/kernels/profile.js');
const { SHAPES } = await import('./shapes.js');
const { generate } = await import('../src/eval/generate.js');

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
}

export default async function main(): Promise<void> {
  const mode = arg('mode', 'train');
  const shape = arg('shape', 'smollm2');
  const steps = Number(arg('steps', '2'));
  const config = parseModelConfig(SHAPES[shape]!);
  const model = buildModel(config, randomWeights(config, 0), { dtype: arg('dtype', 'f32') === 'bf16' ? 'bfloat16' : 'float32' });
  const rng = new Rng(0);
  const { ids, batch } = benchBatch(config.vocabSize, rng);
  const { B, T } = batch;
  let step: () => void;
  let tokens = B * T;
  if (mode === 'generate') {
    const prompt = Array.from(ids.subarray(0, 32));
    tokens = 64;
    step = () => void generate(model, prompt, { maxNewTokens: tokens });
  } else if (mode === 'forward') {
    step = () => void noGrad(() => scope(() => model.loss(model.forwardHidden(batch), ids, batch).item()));
  } else {
    step = loraTrainStep(model, config.vocabSize, rng).step;
  }
  step();
  resetProfile();
  const t = performance.now();
  for (let i = 0; i < steps; i++) step();
  const s = (performance.now() - t) / 1000 / steps;
  process.stderr.write(`${mode} ${shape}: ${(s * 1000).toFixed(0)} ms/step, ${(tokens / s).toFixed(1)} tok/s (totals below are over ${steps} steps)\n`);
  printProfile();
}
