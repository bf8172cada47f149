// Logits and loss parity with PyTorch on tiny models of each architecture (tools/fixtures/models.py).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadModelFolder } from '../src/models/load.js';
import { noGrad, scope } from '../src/tensor/autograd.js';

// The fixtures are PyTorch with f32 activations. On a CPU with AVX512_BF16, gemmBf16 would round the activations
// to bf16 (as autocast does); this file checks the exact f32-activation path, so it turns that off (read at the
// first GEMM; vitest runs each file in its own process).
process.env.AJUSTE_BF16_DOT = '0';

const names = ['llama-gqa', 'llama-gqa-bf16', 'llama-tied-rope3', 'qwen2', 'gpt2'];

function fixture(name: string) {
  const dir = `test/fixtures/models/${name}`;
  const exp = readSafetensors(`${dir}/expected.safetensors`, { copy: true }).tensors;
  const ids = Int32Array.from(Array.from(exp.get('input_ids')!.data as BigInt64Array, Number));
  const [B, T] = exp.get('input_ids')!.shape as [number, number];
  const meta = JSON.parse(readFileSync(`${dir}/meta.json`, 'utf8'));
  return { dir, ids, B, T, logits: exp.get('logits')!.data as Float32Array, loss: meta.loss as number };
}

describe('model parity with PyTorch (f32 logits within 1e-4)', () => {
  for (const name of names) {
    it(name, () => {
      const f = fixture(name);
      const { model, config } = loadModelFolder(f.dir);
      if (name === 'llama-gqa-bf16') {
        // bf16 weights stay bf16 in memory
        const q = model.namedParameters().find(([n]) => n.endsWith('q_proj.weight'))![1];
        expect(q.dtype).toBe('bf16');
      }
      const batch = { inputIds: f.ids, positionIds: Int32Array.from({ length: f.B * f.T }, (_, i) => i % f.T), segIds: null, B: f.B, T: f.T };
      const { logits, loss } = noGrad(() =>
        scope(() => {
          const h = model.forwardHidden(batch);
          return { logits: Float32Array.from(model.logits(h).f), loss: model.loss(h, f.ids, batch).item() };
        }),
      );
      let worst = 0;
      for (let i = 0; i < logits.length; i++) worst = Math.max(worst, Math.abs(logits[i]! - f.logits[i]!));
      expect(worst).toBeLessThanOrEqual(1e-4);
      expect(Math.abs(loss - f.loss) / f.loss).toBeLessThan(1e-5);
      expect(config.vocabSize).toBe(128);
    });
  }
});
