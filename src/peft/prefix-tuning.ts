/**
 * Prefix tuning (Li & Liang 2021) as Hugging Face PEFT does it for causal LMs
 * (peft/tuners/prefix_tuning/model.py PrefixEncoder; peft_model.py get_prompt): every decoder layer gets
 * `num_virtual_tokens` (P) trained key and value vectors per KV head, passed to transformers as
 * past_key_values. Every query attends to the whole prefix (no causal mask over it) and to the real tokens
 * causally; prefix keys are used as stored (no RoPE); the real tokens sit at positions P..P+T-1 (transformers
 * starts cache_position at the past length). Packed rows work: each sequence sees the prefix.
 *
 * Storage, as PEFT saves it: `prompt_embeddings` [P, L * 2 * Hkv * D]; row t holds, at
 * ((2 * layer + kv) * Hkv + h) * D + d, the key (kv 0) or value (kv 1) of that layer, KV head and position
 * (PEFT's view(B, P, 2L, H, D).permute(2, 0, 3, 1, 4).split(2); under GQA token_dim = D * Hkv).
 * prefix_projection: Embedding(P, token_dim) -> Linear(token_dim, enc) -> tanh -> Linear(enc, L*2*token_dim)
 * (parameters embedding.weight, transform.0.*, transform.2.*); only its output is saved, so such an adapter
 * loads for inference but cannot resume training (as in PEFT).
 *
 * Attention over [prefix ; sequence] is the fused causal kernel over the sequence merged with a small js
 * attention over the prefix through their log-sum-exps (flash-attention's block merge); backward calls the
 * kernel's backward with the merged output and log-sum-exp, which is exactly the sequence part's gradient.
 */
import { jsKernels } from '../kernels/js/index.js';
import { kernels } from '../kernels/index.js';
import type { Kernels } from '../kernels/backend.js';
import type { Batch, CausalLM, KvCache, PromptHook } from '../models/causal-lm.js';
import type { AttentionShape } from '../nn/ops/attention.js';
import { addGradOwned, needsGrad, noGrad, parameter, record } from '../tensor/autograd.js';
import { linear } from '../tensor/ops.js';
import { Rng } from '../tensor/rng.js';
import { type FloatArray, floatLike, releaseFloat, Tensor } from '../tensor/tensor.js';
import { UserError } from '../errors.js';
import { type PeftMethodHandle, prefixTokenDim, prefixTuningConfigJson, readAdapterConfigJson, readAdapterTensors, writeAdapterFolder } from './adapter-formats.js';

/** PEFT's PrefixTuningConfig keys (the `prefix_tuning` section of a train config). */
export interface PrefixTuningConfig {
  num_virtual_tokens: number | null;
  prefix_projection: boolean;
  encoder_hidden_size: number | null;
}

/**
 * Causal attention of q [B,T,H,D] over [prefix ; k/v [B,T,Hkv,D]] for decoder layer `layer`; the prefix
 * [P, L*2*Hkv*D] is shared by all rows and visible to every query; segIds (packing) apply to the sequence.
 */
export function prefixAttention(q: Tensor, k: Tensor, v: Tensor, prefix: Tensor, layer: number, s: AttentionShape): Tensor {
  const { B, T, H, Hkv, D } = s;
  const scale = s.scale ?? 1 / Math.sqrt(D);
  const seg = s.segIds ?? null;
  const P = prefix.dim(0);
  const W = prefix.dim(1);
  if (W % (2 * Hkv * D) !== 0 || (2 * layer + 2) * Hkv * D > W) {
    throw new Error(`prefixAttention: prefix ${prefix.describe()} has no layer ${layer} for Hkv=${Hkv} D=${D}`);
  }
  const kOff = 2 * layer * Hkv * D, vOff = (2 * layer + 1) * Hkv * D;
  const K = (q.dtype === 'f64' ? jsKernels : kernels()) as Kernels;
  const out = Tensor.empty([B, T, H, D], q.dtype);
  const O = out.f, Q = q.f, PF = prefix.f;
  const lse = floatLike(Q, B * H * T, false);
  K.attentionFwd(Q as Float32Array, k.f as Float32Array, v.f as Float32Array, O as Float32Array, lse as Float32Array, B, T, H, Hkv, D, scale, seg);
  const group = H / Hkv;
  const sc = new Float64Array(P);
  const acc = new Float64Array(D);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / group);
        const qo = ((b * T + t) * H + h) * D;
        let m = -Infinity;
        for (let j = 0; j < P; j++) {
          const ko = j * W + kOff + g * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += Q[qo + d]! * PF[ko + d]!;
          sc[j] = dot * scale;
          if (sc[j]! > m) m = sc[j]!;
        }
        let sum = 0;
        acc.fill(0);
        for (let j = 0; j < P; j++) {
          const p = Math.exp(sc[j]! - m);
          sum += p;
          const vo = j * W + vOff + g * D;
          for (let d = 0; d < D; d++) acc[d]! += p * PF[vo + d]!;
        }
        // Merge: L = logaddexp(lse1, lse2); o = e^(lse1-L) o1 + e^(lse2-L) o2 (o2 = acc / sum).
        const li = (b * H + h) * T + t;
        const l1 = lse[li]!, l2 = m + Math.log(sum);
        const L = Math.max(l1, l2) + Math.log(Math.exp(l1 - Math.max(l1, l2)) + Math.exp(l2 - Math.max(l1, l2)));
        const w1 = Math.exp(l1 - L), w2 = Math.exp(l2 - L) / sum;
        for (let d = 0; d < D; d++) O[qo + d] = w1 * O[qo + d]! + w2 * acc[d]!;
        lse[li] = L;
      }
  if (!needsGrad(q, k, v, prefix)) {
    releaseFloat(lse);
    return out;
  }
  record(
    'prefixAttention',
    [q, k, v, prefix],
    out,
    (gOut) => {
      const dq = floatLike(gOut, q.size, false);
      const dk = floatLike(gOut, k.size, false);
      const dv = floatLike(gOut, v.size, false);
      // With the merged out and lse, p = exp(score - L) and D_t = dout . out are the full softmax's, so the
      // kernel returns exactly the sequence keys' share of dq and all of dk, dv.
      K.attentionBwd(gOut as Float32Array, Q as Float32Array, k.f as Float32Array, v.f as Float32Array, O as Float32Array, lse as Float32Array, dq as Float32Array, dk as Float32Array, dv as Float32Array, B, T, H, Hkv, D, scale, seg);
      const dp: FloatArray | null = prefix.requiresGrad ? floatLike(gOut, prefix.size) : null;
      for (let b = 0; b < B; b++)
        for (let t = 0; t < T; t++)
          for (let h = 0; h < H; h++) {
            const g = Math.floor(h / group);
            const qo = ((b * T + t) * H + h) * D;
            const L = lse[(b * H + h) * T + t]!;
            let Dt = 0;
            for (let d = 0; d < D; d++) Dt += gOut[qo + d]! * O[qo + d]!;
            for (let j = 0; j < P; j++) {
              const ko = j * W + kOff + g * D, vo = j * W + vOff + g * D;
              let dot = 0, dpv = 0;
              for (let d = 0; d < D; d++) {
                dot += Q[qo + d]! * PF[ko + d]!;
                dpv += gOut[qo + d]! * PF[vo + d]!;
              }
              const p = Math.exp(dot * scale - L);
              const ds = p * (dpv - Dt) * scale;
              for (let d = 0; d < D; d++) {
                dq[qo + d]! += ds * PF[ko + d]!;
                if (dp) {
                  dp[ko + d]! += ds * Q[qo + d]!;
                  dp[vo + d]! += p * gOut[qo + d]!;
                }
              }
            }
          }
      addGradOwned(q, dq);
      addGradOwned(k, dk);
      addGradOwned(v, dv);
      if (dp) addGradOwned(prefix, dp);
    },
    () => releaseFloat(lse),
  );
  return out;
}

/** Elementwise tanh (the prefix projection's activation). */
export function tanh(x: Tensor): Tensor {
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f;
  for (let i = 0; i < X.length; i++) Y[i] = Math.tanh(X[i]!);
  if (needsGrad(x)) {
    record('tanh', [x], out, (g) => {
      const gx = floatLike(g, g.length, false);
      for (let i = 0; i < g.length; i++) gx[i] = g[i]! * (1 - Y[i]! * Y[i]!);
      addGradOwned(x, gx);
    });
  }
  return out;
}

/** The prefix parameters: either the KV table itself or PEFT's two-layer projection. */
export interface PrefixParams {
  /** [P, L*2*token_dim] when not projected. */
  table: Tensor | null;
  projection: { embedding: Tensor; w1: Tensor; b1: Tensor; w2: Tensor; b2: Tensor } | null;
}

/** The [P, L*2*token_dim] key/value table of the current parameters (runs the projection when there is one). */
export function prefixTable(p: PrefixParams): Tensor {
  if (p.table) return p.table;
  const e = p.projection!;
  return linear(tanh(linear(e.embedding, e.w1, e.b1)), e.w2, e.b2);
}

export class PrefixTuningHook implements PromptHook {
  private current: Tensor | null = null;
  constructor(readonly params: PrefixParams, readonly numVirtualTokens: number) {}
  begin(h: Tensor, batch: Batch): { h: Tensor; batch: Batch } {
    this.current = prefixTable(this.params);
    const n = this.numVirtualTokens;
    return { h, batch: { ...batch, positionIds: Int32Array.from(batch.positionIds, (p) => p + n) } };
  }
  attention(layer: number, q: Tensor, k: Tensor, v: Tensor, shape: AttentionShape): Tensor {
    if (!this.current) throw new Error('prefix tuning: attention called outside a forward');
    return prefixAttention(q, k, v, this.current, layer, shape);
  }
  end(h: Tensor): Tensor {
    return h;
  }
  get cacheTokens(): number {
    return this.numVirtualTokens;
  }
  /** Generation: writes each layer's prefix keys/values ([P, Hkv, D], no RoPE) into an empty cache. */
  prefill(cache: KvCache): null {
    const table = noGrad(() => prefixTable(this.params));
    const P = this.numVirtualTokens, W = table.dim(1), L = cache.keys.length;
    const per = W / (2 * L);
    if (cache.capacity < P) throw new Error(`KV cache full (${cache.capacity} tokens)`);
    for (let l = 0; l < L; l++)
      for (let j = 0; j < P; j++) {
        cache.keys[l]!.set(table.f.subarray(j * W + 2 * l * per, j * W + (2 * l + 1) * per), j * per);
        cache.values[l]!.set(table.f.subarray(j * W + (2 * l + 1) * per, j * W + (2 * l + 2) * per), j * per);
      }
    cache.length = P;
    return null;
  }
}

function kaimingUniform(rng: Rng, t: Tensor, fanIn: number): void {
  const bound = 1 / Math.sqrt(fanIn);
  rng.fillUniform(t.f as Float32Array, -bound, bound);
}

/**
 * Applies prefix tuning to `model` (freezes the model, installs model.promptHook). trainable:
 * [['prompt_embeddings', [P, L*2*token_dim]]], or with prefix_projection the encoder's
 * embedding.weight, transform.0.weight/bias, transform.2.weight/bias. Init as PEFT: N(0,1) embeddings,
 * kaiming-uniform Linear weights and biases (U(+-1/sqrt(fan_in))).
 */
export function applyPrefixTuning(model: CausalLM, cfg: Partial<PrefixTuningConfig>, opts: { rng: Rng }): PeftMethodHandle & { hook: PrefixTuningHook; remove(): void } {
  const c: PrefixTuningConfig = { num_virtual_tokens: null, prefix_projection: false, encoder_hidden_size: null, ...cfg };
  const n = c.num_virtual_tokens;
  if (n === null || !Number.isInteger(n) || n < 1) throw new UserError(`prefix_tuning.num_virtual_tokens must be a positive integer, got ${n}`);
  const td = prefixTokenDim(model.config);
  const width = model.config.layers * 2 * td;
  for (const p of model.parameters()) p.requiresGrad = false;
  const rng = opts.rng;
  let params: PrefixParams;
  let trainable: [string, Tensor][];
  if (!c.prefix_projection) {
    const table = Tensor.zeros([n, width]);
    rng.fillNormal(table.f as Float32Array, 0, 1);
    params = { table: parameter(table, 'prompt_embeddings'), projection: null };
    trainable = [['prompt_embeddings', table]];
  } else {
    const enc = c.encoder_hidden_size ?? td;
    const embedding = Tensor.zeros([n, td]);
    rng.fillNormal(embedding.f as Float32Array, 0, 1);
    const w1 = Tensor.zeros([enc, td]), b1 = Tensor.zeros([enc]), w2 = Tensor.zeros([width, enc]), b2 = Tensor.zeros([width]);
    kaimingUniform(rng, w1, td);
    kaimingUniform(rng, b1, td);
    kaimingUniform(rng, w2, enc);
    kaimingUniform(rng, b2, enc);
    trainable = [['embedding.weight', embedding], ['transform.0.weight', w1], ['transform.0.bias', b1], ['transform.2.weight', w2], ['transform.2.bias', b2]];
    for (const [name, t] of trainable) parameter(t, name);
    params = { table: null, projection: { embedding, w1, b1, w2, b2 } };
  }
  const hook = new PrefixTuningHook(params, n);
  model.promptHook = hook;
  return {
    hook,
    trainable,
    save(dir, baseModelName) {
      const table = params.table ?? Tensor.from(Float32Array.from(prefixTable(params).f), [n, width], 'f32');
      writeAdapterFolder(dir, new Map([['prompt_embeddings', table]]), prefixTuningConfigJson({ ...c, num_virtual_tokens: n }, model.config, baseModelName));
    },
    load(dir) {
      const json = readAdapterConfigJson(dir, 'PREFIX_TUNING');
      if (!params.table) throw new UserError(`${dir}: a prefix adapter stores only the projected prefix, so training with prefix_projection cannot resume from it`, 'load it with loadPrefixTuningAdapter for inference, or train with prefix_projection: false');
      if (json.num_virtual_tokens !== n) throw new UserError(`${dir}/adapter_config.json: num_virtual_tokens is ${json.num_virtual_tokens}, this run uses ${n}`);
      readAdapterTensors(dir, new Map([['prompt_embeddings', params.table]]));
    },
    remove() {
      if (model.promptHook === hook) model.promptHook = null;
    },
  };
}

/** Reads a prefix-tuning adapter folder (PEFT or ajuste; projected or not) and installs it on a loaded base model. */
export function loadPrefixTuningAdapter(dir: string, model: CausalLM): ReturnType<typeof applyPrefixTuning> {
  const json = readAdapterConfigJson(dir, 'PREFIX_TUNING');
  const td = prefixTokenDim(model.config);
  if (json.token_dim !== undefined && json.token_dim !== td) {
    throw new UserError(`${dir}/adapter_config.json: token_dim ${json.token_dim} does not match this model's head_dim * num_key_value_heads = ${td}`, 'was this adapter trained on a different base model?');
  }
  if (json.num_layers !== undefined && json.num_layers !== model.config.layers) {
    throw new UserError(`${dir}/adapter_config.json: num_layers ${json.num_layers} does not match this model's ${model.config.layers}`);
  }
  const handle = applyPrefixTuning(model, { num_virtual_tokens: json.num_virtual_tokens as number, prefix_projection: false }, { rng: new Rng(0) });
  handle.load(dir);
  return handle;
}
