/** `ajuste generate --model M [--adapter A] --prompt "..." [--chat]`: text from a model, streamed to stdout. */
import type { Command } from 'commander';
import { Tokenizer } from '../../data/tokenizer.js';
import { UserError } from '../../errors.js';
import { generate } from '../../eval/generate.js';
import { resolveModel } from '../../io/hub.js';
import { loadModelFolder } from '../../models/load.js';
import { loadAdapter } from '../../peft/adapter-io.js';
import { isBottleneckAdapter, loadBottleneckAdapter } from '../../peft/bottleneck.js';
import { contextFor } from '../context.js';

interface Opts {
  model: string;
  adapter?: string;
  prompt: string;
  chat?: boolean;
  system?: string;
  maxNewTokens?: string;
  temperature?: string;
  topK?: string;
  topP?: string;
  repetitionPenalty?: string;
  seed: string;
  stop?: string[];
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('generate')
    .summary('generate text with a model (and an adapter)')
    .description('Generate text with a model and an optional PEFT adapter. Greedy by default; --temperature, --top-k or --top-p sample. Defaults come from the model\'s generation_config.json.')
    .requiredOption('--model <path|org/name>', 'model folder or Hugging Face id (from the local hub cache or downloaded)')
    .option('--adapter <dir>', 'PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), or a bottleneck adapter (adapter.safetensors)')
    .requiredOption('--prompt <text>', 'the prompt')
    .option('--chat', 'wrap the prompt as a user message with the model\'s chat template (add_generation_prompt)')
    .option('--system <text>', 'system message (with --chat)')
    .option('--max-new-tokens <n>', 'tokens to generate at most (default: generation_config.json max_new_tokens, else 64)')
    .option('--temperature <t>', 'sample with this temperature (default: generation_config.json; greedy unless it says do_sample)')
    .option('--top-k <k>', 'sample among the k most likely tokens')
    .option('--top-p <p>', 'sample from the smallest set with this much probability (nucleus)')
    .option('--repetition-penalty <x>', 'penalise tokens already generated (1 = off)')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--stop <text...>', 'stop when the output ends with one of these strings')
    .option('--json', 'print {"text", "tokens", "finish_reason"} instead of streaming')
    .action(async (o: Opts, cmd: Command) => {
      const ctx = contextFor(cmd);
      const dir = await resolveModel(o.model);
      const { model, generationConfig } = loadModelFolder(dir);
      if (o.adapter) {
        if (isBottleneckAdapter(o.adapter)) loadBottleneckAdapter(o.adapter, model);
        else loadAdapter(o.adapter, model);
      }
      const tok = Tokenizer.fromFolder(dir);
      let text = o.prompt;
      if (o.chat) {
        if (!tok.chatTemplate) throw new UserError(`${dir} has no chat template`, 'drop --chat, or use a model whose tokenizer_config.json has chat_template');
        const messages = [...(o.system ? [{ role: 'system', content: o.system }] : []), { role: 'user', content: o.prompt }];
        text = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
      }
      const prompt = tok.encode(text, { addSpecialTokens: !o.chat });
      const eos = generationConfig.eos_token_id ?? tok.eosId;
      const eosIds = (Array.isArray(eos) ? eos : eos === null || eos === undefined ? [] : [eos]) as number[];
      const chatEnd = o.chat ? tok.tokenToId('<|im_end|>') : null;
      if (chatEnd !== null) eosIds.push(chatEnd);
      // Flags win; otherwise the model's generation_config.json, as transformers' generate() does.
      const gc = generationConfig as Record<string, number | boolean | undefined>;
      const num = (v: string | undefined, key: string) => (v !== undefined ? Number(v) : typeof gc[key] === 'number' ? (gc[key] as number) : undefined);
      const stream = tok.decodeStream({ skipSpecialTokens: true });
      const flagSample = o.temperature !== undefined || o.topK !== undefined || o.topP !== undefined;
      const r = generate(model, prompt, {
        maxNewTokens: o.maxNewTokens !== undefined ? Number(o.maxNewTokens) : typeof gc.max_new_tokens === 'number' ? gc.max_new_tokens : 64,
        doSample: flagSample || gc.do_sample === true,
        temperature: num(o.temperature, 'temperature'),
        topK: num(o.topK, 'top_k'),
        topP: num(o.topP, 'top_p'),
        repetitionPenalty: num(o.repetitionPenalty, 'repetition_penalty'),
        seed: Number(o.seed),
        eosTokenIds: eosIds,
        stopStrings: o.stop,
        decode: (ids) => tok.decode(ids, { skipSpecialTokens: true }),
        onToken: o.json ? undefined : (id) => process.stdout.write(stream.push(id)),
      });
      if (o.json) ctx.print(JSON.stringify({ text: tok.decode(r.tokens, { skipSpecialTokens: true }), tokens: r.tokens, finish_reason: r.finishReason }));
      else process.stdout.write(stream.flush() + '\n');
    });
}
