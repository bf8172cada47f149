/**
 * npm run bench -- NAME [args]: runs the default export of bench/NAME.ts.
 * Without a known NAME it lists the benches (the files in bench/ with a default export).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const dir = dirname(fileURLToPath(import.meta.url));

function benches(): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
    .filter((f) => /^export default /m.test(readFileSync(join(dir, f), 'utf8')))
    .map((f) => f.slice(0, -3))
    .sort();
}

const [name, ...args] = process.argv.slice(2);
const known = benches();
if (!name || !known.includes(name)) {
  process.stderr.write(
    `${name ? `unknown bench "${name}". ` : ''}usage: npm run bench -- NAME [args]\navailable benches: ${known.join(', ')}\n`,
  );
  process.exit(name ? 1 : 0);
}
const mod = (await import(pathToFileURL(join(dir, `${name}.ts`)).href)) as { default: (args: string[]) => unknown };
await mod.default(args);
