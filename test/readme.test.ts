// Doc test: every `npx ajuste ...` command in the README's "One example per method" section runs as written
// (from the repository root, on the bundled model and examples/) and exits 0.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

function readmeCommands(): string[] {
  const text = readFileSync('README.md', 'utf8');
  const section = text.slice(text.indexOf('## One example per method'), text.indexOf('## Configuration'));
  const cmds: string[] = [];
  for (const block of section.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const line of block[1]!.split('\n')) if (line.startsWith('npx ajuste ')) cmds.push(line.slice('npx ajuste '.length));
  }
  return cmds;
}

/** Splits a shell command line into words (double quotes only, as the README uses). */
function words(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

describe('README commands', () => {
  const cmds = readmeCommands();
  it('the README has commands to check', () => {
    expect(cmds.length).toBeGreaterThan(8);
    expect(existsSync('models/ajuste-base-2m/model.safetensors')).toBe(true);
  });
  for (const dir of ['runs/lora-chat', 'runs/dora', 'runs/qlora', 'runs/ia3', 'runs/prompt', 'runs/prefix', 'runs/full', 'runs/ln', 'runs/dpo', 'runs/reward', 'runs/reward-full', 'runs/ppo', 'runs/merged', 'runs/base-nf4', 'runs/tokenizer']) rmSync(dir, { recursive: true, force: true });
  for (const cmd of cmds) {
    it(cmd, () => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...words(cmd)], { encoding: 'utf8', timeout: 300_000 });
      expect(r.status, `${r.stderr}\n${r.stdout}`).toBe(0);
    });
  }
});
