import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { describe, expect, it, vi } from 'vitest';
import { register, runMemory } from '../src/cli/commands/memory.js';
import { UserError } from '../src/errors.js';
import { buildModel, randomWeights } from '../src/models/build.js';
import type { CausalLM } from '../src/models/causal-lm.js';
import { parseModelConfig } from '../src/models/config.js';
import { loraConfig } from '../src/peft/config.js';
import { applyBottleneck } from '../src/peft/bottleneck.js';
import { applyLora } from '../src/peft/lora.js';
import { backward, parameter, scope } from '../src/tensor/autograd.js';
import { memoryStats, resetPeak } from '../src/tensor/memory.js';
import { Rng } from '../src/tensor/rng.js';
import { estimateFromParams, estimateMemory, estimatePpoMemory, formatGB, formatMB, formatMemoryTable, loadBytes } from '../src/train/memory-estimate.js';

const LLAMA2_7B = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 4096,
  intermediate_size: 11008,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  vocab_size: 32000,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  torch_dtype: 'float16',
  tie_word_embeddings: false,
};

function writeConfig(raw: object): string {
  const dir = mkdtempSync(join(tmpdir(), 'ajuste-memory-'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(raw));
  return dir;
}

function within(actual: number, expected: number, rel: number): void {
  expect(Math.abs(actual - expected) / expected, `${actual} vs ${expected}`).toBeLessThanOrEqual(rel);
}

describe('parameter and quantization arithmetic', () => {
  it('Llama-2-7B qlora with double quantization: 3.238 GB data + 101.2 MB absmax + 1.6 MB nested absmax (decimal units, peft-spec §2.6)', () => {
    const { json } = runMemory({ model: writeConfig(LLAMA2_7B), method: 'qlora', doubleQuant: true, weightDtype: 'bfloat16' });
    const q = json.quantized!;
    expect(q.params).toBe(6_476_005_376); // the spec's linear-weight count
    expect(q.tensors).toBe(32 * 7);
    within(q.data, 3.238e9, 0.01);
    within(q.absmax, 101.2e6, 0.01);
    within(q.nestedAbsmax, 6_476_005_376 / 64 / 256 * 4, 0.01);
    expect(formatGB(q.data)).toBe('3.24');
    expect(formatMB(q.absmax)).toBe('101.2');
    expect(formatMB(q.nestedAbsmax)).toBe('1.6');
    // ~4.127 bits per quantized parameter, maps included
    within((8 * q.total) / q.params, 4.127, 0.001);
    // embeddings and lm_head stay 16-bit, norms f32, LoRA q/v r=8 f32
    const rows = Object.fromEntries(json.params.byPrecision.map((r) => [r.precision, r]));
    expect(rows['nf4-dq']!.params).toBe(6_476_005_376);
    expect(rows.fp32!.params).toBe(32 * 2 * 4096 + 4096 + 32 * 2 * (8 * 4096 + 4096 * 8));
    expect(json.params.trainable).toBe(32 * 2 * (8 * 4096 + 4096 * 8));
    expect(json.gradients).toBe(4 * json.params.trainable);
    expect(json.optimizer.bytes).toBe(8 * json.params.trainable); // paged AdamW 32-bit: all LoRA tensors < 1e5 stay resident
    expect(json.optimizer.resident).toBe(json.optimizer.bytes);
  });

  it('without double quantization the absmax is f32: 404.8 MB', () => {
    const e = estimateMemory(parseModelConfig(LLAMA2_7B), { method: 'qlora', doubleQuant: false });
    within(e.quantized!.absmax, 404.8e6, 0.001);
    expect(e.quantized!.nestedAbsmax).toBe(0);
    within((8 * e.quantized!.total) / e.quantized!.params, 4.5, 0.001);
  });

  it('1e9 parameters need 4 GB in fp32 just to load; full fine-tuning with AdamW adds 4 GB of gradients and 8 GB of states', () => {
    const e = estimateFromParams(1e9, 'full');
    expect(e.weights).toBe(4e9);
    expect(formatGB(e.weights)).toBe('4.00');
    expect(e.gradients).toBe(4e9);
    expect(e.optimizer.bytes).toBe(8e9);
    expect(e.total).toBe(16e9 + e.runtime);
    const load = Object.fromEntries(loadBytes(1e9).map((l) => [l.precision, l.bytes]));
    expect(load).toMatchObject({ fp32: 4e9, bf16: 2e9, int8: 1e9, nf4: 0.5625e9 });
    within(load['nf4-dq']!, (1e9 * 4.127) / 8, 0.001);
    expect(estimateFromParams(1e9, 'qlora').weights).toBeCloseTo(load['nf4-dq']!, 0);
    expect(estimateFromParams(1e9, 'full', { optim: 'adamw_8bit' }).optimizer.bytes).toBe(2e9 + 8 * Math.ceil(1e9 / 256));
  });

  it('full fine-tuning of Llama-2-7B: every parameter f32, trainable, with AdamW states', () => {
    const e = estimateMemory(parseModelConfig(LLAMA2_7B), { method: 'full' });
    expect(e.params.total).toBe(6_738_415_616); // Llama-2-7B's published parameter count
    expect(e.params.trainable).toBe(e.params.total);
    expect(e.weights).toBe(4 * e.params.total);
    expect(e.optimizer.bytes).toBe(8 * e.params.total);
    expect(() => estimateMemory(parseModelConfig(LLAMA2_7B), { method: 'full', weightDtype: 'bfloat16' })).toThrow(UserError);
  });

  it('gradient checkpointing keeps the layer inputs only', () => {
    const c = parseModelConfig(LLAMA2_7B);
    const plain = estimateMemory(c, { method: 'lora' }).activations!;
    const ckpt = estimateMemory(c, { method: 'lora', gradientCheckpointing: true }).activations!;
    const tokens = 4 * 512;
    // a layer's output [tokens, hidden] plus the per-token scratch the norms and attention keep
    expect(ckpt.perLayer).toBe(4 * tokens * (4096 + 2 + 32));
    expect(ckpt.peak).toBeLessThan(plain.peak / 5);
    expect(plain.perLayer).toBeGreaterThan(10 * ckpt.perLayer);
  });
});

// ------------------------------------------------------------------ against ajuste's own accounting

const TINY = { model_type: 'llama', hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 8, num_key_value_heads: 4, intermediate_size: 704, vocab_size: 8192 };

/** Runs forward+backward steps in a scope; returns memoryStats().peakBytes - bytesAlive before, per step. */
function measureSteps(model: CausalLM, B: number, T: number, steps: number): number[] {
  const V = model.config.vocabSize;
  const rng = new Rng(7);
  const ids = Int32Array.from({ length: B * T }, () => Math.floor(rng.uniform() * V));
  const positionIds = Int32Array.from({ length: B * T }, (_, i) => i % T);
  const batch = { inputIds: ids, positionIds, segIds: null, B, T };
  const out: number[] = [];
  for (let s = 0; s < steps; s++) {
    const before = memoryStats().bytesAlive;
    resetPeak();
    scope(() => {
      const h = model.forwardHidden(batch);
      const loss = model.loss(h, ids, batch, 'sum');
      backward(loss, Float32Array.of(1 / (B * T)));
      return null;
    });
    out.push(memoryStats().peakBytes - before);
  }
  return out;
}

describe('activations agree with the measured peak of a training step', () => {
  it('LoRA on a small Llama: activations + gradients within 15% of the first step, activations within 1% of a later step', () => {
    const config = parseModelConfig(TINY);
    const model = buildModel(config, randomWeights(config));
    applyLora(model, loraConfig({}), new Rng(1), new Rng(2));
    model.train(true);
    const B = 2, T = 32;
    const [first, second] = measureSteps(model, B, T, 2) as [number, number];
    const e = estimateMemory(config, { method: 'lora', batch: B, maxLength: T });
    within(e.activations!.peak + e.gradients, first, 0.15);
    // from the second step on the gradient buffers exist before the step starts
    within(e.activations!.peak, second, 0.01);
    expect(e.gradients).toBe(4 * 4 * (8 * 256 + 256 * 8 + 8 * 256 + 128 * 8));
  });

  it('full fine-tuning of a small GPT-2 (tied embeddings, LayerNorm, fused qkv): within 1%', () => {
    const config = parseModelConfig({ model_type: 'gpt2', n_embd: 64, n_layer: 2, n_head: 4, vocab_size: 2000, n_positions: 64 });
    const model = buildModel(config, randomWeights(config), { writable: true });
    for (const [name, p] of model.namedParameters()) parameter(p, name);
    model.train(true);
    const [, second] = measureSteps(model, 2, 32, 2) as [number, number];
    within(estimateMemory(config, { method: 'full', batch: 2, maxLength: 32 }).activations!.peak, second, 0.01);
  });
});

// ------------------------------------------------------------------ CLI

function cliJson(args: string[]): Record<string, unknown> {
  if (existsSync('src/cli/main.ts')) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'memory', ...args, '--json'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  }
  const program = new Command().exitOverride();
  register(program);
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    out += String(s);
    return true;
  });
  try {
    program.parse(['node', 'ajuste', 'memory', ...args, '--json']);
  } finally {
    spy.mockRestore();
  }
  return JSON.parse(out) as Record<string, unknown>;
}

describe('ajuste memory', () => {
  it('--json prints the breakdown', () => {
    const dir = writeConfig({ ...LLAMA2_7B, torch_dtype: 'bfloat16' });
    const j = cliJson(['--model', join(dir, 'config.json'), '--method', 'qlora', '--r', '16', '--batch', '2', '--max-length', '256', '--optim', 'paged_adamw_8bit', '--gradient-checkpointing']);
    expect(Object.keys(j).sort()).toEqual(
      ['activations', 'gradients', 'load', 'method', 'model', 'notes', 'optimizer', 'params', 'quantized', 'runtime', 'settings', 'total', 'weights'].sort(),
    );
    expect(j.method).toBe('qlora');
    expect(j.settings).toEqual({ r: 16, targets: ['q_proj', 'v_proj'], batch: 2, maxLength: 256, optim: 'paged_adamw_8bit', gradientCheckpointing: true, weightDtype: 'bfloat16', doubleQuant: true });
    const params = j.params as { total: number; trainable: number; byPrecision: { precision: string; params: number; bytes: number }[] };
    expect(params.byPrecision.map((r) => r.precision)).toEqual(['fp32', 'bf16', 'nf4-dq']);
    expect(params.trainable).toBe(32 * 2 * 2 * 16 * 4096);
    expect(Object.keys(j.optimizer as object).sort()).toEqual(['bytes', 'name', 'pageable', 'resident']);
    expect(Object.keys(j.activations as object).sort()).toEqual(['afterForward', 'backwardExtra', 'lossScratch', 'peak', 'perLayer', 'tokens'].sort());
    const n = (k: string) => j[k] as number;
    const a = j.activations as { peak: number };
    const o = j.optimizer as { resident: number };
    expect(n('total')).toBe(n('weights') + n('gradients') + o.resident + a.peak + n('runtime'));
    // a folder works as well as its config.json
    expect(cliJson(['--model', dir, '--method', 'qlora', '--r', '16', '--batch', '2', '--max-length', '256', '--optim', 'paged_adamw_8bit', '--gradient-checkpointing'])).toEqual(j);
  });

  it('--params what-if', () => {
    const j = cliJson(['--params', '7b', '--method', 'full']);
    expect(j.weights).toBe(28e9);
    expect(j.activations).toBeNull();
    expect((j.load as { precision: string; bytes: number }[])[0]).toEqual({ precision: 'fp32', bytes: 28e9 });
  });

  it('errors say what is wrong', () => {
    expect(() => runMemory({ method: 'lora' })).toThrow(/exactly one of --model .* and --params/);
    expect(() => runMemory({ model: '/nonexistent/model', method: 'lora' })).toThrow(/no such folder or file/);
    expect(() => runMemory({ model: writeConfig(LLAMA2_7B), method: 'lora', targets: ['c_attn'] })).toThrow(/match no Linear module.*\n?/);
  });

  it('the table prints GB with 3 significant digits and MB', () => {
    const table = formatMemoryTable(estimateMemory(parseModelConfig(LLAMA2_7B), { method: 'qlora' }));
    expect(table).toMatch(/4-bit data\s+3\.24\s+3238\.0/);
    expect(table).toMatch(/nested absmax\s+0\.00158\s+1\.6/);
    expect(table).toMatch(/^total\s+\d+\.\d+\s+\d+\.\d$/m);
  });
});

// ------------------------------------------------------------------ bottleneck adapters and trainer ppo

describe('bottleneck adapters and trainer ppo (what prepareMethod prints before a run)', () => {
  // TINY: hidden 256, 4 layers, 8 heads of 32, 4 KV heads (k/v 128 wide), intermediate 704, vocab 8192, untied.
  const C = 256, L = 4, I = 704, V = 8192, KV = 128;
  const baseParams = 2 * V * C + L * (C * C + 2 * KV * C + C * C + 3 * C * I + 2 * C) + C;

  it('bottleneck (seq_bn, d // 16 = 16 units after each MLP): adapter weights, gradients, AdamW states on top of the frozen f32 base', () => {
    const config = parseModelConfig(TINY);
    const model = buildModel(config, randomWeights(config));
    const bn = applyBottleneck(model, { config: 'seq_bn' }, new Rng(1));
    const numels = bn.trainable.map(([, p]) => p.size);
    // per layer: adapter_down [16, 256] + bias 16, adapter_up [256, 16] + bias 256
    const adapter = L * (16 * C + 16 + C * 16 + C);
    expect(numels.reduce((a, b) => a + b, 0)).toBe(adapter);
    const e = estimateMemory(config, { method: 'lora', bottleneck: numels, batch: 2, maxLength: 32 });
    expect(e.params.total).toBe(baseParams + adapter);
    expect(e.params.trainable).toBe(adapter);
    expect(e.weights).toBe(4 * (baseParams + adapter));
    expect(e.gradients).toBe(4 * adapter);
    expect(e.optimizer.resident).toBe(8 * adapter);
    expect(e.settings.r).toBeNull();
    expect(e.total).toBe(e.weights + e.gradients + e.optimizer.resident + e.activations!.peak + e.runtime);
    expect(e.notes.join('\n')).toMatch(/bottleneck: activations are the frozen base's .* the adapters' own .* not counted/);
    // Gradients flow back through every frozen layer: more than a frozen base's forward, and close to a measured
    // step (the adapters' own activations, not counted, make up the rest).
    const frozen = estimateMemory(config, { method: 'lora', batch: 2, maxLength: 32, targets: ['lm_head'] });
    expect(e.activations!.peak).toBeGreaterThan(frozen.activations!.afterForward);
    model.train(true);
    const [, second] = measureSteps(model, 2, 32, 2) as [number, number];
    expect(e.activations!.peak).toBeLessThanOrEqual(second);
    expect(e.activations!.peak).toBeGreaterThan(0.85 * second); // 0.93 when written
  });

  it('ppo: policy + reward model + value model copy; the optimizer over both LoRA sets and the score head; rollout vs update activations', () => {
    const config = parseModelConfig(TINY);
    const o = { method: 'lora' as const, r: 8, targets: 'all-linear' as const, micro: 2, rollout: 4, seqLength: 40, responseLength: 12 };
    const e = estimatePpoMemory(config, config, o);
    // LoRA r 8 on every Linear but lm_head: A [8, in] + B [out, 8] each
    const lora = L * 8 * ((C + C) + (C + KV) + (C + KV) + (C + C) + 2 * (C + I) + (I + C));
    expect(e.policy.params.trainable).toBe(lora);
    expect(e.valueTrainable).toBe(lora + C);
    expect(e.policy.weights).toBe(4 * (baseParams + lora));
    expect(e.rewardWeights).toBe(4 * (baseParams + C));
    expect(e.valueWeights).toBe(4 * (baseParams + C + lora));
    expect(e.weights).toBe(4 * (3 * baseParams + 2 * lora + 2 * C)); // policy base + its LoRA, reward base + head, value base + head + LoRA
    expect(e.gradients).toBe(4 * (2 * lora + C));
    expect(e.optimizer.resident).toBe(8 * (2 * lora + C));
    // The policy's own estimate is at the PPO row length, one micro-batch.
    expect([e.policy.settings.batch, e.policy.settings.maxLength]).toEqual([2, 40]);
    const policyOnly = estimateMemory(config, { method: 'lora', r: 8, targets: 'all-linear', batch: 2, maxLength: 40 });
    expect(e.activations.update).toBeGreaterThan(policyOnly.activations!.peak);
    expect(e.activations.rollout).toBeGreaterThan(0);
    expect(e.activations.peak).toBe(Math.max(e.activations.rollout, e.activations.update));
    expect(e.total).toBe(e.weights + e.gradients + e.optimizer.resident + e.activations.peak + e.runtime);
    // A rollout batch 8x larger than the micro-batch: the rollout forwards dominate.
    const big = estimatePpoMemory(config, config, { ...o, rollout: 64 });
    expect(big.activations.rollout).toBeGreaterThan(big.activations.update);
    expect(big.activations.peak).toBe(big.activations.rollout);
    expect(e.notes.join('\n')).toMatch(/not counted: the KV cache of sampling/);
  });
});
