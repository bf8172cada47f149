// QLoRA: Linear4bit against dequantize-then-f32, one QLoRA step against PyTorch on the dequantized NF4+DQ
// weights (tools/fixtures/qlora.py), merging into the 4-bit base, `ajuste quantize` round trip, and the recipe.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { register as registerQuantize } from '../src/cli/commands/quantize.js';
import { jsKernels, type Kernels, kernels, setKernels } from '../src/kernels/index.js';
import { nativeKernels } from '../src/kernels/native/index.js';
import { readSafetensors, readSafetensorsFolder } from '../src/io/safetensors.js';
import { buildModel } from '../src/models/build.js';
import type { CausalLM } from '../src/models/causal-lm.js';
import { loadModelFolder, readModelConfig } from '../src/models/load.js';
import { AdamW } from '../src/optim/adamw.js';
import { loadAdapter } from '../src/peft/adapter-io.js';
import { loraConfig } from '../src/peft/config.js';
import { applyLora, LoraLinear, peftKey, setMerged } from '../src/peft/lora.js';
import { saveMergedModel } from '../src/peft/merge.js';
import { Linear4bit } from '../src/quant/linear4bit.js';
import { quantizeModelFolder } from '../src/quant/quantize-model.js';
import { backward, noGrad, parameter, scope } from '../src/tensor/autograd.js';
import { linear } from '../src/tensor/ops.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
import { runSft } from '../src/train/sft.js';
import { baseConfig, makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';
import { expectClose } from './helpers.js';

const MODEL = 'test/fixtures/models/llama-gqa';
const native = nativeKernels();
const backends: [string, Kernels][] = [['js', jsKernels], ...(native ? [['native', native] as [string, Kernels]] : [])];

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / Math.max(den, 1e-30);
}

describe('Linear4bit', () => {
  const cases = [
    { outF: 37, inF: 70, rows: 5, quantType: 'nf4', doubleQuant: true, blocksize: 64, bias: true },
    { outF: 19, inF: 129, rows: 13, quantType: 'fp4', doubleQuant: false, blocksize: 128, bias: false },
    { outF: 300, inF: 33, rows: 1, quantType: 'nf4', doubleQuant: false, blocksize: 32, bias: true },
    { outF: 65, inF: 257, rows: 31, quantType: 'nf4', doubleQuant: true, blocksize: 256, bias: false },
  ] as const;
  for (const [kname, k] of backends) {
    for (const c of cases) {
      it(`${kname}: forward and input gradient equal dequantize-then-f32 within 1e-5 (${c.quantType}${c.doubleQuant ? '+dq' : ''}, [${c.outF}x${c.inF}], ${c.rows} rows, bs ${c.blocksize})`, () => {
        const prev = kernels();
        setKernels(k);
        try {
          const rng = new Rng(c.outF * 1000 + c.inF);
          const w = new Float32Array(c.outF * c.inF);
          rng.fillNormal(w, 0, 0.1);
          const bias = c.bias ? Tensor.from(Float32Array.from({ length: c.outF }, () => rng.normal()), [c.outF]) : null;
          const lin = Linear4bit.fromWeight(w, c.outF, c.inF, bias, c);
          const dense = Tensor.from(lin.denseWeight(), [c.outF, c.inF]);
          // The dequantized weight is the quantized value of w (never w itself).
          expect(relErr(dense.f, w)).toBeGreaterThan(1e-3);
          const x0 = Float32Array.from({ length: c.rows * 3 * c.inF }, () => rng.normal());
          const R = Float32Array.from({ length: c.rows * 3 * c.outF }, () => rng.normal());
          const run = (f: (x: Tensor) => Tensor) => {
            const x = parameter(Tensor.from(x0.slice(), [c.rows, 3, c.inF]), 'x');
            return scope(() => {
              const y = f(x);
              const out = Float32Array.from(y.f);
              backward(y, R);
              return { out, gx: Float32Array.from(x.grad!.f) };
            });
          };
          const got = run((x) => lin.forward(x));
          const ref = run((x) => linear(x, dense, bias));
          expect(relErr(got.out, ref.out), 'forward').toBeLessThan(1e-5);
          expect(relErr(got.gx, ref.gx), 'input gradient').toBeLessThan(1e-5);
        } finally {
          setKernels(prev);
        }
      });
    }
  }

  it('stores ~0.516 bytes per weight with NF4 + double quantization and keeps bitsandbytes state-dict keys', () => {
    const [o, i] = [1024, 512];
    const w = new Float32Array(o * i);
    new Rng(3).fillNormal(w, 0, 0.05);
    const lin = Linear4bit.fromWeight(w, o, i, null, { quantType: 'nf4', doubleQuant: true });
    expect(lin.weightBytes() - lin.weightBytes(false)).toBe(16 * 4 + 256 * 4);
    const perParam = lin.weightBytes(false) / (o * i);
    expect(perParam).toBeCloseTo(0.5 + 1 / 64 + 4 / (64 * 256), 6);
    expect(lin.namedParameters().map(([n, p]) => `${n}:${p.dtype}:${p.shape}`)).toEqual([
      `weight:u8:${(o * i) / 2},1`, `weight.absmax:u8:${(o * i) / 64}`, 'weight.quant_map:f32:16', `weight.nested_absmax:f32:${Math.ceil((o * i) / 64 / 256)}`,
      'weight.nested_quant_map:f32:256', `weight.quant_state.bitsandbytes__nf4:u8:${lin.namedParameters()[5]![1].size}`,
    ]);
  });
});

function fixtureBatch(fx: Map<string, { shape: number[]; data: ArrayBufferView }>) {
  const [B, T] = fx.get('input_ids')!.shape as [number, number];
  const ids = Int32Array.from(Array.from(fx.get('input_ids')!.data as BigInt64Array, Number));
  const labels = Int32Array.from(Array.from(fx.get('labels')!.data as BigInt64Array, Number));
  return { batch: { inputIds: ids, positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T), segIds: null, B, T }, labels };
}

const logitsOf = (m: CausalLM, batch: ReturnType<typeof fixtureBatch>['batch']) => noGrad(() => scope(() => Float32Array.from(m.logits(m.forwardHidden(batch)).f)));

describe('QLoRA step parity with PyTorch on the dequantized NF4 + DQ weights', () => {
  const meta = JSON.parse(readFileSync('test/fixtures/qlora/meta.json', 'utf8'));
  const fx = readSafetensors('test/fixtures/qlora/qlora.safetensors', { copy: true }).tensors;
  const setup = () => {
    const model = buildModel(readModelConfig(MODEL), readSafetensorsFolder(MODEL).tensors, { load4bit: { quantType: 'nf4', doubleQuant: true, blocksize: 64 } });
    const config = loraConfig({ r: meta.r, lora_alpha: meta.lora_alpha, target_modules: meta.target_modules });
    const applied = applyLora(model, config, new Rng(0), new Rng(0));
    for (const [name, p] of applied.trainable) p.f.set(fx.get(peftKey(name))!.data as Float32Array);
    return { model, config, applied, ...fixtureBatch(fx) };
  };

  it('quantizes every decoder Linear (not lm_head) to the same bytes as bitsandbytes and dequantizes to the same weights', () => {
    const { model } = setup();
    const q4 = model.namedModules().filter(([, m]) => m instanceof Linear4bit) as [string, Linear4bit][];
    expect(q4.length).toBe(14);
    expect(q4.some(([p]) => p.includes('lm_head'))).toBe(false);
    for (const [path, lin] of q4) {
      const mod = path.replace('.base_layer', '');
      expect(Buffer.from(lin.state.packed).equals(Buffer.from(fx.get(`packed.${mod}`)!.data as Uint8Array)), `packed ${mod}`).toBe(true);
      expect(Buffer.from(lin.state.dq!.qabsmax).equals(Buffer.from(fx.get(`qabsmax.${mod}`)!.data as Uint8Array)), `qabsmax ${mod}`).toBe(true);
      expectClose(lin.denseWeight(), fx.get(`dequant.${mod}`)!.data as Float32Array, 1e-6, `dequantized ${mod}`);
    }
  });

  it('loss, LoRA gradients (1e-4) and the AdamW update equal PyTorch', () => {
    const { model, applied, batch, labels } = setup();
    model.train(true);
    const loss = scope(() => {
      const l = model.loss(model.forwardHidden(batch), labels, batch);
      backward(l);
      return l.item();
    });
    expect(Math.abs(loss - meta.loss) / meta.loss).toBeLessThan(1e-5);
    expect(applied.trainable.length).toBe(28);
    for (const [name, p] of applied.trainable) {
      const g = fx.get(`grad.${peftKey(name)}`)!.data as Float32Array;
      expect(relErr(p.grad!.f, g), `grad ${name}`).toBeLessThan(1e-4);
    }
    const opt = new AdamW([{ params: applied.trainable.map(([, p]) => p), weightDecay: meta.optimizer.weight_decay }], { lr: meta.optimizer.lr, betas: meta.optimizer.betas, eps: meta.optimizer.eps });
    opt.step();
    for (const [name, p] of applied.trainable) expectClose(p.f, fx.get(`updated.${peftKey(name)}`)!.data as Float32Array, 1e-5, `updated ${name}`);
    const after = noGrad(() => scope(() => model.loss(model.forwardHidden(batch), labels, batch).item()));
    expect(Math.abs(after - meta.loss_after) / meta.loss_after).toBeLessThan(1e-5);
  });

  it('merging into the 4-bit base writes a model without quantization_config whose logits equal the adapter model within 1e-4', () => {
    const { model, applied, batch } = setup();
    for (const [name, p] of applied.trainable) p.f.set(fx.get(`updated.${peftKey(name)}`)!.data as Float32Array);
    const adapterLogits = logitsOf(model, batch);
    expectClose(adapterLogits, fx.get('merged_logits')!.data as Float32Array, 1e-4, 'adapter vs PyTorch merged');
    // In place: merge swaps the 4-bit base for an f32 Linear, unmerge restores the very same 4-bit layer.
    const lora = model.getModule('model.layers.0.mlp.down_proj') as LoraLinear;
    const base4 = lora.base;
    setMerged(model, true);
    expectClose(logitsOf(model, batch), adapterLogits, 1e-4, 'merged in place');
    setMerged(model, false);
    expect(lora.base).toBe(base4);
    expectClose(logitsOf(model, batch), adapterLogits, 1e-6, 'unmerged');

    const out = mkdtempSync(join(tmpdir(), 'ajuste-qmerge-'));
    const logs: string[] = [];
    saveMergedModel(model, MODEL, out, { onInfo: (m) => logs.push(m) });
    expect(logs.join('\n')).toMatch(/dequantized.*without quantization_config/);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toBeUndefined();
    const st = readSafetensors(join(out, 'model.safetensors')).tensors;
    expect([...st.keys()].some((k) => /absmax|quant_map|quant_state|base_layer|lora_/.test(k))).toBe(false);
    expect(st.get('model.layers.1.self_attn.k_proj.weight')!.shape).toEqual([32, 64]);
    const { model: merged } = loadModelFolder(out);
    expect(merged.namedModules().some(([, m]) => m instanceof Linear4bit)).toBe(false);
    expectClose(logitsOf(merged, batch), adapterLogits, 1e-4, 'merged folder vs adapter');
  });

  it('a bf16 base quantized on load merges back to a 16-bit (BF16) model', () => {
    const dir = 'test/fixtures/models/llama-gqa-bf16';
    const model = buildModel(readModelConfig(dir), readSafetensorsFolder(dir).tensors, { load4bit: { quantType: 'nf4', doubleQuant: true } });
    applyLora(model, loraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', init_lora_weights: 'gaussian' }), new Rng(1), new Rng(1));
    for (const [, m] of model.namedModules()) if (m instanceof LoraLinear) new Rng(2).fillNormal(m.B.f as Float32Array, 0, 0.05);
    const { batch } = fixtureBatch(fx);
    const adapterLogits = logitsOf(model, batch);
    const out = mkdtempSync(join(tmpdir(), 'ajuste-qmerge16-'));
    saveMergedModel(model, dir, out, { onInfo: () => {} });
    const st = readSafetensors(join(out, 'model.safetensors')).tensors;
    expect(st.get('model.layers.0.mlp.up_proj.weight')!.dtype).toBe('BF16');
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).torch_dtype).toBe('bfloat16');
    const { model: merged } = loadModelFolder(out);
    // bf16 rounding of the merged weights: close, not equal.
    expect(relErr(logitsOf(merged, batch), adapterLogits)).toBeLessThan(2e-2);
  });
});

describe('ajuste quantize: bitsandbytes folders', () => {
  it('writes config + bnb tensors; reading back gives byte-identical quantized tensors and the same logits', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'ajuste-quant-')), 'nf4');
    const program = new Command('ajuste').exitOverride();
    program.option('--verbose').option('-q, --quiet').option('--no-color');
    registerQuantize(program);
    const printed: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((s: string) => {
      printed.push(String(s));
      return true;
    }) as typeof process.stdout.write;
    try {
      await program.parseAsync(['-q', 'quantize', '--model', MODEL, '--out', out, '--quant', 'nf4', '--double-quant'], { from: 'user' });
    } finally {
      process.stdout.write = write;
    }
    expect(printed.join('')).toMatch(/0\.5\d+ bytes\/param/);
    const cfgText = readFileSync(join(out, 'config.json'), 'utf8');
    expect(cfgText).toContain(
      '  "quantization_config": {\n    "_load_in_4bit": true,\n    "_load_in_8bit": false,\n    "bnb_4bit_compute_dtype": "float32",\n' +
        '    "bnb_4bit_quant_storage": "uint8",\n    "bnb_4bit_quant_type": "nf4",\n    "bnb_4bit_use_double_quant": true,\n' +
        '    "llm_int8_enable_fp32_cpu_offload": false,\n    "llm_int8_has_fp16_weight": false,\n    "llm_int8_skip_modules": null,\n' +
        '    "llm_int8_threshold": 6.0,\n    "load_in_4bit": true,\n    "load_in_8bit": false,\n    "quant_method": "bitsandbytes"\n  },\n  "rms_norm_eps"',
    );
    // Everything else in config.json is the source text.
    expect(cfgText.replace(/ {2}"quantization_config": \{[^}]*\},\n/, '')).toBe(readFileSync(join(MODEL, 'config.json'), 'utf8'));
    expect(existsSync(join(out, 'generation_config.json'))).toBe(true);

    const file = readSafetensors(join(out, 'model.safetensors')).tensors;
    const k = 'model.layers.1.mlp.down_proj.weight';
    expect(file.get(k)).toMatchObject({ dtype: 'U8', shape: [3072, 1] });
    expect(file.get(`${k}.absmax`)).toMatchObject({ dtype: 'U8', shape: [96] });
    expect(file.get(`${k}.nested_absmax`)).toMatchObject({ dtype: 'F32', shape: [1] });
    expect(file.get(`${k}.nested_quant_map`)).toMatchObject({ dtype: 'F32', shape: [256] });
    expect(new TextDecoder().decode(file.get(`${k}.quant_state.bitsandbytes__nf4`)!.data as Uint8Array)).toMatch(
      /^\{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": \[64, 96\], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": [0-9.e-]+\}$/,
    );
    expect(file.get('lm_head.weight')!.dtype).toBe('F32');
    expect(file.get('model.embed_tokens.weight')!.dtype).toBe('F32');

    // Read back: the 4-bit layers hold exactly the file's bytes, and re-serializing them gives the same bytes.
    const { model } = loadModelFolder(out);
    const q4 = model.namedModules().filter(([, m]) => m instanceof Linear4bit) as [string, Linear4bit][];
    expect(q4.length).toBe(14);
    for (const [path, lin] of q4) {
      for (const [key, rec] of Object.entries(lin.bnbTensors(path))) {
        const f = file.get(key)!;
        const a = Buffer.from(rec.data.buffer, rec.data.byteOffset, rec.data.byteLength);
        const b = Buffer.from(f.data.buffer, f.data.byteOffset, f.data.byteLength);
        expect(a.equals(b), key).toBe(true);
        expect(rec.shape).toEqual(f.shape);
      }
    }
    const onLoad = buildModel(readModelConfig(MODEL), readSafetensorsFolder(MODEL).tensors, { load4bit: { quantType: 'nf4', doubleQuant: true } });
    const { batch } = fixtureBatch(readSafetensors('test/fixtures/qlora/qlora.safetensors').tensors);
    expect(Buffer.from(logitsOf(model, batch).buffer).equals(Buffer.from(logitsOf(onLoad, batch).buffer))).toBe(true);
  });

  it('fp4 without double quantization at blocksize 128 round-trips too, and a quantized folder is refused as a source', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'ajuste-quant-')), 'fp4');
    const r = quantizeModelFolder(MODEL, out, { quantType: 'fp4', blocksize: 128 });
    expect(r.layers).toBe(14);
    expect(r.bytes / r.numel).toBeGreaterThan(0.5 + 4 / 128 - 1e-9);
    const file = readSafetensors(join(out, 'model.safetensors')).tensors;
    expect(file.get('model.layers.0.self_attn.q_proj.weight.absmax')).toMatchObject({ dtype: 'F32', shape: [32] });
    expect(file.has('model.layers.0.self_attn.q_proj.weight.nested_absmax')).toBe(false);
    const { model } = loadModelFolder(out);
    const lin = model.getModule('model.layers.0.self_attn.q_proj') as Linear4bit;
    expect(lin.state.quantType).toBe('fp4');
    expect(Buffer.from(lin.state.absmax!.buffer, lin.state.absmax!.byteOffset, 128).equals(Buffer.from((file.get('model.layers.0.self_attn.q_proj.weight.absmax')!.data as Float32Array).buffer, (file.get('model.layers.0.self_attn.q_proj.weight.absmax')!.data as Float32Array).byteOffset, 128))).toBe(true);
    expect(() => quantizeModelFolder(out, `${out}-again`, { quantType: 'nf4' })).toThrow(/already has a quantization_config/);
  });
});

describe('QLoRA in the SFT recipe', () => {
  it('method qlora trains adapters over an NF4 base (loss falls), and a bitsandbytes folder trains directly', async () => {
    const modelDir = makeTinyModelDir();
    const work = mkdtempSync(join(tmpdir(), 'ajuste-qlora-'));
    const data = writeFactsJsonl(work);
    const infos: string[] = [];
    const rows: Record<string, number>[] = [];
    const out = join(work, 'out');
    const r = await runSft({ ...baseConfig(modelDir, data, out), method: 'qlora', max_steps: 40, save_steps: 0 }, { onInfo: (m) => infos.push(m), onLog: (x) => rows.push(x) });
    expect(infos.join('\n')).toMatch(/quantized 14 linear layers to nf4 with double quantization \(blocksize 64\): 0\.5\d+ bytes\/param/);
    expect(infos.join('\n')).toMatch(/computed in float32/);
    const losses = rows.filter((x) => x.loss !== undefined).map((x) => x.loss!);
    expect(losses[losses.length - 1]!).toBeLessThan(losses[0]! * 0.5);
    expect(r.globalStep).toBe(40);
    // The saved adapter applies to a 4-bit base loaded again the same way.
    const base4 = buildModel(readModelConfig(modelDir), readSafetensorsFolder(modelDir).tensors, { load4bit: { quantType: 'nf4', doubleQuant: true } });
    loadAdapter(out, base4);
    expect(base4.namedModules().filter(([, m]) => m instanceof LoraLinear && (m as LoraLinear).base instanceof Linear4bit).length).toBe(14);

    // A folder written by `ajuste quantize` (bitsandbytes layout) trains with method lora.
    const qdir = join(work, 'nf4');
    quantizeModelFolder(modelDir, qdir, { quantType: 'nf4', doubleQuant: true });
    const infos2: string[] = [];
    const r2 = await runSft({ ...baseConfig(qdir, data, join(work, 'out2')), method: 'lora', max_steps: 5, save_steps: 0 }, { onInfo: (m) => infos2.push(m) });
    expect(infos2.join('\n')).toMatch(/loaded 14 linear layers to nf4/);
    expect(Number.isFinite(r2.finalLoss)).toBe(true);
    await expect(runSft({ ...baseConfig(qdir, data, join(work, 'out3')), method: 'full', max_steps: 1 })).rejects.toThrow(/4-bit/);
  });
});
