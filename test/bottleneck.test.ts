// Bottleneck adapters (AdapterHub seq_bn / double_seq_bn): one training step on llama-gqa against PyTorch
// (tools/fixtures/bottleneck.py), the library's file layout, save -> reload, init, refusals, and a run end to end.
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadModelFolder } from '../src/models/load.js';
import { applyBottleneck, type BottleneckConfig, isBottleneckAdapter, loadBottleneckAdapter } from '../src/peft/bottleneck.js';
import { backward, noGrad, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { loadTrainConfig } from '../src/train/config.js';
import { runTraining } from '../src/train/run.js';
import { runSft, type SftConfig } from '../src/train/sft.js';
import { baseConfig, makeTinyModelDir, writeFactsJsonl } from './e2e-helpers.js';
import { expectClose } from './helpers.js';

const MODEL = 'test/fixtures/models/llama-gqa';
const META = JSON.parse(readFileSync('test/fixtures/bottleneck/meta.json', 'utf8'));

const CASES: Record<string, Partial<BottleneckConfig>> = {
  seq_bn: { config: 'seq_bn' },
  double_seq_bn: { config: 'double_seq_bn' },
  double_seq_bn_custom: { config: 'double_seq_bn', non_linearity: 'gelu', scaling: 0.5, reduction_factor: { '0': 8, default: 32 }, leave_out: [1] },
  seq_bn_custom: { config: 'seq_bn', non_linearity: 'gelu_new', scaling: 2, reduction_factor: 32, leave_out: [0] },
};

function fixture(name: string) {
  const fx = readSafetensors(`test/fixtures/bottleneck/${name}.safetensors`, { copy: true }).tensors;
  const [B, T] = fx.get('input_ids')!.shape as [number, number];
  const ids = Int32Array.from(Array.from(fx.get('input_ids')!.data as BigInt64Array, Number));
  const labels = Int32Array.from(Array.from(fx.get('labels')!.data as BigInt64Array, Number));
  return { fx, batch: { inputIds: ids, positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T), segIds: null, B, T }, labels };
}

function setup(name: string) {
  const { model } = loadModelFolder(MODEL);
  const handle = applyBottleneck(model, { ...CASES[name], name: 'bn' }, new Rng(0));
  const f = fixture(name);
  for (const [n, p] of handle.trainable) p.f.set(f.fx.get(n)!.data as Float32Array);
  return { model, handle, ...f };
}

const logitsOf = (m: ReturnType<typeof loadModelFolder>['model'], batch: ReturnType<typeof fixture>['batch']) =>
  noGrad(() => scope(() => Float32Array.from(m.logits(m.forwardHidden(batch)).f)));

describe('bottleneck adapters on llama-gqa against PyTorch (AdapterHub maths)', () => {
  for (const name of Object.keys(CASES)) {
    it(`${name}: same parameter names and shapes; loss, logits and every adapter gradient within 1e-5`, () => {
      const { model, handle, fx, batch, labels } = setup(name);
      const expected = [...fx.keys()].filter((k) => k.startsWith('model.layers.')).sort();
      expect(handle.trainable.map(([n]) => n).sort()).toEqual(expected);
      for (const [n, p] of handle.trainable) expect(p.shape, n).toEqual(fx.get(n)!.shape);
      model.train(true);
      const loss = scope(() => {
        const l = model.loss(model.forwardHidden(batch), labels, batch);
        backward(l);
        return l.item();
      });
      expect(Math.abs(loss - META[name].loss) / META[name].loss).toBeLessThan(1e-5);
      for (const [n, p] of handle.trainable) {
        const g = fx.get(`grad.${n}`)!.data as Float32Array;
        const sc = Math.max(...Array.from(g, Math.abs));
        expect(sc, `grad ${n} is not zero`).toBeGreaterThan(0);
        const err = Math.max(...Array.from(p.grad!.f, (v, i) => Math.abs(v - g[i]!))) / sc;
        expect(err, `grad ${n}`).toBeLessThan(1e-5);
      }
      // Relative to the largest logit, as the gradients (the seeded adapters push logits to ~9.5).
      const ref = fx.get('logits')!.data as Float32Array;
      const ours = logitsOf(model, batch);
      const lsc = Math.max(...Array.from(ref, Math.abs));
      expect(Math.max(...Array.from(ours, (v, i) => Math.abs(v - ref[i]!))) / lsc, 'logits').toBeLessThan(1e-5);
    });
  }

  it('places Pfeiffer only after the MLP and Houlsby after attention and MLP, with d // 16 units', () => {
    const { model } = loadModelFolder(MODEL);
    const pf = applyBottleneck(model, { config: 'seq_bn' }, new Rng(0)).trainable.map(([n]) => n);
    expect(pf).toContain('model.layers.0.output_adapters.adapters.bottleneck.adapter_down.0.weight');
    expect(pf.some((n) => n.includes('attention_adapters'))).toBe(false);
    const { model: m2 } = loadModelFolder(MODEL);
    const ho = applyBottleneck(m2, { config: 'double_seq_bn' }, new Rng(0)).trainable;
    expect(ho.map(([n]) => n)).toContain('model.layers.1.attention_adapters.adapters.bottleneck.adapter_up.bias');
    expect(ho.find(([n]) => n.endsWith('layers.0.attention_adapters.adapters.bottleneck.adapter_down.0.weight'))![1].shape).toEqual([4, 64]);
    expect(ho.length).toBe(2 * 2 * 4);
    // The frozen base keeps its names and gets no gradient.
    expect(m2.namedParameters().filter(([, p]) => p.requiresGrad).length).toBe(16);
    expect(m2.namedParameters().some(([n]) => n === 'model.layers.0.self_attn.o_proj.weight')).toBe(true);
  });
});

describe('saving in the adapters library layout', () => {
  it('adapter_config.json fields and adapter.safetensors keys as AdapterLoader.save writes them; reload gives identical logits', () => {
    const { model, handle, batch, fx } = setup('double_seq_bn_custom');
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-bn-'));
    handle.save(dir, 'test/llama-gqa');
    // adapters/loading.py AdapterLoader.__init__: WeightsLoader(model, WEIGHTS_NAME, CONFIG_NAME, safe_weights_name=SAFE_WEIGHTS_NAME);
    // adapters/utils.py: CONFIG_NAME = "adapter_config.json", SAFE_WEIGHTS_NAME = "adapter.safetensors".
    const saved = readSafetensors(join(dir, 'adapter.safetensors')).tensors;
    // The filter_func keeps state-dict keys containing ".adapters.<name>." (loading.py AdapterLoader.filter_func),
    // unrenamed: model.layers.<i>.<attention|output>_adapters.adapters.<name>.adapter_down.0.weight (nn.Sequential index 0).
    expect([...saved.keys()].sort()).toEqual([...fx.keys()].filter((k) => k.startsWith('model.layers.')).sort());
    expect([...saved.keys()].every((k) => k.includes('.adapters.bn.'))).toBe(true);
    const text = readFileSync(join(dir, 'adapter_config.json'), 'utf8');
    // WeightsLoaderHelper.save_weights_config: json.dump(config, f, indent=2, sort_keys=True) (no final newline).
    expect(text.endsWith('}')).toBe(true);
    expect(text).toContain('"scaling": 0.5');
    expect(text).toContain('"dropout": 0.0');
    const cfg = JSON.parse(text);
    // build_full_config: model_type, hidden_size, the kwargs model_name / name / model_class, config, version.
    expect(Object.keys(cfg)).toEqual(['config', 'hidden_size', 'model_class', 'model_name', 'model_type', 'name', 'version']);
    expect(cfg).toMatchObject({ hidden_size: 64, model_class: 'LlamaForCausalLM', model_name: 'test/llama-gqa', model_type: 'llama', name: 'bn' });
    expect(cfg.version).toMatch(/^adapters\.\d+\.\d+\.\d+$/);
    // config = DoubleSeqBnConfig(...).to_dict(): every BnConfig field.
    expect(Object.keys(cfg.config).sort()).toEqual([
      'adapter_residual_before_ln', 'cross_adapter', 'dropout', 'factorized_phm_W', 'factorized_phm_rule', 'hypercomplex_nonlinearity', 'init_weights',
      'inv_adapter', 'inv_adapter_reduction_factor', 'is_parallel', 'learn_phm', 'leave_out', 'ln_after', 'ln_before', 'mh_adapter', 'non_linearity',
      'original_ln_after', 'original_ln_before', 'output_adapter', 'phm_bias', 'phm_c_init', 'phm_dim', 'phm_init_range', 'phm_layer', 'phm_rank',
      'reduction_factor', 'residual_before_ln', 'scaling', 'shared_W_phm', 'shared_phm_rule', 'stochastic_depth', 'use_gating',
    ]);
    expect(cfg.config).toMatchObject({ mh_adapter: true, output_adapter: true, original_ln_before: false, original_ln_after: true, residual_before_ln: true, non_linearity: 'gelu', reduction_factor: { '0': 8, default: 32 }, leave_out: [1], init_weights: 'bert' });

    expect(isBottleneckAdapter(dir)).toBe(true);
    const before = logitsOf(model, batch);
    const { model: fresh } = loadModelFolder(MODEL);
    loadBottleneckAdapter(dir, fresh);
    expectClose(logitsOf(fresh, batch), before, 0, 'reloaded');
  });

  it('loading refuses an adapter for another model shape or an option ajuste does not implement', () => {
    const { handle } = setup('seq_bn');
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-bn-bad-'));
    handle.save(dir, null);
    const cfgFile = join(dir, 'adapter_config.json');
    const cfg = JSON.parse(readFileSync(cfgFile, 'utf8'));
    writeFileSync(cfgFile, JSON.stringify({ ...cfg, config: { ...cfg.config, ln_after: true } }));
    expect(() => loadBottleneckAdapter(dir, loadModelFolder(MODEL).model)).toThrow(/ln_after = true is not supported/);
    writeFileSync(cfgFile, JSON.stringify({ ...cfg, config: { ...cfg.config, reduction_factor: 8 } }));
    expect(() => loadBottleneckAdapter(dir, loadModelFolder(MODEL).model)).toThrow(/has shape \[4(,64)?\], the model expects \[8(,64)?\]/);
  });
});

describe('initialisation and refusals', () => {
  it('bert init (the default) is near identity, mam_adapter exactly identity', () => {
    const { batch } = fixture('seq_bn');
    const base = logitsOf(loadModelFolder(MODEL).model, batch);
    const { model: a } = loadModelFolder(MODEL);
    const h = applyBottleneck(a, { config: 'double_seq_bn' }, new Rng(1));
    const w = h.trainable.find(([n]) => n.endsWith('adapter_down.0.weight'))![1].f;
    const std = Math.sqrt(Array.from(w, (v) => v * v).reduce((s, v) => s + v, 0) / w.length);
    expect(std).toBeGreaterThan(0.015);
    expect(std).toBeLessThan(0.025);
    expect(h.trainable.filter(([n]) => n.endsWith('.bias')).every(([, p]) => p.f.every((v) => v === 0))).toBe(true);
    const la = logitsOf(a, batch);
    const diff = Math.max(...Array.from(la, (v, i) => Math.abs(v - base[i]!)));
    expect(diff).toBeGreaterThan(0);
    const scale = Math.max(...Array.from(base, Math.abs));
    expect(diff / scale).toBeLessThan(0.05);
    const { model: b } = loadModelFolder(MODEL);
    applyBottleneck(b, { config: 'seq_bn', init_weights: 'mam_adapter' }, new Rng(1));
    expectClose(logitsOf(b, batch), base, 0, 'mam_adapter');
  });

  it('refuses options it does not implement instead of ignoring them', () => {
    const model = () => loadModelFolder(MODEL).model;
    expect(() => applyBottleneck(model(), { config: 'seq_bn', mh_adapter: true }, new Rng(0))).toThrow(/mh_adapter with original_ln_before/);
    expect(() => applyBottleneck(model(), { is_parallel: true }, new Rng(0))).toThrow(/is_parallel = true is not supported/);
    expect(() => applyBottleneck(model(), { use_gating: true }, new Rng(0))).toThrow(/use_gating/);
    expect(() => applyBottleneck(model(), { scaling: 'learned' }, new Rng(0))).toThrow(/learned/);
    expect(() => applyBottleneck(model(), { original_ln_after: false }, new Rng(0))).toThrow(/original_ln_after/);
    expect(() => applyBottleneck(model(), { dropout: 0.1 }, new Rng(0))).toThrow(/dropout/);
    expect(() => applyBottleneck(model(), { non_linearity: 'mish' }, new Rng(0))).toThrow(/non_linearity 'mish'/);
  });
});

describe('bottleneck through the recipe', () => {
  it('sft: the loss falls, the adapter is saved in the library layout, and a resumed run reproduces the uninterrupted one', async () => {
    const modelDir = makeTinyModelDir({ seed: 2 });
    const work = mkdtempSync(join(tmpdir(), 'ajuste-bn-e2e-'));
    const data = writeFactsJsonl(work);
    const cfg = (out: string, extra: Partial<SftConfig> = {}) =>
      ({ ...baseConfig(modelDir, data, out), method: 'bottleneck', bottleneck: { config: 'double_seq_bn' }, max_steps: 12, logging_steps: 2, save_steps: 6, learning_rate: 1e-2, ...extra }) as SftConfig;
    const rows: Record<string, number>[] = [];
    const full = join(work, 'full');
    const info: string[] = [];
    await runSft(cfg(full), { onLog: (r) => rows.push(r), onInfo: (m) => info.push(m) });
    // The estimate before the run covers the method (it printed nothing for bottleneck before).
    expect(info.find((m) => m.startsWith('memory estimate'))).toMatch(/^memory estimate \(bottleneck: adapter activations not counted\): [\d.]+ MB \(weights .* at batch 6 x 64\)$/);
    const losses = rows.filter((r) => r.loss !== undefined).map((r) => r.loss!);
    expect(losses[losses.length - 1]!).toBeLessThan(losses[0]! * 0.8);
    expect(isBottleneckAdapter(full)).toBe(true);
    expect(JSON.parse(readFileSync(join(full, 'adapter_config.json'), 'utf8')).config.mh_adapter).toBe(true);

    // Resume a fresh output_dir from the uninterrupted run's checkpoint-6: steps 7..12 give the same adapter.
    const resumed = join(work, 'resumed');
    cpSync(join(full, 'checkpoint-6'), join(resumed, 'checkpoint-6'), { recursive: true });
    await runSft(cfg(resumed, { resume_from_checkpoint: true }));
    const a = readSafetensors(join(full, 'adapter.safetensors')).tensors;
    const b = readSafetensors(join(resumed, 'adapter.safetensors')).tensors;
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [k, t] of a) expectClose(b.get(k)!.data as Float32Array, t.data as Float32Array, 0, k);
  });

  it('dpo (examples/dpo.yaml with method bottleneck): the loss falls and the adapter is saved in the library layout', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'ajuste-bn-dpo-')), 'run');
    const c = loadTrainConfig('examples/dpo.yaml', ['--output_dir', out, '--logging_steps', '1', '--method', 'bottleneck', '--bottleneck.init_weights', 'mam_adapter', '--learning_rate', '5e-3', '--max_steps', '12']);
    const r = await runTraining(c);
    const rows = r.history.filter((h) => h.loss !== undefined);
    const avg = (xs: typeof rows) => xs.reduce((s, h) => s + h.loss!, 0) / xs.length;
    // mam_adapter starts as the identity: the policy equals the reference, so the first DPO loss is log 2.
    expect(rows[0]!.loss!).toBeCloseTo(Math.log(2), 4);
    expect(avg(rows.slice(-4))).toBeLessThan(avg(rows.slice(0, 4)));
    expect(isBottleneckAdapter(out)).toBe(true);
  });

  it('trainer reward refuses method bottleneck', () => {
    expect(() => loadTrainConfig('examples/dpo.yaml', ['--trainer', 'reward', '--method', 'bottleneck'])).toThrow(/method bottleneck is not available with trainer reward/);
  });
});
