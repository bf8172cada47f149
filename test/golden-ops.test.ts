// Ops against PyTorch goldens (tools/fixtures/ops.py, float64): outputs and gradients.
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { parseModelConfig, ropeInvFreq } from '../src/models/config.js';
import { geluErf, geluTanh, silu, softmax, swiglu } from '../src/nn/ops/activations.js';
import { crossEntropy, linearCrossEntropy } from '../src/nn/ops/loss.js';
import { layerNorm, rmsNorm } from '../src/nn/ops/norm.js';
import { rope, ropeTables } from '../src/nn/ops/rope.js';
import { backward, parameter, scope } from '../src/tensor/autograd.js';
import { mul, sum } from '../src/tensor/ops.js';
import { Tensor } from '../src/tensor/tensor.js';
import { expectClose } from './helpers.js';

const dir = 'test/fixtures/ops';
const file = (name: string) => readSafetensors(`${dir}/${name}.safetensors`, { copy: true }).tensors;
const f64 = (t: { data: ArrayLike<number | bigint>; shape: number[] }, name = '') => {
  const p = parameter(Tensor.from(Float64Array.from(t.data as ArrayLike<number>), t.shape, 'f64'), name);
  p.grad = null;
  return p;
};
const ids = (t: { data: ArrayLike<number | bigint> }) => Int32Array.from(Array.from(t.data as BigInt64Array, Number));

/** Runs fn, back-propagates sum(out * R) (or the scalar), returns out. */
function run(fn: () => Tensor, R?: Tensor): Tensor {
  return scope(() => {
    const out = fn();
    backward(R ? sum(mul(out, R)) : out);
    return out;
  });
}

describe('ops match PyTorch (float64 goldens)', () => {
  it('RMSNorm', () => {
    const t = file('rmsnorm');
    const [x, w] = [f64(t.get('x')!), f64(t.get('weight')!)];
    const out = run(() => rmsNorm(x, w, 1e-6), f64(t.get('R')!));
    expectClose(out.f, t.get('out')!.data as Float64Array, 1e-12, 'out');
    expectClose(x.grad!.f, t.get('grad_x')!.data as Float64Array, 1e-12, 'grad_x');
    expectClose(w.grad!.f, t.get('grad_weight')!.data as Float64Array, 1e-12, 'grad_weight');
  });
  it('LayerNorm', () => {
    const t = file('layernorm');
    const [x, w, b] = [f64(t.get('x')!), f64(t.get('weight')!), f64(t.get('bias')!)];
    const out = run(() => layerNorm(x, w, b, 1e-5), f64(t.get('R')!));
    expectClose(out.f, t.get('out')!.data as Float64Array, 1e-12, 'out');
    expectClose(x.grad!.f, t.get('grad_x')!.data as Float64Array, 1e-12, 'grad_x');
    expectClose(w.grad!.f, t.get('grad_weight')!.data as Float64Array, 1e-12, 'grad_weight');
    expectClose(b.grad!.f, t.get('grad_bias')!.data as Float64Array, 1e-12, 'grad_bias');
  });
  for (const [name, raw] of [
    ['default', { rope_theta: 10000 }],
    ['llama3', { rope_theta: 500000, rope_scaling: { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192, rope_type: 'llama3' } }],
    ['partial', { rope_theta: 10000, partial_rotary_factor: 0.5 }],
  ] as const) {
    it(`RoPE (${name}) incl. inverse frequencies and restarting positions`, () => {
      const t = file('rope');
      const cfg = parseModelConfig({ model_type: 'llama', vocab_size: 8, hidden_size: 96, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 3, ...raw });
      const inv = ropeInvFreq(cfg);
      expectClose(inv, t.get(`${name}.inv_freq`)!.data as Float64Array, 1e-6, 'inv_freq'); // we round to f32 as transformers
      const x = f64(t.get(`${name}.x`)!);
      const pos = ids(t.get('position_ids')!);
      const out = run(() => rope(x, pos, ropeTables(Float64Array.from(t.get(`${name}.inv_freq`)!.data as Float64Array), 16)), f64(t.get(`${name}.R`)!));
      expectClose(out.f, t.get(`${name}.out`)!.data as Float64Array, 1e-6, 'out'); // angles and tables are rounded to f32, as transformers computes them
      expectClose(x.grad!.f, t.get(`${name}.grad_x`)!.data as Float64Array, 1e-6, 'grad_x');
    });
  }
  it('SiLU, GELU (tanh, erf), SwiGLU, softmax', () => {
    const t = file('activations');
    for (const [n, fn] of [['silu', silu], ['gelu_tanh', geluTanh], ['gelu_erf', geluErf], ['softmax', softmax]] as const) {
      const x = f64(t.get(`${n}.x`)!);
      const out = run(() => fn(x), f64(t.get(`${n}.R`)!));
      expectClose(out.f, t.get(`${n}.out`)!.data as Float64Array, 1e-12, `${n} out`);
      expectClose(x.grad!.f, t.get(`${n}.grad_x`)!.data as Float64Array, 1e-12, `${n} grad`);
    }
    const [g, u] = [f64(t.get('swiglu.gate')!), f64(t.get('swiglu.up')!)];
    const out = run(() => swiglu(g, u), f64(t.get('swiglu.R')!));
    expectClose(out.f, t.get('swiglu.out')!.data as Float64Array, 1e-12, 'swiglu out');
    expectClose(g.grad!.f, t.get('swiglu.grad_gate')!.data as Float64Array, 1e-12, 'swiglu grad gate');
    expectClose(u.grad!.f, t.get('swiglu.grad_up')!.data as Float64Array, 1e-12, 'swiglu grad up');
  });
  it('cross-entropy with ignore_index -100, and chunked linear cross-entropy', () => {
    const t = file('cross_entropy');
    const logits = f64(t.get('ce.logits')!);
    const out = run(() => crossEntropy(logits, ids(t.get('ce.labels')!)));
    expect(out.item()).toBeCloseTo(t.get('ce.loss')!.data[0] as number, 12);
    expectClose(logits.grad!.f, t.get('ce.grad_logits')!.data as Float64Array, 1e-12, 'ce grad');
    const [h, w] = [f64(t.get('lce.hidden')!), f64(t.get('lce.weight')!)];
    const l = run(() => linearCrossEntropy(h, w, ids(t.get('lce.labels')!), { chunkTokens: 5 }));
    expect(l.item()).toBeCloseTo(t.get('lce.loss')!.data[0] as number, 12);
    expectClose(h.grad!.f, t.get('lce.grad_hidden')!.data as Float64Array, 1e-12, 'lce grad hidden');
    expectClose(w.grad!.f, t.get('lce.grad_weight')!.data as Float64Array, 1e-12, 'lce grad weight');
  });
});
