// DPO (src/train/dpo.ts, dpo-loss.ts): the four losses and their LoRA gradients against PyTorch
// (tools/fixtures/dpo.py on llama-gqa), the loss gradients by finite differences, the pair batches, and
// end-to-end runs of `trainer: dpo` (the preference is learned; resume gives the uninterrupted run).
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PairLoader } from '../src/data/pairs.js';
import type { TokenizedExample } from '../src/data/dataset.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadModelFolder } from '../src/models/load.js';
import { loraConfig } from '../src/peft/config.js';
import { applyLora, peftKey } from '../src/peft/lora.js';
import { backward, noGrad, parameter, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
import { loadTrainConfig } from '../src/train/config.js';
import { DPO_LOSS_TYPES, type DpoLossType, dpoLoss } from '../src/train/dpo-loss.js';
import { sequenceLogProbs } from '../src/train/dpo.js';
import { runTraining } from '../src/train/run.js';
import { expectClose } from './helpers.js';

const FX = 'test/fixtures/dpo';
const meta = JSON.parse(readFileSync(`${FX}/meta.json`, 'utf8'));
const ints = (t: { data: unknown }) => Int32Array.from(Array.from(t.data as BigInt64Array, Number));

function fixtureBatch() {
  const fx = readSafetensors(`${FX}/pairs.safetensors`, { copy: true }).tensors;
  const [B, T] = fx.get('input_ids')!.shape as [number, number];
  const batch = {
    inputIds: ints(fx.get('input_ids')!),
    labels: ints(fx.get('labels')!),
    positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T),
    segIds: null,
    B,
    T,
    tokens: B * T,
    pairs: B / 2,
    indices: [0, 1, 2],
    ref: new Float64Array(B),
    completionTokens: ints(fx.get('completion_tokens')!),
  };
  return { fx, batch };
}

describe('DPO parity with PyTorch (TRL losses, LoRA policy, base model as reference)', () => {
  for (const lossType of DPO_LOSS_TYPES) {
    it(`${lossType}: reference and policy log-probabilities, loss and every LoRA gradient within 1e-5`, () => {
      const { fx, batch } = fixtureBatch();
      const { model } = loadModelFolder(meta.model);
      const ref = noGrad(() => scope(() => Float64Array.from(sequenceLogProbs(model, model.forwardHidden(batch), batch).f)));
      expectClose(ref, fx.get('ref_logps')!.data as Float32Array, 2e-5, 'reference log-probabilities');
      const config = loraConfig({ r: meta.r, lora_alpha: meta.lora_alpha, target_modules: meta.target_modules });
      const applied = applyLora(model, config, new Rng(0), new Rng(0));
      for (const [name, p] of applied.trainable) p.f.set(fx.get(peftKey(name))!.data as Float32Array);
      const want = readSafetensors(`${FX}/${lossType}.safetensors`, { copy: true }).tensors;
      const loss = scope(() => {
        const logps = sequenceLogProbs(model, model.forwardHidden(batch), batch);
        expectClose(logps.f, fx.get('policy_logps')!.data as Float32Array, 2e-5, 'policy log-probabilities');
        const r = dpoLoss(logps, ref, batch.completionTokens, { beta: meta.beta, lossType, labelSmoothing: lossType === 'robust' ? meta.label_smoothing : 0 });
        backward(r.loss, Float32Array.of(1 / batch.pairs));
        if (lossType === 'sigmoid') {
          expect(r.metrics['rewards/chosen']).toBeCloseTo((want.get('chosen_rewards')!.data as Float32Array).reduce((a, b) => a + b), 5);
          expect(r.metrics['rewards/rejected']).toBeCloseTo((want.get('rejected_rewards')!.data as Float32Array).reduce((a, b) => a + b), 5);
        }
        return r.loss.item() / batch.pairs;
      });
      const wantLoss = (want.get('loss')!.data as Float32Array)[0]!;
      expect(Math.abs(loss - wantLoss) / Math.abs(wantLoss)).toBeLessThan(1e-5);
      let checked = 0;
      for (const [name, p] of applied.trainable) {
        const g = want.get(`grad.${peftKey(name)}`)!.data as Float32Array;
        const scale = Math.max(...Array.from(g, Math.abs));
        const err = Math.max(...Array.from(p.grad!.f, (v, i) => Math.abs(v - g[i]!))) / scale;
        expect(err, `grad ${peftKey(name)}`).toBeLessThan(1e-5);
        checked++;
      }
      expect(checked).toBe(28);
    });
  }
});

describe('DPO losses', () => {
  it('gradients by finite differences for every loss type (f64)', () => {
    const rng = new Rng(5);
    const P = 4;
    const ref = Float64Array.from({ length: 2 * P }, () => -20 + 5 * rng.uniform());
    const lengths = Int32Array.from({ length: 2 * P }, (_, i) => 3 + i);
    for (const lossType of DPO_LOSS_TYPES) {
      const o = { beta: 0.5, lossType: lossType as DpoLossType, labelSmoothing: lossType === 'robust' ? 0.2 : 0 };
      const x = Float64Array.from(ref, (v) => v + 4 * (rng.uniform() - 0.5));
      const t = parameter(Tensor.from(Float64Array.from(x), [2 * P]));
      const r = dpoLoss(t, ref, lengths, o);
      backward(r.loss);
      for (let i = 0; i < 2 * P; i++) {
        const at = (d: number) => {
          const y = Float64Array.from(x);
          y[i]! += d;
          return noGrad(() => dpoLoss(Tensor.from(y, [2 * P]), ref, lengths, o).loss.item());
        };
        const fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        expect(Math.abs(t.grad!.f[i]! - fd), `${lossType} d/dlogp[${i}]`).toBeLessThan(1e-6 * (1 + Math.abs(fd)));
      }
    }
  });

  it('at the reference (Δ = 0): sigmoid gives log 2 per pair, hinge 1, ipo 1/(4β²), and zero rewards', () => {
    const ref = Float64Array.of(-10, -12, -9, -15);
    const lengths = Int32Array.of(2, 3, 4, 5);
    const t = Tensor.from(Float64Array.from(ref), [4]);
    const at = (lossType: DpoLossType) => dpoLoss(t, ref, lengths, { beta: 0.1, lossType, labelSmoothing: 0 });
    expect(at('sigmoid').loss.item()).toBeCloseTo(2 * Math.log(2), 12);
    expect(at('hinge').loss.item()).toBeCloseTo(2, 12);
    expect(at('ipo').loss.item()).toBeCloseTo(2 * 25, 9);
    expect(at('sigmoid').metrics['rewards/margins']).toBe(0);
    expect(() => dpoLoss(t, ref.subarray(0, 3), lengths, { beta: 0.1, lossType: 'sigmoid', labelSmoothing: 0 })).toThrow(/reference/);
  });
});

describe('preference batches', () => {
  const ex = (n: number, prompt: number, fill: number): TokenizedExample => ({
    inputIds: Int32Array.from({ length: n }, (_, i) => fill + i),
    labels: Int32Array.from({ length: n }, (_, i) => (i < prompt ? -100 : fill + i)),
    truncated: false,
  });
  const pairs = [0, 1, 2, 3, 4].map((i) => ({ chosen: ex(4 + i, 2, 10 * i), rejected: ex(3, 2, 100 + 10 * i) }));

  it('rows are [chosen..., rejected...], right-padded, labelled on completions, with their reference values', () => {
    const loader = new PairLoader(pairs, { batchSize: 2, maxLength: 16, padId: 0, shuffle: false });
    loader.setReference(Float64Array.from({ length: 10 }, (_, k) => -k));
    const b = loader.next();
    expect([b.B, b.T, b.pairs]).toEqual([4, 5, 2]);
    expect(b.indices).toEqual([0, 1]);
    expect(Array.from(b.inputIds)).toEqual([0, 1, 2, 3, 0, 10, 11, 12, 13, 14, 100, 101, 102, 0, 0, 110, 111, 112, 0, 0]);
    expect(Array.from(b.labels.subarray(0, 5))).toEqual([-100, -100, 2, 3, -100]);
    expect(Array.from(b.completionTokens)).toEqual([2, 3, 1, 1]);
    expect(Array.from(b.ref)).toEqual([-0, -2, -1, -3]);
    expect(loader.batchesPerEpoch).toBe(3);
    expect(() => loader.setReference(new Float64Array(3))).toThrow(/3 values for 5 pairs/);
  });

  it('a restored position gives the same batches (shuffled epochs)', () => {
    const a = new PairLoader(pairs, { batchSize: 2, maxLength: 16, padId: 0, shuffle: 7 });
    for (let i = 0; i < 4; i++) a.next();
    const b = new PairLoader(pairs, { batchSize: 2, maxLength: 16, padId: 0, shuffle: 7 });
    b.restore(a.position);
    for (let i = 0; i < 4; i++) expect(b.next().indices).toEqual(a.next().indices);
  });
});

describe('trainer: dpo end to end (bundled model, examples/preference.jsonl)', () => {
  const work = mkdtempSync(join(tmpdir(), 'ajuste-dpo-'));
  const cfg = (out: string, extra: string[] = []) => loadTrainConfig('examples/dpo.yaml', ['--output_dir', out, '--logging_steps', '1', ...extra]);

  it('learns the preference: accuracy and margin up, loss down, a PEFT adapter saved', async () => {
    const out = join(work, 'run');
    const r = await runTraining(cfg(out));
    const rows = r.history.filter((h) => h.loss !== undefined);
    expect(rows.length).toBe(20);
    const first = rows.slice(0, 5), last = rows.slice(-5);
    const avg = (xs: typeof rows, k: string) => xs.reduce((s, h) => s + h[k]!, 0) / xs.length;
    expect(avg(first, 'loss')).toBeGreaterThan(0.66);
    expect(avg(last, 'loss')).toBeLessThan(avg(first, 'loss') - 0.1);
    expect(avg(last, 'rewards/accuracies')).toBeGreaterThan(0.8);
    expect(avg(last, 'rewards/margins')).toBeGreaterThan(0.2);
    expect(r.trainExamples).toBe(20);
    const adapter = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    expect(adapter).toMatchObject({ peft_type: 'LORA', r: 16, task_type: 'CAUSAL_LM' });
  });

  it('resumed from its step-10 checkpoint, a run ends with the adapter of the uninterrupted one', async () => {
    const straight = join(work, 'straight'), resumed = join(work, 'resumed');
    await runTraining(cfg(straight, ['--eval_split', '0.2', '--eval_strategy', 'steps', '--eval_steps', '10']));
    await runTraining(cfg(resumed, ['--eval_split', '0.2', '--eval_strategy', 'steps', '--eval_steps', '10', '--max_steps', '10']));
    const r = await runTraining(cfg(resumed, ['--eval_split', '0.2', '--eval_strategy', 'steps', '--eval_steps', '10', '--resume_from_checkpoint', join(resumed, 'checkpoint-10')]));
    const a = readSafetensors(join(straight, 'adapter_model.safetensors'), { copy: true }).tensors;
    const b = readSafetensors(join(resumed, 'adapter_model.safetensors'), { copy: true }).tensors;
    for (const [k, t] of a) expect(Array.from(b.get(k)!.data as Float32Array), k).toEqual(Array.from(t.data as Float32Array));
    const evals = r.history.filter((h) => h.eval_loss !== undefined);
    expect(evals.at(-1)).toMatchObject({ step: 20, eval_pairs: 4 });
    expect(evals.at(-1)!['eval_rewards/accuracies']).toBeGreaterThanOrEqual(0);
  });

  it('saves the reference log-probabilities and reads them back only for the same model and tokens', async () => {
    const out = join(work, 'cache');
    const messages: string[] = [];
    const hooks = { onInfo: (m: string) => messages.push(m) };
    await runTraining(cfg(out, ['--max_steps', '2']), hooks);
    const file = join(out, 'ref_logps.safetensors');
    const saved = readSafetensors(file, { copy: true });
    expect(saved.tensors.get('train')!.data).toBeInstanceOf(Float64Array);
    expect(saved.tensors.get('train')!.shape).toEqual([40]);
    expect(messages.some((m) => m.startsWith('reference log-probabilities of 20 pairs'))).toBe(true);
    messages.length = 0;
    await runTraining(cfg(out, ['--max_steps', '2', '--overwrite_output_dir', 'true']), hooks);
    expect(messages).toContain(`reference log-probabilities read from ${file}`);
    messages.length = 0;
    await runTraining(cfg(out, ['--max_steps', '2', '--overwrite_output_dir', 'true', '--max_length', '64']), hooks);
    expect(messages.some((m) => m.startsWith('reference log-probabilities of 20 pairs'))).toBe(true);
  });

  it('refuses SFT records, packing, and label_smoothing outside robust, saying where', async () => {
    await expect(runTraining(loadTrainConfig('examples/dpo.yaml', ['--output_dir', join(work, 'bad'), '--dataset_path', 'examples/chat.jsonl']))).rejects.toThrow(
      /examples\/chat.jsonl:1: trainer dpo needs preference records \{prompt, chosen, rejected\}, this one is a messages record/,
    );
    expect(() => cfg(join(work, 'bad2'), ['--packing', 'true'])).toThrow(/packing does not apply to trainer dpo/);
    expect(() => cfg(join(work, 'bad3'), ['--label_smoothing', '0.1'])).toThrow(/label_smoothing is used by loss_type robust only/);
    expect(cfg(join(work, 'lr'), []).learning_rate).toBe(5e-4);
    expect(loadTrainConfig(null, ['--model_name_or_path', 'm', '--dataset_path', 'd.jsonl', '--output_dir', 'o', '--trainer', 'dpo']).learning_rate).toBe(1e-6);
    expect(loadTrainConfig(null, ['--model_name_or_path', 'm', '--dataset_path', 'd.jsonl', '--output_dir', 'o']).learning_rate).toBe(2e-5);
  });
});
