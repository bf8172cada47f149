/**
 * Scoring fixed answers: the log-likelihood a model gives each candidate completion of a prompt
 * (sum of the completion tokens' log-probabilities). Classification by comparing candidates is
 * how the demo measures a base model before and after fine-tuning.
 */
import type { Tokenizer } from '../data/tokenizer.js';
import type { CausalLM } from '../models/causal-lm.js';
import { noGrad, scope } from '../tensor/autograd.js';

/** For each prompt, the log-likelihood of each candidate completion. */
export function scoreCompletions(model: CausalLM, tok: Tokenizer, prompts: string[], candidates: string[], o: { maxPromptTokens?: number; batchSize?: number } = {}): number[][] {
  const cand = candidates.map((c) => tok.encode(c, { addSpecialTokens: false }));
  const seqs: { ids: number[]; start: number; item: number; choice: number }[] = [];
  prompts.forEach((p, item) => {
    let ids = tok.encode(p);
    if (o.maxPromptTokens && ids.length > o.maxPromptTokens) ids = ids.slice(ids.length - o.maxPromptTokens);
    for (const [choice, c] of cand.entries()) seqs.push({ ids: [...ids, ...c], start: ids.length, item, choice });
  });
  const out = prompts.map(() => candidates.map(() => 0));
  const bs = o.batchSize ?? 8;
  const V = model.config.vocabSize;
  const was = model.training;
  model.train(false);
  noGrad(() => {
    for (let i = 0; i < seqs.length; i += bs) {
      const group = seqs.slice(i, i + bs);
      const B = group.length;
      const T = Math.max(...group.map((s) => s.ids.length));
      const inputIds = new Int32Array(B * T);
      const positionIds = new Int32Array(B * T);
      const segIds = new Int32Array(B * T);
      group.forEach((s, b) => {
        for (let t = 0; t < T; t++) {
          inputIds[b * T + t] = t < s.ids.length ? s.ids[t]! : 0;
          positionIds[b * T + t] = t < s.ids.length ? t : 0;
          segIds[b * T + t] = t < s.ids.length ? 0 : 1;
        }
      });
      scope(() => {
        const h = model.forwardHidden({ inputIds, positionIds, segIds, B, T });
        const hidden = model.config.hidden;
        group.forEach((s, b) => {
          // Only the rows that predict completion tokens need logits.
          const rows = h.reshape([B * T, hidden]).narrow0(b * T + s.start - 1, s.ids.length - s.start);
          const logits = model.logits(rows).f;
          let ll = 0;
          for (let k = 0; k < s.ids.length - s.start; k++) {
            const o2 = k * V;
            let m = -Infinity;
            for (let j = 0; j < V; j++) m = Math.max(m, logits[o2 + j]!);
            let z = 0;
            for (let j = 0; j < V; j++) z += Math.exp(logits[o2 + j]! - m);
            ll += logits[o2 + s.ids[s.start + k]!]! - m - Math.log(z);
          }
          out[s.item]![s.choice] = ll;
        });
        return null;
      });
    }
  });
  model.train(was);
  return out;
}
