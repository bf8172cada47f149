/**
 * npm run bench -- qlora [--shape smollm2|tiny] [--steps N]
 * LoRA over a bf16 base vs QLoRA over an NF4 (+ double quantization) base: training tokens/s and peak RSS
 * (batch 4 x 256, r=8, alpha=16 on all linear layers, AdamW), each in a fresh child process that loads a
 * model folder from disk (the bf16 folder memory-mapped; the NF4 folder written beforehand by
 * quantizeModelFolder, i.e. `ajuste quantize`), next to PyTorch's fp32 LoRA loop (bench/torch_llama.py).
 * Also prints the measured bytes per parameter of the linear-layer base weights.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToBf16 } from '../src/io/dtypes.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { kernels } from '../src/kernels/index.js';
import { Linear } from '../src/nn/layers.js';
import { loadModelFolder } from '../src/models/load.js';
import { parseModelConfig } from '../src/models/config.js';
import { randomWeights } from '../src/models/build.js';
import { LoraLinear } from '../src/peft/lora.js';
import { Linear4bit } from '../src/quant/linear4bit.js';
import { quantizeModelFolder } from '../src/quant/quantize-model.js';
import { Rng } from '../src/tensor/rng.js';
import { BENCH_B, BENCH_T, loraTrainStep, timeSteps, peakRssMb } from './lora-step.js';
import { SHAPES } from './shapes.js';
import { runTorch } from './torch.js';

function arg(args: string[], name: string, dflt: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
}

/** Child: loads the folder, applies LoRA, trains `steps` timed steps (after one warm-up), prints one JSON line. */
function child(dir: string, steps: number): void {
  const { model, config } = loadModelFolder(dir);
  // Bytes per parameter of the linear-layer base weights, as held in memory.
  let linNumel = 0, linBytes = 0, tables = 0;
  for (const [path, m] of model.namedModules()) {
    if (path === 'lm_head') continue;
    if (m instanceof Linear4bit) {
      linNumel += m.state.numel;
      linBytes += m.weightBytes(false);
      tables += m.weightBytes() - m.weightBytes(false);
    } else if (m instanceof Linear) {
      linNumel += m.weight.size;
      linBytes += m.weight.data.byteLength;
    }
  }
  const { step } = loraTrainStep(model, config.vocabSize, new Rng(0));
  const { median } = timeSteps(step, steps);
  const wrapped = model.namedModules().filter(([, m]) => m instanceof LoraLinear).length;
  console.log(
    JSON.stringify({
      tokens_per_second: (BENCH_B * BENCH_T) / median,
      peak_rss_mb: peakRssMb(),
      linear_base_params: linNumel,
      linear_base_bytes_per_param: linBytes / linNumel,
      code_table_bytes: tables,
      lora_layers: wrapped,
      kernels: kernels().name,
    }),
  );
}

export default async function main(args: string[] = process.argv.slice(2)): Promise<void> {
  if (args.includes('--child')) {
    child(arg(args, 'dir', ''), Number(arg(args, 'steps', '2')));
    return;
  }
  const shape = arg(args, 'shape', 'smollm2');
  const steps = arg(args, 'steps', '2');
  const work = mkdtempSync(join(tmpdir(), 'ajuste-bench-qlora-'));
  try {
    // A random bf16 model folder of the shape (the parent's memory is not measured).
    const raw = { ...SHAPES[shape]!, torch_dtype: 'bfloat16', architectures: ['LlamaForCausalLM'] };
    const config = parseModelConfig(raw);
    const bf16Dir = join(work, 'bf16');
    const nf4Dir = join(work, 'nf4');
    const tensors: Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> = {};
    for (const [name, t] of randomWeights(config, 0)) tensors[name] = { dtype: 'BF16', shape: t.shape, data: f32ToBf16(t.data as Float32Array) };
    spawnSync('mkdir', ['-p', bf16Dir]);
    writeSafetensors(join(bf16Dir, 'model.safetensors'), tensors, { format: 'pt' });
    writeFileSync(join(bf16Dir, 'config.json'), `${JSON.stringify(raw, null, 2)}\n`);
    const t0 = performance.now();
    const q = quantizeModelFolder(bf16Dir, nf4Dir, { quantType: 'nf4', doubleQuant: true, computeDtype: 'bfloat16' });
    const quantSecs = (performance.now() - t0) / 1000;
    console.log(`ajuste QLoRA bench, shape ${shape}, batch 4x256, r=8 all-linear, AdamW; kernels: ${kernels().name}`);
    console.log(`quantized ${q.layers} linear layers (${(q.numel / 1e6).toFixed(1)}M weights) to NF4+DQ in ${quantSecs.toFixed(1)} s`);
    const rows: Record<string, Record<string, number | string>> = {};
    for (const [label, dir] of [['bf16 base, LoRA', bf16Dir], ['NF4 base, QLoRA', nf4Dir]] as const) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', 'qlora', '--child', '--dir', dir, '--steps', steps], { encoding: 'utf8', maxBuffer: 1 << 26 });
      if (r.status !== 0) {
        process.stderr.write(`${label} run failed: ${r.stderr.slice(-2000)}\n`);
        continue;
      }
      rows[label] = JSON.parse(r.stdout.trim().split('\n').pop() || '{}');
    }
    const torch = shape === 'smollm2' || shape === 'tiny' ? runTorch(['train', '--shape', shape]) : null;
    for (const [label, r] of Object.entries(rows)) {
      console.log(
        `${label.padEnd(18)} ${Number(r.tokens_per_second).toFixed(1).padStart(8)} tok/s   peak RSS ${Number(r.peak_rss_mb).toFixed(0).padStart(6)} MB   ` +
          `linear base weights ${Number(r.linear_base_bytes_per_param).toFixed(4)} bytes/param (${(Number(r.linear_base_params) / 1e6).toFixed(1)}M; + ${(Number(r.code_table_bytes) / 1024).toFixed(0)} KiB code tables)`,
      );
    }
    if (torch) console.log(`${'torch fp32 LoRA'.padEnd(18)} ${Number(torch.tokens_per_second).toFixed(1).padStart(8)} tok/s   peak RSS ${Number(torch.peak_rss_mb).toFixed(0).padStart(6)} MB   linear base weights 4.0000 bytes/param`);
    else console.log('torch fp32 LoRA: not available (needs /usr/bin/python3 with torch)');
    const a = rows['bf16 base, LoRA'], b = rows['NF4 base, QLoRA'];
    if (a && b) {
      console.log(`QLoRA vs bf16 LoRA: speed x${(Number(b.tokens_per_second) / Number(a.tokens_per_second)).toFixed(2)}, peak RSS x${(Number(b.peak_rss_mb) / Number(a.peak_rss_mb)).toFixed(2)}`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
